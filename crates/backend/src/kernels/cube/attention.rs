//! Causal grouped-query attention, flash style: scores are computed tile by tile in
//! registers and shared memory and never written to global memory.
//!
//! Layout is sequence-major (`q` `[b, s, h, d]`, `k`/`v` `[b, t, kvh, d]`); query head `hq`
//! reads KV head `hq / (h / kvh)` in place, so no `repeat_kv` copy exists. Query row `i` sits
//! at key position `t − s + i` and sees keys `0..=t − s + i`.
//!
//! * forward: a cube takes `BLOCK` query rows of one `(batch, head)`, a unit owns one row
//!   (its `q`, running max, running sum and output accumulator live in registers); key/value
//!   tiles of `BLOCK` rows are staged in shared memory; each tile updates the online softmax
//!   once. Writes the output and the row log-sum-exp.
//! * backward, two kernels without atomics: `dq` (a unit per query row, sweeping key tiles,
//!   also writing `δ_i = Σ dO_i·O_i`) and `dk`/`dv` (a unit per key row and query head,
//!   sweeping that head's query tiles; the heads of a KV group are summed afterwards). Both recompute
//!   `p_ij = exp(s_ij − lse_i)` from the saved log-sum-exp.
//!
//! Masked scores are `-1e30`, not `-inf`: WGSL has no infinity literal.

use burn::cubecl;
use burn::cubecl::prelude::*;

/// Rows per cube and per staged tile.
pub(super) const BLOCK: usize = 32;

#[cube(launch)]
pub(super) fn attention_forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: ElemType,
) {
    let s = q.shape(1);
    let h = q.shape(2);
    let t = k.shape(1);
    let (bi, head, g, qb) = cube_block::<F>(q, k, s);
    let unit = UNIT_POS as usize;
    let i = qb * BLOCK + unit;
    let valid = i < s;
    let offset = t - s;

    let q_base = ((bi * s + i) * h + head) * head_dim;
    let qr = load_row::<F>(q, q_base, scale, valid, head_dim, unroll);
    let mut acc = zeros(head_dim, unroll);
    let mut scores = Array::<f32>::new(BLOCK);
    let mut m = f32::new(-1.0e30);
    let mut l = 0.0f32;
    // Keys the last row of this block sees; this row sees `0..my_end`.
    let kv_end = offset + usize::min(qb * BLOCK + BLOCK, s);
    let my_end = offset + i + 1;

    let mut k_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut v_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut j0 = 0;
    while j0 < kv_end {
        stage_tile::<F>(k, v, &mut k_tile, &mut v_tile, bi, g, j0, head_dim);
        sync_cube();
        if valid {
            let mut tile_max = f32::new(-1.0e30);
            for jj in 0..BLOCK {
                let mut dot = f32::new(-1.0e30);
                if j0 + jj < my_end {
                    dot = row_dot(&qr, &k_tile, jj * head_dim, head_dim, unroll);
                }
                scores[jj] = dot;
                tile_max = f32::max(tile_max, dot);
            }
            let m_new = f32::max(m, tile_max);
            let corr = f32::exp(m - m_new);
            l *= corr;
            #[unroll(unroll)]
            for dd in 0..head_dim {
                acc[dd] *= corr;
            }
            for jj in 0..BLOCK {
                if j0 + jj < my_end {
                    let p = f32::exp(scores[jj] - m_new);
                    l += p;
                    #[unroll(unroll)]
                    for dd in 0..head_dim {
                        acc[dd] += p * v_tile[jj * head_dim + dd];
                    }
                }
            }
            m = m_new;
        }
        sync_cube();
        j0 += BLOCK;
    }
    if valid {
        let inv = 1.0f32 / l;
        #[unroll(unroll)]
        for dd in 0..head_dim {
            out[q_base + dd] = F::cast_from(acc[dd] * inv);
        }
        lse[(bi * h + head) * s + i] = m + f32::ln(l);
    }
}

/// The `(batch, query head, its KV head, block)` cube `CUBE_POS` works on when each
/// (batch, query head) pair's `rows` rows are split into blocks of `BLOCK`; ends the cubes
/// past the last block.
#[cube]
fn cube_block<F: Float>(q: &Tensor<F>, k: &Tensor<F>, rows: usize) -> (usize, usize, usize, usize) {
    let h = q.shape(2);
    let blocks = rows.div_ceil(BLOCK);
    let cube = CUBE_POS;
    if cube >= q.shape(0) * h * blocks {
        terminate!();
    }
    let bh = cube / blocks;
    let head = bh % h;
    (bh / h, head, head / (h / k.shape(2)), cube % blocks)
}

