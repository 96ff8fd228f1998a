//! Batching: right padding, masks and labels, as TRL's collators build them, in plain `Vec`
//! form ([`Batch`]) and as burn tensors ([`BatchTensors`]).
//!
//! Every batch is **right-padded** (TRL always right-pads text batches) to the longest row,
//! optionally rounded up to a multiple (`pad_to_multiple_of`): `input_ids` with the pad id,
//! `attention_mask`/`completion_mask` with 0, `labels` with −100. Labels are aligned with
//! `input_ids` (not shifted); the losses shift them.
//!
//! * [`collate_sft`] — TRL `DataCollatorForLanguageModeling` (padded mode): `labels` from the
//!   prepared rows.
//! * [`collate_packed`] — packed CPT blocks, with `position_ids`.
//! * [`collate_preference`] — TRL `DataCollatorForPreference`: rows `[prompt+chosen of every
//!   pair; prompt+rejected of every pair]` (2B rows, one forward), each sequence truncated to
//!   `max_length` (keep start) before padding, `completion_mask` 1 on completion tokens, and
//!   `labels = input_ids` where `completion_mask == 1`, else −100 (`DPOTrainer._compute_loss`).
//! * [`collate_unpaired`] — TRL `DataCollatorForUnpairedPreference` (KTO), optionally with the
//!   mismatched KL batch.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::pack::PackedBlock;
use super::tokenize::{PreferenceTokens, SftTokens, UnpairedTokens};
use crate::{IGNORE_INDEX, ObjectiveError, Result};

/// Padding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadOptions {
    /// Id written into padded `input_ids` (TRL: pad token, else EOS).
    pub pad_id: u32,
    /// Round the padded length up to a multiple of this (TRL `pad_to_multiple_of`).
    pub pad_to_multiple_of: Option<usize>,
}

impl PadOptions {
    /// Pad with `pad_id` to the longest row.
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            pad_to_multiple_of: None,
        }
    }
}

/// A padded batch, `[rows][seq]` for every field (all rows the same length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<Vec<i64>>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<Vec<i64>>,
    /// Targets aligned with `input_ids`, −100 where ignored (prompt, padding, masked tokens).
    pub labels: Vec<Vec<i64>>,
    /// Preference/KTO batches: 1 on completion tokens.
    pub completion_mask: Option<Vec<Vec<i64>>>,
    /// Packed batches: position ids (padding positions 0).
    pub position_ids: Option<Vec<Vec<i64>>>,
}

/// A [`Batch`] as `[rows, seq]` integer tensors.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    pub input_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2, Int>,
    pub labels: Tensor<2, Int>,
    pub completion_mask: Option<Tensor<2, Int>>,
    pub position_ids: Option<Tensor<2, Int>>,
}

fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let t = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

