//! Matrix products whose operands are rounded to a half type (bf16 or f16, round to nearest
//! even) and multiplied and summed in f32, for the CPU kernels: the half-precision
//! counterpart of [`super::gemm`], with the same entry points and the same row-first split
//! over rayon's threads.
//!
//! Operands are [`HalfView`]s over f32, bf16 or f16 storage; f32 operands (master weights,
//! activations) are rounded on the fly, so no half copy of them is kept. Three paths:
//!
//! | path | when | how |
//! |------|------|-----|
//! | small-m ([`small_m`]) | `m ≤ 4` (decode), AVX-512, rows or columns of `rhs` contiguous | streams the weight once: memory-bound, so bf16 storage halves the time |
//! | packed ([`packed`]) | bf16 otherwise, on CPUs with AVX512-BF16 where `vdpbf16ps` outpaces f32 FMAs ([`calibrate`]) | bf16 panels and a `vdpbf16ps` micro-kernel |
//! | fallback ([`mod@fallback`]) | everything else | operands rounded into f32 copies, then `gemm.rs`'s f32 product |
//!
//! `TEMPER_CPU_BF16=off` sends every product down the fallback (so CI covers both on one
//! machine); `TEMPER_CPU_BF16=packed` sends bf16 products to the packed kernel wherever the
//! CPU has it, paying or not. Read once per process; the tests reach every path through
//! `matmul_half_with`.
//!
//! Every path computes each output element's sum in an order that depends on `k` (and the
//! path) only, never on the number of threads: threads split rows or columns, never `k`.
//!
//! Measured (`bench.rs`, release, one core of an Emerald Rapids VM, 2026-12-07):
//! `vdpbf16ps` retires one instruction per ≈ 2 cycles (85 GFLOP/s) against two f32 FMAs a
//! cycle (175), so the packed kernel — 70–83 GFLOP/s on a SmolLM2 training step's products,
//! ≈ 90 % of that instruction's peak — runs at half the f32 gemm's 125–167 there, and
//! [`calibrate`] leaves those products to the fallback (107–154). Decode (`m = 1`) with a
//! bf16 weight runs 1.8–2.2× faster than the f32 gemm with an f32 weight when the weight is
//! in cache, 2.4–2.9× when it comes from memory. On one core of a Zen 5 EPYC (2026-12-07)
//! `vdpbf16ps` runs at 499 GFLOP/s against 270 for f32 FMAs; the packed kernel reaches
//! 400–495 on the same products, the f32 gemm 214–258, and [`calibrate`] picks the packed one.

#[cfg(target_arch = "x86_64")]
mod calibrate;
mod fallback;
#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod pack;
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(target_arch = "x86_64")]
mod small_m;
mod view;

#[cfg(all(test, target_arch = "x86_64"))]
mod bench;
#[cfg(test)]
mod tests;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

pub(super) use view::{HalfType, HalfView};

use super::gemm;
/// The output position type the f32 gemm split uses.
pub(in crate::kernels::flex) use super::gemm::Out;

/// `dst[m, n]` (row-major, contiguous) `= (accumulate ? dst : 0) + alpha · lhs[m, k] ·
/// rhs[k, n]`, operands rounded to `half`, on this thread (callers that run many in parallel
/// tasks: attention's blocks). [`super::gemm::matmul`] with half-precision operands.
pub(super) fn matmul_half(
    dst: &mut [f32],
    accumulate: bool,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    mkn: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let dst = Dst::Init { dst, accumulate };
    matmul_half_with(
        default_path(),
        Threads::Calling,
        dst,
        lhs,
        rhs,
        mkn,
        alpha,
        half,
    );
}

/// A strided f32 operand: its data from the first element, row stride, column stride.
pub(super) type Strided<'a> = (&'a [f32], usize, usize);

