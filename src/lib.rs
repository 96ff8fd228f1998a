//! Temper: domain-adapt Llama-family language models from Rust.
//!
//! This crate re-exports the member crates so one dependency gives the whole toolkit:
//!
//! | module        | crate             | what                                                      |
//! |---------------|-------------------|-----------------------------------------------------------|
//! | [`formats`]   | `temper-formats`  | files several crates share: PEFT adapter config and matching, tokenizer config, atomic writes, memory maps |
//! | [`backend`]   | `temper-backend`  | burn backend features, `DeviceSpec`, dtype policy, fused kernels |
//! | [`llm_arch`]  | `temper-llm-arch` | Llama/Mistral/SmolLM2 decoders, HF + GGUF checkpoints, tokenizer, chat templates, generation |
//! | [`lora`]      | `temper-lora`     | PEFT-compatible LoRA: injection, frozen base, adapter files, merge |
//! | [`objectives`] | `temper-objectives` | CPT/SFT, DPO family, ORPO, CPO/SimPO, KTO losses, chunked log-probs, reference cache, data collation |
//! | [`train`]     | `temper-train`    | the resumable trainer (full or LoRA, any `TrainObjective`), fused AdamW, schedules, checkpoints, metrics |
//! | [`merge`]     | `temper-merge`    | mergekit's merge methods on safetensors, LoRA extraction |
//! | [`bench_eval`] | `temper-bench-eval` | benchmark scoring (log-likelihood and generative), statistics |
//! | [`pipeline`]  | `temper-pipeline` | the paper's study in one call |
//!
//! Only the `temper` binary (`temper-cli`) is not re-exported. It also owns the workspace's
//! `examples/` and `benches/`.

pub use temper_backend as backend;
pub use temper_backend::burn;
pub use temper_bench_eval as bench_eval;
pub use temper_formats as formats;
pub use temper_llm_arch as llm_arch;
pub use temper_lora as lora;
pub use temper_merge as merge;
pub use temper_objectives as objectives;
pub use temper_pipeline as pipeline;
pub use temper_train as train;
