//! Temper's objectives and trainer from your own code, both ways round (tiny random Llama,
//! synthetic data, no download):
//!
//! ```sh
//! cargo run --release --example custom_trainer
//! ```
//!
//! 1. **Your objective in Temper's trainer.** `WeightedSft` below is an objective Temper does
//!    not ship — SFT where every training row carries a weight (a data-quality score, say) —
//!    written against `temper_objectives::TrainObjective` and handed to
//!    `temper_train::Trainer::with_objective`. The trainer does the rest (data order,
//!    gradient accumulation, clipping, AdamW, checkpoints, `metrics.jsonl`) without knowing
//!    the objective.
//! 2. **Temper's objective in your loop.** A DPO loop with burn's own AdamW: reference
//!    log-probs computed once from a frozen copy of the policy into a cache (TRL's default
//!    reference), then per step `Dpo::collate` and `Dpo::loss` (policy forward to the final
//!    hidden states, log-probs in vocabulary tiles — no `[batch, seq, vocab]` logits —,
//!    the DPO loss with TRL's metrics), backward, update.
//!
//! With a real model, load it with `temper_llm::llm_arch::Pretrained::load` and tokenise a
//! JSONL dataset with `objectives::data::{read_train_rows, Preprocessor}`; the code is the same.

use temper_llm::burn::module::Module;
use temper_llm::burn::optim::{AdamWConfig, GradientsParams};
use temper_llm::burn::tensor::{Device, Tensor, TensorData};
use temper_llm::llm_arch::{LlamaForCausalLM, ModelConfig};
use temper_llm::objectives::data::{PreferenceTokens, SftTokens, TrainRows};
use temper_llm::objectives::{
    ChunkConfig, CollateOptions, Dpo, DpoConfig, LossContext, LossOutput, Metrics, MicroBatch,
    RefCacheOptions, RowKind, TrainObjective, precompute_reference,
};
use temper_llm::train::{Reference, TrainData, Trainer, TrainerConfig};

/// SFT with a weight per training row: `Σ_rows w_row · Σ_targets −log p / N`, `N` the
/// targets of the accumulation window (so it scales like Temper's own SFT).
#[derive(Debug)]
struct WeightedSft {
    /// One weight per training row, indexed like the rows given to the trainer.
    weights: Vec<f32>,
}

impl TrainObjective for WeightedSft {
    fn name(&self) -> &str {
        "weighted-sft"
    }

    fn row_kind(&self) -> RowKind {
        RowKind::Sequences
    }

    fn loss(
        &self,
        context: &LossContext<'_>,
        batch: &MicroBatch,
    ) -> temper_llm::objectives::Result<LossOutput> {
        let forward = context.policy_forward(batch.sequences(self.name())?)?;
        let weights: Vec<f32> = batch
            .rows
            .iter()
            .map(|&row| self.weights.get(row).copied().unwrap_or(1.0))
            .collect();
        let n = weights.len();
        let mean_weight = weights.iter().sum::<f32>() / n.max(1) as f32;
        let device = forward.hidden.device();
        let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), &device);
        // Ignored targets have log p = 0, so the row sums are over the row's targets only.
        let weighted = forward.logps.sum().neg() * weights;
        let targets = context.num_items.unwrap_or_else(|| batch.targets()).max(1);
        let loss = weighted.sum().div_scalar(targets as f64);
        let mut metrics = Metrics::new();
        metrics.insert("mean_row_weight", f64::from(mean_weight));
        Ok(LossOutput { loss, metrics })
    }
}

/// Synthetic SFT rows over a vocabulary of `vocab`: a prompt counting up, the completion
/// continuing the count (labels `-100` on the prompt).
fn counting_rows(n: usize, vocab: u32) -> Vec<SftTokens> {
    (0..n as u32)
        .map(|k| {
            let start = 1 + (k * 5) % (vocab - 12);
            let input_ids: Vec<u32> = (start..start + 10).collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(i, &id)| if i < 4 { -100 } else { i64::from(id) })
                .collect();
            SftTokens {
                input_ids,
                labels,
                completion_start: Some(4),
            }
        })
        .collect()
}

