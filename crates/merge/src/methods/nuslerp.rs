//! `nuslerp`: SLERP of exactly two models with the interpolation factor taken from their
//! weights, optionally in task-vector space and optionally per row or column.
//!
//! With weights w₁, w₂ of the two non-base models, `t = w₂ / (w₁ + w₂)` (`0.5` when
//! |w₁ + w₂| < 1e-6), so equal weights give the midpoint whatever their scale. With a
//! `base_model` the merge is `θ_b + SLERP(t; θ₁ − θ_b, θ₂ − θ_b)` (interpolating task
//! vectors), otherwise `SLERP(t; θ₁, θ₂)`.
//!
//! For each vector pair (v₀, v₁) — the whole flattened tensor with `nuslerp_flatten` (the
//! default), otherwise each vector along the last axis (each row of a matrix), or with
//! `nuslerp_row_wise` each vector along the first axis (each column): cos θ is the dot product
//! of v/max(‖v‖, 1e-7), clamped to [−1, 1], and the result
//! `(sin((1−t)θ)·v₀ + sin(tθ)·v₁) / sin θ`; vectors that are colinear to working precision
//! (1 − cos²θ ≤ 1e-16) are interpolated linearly, `(1−t)·v₀ + t·v₁`. Unlike `slerp` there is
//! no 0.9995 threshold: SLERP stays exact up to true colinearity.
//!
//! Parameters (mergekit 0.1.5): per model `weight` (required for the two non-base models);
//! global `nuslerp_flatten` (true) and `nuslerp_row_wise` (false).
//!
//! Like mergekit, arithmetic is in the load dtype: on bf16 inputs each elementwise operation is
//! rounded to bf16; reductions accumulate in f64 and round once.

use crate::method::{
    BaseModel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::vectors::{Vectors, fill};
use crate::{DType, MergeError, Result};

/// The `nuslerp` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nuslerp;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Optional,
    min_inputs: 2,
    max_inputs: Some(3),
    global: &[
        ParamSpec::optional("nuslerp_row_wise", 0.0),
        ParamSpec::optional("nuslerp_flatten", 1.0),
    ],
    per_model: &[ParamSpec::required("weight")],
};

/// Norms below this are clamped to it before normalising.
const NORM_EPS: f32 = 1e-7;
/// Colinear when 1 − cos²θ ≤ this (mergekit's eps² with eps = 1e-8).
const COLINEAR: f32 = 1e-16;

/// `t = w₂ / (w₁ + w₂)`, or 0.5 when the weights sum to (almost) zero.
pub fn nuslerp_t(w1: f64, w2: f64) -> f64 {
    let total = w1 + w2;
    if total.abs() < 1e-6 { 0.5 } else { w2 / total }
}

/// Per-vector SLERP coefficients.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    /// `sin((1−t)θ)`, `sin(tθ)`, `sin θ` (or `1−t`, `t`, unused when colinear).
    c0: f32,
    c1: f32,
    sin: f32,
    colinear: bool,
    cos: f32,
}

fn coefficients(t: f64, cos: f32, dtype: DType) -> Coefficients {
    let r = |x: f32| dtype.round(x);
    let (t0, t1) = ((1.0 - t) as f32, t as f32);
    let cos = cos.clamp(-1.0, 1.0);
    let colinear = r(1.0 - r(cos * cos)) <= COLINEAR;
    if colinear {
        return Coefficients {
            c0: t0,
            c1: t1,
            sin: 1.0,
            colinear,
            cos,
        };
    }
    let theta = r(cos.acos());
    Coefficients {
        c0: r(r(t0 * theta).sin()),
        c1: r(r(t1 * theta).sin()),
        sin: r(theta.sin()),
        colinear,
        cos,
    }
}

/// NuSLERP of two vectors held in memory, as one flattened vector (the tests' reference).
pub fn nuslerp(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
    let n0 = (v0.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32).max(NORM_EPS);
    let n1 = (v1.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32).max(NORM_EPS);
    let cos = v0
        .iter()
        .zip(v1)
        .map(|(a, b)| f64::from((a / n0) * (b / n1)))
        .sum::<f64>() as f32;
    let c = coefficients(t, cos, DType::F32);
    v0.iter()
        .zip(v1)
        .map(|(a, b)| combine(&c, *a, *b, DType::F32))
        .collect()
}

#[inline]
fn combine(c: &Coefficients, a: f32, b: f32, dtype: DType) -> f32 {
    let r = |x: f32| dtype.round(x);
    if c.colinear {
        r(r(c.c0 * a) + r(c.c1 * b))
    } else {
        r(r(r(c.c0 * a) + r(c.c1 * b)) / c.sin)
    }
}

