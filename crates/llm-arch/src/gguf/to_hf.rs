//! Turning a llama-architecture GGUF into what a Hugging Face checkpoint would hold: tensor names,
//! shapes, row order and `config.json`.
//!
//! Two things differ from an HF checkpoint besides the names:
//! * For `llama` and `mistral`, llama.cpp's converter reorders the rows of `q_proj` / `k_proj`
//!   for ggml's interleaved RoPE (pairs `(2i, 2i+1)`); HF's `rotate_half` RoPE pairs
//!   `(i, i + hd/2)`. [`unpermute_qk_rows`] undoes it so the rest of the crate can use one RoPE
//!   convention. `qwen2` and `qwen3` are converted without it (`Qwen2Model` is a plain
//!   `TextModel` in `convert_hf_to_gguf.py`; llama.cpp runs them with NEOX RoPE, which is
//!   `rotate_half`), so their rows are taken as stored.
//! * GGUF lists dims `ne0` first; the PyTorch shape is the reverse. The data itself is already
//!   row-major `[out, in]`, so no transpose is needed.

use serde_json::{Map, Value, json};

use temper_formats::quant::QuantType;

use super::error::GgufError;
use super::ggml_type::GgmlType;
use super::reader::GgufFile;
use super::tokenizer_json::special_tokens;
use crate::finite::{first_non_finite, first_non_finite_block};

/// A tensor under its Hugging Face name, dequantised to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    pub name: String,
    /// PyTorch shape (the GGUF dims reversed).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The HF name of a llama-architecture GGUF tensor, or `None` when there is no counterpart.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        // Qwen3's per-head norms (gguf-py's ATTN_Q_NORM / ATTN_K_NORM).
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    let bias_allowed = matches!(module, "attn_q" | "attn_k" | "attn_v" | "attn_output");
    match suffix {
        "weight" => {}
        "bias" if bias_allowed => {}
        _ => return None,
    }
    Some(format!("model.layers.{layer}.{hf_module}.{suffix}"))
}

/// Check that `rows` split into `n_head` heads of even size and that `data` is `rows × cols`.
fn head_dim(len: usize, rows: usize, cols: usize, n_head: usize) -> Option<usize> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || rows.checked_mul(cols)? != len {
        return None;
    }
    let hd = rows / n_head;
    hd.is_multiple_of(2).then_some(hd)
}

/// Move whole rows of `cols` elements: output row `dst(h, i, j)` takes input row `src(h, i, j)`.
fn move_rows<T: Copy + Default>(
    data: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
    map: impl Fn(usize, usize, usize, usize) -> (usize, usize),
) -> Option<Vec<T>> {
    let hd = head_dim(data.len(), rows, cols, n_head)?;
    let mut out = vec![T::default(); data.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (dst, src) = map(h, i, j, hd);
                out.get_mut(dst * cols..(dst + 1) * cols)?
                    .copy_from_slice(data.get(src * cols..(src + 1) * cols)?);
            }
        }
    }
    Some(out)
}

/// HF row `h*hd + j*(hd/2) + i` of a q/k weight is GGUF row `h*hd + 2*i + j`.
fn hf_from_gguf_row(h: usize, i: usize, j: usize, hd: usize) -> (usize, usize) {
    (h * hd + j * (hd / 2) + i, h * hd + 2 * i + j)
}

/// Undo llama.cpp's q/k row permutation: HF row `h*hd + j*(hd/2) + i` takes GGUF row
/// `h*hd + 2*i + j`. `data` is `rows × cols` row-major (`cols = 1` for a bias).
///
/// Returns `None` when `rows` is not `n_head` heads of even size or `data.len() != rows * cols`.
pub fn unpermute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Option<Vec<f32>> {
    move_rows(data, rows, cols, n_head, hf_from_gguf_row)
}

/// [`unpermute_qk_rows`] on a weight's stored blocks: each of the `rows` rows is `row_bytes`
/// bytes of whole blocks, moved as a unit (no decoding).
pub fn unpermute_qk_block_rows(
    bytes: &[u8],
    rows: usize,
    row_bytes: usize,
    n_head: usize,
) -> Option<Vec<u8>> {
    move_rows(bytes, rows, row_bytes, n_head, hf_from_gguf_row)
}

/// llama.cpp's permutation (`W.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`), the inverse of
/// [`unpermute_qk_rows`]: for writing GGUF-ordered weights or for tests.
pub fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    move_rows(data, rows, cols, n_head, |h, i, j, hd| {
        (h * hd + 2 * i + j, h * hd + j * (hd / 2) + i)
    })
}

