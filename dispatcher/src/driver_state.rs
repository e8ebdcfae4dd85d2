//! The driver's decisions, without I/O: what to append, which attempt to send, when to
//! tick, when to checkpoint, what to do while the log refuses records, how to shut down.
//!
//! [`DriverState`] owns the [`Core`] and the [`Limits`]. It takes inputs — durable records
//! from the log's commit stream ([`DriverState::handle_commit`]), the answers to its own
//! appends ([`DriverState::handle_appended`]), finished attempts
//! ([`DriverState::handle_attempt_done`]), the passing of time
//! ([`DriverState::handle_timeout`]), queries and a shutdown — and hands out [`Output`]s
//! through [`DriverState::poll_output`] and the next moment it wants to be woken through
//! [`DriverState::poll_timeout`], as quinn-proto's `Connection` does. Time arrives as a
//! [`Now`] with every input, so the tokio shell (`driver`) and the simulator (`sim`) drive
//! the very same decisions, one on the machine's clocks, the other on simulated ones.
//!
//! It keeps the core's driving contract (`cb_core` crate docs): every `StartAttempt` is sent
//! once its slot is free ([`Limits`]), every `DisableCallback` is appended as a
//! `CallbackDisabled`, a `Ticked` is appended once the wall clock passes
//! [`Core::next_deadline`] (no sooner than `tick_spacing` after the last), and after a
//! restart [`DriverState::resume`] performs [`Core::in_flight`] again and appends
//! [`Core::owed_disables`].
//!
//! **When the log refuses a record** for now (a full disk), a record the driver owes it (an
//! attempt's outcome, a disable) is kept and offered again every [`RETRY_REFUSED`] until the
//! log takes it, a refused tick is simply tried again, and **no attempt starts** while an
//! outcome could not be recorded: the core's attempts wait in `deferred` until it takes
//! records again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cb_core::{Attempt, AttemptReport, Core, Effect, Outcome, Record, RecordKind, Seq, Timestamp};
use tracing::{error, info, warn};

use crate::change_times::ChangeTimes;
use crate::limits::{Answer, Limits, LimitsConfig, Slot};
use crate::metrics::Metrics;

/// How long the driver waits before offering the log refused records again.
pub const RETRY_REFUSED: Duration = Duration::from_secs(1);

/// How long a shutdown waits for outcomes to be acknowledged by the log.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// A moment as the driver sees it: a monotonic clock (spacing, retries, checkpoints,
/// grace) and the wall clock the core's deadlines are on. The shell reads the machine's
/// clocks; the simulator supplies its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since the driver started.
    pub mono: Duration,
    /// The wall clock, as record timestamps are.
    pub wall: Timestamp,
}

/// The driver's settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The least time between two ticks.
    pub tick_spacing: Duration,
    /// Offer a checkpoint after this many records folded...
    pub checkpoint_every_records: u64,
    /// ...or after this long with any record folded.
    pub checkpoint_interval: Duration,
    /// How long a shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
    /// Bounds on attempts in flight.
    pub limits: LimitsConfig,
}

/// Names one of the driver's own appends, so its answer finds what it was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppendId(pub u64);

/// How an append is to be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Synced as soon as possible.
    Now,
    /// May wait a moment to share an fdatasync (outcomes: nothing waits on them).
    Patient,
}

/// Why the log did not take an append (or give what was asked of it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It may take it later (a full disk, a transient I/O error): kept and offered again.
    #[error("{0}")]
    ForNow(String),
    /// It never will: the driver stops rather than let the core and the log drift apart.
    #[error("{0}")]
    Fatal(String),
}

/// What the driver asks its shell to do.
#[derive(Debug)]
pub enum Output<Q> {
    /// Append `records` as one group; answer with [`DriverState::handle_appended`] and `id`.
    Append {
        /// Names this append.
        id: AppendId,
        /// The records.
        /// The records (the driver appends no change: no snapshot ever goes with them).
        records: Vec<RecordKind>,
        /// Whether it may wait to share a sync.
        patience: Patience,
    },
    /// Perform `attempt`; answer with [`DriverState::handle_attempt_done`] and `slot`.
    Send {
        /// What to send.
        attempt: Attempt,
        /// The slot it holds.
        slot: Slot,
    },
    /// Offer a checkpoint of [`DriverState::core`]; if it was taken, call
    /// [`DriverState::checkpoint_taken`].
    Checkpoint,
    /// Answer a query with [`DriverState::core`]: the core has folded what it waited for.
    Answer(Q),
    /// The grace period is over: cancel the attempts still being sent (they are performed
    /// again after the next start: their outcomes were never logged).
    CancelAttempts,
    /// The shutdown is done here: fold what the log has, write the final checkpoint, stop.
    Stopped,
    /// The log refused a record the driving contract requires; stop with this reason.
    Fatal(String),
}

