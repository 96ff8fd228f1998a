//! `sce` (Select, Calculate, Erase; FuseChat 2.0): a TIES-like merge of task vectors whose
//! per-model weights come from the task vectors themselves instead of the configuration.
//!
//! With task vectors τᵢ = θᵢ − θ_b:
//! 1. **Select** (`select_topk` < 1): keep only the elements where the models disagree most —
//!    the `⌊select_topk · nnz⌋` largest per-element variances across models (population
//!    variance; nnz = elements of non-zero variance), zero elsewhere in every τᵢ.
//! 2. **Calculate**: each model's weight is its mean squared task-vector entry,
//!    wᵢ = mean(τᵢ²) / Σⱼ mean(τⱼ²) (uniform 1/N when that sum is below 1e-6): models that
//!    moved further from the base count more.
//! 3. **Erase**: TIES' sign election, the sign of Σᵢ τᵢ per element (≥ 0 counts as +); entries
//!    of the other sign are dropped.
//!
//! The result is `θ_b + Σᵢ wᵢ·mᵢ·τᵢ / max(Σᵢ wᵢ·mᵢ, 1e-6)` with mᵢ the election mask.
//!
//! Parameters (mergekit 0.1.5): global `int8_mask` (false; only the storage type of mergekit's
//! masks, so it changes nothing here) and `select_topk` (1.0). No per-model parameters.
//! Arithmetic is in the load dtype like mergekit (bf16 inputs: elementwise operations rounded
//! to bf16, sums over the model axis accumulated in f32 and rounded once, long reductions in
//! f64). Exact ties in variance are broken by index.

use rayon::prelude::*;

use crate::method::{
    BaseModel, MergeMethod, MergeOutput, Merged, MethodReport, MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::vectors::{fill, sum};
use crate::{MergeError, Result};

/// The `sce` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sce;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Required,
    min_inputs: 2,
    max_inputs: None,
    global: &[
        ParamSpec::optional("int8_mask", 0.0),
        ParamSpec::optional("select_topk", 1.0),
    ],
    per_model: &[],
};

