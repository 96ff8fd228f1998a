//! Products with a block-quantized frozen weight `W` `[n, k]` (`[out, in]`) on the CPU:
//! the forward `y = x·Wᵀ` and the input gradient `∂x = ∂y·W` (a frozen base has no `∂W`).
//!
//! `W` is decoded a tile of rows at a time into a scratch buffer of at most [`TILE_BYTES`]
//! (in parallel, a row per task), and each tile is multiplied by the existing gemms — f32, or
//! with operands rounded to the autocast half type (`half_gemm`, `vdpbf16ps` where it pays) —
//! so no dense copy of the weight ever exists: the scratch is ≤ 4 MiB whatever the model.
//! Tiles are visited in order and `∂x` sums them in that order, so results do not depend on
//! the number of threads.
//!
//! Few rows (decode, `m ≤ SMALL_M`) take a matrix-vector path instead: rows in ggml's 32-value
//! blocks (Q4_0, Q4_1, Q8_0) are dotted with the inputs, rounded to 8 bits, straight from
//! their blocks ([`super::block_dot`]); other encodings decode one row at a time into a row
//! buffer and dot it, so the blocks are read once and nothing larger than a row is written.

use rayon::prelude::*;

use super::block_dot;
use super::gemm::{self, View};
use super::half_gemm::{self, HalfView, Strided, matmul_f32_or_half};
use super::simd::{dispatch, dot};
use crate::HalfType;
use crate::quant::QuantizedWeight;

/// The most scratch one tile of decoded rows takes (f32).
const TILE_BYTES: usize = 4 << 20;
/// Rows of `x` up to which the forward runs as matrix-vector products.
const SMALL_M: usize = 4;
/// Rows of `W` one matrix-vector task decodes.
const ROWS_PER_TASK: usize = 16;
/// Weight bytes below which a product straight from ggml blocks runs on the calling thread:
/// SmolLM2-135M's attention projections (≤ 203 KiB of Q4_1, ≈ 10 µs of VNNI work) take less
/// than waking rayon's threads costs; its MLP projections (540 KiB) are split. (Measured on
/// the 2-core Zen 5 VM under load 4: every product on the calling thread decoded as fast as
/// any split, ±10 % noise; splitting each into 128-row tasks was no faster.)
const BLOCK_SEQUENTIAL_BYTES: usize = 256 << 10;

/// Rows of `W` one task dots straight from ggml blocks: all `n` (on the calling thread) for a
/// small weight, else an equal share per thread (one task each: fewer, larger tasks).
fn block_rows_per_task(n: usize, row_bytes: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads < 2 || n * row_bytes < BLOCK_SEQUENTIAL_BYTES {
        return n.max(1);
    }
    n.div_ceil(threads).max(1)
}

/// Rows of `W` (`k` values each) per decoded tile: as many as fit [`TILE_BYTES`], at least 32.
fn tile_rows(n: usize, k: usize) -> usize {
    (TILE_BYTES / (4 * k.max(1))).max(32).min(n.max(1))
}

/// Rows `rows` of `w` decoded into `tile` (`rows.len() × k`), a row per rayon task.
fn decode_tile(w: &QuantizedWeight, rows: std::ops::Range<usize>, tile: &mut [f32]) {
    let k = w.shape()[1];
    tile.par_chunks_mut(k.max(1))
        .zip(rows.into_par_iter())
        .for_each(|(out, r)| w.dequantize_rows(r..r + 1, out));
}

/// `dst[m, n] = (accumulate ? dst : 0) + lhs[m, k] · rhs[k, n]` on all threads, in f32 or
/// with operands rounded to `half`.
fn product(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    mkn: [usize; 3],
    half: Option<HalfType>,
) {
    matmul_f32_or_half(half, true, dst, accumulate, lhs, rhs, mkn, 1.0);
}

/// `out[m, n] = x[m, k] · Wᵀ` (`x` row-major, contiguous).
pub(super) fn forward(
    x: &[f32],
    m: usize,
    w: &QuantizedWeight,
    half: Option<HalfType>,
) -> Vec<f32> {
    let [n, k] = w.shape();
    assert_eq!(x.len(), m * k, "quantized product: x is not [{m}, {k}]");
    if m <= SMALL_M {
        return matvec(x, m, w, half);
    }
    let nt = tile_rows(n, k);
    with_tile(nt * k, |tile| {
        if nt >= n {
            // One tile: the product is the output (a fresh buffer, never zero-filled).
            let tile = &mut tile[..n * k];
            decode_tile(w, 0..n, tile);
            // `Wᵀ` `[k, n]` is the decoded rows read column-wise.
            return fresh_product((x, k, 1), (tile, 1, k), [m, k, n], half);
        }
        let mut out = vec![0.0f32; m * n];
        let mut part = vec![0.0f32; m * nt];
        for n0 in (0..n).step_by(nt) {
            let rows = nt.min(n - n0);
            let tile = &mut tile[..rows * k];
            decode_tile(w, n0..n0 + rows, tile);
            let part = &mut part[..m * rows];
            product(part, false, (x, k, 1), (tile, 1, k), [m, k, rows], half);
            for (dst, src) in out.chunks_exact_mut(n).zip(part.chunks_exact(rows)) {
                dst[n0..n0 + rows].copy_from_slice(src);
            }
        }
        out
    })
}

