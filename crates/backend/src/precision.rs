//! The training precision policy (PyTorch AMP's meanings) and the autocast scope that carries
//! its compute dtype into the products.
//!
//! | precision    | weights (trained)  | frozen weights | products                         | norms, softmax, losses, optimizer |
//! |--------------|--------------------|----------------|----------------------------------|-----------------------------------|
//! | `f32`        | f32                | f32            | f32                              | f32                               |
//! | `bf16`       | bf16               | bf16           | bf16 operands, f32 accumulation  | bf16 storage (optimizer state too) |
//! | `f16`        | f16                | f16            | f16 operands, f32 accumulation   | f16 storage                       |
//! | `bf16-mixed` | f32 master copy    | bf16           | bf16 operands, f32 accumulation  | f32                               |
//! | `f16-mixed`  | f32 master copy    | f16            | f16 operands, f32 accumulation   | f32, with dynamic loss scaling    |
//!
//! On the CPU (Flex) the activations between products stay f32 in every mode: Temper's fused
//! CPU kernels (RMSNorm, rotary, SwiGLU, attention, the LM head) compute in f32 anyway, and
//! rounding a product's *operands* to the half type — which is what a bf16 matmul with f32
//! accumulation does — is where the arithmetic rate and the halved weight bytes come from.
//! Where torch's autocast rounds each product's *output* to bf16 as well, Temper keeps it in f32:
//! the same operand rounding, one rounding fewer (see `docs/architecture.md`, "Precision").
//!
//! On GPU backends (CubeCL: wgpu, cuda) the products cast their operands to the half type and
//! run burn's matmul, which accumulates in f32 and rounds its output to the half type once
//! (torch's rounding); the activations are f32 in the mixed modes ([`TrainPrecision::autocast`])
//! and in the storage dtype in the pure ones. wgpu has f16 but no bf16 (WGSL has no bf16 type):
//! [`TrainPrecision::check`] refuses `bf16` and `bf16-mixed` there.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::{BackendError, FloatPrecision};

/// A 16-bit float type products can round their operands to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HalfType {
    /// bfloat16: f32's exponent range, 8 significant bits.
    Bf16,
    /// IEEE half: 11 significant bits, largest finite value 65504 (hence loss scaling).
    F16,
}

impl HalfType {
    /// `x` rounded to this type (nearest, ties to even; NaN stays NaN, overflow gives ±inf),
    /// as the f32 it represents exactly.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Self::Bf16 => burn::tensor::bf16::from_f32(x).to_f32(),
            Self::F16 => burn::tensor::f16::from_f32(x).to_f32(),
        }
    }

    /// The storage precision of this type.
    pub fn precision(self) -> FloatPrecision {
        match self {
            Self::Bf16 => FloatPrecision::BF16,
            Self::F16 => FloatPrecision::F16,
        }
    }

    /// The half type a tensor of `dtype` is stored in, if any.
    pub fn of(dtype: burn::tensor::DType) -> Option<Self> {
        match dtype {
            burn::tensor::DType::BF16 => Some(Self::Bf16),
            burn::tensor::DType::F16 => Some(Self::F16),
            _ => None,
        }
    }
}

/// How a training run stores and computes (TOML `precision`, `temper train --precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainPrecision {
    /// Everything in f32 (the reference).
    #[default]
    F32,
    /// Pure bf16: weights, gradients and optimizer state stored in bf16 (Lightning's
    /// `bf16-true`).
    Bf16,
    /// Pure f16 (no loss scaling; prefer `f16-mixed`).
    F16,
    /// AMP with bf16: f32 master weights, gradients and AdamW state; bf16 products.
    Bf16Mixed,
    /// AMP with f16: as `bf16-mixed` with f16 products and a dynamic loss scale.
    F16Mixed,
}

impl TrainPrecision {
    /// Every variant, in the order the CLI lists them.
    pub const ALL: [Self; 5] = [
        Self::F32,
        Self::Bf16,
        Self::F16,
        Self::Bf16Mixed,
        Self::F16Mixed,
    ];

    /// The dtype trained weights (and their gradients and optimizer state) are stored in.
    pub fn master(self) -> FloatPrecision {
        match self {
            Self::F32 | Self::Bf16Mixed | Self::F16Mixed => FloatPrecision::F32,
            Self::Bf16 => FloatPrecision::BF16,
            Self::F16 => FloatPrecision::F16,
        }
    }

