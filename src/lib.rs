//! Temper: domain-adapt Llama-family language models from Rust.
//!
//! This crate re-exports the member crates so one dependency gives the whole toolkit:
//!
//! | module        | crate             | what                                                      |
//! |---------------|-------------------|-----------------------------------------------------------|
//! | [`backend`]   | `temper-backend`  | burn backend features, `DeviceSpec`, dtype policy, fused kernels |
//! | [`llm_arch`]  | `temper-llm-arch` | Llama/Mistral/SmolLM2 decoders, HF + GGUF checkpoints, tokenizer, chat templates, generation |
//! | [`lora`]      | `temper-lora`     | PEFT-compatible LoRA: injection, frozen base, adapter files, merge |
//! | [`objectives`] | `temper-objectives` | CPT/SFT, DPO family, ORPO, CPO/SimPO, KTO losses, chunked log-probs, reference cache, data collation |
//! | [`train`]     | `temper-train`    | the resumable trainer (full or LoRA), fused AdamW, schedules, checkpoints, metrics |
//!
//! It also owns the workspace's `examples/` and `benches/`.

pub use temper_backend as backend;
pub use temper_backend::burn;
pub use temper_llm_arch as llm_arch;
pub use temper_lora as lora;
pub use temper_objectives as objectives;
pub use temper_train as train;
