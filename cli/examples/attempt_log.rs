//! Builds a large log for measuring `GET /v1/attempts` (issue 21): `CHANGES` changes over
//! `FILES` files as the daemon would have written them (each with the attempt its delivery
//! made: about two records a change), then two rare attempts a filter can single out —
//! `rare/556114` to callback `odd` answered 503, and `acme`'s `site` timing out once.
//!
//!     cargo run --release -p cb-cli --example attempt_log -- DIR 5000000 1000000
//!     python3 scripts/attempt_cost.py target/release/cbd DIR

use std::path::PathBuf;

use cb_core::{
    AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, FileId, FileKey, MachineKey,
    Outcome, ProjectId, RecordKind, Seq,
};
use cb_store::{synthetic, Input, Store, StoreOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: attempt_log DIR CHANGES FILES";
    let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let changes: u64 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let files: u64 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let started = std::time::Instant::now();
    let built = synthetic::build_log(&dir, changes, files, 60, |n| {
        if n % 1_000_000 == 0 {
            eprintln!("{n} changes");
        }
    })?;
    eprintln!(
        "{} records in {:.1} s",
        built.records,
        started.elapsed().as_secs_f64()
    );
    let store = Store::open(&dir, StoreOptions::default())?;
    let attempt = |project: &str, file: &str, callback: &str, outcome| {
        Input::Record(RecordKind::AttemptFinished(AttemptReport {
            machine: MachineKey {
                file: FileKey::new(
                    ProjectId::new(project).expect("valid"),
                    FileId::new(file).expect("valid"),
                ),
                callback: CallbackRef::Project(CallbackName::new(callback).expect("valid")),
            },
            delivery: DeliveryId(Seq(1)),
            attempt: 1,
            version: Seq(1),
            outcome,
            latency_ms: 12,
            digest: Digest::of(b"rare"),
            detail: "HTTP 503 Service Unavailable".into(),
        }))
    };
    let appended = store.append(vec![
        attempt(
            "rare",
            "556114",
            "odd",
            Outcome::Status {
                status: 503,
                retry_after_secs: None,
            },
        ),
        attempt("acme", "556999", "site", Outcome::Timeout),
    ])?;
    store.sync()?;
    println!(
        "{} records; rare attempts at seq {} and {}",
        appended.last().0,
        appended.first.0,
        appended.last().0
    );
    Ok(())
}