/// What one of the driver's appends was for.
#[derive(Debug)]
enum Purpose {
    Tick,
    Disable(RecordKind),
    Outcome(RecordKind),
    /// Refused records offered again, and how many of them are outcomes.
    Owed {
        records: Vec<RecordKind>,
        outcomes: usize,
    },
}

/// Whether the log takes the driver's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogState {
    Taking,
    /// It refused one since `since` (monotonic); owed records wait in `owed` and are
    /// offered again at `retry_at`.
    Refusing {
        since: Duration,
        retry_at: Duration,
    },
}

/// Where a shutdown is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new attempts; those being sent have until `until`.
    Draining {
        until: Duration,
    },
    /// Waiting (until `until`) for outcomes to be acknowledged.
    Settling {
        until: Duration,
    },
    Stopped,
}

/// See the module docs.
pub struct DriverState<Q> {
    core: Core,
    limits: Limits,
    config: DriverConfig,
    metrics: Arc<Metrics>,
    /// When the changes folded were appended, for the delivery lag.
    change_times: ChangeTimes,
    next_id: u64,
    /// The driver's appends not answered yet.
    appends: HashMap<AppendId, Purpose>,
    /// A `Ticked` was appended and has not come back yet.
    tick_outstanding: bool,
    last_tick: Option<Duration>,
    log: LogState,
    /// Whether the log says an append now would be taken (set by the shell).
    writable: bool,
    /// Records the log refused that the driver still owes it, oldest first, and how many of
    /// them are attempt outcomes.
    owed: Vec<RecordKind>,
    owed_outcomes: usize,
    /// An append of owed records is in flight.
    retrying: bool,
    /// Attempts the core started while their outcomes could not be recorded.
    deferred: VecDeque<Attempt>,
    /// Outcomes handed to the log and not acknowledged (owed ones included).
    unrecorded: usize,
    /// Queries waiting for the core to fold up to their seq, in arrival order.
    queries: VecDeque<(Seq, Q)>,
    folded_since_checkpoint: u64,
    last_checkpoint: Duration,
    phase: Phase,
    out: VecDeque<Output<Q>>,
}

impl<Q> DriverState<Q> {
    /// A driver for `core` (restored, or new), at `now`; `folded` records were folded since
    /// the checkpoint it was restored from.
    pub fn new(
        core: Core,
        config: DriverConfig,
        metrics: Arc<Metrics>,
        folded: u64,
        now: Now,
    ) -> Self {
        DriverState {
            core,
            limits: Limits::new(config.limits),
            config,
            metrics,
            change_times: ChangeTimes::default(),
            next_id: 0,
            appends: HashMap::new(),
            tick_outstanding: false,
            last_tick: None,
            log: LogState::Taking,
            writable: true,
            owed: Vec::new(),
            owed_outcomes: 0,
            retrying: false,
            deferred: VecDeque::new(),
            unrecorded: 0,
            queries: VecDeque::new(),
            folded_since_checkpoint: folded,
            last_checkpoint: now.mono,
            phase: Phase::Running,
            out: VecDeque::new(),
        }
    }

    /// The core, for queries and checkpoints.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The limits, for reports.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Attempts the core started whose outcome is not recorded yet: waiting for a slot,
    /// being sent, or their outcome on its way to the log.
    pub fn attempts_in_flight(&self) -> usize {
        self.limits.waiting() + self.limits.in_flight() + self.unrecorded
    }

    /// Attempts deferred while the log refuses records.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// True while the log refuses the driver's records.
    pub fn log_blocked(&self) -> bool {
        matches!(self.log, LogState::Refusing { .. })
    }

    /// True once the shutdown is done.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Tells the driver whether the log would take an append now (the store's health).
    pub fn set_log_writable(&mut self, writable: bool) {
        self.writable = writable;
    }

    /// Driving contract step 5: what was in flight at the crash is attempted again, and
    /// disables that were owed are appended. Returns how many attempts resumed.
    pub fn resume(&mut self, now: Now) -> usize {
        let in_flight = self.core.in_flight();
        let resumed = in_flight.len();
        if resumed > 0 {
            info!(
                attempts = resumed,
                "performing attempts that were in flight again"
            );
        }
        for attempt in in_flight {
            self.perform(now, Effect::StartAttempt(attempt));
        }
        for effect in self.core.owed_disables() {
            self.perform(now, effect);
        }
        self.publish();
        resumed
    }