impl MergeMethod for Nuslerp {
    fn name(&self) -> &'static str {
        "nuslerp"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let others = job.others();
        let [i0, i1] = others[..] else {
            return Err(MergeError::Config(format!(
                "nuslerp needs exactly two models besides base_model, got {} (tensor {})",
                others.len(),
                job.name
            )));
        };
        let weight = |i: usize| {
            job.params.model(i, "weight").ok_or_else(|| {
                MergeError::Parameter(format!(
                    "nuslerp: input {i} has no `weight` for tensor {}",
                    job.name
                ))
            })
        };
        let t = nuslerp_t(weight(i0)?, weight(i1)?);
        let vectors = if job.params.flag("nuslerp_flatten")? {
            Vectors::Whole
        } else if job.params.flag("nuslerp_row_wise")? {
            Vectors::first_axis(job.shape)
        } else {
            Vectors::last_axis(job.shape)
        };
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);

        let mut all = job.load_all();
        let mut v0 = std::mem::take(&mut all[i0]);
        let mut v1 = std::mem::take(&mut all[i1]);
        let base = job.base.map(|b| std::mem::take(&mut all[b]));
        drop(all);
        if let Some(b) = &base {
            // Task vectors, rounded to the compute dtype.
            for v in [&mut v0, &mut v1] {
                v.iter_mut().zip(b).for_each(|(x, y)| *x = r(*x - y));
            }
        }
        let n = v0.len();

        let norms: Vec<(f32, f32)> = vectors
            .reduce(n, 2, |j, acc| {
                acc[0] += f64::from(v0[j]).powi(2);
                acc[1] += f64::from(v1[j]).powi(2);
            })
            .into_iter()
            .map(|s| {
                let norm = |x: f64| r(r(x.sqrt() as f32).max(NORM_EPS));
                (norm(s[0]), norm(s[1]))
            })
            .collect();
        let coefs: Vec<Coefficients> = vectors
            .reduce(n, 1, |j, acc| {
                let (n0, n1) = norms[vectors.vector_of(j)];
                acc[0] += f64::from(r(r(v0[j] / n0) * r(v1[j] / n1)));
            })
            .into_iter()
            .map(|s| coefficients(t, r(s[0] as f32), dtype))
            .collect();

        let mut out = vec![0f32; n];
        fill(&mut out, |j| {
            let m = combine(&coefs[vectors.vector_of(j)], v0[j], v1[j], dtype);
            match &base {
                Some(b) => r(b[j] + m),
                None => m,
            }
        });

        let mut report = MethodReport {
            t: Some(t as f32),
            ..Default::default()
        };
        if let ([c], [(n0, n1)]) = (&coefs[..], &norms[..]) {
            report.cosine = Some(f64::from(c.cos));
            report.norms = vec![f64::from(*n0), f64::from(*n1)];
            report.linear_fallback = Some(c.colinear);
        } else {
            let colinear = coefs.iter().filter(|c| c.colinear).count();
            report.extra.insert("vectors".into(), coefs.len() as f64);
            report
                .extra
                .insert("colinear_vectors".into(), colinear as f64);
        }
        Ok(MergeOutput {
            values: Merged::Dense(out),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::ResolvedParams;
    use crate::method::testing::{dense, with_job};
    use crate::methods::slerp;

    fn params(weights: &[Option<f64>], flatten: bool, row_wise: bool) -> ResolvedParams {
        let mut p = ResolvedParams::default();
        p.global
            .insert("nuslerp_flatten", f64::from(u8::from(flatten)));
        p.global
            .insert("nuslerp_row_wise", f64::from(u8::from(row_wise)));
        p.per_model = weights
            .iter()
            .map(|w| w.iter().map(|w| ("weight", *w)).collect())
            .collect();
        p
    }

    fn run(
        shape: &[usize],
        data: &[&[f32]],
        base: Option<usize>,
        p: &ResolvedParams,
    ) -> Result<Vec<f32>> {
        with_job(shape, data, base, p, DType::F32, 0, |job| {
            Ok(dense(Nuslerp.merge(job)?)?.0)
        })
    }

    #[test]
    fn t_comes_from_the_weights() {
        assert_eq!(nuslerp_t(1.0, 3.0), 0.75);
        assert_eq!(nuslerp_t(2.0, 2.0), 0.5);
        assert_eq!(nuslerp_t(1.0, -1.0), 0.5);
    }

    #[test]
    fn equal_weights_equal_slerp_midpoint() -> Result<()> {
        let a = [1.0f32, 0.0, 0.5, -0.25];
        let b = [0.0f32, 1.0, 0.25, 0.5];
        let out = run(
            &[4],
            &[&a, &b],
            None,
            &params(&[Some(2.0), Some(2.0)], true, false),
        )?;
        let want = slerp(0.5, &a, &b);
        for (o, w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-6, "{o} vs {w}");
        }
        // Orthogonal unit vectors: the midpoint is (1, 1)/√2·… scaled by sin(π/4)/sin(π/2).
        let out = run(
            &[2],
            &[&[1.0, 0.0], &[0.0, 1.0]],
            None,
            &params(&[Some(1.0), Some(1.0)], true, false),
        )?;
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((out[0] - h).abs() < 1e-6 && (out[1] - h).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn with_a_base_it_interpolates_task_vectors() -> Result<()> {
        let base = [1.0f32, 1.0];
        let a = [2.0f32, 1.0]; // τ = (1, 0)
        let b = [1.0f32, 2.0]; // τ = (0, 1)
        let out = run(
            &[2],
            &[&a, &b, &base],
            Some(2),
            &params(&[Some(1.0), Some(1.0), None], true, false),
        )?;
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((out[0] - (1.0 + h)).abs() < 1e-6 && (out[1] - (1.0 + h)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn colinear_vectors_are_lerped() -> Result<()> {
        let a = [1.0f32, 0.0];
        let b = [3.0f32, 0.0];
        let out = run(
            &[2],
            &[&a, &b],
            None,
            &params(&[Some(3.0), Some(1.0)], true, false),
        )?;
        // cos = 1 exactly; t = 0.25: 0.75·a + 0.25·b = 1.5·a.
        assert_eq!(out, vec![1.5, 0.0]);
        Ok(())
    }

    #[test]
    fn rows_and_columns_are_separate_vectors() -> Result<()> {
        // 2×2: rows of a are e₁ and e₂; rows of b are e₂ and e₁.
        let a = [1.0f32, 0.0, 0.0, 1.0];
        let b = [0.0f32, 1.0, 1.0, 0.0];
        let w = [Some(1.0), Some(1.0)];
        let rows = run(&[2, 2], &[&a, &b], None, &params(&w, false, false))?;
        let want_rows: Vec<f32> = [&a[..2], &a[2..]]
            .iter()
            .zip([&b[..2], &b[2..]])
            .flat_map(|(x, y)| slerp(0.5, x, y))
            .collect();
        for (o, w) in rows.iter().zip(&want_rows) {
            assert!((o - w).abs() < 1e-6);
        }
        // Columns of the same matrices are again pairs of orthogonal unit vectors here, but a
        // matrix whose rows are colinear and columns are not tells the two apart.
        let a = [1.0f32, 2.0, 2.0, 4.0];
        let b = [2.0f32, 4.0, 1.0, 2.0];
        let rows = run(&[2, 2], &[&a, &b], None, &params(&w, false, false))?;
        let cols = run(&[2, 2], &[&a, &b], None, &params(&w, false, true))?;
        // Rows are colinear: plain average.
        let avg: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * x + 0.5 * y).collect();
        for (o, w) in rows.iter().zip(&avg) {
            assert!((o - w).abs() < 1e-6);
        }
        // Columns (1,2)/(2,1) and (2,4)/(4,2) are not colinear: SLERP per column.
        let c0 = slerp(0.5, &[1.0, 2.0], &[2.0, 1.0]);
        let c1 = slerp(0.5, &[2.0, 4.0], &[4.0, 2.0]);
        let want = [c0[0], c1[0], c0[1], c1[1]];
        for (o, w) in cols.iter().zip(&want) {
            assert!((o - w).abs() < 1e-5, "{o} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn three_models_without_base_is_an_error() {
        let x = [1.0f32];
        let r = run(
            &[1],
            &[&x, &x, &x],
            None,
            &params(&[Some(1.0); 3], true, false),
        );
        assert!(r.is_err());
    }

    #[test]
    fn reference_function_matches_the_method() -> Result<()> {
        let a = [0.3f32, -0.2, 0.9];
        let b = [-0.1f32, 0.4, 0.2];
        let out = run(
            &[3],
            &[&a, &b],
            None,
            &params(&[Some(1.0), Some(2.0)], true, false),
        )?;
        assert_eq!(out, nuslerp(2.0 / 3.0, &a, &b));
        Ok(())
    }
}
