//! Every value of the objectives golden file (`fixtures/objectives/golden.json`, computed by
//! TRL 1.16's own loss code and an independent f64 implementation) reproduced in f32 within
//! `1e-5 · max(1, |want|)` (the generator's own tolerance style; gradients are all < 1, so that
//! is absolute for them).
//!
//! The file is read from `TEMPER_OBJECTIVES_GOLDEN` when set. The test walks whatever entries
//! it holds (every DPO loss type named by its key, every CPO variant, every LM entry), and at
//! the end fails if any number in the file (outside `meta`, `inputs` and hyper-parameters) was
//! not compared — so a file of the same schema with more entries runs through the same test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;
use temper_objectives::cpo::CpoLossType;
use temper_objectives::orpo::OrpoNll;
use temper_objectives::{
    CausalLmConfig, CpoConfig, DpoConfig, DpoLossType, LossOutput, OrpoConfig, PairLogps, RefLogps,
    TokenLogps, TokenStats, causal_lm_loss, cpo_loss, dpo_loss, dpo_per_pair_loss, dpo_rewards,
    odds_ratio, orpo_loss, token_logps,
};

const TOL: f64 = 1e-5;

/// Keys that are hyper-parameters or descriptions, not values to reproduce.
const PARAMETER_KEYS: &[&str] = &[
    "beta",
    "label_smoothing",
    "loss_weights",
    "cpo_alpha",
    "simpo_gamma",
    "labels",
    "source",
];

fn golden_path() -> PathBuf {
    std::env::var_os("TEMPER_OBJECTIVES_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/golden.json"
            ))
        })
}

fn values(t: Tensor<1>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

fn values_nd<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

fn flatten(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        Value::Number(n) => out.push(n.as_f64().expect("a number")),
        other => panic!("expected numbers, got {other}"),
    }
}

fn numbers(v: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    flatten(v, &mut out);
    out
}

fn shape(v: &Value) -> Vec<usize> {
    let mut dims = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        dims.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    dims
}

/// Records every comparison; reports all failures at the end.
#[derive(Default)]
struct Check {
    failures: Vec<String>,
    checked: BTreeSet<String>,
    /// section → (values compared, max |Δ|, max |Δ|/max(1, |want|)).
    stats: BTreeMap<String, (usize, f64, f64)>,
}

impl Check {
    fn compare(&mut self, path: &str, got: &[f64], want: &Value) {
        self.checked.insert(path.to_string());
        let want = numbers(want);
        if got.len() != want.len() {
            self.failures.push(format!(
                "{path}: {} values computed, {} in the file",
                got.len(),
                want.len()
            ));
            return;
        }
        let section = path.split('.').next().unwrap_or(path).to_string();
        let entry = self.stats.entry(section).or_insert((0, 0.0, 0.0));
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let abs = (g - w).abs();
            let rel = abs / w.abs().max(1.0);
            entry.0 += 1;
            entry.1 = entry.1.max(abs);
            entry.2 = entry.2.max(rel);
            if rel > TOL || g.is_nan() {
                self.failures.push(format!(
                    "{path}[{i}]: got {g:.9}, want {w:.9} (Δ {abs:.3e})"
                ));
            }
        }
    }

    fn scalar(&mut self, path: &str, got: f64, want: &Value) {
        self.compare(path, &[got], want);
    }

    fn metrics(&mut self, path: &str, out: &LossOutput, want: &Value) {
        let Value::Object(entries) = want else {
            self.failures.push(format!("{path}: not an object"));
            return;
        };
        for (name, want) in entries {
            let p = format!("{path}.{name}");
            match out.metrics.get(name) {
                Some(got) => self.scalar(&p, got, want),
                None => self.failures.push(format!("{p}: metric not reported")),
            }
        }
    }

    fn unknown(&mut self, path: &str) {
        self.failures
            .push(format!("{path}: no rule to reproduce this field"));
    }

    /// Numeric leaves of `golden` (outside `meta`, `inputs`, parameters) never compared.
    fn uncovered(&self, golden: &Value) -> Vec<String> {
        fn walk(
            v: &Value,
            path: &str,
            covered: bool,
            seen: &BTreeSet<String>,
            out: &mut Vec<String>,
        ) {
            let covered = covered || seen.contains(path);
            match v {
                Value::Object(map) => {
                    for (k, x) in map {
                        if PARAMETER_KEYS.contains(&k.as_str()) {
                            continue;
                        }
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        if path.is_empty() && (k == "meta" || k == "inputs") {
                            continue;
                        }
                        walk(x, &p, covered, seen, out);
                    }
                }
                Value::Array(items) => {
                    for (i, x) in items.iter().enumerate() {
                        walk(x, &format!("{path}[{i}]"), covered, seen, out);
                    }
                }
                Value::Number(_) if !covered => out.push(path.to_string()),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(golden, "", false, &self.checked, &mut out);
        out
    }
}

/// The fixture's inputs as host data.
struct Raw {
    pol_c: Value,
    pol_r: Value,
    ref_c: Value,
    ref_r: Value,
    labels_c: Value,
    labels_r: Value,
    attn_c: Value,
    attn_r: Value,
    ids_c: Value,
    inputs: Value,
    beta: f64,
}

impl Raw {
    fn new(golden: &Value) -> Self {
        let inputs = &golden["inputs"];
        let get = |k: &str| inputs[k].clone();
        Self {
            pol_c: get("policy_logits_chosen"),
            pol_r: get("policy_logits_rejected"),
            ref_c: get("ref_logits_chosen"),
            ref_r: get("ref_logits_rejected"),
            labels_c: get("labels_chosen"),
            labels_r: get("labels_rejected"),
            attn_c: get("attention_mask_chosen"),
            attn_r: get("attention_mask_rejected"),
            ids_c: get("input_ids_chosen"),
            inputs: inputs.clone(),
            beta: golden["meta"]["beta"].as_f64().unwrap_or(0.1),
        }
    }
}

fn float3(v: &Value, device: &Device) -> Tensor<3> {
    let dims = shape(v);
    let data: Vec<f32> = numbers(v).into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(data, [dims[0], dims[1], dims[2]]), device)
}

