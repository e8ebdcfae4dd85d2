//! The dispatcher's Prometheus metrics: what the driver folded and what attempts did.
//!
//! Counters are fed by the driver as it folds (so they count durable records, the same
//! ones `cbctl replay` counts) and by attempt tasks; machine states and lag are gauges the
//! API sets from a census when it is scraped.

use cb_core::{Disposition, Record, RecordKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: a record kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `change`, `callback_put`, …
    pub kind: &'static str,
}

/// Label: an attempt outcome class (`delivered`, `5xx`, `timeout`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// See `cb_core::Outcome::class`.
    pub outcome: &'static str,
}

/// Label: a machine state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `coalescing`, `pending`, …
    pub state: &'static str,
}

/// Every metric of the dispatcher. Clones of a metric share its value.
#[derive(Default)]
pub struct Metrics {
    /// Changes folded.
    pub changes: Counter,
    /// Records folded, by kind.
    pub records: Family<KindLabel, Counter>,
    /// Records the core ignored (late outcomes and the like).
    pub ignored: Counter,
    /// Attempt outcomes folded, by class.
    pub attempts: Family<OutcomeLabel, Counter>,
    /// Attempts started and not yet recorded.
    pub in_flight: Gauge,
    /// Attempts waiting for a slot (per origin or in all): part of `in_flight`, not yet on
    /// the wire.
    pub waiting: Gauge,
    /// The last sequence number the core folded.
    pub folded_seq: Gauge,
    /// The last durable sequence number (set at scrape).
    pub log_seq: Gauge,
    /// Machines per state (set at scrape).
    pub machines: Family<StateLabel, Gauge>,
    /// Files the core keeps (set at scrape).
    pub files: Gauge,
    /// How far the earliest deadline is in the past, in seconds (set at scrape; 0 if none).
    pub deadline_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Checkpoints written.
    pub checkpoints: Counter,
    /// 1 while the log refuses the driver's records (a full disk) and attempts wait.
    pub log_blocked: Gauge,
    /// Bytes of the log's segments on disk (set at scrape).
    pub log_bytes: Gauge,
    /// Bytes of the index (sled) on disk (set at scrape).
    pub index_bytes: Gauge,
    /// 1 while the index is held in memory because sled hung or failed (set at scrape).
    pub index_in_memory: Gauge,
    /// Bytes free on the log's file system (set at scrape).
    pub free_bytes: Gauge,
    /// The log's base: the last seq retention removed history up to (0: none; set at
    /// scrape).
    pub base_seq: Gauge,
    /// API connections open now.
    pub connections_open: Gauge,
    /// API connections refused past `--max-connections`.
    pub connections_refused: Counter,
}

impl Metrics {
    /// Registers every metric under the `cb_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cb");
        r.register("changes", "Changes folded", self.changes.clone());
        r.register("records", "Records folded, by kind", self.records.clone());
        r.register(
            "ignored_records",
            "Records the core ignored",
            self.ignored.clone(),
        );
        r.register(
            "attempts",
            "Attempt outcomes, by class",
            self.attempts.clone(),
        );
        r.register(
            "attempts_in_flight",
            "Attempts the core started whose outcome is not recorded yet (those waiting for a slot included)",
            self.in_flight.clone(),
        );
        r.register(
            "attempts_waiting",
            "Attempts waiting for a slot (an origin's share or the global one): started, not yet sent",
            self.waiting.clone(),
        );
        r.register(
            "folded_seq",
            "Last sequence number folded by the core",
            self.folded_seq.clone(),
        );
        r.register(
            "log_seq",
            "Last durable sequence number in the log",
            self.log_seq.clone(),
        );
        r.register(
            "machines",
            "Delivery machines the core holds, per state (a sent machine is dropped once its window has passed)",
            self.machines.clone(),
        );
        r.register(
            "files",
            "Files the core holds (one whose machines are all sent and past their window is dropped)",
            self.files.clone(),
        );
        r.register(
            "deadline_lag_seconds",
            "How long the earliest deadline has been due (0 if none is)",
            self.deadline_lag_seconds.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints written",
            self.checkpoints.clone(),
        );
        r.register(
            "log_blocked",
            "1 while the log refuses records (a full disk): attempts wait until it takes them again",
            self.log_blocked.clone(),
        );
        r.register_with_unit(
            "log",
            "Bytes of the log's segment files on disk",
            prometheus_client::registry::Unit::Bytes,
            self.log_bytes.clone(),
        );
        r.register_with_unit(
            "index",
            "Bytes of the log's index (sled, rebuilt from the segments when needed) on disk",
            prometheus_client::registry::Unit::Bytes,
            self.index_bytes.clone(),
        );
        r.register(
            "index_in_memory",
            "1 while the log's index is held in memory because sled hung or failed (until cbd restarts, or sled works again)",
            self.index_in_memory.clone(),
        );
        r.register_with_unit(
            "disk_free",
            "Bytes free on the file system that holds the log",
            prometheus_client::registry::Unit::Bytes,
            self.free_bytes.clone(),
        );
        r.register(
            "base_seq",
            "The log's base: history up to it was removed by retention (0: none)",
            self.base_seq.clone(),
        );
        r.register(
            "api_connections",
            "API connections open now",
            self.connections_open.clone(),
        );
        r.register(
            "api_connections_refused",
            "API connections answered 503 (or closed) because --max-connections were open",
            self.connections_refused.clone(),
        );
    }

    /// Counts one folded record.
    pub fn observe(&self, record: &Record, disposition: Disposition) {
        let kind = match &record.kind {
            RecordKind::ChangeAppended { .. } => {
                self.changes.inc();
                "change"
            }
            RecordKind::CallbackPut { .. } => "callback_put",
            RecordKind::CallbackRemoved { .. } => "callback_removed",
            RecordKind::CallbackPaused { .. } => "callback_paused",
            RecordKind::CallbackResumed { .. } => "callback_resumed",
            RecordKind::CallbackTested { .. } => "callback_tested",
            RecordKind::CallbackDisabled { .. } => "callback_disabled",
            RecordKind::Ticked => "tick",
            RecordKind::AttemptFinished(report) => {
                self.attempts
                    .get_or_create(&OutcomeLabel {
                        outcome: report.outcome.class(),
                    })
                    .inc();
                "attempt"
            }
            RecordKind::RedeliverRequested { .. } => "redeliver",
        };
        self.records.get_or_create(&KindLabel { kind }).inc();
        if let Disposition::Ignored(_) = disposition {
            self.ignored.inc();
        }
    }
}
