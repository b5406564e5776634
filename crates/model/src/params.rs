//! All parameters of a model live in one flat `Vec<f32>` (and its gradients in a second of the
//! same layout), so the optimiser, clipping and checkpointing are single passes. Modules hold
//! [`P`] handles into it; the table of [`ParamSpec`]s names every tensor.

use std::collections::HashMap;

use truthgpt_engine::qmatmul::QMatrix;
use truthgpt_engine::rng::Rng;

/// A handle to one parameter tensor inside the flat buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P {
    pub offset: usize,
    pub len: usize,
}

impl P {
    pub fn range(self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    #[inline]
    pub fn of(self, flat: &[f32]) -> &[f32] {
        &flat[self.range()]
    }

    #[inline]
    pub fn of_mut(self, flat: &mut [f32]) -> &mut [f32] {
        &mut flat[self.range()]
    }
}

/// The gradients of the trainable parameters: the tensors at or past `start` in the flat layout.
/// Those before it are frozen (a LoRA base): they get no gradient and take no memory here, and
/// the optimiser keeps no state for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grads {
    flat: Vec<f32>,
    start: usize,
}

impl Grads {
    /// Gradients for `params[start..end]`, zeroed.
    pub fn new(start: usize, end: usize) -> Self {
        Grads { flat: vec![0.0; end - start], start }
    }

    /// Where the trainable parameters begin in the flat layout.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The trainable span of the flat layout.
    pub fn trainable(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.flat.len()
    }

    /// Every trainable gradient, in layout order.
    pub fn as_slice(&self) -> &[f32] {
        &self.flat
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.flat
    }

    fn local(&self, p: P) -> Option<std::ops::Range<usize>> {
        // A frozen tensor ends at or before `start`; so does a quantized one (empty handle).
        (p.offset + p.len > self.start).then(|| p.offset - self.start..p.offset - self.start + p.len)
    }

    /// `p`'s gradient, or `None` when it is frozen.
    pub fn of(&self, p: P) -> Option<&[f32]> {
        self.local(p).map(|r| &self.flat[r])
    }

    pub fn of_mut(&mut self, p: P) -> Option<&mut [f32]> {
        self.local(p).map(|r| &mut self.flat[r])
    }

    /// Two disjoint gradients at once, e.g. a weight's and its bias's.
    pub fn pair_mut(&mut self, a: P, b: Option<P>) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
        match (self.local(a), b.and_then(|b| self.local(b))) {
            (Some(a), Some(b)) => {
                let [a, b] = self.flat.get_disjoint_mut([a, b]).expect("parameter handles never overlap");
                (Some(a), Some(b))
            }
            (Some(a), None) => (Some(&mut self.flat[a]), None),
            (None, Some(b)) => (None, Some(&mut self.flat[b])),
            (None, None) => (None, None),
        }
    }
}

/// How a tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f32),
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    Zeros,
    Ones,
}

impl Init {
    pub fn fill(self, out: &mut [f32], rng: &mut Rng) {
        match self {
            Init::Normal(std) => rng.fill_normal(out, std),
            Init::Uniform(bound) => out.iter_mut().for_each(|v| *v = (2.0 * rng.uniform() - 1.0) * bound),
            Init::Zeros => out.fill(0.0),
            Init::Ones => out.fill(1.0),
        }
    }
}

/// Name, shape and place of one parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub handle: P,
    pub init: Init,
    /// AdamW weight decay applies (matrices), or not (norm gains, biases, 1-D tables).
    pub decay: bool,
    /// The tensor is held in quantized blocks by its module, not in the flat buffers (its
    /// handle is empty).
    pub quantized: bool,
}

/// Collects tensors while modules are built; [`ParamBuilder::finish`] allocates and initialises.
#[derive(Debug, Default)]
pub struct ParamBuilder {
    specs: Vec<ParamSpec>,
    len: usize,
    prefix: Vec<String>,
    /// Quantized matrices to use instead of f32 tensors, by full name.
    quantized: HashMap<String, QMatrix>,
}

impl ParamBuilder {
    /// Adds a tensor named `<prefix>.<name>`; weight decay applies to matrices only.
    pub fn add(&mut self, name: &str, shape: &[usize], init: Init) -> P {
        self.push(name, shape, init, shape.len() >= 2)
    }

    /// Adds a tensor that is never weight-decayed, whatever its shape (e.g. a bias table).
    pub fn add_undecayed(&mut self, name: &str, shape: &[usize], init: Init) -> P {
        self.push(name, shape, init, false)
    }

    fn push(&mut self, name: &str, shape: &[usize], init: Init, decay: bool) -> P {
        let handle = P { offset: self.len, len: shape.iter().product() };
        self.len += handle.len;
        let name = self.full_name(name);
        self.specs.push(ParamSpec { name, shape: shape.to_vec(), handle, init, decay, quantized: false });
        handle
    }

    fn full_name(&self, name: &str) -> String {
        self.prefix.iter().map(String::as_str).chain([name]).collect::<Vec<_>>().join(".")
    }

    /// A builder whose tensors named in `quantized` are taken from there
    /// ([`ParamBuilder::take_quantized`]) instead of being allocated.
    pub fn with_quantized(quantized: HashMap<String, QMatrix>) -> Self {
        ParamBuilder { quantized, ..Default::default() }
    }

    /// The quantized matrix given for `<prefix>.<name>`, if any, recorded in the spec table with
    /// an empty handle. Its shape must be `shape` (the caller checked it against the file).
    pub fn take_quantized(&mut self, name: &str, shape: [usize; 2]) -> Option<(P, QMatrix)> {
        let full = self.full_name(name);
        let q = self.quantized.remove(&full)?;
        assert_eq!([q.rows(), q.cols()], shape, "quantized `{full}` has the wrong shape");
        let handle = P { offset: self.len, len: 0 };
        let spec = ParamSpec {
            name: full,
            shape: shape.to_vec(),
            handle,
            init: Init::Zeros,
            decay: true,
            quantized: true,
        };
        self.specs.push(spec);
        Some((handle, q))
    }

    /// Runs `f` with `name` pushed onto the prefix, mirroring checkpoint key nesting.
    pub fn scope<T>(&mut self, name: impl Into<String>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.prefix.push(name.into());
        let out = f(self);
        self.prefix.pop();
        out
    }

    /// Allocates the flat buffer and initialises every tensor from `seed`, in declaration order.
    pub fn finish(self, seed: u64) -> (Vec<ParamSpec>, Vec<f32>) {
        let (specs, mut values) = self.finish_zeroed();
        let mut rng = Rng::new(seed);
        for spec in &specs {
            spec.init.fill(spec.handle.of_mut(&mut values), &mut rng);
        }
        (specs, values)
    }

    /// Allocates the flat buffer as zeros (pages the OS hands out lazily, huge where it can),
    /// for weights about to be loaded: initialising 100M parameters only to overwrite them would
    /// cost a second.
    pub fn finish_zeroed(self) -> (Vec<ParamSpec>, Vec<f32>) {
        assert!(self.quantized.is_empty(), "quantized tensors no module took: {:?}", self.quantized.keys());
        (self.specs, truthgpt_engine::memory::zeroed(self.len))
    }
}
