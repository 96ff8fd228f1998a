//! HF checkpoints: reading `model.safetensors` (single or sharded with
//! `model.safetensors.index.json`) or a GGUF into a [`LlamaForCausalLM`], and writing one back.
//!
//! Every expected tensor is checked: a missing one, an unexpected one or a wrong shape is an
//! error naming the tensor (and both shapes). Files are written atomically
//! (`temper_formats::AtomicFile`: a temporary name, then a rename), so an interrupted save
//! never leaves a half-written file behind.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use temper_backend::{FloatPrecision, QuantizedWeight};

use crate::gguf::{GgufFile, HfTensor, for_each_hf_tensor, for_each_hf_tensor_keeping_blocks};
use crate::llama::{Attention, DecoderLayer, LlamaForCausalLM, LlamaModel, Mlp, RmsNorm};
use crate::projection::Projection;
use crate::{Error, ModelConfig, Result};

pub use crate::save::{HfParam, for_each_hf_tensor_of, hf_params, hf_tensors, save_safetensors};

/// A tensor in HF layout: PyTorch shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Where HF-named weights come from.
pub trait TensorSource {
    /// The file or directory, for error messages.
    fn origin(&self) -> &Path;
    /// Remove tensor `name` from the source and return it as f32; `None` if absent.
    ///
    /// # Errors
    /// Unreadable data or an unsupported dtype, naming the tensor.
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>>;
    /// Names not taken yet.
    fn remaining(&self) -> Vec<String>;

    /// Remove and return the tensor `name` if the source holds it block-quantized (a GGUF
    /// projection weight kept as stored); `None` sends the loader to [`TensorSource::take`].
    fn take_quantized(&mut self, name: &str) -> Result<Option<QuantizedWeight>> {
        let _ = name;
        Ok(None)
    }
}

/// Tensors already in memory (a dequantised GGUF, or a test's hand-made weights).
#[derive(Debug)]
pub struct MemorySource {
    origin: PathBuf,
    tensors: HashMap<String, HostTensor>,
    quantized: HashMap<String, QuantizedWeight>,
}

impl MemorySource {
    /// Wrap a map of tensors; `origin` names them in errors.
    pub fn new(origin: impl Into<PathBuf>, tensors: HashMap<String, HostTensor>) -> Self {
        Self {
            origin: origin.into(),
            tensors,
            quantized: HashMap::new(),
        }
    }

    /// Dequantise every tensor of a GGUF file to f32 with HF names and shapes.
    ///
    /// # Errors
    /// Any [`crate::gguf::GgufError`] (malformed file, unsupported quantisation).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::gguf(file, false)
    }

    /// [`MemorySource::from_gguf`], except that projection weights stored in a ggml block type
    /// (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) keep their blocks ([`TensorSource::take_quantized`]):
    /// the model built from it holds about the file's bytes, not 4 bytes a parameter. A token
    /// embedding in Q4_0, Q4_1 or Q8_0 is kept both decoded and as blocks (the tied LM head at
    /// decode, [`LlamaForCausalLM::with_decode_head`]).
    ///
    /// # Errors
    /// As [`MemorySource::from_gguf`]; blocks that do not make up their tensor's shape.
    pub fn from_gguf_keeping_blocks(file: &GgufFile) -> Result<Self> {
        Self::gguf(file, true)
    }

    fn gguf(file: &GgufFile, keep_blocks: bool) -> Result<Self> {
        let (mut tensors, mut quantized) = (HashMap::new(), HashMap::new());
        let on_tensor = |t: HfTensor| {
            let host = HostTensor {
                shape: t.shape,
                data: t.data,
            };
            tensors.insert(t.name, host);
            Ok::<(), Error>(())
        };
        if keep_blocks {
            for_each_hf_tensor_keeping_blocks(file, on_tensor, |b| {
                let w = QuantizedWeight::from_blocks(&b.name, b.ty, b.bytes, b.shape)?;
                quantized.insert(b.name, w);
                Ok(())
            })?;
        } else {
            for_each_hf_tensor(file, on_tensor)?;
        }
        let mut source = Self::new(file.path(), tensors);
        source.quantized = quantized;
        Ok(source)
    }
}

impl TensorSource for MemorySource {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        Ok(self.tensors.remove(name))
    }
    fn remaining(&self) -> Vec<String> {
        self.tensors
            .keys()
            .chain(self.quantized.keys())
            .cloned()
            .collect()
    }
    fn take_quantized(&mut self, name: &str) -> Result<Option<QuantizedWeight>> {
        Ok(self.quantized.remove(name))
    }
}

/// Safetensors files (one, or the shards of an index).
///
/// Headers are validated when the files are opened; each tensor is then read with a positioned
/// read when taken, so loading holds at most one tensor's bytes besides the model (a memory
/// map would keep every touched page resident until the end).
#[derive(Debug)]
pub struct SafetensorsSource {
    origin: PathBuf,
    files: Vec<ShardFile>,
    /// tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct ShardFile {
    path: PathBuf,
    file: std::fs::File,
    /// Byte offset of the data section (8 + header length).
    data_start: u64,
    metadata: safetensors::tensor::Metadata,
}

