//! Causal grouped-query attention on the CPU: forward (with each row's log-sum-exp) and
//! backward, as per-block gemms over the visible keys only.
//!
//! Layout: `q`, `out`, `grad` `[b, s, h, d]`, `k`, `v` `[b, t, kvh, d]` (contiguous), query
//! `i` at key position `t − s + i` sees keys `0..=t − s + i`. Keys and values are read in
//! place through strides, so grouped-query heads share them without `repeat_kv` copies, and no
//! `[b, h, s, t]` tensor exists: a task holds one block's scores.
//!
//! Backward (the flash-attention recurrences, `P = exp(S − lse)`, `δ = rowsum(∂O ∘ O)`,
//! `∂S = P ∘ (∂O·Vᵀ − δ)`) in two parallel passes that never write the same memory:
//! `∂Q` per (batch, head, query block), then `∂K`, `∂V` per (batch, KV head, key block), summing
//! the query heads of the group in the task. Each pass recomputes its block of `P`; the
//! attention matmuls are ≈ 3 % of a SmolLM2 step's FLOPs, so that is cheaper than keeping
//! `P` and far lighter on memory.
//!
//! Under autocast ([`Dims::half`]) every product rounds its operands to the half type and
//! accumulates in f32 (`half_gemm`), as torch's bf16 flash attention does: `Q`, `K`, `V`, the
//! probabilities before `P·V`, `∂O`, and `P`, `∂S` in the backward. The softmax, its
//! log-sum-exp and `δ` stay in f32.

use rayon::prelude::*;

use super::half_gemm::{HalfType, Strided, matmul_f32_or_half};
use super::simd::{dispatch, dot, exp};

/// One task's output block: batch, head, first row, values, per-row statistics.
type Block = (usize, usize, usize, Vec<f32>, Vec<f32>);

/// Query rows (forward, `∂Q`) or key rows (`∂K`, `∂V`) per task.
const BLOCK: usize = 64;

/// The shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub d: usize,
    pub t: usize,
    pub kvh: usize,
    /// The half type the products round their operands to (autocast), or `None` for f32.
    pub half: Option<HalfType>,
}

impl Dims {
    /// `out[m, n] = (accumulate ? out : 0) + alpha · X[m, k] · Y[k, n]` on this thread, in f32
    /// or with operands rounded to [`Dims::half`].
    fn product(
        &self,
        out: &mut [f32],
        accumulate: bool,
        x: Strided<'_>,
        y: Strided<'_>,
        mkn: [usize; 3],
        alpha: f32,
    ) {
        matmul_f32_or_half(self.half, false, out, accumulate, x, y, mkn, alpha);
    }

