//! An objective defined outside Temper trains through `Trainer::with_objective` exactly as
//! Temper's own objectives do.
#![allow(clippy::unwrap_used)]

mod common;

use temper_llm_arch::LlamaForCausalLM;
use temper_llm_arch::checkpoint::hf_tensors;
use temper_objectives::{
    CausalLmConfig, CollateOptions, Dpo, LossContext, LossOutput, LossScaling, MicroBatch, Sft,
    TrainObjective,
};
use temper_train::{
    ObjectiveConfig, Reference, RowKind, TrainData, TrainRows, Trainer, latest_checkpoint,
};

use common::{config, losses, pairs, sft_rows, tiny_model};

/// A user's objective: Temper's SFT under another name, every method forwarded explicitly.
#[derive(Debug)]
struct MySft(Sft);

impl TrainObjective for MySft {
    fn name(&self) -> &str {
        "my-sft"
    }
    fn row_kind(&self) -> RowKind {
        self.0.row_kind()
    }
    fn loss_scaling(&self) -> LossScaling {
        self.0.loss_scaling()
    }
    fn collate(
        &self,
        rows: &TrainRows,
        indices: &[usize],
        options: &CollateOptions,
    ) -> temper_objectives::Result<MicroBatch> {
        self.0.collate(rows, indices, options)
    }
    fn loss(
        &self,
        context: &LossContext<'_>,
        batch: &MicroBatch,
    ) -> temper_objectives::Result<LossOutput> {
        self.0.loss(context, batch)
    }
}

fn weights(m: &LlamaForCausalLM) -> Vec<(String, Vec<u32>)> {
    hf_tensors(m)
        .into_iter()
        .map(|(n, t)| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn data() -> TrainData {
    TrainData {
        train: TrainRows::Sequences(sft_rows()),
        eval: Some(TrainRows::Sequences(sft_rows()[..2].to_vec())),
    }
}

#[test]
fn a_custom_objective_trains_like_the_builtin_it_wraps() {
    let init = tiny_model();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config(ObjectiveConfig::Sft(CausalLmConfig::default()), a.path(), 6);
    cfg.gradient_accumulation_steps = 2;
    cfg.batch_size = 2;
    let mut theirs = Trainer::new(
        init.clone(),
        cfg.clone(),
        TrainRows::Sequences(sft_rows()),
        Some(TrainRows::Sequences(sft_rows()[..2].to_vec())),
        Reference::None,
        0,
    )
    .unwrap();
    let theirs_summary = theirs.train().unwrap();

    cfg.output_dir = b.path().to_path_buf();
    let mine = Box::new(MySft(Sft(CausalLmConfig::default())));
    let mut ours = Trainer::with_objective(init, cfg, mine, data(), Reference::None, 0).unwrap();
    assert_eq!(ours.objective().name(), "my-sft");
    let ours_summary = ours.train().unwrap();

    assert_eq!(losses(&ours_summary), losses(&theirs_summary));
    assert_eq!(ours_summary.eval_loss, theirs_summary.eval_loss);
    assert_eq!(weights(ours.model()), weights(theirs.model()));
    // The checkpoint records the objective's own name, and a resume under another objective
    // is refused naming both.
    assert_eq!(ours.state().objective, "my-sft");
    let ckpt = latest_checkpoint(b.path()).unwrap();
    let err = theirs.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains("my-sft") && err.contains("sft"), "{err}");
}

#[test]
fn rows_and_references_are_checked_against_the_objective() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(ObjectiveConfig::default(), dir.path(), 2);
    let dpo = Box::new(Dpo(Default::default()));
    let err = Trainer::with_objective(tiny_model(), cfg.clone(), dpo, data(), Reference::None, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("objective `dpo` cannot train on sequences"),
        "{err}"
    );

    let pairs = TrainData {
        train: TrainRows::Preference(pairs()),
        eval: None,
    };
    let dpo = Box::new(Dpo(Default::default()));
    let err = Trainer::with_objective(tiny_model(), cfg, dpo, pairs, Reference::None, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dpo needs a reference"), "{err}");
}