impl Batch {
    /// `[rows, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        [
            self.input_ids.len(),
            self.input_ids.first().map_or(0, Vec::len),
        ]
    }

    /// Number of targets the loss will see: labels at positions `1..` that are not −100 (TRL's
    /// `num_items_in_batch` for one micro-batch).
    pub fn num_targets(&self) -> usize {
        self.labels
            .iter()
            .map(|r| r.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Labels over every real token, prompt included (`input_ids` where `attention_mask == 1`):
    /// ORPO's NLL term in TRL, which is not masked to the completion.
    pub fn attended_labels(&self) -> Vec<Vec<i64>> {
        self.input_ids
            .iter()
            .zip(&self.attention_mask)
            .map(|(ids, m)| {
                ids.iter()
                    .zip(m)
                    .map(|(&t, &a)| if a == 1 { t } else { IGNORE_INDEX })
                    .collect()
            })
            .collect()
    }

    /// The attention mask in the form `temper_llm_arch::ForwardOptions::attention_mask` takes.
    pub fn attention_mask_u8(&self) -> Vec<Vec<u8>> {
        self.attention_mask
            .iter()
            .map(|r| r.iter().map(|&a| u8::from(a != 0)).collect())
            .collect()
    }

    /// The position ids in the form `ForwardOptions::position_ids` takes.
    pub fn position_ids_usize(&self) -> Option<Vec<Vec<usize>>> {
        self.position_ids.as_ref().map(|p| {
            p.iter()
                .map(|r| r.iter().map(|&x| usize::try_from(x).unwrap_or(0)).collect())
                .collect()
        })
    }

    /// Copy to `device` as integer tensors.
    pub fn to_tensors(&self, device: &Device) -> BatchTensors {
        BatchTensors {
            input_ids: int_tensor(&self.input_ids, device),
            attention_mask: int_tensor(&self.attention_mask, device),
            labels: int_tensor(&self.labels, device),
            completion_mask: self
                .completion_mask
                .as_deref()
                .map(|m| int_tensor(m, device)),
            position_ids: self.position_ids.as_deref().map(|p| int_tensor(p, device)),
        }
    }
}

/// One unpadded row: ids, labels, and optionally completion mask and position ids.
struct Row {
    ids: Vec<i64>,
    labels: Vec<i64>,
    completion: Option<Vec<i64>>,
    positions: Option<Vec<i64>>,
}

fn padded_len(rows: &[Row], pad: &PadOptions) -> Result<usize> {
    if rows.is_empty() {
        return Err(ObjectiveError::Invalid(
            "cannot collate an empty batch".into(),
        ));
    }
    let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    Ok(match pad.pad_to_multiple_of {
        Some(m) if m > 1 => longest.div_ceil(m) * m,
        _ => longest,
    })
}

fn pad_to(v: &[i64], len: usize, value: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(v);
    out.resize(len, value);
    out
}

fn assemble(rows: &[Row], pad: &PadOptions) -> Result<Batch> {
    let t = padded_len(rows, pad)?;
    let pad_id = i64::from(pad.pad_id);
    let completion = rows[0].completion.is_some();
    let positions = rows[0].positions.is_some();
    Ok(Batch {
        input_ids: rows.iter().map(|r| pad_to(&r.ids, t, pad_id)).collect(),
        attention_mask: rows
            .iter()
            .map(|r| pad_to(&vec![1; r.ids.len()], t, 0))
            .collect(),
        labels: rows
            .iter()
            .map(|r| pad_to(&r.labels, t, IGNORE_INDEX))
            .collect(),
        completion_mask: completion.then(|| {
            rows.iter()
                .map(|r| pad_to(r.completion.as_deref().unwrap_or(&[]), t, 0))
                .collect()
        }),
        position_ids: positions.then(|| {
            rows.iter()
                .map(|r| pad_to(r.positions.as_deref().unwrap_or(&[]), t, 0))
                .collect()
        }),
    })
}

fn to_i64(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&t| i64::from(t)).collect()
}

/// Collate prepared SFT/CPT rows (already truncated by
/// [`super::tokenize::Preprocessor::prepare_sft`]).
///
/// # Errors
/// An empty batch; a row whose labels and ids differ in length.
pub fn collate_sft(rows: &[SftTokens], pad: &PadOptions) -> Result<Batch> {
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.labels.len() != r.input_ids.len() {
                return Err(ObjectiveError::Invalid(format!(
                    "row {i}: {} labels for {} input ids",
                    r.labels.len(),
                    r.input_ids.len()
                )));
            }
            Ok(Row {
                ids: to_i64(&r.input_ids),
                labels: r.labels.clone(),
                completion: None,
                positions: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    assemble(&rows, pad)
}

/// Collate packed blocks; the batch carries `position_ids` (restarting per document when the
/// blocks were packed with `reset_position_ids`).
///
/// # Errors
/// An empty batch.
pub fn collate_packed(blocks: &[PackedBlock], pad: &PadOptions) -> Result<Batch> {
    let rows: Vec<Row> = blocks
        .iter()
        .map(|b| Row {
            ids: to_i64(&b.input_ids),
            labels: b.labels.clone(),
            completion: None,
            positions: Some(b.position_ids.iter().map(|&p| p as i64).collect()),
        })
        .collect();
    assemble(&rows, pad)
}

/// `prompt + completion`, its completion mask and labels, truncated to `max_length`.
fn prompt_completion_row(prompt: &[u32], completion: &[u32], max_length: Option<usize>) -> Row {
    let mut ids: Vec<i64> = prompt
        .iter()
        .chain(completion)
        .map(|&t| i64::from(t))
        .collect();
    let mut mask: Vec<i64> = std::iter::repeat_n(0, prompt.len())
        .chain(std::iter::repeat_n(1, completion.len()))
        .collect();
    if let Some(n) = max_length {
        ids.truncate(n);
        mask.truncate(n);
    }
    let labels = ids
        .iter()
        .zip(&mask)
        .map(|(&t, &m)| if m == 1 { t } else { IGNORE_INDEX })
        .collect();
    Row {
        ids,
        labels,
        completion: Some(mask),
        positions: None,
    }
}

/// A preference batch: rows `0..num_pairs` are chosen, `num_pairs..2·num_pairs` rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceBatch {
    pub batch: Batch,
    pub num_pairs: usize,
}

/// Collate preference pairs as `[chosen rows; rejected rows]` (see module docs).
///
/// # Errors
/// An empty batch.
pub fn collate_preference(
    pairs: &[PreferenceTokens],
    max_length: Option<usize>,
    pad: &PadOptions,
) -> Result<PreferenceBatch> {
    let chosen = pairs
        .iter()
        .map(|p| prompt_completion_row(&p.prompt_ids, &p.chosen_ids, max_length));
    let rejected = pairs
        .iter()
        .map(|p| prompt_completion_row(&p.prompt_ids, &p.rejected_ids, max_length));
    let rows: Vec<Row> = chosen.chain(rejected).collect();
    Ok(PreferenceBatch {
        batch: assemble(&rows, pad)?,
        num_pairs: pairs.len(),
    })
}

/// A KTO batch: the matched sequences, the optional KL (mismatched) sequences, and the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedBatch {
    pub batch: Batch,
    /// `prompt_i + completion_{i−1}` (cyclically) — TRL's `KL_*` tensors.
    pub kl: Option<Batch>,
    /// `true` for desirable completions.
    pub label: Vec<bool>,
}

