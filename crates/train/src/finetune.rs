//! How the policy is fine-tuned: which parameters train, whether the method provides a
//! reference forward of its own, and what a checkpoint needs besides the base weights.
//!
//! * [`FullFineTuning`]: every parameter trains; no built-in reference.
//! * [`LoraFineTuning`] (crate `temper-lora`): only the adapter matrices (and any
//!   `modules_to_save`) train, the base stays frozen and bit-identical; the reference forward is
//!   the same model with its adapters disabled, so DPO and KTO need no second copy of the
//!   model; checkpoints carry the adapter in PEFT's format next to the (unchanged) base weights.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Int, Tensor};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_lora::LoraConfig;

use crate::Result;

/// A fine-tuning method.
pub trait FineTuning: std::fmt::Debug {
    /// A short name for logs (`full`, `lora`).
    fn name(&self) -> &'static str;

    /// The parameters the optimizer updates; `None` means every float parameter that requires
    /// a gradient. Gradients of the others are dropped before accumulation, so frozen weights
    /// get no optimizer state.
    fn trainable(&self, model: &LlamaForCausalLM) -> Option<Vec<ParamId>>;

    /// Final hidden states of the *reference* model for DPO/KTO, when the method has one built
    /// in (LoRA: the same weights with the adapters disabled, computed without gradients).
    /// `None`: the trainer needs a separate reference model or a reference cache.
    fn reference_hidden(
        &self,
        model: &LlamaForCausalLM,
        input_ids: Tensor<2, Int>,
        options: &ForwardOptions,
    ) -> Option<Result<Tensor<3>>>;

    /// Writes what a checkpoint needs besides the base weights (`model.safetensors`, always
    /// written) into the checkpoint directory `dir` (LoRA: the adapter files). Default: nothing.
    ///
    /// # Errors
    /// I/O failures.
    fn save_checkpoint_extra(&self, _model: &LlamaForCausalLM, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Rebuilds the trained model from a checkpoint's base weights `base` (freshly loaded, no
    /// adapters) and the extra files in `dir` (LoRA: re-injects the saved adapter). Default:
    /// `base` as is.
    ///
    /// # Errors
    /// Missing or malformed extra files.
    fn restore_checkpoint(&self, base: LlamaForCausalLM, _dir: &Path) -> Result<LlamaForCausalLM> {
        Ok(base)
    }

    /// Whether a checkpoint must hold the model's weights. `false` when training changes none
    /// of them (LoRA without `modules_to_save`): the checkpoint then keeps a fingerprint of
    /// the frozen weights only, and a resume takes them from the model it resumes into
    /// ([`FineTuning::frozen_base`]) once the fingerprint matches. Default: `true`.
    fn checkpoint_needs_weights(&self) -> bool {
        true
    }

    /// The model without what training added (LoRA: the adapters unloaded). Default: as is.
    fn frozen_base(&self, model: LlamaForCausalLM) -> LlamaForCausalLM {
        model
    }
}

/// Every parameter trains; no built-in reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct FullFineTuning;

impl FineTuning for FullFineTuning {
    fn name(&self) -> &'static str {
        "full"
    }

    fn trainable(&self, _model: &LlamaForCausalLM) -> Option<Vec<ParamId>> {
        None
    }

    fn reference_hidden(
        &self,
        _model: &LlamaForCausalLM,
        _input_ids: Tensor<2, Int>,
        _options: &ForwardOptions,
    ) -> Option<Result<Tensor<3>>> {
        None
    }
}

/// The ids of every float parameter of `module`, in visit order.
pub fn param_ids<M: Module>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// LoRA (PEFT semantics, crate `temper-lora`): the trainable parameters are the adapter
/// matrices (plus the config's `modules_to_save`), the reference forward of DPO/KTO is the
/// policy with its adapters disabled ([`Reference::FromFineTuning`]), and a checkpoint stores
/// the adapter as `adapter_config.json` + `adapter_model.safetensors` next to the base weights.
///
/// Use [`LoraFineTuning::inject`] on the model before handing it to the trainer, then
/// `Trainer::with_fine_tuning(Box::new(lora))`.
///
/// [`Reference::FromFineTuning`]: crate::Reference::FromFineTuning
#[derive(Debug, Clone)]
pub struct LoraFineTuning {
    config: LoraConfig,
}

