//! The `TrainObjective` implementations against the loss functions they wrap: the same
//! forward passes, references and losses a hand-written loop computes, to the bit.

use burn::tensor::{Device, Int, Tensor, TensorData};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig};
use temper_objectives::data::{Batch, PreferenceTokens, SftTokens, TrainRows, UnpairedTokens};
use temper_objectives::{
    ChunkConfig, CollateOptions, CpoConfig, CpoLossType, KlLogps, KtoBatch, KtoConfig, LossContext,
    LossOutput, ModelReference, NoReference, ObjectiveConfig, ObjectiveError, OrpoConfig, OrpoNll,
    PairLogps, RefCacheOptions, RefLogps, ReferenceLogps, RowKind, TokenLogps, TokenStats,
    causal_lm_loss, chunked_token_logps, chunked_token_logps_with_stats, cpo_loss, dpo_loss,
    kto_loss, lm_head_weight, orpo_loss, precompute_reference,
};

type TestResult = Result<(), ObjectiveError>;

const VOCAB: u32 = 24;

fn model() -> LlamaForCausalLM {
    let device = Device::flex();
    device.seed(3);
    LlamaForCausalLM::init(&ModelConfig::tiny(VOCAB as usize, 16, 1, 2, 1), &device)
}

fn sft_rows() -> TrainRows {
    TrainRows::Sequences(
        (0..3u32)
            .map(|k| {
                let input_ids: Vec<u32> =
                    (0..6 + k).map(|i| 1 + (k * 5 + i) % (VOCAB - 1)).collect();
                let labels = input_ids
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| if i < 2 { -100 } else { i64::from(t) })
                    .collect();
                SftTokens {
                    input_ids,
                    labels,
                    completion_start: Some(2),
                }
            })
            .collect(),
    )
}

fn pairs() -> Vec<PreferenceTokens> {
    (0..3u32)
        .map(|k| PreferenceTokens {
            prompt_ids: (0..2 + k).map(|i| 1 + (k * 3 + i) % (VOCAB - 1)).collect(),
            chosen_ids: vec![5 + k, 6 + k, 7 + k],
            rejected_ids: vec![9, 9 + k],
        })
        .collect()
}

/// KTO rows: a desirable counting completion, or an undesirable repeated token.
fn unpaired() -> TrainRows {
    let row = |k: u32| UnpairedTokens {
        prompt_ids: vec![1 + k, 2 + k],
        completion_ids: if k.is_multiple_of(2) {
            vec![3 + k, 4 + k]
        } else {
            vec![2 + k; 3]
        },
        label: k.is_multiple_of(2),
    };
    TrainRows::Unpaired((0..3).map(row).collect())
}

fn bits(out: &LossOutput) -> (Vec<u32>, Vec<(String, u64)>) {
    let loss = out
        .loss
        .clone()
        .into_data()
        .iter::<f32>()
        .map(f32::to_bits)
        .collect();
    let metrics = out
        .metrics
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_bits()))
        .collect();
    (loss, metrics)
}

/// What the objectives did by hand before the trait: forward, tiled log-probs and statistics.
fn by_hand(
    model: &LlamaForCausalLM,
    batch: &Batch,
    chunk: &ChunkConfig,
) -> (Tensor<3>, TokenLogps, TokenStats) {
    let tensors = batch.to_tensors(&model.device());
    let options = ForwardOptions {
        attention_mask: Some(batch.attention_mask_u8()),
        position_ids: batch.position_ids_usize(),
        ..Default::default()
    };
    let hidden = model
        .forward_hidden(tensors.input_ids, &options, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let (logps, stats) = chunked_token_logps_with_stats(
        hidden.clone(),
        lm_head_weight(model),
        tensors.labels,
        tensors.attention_mask,
        chunk,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (hidden, logps, stats)
}

fn context<'a>(
    model: &'a LlamaForCausalLM,
    chunk: &'a ChunkConfig,
    reference: &'a dyn ReferenceLogps,
) -> LossContext<'a> {
    LossContext {
        policy: model,
        chunk,
        num_items: None,
        reference,
    }
}

