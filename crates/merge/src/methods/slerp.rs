//! `slerp`: spherical linear interpolation between the base model (`t = 0`) and the other
//! model (`t = 1`), over each whole flattened tensor.
//!
//! Numerics follow mergekit 0.1.5 (see the crate docs): f32 compute, norms ≤ 1e-8 left
//! un-normalised, dot clamped to [-1, 1], `t` rounded to f32, linear fallback when
//! |dot| > 0.9995, coefficients from the normalised vectors applied to the raw ones with a
//! separate multiply, multiply, add, and one rounding to the output dtype. The norms and the
//! dot are reduced in f64 over fixed chunks (deterministic for any thread count); mergekit
//! reduces in f32 with torch's order, so f32 outputs agree to ~1e-6 of the tensor's RMS.

use crate::method::{
    BaseModel, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec,
    ParamSpec, TensorJob,
};
use crate::{MergeError, Result};

/// Norms at or below this are treated as zero vectors (left un-normalised).
pub const EPS: f32 = 1e-8;
/// Above this |cos| the inputs are treated as colinear and interpolated linearly.
pub const DOT_THRESHOLD: f32 = 0.9995;

/// The `slerp` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slerp;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 2,
    max_inputs: Some(2),
    global: &[ParamSpec::required("t")],
    per_model: &[],
};

/// SLERP coefficients `(ca, cb)` for `out = ca·a + cb·b` given the reductions over the whole
/// tensors: `sum_aa = Σa²`, `sum_bb = Σb²`, `sum_ab = Σab`. Also returns the clamped f32 dot
/// and whether the linear fallback was taken.
pub fn slerp_coefficients(t: f32, sum_aa: f64, sum_bb: f64, sum_ab: f64) -> (f32, f32, f32, bool) {
    let na = sum_aa.sqrt() as f32;
    let nb = sum_bb.sqrt() as f32;
    let na = if na > EPS { na } else { 1.0 };
    let nb = if nb > EPS { nb } else { 1.0 };
    let dot = ((sum_ab / (f64::from(na) * f64::from(nb))) as f32).clamp(-1.0, 1.0);
    if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t, dot, true)
    } else {
        let theta = dot.acos();
        let s = theta.sin();
        (
            ((1.0 - t) * theta).sin() / s,
            (t * theta).sin() / s,
            dot,
            false,
        )
    }
}

/// `(Σa², Σb², Σab)` in f64 over 8 interleaved lanes (independent add chains, so the loop
/// vectorises), combined in a fixed order: deterministic, and more accurate than one chain.
pub fn sums(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    const L: usize = 8;
    let (mut aa, mut bb, mut ab) = ([0f64; L], [0f64; L], [0f64; L]);
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            let (x, y) = (f64::from(x[l]), f64::from(y[l]));
            aa[l] += x * x;
            bb[l] += y * y;
            ab[l] += x * y;
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        let (x, y) = (f64::from(*x), f64::from(*y));
        aa[l] += x * x;
        bb[l] += y * y;
        ab[l] += x * y;
    }
    let fold = |v: [f64; L]| ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    (fold(aa), fold(bb), fold(ab))
}

/// SLERP of two whole tensors held in memory (the in-memory API and tests).
pub fn slerp(t: f32, a: &[f32], b: &[f32]) -> Vec<f32> {
    let (aa, bb, ab) = sums(a, b);
    let (ca, cb, _, _) = slerp_coefficients(t, aa, bb, ab);
    a.iter().zip(b).map(|(x, y)| ca * x + cb * y).collect()
}

struct Kernel {
    a: usize,
    b: usize,
    ca: f32,
    cb: f32,
}

impl ElementwiseKernel for Kernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        let (a, b) = (inputs[self.a], inputs[self.b]);
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            // Separate products and sum: mergekit's torch ops are not fused.
            let p = self.ca * x;
            let q = self.cb * y;
            *o = p + q;
        }
    }
}

impl MergeMethod for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let a = job.base_index("slerp")?;
        let others = job.others();
        let [b] = others[..] else {
            return Err(MergeError::Config(format!(
                "slerp needs exactly one model besides base_model, got {}",
                others.len()
            )));
        };
        let t = job.params.get("t")? as f32;
        let partial = job.map_chunks(|c| sums(c[a], c[b]));
        let (aa, bb, ab) = partial
            .into_iter()
            .fold((0.0, 0.0, 0.0), |s, p| (s.0 + p.0, s.1 + p.1, s.2 + p.2));
        let (ca, cb, _, fallback) = slerp_coefficients(t, aa, bb, ab);
        let (na, nb) = (aa.sqrt(), bb.sqrt());
        let cosine = if na > 0.0 && nb > 0.0 {
            ab / (na * nb)
        } else {
            0.0
        };
        Ok(MergeOutput {
            values: Merged::Elementwise(Box::new(Kernel { a, b, ca, cb })),
            report: MethodReport {
                t: Some(t),
                cosine: Some(cosine),
                norms: vec![na, nb],
                linear_fallback: Some(fallback),
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colinear_inputs_fall_back_to_lerp() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [2.0f32, 4.0, 6.0];
        let out = slerp(0.25, &a, &b);
        for (o, x) in out.iter().zip(a) {
            assert!((o - 1.25 * x).abs() < 1e-6);
        }
    }

    #[test]
    fn zero_tensor_shrinks_the_other() {
        // b = 0: θ = π/2, so out = sin((1-t)π/2)·a (mergekit's documented behaviour).
        let a = [0.5f32, -1.0, 2.0];
        let out = slerp(0.3, &a, &[0.0; 3]);
        let k = (0.7f32 * std::f32::consts::FRAC_PI_2).sin();
        for (o, x) in out.iter().zip(a) {
            assert!((o - k * x).abs() < 1e-6, "{o} vs {}", k * x);
        }
    }
}
