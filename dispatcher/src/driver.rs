//! The driver: the one task that owns the [`Core`], folds every durable record into it in
//! log order, and performs the effects it hands out.
//!
//! Records reach the driver from the store's commit hook (a channel fed on the store's sync
//! thread, in log order), whoever appended them: the HTTP API, attempt tasks, or the driver
//! itself. So the driver never folds a record that is not durable, and folding is the only
//! way the core learns anything — exactly what `cbctl replay` does later with the same log.
//! The driver keeps the core's driving contract (`cb_core` crate docs): it performs every
//! `StartAttempt` on its own task, appends a `CallbackDisabled` for every `DisableCallback`,
//! appends a `Ticked` when the wall clock passes [`Core::next_deadline`], and after a restart
//! performs [`Core::in_flight`] again and appends [`Core::owed_disables`].
//!
//! **When the log refuses a record** (a full disk: `cb_store::Error::DiskFull`, or another
//! I/O error), the driver does not stop: a record it owes the log (an attempt's outcome, a
//! disable) is kept and appended again every [`RETRY_REFUSED`] until the log takes it, a
//! refused tick is simply tried again, and **no attempt starts** while an outcome could not
//! be recorded — the core's attempts wait in the driver until the log takes records again.
//!
//! Others read the core through [`Handle::query`]: a closure run on the driver's task once
//! the core has folded everything durable when the query was made (read-your-writes for an
//! API client whose append was acknowledged).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cb_core::{Core, Effect, Record, RecordKind, Seq};
use cb_store::{wall_clock, Appended, CheckpointWriter, Input, Store, StoreOptions};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::deliver::{Deliverer, DeliveryConfig};
use crate::metrics::Metrics;

/// Everything the dispatcher needs to start.
#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// The data dir.
    pub data_dir: PathBuf,
    /// How deliveries are made.
    pub delivery: DeliveryConfig,
    /// Offer a checkpoint after this many records folded...
    pub checkpoint_every_records: u64,
    /// ...or after this long with any record folded.
    pub checkpoint_interval: Duration,
    /// How long shutdown waits for attempts in flight; the rest are attempted again after
    /// the next start (their outcomes were never logged).
    pub shutdown_grace: Duration,
    /// The least time between two ticks the driver appends: bounds tick records when many
    /// machines have deadlines a few milliseconds apart, at the cost of that much delay.
    pub tick_spacing: Duration,
    /// Space of one log segment ([`cb_store::SEGMENT_BYTES`] by default).
    pub segment_bytes: u64,
    /// What the log keeps; `None`: everything.
    pub retention: Option<cb_store::Retention>,
}

impl DispatcherOptions {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> DispatcherOptions {
        DispatcherOptions {
            data_dir,
            delivery: DeliveryConfig::default(),
            checkpoint_every_records: 250_000,
            checkpoint_interval: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            tick_spacing: Duration::from_millis(10),
            segment_bytes: cb_store::SEGMENT_BYTES,
            retention: None,
        }
    }
}

/// Why the dispatcher stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log refused an operation.
    #[error(transparent)]
    Store(#[from] cb_store::Error),
    /// An append the driving contract requires failed; continuing would let the core and
    /// the log drift apart.
    #[error("the log stopped accepting records: {0}")]
    Fatal(String),
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

type Query = Box<dyn FnOnce(&Core) + Send>;

enum Command {
    Query {
        min_seq: Seq,
        ask: Query,
    },
    Fatal(String),
    Shutdown(oneshot::Sender<()>),
    /// The log refused records the driver owes it: they are appended again later. `outcomes`
    /// of them are attempt outcomes (whose attempts count as in flight until recorded).
    Refused {
        inputs: Vec<Input>,
        outcomes: usize,
        why: String,
        /// Refused when offered again (`Driver::unblock`), not at first.
        again: bool,
    },
    /// The log refused a tick.
    TickRefused(String),
    /// Owed records were appended.
    Recorded,
}

/// How long the driver waits before offering the log refused records again.
pub const RETRY_REFUSED: Duration = Duration::from_secs(1);

/// True for the refusals the log recovers from by itself (space freed, a transient I/O
/// error): the driver keeps what was refused and tries again.
fn refused_for_now(e: &cb_store::Error) -> bool {
    matches!(
        e,
        cb_store::Error::DiskFull { .. } | cb_store::Error::Io { .. }
    )
}

/// How the rest of the daemon talks to the driver and the log. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    store: Store,
    inbox: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
}

