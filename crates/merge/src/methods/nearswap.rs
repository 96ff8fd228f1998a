//! `nearswap`: take the other model's value wherever it is close to the base model's, and
//! interpolate towards the base as the two drift apart.
//!
//! Per element, with a = θ_base and b = θ_other:
//! `w = clamp(t / max(|a − b|, 1e-6), 0, 1)`, result `w·b + (1 − w)·a`.
//! Where |a − b| ≤ t the other model's value is used as is (w = 1); farther apart the result
//! moves towards the base in proportion t/|a − b|, so large disagreements keep the base.
//! A large `t` therefore returns the other model, `t = 0` (or negative) the base.
//!
//! Parameters (mergekit 0.1.5): global `t` (required). Exactly two inputs, one of them
//! `base_model`. Elementwise, streamed; arithmetic in the load dtype like mergekit (bf16
//! inputs: every operation rounded to bf16; `t / d` evaluated as `(1/d)·t`, as torch does), so
//! outputs are bit-identical to mergekit's in f32 and bf16.

use crate::method::{
    BaseModel, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec,
    ParamSpec, TensorJob,
};
use crate::{DType, MergeError, Result};

/// The `nearswap` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nearswap;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 2,
    max_inputs: Some(2),
    global: &[ParamSpec::required("t")],
    per_model: &[],
};

/// Distances below this are treated as this (no division by zero).
const MIN_DIFF: f32 = 1e-6;

/// NearSwap of one element: `a` is the base value, `b` the other model's.
#[inline]
pub fn nearswap(t: f32, a: f32, b: f32, dtype: DType) -> f32 {
    let r = |x: f32| dtype.round(x);
    let diff = r(r(a - b).abs().max(MIN_DIFF));
    // torch evaluates `t / diff` as `diff.reciprocal() * t`: two roundings.
    let w = r(r(1.0 / diff) * t).clamp(0.0, 1.0);
    r(r(w * b) + r(r(1.0 - w) * a))
}

struct Kernel {
    a: usize,
    b: usize,
    t: f32,
    dtype: DType,
}

impl ElementwiseKernel for Kernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        for ((o, a), b) in out.iter_mut().zip(inputs[self.a]).zip(inputs[self.b]) {
            *o = nearswap(self.t, *a, *b, self.dtype);
        }
    }
}

impl MergeMethod for Nearswap {
    fn name(&self) -> &'static str {
        "nearswap"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let a = job.base_index("nearswap")?;
        let others = job.others();
        let [b] = others[..] else {
            return Err(MergeError::Config(format!(
                "nearswap needs exactly one model besides base_model, got {} (tensor {})",
                others.len(),
                job.name
            )));
        };
        let t = job.params.get("t")? as f32;
        if t.is_nan() {
            return Err(MergeError::Parameter(format!(
                "nearswap: `t` is NaN for tensor {}",
                job.name
            )));
        }
        Ok(MergeOutput {
            values: Merged::Elementwise(Box::new(Kernel {
                a,
                b,
                t,
                dtype: job.dtype,
            })),
            report: MethodReport {
                t: Some(t),
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_t_returns_the_other_model_and_zero_t_the_base() {
        for (a, b) in [(0.5f32, -3.0f32), (1.0, 1.0), (-2.0, 7.5)] {
            assert_eq!(nearswap(1e9, a, b, DType::F32), b);
            assert_eq!(nearswap(0.0, a, b, DType::F32), a);
            assert_eq!(nearswap(-1.0, a, b, DType::F32), a);
        }
    }

    #[test]
    fn interpolates_by_distance() {
        // |a − b| = 4, t = 1: w = 1/4 → 0.25·b + 0.75·a.
        assert_eq!(nearswap(1.0, 0.0, 4.0, DType::F32), 1.0);
        // Within t: the other value.
        assert_eq!(nearswap(1.0, 0.0, 0.5, DType::F32), 0.5);
    }

    #[test]
    fn bf16_rounds_every_step() {
        // w = 0.1/3 rounds to bf16 before use: result is a bf16 value.
        let v = nearswap(0.1, 1.0, 4.0, DType::BF16);
        assert_eq!(DType::BF16.round(v), v);
        assert!((v - (1.0 + 3.0 * 0.1 / 3.0)).abs() < 1e-2);
    }
}
