//! SFT packing as TRL 1.16 does it (`SFTConfig(packing=True, packing_strategy=...)`).
//!
//! TRL builds each row's `labels` first (completion / assistant masks become −100), then packs
//! the `input_ids`/`labels` columns with `trl.data_utils.pack_dataset` at `max_length`, so the
//! masks travel through packing as labels. Three strategies:
//!
//! * `bfd` (TRL's default) — Best Fit Decreasing: empty rows dropped, each row truncated to
//!   `max_length` (keep start), rows sorted by length, longest first (ties in row order, as
//!   Arrow's stable sort), each put into the open bin whose free space is the smallest that
//!   fits it (among equal spaces, the bin that reached that space first), else into a new bin.
//!   Bins keep their creation order and their rows their insertion order.
//! * `bfd_split` — as `bfd`, but a row longer than `max_length` is cut into `max_length`-token
//!   pieces (the last one shorter) that are binned as rows of their own.
//! * `wrapped` — every row's tokens back to back, cut every `max_length` tokens, the final
//!   partial block kept; row boundaries are ignored.
//!
//! With `bfd`/`bfd_split` TRL trains padding-free: `DataCollatorForLanguageModeling` derives
//! `position_ids` restarting at 0 at every packed row, masks the label of every position 0
//! (`labels[position_ids == 0] = -100`, so no row's first token is predicted from the row
//! before it) and flash-attention's varlen kernels keep attention within each row. Here the
//! blocks carry those position ids and labels, and the forward pass builds the matching
//! block-diagonal causal mask from the position ids (see [`super::packed_mask`]), on every
//! backend. `wrapped` blocks are trained as ordinary sequences (positions `0..n`, attention
//! across row boundaries, no label masked), as TRL does without `padding_free`.
//!
//! TRL packs in `datasets.map` batches of 1000 rows ([`TRL_MAP_BATCH_SIZE`]); so does Temper.
//! One difference with TRL's pipeline: Temper drops a row that has no target token at all
//! before packing (TRL keeps it in a bin, where it takes space and adds no loss).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::pack::PackedBlock;
use super::tokenize::SftTokens;
use crate::{IGNORE_INDEX, ObjectiveError, Result};

/// TRL's `packing_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackingStrategy {
    /// Best Fit Decreasing, rows longer than `max_length` truncated (TRL's default).
    #[default]
    Bfd,
    /// Best Fit Decreasing, rows longer than `max_length` split into pieces.
    BfdSplit,
    /// Rows concatenated and cut every `max_length` tokens.
    Wrapped,
}

impl PackingStrategy {
    /// The names TRL accepts, in its order.
    pub const NAMES: [&'static str; 3] = ["bfd", "bfd_split", "wrapped"];

    /// TRL's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bfd => "bfd",
            Self::BfdSplit => "bfd_split",
            Self::Wrapped => "wrapped",
        }
    }

    /// Whether the packed rows keep their own positions and attention (TRL's padding-free
    /// mode), as opposed to one sequence per block (`wrapped`).
    pub fn keeps_rows_apart(self) -> bool {
        !matches!(self, Self::Wrapped)
    }

    /// Whether every token of a row is kept whatever its length (so rows must be read whole,
    /// not cut at `max_length` before tokenising).
    pub fn keeps_every_token(self) -> bool {
        !matches!(self, Self::Bfd)
    }
}

impl fmt::Display for PackingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PackingStrategy {
    type Err = ObjectiveError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bfd" => Ok(Self::Bfd),
            "bfd_split" => Ok(Self::BfdSplit),
            "wrapped" => Ok(Self::Wrapped),
            other => Err(ObjectiveError::Invalid(format!(
                "packing_strategy = \"{other}\": expected one of {:?}",
                Self::NAMES
            ))),
        }
    }
}

/// A row (or a piece of one) to be packed: its ids and aligned labels.
type Piece<'a> = (&'a [u32], &'a [i64]);

/// Rows TRL packs together: `pack_dataset` runs as a batched `datasets.map` with its default
/// `batch_size` of 1000, so no block holds rows from two such batches (and `wrapped` keeps one
/// partial block per batch).
pub const TRL_MAP_BATCH_SIZE: usize = 1000;

/// Packs tokenised SFT rows into blocks of at most `seq_length` tokens with `strategy`, in
/// batches of [`TRL_MAP_BATCH_SIZE`] rows as TRL does (see the module docs).
///
/// # Errors
/// `seq_length == 0`; a row whose labels and ids differ in length.
pub fn pack_sft(
    rows: &[SftTokens],
    seq_length: usize,
    strategy: PackingStrategy,
) -> Result<Vec<PackedBlock>> {
    pack_sft_in_batches(rows, seq_length, strategy, TRL_MAP_BATCH_SIZE)
}

