//! PEFT's adapter files: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! burn stores linear weights `[in, out]`; PEFT's `lora_A.weight` is `[r, in]` and
//! `lora_B.weight` `[out, r]`, so both are transposed on the way in and out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::Dtype;
use temper_backend::FloatPrecision;
use temper_formats::peft::{ADAPTER_WEIGHTS, LoraConfig, PEFT_PREFIX};
use temper_formats::write_atomic;
use temper_llm_arch::LlamaForCausalLM;
use temper_llm_arch::checkpoint::{HostTensor, SafetensorsSource, TensorSource, save_safetensors};

use crate::adapter::{inject, merge_and_unload, projections, projections_mut};
use crate::{LoraError, Result};

fn host(t: Tensor<2>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

fn transposed(t: Tensor<2>) -> HostTensor {
    let t = t.transpose();
    HostTensor {
        shape: t.dims().to_vec(),
        data: host(t),
    }
}

/// The tensors `save_adapter` writes, with PEFT names and PyTorch layout, in f32.
///
/// # Errors
/// [`LoraError::NotInjected`] when the model has no adapter.
pub fn adapter_tensors(
    model: &LlamaForCausalLM,
    config: &LoraConfig,
) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (path, proj) in projections(model) {
        if let Some(lora) = &proj.lora {
            out.push((
                format!("{PEFT_PREFIX}{path}.lora_A.weight"),
                transposed(lora.lora_a.val()),
            ));
            out.push((
                format!("{PEFT_PREFIX}{path}.lora_B.weight"),
                transposed(lora.lora_b.val()),
            ));
        }
    }
    if out.is_empty() {
        return Err(LoraError::NotInjected);
    }
    for m in config.modules_to_save.iter().flatten() {
        match m.as_str() {
            "lm_head" => {
                let head = model.lm_head.as_ref().ok_or_else(|| {
                    LoraError::Unsupported("modules_to_save lm_head with tied embeddings".into())
                })?;
                out.push((
                    format!("{PEFT_PREFIX}lm_head.weight"),
                    transposed(head.weight.val()),
                ));
            }
            _ => {
                // embed_tokens (validated): `[vocab, hidden]` in both layouts.
                let w = model.model.embed_tokens.weight.val();
                out.push((
                    format!("{PEFT_PREFIX}model.embed_tokens.weight"),
                    HostTensor {
                        shape: w.dims().to_vec(),
                        data: host(w),
                    },
                ));
            }
        }
    }
    Ok(out)
}