impl ShardFile {
    fn open(path: &Path) -> Result<Self> {
        let file = temper_formats::open_regular(path).map_err(|e| Error::io(path, e))?;
        let map = temper_formats::mmap::map_open_file(&file, path)?;
        // Only the header pages are touched. `check_header` names the tensor at fault (the
        // `safetensors` crate does not always); both check that the data section matches the
        // file length (a truncated file fails here).
        temper_formats::safetensors_check::check_header(&map, path)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| st_error(path, e))?;
        drop(map);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start: 8 + header_len as u64,
            metadata,
        })
    }

    fn names(&self) -> Vec<String> {
        self.metadata.tensors().keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        use std::os::unix::fs::FileExt;
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| st_error(&self.path, format!("tensor `{name}` is not in the header")))?;
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start as u64)
            .map_err(|e| Error::io(&self.path, e))?;
        let data = to_f32(&self.path, name, info.dtype, &bytes)?;
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

fn st_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl SafetensorsSource {
    /// Open a single `.safetensors` file.
    ///
    /// # Errors
    /// I/O errors and invalid or truncated files, naming the file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let shard = ShardFile::open(&path)?;
        let index = shard.names().into_iter().map(|n| (n, 0)).collect();
        Ok(Self {
            origin: path,
            files: vec![shard],
            index,
        })
    }

    /// Open the checkpoint of an HF directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    ///
    /// # Errors
    /// [`Error::NoWeights`] when neither exists; I/O, JSON and safetensors errors.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open_file(single);
        }
        let index_path = dir.join("model.safetensors.index.json");
        if !index_path.exists() {
            return Err(Error::NoWeights {
                path: dir.to_path_buf(),
            });
        }
        let text = temper_formats::read_regular_to_string(&index_path)
            .map_err(|e| Error::io(&index_path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index_path.clone(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::MissingConfigKey {
                path: index_path.clone(),
                key: "weight_map".into(),
            })?;
        let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (name, shard) in map {
            let shard = shard.as_str().ok_or_else(|| Error::InvalidConfig {
                path: index_path.clone(),
                key: format!("weight_map.{name}"),
                reason: "expected a file name".into(),
            })?;
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    let path = temper_formats::safetensors_check::shard_path(
                        dir,
                        &index_path,
                        name,
                        shard,
                    )?;
                    let opened = ShardFile::open(&path)?;
                    if opened.metadata.info(name).is_none() {
                        return Err(st_error(
                            &path,
                            format!("tensor `{name}` listed in the index is not in this file"),
                        ));
                    }
                    files.push(opened);
                    shard_ids.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            index.insert(name.clone(), id);
        }
        Ok(Self {
            origin: index_path,
            files,
            index,
        })
    }
}

/// Convert raw little-endian tensor bytes to f32, refusing NaN and infinite values.
fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let data: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedTensorDType {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    };
    match crate::finite::first_non_finite(&data) {
        None => Ok(data),
        Some(index) => Err(Error::NonFiniteWeight {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value: data[index],
        }),
    }
}

impl TensorSource for SafetensorsSource {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        let Some(id) = self.index.remove(name) else {
            return Ok(None);
        };
        self.files[id].read(name).map(Some)
    }
    fn remaining(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

struct Loader<'a> {
    source: &'a mut dyn TensorSource,
    device: &'a Device,
    precision: FloatPrecision,
}

impl Loader<'_> {
    fn fetch(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let origin = self.source.origin().to_path_buf();
        let t = self
            .source
            .take(name)?
            .ok_or_else(|| Error::MissingTensor {
                path: origin.clone(),
                name: name.to_string(),
            })?;
        if t.shape != expected {
            return Err(Error::ShapeMismatch {
                path: origin,
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        Ok(t.data)
    }

    fn tensor<const D: usize>(&self, data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        let t = Tensor::<D>::from_data(TensorData::new(data, shape), self.device);
        if self.precision == FloatPrecision::F32 {
            t
        } else {
            t.cast(self.precision.dtype())
        }
    }

    /// A PyTorch `[out, in]` weight as a burn `Linear` (`[in, out]`).
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let w = self.fetch(&format!("{name}.weight"), &[d_out, d_in])?;
        let transposed = transpose(&w, d_out, d_in);
        // Freed before the tensor (and its cast) is made: an 8B model's LM head is 2 GB in f32.
        drop(w);
        let weight = self.tensor(transposed, [d_in, d_out]);
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        })
    }

    fn linear_with_bias(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let mut l = self.linear(name, d_in, d_out)?;
        if bias {
            let b = self.fetch(&format!("{name}.bias"), &[d_out])?;
            l.bias = Some(Param::from_tensor(self.tensor(b, [d_out])));
        }
        Ok(l)
    }

    /// A projection: a block-quantized weight when the source keeps one (the bias, if any,
    /// dense), else [`Loader::linear_with_bias`].
    fn projection(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Projection> {
        let weight_name = format!("{name}.weight");
        let Some(q) = self.source.take_quantized(&weight_name)? else {
            return Ok(self.linear_with_bias(name, d_in, d_out, bias)?.into());
        };
        if q.shape() != [d_out, d_in] {
            return Err(Error::ShapeMismatch {
                path: self.source.origin().to_path_buf(),
                name: weight_name,
                expected: vec![d_out, d_in],
                found: q.shape().to_vec(),
            });
        }
        let bias = if bias {
            let b = self.fetch(&format!("{name}.bias"), &[d_out])?;
            Some(Param::from_tensor(self.tensor(b, [d_out])))
        } else {
            None
        };
        Ok(Projection::from_quantized(
            q,
            bias,
            self.precision.dtype(),
            self.device,
        ))
    }

    fn norm(&mut self, name: &str, d: usize, eps: f64) -> Result<RmsNorm> {
        let w = self.fetch(&format!("{name}.weight"), &[d])?;
        Ok(RmsNorm {
            weight: Param::from_tensor(self.tensor(w, [d])),
            eps,
        })
    }
}