/// [`pack_sft`] with another `datasets.map` batch size (TRL's `map_kwargs["batch_size"]`).
///
/// # Errors
/// `seq_length == 0` or `batch_size == 0`; a row whose labels and ids differ in length.
pub fn pack_sft_in_batches(
    rows: &[SftTokens],
    seq_length: usize,
    strategy: PackingStrategy,
    batch_size: usize,
) -> Result<Vec<PackedBlock>> {
    if seq_length == 0 || batch_size == 0 {
        return Err(ObjectiveError::Invalid(format!(
            "packing needs max_length > 0 and a batch size > 0 (got {seq_length} and \
             {batch_size})"
        )));
    }
    if let Some(i) = rows
        .iter()
        .position(|r| r.labels.len() != r.input_ids.len())
    {
        return Err(ObjectiveError::Invalid(format!(
            "row {i}: {} labels for {} input ids",
            rows[i].labels.len(),
            rows[i].input_ids.len()
        )));
    }
    Ok(rows
        .chunks(batch_size)
        .flat_map(|batch| pack_batch(batch, seq_length, strategy))
        .collect())
}

/// One `datasets.map` batch.
fn pack_batch(
    rows: &[SftTokens],
    seq_length: usize,
    strategy: PackingStrategy,
) -> Vec<PackedBlock> {
    match strategy {
        PackingStrategy::Wrapped => wrapped(rows, seq_length),
        PackingStrategy::Bfd | PackingStrategy::BfdSplit => {
            let pieces: Vec<Piece<'_>> = rows
                .iter()
                .filter(|r| !r.input_ids.is_empty())
                .flat_map(|r| pieces(r, seq_length, strategy == PackingStrategy::BfdSplit))
                .collect();
            best_fit_decreasing(&pieces, seq_length)
                .into_iter()
                .map(|bin| padding_free_block(bin.iter().map(|&i| pieces[i])))
                .collect()
        }
    }
}

/// `bfd`: the row's first `seq_length` tokens; `bfd_split`: the row in `seq_length` pieces.
fn pieces(row: &SftTokens, seq_length: usize, split: bool) -> Vec<Piece<'_>> {
    if split {
        row.input_ids
            .chunks(seq_length)
            .zip(row.labels.chunks(seq_length))
            .collect()
    } else {
        let n = row.input_ids.len().min(seq_length);
        vec![(&row.input_ids[..n], &row.labels[..n])]
    }
}

/// The bins (indices into `pieces`, in insertion order), in creation order.
///
/// TRL keeps a segment tree over the free spaces to find the smallest one that fits; a sorted
/// map from free space to the bins with that space (oldest first) answers the same question.
fn best_fit_decreasing(pieces: &[Piece<'_>], seq_length: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    // Stable: equal lengths stay in row order, as Arrow's sort does.
    order.sort_by_key(|&i| std::cmp::Reverse(pieces[i].0.len()));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // Free space (0 < space < seq_length) → bins with exactly that space, first come first.
    let mut by_space: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    let mut free: Vec<usize> = Vec::new();
    for i in order {
        let len = pieces[i].0.len();
        let fitting = by_space.range(len..).next().map(|(&space, _)| space);
        let bin = match fitting.and_then(|space| take_bin(&mut by_space, space)) {
            Some(bin) => bin,
            None => {
                bins.push(Vec::new());
                free.push(seq_length);
                bins.len() - 1
            }
        };
        bins[bin].push(i);
        free[bin] -= len;
        if free[bin] > 0 {
            by_space.entry(free[bin]).or_default().push_back(bin);
        }
    }
    bins
}

/// The oldest bin with exactly `space` free, forgetting the space once no bin has it.
fn take_bin(by_space: &mut BTreeMap<usize, VecDeque<usize>>, space: usize) -> Option<usize> {
    let queue = by_space.get_mut(&space)?;
    let bin = queue.pop_front();
    if queue.is_empty() {
        by_space.remove(&space);
    }
    bin
}

/// One padding-free block: the pieces back to back, positions restarting at 0 at each, the
/// label at every position 0 masked (TRL's collator).
fn padding_free_block<'a>(pieces: impl Iterator<Item = Piece<'a>>) -> PackedBlock {
    let mut block = PackedBlock {
        input_ids: Vec::new(),
        labels: Vec::new(),
        position_ids: Vec::new(),
        seq_lengths: Vec::new(),
    };
    for (ids, labels) in pieces {
        block.input_ids.extend_from_slice(ids);
        let first = block.labels.len();
        block.labels.extend_from_slice(labels);
        block.labels[first] = IGNORE_INDEX;
        block.position_ids.extend(0..ids.len());
        block.seq_lengths.push(ids.len());
    }
    block
}

