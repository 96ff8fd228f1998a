//! `mergekit-extract-lora`: approximate a fine-tune by a LoRA adapter on its base.
//!
//! For every linear module the task vector `Δ = W_ft − W_base` (f32) is factored by a
//! truncated SVD of rank `r`, `Δ ≈ U·S·Vᵀ`, and written as PEFT factors with the singular
//! values split between them (mergekit's default): `lora_A = √S·Vᵀ` (`[r, in]`) and
//! `lora_B = U·√S` (`[out, r]`), with `lora_alpha = r` so that PEFT's scale is 1. Splitting
//! `S` keeps both factors of comparable magnitude, which matters once they are stored in bf16.
//!
//! The SVD is randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithms 4.4 and
//! 5.1) in f64: a Gaussian sketch with oversampling, a few power iterations re-orthonormalised
//! each time, then an exact one-sided Jacobi SVD of the small projected matrix. Only `r + p`
//! columns are ever formed, so a 14336×4096 module costs a few `m·n·(r+p)` products instead of
//! a dense SVD, and no linear-algebra dependency is needed. Each module's sketch is seeded from
//! the options' seed and the module name, and every reduction runs in a fixed order, so the
//! output is bit-for-bit reproducible.
//!
//! The adapter is written into a temporary directory next to the destination and renamed into
//! place when complete: an error never leaves a partial adapter behind.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::tensor::TensorView;

use temper_formats::peft::{ADAPTER_WEIGHTS, LoraConfig, PEFT_PREFIX, TargetModules};
use temper_formats::{AtomicFile, StagingDir};

use crate::lora::transpose;
use crate::output::with_threads;
use crate::source::{InputTensor, ModelSource};
use crate::{DType, MergeError, Result};

/// The linear modules of a Llama-family decoder layer.
pub const DEFAULT_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Parameters of the randomized truncated SVD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvdOptions {
    /// Extra sketch columns beyond the rank (`p`); 5–10 make the captured subspace nearly
    /// optimal for the leading singular vectors.
    pub oversampling: usize,
    /// Power iterations (`q`): each multiplies the sketch by `ΔΔᵀ`, sharpening the slowly
    /// decaying spectra typical of fine-tuning deltas, at two products each. On a worst-case
    /// noise-like delta (flat spectrum) rank 32 of 576×576 keeps 94% of the optimal energy
    /// with q = 3, 98.5% with q = 6; decaying spectra converge much faster.
    pub power_iterations: usize,
    /// Seed of the Gaussian sketch.
    pub seed: u64,
}

impl Default for SvdOptions {
    fn default() -> Self {
        Self {
            oversampling: 10,
            power_iterations: 4,
            seed: 0,
        }
    }
}

/// Called after each module with its report, the modules done and the total.
pub type ExtractProgress = Arc<dyn Fn(&ModuleReport, usize, usize) + Send + Sync>;

/// How to extract an adapter.
#[derive(Clone)]
pub struct ExtractOptions {
    /// Short names of the linear modules to extract ([`DEFAULT_MODULES`]).
    pub modules: Vec<String>,
    /// Also extract `embed_tokens` (as `lora_embedding_A/B`) and `lm_head`. Off by default:
    /// vocabulary matrices are the largest and usually change least.
    pub include_embeddings: bool,
    /// dtype of the written factors; `None`: each weight's dtype in the fine-tuned model.
    pub dtype: Option<DType>,
    pub svd: SvdOptions,
    /// `base_model_name_or_path` in `adapter_config.json`; `None`: the base directory as
    /// given.
    pub base_model_name_or_path: Option<String>,
    /// Replace an existing, non-empty output directory.
    pub overwrite: bool,
    /// Rayon threads (`None`: rayon's default).
    pub threads: Option<usize>,
    pub progress: Option<ExtractProgress>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            modules: DEFAULT_MODULES.iter().map(|s| (*s).to_string()).collect(),
            include_embeddings: false,
            dtype: None,
            svd: SvdOptions::default(),
            base_model_name_or_path: None,
            overwrite: false,
            threads: None,
            progress: None,
        }
    }
}

impl std::fmt::Debug for ExtractOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractOptions")
            .field("modules", &self.modules)
            .field("include_embeddings", &self.include_embeddings)
            .field("dtype", &self.dtype)
            .field("svd", &self.svd)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

