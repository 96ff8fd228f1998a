//! Llama-family decoders (Llama 3.x, Mistral, SmolLM2) on burn 0.22.
//!
//! * [`ModelConfig`] reads an HF `config.json`.
//! * [`LlamaForCausalLM`] is the decoder; [`checkpoint`] loads and saves HF directories,
//!   [`gguf`] reads llama.cpp GGUF files.
//! * [`Tokenizer`], [`ChatTemplate`] and [`generation`] turn text into ids and back.

pub mod gguf;