/// Synthetic pairs over a vocabulary of `vocab`: the chosen completion counts up from the last
/// prompt token, the rejected one repeats it — a preference the model can learn quickly.
fn synthetic_pairs(n: usize, vocab: u32) -> Vec<PreferenceTokens> {
    (0..n as u32)
        .map(|k| {
            let start = 1 + (k * 7) % (vocab - 8);
            let prompt: Vec<u32> = (0..3 + k % 3).map(|i| start + i).collect();
            let last = prompt[prompt.len() - 1];
            PreferenceTokens {
                chosen_ids: (1..5).map(|i| (last + i) % vocab).collect(),
                rejected_ids: vec![last; 4],
                prompt_ids: prompt,
            }
        })
        .collect()
}

fn tiny_policy(device: &Device) -> LlamaForCausalLM {
    let mut config = ModelConfig::tiny(64, 32, 2, 4, 2);
    config.tie_word_embeddings = true; // like SmolLM2
    LlamaForCausalLM::init(&config, device)
}

/// 1. A user's objective trained by Temper's `Trainer`.
fn own_objective_in_temper_trainer(device: &Device) -> anyhow::Result<()> {
    let rows = counting_rows(16, 64);
    // Up-weight the first half of the rows (say, the curated ones).
    let weights = (0..rows.len())
        .map(|i| if i < 8 { 2.0 } else { 0.5 })
        .collect();
    let out = tempfile_dir("temper-custom-objective")?;
    let config = TrainerConfig {
        learning_rate: 5e-3,
        max_steps: Some(12),
        batch_size: 4,
        logging_steps: 2,
        vocab_tile: 16,
        output_dir: out.clone(),
        ..TrainerConfig::default()
    };
    let data = TrainData {
        train: TrainRows::Sequences(rows),
        eval: None,
    };
    let objective = Box::new(WeightedSft { weights });
    let mut trainer = Trainer::with_objective(
        tiny_policy(device),
        config,
        objective,
        data,
        Reference::None,
        0,
    )?;
    let summary = trainer.train()?;
    for record in &summary.log_history {
        println!(
            "weighted-sft step {:2}  loss {:.4}  mean_row_weight {:.2}",
            record.step,
            record.get("loss").unwrap_or(f64::NAN),
            record.get("mean_row_weight").unwrap_or(f64::NAN),
        );
    }
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

/// 2. Temper's DPO objective in a user's own loop.
fn temper_objective_in_own_loop(device: &Device) -> anyhow::Result<()> {
    let mut policy = tiny_policy(device);
    let pairs = synthetic_pairs(16, 64);
    let rows = TrainRows::Preference(pairs.clone());
    let (batch_pairs, collate) = (4, CollateOptions::new(0, Some(32)));
    let chunk = ChunkConfig::with_vocab_tile(16);

    // Reference log-probs once, from a frozen copy (`valid()`: no autodiff); the cache can be
    // saved next to the data and reloaded with its dataset and model fingerprints checked.
    let mut options = RefCacheOptions::new(0, collate.max_length);
    options.batch_pairs = batch_pairs;
    let ref_cache = precompute_reference(&policy.valid(), &pairs, &options)?;

    let dpo = Dpo(DpoConfig::default().with_beta(0.1));
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    for step in 0..12 {
        let first = (step * batch_pairs) % rows.len();
        let indices: Vec<usize> = (first..first + batch_pairs).collect();
        let batch = dpo.collate(&rows, &indices, &collate)?;
        let context = LossContext {
            policy: &policy,
            chunk: &chunk,
            num_items: None,
            reference: &ref_cache,
        };
        let out = dpo.loss(&context, &batch)?;
        let loss = out.loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(out.loss.backward(), &policy);
        policy = optim.step(5e-3, policy, grads);

        let metric = |name: &str| out.metrics.get(name).unwrap_or(f64::NAN);
        println!(
            "dpo step {step:2}  loss {loss:.4}  rewards/margins {:+.4}  rewards/accuracies {:.2}  \
             entropy {:.3}  mean_token_accuracy {:.2}",
            metric("rewards/margins"),
            metric("rewards/accuracies"),
            metric("entropy"),
            metric("mean_token_accuracy"),
        );
    }
    Ok(())
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir(prefix: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> anyhow::Result<()> {
    let device = Device::flex().autodiff();
    own_objective_in_temper_trainer(&device)?;
    temper_objective_in_own_loop(&device)
}