fn st_error(path: &Path, e: impl std::fmt::Display) -> LoraError {
    LoraError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Write `dir/adapter_model.safetensors` (f32, `{"format": "pt"}` metadata) and
/// `dir/adapter_config.json`, each atomically (temporary file + rename), config last: a
/// directory with a config is complete. PEFT's `PeftModel.from_pretrained` reads it.
///
/// # Errors
/// No adapter in the model, I/O errors naming the file.
pub fn save_adapter(
    model: &LlamaForCausalLM,
    config: &LoraConfig,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    let tensors = adapter_tensors(model, config)?;
    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, t.shape, bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| st_error(&weights_path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::serialize(views, metadata).map_err(|e| st_error(&weights_path, e))?;
    write_atomic(&weights_path, &bytes)?;
    config.save(dir)?;
    Ok(())
}

struct Reader {
    source: SafetensorsSource,
    path: PathBuf,
    device: Device,
}

impl Reader {
    /// Take `name` in PyTorch layout `expected` and return it transposed (burn layout) when
    /// `transpose`, cast to `dtype`.
    fn take(
        &mut self,
        name: &str,
        expected: [usize; 2],
        transpose: bool,
        dtype: DType,
    ) -> Result<Tensor<2>> {
        let t = self
            .source
            .take(name)?
            .ok_or_else(|| LoraError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if t.shape != expected {
            return Err(LoraError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        let x = Tensor::<2>::from_data(TensorData::new(t.data, expected), &self.device);
        let x = if transpose { x.transpose() } else { x };
        Ok(x.cast(dtype))
    }
}

/// Load a PEFT LoRA adapter directory into a base model: read the config, [`inject`]
/// adapters where it says, and fill them (and any `modules_to_save`) from the weights file.
/// Every tensor of the file must be used and every adapter filled; shapes are checked.
/// Adapter weights come back trainable (to continue training), the base frozen.
///
/// # Errors
/// Unsupported config, missing / unexpected / misshapen tensors, I/O errors.
pub fn load_adapter(
    model: LlamaForCausalLM,
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<(LlamaForCausalLM, LoraConfig)> {
    let dir = dir.as_ref();
    let config = LoraConfig::load(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let source = SafetensorsSource::open_file(&path)?;
    let mut model = inject(model, &config, device)?;
    let mut reader = Reader {
        source,
        path: path.clone(),
        device: device.clone(),
    };
    for (p, proj) in projections_mut(&mut model) {
        let (d_in, d_out) = proj.dims();
        let Some(lora) = proj.lora.as_mut() else {
            continue;
        };
        let r = lora.rank();
        let dtype = lora.lora_a.val().dtype();
        let a = reader.take(
            &format!("{PEFT_PREFIX}{p}.lora_A.weight"),
            [r, d_in],
            true,
            dtype,
        )?;
        let b = reader.take(
            &format!("{PEFT_PREFIX}{p}.lora_B.weight"),
            [d_out, r],
            true,
            dtype,
        )?;
        lora.lora_a = Param::from_tensor(a);
        lora.lora_b = Param::from_tensor(b);
    }
    for m in config.modules_to_save.iter().flatten() {
        if m == "lm_head" {
            let head = model.lm_head.as_mut().ok_or_else(|| {
                LoraError::Unsupported("modules_to_save lm_head with tied embeddings".into())
            })?;
            let [hs, vocab] = head.weight.val().dims();
            let dtype = head.weight.val().dtype();
            let w = reader.take(
                &format!("{PEFT_PREFIX}lm_head.weight"),
                [vocab, hs],
                true,
                dtype,
            )?;
            head.weight = Param::from_tensor(w);
        } else {
            let e = &mut model.model.embed_tokens;
            let dims = e.weight.val().dims();
            let dtype = e.weight.val().dtype();
            let w = reader.take(
                &format!("{PEFT_PREFIX}model.embed_tokens.weight"),
                dims,
                false,
                dtype,
            )?;
            e.weight = Param::from_tensor(w);
        }
    }
    let mut leftover = reader.source.remaining();
    leftover.sort();
    if let Some(name) = leftover.into_iter().next() {
        return Err(LoraError::UnexpectedTensor { path, name });
    }
    Ok((model, config))
}

/// Save the merged model (adapters folded into the weights, [`merge_and_unload`]) as an HF
/// checkpoint directory: `config.json` + `model.safetensors` in `dtype`. `model` itself is
/// left as is. With a full `Pretrained` (tokenizer, chat template), prefer
/// `pretrained.model = merge_and_unload(pretrained.model)?; pretrained.save(dir, dtype)`.
///
/// # Errors
/// No adapter in the model; I/O errors naming the file.
pub fn save_merged(
    model: &LlamaForCausalLM,
    dir: impl AsRef<Path>,
    dtype: FloatPrecision,
) -> Result<()> {
    let dir = dir.as_ref();
    let merged = merge_and_unload(model.clone())?;
    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    save_safetensors(&merged, &dir.join("model.safetensors"), dtype)?;
    let torch_dtype = match dtype {
        FloatPrecision::F32 => "float32",
        FloatPrecision::BF16 => "bfloat16",
        FloatPrecision::F16 => "float16",
    };
    let config =
        serde_json::to_vec_pretty(&merged.config().to_json(torch_dtype)).map_err(|source| {
            LoraError::Json {
                path: dir.join("config.json"),
                source,
            }
        })?;
    write_atomic(&dir.join("config.json"), &config)?;
    Ok(())
}