/// The architectures whose tensors this module knows how to map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    fn of(file: &GgufFile) -> Result<Self, GgufError> {
        match file.get_str("general.architecture")? {
            "llama" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(GgufError::UnsupportedArchitecture {
                path: file.display_path().to_string(),
                arch: other.to_string(),
            }),
        }
    }

    /// Prefix of the architecture's metadata keys.
    fn prefix(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// Whether llama.cpp's converter permuted the q/k rows (`LlamaModel.permute`).
    fn permutes_qk(self) -> bool {
        matches!(self, Self::Llama | Self::Mistral)
    }
}

/// An optional integer key: absent is `None`, present with the wrong type is an error.
fn opt_u32(file: &GgufFile, key: &str) -> Result<Option<u32>, GgufError> {
    file.get(key).map(|_| file.get_u32(key)).transpose()
}

/// An optional float key.
fn opt_f32(file: &GgufFile, key: &str) -> Result<Option<f32>, GgufError> {
    file.get(key).map(|_| finite_f32(file, key)).transpose()
}

/// A required float key, refused when NaN or infinite: JSON has no such numbers, so it would
/// become `null` in the config and silently fall back to the default. The ranges (eps > 0,
/// theta > 0) are checked where every config is, in `ModelConfig::validate`.
fn finite_f32(file: &GgufFile, key: &str) -> Result<f32, GgufError> {
    let x = file.get_f32(key)?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(GgufError::BadValue {
            path: file.display_path().to_string(),
            key: key.to_string(),
            reason: format!("{x} is out of range (must be a finite number)"),
        })
    }
}

/// An optional string key.
fn opt_str<'a>(file: &'a GgufFile, key: &str) -> Result<Option<&'a str>, GgufError> {
    file.get(key).map(|_| file.get_str(key)).transpose()
}

/// Dequantise every tensor in file order, map it to its HF name and shape, and undo the q/k
/// permutation, handing each one to `on_tensor` (so a caller can convert a large model without
/// holding every `f32` tensor at once).
///
/// Fails on the first tensor without an HF counterpart (e.g. llama 3.1's `rope_freqs.weight`,
/// which encodes RoPE scaling this module does not reconstruct) rather than silently dropping it.
pub fn for_each_hf_tensor<E: From<GgufError>>(
    file: &GgufFile,
    on_tensor: impl FnMut(HfTensor) -> Result<(), E>,
) -> Result<(), E> {
    walk(file, on_tensor, None::<fn(HfBlocks) -> Result<(), E>>)
}

/// A projection weight's stored blocks under its HF name: `[out, in]`, rows in HF order (the
/// q/k permutation undone by moving whole rows of blocks), nothing decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct HfBlocks {
    pub name: String,
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub ty: QuantType,
    pub bytes: Vec<u8>,
}

/// [`for_each_hf_tensor`], except that the weights of the seven projections stored in a ggml
/// block type (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) go to `on_blocks` as stored instead of being
/// decoded: a model built from them keeps the file's own blocks. The token embedding, when
/// stored as Q4_0, Q4_1 or Q8_0, goes to both: decoded to `on_tensor` (the lookup) and as
/// stored to `on_blocks` (a tied model's LM head at decode).
pub fn for_each_hf_tensor_keeping_blocks<E: From<GgufError>>(
    file: &GgufFile,
    on_tensor: impl FnMut(HfTensor) -> Result<(), E>,
    on_blocks: impl FnMut(HfBlocks) -> Result<(), E>,
) -> Result<(), E> {
    walk(file, on_tensor, Some(on_blocks))
}

/// The block encoding of a projection weight of type `ty`, if it is one Temper multiplies by.
fn block_type(name: &str, ty: GgmlType) -> Option<QuantType> {
    let projection = name.ends_with("_proj.weight");
    let ty = match ty {
        GgmlType::Q4_0 => QuantType::Q4_0,
        GgmlType::Q4_1 => QuantType::Q4_1,
        GgmlType::Q8_0 => QuantType::Q8_0,
        GgmlType::Q4_K => QuantType::Q4_K,
        GgmlType::Q6_K => QuantType::Q6_K,
        _ => return None,
    };
    projection.then_some(ty)
}

/// The block encoding of the token embedding of type `ty`, if the decode products read it
/// (ggml's 32-value blocks).
fn embedding_block_type(name: &str, ty: GgmlType) -> Option<QuantType> {
    let ty = match ty {
        GgmlType::Q4_0 => QuantType::Q4_0,
        GgmlType::Q4_1 => QuantType::Q4_1,
        GgmlType::Q8_0 => QuantType::Q8_0,
        _ => return None,
    };
    (name == "model.embed_tokens.weight").then_some(ty)
}

/// Refuse blocks kept as stored whose scale is NaN or infinite (the decoded path is scanned
/// value by value instead).
fn check_blocks(file: &GgufFile, name: &str, ty: GgmlType, bytes: &[u8]) -> Result<(), GgufError> {
    match first_non_finite_block(ty, bytes) {
        None => Ok(()),
        Some((index, value)) => Err(GgufError::NonFiniteTensor {
            path: file.display_path().to_string(),
            name: name.to_string(),
            index,
            value,
            what: " (the scale of its quantized block)",
        }),
    }
}

