//! Dot products of f32 inputs with rows stored in ggml's 32-value blocks (Q4_0, Q4_1, Q8_0),
//! read straight from the blocks: the decode path of a quantized model (`m ≤ 4` rows).
//!
//! A block holds integer codes `q` and an f16 scale `d` (and, for Q4_1, a minimum `m`), so
//! `Σ x·w = d·Σ x·q (+ m·Σ x)` over the block — the codes are widened to f32 and multiplied by
//! `x` in 16 lanes, and `Σ x` per block is computed once per input row, not once per weight
//! row. Nothing is written but the results: the blocks are read once, at their own size (Q4_1
//! is 0.625 bytes a value, an eighth of f32). The loops are plain slice code compiled under
//! [`dispatch`] (AVX-512, AVX2 or baseline), with no `unsafe`.
//!
//! The sums are ordered per block (16 lanes, then the block's scale) rather than as one f32
//! dot of the decoded row, so results differ from decode-then-multiply by rounding only.

use temper_formats::quant::QuantType;

use super::simd::dispatch;

/// Values per block.
const QK: usize = 32;

/// The formats this module reads, with their block sizes in bytes.
pub(super) fn block_bytes(ty: QuantType) -> Option<usize> {
    match ty {
        QuantType::Q4_0 => Some(18),
        QuantType::Q4_1 => Some(20),
        QuantType::Q8_0 => Some(34),
        _ => None,
    }
}

/// IEEE half at `b[0..2]`, little-endian, as f32 (exact). Written out because `half`'s
/// portable conversion, a call per block, was most of the decode time; normal values (every
/// real scale) take the first branch.
#[inline(always)]
fn half(b: &[u8]) -> f32 {
    let h = u32::from(u16::from_le_bytes([b[0], b[1]]));
    let (sign, exp, mant) = ((h & 0x8000) << 16, (h >> 10) & 0x1f, h & 0x3ff);
    if exp != 0 && exp != 0x1f {
        return f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    }
    burn::tensor::f16::from_bits(h as u16).to_f32()
}

/// `Σ x` of each 32-value block of `x`.
pub(super) fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(QK).map(|b| b.iter().sum()).collect()
}

/// `out[j] = Σ_l x[l] · W[j, l]` for consecutive rows `rows` (each `k / 32` blocks of `ty`),
/// `xsum` the [`block_sums`] of `x`.
pub(super) fn dot_rows(ty: QuantType, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    let Some(bb) = block_bytes(ty) else {
        unreachable!("block_dot: {ty} is not a 32-value ggml block");
    };
    let row_bytes = x.len() / QK * bb;
    dispatch(|| {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
            *o = match ty {
                QuantType::Q4_0 => dot_q4(row, x, xsum, 18, false),
                QuantType::Q4_1 => dot_q4(row, x, xsum, 20, true),
                _ => dot_q8_0(row, x),
            };
        }
    });
}

/// One row of Q4_0 (`d | 16 bytes`, `w = (q − 8)·d`) or Q4_1 (`d | m | 16 bytes`, `w = q·d + m`):
/// low nibbles are values 0..16 of a block, high nibbles 16..32. Sixteen lanes accumulate
/// `d·Σ q·x` across the row; the `Σ x` terms go to a scalar.
#[inline(always)]
fn dot_q4(row: &[u8], x: &[f32], xsum: &[f32], bb: usize, with_min: bool) -> f32 {
    let (mut lanes, mut tail) = ([0.0f32; 16], 0.0f32);
    for ((blk, xb), &s) in row.chunks_exact(bb).zip(x.chunks_exact(QK)).zip(xsum) {
        let d = half(blk);
        let qs = &blk[bb - 16..bb];
        let (lo, hi) = xb.split_at(16);
        for (((l, &q), &a), &b) in lanes.iter_mut().zip(qs).zip(lo).zip(hi) {
            *l += d * (f32::from(q & 0x0F) * a + f32::from(q >> 4) * b);
        }
        tail += if with_min {
            half(&blk[2..]) * s
        } else {
            -8.0 * d * s
        };
    }
    lanes.iter().sum::<f32>() + tail
}

/// One row of Q8_0 (`d | 32 × i8`, `w = q·d`).
#[inline(always)]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    for (blk, xb) in row.chunks_exact(34).zip(x.chunks_exact(QK)) {
        let d = half(blk);
        let (q, (lo, hi)) = (&blk[2..34], xb.split_at(16));
        let (q_lo, q_hi) = q.split_at(16);
        for ((((l, &a), &b), &qa), &qb) in lanes.iter_mut().zip(lo).zip(hi).zip(q_lo).zip(q_hi) {
            *l += d * (f32::from(qa as i8) * a + f32::from(qb as i8) * b);
        }
    }
    lanes.iter().sum()
}
