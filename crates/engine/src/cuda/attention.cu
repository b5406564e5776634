// Causal attention, FlashAttention-style, f32: the layout and masking of attention.rs (qkv (N,
// (NH + 2 KVH) HS), out (N, NH HS), lse (B, NH, T); GQA, sliding window, ALiBi or T5 relative
// bias). One thread owns one query row (forward, dQ) or one key row (dK, dV) and keeps its head
// in thread-local arrays; key/value (or query) tiles are shared through shared memory, and the
// softmax is online, so memory is O(T). This is the correct baseline the tensor-core version is
// checked against; it does not use tensor cores.

#define MAX_HS 256

struct Shape {
    int t, nh, kvh, hs, window;  // window 0: plain causal
    int bias_kind;                // 0 none, 1 ALiBi (table: slopes), 2 relative (table (buckets, NH))
    const float* table;
    const unsigned int* buckets;
};

// Every kernel takes the shape as these parameters (last) and makes `s` from them.
#define SHAPE_PARAMS \
    int t, int nh, int kvh, int hs_, int window, int bias_kind, const float *table, const unsigned int *buckets
#define SHAPE Shape s = {t, nh, kvh, hs_, window, bias_kind, table, buckets}

__device__ __forceinline__ bool visible(const Shape& s, int i, int j) {
    return j <= i && (s.window == 0 || i - j < s.window);
}

__device__ __forceinline__ float score_bias(const Shape& s, int h, int distance) {
    if (s.bias_kind == 1) return -s.table[h] * (float)distance;
    if (s.bias_kind == 2) return s.table[s.buckets[distance] * s.nh + h];
    return 0.0f;
}

// Loads rows j0..j0+rows of one head (at `offset` in each qkv row) into shared `dst (rows, hs)`.
__device__ void load_rows(float* dst, const float* src, int width, int offset, int j0, int rows, int hs) {
    for (int e = threadIdx.x; e < rows * hs; e += blockDim.x) {
        int r = e / hs, d = e % hs;
        dst[e] = src[(long long)(j0 + r) * width + offset + d];
    }
}

// What a query-row launch (forward, dQ) works on: this thread's row i of head h (kv head kh) in
// batch bi, whose rows in qkv start at `seq`, and the keys [first, last] its block's rows see.
struct QueryRows {
    int bi, h, kh, width, i, first, last;
    const float* seq;
};

__device__ QueryRows query_rows(const Shape& s, const float* qkv) {
    int bi = blockIdx.y / s.nh, h = blockIdx.y % s.nh, width = (s.nh + 2 * s.kvh) * s.hs;
    int i0 = blockIdx.x * blockDim.x;
    return {bi,
            h,
            h / (s.nh / s.kvh),
            width,
            i0 + (int)threadIdx.x,
            s.window ? max(0, i0 + 1 - s.window) : 0,
            min(s.t, i0 + (int)blockDim.x) - 1,
            qkv + (long long)bi * s.t * width};
}

// Grid (ceil(T / blockDim.x), B * NH); dynamic shared memory 2 * bk * hs floats.
extern "C" __global__ void attention_forward(float* out, float* lse, const float* qkv, int bk, SHAPE_PARAMS) {
    SHAPE;
    extern __shared__ float tile[];
    float *keys = tile, *values = tile + bk * s.hs;
    auto [bi, h, kh, width, i, first, last, seq] = query_rows(s, qkv);
    int hs = s.hs;
    float scale = rsqrtf((float)hs);
    float q[MAX_HS], acc[MAX_HS];
    float m = -INFINITY, sum = 0.0f;
    if (i < s.t)
        for (int d = 0; d < hs; d++) q[d] = seq[(long long)i * width + h * hs + d], acc[d] = 0.0f;
    for (int j0 = first; j0 <= last; j0 += bk) {
        int rows = min(bk, last + 1 - j0);
        __syncthreads();
        load_rows(keys, seq, width, (s.nh + kh) * hs, j0, rows, hs);
        load_rows(values, seq, width, (s.nh + s.kvh + kh) * hs, j0, rows, hs);
        __syncthreads();
        if (i >= s.t) continue;
        for (int r = 0; r < rows; r++) {
            int j = j0 + r;
            if (!visible(s, i, j)) continue;
            float score = 0.0f;
            for (int d = 0; d < hs; d++) score += q[d] * keys[r * hs + d];
            score = score * scale + score_bias(s, h, i - j);
            if (score > m) {
                float correction = expf(m - score);
                sum *= correction;
                for (int d = 0; d < hs; d++) acc[d] *= correction;
                m = score;
            }
            float p = expf(score - m);
            sum += p;
            for (int d = 0; d < hs; d++) acc[d] += p * values[r * hs + d];
        }
    }
    if (i >= s.t) return;
    float* o = out + ((long long)bi * s.t + i) * s.nh * hs + h * hs;
    for (int d = 0; d < hs; d++) o[d] = acc[d] / sum;
    lse[((long long)bi * s.nh + h) * s.t + i] = m + logf(sum);
}

// D (B, NH, T) = rowsum(dout * out) per head: one warp per (row, head).
extern "C" __global__ void attention_backward_preprocess(float* delta, const float* dout, const float* out, int b,
                                                         SHAPE_PARAMS) {
    SHAPE;
    long long task = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (task >= (long long)b * s.t * s.nh) return;
    long long row = task / s.nh;  // bi * t + i
    int h = task % s.nh;
    const float *dy = dout + row * s.nh * s.hs + h * s.hs, *y = out + row * s.nh * s.hs + h * s.hs;
    float acc = 0.0f;
    for (int d = lane; d < s.hs; d += 32) acc += dy[d] * y[d];
    acc = warp_sum(acc);
    if (lane == 0) {
        long long bi = row / s.t, i = row % s.t;
        delta[(bi * s.nh + h) * s.t + i] = acc;
    }
}

