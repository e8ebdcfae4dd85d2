//! Test support: virtual clocks, generators of inputs, and a driver that appends through
//! the store and folds what it appended the way the dispatcher will (so generated logs
//! hold real attempts with real outcomes).
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cb_core::render::fixtures::seed_001_snapshot;
use cb_core::{
    Attempt, AttemptReport, Callback, CallbackName, CallbackRef, Core, Digest, Effect, EventKind,
    FileCallback, FileId, FileKey, MachineKey, Outcome, ProjectId, RecordKind, Seq, Snapshot,
    Timestamp,
};
use cb_store::{Change, Durability, Input, Store, StoreOptions};
use proptest::prelude::*;

/// A clock the test moves by hand.
#[derive(Clone, Default)]
pub struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    pub fn at(ms: u64) -> VirtualClock {
        VirtualClock(Arc::new(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Test stores use small per-file index segments, so that lookups cross many of them.
pub fn options(clock: &VirtualClock, durability: Durability) -> StoreOptions {
    let clock = clock.clone();
    StoreOptions {
        durability,
        index_segment_span: 7,
        // Small segments, so that logs of a few hundred records span several.
        segment_bytes: 64 * 1024,
        reserve_bytes: Some(0),
        clock: Box::new(move || clock.now()),
        cache_capacity_bytes: 16 * 1024 * 1024,
        ..StoreOptions::default()
    }
}

pub fn open(dir: &Path, clock: &VirtualClock) -> Store {
    Store::open(dir, options(clock, Durability::Buffered)).expect("open store")
}

pub fn project() -> ProjectId {
    ProjectId::new("acme").unwrap()
}

pub fn file(i: u64) -> FileKey {
    FileKey::new(project(), FileId::new(&format!("{}", 556_114 + i)).unwrap())
}

pub const EVENTS: [EventKind; 4] = [
    EventKind::Rated,
    EventKind::Moderated,
    EventKind::Transcoded,
    EventKind::Deleted,
];

/// The seed's sample with this file's id and a varying title: about the seed's size.
pub fn seed_like(file: &FileKey, n: u64) -> Snapshot {
    let mut b = Snapshot::builder();
    for (name, value) in seed_001_snapshot().iter() {
        match name {
            "id" => b.push(name, file.file_id.as_str()),
            "title" => b.push(name, &format!("Test {n} : single + empty")),
            _ => b.push(name, value),
        }
        .unwrap();
    }
    b.finish().unwrap()
}

pub fn callback(json: &str) -> Arc<Callback> {
    Arc::new(Callback::from_json(json).unwrap())
}

pub fn change(file: FileKey, event: EventKind, snapshot: Snapshot) -> Input {
    Input::Change(Change {
        file,
        event,
        snapshot,
        callbacks: None,
    })
}

// ---- arbitrary inputs, for round trips ----

fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
    // Unique names by position; any Unicode text as values, empty included.
    prop::collection::vec(any::<String>(), 0..6).prop_map(|values| {
        let mut b = Snapshot::builder();
        for (i, v) in values.iter().enumerate() {
            b.push(&format!("f{i}"), v).unwrap();
        }
        b.finish().unwrap()
    })
}

fn file_strategy() -> impl Strategy<Value = FileKey> {
    (0u64..4).prop_map(file)
}

fn callback_ref_strategy() -> impl Strategy<Value = CallbackRef> {
    prop_oneof![
        Just(CallbackRef::Project(CallbackName::new("site").unwrap())),
        Just(CallbackRef::File(CallbackName::new("0").unwrap())),
    ]
}

fn outcome_strategy() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (200u16..300).prop_map(|status| Outcome::Delivered { status }),
        (300u16..600, prop::option::of(0u32..10_000)).prop_map(|(status, retry_after_secs)| {
            Outcome::Status {
                status,
                retry_after_secs,
            }
        }),
        Just(Outcome::Timeout),
        Just(Outcome::Connect),
        Just(Outcome::Tls),
        Just(Outcome::TargetRefused),
        (400u16..600).prop_map(|code| Outcome::Smtp { code }),
        Just(Outcome::Closed),
    ]
}

