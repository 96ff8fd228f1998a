//! The order in which torch sums a contiguous `f32` vector on an x86-64 CPU, reproduced so that
//! a mean taken by a torch-based peer (bitsandbytes' NF4 `offset = absmax.mean()`) can be
//! matched to the last bit.
//!
//! Floating-point addition is not associative, so the sum depends on the order. torch 2.x
//! (`aten/src/ATen/native/cpu/SumKernel.cpp`, `cascade_sum`) sums in `f32`:
//!
//! * with 8-lane vectors (`Vectorized<float>` of the AVX2 build: the sum kernel is not compiled
//!   for AVX-512, so AVX-512 machines run it too), in four interleaved vector accumulators
//!   (`row_sum`, "ILP" 4), each a cascade of 4 levels (`multi_row_sum`: a level is flushed into
//!   the next after `2^p` additions, `p = max(4, ⌈log2 rows⌉ / 4)`) so that only numbers of
//!   similar size meet;
//! * the vector remainder scalar by scalar, then the 8 lanes in order;
//! * fewer than 8 values: the same cascade over scalars.
//!
//! With `n ≥ 32768` values (`at::internal::GRAIN_SIZE`) and more than one torch thread, the
//! range is split into `min(threads, ⌈n / 32768⌉)` equal chunks (`⌈n / chunks⌉` values each),
//! each summed as above into a per-thread slot, and the `threads` slots (unused ones 0) are
//! summed again: the result then depends on `torch.get_num_threads()`.
//!
//! `mean` is that sum divided by `n` in `f32` (`sum_out(...).div_(n)`).
//!
//! Checked against torch 2.15 for lengths 1..70001 and 1, 2, 3, 4 and 8 threads
//! (`tests/fixtures/quant/torch_sum.json`).

/// Lanes of torch's `Vectorized<float>` in the sum kernel (AVX2 build).
const LANES: usize = 8;
/// `at::internal::GRAIN_SIZE`: below this many elements a reduction runs on one thread.
const GRAIN_SIZE: usize = 32768;
/// Cascade levels of `multi_row_sum`.
const LEVELS: usize = 4;
/// Independent accumulators of `row_sum`.
const ILP: usize = 4;

/// `⌈log2 x⌉` as torch's `CeilLog2` computes it (1 for `x ≤ 2`).
fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// Lane-wise `acc += x`.
#[inline]
fn add<const W: usize>(acc: &mut [f32; W], x: &[f32; W]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// torch's `multi_row_sum`: `size` rows of `W` lanes (row `i` from `row(i)`), each lane summed
/// through the 4-level cascade.
fn multi_row_sum<const W: usize>(size: usize, row: impl Fn(usize) -> [f32; W]) -> [f32; W] {
    let level_power = (ceil_log2(size) / LEVELS as u32).max(4) as usize;
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[0f32; W]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add(&mut acc[0], &row(i));
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], [0.0; W]);
            add(&mut acc[j], &lower);
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add(&mut acc[0], &row(i));
        i += 1;
    }
    let mut total = acc[0];
    for level in &acc[1..] {
        add(&mut total, level);
    }
    total
}

/// torch's `row_sum` over `items` of `E` lanes: `ILP` interleaved accumulators (`W = ILP · E`
/// lanes of [`multi_row_sum`]), the leftover items into the first, then the four folded.
fn row_sum<const E: usize, const W: usize>(items: &[[f32; E]]) -> [f32; E] {
    debug_assert_eq!(W, ILP * E);
    let groups = items.len() / ILP;
    let partial = multi_row_sum::<W>(groups, |g| {
        let mut row = [0f32; W];
        for (k, item) in items[g * ILP..g * ILP + ILP].iter().enumerate() {
            row[k * E..k * E + E].copy_from_slice(item);
        }
        row
    });
    let mut parts = [[0f32; E]; ILP];
    for (k, part) in parts.iter_mut().enumerate() {
        part.copy_from_slice(&partial[k * E..k * E + E]);
    }
    for item in &items[groups * ILP..] {
        add(&mut parts[0], item);
    }
    let mut total = parts[0];
    for part in &parts[1..] {
        add(&mut total, part);
    }
    total
}

/// One thread's sum of a contiguous range (`vectorized_inner_sum`, or the scalar `row_sum` for
/// fewer than [`LANES`] values), added to the output's initial 0.
fn serial_sum(x: &[f32]) -> f32 {
    let sum = if x.len() >= LANES {
        let (vectors, tail) = x.as_chunks::<LANES>();
        let lanes = row_sum::<LANES, { ILP * LANES }>(vectors);
        let mut total = 0f32;
        for &v in tail {
            total += v;
        }
        for v in lanes {
            total += v;
        }
        total
    } else {
        let (scalars, _) = x.as_chunks::<1>();
        row_sum::<1, ILP>(scalars)[0]
    };
    0.0 + sum
}

/// The `f32` sum of `x` as `torch.sum` computes it on a CPU with `threads` torch threads
/// (`torch.get_num_threads()`; only matters from 32768 values on). `threads = 0` counts as 1.
pub fn sum(x: &[f32], threads: usize) -> f32 {
    let threads = threads.max(1);
    if x.len() < GRAIN_SIZE || threads == 1 {
        return serial_sum(x);
    }
    let chunks = threads.min(x.len().div_ceil(GRAIN_SIZE));
    let chunk = x.len().div_ceil(chunks);
    let mut slots = vec![0f32; threads];
    for (slot, part) in slots.iter_mut().zip(x.chunks(chunk)) {
        *slot = serial_sum(part);
    }
    serial_sum(&slots)
}

/// `torch.mean` of `x`: [`sum`] divided by the length in `f32` (NaN for an empty `x`, as torch).
pub fn mean(x: &[f32], threads: usize) -> f32 {
    sum(x, threads) / x.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_as_torch() {
        let got: Vec<u32> = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17].map(ceil_log2).to_vec();
        assert_eq!(got, [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]);
    }

    #[test]
    fn order_matters_and_is_torch_s() {
        // 1 and fifteen 2^-24 (half an ulp of 1): left to right, every addition is a tie that
        // rounds back to 1. torch adds x[k] + x[8 + k] lane-wise first (two 8-lane vectors), so
        // lanes 1..8 hold 2^-23 each and survive: 1 + 7 * 2^-23.
        let mut x = vec![2f32.powi(-24); 16];
        x[0] = 1.0;
        assert_eq!(x.iter().fold(0f32, |a, &b| a + b), 1.0);
        assert_eq!(sum(&x, 1), 1.0 + 7.0 * 2f32.powi(-23));
        // Fewer than 8 values: the scalar cascade, here left to right.
        assert_eq!(sum(&x[..7], 1), 1.0);
        assert!(mean(&[], 1).is_nan());
    }
}