fn int2(v: &Value, device: &Device) -> Tensor<2, Int> {
    let dims = shape(v);
    let data: Vec<i64> = numbers(v).into_iter().map(|x| x as i64).collect();
    Tensor::from_data(TensorData::new(data, [dims[0], dims[1]]), device)
}

/// `input_ids` where the attention mask is 1, −100 elsewhere (ORPO's NLL labels).
fn non_padding_labels(ids: &Value, attn: &Value, device: &Device) -> Tensor<2, Int> {
    let dims = shape(ids);
    let data: Vec<i64> = numbers(ids)
        .into_iter()
        .zip(numbers(attn))
        .map(|(id, a)| if a == 1.0 { id as i64 } else { -100 })
        .collect();
    Tensor::from_data(TensorData::new(data, [dims[0], dims[1]]), device)
}

/// The batch on a device; on an autodiff device the policy logits are leaves with gradient.
struct Batch {
    pol_c: Tensor<3>,
    pol_r: Tensor<3>,
    ref_c: Tensor<3>,
    ref_r: Tensor<3>,
    labels_c: Tensor<2, Int>,
    labels_r: Tensor<2, Int>,
    attn_c: Tensor<2, Int>,
    attn_r: Tensor<2, Int>,
    full_c: Tensor<2, Int>,
}

impl Batch {
    fn new(raw: &Raw, device: &Device, grad: bool) -> Self {
        let leaf = |v: &Value| {
            let t = float3(v, device);
            if grad { t.require_grad() } else { t }
        };
        Self {
            pol_c: leaf(&raw.pol_c),
            pol_r: leaf(&raw.pol_r),
            ref_c: float3(&raw.ref_c, device),
            ref_r: float3(&raw.ref_r, device),
            labels_c: int2(&raw.labels_c, device),
            labels_r: int2(&raw.labels_r, device),
            attn_c: int2(&raw.attn_c, device),
            attn_r: int2(&raw.attn_r, device),
            full_c: non_padding_labels(&raw.ids_c, &raw.attn_c, device),
        }
    }

    fn lp(logits: &Tensor<3>, labels: &Tensor<2, Int>) -> TokenLogps {
        token_logps(logits.clone(), labels.clone()).expect("token log-probs")
    }

    fn policy(&self) -> PairLogps {
        PairLogps::from_halves(
            &Self::lp(&self.pol_c, &self.labels_c),
            &Self::lp(&self.pol_r, &self.labels_r),
        )
        .expect("policy pairs")
    }

    fn reference(&self) -> RefLogps {
        let pairs = PairLogps::from_halves(
            &Self::lp(&self.ref_c, &self.labels_c),
            &Self::lp(&self.ref_r, &self.labels_r),
        )
        .expect("reference pairs");
        RefLogps::from_forward(&pairs)
    }

