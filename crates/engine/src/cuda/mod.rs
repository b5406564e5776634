//! The CUDA backend: device buffers, the engine's kernels compiled by NVRTC at run time, and
//! cuBLAS GEMMs, all through `cudarc` with dynamic loading. Nothing CUDA is linked at build time:
//! the same binary runs on a machine without a GPU, where [`Gpu::open`] says what is missing
//! (driver, NVRTC or cuBLAS) instead of failing to start.
//!
//! Each kernel mirrors the CPU kernel of the same name (layout, argument order, what accumulates)
//! so that [`check`] can hold every one to its CPU twin. Buffers are `cudarc` slices; a launcher
//! checks every length before launching and answers [`GpuError::Shape`] on a mismatch. Token ids
//! and indices must be in range, as on the CPU (the model checks them once, on the host).

pub mod check;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

pub use cudarc::driver::{CudaSlice, DriverError, ValidAsZeroBits};

use crate::activation::Activation;
use crate::attention::AttentionShape;
use crate::optim::AdamW;
use crate::rope::RopeTable;

/// The CUDA C of every kernel, compiled as one module.
const SOURCE: &str = concat!(include_str!("kernels.cu"), include_str!("attention.cu"));

/// Every kernel in [`SOURCE`]; all are loaded when a device is opened.
pub const KERNELS: &[&str] = &[
    "embedding_forward",
    "embedding_backward",
    "norm_forward",
    "norm_backward",
    "norm_param_grads",
    "activation_forward",
    "activation_backward_inplace",
    "gated_forward",
    "gated_backward",
    "rope_apply",
    "cross_entropy_fused",
    "adamw",
    "sum_of_squares",
    "gather_rows",
    "scatter_add_rows",
    "gathered_row_dots",
    "attention_forward",
    "attention_backward_preprocess",
    "attention_backward_dkv",
    "attention_backward_dq",
    "broadcast_rows",
    "column_sums",
    "f32_to_bf16",
    "bf16_to_f32",
];

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no NVIDIA driver: libcuda could not be loaded (CPU is the default device)")]
    NoDriver,
    #[error("NVRTC (libnvrtc, from the CUDA 13 runtime) could not be loaded; it compiles the kernels")]
    NoNvrtc,
    #[error("cuBLAS (libcublas, from the CUDA 13 runtime) could not be loaded")]
    NoCublas,
    #[error("CUDA device {ordinal} does not exist: {count} visible")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("compiling the CUDA kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
    #[error("{what}: {len} elements, needs at least {need}")]
    Shape { what: &'static str, len: usize, need: usize },
    #[error("{0}")]
    Unsupported(&'static str),
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// Which of the run-time libraries this machine can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Libraries {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
}

/// Probes for libcuda, libnvrtc and libcublas without loading them for good (cudarc would panic
/// on first use of a missing one; this is how we avoid that).
pub fn libraries() -> Libraries {
    // SAFETY: each probe only tries to dlopen the library by its candidate names.
    unsafe {
        Libraries {
            driver: cudarc::driver::sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
        }
    }
}

/// CUDA devices visible to the driver.
pub fn device_count() -> Result<usize> {
    if !libraries().driver {
        return Err(GpuError::NoDriver);
    }
    Ok(CudaContext::device_count()? as usize)
}

/// PTX of [`SOURCE`] for a virtual architecture such as `compute_90`, compiled once per process.
/// Needs only libnvrtc, not a GPU.
pub fn compile(arch: &str) -> Result<Arc<str>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<str>>>> = OnceLock::new();
    if !libraries().nvrtc {
        return Err(GpuError::NoNvrtc);
    }
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ptx) = cache.get(arch) {
        return Ok(ptx.clone());
    }
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        // IEEE division and square root, as the CPU kernels compute them.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        name: Some("truthgpt_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|e| GpuError::Compile {
        arch: arch.to_string(),
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })?;
    let ptx: Arc<str> = ptx.to_src().into();
    cache.insert(arch.to_string(), ptx.clone());
    Ok(ptx)
}

/// A null device pointer, for the kernels' optional arguments.
static NULL: u64 = 0;

/// The largest grid y (and z) dimension CUDA allows.
const MAX_GRID_Y: usize = 65_535;

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// A grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One warp per row, eight rows per block.
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn need(what: &'static str, len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(GpuError::Shape { what, len, need });
    }
    Ok(())
}

