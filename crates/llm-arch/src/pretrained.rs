//! A model with everything needed to use it: weights, tokenizer, chat template and special ids,
//! loaded from an HF directory or a GGUF file, and saved as an HF directory.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};
use temper_backend::{FloatPrecision, QuantType};
use temper_formats::write_atomic;

use crate::checkpoint::{
    MemorySource, SafetensorsSource, TensorSource, load_weights, save_safetensors,
};
use crate::gguf::{GgufFile, hf_config};
use crate::quantizing_source::QuantizingSource;
use crate::tokenizer_bundle::{SpecialTokens, TokenizerBundle, is_gguf_path, save_tokenizer_files};
use crate::{ChatTemplate, Error, LlamaForCausalLM, ModelConfig, Result, Tokenizer};

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

/// How a loaded model holds its projections' base weights (the seven linear layers of each
/// decoder layer; the embedding, norms and LM head are always dense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectionStorage {
    /// Dense tensors in the load precision.
    #[default]
    Dense,
    /// A GGUF file's own blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) as stored; other files are
    /// refused.
    GgufBlocks,
    /// Encoded to this type as each tensor is read (NF4 as bitsandbytes' `load_in_4bit`, Q8_0):
    /// the dense model never exists in memory, only one dense tensor at a time.
    Quantize(QuantType),
}

/// `generation_config.json`, when the directory has one.
fn read_generation_config(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = temper_formats::read_regular_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A token id or a list of them (`eos_token_id` may be either).
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

/// The architecture config of an HF directory (`config.json`) or a GGUF file (its metadata),
/// read without touching the weights: what an estimate made before loading needs.
///
/// # Errors
/// A missing or malformed config, naming the file and key.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    if is_gguf_path(path) {
        let file = GgufFile::open(path)?;
        ModelConfig::from_json(&hf_config(&file)?, path)
    } else {
        ModelConfig::from_file(path.join("config.json"))
    }
}

/// The bytes a GGUF file's projection tensors (`blk.N.attn_q` … `ffn_down`) take as stored:
/// what [`ProjectionStorage::GgufBlocks`] keeps in memory.
///
/// # Errors
/// A malformed GGUF file.
pub fn gguf_projection_bytes(path: &Path) -> Result<u64> {
    const PROJECTIONS: [&str; 7] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let file = GgufFile::open(path)?;
    Ok(file
        .tensors()
        .iter()
        .filter(|t| {
            t.name.strip_prefix("blk.").is_some_and(|rest| {
                PROJECTIONS
                    .iter()
                    .any(|p| rest.ends_with(&format!(".{p}.weight")))
            })
        })
        .filter_map(|t| t.n_bytes())
        .fold(0u64, u64::saturating_add))
}

