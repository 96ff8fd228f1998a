//! Whether the packed `vdpbf16ps` kernel beats the f32 gemm on this CPU, by the one number
//! that decides it: how many multiply-adds per second `vdpbf16ps` retires against f32
//! `vfmadd231ps`, each at its throughput (measured once per process, ≈ 0.1 ms).
//!
//! AVX512-BF16 does not say how fast it runs. `vdpbf16ps` does 32 multiply-adds to an FMA's
//! 16, so where it issues as often as an FMA the bf16 kernel has twice f32's arithmetic
//! rate; on this project's Emerald Rapids VM (family 6 model 207) it
//! issues once per ≈ 2 cycles against two FMAs a cycle — 85 against 176 GFLOP/s on one core
//! — so the packed kernel (≈ 80 GFLOP/s there, 94 % of the instruction's rate) runs at about
//! half the f32 gemm's ≈ 150, and bf16 products of many rows are faster rounded into f32
//! copies (the fallback). A 2× gap is far beyond what timing noise moves (the fastest of five
//! trials counts); `TEMPER_CPU_BF16` pins the choice where the same bits on every machine
//! matter more.

use std::arch::x86_64::*;
use std::time::Instant;

/// Instructions per accumulator per trial: 12 × 4096 ≈ 50k, tens of microseconds.
const ITERS: usize = 4096;
/// Alternating trials of each loop; the fastest counts (preemption only slows a trial).
const TRIALS: usize = 5;

/// Whether `vdpbf16ps` retires at least as many multiply-adds per second as f32 FMAs.
///
/// # Safety
/// The CPU has AVX-512 F and AVX512-BF16.
#[allow(unsafe_code)]
pub(super) unsafe fn dpbf16_outpaces_fma() -> bool {
    // SAFETY: forwarded.
    let [dp, fma] = unsafe { multiply_add_rates() };
    dp >= fma
}

/// Multiply-adds per second of `vdpbf16ps` and of f32 `vfmadd231ps` on this core, the
/// fastest of [`TRIALS`] alternating trials each.
///
/// # Safety
/// The CPU has AVX-512 F and AVX512-BF16.
#[allow(unsafe_code)]
pub(super) unsafe fn multiply_add_rates() -> [f64; 2] {
    let (mut dp, mut fma) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..TRIALS {
        // SAFETY: the caller's contract.
        dp = dp.min(seconds(|| unsafe { dpbf16_loop(ITERS) }));
        // SAFETY: as above (AVX-512 F).
        fma = fma.min(seconds(|| unsafe { fma_loop(ITERS) }));
    }
    // 32 multiply-adds per `vdpbf16ps`, 16 per `vfmadd231ps`, 12 · ITERS of each.
    let count = (12 * ITERS) as f64;
    [32.0 * count / dp, 16.0 * count / fma]
}

fn seconds(f: impl FnOnce() -> f32) -> f64 {
    let start = Instant::now();
    std::hint::black_box(f());
    start.elapsed().as_secs_f64()
}

/// `iters × 12` independent `vdpbf16ps` (12 accumulators cover its latency), registers only.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) fn dpbf16_loop(iters: usize) -> f32 {
    let ones = std::hint::black_box(_mm512_set1_epi16(0x3f80));
    // SAFETY: 32 bf16 ones; every bit pattern is a valid `__m512bh`.
    #[allow(unsafe_code)]
    let a = unsafe { std::mem::transmute::<__m512i, __m512bh>(ones) };
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm512_dpbf16_ps(*v, a, a);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

/// `iters × 12` independent f32 `vfmadd231ps`, registers only.
#[target_feature(enable = "avx512f")]
pub(super) fn fma_loop(iters: usize) -> f32 {
    let a = std::hint::black_box(_mm512_set1_ps(1.0));
    let b = std::hint::black_box(_mm512_set1_ps(1e-3));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        for v in &mut acc {
            *v = _mm512_fmadd_ps(a, b, *v);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}
