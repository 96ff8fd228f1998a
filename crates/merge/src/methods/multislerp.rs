//! `multislerp`: barycentric interpolation of any number of models on the hypersphere.
//!
//! Each flattened tensor xᵢ (or task vector θᵢ − θ_b with a `base_model`) is projected to the
//! unit sphere, uᵢ = xᵢ / (‖xᵢ‖ + eps). With weights wᵢ (divided by Σw with
//! `normalize_weights`), the weighted mean m = Σ wᵢuᵢ / ‖Σ wᵢuᵢ‖ is the point where the sphere is
//! linearised: each uᵢ goes to the tangent space there, τᵢ = uᵢ − (uᵢ·m)m, the tangents are
//! averaged, T = Σ wᵢτᵢ, and the exponential map brings the result back,
//! `cos‖T‖·m + sin‖T‖·T/‖T‖` (‖T‖ taken + eps). The result is scaled by the weighted mean
//! norm Σ wᵢ‖xᵢ‖ (and the base added back). Unlike chained pairwise SLERPs this is symmetric
//! in the inputs.
//!
//! Note what this amounts to (mergekit's algorithm, kept as is): because the tangent point is
//! the normalised weighted mean itself, Σ wᵢτᵢ = Σ wᵢuᵢ − (Σ wᵢuᵢ·m)m = 0 up to rounding, so
//! the exponential map returns m: the direction is the normalised weighted average of the unit
//! vectors ("nlerp"), which equals SLERP's for equal weights of two models and stays within a
//! few degrees of it otherwise.
//!
//! When the weighted mean of the unit vectors vanishes (‖Σ wᵢuᵢ‖ < eps: antipodal inputs
//! with balancing weights) two models are interpolated linearly (w₀x₀ + w₁x₁) and more are an
//! error. A single non-base model is returned unchanged.
//!
//! Parameters (mergekit 0.1.5): per model `weight` (required, not for the base); global
//! `normalize_weights` (true) and `eps` (1e-8). Arithmetic is in the load dtype like mergekit
//! (bf16 inputs: every elementwise operation rounded to bf16, reductions accumulated in f64
//! and rounded once).

use crate::method::{
    BaseModel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::vectors::{fill, sum, update};
use crate::{MergeError, Result};

/// The `multislerp` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Multislerp;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Optional,
    min_inputs: 1,
    max_inputs: None,
    global: &[
        ParamSpec::optional("normalize_weights", 1.0),
        ParamSpec::optional("eps", 1e-8),
    ],
    per_model: &[ParamSpec::required("weight")],
};

