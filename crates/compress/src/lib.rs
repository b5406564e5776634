//! One-shot pruning of linear layers (issue 20, item 4), of whole models ([`model`]), and
//! structured removal of feed-forward channels ([`structured`]).
//!
//! Weights are row-major `W: (O, I)` (one row per output, as `y = W x`); calibration inputs are
//! row-major `X: (N, I)`, the activations a linear saw on a calibration set (collected through
//! `Model::linear_inputs`, as AWQ does).
//!
//! - [`Method::Magnitude`]: score `|w|`, compared **per output row** (the same comparison group
//!   as Wanda, so the two differ only in the score and agree when input norms are equal).
//! - [`Method::Wanda`]: score `|w_ij| * ||X_j||_2`, per output row (Sun et al. 2023, "A Simple
//!   and Effective Pruning Approach for LLMs").
//! - [`Method::SparseGpt`]: OBS-style reconstruction with `H = 2 X^T X + λI`, the upper Cholesky
//!   factor of `H^-1`, column blocks and lazy updates (Frantar & Alistarh 2023, "SparseGPT").
//!
//! Patterns: unstructured sparsity `S` (exactly `floor(S * I)` zeros per row) or N:M (N zeros in
//! every group of M consecutive inputs, e.g. 2:4).

mod linalg;
pub mod model;
mod sparsegpt;
pub mod structured;

pub use model::{prune_model, Calibration, ModelReport};
pub use sparsegpt::sparsegpt;
pub use structured::{prune_channels, ChannelReport};

/// Errors of pruning.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("sparsity {0} is outside [0, 1)")]
    Sparsity(f32),
    #[error("pattern {n}:{m} is not N:M with 0 < N < M")]
    Pattern { n: usize, m: usize },
    #[error("pattern `{0}` is not N:M, two integers such as 2:4")]
    PatternText(String),
    #[error("pattern {n}:{m} needs the input width {inp} to be a multiple of {m}")]
    PatternWidth { n: usize, m: usize, inp: usize },
    #[error("shape mismatch in {op}: expected {expected} values, got {got}")]
    Shape { op: &'static str, expected: usize, got: usize },
    #[error("the Hessian is not positive definite even after damping (pivot {pivot} at column {col})")]
    NotPositiveDefinite { col: usize, pivot: f64 },
    #[error("cannot prune this model: {0}")]
    Unsupported(String),
    #[error("{name}: {source}")]
    Linear { name: String, source: Box<CompressError> },
    #[error(transparent)]
    Model(#[from] truthgpt_model::ModelError),
}

impl CompressError {
    /// This error, said of the linear layer `name`.
    pub(crate) fn at(self, name: &str) -> CompressError {
        CompressError::Linear { name: name.to_owned(), source: Box::new(self) }
    }
}

pub type Result<T> = std::result::Result<T, CompressError>;

/// Which pruning method scores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Wanda,
    SparseGpt,
}

/// The sparsity pattern of a pruned matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// A fraction in [0, 1) of each row's weights set to zero.
    Unstructured(f32),
    /// `n` zeros in every group of `m` consecutive inputs of a row.
    NM { n: usize, m: usize },
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured(s) => write!(f, "{}% unstructured", s * 100.0),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl Pattern {
    /// Checks the pattern against an input width.
    pub fn validate(&self, inp: usize) -> Result<()> {
        match *self {
            Pattern::Unstructured(s) if (0.0..1.0).contains(&s) => Ok(()),
            Pattern::Unstructured(s) => Err(CompressError::Sparsity(s)),
            Pattern::NM { n, m } if n == 0 || n >= m => Err(CompressError::Pattern { n, m }),
            Pattern::NM { n, m } if !inp.is_multiple_of(m) => Err(CompressError::PatternWidth { n, m, inp }),
            Pattern::NM { .. } => Ok(()),
        }
    }

    /// Parses `"2:4"`.
    pub fn parse_nm(s: &str) -> Result<Pattern> {
        let bad = || CompressError::PatternText(s.to_owned());
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = a.trim().parse().map_err(|_| bad())?;
        let m: usize = b.trim().parse().map_err(|_| bad())?;
        if n == 0 || n >= m {
            return Err(CompressError::Pattern { n, m });
        }
        Ok(Pattern::NM { n, m })
    }
}

fn check(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(CompressError::Shape { op, expected, got })
    }
}

/// `||X_j||_2` for each input column j of `x: (N, I)`, accumulated in f64.
pub fn input_norms(x: &[f32], inp: usize) -> Vec<f32> {
    let mut acc = vec![0f64; inp];
    for row in x.chunks_exact(inp) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    acc.into_iter().map(|a| a.sqrt() as f32).collect()
}

