//! # temper-fuzz
//!
//! Fuzz targets for every parser of untrusted bytes in Temper (issue 23), without nightly
//! tools: a seeded mutation engine ([`mutate`]) applied to valid files ([`seeds`]) and fed to
//! each target ([`targets`]) under `catch_unwind`. The same [`campaign`] runs a few hundred
//! cases per target as a test (`tests/short.rs`) and millions from the command line:
//!
//! ```text
//! cargo run --release -p temper-fuzz -- --target gguf --iterations 1000000 [--seed N]
//! cargo run --release -p temper-fuzz -- --target all --iterations 1000000
//! ```
//!
//! A panic stops nothing: the input is written to `fuzz-crashes/<target>-<iteration>.bin`
//! and counted; the report lists executions and outcomes per target.

pub mod mutate;
pub mod seeds;
pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

pub use mutate::Mutator;
pub use targets::{Scratch, TARGETS, Target, target};

/// What a campaign saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub executions: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// Inputs rejected with an error.
    pub rejected: u64,
    /// Inputs that panicked (each one also in `crashes`).
    pub panics: u64,
    /// `(iteration, input, panic message)` of the first few panics.
    pub crashes: Vec<(u64, Vec<u8>, String)>,
    /// The slowest single execution.
    pub slowest: Duration,
    pub elapsed: Duration,
}

/// The largest input a campaign keeps mutating (mutations that grow it past this restart
/// from a seed), so memory stays bounded over millions of iterations.
const MAX_INPUT: usize = 1 << 20;

/// Run `iterations` mutated inputs through `target`, starting from `seed`.
///
/// Each input is one of the target's seeds mutated once or more; an accepted input joins the
/// pool (capped), so mutations stack on inputs that get deep into the parser.
pub fn campaign(target: &Target, iterations: u64, seed: u64) -> Outcome {
    let scratch = Scratch::new();
    let mut mutator = Mutator::new(seed);
    let mut pool: Vec<Vec<u8>> = (target.seeds)();
    let mut outcome = Outcome::default();
    let start = Instant::now();
    for iteration in 0..iterations {
        let base = pool[mutator.below(pool.len())].clone();
        let mut input = base;
        mutator.mutate(&mut input, target.text);
        if input.len() > MAX_INPUT {
            continue;
        }
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(&scratch, &input)));
        outcome.slowest = outcome.slowest.max(t0.elapsed());
        outcome.executions += 1;
        match result {
            Ok(Ok(())) => {
                outcome.accepted += 1;
                if pool.len() < 64 {
                    pool.push(input);
                } else {
                    let slot = mutator.below(pool.len());
                    pool[slot] = input;
                }
            }
            Ok(Err(_)) => outcome.rejected += 1,
            Err(payload) => {
                outcome.panics += 1;
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                if outcome.crashes.len() < 16 {
                    outcome.crashes.push((iteration, input, message));
                }
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}
