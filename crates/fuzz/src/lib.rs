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

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

pub use mutate::Mutator;
pub use targets::{Scratch, TARGETS, Target, target};

thread_local! {
    /// Where the last panic on this thread happened (set by [`quiet_panic_hook`]).
    static PANIC_LOCATION: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Replace the default panic hook (which prints every caught panic) by one that records the
/// panic's source location for the campaign's report.
pub fn quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
    }));
}

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
    /// The slowest single execution, and its input (to look for super-linear parsing).
    pub slowest: Duration,
    pub slowest_input: Vec<u8>,
    pub elapsed: Duration,
}

/// The largest input a campaign runs (mutations that grow past it are dropped), so memory
/// stays bounded over millions of iterations.
const MAX_INPUT: usize = 1 << 20;

/// The largest input kept in the pool: without it, stacked insertions and duplications grow
/// the pooled inputs until every execution parses a megabyte.
const MAX_POOLED: usize = 64 << 10;

/// Run `iterations` mutated inputs through `target`, starting from `seed`.
///
/// Each input is a seed or a pooled input mutated once or more; an accepted input joins the
/// pool (capped at 64, replacing a random one), so mutations stack on inputs that get deep
/// into the parser.
pub fn campaign(target: &Target, iterations: u64, seed: u64) -> Outcome {
    campaign_within(target, iterations, seed, Duration::MAX)
}

/// [`campaign`], stopping early once `budget` has passed (a long campaign bounded in time).
pub fn campaign_within(target: &Target, iterations: u64, seed: u64, budget: Duration) -> Outcome {
    let scratch = Scratch::new();
    let mut mutator = Mutator::new(seed);
    let seeds: Vec<Vec<u8>> = (target.seeds)();
    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let mut outcome = Outcome::default();
    let start = Instant::now();
    for iteration in 0..iterations {
        if iteration % 1024 == 0 && start.elapsed() > budget {
            break;
        }
        // Half the inputs start from a seed, so the pool cannot drift to degenerate files
        // (a GGUF with no tensors is accepted, and every mutation of it too).
        let mut input = if mutator.below(2) == 0 {
            seeds[mutator.below(seeds.len())].clone()
        } else {
            pool[mutator.below(pool.len())].clone()
        };
        mutator.mutate(&mut input, target.text);
        if input.len() > MAX_INPUT {
            continue;
        }
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(&scratch, &input)));
        let took = t0.elapsed();
        if took > outcome.slowest {
            outcome.slowest = took;
            outcome.slowest_input.clone_from(&input);
        }
        outcome.executions += 1;
        match result {
            Ok(Ok(())) => {
                outcome.accepted += 1;
                if input.len() > MAX_POOLED {
                    // Counted, not pooled.
                } else if pool.len() < 64 {
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
                let location = PANIC_LOCATION.with(|p| p.borrow().clone());
                let message = format!("{message} (at {location})");
                if outcome.crashes.len() < 16 {
                    outcome.crashes.push((iteration, input, message));
                }
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}
