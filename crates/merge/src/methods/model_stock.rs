//! `model_stock` (Jang et al., 2024): interpolate between the base model and the average of
//! N ≥ 2 fine-tunes, with the ratio chosen from the angle between their task vectors.
//!
//! Fine-tunes of one base tend to lie on a thin shell around a centre that generalises better
//! than any of them; with cos θ the mean pairwise cosine of the task vectors τᵢ = θᵢ − θ_b,
//! the point of the segment [θ_b, mean θᵢ] closest to that centre is at
//! `t = N·cos θ / (1 + (N − 1)·cos θ)`, and the merge is `t·mean(θᵢ) + (1 − t)·θ_b`.
//! Identical task vectors (cos θ = 1) give t = 1 (their average); orthogonal ones t = 0 (the
//! base). Where the denominator vanishes (|1 + (N−1)cos θ| < 1e-6) the base is kept (t = 0).
//! Each cosine is `τₐ·τ_b / max(‖τₐ‖‖τ_b‖, 1e-6)`, clamped to [−1, 1].
//!
//! With `filter_wise` the ratio is computed per vector along the last axis (each row of a
//! matrix, i.e. each output filter); otherwise over the whole flattened tensor.
//!
//! Parameters (mergekit 0.1.5): global `filter_wise` (false); no per-model parameters. Needs
//! `base_model` and at least two other models. Arithmetic is in the load dtype like mergekit
//! (bf16 inputs: elementwise operations rounded to bf16, reductions accumulated in f64 and
//! rounded once; the average sums the models one by one, as Python's `sum` does).

use crate::method::{
    BaseModel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::vectors::{Vectors, fill};
use crate::{MergeError, Result};

/// The `model_stock` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelStock;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 3,
    max_inputs: None,
    global: &[ParamSpec::optional("filter_wise", 0.0)],
    per_model: &[],
};

/// The interpolation ratio for `count` models whose task vectors have mean pairwise cosine
/// `cos`: `N·cos / (1 + (N−1)·cos)`, or 0 where the denominator is within 1e-6 of zero.
pub fn model_stock_t(count: usize, cos: f32) -> f32 {
    let den = 1.0 + (count as f32 - 1.0) * cos;
    if den.abs() < 1e-6 {
        0.0
    } else {
        count as f32 * cos / den
    }
}

impl MergeMethod for ModelStock {
    fn name(&self) -> &'static str {
        "model_stock"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let base = job.base_index("model_stock")?;
        let others = job.others();
        if others.len() < 2 {
            return Err(MergeError::Config(format!(
                "model_stock needs at least two models besides base_model, got {} (tensor {})",
                others.len(),
                job.name
            )));
        }
        let vectors = if job.params.flag("filter_wise")? {
            Vectors::last_axis(job.shape)
        } else {
            Vectors::Whole
        };
        let all = job.load_all();
        let w0 = &all[base];
        let ws: Vec<&[f32]> = others.iter().map(|&i| all[i].as_slice()).collect();
        let count = ws.len();
        let n = w0.len();
        let offset = |i: usize, j: usize| r(ws[i][j] - w0[j]);
        let pairs: Vec<(usize, usize)> = (0..count)
            .flat_map(|a| (a + 1..count).map(move |b| (a, b)))
            .collect();

        // Per vector: Στᵢ² for every model, then Σ τₐτ_b for every pair.
        let sums = vectors.reduce(n, count + pairs.len(), |j, acc| {
            let (sq, dots) = acc.split_at_mut(count);
            for (i, s) in sq.iter_mut().enumerate() {
                *s += f64::from(offset(i, j)).powi(2);
            }
            for (d, &(a, b)) in dots.iter_mut().zip(&pairs) {
                *d += f64::from(r(offset(a, j) * offset(b, j)));
            }
        });
        let (ts, coss): (Vec<f32>, Vec<f32>) = sums
            .iter()
            .map(|s| {
                let norms: Vec<f32> = s[..count].iter().map(|v| r(v.sqrt() as f32)).collect();
                let cos_sum: f64 = s[count..]
                    .iter()
                    .zip(&pairs)
                    .map(|(dot, &(a, b))| {
                        let prod = r(norms[a] * norms[b]);
                        f64::from(r(r(*dot as f32) / r(prod.max(1e-6))).clamp(-1.0, 1.0))
                    })
                    .sum();
                let cos = r((cos_sum / pairs.len() as f64) as f32);
                let den = r(1.0 + r((count as f32 - 1.0) * cos));
                let t = if den.abs() < 1e-6 {
                    0.0
                } else {
                    r(r(count as f32 * cos) / den)
                };
                (t, cos)
            })
            .unzip();

