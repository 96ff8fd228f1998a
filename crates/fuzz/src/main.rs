//! `temper-fuzz --target NAME|all --iterations N [--seed S] [--seconds T]`: a long campaign,
//! reporting executions and outcomes per target (stopping a target after `T` seconds if
//! given); panicking inputs are saved under `fuzz-crashes/`.

use std::process::ExitCode;

use std::time::Duration;

use temper_fuzz::{TARGETS, campaign_within, target};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let name = value("--target").unwrap_or_else(|| "all".into());
    let iterations: u64 = value("--iterations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = value("--seed").and_then(|v| v.parse().ok()).unwrap_or(0);
    let budget = value("--seconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::MAX, Duration::from_secs);
    let chosen: Vec<_> = if name == "all" {
        TARGETS.iter().collect()
    } else if let Some(t) = target(&name) {
        vec![t]
    } else {
        let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "unknown target `{name}` (one of: all, {})",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    // The panics are counted and reported below; the default hook would print each one.
    temper_fuzz::quiet_panic_hook();
    let mut failed = false;
    println!("target            executions   accepted   rejected  panics  exec/s   slowest");
    for t in chosen {
        let o = campaign_within(t, iterations, seed, budget);
        println!(
            "{:<16} {:>11} {:>10} {:>10} {:>7} {:>7.0} {:>8.1?}",
            t.name,
            o.executions,
            o.accepted,
            o.rejected,
            o.panics,
            o.executions as f64 / o.elapsed.as_secs_f64().max(1e-9),
            o.slowest
        );
        if o.slowest > Duration::from_secs(1) {
            let path = format!("fuzz-slow/{}.bin", t.name);
            let _ = std::fs::create_dir_all("fuzz-slow");
            let _ = std::fs::write(&path, &o.slowest_input);
            println!(
                "  slowest input ({} bytes) saved as {path}",
                o.slowest_input.len()
            );
        }
        for (iteration, input, message) in &o.crashes {
            failed = true;
            let path = format!("fuzz-crashes/{}-{iteration}.bin", t.name);
            let _ = std::fs::create_dir_all("fuzz-crashes");
            let _ = std::fs::write(&path, input);
            println!("  panic at iteration {iteration} ({path}): {message}");
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