    /// Statistics of the stacked `[chosen; rejected]` policy rows.
    fn stats(&self) -> TokenStats {
        TokenStats::from_logits(
            Tensor::cat(vec![self.pol_c.clone(), self.pol_r.clone()], 0),
            Tensor::cat(vec![self.labels_c.clone(), self.labels_r.clone()], 0),
            Tensor::cat(vec![self.attn_c.clone(), self.attn_r.clone()], 0),
        )
        .expect("token statistics")
    }

    /// `(∂loss/∂chosen logits, ∂loss/∂rejected logits)`, flattened.
    fn grads(&self, loss: Tensor<1>) -> (Vec<f64>, Vec<f64>) {
        let grads = loss.backward();
        let get = |t: &Tensor<3>| match t.grad(&grads) {
            Some(g) => values_nd(g),
            None => vec![0.0; t.dims().iter().product()],
        };
        (get(&self.pol_c), get(&self.pol_r))
    }
}

fn compare_grads(check: &mut Check, path: &str, got: &(Vec<f64>, Vec<f64>), want: &Value) {
    let Value::Object(sides) = want else {
        check.unknown(path);
        return;
    };
    for (side, w) in sides {
        let p = format!("{path}.{side}");
        match side.as_str() {
            "chosen" => check.compare(&p, &got.0, w),
            "rejected" => check.compare(&p, &got.1, w),
            _ => check.unknown(&p),
        }
    }
}

