//! The invariants of SPEC §4, each a named property over random histories.
//!
//! A history interleaves changes to several files (triggering and filtered events, some
//! carrying per-file callbacks), ticks, attempt outcomes (successes, failures, timeouts,
//! 410s; late, duplicated and out of order), callback puts and removals (window 0, leading,
//! events filters), and redelivers. A simulated dispatcher folds it, answering effects as the
//! real one would (a `CallbackDisabled` after each `DisableCallback`), then drains: it
//! answers every attempt with 2xx and ticks to every deadline until nothing is left.
//!
//! The checker does not reuse the fold. It scans the trace — records in order, the effects
//! each one caused — and recomputes from the records alone which changes trigger which
//! machine, which outcome answers which attempt, which window is in force, and what the
//! newest version is. A bug in the fold is therefore not hidden by the same bug in the check.
//!
//! Cases default to 1000 per property; `PROPTEST_CASES` raises them.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use cb_core::{
    Attempt, AttemptReport, Callback, CallbackName, CallbackRef, CallbackSpec, Checkpoint, Core,
    Digest, Disposition, Effect, EventKind, FileCallback, FileKey, MachineKey, Outcome, Record,
    RecordKind, Scope, Seq, StateName, Timestamp,
};
use proptest::prelude::*;
use support::{file, name, project, Sim};

const FILES: [&str; 3] = ["f0", "f1", "f2"];
const CALLBACKS: [&str; 2] = ["a", "b"];
const EVENTS: [EventKind; 5] = [
    EventKind::Rated,
    EventKind::Moderated,
    EventKind::Published,
    EventKind::Failed,
    EventKind::EncodingProgress,
];

// ---------------------------------------------------------------------------------------
// Histories

#[derive(Clone, Debug)]
struct Config {
    window_secs: u64,
    leading: bool,
    events: Vec<EventKind>,
    backoff_secs: Vec<u64>,
    retry_for_secs: u64,
}

impl Config {
    fn spec(&self) -> CallbackSpec {
        CallbackSpec {
            url: Some("http://example.org/cb".into()),
            window_secs: Some(self.window_secs),
            leading: Some(self.leading),
            events: Some(self.events.iter().copied().collect()),
            backoff_secs: Some(self.backoff_secs.clone()),
            retry_for_secs: Some(self.retry_for_secs),
            ..CallbackSpec::default()
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Change {
        dt_ms: u64,
        file: usize,
        event: EventKind,
        /// `Some` replaces the file's per-file callbacks.
        file_callbacks: Option<Vec<(Config, bool)>>,
    },
    Tick {
        dt_ms: u64,
    },
    /// An outcome: for the `pick`-th attempt in flight, or (if `stale`) for any attempt ever
    /// started, which makes it late, duplicated or out of order.
    Outcome {
        dt_ms: u64,
        pick: usize,
        stale: bool,
        outcome: Outcome,
    },
    Put {
        dt_ms: u64,
        callback: usize,
        config: Config,
    },
    Remove {
        dt_ms: u64,
        callback: usize,
    },
    Redeliver {
        dt_ms: u64,
        file: usize,
        callback: Option<usize>,
    },
    /// Rule 8.
    Pause {
        dt_ms: u64,
        callback: usize,
    },
    Resume {
        dt_ms: u64,
        callback: usize,
    },
    /// An operator's test send: a record that must touch no machine (SPEC §4), so every
    /// property holds with them anywhere in a history.
    Test {
        dt_ms: u64,
        callback: usize,
        outcome: Outcome,
    },
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0u64), 1u64..=5, Just(10)],
        any::<bool>(),
        prop_oneof![
            2 => Just(EVENTS.to_vec()),
            1 => proptest::sample::subsequence(EVENTS.to_vec(), 1..=4),
        ],
        proptest::collection::vec(1u64..=4, 1..=3),
        prop_oneof![Just(0u64), 1u64..=20],
    )
        .prop_map(
            |(window_secs, leading, events, backoff_secs, retry_for_secs)| Config {
                window_secs,
                leading,
                events,
                backoff_secs,
                retry_for_secs,
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Delivered { status: 200 }),
        2 => Just(Outcome::Status { status: 500, retry_after_secs: None }),
        1 => (1u32..=20).prop_map(|s| Outcome::Status { status: 503, retry_after_secs: Some(s) }),
        1 => (1u32..=20).prop_map(|s| Outcome::Status { status: 429, retry_after_secs: Some(s) }),
        1 => Just(Outcome::Status { status: 302, retry_after_secs: None }),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Connect),
        1 => Just(Outcome::Closed),
        1 => Just(Outcome::Status { status: 410, retry_after_secs: None }),
    ]
}

