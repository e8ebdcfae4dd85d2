//! Fold rate micro-benchmark: builds a realistic log once (changes spread over many files,
//! ticks, and an outcome for every attempt, as the dispatcher would append them), then times
//! folding it from scratch with a fresh `Core` — what `cbctl replay` does — and prints what it
//! measured.
//!
//! `cargo run --release -p cb-core --example fold_rate -- [CHANGES] [FILES]`
//! (defaults: 1,000,000 changes over 100,000 files).

use std::sync::Arc;
use std::time::Instant;

use cb_core::{
    AttemptReport, Callback, CallbackName, Core, Digest, Effect, EventKind, FileId, FileKey,
    Outcome, ProjectId, Record, RecordKind, Seq, Timestamp,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let changes: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("CHANGES"));
    let files: u64 = args.next().map_or(100_000, |s| s.parse().expect("FILES"));

    let project = ProjectId::new("acme").unwrap();
    let keys: Vec<FileKey> = (0..files)
        .map(|i| {
            FileKey::new(
                project.clone(),
                FileId::new(&format!("{}", 556_114 + i)).unwrap(),
            )
        })
        .collect();
    let events = [
        EventKind::Rated,
        EventKind::Moderated,
        EventKind::Transcoded,
        EventKind::Externalid,
    ];

    // Build the log by driving a core as the dispatcher would.
    let build = Instant::now();
    let mut log: Vec<Record> = Vec::with_capacity((changes * 2) as usize);
    let mut core = Core::new();
    let mut effects = Vec::new();
    let mut at = Timestamp(1_700_000_000_000);
    let push =
        |log: &mut Vec<Record>, core: &mut Core, effects: &mut Vec<Effect>, at: Timestamp, kind| {
            let record = Record {
                seq: Seq(log.len() as u64 + 1),
                at,
                kind,
            };
            core.apply(&record, effects);
            log.push(record);
        };
    let callback = Arc::new(
        Callback::from_json(r#"{"url":"https://example.org/cb","window_secs":60}"#).unwrap(),
    );
    push(
        &mut log,
        &mut core,
        &mut effects,
        at,
        RecordKind::CallbackPut {
            project: project.clone(),
            name: CallbackName::new("site").unwrap(),
            callback,
        },
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..changes {
        // 1,000 changes a second of simulated time (so 60 s windows elapse and deliveries
        // happen), files picked by a xorshift sequence.
        at = at.plus_ms(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let file = keys[(x % files) as usize].clone();
        push(
            &mut log,
            &mut core,
            &mut effects,
            at,
            RecordKind::ChangeAppended {
                file,
                event: events[(i % 4) as usize],
                callbacks: None,
            },
        );
        if core.next_deadline().is_some_and(|d| d <= at) {
            push(&mut log, &mut core, &mut effects, at, RecordKind::Ticked);
        }
        for e in std::mem::take(&mut effects) {
            if let Effect::StartAttempt(a) = e {
                let report =
                    AttemptReport::of(a, Outcome::Delivered { status: 200 }, 3, Digest::default());
                push(
                    &mut log,
                    &mut core,
                    &mut effects,
                    at,
                    RecordKind::AttemptFinished(report),
                );
            }
        }
    }
    let built = build.elapsed();
    let census = core.census();
    // What a `/metrics` scrape or a status pays for its totals, as of a minute after the
    // last record (sent machines whose window elapsed are left out): the totals the core
    // keeps, beside counting every machine.
    let later = Timestamp(core.now().0 + 60_000);
    let timed = |f: &dyn Fn() -> cb_core::Census| {
        let start = Instant::now();
        let c = std::hint::black_box(f());
        (start.elapsed(), c)
    };
    let (now_took, _) = timed(&|| core.census_at(core.now()));
    let (kept_took, kept) = timed(&|| core.census_at(later));
    let (walked_took, _) = timed(&|| core.census_walked_at(later));
    let (counted_took, counted) = timed(&|| core.census_scanned_at(later));
    assert_eq!(kept, counted, "the kept census must equal the count");
    drop(core);

    // The measurement: fold the whole log from scratch, three times, keep the best; then the
    // same with every state's delivery list kept, as the daemon's core does.
    let mut best = f64::INFINITY;
    let mut best_listing = f64::INFINITY;
    let mut attempts = 0usize;
    for round in 0..6 {
        let listing = round >= 3;
        let start = Instant::now();
        let mut core = Core::new();
        if listing {
            core.keep_lists();
        }
        let mut effects = Vec::new();
        attempts = 0;
        for r in &log {
            core.apply(r, &mut effects);
            attempts += effects
                .iter()
                .filter(|e| matches!(e, Effect::StartAttempt(_)))
                .count();
            effects.clear();
        }
        let took = start.elapsed().as_secs_f64();
        if listing {
            best_listing = best_listing.min(took);
        } else {
            best = best.min(took);
        }
        std::hint::black_box(&core);
    }
    let records = log.len() as f64;
    println!(
        "log: {} records ({changes} changes over {files} files, {} attempts), built in {:.2?}",
        log.len(),
        attempts,
        built
    );
    println!(
        "final machines per state [coalescing, pending, sent, retrying, abandoned]: {:?}",
        census.states
    );
    println!(
        "census as of the last record: {:.1?}; a minute later, when {} of {} machines have \
         expired: {:.1?} (kept less the expired: {:.1?}; counted machine by machine: {:.1?})",
        now_took,
        census.states.iter().sum::<u64>() - kept.states.iter().sum::<u64>(),
        census.states.iter().sum::<u64>(),
        kept_took,
        walked_took,
        counted_took
    );
    println!(
        "fold: best of 3 = {:.3} s, {:.0} records/s",
        best,
        records / best
    );
    println!(
        "fold keeping every delivery list (the daemon's): best of 3 = {:.3} s, {:.0} records/s",
        best_listing,
        records / best_listing
    );
}