impl Handle {
    /// The log.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The dispatcher's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Appends `inputs` as one atomic group and waits until they are durable.
    pub async fn append(&self, inputs: Vec<Input>) -> Result<Appended, cb_store::Error> {
        let (tx, rx) = oneshot::channel();
        self.store.append_then(inputs, move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(cb_store::Error::Closed))
    }

    /// Runs `ask` on the driver's core once it has folded every record durable now.
    pub async fn query<R: Send + 'static>(
        &self,
        ask: impl FnOnce(&Core) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let min_seq = self.store.last_seq().unwrap_or(Seq(0));
        let ask: Query = Box::new(move |core| {
            let _ = tx.send(ask(core));
        });
        self.inbox
            .send(Command::Query { min_seq, ask })
            .map_err(|_| Error::Task("the driver has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Task("the driver has stopped".into()))
    }
}

/// The running dispatcher: the driver task and its handle.
pub struct Dispatcher {
    handle: Handle,
    driver: tokio::task::JoinHandle<Result<(), Error>>,
    /// The driver's result, once [`Dispatcher::stopped`] saw it end.
    ended: Option<Result<(), Error>>,
}

/// What a start found in the data dir, for the startup log line.
#[derive(Clone, Debug)]
pub struct Started {
    /// The last record in the log.
    pub last_seq: Option<Seq>,
    /// The checkpoint the core was restored from.
    pub checkpoint: Option<Seq>,
    /// Records folded after it.
    pub tail_records: u64,
    /// Attempts that were in flight and are performed again.
    pub resumed_attempts: usize,
}

impl Dispatcher {
    /// Opens the data dir, restores the core (newest valid checkpoint + the tail), and
    /// starts the driver: attempts that were in flight are performed again at once.
    pub async fn start(options: DispatcherOptions) -> Result<(Dispatcher, Started), Error> {
        let (records_tx, records_rx) = mpsc::unbounded_channel::<Vec<Record>>();
        let store_options = StoreOptions {
            on_commit: Some(Box::new(move |records: &[Record]| {
                let _ = records_tx.send(records.to_vec());
            })),
            segment_bytes: options.segment_bytes,
            retention: options.retention.clone(),
            ..StoreOptions::default()
        };
        let path = options.data_dir.clone();
        let store = blocking(move || Store::open(&path, store_options)).await??;
        report_recovery(store.recovery());
        let restored = {
            let store = store.clone();
            blocking(move || store.restore()).await??
        };
        for damaged in &restored.damaged {
            warn!(path = %damaged.path.display(), reason = %damaged.reason, "skipped a damaged checkpoint");
        }
        let metrics = Arc::new(Metrics::default());
        let checkpoints = {
            let metrics = metrics.clone();
            CheckpointWriter::spawn(store.clone(), move |r| match r {
                Ok(file) => {
                    metrics.checkpoints.inc();
                    info!(seq = file.seq.0, bytes = file.bytes, "checkpoint written");
                }
                Err(e) => error!(error = %e, "checkpoint failed"),
            })?
        };
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let handle = Handle {
            store: store.clone(),
            inbox: inbox_tx,
            metrics: metrics.clone(),
        };
        let core = restored.core;
        let mut started = Started {
            last_seq: store.last_seq(),
            checkpoint: restored.checkpoint,
            tail_records: restored.tail_records,
            resumed_attempts: 0,
        };
        let mut driver = Driver {
            core,
            deliverer: Arc::new(Deliverer::new(
                store.clone(),
                &options.delivery,
                metrics.waiting.clone(),
            )),
            store,
            records: records_rx,
            inbox: inbox_rx,
            inbox_tx: handle.inbox.clone(),
            attempts: JoinSet::new(),
            unrecorded: Arc::default(),
            waiting: VecDeque::new(),
            checkpoints,
            folded_since_checkpoint: restored.tail_records,
            last_checkpoint: Instant::now(),
            tick_outstanding: false,
            last_tick: None,
            owed: Vec::new(),
            owed_outcomes: 0,
            deferred: VecDeque::new(),
            blocked_since: None,
            retrying: false,
            shutting_down: false,
            metrics,
            options,
        };
        started.resumed_attempts = driver.resume();
        let task = tokio::spawn(driver.run());
        Ok((
            Dispatcher {
                handle,
                driver: task,
                ended: None,
            },
            started,
        ))
    }

