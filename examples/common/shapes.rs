//! The model shapes the examples build with random weights (the torch anchor's `--shape`).

use temper_llm::llm_arch::ModelConfig;

/// The anchor's model shapes (`--shape`, random weights), `layers` overriding the depth.
pub fn shape_config(shape: &str, layers: Option<usize>) -> anyhow::Result<ModelConfig> {
    let mut value = match shape {
        "smollm2-135m" => serde_json::json!({
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "rope_theta": 100000.0, "tie_word_embeddings": true,
        }),
        "smollm-1.7b" => serde_json::json!({
            "vocab_size": 49152, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
            "head_dim": 64, "rope_theta": 10000.0, "tie_word_embeddings": true,
        }),
        "llama-3.1-8b" => serde_json::json!({
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "rope_theta": 500000.0, "tie_word_embeddings": false,
        }),
        other => {
            anyhow::bail!("--shape {other:?}: expected smollm2-135m, smollm-1.7b or llama-3.1-8b")
        }
    };
    let common = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "attention_bias": false, "bos_token_id": 0, "eos_token_id": 0,
    });
    if let (Some(v), Some(c)) = (value.as_object_mut(), common.as_object()) {
        v.extend(c.clone());
        if let Some(n) = layers {
            v.insert("num_hidden_layers".into(), n.into());
        }
    }
    Ok(ModelConfig::from_json(&value, std::path::Path::new(shape))?)
}
