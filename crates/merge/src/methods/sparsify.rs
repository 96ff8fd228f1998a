//! Sparsification of task vectors (τ = θ − θ_base) before they are combined.
//!
//! Four rules, as in mergekit 0.1.5's `sparsify.py`:
//!
//! * [`magnitude`] (TIES): keep the `max(1, ⌊density·n⌋)` largest |τ|.
//! * [`magnitude_outliers`] (Model Breadcrumbs): sort |τ| ascending, drop the `⌊gamma·n⌋`
//!   largest (outliers) and as many of the smallest as needed to keep `⌊density·n⌋`.
//! * [`bernoulli`] (DARE): keep each entry independently with probability `density`.
//! * [`della_magprune`] (DELLA): keep each entry with a probability that grows linearly with
//!   its magnitude rank within its row, from `density − ε` (smallest) to `density + ε`
//!   (largest).
//!
//! Any of them can be followed by mergekit's L1 rescale (`rescale: true`): the kept entries are
//! multiplied by `‖τ‖₁ / ‖mask ⊙ τ‖₁`, so the sparse task vector has the L1 mass of the dense
//! one (unless either norm is below 1e-7). DARE's paper rescales by `1/density`; the L1 ratio
//! is the same in expectation and is what mergekit does.
//!
//! Arithmetic is in the compute dtype like the rest of the task-arithmetic family (see
//! `task_arithmetic.rs`): every elementwise result is rounded to it, reductions accumulate in
//! f64 and round once. The random rules compute in f32 for f16 inputs (torch has no CPU f16
//! `bernoulli`, so mergekit upcasts) and round back at the end.
//!
//! Randomness comes only from the `seed` argument: the mask of element `j` is drawn from a
//! ChaCha8 stream selected by `j / CHUNK`, so masks do not depend on the thread count. Exact
//! ties in magnitude are broken by index (torch's unstable sorts break them arbitrarily).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::DType;
use crate::method::CHUNK;

/// Below this L1 norm (before or after masking) the L1 rescale is skipped.
pub const RESCALE_EPS: f32 = 1e-7;

/// The seed of input `input`'s random mask, from the tensor's seed.
pub fn input_seed(seed: u64, input: usize) -> u64 {
    seed ^ (input as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The dtype the random rules compute in: f16 is upcast to f32, others are kept.
pub fn random_work_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 => DType::F32,
        other => other,
    }
}

/// ‖v‖₁ accumulated in f64 over fixed chunks (deterministic), rounded once to `dtype`.
pub fn l1(v: &[f32], dtype: DType) -> f32 {
    let parts: Vec<f64> = v
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|x| f64::from(x.abs())).sum::<f64>())
        .collect();
    dtype.round(parts.into_iter().sum::<f64>() as f32)
}

/// Scale the masked `delta` so its L1 norm is `before` again (mergekit's `RescaleNorm.l1`):
/// `delta·(before/after)`, the ratio and every product rounded to `dtype`.
fn rescale_l1(before: f32, delta: &mut [f32], dtype: DType) {
    let after = l1(delta, dtype);
    if before < RESCALE_EPS || after < RESCALE_EPS {
        return;
    }
    let ratio = dtype.round(before / after);
    delta
        .par_iter_mut()
        .for_each(|v| *v = dtype.round(*v * ratio));
}

/// Keep the `k = max(1, ⌊density·n⌋)` entries of largest magnitude, zero the rest (TIES);
/// `density ≤ 0` zeroes everything, `density ≥ 1` keeps everything. With `rescale`, the kept
/// entries are L1-rescaled in `dtype`.
///
/// Entries tied at the threshold magnitude are kept in index order until `k` are kept, so the
/// result is deterministic (torch's unstable argsort breaks such ties arbitrarily, which only
/// matters for data with many exactly equal magnitudes, e.g. bf16).
pub fn magnitude(delta: &mut [f32], density: f64, rescale: bool, dtype: DType) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    if density <= 0.0 || density.is_nan() {
        delta.fill(0.0);
        return;
    }
    let before = rescale.then(|| l1(delta, dtype));
    let n = delta.len();
    let k = ((density * n as f64) as usize).clamp(1, n);
    let mut mags: Vec<f32> = delta.iter().map(|v| v.abs()).collect();
    // The k-th largest magnitude (index k-1 in descending order).
    let (_, kth, _) = mags.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    let above = delta.iter().filter(|v| v.abs() > threshold).count();
    let mut ties_left = k - above;
    for v in delta.iter_mut() {
        let m = v.abs();
        if m > threshold {
            continue;
        }
        if m == threshold && ties_left > 0 {
            ties_left -= 1;
            continue;
        }
        *v = 0.0;
    }
    if let Some(before) = before {
        rescale_l1(before, delta, dtype);
    }
}

