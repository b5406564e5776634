// The engine's CUDA kernels, f32, compiled by NVRTC at run time (no CUDA headers: only builtins).
// Each mirrors a CPU kernel of the same name in crates/engine/src and follows its layout and
// argument order (outputs, saved values, inputs, sizes); tests/cuda.rs checks them against it.
// Reductions are in f32 with warp shuffles; nothing here allocates.

#define FULL_MASK 0xffffffffu
// No headers under NVRTC: math.h's INFINITY, spelled out.
#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // shared32 may still be read from a previous call
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < warps ? shared32[lane] : 0.0f;
    return warp_sum(v);
}

__device__ float block_max(float v, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < warps ? shared32[lane] : -INFINITY;
    return warp_max(v);
}

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)

// ---- embedding ------------------------------------------------------------------------------

// out (N, C) = wte[tokens[n]] (+ positions[n % T]); positions may be null.
extern "C" __global__ void embedding_forward(float* out, const unsigned int* tokens, const float* wte,
                                             const float* positions, int n, int t, int c) {
    GRID_STRIDE(i, (long long)n * c) {
        long long row = i / c, col = i % c;
        float v = wte[(long long)tokens[row] * c + col];
        if (positions) v += positions[(row % t) * c + col];
        out[i] = v;
    }
}

// dwte[tokens[n]] += dout[n], dpositions[n % T] += dout[n] (dpositions may be null). Rows that
// share a token add atomically, so the order of the additions is not fixed.
extern "C" __global__ void embedding_backward(float* dwte, float* dpositions, const float* dout,
                                              const unsigned int* tokens, int n, int t, int c) {
    GRID_STRIDE(i, (long long)n * c) {
        long long row = i / c, col = i % c;
        atomicAdd(&dwte[(long long)tokens[row] * c + col], dout[i]);
        if (dpositions) atomicAdd(&dpositions[(row % t) * c + col], dout[i]);
    }
}

// ---- norms (one warp per row), fused with the residual add ------------------------------------

// With `residual` non-null, x = inp + residual is written to `sum_out` and normalised; otherwise
// x = inp. LayerNorm when `mean` is non-null (and `bias` optional), else RMSNorm.
extern "C" __global__ void norm_forward(float* out, float* sum_out, float* mean, float* rstd, const float* inp,
                                        const float* residual, const float* weight, const float* bias, int n,
                                        int c, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* x = inp + (long long)row * c;
    if (residual) {
        const float* r = residual + (long long)row * c;
        float* s = sum_out + (long long)row * c;
        for (int i = lane; i < c; i += 32) s[i] = x[i] + r[i];
        __syncwarp();
        x = s;
    }
    float mu = 0.0f;
    if (mean) {
        float acc = 0.0f;
        for (int i = lane; i < c; i += 32) acc += x[i];
        mu = warp_sum(acc) / c;
    }
    float acc = 0.0f;
    for (int i = lane; i < c; i += 32) acc += (x[i] - mu) * (x[i] - mu);
    float rs = 1.0f / sqrtf(warp_sum(acc) / c + eps);
    if (lane == 0) {
        rstd[row] = rs;
        if (mean) mean[row] = mu;
    }
    float* o = out + (long long)row * c;
    for (int i = lane; i < c; i += 32) o[i] = (x[i] - mu) * rs * weight[i] + (bias ? bias[i] : 0.0f);
}

// Backward of norm_forward for the input: dinp = norm'(dout) (+ dresidual, the gradient that
// reaches the residual stream from above, when non-null). `inp` is the normalised x.
extern "C" __global__ void norm_backward(float* dinp, const float* dresidual, const float* dout, const float* inp,
                                         const float* weight, const float* mean, const float* rstd, int n, int c) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const float *x = inp + (long long)row * c, *dy = dout + (long long)row * c;
    float mu = mean ? mean[row] : 0.0f, rs = rstd[row];
    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
    for (int i = lane; i < c; i += 32) {
        float dxhat = dy[i] * weight[i];
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (x[i] - mu) * rs;
    }
    float mean_dxhat = mean ? warp_sum(sum_dxhat) / c : 0.0f;
    float mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / c;
    float* dx = dinp + (long long)row * c;
    for (int i = lane; i < c; i += 32) {
        float xhat = (x[i] - mu) * rs;
        float g = rs * (dy[i] * weight[i] - mean_dxhat - xhat * mean_dxhat_xhat);
        dx[i] = dresidual ? dresidual[(long long)row * c + i] + g : g;
    }
}