fn walk<E: From<GgufError>>(
    file: &GgufFile,
    mut on_tensor: impl FnMut(HfTensor) -> Result<(), E>,
    mut on_blocks: Option<impl FnMut(HfBlocks) -> Result<(), E>>,
) -> Result<(), E> {
    let arch = Arch::of(file)?;
    let n_head = file.get_u32(&format!("{}.attention.head_count", arch.prefix()))?;
    let n_head_kv =
        opt_u32(file, &format!("{}.attention.head_count_kv", arch.prefix()))?.unwrap_or(n_head);
    for info in file.tensors() {
        let name = hf_tensor_name(&info.name).ok_or_else(|| GgufError::UnmappedTensor {
            path: file.display_path().to_string(),
            name: info.name.clone(),
        })?;
        let shape = info.hf_shape();
        let heads = if !arch.permutes_qk() {
            None
        } else if name.contains(".self_attn.q_proj.") {
            Some(n_head)
        } else if name.contains(".self_attn.k_proj.") {
            Some(n_head_kv)
        } else {
            None
        };
        let rows = shape.first().copied().unwrap_or(1);
        let cols = shape.iter().skip(1).product::<usize>();
        let bad_heads = |heads: u32| GgufError::BadTensorShape {
            path: file.display_path().to_string(),
            name: info.name.clone(),
            reason: format!(
                "shape {shape:?} does not split into {heads} heads of even size \
                 (cannot undo the q/k row permutation)"
            ),
        };
        if let (Some(on_blocks), Some(ty), [_, _]) = (
            on_blocks.as_mut(),
            block_type(&name, info.ggml_type),
            shape.as_slice(),
        ) {
            let mut bytes = file.tensor_bytes(info)?.to_vec();
            check_blocks(file, &info.name, info.ggml_type, &bytes)?;
            if let Some(heads) = heads {
                let row_bytes = bytes.len() / rows.max(1);
                bytes = unpermute_qk_block_rows(&bytes, rows, row_bytes, heads as usize)
                    .ok_or_else(|| bad_heads(heads))?;
            }
            on_blocks(HfBlocks {
                name,
                shape: [rows, cols],
                ty,
                bytes,
            })?;
            continue;
        }
        if let (Some(on_blocks), Some(ty), [_, _]) = (
            on_blocks.as_mut(),
            embedding_block_type(&name, info.ggml_type),
            shape.as_slice(),
        ) {
            // The token embedding stays f32 (the lookup), and its blocks come too: a tied
            // model's decode reads its LM head from them (a quarter of the f32 bytes for Q8_0).
            on_blocks(HfBlocks {
                name: name.clone(),
                shape: [rows, cols],
                ty,
                bytes: file.tensor_bytes(info)?.to_vec(),
            })?;
        }
        let mut data = file.dequantize(&info.name)?;
        if let Some(index) = first_non_finite(&data) {
            return Err(GgufError::NonFiniteTensor {
                path: file.display_path().to_string(),
                name: info.name.clone(),
                index,
                value: data[index],
                what: "",
            }
            .into());
        }
        if let Some(heads) = heads {
            data = unpermute_qk_rows(&data, rows, cols, heads as usize)
                .ok_or_else(|| bad_heads(heads))?;
        }
        on_tensor(HfTensor { name, shape, data })?;
    }
    Ok(())
}

/// [`for_each_hf_tensor`] collected into a vector (≈ 4 bytes per parameter).
pub fn load_hf_tensors(file: &GgufFile) -> Result<Vec<HfTensor>, GgufError> {
    let mut out = Vec::with_capacity(file.tensors().len());
    for_each_hf_tensor(file, |t| {
        out.push(t);
        Ok::<(), GgufError>(())
    })?;
    Ok(out)
}

/// An f32 metadata value as the JSON number a human would write (`1e-5`, not
/// `9.999999747378752e-6`): its shortest f32 decimal form, read as f64. HF configs are written
/// from Python floats, so this matches the original `config.json`.
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .map_or(Value::Null, Value::from)
}

