//! SFT packing against TRL 1.16 (`fixtures/trl_packing.json`, made by
//! `fixtures/make_trl_packing.py` with TRL's own `pack_dataset` and collator), and the
//! property that makes padding-free packing sound: a packed batch's per-token log-probs, loss
//! and gradient are those of the same rows run one per sequence.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use serde::Deserialize;
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};
use temper_objectives::data::{
    Batch, PackedBlock, PackingStrategy, SftTokens, TrainRows, pack_sft, pack_sft_in_batches,
};
use temper_objectives::{
    ChunkConfig, CollateOptions, LossContext, MicroBatch, NoReference, ObjectiveConfig,
    chunked_token_logps, lm_head_weight,
};

#[derive(Deserialize)]
struct Row {
    input_ids: Vec<u32>,
    labels: Vec<i64>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Block {
    input_ids: Vec<u32>,
    labels: Vec<i64>,
    position_ids: Vec<usize>,
    seq_lengths: Vec<usize>,
}

#[derive(Deserialize)]
struct Case {
    strategy: String,
    seq_length: usize,
    map_batch_size: usize,
    blocks: Vec<Block>,
}

#[derive(Deserialize)]
struct Fixture {
    rows: Vec<Row>,
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_packing.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn to_block(b: &PackedBlock) -> Block {
    Block {
        input_ids: b.input_ids.clone(),
        labels: b.labels.clone(),
        position_ids: b.position_ids.clone(),
        seq_lengths: b.seq_lengths.clone(),
    }
}

/// Every strategy, block length and map batch size of the fixture gives TRL's blocks: ids,
/// labels after the collator (position-0 labels masked), position ids and sequence lengths.
#[test]
fn packing_matches_trl_pack_dataset_and_its_collator() {
    let fixture = fixture();
    let rows: Vec<SftTokens> = fixture
        .rows
        .iter()
        .map(|r| SftTokens {
            input_ids: r.input_ids.clone(),
            labels: r.labels.clone(),
            completion_start: None,
        })
        .collect();
    assert!(fixture.cases.len() >= 8);
    for case in &fixture.cases {
        let strategy: PackingStrategy = case.strategy.parse().expect("strategy");
        let ours = pack_sft_in_batches(&rows, case.seq_length, strategy, case.map_batch_size)
            .expect("pack");
        let ours: Vec<Block> = ours.iter().map(to_block).collect();
        assert_eq!(
            ours, case.blocks,
            "{} at seq_length {} (map batch {})",
            case.strategy, case.seq_length, case.map_batch_size
        );
    }
}

const VOCAB: u32 = 29;

fn model(device: &Device) -> LlamaForCausalLM {
    device.seed(11);
    LlamaForCausalLM::init(&ModelConfig::tiny(VOCAB as usize, 16, 2, 2, 1), device)
}

/// Prompt/completion rows of different lengths (prompt labels −100).
fn rows() -> Vec<SftTokens> {
    [(2, 5), (3, 2), (1, 6), (4, 3), (2, 2), (1, 1)]
        .iter()
        .enumerate()
        .map(|(k, &(prompt, completion))| {
            let input_ids: Vec<u32> = (0..prompt + completion)
                .map(|i| 1 + ((k * 7 + i * 3) as u32) % (VOCAB - 1))
                .collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { -100 } else { i64::from(t) })
                .collect();
            SftTokens {
                input_ids,
                labels,
                completion_start: Some(prompt),
            }
        })
        .collect()
}

fn values(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, s] = t.dims();
    let flat: Vec<f32> = t.into_data().iter::<f32>().collect();
    flat.chunks(s).map(<[f32]>::to_vec).collect()
}

/// Each row's target log-probs (positions `0..len-1`), read out of the packed blocks.
fn unpack(blocks: &[PackedBlock], logps: &[Vec<f32>], order: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut by_row = vec![Vec::new(); order.len()];
    for (b, row_logps) in blocks.iter().zip(logps) {
        let mut at = 0;
        for &len in &b.seq_lengths {
            let ids = &b.input_ids[at..at + len];
            let k = order.iter().position(|r| r == ids).expect("a packed row");
            by_row[k] = row_logps[at..at + len - 1].to_vec();
            at += len;
        }
    }
    by_row
}