/// `dst[m, n] = (accumulate ? dst : 0) + alpha · lhs[m, k] · rhs[k, n]` over f32 operands:
/// the f32 gemm when `half` is `None`, else the operands rounded to `half` (autocast); on
/// rayon's threads when `parallel`, else on this one. The one switch the kernels that take an
/// autocast type (attention's blocks, the quantized products) go through.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_f32_or_half(
    half: Option<HalfType>,
    parallel: bool,
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lr, lc): Strided<'_>,
    (rhs, rr, rc): Strided<'_>,
    mkn: [usize; 3],
    alpha: f32,
) {
    let (a, b) = (gemm::View::new(lhs, lr, lc), gemm::View::new(rhs, rr, rc));
    let (ha, hb) = (HalfView::f32(lhs, lr, lc), HalfView::f32(rhs, rr, rc));
    match (half, parallel) {
        (None, false) => gemm::matmul(dst, accumulate, a, b, mkn, alpha),
        (None, true) => gemm::matmul_parallel(dst, accumulate, a, b, mkn, alpha),
        (Some(h), false) => matmul_half(dst, accumulate, ha, hb, mkn, alpha, h),
        (Some(h), true) => matmul_half_parallel(dst, accumulate, ha, hb, mkn, alpha, h),
    }
}

/// [`matmul_half`] split over rayon's threads when the product is large enough to pay for it.
pub(super) fn matmul_half_parallel(
    dst: &mut [f32],
    accumulate: bool,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    mkn: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let dst = Dst::Init { dst, accumulate };
    matmul_half_with(
        default_path(),
        Threads::Rayon,
        dst,
        lhs,
        rhs,
        mkn,
        alpha,
        half,
    );
}

/// [`matmul_half_parallel`] without accumulation into memory that need not be initialised
/// (the product is written, never read). Returns `dst[..m·n]`, initialised.
pub(super) fn matmul_half_parallel_uninit<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    half: HalfType,
) -> &'d mut [f32] {
    assert!(dst.len() >= m * n, "half gemm: output buffer too small");
    let dst = &mut dst[..m * n];
    matmul_half_with(
        default_path(),
        Threads::Rayon,
        Dst::Uninit(&mut *dst),
        lhs,
        rhs,
        [m, k, n],
        alpha,
        half,
    );
    #[allow(unsafe_code)]
    // SAFETY: every path writes all `m × n` elements of an `Uninit` destination
    // (`matmul_half_with`'s contract), so they are initialised f32s now.
    unsafe {
        &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

/// A fresh row-major `m × n` product `alpha · lhs · rhs`, operands rounded to `half`,
/// computed on all threads into a buffer that is never zero-filled first.
pub(super) fn product_half(
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    half: HalfType,
) -> Vec<f32> {
    let mut data = Vec::with_capacity(m * n);
    matmul_half_parallel_uninit(data.spare_capacity_mut(), lhs, rhs, [m, k, n], alpha, half);
    #[allow(unsafe_code)]
    // SAFETY: `matmul_half_parallel_uninit` initialised the first `m × n` elements.
    unsafe {
        data.set_len(m * n)
    };
    data
}

/// Which family of kernels a product may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Round into f32 copies, then the f32 gemm.
    Fallback,
    /// The native kernels wherever the CPU has them (else the fallback).
    Native(PackedRule),
}

/// When a bf16 product that is not small-m takes the packed kernel (given AVX512-BF16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PackedRule {
    /// Always (`TEMPER_CPU_BF16=packed`, and the tests).
    Always,
    /// Where `vdpbf16ps` outpaces f32 FMAs ([`calibrate`]); the fallback elsewhere.
    WherePays,
}

/// The process's path, from `TEMPER_CPU_BF16` (read once): `off` forces the fallback,
/// `packed` the packed kernel for every bf16 product it can take; unset (or anything else)
/// takes the small-m kernel where it runs and the packed one where it pays.
fn default_path() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("TEMPER_CPU_BF16").as_deref() {
        Ok("off") => Path::Fallback,
        Ok("packed") => Path::Native(PackedRule::Always),
        _ => Path::Native(PackedRule::WherePays),
    })
}

/// Whether the products run on the calling thread or on rayon's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Threads {
    Calling,
    Rayon,
}

/// A product's destination.
enum Dst<'d> {
    Init {
        dst: &'d mut [f32],
        accumulate: bool,
    },
    /// Written without being read.
    Uninit(&'d mut [MaybeUninit<f32>]),
}

/// The native kernel a product takes, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Native {
    SmallM,
    Packed,
}