    /// Folds a durable group of records, in log order, and performs what they cause.
    pub fn handle_commit(&mut self, now: Now, batch: &[Record]) {
        let mut effects = Vec::new();
        for record in batch {
            if self.core.last_seq().is_some_and(|s| record.seq <= s) {
                // Already in the restored state.
                continue;
            }
            let disposition = self.core.apply(record, &mut effects);
            self.metrics.observe(record, disposition);
            if let Some(lag_ms) = self.change_times.fold(record) {
                self.metrics.observe_lag(lag_ms);
            }
            if matches!(record.kind, RecordKind::Ticked) {
                self.tick_outstanding = false;
            }
            for effect in effects.drain(..) {
                self.perform(now, effect);
            }
            self.folded_since_checkpoint += 1;
        }
        if self.log_blocked() && !batch.is_empty() {
            // Something was appended: the log may take the driver's records again.
            self.unblock(now);
        }
        self.answer_queries();
        if self.folded_since_checkpoint >= self.config.checkpoint_every_records {
            self.offer_checkpoint(now);
        }
        self.publish();
    }

    /// The log's answer to the driver's append `id`.
    pub fn handle_appended(&mut self, now: Now, id: AppendId, result: Result<(), Refusal>) {
        let Some(purpose) = self.appends.remove(&id) else {
            return;
        };
        match (purpose, result) {
            (Purpose::Tick, Ok(())) => {}
            (Purpose::Tick, Err(Refusal::ForNow(why))) => {
                self.tick_outstanding = false;
                self.blocked(now, &why);
            }
            (Purpose::Disable(_), Ok(())) => {}
            (Purpose::Outcome(_), Ok(())) => self.unrecorded -= 1,
            (Purpose::Owed { outcomes, .. }, Ok(())) => {
                self.unrecorded -= outcomes;
                self.retrying = false;
                self.unblock(now);
            }
            (Purpose::Disable(record), Err(Refusal::ForNow(why))) => {
                self.owed.push(record);
                self.blocked(now, &why);
            }
            (Purpose::Outcome(record), Err(Refusal::ForNow(why))) => {
                // Counted in `unrecorded` until the log takes it.
                self.owed.push(record);
                self.owed_outcomes += 1;
                self.blocked(now, &why);
            }
            (Purpose::Owed { records, outcomes }, Err(Refusal::ForNow(why))) => {
                self.retrying = false;
                self.owed.extend(records);
                self.owed_outcomes += outcomes;
                self.blocked(now, &why);
            }
            (purpose, Err(Refusal::Fatal(why))) => {
                let what = match purpose {
                    Purpose::Tick => "a tick",
                    Purpose::Disable(_) => "a disable",
                    Purpose::Outcome(_) => {
                        self.unrecorded -= 1;
                        "an outcome"
                    }
                    Purpose::Owed { outcomes, .. } => {
                        self.unrecorded -= outcomes;
                        "refused records again"
                    }
                };
                error!(reason = %why, "stopping: the log refused a record the driver needs");
                self.out
                    .push_back(Output::Fatal(format!("appending {what}: {why}")));
            }
        }
        self.settle_shutdown(now);
        self.publish();
    }

    /// An attempt handed out with [`Output::Send`] finished: its slot is given back, and its
    /// outcome is appended.
    pub fn handle_attempt_done(&mut self, now: Now, slot: Slot, report: AttemptReport) {
        let answer = match report.outcome {
            Outcome::Timeout | Outcome::Connect | Outcome::Closed | Outcome::Tls => {
                Answer::Unanswered
            }
            _ => Answer::Answered,
        };
        self.limits.finish(slot, answer);
        self.unrecorded += 1;
        let record = RecordKind::AttemptFinished(report);
        // Patiently: nothing waits on an outcome being durable, and outcomes sharing an
        // fdatasync is what keeps a drain's rate up on a virtual disk.
        self.append(record.clone(), Purpose::Outcome(record), Patience::Patient);
        self.send_admitted(now);
        if let Phase::Draining { .. } = self.phase {
            if self.limits.in_flight() == 0 {
                self.settle(now);
            }
        }
        self.publish();
    }

