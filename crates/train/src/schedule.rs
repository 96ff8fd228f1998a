//! Learning-rate schedules with linear warm-up, as HF's `get_scheduler` computes them.
//!
//! HF multiplies the peak LR by `lr_lambda(step)` where `step` counts optimizer steps taken so
//! far (the first update uses `lr_lambda(0)`, which is 0 with warm-up):
//! * warm-up: `step / max(1, warmup)` while `step < warmup`;
//! * `linear`: `max(0, (total − step) / max(1, total − warmup))`;
//! * `cosine`: `max(0, ½(1 + cos(π · 2 · 0.5 · progress)))`, `progress = (step − warmup) /
//!   max(1, total − warmup)`;
//! * `constant_with_warmup`: 1 after warm-up.

use crate::config::ScheduleKind;

/// A schedule over `total` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total optimizer steps.
    pub total: usize,
    /// Shape after warm-up.
    pub kind: ScheduleKind,
}

impl LrSchedule {
    /// Warm-up steps HF derives: `warmup_steps` when positive, else `ceil(ratio · total)`.
    pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total: usize) -> usize {
        if warmup_steps > 0 {
            warmup_steps
        } else {
            (warmup_ratio * total as f64).ceil() as usize
        }
    }

    /// The multiplier of the peak LR after `step` optimizer steps.
    pub fn factor(&self, step: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup as f64, self.total as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - warmup) / (total - warmup).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * 0.5 * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate of the update that follows `step` completed steps.
    pub fn lr(&self, step: usize) -> f64 {
        self.peak * self.factor(step)
    }
}