/// [`load_weights`] from `source`, its projections quantized on the way when `storage` asks.
fn load_projections<S: TensorSource>(
    config: &ModelConfig,
    mut source: S,
    device: &Device,
    precision: FloatPrecision,
    storage: ProjectionStorage,
) -> Result<LlamaForCausalLM> {
    match storage {
        ProjectionStorage::Quantize(ty) => load_weights(
            config,
            &mut QuantizingSource::new(source, ty).rounding_to(precision),
            device,
            precision,
        ),
        ProjectionStorage::Dense | ProjectionStorage::GgufBlocks => {
            load_weights(config, &mut source, device, precision)
        }
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
        Self::load_with(path, device, precision, ProjectionStorage::Dense)
    }

    /// Load an HF model directory or a `.gguf` file with its projections held as `storage`
    /// says (dense, the GGUF's own blocks, or quantized while loading).
    ///
    /// # Errors
    /// Any loading error, naming the file, key or tensor; [`ProjectionStorage::GgufBlocks`]
    /// for a file that is not a GGUF.
    pub fn load_with(
        path: impl AsRef<Path>,
        device: &Device,
        precision: FloatPrecision,
        storage: ProjectionStorage,
    ) -> Result<Self> {
        // A hub id (`org/name[@revision]`) that is not a local path: its snapshot in the HF
        // cache.
        let resolved = temper_formats::hub::resolve_model(path.as_ref())?;
        let path = resolved.as_path();
        if is_gguf_path(path) {
            Self::load_gguf_with(path, device, precision, storage)
        } else if storage == ProjectionStorage::GgufBlocks {
            Err(Error::InvalidInput(format!(
                "{}: only a .gguf file has blocks to keep (quantize it to nf4 or q8_0 instead)",
                path.display()
            )))
        } else if path.is_dir() {
            Self::load_dir_with(path, device, precision, storage)
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
        Self::load_gguf_with(path, device, precision, ProjectionStorage::Dense)
    }

    /// Load a GGUF file keeping its projections' own blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) as
    /// [`temper_backend::QuantizedWeight`]s that the products decode tile by tile; the other
    /// tensors (embedding, norms, an F32/F16 projection) are decoded to `precision`. Memory is
    /// about the file's size instead of 4 bytes a parameter.
    ///
    /// # Errors
    /// As [`Pretrained::load_gguf`].
    pub fn load_gguf_quantized(
        path: &Path,
        device: &Device,
        precision: FloatPrecision,
    ) -> Result<Self> {
        Self::load_gguf_with(path, device, precision, ProjectionStorage::GgufBlocks)
    }

    fn load_gguf_with(
        path: &Path,
        device: &Device,
        precision: FloatPrecision,
        storage: ProjectionStorage,
    ) -> Result<Self> {
        let keep_blocks = storage == ProjectionStorage::GgufBlocks;
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_json(&hf_config(&file)?, path)?;
        let bundle = TokenizerBundle::from_gguf(&file)?;
        let chat_template = bundle.compile_chat_template()?;
        let source = if keep_blocks {
            MemorySource::from_gguf_keeping_blocks(&file)?
        } else {
            MemorySource::from_gguf(&file)?
        };
        drop(file);
        let model = load_projections(&config, source, device, precision, storage)?;
        let st = bundle.gguf_special.unwrap_or_default();
        let special = SpecialTokens {
            bos: st.bos.filter(|_| st.add_bos),
            eos: st.eos.into_iter().collect(),
            pad: st.pad,
        };
        Ok(Self {
            model,
            tokenizer: bundle.tokenizer,
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
        Self::load_dir_with(dir, device, precision, ProjectionStorage::Dense)
    }

    fn load_dir_with(
        dir: &Path,
        device: &Device,
        precision: FloatPrecision,
        storage: ProjectionStorage,
    ) -> Result<Self> {
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let bundle = TokenizerBundle::from_hf_dir(dir)?;
        let chat_template = bundle.compile_chat_template()?;
        let gen_path = dir.join("generation_config.json");
        let gen_config = read_generation_config(&gen_path)?;
        let mut eos = gen_config
            .as_ref()
            .map(|g| ids(g.get("eos_token_id")))
            .unwrap_or_default();
        if eos.is_empty() {
            eos = config.eos_token_ids.clone();
        }
        let special = SpecialTokens {
            bos: config
                .bos_token_id
                .filter(|_| bundle.add_bos_token == Some(true)),
            eos,
            pad: gen_config
                .as_ref()
                .and_then(|g| ids(g.get("pad_token_id")).first().copied())
                .or(config.pad_token_id),
        };
        let source = SafetensorsSource::open_dir(dir)?;
        let model = load_projections(&config, source, device, precision, storage)?;
        Ok(Self {
            model,
            tokenizer: bundle.tokenizer,
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
        save_tokenizer_files(
            dir,
            &config,
            &self.tokenizer,
            self.chat_template.as_ref(),
            &self.special,
        )?;
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

    /// [`save`](Self::save) as a whole: the directory is written beside `dir` and renamed into
    /// place when complete (`temper_formats::StagingDir`), so an interruption leaves no
    /// half-written model, only a temporary directory the next writer removes. An existing
    /// non-empty `dir` is refused unless `overwrite`, and then replaced at the end.
    ///
    /// # Errors
    /// `dir` is a file or a non-empty directory without `overwrite`; I/O errors naming the file.
    pub fn save_new(&self, dir: &Path, dtype: FloatPrecision, overwrite: bool) -> Result<()> {
        let staging = temper_formats::StagingDir::create(dir, overwrite)?;
        self.save(staging.path(), dtype)?;
        staging.commit()?;
        Ok(())
    }
}