        let mut out = vec![0f32; n];
        fill(&mut out, |j| {
            let t = ts[vectors.vector_of(j)];
            let mut total = ws[0][j];
            for w in &ws[1..] {
                total = r(total + w[j]);
            }
            let avg = r(total / count as f32);
            r(r(t * avg) + r(r(1.0 - t) * w0[j]))
        });

        let mut report = MethodReport::default();
        let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64;
        report.extra.insert("t".into(), mean(&ts));
        report.extra.insert("cos".into(), mean(&coss));
        if let [cos] = coss[..] {
            report.cosine = Some(f64::from(cos));
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
    use crate::DType;
    use crate::method::ResolvedParams;
    use crate::method::testing::{dense, with_job};

    /// Inputs: the models, then the base last.
    fn run(
        shape: &[usize],
        data: &[&[f32]],
        filter_wise: bool,
    ) -> Result<(Vec<f32>, MethodReport)> {
        let mut p = ResolvedParams::default();
        p.global
            .insert("filter_wise", f64::from(u8::from(filter_wise)));
        p.per_model = vec![Default::default(); data.len()];
        let base = Some(data.len() - 1);
        with_job(shape, data, base, &p, DType::F32, 0, |job| {
            dense(ModelStock.merge(job)?)
        })
    }

    #[test]
    fn ratio_formula() {
        assert_eq!(model_stock_t(2, 1.0), 1.0);
        assert_eq!(model_stock_t(3, 0.0), 0.0);
        assert!((model_stock_t(2, 0.5) - 2.0 / 3.0).abs() < 1e-7);
        // 1 + (N−1)·cos = 0: the base is kept.
        assert_eq!(model_stock_t(3, -0.5), 0.0);
    }

    #[test]
    fn identical_task_vectors_give_their_average() -> Result<()> {
        let base = [1.0f32, 2.0, 3.0];
        let a = [1.5f32, 2.0, 2.0];
        let (out, report) = run(&[3], &[&a, &a, &base], false)?;
        for (o, x) in out.iter().zip(&a) {
            assert!((o - x).abs() < 1e-6, "{o} vs {x}");
        }
        assert!(
            report
                .extra
                .get("t")
                .is_some_and(|t| (t - 1.0).abs() < 1e-6)
        );
        Ok(())
    }

    #[test]
    fn orthogonal_task_vectors_keep_the_base() -> Result<()> {
        let base = [1.0f32, 1.0];
        let (out, _) = run(&[2], &[&[2.0, 1.0], &[1.0, 3.0], &base], false)?;
        assert_eq!(out, base.to_vec());
        Ok(())
    }

    #[test]
    fn sixty_degrees_gives_two_thirds() -> Result<()> {
        // τ₁ = (1, 0), τ₂ = (1/2, √3/2): cos = 1/2, t = 2/3; average τ = (3/4, √3/4).
        let base = [0.0f32, 0.0];
        let s = 3f32.sqrt() / 2.0;
        let (out, _) = run(&[2], &[&[1.0, 0.0], &[0.5, s], &base], false)?;
        assert!(
            (out[0] - 0.5).abs() < 1e-6 && (out[1] - s / 3.0).abs() < 1e-6,
            "{out:?}"
        );
        Ok(())
    }

    #[test]
    fn filter_wise_uses_one_ratio_per_row() -> Result<()> {
        // Row 0: identical task vectors (t = 1); row 1: orthogonal ones (t = 0).
        let base = [0.0f32; 4];
        let a = [1.0f32, 2.0, 1.0, 0.0];
        let b = [1.0f32, 2.0, 0.0, 1.0];
        let (rows, _) = run(&[2, 2], &[&a, &b, &base], true)?;
        for (o, x) in rows.iter().zip([1.0f32, 2.0, 0.0, 0.0]) {
            assert!((o - x).abs() < 1e-6, "{rows:?}");
        }
        // Flattened: one ratio for everything (cos = 5/6 → t = 10/11).
        let (flat, report) = run(&[2, 2], &[&a, &b, &base], false)?;
        let t = 10.0f32 / 11.0;
        assert!(
            report
                .extra
                .get("t")
                .is_some_and(|v| (*v as f32 - t).abs() < 1e-6)
        );
        assert!((flat[0] - t).abs() < 1e-6 && (flat[2] - t * 0.5).abs() < 1e-6);
        Ok(())
    }
}
