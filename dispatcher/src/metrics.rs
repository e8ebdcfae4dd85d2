//! The dispatcher's metrics — what the driver folded, what attempts did, how long acks,
//! attempts and deliveries took, attempts and machines per (project, callback) within a
//! bound — and a scrape's text ([`Metrics::encode`], in either form of
//! [`crate::exposition`]).
//!
//! Counters and histograms are fed as the driver folds (so they count durable records, the
//! same ones `cbctl replay` counts), by the API (ack latency) and by the accept loop. What
//! describes the state now — machines per state, files, the log's size — is read at the
//! scrape ([`Scrape`]) and written beside them. A scrape costs the core's kept totals, one
//! pass over its per-(project, callback) counts and the fixed families: never a walk of the
//! machines, so it stays cheap with a million files held.
//!
//! Per-(project, callback) series are bounded: the first [`Metrics::new`]'s `max_series`
//! pairs seen (by an outcome folded, or at a scrape) get labels of their own for as long as
//! cbd runs; every later pair is counted under [`OTHER`], a label value no project id and no
//! callback name can take.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cb_core::{CallbackRef, Disposition, OutcomeClass, ProjectId, Record, RecordKind, StateName};

use crate::exposition::{Exposition, Format, Kind};

/// The label value (`project` and `callback`) of the pairs past the bound. `~` is outside
/// the id grammar (`[A-Za-z0-9_.-]`, SPEC §3) and a callback label is a name or `file:NAME`,
/// so no real pair reads this way (`_other` would be a valid project id).
pub const OTHER: &str = "~other";

/// The default bound on (project, callback) pairs with series of their own
/// (`--metrics-max-series`): each has at most 15 series (10 outcome classes, 5 states).
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// Buckets of the ack latency, in seconds: a durable append is a group commit's
/// `fdatasync` away (about a millisecond on a good disk), and an append waits at most 30 s
/// for a driver that is behind before it is refused.
pub const ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of one attempt's latency, in seconds: a receiver's answer, up to the longest
/// `timeout_secs` (600; 15 by default, so default timeouts land in the 20 s bucket).
pub const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0, 300.0, 600.0,
];

/// Buckets of the change → delivery lag, in seconds: from a leading delivery's
/// milliseconds, through the window (60 s by default), to the retry ladder (up to 2 h
/// apart) and the longest window (7 days).
pub const LAG_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 21600.0, 86400.0, 172800.0, 604800.0,
];

/// Record kinds, in the order they are counted and written.
const RECORD_KINDS: [&str; 10] = [
    "change",
    "callback_put",
    "callback_removed",
    "callback_paused",
    "callback_resumed",
    "callback_tested",
    "callback_disabled",
    "tick",
    "attempt",
    "redeliver",
];

const CLASSES: usize = OutcomeClass::ALL.len();
const STATES: usize = StateName::ALL.len();

/// A counter: only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge: a value now.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets, with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative: `buckets[i]` those above `bounds[i - 1]`
    /// and at most `bounds[i]`; the last, those above every bound. The count is their sum,
    /// so a scrape never shows a count that its buckets disagree with.
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (increasing, finite).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Counts one observation (a NaN is not one).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let mut old = self.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + v).to_bits();
            match self
                .sum
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
    }

    /// Counts one duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The cumulative counts (one per bound, then all) and the sum.
    fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (cumulative, f64::from_bits(self.sum.load(Ordering::Relaxed)))
    }

    fn write(&self, e: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let (cumulative, sum) = self.read();
        e.histogram(name, labels, self.bounds, &cumulative, sum);
    }
}

/// The API routes whose acks are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckRoute {
    /// `POST /v1/changes`.
    Change,
    /// `POST /v1/changes/batch`.
    Batch,
}

impl AckRoute {
    const ALL: [AckRoute; 2] = [AckRoute::Change, AckRoute::Batch];

    /// The `route` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AckRoute::Change => "/v1/changes",
            AckRoute::Batch => "/v1/changes/batch",
        }
    }
}

