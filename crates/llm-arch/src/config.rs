//! `ModelConfig`: the HF `config.json` of a Llama-family model (`llama`, `mistral`, `qwen2`,
//! `qwen3`; what each family reads differently is in [`crate::family`]).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::family::{Biases, Family, SlidingLayers, supported_model_types};
use crate::{Error, Result};

mod bounds;

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters` in HF configs).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling of low and medium frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Architecture hyper-parameters of a Llama-family decoder, as in HF `config.json`
/// (`model_type` `llama` — which includes SmolLM/SmolLM2 —, `mistral`, `qwen2` or `qwen3`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// The sliding attention window of the layers [`ModelConfig::sliding_layers`] names;
    /// `None` is full attention everywhere.
    pub sliding_window: Option<usize>,
    /// Which layers use `sliding_window`: every one (Mistral), or Qwen2/Qwen3's
    /// `max_window_layers` / `layer_types`.
    pub sliding_layers: SlidingLayers,
    /// `attention_bias` as the family reads it: biases on q, k, v and o for `llama` and
    /// `qwen3`; ignored by `mistral` (HF's `MistralAttention` ignores the key) and `qwen2`
    /// (whose q, k, v always have biases). [`ModelConfig::biases`] says which exist.
    pub attention_bias: bool,
    /// Llama's `mlp_bias`: biases on gate, up and down.
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The whole JSON object it was read from, so saving keeps keys Temper does not use.
    pub raw: Map<String, Value>,
}

/// The keys of a `config.json` object, read with errors that name them.
pub(crate) struct Keys<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    pub(crate) fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    /// The key is in the object, `null` included.
    pub(crate) fn present(&self, key: &str) -> bool {
        self.obj.contains_key(key)
    }
    /// An attention window: a positive integer, or `null` / absent for none.
    pub(crate) fn window(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.invalid(key, format!("expected an integer or null, got {v}"))),
        }
    }
    /// `layer_types` as transformers 5 writes it, one entry per layer: `true` for
    /// `sliding_attention`, `false` for `full_attention` (or its legacy name `attention`).
    /// Any other type changes the computation in a way Temper does not implement.
    pub(crate) fn layer_types(&self, layers: usize) -> Result<Option<Vec<bool>>> {
        let key = "layer_types";
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.invalid(key, format!("expected a list of strings, got {v}")))?;
        if items.len() != layers {
            return Err(self.invalid(
                key,
                format!(
                    "lists {} layers, num_hidden_layers is {layers}",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention" | "attention") => Ok(false),
                _ => Err(self.invalid(
                    key,
                    format!("layer type {t} is not supported (full_attention, sliding_attention)"),
                )),
            })
            .collect::<Result<Vec<bool>>>()
            .map(Some)
    }
    pub(crate) fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.invalid(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| Error::MissingConfigKey {
            path: self.path.to_path_buf(),
            key: key.to_string(),
        })
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a number, got {v}"))),
        }
    }
    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a boolean, got {v}"))),
        }
    }
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| self.invalid(key, "expected token ids (0 ≤ id < 2^32)"))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| vec![n])
                .ok_or_else(|| self.invalid(key, "expected a token id (0 ≤ id < 2^32)")),
        }
    }
}

impl ModelConfig {
    /// Read `config.json` from a file.
    ///
    /// # Errors
    /// I/O and JSON errors, a missing required key or a value of the wrong type (naming the
    /// key), an unknown `model_type` or `rope_scaling` type.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = temper_formats::read_regular_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value, path)
    }

    /// Parse a `config.json` value; `origin` names it in errors.
    ///
    /// # Errors
    /// See [`ModelConfig::from_file`].
    pub fn from_json(value: &Value, origin: &Path) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::InvalidConfig {
            path: origin.to_path_buf(),
            key: "<root>".into(),
            reason: "expected a JSON object".into(),
        })?;
        let k = Keys { obj, path: origin };
        let model_type = match k.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(k.invalid("model_type", format!("expected a string, got {v}"))),
            None => {
                return Err(Error::MissingConfigKey {
                    path: origin.into(),
                    key: "model_type".into(),
                });
            }
        };
        let Some(family) = Family::from_model_type(&model_type) else {
            return Err(Error::UnsupportedModelType {
                path: origin.into(),
                model_type,
                supported: supported_model_types(),
            });
        };
        let spec = family.spec();
        if let Some(act) = k.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(k.invalid(
                "hidden_act",
                format!("`{act}` is not supported (only silu)"),
            ));
        }
        let hidden_size = k.usize("hidden_size")?;
        let num_attention_heads = k.usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(k.invalid("num_attention_heads", "must be positive"));
        }
        let num_key_value_heads = k
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(k.invalid(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match (k.usize_opt("head_dim")?, spec.default_head_dim) {
            (Some(d), _) | (None, Some(d)) => d,
            // HF derives it by floor division; a remainder means the config is not one model.
            (None, None) if !hidden_size.is_multiple_of(num_attention_heads) => {
                return Err(k.invalid(
                    "num_attention_heads",
                    format!(
                        "{num_attention_heads} does not divide hidden_size {hidden_size} \
                         (and no head_dim is given)"
                    ),
                ));
            }
            (None, None) => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(k.invalid("head_dim", format!("{head_dim} must be even and positive")));
        }
        // transformers 5 nests RoPE settings in `rope_parameters`; 4.x uses top-level keys.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match k.f64_opt("rope_theta")? {
            Some(t) => t,
            None => rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
        };
        let scaling_obj = obj
            .get("rope_scaling")
            .and_then(Value::as_object)
            .or(rope_params
                .filter(|p| p.get("rope_type").and_then(Value::as_str) != Some("default")));
        let rope_scaling = match scaling_obj {
            None => None,
            Some(s) => Self::parse_rope_scaling(s, &k)?,
        };
        let num_hidden_layers = k.usize("num_hidden_layers")?;
        let own = (spec.read)(&k, num_hidden_layers)?;
        let vocab_size = k.usize("vocab_size")?;
        let config = Self {
            vocab_size,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: k.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: k.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: k.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            sliding_window: own.sliding_window,
            sliding_layers: own.sliding_layers,
            attention_bias: own.attention_bias,
            mlp_bias: own.mlp_bias,
            bos_token_id: k.ids("bos_token_id")?.first().copied(),
            eos_token_ids: k.ids("eos_token_id")?,
            pad_token_id: k.ids("pad_token_id")?.first().copied(),
            model_type,
            raw: obj.clone(),
        };
        config.validate(origin)?;
        Ok(config)
    }

    fn parse_rope_scaling(s: &Map<String, Value>, k: &Keys<'_>) -> Result<Option<RopeScaling>> {
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> Result<f64> {
            s.get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| k.invalid(&format!("rope_scaling.{key}"), "missing or not a number"))
        };
        Ok(match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                // A negative or fractional value saturates to 0 here, which `validate` refuses.
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }),
            other => {
                return Err(k.invalid(
                    "rope_scaling.rope_type",
                    format!("`{other}` is not supported (default, linear, llama3)"),
                ));
            }
        })
    }

    /// The family `model_type` names. A config read from a file has a supported one; one
    /// edited by hand to an unknown name reads as `llama` (and [`ModelConfig::validate`]
    /// refuses it).
    pub fn family(&self) -> Family {
        Family::from_model_type(&self.model_type).unwrap_or(Family::Llama)
    }

    /// The HF architecture name (`LlamaForCausalLM`, `Qwen2ForCausalLM`, ...).
    pub fn architecture(&self) -> &'static str {
        self.family().architecture()
    }

    /// Which projections carry biases in this family with these flags.
    pub fn biases(&self) -> Biases {
        (self.family().spec().biases)(self)
    }

    /// Whether attention has per-head `q_norm` / `k_norm` (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family().qk_norm()
    }

    /// The sliding window of decoder layer `layer`, or `None` for full attention there.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let w = self.sliding_window?;
        let slides = match &self.sliding_layers {
            SlidingLayers::All => true,
            SlidingLayers::From(n) => layer >= *n,
            SlidingLayers::Listed(l) => l.get(layer).copied().unwrap_or(false),
        };
        slides.then_some(w)
    }

    /// The `config.json` to save: the keys read, updated with the current values.
    pub fn to_json(&self, torch_dtype: &str) -> Value {
        let mut obj = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            obj.insert(k.to_string(), v);
        };
        set("architectures", json!([self.architecture()]));
        set("model_type", json!(self.model_type));
        set("vocab_size", json!(self.vocab_size));
        set("hidden_size", json!(self.hidden_size));
        set("intermediate_size", json!(self.intermediate_size));
        set("num_hidden_layers", json!(self.num_hidden_layers));
        set("num_attention_heads", json!(self.num_attention_heads));
        set("num_key_value_heads", json!(self.num_key_value_heads));
        set("head_dim", json!(self.head_dim));
        set(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        set("rms_norm_eps", json!(self.rms_norm_eps));
        set("rope_theta", json!(self.rope_theta));
        set("tie_word_embeddings", json!(self.tie_word_embeddings));
        set("hidden_act", json!("silu"));
        set("torch_dtype", json!(torch_dtype));
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => set(
                "rope_scaling",
                json!({"rope_type": "linear", "factor": factor}),
            ),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => set(
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                       "high_freq_factor": high_freq_factor,
                       "original_max_position_embeddings": original_max_position_embeddings}),
            ),
        }
        if let Some(b) = self.bos_token_id {
            set("bos_token_id", json!(b));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => set("eos_token_id", json!(one)),
            many => set("eos_token_id", json!(many)),
        }
        if let Some(p) = self.pad_token_id {
            set("pad_token_id", json!(p));
        }
        (self.family().spec().write)(self, &mut obj);
        Value::Object(obj)
    }

    /// A small config for tests and examples (`llama`, no scaling).
    pub fn tiny(
        vocab_size: usize,
        hidden_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        let value = json!({
            "model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        });
        // The literal above has every required key.
        Self::from_json(&value, &PathBuf::from("<tiny>")).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Parameter count of a model with this config. A config read from a file has passed
    /// [`ModelConfig::validate`], so the count fits; one built by hand with absurd sizes
    /// saturates at `usize::MAX` (see [`ModelConfig::checked_num_parameters`]).
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn smollm2() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
               "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
               "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
               "rope_theta": 100000.0, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2})
    }

    #[test]
    fn reads_smollm2_and_counts_its_parameters() {
        let c = parse(smollm2()).unwrap();
        assert_eq!(c.head_dim, 64);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn reads_llama31_rope_scaling_and_mistral_window() {
        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        v["eos_token_id"] = json!([128001, 128008, 128009]);
        let c = parse(v).unwrap();
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert_eq!(c.eos_token_ids.len(), 3);

        let mut m = smollm2();
        m["model_type"] = json!("mistral");
        m["sliding_window"] = json!(4096);
        assert_eq!(parse(m.clone()).unwrap().sliding_window, Some(4096));
        m["sliding_window"] = Value::Null;
        assert_eq!(parse(m).unwrap().sliding_window, None);
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let mut v = smollm2();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0});
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rope_scaling, None);
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let mut v = smollm2();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("required config key `hidden_size` is missing"),
            "{err}"
        );

        let mut v = smollm2();
        v["model_type"] = json!("gpt2");
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("unsupported model_type `gpt2`")
        );

        let mut v = smollm2();
        v["num_key_value_heads"] = json!(4);
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("`num_key_value_heads`")
        );

        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("`yarn` is not supported")
        );
    }

    #[test]
    fn to_json_round_trips() {
        let c = parse(smollm2()).unwrap();
        let back = parse(c.to_json("float32")).unwrap();
        assert_eq!(back.num_parameters(), c.num_parameters());
        assert_eq!(back.rope_theta, c.rope_theta);
        assert_eq!(back.eos_token_ids, c.eos_token_ids);
    }
}