fn int(x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| GpuError::Unsupported("a size past i32::MAX"))
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Gelu => 0,
        Activation::GeluTanh => 1,
        Activation::Silu => 2,
    }
}

/// Pushes an optional buffer, or a null pointer.
fn push_opt<'a, T>(args: &mut LaunchArgs<'a>, buffer: Option<&'a CudaSlice<T>>) {
    match buffer {
        Some(buffer) => args.arg(buffer),
        None => args.arg(&NULL),
    };
}

fn push_opt_mut<'a, T>(args: &mut LaunchArgs<'a>, buffer: Option<&'a mut CudaSlice<T>>) {
    match buffer {
        Some(buffer) => args.arg(buffer),
        None => args.arg(&NULL),
    };
}

/// A row-major GEMM operand on the device, optionally used transposed (as [`crate::matmul::Op`]).
pub enum GpuOp<'a, T = f32> {
    /// The buffer holds the (rows, cols) matrix itself.
    N(&'a CudaSlice<T>),
    /// The buffer holds the (cols, rows) matrix; the product uses its transpose.
    T(&'a CudaSlice<T>),
}

impl<'a, T> GpuOp<'a, T> {
    fn buffer(&self) -> &'a CudaSlice<T> {
        match self {
            GpuOp::N(x) | GpuOp::T(x) => x,
        }
    }

    fn is_transposed(&self) -> bool {
        matches!(self, GpuOp::T(_))
    }
}

/// The cuBLAS (column-major) call for row-major `out (M, N) [+]= a (M, K) @ b (K, N)`: cuBLAS sees
/// each row-major buffer as its transpose, and C^T = B^T A^T, so the operands swap (b first) and
/// keep their own transposition flags.
#[allow(clippy::too_many_arguments)]
fn row_major_gemm<T>(
    out: usize,
    a: &GpuOp<T>,
    b: &GpuOp<T>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<GemmConfig<f32>> {
    need("matmul out", out, m * n)?;
    need("matmul lhs", a.buffer().len(), m * k)?;
    need("matmul rhs", b.buffer().len(), k * n)?;
    let flag =
        |transposed| if transposed { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let lda = if b.is_transposed() { k } else { n };
    let ldb = if a.is_transposed() { m } else { k };
    Ok(GemmConfig {
        transa: flag(b.is_transposed()),
        transb: flag(a.is_transposed()),
        m: int(n)?,
        n: int(m)?,
        k: int(k)?,
        alpha: 1.0,
        lda: int(lda)?,
        ldb: int(ldb)?,
        beta: if accumulate { 1.0 } else { 0.0 },
        ldc: int(n)?,
    })
}

/// RoPE's cos/sin table on the device.
pub struct GpuRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
    first: usize,
    positions: usize,
}

/// AdamW's parameter regions on the device: region `r` ends at `end[r]` and is decayed or not.
pub struct GpuRegions {
    end: CudaSlice<i64>,
    decay: CudaSlice<u8>,
    len: usize,
    total: usize,
}

/// A score bias of [`crate::attention::ScoreBias`], on the device.
pub enum GpuBias {
    None,
    Alibi { slopes: CudaSlice<f32> },
    Relative { table: CudaSlice<f32>, buckets: CudaSlice<u32> },
}

/// One CUDA device: its context, a stream, the compiled kernels and a cuBLAS handle.
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
    arch: String,
}

impl Gpu {
    /// Opens device `ordinal` and compiles (or takes from this process's cache) the kernels for
    /// its architecture.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let libraries = libraries();
        if !libraries.driver {
            return Err(GpuError::NoDriver);
        }
        if !libraries.nvrtc {
            return Err(GpuError::NoNvrtc);
        }
        if !libraries.cublas {
            return Err(GpuError::NoCublas);
        }
        let count = device_count()?;
        if ordinal >= count {
            return Err(GpuError::NoSuchDevice { ordinal, count });
        }
        let context = CudaContext::new(ordinal)?;
        let (major, minor) = context.compute_capability()?;
        let arch = format!("compute_{major}{minor}");
        let module = context.load_module(Ptx::from_src(compile(&arch)?.to_string()))?;
        let functions = KERNELS
            .iter()
            .map(|&name| Ok((name, module.load_function(name)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let stream = context.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Gpu { context, stream, functions, blas, arch })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        Ok(self.context.name()?)
    }

    /// The virtual architecture the kernels were compiled for, e.g. `compute_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> Result<usize> {
        Ok(self.context.total_mem()?)
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, device: &CudaSlice<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(device)?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// Waits for every launch so far.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn launch<'a>(&'a self, name: &'static str) -> LaunchArgs<'a> {
        self.stream.launch_builder(&self.functions[name])
    }