/// An HF `config.json` object for a llama / mistral / qwen2 / qwen3 GGUF.
///
/// A `qwen2` GGUF gets no sliding window whatever its metadata says: llama.cpp runs that
/// architecture with full attention on every layer, and so does the model loaded from it.
pub fn hf_config(file: &GgufFile) -> Result<Value, GgufError> {
    let arch = Arch::of(file)?;
    let key = |k: &str| format!("{}.{k}", arch.prefix());
    let hidden = file.get_u32(&key("embedding_length"))?;
    let n_head = file.get_u32(&key("attention.head_count"))?;
    let n_head_kv = opt_u32(file, &key("attention.head_count_kv"))?.unwrap_or(n_head);
    let head_dim = match (
        opt_u32(file, &key("attention.key_length"))?,
        opt_u32(file, &key("rope.dimension_count"))?,
    ) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) if n_head > 0 => hidden / n_head,
        (None, None) => {
            return Err(GgufError::BadValue {
                path: file.display_path().to_string(),
                key: key("attention.head_count"),
                reason: "must be positive".into(),
            });
        }
    };
    let vocab_size = match opt_u32(file, &key("vocab_size"))? {
        Some(v) => v as usize,
        None => match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => file
                .tensor_info("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| GgufError::MissingKey {
                    path: file.display_path().to_string(),
                    key: key("vocab_size"),
                })?,
        },
    };
    let rope_theta = opt_f32(file, &key("rope.freq_base"))?.unwrap_or(10_000.0);
    let tokens = special_tokens(file);
    let (model_type, class) = match arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Mistral => ("mistral", "MistralForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
    };
    let attention_bias = file
        .tensors()
        .iter()
        .any(|t| t.name.starts_with("blk.") && t.name.ends_with(".attn_q.bias"));

    let mut config = Map::new();
    config.insert("architectures".into(), json!([class]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(file.get_u32(&key("feed_forward_length"))?),
    );
    config.insert(
        "num_hidden_layers".into(),
        json!(file.get_u32(&key("block_count"))?),
    );
    config.insert("num_attention_heads".into(), json!(n_head));
    config.insert("num_key_value_heads".into(), json!(n_head_kv));
    config.insert("head_dim".into(), json!(head_dim));
    config.insert(
        "max_position_embeddings".into(),
        json!(file.get_u32(&key("context_length"))?),
    );
    config.insert(
        "rms_norm_eps".into(),
        f32_json(finite_f32(file, &key("attention.layer_norm_rms_epsilon"))?),
    );
    config.insert("rope_theta".into(), f32_json(rope_theta));
    config.insert("vocab_size".into(), json!(vocab_size));
    config.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor_info("output.weight").is_none()),
    );
    config.insert("bos_token_id".into(), json!(tokens.bos));
    config.insert("eos_token_id".into(), json!(tokens.eos));
    if let Some(pad) = tokens.pad {
        config.insert("pad_token_id".into(), json!(pad));
    }
    config.insert("hidden_act".into(), json!("silu"));
    config.insert("attention_bias".into(), json!(attention_bias));
    config.insert("mlp_bias".into(), json!(false));
    config.insert("torch_dtype".into(), json!("float32"));
    if let Some(scaling) = rope_scaling(file, &key)? {
        config.insert("rope_scaling".into(), scaling);
    }
    match opt_u32(file, &key("attention.sliding_window"))? {
        Some(w) => {
            config.insert("sliding_window".into(), json!(w));
        }
        None if arch == Arch::Mistral => {
            config.insert("sliding_window".into(), Value::Null);
        }
        None => {}
    }
    if matches!(arch, Arch::Qwen2 | Arch::Qwen3) {
        config.insert("use_sliding_window".into(), json!(false));
    }
    Ok(Value::Object(config))
}

/// `rope_scaling` from `{arch}.rope.scaling.*` (or the older `{arch}.rope.scale_linear`).
fn rope_scaling(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Option<Value>, GgufError> {
    let factor_key = key("rope.scaling.factor");
    let factor = opt_f32(file, &factor_key)?;
    let Some(kind) = opt_str(file, &key("rope.scaling.type"))? else {
        return Ok(opt_f32(file, &key("rope.scale_linear"))?
            .filter(|&f| f != 1.0)
            .map(|f| json!({"rope_type": "linear", "factor": f32_json(f)})));
    };
    let require_factor = || {
        factor.ok_or_else(|| GgufError::MissingKey {
            path: file.display_path().to_string(),
            key: factor_key.clone(),
        })
    };
    match kind {
        "none" => Ok(None),
        "linear" => Ok(Some(
            json!({"rope_type": "linear", "factor": f32_json(require_factor()?)}),
        )),
        "yarn" => {
            let mut v = json!({"rope_type": "yarn", "factor": f32_json(require_factor()?)});
            if let (Some(orig), Value::Object(m)) = (
                opt_u32(file, &key("rope.scaling.original_context_length"))?,
                &mut v,
            ) {
                m.insert("original_max_position_embeddings".into(), json!(orig));
            }
            Ok(Some(v))
        }
        other => Err(GgufError::BadValue {
            path: file.display_path().to_string(),
            key: key("rope.scaling.type"),
            reason: format!(
                "unsupported RoPE scaling type `{other}` (supported: none, linear, yarn)"
            ),
        }),
    }
}

#[cfg(test)]
#[path = "to_hf_tests.rs"]
mod tests;