impl MergeMethod for Multislerp {
    fn name(&self) -> &'static str {
        "multislerp"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let others = job.others();
        if others.is_empty() {
            return Err(MergeError::Config(format!(
                "multislerp needs at least one model besides base_model (tensor {})",
                job.name
            )));
        }
        let mut weights: Vec<f32> = others
            .iter()
            .map(|&i| {
                job.params
                    .model(i, "weight")
                    .map(|w| r(w as f32))
                    .ok_or_else(|| {
                        MergeError::Parameter(format!(
                            "multislerp: input {i} has no `weight` for tensor {}",
                            job.name
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let eps = job.params.get("eps")? as f32;
        let normalize = job.params.flag("normalize_weights")?;

        let mut all = job.load_all();
        if let [only] = others[..] {
            // Nothing to interpolate: the model itself.
            let v = std::mem::take(&mut all[only]);
            return Ok(MergeOutput::dense(v));
        }
        if normalize {
            let total = r(weights.iter().map(|w| f64::from(*w)).sum::<f64>() as f32);
            if total == 0.0 {
                return Err(MergeError::tensor(
                    job.name,
                    "multislerp: the weights sum to zero, cannot normalise (set \
                     `normalize_weights: false`)",
                ));
            }
            weights.iter_mut().for_each(|w| *w = r(*w / total));
        }
        let base = job.base.map(|b| std::mem::take(&mut all[b]));
        let mut xs: Vec<Vec<f32>> = others
            .iter()
            .map(|&i| std::mem::take(&mut all[i]))
            .collect();
        drop(all);
        if let Some(b) = &base {
            for x in &mut xs {
                update(x, |j, v| r(v - b[j]));
            }
        }
        let n = xs[0].len();
        let norm = |v: &[f32]| r(sum(n, |j| f64::from(v[j]).powi(2)).sqrt() as f32);

        let norms: Vec<f32> = xs.iter().map(|x| norm(x)).collect();
        let denoms: Vec<f32> = norms.iter().map(|nv| r(nv + eps)).collect();
        let unit = |i: usize, j: usize| r(xs[i][j] / denoms[i]);
        // Σ over the model axis: f32 accumulation, one rounding (torch's sum).
        let model_sum = |f: &dyn Fn(usize) -> f32| {
            let mut acc = 0f32;
            for i in 0..xs.len() {
                acc += f(i);
            }
            r(acc)
        };

        let mut mean = vec![0f32; n];
        fill(&mut mean, |j| model_sum(&|i| r(unit(i, j) * weights[i])));
        let mean_norm = norm(&mean);
        if mean_norm < eps {
            if let ([x0, x1], [w0, w1]) = (&xs[..], &weights[..]) {
                let mut out = vec![0f32; n];
                fill(&mut out, |j| {
                    let m = r(r(x0[j] * w0) + r(x1[j] * w1));
                    base.as_ref().map_or(m, |b| r(m + b[j]))
                });
                let report = MethodReport {
                    norms: norms.iter().map(|v| f64::from(*v)).collect(),
                    linear_fallback: Some(true),
                    ..Default::default()
                };
                return Ok(MergeOutput {
                    values: Merged::Dense(out),
                    report,
                });
            }
            return Err(MergeError::tensor(
                job.name,
                "multislerp: the weighted sum of the unit inputs is zero (antipodal inputs \
                 with balancing weights); use different weights",
            ));
        }
        mean.iter_mut().for_each(|m| *m = r(*m / mean_norm));

        let dots: Vec<f32> = (0..xs.len())
            .map(|i| r(sum(n, |j| f64::from(r(unit(i, j) * mean[j]))) as f32))
            .collect();
        let mut tangent = vec![0f32; n];
        fill(&mut tangent, |j| {
            model_sum(&|i| r(r(unit(i, j) - r(dots[i] * mean[j])) * weights[i]))
        });
        let tangent_norm = r(norm(&tangent) + eps);
        let (c, s) = (
            r(tangent_norm.cos()),
            r(r(tangent_norm.sin()) / tangent_norm),
        );
        let scale = r(norms
            .iter()
            .zip(&weights)
            .map(|(nv, w)| f64::from(r(nv * w)))
            .sum::<f64>() as f32);
        update(&mut tangent, |j, t| {
            let v = r(r(r(mean[j] * c) + r(t * s)) * scale);
            base.as_ref().map_or(v, |b| r(v + b[j]))
        });

        let mut report = MethodReport {
            norms: norms.iter().map(|v| f64::from(*v)).collect(),
            linear_fallback: Some(false),
            ..Default::default()
        };
        report
            .extra
            .insert("tangent_norm".into(), f64::from(tangent_norm));
        Ok(MergeOutput {
            values: Merged::Dense(tangent),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::method::ResolvedParams;
    use crate::method::testing::{dense, with_job};
    use crate::methods::slerp;

    fn run(data: &[&[f32]], weights: &[Option<f64>], base: Option<usize>) -> Result<Vec<f32>> {
        let mut p = ResolvedParams::default();
        p.global.insert("normalize_weights", 1.0);
        p.global.insert("eps", 1e-8);
        p.per_model = weights
            .iter()
            .map(|w| w.iter().map(|w| ("weight", *w)).collect())
            .collect();
        with_job(&[data[0].len()], data, base, &p, DType::F32, 0, |job| {
            Ok(dense(Multislerp.merge(job)?)?.0)
        })
    }

    #[test]
    fn two_orthogonal_unit_vectors_meet_in_the_middle() -> Result<()> {
        // m = (1,1)/√2, tangents cancel: the result is m scaled by the mean norm 1.
        let out = run(&[&[1.0, 0.0], &[0.0, 1.0]], &[Some(1.0), Some(1.0)], None)?;
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (out[0] - h).abs() < 1e-6 && (out[1] - h).abs() < 1e-6,
            "{out:?}"
        );
        Ok(())
    }

    #[test]
    fn direction_is_the_normalised_weighted_mean_at_the_mean_norm() -> Result<()> {
        let a = [1.0f32, 0.2, -0.3];
        let b = [0.1f32, 1.0, 0.4];
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let (na, nb) = (norm(&a), norm(&b));
        let out = run(&[&a, &b], &[Some(0.7), Some(0.3)], None)?;
        let dir: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| 0.7 * x / na + 0.3 * y / nb)
            .collect();
        let nd = norm(&dir);
        let scale = 0.7 * na + 0.3 * nb;
        for (o, d) in out.iter().zip(&dir) {
            assert!(
                (o - d / nd * scale).abs() < 1e-5,
                "{o} vs {}",
                d / nd * scale
            );
        }
        // Equal weights: SLERP's midpoint direction.
        let out = run(&[&a, &b], &[Some(1.0), Some(1.0)], None)?;
        let ua: Vec<f32> = a.iter().map(|x| x / na).collect();
        let ub: Vec<f32> = b.iter().map(|x| x / nb).collect();
        let mid = slerp(0.5, &ua, &ub);
        for (o, m) in out.iter().zip(&mid) {
            assert!((o - m * (na + nb) / 2.0).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn identical_inputs_return_the_input() -> Result<()> {
        let a = [0.5f32, -1.0, 2.0];
        let out = run(&[&a, &a, &a], &[Some(1.0), Some(2.0), Some(3.0)], None)?;
        for (o, x) in out.iter().zip(&a) {
            assert!((o - x).abs() < 1e-5, "{o} vs {x}");
        }
        Ok(())
    }

    #[test]
    fn base_makes_it_task_vector_space_and_antipodes_fall_back() -> Result<()> {
        let base = [1.0f32, 1.0];
        // Task vectors (1, 0) and (−1, 0), equal weights: the mean vanishes → linear.
        let out = run(
            &[&[2.0, 1.0], &[0.0, 1.0], &base],
            &[Some(1.0), Some(1.0), None],
            Some(2),
        )?;
        assert_eq!(out, vec![1.0, 1.0]);
        // More than two antipodal-balanced inputs cannot fall back.
        let r = run(
            &[&[1.0, 0.0], &[-1.0, 0.0], &[1.0, 0.0], &[-1.0, 0.0]],
            &[Some(1.0); 4],
            None,
        );
        assert!(r.is_err());
        Ok(())
    }

    #[test]
    fn one_model_is_returned_as_is() -> Result<()> {
        let a = [0.25f32, 4.0];
        assert_eq!(run(&[&a], &[Some(0.3)], None)?, a.to_vec());
        Ok(())
    }
}
