//! Writing a model back as an HF checkpoint, one tensor at a time.
//!
//! [`hf_params`] lists every parameter by its HF name and PyTorch shape without reading it;
//! [`save_safetensors`] lays the file out from those shapes (`temper_formats::safetensors`)
//! and then reads, encodes and writes the tensors in file order, so the memory it needs beyond
//! the model is one tensor's f32 copy and its bytes — not the whole file, which for an 8B model
//! in bf16 is 16 GB beside the model. The bytes are those `safetensors::serialize` would write.

use std::io::{BufWriter, Write};
use std::path::Path;

use burn::module::Param;
use burn::tensor::Tensor;
use temper_backend::FloatPrecision;
use temper_formats::AtomicFile;
use temper_formats::safetensors::{self, TensorEntry};

use crate::checkpoint::{HostTensor, transpose};
use crate::llama::LlamaForCausalLM;
use crate::projection::Projection;
use crate::{Error, Result};

/// One parameter as an HF checkpoint names and shapes it; its values are read on demand.
pub struct HfParam<'m> {
    /// The HF key, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// The PyTorch shape (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    read: Box<dyn Fn() -> Vec<f32> + 'm>,
}

impl HfParam<'_> {
    /// The values, f32, row-major in [`HfParam::shape`] (a quantized base decoded).
    pub fn read(&self) -> HostTensor {
        HostTensor {
            shape: self.shape.clone(),
            data: (self.read)(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl std::fmt::Debug for HfParam<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfParam")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(burn::tensor::DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Every parameter of `model`'s base weights, in module order, unread. An adapter is not
/// listed (it is saved on its own as PEFT files, or merged first); a quantized base is listed
/// decoded (a dense model, never re-quantized).
pub fn hf_params(model: &LlamaForCausalLM) -> Vec<HfParam<'_>> {
    let mut out: Vec<HfParam<'_>> = Vec::new();
    fn vector<'m>(out: &mut Vec<HfParam<'m>>, key: String, w: &'m Param<Tensor<1>>) {
        out.push(HfParam {
            name: key,
            shape: vec![w.val().dims()[0]],
            read: Box::new(move || host(w.val())),
        });
    }
    fn linear<'m>(
        out: &mut Vec<HfParam<'m>>,
        name: &str,
        dims: (usize, usize),
        weight: Box<dyn Fn() -> Tensor<2> + 'm>,
        bias: Option<&'m Param<Tensor<1>>>,
    ) {
        let (d_in, d_out) = dims;
        out.push(HfParam {
            name: format!("{name}.weight"),
            shape: vec![d_out, d_in],
            // Stored `[in, out]`; PyTorch's layout is `[out, in]`.
            read: Box::new(move || transpose(&host(weight()), d_in, d_out)),
        });
        if let Some(b) = bias {
            vector(out, format!("{name}.bias"), b);
        }
    }
    fn proj<'m>(out: &mut Vec<HfParam<'m>>, name: &str, p: &'m Projection) {
        linear(
            out,
            name,
            p.dims(),
            Box::new(|| p.dense_weight()),
            p.bias.as_ref(),
        );
    }
    let m = &model.model;
    let e = &m.embed_tokens.weight;
    out.push(HfParam {
        name: "model.embed_tokens.weight".into(),
        shape: e.val().dims().to_vec(),
        read: Box::new(move || host(e.val())),
    });
    for (i, layer) in m.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let (a, mlp) = (&layer.self_attn, &layer.mlp);
        vector(
            &mut out,
            format!("{p}.input_layernorm.weight"),
            &layer.input_layernorm.weight,
        );
        for (n, pr) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
        ] {
            proj(&mut out, &format!("{p}.{n}"), pr);
        }
        for (n, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
            if let Some(norm) = norm {
                vector(&mut out, format!("{p}.self_attn.{n}.weight"), &norm.weight);
            }
        }
        vector(
            &mut out,
            format!("{p}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm.weight,
        );
        for (n, pr) in [
            ("mlp.gate_proj", &mlp.gate_proj),
            ("mlp.up_proj", &mlp.up_proj),
            ("mlp.down_proj", &mlp.down_proj),
        ] {
            proj(&mut out, &format!("{p}.{n}"), pr);
        }
    }
    vector(&mut out, "model.norm.weight".into(), &m.norm.weight);
    if let Some(head) = &model.lm_head {
        let [d_in, d_out] = head.weight.val().dims();
        linear(
            &mut out,
            "lm_head",
            (d_in, d_out),
            Box::new(move || head.weight.val()),
            head.bias.as_ref(),
        );
    }
    out
}

/// Every parameter with its HF name, PyTorch shape and f32 values (linear weights transposed
/// back to `[out, in]`), all in memory. [`save_safetensors`] writes the same tensors without
/// holding them.
pub fn hf_tensors(model: &LlamaForCausalLM) -> Vec<(String, HostTensor)> {
    hf_params(model)
        .into_iter()
        .map(|p| (p.name.clone(), p.read()))
        .collect()
}

/// [`hf_tensors`] one tensor at a time, in the same order: memory for one tensor's f32 copy
/// instead of the whole model's (fingerprinting an 8B model's frozen base).
pub fn for_each_hf_tensor_of(model: &LlamaForCausalLM, mut sink: impl FnMut(String, HostTensor)) {
    for p in hf_params(model) {
        let t = p.read();
        sink(p.name, t);
    }
}

/// Save the weights as one safetensors file in `dtype` (HF names, PyTorch layout), atomically,
/// streaming one tensor at a time.
///
/// # Errors
/// I/O errors naming the file.
pub fn save_safetensors(
    model: &LlamaForCausalLM,
    path: &Path,
    dtype: FloatPrecision,
) -> Result<()> {
    let (name, width) = match dtype {
        FloatPrecision::F32 => ("F32", 4),
        FloatPrecision::BF16 => ("BF16", 2),
        FloatPrecision::F16 => ("F16", 2),
    };
    let params = hf_params(model);
    let entries: Vec<TensorEntry<'_>> = params
        .iter()
        .map(|p| TensorEntry {
            name: &p.name,
            dtype: name,
            shape: &p.shape,
            bytes: (p.numel() * width) as u64,
        })
        .collect();
    let layout = safetensors::layout(path, &entries)?;
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = AtomicFile::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&layout.head).map_err(io)?;
    for &i in &layout.order {
        let values = params[i].read().data;
        let mut bytes = Vec::with_capacity(values.len() * width);
        for v in &values {
            match dtype {
                FloatPrecision::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                FloatPrecision::BF16 => {
                    bytes.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())
                }
                FloatPrecision::F16 => {
                    bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())
                }
            }
        }
        drop(values);
        w.write_all(&bytes).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    Ok(file.commit()?)
}
