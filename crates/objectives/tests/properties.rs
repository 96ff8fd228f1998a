//! Properties of the losses over random inputs (proptest, modest case counts):
//! * DPO `sigmoid` at zero margin is ln 2, whatever β, the log-probs and the reference;
//! * ORPO's odds-ratio term (value and gradient) is finite for average log-probs near 0 and
//!   near −∞;
//! * masking a target out (label −100) changes nothing else: the other tokens' log-probs are
//!   bit-identical, and the logits that predicted the masked target no longer affect any loss.

use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;
use temper_objectives::orpo::{OrpoNll, log1mexp};
use temper_objectives::{
    CausalLmConfig, DpoConfig, OrpoConfig, PairLogps, RefLogps, TokenStats, causal_lm_loss,
    dpo_loss, odds_ratio, orpo_loss, token_logps,
};

fn tensor1(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Log-probs on a 1/64 grid, so that every f32 subtraction below is exact.
fn grid_logp() -> impl Strategy<Value = f32> {
    (-4000i32..=0).prop_map(|k| k as f32 / 64.0)
}

/// An average log-prob near 0 (−1e−1 … −1e−30) or near −∞ (−10 … −1e30).
fn extreme_logp() -> impl Strategy<Value = f32> {
    prop_oneof![
        (1i32..=30, 1.0f32..9.99).prop_map(|(e, m)| -m * 10f32.powi(-e)),
        (1i32..=30, 1.0f32..9.99).prop_map(|(e, m)| -m * 10f32.powi(e)),
        Just(-f32::MIN_POSITIVE),
        Just(-1e-38f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dpo_sigmoid_at_zero_margin_is_ln2(
        pairs in prop::collection::vec((grid_logp(), grid_logp(), -256i32..256), 1..5),
        beta in 0.01f64..5.0,
    ) {
        let device = Device::flex();
        // rc = rr = x for every pair: policy − reference moved both answers by the same amount.
        let pc: Vec<f32> = pairs.iter().map(|p| p.0).collect();
        let pr: Vec<f32> = pairs.iter().map(|p| p.1).collect();
        let shift: Vec<f32> = pairs.iter().map(|p| p.2 as f32 / 64.0).collect();
        let rc: Vec<f32> = pc.iter().zip(&shift).map(|(p, x)| p - x).collect();
        let rr: Vec<f32> = pr.iter().zip(&shift).map(|(p, x)| p - x).collect();
        let counts = vec![3.0f32; pairs.len()];
        let policy = PairLogps::new(
            tensor1(&pc, &device),
            tensor1(&pr, &device),
            tensor1(&counts, &device),
            tensor1(&counts, &device),
        )
        .expect("pairs");
        let reference =
            RefLogps::new(tensor1(&rc, &device), tensor1(&rr, &device)).expect("reference");
        let out = dpo_loss(&DpoConfig::new().with_beta(beta), &policy, &reference, None)
            .expect("DPO loss");
        let loss = host(out.loss)[0];
        prop_assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "loss {loss}");
        prop_assert_eq!(out.metrics.get("rewards/margins"), Some(0.0));
        // Ties are not wins.
        prop_assert_eq!(out.metrics.get("rewards/accuracies"), Some(0.0));
    }

    #[test]
    fn orpo_odds_term_is_finite_near_zero_and_near_minus_infinity(
        pairs in prop::collection::vec((extreme_logp(), extreme_logp()), 1..5),
    ) {
        let device = Device::flex().autodiff();
        let a_c: Vec<f32> = pairs.iter().map(|p| p.0).collect();
        let a_r: Vec<f32> = pairs.iter().map(|p| p.1).collect();
        let c = tensor1(&a_c, &device).require_grad();
        let r = tensor1(&a_r, &device).require_grad();

        // log1mexp agrees with f64 on every input.
        for (got, &a) in host(log1mexp(c.clone())).iter().zip(&a_c) {
            let a = f64::from(a);
            let want = if a < -std::f64::consts::LN_2 {
                (-a.exp()).ln_1p()
            } else {
                (-a.exp_m1()).ln()
            };
            prop_assert!(got.is_finite(), "log1mexp({a}) = {got}");
            prop_assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-30),
                "log1mexp({a}) = {got}, want {want}"
            );
        }

        let odds = odds_ratio(c.clone(), r.clone());
        for v in host(odds.log_odds.clone()).into_iter().chain(host(odds.log_sigmoid.clone())) {
            prop_assert!(v.is_finite(), "odds term {v} for {a_c:?} / {a_r:?}");
        }
        let grads = odds.log_sigmoid.sum().backward();
        let grad_c = host(c.grad(&grads).expect("grad"));
        let grad_r = host(r.grad(&grads).expect("grad"));
        for g in grad_c.into_iter().chain(grad_r) {
            prop_assert!(g.is_finite(), "gradient {g} for {a_c:?} / {a_r:?}");
        }

        // And the whole loss (one completion token per row: the sum is the average).
        let ones = vec![1.0f32; pairs.len()];
        let policy = PairLogps::new(
            tensor1(&a_c, &device),
            tensor1(&a_r, &device),
            tensor1(&ones, &device),
            tensor1(&ones, &device),
        )
        .expect("pairs");
        let cfg = OrpoConfig::new().with_nll(OrpoNll::Completion);
        let out = orpo_loss(&cfg, &policy, None, None).expect("a finite ORPO loss");
        for (name, v) in out.metrics.iter() {
            prop_assert!(v.is_finite(), "{name} = {v}");
        }
    }

    #[test]
    fn masking_a_target_changes_nothing_else(
        logits in prop::collection::vec(-3.0f32..3.0, 2 * 6 * 5),
        labels in prop::collection::vec(prop_oneof![Just(-100i64), 0i64..5], 2 * 6),
        row in 0usize..2,
        target in 1usize..6,
        noise in prop::collection::vec(-5.0f32..5.0, 5),
    ) {
        let (b, t, v) = (2usize, 6usize, 5usize);
        let plain = Device::flex();
        let logits_on = |values: &[f32], device: &Device| {
            Tensor::<3>::from_data(TensorData::new(values.to_vec(), [b, t, v]), device)
        };
        let labels_on = |values: &[i64], device: &Device| {
            Tensor::<2, Int>::from_data(TensorData::new(values.to_vec(), [b, t]), device)
        };
        let mut masked = labels.clone();
        masked[row * t + target] = -100;

        // (a) The other tokens' log-probs and masks are unchanged, bit for bit.
        let lp_with = |labels: &[i64]| {
            token_logps(logits_on(&logits, &plain), labels_on(labels, &plain)).expect("lp")
        };
        let (before, after) = (lp_with(&labels), lp_with(&masked));
        let (lp0, lp1) = (host(before.logps), host(after.logps));
        let (m0, m1) = (host(before.mask), host(after.mask));
        let k = row * (t - 1) + (target - 1);
        for i in 0..lp0.len() {
            if i == k {
                prop_assert_eq!(lp1[i], 0.0);
                prop_assert_eq!(m1[i], 0.0);
            } else {
                prop_assert_eq!(lp0[i].to_bits(), lp1[i].to_bits());
                prop_assert_eq!(m0[i], m1[i]);
            }
        }

        // (b) The logits that predicted the masked target do not affect the losses any more.
        let mut moved = logits.clone();
        for (j, n) in noise.iter().enumerate() {
            moved[(row * t + target - 1) * v + j] += n;
        }
        let attn = vec![1i64; b * t];
        let sft = |values: &[f32]| {
            let lp = token_logps(logits_on(values, &plain), labels_on(&masked, &plain))
                .expect("lp");
            let stats = TokenStats::from_logits(
                logits_on(values, &plain),
                labels_on(&masked, &plain),
                labels_on(&attn, &plain),
            )
            .expect("stats");
            let out = causal_lm_loss(&CausalLmConfig::new(), &lp, None, Some(&stats))
                .expect("loss");
            (host(out.loss)[0], out.metrics)
        };
        let (loss0, metrics0) = sft(&logits);
        let (loss1, metrics1) = sft(&moved);
        prop_assert_eq!(loss0.to_bits(), loss1.to_bits());
        prop_assert_eq!(metrics0.get("entropy"), metrics1.get("entropy"));
        prop_assert_eq!(metrics0.get("mean_token_accuracy"), metrics1.get("mean_token_accuracy"));

        // DPO with row 0 as chosen and row 1 as rejected, against a fixed reference: same
        // loss, and zero gradient on the logits that predicted the masked target.
        let dpo = |values: &[f32], device: &Device, grad: bool| {
            let x = logits_on(values, device);
            let x = if grad { x.require_grad() } else { x };
            let lp = token_logps(x.clone(), labels_on(&masked, device)).expect("lp");
            let policy = PairLogps::from_stacked(&lp).expect("pairs");
            let reference = RefLogps::new(tensor1(&[-3.0], device), tensor1(&[-4.0], device))
                .expect("reference");
            let out = dpo_loss(&DpoConfig::new(), &policy, &reference, None).expect("DPO loss");
            (x, out)
        };
        let (_, base) = dpo(&logits, &plain, false);
        let (_, shifted) = dpo(&moved, &plain, false);
        prop_assert_eq!(host(base.loss)[0].to_bits(), host(shifted.loss)[0].to_bits());
        let (x, out) = dpo(&logits, &Device::flex().autodiff(), true);
        let grads = out.loss.backward();
        if let Some(g) = x.grad(&grads) {
            let g = host(g);
            for j in 0..v {
                prop_assert_eq!(g[(row * t + target - 1) * v + j], 0.0);
            }
        }
    }
}
