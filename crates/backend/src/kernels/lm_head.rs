//! The LM head's per-token log-softmax in vocabulary tiles ([`super::lm_head_logps`], the
//! [`FusedOps::lm_head_logps`](super::FusedOps::lm_head_logps) op and its backward entry):
//! the maths, and the tile loop written once in backend primitives.
//!
//! For each row `n` (one position of one sequence) with hidden state `h_n` and target `y_n`:
//!
//! ```text
//! logp_n = h_n · W[:, y_n] − logsumexp_v (h_n · W[:, v])
//! ```
//!
//! The log-sum-exp runs over vocabulary tiles of `vocab_tile` columns with the *online* update
//! `m' = max(m, max_tile)`, `s' = s·e^(m − m') + Σ_tile e^(z − m')` in f32 (f64 for f64 inputs,
//! f32 also for bf16/f16 inputs), so only one `[row_block, vocab_tile]` block of logits is alive
//! at a time and the `[rows, vocab]` logits never exist.
//!
//! With upstream gradient `g_n` and `p_n = softmax(h_n W)` the backward needs no stored logits
//! either, only the per-row log-sum-exp:
//!
//! ```text
//! ∂L/∂z_n    = g_n (e_{y_n} − p_n)         (z = h W, recomputed per tile)
//! ∂L/∂h      = Σ_tiles (∂L/∂z)_tile · W_tileᵀ
//! ∂L/∂W_tile = hᵀ · (∂L/∂z)_tile
//! ```
//!
//! Where the op runs:
//! * Flex, f32, bf16 and f16 storage (`kernels/flex/lm_head.rs`): gemm into one reused tile
//!   buffer plus one parallel, vectorised pass per tile; optionally the forward keeps the
//!   logits and the backward skips its recompute gemm. Under [`autocast`](crate::autocast)
//!   ([`VocabTiling::half`]) or with a half-type operand the tile products round their
//!   operands to the half type and accumulate in f32 (the logit gradient too, as torch's
//!   autocast rounds the gradient of a bf16 matmul's output); the softmax statistics stay f32;
//! * everywhere else (Flex in f64, the CubeCL backends with or without fusion): the
//!   tile loop of this module on the backend's own primitives;
//! * under autodiff: one custom node (`kernels/autodiff.rs`) that keeps `h`, `W`, the targets
//!   and the log-sum-exp (`[rows]`), not a tile's logits, and computes gradients only for the
//!   inputs that need them;
//! * [`reference`](super::reference::lm_head_logps): the same tile loop on burn's `Dispatch`
//!   backend, differentiable by burn's autodiff (whose backward then keeps every tile's logits).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, TensorMetadata, get_or_init_device_settings};
use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Scalar, Shape, Slice, Tensor};

use super::{FusedOp, KernelPath, is_gpu, kernel_path_for};

/// Tile sizes of the LM-head log-softmax, both positive, and the precision of its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabTiling {
    /// Vocabulary columns per tile.
    pub vocab_tile: usize,
    /// Rows per block.
    pub row_block: usize,
    /// The half type the tile products round their operands to (f32 accumulation), as a
    /// matmul under [`autocast`](crate::autocast) does: `None` takes the autocast scope's type
    /// when [`super::lm_head_logps`] is called. Honoured by Flex's kernel; the tile loop and
    /// the GPU kernels compute in the inputs' dtype.
    pub half: Option<crate::HalfType>,
}

impl VocabTiling {
    /// `vocab_tile` columns by `row_block` rows, products in the inputs' dtype (or autocast's).
    pub fn new(vocab_tile: usize, row_block: usize) -> Self {
        Self {
            vocab_tile,
            row_block,
            half: None,
        }
    }
}

/// Per-row results of [`super::lm_head_logps`], all `[rows]`, in f32 (f64 for f64 inputs).
#[derive(Debug, Clone)]
pub struct TargetLogps {
    /// `log softmax(h·W)[target]`.
    pub logps: Tensor<1>,
    /// `logsumexp(h·W)` (what the backward needs).
    pub lse: Tensor<1>,
    /// With statistics: the softmax entropy and the first argmax of every row (detached).
    pub stats: Option<(Tensor<1>, Tensor<1, Int>)>,
    /// With `keep_logits` on Flex (f32) outside autodiff: every tile's logits (`rows × vocab`
    /// values in the kernel's own order), for [`super::lm_head_logps_backward`] to use instead
    /// of recomputing them. Under autodiff the op's backward node keeps them itself.
    pub logits: Option<Tensor<1>>,
}