    /// A handle for the API.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the driver gracefully: no new attempts; attempts in flight get the grace
    /// period; their outcomes are made durable and folded; a final checkpoint is written.
    pub async fn shutdown(self) -> Result<(), Error> {
        if self.ended.is_some() {
            return self.join().await;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.handle.inbox.send(Command::Shutdown(tx));
        let _ = rx.await;
        self.join().await
    }

    /// Waits for the driver to stop and says why (it stops on its own only on a fatal error).
    pub async fn join(mut self) -> Result<(), Error> {
        self.stopped().await;
        self.ended.take().unwrap_or(Ok(()))
    }

    /// Completes when the driver has stopped; cancel-safe, so it can wait beside a signal.
    pub async fn stopped(&mut self) {
        if self.ended.is_none() {
            let result = match (&mut self.driver).await {
                Ok(r) => r,
                Err(e) => Err(Error::Task(e.to_string())),
            };
            self.ended = Some(result);
        }
    }
}

/// Says what opening the log had to do: nothing for the operator to act on, but worth a
/// line when a torn tail was cut or the index rebuilt.
fn report_recovery(r: &cb_store::Recovery) {
    if let Some(m) = &r.migrated {
        info!(
            from_format = m.from_format,
            records = m.records,
            took_ms = m.took.as_millis() as u64,
            "migrated the log to format {}",
            cb_store::FORMAT_VERSION
        );
    }
    if let Some(cut) = &r.cut {
        warn!(segment = cut.segment, offset = cut.at, found = %cut.reason,
              "cut a torn tail from the log: records written but never acknowledged (a crash or power loss during a write)");
    }
    if let Some(rebuilt) = &r.rebuilt {
        if rebuilt.in_memory.is_some() {
            tracing::error!(reason = %rebuilt.reason, records = rebuilt.records, took_ms = rebuilt.took.as_millis() as u64,
                "rebuilt the log's index from its segments in memory (sled hung or failed): it stays there until cbd restarts or sled works again; nothing for the operator to do but watch memory");
        } else {
            warn!(reason = %rebuilt.reason, records = rebuilt.records, took_ms = rebuilt.took.as_millis() as u64,
                  "rebuilt the log's index from its segments");
        }
    } else if r.caught_up > 0 {
        debug!(records = r.caught_up, "caught the index up with the log");
    }
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

struct Driver {
    core: Core,
    store: Store,
    deliverer: Arc<Deliverer>,
    records: mpsc::UnboundedReceiver<Vec<Record>>,
    inbox: mpsc::UnboundedReceiver<Command>,
    inbox_tx: mpsc::UnboundedSender<Command>,
    attempts: JoinSet<()>,
    /// Outcomes handed to the log and not yet acknowledged.
    unrecorded: Arc<Unrecorded>,
    /// Queries waiting for the core to catch up with the log, in arrival order.
    waiting: VecDeque<(Seq, Query)>,
    checkpoints: CheckpointWriter,
    folded_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// A `Ticked` was appended and has not come back yet.
    tick_outstanding: bool,
    last_tick: Option<Instant>,
    /// Records the log refused that the driver still owes it, oldest first, and how many of
    /// them are attempt outcomes.
    owed: Vec<Input>,
    owed_outcomes: usize,
    /// Attempts the core started while their outcomes could not be recorded.
    deferred: VecDeque<cb_core::Attempt>,
    /// Since when the log has refused the driver's records (`None`: it takes them).
    blocked_since: Option<Instant>,
    /// An append of owed records is in flight.
    retrying: bool,
    shutting_down: bool,
    metrics: Arc<Metrics>,
    options: DispatcherOptions,
}

impl Driver {
    /// Driving contract step 5: what was in flight at the crash is attempted again, and
    /// disables that were owed are appended. Returns how many attempts resumed.
    fn resume(&mut self) -> usize {
        let in_flight = self.core.in_flight();
        let resumed = in_flight.len();
        if !in_flight.is_empty() {
            info!(
                attempts = in_flight.len(),
                "performing attempts that were in flight again"
            );
        }
        for attempt in in_flight {
            // As any other: deferred while the log could not record its outcome.
            self.perform(Effect::StartAttempt(attempt));
        }
        for effect in self.core.owed_disables() {
            self.perform(effect);
        }
        resumed
    }

    async fn run(mut self) -> Result<(), Error> {
        let mut checkpoint_timer = tokio::time::interval(Duration::from_secs(5));
        checkpoint_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.wake_at();
            // Not `biased`: a steady stream of records must not starve queries and ticks.
            tokio::select! {
                batch = self.records.recv() => match batch {
                    Some(batch) => self.fold(batch),
                    None => return Err(Error::Fatal("the log's commit hook closed".into())),
                },
                command = self.inbox.recv() => match command {
                    Some(Command::Query { min_seq, ask }) => {
                        self.waiting.push_back((min_seq, ask));
                        self.answer_queries();
                    }
                    Some(Command::Fatal(reason)) => {
                        error!(%reason, "stopping: the log refused a record the driver needs");
                        return Err(Error::Fatal(reason));
                    }
                    Some(Command::Shutdown(done)) => {
                        let result = self.shut_down().await;
                        let _ = done.send(());
                        return result;
                    }
                    Some(Command::Refused { inputs, outcomes, why, again }) => {
                        if again {
                            self.retrying = false;
                        }
                        self.owed.extend(inputs);
                        self.owed_outcomes += outcomes;
                        self.blocked(&why);
                    }
                    Some(Command::TickRefused(why)) => {
                        self.tick_outstanding = false;
                        self.blocked(&why);
                    }
                    Some(Command::Recorded) => {
                        self.retrying = false;
                        self.unblock();
                    }
                    None => return Ok(()),
                },
                _ = sleep_until(wake), if wake.is_some() => match self.blocked_since {
                    Some(_) => self.unblock(),
                    None => self.tick(),
                },
                _ = checkpoint_timer.tick() => self.maybe_checkpoint(false),
            }
            while self.attempts.try_join_next().is_some() {}
        }
    }

    /// When to append the next tick: the core's next deadline, in tokio time, no sooner
    /// than `tick_spacing` after the previous tick.
    fn wake_at(&self) -> Option<Instant> {
        if let Some(since) = self.blocked_since {
            // Try the log again at a steady pace, not at every deadline.
            let tries = since.elapsed().as_millis() / RETRY_REFUSED.as_millis() + 1;
            return Some(since + RETRY_REFUSED * tries as u32);
        }
        if self.tick_outstanding || self.retrying {
            return None;
        }
        let deadline = self.core.next_deadline()?;
        // Tokio's clock is monotonic and the log's is the wall clock: convert at the moment
        // of asking; a tick stamped a hair early fires nothing and the loop sleeps again.
        let now_ms = wall_clock();
        let mut at = Instant::now() + Duration::from_millis(deadline.0.saturating_sub(now_ms.0));
        if let Some(last) = self.last_tick {
            at = at.max(last + self.options.tick_spacing);
        }
        Some(at)
    }

    fn tick(&mut self) {
        self.tick_outstanding = true;
        self.last_tick = Some(Instant::now());
        let inbox = self.inbox_tx.clone();
        self.store
            .append_then(vec![Input::Record(RecordKind::Ticked)], move |r| match r {
                Ok(_) => {}
                Err(e) if refused_for_now(&e) => {
                    let _ = inbox.send(Command::TickRefused(e.to_string()));
                }
                Err(e) => {
                    let _ = inbox.send(Command::Fatal(format!("appending a tick: {e}")));
                }
            });
    }

    fn fold(&mut self, batch: Vec<Record>) {
        let mut effects = Vec::new();
        for record in &batch {
            if self.core.last_seq().is_some_and(|s| record.seq <= s) {
                // Already in the restored state.
                continue;
            }
            let disposition = self.core.apply(record, &mut effects);
            self.metrics.observe(record, disposition);
            if matches!(record.kind, RecordKind::Ticked) {
                self.tick_outstanding = false;
            }
            for effect in effects.drain(..) {
                self.perform(effect);
            }
            self.folded_since_checkpoint += 1;
        }
        self.metrics
            .folded_seq
            .set(self.core.last_seq().map_or(0, |s| s.0 as i64));
        if self.blocked_since.is_some() && !batch.is_empty() {
            // Something was appended: the log may take the driver's records again.
            self.unblock();
        }
        self.answer_queries();
        if self.folded_since_checkpoint >= self.options.checkpoint_every_records {
            self.maybe_checkpoint(true);
        }
    }

    fn answer_queries(&mut self) {
        let folded = self.core.last_seq().unwrap_or(Seq(0));
        while self.waiting.front().is_some_and(|(min, _)| *min <= folded) {
            let (_, ask) = self.waiting.pop_front().expect("checked");
            ask(&self.core);
        }
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::StartAttempt(attempt) => {
                if self.shutting_down {
                    // Left in flight in the log: the next start performs it.
                    return;
                }
                if !self.can_record() {
                    // Its outcome could not be recorded: it starts when the log takes records.
                    self.deferred.push_back(attempt);
                    self.blocked("the disk has no room for the outcomes of attempts");
                    return;
                }
                self.start_attempt(attempt);
            }
            Effect::DisableCallback { machine, cause } => {
                warn!(%machine, cause = cause.0, "receiver answered 410 Gone: disabling the callback");
                let input = Input::Record(RecordKind::CallbackDisabled { machine, cause });
                let inbox = self.inbox_tx.clone();
                let kept = input.clone();
                self.store.append_then(vec![input], move |r| match r {
                    Ok(_) => {}
                    Err(e) if refused_for_now(&e) => {
                        let _ = inbox.send(Command::Refused {
                            inputs: vec![kept],
                            outcomes: 0,
                            why: e.to_string(),
                            again: false,
                        });
                    }
                    Err(e) => {
                        let _ = inbox.send(Command::Fatal(format!("appending a disable: {e}")));
                    }
                });
            }
            Effect::WakeAt { .. } => {
                // The loop asks the core for its next deadline on every turn.
            }
        }
    }