    fn rep(&self) -> usize {
        self.h / self.kvh
    }
    fn offset(&self) -> usize {
        self.t - self.s
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
    /// Start of row `i` of head `head` in a `[b, s, h, d]` tensor.
    fn q_at(&self, bi: usize, i: usize, head: usize) -> usize {
        ((bi * self.s + i) * self.h + head) * self.d
    }
    /// Start of key `j` of KV head `g` in a `[b, t, kvh, d]` tensor.
    fn kv_at(&self, bi: usize, j: usize, g: usize) -> usize {
        ((bi * self.t + j) * self.kvh + g) * self.d
    }
    /// Index of row `i` of head `head` in a `[b, h, s]` tensor (lse, δ).
    fn row_at(&self, bi: usize, head: usize, i: usize) -> usize {
        (bi * self.h + head) * self.s + i
    }

    /// The tasks of a pass over query blocks, in parallel: every (batch, head) split into
    /// blocks of `BLOCK` rows.
    fn query_blocks(self) -> impl IndexedParallelIterator<Item = QueryBlock> {
        let blocks = self.s.div_ceil(BLOCK);
        (0..self.b * self.h * blocks)
            .into_par_iter()
            .map(move |task| self.query_block(task, blocks))
    }

    /// Task `task` of [`Dims::query_blocks`], `blocks` per (batch, head).
    fn query_block(&self, task: usize, blocks: usize) -> QueryBlock {
        let (bh, blk) = (task / blocks, task % blocks);
        let (bi, head) = (bh / self.h, bh % self.h);
        let g = head / self.rep();
        let (i0, i1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(self.s));
        QueryBlock {
            bi,
            head,
            i0,
            rows: i1 - i0,
            visible: self.offset() + i1,
            q0: self.q_at(bi, i0, head),
            kv0: self.kv_at(bi, 0, g),
        }
    }

    /// `out = alpha · X·Yᵀ` `[rows, cols]` for `rows` rows of one head of a `[b, s, h, d]`
    /// tensor (`x` starts at the first) and `cols` rows of one KV head of a `[b, t, kvh, d]`
    /// tensor (`y` likewise): a block of scaled scores `Q·Kᵀ` or of `∂O·Vᵀ`.
    fn times_kv_t(
        &self,
        out: &mut [f32],
        x: &[f32],
        y: &[f32],
        [rows, cols]: [usize; 2],
        alpha: f32,
    ) {
        let (h, d, kvh) = (self.h, self.d, self.kvh);
        self.product(
            out,
            false,
            (x, h * d, 1),
            (y, 1, kvh * d),
            [rows, d, cols],
            alpha,
        );
    }
}

/// The rows of one query-block task (see [`Dims::query_block`]).
struct QueryBlock {
    bi: usize,
    head: usize,
    /// First query row.
    i0: usize,
    rows: usize,
    /// Keys the block's last row sees.
    visible: usize,
    /// Start of the block's first row in `[b, s, h, d]`.
    q0: usize,
    /// Start of its KV head's first key in `[b, t, kvh, d]`.
    kv0: usize,
}

/// Forward. Writes `out` `[b, s, h, d]` and, when given, `lse` `[b, h, s]` (log-sum-exp of each
/// row's scaled scores).
pub(super) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
) {
    let Dims { d, kvh, .. } = dims;
    let (offset, scale) = (dims.offset(), dims.scale());
    let results: Vec<Block> = dims
        .query_blocks()
        .map(|blk| {
            let QueryBlock { bi, head, i0, .. } = blk;
            let (rows, visible, kv0) = (blk.rows, blk.visible, blk.kv0);
            let mut scores = vec![0.0f32; rows * visible];
            dims.times_kv_t(&mut scores, &q[blk.q0..], &k[kv0..], [rows, visible], scale);
            let mut row_lse = vec![0.0f32; rows];
            dispatch(|| {
                for (r, row) in scores.chunks_exact_mut(visible).enumerate() {
                    let (seen, future) = row.split_at_mut(offset + i0 + r + 1);
                    future.iter_mut().for_each(|x| *x = 0.0);
                    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for x in seen.iter_mut() {
                        *x = exp(*x - max);
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    seen.iter_mut().for_each(|x| *x *= inv);
                    row_lse[r] = max + sum.ln();
                }
            });
            let mut o = vec![0.0f32; rows * d];
            dims.product(
                &mut o,
                false,
                (&scores, visible, 1),
                (&v[kv0..], kvh * d, 1),
                [rows, visible, d],
                1.0,
            );
            (bi, head, i0, o, row_lse)
        })
        .collect();
    for (bi, head, i0, o, row_lse) in results {
        for (r, row) in o.chunks_exact(d).enumerate() {
            let dst = dims.q_at(bi, i0 + r, head);
            out[dst..dst + d].copy_from_slice(row);
        }
        if let Some(lse) = lse.as_deref_mut() {
            let at = dims.row_at(bi, head, i0);
            lse[at..at + row_lse.len()].copy_from_slice(&row_lse);
        }
    }
}

/// `P = exp(S − lse)` in place on a block of scaled scores `[rows, cols]` whose row `r` sees
/// its first `visible(r)` columns (the rest become 0).
fn probabilities(
    scores: &mut [f32],
    cols: usize,
    lse: impl Fn(usize) -> f32,
    visible: impl Fn(usize) -> usize,
) {
    for (r, row) in scores.chunks_exact_mut(cols).enumerate() {
        let (seen, hidden) = row.split_at_mut(visible(r).min(cols));
        let l = lse(r);
        seen.iter_mut().for_each(|x| *x = exp(*x - l));
        hidden.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// `∂S = P ∘ (∂P − δ)` in place in `dp`, row `r` with `δ(r)`.
fn score_grad(dp: &mut [f32], p: &[f32], cols: usize, delta: impl Fn(usize) -> f32) {
    for (r, (dpr, pr)) in dp
        .chunks_exact_mut(cols)
        .zip(p.chunks_exact(cols))
        .enumerate()
    {
        let dl = delta(r);
        for (x, p) in dpr.iter_mut().zip(pr) {
            *x = p * (*x - dl);
        }
    }
}

/// Gradients wrt `q`, `k`, `v` given the forward output `out`, its `lse` `[b, h, s]` and the
/// output gradient `grad`; writes `dq` `[b, s, h, d]`, `dk`, `dv` `[b, t, kvh, d]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    grad: &[f32],
    dims: Dims,
    [dq, dk, dv]: [&mut [f32]; 3],
) {
    let Dims {
        b, s, h, d, t, kvh, ..
    } = dims;
    let (rep, offset, scale) = (dims.rep(), dims.offset(), dims.scale());

    // Pass 1: ∂Q and δ per (batch, head, query block).
    let results: Vec<Block> = dims
        .query_blocks()
        .map(|blk| {
            let QueryBlock {
                bi, head, i0, q0, ..
            } = blk;
            let (rows, visible, kv0) = (blk.rows, blk.visible, blk.kv0);
            let lse0 = dims.row_at(bi, head, i0);
            let mut p = vec![0.0f32; rows * visible];
            dims.times_kv_t(&mut p, &q[q0..], &k[kv0..], [rows, visible], scale);
            let mut ds = vec![0.0f32; rows * visible];
            dims.times_kv_t(&mut ds, &grad[q0..], &v[kv0..], [rows, visible], 1.0);
            let delta: Vec<f32> = dispatch(|| {
                let delta: Vec<f32> = (0..rows)
                    .map(|r| {
                        let at = q0 + r * h * d;
                        dot(&grad[at..at + d], &out[at..at + d])
                    })
                    .collect();
                probabilities(&mut p, visible, |r| lse[lse0 + r], |r| offset + i0 + r + 1);
                score_grad(&mut ds, &p, visible, |r| delta[r]);
                delta
            });
            let mut dq_blk = vec![0.0f32; rows * d];
            dims.product(
                &mut dq_blk,
                false,
                (&ds, visible, 1),
                (&k[kv0..], kvh * d, 1),
                [rows, visible, d],
                scale,
            );
            (bi, head, i0, dq_blk, delta)
        })
        .collect();
    let mut delta = vec![0.0f32; b * h * s];
    for (bi, head, i0, dq_blk, rows_delta) in results {
        for (r, row) in dq_blk.chunks_exact(d).enumerate() {
            let at = dims.q_at(bi, i0 + r, head);
            dq[at..at + d].copy_from_slice(row);
        }
        let at = dims.row_at(bi, head, i0);
        delta[at..at + rows_delta.len()].copy_from_slice(&rows_delta);
    }

    // Pass 2: ∂K, ∂V per (batch, KV head, key block), over the group's query heads.
    let blocks = t.div_ceil(BLOCK);
    let results: Vec<Block> = (0..b * kvh * blocks)
        .into_par_iter()
        .map(|task| {
            let (bg, blk) = (task / blocks, task % blocks);
            let (bi, g) = (bg / kvh, bg % kvh);
            let (j0, j1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(t));
            let keys = j1 - j0;
            // Query i sees key j iff j ≤ offset + i: the first query that sees key j0.
            let i_start = j0.saturating_sub(offset);
            let rows = s - i_start;
            let kv0 = dims.kv_at(bi, j0, g);
            let mut dk_blk = vec![0.0f32; keys * d];
            let mut dv_blk = vec![0.0f32; keys * d];
            let mut p = vec![0.0f32; rows * keys];
            let mut ds = vec![0.0f32; rows * keys];
            for head in g * rep..(g + 1) * rep {
                let qs0 = dims.q_at(bi, i_start, head);
                let row0 = dims.row_at(bi, head, i_start);
                dims.times_kv_t(&mut p, &q[qs0..], &k[kv0..], [rows, keys], scale);
                // Row r (query i_start + r) sees keys j0..=offset + i_start + r.
                dispatch(|| {
                    probabilities(
                        &mut p,
                        keys,
                        |r| lse[row0 + r],
                        |r| (offset + i_start + r + 1).saturating_sub(j0),
                    )
                });
                dims.product(
                    &mut dv_blk,
                    true,
                    (&p, 1, keys),
                    (&grad[qs0..], h * d, 1),
                    [keys, rows, d],
                    1.0,
                );
                dims.times_kv_t(&mut ds, &grad[qs0..], &v[kv0..], [rows, keys], 1.0);
                dispatch(|| score_grad(&mut ds, &p, keys, |r| delta[row0 + r]));
                dims.product(
                    &mut dk_blk,
                    true,
                    (&ds, 1, keys),
                    (&q[qs0..], h * d, 1),
                    [keys, rows, d],
                    scale,
                );
            }
            (bi, g, j0, dk_blk, dv_blk)
        })
        .collect();
    for (bi, g, j0, dk_blk, dv_blk) in results {
        for (c, (kr, vr)) in dk_blk
            .chunks_exact(d)
            .zip(dv_blk.chunks_exact(d))
            .enumerate()
        {
            let at = dims.kv_at(bi, j0 + c, g);
            dk[at..at + d].copy_from_slice(kr);
            dv[at..at + d].copy_from_slice(vr);
        }
    }
}
