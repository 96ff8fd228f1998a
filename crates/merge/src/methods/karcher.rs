//! `karcher`: the Karcher (Riemannian, Fréchet) mean of the models' directions on the unit
//! hypersphere, scaled by their mean norm.
//!
//! The Karcher mean of unit vectors uᵢ is the point m of the sphere minimising the summed
//! squared geodesic distances Σ αᵢ·d(m, uᵢ)², the natural "average direction" that SLERP
//! generalises (for two vectors it is exactly their SLERP midpoint). It has no closed form for
//! more than two points, so it is found by Riemannian gradient descent: start from the
//! normalised Euclidean mean, then repeatedly map every uᵢ to the tangent space at m with the
//! logarithm map, log_m(uᵢ) = θᵢ/sin θᵢ·(uᵢ − cos θᵢ·m) with cos θᵢ = m·uᵢ, average the
//! tangents, T = Σ αᵢ·log_m(uᵢ), and step along the geodesic, m ← cos‖T‖·m + sin‖T‖·T/‖T‖,
//! until ‖T‖ < `tol` or after `max_iter` steps. The result is (Σ αᵢ‖xᵢ‖)·m.
//!
//! All inputs are averaged with equal weights αᵢ = 1/N (the base model is not special: list it
//! among the models to include it). Inputs whose norm is ≤ `tol` take no part in the direction
//! (their weight is shared among the others) but still count in the mean norm; if all are,
//! the result is zero.
//!
//! Parameters (mergekit 0.1.5): global `max_iter` (10) and `tol` (1e-5). Like mergekit, the
//! norms are computed in f32 and the vectors kept in the load dtype (bf16 inputs: every
//! elementwise operation rounded to bf16, and f32 scalars multiplied from the left rounded to
//! bf16 first, as torch does).

use crate::method::{
    BaseModel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::vectors::{sum, update};
use crate::{MergeError, Result};

/// The `karcher` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Karcher;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Ignored,
    min_inputs: 1,
    max_inputs: None,
    global: &[
        ParamSpec::optional("max_iter", 10.0),
        ParamSpec::optional("tol", 1e-5),
    ],
    per_model: &[],
};

impl MergeMethod for Karcher {
    fn name(&self) -> &'static str {
        "karcher"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let max_iter = job.params.get("max_iter")?;
        if max_iter.is_nan() || max_iter < 0.0 {
            return Err(MergeError::Parameter(format!(
                "karcher: `max_iter` must be ≥ 0, got {max_iter}"
            )));
        }
        let max_iter = max_iter as usize;
        let tol = job.params.get("tol")?;

        let mut xs = job.load_all();
        let count = xs.len();
        if count == 1 {
            let v = std::mem::take(&mut xs[0]);
            return Ok(MergeOutput::dense(v));
        }
        let n = xs.first().map_or(0, Vec::len);
        let norm32 = |v: &[f32]| sum(n, |j| f64::from(v[j]).powi(2)).sqrt() as f32;

        // Norms in f32; unit vectors in the compute dtype (in place of the inputs).
        let norms: Vec<f32> = xs.iter().map(|x| norm32(x)).collect();
        for (x, &nv) in xs.iter_mut().zip(&norms) {
            if nv == 0.0 {
                x.fill(0.0);
            } else {
                update(x, |_, v| r(v / nv));
            }
        }
        let alpha = 1.0 / count as f64;
        let valid: Vec<usize> = (0..count).filter(|&i| f64::from(norms[i]) > tol).collect();
        // Σ αᵢ‖xᵢ‖ over all inputs, in f32 like mergekit's sum of 0-d tensors.
        let scale = norms.iter().fold(0f32, |s, nv| s + alpha as f32 * nv);
        let mut report = MethodReport {
            norms: norms.iter().map(|v| f64::from(*v)).collect(),
            ..Default::default()
        };
        if valid.is_empty() {
            report.extra.insert("iterations".into(), 0.0);
            return Ok(MergeOutput {
                values: Merged::Dense(vec![0.0; n]),
                report,
            });
        }
        let alpha_sum: f64 = valid.iter().map(|_| alpha).sum();
        let alphas: Vec<f32> = valid.iter().map(|_| (alpha / alpha_sum) as f32).collect();
        let units: Vec<&[f32]> = valid.iter().map(|&i| xs[i].as_slice()).collect();

        // Start from the normalised Euclidean mean (sequential in-place adds, each rounded).
        let mut mean = vec![0f32; n];
        for (a, u) in alphas.iter().zip(&units) {
            update(&mut mean, |j, m| r(m + r(a * u[j])));
        }
        let mean_norm = norm32(&mean);
        if f64::from(mean_norm) < tol {
            mean.copy_from_slice(units[0]);
        } else {
            update(&mut mean, |_, m| r(m / mean_norm));
        }