thread_local! {
    /// The calling thread's decoded-tile buffer, kept between calls: a fresh 4 MiB buffer per
    /// product was zero-filled (and often faulted in) for nothing, as decoding writes it all.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with a scratch buffer of `len` f32s (contents unspecified: callers overwrite it).
fn with_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a product inside a product): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A fresh `[m, n]` product `lhs · rhs` on all threads, in f32 or with operands rounded to
/// `half`, written without a zero-filling pass.
fn fresh_product(
    (lhs, lr, lc): Strided<'_>,
    (rhs, rr, rc): Strided<'_>,
    mkn: [usize; 3],
    half: Option<HalfType>,
) -> Vec<f32> {
    match half {
        None => gemm::product(View::new(lhs, lr, lc), View::new(rhs, rr, rc), mkn, 1.0),
        Some(h) => half_gemm::product_half(
            HalfView::f32(lhs, lr, lc),
            HalfView::f32(rhs, rr, rc),
            mkn,
            1.0,
            h,
        ),
    }
}

/// `∂x[m, k] = ∂y[m, n] · W` (`grad` row-major, contiguous).
pub(super) fn backward(
    grad: &[f32],
    m: usize,
    w: &QuantizedWeight,
    half: Option<HalfType>,
) -> Vec<f32> {
    let [n, k] = w.shape();
    assert_eq!(grad.len(), m * n, "quantized product: ∂y is not [{m}, {n}]");
    let nt = tile_rows(n, k);
    with_tile(nt * k, |tile| {
        let mut dx: Vec<f32> = Vec::new();
        for n0 in (0..n).step_by(nt) {
            let rows = nt.min(n - n0);
            let tile = &mut tile[..rows * k];
            decode_tile(w, n0..n0 + rows, tile);
            // ∂y's columns `n0..n0 + rows` (row stride n) times the tile `[rows, k]`: the first
            // tile writes ∂x, the others add to it in order.
            let (g, t) = ((&grad[n0..], n, 1), (&*tile, k, 1));
            if n0 == 0 {
                dx = fresh_product(g, t, [m, rows, k], half);
            } else {
                product(&mut dx, true, g, t, [m, rows, k], half);
            }
        }
        if dx.is_empty() {
            dx = vec![0.0; m * k];
        }
        dx
    })
}

/// [`forward`] for a few rows: each task decodes [`ROWS_PER_TASK`] rows of `W`, one at a time,
/// and dots each with the `m` inputs (rounded to `half` first when given).
fn matvec(x: &[f32], m: usize, w: &QuantizedWeight, half: Option<HalfType>) -> Vec<f32> {
    let [n, k] = w.shape();
    if let (None, Some(bb), Some(bytes)) = (
        half,
        block_dot::block_bytes(w.quant_type()),
        w.block_bytes(),
    ) {
        // ggml's 32-value blocks: the inputs rounded to 8 bits once, then integer dots with
        // the blocks as stored (as llama.cpp decodes).
        let row_bytes = k / 32 * bb;
        let kernel = block_dot::default_kernel();
        let xq: Vec<_> = x
            .chunks_exact(k)
            .map(|xi| block_dot::Q8Input::new(xi, w.quant_type()))
            .collect();
        let mut out = vec![0.0f32; m * n];
        let chunk = block_rows_per_task(n, row_bytes);
        for (xi, oi) in xq.iter().zip(out.chunks_exact_mut(n)) {
            if chunk >= n {
                block_dot::dot_rows(kernel, &bytes[..n * row_bytes], xi, oi);
                continue;
            }
            oi.par_chunks_mut(chunk).enumerate().for_each(|(task, o)| {
                let start = task * chunk * row_bytes;
                let rows = &bytes[start..start + o.len() * row_bytes];
                block_dot::dot_rows(kernel, rows, xi, o);
            });
        }
        return out;
    }
    let x: Vec<f32> = match half {
        Some(h) => x.iter().map(|&v| h.round(v)).collect(),
        None => x.to_vec(),
    };
    // Column-major results `[n, m]`, transposed at the end (m ≤ 4: a few values a row).
    let mut cols = vec![0.0f32; n * m];
    cols.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let r0 = task * ROWS_PER_TASK;
            let mut row = vec![0.0f32; k];
            for (j, out) in out.chunks_exact_mut(m).enumerate() {
                w.dequantize_rows(r0 + j..r0 + j + 1, &mut row);
                if let Some(h) = half {
                    row.iter_mut().for_each(|v| *v = h.round(*v));
                }
                dispatch(|| {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = dot(&x[i * k..(i + 1) * k], &row);
                    }
                });
            }
        });
    let mut out = vec![0.0f32; m * n];
    for (j, c) in cols.chunks_exact(m).enumerate() {
        for (i, v) in c.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

impl crate::kernels::QuantOps for burn::backend::Flex {
    fn quant_matmul(
        x: burn::backend::flex::FlexTensor,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> burn::backend::flex::FlexTensor {
        let m = rows_of(&x, weight.shape()[1], "x");
        let out = super::with_slice(&x, |xs| forward(xs, m, &weight, half));
        fresh(out, [m, weight.shape()[0]])
    }

    fn quant_matmul_backward(
        grad: burn::backend::flex::FlexTensor,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> burn::backend::flex::FlexTensor {
        let m = rows_of(&grad, weight.shape()[0], "∂y");
        let dx = super::with_slice(&grad, |gs| backward(gs, m, &weight, half));
        fresh(dx, [m, weight.shape()[1]])
    }
}

/// Rows of a `[m, cols]` f32 operand, checked.
fn rows_of(t: &burn::backend::flex::FlexTensor, cols: usize, name: &str) -> usize {
    let dims = t.layout().shape().as_slice();
    assert!(
        dims.len() == 2 && dims[1] == cols && t.dtype() == burn::tensor::DType::F32,
        "quantized product: {name} is {:?} {dims:?}, expected f32 [m, {cols}]",
        t.dtype()
    );
    dims[0]
}

fn fresh(data: Vec<f32>, shape: [usize; 2]) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(burn::tensor::TensorData::new(data, shape))
}