/// `head_dim` zeros (registers on a GPU when unrolled).
#[cube]
fn zeros(#[comptime] head_dim: usize, #[comptime] unroll: bool) -> Array<f32> {
    let mut a = Array::<f32>::new(head_dim);
    #[unroll(unroll)]
    for dd in 0..head_dim {
        a[dd] = 0.0f32;
    }
    a
}

/// `x[base..base + head_dim] · scale` in f32, or zeros for a row past the end (`!valid`).
#[cube]
fn load_row<F: Float>(
    x: &Tensor<F>,
    base: usize,
    scale: f32,
    valid: bool,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
) -> Array<f32> {
    let mut a = zeros(head_dim, unroll);
    if valid {
        #[unroll(unroll)]
        for dd in 0..head_dim {
            a[dd] = f32::cast_from(x[base + dd]) * scale;
        }
    }
    a
}

/// `Σ_d a[d]·b[off + d]` with four independent accumulators: one serial chain of `head_dim`
/// dependent FMAs per score would make the kernels latency-bound.
#[cube]
fn row_dot(
    a: &Array<f32>,
    b: &Shared<[f32]>,
    off: usize,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
) -> f32 {
    let mut s0 = 0.0f32;
    let mut s1 = 0.0f32;
    let mut s2 = 0.0f32;
    let mut s3 = 0.0f32;
    let quads = comptime!(head_dim / 4);
    #[unroll(unroll)]
    for qd in 0..quads {
        let i = qd * 4;
        s0 += a[i] * b[off + i];
        s1 += a[i + 1] * b[off + i + 1];
        s2 += a[i + 2] * b[off + i + 2];
        s3 += a[i + 3] * b[off + i + 3];
    }
    #[unroll(unroll)]
    for i in comptime!(quads * 4)..head_dim {
        s0 += a[i] * b[off + i];
    }
    (s0 + s1) + (s2 + s3)
}

/// Stages keys/values `j0..j0 + BLOCK` of KV head `g` into shared memory (zeros past `t`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_tile<F: Float>(
    k: &Tensor<F>,
    v: &Tensor<F>,
    k_tile: &mut Shared<[f32]>,
    v_tile: &mut Shared<[f32]>,
    bi: usize,
    g: usize,
    j0: usize,
    #[comptime] head_dim: usize,
) {
    let t = k.shape(1);
    let kvh = k.shape(2);
    let mut e = UNIT_POS as usize;
    while e < BLOCK * head_dim {
        let j = j0 + e / head_dim;
        if j < t {
            let off = ((bi * t + j) * kvh + g) * head_dim + e % head_dim;
            k_tile[e] = f32::cast_from(k[off]);
            v_tile[e] = f32::cast_from(v[off]);
        } else {
            k_tile[e] = 0.0f32;
            v_tile[e] = 0.0f32;
        }
        e += CUBE_DIM as usize;
    }
}

/// `dq_i = scale · Σ_j p_ij (dO_i·v_j − δ_i) k_j`; also writes `δ_i = dO_i·O_i` for the
/// `dk`/`dv` kernel.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_dq_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    lse: &Tensor<f32>,
    grad: &Tensor<F>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: ElemType,
) {
    let s = q.shape(1);
    let h = q.shape(2);
    let t = k.shape(1);
    let (bi, head, g, qb) = cube_block::<F>(q, k, s);
    let unit = UNIT_POS as usize;
    let i = qb * BLOCK + unit;
    let valid = i < s;
    let offset = t - s;

    let base = ((bi * s + i) * h + head) * head_dim;
    let qr = load_row::<F>(q, base, scale, valid, head_dim, unroll);
    let gr = load_row::<F>(grad, base, 1.0f32, valid, head_dim, unroll);
    let mut acc = zeros(head_dim, unroll);
    let mut lse_i = 0.0f32;
    let mut delta_i = 0.0f32;
    if valid {
        #[unroll(unroll)]
        for dd in 0..head_dim {
            delta_i += gr[dd] * f32::cast_from(out[base + dd]);
        }
        lse_i = lse[(bi * h + head) * s + i];
        delta[(bi * h + head) * s + i] = delta_i;
    }
    let kv_end = offset + usize::min(qb * BLOCK + BLOCK, s);
    let my_end = offset + i + 1;
    let mut k_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut v_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut j0 = 0;
    while j0 < kv_end {
        stage_tile::<F>(k, v, &mut k_tile, &mut v_tile, bi, g, j0, head_dim);
        sync_cube();
        if valid {
            for jj in 0..BLOCK {
                if j0 + jj < my_end {
                    let dot = row_dot(&qr, &k_tile, jj * head_dim, head_dim, unroll);
                    let dp = row_dot(&gr, &v_tile, jj * head_dim, head_dim, unroll);
                    let ds = f32::exp(dot - lse_i) * (dp - delta_i);
                    #[unroll(unroll)]
                    for dd in 0..head_dim {
                        acc[dd] += ds * k_tile[jj * head_dim + dd];
                    }
                }
            }
        }
        sync_cube();
        j0 += BLOCK;
    }
    if valid {
        #[unroll(unroll)]
        for dd in 0..head_dim {
            dq[base + dd] = F::cast_from(acc[dd] * scale);
        }
    }
}