impl TargetLogps {
    /// The op's dispatch outputs as tensors.
    pub(super) fn from_dispatch(
        (logps, lse, stats, logits): super::ops::LmHeadOutput<Dispatch>,
    ) -> Self {
        Self {
            logps: Tensor::from_dispatch(logps),
            lse: Tensor::from_dispatch(lse),
            stats: stats.map(|(e, a)| (Tensor::from_dispatch(e), Tensor::from_dispatch(a))),
            logits: logits.map(Tensor::from_dispatch),
        }
    }
}

/// Whether the fused Flex kernel itself runs for these inputs (f32, bf16 or f16 on Flex, no
/// autodiff, not forced to the reference, shapes that fit).
fn fused_kernel_applies(hidden: &Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> bool {
    let device = hidden.device();
    let [n, h] = hidden.dims();
    let [wh, v] = weight.dims();
    kernel_path_for(FusedOp::LmHead, &device, hidden.dtype()) == KernelPath::Fused
        && !is_gpu(&device)
        && !device.is_autodiff()
        && !weight.is_autodiff()
        && [hidden.dtype(), weight.dtype()]
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::BF16 | DType::F16))
        && h == wh
        && v > 0
        && targets.dims() == [n]
}

/// The fused Flex kernel of [`super::lm_head_logps`] alone, for tests and kernel A/B runs:
/// `None` wherever it does not run (another backend or dtype, autodiff tensors,
/// `TEMPER_KERNELS=reference:lm_head`, mismatched shapes or zero tile sizes). Shapes as there.
pub fn target_logps_forward(
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
    tiling: VocabTiling,
    with_stats: bool,
    keep_logits: bool,
) -> Option<TargetLogps> {
    if !fused_kernel_applies(hidden, weight, targets)
        || tiling.vocab_tile == 0
        || tiling.row_block == 0
    {
        return None;
    }
    Some(super::lm_head_logps(
        hidden.clone(),
        weight.clone(),
        targets.clone(),
        tiling,
        with_stats,
        keep_logits,
    ))
}

/// The fused Flex kernel of [`super::lm_head_logps_backward`] alone, where
/// [`target_logps_forward`] runs (and `lse`, `grad` are `[rows]`); `None` elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn target_logps_backward(
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
    lse: &Tensor<1>,
    grad: &Tensor<1>,
    tiling: VocabTiling,
    need_hidden: bool,
    need_weight: bool,
    logits: Option<Tensor<1>>,
) -> Option<(Option<Tensor<2>>, Option<Tensor<2>>)> {
    let rows = hidden.dims()[0];
    if !fused_kernel_applies(hidden, weight, targets)
        || tiling.vocab_tile == 0
        || tiling.row_block == 0
        || lse.dims() != [rows]
        || grad.dims() != [rows]
    {
        return None;
    }
    Some(super::lm_head_logps_backward(
        hidden.clone(),
        weight.clone(),
        targets.clone(),
        lse.clone(),
        grad.clone(),
        logits,
        tiling,
        need_hidden,
        need_weight,
    ))
}

/// The accumulation dtype: f64 for f64 inputs, f32 for everything else (f32, bf16, f16).
fn compute_dtype(a: DType, b: DType) -> FloatDType {
    if a == DType::F64 || b == DType::F64 {
        FloatDType::F64
    } else {
        FloatDType::F32
    }
}

fn cast<B: Backend>(x: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    if x.dtype() == DType::from(dtype) {
        x
    } else {
        B::float_cast(x, dtype)
    }
}

/// `[start, end)` blocks of `size` over `0..n`.
pub(crate) fn blocks(n: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let size = size.max(1);
    (0..n.div_ceil(size)).map(move |i| (i * size, ((i + 1) * size).min(n)))
}

fn rows_of<B: Backend>(x: FloatTensor<B>, r0: usize, r1: usize) -> FloatTensor<B> {
    let cols = x.shape().dims::<2>()[1];
    B::float_slice(x, &[Slice::from(r0..r1), Slice::from(0..cols)])
}

