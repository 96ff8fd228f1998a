//! bitsandbytes' 8-bit blockwise quantization with its "dynamic" code, as bitsandbytes 0.50 runs
//! it on CPU. NF4 uses it to store its per-block scales in 8 bits (double quantization).
//!
//! * [`dynamic_map`] — `bitsandbytes.functional.create_dynamic_map()` (signed, 7 exponent bits):
//!   256 sorted `f32` codes in [-1, 1], dense near 0. The means of `torch.linspace(0.1, 1, 2^i + 1)`
//!   neighbours, scaled by `10^(i-6)` for `i` in 0..7, with both signs, plus 0 and 1.
//!   `torch.linspace` computes `start + step · i` (and `end - step · (steps - 1 - i)` for the
//!   second half) with a fused multiply-add, so this does too.
//! * [`quantize_blockwise`] — the CPU kernel (`quantize_cpu_impl` in `csrc/cpu_ops.cpp`):
//!   `absmax` per block, `x / absmax` as `x * (1 / absmax)`, and then **not** the nearest code:
//!   the value is mapped to one of 65536 bins over [-1, 1] (`(v + 1) · 0.5 · 65535 + 0.5`,
//!   truncated) and each bin holds the code whose midpoint interval contains the bin's left
//!   edge. Near a midpoint the chosen code can differ from the nearest one; this reproduces the
//!   choice; 0.0 itself lands in bin 32768, which starts above 0, and takes the code 2.125e-5.
//!   An all-zero block stores absmax 0 and code index 0 (which decodes to -0.0).
//! * [`dequantize_blockwise`] — `code[q] · absmax[block]` in `f32`.

/// Number of codes in an 8-bit code book.
pub const CODE_SIZE: usize = 256;
/// Bins of the CPU quantizer's lookup table over [-1, 1].
const LUT_SIZE: usize = 65536;

/// `torch.linspace(start, end, steps, dtype=float32)` on CPU: fused multiply-adds from both
/// ends, meeting at `steps / 2`.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, sorted ascending.
pub fn dynamic_map() -> [f32; CODE_SIZE] {
    // 10^(i - 6) as Python computes it (a correctly rounded double), then rounded to f32 when
    // torch multiplies an f32 tensor by it.
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(CODE_SIZE);
    for (i, &scale) in SCALES.iter().enumerate() {
        let bounds = linspace(0.1, 1.0, (1 << i) + 1);
        let means: Vec<f32> = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let scale = scale as f32;
        data.extend(means.iter().map(|&m| scale * m));
        data.extend(means.iter().map(|&m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut code = [0f32; CODE_SIZE];
    code.copy_from_slice(&data);
    code
}

/// The CPU quantizer's table: bin `i` (the value `-1 + 2i / 65535`) → code index.
fn build_lut(code: &[f32; CODE_SIZE]) -> Vec<u8> {
    let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut lut = vec![0u8; LUT_SIZE];
    let mut idx = 0usize;
    for (i, slot) in lut.iter_mut().enumerate() {
        let val = -1.0 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
        while idx < CODE_SIZE - 1 && mid[idx] < val {
            idx += 1;
        }
        *slot = idx as u8; // idx <= 255
    }
    lut
}

/// The bin of a normalized value (`norm_to_lut_index`): clamped to [-1, 1], then
/// `(v + 1) · 0.5 · 65535 + 0.5` truncated.
#[inline]
fn lut_index(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize
}

/// Quantize `values` in blocks of `block` (the last one may be short) with `code` as the CPU
/// kernel does: returns one code index per value and the absmax of each block.
///
/// # Panics
/// If `block` is 0.
pub fn quantize_blockwise(
    code: &[f32; CODE_SIZE],
    values: &[f32],
    block: usize,
) -> (Vec<u8>, Vec<f32>) {
    assert!(block > 0, "block size must be positive");
    let lut = build_lut(code);
    let mut q = vec![0u8; values.len()];
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for (x, q) in values.chunks(block).zip(q.chunks_mut(block)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(amax);
        if amax == 0.0 {
            continue; // codes stay 0
        }
        let inv = 1.0 / amax;
        for (q, &v) in q.iter_mut().zip(x) {
            *q = lut[lut_index(v * inv)];
        }
    }
    (q, absmax)
}

/// `code[q] · absmax[i / block]` for every index `i` of `q`.
///
/// # Panics
/// If `block` is 0 or `absmax` has fewer than `⌈q.len() / block⌉` entries.
pub fn dequantize_blockwise(
    code: &[f32; CODE_SIZE],
    q: &[u8],
    absmax: &[f32],
    block: usize,
) -> Vec<f32> {
    assert!(block > 0, "block size must be positive");
    q.iter()
        .enumerate()
        .map(|(i, &c)| code[usize::from(c)] * absmax[i / block])
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn code_is_sorted_signed_and_spans_the_exponents() {
        let code = dynamic_map();
        assert!(code.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(code[255], 1.0);
        assert_eq!(code.iter().filter(|&&c| c == 0.0).count(), 1);
        assert_eq!(code[0], -code[254]);
        // The smallest magnitude: the mean of linspace(0.1, 1, 2) = 0.55, times 1e-6.
        let smallest = code
            .iter()
            .filter(|c| **c > 0.0)
            .fold(1f32, |m, &c| m.min(c));
        assert_eq!(smallest, 1e-6f64 as f32 * ((0.1f32 + 1.0) / 2.0));
    }

    #[test]
    fn lut_picks_codes_and_extremes() {
        let code = dynamic_map();
        let values = [1.0, -1.0, 0.0, 0.5, -0.25];
        let (q, absmax) = quantize_blockwise(&code, &values, 256);
        assert_eq!(absmax, [1.0]);
        // As bnb 0.50.2 gives them (`quantize_blockwise(..., blocksize=256)` on CPU). 0.0 is not
        // code 127 (0.0) but 131 (2.125e-5 in f32): its bin, 32768, starts at 1 / 65535 > 0.
        assert_eq!(q, [255, 0, 131, 219, 53]);
        assert_eq!(code[131], 2.124_999_8e-5);
        for (&v, &i) in values.iter().zip(&q) {
            let c = code[usize::from(i)];
            // Within half a code gap (plus a LUT bin) of the value.
            let i = usize::from(i);
            let gap = if i < 255 {
                code[i + 1] - c
            } else {
                c - code[i - 1]
            };
            assert!((c - v).abs() <= gap, "{v} -> {c}");
        }
    }

    #[test]
    fn zero_block_and_short_tail() {
        let code = dynamic_map();
        let values = [0.0, 0.0, 3.0, -1.5, 0.75];
        let (q, absmax) = quantize_blockwise(&code, &values, 2);
        assert_eq!(absmax, [0.0, 3.0, 0.75]);
        assert_eq!(q[..2], [0, 0]);
        let y = dequantize_blockwise(&code, &q, &absmax, 2);
        assert_eq!(y[..2], [-0.0, -0.0]);
        assert_eq!(y[2], 3.0);
        assert_eq!(y[4], 0.75);
        assert!((y[3] + 1.5).abs() < 0.05, "{}", y[3]);
    }
}
