//! Two evaluation runs of the same benchmark side by side: overall and per category, the
//! accuracy difference with McNemar's exact test and a paired bootstrap, the per-category
//! p-values Holm-corrected (several categories are several tests: uncorrected, one in twenty
//! would look significant by chance).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::results::{
    Bootstrap, McNemar, Metric, QuestionRecord, mcnemar_exact, pair_by_id, paired_bootstrap,
};

/// One line of a comparison: a category, or everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// The category, or `"overall"`.
    pub name: String,
    /// Questions both runs scored.
    pub n: usize,
    pub acc_a: f64,
    pub acc_b: f64,
    pub mcnemar: McNemar,
    pub bootstrap: Bootstrap,
    /// McNemar's p-value after Holm's correction across the categories (the overall row:
    /// uncorrected, it is one test).
    pub p_holm: f64,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub metric: Metric,
    pub overall: ComparisonRow,
    pub categories: Vec<ComparisonRow>,
}

/// Holm's step-down adjustment of `p` (same order as given).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        let adjusted = ((m - rank) as f64 * p[i]).min(1.0);
        running = running.max(adjusted);
        out[i] = running;
    }
    out
}

fn row(
    name: String,
    a: &[QuestionRecord],
    b: &[QuestionRecord],
    metric: Metric,
    resamples: usize,
    seed: u64,
) -> Result<ComparisonRow> {
    let (xa, xb) = pair_by_id(a, b, metric)?;
    let n = xa.len();
    let acc = |x: &[bool]| x.iter().filter(|&&v| v).count() as f64 / n as f64;
    let mcnemar = mcnemar_exact(&xa, &xb)?;
    Ok(ComparisonRow {
        name,
        n,
        acc_a: acc(&xa),
        acc_b: acc(&xb),
        p_holm: mcnemar.p_value,
        mcnemar,
        bootstrap: paired_bootstrap(&xa, &xb, resamples, seed)?,
    })
}

/// Compare run `a` with run `b` under `metric`, pairing questions by id.
///
/// # Errors
/// Duplicate ids within a run, no question in common, zero resamples.
pub fn compare_runs(
    a: &[QuestionRecord],
    b: &[QuestionRecord],
    metric: Metric,
    resamples: usize,
    seed: u64,
) -> Result<Comparison> {
    let overall = row("overall".into(), a, b, metric, resamples, seed)?;
    let mut by_cat: BTreeMap<String, (Vec<QuestionRecord>, Vec<QuestionRecord>)> = BTreeMap::new();
    let cat = |r: &QuestionRecord| r.category.clone().unwrap_or_else(|| "uncategorized".into());
    for r in a {
        by_cat.entry(cat(r)).or_default().0.push(r.clone());
    }
    for r in b {
        by_cat.entry(cat(r)).or_default().1.push(r.clone());
    }
    let mut categories = Vec::new();
    for (name, (ra, rb)) in by_cat {
        // A category whose questions the runs do not share is left out, not an error.
        let ids_b: HashSet<&str> = rb.iter().map(|r| r.id.as_str()).collect();
        if !ra.iter().any(|r| ids_b.contains(r.id.as_str())) {
            continue;
        }
        categories.push(row(name, &ra, &rb, metric, resamples, seed)?);
    }
    let adjusted = holm(
        &categories
            .iter()
            .map(|r| r.mcnemar.p_value)
            .collect::<Vec<_>>(),
    );
    for (r, p) in categories.iter_mut().zip(adjusted) {
        r.p_holm = p;
    }
    Ok(Comparison {
        metric,
        overall,
        categories,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn holm_matches_the_textbook_example() {
        // p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1 →
        // 0.02, 0.03, 0.06, max(0.06, 0.04) = 0.06.
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }

    fn rec(id: &str, cat: &str, correct: bool) -> QuestionRecord {
        QuestionRecord {
            id: id.into(),
            category: Some(cat.into()),
            gold: "x".into(),
            prediction: None,
            correct,
            correct_norm: None,
            correct_bytes: None,
            unparsed: false,
            output: None,
            logprobs: None,
        }
    }

    #[test]
    fn categories_are_compared_and_corrected() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..40 {
            // Category "x": a right everywhere, b on a quarter; "y": the same outcomes.
            a.push(rec(&format!("x{i}"), "x", true));
            b.push(rec(&format!("x{i}"), "x", i % 4 == 0));
            a.push(rec(&format!("y{i}"), "y", i % 2 == 0));
            b.push(rec(&format!("y{i}"), "y", i % 2 == 0));
        }
        b.push(rec("only-b", "z", true));
        let c = compare_runs(&a, &b, Metric::Acc, 200, 7).unwrap();
        assert_eq!(c.overall.n, 80);
        assert_eq!(c.categories.len(), 2, "z is not shared");
        let x = &c.categories[0];
        assert_eq!(
            (x.name.as_str(), x.mcnemar.a_only, x.mcnemar.b_only),
            ("x", 30, 0)
        );
        assert!(x.mcnemar.p_value < 1e-8);
        assert!((x.p_holm - 2.0 * x.mcnemar.p_value).abs() < 1e-15);
        let y = &c.categories[1];
        assert_eq!(y.mcnemar.p_value, 1.0);
        assert_eq!(y.p_holm, 1.0);
        assert_eq!(y.bootstrap.diff, 0.0);
    }
}
