//! Sparsification of task vectors (τ = θ − θ_base) before they are combined.

/// Keep the `k = max(1, ⌊density·n⌋)` entries of largest magnitude, zero the rest (TIES).
///
/// Entries tied at the threshold magnitude are kept in index order until `k` are kept, so the
/// result is deterministic (torch's unstable argsort breaks such ties arbitrarily, which only
/// matters for data with many exactly equal magnitudes, e.g. bf16).
pub fn magnitude(delta: &mut [f32], density: f64) {
    if density >= 1.0 || delta.is_empty() {
        return;
    }
    let n = delta.len();
    let k = ((density * n as f64) as usize).clamp(1, n);
    let mut mags: Vec<f32> = delta.iter().map(|v| v.abs()).collect();
    // The k-th largest magnitude (index k-1 in descending order).
    let (_, kth, _) = mags.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    let above = delta.iter().filter(|v| v.abs() > threshold).count();
    let mut ties_left = k - above;
    for v in delta.iter_mut() {
        let m = v.abs();
        if m > threshold {
            continue;
        }
        if m == threshold && ties_left > 0 {
            ties_left -= 1;
            continue;
        }
        *v = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_magnitudes() {
        let mut d = vec![0.1f32, -0.5, 0.3, 0.05, -0.2];
        magnitude(&mut d, 0.4);
        assert_eq!(d, vec![0.0, -0.5, 0.3, 0.0, 0.0]);
    }

    #[test]
    fn keeps_at_least_one_and_breaks_ties_by_index() {
        let mut d = vec![1.0f32, -1.0, 1.0];
        magnitude(&mut d, 0.01);
        assert_eq!(d, vec![1.0, 0.0, 0.0]);
    }
}