fn dt() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 6 => 1u64..=2_000, 2 => 2_000u64..=12_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (dt(), 0..FILES.len(), proptest::sample::select(EVENTS.to_vec()),
               prop_oneof![12 => Just(None),
                           1 => proptest::collection::vec((config(), any::<bool>()), 0..=1).prop_map(Some)])
            .prop_map(|(dt_ms, file, event, file_callbacks)| Op::Change { dt_ms, file, event, file_callbacks }),
        14 => dt().prop_map(|dt_ms| Op::Tick { dt_ms }),
        30 => (dt(), any::<usize>(), prop::bool::weighted(0.15), outcome())
            .prop_map(|(dt_ms, pick, stale, outcome)| Op::Outcome { dt_ms, pick, stale, outcome }),
        6 => (dt(), 0..CALLBACKS.len(), config())
            .prop_map(|(dt_ms, callback, config)| Op::Put { dt_ms, callback, config }),
        1 => (dt(), 0..CALLBACKS.len()).prop_map(|(dt_ms, callback)| Op::Remove { dt_ms, callback }),
        4 => (dt(), 0..FILES.len(), proptest::option::of(0..CALLBACKS.len()))
            .prop_map(|(dt_ms, file, callback)| Op::Redeliver { dt_ms, file, callback }),
        2 => (dt(), 0..CALLBACKS.len()).prop_map(|(dt_ms, callback)| Op::Pause { dt_ms, callback }),
        2 => (dt(), 0..CALLBACKS.len()).prop_map(|(dt_ms, callback)| Op::Resume { dt_ms, callback }),
        1 => (dt(), 0..CALLBACKS.len(), outcome())
            .prop_map(|(dt_ms, callback, outcome)| Op::Test { dt_ms, callback, outcome }),
    ]
}

/// A history starts with both callbacks configured, so most histories deliver something.
fn history() -> impl Strategy<Value = (Config, Config, Vec<Op>)> {
    (config(), config(), proptest::collection::vec(op(), 1..120))
}

// ---------------------------------------------------------------------------------------
// The simulated dispatcher

/// Folds a history the way the dispatcher drives the core, then drains it.
fn simulate((a, b, ops): &(Config, Config, Vec<Op>)) -> Sim {
    let mut sim = Sim::default();
    let mut now = 1_000_000u64;
    let mut started: Vec<Attempt> = Vec::new();
    let mut latest: BTreeMap<FileKey, Seq> = BTreeMap::new();

    let put = |sim: &mut Sim, now: u64, cb: usize, c: &Config| {
        let callback = Arc::new(Callback::try_from(c.spec()).unwrap());
        push(
            sim,
            now,
            RecordKind::CallbackPut {
                project: project(),
                name: name(CALLBACKS[cb]),
                callback,
            },
        );
    };
    put(&mut sim, now, 0, a);
    put(&mut sim, now, 1, b);

    for op in ops {
        match op {
            Op::Change {
                dt_ms,
                file: f,
                event,
                file_callbacks,
            } => {
                now += dt_ms;
                let callbacks = file_callbacks.as_ref().map(|list| {
                    let specs = list
                        .iter()
                        .map(|(c, on_progress)| CallbackSpec {
                            name: Some("x".into()),
                            on_progress: Some(*on_progress),
                            ..c.spec()
                        })
                        .collect();
                    Arc::<[FileCallback]>::from(FileCallback::validate_list(specs).unwrap())
                });
                push(
                    &mut sim,
                    now,
                    RecordKind::ChangeAppended {
                        file: file(FILES[*f]),
                        event: *event,
                        callbacks,
                    },
                );
                latest.insert(file(FILES[*f]), sim.log.last().unwrap().seq);
            }
            Op::Tick { dt_ms } => {
                now += dt_ms;
                push(&mut sim, now, RecordKind::Ticked);
            }
            Op::Outcome {
                dt_ms,
                pick,
                stale,
                outcome,
            } => {
                now += dt_ms;
                let target = if *stale {
                    (!started.is_empty()).then(|| started[pick % started.len()].clone())
                } else {
                    let flying = sim.core.in_flight();
                    (!flying.is_empty()).then(|| flying[pick % flying.len()].clone())
                };
                if let Some(a) = target {
                    push(
                        &mut sim,
                        now,
                        RecordKind::AttemptFinished(report(&a, *outcome)),
                    );
                }
            }
            Op::Put {
                dt_ms,
                callback,
                config,
            } => {
                now += dt_ms;
                put(&mut sim, now, *callback, config);
            }
            Op::Remove { dt_ms, callback } => {
                now += dt_ms;
                push(
                    &mut sim,
                    now,
                    RecordKind::CallbackRemoved {
                        project: project(),
                        name: name(CALLBACKS[*callback]),
                    },
                );
            }
            Op::Redeliver {
                dt_ms,
                file: f,
                callback,
            } => {
                now += dt_ms;
                let key = file(FILES[*f]);
                push(
                    &mut sim,
                    now,
                    RecordKind::RedeliverRequested {
                        version: latest.get(&key).copied(),
                        file: key,
                        callback: callback.map(|c| CallbackRef::Project(name(CALLBACKS[c]))),
                    },
                );
            }
            Op::Test {
                dt_ms,
                callback,
                outcome,
            } => {
                now += dt_ms;
                push(
                    &mut sim,
                    now,
                    RecordKind::CallbackTested {
                        project: project(),
                        name: name(CALLBACKS[*callback]),
                        outcome: *outcome,
                        latency_ms: 3,
                        digest: cb_core::Digest::of(b"sample"),
                        detail: String::new(),
                    },
                );
            }
            Op::Pause { dt_ms, callback } => {
                now += dt_ms;
                let name = name(CALLBACKS[*callback]);
                push(
                    &mut sim,
                    now,
                    RecordKind::CallbackPaused {
                        project: project(),
                        name,
                    },
                );
            }
            Op::Resume { dt_ms, callback } => {
                now += dt_ms;
                let name = name(CALLBACKS[*callback]);
                push(
                    &mut sim,
                    now,
                    RecordKind::CallbackResumed {
                        project: project(),
                        name,
                    },
                );
            }
        }
        collect_started(&sim, &mut started);
    }

    // An operator resumes whatever is paused before the drain (a resume of a callback that
    // is not paused is ignored).
    for cb in CALLBACKS {
        push(
            &mut sim,
            now,
            RecordKind::CallbackResumed {
                project: project(),
                name: name(cb),
            },
        );
    }

    // Drain: every attempt succeeds, every deadline is ticked, until nothing is left.
    for _ in 0..10_000 {
        let flying = sim.core.in_flight();
        if !sim.core.owed_disables().is_empty() {
            push(&mut sim, now, RecordKind::Ticked);
        } else if let Some(a) = flying.first() {
            now += 50;
            push(
                &mut sim,
                now,
                RecordKind::AttemptFinished(report(a, Outcome::Delivered { status: 200 })),
            );
        } else if let Some(t) = sim.core.next_deadline() {
            now = now.max(t.0);
            push(&mut sim, now, RecordKind::Ticked);
        } else {
            break;
        }
    }
    assert!(
        sim.core.in_flight().is_empty()
            && sim.core.next_deadline().is_none()
            && sim.core.owed_disables().is_empty(),
        "drain ends"
    );
    sim
}

