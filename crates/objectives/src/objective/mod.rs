//! Objectives behind one trait: everything a training loop must know about a loss.
//!
//! A [`TrainObjective`] says which rows it reads ([`RowKind`]), whether it compares against a
//! reference, how its loss scales across gradient accumulation ([`LossScaling`]), how rows
//! become a micro-batch ([`TrainObjective::collate`]) and, given a policy and a micro-batch,
//! the loss with TRL's metric names ([`TrainObjective::loss`]). Temper's objectives implement it
//! next to their loss functions (`Cpt`/`Sft` in `causal_lm.rs`, `Dpo` in `dpo.rs`, `Orpo`,
//! `Cpo`/`Simpo`, `Kto`); [`ObjectiveConfig`] is the one table that maps the TOML/CLI names to
//! them. A trainer written against the trait — `temper-train`'s or yours — trains any of them,
//! and an objective of your own plugs into `temper-train` without changing it
//! (`examples/custom_trainer.rs`).

mod batch;
mod config;
mod context;
mod reference;

pub use batch::{BatchData, CollateOptions, MicroBatch};
pub use config::ObjectiveConfig;
pub use context::{LossContext, PolicyForward};
pub use reference::{ModelReference, NoReference, ReferenceLogps, stacked_pair_logps};

use std::fmt;

use crate::Result;
use crate::data::TrainRows;
use crate::metrics::LossOutput;

/// The row shape an objective trains on, and so how its JSONL file is read
/// ([`crate::data::read_train_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// Plain documents (`text` or `messages`), tokenised whole and packed into blocks; every
    /// token is a target (CPT).
    Documents,
    /// Prompt/completion rows or conversations (`messages`), one sequence each; completion or
    /// assistant tokens are the targets (SFT).
    Sequences,
    /// Preference pairs `prompt`/`chosen`/`rejected` (DPO family, ORPO, CPO, SimPO).
    PreferencePairs,
    /// Unpaired rows `prompt`/`completion`/`label` (KTO).
    Unpaired,
}

impl RowKind {
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Documents => "documents",
            Self::Sequences => "prompt/completion or conversation rows",
            Self::PreferencePairs => "preference pairs",
            Self::Unpaired => "unpaired (KTO) rows",
        }
    }

    /// Whether tokenised `rows` have this shape. Documents and sequences are interchangeable
    /// (both are token sequences with labels): a packed CPT corpus can be fine-tuned on with an
    /// SFT objective and the other way round.
    pub fn accepts(self, rows: &TrainRows) -> bool {
        match rows {
            TrainRows::Sequences(_) | TrainRows::Packed(_) => {
                matches!(self, Self::Documents | Self::Sequences)
            }
            TrainRows::Preference(_) => self == Self::PreferencePairs,
            TrainRows::Unpaired(_) => self == Self::Unpaired,
        }
    }
}

/// How a loss is normalised over the micro-batches of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossScaling {
    /// The loss is a sum over target tokens divided by the targets of the whole accumulation
    /// window (HF's `num_items_in_batch`): the trainer passes that count as
    /// [`LossContext::num_items`], so the window's gradient equals the big batch's (CPT, SFT).
    TokenSum,
    /// The loss is a mean over the micro-batch's rows; the trainer divides it by the number of
    /// micro-batches (TRL's preference trainers, `loss_is_scaled_for_ga = False`).
    BatchMean,
}

/// A training objective: its data, its reference needs, its batches and its loss.
///
/// Object safe: trainers hold a `Box<dyn TrainObjective>`. Only [`name`](Self::name),
/// [`row_kind`](Self::row_kind) and [`loss`](Self::loss) must be written; the rest have
/// defaults that fit most objectives.
pub trait TrainObjective: fmt::Debug + Send + Sync {
    /// The short name (TRL's: `sft`, `dpo`, ...), recorded in checkpoints and messages.
    fn name(&self) -> &str;

    /// The rows it trains on.
    fn row_kind(&self) -> RowKind;

    /// Whether [`loss`](Self::loss) reads reference log-probs (DPO, KTO): the trainer then
    /// refuses to start without a reference.
    fn needs_reference(&self) -> bool {
        false
    }

    /// How the loss is normalised under gradient accumulation. Default: [`LossScaling::TokenSum`]
    /// for documents and sequences, [`LossScaling::BatchMean`] for pairs and unpaired rows.
    fn loss_scaling(&self) -> LossScaling {
        match self.row_kind() {
            RowKind::Documents | RowKind::Sequences => LossScaling::TokenSum,
            RowKind::PreferencePairs | RowKind::Unpaired => LossScaling::BatchMean,
        }
    }

    /// Checks the hyper-parameters, so a bad value fails before a model is loaded.
    ///
    /// # Errors
    /// The first invalid value, named.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The micro-batch of `rows` at `indices` (right-padded, labels `-100` where no loss is
    /// taken). Default: [`MicroBatch::collate`] without KTO's KL batch.
    ///
    /// # Errors
    /// Rows that cannot be collated (see [`MicroBatch::collate`]).
    fn collate(
        &self,
        rows: &TrainRows,
        indices: &[usize],
        options: &CollateOptions,
    ) -> Result<MicroBatch> {
        MicroBatch::collate(rows, indices, options, false)
    }

    /// The loss of one micro-batch and its metrics (TRL's names), scaled as
    /// [`loss_scaling`](Self::loss_scaling) says (a [`LossScaling::BatchMean`] loss is the
    /// micro-batch's own mean; the trainer divides it by the number of micro-batches).
    ///
    /// # Errors
    /// A micro-batch of the wrong shape, a missing reference, a non-finite loss.
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput>;
}
