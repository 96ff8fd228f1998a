//! What a training run will hold in memory, estimated from the model's config before a weight
//! is loaded, and the memory the machine has for it.
//!
//! The estimate counts what Temper keeps, by the same rules as the code that keeps it: base
//! weights in their storage dtype (or their blocks), LoRA adapters, gradients and AdamW's two
//! moments for what trains, and the activations the backward pass needs. Activations are f32
//! on the CPU whatever the precision (the products round their operands, not what they
//! store), per token and decoder layer: the residual stream, the two normalised inputs, q, k,
//! v and the attention output, the MLP's gate, up and their product, and the attention's row
//! statistics — `6·hidden + 2·q + 2·kv + 3·intermediate + heads` floats. With gradient
//! checkpointing only each layer's input is kept, plus one layer's activations while it is
//! recomputed. Measured against the peak RSS of `examples/train_step_speed.rs` (SmolLM2
//! shapes, docs/benchmarks.md) the estimate is within 15 %, above it.

use std::fmt;

use temper_backend::{QuantType, TrainPrecision};
use temper_llm_arch::ModelConfig;

/// Allocator slack, code, tokenizer and the LM head's vocabulary tiles: a floor every run has.
const RUNTIME_BYTES: u64 = 256 << 20;

/// How the base projections (the seven linear layers of each decoder layer) are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProjectionBytes {
    /// Dense, in the run's storage dtype.
    Dense,
    /// Encoded to this type while loading.
    Quantized(QuantType),
    /// A GGUF file's own blocks: their size as stored.
    Exact(u64),
}

/// The LoRA rank of a module path, `None` where the module gets no adapter.
pub type RankOf<'a> = dyn Fn(&str) -> Option<usize> + 'a;

/// The run's shape, as far as memory is concerned.
#[derive(Clone)]
pub struct MemoryPlan<'a> {
    pub config: &'a ModelConfig,
    pub precision: TrainPrecision,
    pub projections: ProjectionBytes,
    /// LoRA: the rank of the adapter on each projection that gets one, by module path
    /// (`model.layers.0.self_attn.q_proj`); `None` trains every weight.
    pub lora_rank: Option<&'a RankOf<'a>>,
    /// Sequences in one forward pass (batch × sequences per row: 2 for preference pairs).
    pub sequences: usize,
    /// The longest row, in tokens.
    pub seq_len: usize,
    pub gradient_checkpointing: bool,
    /// A second, frozen model (DPO's reference loaded from a path).
    pub reference_model: bool,
    /// The run ends by writing a full model (full fine-tuning, or LoRA merged into its base):
    /// the merged weights and their encoded bytes exist together while `model.safetensors` is
    /// written.
    pub save_merged: bool,
    /// The loader decodes the whole file to f32 before building the model (a GGUF not kept in
    /// its own blocks); an HF checkpoint is read one tensor at a time.
    pub load_decodes_whole_file: bool,
}

impl fmt::Debug for MemoryPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPlan")
            .field("config", &self.config.model_type)
            .field("precision", &self.precision)
            .field("projections", &self.projections)
            .field("lora", &self.lora_rank.is_some())
            .field("sequences", &self.sequences)
            .field("seq_len", &self.seq_len)
            .field("gradient_checkpointing", &self.gradient_checkpointing)
            .field("reference_model", &self.reference_model)
            .field("save_merged", &self.save_merged)
            .field("load_decodes_whole_file", &self.load_decodes_whole_file)
            .finish()
    }
}

/// Bytes by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Base weights as stored (a frozen reference model included).
    pub weights: u64,
    /// LoRA adapters (0 for full fine-tuning: the weights are the trained parameters).
    pub adapters: u64,
    /// Gradients of what trains, in the master dtype.
    pub gradients: u64,
    /// AdamW's first and second moments.
    pub optimizer: u64,
    /// Activations kept for the backward pass at this run's tokens per step.
    pub activations: u64,
    /// Tokens in one forward pass.
    pub tokens: u64,
    /// Activation bytes per token without and with gradient checkpointing.
    pub per_token: [u64; 2],
    pub checkpointing: bool,
    /// The fixed floor ([`RUNTIME_BYTES`]).
    pub runtime: u64,
    /// Writing the merged model at the end (0 when only an adapter is written): a later phase
    /// than training, so the peak is the larger of the phases.
    pub saving: u64,
    /// Loading, when the whole file is decoded to f32 first (0 otherwise): the model being
    /// built beside every tensor in f32.
    pub loading: u64,
}

