//! Realistic generated logs for benchmarks (`store_bench`, `cbctl bench`): the seed's
//! 52-field getFileInfo sample spread over many files, written exactly as the daemon would
//! have written it — every record folded by the core as it is appended, a tick whenever a
//! deadline passes, and an outcome carrying the digest of the real payload for every
//! attempt the core starts. Such a log replays clean, so it measures `cbctl replay` too.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use cb_core::render::fixtures::seed_001_snapshot;
use cb_core::{
    Attempt, AttemptReport, Callback, CallbackName, Core, Effect, EventKind, FileId, FileKey,
    Outcome, ProjectId, Record, RecordKind, Seq, Snapshot, Timestamp,
};

use crate::{Durability, Result, Store, StoreOptions};

/// The project every generated file belongs to.
pub fn project() -> ProjectId {
    ProjectId::new("acme").expect("a valid project id")
}

/// The `i`-th generated file.
pub fn file(i: u64) -> FileKey {
    FileKey::new(
        project(),
        FileId::new(&(556_114 + i).to_string()).expect("digits are a valid file id"),
    )
}

/// The seed's 52-field sample with this file's id and a title and hit count that vary
/// with `n` (so versions differ).
pub fn seed_like(file: &FileKey, n: u64) -> Snapshot {
    let mut b = Snapshot::builder();
    for (name, value) in seed_001_snapshot().iter() {
        let pushed = match name {
            "id" => b.push(name, file.file_id.as_str()),
            "title" => b.push(
                name,
                &format!("Yankees should definitely sign guy, take {n}"),
            ),
            "hits" => b.push(name, &n.to_string()),
            _ => b.push(name, value),
        };
        pushed.expect("the seed's names are valid");
    }
    b.finish().expect("the seed's names are unique")
}

/// A small fast deterministic generator (xorshift64).
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// What [`build_log`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct BuiltLog {
    /// Records in the log.
    pub records: u64,
    /// A seq about 10,000 records before the end, where a checkpoint may be taken.
    pub checkpointable: Seq,
}

/// Writes into a new data dir `dir` a log of `changes` changes over `files` files, one
/// change a millisecond of simulated time, to a project callback with a window of
/// `window_secs` (the benchmarks use the default, 60); each attempt's 200 comes 20 ms after
/// it starts. Calls `progress` with the changes written so far every 10,000 changes.
pub fn build_log(
    dir: &Path,
    changes: u64,
    files: u64,
    window_secs: u32,
    mut progress: impl FnMut(u64),
) -> Result<BuiltLog> {
    let store = Store::open(
        dir,
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )?;
    let mut w = Writer {
        store,
        core: Core::new(),
        effects: Vec::new(),
        batch: Vec::with_capacity(2000),
        seq: 0,
    };
    let mut at = Timestamp(1_700_000_000_000);
    let mut started: VecDeque<(Timestamp, Attempt)> = VecDeque::new();
    let callback = Arc::new(
        Callback::from_json(&format!(
            r#"{{"url":"https://example.org/cb","window_secs":{window_secs}}}"#
        ))
        .expect("a valid callback"),
    );
    w.push(
        RecordKind::CallbackPut {
            project: project(),
            name: CallbackName::new("site").expect("a valid name"),
            callback,
        },
        None,
        at,
    )?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..changes {
        at = at.plus_ms(1);
        while started.front().is_some_and(|(t, _)| t.plus_ms(20) <= at) {
            let (_, a) = started.pop_front().expect("checked");
            // Change `v` carried seed_like(file, v): this is what the dispatcher sent.
            let digest =
                cb_core::render(&seed_like(&a.machine.file, a.version.0), &a.callback).digest();
            let report = AttemptReport::of(a, Outcome::Delivered { status: 200 }, 20, digest);
            w.push(RecordKind::AttemptFinished(report), None, at)?;
        }
        if w.core.next_deadline().is_some_and(|t| t <= at) {
            w.push(RecordKind::Ticked, None, at)?;
        }
        let f = file(xorshift(&mut x) % files.max(1));
        let body = seed_like(&f, w.seq + 1);
        w.push(
            RecordKind::ChangeAppended {
                file: f,
                event: EventKind::Rated,
                callbacks: None,
            },
            Some(body),
            at,
        )?;
        for e in w.effects.drain(..) {
            if let Effect::StartAttempt(a) = e {
                started.push_back((at, a));
            }
        }
        if (i + 1) % 10_000 == 0 {
            progress(i + 1);
        }
    }
    if !w.batch.is_empty() {
        w.store.append_stamped(std::mem::take(&mut w.batch))?;
    }
    w.store.sync()?;
    Ok(BuiltLog {
        records: w.seq,
        checkpointable: Seq(w.seq.saturating_sub(10_000).max(1)),
    })
}

