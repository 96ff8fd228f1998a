//! Products on every path against the rounded f64 reference.

use std::mem::MaybeUninit;

use super::*;

/// Every path against the reference: odd shapes (tile and strip edges, odd `k`, `k` across
/// depth blocks), f32 and bf16 storage on either side, both layouts of each operand,
/// accumulation on and off, `alpha ≠ 1`, on the calling thread and on rayon's.
#[test]
fn bf16_products_equal_the_rounded_reference() {
    products_equal_the_rounded_reference(HalfType::Bf16, &[Store::F32, Store::Bf16]);
}

/// As for bf16, with f16 (and f32) storage computed in f16.
#[test]
fn f16_products_equal_the_rounded_reference() {
    products_equal_the_rounded_reference(HalfType::F16, &[Store::F32, Store::F16]);
}

/// Storage of another half type than the product's is rounded once more (bf16 → f16, f16 →
/// bf16).
#[test]
fn mixed_storage_is_rounded_to_the_products_type() {
    let [m, k, n] = [5, 37, 40];
    let (a, b) = (Operand::new(m * k, 1), Operand::new(k * n, 2));
    for (half, sa, sb) in [
        (HalfType::F16, Store::Bf16, Store::F16),
        (HalfType::Bf16, Store::F16, Store::Bf16),
        (HalfType::Bf16, Store::F32, Store::F16),
        (HalfType::F16, Store::F32, Store::Bf16),
    ] {
        for mm in [1, m] {
            let (lhs, rhs) = (a.view(sa, k, 1), b.view(sb, n, 1));
            let want = reference(lhs, rhs, [mm, k, n], half);
            for (path, name) in paths() {
                let mut got = vec![0.0; mm * n];
                let dst = Dst::Init {
                    dst: &mut got,
                    accumulate: false,
                };
                matmul_half_with(path, Threads::Calling, dst, lhs, rhs, [mm, k, n], 1.0, half);
                let what = format!("{name}, {half:?}, {sa:?}·{sb:?}, m {mm}");
                assert_matches(&got, None, &want, 1.0, k, &what);
            }
        }
    }
}

