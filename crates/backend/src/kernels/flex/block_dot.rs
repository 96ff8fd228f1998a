//! Dot products of f32 inputs with rows stored in ggml's 32-value blocks (Q4_0, Q4_1, Q8_0),
//! read straight from the blocks, with the inputs rounded to 8 bits: the decode path of a
//! quantized model (`m ≤ 4` rows).
//!
//! As llama.cpp's CPU backend does (`quantize_row_q8_0` / `q8_1` and `ggml_vec_dot_q4_1_q8_1`),
//! each input row is quantized once per product to per-32-block i8 codes `c` and a scale `e`
//! (`e = max|x| / 127`, `c = round(x / e)`), so a weight block (codes `q`, scale `d`, and for
//! Q4_1 a minimum `m`) contributes `d·e·Σ q·c (+ m·e·Σ c)`: an integer dot product and one f32
//! multiply-add. The integer sums run on AVX-512 VNNI (`vpdpbusd`, 64 u8×i8 products an
//! instruction: [`vnni`]) where the CPU has it, else on a portable loop that computes the same
//! integers; both then add them in f32 in the same order, so the two paths give identical
//! results (the tests compare them bit for bit). `TEMPER_CPU_VNNI=off` forces the portable loop
//! (so CI covers both on one machine).
//!
//! Results differ from the f32 product by the inputs' rounding, |Δx| ≤ e/2 an element, as
//! llama.cpp's do. The f32 part is ordered in 16 lanes: blocks go in pairs, the first of a pair
//! to lanes 0..8, the second to 8..16, lane `l` of a block taking its values `4l..4l+4`
//! (what one `vpdpbusd` lane sums); Q4_1's `m·e·Σ c` terms go to 16 more lanes the same way
//! (`Σ c` over the lane's four values); each set of lanes is summed in order at the end and
//! the two sums added.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, so the weight codes enter unsigned:
//! Q4's nibbles are 0..16 already (Q4_0's `q − 8` is `q` with `−8·Σ c`), and Q8_0's `q` enters
//! as `q + 128`, with `−128·Σ c`. These corrections are exact integers, summed per lane once per
//! input row ([`Q8Input::corr`]) and used as the accumulator's starting value.

#[cfg(target_arch = "x86_64")]
mod vnni;

use std::sync::OnceLock;

use temper_formats::quant::QuantType;

use super::simd::dispatch;

/// Values per block.
const QK: usize = 32;
/// Values per `vpdpbusd` lane.
const LANE: usize = 4;
/// Lanes per block.
const LANES_PER_BLOCK: usize = QK / LANE;

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

/// Which integer kernel the products take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    /// The portable loop.
    Portable,
    /// AVX-512 VNNI (only where the CPU has it).
    Vnni,
}

/// The process's kernel: VNNI where the CPU has AVX-512 F, BW and VNNI, unless
/// `TEMPER_CPU_VNNI=off` (read once).
pub(super) fn default_kernel() -> Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if std::env::var("TEMPER_CPU_VNNI").as_deref() == Ok("off") {
            Kernel::Portable
        } else if vnni_available() {
            Kernel::Vnni
        } else {
            Kernel::Portable
        }
    })
}

/// Whether this CPU runs [`vnni`].
pub(super) fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One input row quantized to 8 bits per 32-value block, for rows of one format. Buffers are
/// padded to a whole pair of blocks (zeros), so the VNNI kernel reads pairs without a bound
/// check.
pub(super) struct Q8Input {
    ty: QuantType,
    /// Blocks in the row (`k / 32`).
    blocks: usize,
    /// `round(x / e)` per value.
    codes: Vec<i8>,
    /// `e` per block.
    scale: Vec<f32>,
    /// `Σ c` over each lane's four values, as f32 (exact; Q4_1's minimum term).
    lane_sum: Vec<f32>,
    /// The correction each `vpdpbusd` lane starts from: `−8·Σ c` (Q4_0) or `−128·Σ c` (Q8_0)
    /// over its four values, 0 for Q4_1.
    corr: Vec<i32>,
}

