//! Attention for packed rows: a block-diagonal causal mask derived from the position ids.
//!
//! HF transformers (flash-attention 2 and its varlen kernels) treats a row whose
//! `position_ids` restart at 0 as several sequences back to back and keeps attention within
//! each; TRL's padding-free collation relies on it (`packing_strategy="bfd"`). Temper does the
//! same on every backend by handing the model a whole mask (`ForwardOptions::custom_mask`):
//! among a row's real tokens, a new sequence starts at every position id 0; a token attends to
//! the tokens of its own sequence up to itself. Padding tokens attend only to themselves (every
//! query must see a key; their outputs carry no label). A batch whose rows are each one
//! sequence gets no custom mask, so ordinary batches keep the model's own masking.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use temper_llm_arch::ForwardOptions;

use super::collate::Batch;

impl Batch {
    /// The forward options of this batch: its attention mask, its position ids and, when a row
    /// packs several sequences (position ids restarting at 0), the block-diagonal causal mask
    /// that keeps them apart.
    pub fn forward_options(&self, device: &Device) -> ForwardOptions {
        ForwardOptions {
            attention_mask: Some(self.attention_mask_u8()),
            position_ids: self.position_ids_usize(),
            custom_mask: self.packed_attention_mask(device),
        }
    }

    /// Per row, the sequence each token belongs to (real tokens: counted from 0, a new one at
    /// each position id 0 after the first token; padding: a sequence of its own), or `None`
    /// when no row holds more than one sequence.
    pub fn sequence_ids(&self) -> Option<Vec<Vec<usize>>> {
        let positions = self.position_ids.as_ref()?;
        let mut packed = false;
        let ids = positions
            .iter()
            .zip(&self.attention_mask)
            .map(|(pos, mask)| {
                let mut seq = 0;
                let mut next_pad = pos.len();
                pos.iter()
                    .zip(mask)
                    .enumerate()
                    .map(|(j, (&p, &m))| {
                        if m == 0 {
                            next_pad += 1;
                            return next_pad;
                        }
                        if p == 0 && j > 0 {
                            seq += 1;
                            packed = true;
                        }
                        seq
                    })
                    .collect()
            })
            .collect();
        packed.then_some(ids)
    }

    /// The `[rows, 1, seq, seq]` mask (true = masked) keeping packed sequences apart, or `None`
    /// when no row packs more than one sequence (see the module docs).
    pub fn packed_attention_mask(&self, device: &Device) -> Option<Tensor<4, Bool>> {
        let ids = self.sequence_ids()?;
        let [b, s] = self.dims();
        let mut masked = Vec::with_capacity(b * s * s);
        for row in &ids {
            for (i, qi) in row.iter().enumerate() {
                masked.extend(row.iter().enumerate().map(|(j, kj)| j > i || kj != qi));
            }
        }
        Some(Tensor::from_data(
            TensorData::new(masked, [b, 1, s, s]),
            device,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::{PackedBlock, PadOptions, collate_packed};

    fn block(ids: Vec<u32>, seq_lengths: Vec<usize>) -> PackedBlock {
        PackedBlock {
            labels: ids.iter().map(|&t| i64::from(t)).collect(),
            position_ids: seq_lengths.iter().flat_map(|&n| 0..n).collect(),
            input_ids: ids,
            seq_lengths,
        }
    }

    #[test]
    fn the_mask_is_causal_within_each_sequence_and_padding_sees_itself() {
        let blocks = [block(vec![1, 2, 3, 4], vec![2, 2]), block(vec![5], vec![1])];
        let batch = collate_packed(&blocks, &PadOptions::new(0)).unwrap();
        assert_eq!(
            batch.sequence_ids().unwrap(),
            vec![vec![0, 0, 1, 1], vec![0, 5, 6, 7]]
        );
        let mask: Vec<bool> = batch
            .packed_attention_mask(&Device::flex())
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        let visible = |m: &[bool]| -> Vec<Vec<usize>> {
            m.chunks(4)
                .map(|r| (0..4).filter(|&j| !r[j]).collect())
                .collect()
        };
        assert_eq!(
            visible(&mask[..16]),
            vec![vec![0], vec![0, 1], vec![2], vec![2, 3]]
        );
        assert_eq!(
            visible(&mask[16..]),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
    }

    #[test]
    fn single_sequences_get_no_custom_mask() {
        let blocks = [block(vec![1, 2, 3], vec![3]), block(vec![4], vec![1])];
        let batch = collate_packed(&blocks, &PadOptions::new(0)).unwrap();
        assert!(batch.sequence_ids().is_none());
        let options = batch.forward_options(&Device::flex());
        assert!(options.custom_mask.is_none() && options.position_ids.is_some());
    }
}