fn token_logps(model: &LlamaForCausalLM, batch: &Batch, masked: bool) -> Vec<Vec<f32>> {
    let device = model.device();
    let tensors = batch.to_tensors(&device);
    let mut options = batch.forward_options(&device);
    if !masked {
        options.custom_mask = None;
    }
    let hidden = model
        .forward_hidden(tensors.input_ids, &options, None)
        .expect("forward");
    let chunk = ChunkConfig::with_vocab_tile(8);
    let logps =
        chunked_token_logps(hidden, lm_head_weight(model), tensors.labels, &chunk).expect("logps");
    values(logps.logps)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// `bfd` blocks run with the block-diagonal mask give every row the log-probs it has alone;
/// without the mask (plain causal attention over the block) they differ.
#[test]
fn packed_log_probs_equal_unpacked_ones_only_with_the_mask() {
    let device = Device::flex();
    let model = model(&device);
    let rows = rows();
    let blocks = pack_sft(&rows, 12, PackingStrategy::Bfd).expect("pack");
    assert!(blocks.len() < rows.len() && blocks.iter().any(|b| b.seq_lengths.len() > 1));
    let options = CollateOptions::new(0, None);
    let all: Vec<usize> = (0..rows.len()).collect();
    let plain = MicroBatch::collate(&TrainRows::Sequences(rows.clone()), &all, &options, false)
        .expect("collate");
    let alone: Vec<Vec<f32>> = token_logps(&model, plain.batch(), true)
        .into_iter()
        .zip(&rows)
        .map(|(l, r)| l[..r.input_ids.len() - 1].to_vec())
        .collect();
    let packed_rows = TrainRows::Packed(blocks.clone());
    let idx: Vec<usize> = (0..blocks.len()).collect();
    let packed = MicroBatch::collate(&packed_rows, &idx, &options, false).expect("collate");
    let order: Vec<Vec<u32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
    let with_mask = unpack(&blocks, &token_logps(&model, packed.batch(), true), &order);
    let without = unpack(&blocks, &token_logps(&model, packed.batch(), false), &order);
    let d = max_diff(&with_mask, &alone);
    assert!(d < 1e-5, "packed vs alone: {d}");
    let d = max_diff(&without, &alone);
    assert!(
        d > 1e-3,
        "without the mask the rows would see each other: {d}"
    );
}

/// The SFT loss (TRL's token mean) of the packed batch equals the unpacked one, and so does
/// its gradient.
#[test]
fn packed_loss_and_gradient_equal_unpacked_ones() {
    let device = Device::flex().autodiff();
    let model = model(&device);
    let rows = rows();
    let blocks = pack_sft(&rows, 12, PackingStrategy::Bfd).expect("pack");
    let sft = ObjectiveConfig::from_name("sft").expect("sft").build();
    let chunk = ChunkConfig::with_vocab_tile(8);
    let context = LossContext {
        policy: &model,
        chunk: &chunk,
        num_items: None,
        reference: &NoReference,
    };
    let options = CollateOptions::new(0, None);
    let run = |rows: TrainRows| {
        let idx: Vec<usize> = (0..rows.len()).collect();
        let batch = sft.collate(&rows, &idx, &options).expect("collate");
        let out = sft.loss(&context, &batch).expect("loss");
        let loss: f32 = out.loss.clone().into_scalar();
        let grads = out.loss.backward();
        let grad: Vec<f32> = model
            .model
            .embed_tokens
            .weight
            .grad(&grads)
            .expect("a gradient")
            .into_data()
            .iter::<f32>()
            .collect();
        (loss, grad, batch.targets())
    };
    let (loss_plain, grad_plain, targets_plain) = run(TrainRows::Sequences(rows));
    let (loss_packed, grad_packed, targets_packed) = run(TrainRows::Packed(blocks));
    assert_eq!(targets_plain, targets_packed);
    assert!(
        (loss_plain - loss_packed).abs() < 1e-5,
        "{loss_plain} vs {loss_packed}"
    );
    let d = grad_plain
        .iter()
        .zip(&grad_packed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(grad_plain.iter().any(|g| g.abs() > 1e-4));
    assert!(d < 1e-5, "gradients differ by {d}");
}