/// The (project, callback) pairs with labels of their own, and their attempts per outcome
/// class.
#[derive(Debug, Default)]
struct Pairs {
    /// At most this many pairs get labels of their own.
    max: usize,
    /// Each pair's index in `names` and `attempts`.
    slots: HashMap<ProjectId, HashMap<CallbackRef, usize>>,
    names: Vec<(ProjectId, CallbackRef)>,
    attempts: Vec<[u64; CLASSES]>,
    /// Attempts of the pairs past the bound, together.
    other: [u64; CLASSES],
}

impl Pairs {
    /// The pair's index, given one now if there is room; `None`: counted under [`OTHER`].
    fn slot(&mut self, project: &ProjectId, callback: &CallbackRef) -> Option<usize> {
        if let Some(&slot) = self.slots.get(project).and_then(|m| m.get(callback)) {
            return Some(slot);
        }
        if self.names.len() >= self.max {
            return None;
        }
        let slot = self.names.len();
        self.slots
            .entry(project.clone())
            .or_default()
            .insert(callback.clone(), slot);
        self.names.push((project.clone(), callback.clone()));
        self.attempts.push([0; CLASSES]);
        Some(slot)
    }
}

/// Machines per state of each (project, callback) pair, as a scrape found them: of the
/// pairs with labels of their own by index, and of the others together.
#[derive(Clone, Debug, Default)]
pub struct PairMachines {
    own: Vec<(usize, [u64; STATES])>,
    other: Option<[u64; STATES]>,
}

/// What a scrape reads when it is made, beside what the metrics counted.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Files the core holds, at the wall clock.
    pub files: u64,
    /// Machines per state, in [`StateName::ALL`] order, at the wall clock.
    pub machines: [u64; STATES],
    /// How long the earliest deadline has been due, in seconds (0 if none is).
    pub deadline_lag_seconds: f64,
    /// Machines per (project, callback) ([`Metrics::pair_machines`]).
    pub pair_machines: PairMachines,
    /// The last seq the core folded.
    pub folded_seq: u64,
    /// The last durable seq.
    pub log_seq: u64,
    /// The log's base (0: none).
    pub base_seq: u64,
    /// The sizes on disk, if they could be read.
    pub disk: Option<Disk>,
    /// The index is held in memory (sled hung or failed).
    pub index_in_memory: bool,
}

/// Sizes on disk, as a scrape read them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk {
    /// The log's segments.
    pub log_bytes: u64,
    /// The index (sled).
    pub index_bytes: u64,
    /// Free on the log's file system.
    pub free_bytes: u64,
}

/// Every metric of the dispatcher and the API. Shared (`Arc`) by the driver, the API and the
/// accept loop.
#[derive(Debug)]
pub struct Metrics {
    /// Changes folded.
    pub changes: Counter,
    records: [Counter; RECORD_KINDS.len()],
    /// Records the core ignored (late outcomes and the like).
    pub ignored: Counter,
    attempts: [Counter; CLASSES],
    /// Attempts started and not yet recorded.
    pub in_flight: Gauge,
    /// Attempts waiting for a slot (per origin or in all): part of `in_flight`, not yet on
    /// the wire.
    pub waiting: Gauge,
    /// Checkpoints written.
    pub checkpoints: Counter,
    /// 1 while the log refuses the driver's records (a full disk) and attempts wait.
    pub log_blocked: Gauge,
    /// API connections open now.
    pub connections_open: Gauge,
    /// API connections refused past `--max-connections`.
    pub connections_refused: Counter,
    ack: [Histogram; 2],
    attempt_latency: [Histogram; CLASSES],
    delivery_lag: Histogram,
    pairs: Mutex<Pairs>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(DEFAULT_MAX_SERIES)
    }
}

