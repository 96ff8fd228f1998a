//! The LM head's per-token log-softmax in vocabulary tiles, on slices: forward (online
//! log-sum-exp, the target's logit, optionally entropy and first argmax) and backward
//! (`∂z = g·(onehot − softmax)` recomputed per tile, then the two gradient gemms).
//!
//! One `[rows, tile]` logits buffer is reused for every tile; the gemms run on all threads and
//! every per-row pass over a tile (max, `exp`, sums, the softmax gradient) is one parallel,
//! vectorised pass — the tensor-op version is ~8 single-threaded passes per tile, which on a
//! SmolLM2 training step (12 tiles of 1 020 × 4 096, forward and backward) left one core idle
//! for a good part of the head.

use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata, get_or_init_device_settings};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::gemm::{matmul_parallel, matmul_parallel_uninit};
use super::half_gemm::{HalfType, HalfView, matmul_half_parallel, matmul_half_parallel_uninit};
use super::matmul::half_view;
use super::simd::{dispatch, exp};
use super::{contiguous_f32, owned_contiguous};
use crate::kernels::lm_head::{self as tile_loop, VocabTiling, blocks};
use crate::kernels::ops::LmHeadOutput;

/// Rows per rayon task in the per-row passes.
const MIN_ROWS_PER_TASK: usize = 4;

/// The online state of one row.
#[derive(Clone, Copy)]
struct RowState {
    /// Running max of the logits.
    max: f32,
    /// `Σ e^(z − max)`.
    sum: f32,
    /// `Σ e^(z − max)(z − max)` (entropy).
    weighted: f32,
    /// The target's logit.
    picked: f32,
    /// First maximal logit and its vocabulary index.
    best: (f32, i64),
}

impl Default for RowState {
    fn default() -> Self {
        Self {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            weighted: 0.0,
            picked: 0.0,
            best: (f32::NEG_INFINITY, 0),
        }
    }
}

impl RowState {
    /// `ln Σ e^z`.
    fn lse(&self) -> f32 {
        self.max + self.sum.ln()
    }

    /// `log p(target)`.
    fn logp(&self) -> f32 {
        self.picked - self.lse()
    }

    /// Entropy of the row's softmax, `ln s − Σ e^(z−m)(z−m) / s`.
    fn entropy(&self) -> f32 {
        self.sum.ln() - self.weighted / self.sum
    }

    /// Index of the first maximal logit.
    fn argmax(&self) -> i64 {
        self.best.1
    }

    /// Folds in one tile `z` starting at vocabulary index `v0`.
    fn update(&mut self, z: &[f32], v0: usize, target: i64, with_stats: bool) {
        let (tile_max, tile_arg) = first_max(z, with_stats);
        let m_new = self.max.max(tile_max);
        let (e_sum, ez_sum) = exp_sums(z, m_new, with_stats);
        if self.max == f32::NEG_INFINITY {
            (self.sum, self.weighted) = (e_sum, ez_sum);
        } else {
            let dm = self.max - m_new; // ≤ 0
            let scale = exp(dm);
            // u' = e^(m − m')(u + (m − m')·s) + Σ_tile e^(z − m')(z − m').
            self.weighted = scale * (self.weighted + dm * self.sum) + ez_sum;
            self.sum = self.sum * scale + e_sum;
        }
        self.max = m_new;
        let local = target - v0 as i64;
        if local >= 0 && (local as usize) < z.len() {
            self.picked = z[local as usize];
        }
        // Strictly greater: on ties the earlier tile (lower index) wins.
        if tile_max > self.best.0 {
            self.best = (tile_max, (v0 + tile_arg) as i64);
        }
    }
}

/// The maximal value and, `with_index`, the first index holding it (0 otherwise: the scalar
/// search is only paid for when the argmax statistic is asked for). NaNs are skipped.
fn first_max(z: &[f32], with_index: bool) -> (f32, usize) {
    const LANES: usize = 16;
    // Vectorisable max over lanes, then the first index holding it.
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let m = acc.iter().fold(tail, |m, &x| m.max(x));
    let at = if with_index {
        z.iter().position(|&x| x == m).unwrap_or(0)
    } else {
        0
    };
    (m, at)
}

/// `(Σ e^(z − m), Σ e^(z − m)(z − m))` in 16 partial sums (the second only `with_weighted`).
fn exp_sums(z: &[f32], m: f32, with_weighted: bool) -> (f32, f32) {
    const LANES: usize = 16;
    let mut se = [0.0f32; LANES];
    let mut sw = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let (mut te, mut tw) = (0.0f32, 0.0f32);
    for &x in chunks.remainder() {
        let d = x - m;
        let e = exp(d);
        te += e;
        tw += e * d;
    }
    if with_weighted {
        for c in chunks {
            for i in 0..LANES {
                let d = c[i] - m;
                let e = exp(d);
                se[i] += e;
                sw[i] += e * d;
            }
        }
    } else {
        for c in chunks {
            for i in 0..LANES {
                se[i] += exp(c[i] - m);
            }
        }
    }
    (
        se.iter().sum::<f32>() + te,
        if with_weighted {
            sw.iter().sum::<f32>() + tw
        } else {
            0.0
        },
    )
}

