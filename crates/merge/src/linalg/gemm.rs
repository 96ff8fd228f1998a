//! The matrix products of the truncated SVD: a register-tiled `x·w` (f32 × f64) for the
//! sketch products over the large matrix, and plain products over the small factors.

use rayon::prelude::*;

use super::axpy;

/// Rows per task in [`mul`].
const ROW_BLOCK: usize = 64;
/// Inner-dimension panel of [`mul`]: a `KC×k` panel of the right-hand matrix (~300 KB for
/// `k = 138`) stays in L2 while every row of the block passes over it.
const KC: usize = 256;
/// Columns of a register tile (4×8 measured fastest on x86-64 baseline SSE2).
const NR: usize = 8;
/// Rows of a register tile: `MR×NR` accumulators live in registers across the panel, so each
/// loaded value of the right-hand matrix feeds `MR` multiply-adds.
const MR: usize = 4;

/// `x·w` for row-major `x` (`rows×cols`, f32) and `w` (`cols×k`, f64), accumulated in f64:
/// the sketch products, where nearly all of the extraction's time goes. Each task owns a block
/// of output rows, so results do not depend on scheduling.
pub(super) fn mul(x: &[f32], rows: usize, cols: usize, w: &[f64], k: usize) -> Vec<f64> {
    if k == 0 || cols == 0 || rows == 0 {
        return vec![0f64; rows * k];
    }
    // Pad w's columns to a multiple of NR so every register tile is full.
    let kp = k.div_ceil(NR) * NR;
    let padded;
    let wp: &[f64] = if kp == k {
        w
    } else {
        let mut p = vec![0f64; cols * kp];
        for (dst, src) in p.chunks_exact_mut(kp).zip(w.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        padded = p;
        &padded
    };
    let mut out = vec![0f64; rows * kp];
    out.par_chunks_mut(ROW_BLOCK * kp)
        .enumerate()
        .for_each(|(blk, acc)| {
            let r0 = blk * ROW_BLOCK;
            let nr = acc.len() / kp;
            // Panel of MR rows of x, converted to f64 and interleaved (`[l][i]`), so the
            // kernel reads one small array per step.
            let mut pack: Vec<[f64; MR]> = Vec::with_capacity(KC);
            let mut single: Vec<[f64; 1]> = Vec::with_capacity(KC);
            for l0 in (0..cols).step_by(KC) {
                let l1 = (l0 + KC).min(cols);
                let mut r = 0;
                while r < nr {
                    let row = |i: usize| &x[(r0 + r + i) * cols + l0..(r0 + r + i) * cols + l1];
                    let dst = &mut acc[r * kp..];
                    if nr - r >= MR {
                        let rs: [&[f32]; MR] = std::array::from_fn(row);
                        pack.clear();
                        pack.extend(
                            (0..l1 - l0).map(|l| std::array::from_fn(|i| f64::from(rs[i][l]))),
                        );
                        tile::<MR>(&pack, wp, l0, kp, dst);
                        r += MR;
                    } else {
                        single.clear();
                        single.extend(row(0).iter().map(|v| [f64::from(*v)]));
                        tile::<1>(&single, wp, l0, kp, dst);
                        r += 1;
                    }
                }
            }
        });
    if kp == k {
        return out;
    }
    let mut trimmed = vec![0f64; rows * k];
    for (dst, src) in trimmed.chunks_exact_mut(k).zip(out.chunks_exact(kp)) {
        dst.copy_from_slice(&src[..k]);
    }
    trimmed
}

/// `dst[i, :] += Σ_l xp[l][i]·w[l0 + l, :]` for `M` rows, `NR` columns at a time, with the
/// `M×NR` partial sums held in registers over the whole panel.
#[inline(always)]
fn tile<const M: usize>(xp: &[[f64; M]], w: &[f64], l0: usize, kp: usize, dst: &mut [f64]) {
    for j0 in (0..kp).step_by(NR) {
        let mut t = [[0f64; NR]; M];
        for (l, xv) in xp.iter().enumerate() {
            let base = (l0 + l) * kp + j0;
            let Some(wv) = w
                .get(base..base + NR)
                .and_then(|s| <&[f64; NR]>::try_from(s).ok())
            else {
                break;
            };
            for i in 0..M {
                for jj in 0..NR {
                    t[i][jj] += xv[i] * wv[jj];
                }
            }
        }
        for (i, ti) in t.iter().enumerate() {
            for (d, v) in dst[i * kp + j0..i * kp + j0 + NR].iter_mut().zip(ti) {
                *d += v;
            }
        }
    }
}

/// `x·y` for row-major `x` (`rows×k`) and `y` (`k×k2`).
pub(super) fn matmul_small(x: &[f64], rows: usize, k: usize, y: &[f64], k2: usize) -> Vec<f64> {
    let mut out = vec![0f64; rows * k2];
    if k2 == 0 || k == 0 {
        return out;
    }
    out.par_chunks_mut(k2)
        .zip(x.par_chunks(k))
        .take(rows)
        .for_each(|(o, xr)| {
            for (j, &c) in xr.iter().enumerate() {
                if c != 0.0 {
                    axpy(o, c, &y[j * k2..(j + 1) * k2]);
                }
            }
        });
    out
}

/// `xᵀ·y` for row-major `x` and `y` (both `rows×k`): a `k×k` matrix. Partial sums over fixed
/// row chunks are added in order, so the result does not depend on thread scheduling.
pub(super) fn at_b(x: &[f64], y: &[f64], rows: usize, k: usize) -> Vec<f64> {
    if k == 0 {
        return Vec::new();
    }
    let chunk_rows = rows.div_ceil(64).max(256);
    let partials: Vec<Vec<f64>> = x
        .par_chunks(chunk_rows * k)
        .zip(y.par_chunks(chunk_rows * k))
        .map(|(xc, yc)| {
            let mut acc = vec![0f64; k * k];
            for (xr, yr) in xc.chunks_exact(k).zip(yc.chunks_exact(k)) {
                for (a, &c) in xr.iter().enumerate() {
                    if c != 0.0 {
                        axpy(&mut acc[a * k..(a + 1) * k], c, yr);
                    }
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0f64; k * k];
    for p in &partials {
        axpy(&mut out, 1.0, p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_product_matches_the_definition() {
        // Sizes that exercise every edge: a partial register tile of rows and of columns,
        // several inner panels, several row blocks.
        let (rows, cols, k) = (ROW_BLOCK + 7, KC * 2 + 3, NR + 5);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let w: Vec<f64> = (0..cols * k)
            .map(|i| ((i * 53 % 97) as f64 - 48.0) / 5.0)
            .collect();
        let got = mul(&x, rows, cols, &w, k);
        for i in 0..rows {
            for j in 0..k {
                let want: f64 = (0..cols)
                    .map(|l| f64::from(x[i * cols + l]) * w[l * k + j])
                    .sum();
                assert!((got[i * k + j] - want).abs() <= 1e-9 * want.abs().max(1.0));
            }
        }
    }
}