fn dtype_bytes(p: temper_backend::FloatPrecision) -> u64 {
    match p {
        temper_backend::FloatPrecision::F32 => 4,
        _ => 2,
    }
}

/// `n` parameters encoded as `ty`: NF4 packs two codes a byte plus an 8-bit scale a
/// 64-block and an f32 per 256 scales (bitsandbytes' double quantization); ggml types their
/// block bytes.
fn quantized_bytes(n: u64, ty: QuantType) -> u64 {
    match ty {
        QuantType::Nf4 => n / 2 + n / 64 + n / (64 * 256) * 4,
        QuantType::Q8_0 => n / 32 * 34,
        QuantType::Q4_0 => n / 32 * 18,
        QuantType::Q4_1 => n / 32 * 20,
        QuantType::Q4_K => n / 256 * 144,
        QuantType::Q6_K => n / 256 * 210,
    }
}

impl MemoryEstimate {
    /// The estimate for `plan`. Saturating arithmetic: a config claiming absurd sizes gives
    /// an absurd estimate (which the check then refuses), never an overflow.
    pub fn new(plan: &MemoryPlan<'_>) -> Self {
        let c = plan.config;
        let u = |x: usize| x as u64;
        let (h, i, v, layers) = (
            u(c.hidden_size),
            u(c.intermediate_size),
            u(c.vocab_size),
            u(c.num_hidden_layers),
        );
        let hd = u(c.head_dim);
        let q = u(c.num_attention_heads).saturating_mul(hd);
        let kv = u(c.num_key_value_heads).saturating_mul(hd);
        // (module, in, out) of one layer's projections.
        let shapes: [(&str, u64, u64); 7] = [
            ("self_attn.q_proj", h, q),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", q, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ];
        let per_layer: u64 = shapes.iter().fold(0u64, |acc, &(_, a, b)| {
            acc.saturating_add(a.saturating_mul(b))
        });
        let projections = per_layer.saturating_mul(layers);
        let heads = if c.tie_word_embeddings { 1 } else { 2 };
        let vectors = c.checked_vectors_per_layer().map_or(u64::MAX, |b| b as u64);
        let dense = v
            .saturating_mul(h)
            .saturating_mul(heads)
            .saturating_add(layers.saturating_mul(vectors))
            .saturating_add(h);

        let lora = plan.lora_rank.is_some();
        let storage = dtype_bytes(if lora {
            plan.precision.frozen()
        } else {
            plan.precision.master()
        });
        let projection_bytes = match plan.projections {
            ProjectionBytes::Dense => projections.saturating_mul(storage),
            ProjectionBytes::Quantized(ty) => quantized_bytes(projections, ty),
            ProjectionBytes::Exact(b) => b,
        };
        let mut weights = projection_bytes.saturating_add(dense.saturating_mul(storage));
        if plan.reference_model {
            let frozen = dtype_bytes(plan.precision.frozen());
            weights =
                weights.saturating_add(projections.saturating_add(dense).saturating_mul(frozen));
        }

        // Trainable parameters and the bytes each costs: master copy (adapters only; full
        // fine-tuning's master copy is the weights), gradient, two AdamW moments.
        let master = dtype_bytes(plan.precision.master());
        let (trainable, adapters) = match plan.lora_rank {
            Some(rank) => {
                // Adapters differ by layer only through `rank_pattern`; a config claiming
                // millions of layers is priced from its first layers, never looped over.
                let counted = layers.min(4096);
                let mut n = 0u64;
                for layer in 0..counted {
                    for &(module, a, b) in &shapes {
                        if let Some(r) = rank(&format!("model.layers.{layer}.{module}")) {
                            n = n.saturating_add(u(r).saturating_mul(a.saturating_add(b)));
                        }
                    }
                }
                if counted < layers {
                    n = n.saturating_mul(layers / counted.max(1));
                }
                (n, n.saturating_mul(master))
            }
            None => (projections.saturating_add(dense), 0),
        };
        let gradients = trainable.saturating_mul(master);
        let optimizer = trainable.saturating_mul(8);

        let layer_floats = h
            .saturating_mul(6)
            .saturating_add(q.saturating_mul(2))
            .saturating_add(kv.saturating_mul(2))
            .saturating_add(i.saturating_mul(3))
            .saturating_add(u(c.num_attention_heads));
        let without = layer_floats.saturating_mul(layers).saturating_mul(4);
        let with = h
            .saturating_mul(layers)
            .saturating_add(layer_floats)
            .saturating_mul(4);
        let tokens = u(plan.sequences).saturating_mul(u(plan.seq_len));
        let per_token = [without, with];
        let activations =
            tokens.saturating_mul(per_token[usize::from(plan.gradient_checkpointing)]);
        let loading = if plan.load_decodes_whole_file {
            projections
                .saturating_add(dense)
                .saturating_mul(4)
                .saturating_add(weights)
        } else {
            0
        };
        // The merged model in its storage dtype (a quantized base is decoded into it when
        // merged), and the one tensor `save_safetensors` holds at a time while it streams the
        // file: its f32 copy, the transposed copy and the encoded bytes.
        let largest = v
            .saturating_mul(h)
            .max(i.saturating_mul(h))
            .max(q.saturating_mul(h));
        let saving = if plan.save_merged {
            projections
                .saturating_add(dense)
                .saturating_mul(storage)
                .saturating_add(largest.saturating_mul(storage.saturating_add(8)))
        } else {
            0
        };
        Self {
            weights,
            adapters,
            gradients,
            optimizer,
            activations,
            tokens,
            per_token,
            checkpointing: plan.gradient_checkpointing,
            runtime: RUNTIME_BYTES,
            saving,
            loading,
        }
    }

    /// Training's bytes (everything but [`saving`](Self::saving)).
    pub fn training(&self) -> u64 {
        [
            self.weights,
            self.adapters,
            self.gradients,
            self.optimizer,
            self.activations,
            self.runtime,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// The peak: training, or loading or writing the merged model if that needs more.
    pub fn total(&self) -> u64 {
        self.training()
            .max(self.saving.saturating_add(self.runtime))
            .max(self.loading.saturating_add(self.runtime))
    }

    /// The activations at this run's tokens with the other checkpointing choice.
    pub fn activations_if_checkpointing(&self, on: bool) -> u64 {
        self.tokens.saturating_mul(self.per_token[usize::from(on)])
    }

    /// `Err` with the breakdown and what would help when the run needs more than `available`
    /// bytes.
    ///
    /// # Errors
    /// [`crate::TrainError::WontFit`].
    pub fn check_fits(&self, available: u64) -> crate::Result<()> {
        if self.total() <= available {
            return Ok(());
        }
        let mut advice = vec!["lower batch_size or max_length".to_string()];
        if !self.checkpointing {
            advice.push(format!(
                "set gradient_checkpointing = true (activations {})",
                gib(self.activations_if_checkpointing(true))
            ));
        }
        if self.adapters == 0 {
            advice.push("train a LoRA adapter ([lora])".into());
        } else {
            advice.push("quantize the base ([lora] quantize_base = \"nf4\")".into());
        }
        if self.saving.saturating_add(self.runtime) > available {
            advice.push(format!(
                "write only the adapter (save_adapter_only = true, --adapter-only): merging and \
                 writing the full model at the end needs {}",
                gib(self.saving.saturating_add(self.runtime))
            ));
        }
        Err(crate::TrainError::WontFit {
            needed: self.to_string(),
            available: gib(available),
            advice: advice.join(", "),
        })
    }
}

/// Bytes as GiB with two decimals (MiB below one GiB).
pub fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weights {}, adapters {}, gradients {}, optimizer {}, activations {} for {} \
             tokens a step {} checkpointing [{} without, {} with], runtime {}{})",
            gib(self.total()),
            gib(self.weights),
            gib(self.adapters),
            gib(self.gradients),
            gib(self.optimizer),
            gib(self.activations),
            self.tokens,
            if self.checkpointing {
                "with"
            } else {
                "without"
            },
            gib(self.activations_if_checkpointing(false)),
            gib(self.activations_if_checkpointing(true)),
            gib(self.runtime),
            [
                (self.loading, "loading (the file decoded whole)"),
                (self.saving, "writing the merged model at the end"),
            ]
            .iter()
            .filter(|(b, _)| *b > 0)
            .map(|(b, what)| format!("; {what} {}", gib(*b)))
            .collect::<String>(),
        )
    }
}