/// Shapes and tiling of one call.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    hidden: usize,
    vocab: usize,
    vocab_tile: usize,
    row_block: usize,
    /// The half type of the tile products (`None`: f32 operands, the f32 gemm).
    half: Option<HalfType>,
}

impl Dims {
    /// `dst = lhs · rhs` (`[m, k]·[k, n]`) on all threads, written without being read.
    fn product_uninit<'d>(
        &self,
        dst: &'d mut [MaybeUninit<f32>],
        lhs: HalfView<'_>,
        rhs: HalfView<'_>,
        mkn: [usize; 3],
    ) -> &'d mut [f32] {
        match (self.half, lhs.as_f32(), rhs.as_f32()) {
            (None, Some(l), Some(r)) => matmul_parallel_uninit(dst, l, r, mkn, 1.0),
            (half, ..) => matmul_half_parallel_uninit(dst, lhs, rhs, mkn, 1.0, self.half_of(half)),
        }
    }

    /// `dst = (accumulate ? dst : 0) + lhs · rhs` on all threads.
    fn product(
        &self,
        dst: &mut [f32],
        accumulate: bool,
        lhs: HalfView<'_>,
        rhs: HalfView<'_>,
        mkn: [usize; 3],
    ) {
        match (self.half, lhs.as_f32(), rhs.as_f32()) {
            (None, Some(l), Some(r)) => matmul_parallel(dst, accumulate, l, r, mkn, 1.0),
            (half, ..) => {
                matmul_half_parallel(dst, accumulate, lhs, rhs, mkn, 1.0, self.half_of(half))
            }
        }
    }

    /// `kernel_inputs` sets a half type whenever an operand is stored in one.
    fn half_of(&self, half: Option<HalfType>) -> HalfType {
        half.unwrap_or_else(|| unreachable!("half-type operands without a half type"))
    }
}

/// Forward: the row states after every tile. `hidden` `[rows, hidden]`, `weight`
/// `[hidden, vocab]` (any strides), `targets` `[rows]` (in range).
///
/// With `keep_logits` the tiles are not overwritten but kept, one after the other in (row
/// block, tile) order — `rows × vocab` values that [`backward`] then reads instead of
/// recomputing them with a gemm.
fn forward(
    hidden: HalfView<'_>,
    weight: HalfView<'_>,
    targets: &[i64],
    d: Dims,
    with_stats: bool,
    keep_logits: bool,
) -> (Vec<RowState>, Option<Vec<f32>>) {
    let mut states = vec![RowState::default(); d.rows];
    // Every tile is written by gemm before anything reads it: the buffer is not zero-filled
    // (for kept logits that was a serial 200 MB memset per SmolLM2 step).
    let len = if keep_logits {
        d.rows * d.vocab
    } else {
        d.row_block.min(d.rows) * d.vocab_tile.min(d.vocab)
    };
    let mut buf = Vec::<f32>::with_capacity(len);
    let mut offset = 0;
    for (r0, r1) in blocks(d.rows, d.row_block) {
        let nr = r1 - r0;
        for (v0, v1) in blocks(d.vocab, d.vocab_tile) {
            let tw = v1 - v0;
            let z = d.product_uninit(
                &mut buf.spare_capacity_mut()[offset..offset + nr * tw],
                hidden.rows_from(r0),
                weight.cols_from(v0),
                [nr, d.hidden, tw],
            );
            if keep_logits {
                offset += nr * tw;
            }
            z.par_chunks(tw)
                .zip(states[r0..r1].par_iter_mut())
                .zip(targets[r0..r1].par_iter())
                .with_min_len(MIN_ROWS_PER_TASK)
                .for_each(|((z, state), &t)| dispatch(|| state.update(z, v0, t, with_stats)));
        }
    }
    let kept = keep_logits.then(|| {
        debug_assert_eq!(offset, len);
        #[allow(unsafe_code)]
        // SAFETY: with kept logits the tiles were written one after the other, covering all
        // `len` elements.
        unsafe {
            buf.set_len(len)
        };
        buf
    });
    (states, kept)
}

