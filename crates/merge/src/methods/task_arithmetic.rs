//! The task-arithmetic family: combine task vectors τᵢ = θᵢ − θ_base and add them to the base.
//!
//! `task_arithmetic` sums weighted task vectors; `ties` first keeps each τᵢ's largest
//! entries (`density`), then elects a sign per element and keeps only agreeing entries.
//!
//! Like mergekit, these methods compute in the *load dtype*: on bf16 inputs every operation is
//! rounded to bf16 (weights too: 0.7 → 0.69921875), except the sums over the model axis, which
//! torch accumulates in f32 and rounds once. With f32 inputs the results are bit-identical to
//! mergekit's.

use crate::method::{
    BaseModel, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec,
    ParamSpec, TensorJob,
};
use crate::methods::sparsify;
use crate::{DType, MergeError, Result};

/// How task vectors are sparsified before being combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsification {
    /// Keep the top-`density` fraction by magnitude (TIES).
    Magnitude,
}

/// How signs are reconciled across models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// Sign of the weighted sum (TIES' "sum" election).
    Sum,
}

/// A method of the family.
#[derive(Debug, Clone, Copy)]
pub struct TaskArithmetic {
    name: &'static str,
    spec: &'static MethodSpec,
    sparsification: Option<Sparsification>,
    consensus: Option<Consensus>,
}

static TA_SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 2,
    max_inputs: None,
    global: &[
        ParamSpec::optional("normalize", 0.0),
        ParamSpec::optional("lambda", 1.0),
    ],
    per_model: &[ParamSpec::required("weight")],
};

static TIES_SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 2,
    max_inputs: None,
    global: &[
        ParamSpec::optional("normalize", 1.0),
        ParamSpec::optional("lambda", 1.0),
        ParamSpec::optional("int8_mask", 0.0),
    ],
    per_model: &[
        ParamSpec::required("weight"),
        ParamSpec::optional("density", 1.0),
    ],
};

impl TaskArithmetic {
    /// `task_arithmetic`: θ_base + λ·Σ wᵢτᵢ.
    pub fn task_arithmetic() -> Self {
        Self {
            name: "task_arithmetic",
            spec: &TA_SPEC,
            sparsification: None,
            consensus: None,
        }
    }

    /// `ties`: magnitude pruning, sign election, disjoint mean.
    pub fn ties() -> Self {
        Self {
            name: "ties",
            spec: &TIES_SPEC,
            sparsification: Some(Sparsification::Magnitude),
            consensus: Some(Consensus::Sum),
        }
    }
}

/// Elementwise task arithmetic (no sparsification, no consensus): streamed chunk by chunk.
struct TaKernel {
    base: usize,
    others: Vec<(usize, f32)>,
    divisor: Option<f32>,
    lambda: Option<f32>,
    dtype: DType,
}

impl ElementwiseKernel for TaKernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        let r = |x: f32| self.dtype.round(x);
        let base = inputs[self.base];
        for (j, o) in out.iter_mut().enumerate() {
            let b = base[j];
            // Σ over the model axis: f32 accumulation, one rounding (torch's sum).
            let mut acc = 0f32;
            for (k, (i, w)) in self.others.iter().enumerate() {
                let d = r(r(inputs[*i][j] - b) * w);
                acc = if k == 0 { d } else { acc + d };
            }
            let mut mixed = r(acc);
            if let Some(div) = self.divisor {
                mixed = r(mixed / div);
            }
            if let Some(l) = self.lambda {
                mixed = r(mixed * l);
            }
            *o = r(b + mixed);
        }
    }
}

impl MergeMethod for TaskArithmetic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn spec(&self) -> &'static MethodSpec {
        self.spec
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let base = job.base_index(self.name)?;
        let others = job.others();
        let weights: Vec<f32> = others
            .iter()
            .map(|&i| {
                job.params
                    .model(i, "weight")
                    .map(|w| r(w as f32))
                    .ok_or_else(|| {
                        MergeError::Parameter(format!(
                            "{}: input {i} has no `weight` for tensor {}",
                            self.name, job.name
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let normalize = job.params.flag("normalize")?;
        let lambda = job.params.get("lambda")? as f32;
        let lambda = (lambda != 1.0).then_some(r(lambda));

        if self.sparsification.is_none() && self.consensus.is_none() {
            let divisor = normalize.then(|| {
                let s = r(weights.iter().fold(0f32, |s, w| s + w));
                if s.abs() < 1e-8 { 1.0 } else { s }
            });
            return Ok(MergeOutput {
                values: Merged::Elementwise(Box::new(TaKernel {
                    base,
                    others: others.iter().copied().zip(weights).collect(),
                    divisor,
                    lambda,
                    dtype,
                })),
                report: MethodReport::default(),
            });
        }

        // Dense path: sparsification needs whole task vectors.
        let all = job.load_all();
        let base_v = &all[base];
        let n = base_v.len();
        let mut deltas: Vec<Vec<f32>> = Vec::with_capacity(others.len());
        let mut kept = 0usize;
        for (&i, &w) in others.iter().zip(&weights) {
            let mut d: Vec<f32> = all[i].iter().zip(base_v).map(|(x, b)| r(x - b)).collect();
            if let Some(Sparsification::Magnitude) = self.sparsification {
                let density = job.params.model(i, "density").unwrap_or(1.0);
                sparsify::magnitude(&mut d, density);
            }
            kept += d.iter().filter(|v| **v != 0.0).count();
            d.iter_mut().for_each(|v| *v = r(*v * w));
            deltas.push(d);
        }
        let mut out = vec![0f32; n];
        for (j, o) in out.iter_mut().enumerate() {
            let (mixed, div) = match self.consensus {
                Some(Consensus::Sum) => {
                    let total = r(deltas.iter().fold(0f32, |s, d| s + d[j]));
                    let majority = if total >= 0.0 { 1.0 } else { -1.0 };
                    let (mut m, mut dv) = (0f32, 0f32);
                    for (d, w) in deltas.iter().zip(&weights) {
                        let v = d[j];
                        let sign = if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        if sign == majority {
                            m += v;
                            dv += w;
                        }
                    }
                    (r(m), r(dv))
                }
                None => (
                    r(deltas.iter().fold(0f32, |s, d| s + d[j])),
                    r(weights.iter().fold(0f32, |s, w| s + w)),
                ),
            };
            let mut mixed = mixed;
            if normalize {
                let div = if self.consensus.is_some() {
                    if div == 0.0 { 1.0 } else { div }
                } else if div.abs() < 1e-8 {
                    1.0
                } else {
                    div
                };
                mixed = r(mixed / div);
            }
            if let Some(l) = lambda {
                mixed = r(mixed * l);
            }
            *o = r(base_v[j] + mixed);
        }
        let mut report = MethodReport::default();
        if !others.is_empty() && n > 0 {
            report.extra.insert(
                "kept_fraction".into(),
                kept as f64 / (n * others.len()) as f64,
            );
        }
        Ok(MergeOutput {
            values: Merged::Dense(out),
            report,
        })
    }
}
