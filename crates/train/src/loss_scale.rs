//! Dynamic loss scaling for f16-mixed training, as `torch.amp.GradScaler`.
//!
//! f16's smallest normal is 6.1e-5 and its largest 65504: the products of the backward pass
//! round the gradient flowing through them to f16, so small gradients flush to zero unless
//! the loss is first multiplied by a large scale. Each step the gradients are unscaled (÷ scale)
//! before clipping and the optimizer; when any is inf/NaN the step is skipped and the scale
//! multiplied by `backoff_factor`; after `growth_interval` good steps in a row it is
//! multiplied by `growth_factor`. bf16 has f32's exponent range and needs none of this.

use serde::{Deserialize, Serialize};

/// `torch.amp.GradScaler`'s settings and defaults (TOML `[trainer.loss_scale]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleConfig {
    /// The first scale. Default 65536 (2¹⁶).
    pub init_scale: f64,
    /// Multiplier after `growth_interval` steps without overflow. Default 2.
    pub growth_factor: f64,
    /// Multiplier after an overflow. Default 0.5.
    pub backoff_factor: f64,
    /// Good steps in a row before growing. Default 2000.
    pub growth_interval: usize,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl LossScaleConfig {
    /// Checks the settings (positive scale, growth > 1, backoff in (0, 1), interval ≥ 1).
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.init_scale.is_finite()
            && self.init_scale > 0.0
            && self.growth_factor.is_finite()
            && self.growth_factor > 1.0
            && self.backoff_factor > 0.0
            && self.backoff_factor < 1.0
            && self.growth_interval >= 1;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "trainer.loss_scale: init_scale must be finite and > 0, growth_factor > 1, \
                 backoff_factor in (0, 1), growth_interval ≥ 1 (got {self:?})"
            ))
        }
    }
}

/// The scaler's state, saved in `trainer_state.json` so a resumed run continues with the
/// same scale (torch's `GradScaler.state_dict()`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleState {
    /// The current scale.
    pub scale: f64,
    /// Good steps since the last growth or overflow.
    pub growth_tracker: usize,
    /// Steps skipped for an overflow so far.
    pub skipped_steps: usize,
}

/// What to do with one step's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaledStep {
    /// Finite: unscale by this factor (1 / scale) and step.
    Apply { unscale: f64 },
    /// Overflow: skip the optimizer step (the scale has been reduced).
    Skip,
}

/// `torch.amp.GradScaler`: see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    config: LossScaleConfig,
    state: LossScaleState,
}

impl GradScaler {
    /// A scaler at `config.init_scale`.
    pub fn new(config: LossScaleConfig) -> Self {
        Self {
            config,
            state: LossScaleState {
                scale: config.init_scale,
                growth_tracker: 0,
                skipped_steps: 0,
            },
        }
    }

    /// A scaler continuing from a saved state.
    pub fn from_state(config: LossScaleConfig, state: LossScaleState) -> Self {
        Self { config, state }
    }

    /// The factor the loss is multiplied by before `backward()`.
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// The state to save.
    pub fn state(&self) -> LossScaleState {
        self.state
    }

    /// Records one step whose *scaled* gradients have global norm `scaled_norm` (any inf/NaN
    /// in them makes it non-finite) and updates the scale: torch's `unscale_` + `step` +
    /// `update`.
    pub fn update(&mut self, scaled_norm: f64) -> ScaledStep {
        if scaled_norm.is_finite() {
            let unscale = 1.0 / self.state.scale;
            self.state.growth_tracker += 1;
            if self.state.growth_tracker >= self.config.growth_interval {
                self.state.scale *= self.config.growth_factor;
                self.state.growth_tracker = 0;
            }
            ScaledStep::Apply { unscale }
        } else {
            self.state.scale *= self.config.backoff_factor;
            self.state.growth_tracker = 0;
            self.state.skipped_steps += 1;
            ScaledStep::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overflow_halves_and_skips_good_steps_grow_after_the_interval() {
        let mut s = GradScaler::new(LossScaleConfig {
            growth_interval: 3,
            ..LossScaleConfig::default()
        });
        assert_eq!(s.update(f64::INFINITY), ScaledStep::Skip);
        assert_eq!(s.update(f64::NAN), ScaledStep::Skip);
        assert_eq!(s.scale(), 16384.0);
        assert_eq!(s.state().skipped_steps, 2);
        assert_eq!(
            s.update(1.0),
            ScaledStep::Apply {
                unscale: 1.0 / 16384.0
            }
        );
        s.update(1.0);
        assert_eq!(s.scale(), 16384.0);
        s.update(1.0);
        assert_eq!(s.scale(), 32768.0, "grows after 3 good steps");
        assert_eq!(s.state().growth_tracker, 0);
        s.update(1.0);
        s.update(f64::INFINITY);
        assert_eq!(s.scale(), 16384.0);
        assert_eq!(
            s.state().growth_tracker,
            0,
            "an overflow resets the tracker"
        );
    }

    #[test]
    fn resumes_from_a_saved_state() {
        let mut a = GradScaler::new(LossScaleConfig::default());
        a.update(f64::INFINITY);
        a.update(2.0);
        let b = GradScaler::from_state(LossScaleConfig::default(), a.state());
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_settings_torch_would_reject() {
        let bad = LossScaleConfig {
            backoff_factor: 1.5,
            ..LossScaleConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("backoff_factor"));
        LossScaleConfig::default().validate().unwrap();
    }
}