/// How a module's factors are laid out in the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`.
    Linear,
    /// `lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[dim, r]` (PEFT's embedding
    /// layout: the factors of `Δᵀ`).
    Embedding,
}

/// One extracted module.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    /// The weight (`model.layers.0.self_attn.q_proj.weight`).
    pub tensor: String,
    /// The module path (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// The module's short name (`q_proj`).
    pub short_name: String,
    pub kind: ModuleKind,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Rank of the factors written (the requested rank, capped by the weight's dimensions).
    pub rank: usize,
    /// `‖Δ‖_F`.
    pub delta_norm: f64,
    /// Fraction of `‖Δ‖²_F` that the factors reproduce before rounding to the output dtype,
    /// `Σσᵢ²/‖Δ‖²` over the kept singular values (1 for an unchanged weight): `B·A` is an
    /// orthogonal projection of `Δ`, so the residual is exactly `√(1 − captured)·‖Δ‖`.
    pub captured: f64,
}

/// What [`extract_lora`] wrote.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    pub out_dir: PathBuf,
    /// `r` in `adapter_config.json` (modules with a smaller rank are in `rank_pattern`).
    pub rank: usize,
    /// `target_modules`: short names with at least one changed weight.
    pub target_modules: Vec<String>,
    pub modules: Vec<ModuleReport>,
    /// Selected short names whose weights are identical in both models (left out).
    pub unchanged_modules: Vec<String>,
    /// Tensors the adapter does not carry although the models differ in them (norms,
    /// embeddings when not requested, tensors only one model has), with the reason: applying
    /// the adapter will not reproduce them.
    pub not_extracted: Vec<(String, String)>,
    pub bytes_written: u64,
}

/// A thin SVD `U·diag(s)·Vᵀ` of an `m×n` matrix, singular values in decreasing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Svd {
    pub m: usize,
    pub n: usize,
    /// `m×k`, row-major.
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// `k×n`, row-major.
    pub vt: Vec<f64>,
}

impl Svd {
    /// Number of singular triplets (`k`).
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// `U·diag(s)·Vᵀ`, `m×n` row-major.
    pub fn reconstruct(&self) -> Vec<f64> {
        let k = self.rank();
        let mut out = vec![0f64; self.m * self.n];
        if self.n == 0 {
            return out;
        }
        out.par_chunks_mut(self.n).enumerate().for_each(|(i, row)| {
            for j in 0..k {
                let c = self.u[i * k + j] * self.s[j];
                if c != 0.0 {
                    axpy(row, c, &self.vt[j * self.n..(j + 1) * self.n]);
                }
            }
        });
        out
    }

    /// PEFT factors with the singular values split evenly: `A = √S·Vᵀ` (`k×n`) and
    /// `B = U·√S` (`m×k`), so that `B·A = U·S·Vᵀ`.
    pub fn lora_factors(&self) -> (Vec<f32>, Vec<f32>) {
        let k = self.rank();
        let root: Vec<f64> = self.s.iter().map(|s| s.max(0.0).sqrt()).collect();
        let a = self
            .vt
            .iter()
            .enumerate()
            .map(|(i, v)| (v * root[i / self.n.max(1)]) as f32)
            .collect();
        let b = self
            .u
            .iter()
            .enumerate()
            .map(|(i, u)| (u * root[i % k.max(1)]) as f32)
            .collect();
        (a, b)
    }
}

/// Largest number of one-sided Jacobi sweeps; convergence is quadratic and takes well under
/// 20 sweeps in practice, the cap only guards against a pathological input looping forever.
const MAX_SWEEPS: usize = 60;