    fn start_attempt(&mut self, attempt: cb_core::Attempt) {
        let deliverer = self.deliverer.clone();
        let store = self.store.clone();
        let inbox = self.inbox_tx.clone();
        let metrics = self.metrics.clone();
        let unrecorded = self.unrecorded.clone();
        metrics.in_flight.inc();
        self.attempts.spawn(async move {
            // A bug in performing an attempt must not leave its machine `pending` forever:
            // a panic is recorded as a failed attempt, so rule 4 retries it.
            let report = match AssertUnwindSafe(deliverer.perform(&attempt))
                .catch_unwind()
                .await
            {
                Ok(report) => report,
                Err(_) => {
                    error!(machine = %attempt.machine, attempt = attempt.attempt, "performing the attempt panicked");
                    cb_core::AttemptReport {
                        machine: attempt.machine.clone(),
                        delivery: attempt.delivery,
                        attempt: attempt.attempt,
                        version: attempt.version,
                        outcome: cb_core::Outcome::Connect,
                        latency_ms: 0,
                        digest: cb_core::Digest::of(b""),
                        detail: "internal error: cb panicked performing this attempt (see its log)".into(),
                    }
                }
            };
            debug!(machine = %report.machine, delivery = report.delivery.0.0, attempt = report.attempt,
                   version = report.version.0, outcome = %report.outcome, latency_ms = report.latency_ms,
                   "attempt finished");
            if !report.outcome.is_delivered() {
                info!(machine = %report.machine, attempt = report.attempt, outcome = %report.outcome,
                      detail = %report.detail, "attempt failed");
            }
            // The task ends here; the reply closes the books on the sync thread. A task per
            // attempt waiting for its group commit would put thousands of wake-ups in front
            // of the connections' I/O at every commit.
            unrecorded.begin();
            let input = Input::Record(RecordKind::AttemptFinished(report));
            let kept = input.clone();
            // Patiently: nothing waits on an outcome being durable, and outcomes sharing
            // an fdatasync is what keeps a drain's rate up on a virtual disk.
            store.append_patiently_then(vec![input], move |r| match r {
                Ok(_) => {
                    metrics.in_flight.dec();
                    unrecorded.end();
                }
                // Kept by the driver and appended again: until then the attempt counts as
                // in flight. A shutdown meanwhile offers it once more; if the log still
                // refuses it, the attempt is in flight in the log, and the next start makes
                // it again.
                Err(e) if refused_for_now(&e) => {
                    let _ = inbox.send(Command::Refused {
                        inputs: vec![kept],
                        outcomes: 1,
                        why: e.to_string(),
                        again: false,
                    });
                }
                Err(e) => {
                    let _ = inbox.send(Command::Fatal(format!("appending an outcome: {e}")));
                    metrics.in_flight.dec();
                    unrecorded.end();
                }
            });
        });
    }

