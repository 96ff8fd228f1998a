//! The SVDs behind extraction: exact Jacobi and randomized truncated.

use temper_merge::{SvdOptions, jacobi_svd, lora_delta, truncated_svd};

use crate::{Lcg, TestResult};

fn random_f64(rng: &mut Lcg, n: usize) -> Vec<f64> {
    (0..n).map(|_| f64::from(rng.next())).collect()
}

fn frob(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

#[test]
fn jacobi_svd_is_exact() -> TestResult {
    let mut rng = Lcg(17);
    for (m, n) in [(40, 30), (30, 40), (1, 5), (6, 6)] {
        let a = random_f64(&mut rng, m * n);
        let svd = jacobi_svd(&a, m, n)?;
        let k = m.min(n);
        assert_eq!(svd.rank(), k);
        let rec = svd.reconstruct();
        let err: Vec<f64> = rec.iter().zip(&a).map(|(x, y)| x - y).collect();
        assert!(frob(&err) < 1e-12 * frob(&a), "{m}×{n}");
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
        // Orthonormal columns of U and rows of Vᵀ.
        for i in 0..k {
            for j in 0..k {
                let uu: f64 = (0..m).map(|r| svd.u[r * k + i] * svd.u[r * k + j]).sum();
                let vv: f64 = (0..n).map(|c| svd.vt[i * n + c] * svd.vt[j * n + c]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((uu - id).abs() < 1e-10 && (vv - id).abs() < 1e-10);
            }
        }
    }
    Ok(())
}

#[test]
fn truncated_svd_recovers_an_exact_low_rank_matrix() -> TestResult {
    let mut rng = Lcg(19);
    let (m, n, r) = (64, 48, 5);
    let x = rng.vec(m * r);
    let y = rng.vec(r * n);
    let a = lora_delta(&y, &x, r, n, m, 1.0)?;
    let svd = truncated_svd(&a, m, n, r, &SvdOptions::default())?;
    assert_eq!(svd.rank(), r);
    let (fa, fb) = svd.lora_factors();
    let rec = lora_delta(&fa, &fb, r, n, m, 1.0)?;
    let err: f64 = rec
        .iter()
        .zip(&a)
        .map(|(p, q)| f64::from(p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    assert!(err < 1e-5 * norm, "relative error {}", err / norm);
    Ok(())
}

/// `U·diag(s)·Vᵀ` with random orthonormal U (m×k) and V (n×k).
fn with_spectrum(
    rng: &mut Lcg,
    m: usize,
    n: usize,
    s: &[f64],
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let k = s.len();
    let u = jacobi_svd(&random_f64(rng, m * k), m, k)?.u;
    let v = jacobi_svd(&random_f64(rng, n * k), n, k)?.u;
    let mut a = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            a[i * n + j] = (0..k).map(|l| u[i * k + l] * s[l] * v[j * k + l]).sum();
        }
    }
    Ok(a)
}

#[test]
fn truncated_svd_matches_exact_svd_on_full_rank_matrices() -> TestResult {
    let mut rng = Lcg(23);
    let (m, n, r) = (40, 30, 5);
    // A decaying spectrum, as fine-tuning deltas have: the randomized method must find the
    // same leading singular values as the exact one.
    let spectrum: Vec<f64> = (0..30).map(|i| 0.8f64.powi(i)).collect();
    let a = with_spectrum(&mut rng, m, n, &spectrum)?;
    let a32: Vec<f32> = a.iter().map(|v| *v as f32).collect();
    let a_exact: Vec<f64> = a32.iter().map(|v| f64::from(*v)).collect();
    let reference = jacobi_svd(&a_exact, m, n)?;
    let options = SvdOptions {
        oversampling: 8,
        power_iterations: 2,
        seed: 1,
    };
    let svd = truncated_svd(&a32, m, n, r, &options)?;
    for (got, want) in svd.s.iter().zip(&reference.s) {
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    }
    let total: f64 = reference.s.iter().map(|s| s * s).sum();
    let best: f64 = reference.s[..r].iter().map(|s| s * s).sum();
    let kept: f64 = svd.s.iter().map(|s| s * s).sum();
    assert!(
        ((kept - best) / total).abs() < 1e-8,
        "{kept} {best} {total}"
    );

    // A flat (random) spectrum is the hard case: still close to the optimum, never above it.
    let a32: Vec<f32> = rng.vec(m * n);
    let a_exact: Vec<f64> = a32.iter().map(|v| f64::from(*v)).collect();
    let reference = jacobi_svd(&a_exact, m, n)?;
    let total: f64 = reference.s.iter().map(|s| s * s).sum();
    let best: f64 = reference.s[..r].iter().map(|s| s * s).sum();
    let svd = truncated_svd(&a32, m, n, r, &SvdOptions::default())?;
    let kept: f64 = svd.s.iter().map(|s| s * s).sum();
    assert!(kept <= best * (1.0 + 1e-9));
    assert!(kept / total > 0.98 * best / total, "{kept} vs {best}");
    // And the reported energy is the projection's: ‖A − B·A‖² = ‖A‖² − Σσ².
    let rec = svd.reconstruct();
    let resid: f64 = rec.iter().zip(&a_exact).map(|(x, y)| (x - y).powi(2)).sum();
    assert!((resid - (total - kept)).abs() < 1e-9 * total);
    Ok(())
}

#[test]
fn truncated_svd_handles_zero_and_bad_input() -> TestResult {
    let svd = truncated_svd(&[0.0; 12], 3, 4, 2, &SvdOptions::default())?;
    assert!(svd.s.iter().all(|s| *s == 0.0));
    assert!(svd.reconstruct().iter().all(|v| *v == 0.0));
    assert!(truncated_svd(&[0.0; 11], 3, 4, 2, &SvdOptions::default()).is_err());
    assert!(truncated_svd(&[f32::NAN; 12], 3, 4, 2, &SvdOptions::default()).is_err());
    Ok(())
}
