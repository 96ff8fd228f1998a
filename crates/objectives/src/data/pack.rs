//! CPT packing: documents concatenated (EOS between them) and cut into fixed-length blocks.
//!
//! This is the classic continued-pre-training layout (HF `run_clm.group_texts`, TRL's
//! `packing_strategy="wrapped"`): a document may straddle two blocks and, by default, attention
//! and positions run across document boundaries inside a block. The final partial block is kept
//! like TRL's `wrapped` (shorter than the others; the collator pads it) or dropped like
//! `run_clm` ([`PackOptions::drop_remainder`]).
//!
//! With [`PackOptions::reset_position_ids`], positions restart at 0 at every document start
//! (and at the start of each block), and each document's first token gets label −100 — TRL's
//! padding-free collator does the same (`labels[position_ids == 0] = -100`) so that a document's
//! first token is never predicted from the previous document; the forward pass then also keeps
//! attention within each document piece (a block-diagonal mask built from the restarting
//! position ids, [`super::packed_mask`]), as HF's flash-attention does with such position ids.

use crate::{IGNORE_INDEX, ObjectiveError, Result};

/// Packing options.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Tokens per block (`max_length`).
    pub block_len: usize,
    /// Append this EOS id to every document that does not already end with it. `None`: the
    /// documents are used as given (e.g. already tokenised with EOS by
    /// [`super::tokenize::Preprocessor::tokenize_document`]).
    pub eos_id: Option<u32>,
    /// Drop the final partial block (`run_clm`) instead of keeping it (TRL `wrapped`).
    pub drop_remainder: bool,
    /// Restart position ids per document and mask each document's first label.
    pub reset_position_ids: bool,
}

impl PackOptions {
    /// Blocks of `block_len` tokens, EOS `eos_id` between documents, remainder kept, no position
    /// reset.
    pub fn new(block_len: usize, eos_id: Option<u32>) -> Self {
        Self {
            block_len,
            eos_id,
            drop_remainder: false,
            reset_position_ids: false,
        }
    }
}

/// One packed block (length `block_len`, or less for a kept final block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBlock {
    pub input_ids: Vec<u32>,
    /// `input_ids`, with −100 on document starts when positions are reset.
    pub labels: Vec<i64>,
    /// `0..len`, or restarting at every document start with [`PackOptions::reset_position_ids`].
    pub position_ids: Vec<usize>,
    /// Lengths of the document pieces in the block, in order (sum = block length).
    pub seq_lengths: Vec<usize>,
}

/// Streaming packer: feed documents with [`BlockPacker::push`], collect the remainder with
/// [`BlockPacker::finish`].
#[derive(Debug, Clone)]
pub struct BlockPacker {
    opts: PackOptions,
    ids: Vec<u32>,
    seq_lengths: Vec<usize>,
    /// Whether the current piece begins a document (false for a continuation across blocks).
    starts: Vec<bool>,
}

impl BlockPacker {
    /// A packer.
    ///
    /// # Errors
    /// `block_len == 0`.
    pub fn new(opts: PackOptions) -> Result<Self> {
        if opts.block_len == 0 {
            return Err(ObjectiveError::Invalid(
                "packing block length must be > 0".into(),
            ));
        }
        Ok(Self {
            ids: Vec::with_capacity(opts.block_len),
            seq_lengths: Vec::new(),
            starts: Vec::new(),
            opts,
        })
    }

    fn emit(&mut self) -> PackedBlock {
        let ids = std::mem::take(&mut self.ids);
        let seq_lengths = std::mem::take(&mut self.seq_lengths);
        let starts = std::mem::take(&mut self.starts);
        let mut labels: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let position_ids = if self.opts.reset_position_ids {
            let mut pos = Vec::with_capacity(ids.len());
            let mut at = 0;
            for (&len, &is_start) in seq_lengths.iter().zip(&starts) {
                pos.extend(0..len);
                // TRL masks every position-0 label; a block's first label is never a target
                // anyway (labels are shifted), so continuation pieces are covered too.
                if is_start || at == 0 {
                    labels[at] = IGNORE_INDEX;
                }
                at += len;
            }
            pos
        } else {
            (0..ids.len()).collect()
        };
        self.ids.reserve(self.opts.block_len);
        PackedBlock {
            input_ids: ids,
            labels,
            position_ids,
            seq_lengths,
        }
    }

    /// Add one document; returns the blocks it completed.
    pub fn push(&mut self, doc: &[u32]) -> Vec<PackedBlock> {
        let eos = self.opts.eos_id.filter(|&e| doc.last() != Some(&e));
        let mut out = Vec::new();
        let mut rest = doc.iter().copied().chain(eos).peekable();
        let mut first_piece = true;
        while rest.peek().is_some() {
            let space = self.opts.block_len - self.ids.len();
            let before = self.ids.len();
            self.ids.extend(rest.by_ref().take(space));
            self.seq_lengths.push(self.ids.len() - before);
            self.starts.push(first_piece);
            first_piece = false;
            if self.ids.len() == self.opts.block_len {
                out.push(self.emit());
            }
        }
        out
    }

    /// The final partial block, unless empty or [`PackOptions::drop_remainder`].
    pub fn finish(mut self) -> Option<PackedBlock> {
        if self.ids.is_empty() || self.opts.drop_remainder {
            None
        } else {
            Some(self.emit())
        }
    }
}