    /// Time has reached `now`: ticks, offers refused records again, checkpoints, ends a
    /// grace period, as due.
    pub fn handle_timeout(&mut self, now: Now) {
        match self.phase {
            Phase::Draining { until } if now.mono >= until => {
                warn!(
                    left = self.limits.in_flight(),
                    "grace period over: those attempts will be performed again at the next start"
                );
                self.out.push_back(Output::CancelAttempts);
                self.settle(now);
            }
            Phase::Settling { until } if now.mono >= until => {
                warn!(
                    unrecorded = self.unrecorded,
                    "outcomes still unacknowledged by the log at shutdown"
                );
                self.stop();
            }
            _ => {}
        }
        match self.log {
            LogState::Refusing { since, retry_at } => {
                if now.mono >= retry_at {
                    // At a steady pace, not at every deadline.
                    self.log = LogState::Refusing {
                        since,
                        retry_at: now.mono + RETRY_REFUSED,
                    };
                    self.unblock(now);
                }
            }
            LogState::Taking => {
                if self.tick_due_at(now).is_some_and(|at| now.mono >= at) {
                    self.tick(now);
                }
            }
        }
        if self.checkpoint_due_at().is_some_and(|at| now.mono >= at) {
            self.offer_checkpoint(now);
        }
        self.publish();
    }

    /// Runs `q` once the core has folded `min_seq` (what was durable when it was asked:
    /// read-your-writes for an acknowledged append).
    pub fn query(&mut self, min_seq: Seq, q: Q) {
        self.queries.push_back((min_seq, q));
        self.answer_queries();
    }

    /// Starts a shutdown: no new attempts; attempts being sent get the grace period; their
    /// outcomes are made durable; then [`Output::Stopped`].
    pub fn shutdown(&mut self, now: Now) {
        if self.phase != Phase::Running {
            return;
        }
        let dropped = self.limits.drop_queued() + self.deferred.len();
        self.deferred.clear();
        info!(
            in_flight = self.limits.in_flight(),
            not_started = dropped,
            grace_secs = self.config.shutdown_grace.as_secs_f32(),
            "shutting down: waiting for attempts in flight"
        );
        self.phase = Phase::Draining {
            until: now.mono + self.config.shutdown_grace,
        };
        if self.limits.in_flight() == 0 {
            self.settle(now);
        }
        self.publish();
    }

    /// The shell took the checkpoint [`Output::Checkpoint`] asked for.
    pub fn checkpoint_taken(&mut self, now: Now) {
        self.folded_since_checkpoint = 0;
        self.last_checkpoint = now.mono;
    }

    /// Records folded since the last checkpoint taken.
    pub fn folded_since_checkpoint(&self) -> u64 {
        self.folded_since_checkpoint
    }

    /// What the shell is to do next.
    pub fn poll_output(&mut self) -> Option<Output<Q>> {
        self.out.pop_front()
    }

    /// Debug aid for the simulator.
    #[doc(hidden)]
    pub fn debug_timeouts(&self, now: Now) -> String {
        format!(
            "phase {:?} log {:?} tick {:?} outstanding {} retrying {} checkpoint {:?} deadline {:?} wall {:?}",
            self.phase,
            self.log,
            self.tick_due_at(now),
            self.tick_outstanding,
            self.retrying,
            self.checkpoint_due_at(),
            self.core.next_deadline(),
            now.wall
        )
    }