/// Keep the entries whose rank in ascending (|value|, index) order lies in `lo..hi`.
fn keep_rank_range(delta: &mut [f32], lo: usize, hi: usize) {
    let n = delta.len();
    if lo >= hi || lo >= n {
        delta.fill(0.0);
        return;
    }
    let hi = hi.min(n);
    let mut mags: Vec<f32> = delta.iter().map(|v| v.abs()).collect();
    let a = *mags.select_nth_unstable_by(lo, f32::total_cmp).1;
    let b = *mags.select_nth_unstable_by(hi - 1, f32::total_cmp).1;
    let less = |t: f32| {
        delta
            .iter()
            .filter(|v| v.abs().total_cmp(&t).is_lt())
            .count()
    };
    let (below_a, below_b) = (less(a), less(b));
    let (mut seen_a, mut seen_b) = (0usize, 0usize);
    for v in delta.iter_mut() {
        let m = v.abs();
        let rank = if m == a {
            seen_a += 1;
            Some(below_a + seen_a - 1)
        } else if m == b {
            seen_b += 1;
            Some(below_b + seen_b - 1)
        } else {
            None
        };
        let keep = match rank {
            Some(r) => (lo..hi).contains(&r),
            // Strictly between the two rank boundaries, or outside them.
            None => m.total_cmp(&a).is_gt() && m.total_cmp(&b).is_lt(),
        };
        if !keep {
            *v = 0.0;
        }
    }
}

/// Model Breadcrumbs' `magnitude_outliers`: with `n` entries sorted by ascending magnitude,
/// keep ranks `[n_bot, n_bot + ⌊density·n⌋)` where `n_bot = max(0, n − ⌊density·n⌋ −
/// ⌊gamma·n⌋)`: the `⌊gamma·n⌋` largest entries (outliers) and the smallest ones are dropped.
/// The outlier cut shrinks when it would leave fewer than `⌊density·n⌋` entries.
/// `density ≥ 1` keeps everything, `density ≤ 0` nothing. `gamma` must be ≥ 0 (checked by the
/// caller). With `rescale`, the kept entries are L1-rescaled in `dtype`.
pub fn magnitude_outliers(
    delta: &mut [f32],
    density: f64,
    gamma: f64,
    rescale: bool,
    dtype: DType,
) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    let n = delta.len();
    let target = (density.max(0.0) * n as f64) as usize;
    let n_top = (gamma.max(0.0) * n as f64) as usize;
    let n_bot = n.saturating_sub(target.saturating_add(n_top));
    let before = rescale.then(|| l1(delta, dtype));
    keep_rank_range(delta, n_bot, n_bot + target);
    if let Some(before) = before {
        rescale_l1(before, delta, dtype);
    }
}

/// A uniform draw in `[0, 1)` with 53 random bits.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Zero each entry `j` unless a uniform draw is below `p(j)`. Entry `j`'s draw comes from
/// ChaCha8 stream `j / CHUNK` of `seed`, one draw per entry in order.
fn bernoulli_mask(delta: &mut [f32], seed: u64, p: impl Fn(usize) -> f64 + Sync) {
    delta
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(c as u64);
            let start = c * CHUNK;
            for (j, v) in chunk.iter_mut().enumerate() {
                let keep = uniform(&mut rng) < p(start + j);
                if !keep {
                    *v = 0.0;
                }
            }
        });
}

/// DARE: keep each entry with probability `density` (rounded to the compute dtype, as
/// mergekit fills the probability tensor in it), zero the rest; then with `rescale` the L1
/// rescale. `density ≥ 1` keeps everything, `density ≤ 0` nothing.
pub fn bernoulli(delta: &mut [f32], density: f64, rescale: bool, dtype: DType, seed: u64) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    if density <= 0.0 || density.is_nan() {
        delta.fill(0.0);
        return;
    }
    let work = random_work_dtype(dtype);
    let p = f64::from(work.round(density as f32));
    let before = rescale.then(|| l1(delta, work));
    bernoulli_mask(delta, seed, |_| p);
    if let Some(before) = before {
        rescale_l1(before, delta, work);
        if work != dtype {
            delta.par_iter_mut().for_each(|v| *v = dtype.round(*v));
        }
    }
}

/// The vectors DELLA ranks magnitudes within: tensors of rank < 2 are one vector; otherwise
/// vectors run along axis 1 (the rows of a matrix), one per index of the other axes.
#[derive(Debug, Clone, Copy)]
struct Axis1Lines {
    /// Elements per vector (`shape[1]`, or `n` for rank < 2).
    len: usize,
    /// Distance between consecutive elements of a vector (product of `shape[2..]`).
    stride: usize,
    count: usize,
}

