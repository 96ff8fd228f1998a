//! A DPO training loop you can copy into your own trainer: `temper-llm-arch` for the model,
//! `temper-objectives` for the data collation, log-probs and loss, burn's AdamW for the update.
//!
//! It trains a tiny random Llama on synthetic preference pairs for a few steps (no download):
//!
//! ```sh
//! cargo run --release --example custom_trainer
//! ```
//!
//! With a real model, load it with `temper_llm::llm_arch::Pretrained::load` and tokenise a
//! JSONL dataset with `objectives::data::{read_jsonl, Preprocessor}`; the loop is the same.
//!
//! The steps:
//! 1. reference log-probs once, before training, from a frozen copy of the initial policy
//!    (TRL's default reference), written to a cache file keyed by dataset and model
//!    fingerprints — the reference model can then be dropped;
//! 2. per step: collate `[chosen; rejected]` rows, run the policy to its final hidden states,
//!    take per-token log-probs (and TRL's token statistics) in vocabulary tiles from the
//!    hidden states and the LM-head weight (no `[batch, seq, vocab]` logits), sum them per
//!    sequence, DPO loss with TRL's metrics, backward, AdamW step.

use temper_llm::burn::module::Module;
use temper_llm::burn::optim::{AdamWConfig, GradientsParams};
use temper_llm::burn::tensor::Device;
use temper_llm::llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig};
use temper_llm::objectives::data::{PadOptions, PreferenceTokens, collate_preference};
use temper_llm::objectives::{
    ChunkConfig, DpoConfig, PairLogps, RefCache, RefCacheOptions, chunked_token_logps_with_stats,
    dataset_fingerprint, dpo_loss, lm_head_weight, model_fingerprint, precompute_reference,
};

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

fn main() -> anyhow::Result<()> {
    let device = Device::flex().autodiff();
    let mut config = ModelConfig::tiny(64, 32, 2, 4, 2);
    config.tie_word_embeddings = true; // like SmolLM2
    let mut policy = LlamaForCausalLM::init(&config, &device);

    let pairs = synthetic_pairs(16, 64);
    let (max_length, pad_id, batch_pairs) = (Some(32), 0, 4);
    let pad = PadOptions::new(pad_id);
    let chunk = ChunkConfig::with_vocab_tile(16);

    // 1. Reference log-probs from a frozen copy (`valid()`: no autodiff), cached on disk.
    let cache_path = std::env::temp_dir().join("temper-custom-trainer-ref.json");
    {
        let reference = policy.valid();
        let mut options = RefCacheOptions::new(pad_id, max_length);
        options.batch_pairs = batch_pairs;
        let cache = precompute_reference(&reference, &pairs, &options)?;
        cache.save(&cache_path)?;
        // Reloading checks that the cache belongs to this dataset and this reference model.
        let fingerprints = (
            dataset_fingerprint(&pairs, max_length),
            model_fingerprint(&reference)?,
        );
        RefCache::load(&cache_path, &fingerprints.0, &fingerprints.1)?;
    } // the reference model is dropped here
    let ref_cache = RefCache::load_unchecked(&cache_path)?;

    // 2. The loop.
    let dpo = DpoConfig {
        beta: 0.1,
        ..DpoConfig::default()
    };
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let lr = 5e-3;
    for step in 0..12 {
        let first = (step * batch_pairs) % pairs.len();
        let range = first..first + batch_pairs;
        let batch = collate_preference(&pairs[range.clone()], max_length, &pad)?;
        let tensors = batch.batch.to_tensors(&device);
        let forward = ForwardOptions {
            attention_mask: Some(batch.batch.attention_mask_u8()),
            position_ids: None,
        };
        let hidden = policy.forward_hidden(tensors.input_ids, &forward, None)?;
        // Log-probs (with gradient) and TRL's per-token statistics (detached) from the same
        // vocabulary tiles.
        let (token_logps, stats) = chunked_token_logps_with_stats(
            hidden,
            lm_head_weight(&policy),
            tensors.labels,
            tensors.attention_mask,
            &chunk,
        )?;
        let policy_logps = PairLogps::from_stacked(&token_logps)?;
        let reference = ref_cache.ref_logps(range, &device)?;
        let out = dpo_loss(&dpo, &policy_logps, &reference, Some(&stats))?;
        let loss = out.loss.clone().into_scalar::<f32>();

        let grads = out.loss.backward();
        let grads = GradientsParams::from_grads(grads, &policy);
        policy = optim.step(lr, policy, grads);

        let metric = |name: &str| out.metrics.get(name).unwrap_or(f64::NAN);
        println!(
            "step {step:2}  loss {loss:.4}  rewards/margins {:+.4}  rewards/accuracies {:.2}  \
             entropy {:.3}  mean_token_accuracy {:.2}",
            metric("rewards/margins"),
            metric("rewards/accuracies"),
            metric("entropy"),
            metric("mean_token_accuracy"),
        );
    }
    std::fs::remove_file(&cache_path).ok();
    Ok(())
}