impl Q8Input {
    /// `x` (`k` values, `k` a multiple of 32) quantized for rows of `ty`.
    pub(super) fn new(x: &[f32], ty: QuantType) -> Self {
        assert!(
            x.len().is_multiple_of(QK) && block_bytes(ty).is_some(),
            "block_dot: {} inputs for {ty} rows",
            x.len()
        );
        let blocks = x.len() / QK;
        let padded = blocks.next_multiple_of(2);
        let mut codes = vec![0i8; padded * QK];
        let mut scale = vec![0.0f32; padded];
        let mut corr = vec![0i32; padded * LANES_PER_BLOCK];
        let mut lane_sum = vec![0.0f32; padded * LANES_PER_BLOCK];
        let offset = match ty {
            QuantType::Q4_0 => -8,
            QuantType::Q8_0 => -128,
            _ => 0,
        };
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            // llama.cpp's `quantize_row_q8_0`: the scale maps the largest magnitude to 127,
            // codes round half away from zero.
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let e = amax / 127.0;
            let inv = if e != 0.0 { 1.0 / e } else { 0.0 };
            let cb = &mut codes[b * QK..(b + 1) * QK];
            for (c, &v) in cb.iter_mut().zip(xb) {
                *c = (v * inv).round() as i8;
            }
            scale[b] = e;
            for (l, lane) in cb.chunks_exact(LANE).enumerate() {
                let s: i32 = lane.iter().map(|&c| i32::from(c)).sum();
                corr[b * LANES_PER_BLOCK + l] = offset * s;
                lane_sum[b * LANES_PER_BLOCK + l] = s as f32;
            }
        }
        Self {
            ty,
            blocks,
            codes,
            scale,
            lane_sum,
            corr,
        }
    }
}

/// `out[j] = Σ_l x[l] · W[j, l]` for consecutive rows `rows` of `x`'s format (`x.blocks`
/// blocks each), `x` rounded as [`Q8Input`] says, on `kernel`.
pub(super) fn dot_rows(kernel: Kernel, rows: &[u8], x: &Q8Input, out: &mut [f32]) {
    let Some(bb) = block_bytes(x.ty) else {
        unreachable!("block_dot: {} is not a 32-value ggml block", x.ty);
    };
    let row_bytes = x.blocks * bb;
    assert_eq!(
        rows.len(),
        out.len() * row_bytes,
        "block_dot: rows and outputs differ"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni if vnni_available() => {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked just above); `row` holds
                // `x.blocks` blocks of `x.ty` and `x`'s buffers are padded to whole pairs
                // (`Q8Input::new`), `dot_row`'s contract.
                #[allow(unsafe_code)]
                {
                    *o = unsafe { vnni::dot_row(row, x) };
                }
            }
        }
        _ => dispatch(|| {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                *o = portable_row(row, x);
            }
        }),
    }
}

/// The unsigned code of value `i` (0..32) of block `blk` of `ty` (what `vpdpbusd` reads).
#[inline(always)]
fn code(ty: QuantType, blk: &[u8], i: usize) -> i32 {
    match ty {
        QuantType::Q8_0 => i32::from(blk[2 + i] ^ 0x80),
        _ => {
            let qs = &blk[blk.len() - 16..];
            i32::from(if i < 16 {
                qs[i] & 0x0F
            } else {
                qs[i - 16] >> 4
            })
        }
    }
}

/// The weight block's scale `d` and (Q4_1) minimum `m`.
#[inline(always)]
fn weight_scales(ty: QuantType, blk: &[u8]) -> (f32, f32) {
    let m = if ty == QuantType::Q4_1 {
        half(&blk[2..])
    } else {
        0.0
    };
    (half(blk), m)
}

/// One row on the portable path: the integer sums and their f32 order exactly as [`vnni`].
fn portable_row(row: &[u8], x: &Q8Input) -> f32 {
    let bb = row.len() / x.blocks;
    let (mut lanes, mut lanes_m) = ([0.0f32; 16], [0.0f32; 16]);
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let (d, m) = weight_scales(x.ty, blk);
        let (s, me) = (d * x.scale[b], m * x.scale[b]);
        let codes = &x.codes[b * QK..(b + 1) * QK];
        let half_at = (b % 2) * LANES_PER_BLOCK;
        for l in 0..LANES_PER_BLOCK {
            let mut sumi = x.corr[b * LANES_PER_BLOCK + l];
            for t in 0..LANE {
                let i = l * LANE + t;
                sumi += code(x.ty, blk, i) * i32::from(codes[i]);
            }
            let lane = &mut lanes[half_at + l];
            *lane = (sumi as f32).mul_add(s, *lane);
            if x.ty == QuantType::Q4_1 {
                let lane = &mut lanes_m[half_at + l];
                *lane = x.lane_sum[b * LANES_PER_BLOCK + l].mul_add(me, *lane);
            }
        }
    }
    finish(&lanes, &lanes_m)
}

/// The row's result from its two sets of 16 lanes: each summed in order, then added.
#[inline(always)]
fn finish(lanes: &[f32; 16], lanes_m: &[f32; 16]) -> f32 {
    let sum = |l: &[f32; 16]| l.iter().fold(0.0f32, |a, &v| a + v);
    sum(lanes) + sum(lanes_m)
}

#[cfg(test)]
mod tests;