impl LoraFineTuning {
    /// LoRA with `config` (validated when adapters are injected).
    pub fn new(config: LoraConfig) -> Self {
        Self { config }
    }

    /// The adapter configuration (what `adapter_config.json` holds).
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Adds adapters to `model` on `device` and freezes everything else.
    ///
    /// # Errors
    /// An invalid or unsupported config, or targets matching no projection.
    pub fn inject(&self, model: LlamaForCausalLM, device: &Device) -> Result<LlamaForCausalLM> {
        Ok(temper_lora::inject(model, &self.config, device)?)
    }

    /// [`inject`](Self::inject) with the adapters stored in `dtype` (`None`: the base's dtype);
    /// mixed precision keeps f32 adapters on a half-type base.
    ///
    /// # Errors
    /// As [`inject`](Self::inject).
    pub fn inject_with_dtype(
        &self,
        model: LlamaForCausalLM,
        device: &Device,
        dtype: Option<burn::tensor::DType>,
    ) -> Result<LlamaForCausalLM> {
        Ok(temper_lora::inject_with_dtype(
            model,
            &self.config,
            device,
            dtype,
        )?)
    }
}

/// The ids of the adapter matrices of `model`, in visit order.
pub fn adapter_param_ids(model: &LlamaForCausalLM) -> Vec<ParamId> {
    temper_lora::projections(model)
        .into_iter()
        .filter_map(|(_, p)| p.lora.as_ref())
        .flat_map(|l| [l.lora_a.id, l.lora_b.id])
        .collect()
}

impl FineTuning for LoraFineTuning {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn trainable(&self, model: &LlamaForCausalLM) -> Option<Vec<ParamId>> {
        let mut ids = adapter_param_ids(model);
        for m in self.config.modules_to_save.iter().flatten() {
            match m.as_str() {
                "lm_head" => ids.extend(model.lm_head.iter().map(|h| h.weight.id)),
                "embed_tokens" | "model.embed_tokens" => {
                    ids.push(model.model.embed_tokens.weight.id);
                }
                _ => {}
            }
        }
        Some(ids)
    }

    fn reference_hidden(
        &self,
        model: &LlamaForCausalLM,
        input_ids: Tensor<2, Int>,
        options: &ForwardOptions,
    ) -> Option<Result<Tensor<3>>> {
        // A clone shares the weight buffers (burn tensors are reference-counted handles), so
        // this is the same weights with the adapters switched off, not a second model.
        let run = || -> Result<Tensor<3>> {
            let mut reference = model.clone().no_grad();
            temper_lora::set_adapters_enabled(&mut reference, false)?;
            Ok(reference.forward_hidden(input_ids, options, None)?.detach())
        };
        Some(run())
    }

    fn save_checkpoint_extra(&self, model: &LlamaForCausalLM, dir: &Path) -> Result<()> {
        Ok(temper_lora::save_adapter(model, &self.config, dir)?)
    }

    fn checkpoint_needs_weights(&self) -> bool {
        // Only the adapters train; `modules_to_save` would change base weights.
        !self
            .config
            .modules_to_save
            .as_ref()
            .is_none_or(Vec::is_empty)
    }

    fn frozen_base(&self, model: LlamaForCausalLM) -> LlamaForCausalLM {
        temper_lora::unload(model)
    }

    fn restore_checkpoint(&self, base: LlamaForCausalLM, dir: &Path) -> Result<LlamaForCausalLM> {
        let device = base.device();
        let (mut model, _) = temper_lora::load_adapter(base, dir, &device)?;
        // The loader hands back transposed views of PEFT's `[r, in]` / `[out, r]` tensors; a
        // fresh contiguous copy makes the resumed run compute exactly what the uninterrupted
        // one does (strided operands change the matmul's rounding in the last bit).
        let contiguous = |p: &Param<Tensor<2>>| {
            let t = p.val();
            Param::from_tensor(Tensor::from_data(t.to_data(), &t.device()))
        };
        for (_, proj) in temper_lora::projections_mut(&mut model) {
            if let Some(lora) = proj.lora.as_mut() {
                lora.lora_a = contiguous(&lora.lora_a);
                lora.lora_b = contiguous(&lora.lora_b);
            }
        }
        Ok(model)
    }
}