/// Any input the store accepts; the store does not judge whether the fold can use it.
pub fn input_strategy() -> impl Strategy<Value = Input> {
    let per_file = Arc::<[FileCallback]>::from(
        FileCallback::validate_list(vec![serde_json::from_str(
            r#"{"url":"https://example.org/lf","method":"PUT","format":"json","on_progress":true,
                "headers":[{"name":"X-Auth","value":"t0k"}]}"#,
        )
        .unwrap()])
        .unwrap(),
    );
    prop_oneof![
        6 => (file_strategy(), 0..EVENTS.len(), snapshot_strategy(), any::<bool>()).prop_map(
            move |(file, e, snapshot, with_callbacks)| Input::Change(Change {
                file,
                event: EVENTS[e],
                snapshot,
                callbacks: with_callbacks.then(|| per_file.clone()),
            })
        ),
        1 => Just(Input::Record(RecordKind::CallbackPut {
            project: project(),
            name: CallbackName::new("site").unwrap(),
            callback: callback(
                r#"{"url":"https://example.org/cb?x=1","window_secs":5,"leading":true,
                    "fields":["mediaid=id","status"],"events":["rated","deleted"],
                    "backoff_secs":[1,2],"secret":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="]}"#
            ),
        })),
        1 => Just(Input::Record(RecordKind::CallbackRemoved {
            project: project(),
            name: CallbackName::new("site").unwrap(),
        })),
        1 => Just(Input::Record(RecordKind::Ticked)),
        2 => (file_strategy(), callback_ref_strategy(), 1u64..50, 1u32..5, 1u64..50,
              outcome_strategy(), any::<u32>(), any::<[u8; 32]>(), ".{0,20}")
            .prop_map(|(file, callback, delivery, attempt, version, outcome, latency_ms,
                        digest, detail)| {
                Input::Record(RecordKind::AttemptFinished(AttemptReport {
                    machine: MachineKey { file, callback },
                    delivery: cb_core::DeliveryId(Seq(delivery)),
                    attempt,
                    version: Seq(version),
                    outcome,
                    latency_ms,
                    digest: Digest::of(&digest),
                    detail,
                }))
            }),
        1 => (file_strategy(), callback_ref_strategy(), 1u64..50).prop_map(
            |(file, callback, cause)| Input::Record(RecordKind::CallbackDisabled {
                machine: MachineKey { file, callback },
                cause: Seq(cause),
            })
        ),
        1 => (outcome_strategy(), any::<u32>(), any::<[u8; 32]>(), ".{0,20}").prop_map(
            |(outcome, latency_ms, digest, detail)| Input::Record(RecordKind::CallbackTested {
                project: project(),
                name: CallbackName::new("site").unwrap(),
                outcome,
                latency_ms,
                digest: Digest::of(&digest),
                detail,
            })
        ),
        1 => (file_strategy(), prop::option::of(callback_ref_strategy())).prop_map(
            |(file, callback)| Input::Record(RecordKind::RedeliverRequested {
                file,
                callback,
                version: None,
            })
        ),
    ]
}

// ---- a driver: appends through the store, folds, performs attempts in a simulated way ----

/// What the driver does at one step.
#[derive(Clone, Debug)]
pub enum Op {
    /// A change to file `file` (of 6) with event `event` (of [`EVENTS`]).
    Change { file: u8, event: u8 },
    /// Put the project callback "site" with one of a few configs.
    Put { config: u8 },
    /// Remove it.
    Remove,
    /// Let `ms` pass, then append a tick if a deadline is due.
    Wait { ms: u32 },
    /// Finish the `pick`-th attempt in flight with outcome `outcome` (of a few).
    Finish { pick: u8, outcome: u8 },
    /// An operator redeliver to file `file`.
    Redeliver { file: u8 },
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 0u8..4).prop_map(|(file, event)| Op::Change { file, event }),
        1 => (0u8..3).prop_map(|config| Op::Put { config }),
        1 => Just(Op::Remove),
        4 => (0u32..8_000).prop_map(|ms| Op::Wait { ms }),
        5 => (any::<u8>(), 0u8..5).prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        1 => (0u8..6).prop_map(|file| Op::Redeliver { file }),
    ]
}

