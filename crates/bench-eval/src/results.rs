//! Accuracy with standard errors, per-question records, paired tests and merge analysis.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use temper_formats::AtomicFile;

use crate::{EvalError, Result};

pub use crate::record::QuestionRecord;

/// Which correctness flag of a record to summarise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Acc,
    AccNorm,
    AccBytes,
}

impl Metric {
    /// The flag of `r` (log-likelihood flags fall back to `correct` when absent).
    pub fn correct(self, r: &QuestionRecord) -> bool {
        match self {
            Self::Acc => r.correct,
            Self::AccNorm => r.correct_norm.unwrap_or(r.correct),
            Self::AccBytes => r.correct_bytes.unwrap_or(r.correct),
        }
    }
}

/// An accuracy with lm-eval's standard error of a mean of 0/1 scores: the sample standard
/// deviation (n − 1) over √n, `sqrt(p(1−p)/(n−1))` — so Temper's benchmark and an lm-eval
/// task report the same ± on the same answers. Below two answers there is no spread to
/// estimate: 0 here (lm-eval prints "N/A").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub stderr: f64,
}

impl Accuracy {
    /// From counts (`n = 0` gives accuracy and error 0).
    pub fn from_counts(correct: usize, n: usize) -> Self {
        if n == 0 {
            return Self {
                n,
                correct,
                accuracy: 0.0,
                stderr: 0.0,
            };
        }
        let p = correct as f64 / n as f64;
        Self {
            n,
            correct,
            accuracy: p,
            stderr: if n < 2 {
                0.0
            } else {
                (p * (1.0 - p) / (n - 1) as f64).sqrt()
            },
        }
    }
}

/// Overall and per-category accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub metric: Metric,
    pub overall: Accuracy,
    /// Keyed by category; questions without one are under `"uncategorized"`.
    pub per_category: BTreeMap<String, Accuracy>,
    /// Generative outputs with no parseable answer (already counted as wrong).
    pub unparsed: usize,
}

/// Summarise records under `metric`.
pub fn summarize(records: &[QuestionRecord], metric: Metric) -> Summary {
    let mut cats: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut correct = 0;
    for r in records {
        let ok = metric.correct(r);
        correct += usize::from(ok);
        let e = cats
            .entry(r.category.clone().unwrap_or_else(|| "uncategorized".into()))
            .or_default();
        e.0 += usize::from(ok);
        e.1 += 1;
    }
    Summary {
        metric,
        overall: Accuracy::from_counts(correct, records.len()),
        per_category: cats
            .into_iter()
            .map(|(k, (c, n))| (k, Accuracy::from_counts(c, n)))
            .collect(),
        unparsed: records.iter().filter(|r| r.unparsed).count(),
    }
}

