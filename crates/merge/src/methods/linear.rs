//! `linear`: the weighted average Σ wᵢθᵢ / Σ wᵢ.
//!
//! Numerics follow mergekit 0.1.5 on CPU: an f32 accumulator updated with a *fused*
//! multiply-add per model in configuration order (torch's `addcmul_` is an FMA on AVX2), then
//! one division by Σw (summed in f32) and one rounding to the output dtype.

use crate::method::{
    BaseModel, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodSpec, ParamSpec,
    TensorJob,
};
use crate::{MergeError, Result};

/// The `linear` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linear;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Ignored,
    min_inputs: 1,
    max_inputs: None,
    global: &[ParamSpec::optional("normalize", 1.0)],
    per_model: &[ParamSpec::required("weight")],
};

struct Kernel {
    weights: Vec<f32>,
    /// `1 / Σw` is *not* used: mergekit divides, and x/s ≠ x·(1/s) in the last bit.
    divisor: Option<f32>,
}

/// `out[i] = fma(x[i], w, out[i])` — one rounding per update, like torch's `addcmul_`.
///
/// Without the `fma` target feature `f32::mul_add` is a libm call per element; with it, the loop
/// vectorises. The feature is detected at run time so the binary stays portable.
fn fma_accumulate(out: &mut [f32], x: &[f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the only requirement of `fma_accumulate_fma` is CPU support for FMA and
        // AVX2, checked just above.
        unsafe {
            fma_accumulate_fma(out, x, w);
        }
        return;
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
fn fma_accumulate_fma(out: &mut [f32], x: &[f32], w: f32) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.mul_add(w, *o);
    }
}

impl ElementwiseKernel for Kernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        out.fill(0.0);
        for (x, w) in inputs.iter().zip(&self.weights) {
            fma_accumulate(out, x, *w);
        }
        if let Some(d) = self.divisor {
            out.iter_mut().for_each(|o| *o /= d);
        }
    }
}

impl MergeMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let weights: Vec<f32> = (0..job.inputs.len())
            .map(|i| {
                job.params
                    .model(i, "weight")
                    .map(|w| w as f32)
                    .ok_or_else(|| {
                        MergeError::Parameter(format!(
                            "linear: input {i} has no `weight` for tensor {}",
                            job.name
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let divisor = if job.params.flag("normalize")? {
            let sum = weights.iter().fold(0f32, |s, w| s + w);
            if sum == 0.0 {
                return Err(MergeError::tensor(
                    job.name,
                    "linear: the weights sum to zero, cannot normalise (set `normalize: false`)",
                ));
            }
            Some(sum)
        } else {
            None
        };
        Ok(MergeOutput {
            values: Merged::Elementwise(Box::new(Kernel { weights, divisor })),
            report: Default::default(),
        })
    }
}