#[test]
fn sft_and_cpt_are_causal_lm_loss_with_window_scaling() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(7));
    let collate = CollateOptions::new(0, Some(8));
    for name in ["sft", "cpt"] {
        let objective = ObjectiveConfig::from_name(name).map(|c| c.build());
        let objective = objective.ok_or_else(|| ObjectiveError::Invalid(name.into()))?;
        let batch = objective.collate(&sft_rows(), &[2, 0], &collate)?;
        assert_eq!(batch.rows, [2, 0]);
        let mut ctx = context(&model, &chunk, &NoReference);
        ctx.num_items = Some(40);
        let ours = objective.loss(&ctx, &batch)?;
        let (_, logps, stats) = by_hand(&model, batch.sequences(name)?, &chunk);
        let theirs = causal_lm_loss(&Default::default(), &logps, Some(40), Some(&stats))?;
        assert_eq!(bits(&ours), bits(&theirs), "{name}");
    }
    Ok(())
}

#[test]
fn dpo_reads_its_reference_from_a_model_or_a_cache() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(5));
    let rows = TrainRows::Preference(pairs());
    let collate = CollateOptions::new(0, Some(12));
    let dpo = ObjectiveConfig::from_name("dpo")
        .map(|c| c.build())
        .ok_or_else(|| ObjectiveError::Invalid("dpo".into()))?;
    assert!(dpo.needs_reference());
    let batch = dpo.collate(&rows, &[1, 2], &collate)?;

    let reference_model = model.clone();
    let from_model = ModelReference::new(&reference_model, &chunk);
    let ours = dpo.loss(&context(&model, &chunk, &from_model), &batch)?;

    let pairs_batch = batch.preference("dpo")?;
    let (_, logps, stats) = by_hand(&model, &pairs_batch.batch, &chunk);
    let (_, ref_logps, _) = by_hand(&reference_model, &pairs_batch.batch, &chunk);
    let ref_sums: Vec<f32> = ref_logps.sum().into_data().iter::<f32>().collect();
    let reference = RefLogps::from_values(&ref_sums[..2], &ref_sums[2..], &model.device())?;
    let policy = PairLogps::from_stacked(&logps)?;
    let theirs = dpo_loss(&Default::default(), &policy, &reference, Some(&stats))?;
    assert_eq!(bits(&ours), bits(&theirs));

    // A cache of the same reference gives the same loss, picking the batch's pairs by index.
    let mut options = RefCacheOptions::new(0, collate.max_length);
    options.chunk = chunk;
    let cache = precompute_reference(&reference_model, &pairs(), &options)?;
    let cached = dpo.loss(&context(&model, &chunk, &cache), &batch)?;
    assert_eq!(bits(&cached), bits(&ours));

    // A cache holds pairs only, and only its own.
    let err = cache
        .sequence_logps(&pairs_batch.batch)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("preference pairs only")));
    let err = cache
        .pair_logps(pairs_batch, &[1, 7], &model.device())
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("pair 7")),
        "{err:?}"
    );
    // No reference at all is an error, not a zero.
    assert!(
        dpo.loss(&context(&model, &chunk, &NoReference), &batch)
            .is_err()
    );
    Ok(())
}

#[test]
fn orpo_scores_prompt_and_completion_of_the_chosen_rows() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(5));
    let rows = TrainRows::Preference(pairs());
    let collate = CollateOptions::new(0, Some(12));
    let config = OrpoConfig::default().with_nll(OrpoNll::PromptAndCompletion);
    let orpo = ObjectiveConfig::Orpo(config.clone()).build();
    let batch = orpo.collate(&rows, &[0, 1, 2], &collate)?;
    let ours = orpo.loss(&context(&model, &chunk, &NoReference), &batch)?;

    let pairs_batch = batch.preference("orpo")?;
    let (hidden, logps, stats) = by_hand(&model, &pairs_batch.batch, &chunk);
    let b = pairs_batch.num_pairs;
    let labels = pairs_batch.batch.attended_labels();
    let [_, t, h] = hidden.dims();
    let flat: Vec<i64> = labels.iter().flatten().copied().collect();
    let labels = Tensor::<2, Int>::from_data(TensorData::new(flat, [2 * b, t]), &model.device())
        .slice([0..b, 0..t]);
    let full = chunked_token_logps(
        hidden.slice([0..b, 0..t, 0..h]),
        lm_head_weight(&model),
        labels,
        &chunk,
    )?;
    let policy = PairLogps::from_stacked(&logps)?;
    let theirs = orpo_loss(&config, &policy, Some(&full), Some(&stats))?;
    assert_eq!(bits(&ours), bits(&theirs));
    Ok(())
}

