//! Autodiff gradients of every loss with respect to the policy logits agree with central
//! finite differences, on small random batches, computed in **f64** (burn-flex supports f64
//! with autodiff; the device's default float dtype is set to f64 before the first tensor of
//! this test binary, so masks and constants are f64 too).
//!
//! With f64 and a step of 1e-5 the central difference is accurate to ~1e-9, so the tolerance
//! (1e-6 absolute + 1e-6 relative) tests the gradient itself, not rounding noise.

use std::sync::OnceLock;

use burn::tensor::{Device, FloatDType, Int, IntDType, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use temper_objectives::cpo::CpoLossType;
use temper_objectives::dpo::FDivergenceType;
use temper_objectives::kto::{KlLogps, KtoBatch, KtoLossType};
use temper_objectives::orpo::OrpoNll;
use temper_objectives::{
    CausalLmConfig, CpoConfig, DpoConfig, DpoLossType, KtoConfig, OrpoConfig, PairLogps, RefLogps,
    Result, TokenLogps, TokenStats, causal_lm_loss, cpo_loss, dpo_loss, kto_loss, orpo_loss,
    token_logps, token_mean_nll,
};

const B: usize = 2;
const T: usize = 5;
const V: usize = 6;
const STEP: f64 = 1e-5;

/// The CPU device, configured for f64 once per process before any tensor exists.
fn device() -> Device {
    static CONFIGURED: OnceLock<()> = OnceLock::new();
    CONFIGURED.get_or_init(|| {
        let mut device = Device::flex();
        device
            .configure((FloatDType::F64, IntDType::I64))
            .expect("flex supports f64");
    });
    Device::flex()
}

/// A random preference batch: `B` pairs of length `T` over a vocabulary of `V`, with a prompt,
/// a completion and right padding in every row.
struct Case {
    pol_c: Vec<f64>,
    pol_r: Vec<f64>,
    ref_c: Vec<f64>,
    ref_r: Vec<f64>,
    /// Logits of the mismatched KL sequences (KTO), fixed.
    kl_c: Vec<f64>,
    labels_c: Vec<i64>,
    labels_r: Vec<i64>,
    /// Chosen `input_ids` where real, −100 on padding (ORPO's NLL labels).
    full_c: Vec<i64>,
    attn: Vec<i64>,
}

impl Case {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let logits = |rng: &mut StdRng| -> Vec<f64> {
            (0..B * T * V)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect()
        };
        let (pol_c, pol_r, ref_c, ref_r, kl_c) = (
            logits(&mut rng),
            logits(&mut rng),
            logits(&mut rng),
            logits(&mut rng),
            logits(&mut rng),
        );
        let rows = |rng: &mut StdRng| {
            let (mut completion, mut full, mut attn) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..B {
                let prompt = rng.random_range(1..=2usize);
                let answer = rng.random_range(1..=T - prompt);
                for t in 0..T {
                    let id = rng.random_range(0..V as i64);
                    let real = t < prompt + answer;
                    full.push(if real { id } else { -100 });
                    completion.push(if real && t >= prompt { id } else { -100 });
                    attn.push(i64::from(real));
                }
            }
            (completion, full, attn)
        };
        let (labels_c, full_c, attn) = rows(&mut rng);
        let (labels_r, _, _) = rows(&mut rng);
        Self {
            pol_c,
            pol_r,
            ref_c,
            ref_r,
            kl_c,
            labels_c,
            labels_r,
            full_c,
            attn,
        }
    }

    fn logits(values: &[f64], device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values.to_vec(), [B, T, V]), device)
    }

    fn labels(values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [B, T]), device)
    }

    fn lp(&self, logits: Tensor<3>, labels: &[i64]) -> Result<TokenLogps> {
        let device = logits.device();
        token_logps(logits, Self::labels(labels, &device))
    }

    fn policy(&self, pc: Tensor<3>, pr: Tensor<3>) -> Result<PairLogps> {
        PairLogps::from_halves(&self.lp(pc, &self.labels_c)?, &self.lp(pr, &self.labels_r)?)
    }

    fn reference(&self, device: &Device) -> Result<RefLogps> {
        let pairs = PairLogps::from_halves(
            &self.lp(Self::logits(&self.ref_c, device), &self.labels_c)?,
            &self.lp(Self::logits(&self.ref_r, device), &self.labels_r)?,
        )?;
        Ok(RefLogps::from_forward(&pairs))
    }

    fn stats(&self, pc: Tensor<3>, pr: Tensor<3>) -> Result<TokenStats> {
        let device = pc.device();
        let labels = Tensor::cat(
            vec![
                Self::labels(&self.labels_c, &device),
                Self::labels(&self.labels_r, &device),
            ],
            0,
        );
        let attn = Self::labels(&self.attn, &device);
        TokenStats::from_logits(
            Tensor::cat(vec![pc, pr], 0),
            labels,
            Tensor::cat(vec![attn.clone(), attn], 0),
        )
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// Compares `∂loss/∂(chosen, rejected policy logits)` from autodiff with central differences.
fn check_gradient<F>(name: &str, case: &Case, loss: F)
where
    F: Fn(&Case, Tensor<3>, Tensor<3>) -> Result<Tensor<1>>,
{
    let ad = device().autodiff();
    let pc = Case::logits(&case.pol_c, &ad).require_grad();
    let pr = Case::logits(&case.pol_r, &ad).require_grad();
    let value = loss(case, pc.clone(), pr.clone()).expect("loss");
    assert_eq!(
        value.dtype(),
        burn::tensor::DType::F64,
        "{name}: not computed in f64"
    );
    let grads = value.backward();
    let grad_of = |t: &Tensor<3>| -> Vec<f64> {
        t.grad(&grads)
            .map(|g| g.into_data().iter::<f64>().collect())
            .unwrap_or_else(|| vec![0.0; B * T * V])
    };
    let (gc, gr) = (grad_of(&pc), grad_of(&pr));

    let plain = device();
    let eval = |c: &[f64], r: &[f64]| -> f64 {
        scalar(loss(case, Case::logits(c, &plain), Case::logits(r, &plain)).expect("loss"))
    };
    let mut worst = 0.0f64;
    for (side, analytic) in [("chosen", &gc), ("rejected", &gr)] {
        for k in 0..B * T * V {
            let (mut c, mut r) = (case.pol_c.clone(), case.pol_r.clone());
            let x = if side == "chosen" { &mut c } else { &mut r };
            x[k] += STEP;
            let up = eval(&c, &r);
            let x = if side == "chosen" { &mut c } else { &mut r };
            x[k] -= 2.0 * STEP;
            let down = eval(&c, &r);
            let numeric = (up - down) / (2.0 * STEP);
            let err = (analytic[k] - numeric).abs();
            worst = worst.max(err);
            assert!(
                err <= 1e-6 + 1e-6 * numeric.abs(),
                "{name}: ∂/∂{side}[{k}] autodiff {} vs finite difference {numeric}",
                analytic[k]
            );
        }
    }
    assert!(
        gc.iter().chain(&gr).any(|g| g.abs() > 1e-8),
        "{name}: gradient is identically zero"
    );
    println!("{name:40} max |autodiff − FD| = {worst:.2e}");
}

#[test]
fn dpo_gradients_match_finite_differences() {
    let case = Case::new(7);
    let mut configs: Vec<(String, DpoConfig)> = DpoLossType::ALL
        .into_iter()
        .map(|lt| {
            let cfg = DpoConfig::new()
                .with_loss_type(vec![lt])
                .with_label_smoothing(0.1);
            (lt.name().to_string(), cfg)
        })
        .collect();
    configs.push((
        "sigmoid+sft weighted".into(),
        DpoConfig::new()
            .with_loss_type(vec![DpoLossType::Sigmoid, DpoLossType::Sft])
            .with_loss_weights(vec![1.0, 0.5]),
    ));
    for f in [
        FDivergenceType::ForwardKl,
        FDivergenceType::JsDivergence,
        FDivergenceType::AlphaDivergence,
    ] {
        for lt in [
            DpoLossType::Ipo,
            DpoLossType::SigmoidNorm,
            DpoLossType::Robust,
        ] {
            configs.push((
                format!("{lt} / {f}"),
                DpoConfig::new()
                    .with_loss_type(vec![lt])
                    .with_label_smoothing(0.1)
                    .with_f_divergence_type(f),
            ));
        }
    }
    for (name, cfg) in configs {
        check_gradient(&format!("dpo {name}"), &case, |case, pc, pr| {
            let device = pc.device();
            let stats = case.stats(pc.clone(), pr.clone())?;
            let policy = case.policy(pc, pr)?;
            Ok(dpo_loss(&cfg, &policy, &case.reference(&device)?, Some(&stats))?.loss)
        });
    }
}

#[test]
fn orpo_gradients_match_finite_differences() {
    let case = Case::new(11);
    for nll in OrpoNll::ALL {
        let cfg = OrpoConfig::new().with_nll(nll);
        check_gradient(&format!("orpo {nll}"), &case, |case, pc, pr| {
            let full = case.lp(pc.clone(), &case.full_c)?;
            let stats = case.stats(pc.clone(), pr.clone())?;
            let policy = case.policy(pc, pr)?;
            Ok(orpo_loss(&cfg, &policy, Some(&full), Some(&stats))?.loss)
        });
    }
}

#[test]
fn cpo_gradients_match_finite_differences() {
    let case = Case::new(13);
    let configs = [
        ("cpo sigmoid", CpoConfig::new()),
        (
            "cpo sigmoid smoothed",
            CpoConfig::new().with_label_smoothing(0.1),
        ),
        (
            "cpo hinge",
            CpoConfig::new().with_loss_type(CpoLossType::Hinge),
        ),
        ("cpo ipo", CpoConfig::new().with_loss_type(CpoLossType::Ipo)),
        ("simpo", CpoConfig::simpo(2.0, 0.5)),
        ("simpo alphapo", CpoConfig::simpo(2.0, 0.5).with_alpha(0.3)),
    ];
    for (name, cfg) in configs {
        check_gradient(name, &case, |case, pc, pr| {
            let stats = case.stats(pc.clone(), pr.clone())?;
            let policy = case.policy(pc, pr)?;
            Ok(cpo_loss(&cfg, &policy, Some(&stats))?.loss)
        });
    }
}

#[test]
fn kto_gradients_match_finite_differences() {
    let case = Case::new(17);
    for loss_type in [KtoLossType::Kto, KtoLossType::ApoZeroUnpaired] {
        let cfg = KtoConfig::new()
            .with_loss_type(loss_type)
            .with_weights(1.0, 1.5);
        check_gradient(&format!("kto {loss_type}"), &case, |case, pc, pr| {
            let device = pc.device();
            // The 2B rows as unpaired examples: chosen rows desirable, rejected ones not.
            let policy = case.policy(pc, pr)?;
            let reference = case.reference(&device)?;
            // KL sequences scored by fixed logits: the baseline is detached, so the finite
            // difference must not see it move either.
            let kl_policy = case.lp(Case::logits(&case.kl_c, &device), &case.labels_r)?;
            let kl_reference = case.lp(Case::logits(&case.ref_c, &device), &case.labels_r)?;
            let batch = KtoBatch {
                policy: Tensor::cat(vec![policy.chosen, policy.rejected], 0),
                reference: Tensor::cat(vec![reference.chosen, reference.rejected], 0),
                desirable: vec![true, true, false, false],
                kl: Some(KlLogps {
                    policy: kl_policy.sum(),
                    reference: kl_reference.sum(),
                }),
            };
            Ok(kto_loss(&cfg, &batch, None)?.loss)
        });
    }
}

#[test]
fn causal_lm_gradients_match_finite_differences() {
    let case = Case::new(19);
    for (name, labels) in [("sft", &case.labels_c), ("cpt", &case.full_c)] {
        for num_items in [None, Some(40)] {
            check_gradient(
                &format!("{name} num_items={num_items:?}"),
                &case,
                |case, pc, _| {
                    let lp = case.lp(pc, labels)?;
                    Ok(causal_lm_loss(&CausalLmConfig::new(), &lp, num_items, None)?.loss)
                },
            );
        }
    }
    // DFT weights −log p by p *detached*: its gradient is that of Σ −p₀·log p / N with p₀
    // frozen at the evaluation point, which is what the finite difference is taken of.
    let frozen: Vec<f64> = {
        let lp = case
            .lp(Case::logits(&case.pol_c, &device()), &case.labels_c)
            .expect("log-probs");
        (lp.logps.exp() * lp.mask)
            .into_data()
            .iter::<f64>()
            .collect()
    };
    let dft = CausalLmConfig::new().with_loss_type(temper_objectives::CausalLmLossType::Dft);
    let ad = device().autodiff();
    let pc = Case::logits(&case.pol_c, &ad).require_grad();
    let lp = case.lp(pc.clone(), &case.labels_c).expect("log-probs");
    let grads = causal_lm_loss(&dft, &lp, None, None)
        .expect("dft")
        .loss
        .backward();
    let surrogate = |case: &Case, pc: Tensor<3>, _: Tensor<3>| -> Result<Tensor<1>> {
        let device = pc.device();
        let lp = case.lp(pc, &case.labels_c)?;
        let weight = Tensor::<2>::from_data(TensorData::new(frozen.clone(), [B, T - 1]), &device);
        let weighted = TokenLogps {
            logps: lp.logps * weight,
            mask: lp.mask,
        };
        token_mean_nll(&weighted, None)
    };
    let ad_dft: Vec<f64> = pc
        .grad(&grads)
        .expect("gradient")
        .into_data()
        .iter::<f64>()
        .collect();
    let pc2 = Case::logits(&case.pol_c, &ad).require_grad();
    let grads2 = surrogate(&case, pc2.clone(), pc2.clone())
        .expect("surrogate")
        .backward();
    let ad_surrogate: Vec<f64> = pc2
        .grad(&grads2)
        .expect("gradient")
        .into_data()
        .iter::<f64>()
        .collect();
    for (a, b) in ad_dft.iter().zip(&ad_surrogate) {
        assert!((a - b).abs() < 1e-12, "dft gradient {a} vs surrogate {b}");
    }
    check_gradient("dft surrogate", &case, surrogate);
}