fn cols_of<B: Backend>(x: FloatTensor<B>, v0: usize, v1: usize) -> FloatTensor<B> {
    let rows = x.shape().dims::<2>()[0];
    B::float_slice(x, &[Slice::from(0..rows), Slice::from(v0..v1)])
}

fn part<B: Backend>(x: &FloatTensor<B>, r0: usize, r1: usize) -> FloatTensor<B> {
    B::float_slice(x.clone(), &[Slice::from(r0..r1)])
}

/// `[n, 1]` → `[n]`.
fn squeeze<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape().dims::<2>()[0];
    B::float_reshape(x, Shape::new([n]))
}

/// `[n]` → `[n, 1]`.
fn column<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape().dims::<1>()[0];
    B::float_reshape(x, Shape::new([n, 1]))
}

/// Where each target of `targets` `[rows]` falls in the tile `[v0, v1)`: the in-tile column
/// `[rows, 1]` (clamped into range) and 1 / 0 for inside / outside `[rows]`.
fn tile_targets<B: Backend>(
    targets: IntTensor<B>,
    v0: usize,
    v1: usize,
    dtype: FloatDType,
) -> (IntTensor<B>, FloatTensor<B>) {
    let settings = get_or_init_device_settings::<B>(&targets.device());
    let rows = targets.shape().dims::<1>()[0];
    let width = (v1 - v0) as i64;
    let local = B::int_sub_scalar(targets, Scalar::from(v0 as i64));
    let inside = B::bool_and(
        B::int_greater_equal_elem(local.clone(), Scalar::from(0i64), settings.bool_dtype),
        B::int_lower_elem(local.clone(), Scalar::from(width), settings.bool_dtype),
    );
    let col = B::int_clamp(local, Scalar::from(0i64), Scalar::from(width - 1));
    (
        B::int_reshape(col, Shape::new([rows, 1])),
        B::bool_into_float(inside, dtype),
    )
}

/// The forward results of [`forward`]: log-probs, log-sum-exp and, with statistics, entropy
/// and first argmax, all `[rows]`.
pub(crate) type Rows<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    Option<(FloatTensor<B>, IntTensor<B>)>,
);

/// Online accumulators of one row block, `[rows, 1]` unless said otherwise.
struct Online<B: Backend> {
    /// Running max.
    max: FloatTensor<B>,
    /// `Σ e^(z − max)`.
    sum: FloatTensor<B>,
    /// Target logit (summed over the tile that holds it) `[rows]`.
    picked: FloatTensor<B>,
    /// With statistics (detached): `Σ e^(z − max)(z − max)` and the best (value, index).
    stats: Option<(FloatTensor<B>, FloatTensor<B>, IntTensor<B>)>,
}

impl<B: Backend> Online<B> {
    /// The state after the first tile: `logits` `[rows, tile]`, its max `[rows, 1]`, the target
    /// logit `[rows]` and, with statistics, the tile's best (value, index).
    fn first(
        logits: FloatTensor<B>,
        tile_max: FloatTensor<B>,
        picked: FloatTensor<B>,
        best: Option<(FloatTensor<B>, IntTensor<B>)>,
    ) -> Self {
        let shifted = B::float_sub(logits, tile_max.clone());
        let e = B::float_exp(shifted.clone());
        let stats = best.map(|(val, idx)| {
            let u = B::float_sum_dim(
                B::float_mul(B::float_detach(e.clone()), B::float_detach(shifted)),
                1,
            );
            (u, val, idx)
        });
        Self {
            sum: B::float_sum_dim(e, 1),
            max: tile_max,
            picked,
            stats,
        }
    }