impl Metrics {
    /// Metrics with at most `max_series` (project, callback) pairs labelled on their own.
    pub fn new(max_series: usize) -> Metrics {
        Metrics {
            changes: Counter::default(),
            records: Default::default(),
            ignored: Counter::default(),
            attempts: Default::default(),
            in_flight: Gauge::default(),
            waiting: Gauge::default(),
            checkpoints: Counter::default(),
            log_blocked: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            ack: [Histogram::new(ACK_BUCKETS), Histogram::new(ACK_BUCKETS)],
            attempt_latency: std::array::from_fn(|_| Histogram::new(ATTEMPT_BUCKETS)),
            delivery_lag: Histogram::new(LAG_BUCKETS),
            pairs: Mutex::new(Pairs {
                max: max_series,
                ..Pairs::default()
            }),
        }
    }

    /// The pairs, whatever a panic elsewhere left: counts are still counts.
    fn pairs(&self) -> MutexGuard<'_, Pairs> {
        self.pairs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one folded record.
    pub fn observe(&self, record: &Record, disposition: Disposition) {
        let kind = match &record.kind {
            RecordKind::ChangeAppended { .. } => {
                self.changes.inc();
                0
            }
            RecordKind::CallbackPut { .. } => 1,
            RecordKind::CallbackRemoved { .. } => 2,
            RecordKind::CallbackPaused { .. } => 3,
            RecordKind::CallbackResumed { .. } => 4,
            RecordKind::CallbackTested { .. } => 5,
            RecordKind::CallbackDisabled { .. } => 6,
            RecordKind::Ticked => 7,
            RecordKind::AttemptFinished(report) => {
                let class = class_index(report.outcome.outcome_class());
                self.attempts[class].inc();
                self.attempt_latency[class].observe(f64::from(report.latency_ms) / 1000.0);
                let mut pairs = self.pairs();
                let machine = &report.machine;
                match pairs.slot(&machine.file.project, &machine.callback) {
                    Some(slot) => pairs.attempts[slot][class] += 1,
                    None => pairs.other[class] += 1,
                }
                8
            }
            RecordKind::RedeliverRequested { .. } => 9,
        };
        self.records[kind].inc();
        if let Disposition::Ignored(_) = disposition {
            self.ignored.inc();
        }
    }

    /// Counts one delivery's lag from its version's change, in milliseconds
    /// ([`crate::change_times::ChangeTimes::fold`]).
    pub fn observe_lag(&self, lag_ms: u64) {
        self.delivery_lag.observe(lag_ms as f64 / 1000.0);
    }

    /// Counts one ack: from the request's arrival to its 202.
    pub fn observe_ack(&self, route: AckRoute, took: Duration) {
        self.ack[route as usize].observe_duration(took);
    }

    /// Machines per state of each (project, callback) pair, from the core's per-pair counts
    /// (`Core::group_counts`): one pass over the pairs, giving labels to new ones while the
    /// bound allows. For a scrape, on the driver's task.
    pub fn pair_machines(
        &self,
        groups: &BTreeMap<ProjectId, BTreeMap<CallbackRef, [u64; STATES]>>,
    ) -> PairMachines {
        let mut pairs = self.pairs();
        let mut out = PairMachines::default();
        for (project, callbacks) in groups {
            for (callback, counts) in callbacks {
                match pairs.slot(project, callback) {
                    Some(slot) => out.own.push((slot, *counts)),
                    None => {
                        let other = out.other.get_or_insert([0; STATES]);
                        for (sum, n) in other.iter_mut().zip(counts) {
                            *sum += n;
                        }
                    }
                }
            }
        }
        out
    }