#[test]
fn simpo_forces_its_loss_type() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(5));
    let rows = TrainRows::Preference(pairs());
    let collate = CollateOptions::new(0, Some(12));
    let config = CpoConfig::default(); // loss type sigmoid, which SimPO overrides
    let simpo = ObjectiveConfig::Simpo(config.clone()).build();
    let batch = simpo.collate(&rows, &[0, 2], &collate)?;
    let ours = simpo.loss(&context(&model, &chunk, &NoReference), &batch)?;
    let (_, logps, stats) = by_hand(&model, &batch.preference("simpo")?.batch, &chunk);
    let policy = PairLogps::from_stacked(&logps)?;
    let forced = CpoConfig {
        loss_type: CpoLossType::Simpo,
        ..config.clone()
    };
    assert_eq!(
        bits(&ours),
        bits(&cpo_loss(&forced, &policy, Some(&stats))?)
    );
    assert_ne!(
        bits(&ours),
        bits(&cpo_loss(&config, &policy, Some(&stats))?)
    );
    Ok(())
}

#[test]
fn kto_collates_and_scores_its_kl_batch() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(5));
    let collate = CollateOptions::new(0, Some(12));
    let kto = ObjectiveConfig::Kto(KtoConfig::default()).build();
    assert_eq!(kto.row_kind(), RowKind::Unpaired);
    let batch = kto.collate(&unpaired(), &[0, 1, 2], &collate)?;
    let rows = batch.unpaired("kto")?;
    let kl_batch = rows
        .kl
        .as_ref()
        .ok_or_else(|| ObjectiveError::Invalid("no KL batch".into()))?;
    let reference_model = model.clone();
    let from_model = ModelReference::new(&reference_model, &chunk);
    let ours = kto.loss(&context(&model, &chunk, &from_model), &batch)?;

    let device = model.device();
    let host = |t: Tensor<1>| -> Tensor<1> {
        let v: Vec<f32> = t.into_data().iter::<f32>().collect();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &device)
    };
    let (_, logps, stats) = by_hand(&model, &rows.batch, &chunk);
    let (_, ref_logps, _) = by_hand(&reference_model, &rows.batch, &chunk);
    let (_, kl_logps, _) = by_hand(&model, kl_batch, &chunk);
    let (_, kl_ref, _) = by_hand(&reference_model, kl_batch, &chunk);
    let theirs = kto_loss(
        &KtoConfig::default(),
        &KtoBatch {
            policy: logps.sum(),
            reference: host(ref_logps.sum()),
            desirable: rows.label.clone(),
            kl: Some(KlLogps {
                policy: kl_logps.sum().detach(),
                reference: host(kl_ref.sum()),
            }),
        },
        Some(&stats),
    )?;
    assert_eq!(bits(&ours), bits(&theirs));
    Ok(())
}

#[test]
fn a_batch_of_the_wrong_shape_names_the_objective() -> TestResult {
    let (model, chunk) = (model(), ChunkConfig::with_vocab_tile(5));
    let collate = CollateOptions::new(0, Some(12));
    let sft = ObjectiveConfig::from_name("sft").map(|c| c.build());
    let sft = sft.ok_or_else(|| ObjectiveError::Invalid("sft".into()))?;
    let pair_batch = sft.collate(&TrainRows::Preference(pairs()), &[0], &collate)?;
    let err = sft
        .loss(&context(&model, &chunk, &NoReference), &pair_batch)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("objective `sft` cannot train on preference pairs")
    );
    assert!(RowKind::Sequences.accepts(&sft_rows()));
    assert!(RowKind::Documents.accepts(&sft_rows()));
    assert!(!RowKind::PreferencePairs.accepts(&sft_rows()));
    assert!(!RowKind::Unpaired.accepts(&TrainRows::Preference(pairs())));
    Ok(())
}