fn check_logps(check: &mut Check, raw: &Raw, section: &Value) {
    let device = Device::flex();
    let b = Batch::new(raw, &device, false);
    let per_token = |which: &str| -> Option<TokenLogps> {
        Some(match which {
            "policy_chosen" | "chosen" => Batch::lp(&b.pol_c, &b.labels_c),
            "policy_rejected" | "rejected" => Batch::lp(&b.pol_r, &b.labels_r),
            "ref_chosen" => Batch::lp(&b.ref_c, &b.labels_c),
            "ref_rejected" => Batch::lp(&b.ref_r, &b.labels_r),
            _ => return None,
        })
    };
    let Value::Object(fields) = section else {
        check.unknown("logps");
        return;
    };
    for (field, entries) in fields {
        let Value::Object(entries) = entries else {
            check.unknown(&format!("logps.{field}"));
            continue;
        };
        for (which, want) in entries {
            let path = format!("logps.{field}.{which}");
            let got = match field.as_str() {
                "per_token_ref_f64" | "per_token_policy_trl_f32" => {
                    per_token(which).map(|t| values_nd(t.logps))
                }
                "sum_ref_f64" => per_token(which).map(|t| values(t.sum())),
                "mean_ref_f64" => per_token(which).map(|t| values(t.mean())),
                "n_completion_tokens" => per_token(which).map(|t| values(t.count())),
                "dpo_rewards_per_pair_ref_f64" => {
                    let cfg = DpoConfig::new().with_beta(raw.beta);
                    let (rc, rr) = dpo_rewards(&cfg, &b.policy(), &b.reference()).expect("rewards");
                    match which.as_str() {
                        "chosen" => Some(values(rc)),
                        "rejected" => Some(values(rr)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match got {
                Some(got) => check.compare(&path, &got, want),
                None => check.unknown(&path),
            }
        }
    }
}

fn dpo_config(raw: &Raw, key: &str, entry: &Value) -> DpoConfig {
    let types: Vec<DpoLossType> = if key == "sigmoid_label_smoothing_cdpo" {
        vec![DpoLossType::Cdpo]
    } else {
        key.split('+')
            .map(|t| t.parse().expect("a DPO loss type"))
            .collect()
    };
    let mut cfg = DpoConfig::new()
        .with_beta(entry["beta"].as_f64().unwrap_or(raw.beta))
        .with_loss_type(types)
        .with_label_smoothing(entry["label_smoothing"].as_f64().unwrap_or(0.0));
    if let Value::Array(_) = &entry["loss_weights"] {
        cfg = cfg.with_loss_weights(numbers(&entry["loss_weights"]));
    }
    cfg
}

fn check_dpo(check: &mut Check, raw: &Raw, section: &Value) {
    let device = Device::flex();
    let b = Batch::new(raw, &device, false);
    let (policy, reference, stats) = (b.policy(), b.reference(), b.stats());
    let Value::Object(entries) = section else {
        check.unknown("dpo");
        return;
    };
    for (key, entry) in entries {
        let cfg = dpo_config(raw, key, entry);
        let out = dpo_loss(&cfg, &policy, &reference, Some(&stats)).expect("DPO loss");
        let loss = values(out.loss.clone())[0];
        let Value::Object(fields) = entry else {
            check.unknown(&format!("dpo.{key}"));
            continue;
        };
        for (field, want) in fields {
            let path = format!("dpo.{key}.{field}");
            match field.as_str() {
                f if PARAMETER_KEYS.contains(&f) => {}
                f if f.starts_with("loss_") => check.scalar(&path, loss, want),
                "per_pair_loss_ref_f64" => {
                    let per_pair = dpo_per_pair_loss(&cfg, &policy, &reference).expect("per pair");
                    check.compare(&path, &values(per_pair), want);
                }
                "per_pair_loss_trl_f32" => {
                    // As generated: the loss of one-pair batches.
                    let got: Vec<f64> = (0..policy.pairs())
                        .map(|i| {
                            let one = dpo_loss(
                                &cfg,
                                &policy.slice(i..i + 1),
                                &reference.slice(i..i + 1),
                                None,
                            )
                            .expect("one-pair DPO loss");
                            values(one.loss)[0]
                        })
                        .collect();
                    check.compare(&path, &got, want);
                }
                "metrics_trl_f32" => check.metrics(&path, &out, want),
                f if f.starts_with("grad_wrt_policy_logits") => {
                    let ad = Batch::new(raw, &device.clone().autodiff(), true);
                    let out = dpo_loss(&cfg, &ad.policy(), &ad.reference(), None).expect("DPO");
                    compare_grads(check, &path, &ad.grads(out.loss), want);
                }
                _ => check.unknown(&path),
            }
        }
    }
}

fn orpo_output(cfg: &OrpoConfig, b: &Batch) -> LossOutput {
    let full = Batch::lp(&b.pol_c, &b.full_c);
    orpo_loss(cfg, &b.policy(), Some(&full), Some(&b.stats())).expect("ORPO loss")
}

fn check_orpo(check: &mut Check, raw: &Raw, section: &Value) {
    let device = Device::flex();
    let b = Batch::new(raw, &device, false);
    let cfg = OrpoConfig::new().with_beta(section["beta"].as_f64().unwrap_or(raw.beta));
    let out = orpo_output(&cfg, &b);
    let loss = values(out.loss.clone())[0];
    let (avg_c, avg_r) = b.policy().means();
    let odds = odds_ratio(avg_c.clone(), avg_r.clone());
    let Value::Object(fields) = section else {
        check.unknown("orpo");
        return;
    };
    for (field, want) in fields {
        let path = format!("orpo.{field}");
        match field.as_str() {
            f if PARAMETER_KEYS.contains(&f) => {}
            f if f.starts_with("loss_") => check.scalar(&path, loss, want),
            f if f.starts_with("metrics_") => check.metrics(&path, &out, want),
            f if f.starts_with("avg_logps") => compare_grads(
                check,
                &path,
                &(values(avg_c.clone()), values(avg_r.clone())),
                want,
            ),
            f if f.starts_with("log_odds_per_pair") => {
                check.compare(&path, &values(odds.log_odds.clone()), want)
            }
            f if f.starts_with("or_term_per_pair") => check.compare(
                &path,
                &values(odds.log_sigmoid.clone().mul_scalar(cfg.beta)),
                want,
            ),
            f if f.starts_with("grad_wrt_policy_logits") => {
                let ad = Batch::new(raw, &device.clone().autodiff(), true);
                let out = orpo_output(&cfg, &ad);
                compare_grads(check, &path, &ad.grads(out.loss), want);
            }
            "llamafactory_variant_ref_f64" => {
                let lf = orpo_output(&cfg.clone().with_nll(OrpoNll::CompletionPerSequence), &b);
                let Value::Object(parts) = want else {
                    check.unknown(&path);
                    continue;
                };
                for (part, w) in parts {
                    let p = format!("{path}.{part}");
                    match part.as_str() {
                        "loss" => check.scalar(&p, values(lf.loss.clone())[0], w),
                        "sft_loss" => {
                            check.scalar(&p, lf.metrics.get("nll_loss").unwrap_or(f64::NAN), w)
                        }
                        _ => check.unknown(&p),
                    }
                }
            }
            _ => check.unknown(&path),
        }
    }
}

fn check_cpo(check: &mut Check, raw: &Raw, section: &Value) {
    let device = Device::flex();
    let b = Batch::new(raw, &device, false);
    let (policy, stats) = (b.policy(), b.stats());
    let Value::Object(entries) = section else {
        check.unknown("cpo");
        return;
    };
    for (key, entry) in entries {
        let loss_type: CpoLossType = key
            .strip_prefix("cpo_")
            .unwrap_or(key)
            .parse()
            .expect("a CPO loss type");
        let defaults = CpoConfig::new();
        let cfg = CpoConfig::new()
            .with_loss_type(loss_type)
            .with_beta(entry["beta"].as_f64().unwrap_or(defaults.beta))
            .with_cpo_alpha(entry["cpo_alpha"].as_f64().unwrap_or(defaults.cpo_alpha))
            .with_simpo_gamma(
                entry["simpo_gamma"]
                    .as_f64()
                    .unwrap_or(defaults.simpo_gamma),
            )
            .with_label_smoothing(entry["label_smoothing"].as_f64().unwrap_or(0.0));
        let out = cpo_loss(&cfg, &policy, Some(&stats)).expect("CPO loss");
        let loss = values(out.loss.clone())[0];
        let Value::Object(fields) = entry else {
            check.unknown(&format!("cpo.{key}"));
            continue;
        };
        for (field, want) in fields {
            let path = format!("cpo.{key}.{field}");
            match field.as_str() {
                f if PARAMETER_KEYS.contains(&f) => {}
                f if f.starts_with("loss_") => check.scalar(&path, loss, want),
                f if f.starts_with("nll_loss") => {
                    check.scalar(&path, out.metrics.get("nll_loss").unwrap_or(f64::NAN), want)
                }
                f if f.starts_with("metrics_") => check.metrics(&path, &out, want),
                _ => check.unknown(&path),
            }
        }
    }
}

fn check_lm(check: &mut Check, raw: &Raw, section: &Value) {
    let Value::Object(entries) = section else {
        check.unknown("lm");
        return;
    };
    for (key, entry) in entries {
        let labels_key = entry["labels"].as_str().expect("an inputs key");
        let labels = &raw.inputs[labels_key];
        let run = |device: &Device, grad: bool| {
            let logits = float3(&raw.pol_c, device);
            let logits = if grad { logits.require_grad() } else { logits };
            let labels = int2(labels, device);
            let lp = token_logps(logits.clone(), labels.clone()).expect("log-probs");
            let stats = TokenStats::from_logits(logits.clone(), labels, int2(&raw.attn_c, device))
                .expect("stats");
            let out = causal_lm_loss(&CausalLmConfig::new(), &lp, None, Some(&stats))
                .expect("causal-LM loss");
            (logits, out)
        };
        let (_, out) = run(&Device::flex(), false);
        let loss = values(out.loss.clone())[0];
        let Value::Object(fields) = entry else {
            check.unknown(&format!("lm.{key}"));
            continue;
        };
        for (field, want) in fields {
            let path = format!("lm.{key}.{field}");
            match field.as_str() {
                f if PARAMETER_KEYS.contains(&f) => {}
                f if f.starts_with("loss_") => check.scalar(&path, loss, want),
                f if f.starts_with("metrics_") => check.metrics(&path, &out, want),
                f if f.starts_with("grad_wrt_logits") => {
                    let (logits, out) = run(&Device::flex().autodiff(), true);
                    let grads = out.loss.backward();
                    let g = logits.grad(&grads).map(values_nd).unwrap_or_default();
                    check.compare(&path, &g, want);
                }
                _ => check.unknown(&path),
            }
        }
    }
}

#[test]
fn golden_values_are_reproduced() {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let golden: Value = serde_json::from_str(&text).expect("golden JSON");
    let raw = Raw::new(&golden);
    let mut check = Check::default();
    let Value::Object(sections) = &golden else {
        panic!("golden file is not an object");
    };
    for (name, section) in sections {
        match name.as_str() {
            "meta" | "inputs" => {}
            "logps" => check_logps(&mut check, &raw, section),
            "dpo" => check_dpo(&mut check, &raw, section),
            "orpo" => check_orpo(&mut check, &raw, section),
            "cpo" => check_cpo(&mut check, &raw, section),
            "lm" => check_lm(&mut check, &raw, section),
            other => check.unknown(other),
        }
    }
    let uncovered = check.uncovered(&golden);
    println!("golden file: {}", path.display());
    for (section, (n, abs, rel)) in &check.stats {
        println!("  {section:6} {n:5} values  max |Δ| {abs:.3e}  max rel {rel:.3e}");
    }
    assert!(
        uncovered.is_empty(),
        "values never compared: {uncovered:#?}"
    );
    assert!(
        check.failures.is_empty(),
        "{} mismatches:\n{}",
        check.failures.len(),
        check.failures.join("\n")
    );
}