/// Write records as JSONL, atomically (a temporary file renamed into place), so an
/// interrupted write never leaves a truncated file behind.
///
/// # Errors
/// I/O errors.
pub fn write_records(path: impl AsRef<Path>, records: &[QuestionRecord]) -> Result<()> {
    let path = path.as_ref();
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Dropped without a commit on error, which removes the temporary file.
    let mut file = AtomicFile::create(path)?;
    {
        let mut w = std::io::BufWriter::new(&mut file);
        for r in records {
            let line = serde_json::to_string(r).map_err(|e| EvalError::Invalid(e.to_string()))?;
            writeln!(w, "{line}").map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    Ok(file.commit()?)
}

/// Read records written by [`write_records`].
///
/// # Errors
/// I/O errors and malformed lines (naming file and line).
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<QuestionRecord>> {
    let path = path.as_ref();
    let text = temper_formats::read_regular_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EvalError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Correctness of the questions two record sets share, paired by id (in `a`'s order).
///
/// # Errors
/// Duplicate ids, or no question in common.
pub fn pair_by_id(
    a: &[QuestionRecord],
    b: &[QuestionRecord],
    metric: Metric,
) -> Result<(Vec<bool>, Vec<bool>)> {
    let mut by_id: HashMap<&str, bool> = HashMap::with_capacity(b.len());
    for r in b {
        if by_id.insert(&r.id, metric.correct(r)).is_some() {
            return Err(EvalError::Invalid(format!(
                "duplicate question id {:?}",
                r.id
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for r in a {
        if !seen.insert(r.id.as_str()) {
            return Err(EvalError::Invalid(format!(
                "duplicate question id {:?}",
                r.id
            )));
        }
        if let Some(&ok) = by_id.get(r.id.as_str()) {
            xa.push(metric.correct(r));
            xb.push(ok);
        }
    }
    if xa.is_empty() {
        return Err(EvalError::Invalid(
            "the record sets share no question id".into(),
        ));
    }
    Ok((xa, xb))
}

/// McNemar's exact test on paired outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Questions only `a` got right.
    pub a_only: usize,
    /// Questions only `b` got right.
    pub b_only: usize,
    /// Two-sided exact binomial p-value of the discordant pairs (1 when there are none).
    pub p_value: f64,
}

/// McNemar's exact (binomial) test: two-sided p = min(1, 2·P(X ≤ min(a_only, b_only))) with
/// X ~ Bin(a_only + b_only, 1/2).
///
/// # Errors
/// Different lengths.
pub fn mcnemar_exact(a: &[bool], b: &[bool]) -> Result<McNemar> {
    if a.len() != b.len() {
        return Err(EvalError::Invalid(format!(
            "paired sets of {} and {} outcomes",
            a.len(),
            b.len()
        )));
    }
    let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
    let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
    Ok(McNemar {
        a_only,
        b_only,
        p_value: mcnemar_p(a_only, b_only),
    })
}

fn ln_choose(n: usize, k: usize) -> f64 {
    (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum()
}

fn mcnemar_p(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_half_n = n as f64 * 0.5f64.ln();
    let tail: f64 = (0..=b.min(c))
        .map(|k| (ln_choose(n, k) + ln_half_n).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// A paired bootstrap of the accuracy difference `a − b`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Observed accuracy difference `acc(a) − acc(b)`.
    pub diff: f64,
    /// 2.5 % and 97.5 % percentiles of the resampled differences.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided: 2·min(P(d* ≤ 0), P(d* ≥ 0)), capped at 1.
    pub p_value: f64,
    pub resamples: usize,
}

/// Resample questions with replacement (`resamples` times, seeded) and recompute the paired
/// difference of accuracies.
///
/// # Errors
/// Different lengths, empty sets or zero resamples.
pub fn paired_bootstrap(a: &[bool], b: &[bool], resamples: usize, seed: u64) -> Result<Bootstrap> {
    if a.len() != b.len() || a.is_empty() || resamples == 0 {
        return Err(EvalError::Invalid(format!(
            "bootstrap needs equal non-empty sets and resamples > 0 (got {}, {}, {resamples})",
            a.len(),
            b.len()
        )));
    }
    let n = a.len();
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(u8::from(*x)) - f64::from(u8::from(*y)))
        .collect();
    let diff = d.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    stats.sort_by(f64::total_cmp);
    let pct = |q: f64| stats[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let le = stats.iter().filter(|&&s| s <= 0.0).count() as f64 / resamples as f64;
    let ge = stats.iter().filter(|&&s| s >= 0.0).count() as f64 / resamples as f64;
    Ok(Bootstrap {
        diff,
        ci_low: pct(0.025),
        ci_high: pct(0.975),
        p_value: (2.0 * le.min(ge)).min(1.0),
        resamples,
    })
}

/// A merged model against its two parents, on the questions all three share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeAnalysis {
    pub merged: f64,
    pub parent_a: f64,
    pub parent_b: f64,
    /// Mean of the parents' accuracies.
    pub expected: f64,
    /// `merged − max(parent_a, parent_b)`.
    pub gain_over_best: f64,
    /// `merged − expected`.
    pub gain_over_expected: f64,
    /// `"a"` or `"b"`: the better parent (a on ties).
    pub best_parent: String,
    /// Merged vs the better parent.
    pub mcnemar: McNemar,
    pub bootstrap: Bootstrap,
    /// Merged beats both parents with both paired p-values below 0.05.
    pub synergy: bool,
    pub n: usize,
}

/// Compare a merge with its parents (records paired by id).
///
/// # Errors
/// No question shared by all three, or duplicate ids.
pub fn merge_analysis(
    merged: &[QuestionRecord],
    parent_a: &[QuestionRecord],
    parent_b: &[QuestionRecord],
    metric: Metric,
    resamples: usize,
    seed: u64,
) -> Result<MergeAnalysis> {
    let a_ids: HashMap<&str, &QuestionRecord> =
        parent_a.iter().map(|r| (r.id.as_str(), r)).collect();
    let b_ids: HashMap<&str, &QuestionRecord> =
        parent_b.iter().map(|r| (r.id.as_str(), r)).collect();
    let (mut m, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for r in merged {
        if let (Some(ra), Some(rb)) = (a_ids.get(r.id.as_str()), b_ids.get(r.id.as_str())) {
            m.push(metric.correct(r));
            a.push(metric.correct(ra));
            b.push(metric.correct(rb));
        }
    }
    if m.is_empty() {
        return Err(EvalError::Invalid(
            "merged model and parents share no question id".into(),
        ));
    }
    let mean = |x: &[bool]| x.iter().filter(|&&v| v).count() as f64 / x.len() as f64;
    let (am, aa, ab) = (mean(&m), mean(&a), mean(&b));
    let (best_parent, best) = if aa >= ab { ("a", &a) } else { ("b", &b) };
    let mcnemar = mcnemar_exact(&m, best)?;
    let bootstrap = paired_bootstrap(&m, best, resamples, seed)?;
    let gain = am - aa.max(ab);
    Ok(MergeAnalysis {
        merged: am,
        parent_a: aa,
        parent_b: ab,
        expected: (aa + ab) / 2.0,
        gain_over_best: gain,
        gain_over_expected: am - (aa + ab) / 2.0,
        best_parent: best_parent.into(),
        mcnemar,
        bootstrap,
        synergy: gain > 0.0 && mcnemar.p_value < 0.05 && bootstrap.p_value < 0.05,
        n: m.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, cat: Option<&str>, ok: bool) -> QuestionRecord {
        QuestionRecord {
            id: id.into(),
            category: cat.map(Into::into),
            gold: "A".into(),
            prediction: Some("A".into()),
            correct: ok,
            correct_norm: None,
            correct_bytes: None,
            unparsed: false,
            output: None,
            logprobs: None,
        }
    }

    /// Outcome pairs: `both` right in both, `a_only`, `b_only`, `neither`.
    fn table(both: usize, a_only: usize, b_only: usize, neither: usize) -> (Vec<bool>, Vec<bool>) {
        let mut a = vec![];
        let mut b = vec![];
        for (n, x, y) in [
            (both, true, true),
            (a_only, true, false),
            (b_only, false, true),
            (neither, false, false),
        ] {
            a.extend(std::iter::repeat_n(x, n));
            b.extend(std::iter::repeat_n(y, n));
        }
        (a, b)
    }

    #[test]
    fn mcnemar_matches_hand_computed_tables() -> Result<()> {
        // 1 vs 6 discordant: 2·(C(7,0)+C(7,1))/2^7 = 16/128 = 0.125.
        let (a, b) = table(10, 1, 6, 3);
        let t = mcnemar_exact(&a, &b)?;
        assert_eq!((t.a_only, t.b_only), (1, 6));
        assert!((t.p_value - 0.125).abs() < 1e-12, "{t:?}");
        // 0 vs 5: 2/32 = 0.0625.
        let (a, b) = table(3, 0, 5, 0);
        assert!((mcnemar_exact(&a, &b)?.p_value - 0.0625).abs() < 1e-12);
        // 2 vs 10: 2·(1+12+66)/4096 = 158/4096.
        let (a, b) = table(0, 10, 2, 7);
        assert!((mcnemar_exact(&a, &b)?.p_value - 158.0 / 4096.0).abs() < 1e-12);
        // Balanced and empty discordance: p = 1.
        let (a, b) = table(4, 3, 3, 1);
        assert!((mcnemar_exact(&a, &b)?.p_value - 1.0).abs() < 1e-12);
        let (a, b) = table(4, 0, 0, 1);
        assert_eq!(mcnemar_exact(&a, &b)?.p_value, 1.0);
        assert!(mcnemar_exact(&a, &b[1..]).is_err());
        Ok(())
    }

    #[test]
    fn summary_has_standard_errors_per_category() {
        let recs = vec![
            rec("1", Some("x"), true),
            rec("2", Some("x"), false),
            rec("3", Some("y"), true),
            rec("4", None, true),
        ];
        let s = summarize(&recs, Metric::Acc);
        assert_eq!(s.overall.correct, 3);
        assert!((s.overall.accuracy - 0.75).abs() < 1e-12);
        // lm-eval's mean_stderr of [1, 0, 1, 1] and of [1, 0].
        let (_, lm_eval) = crate::task::run::mean_and_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert!((s.overall.stderr - lm_eval).abs() < 1e-12);
        assert!((s.overall.stderr - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.per_category["x"].stderr - 0.5).abs() < 1e-12);
        assert_eq!(s.per_category["y"].stderr, 0.0);
        assert_eq!(s.per_category["uncategorized"].n, 1);
    }

    #[test]
    fn bootstrap_is_seeded_and_sensible() -> Result<()> {
        let (a, b) = table(50, 30, 5, 15);
        let x = paired_bootstrap(&a, &b, 2000, 7)?;
        assert_eq!(x, paired_bootstrap(&a, &b, 2000, 7)?);
        assert!((x.diff - 0.25).abs() < 1e-12);
        assert!(
            x.ci_low > 0.0 && x.ci_high > x.diff && x.p_value < 0.01,
            "{x:?}"
        );
        let (a, b) = table(50, 5, 5, 15);
        let y = paired_bootstrap(&a, &b, 2000, 7)?;
        assert!(y.p_value > 0.5, "{y:?}");
        Ok(())
    }

    #[test]
    fn records_round_trip_and_merge_analysis() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let mk = |pattern: &[bool]| -> Vec<QuestionRecord> {
            pattern
                .iter()
                .enumerate()
                .map(|(i, &ok)| rec(&format!("q{i}"), None, ok))
                .collect()
        };
        let n = 40;
        let merged = mk(&(0..n).map(|i| i < 36).collect::<Vec<_>>());
        let pa = mk(&(0..n).map(|i| i < 20).collect::<Vec<_>>());
        let pb = mk(&(0..n).map(|i| (10..34).contains(&i)).collect::<Vec<_>>());
        let path = dir.path().join("m.jsonl");
        write_records(&path, &merged)?;
        assert_eq!(read_records(&path)?, merged);
        let m = merge_analysis(&merged, &pa, &pb, Metric::Acc, 1000, 1)?;
        assert!((m.expected - (0.5 + 0.6) / 2.0).abs() < 1e-12);
        assert_eq!(m.best_parent, "b");
        assert!((m.gain_over_best - 0.3).abs() < 1e-12);
        // merged vs b: only-merged = 0..10 and 34..36 = 12, only-b = 0.
        assert_eq!((m.mcnemar.a_only, m.mcnemar.b_only), (12, 0));
        assert!(m.synergy);
        let (x, y) = pair_by_id(&merged, &pa[..5], Metric::Acc)?;
        assert_eq!((x.len(), y.len()), (5, 5));
        Ok(())
    }
}