    /// When (monotonic) the driver wants [`DriverState::handle_timeout`], if ever.
    pub fn poll_timeout(&self, now: Now) -> Option<Duration> {
        let phase = match self.phase {
            Phase::Draining { until } | Phase::Settling { until } => Some(until),
            Phase::Running | Phase::Stopped => None,
        };
        let log = match self.log {
            LogState::Refusing { retry_at, .. } => Some(retry_at),
            LogState::Taking => self.tick_due_at(now),
        };
        [phase, log, self.checkpoint_due_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the next tick is due: the core's next deadline converted to monotonic time
    /// at the moment of asking (a tick stamped a hair early fires nothing and the driver
    /// waits again), no sooner than `tick_spacing` after the previous tick.
    fn tick_due_at(&self, now: Now) -> Option<Duration> {
        if self.tick_outstanding || self.retrying || self.phase == Phase::Stopped {
            return None;
        }
        let deadline = self.core.next_deadline()?;
        let mut at = now.mono + Duration::from_millis(deadline.0.saturating_sub(now.wall.0));
        if let Some(last) = self.last_tick {
            at = at.max(last + self.config.tick_spacing);
        }
        Some(at)
    }

    fn checkpoint_due_at(&self) -> Option<Duration> {
        if self.folded_since_checkpoint == 0 || self.phase != Phase::Running {
            return None;
        }
        Some(self.last_checkpoint + self.config.checkpoint_interval)
    }

    /// Asks for a checkpoint. The interval counts from the offer, taken or not: a writer
    /// still busy with the last one is asked again an interval later, not at every turn.
    fn offer_checkpoint(&mut self, now: Now) {
        self.last_checkpoint = now.mono;
        if self.core.last_seq().is_some()
            && !self.out.iter().any(|o| matches!(o, Output::Checkpoint))
        {
            self.out.push_back(Output::Checkpoint);
        }
    }

    fn answer_queries(&mut self) {
        let folded = self.core.last_seq().unwrap_or(Seq(0));
        while self.queries.front().is_some_and(|(min, _)| *min <= folded) {
            let (_, q) = self.queries.pop_front().expect("checked");
            self.out.push_back(Output::Answer(q));
        }
    }

    fn perform(&mut self, now: Now, effect: Effect) {
        match effect {
            Effect::StartAttempt(attempt) => {
                if self.phase != Phase::Running {
                    // Left in flight in the log: the next start performs it.
                    return;
                }
                if !self.can_record() {
                    // Its outcome could not be recorded: it starts when the log takes records.
                    self.deferred.push_back(attempt);
                    self.blocked(now, "the disk has no room for the outcomes of attempts");
                    return;
                }
                self.limits.submit(attempt);
                self.send_admitted(now);
            }
            Effect::DisableCallback { machine, cause } => {
                warn!(%machine, cause = cause.0, "receiver answered 410 Gone: disabling the callback");
                let record = RecordKind::CallbackDisabled { machine, cause };
                self.append(record.clone(), Purpose::Disable(record), Patience::Now);
            }
            Effect::WakeAt { .. } => {
                // `poll_timeout` asks the core for its next deadline every time.
            }
        }
    }

    /// Hands out the attempts that hold their slots — unless their outcomes could not be
    /// recorded now: then they keep their slots and go once the log takes records again
    /// (`unblock`).
    fn send_admitted(&mut self, now: Now) {
        if !self.can_record() {
            if self.limits.has_admitted() {
                self.blocked(now, "the disk has no room for the outcomes of attempts");
            }
            return;
        }
        while let Some((attempt, slot)) = self.limits.poll_admitted() {
            self.out.push_back(Output::Send { attempt, slot });
        }
    }

    fn append(&mut self, record: RecordKind, purpose: Purpose, patience: Patience) {
        let id = self.next_append_id();
        self.appends.insert(id, purpose);
        self.out.push_back(Output::Append {
            id,
            records: vec![record],
            patience,
        });
    }

    fn next_append_id(&mut self) -> AppendId {
        self.next_id += 1;
        AppendId(self.next_id)
    }

    fn tick(&mut self, now: Now) {
        self.tick_outstanding = true;
        self.last_tick = Some(now.mono);
        self.append(RecordKind::Ticked, Purpose::Tick, Patience::Now);
    }

    /// True if an attempt started now could have its outcome recorded.
    fn can_record(&self) -> bool {
        self.log == LogState::Taking && self.owed.is_empty() && self.writable
    }

    /// The log refused a record of the driver's: say so once, and try again later.
    fn blocked(&mut self, now: Now, why: &str) {
        if self.log == LogState::Taking {
            warn!(
                reason = %why,
                owed = self.owed.len(),
                "the log refuses records: attempts wait, and refused records are offered again every second"
            );
            self.log = LogState::Refusing {
                since: now.mono,
                retry_at: now.mono + RETRY_REFUSED,
            };
        }
    }

    /// Offers the owed records to the log again; once none is owed and the log can take
    /// more, starts the attempts that waited.
    fn unblock(&mut self, now: Now) {
        if self.retrying {
            return;
        }
        if !self.owed.is_empty() {
            self.retrying = true;
            let records = std::mem::take(&mut self.owed);
            let outcomes = std::mem::take(&mut self.owed_outcomes);
            let id = self.next_append_id();
            self.out.push_back(Output::Append {
                id,
                records: records.clone(),
                patience: Patience::Now,
            });
            self.appends.insert(id, Purpose::Owed { records, outcomes });
            return;
        }
        if !self.writable {
            // Still no room for what the attempts would record: keep waiting.
            self.blocked(now, "the disk has no room for the outcomes of attempts");
            return;
        }
        if let LogState::Refusing { since, .. } = self.log {
            info!(
                after_secs = now.mono.saturating_sub(since).as_secs_f32(),
                waiting_attempts = self.deferred.len(),
                "the log takes records again"
            );
            self.log = LogState::Taking;
        }
        if self.phase == Phase::Running {
            while let Some(attempt) = self.deferred.pop_front() {
                self.limits.submit(attempt);
            }
            self.send_admitted(now);
        }
    }

    /// Attempts are done (or cancelled): offer owed outcomes once more, then wait for the
    /// log to acknowledge them.
    fn settle(&mut self, now: Now) {
        if !matches!(self.phase, Phase::Running | Phase::Draining { .. }) {
            return;
        }
        self.phase = Phase::Settling {
            until: now.mono + SETTLE_LIMIT,
        };
        if !self.owed.is_empty() {
            self.retrying = false;
            self.unblock(now);
        }
        self.settle_shutdown(now);
    }

    fn settle_shutdown(&mut self, _now: Now) {
        if let Phase::Settling { .. } = self.phase {
            let outcomes_pending = self
                .appends
                .values()
                .any(|p| matches!(p, Purpose::Outcome(_) | Purpose::Owed { .. }));
            if !outcomes_pending {
                self.stop();
            }
        }
    }

    fn stop(&mut self) {
        if self.phase != Phase::Stopped {
            self.phase = Phase::Stopped;
            self.out.push_back(Output::Stopped);
        }
    }

    /// Sets the gauges that mirror the driver's state.
    fn publish(&self) {
        let m = &self.metrics;
        m.in_flight.set(self.attempts_in_flight() as i64);
        m.waiting.set(self.limits.waiting() as i64);
        m.log_blocked.set(i64::from(self.log_blocked()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cb_core::{
        Callback, CallbackName, CallbackRef, Digest, EventKind, FileId, FileKey, MachineKey,
        ProjectId,
    };

    const BASE_WALL: u64 = 1_700_000_000_000;

    fn at(ms: u64) -> Now {
        Now {
            mono: Duration::from_millis(ms),
            wall: Timestamp(BASE_WALL + ms),
        }
    }

    fn config() -> DriverConfig {
        DriverConfig {
            tick_spacing: Duration::from_millis(10),
            checkpoint_every_records: 1_000_000,
            checkpoint_interval: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            limits: LimitsConfig {
                global: 64,
                per_origin: 8,
            },
        }
    }

    /// A driver state over an in-memory log that takes every append at once (or refuses
    /// them while `refusing`), with the test playing the shell.
    struct Harness {
        state: DriverState<u32>,
        log: Vec<Record>,
        now: Now,
        /// Appends not answered yet, in order.
        appends: Vec<(AppendId, Vec<RecordKind>)>,
        sends: Vec<(Attempt, Slot)>,
        answered: Vec<u32>,
        checkpoints: usize,
        cancelled: bool,
        stopped: bool,
        fatal: Option<String>,
    }

    impl Harness {
        fn new() -> Harness {
            let now = at(0);
            Harness {
                state: DriverState::new(Core::new(), config(), Arc::default(), 0, now),
                log: Vec::new(),
                now,
                appends: Vec::new(),
                sends: Vec::new(),
                answered: Vec::new(),
                checkpoints: 0,
                cancelled: false,
                stopped: false,
                fatal: None,
            }
        }

        fn project() -> ProjectId {
            ProjectId::new("p").unwrap()
        }

        fn file(id: u32) -> FileKey {
            FileKey::new(Self::project(), FileId::new(&id.to_string()).unwrap())
        }

        /// Appends `kinds` as someone else would (the API) and feeds the commit.
        fn commit(&mut self, kinds: Vec<RecordKind>) {
            let mut records = Vec::new();
            for kind in kinds {
                let record = Record {
                    seq: Seq(self.log.len() as u64 + 1),
                    at: self.now.wall,
                    kind,
                };
                self.log.push(record.clone());
                records.push(record);
            }
            self.state.handle_commit(self.now, &records);
            self.collect();
        }

        fn put_callback(&mut self, url: &str) {
            let callback = Callback::from_json(&format!(
                r#"{{"url":"{url}","window_secs":2,"backoff_secs":[1]}}"#
            ))
            .unwrap();
            self.commit(vec![RecordKind::CallbackPut {
                project: Self::project(),
                name: CallbackName::new("site").unwrap(),
                callback: Arc::new(callback),
            }]);
        }

        fn change(&mut self, file: u32) {
            self.commit(vec![RecordKind::ChangeAppended {
                file: Self::file(file),
                event: EventKind::Uploaded,
                callbacks: None,
            }]);
        }

        fn collect(&mut self) {
            while let Some(output) = self.state.poll_output() {
                match output {
                    Output::Append { id, records, .. } => self.appends.push((id, records)),
                    Output::Send { attempt, slot } => self.sends.push((attempt, slot)),
                    Output::Checkpoint => {
                        self.checkpoints += 1;
                        self.state.checkpoint_taken(self.now);
                    }
                    Output::Answer(q) => self.answered.push(q),
                    Output::CancelAttempts => self.cancelled = true,
                    Output::Stopped => self.stopped = true,
                    Output::Fatal(why) => self.fatal = Some(why),
                }
            }
        }

        /// The log takes (`None`) or refuses every append the driver made so far, and the
        /// records taken come back through the commit stream.
        fn answer_appends(&mut self, refusal: Option<Refusal>) {
            for (id, records) in std::mem::take(&mut self.appends) {
                match &refusal {
                    Some(r) => self.state.handle_appended(self.now, id, Err(r.clone())),
                    None => {
                        self.state.handle_appended(self.now, id, Ok(()));
                        self.commit(records);
                    }
                }
                self.collect();
            }
        }

        /// Moves time to the state's next timeout (at most to `limit` ms) and handles it.
        fn advance(&mut self, limit: u64) -> bool {
            let Some(due) = self.state.poll_timeout(self.now) else {
                return false;
            };
            if due > Duration::from_millis(limit) {
                return false;
            }
            self.now = at(due.as_millis() as u64);
            self.state.handle_timeout(self.now);
            self.collect();
            true
        }

        /// Finishes the attempts being sent with `outcome`.
        fn finish_sends(&mut self, outcome: Outcome) {
            for (attempt, slot) in std::mem::take(&mut self.sends) {
                let report = AttemptReport::of(attempt, outcome, 1, Digest::of(b""));
                self.state.handle_attempt_done(self.now, slot, report);
                self.collect();
            }
        }

        fn state_of(&self, file: u32) -> Option<cb_core::StateName> {
            let key = MachineKey {
                file: Self::file(file),
                callback: CallbackRef::Project(CallbackName::new("site").unwrap()),
            };
            self.state.core().machine(&key).map(|m| m.state.name())
        }
    }

    #[test]
    fn a_change_is_sent_after_its_window_and_its_outcome_appended() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.change(1);
        assert_eq!(h.state.poll_timeout(h.now), Some(Duration::from_secs(2)));
        assert!(h.advance(5_000));
        assert_eq!(h.appends.len(), 1, "a tick once the window passed");
        h.answer_appends(None);
        assert_eq!(h.sends.len(), 1);
        assert_eq!(h.state.attempts_in_flight(), 1);
        h.finish_sends(Outcome::Delivered { status: 200 });
        assert_eq!(
            h.state.attempts_in_flight(),
            1,
            "until its outcome is durable"
        );
        h.answer_appends(None);
        assert_eq!(h.state.attempts_in_flight(), 0);
        assert_eq!(h.state_of(1), Some(cb_core::StateName::Sent));
    }

    #[test]
    fn ticks_are_spaced_and_one_is_outstanding_at_a_time() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.change(1);
        h.now = at(1_995);
        h.change(2);
        assert!(h.advance(2_000));
        assert_eq!(h.appends.len(), 1);
        assert!(
            !h.advance(10_000),
            "no second tick while the first is outstanding"
        );
        h.answer_appends(None);
        // File 2's deadline is at 3995: the next tick waits for it, spacing is no issue.
        assert_eq!(
            h.state.poll_timeout(h.now),
            Some(Duration::from_millis(3_995))
        );
        // A deadline due at once still waits `tick_spacing` after the last tick.
        h.now = at(2_001);
        h.change(3);
        let mut h2 = Harness::new();
        h2.put_callback("http://r.example/cb");
        h2.change(1);
        h2.now = at(1_999);
        h2.change(2);
        h2.now = at(2_000);
        h2.state.handle_timeout(h2.now);
        h2.collect();
        h2.answer_appends(None);
        // File 2 was due at 3999; ask from just past it: spacing from the tick at 2000 is
        // long over, so the tick is due at once.
        h2.now = at(4_500);
        assert_eq!(
            h2.state.poll_timeout(h2.now),
            Some(Duration::from_millis(4_500))
        );
    }

    #[test]
    fn a_full_disk_defers_attempts_and_offers_refused_outcomes_again() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.change(1);
        h.change(2);
        h.advance(5_000);
        h.answer_appends(None);
        assert_eq!(h.sends.len(), 2);
        h.finish_sends(Outcome::Delivered { status: 200 });
        h.answer_appends(Some(Refusal::ForNow("no space left".into())));
        assert!(h.state.log_blocked());
        assert_eq!(h.state.attempts_in_flight(), 2, "refused outcomes are owed");
        // A new change's attempt waits while outcomes cannot be recorded.
        h.change(3);
        h.now = at(h.now.mono.as_millis() as u64 + 2_000);
        h.state.handle_timeout(h.now);
        h.collect();
        // The retry of the owed outcomes went out, not a tick.
        assert_eq!(h.appends.len(), 1);
        assert_eq!(h.appends[0].1.len(), 2);
        h.answer_appends(Some(Refusal::ForNow("no space left".into())));
        assert!(h.sends.is_empty());
        let retry = h.state.poll_timeout(h.now).unwrap();
        assert!(retry > h.now.mono && retry <= h.now.mono + RETRY_REFUSED);
        h.now = at(retry.as_millis() as u64);
        h.state.handle_timeout(h.now);
        h.collect();
        h.answer_appends(None);
        assert!(!h.state.log_blocked());
        let outcomes = h
            .log
            .iter()
            .filter(|r| matches!(r.kind, RecordKind::AttemptFinished(_)))
            .count();
        assert_eq!(outcomes, 2, "each refused outcome recorded once");
        // File 3's deadline passed meanwhile: its attempt starts now that the log takes
        // records (the outcomes' own time fired it, or a tick does).
        h.advance(10_000);
        h.answer_appends(None);
        assert_eq!(h.sends.len(), 1);
    }

    #[test]
    fn no_attempt_starts_while_the_log_says_it_cannot_write() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.change(1);
        h.state.set_log_writable(false);
        h.advance(5_000);
        h.answer_appends(None);
        assert!(h.sends.is_empty());
        assert_eq!(h.state.deferred(), 1);
        h.state.set_log_writable(true);
        let retry = h.state.poll_timeout(h.now).unwrap();
        h.now = at(retry.as_millis() as u64);
        h.state.handle_timeout(h.now);
        h.collect();
        assert_eq!(h.sends.len(), 1);
    }

    #[test]
    fn a_fatal_refusal_stops_the_driver() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.change(1);
        h.advance(5_000);
        h.answer_appends(Some(Refusal::Fatal("the log is closed".into())));
        assert!(h.fatal.unwrap().contains("the log is closed"));
    }