    /// True if an attempt started now could have its outcome recorded.
    fn can_record(&self) -> bool {
        self.blocked_since.is_none() && self.owed.is_empty() && self.store.writable()
    }

    /// The log refused a record of the driver's: say so once, and try again later.
    fn blocked(&mut self, why: &str) {
        if self.blocked_since.is_none() {
            warn!(
                reason = %why,
                owed = self.owed.len(),
                "the log refuses records: attempts wait, and refused records are offered again every second"
            );
            self.blocked_since = Some(Instant::now());
            self.metrics.log_blocked.set(1);
        }
    }

    /// Offers the owed records to the log again; once none is owed and the log can take
    /// more, starts the attempts that waited.
    fn unblock(&mut self) {
        if self.retrying {
            return;
        }
        if !self.owed.is_empty() {
            self.retrying = true;
            let inputs = std::mem::take(&mut self.owed);
            let outcomes = std::mem::take(&mut self.owed_outcomes);
            let kept = inputs.clone();
            let (inbox, metrics, unrecorded) = (
                self.inbox_tx.clone(),
                self.metrics.clone(),
                self.unrecorded.clone(),
            );
            self.store.append_then(inputs, move |r| match r {
                Ok(_) => {
                    for _ in 0..outcomes {
                        metrics.in_flight.dec();
                        unrecorded.end();
                    }
                    let _ = inbox.send(Command::Recorded);
                }
                Err(e) if refused_for_now(&e) => {
                    let _ = inbox.send(Command::Refused {
                        inputs: kept,
                        outcomes,
                        why: e.to_string(),
                        again: true,
                    });
                }
                Err(e) => {
                    let _ = inbox.send(Command::Fatal(format!(
                        "appending refused records again: {e}"
                    )));
                }
            });
            return;
        }
        if !self.store.writable() {
            // Still no room for what the attempts would record: keep waiting.
            self.blocked("the disk has no room for the outcomes of attempts");
            return;
        }
        if let Some(since) = self.blocked_since.take() {
            info!(
                after_secs = since.elapsed().as_secs_f32(),
                waiting_attempts = self.deferred.len(),
                "the log takes records again"
            );
            self.metrics.log_blocked.set(0);
        }
        while let Some(attempt) = self.deferred.pop_front() {
            if self.shutting_down {
                break;
            }
            self.start_attempt(attempt);
        }
    }

