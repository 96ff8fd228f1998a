//! The interface every merge method implements, and what the planner needs to know about
//! each one (its parameters and input contract).

use std::collections::BTreeMap;
use std::fmt;

use rayon::prelude::*;

use crate::source::InputTensor;
use crate::{DType, MergeError, Result};

/// Elements per chunk of the streaming paths. Fixed (not derived from the thread count) so
/// reductions sum in the same order, and outputs are byte-identical, on any machine.
pub const CHUNK: usize = 1 << 16;

/// Whether a method needs `base_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseModel {
    /// The method fails without one (task vectors, SLERP's `t = 0` end).
    Required,
    /// Used when given (nuslerp, multislerp: merge in task-vector space).
    Optional,
    /// Not an input unless also listed among the models (linear, karcher).
    Ignored,
}

/// One parameter a method takes.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    /// `None`: required.
    pub default: Option<f64>,
}

impl ParamSpec {
    /// A parameter the user must give.
    pub const fn required(name: &'static str) -> Self {
        Self {
            name,
            default: None,
        }
    }

    /// A parameter with a default.
    pub const fn optional(name: &'static str, default: f64) -> Self {
        Self {
            name,
            default: Some(default),
        }
    }
}

/// A method's parameters and input contract.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    pub base: BaseModel,
    /// Inputs counted including the base model when it is an input.
    pub min_inputs: usize,
    pub max_inputs: Option<usize>,
    /// Parameters of the whole tensor (`t`, `normalize`, `lambda`, ...).
    pub global: &'static [ParamSpec],
    /// Parameters of each input model (`weight`, `density`, ...). The base model's are not
    /// required.
    pub per_model: &'static [ParamSpec],
}

impl MethodSpec {
    /// Whether `name` is any parameter of the method.
    pub fn takes(&self, name: &str) -> bool {
        self.global
            .iter()
            .chain(self.per_model)
            .any(|p| p.name == name)
    }

    /// Comma-separated parameter names, for error messages.
    pub fn param_names(&self) -> String {
        let names: Vec<&str> = self
            .global
            .iter()
            .chain(self.per_model)
            .map(|p| p.name)
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// Parameter values resolved for one output tensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedParams {
    pub global: BTreeMap<&'static str, f64>,
    /// Aligned with the job's inputs.
    pub per_model: Vec<BTreeMap<&'static str, f64>>,
}

impl ResolvedParams {
    /// A global parameter (present after planning, unless the method's spec lacks it).
    ///
    /// # Errors
    /// The parameter was not resolved (a method asking for a name its spec does not list).
    pub fn get(&self, name: &str) -> Result<f64> {
        self.global
            .get(name)
            .copied()
            .ok_or_else(|| MergeError::Parameter(format!("parameter `{name}` is not set")))
    }

    /// A global boolean parameter (non-zero is true).
    ///
    /// # Errors
    /// As [`ResolvedParams::get`].
    pub fn flag(&self, name: &str) -> Result<bool> {
        Ok(self.get(name)? != 0.0)
    }

    /// A per-model parameter of input `i`; `None` for a base model that did not set it.
    pub fn model(&self, i: usize, name: &str) -> Option<f64> {
        self.per_model.get(i).and_then(|m| m.get(name)).copied()
    }
}

/// Everything a method sees of one output tensor.
#[derive(Debug)]
pub struct TensorJob<'a> {
    /// Output tensor name (HF key).
    pub name: &'a str,
    /// Output shape (all inputs have it, after any embedding truncation/permutation).
    pub shape: &'a [usize],
    /// Inputs in configuration order (the base model last if it was not listed).
    pub inputs: &'a [InputTensor<'a>],
    /// Index of the base model in `inputs`, if it is an input.
    pub base: Option<usize>,
    pub params: &'a ResolvedParams,
    /// The load dtype: task-arithmetic-family methods compute in it, like mergekit.
    pub dtype: DType,
    /// Seed for random methods, derived from the merge seed and the tensor name.
    pub seed: u64,
}

