//! Injecting adapters into a model, switching them off, merging them into the base weights.

use burn::module::{Module, Param};
use burn::nn::DropoutConfig;
use burn::tensor::{DType, Device, Distribution, Tensor};
use temper_llm_arch::{LlamaForCausalLM, LoraAdapter, Projection};

use temper_formats::peft::{InitLoraWeights, LayerKind, LoraConfig};

use crate::{LoraConfigExt, LoraError, Result};

/// Every projection of the model with its module path (HF / PEFT naming, without PEFT's
/// `base_model.model.` prefix), in checkpoint order.
pub fn projections(model: &LlamaForCausalLM) -> Vec<(String, &Projection)> {
    let mut out = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        let (a, m) = (&layer.self_attn, &layer.mlp);
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj"), &a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &a.o_proj));
        out.push((format!("{p}.mlp.gate_proj"), &m.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &m.down_proj));
    }
    out
}

/// Mutable [`projections`].
pub fn projections_mut(model: &mut LlamaForCausalLM) -> Vec<(String, &mut Projection)> {
    let mut out = Vec::new();
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
        out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
    }
    out
}

/// The paths of the projections that carry an adapter.
pub fn adapter_paths(model: &LlamaForCausalLM) -> Vec<String> {
    projections(model)
        .into_iter()
        .filter(|(_, p)| p.lora.is_some())
        .map(|(path, _)| path)
        .collect()
}

/// Add adapters to the projections `config.target_modules` selects and freeze everything
/// else, PEFT's `get_peft_model`.
///
/// Base parameters get `require_grad = false`: autodiff then computes no gradient for them and
/// the optimiser keeps no state for them (burn's optimisers only see parameters with a
/// gradient). Adapter weights (and `modules_to_save`) are the only trainable parameters.
/// Adapters are created on `device` in the base weight's dtype.
///
/// # Errors
/// An invalid or unsupported config, a target list that matches nothing, or a model that
/// already carries an adapter on a targeted module.
pub fn inject(
    model: LlamaForCausalLM,
    config: &LoraConfig,
    device: &Device,
) -> Result<LlamaForCausalLM> {
    inject_with_dtype(model, config, device, None)
}

/// [`inject`] with the adapters stored in `adapter_dtype` (`None`: the base weight's dtype).
/// Mixed-precision training keeps f32 adapters (and so f32 optimizer state) on a bf16 or f16
/// base, PEFT's `autocast_adapter_dtype=True`.
///
/// # Errors
/// As [`inject`].
pub fn inject_with_dtype(
    model: LlamaForCausalLM,
    config: &LoraConfig,
    device: &Device,
    adapter_dtype: Option<DType>,
) -> Result<LlamaForCausalLM> {
    config.validate()?;
    let matcher = config
        .target_matcher()?
        .ok_or_else(|| LoraError::NoTargets("null".into()))?;
    let mut model = model.no_grad();
    let mut injected = 0usize;
    for (path, proj) in projections_mut(&mut model) {
        // The projections are the model's linear layers (all-linear's candidates).
        if !matcher.matches(&path, LayerKind::Linear) {
            continue;
        }
        if proj.lora.is_some() {
            return Err(LoraError::AlreadyInjected(path));
        }
        let (d_in, d_out) = proj.dims();
        let dtype = adapter_dtype.unwrap_or_else(|| proj.weight.val().dtype());
        let r = config.rank_for(&path);
        let (a, b) = init_weights(&config.init_lora_weights, d_in, d_out, r, device);
        proj.lora = Some(LoraAdapter {
            lora_a: Param::from_tensor(a.cast(dtype)),
            lora_b: Param::from_tensor(b.cast(dtype)),
            scale: config.scale_for(&path),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            enabled: true,
            merged: false,
        });
        injected += 1;
    }
    if injected == 0 {
        let described = config
            .target_modules
            .as_ref()
            .map_or_else(|| "null".into(), |t| t.describe());
        return Err(LoraError::NoTargets(described));
    }
    for m in config.modules_to_save.iter().flatten() {
        model = unfreeze_module(model, m)?;
    }
    Ok(model)
}

/// `modules_to_save`: the module is trained (and saved) whole.
pub(crate) fn unfreeze_module(mut model: LlamaForCausalLM, name: &str) -> Result<LlamaForCausalLM> {
    match name {
        "lm_head" => {
            let head = model.lm_head.as_mut().ok_or_else(|| {
                LoraError::Unsupported(
                    "modules_to_save lm_head on a model with tied embeddings".into(),
                )
            })?;
            head.weight = head.weight.clone().set_require_grad(true);
        }
        "embed_tokens" | "model.embed_tokens" => {
            let e = &mut model.model.embed_tokens;
            e.weight = e.weight.clone().set_require_grad(true);
        }
        other => {
            return Err(LoraError::Unsupported(format!("modules_to_save {other:?}")));
        }
    }
    Ok(model)
}

/// Initial `(lora_a [in, r], lora_b [r, out])` following PEFT's `reset_lora_parameters`.
fn init_weights(
    init: &InitLoraWeights,
    d_in: usize,
    d_out: usize,
    r: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    // nn.Linear's default, Kaiming-uniform with a = √5 on PEFT's `[r, in]` lora_A: fan_in =
    // in, gain = √(2 / (1 + 5)), bound = gain·√(3 / fan_in) = 1/√in.
    let kaiming = |fan_in: usize, shape: [usize; 2]| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Tensor::<2>::random(shape, Distribution::Uniform(-bound, bound), device)
    };
    let zeros = || Tensor::<2>::zeros([r, d_out], device);
    match init {
        InitLoraWeights::Bool(true) => (kaiming(d_in, [d_in, r]), zeros()),
        // PEFT leaves both at nn.Linear's init: lora_B `[out, r]` has fan_in r.
        InitLoraWeights::Bool(false) => (kaiming(d_in, [d_in, r]), kaiming(r, [r, d_out])),
        // "gaussian" (validated): std 1/r.
        InitLoraWeights::Method(_) => (
            Tensor::<2>::random([d_in, r], Distribution::Normal(0.0, 1.0 / r as f64), device),
            zeros(),
        ),
    }
}