    #[test]
    fn queries_wait_for_the_seq_they_were_asked_at() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        h.state.query(Seq(1), 7);
        h.state.query(Seq(2), 8);
        h.collect();
        assert_eq!(h.answered, vec![7]);
        h.change(1);
        assert_eq!(h.answered, vec![7, 8]);
    }

    #[test]
    fn a_dead_origin_holds_data_not_tasks() {
        let mut h = Harness::new();
        h.put_callback("http://dead.example/cb");
        for f in 0..1_000 {
            h.change(f);
        }
        h.advance(5_000);
        h.answer_appends(None);
        assert_eq!(
            h.sends.len(),
            crate::limits::STARTING_SLOTS,
            "only the starting share is handed out"
        );
        assert_eq!(h.state.attempts_in_flight(), 1_000);
        assert_eq!(h.state.limits().waiting(), 998);
    }

    #[test]
    fn shutdown_drops_queued_attempts_waits_for_those_sent_then_stops() {
        let mut h = Harness::new();
        h.put_callback("http://r.example/cb");
        for f in 0..5 {
            h.change(f);
        }
        h.advance(5_000);
        h.answer_appends(None);
        assert_eq!(h.sends.len(), crate::limits::STARTING_SLOTS);
        h.state.shutdown(h.now);
        h.collect();
        assert!(!h.stopped);
        // One attempt comes back within the grace period; its outcome is recorded.
        let (attempt, slot) = h.sends.remove(0);
        h.sends.truncate(0);
        let report = AttemptReport::of(
            attempt,
            Outcome::Delivered { status: 200 },
            1,
            Digest::of(b""),
        );
        h.state.handle_attempt_done(h.now, slot, report);
        h.collect();
        assert!(h.advance(h.now.mono.as_millis() as u64 + 10_000));
        assert!(h.cancelled, "the grace period ended with one attempt left");
        assert!(!h.stopped, "an outcome is on its way to the log");
        h.answer_appends(None);
        assert!(h.stopped);
        h.change(9);
        assert!(h.sends.is_empty(), "nothing starts after a shutdown");
    }

    #[test]
    fn checkpoints_are_offered_by_count_and_by_time() {
        let mut h = Harness::new();
        h.state.config.checkpoint_every_records = 3;
        h.put_callback("http://r.example/cb");
        h.change(1);
        assert_eq!(h.checkpoints, 0);
        h.change(2);
        assert_eq!(h.checkpoints, 1);
        h.change(3);
        let due = h.state.poll_timeout(h.now).unwrap();
        assert_eq!(due, Duration::from_millis(2_000), "the window first");
        h.now = at(301_000);
        h.state.handle_timeout(h.now);
        h.collect();
        assert_eq!(h.checkpoints, 2, "and one after the interval");
    }
}
