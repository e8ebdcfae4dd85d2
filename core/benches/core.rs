//! Micro-benchmarks of the core's hot paths, so that regressions show:
//! `cargo bench -p cb-core`. The end-to-end figures are `cbctl bench`'s.

use std::sync::Arc;

use cb_core::render::fixtures::seed_001_snapshot;
use cb_core::{
    AttemptReport, Callback, CallbackName, Core, Digest, Effect, EventKind, FileId, FileKey,
    Outcome, ProjectId, Record, RecordKind, Seq, Timestamp,
};

fn main() {
    divan::main();
}

/// A log shaped like the daemon's: 10,000 changes over 1,000 files at one a millisecond,
/// a 1 s window, ticks at deadlines and a 200 for every attempt.
fn log() -> Vec<Record> {
    let project = ProjectId::new("acme").unwrap();
    let mut core = Core::new();
    let mut out = Vec::new();
    let mut effects = Vec::new();
    let mut seq = 0;
    let mut push = |kind: RecordKind, at: u64, core: &mut Core, effects: &mut Vec<Effect>| {
        seq += 1;
        let r = Record {
            seq: Seq(seq),
            at: Timestamp(at),
            kind,
        };
        core.apply(&r, effects);
        out.push(r);
    };
    let callback =
        Arc::new(Callback::from_json(r#"{"url":"https://x.org/","window_secs":1}"#).unwrap());
    push(
        RecordKind::CallbackPut {
            project: project.clone(),
            name: CallbackName::new("site").unwrap(),
            callback,
        },
        0,
        &mut core,
        &mut effects,
    );
    for i in 0..10_000u64 {
        let at = 1 + i;
        if core.next_deadline().is_some_and(|t| t.0 <= at) {
            push(RecordKind::Ticked, at, &mut core, &mut effects);
        }
        let started: Vec<_> = effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::StartAttempt(a) => Some(a),
                _ => None,
            })
            .collect();
        for a in started {
            let report =
                AttemptReport::of(a, Outcome::Delivered { status: 200 }, 1, Digest::of(b""));
            push(
                RecordKind::AttemptFinished(report),
                at,
                &mut core,
                &mut effects,
            );
        }
        let file = FileKey::new(
            project.clone(),
            FileId::new(&(i % 1000).to_string()).unwrap(),
        );
        push(
            RecordKind::ChangeAppended {
                file,
                event: EventKind::Rated,
                callbacks: None,
            },
            at,
            &mut core,
            &mut effects,
        );
    }
    out
}

/// Folds the whole log into a fresh core; divan reports per log, the counter per record.
#[divan::bench]
fn fold(bencher: divan::Bencher) {
    let records = log();
    bencher
        .counter(divan::counter::ItemsCount::new(records.len()))
        .bench(|| {
            let mut core = Core::new();
            let mut effects = Vec::new();
            for r in &records {
                core.apply(r, &mut effects);
                effects.clear();
            }
            core
        });
}

/// Renders the seed's 52-field sample in each format, with its digest (what an attempt
/// and a replay's check cost).
#[divan::bench(args = ["xml", "json", "query"])]
fn render_and_digest(bencher: divan::Bencher, format: &str) {
    let snapshot = seed_001_snapshot();
    let callback = match format {
        "query" => Callback::from_json(r#"{"url":"https://x.org/","method":"GET","fields":["mediaid=id","status","title","user_firstname"]}"#),
        f => Callback::from_json(&format!(r#"{{"url":"https://x.org/","format":"{f}"}}"#)),
    }
    .unwrap();
    bencher.bench(|| cb_core::render(&snapshot, &callback).digest());
}

/// Rebuilds the seed's sample from its stored parts, as replay and the dispatcher do for
/// every snapshot they read (structure and XML names checked).
#[divan::bench]
fn snapshot_from_stored_parts(bencher: divan::Bencher) {
    let snapshot = seed_001_snapshot();
    let (text, ends) = snapshot.as_parts();
    bencher.bench(|| cb_core::Snapshot::from_stored_parts(divan::black_box(text), ends).unwrap());
}