// dweight += sum_rows(dout * xhat), dbias += sum_rows(dout) (dbias may be null). Block (x: 256
// columns, y: a span of rows); spans add atomically.
extern "C" __global__ void norm_param_grads(float* dweight, float* dbias, const float* dout, const float* inp,
                                            const float* mean, const float* rstd, int n, int c, int rows_per_block) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    int r0 = blockIdx.y * rows_per_block, r1 = min(n, r0 + rows_per_block);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; r++) {
        float dy = dout[(long long)r * c + col];
        float xhat = (inp[(long long)r * c + col] - (mean ? mean[r] : 0.0f)) * rstd[r];
        dw += dy * xhat;
        db += dy;
    }
    atomicAdd(&dweight[col], dw);
    if (dbias) atomicAdd(&dbias[col], db);
}

// ---- activations (0: GELU, erf form; 1: GELU, tanh form; 2: SiLU) -----------------------------

#define INV_SQRT_2 0.70710678118654752f
#define INV_SQRT_2PI 0.3989422804014327f
#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_TANH_CUBIC 0.044715f

__device__ __forceinline__ float act_apply(int act, float x) {
    if (act == 0) return 0.5f * x * (1.0f + erff(x * INV_SQRT_2));
    if (act == 1) return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x)));
    return x / (1.0f + expf(-x));
}

__device__ __forceinline__ float act_derivative(int act, float x) {
    if (act == 0) {
        float gaussian = expf(-0.5f * x * x);
        return 0.5f * (1.0f + erff(x * INV_SQRT_2)) + x * INV_SQRT_2PI * gaussian;
    }
    if (act == 1) {
        float t = tanhf(SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x));
        float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_CUBIC * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

extern "C" __global__ void activation_forward(float* out, const float* inp, long long n, int act) {
    GRID_STRIDE(i, n) out[i] = act_apply(act, inp[i]);
}

extern "C" __global__ void activation_backward_inplace(float* dout_dinp, const float* inp, long long n, int act) {
    GRID_STRIDE(i, n) dout_dinp[i] *= act_derivative(act, inp[i]);
}

// Rows of h (N, 2F) are [gate | up]; out (N, F) = act(gate) * up.
extern "C" __global__ void gated_forward(float* out, const float* h, int n, int f, int act) {
    GRID_STRIDE(i, (long long)n * f) {
        long long row = i / f, col = i % f;
        const float* hr = h + row * 2 * f;
        out[i] = act_apply(act, hr[col]) * hr[f + col];
    }
}

extern "C" __global__ void gated_backward(float* dh, const float* dout, const float* h, int n, int f, int act) {
    GRID_STRIDE(i, (long long)n * f) {
        long long row = i / f, col = i % f;
        const float* hr = h + row * 2 * f;
        float* dr = dh + row * 2 * f;
        float gate = hr[col], up = hr[f + col], d = dout[i];
        dr[col] = d * up * act_derivative(act, gate);
        dr[f + col] = d * act_apply(act, gate);
    }
}

// ---- rotary embeddings (rotate-half layout) ---------------------------------------------------

// Rotates heads first_head.. of every row_len-long row of x in place; row n is at table row
// `offset + n % t`; cos/sin are (positions, half). sign -1 rotates backwards (the backward pass).
extern "C" __global__ void rope_apply(float* x, const float* cos_table, const float* sin_table, int rows,
                                      int row_len, int first_head, int n_heads, int t, int offset, int half,
                                      float sign) {
    GRID_STRIDE(i, (long long)rows * n_heads * half) {
        long long row = i / ((long long)n_heads * half);
        int rest = i % ((long long)n_heads * half), h = first_head + rest / half, k = rest % half;
        long long pos = offset + row % t;
        float c = cos_table[pos * half + k], s = sign * sin_table[pos * half + k];
        float* head = x + row * row_len + (long long)h * 2 * half;
        float a = head[k], b = head[half + k];
        head[k] = a * c - b * s;
        head[half + k] = b * c + a * s;
    }
}

// ---- fused softmax cross-entropy (one block per row) ------------------------------------------

// losses[n] = logsumexp(row) - row[target]; the row becomes (softmax - onehot) * grad_scale.
extern "C" __global__ void cross_entropy_fused(float* logits_dlogits, float* losses, const unsigned int* targets,
                                               int v, float grad_scale) {
    __shared__ float shared32[32];
    long long row = blockIdx.x;
    float* x = logits_dlogits + row * v;
    int target = targets[row];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max(m, shared32);
    float target_logit = x[target];
    float s = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += expf(x[i] - m);
    s = block_sum(s, shared32);
    __syncthreads();  // every thread has read x[target] before it is overwritten
    if (threadIdx.x == 0) losses[row] = m + logf(s) - target_logit;
    float scale = grad_scale / s;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float p = expf(x[i] - m) * scale;
        x[i] = i == target ? p - grad_scale : p;
    }
}