/// Backward: `(∂hidden [rows, hidden], ∂weightᵀ [vocab, hidden])`, each only when asked for.
/// `lse` and `grad` are per row. `kept` is [`forward`]'s kept logits (overwritten with the
/// logit gradient); without them every tile is recomputed.
#[allow(clippy::too_many_arguments)]
fn backward(
    hidden: HalfView<'_>,
    weight: HalfView<'_>,
    targets: &[i64],
    lse: &[f32],
    grad: &[f32],
    d: Dims,
    need_hidden: bool,
    need_weight: bool,
    kept: Option<&mut [f32]>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let mut d_hidden = need_hidden.then(|| vec![0.0f32; d.rows * d.hidden]);
    // ∂Wᵀ is written (not accumulated) by the first row block's gemms: no zero-filling.
    let mut d_weight_t = need_weight.then(|| Vec::<f32>::with_capacity(d.vocab * d.hidden));
    if !need_hidden && !need_weight {
        return (None, None);
    }
    let recompute = kept.is_none();
    let mut own = if recompute {
        vec![0.0f32; d.row_block.min(d.rows) * d.vocab_tile.min(d.vocab)]
    } else {
        Vec::new()
    };
    let buf = match kept {
        Some(k) => k,
        None => &mut own[..],
    };
    let mut offset = 0;
    for (bi, (r0, r1)) in blocks(d.rows, d.row_block).enumerate() {
        let nr = r1 - r0;
        let h_rows = hidden.rows_from(r0);
        for (v0, v1) in blocks(d.vocab, d.vocab_tile) {
            let tw = v1 - v0;
            let w_tile = weight.cols_from(v0);
            let z = &mut buf[offset..offset + nr * tw];
            if recompute {
                d.product(z, false, h_rows, w_tile, [nr, d.hidden, tw]);
            } else {
                offset += nr * tw;
            }
            // ∂z = g·(onehot − p): −g·e^(z − lse), plus g at the target column.
            z.par_chunks_mut(tw)
                .zip(lse[r0..r1].par_iter().zip(grad[r0..r1].par_iter()))
                .zip(targets[r0..r1].par_iter())
                .with_min_len(MIN_ROWS_PER_TASK)
                .for_each(|((z, (&l, &g)), &t)| {
                    dispatch(|| {
                        let ng = -g;
                        for x in z.iter_mut() {
                            *x = exp(*x - l) * ng;
                        }
                    });
                    let local = t - v0 as i64;
                    if local >= 0 && (local as usize) < tw {
                        z[local as usize] += g;
                    }
                });
            // Under a half type ∂z is rounded to it like the other operands (torch's autocast
            // hands a bf16 matmul the gradient of its bf16 output).
            let dz = HalfView::f32(z, tw, 1);
            if let Some(dh) = d_hidden.as_mut() {
                // ∂h[r0..r1] += ∂z · W_tileᵀ.
                let dst = &mut dh[r0 * d.hidden..r1 * d.hidden];
                d.product(dst, true, dz, w_tile.t(), [nr, tw, d.hidden]);
            }
            if let Some(dwt) = d_weight_t.as_mut() {
                // ∂Wᵀ[v0..v1] (+)= ∂zᵀ · h[r0..r1].
                let (a, b, mkn) = (dz.t(), h_rows, [tw, nr, d.hidden]);
                if bi == 0 {
                    let dst = &mut dwt.spare_capacity_mut()[v0 * d.hidden..v1 * d.hidden];
                    d.product_uninit(dst, a, b, mkn);
                } else {
                    d.product(&mut dwt[v0 * d.hidden..v1 * d.hidden], true, a, b, mkn);
                }
            }
        }
        if let (0, Some(dwt)) = (bi, d_weight_t.as_mut()) {
            #[allow(unsafe_code)]
            // SAFETY: the first row block's tiles wrote every row of ∂Wᵀ.
            unsafe {
                dwt.set_len(d.vocab * d.hidden)
            };
        }
    }
    (d_hidden, d_weight_t)
}

/// The host side of one kernel call: strided views of `hidden` `[rows, hidden]` and `weight`
/// `[hidden, vocab]` (f32, bf16 or f16 storage, read in place), the target ids and the
/// dimensions; `None` for inputs the kernel does not take (another dtype, negative strides),
/// which then go through the tile loop. The products take `tiling.half`, else the half type an
/// operand is stored in, else f32.
///
/// # Panics
/// On shapes that do not fit together or zero tile sizes: the kernel would index out of range.
fn kernel_inputs<'a>(
    hidden: &'a FlexTensor,
    weight: &'a FlexTensor,
    targets: &FlexTensor,
    tiling: VocabTiling,
) -> Option<(HalfView<'a>, HalfView<'a>, Vec<i64>, Dims)> {
    let (hv, wv) = (half_view(hidden)?, half_view(weight)?);
    let ([rows, h], [wh, vocab]) = (dims_2d(hidden), dims_2d(weight));
    let ids = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .ok()?;
    assert!(
        h == wh && ids.len() == rows && tiling.vocab_tile > 0 && tiling.row_block > 0,
        "lm_head_logps: hidden [{rows}, {h}], weight [{wh}, {vocab}], {} targets, {tiling:?} \
         (expected weight [hidden, vocab], one target per row, positive tiles)",
        ids.len()
    );
    let dims = Dims {
        rows,
        hidden: h,
        vocab,
        vocab_tile: tiling.vocab_tile,
        row_block: tiling.row_block,
        half: tiling.half.or(hv.stored_half()).or(wv.stored_half()),
    };
    Some((hv, wv, ids, dims))
}

