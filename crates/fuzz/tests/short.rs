//! The CI run of every fuzz target: a few hundred mutated inputs each, no panic allowed.
//! `cargo run --release -p temper-fuzz -- --target all --iterations 1000000` is the campaign.

use temper_fuzz::{TARGETS, campaign};

#[test]
fn every_target_survives_a_short_campaign() {
    temper_fuzz::quiet_panic_hook();
    let mut report = Vec::new();
    for target in TARGETS {
        let o = campaign(target, 300, 23);
        assert_eq!(o.executions, o.accepted + o.rejected + o.panics);
        if o.panics > 0 {
            let (iteration, input, message) = &o.crashes[0];
            report.push(format!(
                "{}: {} panics, first at iteration {iteration}: {message}; input {:?}",
                target.name,
                o.panics,
                String::from_utf8_lossy(input)
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_seeds_reach_past_the_parsers_first_check() {
    // A seed every parser rejects would make the campaign shallow: each must be accepted.
    let scratch = temper_fuzz::Scratch::new();
    let mut rejected = Vec::new();
    for target in TARGETS {
        for seed in (target.seeds)() {
            if let Err(e) = (target.run)(&scratch, &seed) {
                rejected.push(format!("{}: the seed is rejected: {e}", target.name));
            }
        }
    }
    assert!(rejected.is_empty(), "{}", rejected.join("\n"));
}