    /// The scrape's text in `format`: the counted metrics and `scrape`'s.
    pub fn encode(&self, format: Format, scrape: &Scrape) -> String {
        let mut e = Exposition::new(format);
        e.family("cb_changes", Kind::Counter, None, "Changes folded.");
        e.counter("cb_changes", &[], self.changes.get());
        e.family(
            "cb_records",
            Kind::Counter,
            None,
            "Records folded, by kind.",
        );
        for (kind, n) in RECORD_KINDS.iter().zip(&self.records) {
            e.counter("cb_records", &[("kind", *kind)], n.get());
        }
        e.family(
            "cb_ignored_records",
            Kind::Counter,
            None,
            "Records the core ignored.",
        );
        e.counter("cb_ignored_records", &[], self.ignored.get());
        e.family(
            "cb_attempts",
            Kind::Counter,
            None,
            "Attempt outcomes, by class.",
        );
        for (class, n) in OutcomeClass::ALL.iter().zip(&self.attempts) {
            e.counter("cb_attempts", &[("outcome", class.as_str())], n.get());
        }
        gauge(
            &mut e,
            "cb_attempts_in_flight",
            "Attempts the core started whose outcome is not recorded yet (those waiting for a slot included).",
            self.in_flight.get(),
        );
        gauge(
            &mut e,
            "cb_attempts_waiting",
            "Attempts waiting for a slot (an origin's share or the global one): started, not yet sent.",
            self.waiting.get(),
        );
        gauge(
            &mut e,
            "cb_folded_seq",
            "Last sequence number folded by the core.",
            to_i64(scrape.folded_seq),
        );
        gauge(
            &mut e,
            "cb_log_seq",
            "Last durable sequence number in the log.",
            to_i64(scrape.log_seq),
        );
        e.family(
            "cb_machines",
            Kind::Gauge,
            None,
            "Delivery machines the core holds, per state (a sent machine is dropped once its window has passed).",
        );
        for (state, n) in StateName::ALL.iter().zip(scrape.machines) {
            e.gauge("cb_machines", &[("state", state.as_str())], to_i64(n));
        }
        gauge(
            &mut e,
            "cb_files",
            "Files the core holds (one whose machines are all sent and past their window is dropped).",
            to_i64(scrape.files),
        );
        e.family(
            "cb_deadline_lag_seconds",
            Kind::Gauge,
            Some("seconds"),
            "How long the earliest deadline has been due (0 if none is).",
        );
        e.gauge_f64("cb_deadline_lag_seconds", &[], scrape.deadline_lag_seconds);
        e.family(
            "cb_checkpoints",
            Kind::Counter,
            None,
            "Checkpoints written.",
        );
        e.counter("cb_checkpoints", &[], self.checkpoints.get());
        gauge(
            &mut e,
            "cb_log_blocked",
            "1 while the log refuses records (a full disk): attempts wait until it takes them again.",
            self.log_blocked.get(),
        );
        if let Some(disk) = scrape.disk {
            for (name, help, v) in [
                (
                    "cb_log_bytes",
                    "Bytes of the log's segment files on disk.",
                    disk.log_bytes,
                ),
                (
                    "cb_index_bytes",
                    "Bytes of the log's index (sled, rebuilt from the segments when needed) on disk.",
                    disk.index_bytes,
                ),
                (
                    "cb_disk_free_bytes",
                    "Bytes free on the file system that holds the log.",
                    disk.free_bytes,
                ),
            ] {
                e.family(name, Kind::Gauge, Some("bytes"), help);
                e.gauge(name, &[], to_i64(v));
            }
        }
        gauge(
            &mut e,
            "cb_index_in_memory",
            "1 while the log's index is held in memory because sled hung or failed (until cbd restarts, or sled works again).",
            i64::from(scrape.index_in_memory),
        );
        gauge(
            &mut e,
            "cb_base_seq",
            "The log's base: history up to it was removed by retention (0: none).",
            to_i64(scrape.base_seq),
        );
        gauge(
            &mut e,
            "cb_api_connections",
            "API connections open now.",
            self.connections_open.get(),
        );
        e.family(
            "cb_api_connections_refused",
            Kind::Counter,
            None,
            "API connections answered 503 (or closed) because --max-connections were open.",
        );
        e.counter(
            "cb_api_connections_refused",
            &[],
            self.connections_refused.get(),
        );

        e.family(
            "cb_ack_latency_seconds",
            Kind::Histogram,
            Some("seconds"),
            "From a change request's arrival to its 202, sent once the change is durable.",
        );
        for (route, h) in AckRoute::ALL.iter().zip(&self.ack) {
            h.write(
                &mut e,
                "cb_ack_latency_seconds",
                &[("route", route.as_str())],
            );
        }
        // A class that never happened is left out (ten empty histograms would be most of
        // the scrape), and so is the family until one has: a family is announced only with
        // samples under it.
        if self.attempt_latency.iter().any(|h| h.count() > 0) {
            e.family(
                "cb_attempt_latency_seconds",
                Kind::Histogram,
                Some("seconds"),
                "Attempts folded, by outcome class: from the attempt's slot to its outcome (the outcome's latency_ms).",
            );
        }
        for (class, h) in OutcomeClass::ALL.iter().zip(&self.attempt_latency) {
            if h.count() > 0 {
                h.write(
                    &mut e,
                    "cb_attempt_latency_seconds",
                    &[("outcome", class.as_str())],
                );
            }
        }
        e.family(
            "cb_delivery_lag_seconds",
            Kind::Histogram,
            Some("seconds"),
            "Delivered outcomes folded: from the change the attempt carried to the outcome (changes from before cbd started are not timed).",
        );
        self.delivery_lag
            .write(&mut e, "cb_delivery_lag_seconds", &[]);

        self.encode_pairs(&mut e, &scrape.pair_machines);
        e.finish()
    }