/// Exact thin SVD of a row-major `m×n` matrix by one-sided (Hestenes) Jacobi rotations:
/// columns are rotated pairwise until orthogonal, their norms are the singular values. Slow
/// (`O(mn²)` per sweep) but accurate to working precision even for tiny singular values; used
/// on the small projected matrix of [`truncated_svd`] and as a reference in tests.
///
/// Left singular vectors of zero singular values are returned as zero columns.
///
/// # Errors
/// `a` does not hold `m·n` values, or holds non-finite values.
pub fn jacobi_svd(a: &[f64], m: usize, n: usize) -> Result<Svd> {
    if a.len() != m * n {
        return Err(MergeError::tensor(
            "svd",
            format!("{} values for a {m}×{n} matrix", a.len()),
        ));
    }
    if let Some(bad) = a.iter().find(|v| !v.is_finite()) {
        return Err(MergeError::tensor("svd", format!("non-finite value {bad}")));
    }
    if m < n {
        // Aᵀ = U'·S·V'ᵀ  ⇒  A = V'·S·U'ᵀ.
        let t = jacobi_svd(&transpose(a, m, n), n, m)?;
        let k = t.rank();
        return Ok(Svd {
            m,
            n,
            u: transpose(&t.vt, k, m),
            s: t.s,
            vt: transpose(&t.u, n, k),
        });
    }
    // Column-major copy: column j is cols[j*m..(j+1)*m].
    let mut cols = transpose(a, m, n);
    let mut v = vec![0f64; n * n];
    for j in 0..n {
        v[j * n + j] = 1.0;
    }
    let tol = f64::EPSILON * (m.max(1) as f64);
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = {
                    let cp = &cols[p * m..(p + 1) * m];
                    let cq = &cols[q * m..(q + 1) * m];
                    (dot(cp, cp), dot(cq, cq), dot(cp, cq))
                };
                if gamma == 0.0 || gamma.abs() <= tol * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + 1f64.hypot(zeta));
                let c = 1.0 / 1f64.hypot(t);
                let s = c * t;
                rotate(&mut cols, m, p, q, c, s);
                rotate(&mut v, n, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma: Vec<f64> = (0..n)
        .map(|j| dot(&cols[j * m..(j + 1) * m], &cols[j * m..(j + 1) * m]).sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| sigma[y].total_cmp(&sigma[x]));
    let mut u = vec![0f64; m * n];
    let mut vt = vec![0f64; n * n];
    let mut s = Vec::with_capacity(n);
    for (jj, &j) in order.iter().enumerate() {
        let sj = sigma[j];
        s.push(sj);
        if sj > 0.0 {
            for i in 0..m {
                u[i * n + jj] = cols[j * m + i] / sj;
            }
        }
        vt[jj * n..(jj + 1) * n].copy_from_slice(&v[j * n..(j + 1) * n]);
    }
    Ok(Svd { m, n, u, s, vt })
}

/// Rotate columns `p` and `q` (each `len` long) of a column-major matrix.
fn rotate(x: &mut [f64], len: usize, p: usize, q: usize, c: f64, s: f64) {
    let (head, tail) = x.split_at_mut(q * len);
    let cp = &mut head[p * len..(p + 1) * len];
    let cq = &mut tail[..len];
    for (a, b) in cp.iter_mut().zip(cq.iter_mut()) {
        let (x, y) = (*a, *b);
        *a = c * x - s * y;
        *b = s * x + c * y;
    }
}