/// Memory this process may still use: the kernel's `MemAvailable`, lowered to the cgroup's
/// limit minus its usage when one is set (a container). `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .map(|max| max.saturating_sub(read("/sys/fs/cgroup/memory.current").unwrap_or(0)));
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// This process's peak resident memory so far (`VmHWM` of `/proc/self/status`); `None` off
/// Linux.
pub fn peak_rss() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn smollm2() -> ModelConfig {
        let v = serde_json::json!({"model_type": "llama", "vocab_size": 49152,
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true});
        ModelConfig::from_json(&v, std::path::Path::new("config.json")).unwrap()
    }

    fn plan(config: &ModelConfig) -> MemoryPlan<'_> {
        MemoryPlan {
            config,
            precision: TrainPrecision::F32,
            projections: ProjectionBytes::Dense,
            lora_rank: None,
            sequences: 4,
            seq_len: 256,
            gradient_checkpointing: false,
            reference_model: false,
            save_merged: false,
            load_decodes_whole_file: false,
        }
    }

    #[test]
    fn full_fine_tuning_counts_every_parameter_four_times_over() {
        let c = smollm2();
        let e = MemoryEstimate::new(&plan(&c));
        let n = c.num_parameters() as u64;
        assert_eq!(e.weights, 4 * n);
        assert_eq!(e.gradients, 4 * n);
        assert_eq!(e.optimizer, 8 * n);
        assert_eq!(e.adapters, 0);
        // 6·576 + 2·576 + 2·192 + 3·1536 + 9 floats, 30 layers, 1024 tokens.
        assert_eq!(e.per_token[0], 9609 * 30 * 4);
        assert_eq!(e.activations, 1024 * 9609 * 30 * 4);
        assert_eq!(e.per_token[1], (576 * 30 + 9609) * 4);
    }

    #[test]
    fn qlora_prices_the_blocks_and_the_adapters() {
        let c = smollm2();
        let rank = |path: &str| (!path.contains("o_proj")).then_some(8);
        let mut p = plan(&c);
        p.precision = TrainPrecision::Bf16Mixed;
        p.projections = ProjectionBytes::Quantized(QuantType::Nf4);
        p.lora_rank = Some(&rank);
        let e = MemoryEstimate::new(&p);
        let projections = 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536) as u64;
        let dense = (49152 * 576 + 61 * 576) as u64;
        assert_eq!(
            e.weights,
            projections / 2 + projections / 64 + projections / 16384 * 4 + 2 * dense
        );
        // Six of the seven projections, rank 8, f32 master copies under mixed precision.
        let adapter =
            30 * 8 * (2 * (576 + 576) - (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)) as u64;
        assert_eq!(e.adapters, 4 * adapter);
        assert_eq!(e.gradients, 4 * adapter);
        assert_eq!(e.optimizer, 8 * adapter);
    }

    #[test]
    fn a_run_that_does_not_fit_names_its_numbers_and_what_would_help() {
        let c = smollm2();
        let e = MemoryEstimate::new(&plan(&c));
        assert!(e.check_fits(e.total()).is_ok());
        let msg = e.check_fits(e.total() - 1).unwrap_err().to_string();
        for needle in [
            "weights 513 MiB",
            "optimizer 1.00 GiB",
            "activations 1.10 GiB for 1024 tokens",
            "gradient_checkpointing = true (activations",
            "[lora]",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        // A hostile config saturates instead of overflowing.
        let mut huge = c.clone();
        huge.num_hidden_layers = usize::MAX;
        huge.hidden_size = usize::MAX / 2;
        let e = MemoryEstimate::new(&plan(&huge));
        assert_eq!(e.total(), u64::MAX);
        assert!(e.check_fits(u64::MAX - 1).is_err());
    }

    #[test]
    fn writing_a_merged_model_can_be_the_peak_and_says_so() {
        let c = smollm2();
        let rank = |_: &str| Some(8);
        let mut p = plan(&c);
        p.precision = TrainPrecision::Bf16Mixed;
        p.projections = ProjectionBytes::Quantized(QuantType::Nf4);
        p.lora_rank = Some(&rank);
        p.gradient_checkpointing = true;
        let adapter_only = MemoryEstimate::new(&p);
        p.save_merged = true;
        let merged = MemoryEstimate::new(&p);
        let n = c.num_parameters() as u64;
        // bf16 merged weights, 2 bytes a parameter, and the largest tensor (the embedding)
        // streamed out: f32 copy, transposed copy, bf16 bytes.
        let embedding = (c.vocab_size * c.hidden_size) as u64;
        assert_eq!(merged.saving, 2 * n + 10 * embedding);
        assert_eq!(merged.training(), adapter_only.training());
        assert_eq!(merged.total(), merged.saving + merged.runtime);
        assert!(merged.total() > merged.training());
        let msg = merged
            .check_fits(merged.training())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("write only the adapter"), "{msg}");
        assert!(adapter_only.check_fits(adapter_only.training()).is_ok());

        // A GGUF decoded whole before quantizing: every tensor in f32 beside the model.
        p.load_decodes_whole_file = true;
        let gguf = MemoryEstimate::new(&p);
        assert_eq!(gguf.loading, 4 * n + gguf.weights);
        assert!(
            gguf.to_string()
                .contains("loading (the file decoded whole)")
        );
    }
}