        let mut iterations = 0usize;
        let mut tangent = vec![0f32; n];
        for _ in 0..max_iter {
            tangent.fill(0.0);
            for (a, u) in alphas.iter().zip(&units) {
                let dot =
                    r(sum(n, |j| f64::from(mean[j]) * f64::from(u[j])) as f32).clamp(-1.0, 1.0);
                let theta = r(dot.acos());
                if f64::from(theta) < tol {
                    continue;
                }
                let coef = r(a * r(theta / r(theta.sin())));
                let mean_ref = &mean;
                update(&mut tangent, |j, t| {
                    r(t + r(coef * r(u[j] - r(dot * mean_ref[j]))))
                });
            }
            let tn = norm32(&tangent);
            if f64::from(tn) < tol {
                break;
            }
            iterations += 1;
            // An f32 scalar as the *first* operand of a bf16 product is rounded to bf16 first
            // (torch keeps f32 precision only for the second operand).
            let (c, s) = (r(tn.cos()), r(tn.sin()));
            let tangent_ref = &tangent;
            update(
                &mut mean,
                |j, m| r(r(c * m) + r(s * r(tangent_ref[j] / tn))),
            );
            let un = norm32(&mean);
            if f64::from(un) > tol {
                update(&mut mean, |_, m| r(m / un));
            }
        }
        let scale = r(scale);
        update(&mut mean, |_, m| r(scale * m));
        report.extra.insert("iterations".into(), iterations as f64);
        Ok(MergeOutput {
            values: Merged::Dense(mean),
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

    fn run(data: &[&[f32]], max_iter: f64) -> Result<(Vec<f32>, MethodReport)> {
        let mut p = ResolvedParams::default();
        p.global.insert("max_iter", max_iter);
        p.global.insert("tol", 1e-5);
        p.per_model = vec![Default::default(); data.len()];
        with_job(&[data[0].len()], data, None, &p, DType::F32, 0, |job| {
            dense(Karcher.merge(job)?)
        })
    }

    #[test]
    fn two_vectors_give_the_slerp_midpoint_at_the_mean_norm() -> Result<()> {
        let a = [3.0f32, 0.0, 1.0];
        let b = [0.0f32, 1.0, 0.5];
        let (out, _) = run(&[&a, &b], 10.0)?;
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let (na, nb) = (norm(&a), norm(&b));
        let ua: Vec<f32> = a.iter().map(|x| x / na).collect();
        let ub: Vec<f32> = b.iter().map(|x| x / nb).collect();
        let mid = slerp(0.5, &ua, &ub);
        for (o, m) in out.iter().zip(&mid) {
            let want = m * (na + nb) / 2.0;
            assert!((o - want).abs() < 1e-5, "{o} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn iterates_to_the_geodesic_mean_on_a_circle() -> Result<()> {
        // Unit vectors at 0°, 10° and 90°: the Karcher mean is at the mean angle 33.33°,
        // while the normalised Euclidean mean (the starting point) is at about 30.6°.
        let at = |deg: f32| {
            let r = deg.to_radians();
            [r.cos(), r.sin()]
        };
        let (a, b, c) = (at(0.0), at(10.0), at(90.0));
        let (out, report) = run(&[&a, &b, &c], 10.0)?;
        let angle = out[1].atan2(out[0]).to_degrees();
        assert!((angle - 100.0 / 3.0).abs() < 1e-3, "{angle}");
        assert!(report.extra.get("iterations").is_some_and(|i| *i >= 1.0));
        // Without iterations it stays at the Euclidean mean.
        let (start, _) = run(&[&a, &b, &c], 0.0)?;
        let angle0 = start[1].atan2(start[0]).to_degrees();
        assert!((angle0 - 100.0 / 3.0).abs() > 1.0, "{angle0}");
        Ok(())
    }

    #[test]
    fn one_input_is_returned_and_zero_inputs_give_zero() -> Result<()> {
        let a = [0.5f32, -2.0];
        assert_eq!(run(&[&a], 10.0)?.0, a.to_vec());
        let z = [0.0f32, 0.0];
        assert_eq!(run(&[&z, &z], 10.0)?.0, vec![0.0, 0.0]);
        // A zero input adds nothing to the direction but halves the mean norm.
        let (out, _) = run(&[&a, &z], 10.0)?;
        for (o, x) in out.iter().zip(&a) {
            assert!((o - x / 2.0).abs() < 1e-6);
        }
        Ok(())
    }
}