/// Rank-`rank` truncated SVD of a row-major `m×n` f32 matrix by randomized subspace iteration
/// (see the module docs). With `rank + oversampling ≥ min(m, n)` the sketch spans the whole
/// range and the result is exact to rounding.
///
/// # Errors
/// `a` does not hold `m·n` values, or holds non-finite values.
pub fn truncated_svd(
    a: &[f32],
    m: usize,
    n: usize,
    rank: usize,
    options: &SvdOptions,
) -> Result<Svd> {
    if a.len() != m * n {
        return Err(MergeError::tensor(
            "svd",
            format!("{} values for a {m}×{n} matrix", a.len()),
        ));
    }
    if let Some(bad) = a.par_iter().find_any(|v| !v.is_finite()) {
        return Err(MergeError::tensor("svd", format!("non-finite value {bad}")));
    }
    let r = rank.min(m).min(n);
    if r == 0 {
        return Ok(Svd {
            m,
            n,
            u: Vec::new(),
            s: Vec::new(),
            vt: Vec::new(),
        });
    }
    let k = (r + options.oversampling).min(m).min(n);
    let at = transpose(a, m, n);
    let omega = gaussian(n * k, options.seed);
    // Range finder: Q spans A·Ω, then (A·Aᵀ)^q·A·Ω, orthonormalised after every product so
    // that the small singular directions are not lost to rounding.
    let mut q = orthonormalize(&mul(a, m, n, &omega, k), m, k);
    for _ in 0..options.power_iterations {
        let z = orthonormalize(&mul(&at, n, m, &q, k), n, k);
        q = orthonormalize(&mul(a, m, n, &z, k), m, k);
    }
    // Qᵀ·A (k×n), held transposed as Z = Aᵀ·Q (n×k). Factoring Z = Q₂·R and taking the SVD
    // of the k×k R avoids both a wide Jacobi and the squared condition of a Gram matrix.
    let z = mul(&at, n, m, &q, k);
    let q2 = orthonormalize(&z, n, k);
    let rm = at_b(&q2, &z, n, k);
    let small = jacobi_svd(&rm, k, k)?;
    // Z = Q₂·U_R·S·V_Rᵀ  ⇒  A ≈ Q·Zᵀ = (Q·V_R)·S·(Q₂·U_R)ᵀ.
    let u_full = matmul_small(&q, m, k, &transpose(&small.vt, k, k), k);
    let v_full = matmul_small(&q2, n, k, &small.u, k);
    let mut u = vec![0f64; m * r];
    for (dst, src) in u.chunks_exact_mut(r).zip(u_full.chunks_exact(k)) {
        dst.copy_from_slice(&src[..r]);
    }
    let mut vt = vec![0f64; r * n];
    for (l, src) in v_full.chunks_exact(k).enumerate() {
        for j in 0..r {
            vt[j * n + l] = src[j];
        }
    }
    let mut s = small.s;
    s.truncate(r);
    Ok(Svd { m, n, u, s, vt })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

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
fn mul(x: &[f32], rows: usize, cols: usize, w: &[f64], k: usize) -> Vec<f64> {
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
fn matmul_small(x: &[f64], rows: usize, k: usize, y: &[f64], k2: usize) -> Vec<f64> {
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
fn at_b(x: &[f64], y: &[f64], rows: usize, k: usize) -> Vec<f64> {
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

/// Orthonormal basis of the columns of row-major `x` (`rows×k`), by classical Gram–Schmidt
/// with one re-orthogonalisation ("twice is enough": orthogonal to working precision, and its
/// projections are parallel dot products, unlike modified Gram–Schmidt's chain). A column that
/// loses all its digits to the projection (the sketch is rank-deficient) becomes zero rather
/// than amplified noise.
fn orthonormalize(x: &[f64], rows: usize, k: usize) -> Vec<f64> {
    const CHUNK: usize = 4096;
    let mut cols = transpose(x, rows, k);
    for j in 0..k {
        let (done, rest) = cols.split_at_mut(j * rows);
        let v = &mut rest[..rows];
        let norm0 = dot(v, v).sqrt();
        if norm0 == 0.0 {
            continue;
        }
        for _ in 0..2 {
            let h: Vec<f64> = {
                let v: &[f64] = v;
                done.par_chunks(rows.max(1)).map(|q| dot(q, v)).collect()
            };
            let done: &[f64] = done;
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, vc)| {
                let off = c * CHUNK;
                for (i, &hi) in h.iter().enumerate() {
                    if hi != 0.0 {
                        let qi = &done[i * rows + off..i * rows + off + vc.len()];
                        axpy(vc, -hi, qi);
                    }
                }
            });
        }
        let norm = dot(v, v).sqrt();
        if norm <= norm0 * 1e-13 {
            v.fill(0.0);
        } else {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    transpose(&cols, k, rows)
}

/// `len` standard normal values (Box–Muller on a ChaCha stream: reproducible everywhere).
fn gaussian(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        // 1 − U lies in (0, 1], so the logarithm is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push(radius * angle.cos());
        out.push(radius * angle.sin());
    }
    out.truncate(len);
    out
}

/// FNV-1a: a stable per-module seed (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
    }
}

/// A module selected for extraction.
struct Candidate {
    tensor: String,
    module: String,
    short: String,
    kind: ModuleKind,
    shape: [usize; 2],
}

/// Encoded factors of one module.
struct Factors {
    report: ModuleReport,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    dtype: DType,
    a: Vec<u8>,
    b: Vec<u8>,
    zero: bool,
}

/// Extract a rank-`rank` LoRA adapter that turns the model at `base_dir` into (approximately)
/// the one at `model_dir`, and write it as a PEFT adapter directory `out_dir`.
///
/// # Errors
/// `rank` is 0; a model cannot be opened; a selected weight is missing from one model or has
/// different shapes in the two (naming the tensor and both shapes); `out_dir` exists and is
/// not empty without `overwrite`; I/O. Nothing is left at `out_dir` on error.
pub fn extract_lora(
    model_dir: &Path,
    base_dir: &Path,
    rank: usize,
    out_dir: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary> {
    with_threads(options.threads, || {
        extract_inner(model_dir, base_dir, rank, out_dir, options)
    })
}

fn extract_inner(
    model_dir: &Path,
    base_dir: &Path,
    rank: usize,
    out_dir: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary> {
    if rank == 0 {
        return Err(MergeError::Config("LoRA rank must be at least 1".into()));
    }
    // Created first, so a bad destination fails before any SVD; removed again on error.
    let tmp = StagingDir::create(out_dir, options.overwrite)?;
    let ft = ModelSource::open(model_dir, &model_dir.display().to_string())?;
    let base = ModelSource::open(base_dir, &base_dir.display().to_string())?;
    let (candidates, not_extracted) = select(&ft, &base, options)?;

    // Factor every module first (the slow part), so that nothing is written on error.
    let total = candidates.len();
    let mut factors = Vec::with_capacity(total);
    for (i, c) in candidates.iter().enumerate() {
        let f = factor_module(&ft, &base, c, rank, options)?;
        if let Some(progress) = &options.progress {
            progress(&f.report, i + 1, total);
        }
        factors.push(f);
    }

    // A module type that is unchanged everywhere is left out of the adapter; one that changed
    // somewhere keeps all its modules (zeros where unchanged) so PEFT finds every key.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for f in &factors {
        seen.insert(f.report.short_name.clone());
        if !f.zero {
            changed.insert(f.report.short_name.clone());
        }
    }
    if changed.is_empty() {
        return Err(MergeError::Config(format!(
            "{} and {} are identical in every module selected for extraction ({}): there is \
             no adapter to extract",
            model_dir.display(),
            base_dir.display(),
            options.modules.join(", ")
        )));
    }
    factors.retain(|f| changed.contains(&f.report.short_name));
    let unchanged_modules: Vec<String> = seen.difference(&changed).cloned().collect();
    let target_modules: Vec<String> = changed.iter().cloned().collect();
    let config_rank = factors.iter().map(|f| f.report.rank).max().unwrap_or(rank);
    let base_name = options
        .base_model_name_or_path
        .clone()
        .unwrap_or_else(|| base_dir.display().to_string());
    // alpha = r everywhere, so PEFT's scale is 1; integers, as mergekit writes them.
    let mut config = LoraConfig::new(config_rank, config_rank)
        .with_target_modules(TargetModules::Names(target_modules.clone()))
        .with_base_model_name_or_path(base_name);
    for f in &factors {
        if f.report.rank != config_rank {
            let module = f.report.module.clone();
            config.rank_pattern.insert(module.clone(), f.report.rank);
            config.alpha_pattern.insert(module, f.report.rank.into());
        }
    }
    config
        .extra
        .insert("inference_mode".into(), serde_json::Value::Bool(true));

    let mut views: Vec<(String, TensorView<'_>)> = Vec::with_capacity(2 * factors.len());
    for f in &factors {
        let (a_key, b_key) = match f.report.kind {
            ModuleKind::Linear => (
                format!("{PEFT_PREFIX}{}.lora_A.weight", f.report.module),
                format!("{PEFT_PREFIX}{}.lora_B.weight", f.report.module),
            ),
            ModuleKind::Embedding => (
                format!("{PEFT_PREFIX}{}.lora_embedding_A", f.report.module),
                format!("{PEFT_PREFIX}{}.lora_embedding_B", f.report.module),
            ),
        };
        let dtype = st_dtype(f.dtype);
        let a_view = TensorView::new(dtype, f.a_shape.clone(), &f.a)
            .map_err(|e| MergeError::tensor(&a_key, e.to_string()))?;
        let b_view = TensorView::new(dtype, f.b_shape.clone(), &f.b)
            .map_err(|e| MergeError::tensor(&b_key, e.to_string()))?;
        views.push((a_key, a_view));
        views.push((b_key, b_view));
    }
    let weights = tmp.path().join(ADAPTER_WEIGHTS);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    // Through an AtomicFile for its permissions: safetensors creates its file private (0600),
    // other tools' adapters are readable like the config.
    let file = AtomicFile::create(&weights)?;
    safetensors::serialize_to_file(views, Some(metadata), file.temp_path())
        .map_err(|e| MergeError::checkpoint(&weights, e.to_string()))?;
    file.commit()?;
    let config_path = config.save(tmp.path())?;
    let bytes_written = [&weights, &config_path]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();

    tmp.commit()?;

    Ok(ExtractSummary {
        out_dir: out_dir.to_path_buf(),
        rank: config_rank,
        target_modules,
        modules: factors.into_iter().map(|f| f.report).collect(),
        unchanged_modules,
        not_extracted,
        bytes_written,
    })
}

/// The modules to extract, and the differing tensors the adapter will miss (with why).
type Selection = (Vec<Candidate>, Vec<(String, String)>);

/// Which tensors become LoRA modules, and which differing tensors the adapter will miss.
fn select(ft: &ModelSource, base: &ModelSource, options: &ExtractOptions) -> Result<Selection> {
    let kind_of = |name: &str| -> Option<(String, String, ModuleKind)> {
        let module = name.strip_suffix(".weight")?;
        let short = module.rsplit('.').next().unwrap_or(module);
        let kind = if options.modules.iter().any(|m| m == short) {
            ModuleKind::Linear
        } else if options.include_embeddings && short == "embed_tokens" {
            ModuleKind::Embedding
        } else if options.include_embeddings && short == "lm_head" {
            ModuleKind::Linear
        } else {
            return None;
        };
        Some((module.to_string(), short.to_string(), kind))
    };
    let mut candidates = Vec::new();
    let mut not_extracted = Vec::new();
    for name in ft.tensor_names() {
        let ft_shape = ft.shape(name).unwrap_or_default();
        let selected = kind_of(name).filter(|_| ft_shape.len() == 2);
        let Some(base_shape) = base.shape(name) else {
            if selected.is_some() {
                let hint = if name == "lm_head.weight" {
                    " (the base ties lm_head to embed_tokens?)"
                } else {
                    ""
                };
                return Err(MergeError::MissingTensor {
                    tensor: format!("{name}{hint}"),
                    model: base.label().to_string(),
                });
            }
            not_extracted.push((name.to_string(), "only in the fine-tuned model".into()));
            continue;
        };
        if ft_shape != base_shape {
            if selected.is_some() {
                return Err(MergeError::ShapeMismatch {
                    tensor: name.to_string(),
                    details: format!(
                        "{ft_shape:?} in the fine-tuned model {}, {base_shape:?} in the base {}",
                        ft.label(),
                        base.label()
                    ),
                });
            }
            not_extracted.push((
                name.to_string(),
                format!("shape {ft_shape:?} in the fine-tuned model, {base_shape:?} in the base"),
            ));
            continue;
        }
        match selected {
            Some((module, short, kind)) => candidates.push(Candidate {
                tensor: name.to_string(),
                module,
                short,
                kind,
                shape: [ft_shape[0], ft_shape[1]],
            }),
            None => {
                if !tensors_equal(&ft.tensor(name)?, &base.tensor(name)?) {
                    not_extracted.push((name.to_string(), "differs".into()));
                }
            }
        }
    }
    for name in base.tensor_names() {
        if !ft.contains(name) {
            let selected =
                kind_of(name).is_some() && base.shape(name).is_some_and(|s| s.len() == 2);
            if selected {
                return Err(MergeError::MissingTensor {
                    tensor: name.to_string(),
                    model: ft.label().to_string(),
                });
            }
            not_extracted.push((name.to_string(), "only in the base model".into()));
        }
    }
    Ok((candidates, not_extracted))
}

/// Compare decoded values chunk by chunk (bounded memory for large embeddings).
fn tensors_equal(a: &InputTensor<'_>, b: &InputTensor<'_>) -> bool {
    const CHUNK: usize = 1 << 20;
    let n = a.numel();
    if n != b.numel() {
        return false;
    }
    let mut x = vec![0f32; CHUNK.min(n)];
    let mut y = vec![0f32; CHUNK.min(n)];
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let len = end - start;
        a.read(start..end, &mut x[..len]);
        b.read(start..end, &mut y[..len]);
        if x[..len] != y[..len] {
            return false;
        }
        start = end;
    }
    true
}

fn factor_module(
    ft: &ModelSource,
    base: &ModelSource,
    c: &Candidate,
    rank: usize,
    options: &ExtractOptions,
) -> Result<Factors> {
    let [rows, cols] = c.shape;
    let mut delta = ft.tensor(&c.tensor)?.to_vec();
    {
        let w = base.tensor(&c.tensor)?.to_vec();
        delta
            .par_iter_mut()
            .zip(w.par_iter())
            .for_each(|(d, b)| *d -= *b);
    }
    if let Some(bad) = delta.iter().find(|v| !v.is_finite()) {
        return Err(MergeError::tensor(
            &c.tensor,
            format!("the difference of the two models holds {bad}"),
        ));
    }
    let energy: f64 = delta
        .par_chunks(1 << 16)
        .map(|ch| {
            ch.iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let r = rank.min(rows).min(cols);
    let zero = energy == 0.0;
    let (a, b, kept) = if zero {
        (vec![0f32; r * cols], vec![0f32; rows * r], 0.0)
    } else {
        let svd_options = SvdOptions {
            seed: options.svd.seed ^ fnv1a(&c.module),
            ..options.svd
        };
        let svd = truncated_svd(&delta, rows, cols, r, &svd_options)?;
        let kept: f64 = svd.s.iter().map(|s| s * s).sum();
        let (a, b) = svd.lora_factors();
        (a, b, kept)
    };
    drop(delta);
    let captured = if zero { 1.0 } else { (kept / energy).min(1.0) };
    // Δ ≈ B·A with A [r, cols], B [rows, r]. PEFT's embedding update is (B'·A')ᵀ with
    // A' [r, vocab] and B' [dim, r], so for Δ [vocab, dim]: A' = Bᵀ, B' = Aᵀ.
    let (a, a_shape, b, b_shape) = match c.kind {
        ModuleKind::Linear => (a, vec![r, cols], b, vec![rows, r]),
        ModuleKind::Embedding => (
            transpose(&b, rows, r),
            vec![r, rows],
            transpose(&a, r, cols),
            vec![cols, r],
        ),
    };
    let dtype = options
        .dtype
        .or_else(|| ft.dtype(&c.tensor))
        .unwrap_or(DType::F32);
    let encode = |v: &[f32]| {
        let mut bytes = vec![0u8; v.len() * dtype.size()];
        dtype.encode(v, &mut bytes);
        bytes
    };
    Ok(Factors {
        report: ModuleReport {
            tensor: c.tensor.clone(),
            module: c.module.clone(),
            short_name: c.short.clone(),
            kind: c.kind,
            shape: vec![rows, cols],
            rank: r,
            delta_norm: energy.sqrt(),
            captured,
        },
        a: encode(&a),
        b: encode(&b),
        a_shape,
        b_shape,
        dtype,
        zero,
    })
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

    #[test]
    fn orthonormalize_zeroes_dependent_columns() {
        // Column 2 = column 0 + column 1: rank 2.
        let rows = 5;
        let mut x = vec![0f64; rows * 3];
        for i in 0..rows {
            x[i * 3] = (i + 1) as f64;
            x[i * 3 + 1] = ((i * i) % 3) as f64;
            x[i * 3 + 2] = x[i * 3] + x[i * 3 + 1];
        }
        let q = orthonormalize(&x, rows, 3);
        let col = |j: usize| (0..rows).map(|i| q[i * 3 + j]).collect::<Vec<_>>();
        assert!((dot(&col(0), &col(0)) - 1.0).abs() < 1e-12);
        assert!((dot(&col(1), &col(1)) - 1.0).abs() < 1e-12);
        assert!(dot(&col(0), &col(1)).abs() < 1e-12);
        assert!(col(2).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn gaussian_is_reproducible_and_standard() {
        let a = gaussian(20_001, 7);
        assert_eq!(a, gaussian(20_001, 7));
        assert_ne!(a, gaussian(20_001, 8));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