/// The two dimensions of a tensor [`half_view`] took.
fn dims_2d(t: &FlexTensor) -> [usize; 2] {
    let s = t.layout().shape().as_slice();
    [s[0], s[1]]
}

/// `grad` (f32, `[rows, cols]`) in `like`'s dtype: a gradient comes back in its input's dtype.
fn in_dtype_of(grad: FlexTensor, like: DType) -> FlexTensor {
    if like == DType::F32 {
        grad
    } else {
        super::matmul::cast_to(grad, like)
    }
}

fn flex_f32(data: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.into()))
}

/// [`FusedOps::lm_head_logps`](crate::kernels::FusedOps::lm_head_logps) on Flex: the kernel
/// for f32 inputs, the tile loop for the others.
pub(super) fn logps(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: FlexTensor,
    tiling: VocabTiling,
    with_stats: bool,
    keep_logits: bool,
) -> LmHeadOutput<Flex> {
    let Some((hv, wv, ids, dims)) = kernel_inputs(&hidden, &weight, &targets, tiling) else {
        let (logps, lse, stats) =
            tile_loop::forward::<Flex>(hidden, weight, targets, tiling, with_stats);
        return (logps, lse, stats, None);
    };
    let rows = dims.rows;
    let (states, kept) = forward(hv, wv, &ids, dims, with_stats, keep_logits);
    let per_row = |f: fn(&RowState) -> f32| flex_f32(states.iter().map(f).collect(), [rows]);
    let stats = with_stats.then(|| {
        let argmax: Vec<i64> = states.iter().map(RowState::argmax).collect();
        // In the device's int dtype, like the tile loop's (and burn's) argmax.
        let int_dtype = get_or_init_device_settings::<Flex>(&hidden.device()).int_dtype;
        let argmax = TensorData::new(argmax, [rows]).convert_dtype(int_dtype.into());
        (per_row(RowState::entropy), FlexTensor::from_data(argmax))
    });
    let kept = kept.map(|k| {
        let n = k.len();
        flex_f32(k, [n])
    });
    (per_row(RowState::logp), per_row(RowState::lse), stats, kept)
}

/// [`FusedOps::lm_head_logps_backward`](crate::kernels::FusedOps::lm_head_logps_backward) on
/// Flex. The kept logits (`logits`, empty for none) become the logit gradient in place.
#[allow(clippy::too_many_arguments)]
pub(super) fn logps_backward(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: FlexTensor,
    lse: FlexTensor,
    grad: FlexTensor,
    logits: FlexTensor,
    tiling: VocabTiling,
    need_hidden: bool,
    need_weight: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let Some((hv, wv, ids, dims)) = kernel_inputs(&hidden, &weight, &targets, tiling) else {
        return tile_loop::backward::<Flex>(
            hidden,
            weight,
            targets,
            lse,
            grad,
            tiling,
            need_hidden,
            need_weight,
        );
    };
    let (rows, h, vocab) = (dims.rows, dims.hidden, dims.vocab);
    let ((_, lse), (_, grad)) = (contiguous_f32(&lse), contiguous_f32(&grad));
    assert!(
        lse.len() == rows && grad.len() == rows,
        "lm_head_logps_backward: {} log-sum-exps and {} gradients for {rows} rows",
        lse.len(),
        grad.len()
    );
    // Logits of another size (none kept: empty) are recomputed; kept ones are copied first
    // only if still shared.
    let mut kept = (logits.dtype() == DType::F32
        && logits.layout().shape().num_elements() == rows * vocab)
        .then(|| owned_contiguous(logits));
    let kept_slice = kept.as_mut().map(|p| p.storage_mut::<f32>());
    let (dh, dwt) = backward(
        hv,
        wv,
        &ids,
        &lse,
        &grad,
        dims,
        need_hidden,
        need_weight,
        kept_slice,
    );
    let dh = dh.map(|d| in_dtype_of(flex_f32(d, [rows, h]), hidden.dtype()));
    // ∂W was accumulated transposed (contiguous tile rows); hand it back as a `[hidden, vocab]`
    // view: a tied embedding's gradient (`[vocab, hidden]`) is then this very buffer.
    let dw = dwt.map(|d| in_dtype_of(flex_f32(d, [vocab, h]), weight.dtype()).transpose(0, 1));
    (dh, dw)
}
