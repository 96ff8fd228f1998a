//! Llama-family decoders (Llama 3.x, Mistral, SmolLM2, Qwen2/Qwen2.5, Qwen3) on burn 0.22.
//!
//! * [`ModelConfig`] reads an HF `config.json`.
//! * [`LlamaForCausalLM`] is the decoder; [`checkpoint`] loads and saves HF directories,
//!   [`gguf`] reads llama.cpp GGUF files.
//! * [`Tokenizer`], [`ChatTemplate`] and [`generation`] turn text into ids and back;
//!   [`TokenizerBundle`] loads a tokenizer with its special tokens and chat template, without
//!   the weights.
//!
//! # Quick start
//!
//! Load an HF model directory (or a `.gguf` file; `scripts/fetch-smollm2.sh` fetches
//! SmolLM2-135M-Instruct into `.cache/smollm2/`) and greedy-decode a continuation:
//!
//! ```no_run
//! use temper_backend::{DeviceSpec, FloatPrecision};
//! use temper_llm_arch::{GenerationConfig, Pretrained, generate};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = DeviceSpec::CPU.device()?;
//! let p = Pretrained::load(".cache/smollm2/SmolLM2-135M-Instruct", &device, FloatPrecision::F32)?;
//! let prompt = p.tokenizer.encode("The capital of France is", true)?;
//! let config = GenerationConfig {
//!     max_new_tokens: 16,
//!     eos_token_ids: p.special.eos.clone(),
//!     ..GenerationConfig::default()
//! };
//! let out = generate(&p.model, Some(&p.tokenizer), &[prompt], &config, |_, _| {})?;
//! println!("{}", out[0].text.as_deref().unwrap_or_default());
//! # Ok(()) }
//! ```
//!
//! The same calls on a tiny randomly initialised decoder, without files (token ids only):
//!
//! ```
//! use temper_backend::DeviceSpec;
//! use temper_llm_arch::{
//!     FinishReason, GenerationConfig, LlamaForCausalLM, ModelConfig, generate,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = DeviceSpec::CPU.device()?;
//! // vocabulary 16, hidden size 16, 2 layers, 4 attention heads sharing 2 key/value heads
//! let model = LlamaForCausalLM::init(&ModelConfig::tiny(16, 16, 2, 4, 2), &device);
//! let config = GenerationConfig { max_new_tokens: 3, ..GenerationConfig::default() };
//! let out = generate(&model, None, &[vec![1, 5, 7]], &config, |_, _| {})?;
//! assert_eq!(out[0].tokens.len(), 3);
//! assert!(out[0].tokens.iter().all(|&id| id < 16));
//! assert_eq!(out[0].finish_reason, FinishReason::Length);
//! # Ok(()) }
//! ```

pub mod cache;
pub mod config;
mod error;
pub mod family;
mod finite;
pub mod gguf;
pub mod llama;
pub mod projection;
pub mod rope;

pub use cache::KvCache;
pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use family::{Biases, Family, SlidingLayers};
pub use llama::{ForwardOptions, LlamaForCausalLM};
pub use projection::{LoraAdapter, Projection};
pub mod chat_template;
mod chat_template_limits;
pub mod checkpoint;
mod save;
pub mod tokenizer;

pub use chat_template::{BoundedTemplate, ChatMessage, ChatTemplate};
pub use tokenizer::Tokenizer;
pub mod pretrained;
pub mod tokenizer_bundle;

pub use pretrained::{Pretrained, ProjectionStorage, gguf_projection_bytes, read_config};
pub mod layer_checkpointing;
pub use layer_checkpointing::CheckpointTape;
pub mod quantizing_source;
pub mod random_source;
pub use quantizing_source::QuantizingSource;
pub use random_source::RandomSource;
pub use tokenizer_bundle::{SpecialTokens, TokenizerBundle, is_gguf_path, save_tokenizer_files};
pub mod generation;

pub use generation::{FinishReason, GenerationConfig, GenerationOutput, generate};