/// `wrapped`: one stream of tokens cut every `seq_length`; each block is one sequence.
fn wrapped(rows: &[SftTokens], seq_length: usize) -> Vec<PackedBlock> {
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.input_ids.clone()).collect();
    let labels: Vec<i64> = rows.iter().flat_map(|r| r.labels.clone()).collect();
    ids.chunks(seq_length)
        .zip(labels.chunks(seq_length))
        .map(|(ids, labels)| PackedBlock {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            position_ids: (0..ids.len()).collect(),
            seq_lengths: vec![ids.len()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rows(ids: &[&[u32]]) -> Vec<SftTokens> {
        ids.iter()
            .map(|r| SftTokens::all_targets(r.to_vec()))
            .collect()
    }

    fn ids(blocks: &[PackedBlock]) -> Vec<Vec<u32>> {
        blocks.iter().map(|b| b.input_ids.clone()).collect()
    }

    /// The example of `trl.pack_dataset`'s docstring.
    #[test]
    fn matches_the_trl_docstring() {
        let r = rows(&[&[1, 2, 3, 4, 5], &[6, 7], &[8, 9, 10], &[11]]);
        let bfd = pack_sft(&r, 4, PackingStrategy::Bfd).unwrap();
        assert_eq!(
            ids(&bfd),
            vec![vec![1, 2, 3, 4], vec![8, 9, 10, 11], vec![6, 7]]
        );
        let lens: Vec<Vec<usize>> = bfd.iter().map(|b| b.seq_lengths.clone()).collect();
        assert_eq!(lens, vec![vec![4], vec![3, 1], vec![2]]);
        assert_eq!(bfd[1].position_ids, vec![0, 1, 2, 0]);
        assert_eq!(bfd[1].labels, vec![-100, 9, 10, -100]);
        let split = pack_sft(&r, 4, PackingStrategy::BfdSplit).unwrap();
        assert_eq!(
            ids(&split),
            vec![vec![1, 2, 3, 4], vec![8, 9, 10, 5], vec![6, 7, 11]]
        );
        let wrapped = pack_sft(&r, 4, PackingStrategy::Wrapped).unwrap();
        assert_eq!(
            ids(&wrapped),
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 11]]
        );
        assert_eq!(wrapped[1].labels, vec![5, 6, 7, 8]);
        assert_eq!(wrapped[2].position_ids, vec![0, 1, 2]);
    }

    #[test]
    fn names_round_trip_and_bad_input_is_refused() {
        for name in PackingStrategy::NAMES {
            assert_eq!(name.parse::<PackingStrategy>().unwrap().name(), name);
        }
        let err = "ffd".parse::<PackingStrategy>().unwrap_err().to_string();
        assert!(
            err.contains("packing_strategy") && err.contains("ffd"),
            "{err}"
        );
        assert!(pack_sft(&rows(&[&[1]]), 0, PackingStrategy::Bfd).is_err());
        let bad = SftTokens {
            input_ids: vec![1, 2],
            labels: vec![1],
            completion_start: None,
        };
        assert!(pack_sft(&[bad], 4, PackingStrategy::Bfd).is_err());
        assert!(
            pack_sft(&rows(&[&[]]), 4, PackingStrategy::Bfd)
                .unwrap()
                .is_empty()
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn rows() -> impl Strategy<Value = Vec<Vec<u32>>> {
            prop::collection::vec(prop::collection::vec(1u32..50, 0..14), 0..12)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            /// BFD blocks hold every non-empty row (truncated, or split into pieces) exactly
            /// once and whole, never overflow, and carry TRL's padding-free positions and
            /// labels.
            #[test]
            fn bfd_keeps_rows_whole_and_blocks_within_length(
                raw in rows(),
                seq_length in 1usize..10,
                split in any::<bool>(),
            ) {
                let strategy = if split { PackingStrategy::BfdSplit } else { PackingStrategy::Bfd };
                let input: Vec<SftTokens> = raw.iter().map(|r| SftTokens::all_targets(r.clone())).collect();
                let blocks = pack_sft(&input, seq_length, strategy).unwrap();
                let mut expected: Vec<Vec<u32>> = raw
                    .iter()
                    .filter(|r| !r.is_empty())
                    .flat_map(|r| {
                        if split {
                            r.chunks(seq_length).map(<[u32]>::to_vec).collect::<Vec<_>>()
                        } else {
                            vec![r[..r.len().min(seq_length)].to_vec()]
                        }
                    })
                    .collect();
                let mut got = Vec::new();
                for b in &blocks {
                    prop_assert!(b.input_ids.len() <= seq_length && !b.input_ids.is_empty());
                    prop_assert_eq!(b.seq_lengths.iter().sum::<usize>(), b.input_ids.len());
                    let mut at = 0;
                    for &len in &b.seq_lengths {
                        got.push(b.input_ids[at..at + len].to_vec());
                        let pos: Vec<usize> = (0..len).collect();
                        prop_assert_eq!(&b.position_ids[at..at + len], &pos[..]);
                        prop_assert_eq!(b.labels[at], IGNORE_INDEX);
                        for j in at + 1..at + len {
                            prop_assert_eq!(b.labels[j], i64::from(b.input_ids[j]));
                        }
                        at += len;
                    }
                }
                expected.sort();
                got.sort();
                prop_assert_eq!(got, expected);
                // A bin is opened only when no open bin fits its first (largest) piece, so no
                // two bins would fit into one.
                let lens: Vec<usize> = blocks.iter().map(|b| b.input_ids.len()).collect();
                for (i, a) in lens.iter().enumerate() {
                    for b in &lens[i + 1..] {
                        prop_assert!(a + b > seq_length);
                    }
                }
            }
        }
    }
}
