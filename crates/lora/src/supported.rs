//! What `temper-lora` can do with a PEFT [`LoraConfig`] (the schema itself, its reading and
//! writing and PEFT's module matching live in `temper_formats::peft`).

use burn::tensor::Device;
use temper_formats::peft::{InitLoraWeights, LoraConfig, TargetModules, suffix_match};
use temper_llm_arch::LlamaForCausalLM;

use crate::{LoraError, Result, inject};

/// `temper-lora`'s operations on a [`LoraConfig`], a type of `temper-formats`.
pub trait LoraConfigExt {
    /// Reject what Temper cannot reproduce exactly, before any weight is touched.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] or [`LoraError::Unsupported`], naming the setting.
    fn validate(&self) -> Result<()>;

    /// Inject adapters into `model` (burn's `Config::init` style); see [`inject`].
    ///
    /// # Errors
    /// See [`inject`].
    fn init(&self, model: LlamaForCausalLM, device: &Device) -> Result<LlamaForCausalLM>;
}

impl LoraConfigExt for LoraConfig {
    fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(LoraError::Unsupported(format!(
                "peft_type {:?} (only LORA)",
                self.peft_type
            )));
        }
        // Ranks, alpha and patterns, as every reader of the file checks them.
        self.check()
            .map_err(|e| LoraError::InvalidConfig(e.to_string()))?;
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(LoraError::InvalidConfig(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            )));
        }
        if self.use_dora {
            return Err(LoraError::Unsupported("use_dora (DoRA)".into()));
        }
        if self.bias != "none" {
            return Err(LoraError::Unsupported(format!(
                "bias {:?} (only \"none\")",
                self.bias
            )));
        }
        if self.fan_in_fan_out {
            return Err(LoraError::Unsupported("fan_in_fan_out".into()));
        }
        match &self.init_lora_weights {
            InitLoraWeights::Bool(_) => {}
            InitLoraWeights::Method(m) if m == "gaussian" => {}
            InitLoraWeights::Method(m) => {
                return Err(LoraError::Unsupported(format!("init_lora_weights {m:?}")));
            }
        }
        for key in [
            "layers_to_transform",
            "layer_replication",
            "target_parameters",
        ] {
            if self.extra.get(key).is_some_and(|v| !v.is_null()) {
                return Err(LoraError::Unsupported(key.into()));
            }
        }
        if self
            .extra
            .get("lora_bias")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            return Err(LoraError::Unsupported("lora_bias".into()));
        }
        for m in self.modules_to_save.iter().flatten() {
            if !matches!(
                m.as_str(),
                "lm_head" | "embed_tokens" | "model.embed_tokens"
            ) {
                return Err(LoraError::Unsupported(format!(
                    "modules_to_save {m:?} (only lm_head and embed_tokens)"
                )));
            }
        }
        if let Some(TargetModules::Names(names)) = &self.target_modules
            && let Some(n) = names
                .iter()
                .find(|n| suffix_match("lm_head", n) || n.ends_with("embed_tokens"))
        {
            return Err(LoraError::Unsupported(format!(
                "an adapter on {n:?} (only the seven decoder projections)"
            )));
        }
        Ok(())
    }

    fn init(&self, model: LlamaForCausalLM, device: &Device) -> Result<LlamaForCausalLM> {
        inject(model, self, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peft_config_with_unknown_keys_is_supported() {
        let json = r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "use_rslora": false, "init_lora_weights": true, "modules_to_save": null,
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "eva_config": null, "lora_bias": false}"#;
        let c: LoraConfig = serde_json::from_str(json).expect("parse");
        c.validate().expect("valid");
    }

    #[test]
    fn unsupported_settings_are_rejected() {
        let mut c = LoraConfig::new(4, 8.0);
        c.use_dora = true;
        assert!(matches!(c.validate(), Err(LoraError::Unsupported(_))));
        let c =
            LoraConfig::new(4, 8.0).with_init_lora_weights(InitLoraWeights::Method("pissa".into()));
        assert!(matches!(c.validate(), Err(LoraError::Unsupported(_))));
        let c = LoraConfig::new(0, 8.0);
        assert!(matches!(c.validate(), Err(LoraError::InvalidConfig(_))));
    }
}