/// Pack tokenised documents into blocks.
///
/// # Errors
/// `block_len == 0`.
pub fn pack_documents(docs: &[Vec<u32>], opts: &PackOptions) -> Result<Vec<PackedBlock>> {
    let mut packer = BlockPacker::new(opts.clone())?;
    let mut blocks = Vec::new();
    for d in docs {
        blocks.extend(packer.push(d));
    }
    blocks.extend(packer.finish());
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EOS: u32 = 0;

    #[test]
    fn packs_with_eos_between_documents() {
        let docs = vec![vec![1, 2, 3], vec![4, 5, EOS], vec![6]];
        let blocks = pack_documents(&docs, &PackOptions::new(4, Some(EOS))).unwrap();
        let ids: Vec<Vec<u32>> = blocks.iter().map(|b| b.input_ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2, 3, EOS], vec![4, 5, EOS, 6], vec![EOS]]);
        assert_eq!(blocks[1].seq_lengths, vec![3, 1]);
        assert_eq!(blocks[1].labels, vec![4, 5, 0, 6]);
        assert_eq!(blocks[1].position_ids, vec![0, 1, 2, 3]);
        let dropped = pack_documents(
            &docs,
            &PackOptions {
                drop_remainder: true,
                ..PackOptions::new(4, Some(EOS))
            },
        )
        .unwrap();
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn long_documents_straddle_blocks_and_positions_reset() {
        let opts = PackOptions {
            reset_position_ids: true,
            ..PackOptions::new(4, Some(EOS))
        };
        let blocks = pack_documents(&[vec![1, 2, 3, 4, 5, 6], vec![7]], &opts).unwrap();
        assert_eq!(blocks[0].input_ids, vec![1, 2, 3, 4]);
        assert_eq!(blocks[1].input_ids, vec![5, 6, EOS, 7]);
        assert_eq!(blocks[1].seq_lengths, vec![3, 1]);
        assert_eq!(blocks[1].position_ids, vec![0, 1, 2, 0]);
        assert_eq!(blocks[1].labels, vec![-100, 6, 0, -100]);
        assert_eq!(blocks[2].input_ids, vec![EOS]);
        assert_eq!(blocks[2].position_ids, vec![0]);
    }

    #[test]
    fn without_eos_documents_are_used_as_given() {
        let blocks = pack_documents(&[vec![1, 2], vec![3]], &PackOptions::new(2, None)).unwrap();
        let ids: Vec<Vec<u32>> = blocks.iter().map(|b| b.input_ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3]]);
        assert!(
            pack_documents(&[], &PackOptions::new(2, None))
                .unwrap()
                .is_empty()
        );
        assert!(BlockPacker::new(PackOptions::new(0, None)).is_err());
        // An empty document still contributes its EOS.
        let blocks = pack_documents(&[vec![], vec![1]], &PackOptions::new(8, Some(EOS))).unwrap();
        assert_eq!(blocks[0].input_ids, vec![EOS, 1, EOS]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn docs() -> impl Strategy<Value = Vec<Vec<u32>>> {
            prop::collection::vec(prop::collection::vec(0u32..6, 0..12), 0..10)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Every token (with the EOS added where missing) appears exactly once, in order;
            /// full blocks have `block_len` tokens; pieces and positions agree.
            #[test]
            fn packing_preserves_every_token_once_in_order(
                docs in docs(),
                block_len in 1usize..9,
                reset in any::<bool>(),
                drop_remainder in any::<bool>(),
            ) {
                let opts = PackOptions { block_len, eos_id: Some(EOS), drop_remainder, reset_position_ids: reset };
                let blocks = pack_documents(&docs, &opts).unwrap();
                let expected: Vec<u32> = docs
                    .iter()
                    .flat_map(|d| {
                        let eos = (d.last() != Some(&EOS)).then_some(EOS);
                        d.iter().copied().chain(eos)
                    })
                    .collect();
                let packed: Vec<u32> = blocks.iter().flat_map(|b| b.input_ids.clone()).collect();
                let kept = if drop_remainder { expected.len() / block_len * block_len } else { expected.len() };
                prop_assert_eq!(&packed[..], &expected[..kept]);
                for (i, b) in blocks.iter().enumerate() {
                    if i + 1 < blocks.len() || drop_remainder {
                        prop_assert_eq!(b.input_ids.len(), block_len);
                    }
                    prop_assert!(!b.input_ids.is_empty());
                    prop_assert_eq!(b.seq_lengths.iter().sum::<usize>(), b.input_ids.len());
                    prop_assert_eq!(b.labels.len(), b.input_ids.len());
                    prop_assert_eq!(b.position_ids.len(), b.input_ids.len());
                    let restarts = b.position_ids.iter().filter(|&&p| p == 0).count();
                    prop_assert_eq!(restarts, if reset { b.seq_lengths.len() } else { 1 });
                    for (j, (&l, &t)) in b.labels.iter().zip(&b.input_ids).enumerate() {
                        let masked = reset && b.position_ids[j] == 0;
                        prop_assert_eq!(l, if masked { IGNORE_INDEX } else { i64::from(t) });
                    }
                }
            }
        }
    }
}