// dK and dV of one key row per thread, over every query head of its group. Grid (ceil(T /
// blockDim.x), B * KVH); dynamic shared memory 2 * bq * hs + 2 * bq floats.
extern "C" __global__ void attention_backward_dkv(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                  const float* delta, int bq, SHAPE_PARAMS) {
    SHAPE;
    extern __shared__ float tile[];
    int hs = s.hs;
    float *queries = tile, *douts = tile + bq * hs, *lses = douts + bq * hs, *deltas = lses + bq;
    int bi = blockIdx.y / s.kvh, kh = blockIdx.y % s.kvh, group = s.nh / s.kvh;
    int width = (s.nh + 2 * s.kvh) * hs;
    const float* seq = qkv + (long long)bi * s.t * width;
    int j0 = blockIdx.x * blockDim.x, j = j0 + threadIdx.x;
    // Queries that see any key of this block: from j0 to the window's end past the last key.
    int last_key = min(s.t, j0 + (int)blockDim.x) - 1;
    int last = s.window ? min(s.t - 1, last_key + s.window - 1) : s.t - 1;
    float scale = rsqrtf((float)hs);
    float k[MAX_HS], v[MAX_HS], dk[MAX_HS], dv[MAX_HS];
    if (j < s.t)
        for (int d = 0; d < hs; d++) {
            k[d] = seq[(long long)j * width + (s.nh + kh) * hs + d];
            v[d] = seq[(long long)j * width + (s.nh + s.kvh + kh) * hs + d];
            dk[d] = 0.0f, dv[d] = 0.0f;
        }
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        for (int i0 = j0; i0 <= last; i0 += bq) {
            int rows = min(bq, last + 1 - i0);
            __syncthreads();
            load_rows(queries, seq, width, h * hs, i0, rows, hs);
            load_rows(douts, dout + (long long)bi * s.t * s.nh * hs, s.nh * hs, h * hs, i0, rows, hs);
            for (int r = threadIdx.x; r < rows; r += blockDim.x) {
                long long at = ((long long)bi * s.nh + h) * s.t + i0 + r;
                lses[r] = lse[at];
                deltas[r] = delta[at];
            }
            __syncthreads();
            if (j >= s.t) continue;
            for (int r = 0; r < rows; r++) {
                int i = i0 + r;
                if (!visible(s, i, j)) continue;
                const float *qi = queries + r * hs, *dyi = douts + r * hs;
                float score = 0.0f, dp = 0.0f;
                for (int d = 0; d < hs; d++) score += qi[d] * k[d], dp += dyi[d] * v[d];
                float p = expf(score * scale + score_bias(s, h, i - j) - lses[r]);
                float ds = p * (dp - deltas[r]) * scale;
                for (int d = 0; d < hs; d++) dv[d] += p * dyi[d], dk[d] += ds * qi[d];
            }
        }
    }
    if (j >= s.t) return;
    float* row = dqkv + ((long long)bi * s.t + j) * width;
    for (int d = 0; d < hs; d++) {
        row[(s.nh + kh) * hs + d] = dk[d];
        row[(s.nh + s.kvh + kh) * hs + d] = dv[d];
    }
}

// dQ of one query row per thread. Grid (ceil(T / blockDim.x), B * NH); dynamic shared memory
// 2 * bk * hs floats.
extern "C" __global__ void attention_backward_dq(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                 const float* delta, int bk, SHAPE_PARAMS) {
    SHAPE;
    extern __shared__ float tile[];
    float *keys = tile, *values = tile + bk * s.hs;
    auto [bi, h, kh, width, i, first, last, seq] = query_rows(s, qkv);
    int hs = s.hs;
    float scale = rsqrtf((float)hs);
    float q[MAX_HS], dy[MAX_HS], dq[MAX_HS];
    float l = 0.0f, delta_i = 0.0f;
    if (i < s.t) {
        for (int d = 0; d < hs; d++) {
            q[d] = seq[(long long)i * width + h * hs + d];
            dy[d] = dout[((long long)bi * s.t + i) * s.nh * hs + h * hs + d];
            dq[d] = 0.0f;
        }
        long long at = ((long long)bi * s.nh + h) * s.t + i;
        l = lse[at], delta_i = delta[at];
    }
    for (int j0 = first; j0 <= last; j0 += bk) {
        int rows = min(bk, last + 1 - j0);
        __syncthreads();
        load_rows(keys, seq, width, (s.nh + kh) * hs, j0, rows, hs);
        load_rows(values, seq, width, (s.nh + s.kvh + kh) * hs, j0, rows, hs);
        __syncthreads();
        if (i >= s.t) continue;
        for (int r = 0; r < rows; r++) {
            int j = j0 + r;
            if (!visible(s, i, j)) continue;
            float score = 0.0f, dp = 0.0f;
            for (int d = 0; d < hs; d++) score += q[d] * keys[r * hs + d], dp += dy[d] * values[r * hs + d];
            float p = expf(score * scale + score_bias(s, h, i - j) - l);
            float ds = p * (dp - delta_i) * scale;
            for (int d = 0; d < hs; d++) dq[d] += ds * keys[r * hs + d];
        }
    }
    if (i >= s.t) return;
    float* row = dqkv + ((long long)bi * s.t + i) * width + h * hs;
    for (int d = 0; d < hs; d++) row[d] = dq[d];
}