    /// The per-(project, callback) families.
    fn encode_pairs(&self, e: &mut Exposition, machines: &PairMachines) {
        // Copied out, so that the text is written without holding up the driver.
        let (names, attempts, other) = {
            let pairs = self.pairs();
            (pairs.names.clone(), pairs.attempts.clone(), pairs.other)
        };
        let labels = |slot: Option<usize>| match slot.and_then(|s| names.get(s)) {
            Some((project, callback)) => (project.as_str().to_owned(), callback.to_string()),
            None => (OTHER.to_owned(), OTHER.to_owned()),
        };
        gauge(
            e,
            "cb_callback_pairs",
            "(project, callback) pairs with series of their own; past --metrics-max-series, new pairs are counted under project and callback \"~other\".",
            to_i64(names.len() as u64),
        );
        let any = |counts: &[u64; CLASSES]| counts.iter().any(|&n| n > 0);
        if attempts.iter().any(any) || any(&other) {
            e.family(
                "cb_callback_attempts",
                Kind::Counter,
                None,
                "Attempt outcomes per project, callback and class.",
            );
        }
        let all = attempts
            .iter()
            .enumerate()
            .map(|(slot, counts)| (Some(slot), counts))
            .chain(std::iter::once((None, &other)));
        for (slot, counts) in all.filter(|(_, counts)| any(counts)) {
            let (project, callback) = labels(slot);
            for (class, &n) in OutcomeClass::ALL.iter().zip(counts) {
                if n > 0 {
                    e.counter(
                        "cb_callback_attempts",
                        &[
                            ("project", project.as_str()),
                            ("callback", callback.as_str()),
                            ("outcome", class.as_str()),
                        ],
                        n,
                    );
                }
            }
        }
        if !machines.own.is_empty() || machines.other.is_some() {
            e.family(
                "cb_callback_machines",
                Kind::Gauge,
                None,
                "Delivery machines per project, callback and state, as of the last record folded (as GET /v1/projects counts them).",
            );
        }
        let all = machines
            .own
            .iter()
            .map(|(slot, counts)| (Some(*slot), counts))
            .chain(machines.other.iter().map(|counts| (None, counts)));
        for (slot, counts) in all {
            let (project, callback) = labels(slot);
            for (state, &n) in StateName::ALL.iter().zip(counts) {
                e.gauge(
                    "cb_callback_machines",
                    &[
                        ("project", project.as_str()),
                        ("callback", callback.as_str()),
                        ("state", state.as_str()),
                    ],
                    to_i64(n),
                );
            }
        }
    }
}