    /// Folds in one more tile (arguments as in [`Online::first`]).
    fn update(
        self,
        logits: FloatTensor<B>,
        tile_max: FloatTensor<B>,
        picked: FloatTensor<B>,
        best: Option<(FloatTensor<B>, IntTensor<B>)>,
    ) -> Self {
        let bool_dtype = get_or_init_device_settings::<B>(&logits.device()).bool_dtype;
        let m_new = {
            let lower = B::float_lower(self.max.clone(), tile_max.clone(), bool_dtype);
            B::float_mask_where(self.max.clone(), lower, tile_max)
        };
        let dm = B::float_sub(self.max, m_new.clone()); // ≤ 0
        let scale = B::float_exp(dm.clone());
        let shifted = B::float_sub(logits, m_new.clone());
        let e = B::float_exp(shifted.clone());
        let stats = match (self.stats, best) {
            (Some((u, best, best_idx)), Some((val, idx))) => {
                // u' = e^(m − m')(u + (m − m')·s) + Σ_tile e^(z − m')(z − m').
                let (sc, s) = (
                    B::float_detach(scale.clone()),
                    B::float_detach(self.sum.clone()),
                );
                let carried =
                    B::float_mul(sc, B::float_add(u, B::float_mul(B::float_detach(dm), s)));
                let tile = B::float_sum_dim(
                    B::float_mul(B::float_detach(e.clone()), B::float_detach(shifted)),
                    1,
                );
                // Strictly greater: on ties the earlier tile (lower index) wins.
                let better = B::float_greater(val.clone(), best.clone(), bool_dtype);
                let best_idx = B::int_mask_where(best_idx, better.clone(), idx);
                let best = B::float_mask_where(best, better, val);
                Some((B::float_add(carried, tile), best, best_idx))
            }
            _ => None,
        };
        Self {
            sum: B::float_add(B::float_mul(self.sum, scale), B::float_sum_dim(e, 1)),
            max: m_new,
            picked: B::float_add(self.picked, picked),
            stats,
        }
    }
}

/// The tile loop of [`FusedOps::lm_head_logps`](super::FusedOps::lm_head_logps) in backend primitives: `hidden`
/// `[rows, hidden]`, `weight` `[hidden, vocab]` (any strides), `targets` `[rows]` (in range).
/// Differentiable wherever `B`'s primitives are (the statistics are detached).
pub(crate) fn forward<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: IntTensor<B>,
    tiling: VocabTiling,
    with_stats: bool,
) -> Rows<B> {
    let [n, _] = hidden.shape().dims::<2>();
    let v = weight.shape().dims::<2>()[1];
    let device = hidden.device();
    let int_dtype = get_or_init_device_settings::<B>(&device).int_dtype;
    let cd = compute_dtype(hidden.dtype(), weight.dtype());
    if n == 0 {
        let empty = || B::float_zeros(Shape::new([0]), &device, cd);
        let stats =
            with_stats.then(|| (empty(), B::int_zeros(Shape::new([0]), &device, int_dtype)));
        return (empty(), empty(), stats);
    }
    let hidden = cast::<B>(hidden, cd);
    let (mut logps, mut lses, mut entropies, mut argmaxes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r0, r1) in blocks(n, tiling.row_block) {
        let hb = rows_of::<B>(hidden.clone(), r0, r1);
        let tb = B::int_slice(targets.clone(), &[Slice::from(r0..r1)]);
        let mut state: Option<Online<B>> = None;
        for (v0, v1) in blocks(v, tiling.vocab_tile) {
            let wt = cast::<B>(cols_of::<B>(weight.clone(), v0, v1), cd);
            let logits = B::float_matmul(hb.clone(), wt); // [rows, tile]
            let (col, inside) = tile_targets::<B>(tb.clone(), v0, v1, cd);
            let picked = B::float_mul(
                squeeze::<B>(B::float_gather(1, logits.clone(), col)),
                inside,
            );
            let tile_max = B::float_max_dim(logits.clone(), 1);
            let best = with_stats.then(|| {
                let (val, idx) =
                    B::float_max_dim_with_indices(B::float_detach(logits.clone()), 1, int_dtype);
                (val, B::int_add_scalar(idx, Scalar::from(v0 as i64)))
            });
            state = Some(match state {
                None => Online::first(logits, tile_max, picked, best),
                Some(online) => online.update(logits, tile_max, picked, best),
            });
        }
        // `v > 0` (checked by the callers), so every block saw a tile.
        let Some(Online {
            max,
            sum,
            picked,
            stats,
        }) = state
        else {
            continue;
        };
        if let Some((u, _, idx)) = stats {
            let s = B::float_detach(sum.clone());
            let entropy = B::float_sub(B::float_log(s.clone()), B::float_div(u, s));
            entropies.push(squeeze::<B>(entropy));
            argmaxes.push(B::int_reshape(idx, Shape::new([r1 - r0])));
        }
        let lse = squeeze::<B>(B::float_add(max, B::float_log(sum)));
        logps.push(B::float_sub(picked, lse.clone()));
        lses.push(lse);
    }
    let stats = (with_stats && !entropies.is_empty())
        .then(|| (B::float_cat(entropies, 0), B::int_cat(argmaxes, 0)));
    (B::float_cat(logps, 0), B::float_cat(lses, 0), stats)
}