/// Build a model from HF-named tensors, converting to `precision` on `device`.
///
/// # Errors
/// A missing tensor, a wrong shape or an unexpected tensor, naming it.
pub fn load_weights(
    config: &ModelConfig,
    source: &mut dyn TensorSource,
    device: &Device,
    precision: FloatPrecision,
) -> Result<LlamaForCausalLM> {
    precision.check(device)?;
    let mut l = Loader {
        source,
        device,
        precision,
    };
    let c = config;
    let (hs, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (bias, qk_norm) = (c.biases(), c.qk_norm());
    let (Some(q), Some(kv)) = (
        c.num_attention_heads.checked_mul(hd),
        c.num_key_value_heads.checked_mul(hd),
    ) else {
        return Err(Error::InvalidConfig {
            path: l.source.origin().to_path_buf(),
            key: "head_dim".into(),
            reason: format!(
                "num_attention_heads {} × head_dim {hd} overflows",
                c.num_attention_heads
            ),
        });
    };
    let embed = l.fetch("model.embed_tokens.weight", &[c.vocab_size, hs])?;
    let embed_tokens = Embedding {
        weight: Param::from_tensor(l.tensor(embed, [c.vocab_size, hs])),
    };
    // No `with_capacity`: `num_hidden_layers` comes from an untrusted config, and a huge value
    // must fail on the first missing layer tensor, not abort on allocation.
    let mut layers = Vec::new();
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(DecoderLayer {
            input_layernorm: l.norm(&format!("{p}.input_layernorm"), hs, c.rms_norm_eps)?,
            self_attn: Attention {
                q_proj: l.projection(&format!("{p}.self_attn.q_proj"), hs, q, bias.qkv)?,
                k_proj: l.projection(&format!("{p}.self_attn.k_proj"), hs, kv, bias.qkv)?,
                v_proj: l.projection(&format!("{p}.self_attn.v_proj"), hs, kv, bias.qkv)?,
                o_proj: l.projection(&format!("{p}.self_attn.o_proj"), q, hs, bias.o)?,
                q_norm: match qk_norm {
                    true => Some(l.norm(&format!("{p}.self_attn.q_norm"), hd, c.rms_norm_eps)?),
                    false => None,
                },
                k_norm: match qk_norm {
                    true => Some(l.norm(&format!("{p}.self_attn.k_norm"), hd, c.rms_norm_eps)?),
                    false => None,
                },
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: hd,
            },
            post_attention_layernorm: l.norm(
                &format!("{p}.post_attention_layernorm"),
                hs,
                c.rms_norm_eps,
            )?,
            mlp: Mlp {
                gate_proj: l.projection(&format!("{p}.mlp.gate_proj"), hs, inter, bias.mlp)?,
                up_proj: l.projection(&format!("{p}.mlp.up_proj"), hs, inter, bias.mlp)?,
                down_proj: l.projection(&format!("{p}.mlp.down_proj"), inter, hs, bias.mlp)?,
            },
        });
    }
    let norm = l.norm("model.norm", hs, c.rms_norm_eps)?;
    let lm_head = if c.tie_word_embeddings {
        // Some tied checkpoints still store a copy of the head; HF ignores it, so do we.
        l.source.take("lm_head.weight")?;
        None
    } else {
        Some(l.linear("lm_head", hs, c.vocab_size)?)
    };
    // A GGUF's embedding blocks (kept with the projections' blocks): the tied head at decode.
    let decode_head = l.source.take_quantized("model.embed_tokens.weight")?;
    let mut leftover: Vec<String> = l
        .source
        .remaining()
        .into_iter()
        .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    leftover.sort();
    if let Some(name) = leftover.into_iter().next() {
        return Err(Error::UnexpectedTensor {
            path: l.source.origin().to_path_buf(),
            name,
            arch: c.architecture().to_string(),
        });
    }
    let model = LlamaForCausalLM::from_parts(
        config.clone(),
        LlamaModel {
            embed_tokens,
            layers,
            norm,
        },
        lm_head,
    );
    Ok(match decode_head {
        Some(head) if c.tie_word_embeddings => model.with_decode_head(head),
        _ => model,
    })
}