fn products_equal_the_rounded_reference(half: HalfType, stores: &[Store]) {
    let paths = paths();
    for (si, &[m, k, n]) in SHAPES.iter().enumerate() {
        let a = Operand::new(m * k, si as u64);
        let b = Operand::new(k * n, 100 + si as u64);
        let base = values(m * n, 7);
        for &sa in stores {
            for &sb in stores {
                for (tl, tr) in [(false, false), (true, false), (false, true), (true, true)] {
                    let lhs = if tl {
                        a.view(sa, 1, m)
                    } else {
                        a.view(sa, k, 1)
                    };
                    let rhs = if tr {
                        b.view(sb, 1, k)
                    } else {
                        b.view(sb, n, 1)
                    };
                    let want = reference(lhs, rhs, [m, k, n], half);
                    for &(path, name) in &paths {
                        for threads in [Threads::Calling, Threads::Rayon] {
                            for accumulate in [false, true] {
                                let what = format!(
                                    "{name}, {threads:?}, {half:?}, [{m}, {k}]·[{k}, {n}], \
                                     {sa:?}·{sb:?}, tl {tl} tr {tr}, accumulate {accumulate}"
                                );
                                let mut got = base.clone();
                                let dst = Dst::Init {
                                    dst: &mut got,
                                    accumulate,
                                };
                                let alpha = -0.75;
                                matmul_half_with(
                                    path,
                                    threads,
                                    dst,
                                    lhs,
                                    rhs,
                                    [m, k, n],
                                    alpha,
                                    half,
                                );
                                let base = accumulate.then_some(&base[..]);
                                assert_matches(&got, base, &want, alpha, k, &what);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The uninitialised-output entry points never read their (NaN-filled) destination, on every
/// path; the public entry points (the process's default path) agree with the reference.
#[test]
fn uninit_outputs_are_written_not_read() {
    for [m, k, n] in [[3, 20, 50], [70, 45, 33], [6, 0, 4]] {
        let (a, b) = (Operand::new(m * k, 3), Operand::new(k * n, 4));
        let (lhs, rhs) = (a.view(Store::F32, k, 1), b.view(Store::Bf16, 1, k));
        let want = reference(lhs, rhs, [m, k, n], HalfType::Bf16);
        for (path, name) in paths() {
            let mut garbage = vec![MaybeUninit::new(f32::NAN); m * n + 3];
            let dst = Dst::Uninit(&mut garbage[..m * n]);
            matmul_half_with(
                path,
                Threads::Rayon,
                dst,
                lhs,
                rhs,
                [m, k, n],
                2.0,
                HalfType::Bf16,
            );
            // SAFETY: every element was initialised (with NaN, then by the product).
            #[allow(unsafe_code)]
            let got: Vec<f32> = garbage[..m * n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            assert_matches(
                &got,
                None,
                &want,
                2.0,
                k,
                &format!("{name}, [{m}, {k}, {n}]"),
            );
        }
        let got = product_half(lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &got,
            None,
            &want,
            2.0,
            k,
            &format!("product_half, [{m}, {k}, {n}]"),
        );
        let mut garbage = vec![MaybeUninit::new(f32::NAN); m * n];
        let got =
            matmul_half_parallel_uninit(&mut garbage, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            got,
            None,
            &want,
            2.0,
            k,
            &format!("uninit, [{m}, {k}, {n}]"),
        );
        let base = values(m * n, 12);
        let mut acc = base.clone();
        matmul_half_parallel(&mut acc, true, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &acc,
            Some(&base),
            &want,
            2.0,
            k,
            &format!("parallel, [{m}, {k}, {n}]"),
        );
        let mut acc = base.clone();
        matmul_half(&mut acc, true, lhs, rhs, [m, k, n], 2.0, HalfType::Bf16);
        assert_matches(
            &acc,
            Some(&base),
            &want,
            2.0,
            k,
            &format!("calling, [{m}, {k}, {n}]"),
        );
    }
}

/// Empty and one-element dimensions: `k = 0` writes zeros (or leaves an accumulated output
/// alone), `m` or `n = 0` touches nothing.
#[test]
fn degenerate_shapes() {
    for (path, name) in paths() {
        for [m, k, n] in [
            [0, 3, 4],
            [3, 0, 4],
            [3, 4, 0],
            [0, 0, 0],
            [1, 0, 1],
            [1, 1, 1],
            [5, 1, 1],
            [1, 1, 5],
        ] {
            let (a, b) = (Operand::new(m * k, 5), Operand::new(k * n, 6));
            let (lhs, rhs) = (a.view(Store::Bf16, k, 1), b.view(Store::F32, n, 1));
            let want = reference(lhs, rhs, [m, k, n], HalfType::Bf16);
            for accumulate in [false, true] {
                let base = vec![3.0f32; m * n + 2];
                let mut got = base.clone();
                let dst = Dst::Init {
                    dst: &mut got,
                    accumulate,
                };
                matmul_half_with(
                    path,
                    Threads::Rayon,
                    dst,
                    lhs,
                    rhs,
                    [m, k, n],
                    1.5,
                    HalfType::Bf16,
                );
                let what = format!("{name}, [{m}, {k}, {n}], accumulate {accumulate}");
                assert_matches(
                    &got[..m * n],
                    accumulate.then_some(&base[..m * n]),
                    &want,
                    1.5,
                    k,
                    &what,
                );
                assert_eq!(got[m * n..], [3.0, 3.0], "{what}: wrote past the output");
            }
        }
    }
}

/// A 1-thread and a 2-thread pool give the same bits on every path, for products that split
/// by rows, by columns, and for the small-m path's column split.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let shapes = [
        [256, 112, 256],
        [40, 300, 700],
        [257, 129, 300],
        [1, 576, 1536],
        [3, 100, 800],
        // Two depth blocks and two column blocks, rows split with shared panels.
        [130, 400, 2100],
    ];
    let pools: Vec<_> = [1, 2]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect();
    for (path, name) in paths() {
        for [m, k, n] in shapes {
            let (a, b) = (Operand::new(m * k, 8), Operand::new(k * n, 9));
            for tr in [false, true] {
                let lhs = a.view(Store::F32, k, 1);
                let rhs = if tr {
                    b.view(Store::Bf16, 1, k)
                } else {
                    b.view(Store::Bf16, n, 1)
                };
                let run = |pool: &rayon::ThreadPool| {
                    pool.install(|| {
                        let mut out = vec![0.0f32; m * n];
                        let dst = Dst::Init {
                            dst: &mut out,
                            accumulate: false,
                        };
                        matmul_half_with(
                            path,
                            Threads::Rayon,
                            dst,
                            lhs,
                            rhs,
                            [m, k, n],
                            1.0,
                            HalfType::Bf16,
                        );
                        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    })
                };
                assert!(
                    run(&pools[0]) == run(&pools[1]),
                    "{name}, [{m}, {k}, {n}], tr {tr}: 1 and 2 threads differ"
                );
            }
        }
    }
}