    /// The dtype frozen weights (a LoRA base) are stored in: the compute dtype.
    pub fn frozen(self) -> FloatPrecision {
        match self.compute() {
            Some(half) => half.precision(),
            None => FloatPrecision::F32,
        }
    }

    /// The half type products round their operands to, if any.
    pub fn compute(self) -> Option<HalfType> {
        match self {
            Self::F32 => None,
            Self::Bf16 | Self::Bf16Mixed => Some(HalfType::Bf16),
            Self::F16 | Self::F16Mixed => Some(HalfType::F16),
        }
    }

    /// Whether master weights are kept in f32 while products run in a half type.
    pub fn is_mixed(self) -> bool {
        matches!(self, Self::Bf16Mixed | Self::F16Mixed)
    }

    /// Whether the loss is scaled dynamically (`torch.amp.GradScaler`): f16-mixed only.
    pub fn loss_scaling(self) -> bool {
        self == Self::F16Mixed
    }
}

impl FromStr for TrainPrecision {
    type Err = BackendError;

    /// `f32`, `bf16`, `f16`, `bf16-mixed`, `f16-mixed`, and Lightning's spellings (`32-true`,
    /// `bf16-true`, `16-true`, `16-mixed`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "f32" | "fp32" | "float32" | "32" | "32-true" => Ok(Self::F32),
            "bf16" | "bfloat16" | "bf16-true" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" | "16-true" => Ok(Self::F16),
            "bf16-mixed" | "amp-bf16" => Ok(Self::Bf16Mixed),
            "f16-mixed" | "fp16-mixed" | "16-mixed" | "amp-f16" => Ok(Self::F16Mixed),
            _ => Err(BackendError::InvalidPrecision(s.to_string())),
        }
    }
}

impl fmt::Display for TrainPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Bf16Mixed => "bf16-mixed",
            Self::F16Mixed => "f16-mixed",
        })
    }
}

/// What an [`autocast`] scope sets: the products' half type, and whether the activations
/// between products are kept in f32 (mixed precision) where the backend would otherwise keep
/// them in the weights' storage dtype (GPU backends, see `kernels::activation_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scope {
    half: Option<HalfType>,
    f32_activations: bool,
}

impl Scope {
    const OFF: Self = Self {
        half: None,
        f32_activations: false,
    };
}

thread_local! {
    static AUTOCAST: Cell<Scope> = const { Cell::new(Scope::OFF) };
}

/// The half type the products of this thread round their operands to (`None`: f32), as set
/// by [`autocast`].
pub fn autocast_type() -> Option<HalfType> {
    AUTOCAST.with(Cell::get).half
}

/// Whether the current scope keeps the activations between products in f32: inside
/// [`autocast`] with a half type and inside a mixed mode's [`TrainPrecision::autocast`], not
/// inside a pure `bf16`/`f16` one (whose activations are stored in the half type on GPU
/// backends).
pub(crate) fn autocast_keeps_f32_activations() -> bool {
    AUTOCAST.with(Cell::get).f32_activations
}

/// Runs the products of this thread with operands rounded to `half` until the guard drops
/// (`torch.autocast`): f32 tensors stay f32, products accumulate in f32, and the activations
/// between products are f32 on every backend (a half-type weight, e.g. a frozen LoRA base,
/// does not make them half). `None` turns it off inside an outer scope. Nested scopes restore
/// the outer setting.
///
/// Backward passes record the type their forward ran with, so `loss.backward()` need not be
/// inside the scope (it may be).
#[must_use = "autocast lasts while the guard lives"]
pub fn autocast(half: Option<HalfType>) -> AutocastGuard {
    enter(Scope {
        half,
        f32_activations: half.is_some(),
    })
}

impl TrainPrecision {
    /// The [`autocast`] scope of a training step in this precision: products round to
    /// [`TrainPrecision::compute`]; the mixed modes keep the activations in f32 (as
    /// [`autocast`]), the pure ones leave them in the storage dtype.
    #[must_use = "autocast lasts while the guard lives"]
    pub fn autocast(self) -> AutocastGuard {
        enter(Scope {
            half: self.compute(),
            f32_activations: self.is_mixed(),
        })
    }

