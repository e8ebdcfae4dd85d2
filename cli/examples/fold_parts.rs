//! Where a replay's fold thread spends its time: reads a data dir's log once per part and
//! times it single-threaded — `decode` (read and decode records), `core` (also fold them
//! with a fresh `Core`), `audit` (fold them through `cbctl replay`'s audit, without the
//! digest checks, which run on other threads). docs/performance.md quotes it.
//!
//! `cargo run --release -p cb-cli --example fold_parts -- DATA_DIR/log decode|core|audit`

use std::time::Instant;

use cb_core::{Core, Seq};
use cb_store::{Store, StoreOptions};

// As cbctl does: the allocator is part of what is measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the fold thread does to each record, in this run.
#[derive(Clone, Copy, Debug)]
enum Part {
    Decode,
    Core,
    Audit,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: fold_parts LOG_DIR decode|core|audit";
    let (Some(dir), Some(part)) = (args.next(), args.next()) else {
        anyhow::bail!(usage);
    };
    let part = match part.as_str() {
        "decode" => Part::Decode,
        "core" => Part::Core,
        "audit" => Part::Audit,
        other => anyhow::bail!("unknown part {other:?}; {usage}"),
    };
    cb_cli::pages::keep_small_pages();
    let store = Store::open(std::path::Path::new(&dir), StoreOptions::default())?;
    let started = Instant::now();
    let mut records = 0u64;
    let mut core = Core::new();
    let mut audit = cb_cli::replay::Audit::new();
    let mut effects = Vec::new();
    for record in store.records(Seq(1)) {
        let record = record?;
        records += 1;
        match part {
            Part::Decode => {
                std::hint::black_box(&record);
            }
            Part::Core => {
                core.apply(&record, &mut effects);
                effects.clear();
            }
            Part::Audit => {
                audit.feed(&record);
                if audit.batch_ready() {
                    drop(audit.take_batch());
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{part:?}: {records} records in {secs:.3} s ({:.0} records/s)",
        records as f64 / secs
    );
    Ok(())
}
