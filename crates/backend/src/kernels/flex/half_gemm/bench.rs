//! Throughput of the half-precision products against the f32 gemm on this CPU — a
//! measurement, not a test (it asserts nothing; `#[ignore]`d). Prints JSON lines:
//!
//! ```sh
//! cargo test --release -p temper-backend --lib half_gemm_speed -- --ignored --nocapture
//! ```
//!
//! In release: the test profile's debug assertions stay on in the `gemm` crate and cost its
//! f32 micro-kernel three quarters of its speed (38 against ≈ 150 GFLOP/s on one Emerald
//! Rapids core), which would flatter every comparison with it.
//! `HALF_GEMM_BENCH=peak|gemm|decode` runs one part.
//!
//! - `peak`: the instruction rate of `vdpbf16ps` and of f32 `vfmadd231ps` in a register-only
//!   loop on one core, as GFLOP/s (2 flops a multiply-add);
//! - `gemm`: the projections of a SmolLM2 training step (1,024 tokens), in the three
//!   layouts a step runs them (`fwd` x·W, `dw` xᵀ·dy, `dx` dy·Wᵀ), on 1 and 2 threads: the
//!   f32 gemm, the packed bf16 kernel (f32 operands rounded while packing, and bf16-stored
//!   ones) and the fallback;
//! - `decode`: one token times a weight (`m = 1`), both weight layouts, bf16 and f32
//!   weights: GB/s of weight read, with the weight hot in cache (`hot`) and cycling through
//!   copies that exceed the last-level cache (`cold`).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use burn::tensor::bf16;

use super::super::gemm::{self, View};
use super::*;