/// For key row `j` of KV head `g` and one query head `hq` of its group, over the queries `i`
/// that see it: `dv_j = Σ p_ij dO_i`, `dk_j = scale · Σ p_ij (dO_i·v_j − δ_i) q_i`, written
/// per query head (`[b, t, h, d]`, f32) so the heads of a group run in parallel; the caller
/// sums each group.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_dkv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    grad: &Tensor<F>,
    dk: &mut Tensor<f32>,
    dv: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: ElemType,
) {
    let s = q.shape(1);
    let h = q.shape(2);
    let t = k.shape(1);
    let kvh = k.shape(2);
    let (bi, head, g, kb) = cube_block::<F>(q, k, t);
    let unit = UNIT_POS as usize;
    let j = kb * BLOCK + unit;
    let valid = j < t;
    let offset = t - s;

    let base = ((bi * t + j) * kvh + g) * head_dim;
    let kr = load_row::<F>(k, base, scale, valid, head_dim, unroll);
    let vr = load_row::<F>(v, base, 1.0f32, valid, head_dim, unroll);
    let mut dk_acc = zeros(head_dim, unroll);
    let mut dv_acc = zeros(head_dim, unroll);
    // The first query that sees the first key of this block: i ≥ j − offset.
    let first_key = kb * BLOCK;
    let mut i0 = 0;
    if first_key > offset {
        i0 = (first_key - offset) / BLOCK * BLOCK;
    }
    let mut q_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut g_tile = Shared::<[f32]>::new_slice(BLOCK * head_dim);
    let mut lse_tile = Shared::<[f32]>::new_slice(BLOCK);
    let mut delta_tile = Shared::<[f32]>::new_slice(BLOCK);
    while i0 < s {
        // Stage queries/output gradients i0..i0 + BLOCK of `head`.
        let mut e = unit;
        while e < BLOCK * head_dim {
            let i = i0 + e / head_dim;
            if i < s {
                let off = ((bi * s + i) * h + head) * head_dim + e % head_dim;
                q_tile[e] = f32::cast_from(q[off]);
                g_tile[e] = f32::cast_from(grad[off]);
            } else {
                q_tile[e] = 0.0f32;
                g_tile[e] = 0.0f32;
            }
            e += CUBE_DIM as usize;
        }
        if unit < BLOCK {
            let i = i0 + unit;
            if i < s {
                lse_tile[unit] = lse[(bi * h + head) * s + i];
                delta_tile[unit] = delta[(bi * h + head) * s + i];
            } else {
                lse_tile[unit] = 0.0f32;
                delta_tile[unit] = 0.0f32;
            }
        }
        sync_cube();
        if valid {
            for ii in 0..BLOCK {
                let i = i0 + ii;
                if i < s && offset + i >= j {
                    let dot = row_dot(&kr, &q_tile, ii * head_dim, head_dim, unroll);
                    let dp = row_dot(&vr, &g_tile, ii * head_dim, head_dim, unroll);
                    let p = f32::exp(dot - lse_tile[ii]);
                    let ds = p * (dp - delta_tile[ii]);
                    #[unroll(unroll)]
                    for dd in 0..head_dim {
                        dv_acc[dd] += p * g_tile[ii * head_dim + dd];
                        dk_acc[dd] += ds * q_tile[ii * head_dim + dd];
                    }
                }
            }
        }
        sync_cube();
        i0 += BLOCK;
    }
    if valid {
        let out = ((bi * t + j) * h + head) * head_dim;
        #[unroll(unroll)]
        for dd in 0..head_dim {
            dk[out + dd] = dk_acc[dd] * scale;
            dv[out + dd] = dv_acc[dd];
        }
    }
}