impl UnpairedBatch {
    /// The labels as a `[rows]` bool tensor.
    pub fn label_tensor(&self, device: &Device) -> Tensor<1, Bool> {
        Tensor::<1, Bool>::from_data(
            TensorData::new(self.label.clone(), [self.label.len()]),
            device,
        )
    }
}

/// Collate KTO rows: `prompt + completion` truncated to `max_length` (keep start), completion
/// mask and labels as for preference batches. With `with_kl`, also the KL batch built from the
/// same completions rotated by one within the batch, `(x_1, y_n), (x_2, y_1), …, (x_n, y_{n−1})`
/// — TRL does this rotation per `per_device_train_batch_size` chunk of the dataset (with a
/// sequential sampler), which is the same when batches are consecutive chunks.
///
/// # Errors
/// An empty batch.
pub fn collate_unpaired(
    rows: &[UnpairedTokens],
    max_length: Option<usize>,
    pad: &PadOptions,
    with_kl: bool,
) -> Result<UnpairedBatch> {
    let matched: Vec<Row> = rows
        .iter()
        .map(|r| prompt_completion_row(&r.prompt_ids, &r.completion_ids, max_length))
        .collect();
    let batch = assemble(&matched, pad)?;
    let kl = if with_kl {
        let n = rows.len();
        let kl_rows: Vec<Row> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let other = &rows[(i + n - 1) % n];
                prompt_completion_row(&r.prompt_ids, &other.completion_ids, max_length)
            })
            .collect();
        Some(assemble(&kl_rows, pad)?)
    } else {
        None
    };
    Ok(UnpairedBatch {
        batch,
        kl,
        label: rows.iter().map(|r| r.label).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pref(p: &[u32], c: &[u32], r: &[u32]) -> PreferenceTokens {
        PreferenceTokens {
            prompt_ids: p.to_vec(),
            chosen_ids: c.to_vec(),
            rejected_ids: r.to_vec(),
        }
    }

    /// TRL's own docstring example for `DataCollatorForPreference`.
    #[test]
    fn preference_matches_trl_docstring() {
        let pairs = vec![
            pref(&[1, 2, 3], &[4, 5], &[6]),
            pref(&[7, 8], &[9], &[10, 11]),
        ];
        let out = collate_preference(&pairs, None, &PadOptions::new(0)).unwrap();
        let b = &out.batch;
        assert_eq!(out.num_pairs, 2);
        assert_eq!(
            b.input_ids,
            vec![
                vec![1, 2, 3, 4, 5],
                vec![7, 8, 9, 0, 0],
                vec![1, 2, 3, 6, 0],
                vec![7, 8, 10, 11, 0]
            ]
        );
        assert_eq!(
            b.attention_mask,
            vec![
                vec![1, 1, 1, 1, 1],
                vec![1, 1, 1, 0, 0],
                vec![1, 1, 1, 1, 0],
                vec![1, 1, 1, 1, 0]
            ]
        );
        assert_eq!(
            b.completion_mask.clone().unwrap(),
            vec![
                vec![0, 0, 0, 1, 1],
                vec![0, 0, 1, 0, 0],
                vec![0, 0, 0, 1, 0],
                vec![0, 0, 1, 1, 0]
            ]
        );
        assert_eq!(b.labels[1], vec![-100, -100, 9, -100, -100]);
        assert_eq!(b.attended_labels()[1], vec![7, 8, 9, -100, -100]);
        assert_eq!(b.num_targets(), 6);
    }

    #[test]
    fn preference_truncation_and_pad_multiple() {
        let pairs = vec![pref(&[1, 2, 3], &[4, 5, 6], &[7])];
        let pad = PadOptions {
            pad_id: 99,
            pad_to_multiple_of: Some(8),
        };
        let out = collate_preference(&pairs, Some(4), &pad).unwrap();
        assert_eq!(out.batch.dims(), [2, 8]);
        assert_eq!(out.batch.input_ids[0], vec![1, 2, 3, 4, 99, 99, 99, 99]);
        assert_eq!(out.batch.input_ids[1], vec![1, 2, 3, 7, 99, 99, 99, 99]);
        assert_eq!(out.batch.labels[0][..5], [-100, -100, -100, 4, -100]);
        assert!(collate_preference(&[], None, &pad).is_err());
    }

    /// TRL's docstring example for `DataCollatorForLanguageModeling`.
    #[test]
    fn sft_pads_labels_with_ignore() {
        let rows = vec![
            SftTokens {
                input_ids: vec![1, 2, 3],
                labels: vec![-100, 2, 3],
                completion_start: None,
            },
            SftTokens::all_targets(vec![4, 5]),
        ];
        let b = collate_sft(&rows, &PadOptions::new(0)).unwrap();
        assert_eq!(b.input_ids, vec![vec![1, 2, 3], vec![4, 5, 0]]);
        assert_eq!(b.labels, vec![vec![-100, 2, 3], vec![4, 5, -100]]);
        assert_eq!(b.attention_mask_u8(), vec![vec![1, 1, 1], vec![1, 1, 0]]);
        assert!(b.completion_mask.is_none() && b.position_ids.is_none());
        let bad = SftTokens {
            input_ids: vec![1],
            labels: vec![],
            completion_start: None,
        };
        assert!(collate_sft(&[bad], &PadOptions::new(0)).is_err());
    }

    #[test]
    fn packed_blocks_carry_positions() {
        let block = PackedBlock {
            input_ids: vec![5, 6, 0, 7],
            labels: vec![-100, 6, 0, -100],
            position_ids: vec![0, 1, 2, 0],
            seq_lengths: vec![3, 1],
        };
        let short = PackedBlock {
            input_ids: vec![0],
            labels: vec![-100],
            position_ids: vec![0],
            seq_lengths: vec![1],
        };
        let b = collate_packed(&[block, short], &PadOptions::new(2)).unwrap();
        assert_eq!(
            b.position_ids_usize().unwrap(),
            vec![vec![0, 1, 2, 0], vec![0, 0, 0, 0]]
        );
        assert_eq!(b.input_ids[1], vec![0, 2, 2, 2]);
        assert_eq!(b.labels[1], vec![-100, -100, -100, -100]);
    }

    /// TRL's docstring example for `DataCollatorForUnpairedPreference`, with KL rows.
    #[test]
    fn unpaired_matches_trl_docstring_and_rotates_kl() {
        let rows = vec![
            UnpairedTokens {
                prompt_ids: vec![1, 2, 3],
                completion_ids: vec![4, 5],
                label: true,
            },
            UnpairedTokens {
                prompt_ids: vec![7, 8],
                completion_ids: vec![9],
                label: false,
            },
        ];
        let out = collate_unpaired(&rows, None, &PadOptions::new(0), true).unwrap();
        assert_eq!(
            out.batch.input_ids,
            vec![vec![1, 2, 3, 4, 5], vec![7, 8, 9, 0, 0]]
        );
        assert_eq!(
            out.batch.completion_mask.clone().unwrap(),
            vec![vec![0, 0, 0, 1, 1], vec![0, 0, 1, 0, 0]]
        );
        let kl = out.kl.unwrap();
        assert_eq!(kl.input_ids, vec![vec![1, 2, 3, 9], vec![7, 8, 4, 5]]);
        assert_eq!(out.label, vec![true, false]);
    }

    #[test]
    fn tensors_have_the_batch_shape_and_values() {
        let device = Device::flex();
        let pairs = vec![pref(&[1, 2], &[3], &[4, 5])];
        let out = collate_preference(&pairs, None, &PadOptions::new(0)).unwrap();
        let t = out.batch.to_tensors(&device);
        assert_eq!(t.input_ids.dims(), [2, 4]);
        let labels: Vec<i64> = t.labels.into_data().convert::<i64>().try_to_vec().unwrap();
        assert_eq!(labels, vec![-100, -100, 3, -100, -100, -100, 4, 5]);
        let cm: Vec<i64> = t
            .completion_mask
            .unwrap()
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        assert_eq!(cm, vec![0, 0, 1, 0, 0, 0, 1, 1]);
        assert!(t.position_ids.is_none());
        let rows = vec![UnpairedTokens {
            prompt_ids: vec![1],
            completion_ids: vec![2],
            label: true,
        }];
        let u = collate_unpaired(&rows, None, &PadOptions::new(0), false).unwrap();
        assert_eq!(u.label_tensor(&device).dims(), [1]);
    }
}
