//! Properties of the merge methods, checked on random tiny models through the public API
//! (`MergeConfig::from_yaml` + `merge_in_memory`, and the method functions).
//!
//! * SLERP: `t = 0` returns the base exactly, `t = 1` the other model; swapping the inputs
//!   mirrors `t`; for inputs at most 90° apart the output norm lies between the parents'.
//! * linear: one model (weight 1) is the identity; non-negative weights keep the output norm
//!   at most the largest parent norm.
//! * TIES with density 1 and one model equals task_arithmetic (same weight, no normalisation);
//!   DARE/DELLA/breadcrumbs with density 1 equal task_arithmetic.
//! * DARE: same seed, same output, whatever the thread count.
//! * nuslerp, karcher, multislerp: output norm between the parents' (inputs ≤ 90° apart for
//!   nuslerp, any inputs for karcher and multislerp, whose norm is the weighted mean norm).
//! * model_stock: for task vectors at most 90° apart the output norm is at most the largest
//!   parent norm (a convex combination of the base and the average).
//! * nearswap: every output element lies between the two inputs' elements.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use temper_merge::methods::slerp;
use temper_merge::{DType, HostTensor, MergeConfig, MergeOptions, merge_in_memory};

const TENSOR: &str = "model.layers.0.mlp.down_proj.weight";

type Model = (Option<serde_json::Value>, BTreeMap<String, HostTensor>);

fn model(values: &[f32]) -> Model {
    let t = HostTensor::new(vec![values.len()], DType::F32, values.to_vec());
    (None, BTreeMap::from([(TENSOR.to_string(), t)]))
}

/// Merge the named one-tensor models with `yaml`; the merged tensor.
fn merge_opts(
    yaml: &str,
    models: &[(&str, &[f32])],
    options: &MergeOptions,
) -> Result<Vec<f32>, TestCaseError> {
    let config =
        MergeConfig::from_yaml(yaml, "test").map_err(|e| TestCaseError::fail(e.to_string()))?;
    let models: BTreeMap<String, Model> = models
        .iter()
        .map(|(name, v)| (name.to_string(), model(v)))
        .collect();
    let (out, _) = merge_in_memory(&config, models, options)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    out.get(TENSOR)
        .map(|t| t.data.clone())
        .ok_or_else(|| TestCaseError::fail("merged tensor missing"))
}

fn merge(yaml: &str, models: &[(&str, &[f32])]) -> Result<Vec<f32>, TestCaseError> {
    merge_opts(yaml, models, &MergeOptions::default())
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Two vectors of the same length.
fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    vec((-2.0f32..2.0, -2.0f32..2.0), 1..48).prop_map(|v| v.into_iter().unzip())
}

/// Three vectors of the same length.
fn triple() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Vec<f32>)> {
    vec((-2.0f32..2.0, -2.0f32..2.0, -2.0f32..2.0), 1..48).prop_map(|v| {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (a, b, c) in v {
            out.0.push(a);
            out.1.push(b);
            out.2.push(c);
        }
        out
    })
}

/// `b`, or `−b` if it is more than 90° from `a`.
fn at_most_90_degrees(a: &[f32], b: Vec<f32>) -> Vec<f32> {
    if dot(a, &b) < 0.0 {
        b.into_iter().map(|x| -x).collect()
    } else {
        b
    }
}