/// What this CPU runs, detected once.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    /// AVX-512 F, BW and VL (the small-m path).
    avx512: bool,
    /// … and AVX512-BF16 (the packed path).
    avx512bf16: bool,
}

fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            Cpu {
                avx512,
                avx512bf16: avx512 && std::arch::is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu {
            avx512: false,
            avx512bf16: false,
        }
    })
}

/// Whether the packed kernel beats the fallback on this CPU ([`calibrate`]; measured once).
fn packed_pays() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if cpu().avx512bf16 {
            // SAFETY: the CPU has AVX-512 F and AVX512-BF16 (detected).
            #[allow(unsafe_code)]
            return unsafe { calibrate::dpbf16_outpaces_fma() };
        }
        false
    })
}

/// The native kernel for this product under `path`, if this CPU has one.
fn native_kernel(path: Path, half: HalfType, rhs: HalfView<'_>, m: usize) -> Option<Native> {
    let Path::Native(rule) = path else {
        return None;
    };
    let cpu = cpu();
    #[cfg(target_arch = "x86_64")]
    if m <= small_m::MAX_M && cpu.avx512 && small_m::supports(rhs) {
        return Some(Native::SmallM);
    }
    let _ = (rhs, m);
    let packed =
        half == HalfType::Bf16 && cpu.avx512bf16 && (rule == PackedRule::Always || packed_pays());
    packed.then_some(Native::Packed)
}

/// Every entry point: `dst = (accumulate ? dst : 0) + alpha · lhs · rhs` with operands
/// rounded to `half`, by `path`'s kernels, on `threads`. An `Uninit` destination's first
/// `m × n` elements are all written (and none read).
#[allow(clippy::too_many_arguments)]
fn matmul_half_with(
    path: Path,
    threads: Threads,
    dst: Dst<'_>,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let (len, accumulate) = match &dst {
        Dst::Init { dst, accumulate } => (dst.len(), *accumulate),
        Dst::Uninit(dst) => (dst.len(), false),
    };
    assert!(len >= m * n, "half gemm: output buffer too small");
    if m == 0 || n == 0 {
        return;
    }
    lhs.check(m, k);
    rhs.check(k, n);
    let Some(native) = native_kernel(path, half, rhs, m) else {
        return fallback(threads, dst, lhs, rhs, [m, k, n], alpha, half);
    };
    let out = match dst {
        Dst::Init { dst, .. } => Out::over(dst, [m, n]),
        Dst::Uninit(dst) => Out::over(dst, [m, n]),
    };
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i` of the `m × n` destination, ours alone.
                #[allow(unsafe_code)]
                unsafe {
                    std::ptr::write_bytes(out.at(i, 0).ptr, 0, n)
                };
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `native_kernel` chose a kernel the CPU runs; `out` is the unique borrow of the
    // `m × n` destination (initialised unless it is `Uninit`, when `accumulate` is false);
    // `check` bounded both operands.
    #[allow(unsafe_code)]
    unsafe {
        match native {
            Native::SmallM => {
                small_m::run(threads, out, accumulate, lhs, rhs, [m, k, n], alpha, half)
            }
            Native::Packed => packed::run(threads, out, accumulate, lhs, rhs, [m, k, n], alpha),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no native half kernels on this architecture: {native:?}")
}

/// The fallback: [`fallback::Rounded`] copies into `gemm.rs`'s f32 product.
fn fallback(
    threads: Threads,
    dst: Dst<'_>,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let parallel = threads == Threads::Rayon;
    let a = fallback::Rounded::new(lhs, [m, k], half, parallel);
    let b = fallback::Rounded::new(rhs, [k, n], half, parallel);
    let (a, b) = (a.view(), b.view());
    match (dst, threads) {
        (Dst::Init { dst, accumulate }, Threads::Calling) => {
            gemm::matmul(dst, accumulate, a, b, [m, k, n], alpha)
        }
        (Dst::Init { dst, accumulate }, Threads::Rayon) => {
            gemm::matmul_parallel(dst, accumulate, a, b, [m, k, n], alpha)
        }
        (Dst::Uninit(dst), _) => {
            gemm::matmul_parallel_uninit(dst, a, b, [m, k, n], alpha);
        }
    }
}