    fn maybe_checkpoint(&mut self, by_count: bool) {
        let due = by_count
            || (self.folded_since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.options.checkpoint_interval);
        if !due || self.core.last_seq().is_none() {
            return;
        }
        if self.checkpoints.offer(self.core.checkpoint()) {
            self.folded_since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
    }

    async fn shut_down(&mut self) -> Result<(), Error> {
        self.shutting_down = true;
        let in_flight = self.attempts.len();
        info!(
            in_flight,
            grace_secs = self.options.shutdown_grace.as_secs_f32(),
            "shutting down: waiting for attempts in flight"
        );
        let grace = tokio::time::sleep(self.options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = self.attempts.join_next() => if joined.is_none() { break },
                _ = &mut grace => {
                    warn!(left = self.attempts.len(), "grace period over: those attempts will be performed again at the next start");
                    self.attempts.abort_all();
                    break;
                }
            }
        }
        // Outcomes the log refused are offered once more (they are in the inbox, or owed).
        while let Ok(command) = self.inbox.try_recv() {
            if let Command::Refused {
                inputs, outcomes, ..
            } = command
            {
                self.owed.extend(inputs);
                self.owed_outcomes += outcomes;
            }
        }
        if !self.owed.is_empty() {
            self.retrying = false;
            self.unblock();
        }
        // Wait for the outcomes to be durable, then fold them, so the checkpoint has them.
        if tokio::time::timeout(Duration::from_secs(10), self.unrecorded.none())
            .await
            .is_err()
        {
            warn!("outcomes still unacknowledged by the log after 10 s");
        }
        let target = self.store.last_seq();
        while self.core.last_seq() < target {
            match tokio::time::timeout(Duration::from_secs(5), self.records.recv()).await {
                Ok(Some(batch)) => self.fold(batch),
                _ => break,
            }
        }
        if self.core.last_seq().is_some() && self.folded_since_checkpoint > 0 {
            let store = self.store.clone();
            let checkpoint = self.core.checkpoint();
            match blocking(move || store.write_checkpoint(&checkpoint)).await? {
                Ok(file) => info!(seq = file.seq.0, "final checkpoint written"),
                Err(e) => error!(error = %e, "final checkpoint failed"),
            }
        }
        self.store.sync()?;
        Ok(())
    }
}

/// A count of outcome appends in progress, and a way to wait for none.
#[derive(Default)]
struct Unrecorded {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Unrecorded {
    fn begin(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn end(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn none(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
