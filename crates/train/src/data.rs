//! The training data order: a seeded shuffled order per epoch and micro-batches addressed by a
//! global index (the rows themselves are `temper_objectives::data::TrainRows`).
//!
//! The order of epoch `e` is a Fisher–Yates shuffle driven by ChaCha8 seeded with
//! `seed + e`; micro-batch `m` is chunk `m mod nb` of epoch `m div nb`'s order (`nb` =
//! batches per epoch, the last one may be short, like a `DataLoader` with `drop_last=False`).
//! The data position of a run is therefore just the index of the next micro-batch, and a
//! resumed run sees exactly the batches the uninterrupted run would have seen.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Result, TrainError};

/// Seeded shuffled order and micro-batch addressing over `len` rows.
#[derive(Debug, Clone)]
pub struct DataOrder {
    len: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    cached: Option<(usize, Vec<usize>)>,
}

impl DataOrder {
    /// An order over `len` rows in micro-batches of `batch_size`.
    ///
    /// # Errors
    /// No rows or a zero batch size.
    pub fn new(len: usize, batch_size: usize, seed: u64, shuffle: bool) -> Result<Self> {
        if len == 0 {
            return Err(TrainError::Data("no training rows".into()));
        }
        if batch_size == 0 {
            return Err(TrainError::Data("batch size must be positive".into()));
        }
        Ok(Self {
            len,
            batch_size,
            seed,
            shuffle,
            cached: None,
        })
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.len.div_ceil(self.batch_size)
    }

    /// The row order of epoch `epoch`.
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch as u64));
            order.shuffle(&mut rng);
        }
        order
    }

    /// The row indices of global micro-batch `index`.
    pub fn batch(&mut self, index: usize) -> Vec<usize> {
        let nb = self.batches_per_epoch();
        let (epoch, b) = (index / nb, index % nb);
        let order = match &self.cached {
            Some((e, order)) if *e == epoch => order,
            _ => {
                let order = self.epoch_order(epoch);
                &self.cached.insert((epoch, order)).1
            }
        };
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.len);
        order
            .get(start..end)
            .map(<[usize]>::to_vec)
            .unwrap_or_default()
    }

    /// Epochs completed after consuming `micro_batches` micro-batches (fractional, like HF's
    /// logged `epoch`).
    pub fn epoch_at(&self, micro_batches: usize) -> f64 {
        micro_batches as f64 / self.batches_per_epoch() as f64
    }
}