/// Marks, within `scores` (one row or one group), the `k` lowest as pruned (`true`).
/// Ties break by index, so the count is exact; NaN scores sort as the largest (kept).
pub(crate) fn lowest_k(scores: &[f32], k: usize, mask: &mut [bool]) {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    for &i in idx.iter().take(k) {
        mask[i] = true;
    }
}

/// The pruning mask (`true` = set to zero) of one row's scores under `pattern`.
pub(crate) fn row_mask(scores: &[f32], pattern: Pattern, mask: &mut [bool]) {
    match pattern {
        Pattern::Unstructured(s) => {
            let k = (s as f64 * scores.len() as f64).floor() as usize;
            lowest_k(scores, k, mask);
        }
        Pattern::NM { n, m } => {
            for (sc, mk) in scores.chunks_exact(m).zip(mask.chunks_exact_mut(m)) {
                lowest_k(sc, n, mk);
            }
        }
    }
}

/// Prunes `w: (out, inp)` in place by per-row scores `score(i, j)`; returns the zeros set.
fn prune_by_score(
    w: &mut [f32],
    out: usize,
    inp: usize,
    pattern: Pattern,
    score: impl Fn(usize, f32) -> f32,
) -> usize {
    let mut zeros = 0;
    let mut scores = vec![0f32; inp];
    let mut mask = vec![false; inp];
    for row in w.chunks_exact_mut(inp).take(out) {
        for (j, (s, &v)) in scores.iter_mut().zip(row.iter()).enumerate() {
            *s = score(j, v);
        }
        mask.fill(false);
        row_mask(&scores, pattern, &mut mask);
        for (v, &m) in row.iter_mut().zip(&mask) {
            if m {
                *v = 0.0;
                zeros += 1;
            }
        }
    }
    zeros
}

/// Magnitude pruning, per output row. Returns the number of weights set to zero.
pub fn magnitude(w: &mut [f32], out: usize, inp: usize, pattern: Pattern) -> Result<usize> {
    pattern.validate(inp)?;
    check("magnitude weight", out * inp, w.len())?;
    Ok(prune_by_score(w, out, inp, pattern, |_, v| v.abs()))
}

/// Wanda pruning: `|w_ij| * ||X_j||_2`, per output row; `norms` from [`input_norms`].
pub fn wanda(w: &mut [f32], out: usize, inp: usize, norms: &[f32], pattern: Pattern) -> Result<usize> {
    pattern.validate(inp)?;
    check("wanda weight", out * inp, w.len())?;
    check("wanda norms", inp, norms.len())?;
    Ok(prune_by_score(w, out, inp, pattern, |j, v| v.abs() * norms[j]))
}

/// Prunes `w: (out, inp)` with `method`, given calibration inputs `x: (N, inp)`.
pub fn prune(
    w: &mut [f32],
    out: usize,
    inp: usize,
    x: &[f32],
    method: Method,
    pattern: Pattern,
) -> Result<usize> {
    if !x.len().is_multiple_of(inp.max(1)) {
        return Err(CompressError::Shape { op: "calibration inputs", expected: inp, got: x.len() % inp });
    }
    match method {
        Method::Magnitude => magnitude(w, out, inp, pattern),
        Method::Wanda => wanda(w, out, inp, &input_norms(x, inp), pattern),
        Method::SparseGpt => sparsegpt(w, out, inp, x, pattern, &SparseGptOptions::default()),
    }
}

/// SparseGPT settings.
#[derive(Debug, Clone)]
pub struct SparseGptOptions {
    /// Dampening as a fraction of the mean Hessian diagonal (the paper's 1%).
    pub percdamp: f64,
    /// Columns per lazy-update block (the paper's 128).
    pub block: usize,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        Self { percdamp: 0.01, block: 128 }
    }
}

/// `||W X^T - W' X^T||_F^2` over the calibration rows, in f64.
pub fn reconstruction_error(w: &[f32], w2: &[f32], out: usize, inp: usize, x: &[f32]) -> f64 {
    let mut err = 0f64;
    for xr in x.chunks_exact(inp) {
        for o in 0..out {
            let (a, b) = (&w[o * inp..(o + 1) * inp], &w2[o * inp..(o + 1) * inp]);
            let d: f64 = a.iter().zip(b).zip(xr).map(|((&p, &q), &v)| f64::from(p - q) * f64::from(v)).sum();
            err += d * d;
        }
    }
    err
}