    /// Checks that `device` computes in this precision's half type (storage and arithmetic),
    /// before anything is loaded: `bf16`/`bf16-mixed` on wgpu (WGSL has no bf16 type) are
    /// refused here rather than failing, or silently computing in f32, later.
    ///
    /// # Errors
    /// [`BackendError::UnsupportedPrecision`] naming the precision, the device (its `Debug`
    /// form) and what to use instead.
    pub fn check(self, device: &Device) -> Result<(), BackendError> {
        self.check_named(device, &format!("{device:?}"))
    }

    /// [`TrainPrecision::check`] with the device named as the user wrote it.
    pub(crate) fn check_named(self, device: &Device, name: &str) -> Result<(), BackendError> {
        let Some(half) = self.compute() else {
            return Ok(());
        };
        if device.supports_dtype(half.precision().dtype()) {
            return Ok(());
        }
        let f16 = device.supports_dtype(FloatPrecision::F16.dtype());
        let instead = if half == HalfType::Bf16 && f16 {
            "`f16-mixed` (f32 master weights, f16 products, dynamic loss scaling) or `f32`"
        } else {
            "`f32`"
        };
        Err(BackendError::UnsupportedPrecision {
            precision: self.to_string(),
            device: name.to_string(),
            half: half.precision().to_string(),
            instead,
        })
    }
}

fn enter(scope: Scope) -> AutocastGuard {
    let previous = AUTOCAST.with(|c| c.replace(scope));
    AutocastGuard { previous }
}

/// Restores the previous [`autocast`] setting when dropped.
#[derive(Debug)]
pub struct AutocastGuard {
    previous: Scope,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_spelling_and_round_trips() {
        for p in TrainPrecision::ALL {
            assert_eq!(p.to_string().parse::<TrainPrecision>().unwrap(), p);
        }
        assert_eq!(
            "16-mixed".parse::<TrainPrecision>().unwrap(),
            TrainPrecision::F16Mixed
        );
        assert_eq!(
            "BF16_mixed".parse::<TrainPrecision>().unwrap(),
            TrainPrecision::Bf16Mixed
        );
        let err = "fp8".parse::<TrainPrecision>().unwrap_err().to_string();
        assert!(err.contains("`fp8`") && err.contains("bf16-mixed"), "{err}");
    }

    #[test]
    fn mixed_keeps_f32_masters_and_half_frozen_weights() {
        use TrainPrecision::*;
        assert_eq!(Bf16Mixed.master(), FloatPrecision::F32);
        assert_eq!(Bf16Mixed.frozen(), FloatPrecision::BF16);
        assert_eq!(F16Mixed.frozen(), FloatPrecision::F16);
        assert_eq!(Bf16.master(), FloatPrecision::BF16);
        assert_eq!(F32.frozen(), FloatPrecision::F32);
        assert!(F16Mixed.loss_scaling() && !Bf16Mixed.loss_scaling());
        assert_eq!(F32.compute(), None);
    }

    #[test]
    fn autocast_scopes_nest_and_restore() {
        assert_eq!(autocast_type(), None);
        {
            let _outer = autocast(Some(HalfType::Bf16));
            assert_eq!(autocast_type(), Some(HalfType::Bf16));
            {
                let _inner = autocast(None);
                assert_eq!(autocast_type(), None);
            }
            assert_eq!(autocast_type(), Some(HalfType::Bf16));
            // Other threads are not affected.
            let other = std::thread::spawn(autocast_type).join().unwrap();
            assert_eq!(other, None);
        }
        assert_eq!(autocast_type(), None);
    }

    #[test]
    fn mixed_scopes_keep_f32_activations_and_pure_ones_do_not() {
        assert!(!autocast_keeps_f32_activations());
        {
            let _mixed = TrainPrecision::F16Mixed.autocast();
            assert_eq!(autocast_type(), Some(HalfType::F16));
            assert!(autocast_keeps_f32_activations());
            {
                let _pure = TrainPrecision::Bf16.autocast();
                assert_eq!(autocast_type(), Some(HalfType::Bf16));
                assert!(!autocast_keeps_f32_activations());
            }
            assert!(autocast_keeps_f32_activations());
            let _f32 = TrainPrecision::F32.autocast();
            assert_eq!(autocast_type(), None);
            assert!(!autocast_keeps_f32_activations());
        }
        let _torch = autocast(Some(HalfType::Bf16));
        assert!(autocast_keeps_f32_activations());
    }
}