/// A gauge family of one sample, no labels, no unit.
fn gauge(e: &mut Exposition, name: &str, help: &str, value: i64) {
    e.family(name, Kind::Gauge, None, help);
    e.gauge(name, &[], value);
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn class_index(class: OutcomeClass) -> usize {
    OutcomeClass::ALL
        .iter()
        .position(|&c| c == class)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use cb_core::{
        AttemptReport, CallbackName, DeliveryId, Digest, FileId, FileKey, MachineKey, Outcome, Seq,
        Timestamp,
    };

    use super::*;

    fn attempt(project: &str, callback: CallbackRef, outcome: Outcome) -> Record {
        Record {
            seq: Seq(9),
            at: Timestamp(1_000),
            kind: RecordKind::AttemptFinished(AttemptReport {
                machine: MachineKey {
                    file: FileKey {
                        project: ProjectId::new(project).unwrap(),
                        file_id: FileId::new("f").unwrap(),
                    },
                    callback,
                },
                delivery: DeliveryId(Seq(1)),
                attempt: 1,
                version: Seq(1),
                outcome,
                latency_ms: 30,
                digest: Digest::of(b""),
                detail: String::new(),
            }),
        }
    }

    fn hook(name: &str) -> CallbackRef {
        CallbackRef::Project(CallbackName::new(name).unwrap())
    }

    /// Lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn pairs_past_the_bound_are_counted_together_under_a_value_no_id_can_take() {
        assert!(ProjectId::new(OTHER).is_err());
        assert!(CallbackRef::parse(OTHER).is_err());
        let m = Metrics::new(2);
        let delivered = Outcome::Delivered { status: 200 };
        let failed = Outcome::Status {
            status: 503,
            retry_after_secs: None,
        };
        m.observe(&attempt("a", hook("x"), delivered), Disposition::Applied);
        m.observe(&attempt("a", hook("x"), failed), Disposition::Applied);
        let file_cb = CallbackRef::File(CallbackName::new("0").unwrap());
        m.observe(&attempt("a", file_cb, delivered), Disposition::Applied);
        m.observe(&attempt("b", hook("x"), delivered), Disposition::Applied);
        m.observe(&attempt("c", hook("y"), failed), Disposition::Applied);
        let groups = BTreeMap::from([
            (
                ProjectId::new("a").unwrap(),
                BTreeMap::from([(hook("x"), [1, 0, 2, 0, 0])]),
            ),
            (
                ProjectId::new("d").unwrap(),
                BTreeMap::from([(hook("z"), [0, 1, 0, 0, 0])]),
            ),
            (
                ProjectId::new("e").unwrap(),
                BTreeMap::from([(hook("z"), [0, 0, 0, 4, 0])]),
            ),
        ]);
        let scrape = Scrape {
            pair_machines: m.pair_machines(&groups),
            ..Scrape::default()
        };
        let text = m.encode(Format::Text, &scrape);
        assert_eq!(
            lines(&text, "cb_callback_attempts_total"),
            [
                r#"cb_callback_attempts_total{project="a",callback="x",outcome="delivered"} 1"#,
                r#"cb_callback_attempts_total{project="a",callback="x",outcome="5xx"} 1"#,
                r#"cb_callback_attempts_total{project="a",callback="file:0",outcome="delivered"} 1"#,
                r#"cb_callback_attempts_total{project="~other",callback="~other",outcome="delivered"} 1"#,
                r#"cb_callback_attempts_total{project="~other",callback="~other",outcome="5xx"} 1"#,
            ]
        );
        let machines = lines(&text, "cb_callback_machines{");
        assert_eq!(machines.len(), 10, "{machines:#?}");
        assert!(
            machines.contains(&r#"cb_callback_machines{project="a",callback="x",state="sent"} 2"#)
        );
        assert!(machines.contains(
            &r#"cb_callback_machines{project="~other",callback="~other",state="pending"} 1"#
        ));
        assert!(machines.contains(
            &r#"cb_callback_machines{project="~other",callback="~other",state="retrying"} 4"#
        ));
        assert_eq!(lines(&text, "cb_callback_pairs "), ["cb_callback_pairs 2"]);
        // The totals count every pair.
        assert!(text.contains("cb_attempts_total{outcome=\"delivered\"} 3\n"));
        assert!(text.contains("cb_attempt_latency_seconds_count{outcome=\"delivered\"} 3\n"));
        assert!(
            text.contains("cb_attempt_latency_seconds_bucket{outcome=\"5xx\",le=\"0.025\"} 0\n")
        );
        assert!(text.contains("cb_attempt_latency_seconds_bucket{outcome=\"5xx\",le=\"0.05\"} 2\n"));
    }

    #[test]
    fn no_pair_of_its_own_with_a_bound_of_zero() {
        let m = Metrics::new(0);
        m.observe(
            &attempt("a", hook("x"), Outcome::Timeout),
            Disposition::Applied,
        );
        let text = m.encode(Format::OpenMetrics, &Scrape::default());
        assert_eq!(
            lines(&text, "cb_callback_attempts_total"),
            [
                r#"cb_callback_attempts_total{project="~other",callback="~other",outcome="timeout"} 1"#
            ]
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histograms_count_into_the_bucket_at_or_above() {
        let h = Histogram::new(&[0.5, 1.0]);
        for v in [0.1, 0.5, 0.75, 1.0, 7.0, f64::NAN] {
            h.observe(v);
        }
        let (cumulative, sum) = h.read();
        assert_eq!(cumulative, [2, 4, 5]);
        assert_eq!(h.count(), 5);
        assert!((sum - 9.35).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_buckets_increase() {
        for b in [ACK_BUCKETS, ATTEMPT_BUCKETS, LAG_BUCKETS] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert!(b.iter().all(|v| v.is_finite() && *v > 0.0));
        }
    }

    /// Every family announced once and with samples, every sample under its own family, in
    /// both forms, before anything happened and after.
    #[test]
    fn every_sample_sits_under_its_family() {
        let fresh = Metrics::default();
        let m = Metrics::default();
        m.observe(
            &attempt("a", hook("x"), Outcome::Delivered { status: 200 }),
            Disposition::Applied,
        );
        m.observe_lag(1_500);
        m.observe_ack(AckRoute::Batch, Duration::from_millis(3));
        let groups = BTreeMap::from([(
            ProjectId::new("a").unwrap(),
            BTreeMap::from([(hook("x"), [0, 0, 1, 0, 0])]),
        )]);
        let scrape = Scrape {
            disk: Some(Disk::default()),
            pair_machines: m.pair_machines(&groups),
            ..Scrape::default()
        };
        let cases = [
            (&fresh, Format::Text, Scrape::default()),
            (&fresh, Format::OpenMetrics, Scrape::default()),
            (&m, Format::Text, scrape.clone()),
            (&m, Format::OpenMetrics, scrape),
        ];
        for (m, format, scrape) in cases {
            let text = m.encode(format, &scrape);
            let mut families = std::collections::HashSet::new();
            let mut current = String::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').unwrap();
                    assert!(families.insert(name.to_owned()), "{name} twice");
                    let next = text.lines().skip_while(|l| *l != line).nth(1);
                    assert!(
                        next.is_some_and(|l| !l.starts_with("# HELP") && l != "# EOF"),
                        "{format:?}: {name} has no samples"
                    );
                    if kind == "counter" {
                        assert_eq!(name.ends_with("_total"), format == Format::Text, "{line}");
                    }
                    current = name.to_owned();
                } else if !line.starts_with('#') {
                    let name = line.split(['{', ' ']).next().unwrap();
                    let under = name == current
                        || ["_total", "_bucket", "_count", "_sum"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(current.as_str()));
                    assert!(under, "{format:?}: {line} under {current}");
                }
            }
            assert!(families.len() >= 20, "{families:?}");
        }
    }
}