/// Seconds per call: the median of `runs` timed calls after two warm-up calls.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn product_with(path: Path, lhs: HalfView<'_>, rhs: HalfView<'_>, mkn: [usize; 3]) -> Vec<f32> {
    let [m, _, n] = mkn;
    let mut data = Vec::with_capacity(m * n);
    matmul_half_with(
        path,
        Threads::Rayon,
        Dst::Uninit(&mut data.spare_capacity_mut()[..m * n]),
        lhs,
        rhs,
        mkn,
        1.0,
        HalfType::Bf16,
    );
    // SAFETY: the product initialised all `m × n` elements.
    #[allow(unsafe_code)]
    unsafe {
        data.set_len(m * n)
    };
    data
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture, optimised"]
fn half_gemm_speed() {
    let cpu = cpu();
    println!(
        "{{\"bench\":\"cpu\",\"avx512\":{},\"avx512bf16\":{},\"packed_pays\":{}}}",
        cpu.avx512,
        cpu.avx512bf16,
        packed_pays()
    );
    // `HALF_GEMM_BENCH=peak|gemm|decode` runs one part only.
    let part = std::env::var("HALF_GEMM_BENCH").unwrap_or_default();
    let runs = |p: &str| part.is_empty() || part == p;
    if cpu.avx512bf16 && runs("peak") {
        // SAFETY: AVX512-BF16 (and so AVX-512 F) detected.
        #[allow(unsafe_code)]
        let [dp, fma] = unsafe { calibrate::multiply_add_rates() };
        println!(
            "{{\"bench\":\"calibrate\",\"dpbf16_gmacs\":{:.1},\"fma_gmacs\":{:.1}}}",
            dp / 1e9,
            fma / 1e9
        );
        peak();
    }
    let packed = Path::Native(PackedRule::Always);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for [k, n] in [[576, 576], [576, 192], [576, 1536], [1536, 576]] {
                if !runs("gemm") {
                    break;
                }
                let m = 1024;
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                    .collect();
                let w: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                    .collect();
                let dy: Vec<f32> = (0..m * n)
                    .map(|i| ((i * 3 % 7) as f32 - 3.0) / 5.0)
                    .collect();
                let (xb, wb, dyb) = (to_bf16(&x), to_bf16(&w), to_bf16(&dy));
                // (layout, lhs, rhs, [m, k, n]) as f32 views, then as bf16 views.
                type Case<'a, V> = (&'static str, V, V, [usize; 3]);
                let f32_cases: [Case<'_, View<'_>>; 3] = [
                    ("fwd", View::new(&x, k, 1), View::new(&w, n, 1), [m, k, n]),
                    ("dw", View::new(&x, 1, k), View::new(&dy, n, 1), [k, m, n]),
                    ("dx", View::new(&dy, n, 1), View::new(&w, 1, n), [m, n, k]),
                ];
                let half_cases = |f: bool| -> [Case<'_, HalfView<'_>>; 3] {
                    let v32 = HalfView::f32;
                    if f {
                        [
                            ("fwd", v32(&x, k, 1), v32(&w, n, 1), [m, k, n]),
                            ("dw", v32(&x, 1, k), v32(&dy, n, 1), [k, m, n]),
                            ("dx", v32(&dy, n, 1), v32(&w, 1, n), [m, n, k]),
                        ]
                    } else {
                        [
                            (
                                "fwd",
                                HalfView::bf16(&xb, k, 1),
                                HalfView::bf16(&wb, n, 1),
                                [m, k, n],
                            ),
                            (
                                "dw",
                                HalfView::bf16(&xb, 1, k),
                                HalfView::bf16(&dyb, n, 1),
                                [k, m, n],
                            ),
                            (
                                "dx",
                                HalfView::bf16(&dyb, n, 1),
                                HalfView::bf16(&wb, 1, n),
                                [m, n, k],
                            ),
                        ]
                    }
                };
                let report = |layout: &str, mkn: [usize; 3], variant: &str, secs: f64| {
                    let [m, k, n] = mkn;
                    println!(
                        "{{\"bench\":\"gemm\",\"shape\":[{m},{k},{n}],\"layout\":\"{layout}\",\
                         \"threads\":{threads},\"variant\":\"{variant}\",\"gflops\":{:.1}}}",
                        2.0 * (m * k * n) as f64 / secs / 1e9
                    );
                };
                for (layout, lhs, rhs, mkn) in f32_cases {
                    report(
                        layout,
                        mkn,
                        "f32",
                        time(9, || drop(gemm::product(lhs, rhs, mkn, 1.0))),
                    );
                }
                for (variant, path, f) in [
                    ("bf16_packed_f32_operands", packed, true),
                    ("bf16_packed_bf16_operands", packed, false),
                    ("bf16_fallback_f32_operands", Path::Fallback, true),
                ] {
                    if path == packed && !cpu.avx512bf16 {
                        continue;
                    }
                    for (layout, lhs, rhs, mkn) in half_cases(f) {
                        report(
                            layout,
                            mkn,
                            variant,
                            time(9, || drop(product_with(path, lhs, rhs, mkn))),
                        );
                    }
                }
            }
            if runs("decode") {
                decode(threads);
            }
        });
    }
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Decode products (`m = 1`), GB/s of weight read.
fn decode(threads: usize) {
    for [k, n] in [[576, 1536], [1536, 576]] {
        let x: Vec<f32> = (0..k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
        // Enough copies of the weight to exceed the last-level cache (≥ 640 MB of f32).
        let copies = (640 << 20) / (4 * k * n);
        let w: Vec<f32> = (0..k * n * copies)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
            .collect();
        let wb = to_bf16(&w);
        for transposed in [false, true] {
            let layout = if transposed { "xWt" } else { "xW" };
            // Copy `c`'s view: `[k, n]` row-major, or `[n, k]` row-major read transposed.
            let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
            let report = |variant: &str, bytes: usize, cache: &str, secs: f64| {
                println!(
                    "{{\"bench\":\"decode\",\"shape\":[1,{k},{n}],\"layout\":\"{layout}\",\
                     \"threads\":{threads},\"variant\":\"{variant}\",\"cache\":\"{cache}\",\
                     \"gbps\":{:.1},\"us\":{:.1}}}",
                    bytes as f64 / secs / 1e9,
                    secs * 1e6
                );
            };
            for cold in [false, true] {
                let cache = if cold { "cold" } else { "hot" };
                let runs = if cold { copies.min(60) } else { 60 };
                let mut c = 0;
                let mut next = || {
                    if cold {
                        c = (c + 1) % copies;
                    }
                    c * k * n
                };
                let xv = View::new(&x, k, 1);
                let secs = time(runs, || {
                    let o = next();
                    drop(gemm::product(
                        xv,
                        View::new(&w[o..o + k * n], rs, cs),
                        [1, k, n],
                        1.0,
                    ))
                });
                report("f32_gemm_f32_weight", 4 * k * n, cache, secs);
                let xh = HalfView::f32(&x, k, 1);
                for (variant, path, bf) in [
                    (
                        "bf16_native_bf16_weight",
                        Path::Native(PackedRule::Always),
                        true,
                    ),
                    (
                        "bf16_native_f32_weight",
                        Path::Native(PackedRule::Always),
                        false,
                    ),
                    ("bf16_fallback_bf16_weight", Path::Fallback, true),
                ] {
                    let bytes = if bf { 2 } else { 4 } * k * n;
                    let secs = time(runs, || {
                        let o = next();
                        let wv = if bf {
                            HalfView::bf16(&wb[o..o + k * n], rs, cs)
                        } else {
                            HalfView::f32(&w[o..o + k * n], rs, cs)
                        };
                        drop(product_with(path, xh, wv, [1, k, n]))
                    });
                    report(variant, bytes, cache, secs);
                }
            }
        }
    }
}

/// GFLOP/s of `vdpbf16ps` and of f32 `vfmadd231ps` on one core: [`calibrate`]'s loops,
/// longer.
fn peak() {
    const ITERS: usize = 20_000_000;
    for _ in 0..2 {
        #[allow(unsafe_code)]
        // SAFETY: the caller checked AVX512-BF16 (and so AVX-512 F).
        let (dp, fma) = unsafe {
            (
                time(3, || {
                    std::hint::black_box(calibrate::dpbf16_loop(ITERS));
                }),
                time(3, || {
                    std::hint::black_box(calibrate::fma_loop(ITERS));
                }),
            )
        };
        for (instr, secs, flops) in [("vdpbf16ps", dp, 64.0), ("vfmadd231ps", fma, 32.0)] {
            println!(
                "{{\"bench\":\"peak\",\"instr\":\"{instr}\",\"gflops\":{:.1},\"ns_per_instr\":{:.3}}}",
                (ITERS * 12) as f64 * flops / secs / 1e9,
                secs * 1e9 / (ITERS * 12) as f64
            );
        }
    }
}