/// Norm within `[lo, hi]` up to a relative slack.
fn within(x: f64, lo: f64, hi: f64, slack: f64) -> bool {
    x <= hi * (1.0 + slack) + 1e-12 && x >= lo * (1.0 - slack) - 1e-12
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn slerp_endpoints_are_exact((a, b) in pair()) {
        for (t, want) in [(0.0, &a), (1.0, &b)] {
            let yaml = format!(
                "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n\
                 parameters:\n  t: {t}\n"
            );
            let out = merge(&yaml, &[("a", &a), ("b", &b)])?;
            prop_assert_eq!(&out, want);
        }
    }

    #[test]
    fn slerp_is_symmetric_under_swap((a, b) in pair(), t in 0.0f32..=1.0) {
        let ab = slerp(t, &a, &b);
        let ba = slerp(1.0 - t, &b, &a);
        let scale = norm(&a).max(norm(&b)).max(1e-3);
        for (x, y) in ab.iter().zip(&ba) {
            prop_assert!(f64::from((x - y).abs()) <= 1e-5 * scale, "{} vs {}", x, y);
        }
    }

    #[test]
    fn slerp_norm_is_between_the_parents((a, b) in pair(), t in 0.0f32..=1.0) {
        let b = at_most_90_degrees(&a, b);
        let (na, nb) = (norm(&a), norm(&b));
        prop_assume!(na > 1e-3 && nb > 1e-3);
        let cos = dot(&a, &b) / (na * nb);
        let out = slerp(t, &a, &b);
        // The linear fallback (cos > 0.9995) may dip below the smaller norm by < 1e-3.
        prop_assert!(within(norm(&out), na.min(nb), na.max(nb), 1e-3));
        if cos < 0.999 {
            prop_assert!(within(norm(&out), na.min(nb), na.max(nb), 1e-5));
        }
    }

    #[test]
    fn linear_with_one_model_is_the_identity((a, _) in pair()) {
        let yaml = "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1.0\n";
        prop_assert_eq!(merge(yaml, &[("a", &a)])?, a);
    }

    #[test]
    fn linear_norm_is_at_most_the_largest_parent(
        (a, b, c) in triple(),
        w in vec(0.01f64..2.0, 3),
    ) {
        let yaml = format!(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {{weight: {}}}\n\
             \x20 - model: b\n    parameters: {{weight: {}}}\n\
             \x20 - model: c\n    parameters: {{weight: {}}}\n",
            w[0], w[1], w[2]
        );
        let out = merge(&yaml, &[("a", &a), ("b", &b), ("c", &c)])?;
        let hi = norm(&a).max(norm(&b)).max(norm(&c));
        prop_assert!(norm(&out) <= hi * (1.0 + 1e-6) + 1e-12);
    }

    #[test]
    fn ties_with_one_model_at_full_density_is_task_arithmetic(
        (base, a) in pair(),
        w in -2.0f64..2.0,
        bf16 in any::<bool>(),
    ) {
        let dtype = if bf16 { "bfloat16" } else { "float32" };
        let yaml = |method: &str, extra: &str| format!(
            "merge_method: {method}\nbase_model: base\ndtype: {dtype}\nmodels:\n  - model: a\n\
             \x20   parameters: {{weight: {w}{extra}}}\nparameters: {{normalize: false}}\n"
        );
        let models = [("base", &base[..]), ("a", &a[..])];
        let ta = merge(&yaml("task_arithmetic", ""), &models)?;
        prop_assert_eq!(&merge(&yaml("ties", ", density: 1.0"), &models)?, &ta);
        for method in ["dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"] {
            prop_assert_eq!(&merge(&yaml(method, ", density: 1.0"), &models)?, &ta, "{}", method);
        }
    }

    #[test]
    fn dare_depends_only_on_the_seed((base, a, b) in triple(), seed in any::<u64>()) {
        let yaml = "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: a\n\
                    \x20   parameters: {weight: 0.6, density: 0.5}\n  - model: b\n\
                    \x20   parameters: {weight: 0.4, density: 0.3}\n";
        let models = [("base", &base[..]), ("a", &a[..]), ("b", &b[..])];
        let opts = |threads| MergeOptions { seed, threads: Some(threads), ..MergeOptions::default() };
        let one = merge_opts(yaml, &models, &opts(1))?;
        prop_assert_eq!(&one, &merge_opts(yaml, &models, &opts(2))?);
        prop_assert_eq!(&one, &merge_opts(yaml, &models, &opts(1))?);
    }

    #[test]
    fn nuslerp_norm_is_between_the_parents((a, b) in pair(), wa in 0.05f64..1.0, wb in 0.05f64..1.0) {
        let b = at_most_90_degrees(&a, b);
        let (na, nb) = (norm(&a), norm(&b));
        prop_assume!(na > 1e-3 && nb > 1e-3);
        let yaml = format!(
            "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: {{weight: {wa}}}\n\
             \x20 - model: b\n    parameters: {{weight: {wb}}}\n"
        );
        let out = merge(&yaml, &[("a", &a), ("b", &b)])?;
        prop_assert!(within(norm(&out), na.min(nb), na.max(nb), 1e-4), "{} not in [{}, {}]", norm(&out), na, nb);
    }

    #[test]
    fn karcher_and_multislerp_norms_are_between_the_parents((a, b, c) in triple()) {
        let ns = [norm(&a), norm(&b), norm(&c)];
        prop_assume!(ns.iter().all(|n| *n > 1e-3));
        let (lo, hi) = (ns.iter().copied().fold(f64::MAX, f64::min), ns.iter().copied().fold(0.0, f64::max));
        let models = [("a", &a[..]), ("b", &b[..]), ("c", &c[..])];
        let karcher = merge(
            "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n  - model: c\n",
            &models,
        )?;
        prop_assert!(within(norm(&karcher), lo, hi, 1e-4));
        let multi = merge(
            "merge_method: multislerp\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n\
             \x20 - model: b\n    parameters: {weight: 2.0}\n  - model: c\n    parameters: {weight: 0.5}\n",
            &models,
        );
        // multislerp refuses inputs whose weighted unit mean vanishes; otherwise bounded.
        if let Ok(multi) = multi {
            prop_assert!(within(norm(&multi), lo, hi, 1e-4));
        }
    }

    #[test]
    fn model_stock_norm_is_at_most_the_largest_parent((base, a, b) in triple()) {
        // Task vectors at most 90° apart: reflect b's through the base if needed.
        let ta: Vec<f32> = a.iter().zip(&base).map(|(x, y)| x - y).collect();
        let tb: Vec<f32> = b.iter().zip(&base).map(|(x, y)| x - y).collect();
        let tb = at_most_90_degrees(&ta, tb);
        let b: Vec<f32> = base.iter().zip(&tb).map(|(x, t)| x + t).collect();
        let out = merge(
            "merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n",
            &[("base", &base), ("a", &a), ("b", &b)],
        )?;
        let hi = norm(&base).max(norm(&a)).max(norm(&b));
        prop_assert!(norm(&out) <= hi * (1.0 + 1e-5) + 1e-9);
    }

    #[test]
    fn nearswap_stays_between_the_inputs((base, b) in pair(), t in 0.0f64..1.0) {
        let yaml = format!(
            "merge_method: nearswap\nbase_model: base\nmodels:\n  - model: b\nparameters: {{t: {t}}}\n"
        );
        let out = merge(&yaml, &[("base", &base), ("b", &b)])?;
        for ((o, x), y) in out.iter().zip(&base).zip(&b) {
            let (lo, hi) = (x.min(*y), x.max(*y));
            let slack = 1e-6 * (1.0 + hi.abs().max(lo.abs()));
            prop_assert!(*o >= lo - slack && *o <= hi + slack, "{} not in [{}, {}]", o, lo, hi);
        }
    }
}
