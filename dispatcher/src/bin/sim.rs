//! `sim`: runs the driver's deterministic simulation (`cb_dispatcher::sim`) for one seed or
//! a range of them, and says which seed failed and how to run it again.

use std::process::ExitCode;
use std::time::Instant;

use cb_dispatcher::sim::{run, SimConfig};
use clap::Parser;

/// The whole driver (real core, driver state and limits) on simulated time, against
/// simulated receivers, clients, log faults and crashes; every SPEC §4 invariant checked
/// after each run.
#[derive(Parser)]
#[command(
    after_help = "Examples:\n  cargo run -p cb-dispatcher --release --bin sim -- --seed 7\n  cargo run -p cb-dispatcher --release --bin sim -- --seed 1 --seeds 1000 --seconds 600"
)]
struct Args {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Simulated seconds of traffic and faults per seed, before the healing phase.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Run on the real store over the storage fault layer (cb_store::sim::SimDisk) instead
    /// of the in-memory log.
    #[arg(long)]
    store: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let mut simulated_ms = 0;
    let mut missing = std::collections::BTreeSet::new();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let config = SimConfig {
            store: args.store,
            ..SimConfig::new(seed, args.seconds)
        };
        match run(config) {
            Ok(report) => {
                simulated_ms += report.simulated_ms;
                missing.extend(report.missing_faults());
                if args.seeds == 1 {
                    println!("{report:#?}");
                }
            }
            Err(failure) => {
                eprintln!("{failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds from {}: ok; {:.2} simulated hours in {:.1} s{}",
        args.seeds,
        args.seed,
        simulated_ms as f64 / 3_600_000.0,
        started.elapsed().as_secs_f64(),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; fault classes some seeds never hit: {missing:?}")
        }
    );
    ExitCode::SUCCESS
}