/// Keep the `k` entries of largest `score`, breaking exact ties by index; returns the mask.
fn top_k_mask(score: &[f32], k: usize) -> Vec<bool> {
    let n = score.len();
    if k == 0 || n == 0 {
        return vec![false; n];
    }
    let k = k.min(n);
    let mut sorted = score.to_vec();
    let threshold = *sorted
        .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a))
        .1;
    let above = score
        .iter()
        .filter(|s| s.total_cmp(&threshold).is_gt())
        .count();
    let mut ties_left = k - above;
    score
        .iter()
        .map(|s| match s.total_cmp(&threshold) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal if ties_left > 0 => {
                ties_left -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

impl MergeMethod for Sce {
    fn name(&self) -> &'static str {
        "sce"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let base = job.base_index("sce")?;
        let others = job.others();
        if others.is_empty() {
            return Err(MergeError::Config(format!(
                "sce needs at least one model besides base_model (tensor {})",
                job.name
            )));
        }
        let select_topk = job.params.get("select_topk")?;
        if select_topk.is_nan() {
            return Err(MergeError::Parameter(format!(
                "sce: `select_topk` is NaN for tensor {}",
                job.name
            )));
        }
        let mut all = job.load_all();
        let base_v = std::mem::take(&mut all[base]);
        let mut tvs: Vec<Vec<f32>> = others
            .iter()
            .map(|&i| std::mem::take(&mut all[i]))
            .collect();
        drop(all);
        for tv in &mut tvs {
            tv.par_iter_mut()
                .zip(base_v.par_iter())
                .for_each(|(x, b)| *x = r(*x - b));
        }
        let n = base_v.len();
        let count = tvs.len();
        let mut report = MethodReport::default();

        // Select: the top-k elements by variance across the models.
        if select_topk < 1.0 {
            let keep = if select_topk <= 0.0 {
                vec![false; n]
            } else {
                let mut var = vec![0f32; n];
                fill(&mut var, |j| {
                    let mean = tvs.iter().map(|t| f64::from(t[j])).sum::<f64>() / count as f64;
                    let v = tvs
                        .iter()
                        .map(|t| (f64::from(t[j]) - mean).powi(2))
                        .sum::<f64>()
                        / count as f64;
                    r(v as f32)
                });
                let nonzero = var.par_iter().filter(|v| **v != 0.0).count();
                let k = (nonzero as f64 * select_topk) as usize;
                top_k_mask(&var, k)
            };
            let kept = keep.iter().filter(|k| **k).count();
            report
                .extra
                .insert("selected_fraction".into(), kept as f64 / n.max(1) as f64);
            for tv in &mut tvs {
                tv.par_iter_mut().zip(keep.par_iter()).for_each(|(x, k)| {
                    if !*k {
                        *x = 0.0;
                    }
                });
            }
        }

        // Calculate: weights ∝ mean(τᵢ²).
        let means: Vec<f32> = tvs
            .iter()
            .map(|t| r((sum(n, |j| f64::from(r(t[j] * t[j]))) / n.max(1) as f64) as f32))
            .collect();
        let total = r(means.iter().map(|m| f64::from(*m)).sum::<f64>() as f32);
        let weights: Vec<f32> = if total.abs() < 1e-6 {
            vec![r(1.0 / count as f32); count]
        } else {
            means.iter().map(|m| r(m / total)).collect()
        };
        for (i, w) in weights.iter().enumerate() {
            report.extra.insert(format!("weight_{i}"), f64::from(*w));
        }

        // Erase + merge.
        let mut out = vec![0f32; n];
        fill(&mut out, |j| {
            let total = r(tvs.iter().fold(0f32, |s, t| s + t[j]));
            let majority = if total >= 0.0 { 1.0 } else { -1.0 };
            let (mut merged, mut div) = (0f32, 0f32);
            for (t, w) in tvs.iter().zip(&weights) {
                let v = t[j];
                let sign = if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                if sign == majority {
                    merged += r(v * w);
                    div += w;
                }
            }
            let div = r(r(div).max(1e-6));
            r(base_v[j] + r(r(merged) / div))
        });
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
    fn run(data: &[&[f32]], select_topk: f64) -> Result<(Vec<f32>, MethodReport)> {
        let mut p = ResolvedParams::default();
        p.global.insert("int8_mask", 0.0);
        p.global.insert("select_topk", select_topk);
        p.per_model = vec![Default::default(); data.len()];
        let base = Some(data.len() - 1);
        with_job(&[data[0].len()], data, base, &p, DType::F32, 0, |job| {
            dense(Sce.merge(job)?)
        })
    }

    #[test]
    fn one_model_is_returned() -> Result<()> {
        let base = [1.0f32, -1.0, 0.5];
        let a = [2.0f32, -3.0, 0.5];
        let (out, _) = run(&[&a, &base], 1.0)?;
        assert_eq!(out, a.to_vec());
        Ok(())
    }

    #[test]
    fn weights_follow_the_task_vector_energy_and_signs_are_elected() -> Result<()> {
        let base = [0.0f32; 2];
        // mean(τ²): a = (4 + 0)/2 = 2, b = (1 + 1)/2 = 1 → weights 2/3, 1/3.
        let a = [2.0f32, 0.0];
        let b = [-1.0f32, 1.0];
        let (out, report) = run(&[&a, &b, &base], 1.0)?;
        let wa = report.extra.get("weight_0").copied().unwrap_or_default();
        assert!((wa - 2.0 / 3.0).abs() < 1e-6);
        // Element 0: Σ = 1 ≥ 0 → only a (+2) agrees: 2·wa / wa = 2.
        // Element 1: only b is non-zero (+1): 1.
        assert!(
            (out[0] - 2.0).abs() < 1e-6 && (out[1] - 1.0).abs() < 1e-6,
            "{out:?}"
        );
        Ok(())
    }

    #[test]
    fn select_topk_keeps_the_most_disputed_elements() -> Result<()> {
        let base = [0.0f32; 4];
        // Variances across (a, b): element 0 large, 1 small, 2 zero, 3 medium.
        let a = [4.0f32, 1.0, 1.0, 2.0];
        let b = [-4.0f32, 1.5, 1.0, 0.0];
        // nnz = 3, k = ⌊3·0.67⌋ = 2: elements 0 and 3 survive.
        let (out, report) = run(&[&a, &b, &base], 0.67)?;
        assert_eq!(out[1], 0.0);
        assert_eq!(out[2], 0.0);
        assert!(out[3] != 0.0 && out[0] != 0.0);
        assert_eq!(report.extra.get("selected_fraction"), Some(&0.5));
        let (zero, _) = run(&[&a, &b, &base], 0.0)?;
        assert_eq!(zero, vec![0.0; 4]);
        Ok(())
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        assert_eq!(
            top_k_mask(&[1.0, 2.0, 2.0, 2.0], 2),
            vec![false, true, true, false]
        );
        assert_eq!(top_k_mask(&[1.0, 2.0], 0), vec![false, false]);
    }
}