/// Turn every adapter on or off; off, the model computes exactly its base (the DPO reference
/// without a second copy of the weights). Returns the number of adapters switched.
///
/// `modules_to_save` are not switched: unlike PEFT, Temper keeps no untrained copy of them.
///
/// # Errors
/// [`LoraError::NotInjected`] without adapters (a "reference" equal to the policy would make a
/// DPO loss silently constant); [`LoraError::Merged`] when disabling a merged adapter.
pub fn set_adapters_enabled(model: &mut LlamaForCausalLM, enabled: bool) -> Result<usize> {
    let mut n = 0;
    for (path, proj) in projections_mut(model) {
        if let Some(lora) = proj.lora.as_mut() {
            if lora.merged && !enabled {
                return Err(LoraError::Merged(path));
            }
            lora.enabled = enabled;
            n += 1;
        }
    }
    if n == 0 {
        return Err(LoraError::NotInjected);
    }
    Ok(n)
}

/// Run `f` with adapters disabled, then enable them again (even if `f` fails).
///
/// # Errors
/// Those of [`set_adapters_enabled`].
pub fn with_adapters_disabled<T>(
    model: &mut LlamaForCausalLM,
    f: impl FnOnce(&LlamaForCausalLM) -> T,
) -> Result<T> {
    set_adapters_enabled(model, false)?;
    let out = f(model);
    set_adapters_enabled(model, true)?;
    Ok(out)
}

/// Number of trainable (gradient-requiring) parameter elements: the adapters plus
/// `modules_to_save`.
pub fn num_trainable_params(model: &LlamaForCausalLM) -> usize {
    #[derive(Default)]
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.val().shape().num_elements();
            }
        }
    }
    let mut c = Count::default();
    model.visit(&mut c);
    c.0
}

/// `scale · A·B` in f32, detached from the autodiff graph.
fn dense_delta_f32(lora: &LoraAdapter) -> Tensor<2> {
    let a = lora.lora_a.val().detach().cast(DType::F32);
    let b = lora.lora_b.val().detach().cast(DType::F32);
    a.matmul(b) * lora.scale
}

fn add_to_weight(proj: &mut Projection, delta: Tensor<2>) {
    // A quantized base merges into its decoded f32 weight: the result is dense, never
    // re-quantized (re-quantizing a merged QLoRA model loses the update, peft#1080).
    proj.dequantize_base();
    proj.weight = proj.weight.clone().map(|w| {
        let dtype = w.dtype();
        let require_grad = w.is_require_grad();
        (w.detach().cast(DType::F32) + delta)
            .cast(dtype)
            .set_require_grad(require_grad)
    });
}

/// Add every adapter's update into its base weight (`W + scale·A·B`, computed in f32 and
/// rounded once to the weight's dtype); the adapters stay, marked merged, so the forward does
/// not add them twice and [`unmerge`] can take them out again. Disabled adapters are merged
/// too.
///
/// # Errors
/// [`LoraError::NotInjected`] without adapters.
pub fn merge(mut model: LlamaForCausalLM) -> Result<LlamaForCausalLM> {
    let mut n = 0;
    for (_, proj) in projections_mut(&mut model) {
        let Some(lora) = proj.lora.as_ref() else {
            continue;
        };
        n += 1;
        if lora.merged {
            continue;
        }
        let delta = dense_delta_f32(lora);
        add_to_weight(proj, delta);
        if let Some(lora) = proj.lora.as_mut() {
            lora.merged = true;
        }
    }
    if n == 0 {
        return Err(LoraError::NotInjected);
    }
    Ok(model)
}

/// Subtract merged updates again (exact up to floating-point rounding, as in PEFT).
///
/// # Errors
/// [`LoraError::NotInjected`] without adapters.
pub fn unmerge(mut model: LlamaForCausalLM) -> Result<LlamaForCausalLM> {
    let mut n = 0;
    for (_, proj) in projections_mut(&mut model) {
        let Some(lora) = proj.lora.as_ref() else {
            continue;
        };
        n += 1;
        if !lora.merged {
            continue;
        }
        let delta = dense_delta_f32(lora).neg();
        add_to_weight(proj, delta);
        if let Some(lora) = proj.lora.as_mut() {
            lora.merged = false;
        }
    }
    if n == 0 {
        return Err(LoraError::NotInjected);
    }
    Ok(model)
}

/// Remove the adapters without merging them (PEFT `unload`): the base model again.
pub fn unload(mut model: LlamaForCausalLM) -> LlamaForCausalLM {
    for (_, proj) in projections_mut(&mut model) {
        proj.lora = None;
    }
    model
}

/// Merge every adapter into its base weight and drop the adapters (PEFT `merge_and_unload`):
/// a plain model whose forward equals the adapted one, saveable as an HF checkpoint. The
/// parameters keep their `require_grad` flags (frozen); call `set_require_grad(true)` /
/// `Module::train` style helpers to fine-tune it further.
///
/// # Errors
/// [`LoraError::NotInjected`] without adapters.
pub fn merge_and_unload(model: LlamaForCausalLM) -> Result<LlamaForCausalLM> {
    Ok(unload(merge(model)?))
}