// ---- AdamW over every parameter region in one launch ------------------------------------------

// Region r covers [region_end[r-1], region_end[r]) and is decayed when decay[r] != 0.
extern "C" __global__ void adamw(float* params, float* m, float* v, const float* grads, long long n,
                                 const long long* region_end, const unsigned char* decay, int regions, float lr,
                                 float beta1, float beta2, float eps, float weight_decay, float bias1, float bias2,
                                 float grad_scale) {
    GRID_STRIDE(i, n) {
        int lo = 0, hi = regions - 1;  // the first region whose end is past i
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (region_end[mid] > i) hi = mid; else lo = mid + 1;
        }
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float update = (mi / bias1) / (sqrtf(vi / bias2) + eps);
        float decay_factor = decay[lo] ? 1.0f - lr * weight_decay : 1.0f;
        params[i] = params[i] * decay_factor - lr * update;
    }
}

// out[0] += sum of squares (in f64, as the CPU accumulates it).
extern "C" __global__ void sum_of_squares(double* out, const float* x, long long n) {
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)x[i] * (double)x[i];
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, offset);
    if (threadIdx.x % 32 == 0) atomicAdd(out, acc);
}

// ---- MoE: tokens permuted to experts and back --------------------------------------------------

// out[r] = inp[index[r]]: expert inputs gathered row by row (the permute).
extern "C" __global__ void gather_rows(float* out, const float* inp, const unsigned int* index, int rows, int c) {
    GRID_STRIDE(i, (long long)rows * c) {
        long long r = i / c, col = i % c;
        out[i] = inp[(long long)index[r] * c + col];
    }
}

// out[index[r]] += weight[r] * inp[r] (weight may be null: 1): expert outputs added back to their
// tokens with the gates (the unpermute), and the permute's backward.
extern "C" __global__ void scatter_add_rows(float* out, const float* inp, const unsigned int* index,
                                            const float* weight, int rows, int c) {
    GRID_STRIDE(i, (long long)rows * c) {
        long long r = i / c, col = i % c;
        atomicAdd(&out[(long long)index[r] * c + col], (weight ? weight[r] : 1.0f) * inp[i]);
    }
}

// dweight[r] = dot(dout[index[r]], inp[r]): the gates' gradient in the unpermute's backward (one
// warp per row).
extern "C" __global__ void gathered_row_dots(float* dweight, const float* dout, const float* inp,
                                             const unsigned int* index, int rows, int c) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float *a = dout + (long long)index[r] * c, *b = inp + (long long)r * c;
    float acc = 0.0f;
    for (int i = lane; i < c; i += 32) acc += a[i] * b[i];
    acc = warp_sum(acc);
    if (lane == 0) dweight[r] = acc;
}

// ---- linear-layer bias ----------------------------------------------------------------------

// out (N, OC) rows = bias: the starting value a GEMM then accumulates onto.
extern "C" __global__ void broadcast_rows(float* out, const float* bias, int n, int oc) {
    GRID_STRIDE(i, (long long)n * oc) out[i] = bias[i % oc];
}

// dbias[j] += sum_r dout[r, j]: one thread per column over a span of rows (blockIdx.y), spans
// added atomically, as norm_param_grads.
extern "C" __global__ void column_sums(float* dbias, const float* dout, int n, int oc, int rows_per_block) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= oc) return;
    int r0 = blockIdx.y * rows_per_block, r1 = min(n, r0 + rows_per_block);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += dout[(long long)r * oc + col];
    atomicAdd(&dbias[col], acc);
}

// ---- bf16 (mixed precision: bf16 GEMM inputs, f32 everything else) ---------------------------

// Round to nearest even, NaN kept quiet: the `half` crate's bf16::from_f32, bit for bit.
__device__ __forceinline__ unsigned short bf16_from_f32(float f) {
    unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x0040u);
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* inp, long long n) {
    GRID_STRIDE(i, n) out[i] = bf16_from_f32(inp[i]);
}

extern "C" __global__ void bf16_to_f32(float* out, const unsigned short* inp, long long n) {
    GRID_STRIDE(i, n) out[i] = __uint_as_float((unsigned int)inp[i] << 16);
}
