//! The portable path: both operands rounded to the half type and widened back into f32
//! copies, then the f32 gemm of `gemm.rs`. Correct on every CPU and for both half types, at
//! f32 gemm's speed plus one pass over each operand (for bf16-stored operands computed in
//! bf16 the widening is exact and the pass a plain copy). Products of two half values are
//! exact in f32, so the result differs from the native paths' only by summation order.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::gemm::View;
use burn::tensor::f16;

use super::view::{HalfData, HalfType, HalfView};

/// Operands with fewer elements than this are rounded on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 15;
/// The fewest lines one rayon task rounds.
const MIN_LINES: usize = 16;

/// A `rows × cols` operand rounded to the half type, as contiguous f32 in the order of its
/// storage: column-major when its columns are contiguous (`rs = 1`, `cs ≠ 1`), row-major
/// otherwise, so the pass reads memory in order.
pub(super) struct Rounded {
    data: Vec<f32>,
    rs: usize,
    cs: usize,
}

impl Rounded {
    /// `v`'s `rows × cols` elements rounded to `half`, on rayon's threads when `parallel`.
    /// `v` must have been checked to hold them.
    pub(super) fn new(
        v: HalfView<'_>,
        [rows, cols]: [usize; 2],
        half: HalfType,
        parallel: bool,
    ) -> Self {
        let [rs, cs] = v.strides();
        let by_cols = rs == 1 && cs != 1;
        let (lines, len, line_view) = if by_cols {
            (cols, rows, v.t())
        } else {
            (rows, cols, v)
        };
        // Not zero-filled first: that serial pass would cost about as much as the rounding.
        let total = lines * len;
        let mut data = Vec::with_capacity(total);
        if len > 0 {
            let fill = |(l, dst): (usize, &mut [MaybeUninit<f32>])| {
                let line = line_view.rows_from(l);
                round_line(line.data(), line.strides()[1], dst, half);
            };
            let spare = &mut data.spare_capacity_mut()[..total];
            if parallel && total >= PARALLEL_ELEMENTS {
                spare
                    .par_chunks_mut(len)
                    .with_min_len(MIN_LINES)
                    .enumerate()
                    .for_each(fill);
            } else {
                spare.chunks_mut(len).enumerate().for_each(fill);
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: the `lines` chunks of `len` cover the first `total` elements, and
        // `round_line` writes every element of its chunk.
        unsafe {
            data.set_len(total)
        };
        let (rs, cs) = if by_cols { (1, rows) } else { (cols, 1) };
        Self { data, rs, cs }
    }

    pub(super) fn view(&self) -> View<'_> {
        View::new(&self.data, self.rs, self.cs)
    }
}

/// `dst[i] = half.round(src[i·stride])` for every `i < dst.len()` (each written); contiguous
/// lines run under the CPU's best SIMD level (the bf16 cases vectorise).
fn round_line(src: HalfData<'_>, stride: usize, dst: &mut [MaybeUninit<f32>], half: HalfType) {
    let bf16_bits = |b: u16| f32::from_bits(u32::from(b) << 16);
    let f16_round = |x: f32| f16::from_f32(x).to_f32();
    match (src, half) {
        (HalfData::F32(s), HalfType::Bf16) => map_line(dst, s, stride, round_bf16),
        (HalfData::F32(s), HalfType::F16) => map_line(dst, s, stride, f16_round),
        (HalfData::Bf16(s), HalfType::Bf16) => map_line(dst, s, stride, |x| bf16_bits(x.to_bits())),
        (HalfData::Bf16(s), HalfType::F16) => {
            map_line(dst, s, stride, |x| f16_round(bf16_bits(x.to_bits())))
        }
        (HalfData::F16(s), HalfType::F16) => map_line(dst, s, stride, |x| x.to_f32()),
        (HalfData::F16(s), HalfType::Bf16) => map_line(dst, s, stride, |x| round_bf16(x.to_f32())),
    }
}

/// `dst[i] = f(src[i·stride])`, every `dst[i]` written.
#[inline(always)]
fn map_line<T: Copy>(dst: &mut [MaybeUninit<f32>], src: &[T], stride: usize, f: impl Fn(T) -> f32) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    if stride == 1 {
        super::super::simd::dispatch(|| {
            for (d, x) in dst.iter_mut().zip(&src[..n]) {
                d.write(f(*x));
            }
        });
    } else {
        for (d, x) in dst
            .iter_mut()
            .zip(src[..(n - 1) * stride + 1].iter().step_by(stride))
        {
            d.write(f(*x));
        }
    }
}

/// [`HalfType::round`] for bf16 without branches the vectoriser cannot take (the same bits).
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = if b & 0x7fff_ffff > 0x7f80_0000 {
        b | 0x0040_0000
    } else {
        b.wrapping_add(0x7fff + ((b >> 16) & 1))
    };
    f32::from_bits(r & 0xffff_0000)
}
