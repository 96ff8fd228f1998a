//! A model with everything needed to use it: weights, tokenizer, chat template and special ids,
//! loaded from an HF directory or a GGUF file, and saved as an HF directory.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};
use temper_backend::FloatPrecision;

use crate::checkpoint::{
    MemorySource, SafetensorsSource, load_weights, save_safetensors, write_atomic,
};
use crate::gguf::{GgufFile, chat_template as gguf_chat_template, hf_config, special_tokens};
use crate::{ChatTemplate, Error, LlamaForCausalLM, ModelConfig, Result, Tokenizer};

/// Special token ids used by generation and saved in `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

/// A loaded model: [`LlamaForCausalLM`] + [`Tokenizer`] + optional [`ChatTemplate`].
#[derive(Debug)]
pub struct Pretrained {
    pub model: LlamaForCausalLM,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub special: SpecialTokens,
    /// Where it was loaded from.
    pub source: PathBuf,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A token in `tokenizer_config.json` is a string or an `AddedToken` object with `content`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        None => vec![],
    }
}

impl Pretrained {
    /// Load an HF model directory or a `.gguf` file.
    ///
    /// # Errors
    /// Any loading error, naming the file, key or tensor.
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        precision: FloatPrecision,
    ) -> Result<Self> {
        let path = path.as_ref();
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            Self::load_gguf(path, device, precision)
        } else if path.is_dir() {
            Self::load_dir(path, device, precision)
        } else if path.exists() {
            Err(Error::InvalidInput(format!(
                "{}: expected an HF model directory or a .gguf file",
                path.display()
            )))
        } else {
            Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        }
    }

    /// Load a GGUF file (weights dequantised to `precision`).
    ///
    /// # Errors
    /// Malformed GGUF, unsupported architecture or tokenizer.
    pub fn load_gguf(path: &Path, device: &Device, precision: FloatPrecision) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_json(&hf_config(&file)?, path)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let st = special_tokens(&file);
        let name = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let chat_template = gguf_chat_template(&file)
            .map(|t| ChatTemplate::new(t, name(st.bos), name(st.eos)))
            .transpose()?;
        let mut source = MemorySource::from_gguf(&file)?;
        drop(file);
        let model = load_weights(&config, &mut source, device, precision)?;
        let special = SpecialTokens {
            bos: st.bos.filter(|_| st.add_bos),
            eos: st.eos.into_iter().collect(),
            pad: st.pad,
        };
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            special,
            source: path.to_path_buf(),
        })
    }

    /// Load an HF directory: `config.json`, safetensors weights, `tokenizer.json`, and when
    /// present `tokenizer_config.json` / `chat_template.jinja` / `generation_config.json`.
    ///
    /// # Errors
    /// Missing files, bad config keys, weight mismatches.
    pub fn load_dir(dir: &Path, device: &Device, precision: FloatPrecision) -> Result<Self> {
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_config = if tok_config_path.exists() {
            Some(read_json(&tok_config_path)?)
        } else {
            None
        };
        let bos_token = tok_config
            .as_ref()
            .and_then(|c| token_string(c.get("bos_token")))
            .unwrap_or_default();
        let eos_token = tok_config
            .as_ref()
            .and_then(|c| token_string(c.get("eos_token")))
            .unwrap_or_default();
        let jinja_path = dir.join("chat_template.jinja");
        let template_source = if jinja_path.exists() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            tok_config
                .as_ref()
                .and_then(|c| match c.get("chat_template") {
                    Some(Value::String(s)) => Some(s.clone()),
                    // Named templates: [{"name": "default", "template": ...}, ...]
                    Some(Value::Array(list)) => list
                        .iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                        .or_else(|| list.first())
                        .and_then(|t| t.get("template"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                })
        };
        let chat_template = template_source
            .map(|t| ChatTemplate::new(t, &bos_token, &eos_token))
            .transpose()?;
        let gen_path = dir.join("generation_config.json");
        let gen_config = if gen_path.exists() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        let mut eos = gen_config
            .as_ref()
            .map(|g| ids(g.get("eos_token_id")))
            .unwrap_or_default();
        if eos.is_empty() {
            eos = config.eos_token_ids.clone();
        }
        let add_bos = tok_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool);
        let special = SpecialTokens {
            bos: config.bos_token_id.filter(|_| add_bos == Some(true)),
            eos,
            pad: gen_config
                .as_ref()
                .and_then(|g| ids(g.get("pad_token_id")).first().copied())
                .or(config.pad_token_id),
        };
        let mut source = SafetensorsSource::open_dir(dir)?;
        let model = load_weights(&config, &mut source, device, precision)?;
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            special,
            source: dir.to_path_buf(),
        })
    }

    /// Save as an HF directory that `Pretrained::load` and transformers both read:
    /// `config.json`, `model.safetensors` (in `dtype`), `tokenizer.json`,
    /// `tokenizer_config.json` (with the chat template) and `generation_config.json`.
    /// Each file is written atomically.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, dir: &Path, dtype: FloatPrecision) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let torch_dtype = match dtype {
            FloatPrecision::F32 => "float32",
            FloatPrecision::BF16 => "bfloat16",
            FloatPrecision::F16 => "float16",
        };
        let mut config = self.model.config().clone();
        config.bos_token_id = config.bos_token_id.or(self.special.bos);
        if config.eos_token_ids.is_empty() {
            config.eos_token_ids = self.special.eos.clone();
        }
        let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
        save_safetensors(&self.model, &dir.join("model.safetensors"), dtype)?;
        write_atomic(
            &dir.join("tokenizer.json"),
            self.tokenizer.to_json()?.as_bytes(),
        )?;
        let token = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        let mut tok_config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.special.bos.is_some(),
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": config.max_position_embeddings,
            "bos_token": token(config.bos_token_id),
            "eos_token": token(self.special.eos.first().copied()),
            "pad_token": token(self.special.pad),
        });
        if let Some(t) = &self.chat_template {
            tok_config["chat_template"] = json!(t.source());
        }
        write_atomic(&dir.join("tokenizer_config.json"), &pretty(&tok_config))?;
        let mut gen_config = json!({"_from_model_config": true});
        if let Some(b) = config.bos_token_id {
            gen_config["bos_token_id"] = json!(b);
        }
        match self.special.eos.as_slice() {
            [] => {}
            [one] => gen_config["eos_token_id"] = json!(one),
            many => gen_config["eos_token_id"] = json!(many),
        }
        if let Some(p) = self.special.pad {
            gen_config["pad_token_id"] = json!(p);
        }
        write_atomic(&dir.join("generation_config.json"), &pretty(&gen_config))?;
        // config.json last: a directory with a config.json is a complete one.
        write_atomic(
            &dir.join("config.json"),
            &pretty(&config.to_json(torch_dtype)),
        )?;
        Ok(())
    }
}
