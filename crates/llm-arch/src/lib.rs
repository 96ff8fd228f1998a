//! Llama-family decoders (Llama 3.x, Mistral, SmolLM2) on burn 0.22.
//!
//! * [`ModelConfig`] reads an HF `config.json`.
//! * [`LlamaForCausalLM`] is the decoder; [`checkpoint`] loads and saves HF directories,
//!   [`gguf`] reads llama.cpp GGUF files.
//! * [`Tokenizer`], [`ChatTemplate`] and [`generation`] turn text into ids and back;
//!   [`TokenizerBundle`] loads a tokenizer with its special tokens and chat template, without
//!   the weights.

pub mod cache;
pub mod config;
mod error;
mod finite;
pub mod gguf;
pub mod llama;
pub mod projection;
pub mod rope;

pub use cache::KvCache;
pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use llama::{ForwardOptions, LlamaForCausalLM};
pub use projection::{LoraAdapter, Projection};
pub mod chat_template;
mod chat_template_limits;
pub mod checkpoint;
mod save;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
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