impl TensorJob<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The base input, or an error naming the method.
    ///
    /// # Errors
    /// The job has no base model.
    pub fn base_index(&self, method: &str) -> Result<usize> {
        self.base
            .ok_or_else(|| MergeError::Config(format!("{method} requires `base_model`")))
    }

    /// Indices of the inputs that are not the base model.
    pub fn others(&self) -> Vec<usize> {
        (0..self.inputs.len())
            .filter(|i| Some(*i) != self.base)
            .collect()
    }

    /// Whole inputs as f32 vectors (the dense path).
    pub fn load_all(&self) -> Vec<Vec<f32>> {
        self.inputs.par_iter().map(InputTensor::to_vec).collect()
    }

    /// Run `f` on aligned [`CHUNK`]-element chunks of every input, in parallel, and return the
    /// per-chunk results in order (so a sequential fold over them is deterministic).
    pub fn map_chunks<T: Send>(&self, f: impl Fn(&[&[f32]]) -> T + Sync) -> Vec<T> {
        let n = self.numel();
        let chunks = n.div_ceil(CHUNK);
        (0..chunks)
            .into_par_iter()
            .map_init(
                || vec![vec![0f32; CHUNK]; self.inputs.len()],
                |bufs, c| {
                    let range = c * CHUNK..((c + 1) * CHUNK).min(n);
                    let len = range.len();
                    for (buf, input) in bufs.iter_mut().zip(self.inputs) {
                        input.read(range.clone(), &mut buf[..len]);
                    }
                    let views: Vec<&[f32]> = bufs.iter().map(|b| &b[..len]).collect();
                    f(&views)
                },
            )
            .collect()
    }
}

/// A per-element rule applied chunk by chunk after any whole-tensor statistics are known.
pub trait ElementwiseKernel: Send + Sync {
    /// `inputs[i]` is the chunk of input `i`; write the merged chunk into `out`.
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]);
}

/// A method's result for one tensor.
pub enum Merged<'a> {
    /// The whole merged tensor, row-major, in f32 (rounded to the output dtype when saved).
    Dense(Vec<f32>),
    /// Computed while streaming the output (no whole-tensor buffer).
    Elementwise(Box<dyn ElementwiseKernel + 'a>),
}

impl fmt::Debug for Merged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dense(v) => write!(f, "Dense({} values)", v.len()),
            Self::Elementwise(_) => f.write_str("Elementwise"),
        }
    }
}

/// What a method reports about one tensor (for the per-tensor JSON report).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MethodReport {
    /// SLERP's interpolation factor (as the f32 actually used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<f32>,
    /// Cosine of the two flattened inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
    /// L2 norms of the inputs, in input order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub norms: Vec<f64>,
    /// SLERP: whether the inputs were so nearly colinear that it fell back to linear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linear_fallback: Option<bool>,
    /// Method-specific numbers (e.g. model_stock's `t`, TIES' kept fraction).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// The result of [`MergeMethod::merge`].
#[derive(Debug)]
pub struct MergeOutput<'a> {
    pub values: Merged<'a>,
    pub report: MethodReport,
}

impl<'a> MergeOutput<'a> {
    /// A dense result with an empty report.
    pub fn dense(values: Vec<f32>) -> Self {
        Self {
            values: Merged::Dense(values),
            report: MethodReport::default(),
        }
    }
}

/// One merge method (mergekit's `merge_method`).
pub trait MergeMethod: Send + Sync + fmt::Debug {
    /// The registry name (`slerp`).
    fn name(&self) -> &'static str;
    /// Parameters and input contract.
    fn spec(&self) -> &'static MethodSpec;
    /// Merge one tensor.
    ///
    /// # Errors
    /// Numeric failures (a non-finite result), naming the tensor.
    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>>;
}

/// Support for the methods' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Run `f` on a job named `w` whose inputs are `data` (f32, each of `shape`).
    pub(crate) fn with_job<T>(
        shape: &[usize],
        data: &[&[f32]],
        base: Option<usize>,
        params: &ResolvedParams,
        dtype: DType,
        seed: u64,
        f: impl FnOnce(&TensorJob<'_>) -> Result<T>,
    ) -> Result<T> {
        let inputs: Vec<InputTensor<'_>> = data
            .iter()
            .map(|d| InputTensor::from_f32(shape.to_vec(), d))
            .collect();
        f(&TensorJob {
            name: "w",
            shape,
            inputs: &inputs,
            base,
            params,
            dtype,
            seed,
        })
    }

    /// The values and report of a dense result; an error for an elementwise one.
    pub(crate) fn dense(out: MergeOutput<'_>) -> Result<(Vec<f32>, MethodReport)> {
        match out.values {
            Merged::Dense(v) => Ok((v, out.report)),
            Merged::Elementwise(_) => Err(MergeError::Config("expected dense".into())),
        }
    }
}