/// One sample of [`retention_run`]: changes appended so far, and the log's bytes then.
#[derive(Clone, Copy, Debug)]
pub struct RetentionSample {
    /// Changes appended so far.
    pub changes: u64,
    /// Virtual seconds elapsed.
    pub secs: u64,
    /// The data dir's bytes (segments, index, checkpoints; preallocated space included).
    pub bytes: u64,
}

/// A long run under retention, on virtual time: `changes` changes over `files` files at
/// `per_sec` a second, into a store with `segment_bytes` segments, retention of `retain`
/// checked every 10,000 changes. Returns a sample of the data dir's size at each check.
pub fn retention_run(
    dir: &Path,
    changes: u64,
    files: u64,
    per_sec: u64,
    segment_bytes: u64,
    retain: std::time::Duration,
) -> Result<Vec<RetentionSample>> {
    let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_700_000_000_000));
    let store = {
        let clock = clock.clone();
        Store::open(
            dir,
            StoreOptions {
                durability: Durability::Buffered,
                segment_bytes,
                clock: Box::new(move || {
                    Timestamp(clock.load(std::sync::atomic::Ordering::Relaxed))
                }),
                ..StoreOptions::default()
            },
        )?
    };
    let retention = crate::Retention {
        max_age: Some(retain),
        max_bytes: None,
        archive_dir: None,
        check_every: std::time::Duration::from_secs(3600),
    };
    let mut samples = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut batch = Vec::with_capacity(100);
    let step_ms = (1000 / per_sec.max(1)).max(1);
    for i in 0..changes {
        clock.fetch_add(step_ms, std::sync::atomic::Ordering::Relaxed);
        let f = file(xorshift(&mut x) % files.max(1));
        batch.push(crate::Input::Change(crate::Change {
            snapshot: seed_like(&f, i),
            file: f,
            event: EventKind::Rated,
            callbacks: None,
        }));
        if batch.len() == 100 {
            store.append(std::mem::take(&mut batch))?;
        }
        if (i + 1) % 10_000 == 0 {
            if !batch.is_empty() {
                store.append(std::mem::take(&mut batch))?;
            }
            store.sync()?;
            store.retain_now(&retention)?;
            let u = store.disk_usage()?;
            samples.push(RetentionSample {
                changes: i + 1,
                secs: (i + 1) * step_ms / 1000,
                bytes: u.log_bytes + u.index_bytes + u.checkpoint_bytes,
            });
        }
    }
    Ok(samples)
}

/// Appends stamped records in groups of 2000, folding each as the dispatcher would.
struct Writer {
    store: Store,
    core: Core,
    effects: Vec<Effect>,
    batch: Vec<(Record, Option<Snapshot>)>,
    seq: u64,
}

impl Writer {
    fn push(&mut self, kind: RecordKind, body: Option<Snapshot>, at: Timestamp) -> Result<()> {
        self.seq += 1;
        let record = Record {
            seq: Seq(self.seq),
            at,
            kind,
        };
        self.core.apply(&record, &mut self.effects);
        self.batch.push((record, body));
        if self.batch.len() >= 2000 {
            self.store.append_stamped(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_log_is_dense_and_every_attempt_has_the_digest_of_its_payload() {
        let tmp = tempfile::tempdir().unwrap();
        let built = build_log(tmp.path(), 3000, 50, 1, |_| {}).unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.last_seq(), Some(Seq(built.records)));
        let mut outcomes = 0;
        for r in store.records(Seq(1)) {
            if let RecordKind::AttemptFinished(a) = r.unwrap().kind {
                let snap = store.snapshot(a.version).unwrap().unwrap();
                assert_eq!(snap, seed_like(&a.machine.file, a.version.0));
                outcomes += 1;
            }
        }
        assert!(outcomes > 0);
    }
}