/// Appends a record. Like a dispatcher that is slow to act on a 410, the
/// `CallbackDisabled` it owes is appended at the next tick (or during the drain), so other
/// records — puts among them — can come between a 410 and its disable.
fn push(sim: &mut Sim, now: u64, kind: RecordKind) {
    if matches!(kind, RecordKind::Ticked) {
        for e in sim.core.owed_disables() {
            if let Effect::DisableCallback { machine, cause } = e {
                let _ = sim.push(now, RecordKind::CallbackDisabled { machine, cause });
            }
        }
    }
    let _ = sim.push(now, kind);
}

fn collect_started(sim: &Sim, started: &mut Vec<Attempt>) {
    started.clear();
    for effects in &sim.effects {
        for e in effects {
            if let Effect::StartAttempt(a) = e {
                started.push(a.clone());
            }
        }
    }
}

fn report(a: &Attempt, outcome: Outcome) -> AttemptReport {
    AttemptReport {
        machine: a.machine.clone(),
        delivery: a.delivery,
        attempt: a.attempt,
        version: a.version,
        outcome,
        latency_ms: 10,
        digest: Digest::default(),
        detail: String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The independent checker: a scan of the trace

/// What the checker derives for one machine's current epoch (an epoch ends when its callback
/// is removed, disabled, or dropped from the file's per-file list).
#[derive(Default, Clone)]
struct Epoch {
    /// Triggering changes: (seq, at).
    triggers: Vec<(Seq, Timestamp)>,
    /// Delivery ids of non-redeliver first attempts, one entry per first attempt.
    deliveries: Vec<Seq>,
    /// The attempt in flight, if any.
    outstanding: Option<Attempt>,
    /// The latest attempt's start and the window in force then.
    last_start: Option<(Timestamp, u64)>,
    /// Largest window in force during the epoch (ms).
    max_window_ms: u64,
    /// Largest backoff step in force during the epoch (ms).
    max_backoff_ms: u64,
    /// Accepted outcomes: (at, delivered?).
    outcomes: Vec<(Timestamp, bool)>,
    /// First failure of each delivery, with the retry horizon in force (ms).
    first_failure: BTreeMap<Seq, Timestamp>,
    /// The outcome record that abandoned the machine (a failure at or past its delivery's
    /// horizon, or a 410), if any.
    abandoned_by: Option<Seq>,
    /// Attempts (with the index of the record whose apply emitted them).
    attempts: Vec<(usize, Attempt)>,
    /// The latest attempt number of each delivery.
    attempt_numbers: BTreeMap<Seq, u32>,
    /// The smallest `D` in force during the epoch (ms).
    min_delay_ms: Option<u64>,
    /// Resumes of the machine's callback during the epoch (rule 8): an attempt a pause held
    /// back goes out at the resume.
    resumes: Vec<Timestamp>,
    /// The resume record before which a pause may have abandoned the failing delivery (its
    /// retry horizon passed during the pause, rule 8), if any.
    abandoned_in_pause: Option<Seq>,
}

impl Epoch {
    /// A configuration was in force during the epoch: it bounds the delays the checks allow.
    fn note_config(&mut self, cb: &Callback) {
        let window_ms = u64::from(cb.window_secs) * 1000;
        let delay_ms = if cb.leading { 0 } else { window_ms };
        let backoff_ms = cb
            .backoff_secs
            .iter()
            .map(|&s| u64::from(s) * 1000)
            .max()
            .unwrap();
        self.min_delay_ms = Some(self.min_delay_ms.map_or(delay_ms, |d| d.min(delay_ms)));
        self.max_window_ms = self.max_window_ms.max(window_ms);
        self.max_backoff_ms = self.max_backoff_ms.max(backoff_ms);
    }
}

/// A configuration as the checker reads it from the records.
#[derive(Clone)]
struct Cfg {
    callback: Arc<Callback>,
    /// The record that put (or gave) this configuration.
    put_by: Seq,
    /// `on_*` switches for per-file callbacks.
    file: Option<(bool, bool, bool)>,
    enabled: bool,
    /// Rule 8: changes still coalesce, no attempt starts.
    paused: bool,
}

impl Cfg {
    fn triggers(&self, e: EventKind) -> bool {
        let switch = match (self.file, e) {
            (Some((s, _, _)), EventKind::Published) => s,
            (Some((_, f, _)), EventKind::Failed) => f,
            (Some((_, _, p)), EventKind::EncodingProgress) => p,
            _ => true,
        };
        self.enabled && switch && self.callback.events.contains(e)
    }
}

#[derive(Default)]
struct Checker {
    configs: BTreeMap<MachineKeyParts, Cfg>,
    epochs: BTreeMap<MachineKey, Epoch>,
    /// Finished epochs, kept for the per-machine checks that span epochs.
    all_attempts: BTreeMap<MachineKey, Vec<Attempt>>,
    delivered: BTreeMap<MachineKey, Vec<Seq>>,
    latest_change: BTreeMap<FileKey, Seq>,
    /// Sequence numbers of `RedeliverRequested` records.
    redelivers: std::collections::BTreeSet<Seq>,
    violations: Vec<String>,
}

/// A callback's identity: project callbacks are shared by every file, per-file ones are not.
type MachineKeyParts = (Option<FileKey>, CallbackName);

fn parts(key: &MachineKey) -> MachineKeyParts {
    match &key.callback {
        CallbackRef::Project(n) => (None, n.clone()),
        CallbackRef::File(n) => (Some(key.file.clone()), n.clone()),
    }
}

impl Checker {
    fn cfg(&self, key: &MachineKey) -> Option<&Cfg> {
        self.configs.get(&parts(key))
    }

    fn end_epochs(&mut self, pred: impl Fn(&MachineKey) -> bool) {
        self.epochs.retain(|k, _| !pred(k));
    }

    fn scan(sim: &Sim) -> Checker {
        let mut c = Checker::default();
        for (i, record) in sim.log.iter().enumerate() {
            let prev_at = if i == 0 { record.at } else { sim.log[i - 1].at };
            if matches!(record.kind, RecordKind::RedeliverRequested { .. }) {
                c.redelivers.insert(record.seq);
            }
            // Attempts this record's apply started were decided before the record itself
            // took effect (deadlines fire first; a redeliver starts its own), but for those
            // the record made due at its own time, which fire after it (rules 2).
            let started: Vec<&Attempt> = sim.effects[i]
                .iter()
                .filter_map(|e| match e {
                    Effect::StartAttempt(a) => Some(a),
                    _ => None,
                })
                .collect();
            let (before, after) = started.split_at(sim.started_before[i]);
            for a in before {
                c.on_attempt(i, record, prev_at, a);
            }
            c.on_record(record, sim.dispositions[i]);
            for a in after {
                c.on_attempt(i, record, record.at, a);
            }
        }
        c
    }

    fn on_attempt(&mut self, i: usize, record: &Record, prev_at: Timestamp, a: &Attempt) {
        let key = a.machine.clone();
        let Some(cfg) = self.cfg(&key).cloned() else {
            self.violations.push(format!(
                "#{}: attempt for {key} without a callback",
                record.seq
            ));
            return;
        };
        // Latest wins: the newest change appended before the record that decided it.
        let newest = self.latest_change.get(&key.file).copied();
        if Some(a.version) != newest {
            self.violations.push(format!(
                "latest wins: #{} started {key} with v{} but the newest change is {newest:?}",
                record.seq, a.version
            ));
        }
        // The claimed start is honest: between the previous record and this one.
        if a.started_at < prev_at || a.started_at > record.at {
            self.violations.push(format!(
                "#{}: {key} claims start {} outside [{prev_at}, {}]",
                record.seq, a.started_at, record.at
            ));
        }
        if !cfg.enabled {
            self.violations.push(format!(
                "no spam: #{} attempt for disabled {key}",
                record.seq
            ));
        }
        // Rule 8: a paused callback starts nothing; its resume starts what it held back.
        let resuming = matches!(&record.kind,
            RecordKind::CallbackResumed { name, .. } if key.callback == CallbackRef::Project(name.clone()));
        if cfg.paused && !resuming {
            self.violations
                .push(format!("no spam: #{} attempt for paused {key}", record.seq));
        }
        // A redeliver attempt belongs to a delivery an operator's redeliver opened.
        if a.redeliver != self.redelivers.contains(&a.delivery.0) {
            self.violations.push(format!(
                "no spam: #{} {key} {} claims redeliver={} against the log",
                record.seq, a.delivery, a.redeliver
            ));
        }
        let window_ms = u64::from(cfg.callback.window_secs) * 1000;
        let e = self.epochs.entry(key.clone()).or_default();
        // The window in force at an attempt bounds when the next delivery may start.
        e.note_config(&cfg.callback);
        // Attempts of a delivery are numbered 1, 2, 3, … with no gap.
        let last = e
            .attempt_numbers
            .insert(a.delivery.0, a.attempt)
            .unwrap_or(0);
        if a.attempt != last + 1 {
            self.violations.push(format!(
                "no spam: #{} {key} {} attempt #{} follows #{last}",
                record.seq, a.delivery, a.attempt
            ));
        }
        // Rule 1's lower bound: a first attempt waits D after the change that opened it (the
        // smallest D in force while it waited).
        if a.attempt == 1 && !a.redeliver {
            if let Some(&(_, opened_at)) = e.triggers.iter().find(|(s, _)| *s == a.delivery.0) {
                let d = e.min_delay_ms.unwrap_or(0);
                if a.started_at.0 < opened_at.0 + d {
                    self.violations.push(format!(
                        "spacing: #{} {key} {} started at {} before its change at {opened_at} + D {d} ms",
                        record.seq, a.delivery, a.started_at
                    ));
                }
            }
        }
        // No spam: never two attempts in flight for one machine.
        if let Some(o) = &e.outstanding {
            self.violations.push(format!(
                "no spam: #{} started {key} {}#{} while {}#{} is in flight",
                record.seq, a.delivery, a.attempt, o.delivery, o.attempt
            ));
        }
        // Spacing: a first attempt of a (non-redeliver) delivery waits a window after the
        // previous attempt, with the window in force at that previous attempt.
        if a.attempt == 1 && !a.redeliver {
            if let Some((last, w)) = e.last_start {
                if a.started_at.0 < last.0 + w {
                    self.violations.push(format!(
                        "spacing: #{} started {key} at {} but the previous attempt began at {last} with a {w} ms window",
                        record.seq, a.started_at
                    ));
                }
            }
            // No spam: each delivery makes one first attempt.
            if e.deliveries.contains(&a.delivery.0) {
                self.violations.push(format!(
                    "no spam: #{} delivery {} of {key} started a first attempt twice",
                    record.seq, a.delivery
                ));
            }
            e.deliveries.push(a.delivery.0);
            // No spam: a delivery is opened by one of this machine's triggering changes.
            if !e.triggers.iter().any(|(s, _)| *s == a.delivery.0) {
                self.violations.push(format!(
                    "no spam: #{} delivery {} of {key} was not opened by a triggering change",
                    record.seq, a.delivery
                ));
            }
        }
        e.last_start = Some((a.started_at, window_ms));
        e.outstanding = Some(a.clone());
        e.attempts.push((i, a.clone()));
        self.all_attempts.entry(key).or_default().push(a.clone());
    }

    fn on_record(&mut self, record: &Record, disposition: Disposition) {
        match &record.kind {
            RecordKind::CallbackPut { name, callback, .. } => {
                // A put keeps a pause: the operator's, not the configuration's.
                let paused = self
                    .configs
                    .get(&(None, name.clone()))
                    .is_some_and(|c| c.paused);
                let cfg = Cfg {
                    callback: callback.clone(),
                    put_by: record.seq,
                    file: None,
                    enabled: true,
                    paused,
                };
                self.configs.insert((None, name.clone()), cfg);
                self.widen(
                    |k| matches!(&k.callback, CallbackRef::Project(n) if n == name),
                    callback,
                );
            }
            RecordKind::CallbackRemoved { name, .. } => {
                self.configs.remove(&(None, name.clone()));
                self.end_epochs(|k| matches!(&k.callback, CallbackRef::Project(n) if n == name));
            }
            RecordKind::CallbackDisabled { machine, cause } => {
                // A put after the 410 wins over a disable that lands late.
                match self.configs.get_mut(&parts(machine)) {
                    Some(cfg) if *cause >= cfg.put_by => cfg.enabled = false,
                    _ => return,
                }
                let target = machine.clone();
                self.end_epochs(|k| match &target.callback {
                    CallbackRef::Project(_) => k.callback == target.callback,
                    CallbackRef::File(_) => k == &target,
                });
            }
            RecordKind::ChangeAppended {
                file,
                event,
                callbacks,
            } => {
                if let Some(list) = callbacks {
                    let names: Vec<CallbackName> = list.iter().map(|c| c.name.clone()).collect();
                    self.configs
                        .retain(|(f, n), _| f.as_ref() != Some(file) || names.contains(n));
                    let f = file.clone();
                    self.end_epochs(|k| {
                        k.file == f
                            && matches!(&k.callback, CallbackRef::File(n) if !names.contains(n))
                    });
                    for fc in list.iter() {
                        let cfg = Cfg {
                            callback: fc.callback.clone(),
                            put_by: record.seq,
                            file: Some((fc.on_success, fc.on_failure, fc.on_progress)),
                            enabled: true,
                            paused: false,
                        };
                        self.configs
                            .insert((Some(file.clone()), fc.name.clone()), cfg);
                        let (f, n) = (file.clone(), fc.name.clone());
                        self.widen(
                            |k| k.file == f && k.callback == CallbackRef::File(n.clone()),
                            &fc.callback,
                        );
                    }
                }
                self.latest_change.insert(file.clone(), record.seq);
                let triggered: Vec<MachineKey> = self
                    .configs
                    .iter()
                    .filter(|((f, _), cfg)| {
                        f.as_ref().is_none_or(|f| f == file) && cfg.triggers(*event)
                    })
                    .map(|((f, n), _)| MachineKey {
                        file: file.clone(),
                        callback: if f.is_some() {
                            CallbackRef::File(n.clone())
                        } else {
                            CallbackRef::Project(n.clone())
                        },
                    })
                    .collect();
                for key in triggered {
                    let cfg = self.cfg(&key).unwrap().callback.clone();
                    let e = self.epochs.entry(key).or_default();
                    e.triggers.push((record.seq, record.at));
                    e.note_config(&cfg);
                }
            }
            RecordKind::AttemptFinished(r) => {
                let key = &r.machine;
                let e = self.epochs.get_mut(key);
                let answers = e
                    .as_ref()
                    .and_then(|e| e.outstanding.as_ref())
                    .is_some_and(|o| {
                        (o.delivery, o.attempt, o.version) == (r.delivery, r.attempt, r.version)
                    });
                // The fold accepts exactly the outcomes that answer the attempt in flight.
                if answers != (disposition == Disposition::Applied) {
                    self.violations.push(format!(
                        "#{}: outcome for {key} {}#{}: checker says answers={answers}, fold says {disposition:?}",
                        record.seq, r.delivery, r.attempt
                    ));
                }
                if answers {
                    let retry_for_ms = self
                        .cfg(key)
                        .map_or(0, |c| u64::from(c.callback.retry_for_secs) * 1000);
                    let e = self.epochs.get_mut(key).unwrap();
                    e.outstanding = None;
                    let ok = r.outcome.is_delivered();
                    e.outcomes.push((record.at, ok));
                    if ok {
                        self.delivered
                            .entry(key.clone())
                            .or_default()
                            .push(r.version);
                    } else {
                        let first = *e.first_failure.entry(r.delivery.0).or_insert(record.at);
                        let gone = matches!(r.outcome, Outcome::Status { status: 410, .. });
                        if gone || record.at.0 >= first.0 + retry_for_ms {
                            e.abandoned_by = Some(record.seq);
                        }
                    }
                }
            }
            // A test send touches no machine (SPEC §4).
            RecordKind::CallbackTested { .. } => {}
            RecordKind::CallbackPaused { name, .. } => {
                if let Some(cfg) = self.configs.get_mut(&(None, name.clone())) {
                    cfg.paused = true;
                }
            }
            RecordKind::CallbackResumed { name, .. } => {
                let Some(cfg) = self.configs.get_mut(&(None, name.clone())) else {
                    return;
                };
                if !std::mem::replace(&mut cfg.paused, false) {
                    return;
                }
                let retry_for_ms = u64::from(cfg.callback.retry_for_secs) * 1000;
                let callback = CallbackRef::Project(name.clone());
                for (_, e) in self
                    .epochs
                    .iter_mut()
                    .filter(|(k, _)| k.callback == callback)
                {
                    e.resumes.push(record.at);
                    // A failing delivery whose horizon passed by the resume may have been
                    // abandoned at its retry deadline during the pause.
                    let failing =
                        e.outstanding.is_none() && e.outcomes.last().is_some_and(|(_, ok)| !ok);
                    let horizon_passed = e
                        .first_failure
                        .values()
                        .max()
                        .is_some_and(|first| record.at.0 >= first.0 + retry_for_ms);
                    // A triggering change no attempt carried is owed, abandoned or not.
                    let carried = e.attempts.last().map(|(_, a)| a.version);
                    let nothing_owed = e
                        .triggers
                        .last()
                        .is_none_or(|(seq, _)| carried.is_some_and(|v| *seq <= v));
                    if failing && horizon_passed && nothing_owed {
                        e.abandoned_in_pause = Some(record.seq);
                    }
                }
            }
            RecordKind::Ticked | RecordKind::RedeliverRequested { .. } => {}
        }
    }

    /// A new configuration: windows and backoffs in force widen the liveness bound.
    fn widen(&mut self, pred: impl Fn(&MachineKey) -> bool, cb: &Callback) {
        for (k, e) in self.epochs.iter_mut() {
            if pred(k) {
                e.note_config(cb);
            }
        }
    }
}

fn violations(sim: &Sim, what: &str) -> Vec<String> {
    Checker::scan(sim)
        .violations
        .into_iter()
        .filter(|v| v.starts_with(what))
        .collect()
}

fn report_failure(sim: &Sim, v: &[String]) -> String {
    let mut s = format!("{} violation(s):\n{}\n--- log ---\n", v.len(), v.join("\n"));
    for (r, e) in sim.log.iter().zip(&sim.effects) {
        s.push_str(&format!(
            "#{} @{} {:?}\n    => {:?}\n",
            r.seq, r.at, r.kind, e
        ));
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Every attempt carries the newest snapshot appended before it.
    #[test]
    fn latest_wins(h in history()) {
        let sim = simulate(&h);
        let v = violations(&sim, "latest wins");
        prop_assert!(v.is_empty(), "{}", report_failure(&sim, &v));
    }

    /// First attempts of successive deliveries of one machine start at least a window apart
    /// (the window in force at the earlier attempt); redelivers are exempt.
    #[test]
    fn spacing(h in history()) {
        let sim = simulate(&h);
        let v = violations(&sim, "spacing");
        prop_assert!(v.is_empty(), "{}", report_failure(&sim, &v));
    }

    /// After the last triggering change of a machine, an attempt carrying it (or newer)
    /// starts within the window (the largest in force), or once the attempt in flight or the
    /// retry pending at that change resolves — unless the machine was abandoned or its
    /// callback removed or disabled.
    #[test]
    fn liveness(h in history()) {
        let sim = simulate(&h);
        let c = Checker::scan(&sim);
        let mut v = Vec::new();
        for (key, e) in &c.epochs {
            let Some(&(seq, at)) = e.triggers.last() else { continue };
            if e.abandoned_by.is_some_and(|s| s > seq) || e.abandoned_in_pause.is_some_and(|s| s > seq) {
                continue;
            }
            let carrying = e.attempts.iter().map(|(_, a)| a).find(|a| a.version >= seq);
            let Some(a) = carrying else {
                v.push(format!("liveness: {key} never attempted v{seq} (change at {at})"));
                continue;
            };
            // The latest outcome before the delivering attempt frees the machine; a failure
            // adds at most twice the largest backoff, +20 % jitter.
            let freed = e.outcomes.iter().rev().find(|(t, _)| *t <= a.started_at);
            let retry_slack = match freed {
                Some((t, false)) => t.0 + e.max_backoff_ms * 24 / 10,
                Some((t, true)) => t.0,
                None => 0,
            };
            // Rule 8: held back by a pause, it goes out at the resume (within a window).
            let resumed = e.resumes.iter().filter(|r| **r >= at && **r <= a.started_at).max();
            let pause_slack = resumed.map_or(0, |r| r.0 + e.max_window_ms);
            let bound = (at.0 + e.max_window_ms).max(retry_slack).max(pause_slack);
            if a.started_at.0 > bound {
                v.push(format!(
                    "liveness: {key} attempted v{} at {} but the change at {at} was due by {bound}",
                    a.version, a.started_at
                ));
            }
        }
        // Every machine the fold still has is idle: nothing waits forever.
        let census = sim.core.census();
        if census.states[0] + census.states[1] + census.states[3] != 0 {
            v.push(format!("liveness: drain left machines busy: {census:?}"));
        }
        prop_assert!(v.is_empty(), "{}", report_failure(&sim, &v));
    }

    /// Deliveries never outnumber triggering changes; never two attempts in flight for one
    /// machine; the fold accepts exactly the outcomes that answer the attempt in flight.
    #[test]
    fn no_spam(h in history()) {
        let sim = simulate(&h);
        let c = Checker::scan(&sim);
        let mut v: Vec<String> = c.violations.iter()
            .filter(|v| v.starts_with("no spam") || v.contains("checker says"))
            .cloned().collect();
        for (key, e) in &c.epochs {
            if e.deliveries.len() > e.triggers.len() {
                v.push(format!("no spam: {key} made {} deliveries for {} triggering changes", e.deliveries.len(), e.triggers.len()));
            }
        }
        prop_assert!(v.is_empty(), "{}", report_failure(&sim, &v));
    }

    /// A delivered version is never older than one delivered before, and no attempt carries
    /// an older version than an earlier attempt of the same machine.
    #[test]
    fn monotonic(h in history()) {
        let sim = simulate(&h);
        let c = Checker::scan(&sim);
        let mut v = Vec::new();
        for (key, versions) in &c.delivered {
            if versions.windows(2).any(|w| w[1] < w[0]) {
                v.push(format!("monotonic: {key} delivered {versions:?}"));
            }
        }
        for (key, attempts) in &c.all_attempts {
            if attempts.windows(2).any(|w| w[1].version < w[0].version) {
                let versions: Vec<Seq> = attempts.iter().map(|a| a.version).collect();
                v.push(format!("monotonic: {key} attempted {versions:?}"));
            }
        }
        prop_assert!(v.is_empty(), "{}", report_failure(&sim, &v));
    }

    /// After every record, the core's next deadline — what its `WakeAt` effects announce — is
    /// exactly the earliest deadline of any machine it keeps: never a leftover timer of a
    /// machine that moved on, or was dropped with its callback or its file.
    #[test]
    fn next_deadline_is_the_earliest_machine_deadline(h in history()) {
        let sim = simulate(&h);
        let mut core = Core::new();
        let mut effects = Vec::new();
        for r in &sim.log {
            core.apply(r, &mut effects);
            effects.clear();
            // A paused callback's machine whose deadline passed is parked (rule 8).
            let now = core.now();
            let parked = |r: &CallbackRef, t: Timestamp| {
                matches!(r, CallbackRef::Project(n) if core.is_paused(&project(), n)) && t <= now
            };
            let earliest = core
                .checkpoint()
                .files
                .iter()
                .flat_map(|(_, entry)| {
                    entry
                        .machines
                        .iter()
                        .filter_map(|(r, m)| m.deadline().filter(|t| !parked(r, *t)))
                })
                .min();
            prop_assert_eq!(core.next_deadline(), earliest, "after #{}", r.seq);
        }
    }

    /// Folding the same log twice gives identical effects and states, byte for byte; so does
    /// restoring a checkpoint taken anywhere (through bincode) and folding the rest; and folding one file's
    /// records (with its project's) reaches the same states and attempts for that file as
    /// folding the whole log.
    #[test]
    fn determinism(h in history(), cut in any::<prop::sample::Index>()) {
        let sim = simulate(&h);
        // Twice from scratch.
        let (effects, cp) = fold(Core::new(), &sim.log);
        prop_assert_eq!(bytes(&effects), bytes(&sim.effects));
        prop_assert_eq!(bytes(&cp), bytes(&sim.core.checkpoint()));

        // Checkpoint at a random point, through its serialized form.
        let k = cut.index(sim.log.len() + 1);
        let (_, prefix) = fold(Core::new(), &sim.log[..k]);
        // Through bincode 2, the encoding the store writes checkpoints in.
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(&prefix, config).unwrap();
        let (restored, _): (Checkpoint, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        prop_assert_eq!(&restored, &prefix);
        let (rest, cp2) = fold(Core::from_checkpoint(restored), &sim.log[k..]);
        prop_assert_eq!(bytes(&rest), bytes(&sim.effects[k..].to_vec()));
        prop_assert_eq!(bytes(&cp2), bytes(&cp));

        // One file's records alone.
        for f in FILES {
            let key = file(f);
            let mut full = Core::new();
            let mut one = Core::new();
            let mut sink = Vec::new();
            let (mut full_starts, mut one_starts) = (Vec::new(), Vec::new());
            for r in &sim.log {
                let mut e = Vec::new();
                full.apply(r, &mut e);
                full_starts.extend(starts_of(&e, &key));
                let mine = match r.scope() {
                    Scope::File(fk) => fk == &key,
                    Scope::Project(p) => p == &key.project,
                    Scope::Global => false,
                };
                if mine {
                    let mut e = Vec::new();
                    one.apply(r, &mut e);
                    one_starts.extend(starts_of(&e, &key));
                    prop_assert_eq!(full.file(&key), one.file(&key), "file {} after #{}", f, r.seq);
                }
                sink.clear();
            }
            // Catch up to the end of the log: deadlines the whole log fired by ticks.
            let end = full.now();
            one.advance(end, &mut sink);
            one_starts.extend(starts_of(&sink, &key));
            sink.clear();
            full.advance(end, &mut sink);
            full_starts.extend(starts_of(&sink, &key));
            prop_assert_eq!(full.file(&key), one.file(&key));
            prop_assert_eq!(bytes(&full_starts), bytes(&one_starts), "attempts of {}", f);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The census the core keeps as machines move equals a count machine by machine, and its
    /// retrying and abandoned keys and disabled per-file callbacks equal those found file by
    /// file, after
    /// every record, as of that record's time and as of later times (machines whose `sent`
    /// window elapsed after the record are left out), and after a checkpoint's restore.
    #[test]
    fn census_kept_equals_census_counted(h in history()) {
        let sim = simulate(&h);
        let mut core = Core::new();
        // A core that keeps every state's list, from the start and after a restore (as the
        // daemon does): its lists are held to the count as well.
        let mut listing = Core::new();
        listing.keep_lists();
        let mut effects = Vec::new();
        for (i, r) in sim.log.iter().enumerate() {
            core.apply(r, &mut effects);
            listing.apply(r, &mut effects);
            effects.clear();
            if i == sim.log.len() / 2 {
                listing = Core::from_checkpoint(listing.checkpoint());
                listing.keep_lists();
            }
            for state in StateName::ALL {
                let scanned: Vec<MachineKey> =
                    core.machines_scanned_in(state).into_iter().map(|(k, _)| k).collect();
                prop_assert_eq!(keys_in(&listing, state), scanned, "#{}", r.seq);
            }
            prop_assert_eq!(&*listing.group_counts(), &core.group_counts_scanned(), "#{}", r.seq);
            for state in [StateName::Retrying, StateName::Abandoned] {
                let scanned: Vec<MachineKey> =
                    core.machines_scanned_in(state).into_iter().map(|(k, _)| k).collect();
                prop_assert_eq!(keys_in(&core, state), scanned, "#{}", r.seq);
            }
            let mut disabled: Vec<(MachineKey, Seq)> = core
                .files()
                .flat_map(|(file, entry)| {
                    entry.callbacks.iter().filter_map(move |s| {
                        let key = MachineKey {
                            file: file.clone(),
                            callback: CallbackRef::File(s.callback.name.clone()),
                        };
                        Some((key, s.disabled_by?))
                    })
                })
                .collect();
            disabled.sort();
            let kept: Vec<(MachineKey, Seq)> =
                core.disabled_file_callbacks().map(|(k, s)| (k.clone(), s)).collect();
            prop_assert_eq!(kept, disabled, "#{}", r.seq);
            for later in [0, 1, 500, 5_000, 60_000, 3_600_000] {
                let now = Timestamp(r.at.0 + later);
                let counted = core.census_scanned_at(now);
                prop_assert_eq!(&core.census_walked_at(now), &counted, "#{} +{}ms", r.seq, later);
                prop_assert_eq!(&core.census_at(now), &counted, "#{} +{}ms", r.seq, later);
            }
        }
        let restored = Core::from_checkpoint(core.checkpoint());
        prop_assert_eq!(restored.census(), core.census());
        for state in [StateName::Retrying, StateName::Abandoned] {
            prop_assert_eq!(keys_in(&restored, state), keys_in(&core, state));
        }
        prop_assert!(restored.disabled_file_callbacks().eq(core.disabled_file_callbacks()));
    }

    /// `Core::redeliver_check`, which the API and cbctl ask before appending a redeliver,
    /// predicts what folding the redeliver does: `Ok` exactly when it starts an attempt,
    /// otherwise the very reason the fold ignores it.
    #[test]
    fn redeliver_check_predicts_the_fold(h in history()) {
        let sim = simulate(&h);
        let mut core = Core::new();
        let mut effects = Vec::new();
        for r in &sim.log {
            if let RecordKind::RedeliverRequested { file, callback, version } = &r.kind {
                // The fold fires the deadlines due by the record's time first.
                core.advance(r.at, &mut effects);
                let predicted = core.redeliver_check(file, callback.as_ref(), *version);
                let folded = core.apply(r, &mut effects);
                match predicted {
                    Ok(()) => prop_assert_eq!(folded, Disposition::Applied, "#{}", r.seq),
                    Err(why) => prop_assert_eq!(folded, Disposition::Ignored(why), "#{}", r.seq),
                }
            } else {
                core.apply(r, &mut effects);
            }
            effects.clear();
        }
    }
}

/// The keys [`Core::machines_in`] lists for `state`.
fn keys_in(core: &Core, state: StateName) -> Vec<MachineKey> {
    core.machines_in(state).map(|(k, _)| k).collect()
}

fn fold(mut core: Core, log: &[Record]) -> (Vec<Vec<Effect>>, Checkpoint) {
    let effects = log
        .iter()
        .map(|r| {
            let mut e = Vec::new();
            core.apply(r, &mut e);
            e
        })
        .collect();
    (effects, core.checkpoint())
}

fn starts_of(effects: &[Effect], key: &FileKey) -> Vec<Attempt> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::StartAttempt(a) if &a.machine.file == key => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