/// The backward tile loop of [`FusedOps::lm_head_logps_backward`](super::FusedOps::lm_head_logps_backward) from the inputs and the
/// forward's `lse` `[rows]`, for upstream gradient `grad` `[rows]`: `(∂hidden, ∂weight)` in
/// the input dtypes, each only when asked for. Every tile's logits are recomputed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: IntTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    tiling: VocabTiling,
    need_hidden: bool,
    need_weight: bool,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let [n, h] = hidden.shape().dims::<2>();
    let v = weight.shape().dims::<2>()[1];
    let (h_dtype, w_dtype) = (hidden.dtype(), weight.dtype());
    let device = hidden.device();
    if n == 0 {
        return (
            need_hidden.then(|| B::float_zeros(Shape::new([0, h]), &device, h_dtype.into())),
            need_weight.then(|| B::float_zeros(Shape::new([h, v]), &device, w_dtype.into())),
        );
    }
    let cd = compute_dtype(h_dtype, w_dtype);
    let hidden = cast::<B>(hidden, cd);
    let grad = cast::<B>(grad, cd);
    let lse = cast::<B>(lse, cd);
    let row_blocks: Vec<(usize, usize)> = blocks(n, tiling.row_block).collect();
    let mut grad_hidden: Vec<FloatTensor<B>> = if need_hidden {
        row_blocks
            .iter()
            .map(|&(r0, r1)| B::float_zeros(Shape::new([r1 - r0, h]), &device, cd))
            .collect()
    } else {
        Vec::new()
    };
    let mut grad_weight = need_weight.then(|| B::float_zeros(Shape::new([h, v]), &device, cd));
    for (v0, v1) in blocks(v, tiling.vocab_tile) {
        let wt = cast::<B>(cols_of::<B>(weight.clone(), v0, v1), cd);
        let mut gw_tile: Option<FloatTensor<B>> = None;
        for (bi, &(r0, r1)) in row_blocks.iter().enumerate() {
            let hb = rows_of::<B>(hidden.clone(), r0, r1);
            let gb = part::<B>(&grad, r0, r1);
            let tb = B::int_slice(targets.clone(), &[Slice::from(r0..r1)]);
            let (col, inside) = tile_targets::<B>(tb, v0, v1, cd);
            let logits = B::float_matmul(hb.clone(), wt.clone());
            // ∂L/∂z = g·(onehot − p) = −g·p, plus g at the target column.
            let p = B::float_exp(B::float_sub(logits, column::<B>(part::<B>(&lse, r0, r1))));
            let dz = B::float_mul(p, column::<B>(B::float_neg(gb.clone())));
            let dz = B::float_scatter(
                1,
                dz,
                col,
                column::<B>(B::float_mul(gb, inside)),
                IndexingUpdateOp::Add,
            );
            if need_hidden {
                let update = B::float_matmul(dz.clone(), B::float_transpose(wt.clone()));
                grad_hidden[bi] = B::float_add(grad_hidden[bi].clone(), update);
            }
            if need_weight {
                let update = B::float_matmul(B::float_transpose(hb), dz);
                gw_tile = Some(match gw_tile {
                    None => update,
                    Some(acc) => B::float_add(acc, update),
                });
            }
        }
        if let (Some(gw), Some(tile)) = (grad_weight.take(), gw_tile) {
            let slices = [Slice::from(0..h), Slice::from(v0..v1)];
            grad_weight = Some(B::float_slice_assign(gw, &slices, tile));
        }
    }
    let grad_hidden = need_hidden.then(|| cast::<B>(B::float_cat(grad_hidden, 0), h_dtype.into()));
    (
        grad_hidden,
        grad_weight.map(|g| cast::<B>(g, w_dtype.into())),
    )
}