impl Axis1Lines {
    fn new(shape: &[usize], n: usize) -> Self {
        if shape.len() < 2 {
            return Self {
                len: n,
                stride: 1,
                count: usize::from(n > 0),
            };
        }
        let len = shape[1];
        let stride: usize = shape[2..].iter().product();
        let count = n.checked_div(len).unwrap_or(0);
        Self { len, stride, count }
    }

    /// Flat index of element `j` of vector `line`.
    fn index(&self, line: usize, j: usize) -> usize {
        let (outer, inner) = (line / self.stride, line % self.stride);
        outer * self.len * self.stride + j * self.stride + inner
    }
}

/// DELLA's `della_magprune`: within each vector (see [`Axis1Lines`]) entry of ascending
/// magnitude rank `r ∈ 1..=L` is kept with probability
/// `p = (density − ε) + 2ε·(r − 1)/(L − 1)` (computed in the compute dtype), so the largest
/// entries are the most likely to survive while the expected density stays `density`. Then
/// the L1 rescale over the whole tensor with `rescale`. The caller checks
/// `0 < density − ε` and `density + ε < 1`. A vector of one element (where mergekit divides by
/// zero) keeps its entry with probability `density`. `density ≥ 1` keeps everything,
/// `density ≤ 0` nothing.
#[allow(clippy::too_many_arguments)]
pub fn della_magprune(
    delta: &mut [f32],
    shape: &[usize],
    density: f64,
    epsilon: f64,
    rescale: bool,
    dtype: DType,
    seed: u64,
) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    if density <= 0.0 || density.is_nan() {
        delta.fill(0.0);
        return;
    }
    let work = random_work_dtype(dtype);
    let r = |x: f32| work.round(x);
    let n = delta.len();
    let lines = Axis1Lines::new(shape, n);
    let low = (density - epsilon) as f32;
    let eps = epsilon as f32;
    let span = r(r(lines.len as f32) - 1.0);
    // Probability of every entry, per vector: rank by (|τ|, index), then the linear map.
    let line_probs = |line: usize| -> Vec<f32> {
        let mut order: Vec<usize> = (0..lines.len).collect();
        let mag = |j: usize| delta[lines.index(line, j)].abs();
        order.sort_by(|&x, &y| mag(x).total_cmp(&mag(y)).then(x.cmp(&y)));
        let mut p = vec![density as f32; lines.len];
        if lines.len >= 2 {
            for (pos, &j) in order.iter().enumerate() {
                let rank = r((pos + 1) as f32);
                let norm = r(r(rank - 1.0) / span).clamp(0.0, 1.0);
                p[j] = r(low + r(r(norm * 2.0) * eps));
            }
        }
        p
    };
    let mut probs = vec![0f32; n];
    if lines.stride == 1 {
        probs
            .par_chunks_mut(lines.len)
            .enumerate()
            .for_each(|(line, chunk)| chunk.copy_from_slice(&line_probs(line)));
    } else {
        let per_line: Vec<Vec<f32>> = (0..lines.count).into_par_iter().map(line_probs).collect();
        for (line, p) in per_line.iter().enumerate() {
            for (j, v) in p.iter().enumerate() {
                probs[lines.index(line, j)] = *v;
            }
        }
    }
    let before = rescale.then(|| l1(delta, work));
    bernoulli_mask(delta, seed, |j| f64::from(probs[j]));
    if let Some(before) = before {
        rescale_l1(before, delta, work);
        if work != dtype {
            delta.par_iter_mut().for_each(|v| *v = dtype.round(*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_magnitudes() {
        let mut d = vec![0.1f32, -0.5, 0.3, 0.05, -0.2];
        magnitude(&mut d, 0.4, false, DType::F32);
        assert_eq!(d, vec![0.0, -0.5, 0.3, 0.0, 0.0]);
    }

    #[test]
    fn keeps_at_least_one_and_breaks_ties_by_index() {
        let mut d = vec![1.0f32, -1.0, 1.0];
        magnitude(&mut d, 0.01, false, DType::F32);
        assert_eq!(d, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn magnitude_zero_density_drops_everything_and_rescale_restores_l1() {
        let mut d = vec![1.0f32, -2.0, 3.0];
        magnitude(&mut d, 0.0, false, DType::F32);
        assert_eq!(d, vec![0.0; 3]);
        // Keep 3 and -2 of (1, -2, 3, 0.5): L1 6.5 → 5, so both scale by 1.3.
        let mut d = vec![1.0f32, -2.0, 3.0, 0.5];
        magnitude(&mut d, 0.5, true, DType::F32);
        assert_eq!(d, vec![0.0, -2.0 * 1.3, 3.0 * 1.3, 0.0]);
    }

    #[test]
    fn outliers_drop_the_top_gamma_and_the_bottom() {
        // n = 10, density 0.5 → keep 5; gamma 0.2 → drop the 2 largest; n_bot = 3.
        let mut d: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        d.reverse();
        magnitude_outliers(&mut d, 0.5, 0.2, false, DType::F32);
        // Ascending ranks 3..8 are the values 4..=8.
        let want: Vec<f32> = (1..=10)
            .rev()
            .map(|v| if (4..=8).contains(&v) { v as f32 } else { 0.0 })
            .collect();
        assert_eq!(d, want);
    }

    #[test]
    fn outliers_shrink_the_cut_to_keep_the_density() {
        // density 0.9 + gamma 0.2 > 1: n_bot = 0, keep the 9 smallest (only the top one goes).
        let mut d: Vec<f32> = (1..=10).map(|v| -(v as f32)).collect();
        magnitude_outliers(&mut d, 0.9, 0.2, false, DType::F32);
        assert_eq!(d[9], 0.0);
        assert!(d[..9].iter().all(|v| *v != 0.0));
    }

    #[test]
    fn outliers_break_ties_by_index() {
        let mut d = vec![1.0f32; 6];
        // Keep ascending ranks 2..5 (n_bot = 6 − 3 − 1 = 2): indices 2, 3, 4.
        magnitude_outliers(&mut d, 0.5, 1.0 / 6.0 + 1e-9, false, DType::F32);
        assert_eq!(d, vec![0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn bernoulli_is_reproducible_and_keeps_about_density() {
        let base: Vec<f32> = (0..100_000).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut a = base.clone();
        let mut b = base.clone();
        let mut c = base.clone();
        bernoulli(&mut a, 0.3, false, DType::F32, 42);
        bernoulli(&mut b, 0.3, false, DType::F32, 42);
        bernoulli(&mut c, 0.3, false, DType::F32, 43);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept = a.iter().filter(|v| **v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.3).abs() < 0.01, "kept {kept}");
        // With rescale, the L1 norm is preserved.
        let mut d = base.clone();
        bernoulli(&mut d, 0.3, true, DType::F32, 42);
        let (l_before, l_after) = (l1(&base, DType::F32), l1(&d, DType::F32));
        assert!((l_before - l_after).abs() / l_before < 1e-5);
    }

    #[test]
    fn della_prefers_large_magnitudes() {
        // One row of 1000 increasing magnitudes: the top half should survive more often.
        let row: Vec<f32> = (1..=1000).map(|v| v as f32).collect();
        let mut kept_low = 0;
        let mut kept_high = 0;
        for seed in 0..20 {
            let mut d = row.clone();
            della_magprune(&mut d, &[1, 1000], 0.5, 0.4, false, DType::F32, seed);
            kept_low += d[..500].iter().filter(|v| **v != 0.0).count();
            kept_high += d[500..].iter().filter(|v| **v != 0.0).count();
        }
        // Expected keep probability 0.3 for the low half, 0.7 for the high half.
        assert!(
            kept_low < 3500 && kept_high > 6500,
            "{kept_low} {kept_high}"
        );
    }

    #[test]
    fn della_ranks_along_axis_1_of_higher_rank_tensors() {
        // Shape [2, 500, 2]: magnitudes grow along axis 1 for every (outer, inner) pair.
        let shape = [2usize, 500, 2];
        let row: Vec<f32> = (0..2000).map(|i| ((i / 2) % 500 + 1) as f32).collect();
        let (mut low, mut high) = (0, 0);
        for seed in 0..10 {
            let mut d = row.clone();
            della_magprune(&mut d, &shape, 0.5, 0.4, false, DType::F32, seed);
            for (i, v) in d.iter().enumerate() {
                if *v != 0.0 {
                    if (i / 2) % 500 < 250 {
                        low += 1
                    } else {
                        high += 1
                    }
                }
            }
        }
        // Expected 0.3·10000 = 3000 and 0.7·10000 = 7000.
        assert!(low < 3500 && high > 6500, "{low} {high}");
    }

    #[test]
    fn axis1_lines_index_rows_of_a_matrix() {
        let l = Axis1Lines::new(&[3, 4], 12);
        assert_eq!((l.len, l.stride, l.count), (4, 1, 3));
        assert_eq!(l.index(2, 1), 9);
        let l = Axis1Lines::new(&[2, 3, 2], 12);
        // Vector (outer 1, inner 1) runs over axis 1: flat 7, 9, 11.
        assert_eq!(l.count, 4);
        assert_eq!(
            (0..3).map(|j| l.index(3, j)).collect::<Vec<_>>(),
            vec![7, 9, 11]
        );
    }
}