const CONFIGS: [&str; 3] = [
    r#"{"url":"https://example.org/a","window_secs":2,"backoff_secs":[1,3],"retry_for_secs":10}"#,
    r#"{"url":"https://example.org/b","window_secs":0,"leading":true,"events":["rated","deleted"]}"#,
    r#"{"url":"https://example.org/c","window_secs":5,"leading":true,"backoff_secs":[2]}"#,
];

/// Drives a core through the store: every record is appended first, then folded, as the
/// dispatcher does; attempts the core starts are remembered until an op finishes them.
pub struct Driver {
    pub store: Store,
    pub clock: VirtualClock,
    pub core: Core,
    pub in_flight: Vec<Attempt>,
    pub pending_disables: Vec<(MachineKey, Seq)>,
    effects: Vec<Effect>,
}

impl Driver {
    pub fn new(store: Store, clock: VirtualClock) -> Driver {
        Driver {
            store,
            clock,
            core: Core::new(),
            in_flight: Vec::new(),
            pending_disables: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// Appends one input, folds the record the store made of it, returns its seq.
    pub fn append(&mut self, input: Input) -> Seq {
        let appended = self.store.append(vec![input]).expect("append");
        for seq in appended.seqs() {
            let record = self.store.record(seq).unwrap().expect("durable record");
            self.core.apply(&record, &mut self.effects);
        }
        for effect in self.effects.drain(..) {
            match effect {
                Effect::StartAttempt(a) => self.in_flight.push(a),
                Effect::DisableCallback { machine, cause } => {
                    self.pending_disables.push((machine, cause));
                }
                Effect::WakeAt { .. } => {}
            }
        }
        appended.last()
    }

    pub fn step(&mut self, op: &Op) {
        self.clock.advance(1);
        match *op {
            Op::Change { file: f, event } => {
                let key = file(u64::from(f));
                let n = self.store.next_seq().0;
                self.append(change(
                    key.clone(),
                    EVENTS[event as usize],
                    seed_like(&key, n),
                ));
            }
            Op::Put { config } => {
                self.append(Input::Record(RecordKind::CallbackPut {
                    project: project(),
                    name: CallbackName::new("site").unwrap(),
                    callback: callback(CONFIGS[config as usize]),
                }));
            }
            Op::Remove => {
                self.append(Input::Record(RecordKind::CallbackRemoved {
                    project: project(),
                    name: CallbackName::new("site").unwrap(),
                }));
            }
            Op::Wait { ms } => {
                self.clock.advance(u64::from(ms));
                if self
                    .core
                    .next_deadline()
                    .is_some_and(|t| t <= self.clock.now())
                {
                    self.append(Input::Record(RecordKind::Ticked));
                }
            }
            Op::Finish { pick, outcome } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let a = self.in_flight.remove(pick as usize % self.in_flight.len());
                let outcome = [
                    Outcome::Delivered { status: 200 },
                    Outcome::Status {
                        status: 500,
                        retry_after_secs: None,
                    },
                    Outcome::Status {
                        status: 503,
                        retry_after_secs: Some(7),
                    },
                    Outcome::Timeout,
                    Outcome::Status {
                        status: 410,
                        retry_after_secs: None,
                    },
                ][outcome as usize];
                let snapshot = self.store.snapshot(a.version).unwrap().expect("body");
                let rendered = cb_core::render(&snapshot, &a.callback);
                self.append(Input::Record(RecordKind::AttemptFinished(AttemptReport {
                    machine: a.machine.clone(),
                    delivery: a.delivery,
                    attempt: a.attempt,
                    version: a.version,
                    outcome,
                    latency_ms: 3,
                    digest: rendered.digest(),
                    detail: String::new(),
                })));
                for (machine, cause) in std::mem::take(&mut self.pending_disables) {
                    self.append(Input::Record(RecordKind::CallbackDisabled {
                        machine,
                        cause,
                    }));
                }
            }
            Op::Redeliver { file: f } => {
                self.append(Input::Record(RecordKind::RedeliverRequested {
                    file: file(u64::from(f)),
                    callback: None,
                    version: None,
                }));
            }
        }
    }
}