    /// See [`crate::embedding::forward`]; `n` rows, one per token.
    pub fn embedding_forward(
        &self,
        out: &mut CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        wte: &CudaSlice<f32>,
        positions: Option<&CudaSlice<f32>>,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let n = tokens.len();
        need("embedding out", out.len(), n * c)?;
        if let Some(positions) = positions {
            need("position table", positions.len(), t * c)?;
        }
        let mut args = self.launch("embedding_forward");
        args.arg(out).arg(tokens).arg(wte);
        push_opt(&mut args, positions);
        let (n, t, c) = (int(n)?, int(t)?, int(c)?);
        args.arg(&n).arg(&t).arg(&c);
        // SAFETY: the argument list matches the kernel's signature; lengths are checked above.
        unsafe { args.launch(elementwise(n as usize * c as usize)) }?;
        Ok(())
    }

    /// See [`crate::embedding::backward`]: `dwte` and `dpositions` accumulate.
    pub fn embedding_backward(
        &self,
        dwte: &mut CudaSlice<f32>,
        dpositions: Option<&mut CudaSlice<f32>>,
        dout: &CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let n = tokens.len();
        need("embedding dout", dout.len(), n * c)?;
        if let Some(dpositions) = &dpositions {
            need("position gradient", dpositions.len(), t * c)?;
        }
        let mut args = self.launch("embedding_backward");
        args.arg(dwte);
        push_opt_mut(&mut args, dpositions);
        let (n, t, c) = (int(n)?, int(t)?, int(c)?);
        args.arg(dout).arg(tokens).arg(&n).arg(&t).arg(&c);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n as usize * c as usize)) }?;
        Ok(())
    }

    /// LayerNorm (with `mean`) or RMSNorm (without) over rows of `c`, as in [`crate::norm`];
    /// `n = rstd.len()` rows. With `residual = Some((r, sum))`, the input is `inp + r`, which is
    /// written to `sum` (the residual stream) and normalised: the add and the norm in one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_forward(
        &self,
        out: &mut CudaSlice<f32>,
        mean: Option<&mut CudaSlice<f32>>,
        rstd: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        residual: Option<(&CudaSlice<f32>, &mut CudaSlice<f32>)>,
        weight: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        let n = rstd.len();
        need("norm out", out.len(), n * c)?;
        need("norm input", inp.len(), n * c)?;
        need("norm weight", weight.len(), c)?;
        if let Some(mean) = &mean {
            need("norm mean", mean.len(), n)?;
        }
        if let Some((r, sum)) = &residual {
            need("residual", r.len(), n * c)?;
            need("residual sum", sum.len(), n * c)?;
        }
        if bias.is_some() && mean.is_none() {
            return Err(GpuError::Unsupported("RMSNorm has no bias"));
        }
        let (residual, sum) = residual.map_or((None, None), |(r, s)| (Some(r), Some(s)));
        let mut args = self.launch("norm_forward");
        args.arg(out);
        push_opt_mut(&mut args, sum);
        push_opt_mut(&mut args, mean);
        args.arg(rstd).arg(inp);
        push_opt(&mut args, residual);
        args.arg(weight);
        push_opt(&mut args, bias);
        let (rows, c) = (int(n)?, int(c)?);
        args.arg(&rows).arg(&c).arg(&eps);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(warp_per_row(n)) }?;
        Ok(())
    }

    /// Backward of [`Gpu::norm_forward`]: `dinp` is written (plus `dresidual`, the gradient
    /// already on the residual stream, when given); `dweight` and `dbias` accumulate. `inp` is
    /// what was normalised (the residual sum when fused).
    #[allow(clippy::too_many_arguments)]
    pub fn norm_backward(
        &self,
        dinp: &mut CudaSlice<f32>,
        dweight: &mut CudaSlice<f32>,
        dbias: Option<&mut CudaSlice<f32>>,
        dresidual: Option<&CudaSlice<f32>>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        mean: Option<&CudaSlice<f32>>,
        rstd: &CudaSlice<f32>,
        c: usize,
    ) -> Result<()> {
        let n = rstd.len();
        for (what, len) in [("norm dinp", dinp.len()), ("norm dout", dout.len()), ("norm input", inp.len())] {
            need(what, len, n * c)?;
        }
        need("norm dweight", dweight.len(), c)?;
        if dbias.is_some() && mean.is_none() {
            return Err(GpuError::Unsupported("RMSNorm has no bias"));
        }
        if let Some(dresidual) = dresidual {
            need("residual gradient", dresidual.len(), n * c)?;
        }
        let (rows, cols) = (int(n)?, int(c)?);
        let mut args = self.launch("norm_backward");
        args.arg(dinp);
        push_opt(&mut args, dresidual);
        args.arg(dout).arg(inp).arg(weight);
        push_opt(&mut args, mean);
        args.arg(rstd).arg(&rows).arg(&cols);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(warp_per_row(n)) }?;

        // Spans of at least 256 rows, and few enough to fit the grid's y limit.
        let rows_per_block = n.div_ceil(MAX_GRID_Y).max(256);
        let mut args = self.launch("norm_param_grads");
        args.arg(dweight);
        push_opt_mut(&mut args, dbias);
        let span = int(rows_per_block)?;
        args.arg(dout).arg(inp);
        push_opt(&mut args, mean);
        args.arg(rstd).arg(&rows).arg(&cols).arg(&span);
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(256) as u32, n.div_ceil(rows_per_block).max(1) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }

    /// An element-wise kernel `(out, inp, n[, act])` over all of `inp`.
    fn unary<O, I>(
        &self,
        kernel: &'static str,
        what: &'static str,
        out: &mut CudaSlice<O>,
        inp: &CudaSlice<I>,
        act: Option<Activation>,
    ) -> Result<()> {
        let n = inp.len();
        need(what, out.len(), n)?;
        let (n64, code) = (n as i64, act.map(act_code));
        let mut args = self.launch(kernel);
        args.arg(out).arg(inp).arg(&n64);
        if let Some(code) = &code {
            args.arg(code);
        }
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `out = act(inp)`, element-wise (see [`crate::activation::forward`]).
    pub fn activation_forward(
        &self,
        act: Activation,
        out: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
    ) -> Result<()> {
        self.unary("activation_forward", "activation out", out, inp, Some(act))
    }

    /// `dinp = dout * act'(inp)`, in place over `dout`.
    pub fn activation_backward_inplace(
        &self,
        act: Activation,
        dout_dinp: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
    ) -> Result<()> {
        self.unary("activation_backward_inplace", "activation gradient", dout_dinp, inp, Some(act))
    }

    /// GEGLU/SwiGLU over `h (N, 2F)` rows `[gate | up]` (see [`crate::activation::gated_forward`]).
    pub fn gated_forward(
        &self,
        act: Activation,
        out: &mut CudaSlice<f32>,
        h: &CudaSlice<f32>,
        f: usize,
    ) -> Result<()> {
        let n = h.len() / (2 * f).max(1);
        need("gated out", out.len(), n * f)?;
        let (rows, width, code) = (int(n)?, int(f)?, act_code(act));
        let mut args = self.launch("gated_forward");
        args.arg(out).arg(h).arg(&rows).arg(&width).arg(&code);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n * f)) }?;
        Ok(())
    }

    /// Backward of [`Gpu::gated_forward`]: `dh (N, 2F)` is written.
    pub fn gated_backward(
        &self,
        act: Activation,
        dh: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        f: usize,
    ) -> Result<()> {
        let n = h.len() / (2 * f).max(1);
        need("gated dh", dh.len(), n * 2 * f)?;
        need("gated dout", dout.len(), n * f)?;
        let (rows, width, code) = (int(n)?, int(f)?, act_code(act));
        let mut args = self.launch("gated_backward");
        args.arg(dh).arg(dout).arg(h).arg(&rows).arg(&width).arg(&code);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n * f)) }?;
        Ok(())
    }

    /// Uploads a RoPE table.
    pub fn rope_table(&self, table: &RopeTable) -> Result<GpuRope> {
        let (cos, sin) = table.cos_sin();
        Ok(GpuRope {
            cos: self.upload(cos)?,
            sin: self.upload(sin)?,
            half: table.half(),
            first: table.first(),
            positions: cos.len() / table.half().max(1),
        })
    }

    /// See [`RopeTable::apply`]: rotates heads `first_head..first_head + n_heads` of every
    /// `row_len`-long row of `x` in place; row `n` is at position `start + n % t`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_apply(
        &self,
        x: &mut CudaSlice<f32>,
        table: &GpuRope,
        row_len: usize,
        first_head: usize,
        n_heads: usize,
        t: usize,
        start: usize,
        inverse: bool,
    ) -> Result<()> {
        if start < table.first || start + t > table.first + table.positions {
            return Err(GpuError::Unsupported("the RoPE table does not cover these positions"));
        }
        if (first_head + n_heads) * 2 * table.half > row_len {
            return Err(GpuError::Unsupported("RoPE heads past the end of the row"));
        }
        let rows = x.len() / row_len.max(1);
        let sign = if inverse { -1.0f32 } else { 1.0 };
        let (r, len, fh, nh, t, offset, half) = (
            int(rows)?,
            int(row_len)?,
            int(first_head)?,
            int(n_heads)?,
            int(t)?,
            int(start - table.first)?,
            int(table.half)?,
        );
        let mut args = self.launch("rope_apply");
        args.arg(x).arg(&table.cos).arg(&table.sin);
        args.arg(&r).arg(&len).arg(&fh).arg(&nh).arg(&t).arg(&offset).arg(&half).arg(&sign);
        // SAFETY: as in `embedding_forward`; positions are checked against the table above.
        unsafe { args.launch(elementwise(rows * n_heads * table.half)) }?;
        Ok(())
    }

    /// See [`crate::loss::cross_entropy_fused`]: `losses` receives each row's loss and the logits
    /// become their gradient. One block per row.
    pub fn cross_entropy_fused(
        &self,
        logits_dlogits: &mut CudaSlice<f32>,
        losses: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        v: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let n = targets.len();
        need("logits", logits_dlogits.len(), n * v)?;
        need("losses", losses.len(), n)?;
        if n == 0 {
            return Ok(()); // one block per row: no rows, no launch
        }
        let width = int(v)?;
        let mut args = self.launch("cross_entropy_fused");
        args.arg(logits_dlogits).arg(losses).arg(targets).arg(&width).arg(&grad_scale);
        let cfg = LaunchConfig {
            grid_dim: (int(n)?.max(1) as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as in `embedding_forward`; targets must be < v (checked by the caller).
        unsafe { args.launch(cfg) }?;
        Ok(())
    }

    /// Uploads AdamW's regions: `(end, decay)` pairs, ends increasing.
    pub fn regions(&self, regions: &[(usize, bool)]) -> Result<GpuRegions> {
        if regions.is_empty() || regions.windows(2).any(|w| w[0].0 > w[1].0) {
            return Err(GpuError::Unsupported("AdamW regions must be non-empty, with increasing ends"));
        }
        let end: Vec<i64> = regions.iter().map(|&(end, _)| end as i64).collect();
        let decay: Vec<u8> = regions.iter().map(|&(_, decay)| u8::from(decay)).collect();
        let total = regions.last().map_or(0, |r| r.0);
        Ok(GpuRegions { end: self.upload(&end)?, decay: self.upload(&decay)?, len: regions.len(), total })
    }

    /// One AdamW step over every region in one launch (see [`AdamW::update`]).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        opt: &AdamW,
        params: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        regions: &GpuRegions,
        step: u64,
        grad_scale: f32,
    ) -> Result<()> {
        let n = regions.total;
        for (what, len) in [("params", params.len()), ("m", m.len()), ("v", v.len()), ("grads", grads.len())]
        {
            need(what, len, n)?;
        }
        let bias1 = 1.0 - opt.beta1.powi(step as i32);
        let bias2 = 1.0 - opt.beta2.powi(step as i32);
        let (n64, count) = (n as i64, int(regions.len)?);
        let mut args = self.launch("adamw");
        args.arg(params).arg(m).arg(v).arg(grads).arg(&n64).arg(&regions.end).arg(&regions.decay).arg(&count);
        args.arg(&opt.lr).arg(&opt.beta1).arg(&opt.beta2).arg(&opt.eps).arg(&opt.weight_decay);
        args.arg(&bias1).arg(&bias2).arg(&grad_scale);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n)) }?;
        Ok(())
    }

    /// Sum of squares in f64 (for the gradient norm), as [`crate::optim::sum_of_squares`].
    pub fn sum_of_squares(&self, x: &CudaSlice<f32>) -> Result<f64> {
        let mut out = self.zeros::<f64>(1)?;
        let n = x.len() as i64;
        let mut args = self.launch("sum_of_squares");
        args.arg(&mut out).arg(x).arg(&n);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(x.len())) }?;
        Ok(self.download(&out)?[0])
    }

    /// `out[r] = inp[index[r]]` for rows of `c`: tokens permuted into expert order.
    pub fn gather_rows(
        &self,
        out: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        c: usize,
    ) -> Result<()> {
        let rows = index.len();
        need("gathered rows", out.len(), rows * c)?;
        let (r, width) = (int(rows)?, int(c)?);
        let mut args = self.launch("gather_rows");
        args.arg(out).arg(inp).arg(index).arg(&r).arg(&width);
        // SAFETY: as in `embedding_forward`; indices must be rows of `inp` (the router's).
        unsafe { args.launch(elementwise(rows * c)) }?;
        Ok(())
    }

    /// `out[index[r]] += weight[r] * inp[r]` (weight 1 when `None`): expert outputs back to their
    /// tokens, gated. Rows that meet add atomically.
    pub fn scatter_add_rows(
        &self,
        out: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        weight: Option<&CudaSlice<f32>>,
        c: usize,
    ) -> Result<()> {
        let rows = index.len();
        need("scattered rows", inp.len(), rows * c)?;
        if let Some(weight) = weight {
            need("gates", weight.len(), rows)?;
        }
        let (r, width) = (int(rows)?, int(c)?);
        let mut args = self.launch("scatter_add_rows");
        args.arg(out).arg(inp).arg(index);
        push_opt(&mut args, weight);
        args.arg(&r).arg(&width);
        // SAFETY: as in `gather_rows`.
        unsafe { args.launch(elementwise(rows * c)) }?;
        Ok(())
    }

    /// `dweight[r] = dout[index[r]] . inp[r]`: the gates' gradient of [`Gpu::scatter_add_rows`].
    pub fn gathered_row_dots(
        &self,
        dweight: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        c: usize,
    ) -> Result<()> {
        let rows = index.len();
        need("gate gradient", dweight.len(), rows)?;
        need("expert outputs", inp.len(), rows * c)?;
        let (r, width) = (int(rows)?, int(c)?);
        let mut args = self.launch("gathered_row_dots");
        args.arg(dweight).arg(dout).arg(inp).arg(index).arg(&r).arg(&width);
        // SAFETY: as in `gather_rows`.
        unsafe { args.launch(warp_per_row(rows)) }?;
        Ok(())
    }

    /// `out (M, N) = a (M, K) @ b (K, N)`, or `+=` with `accumulate`, row-major as
    /// [`crate::matmul::matmul`], through cuBLAS (f32, no TF32).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        out: &mut CudaSlice<f32>,
        a: GpuOp,
        b: GpuOp,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let cfg = row_major_gemm(out.len(), &a, &b, m, k, n, accumulate)?;
        // SAFETY: the leading dimensions and sizes describe buffers whose lengths were checked.
        unsafe { self.blas.gemm(cfg, b.buffer(), a.buffer(), out) }?;
        Ok(())
    }

    /// [`Gpu::matmul`] with bf16 operands: f32 accumulation and an f32 `out` (mixed precision's
    /// GEMM: inputs rounded to bf16, nothing else).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_bf16(
        &self,
        out: &mut CudaSlice<f32>,
        a: GpuOp<half::bf16>,
        b: GpuOp<half::bf16>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let cfg = row_major_gemm(out.len(), &a, &b, m, k, n, accumulate)?;
        let (b_ptr, _b_sync) = b.buffer().device_ptr(&self.stream);
        let (a_ptr, _a_sync) = a.buffer().device_ptr(&self.stream);
        let (out_ptr, _out_sync) = out.device_ptr_mut(&self.stream);
        // SAFETY: as in `matmul`; cuBLAS takes bf16 A and B, an f32 C, and computes in f32.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cfg.transa,
                cfg.transb,
                cfg.m,
                cfg.n,
                cfg.k,
                (&cfg.alpha as *const f32).cast(),
                b_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                cfg.lda,
                a_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                cfg.ldb,
                (&cfg.beta as *const f32).cast(),
                out_ptr as *mut _,
                cudaDataType_t::CUDA_R_32F,
                cfg.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    }

    /// `out (N, OC)` rows set to `bias`, so that a GEMM accumulating onto it is a biased linear
    /// layer (as [`crate::matmul::linear_forward`]).
    pub fn broadcast_rows(&self, out: &mut CudaSlice<f32>, bias: &CudaSlice<f32>, n: usize) -> Result<()> {
        let oc = bias.len();
        need("rows", out.len(), n * oc)?;
        let (rows, width) = (int(n)?, int(oc)?);
        let mut args = self.launch("broadcast_rows");
        args.arg(out).arg(bias).arg(&rows).arg(&width);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(elementwise(n * oc)) }?;
        Ok(())
    }

    /// `dbias += sum_rows(dout (N, OC))`, the bias gradient (as [`crate::par::add_column_sums`]).
    pub fn column_sums(&self, dbias: &mut CudaSlice<f32>, dout: &CudaSlice<f32>, n: usize) -> Result<()> {
        let oc = dbias.len();
        need("column-summed rows", dout.len(), n * oc)?;
        let rows_per_block = n.div_ceil(MAX_GRID_Y).max(256);
        let (rows, width, span) = (int(n)?, int(oc)?, int(rows_per_block)?);
        let mut args = self.launch("column_sums");
        args.arg(dbias).arg(dout).arg(&rows).arg(&width).arg(&span);
        let cfg = LaunchConfig {
            grid_dim: (oc.div_ceil(256).max(1) as u32, n.div_ceil(rows_per_block).max(1) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }

    /// `out = bf16(inp)`, rounding to nearest even (as `half::bf16::from_f32`).
    pub fn to_bf16(&self, out: &mut CudaSlice<half::bf16>, inp: &CudaSlice<f32>) -> Result<()> {
        self.unary("f32_to_bf16", "bf16 out", out, inp, None)
    }

    /// `out = f32(inp)`, exact.
    pub fn to_f32(&self, out: &mut CudaSlice<f32>, inp: &CudaSlice<half::bf16>) -> Result<()> {
        self.unary("bf16_to_f32", "f32 out", out, inp, None)
    }

    /// Uploads a score bias for `nh` query heads; a relative table is (buckets, NH), and every
    /// bucket must be one of its rows (checked here, once, on the host).
    pub fn bias(&self, bias: crate::attention::ScoreBias, nh: usize) -> Result<GpuBias> {
        use crate::attention::ScoreBias;
        Ok(match bias {
            ScoreBias::None => GpuBias::None,
            ScoreBias::Alibi { slopes } => {
                need("ALiBi slopes", slopes.len(), nh)?;
                GpuBias::Alibi { slopes: self.upload(slopes)? }
            }
            ScoreBias::Relative { table, bucket_of_distance } => {
                let rows = table.len() / nh.max(1);
                if bucket_of_distance.iter().any(|&b| b as usize >= rows) {
                    return Err(GpuError::Unsupported("a relative-position bucket past the bias table"));
                }
                GpuBias::Relative { table: self.upload(table)?, buckets: self.upload(bucket_of_distance)? }
            }
        })
    }

    /// Pushes the kernels' shape parameters (see `SHAPE_PARAMS` in attention.cu).
    fn push_shape<'a>(args: &mut LaunchArgs<'a>, scalars: &'a [i32; 6], bias: &'a GpuBias) {
        for x in scalars {
            args.arg(x);
        }
        match bias {
            GpuBias::None => args.arg(&NULL).arg(&NULL),
            GpuBias::Alibi { slopes } => args.arg(slopes).arg(&NULL),
            GpuBias::Relative { table, buckets } => args.arg(table).arg(buckets),
        };
    }

    fn attention_scalars(s: &AttentionShape, bias: &GpuBias) -> Result<[i32; 6]> {
        if s.kvh == 0 || !s.nh.is_multiple_of(s.kvh) || s.hs == 0 || s.hs > 256 || s.window == Some(0) {
            return Err(GpuError::Unsupported(
                "attention needs whole GQA groups, 0 < HS <= 256, a window of at least 1",
            ));
        }
        if s.b * s.nh > MAX_GRID_Y {
            return Err(GpuError::Unsupported(
                "attention launches a grid row per (batch, head): B * NH <= 65535",
            ));
        }
        let kind = match bias {
            GpuBias::None => 0,
            GpuBias::Alibi { slopes } => {
                need("ALiBi slopes", slopes.len(), s.nh)?;
                1
            }
            GpuBias::Relative { table, buckets } => {
                need("relative buckets", buckets.len(), s.t)?;
                need("relative table", table.len(), s.nh)?;
                2
            }
        };
        Ok([int(s.t)?, int(s.nh)?, int(s.kvh)?, int(s.hs)?, int(s.window.unwrap_or(0))?, kind])
    }

    /// Key/value rows per shared-memory tile: two tiles of (rows, HS) within 32 KiB.
    fn kv_tile(hs: usize) -> (i32, u32) {
        let rows = if hs <= 128 { 32 } else { 16 };
        (rows as i32, (2 * rows * hs * 4) as u32)
    }

    /// See [`crate::attention::attention_forward`]: causal (windowed, GQA, biased) attention of
    /// `qkv (B*T, (NH + 2 KVH) HS)` into `out (B*T, NH HS)`, saving `lse (B, NH, T)`.
    pub fn attention_forward(
        &self,
        out: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        s: AttentionShape,
        bias: &GpuBias,
    ) -> Result<()> {
        let scalars = Self::attention_scalars(&s, bias)?;
        if s.b == 0 || s.t == 0 {
            return Ok(());
        }
        need("qkv", qkv.len(), s.b * s.t * s.qkv_width())?;
        need("attention out", out.len(), s.b * s.t * s.nh * s.hs)?;
        need("lse", lse.len(), s.b * s.nh * s.t)?;
        let (bk, shared) = Self::kv_tile(s.hs);
        let mut args = self.launch("attention_forward");
        args.arg(out).arg(lse).arg(qkv).arg(&bk);
        Self::push_shape(&mut args, &scalars, bias);
        let cfg = LaunchConfig {
            grid_dim: (s.t.div_ceil(64) as u32, (s.b * s.nh) as u32, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }

    /// Backward of [`Gpu::attention_forward`] (FlashAttention-2: scores recomputed from `lse`):
    /// `dqkv` is written, every element. `delta (B, NH, T)` is scratch. The relative-bias table's
    /// own gradient is not computed here (the CPU kernel's `dbias_scratch`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        dqkv: &mut CudaSlice<f32>,
        delta: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        s: AttentionShape,
        bias: &GpuBias,
    ) -> Result<()> {
        let scalars = Self::attention_scalars(&s, bias)?;
        let rows = s.b * s.t;
        if rows == 0 {
            return Ok(());
        }
        need("qkv", qkv.len(), rows * s.qkv_width())?;
        need("dqkv", dqkv.len(), rows * s.qkv_width())?;
        need("attention dout", dout.len(), rows * s.nh * s.hs)?;
        need("attention out", out.len(), rows * s.nh * s.hs)?;
        need("lse", lse.len(), s.b * s.nh * s.t)?;
        need("delta", delta.len(), s.b * s.nh * s.t)?;
        let b = int(s.b)?;

        let mut args = self.launch("attention_backward_preprocess");
        args.arg(&mut *delta).arg(dout).arg(out).arg(&b);
        Self::push_shape(&mut args, &scalars, bias);
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(warp_per_row(rows * s.nh)) }?;

        let (tile, shared) = Self::kv_tile(s.hs);
        let mut args = self.launch("attention_backward_dkv");
        args.arg(&mut *dqkv).arg(dout).arg(qkv).arg(lse).arg(&*delta).arg(&tile);
        Self::push_shape(&mut args, &scalars, bias);
        let cfg = LaunchConfig {
            grid_dim: (s.t.div_ceil(64) as u32, (s.b * s.kvh) as u32, 1),
            block_dim: (64, 1, 1),
            // Query and dout tiles, plus their lse and delta.
            shared_mem_bytes: shared + 2 * tile as u32 * 4,
        };
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(cfg) }?;

        let mut args = self.launch("attention_backward_dq");
        args.arg(dqkv).arg(dout).arg(qkv).arg(lse).arg(&*delta).arg(&tile);
        Self::push_shape(&mut args, &scalars, bias);
        let cfg = LaunchConfig {
            grid_dim: (s.t.div_ceil(64) as u32, (s.b * s.nh) as u32, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: as in `embedding_forward`.
        unsafe { args.launch(cfg) }?;
        Ok(())
    }
}
