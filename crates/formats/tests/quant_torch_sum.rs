//! torch's `f32` sum and mean order (the NF4 `offset`) against torch 2.15 on CPU
//! (`fixtures/quant/torch_sum.json`): lengths around the vector width, the cascade levels and
//! the 32768-element grain, with 1 to 8 threads.

#![allow(clippy::unwrap_used)]

mod quant_fixtures;

use quant_fixtures::{assert_bits_eq, bits, usizes, weights};
use temper_formats::quant::torch_sum;

#[test]
fn sums_and_means_match_torch() {
    let fx = quant_fixtures::json("torch_sum.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut thread_dependent = 0;
    for case in cases {
        let x: Vec<f32> = weights(&case["gen"]).iter().map(|v| v.abs()).collect();
        let threads = usizes(&case["threads"]);
        let sums = bits(&case["sum_bits"]);
        let means = bits(&case["mean_bits"]);
        for (k, &t) in threads.iter().enumerate() {
            let what = format!("n = {}, {t} threads", x.len());
            assert_bits_eq(
                &format!("{what}: sum"),
                &[torch_sum::sum(&x, t)],
                &[sums[k]],
            );
            assert_bits_eq(
                &format!("{what}: mean"),
                &[torch_sum::mean(&x, t)],
                &[means[k]],
            );
        }
        if sums.iter().any(|s| s.to_bits() != sums[0].to_bits()) {
            thread_dependent += 1;
        }
    }
    // The fixture exercises the thread split: some large case sums differently with threads.
    assert!(thread_dependent > 0);
}
