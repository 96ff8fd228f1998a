//! The LM head's per-token log-softmax in vocabulary tiles as one fused op per direction.
//!
//! `temper-objectives`' chunked log-probs (`logp_n = h_n·W[:, y_n] − logsumexp_v h_n·W[:, v]`,
//! never materialising `[rows, vocab]`) are written in burn tensor ops for every backend; these
//! are the same computations for Flex (f32), where they run as gemm into one reused tile
//! buffer plus one parallel vectorised pass per tile. They return `None` wherever they do not
//! apply (another backend or dtype, autodiff tensors, `TEMPER_KERNELS=reference:lm_head`), and
//! the caller keeps its tensor-op path. Values agree with the tensor-op path up to f32
//! summation order.

use burn::tensor::{DType, Int, Tensor};

use super::{FusedOp, KernelPath, is_gpu, kernel_path_for};

/// Tile sizes: vocabulary columns per tile and rows per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabTiling {
    /// Vocabulary columns per tile.
    pub vocab_tile: usize,
    /// Rows per block.
    pub row_block: usize,
}

/// Per-row results of [`target_logps_forward`], all `[rows]`, f32.
#[derive(Debug, Clone)]
pub struct TargetLogps {
    /// `log softmax(h·W)[target]`.
    pub logps: Tensor<1>,
    /// `logsumexp(h·W)` (what the backward needs).
    pub lse: Tensor<1>,
    /// With statistics: the softmax entropy and the first argmax of every row.
    pub stats: Option<(Tensor<1>, Tensor<1, Int>)>,
    /// With `keep_logits`: every tile's logits (`rows × vocab` values in the kernel's own
    /// order), for [`target_logps_backward`] to use instead of recomputing them.
    pub logits: Option<Tensor<1>>,
}

fn applies(hidden: &Tensor<2>, weight: &Tensor<2>, targets: &Tensor<1, Int>) -> bool {
    let device = hidden.device();
    let [n, h] = hidden.dims();
    let [wh, v] = weight.dims();
    kernel_path_for(FusedOp::LmHead, &device, hidden.dtype()) == KernelPath::Fused
        && !is_gpu(&device)
        && !device.is_autodiff()
        && !weight.is_autodiff()
        && hidden.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && h == wh
        && v > 0
        && targets.dims() == [n]
}

/// Forward of the tiled log-softmax: `hidden` `[rows, hidden]`, `weight` `[hidden, vocab]`
/// (e.g. a tied embedding's transposed view; read through its strides), `targets` `[rows]`
/// (ids inside the vocabulary). `None` where the fused path does not apply (another backend
/// or dtype, autodiff tensors, `TEMPER_KERNELS=reference:lm_head`).
///
/// `keep_logits` trades memory for time: the `rows × vocab` logits (f32) are kept in
/// [`TargetLogps::logits`] and the backward pass skips its recompute gemm (one of its three
/// `rows × hidden × vocab` products).
pub fn target_logps_forward(
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
    tiling: VocabTiling,
    with_stats: bool,
    keep_logits: bool,
) -> Option<TargetLogps> {
    if !applies(hidden, weight, targets) || tiling.vocab_tile == 0 || tiling.row_block == 0 {
        return None;
    }
    #[cfg(feature = "flex")]
    return super::flex::target_logps_forward(
        hidden,
        weight,
        targets,
        tiling,
        with_stats,
        keep_logits,
    );
    #[cfg(not(feature = "flex"))]
    {
        let _ = (with_stats, keep_logits);
        None
    }
}

/// Backward of [`target_logps_forward`] for upstream gradient `grad` `[rows]`:
/// `(∂hidden [rows, hidden], ∂weight [hidden, vocab])`, each only when asked for. `logits` is
/// the forward's [`TargetLogps::logits`] (same tiling), or `None` to recompute them. `None`
/// where the fused path does not apply.
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
    if !applies(hidden, weight, targets)
        || tiling.vocab_tile == 0
        || tiling.row_block == 0
        || lse.dims() != [rows]
        || grad.dims() != [rows]
    {
        return None;
    }
    #[cfg(feature = "flex")]
    return super::flex::target_logps_backward(
        hidden,
        weight,
        targets,
        lse,
        grad,
        tiling,
        need_hidden,
        need_weight,
        logits,
    );
    #[cfg(not(feature = "flex"))]
    {
        let _ = (need_hidden, need_weight, logits);
        None
    }
}
