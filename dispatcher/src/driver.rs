//! The driver's tokio shell: the one task that owns the [`DriverState`] (and so the
//! [`Core`]), feeds it every durable record in log order, the clocks, queries and what its
//! own work reports, and performs what it hands out: appends, attempts (one task each, only
//! once its slot is held), checkpoints.
//!
//! Records reach the driver from the store's commit hook (a bounded channel fed on the
//! store's sync thread, in log order), whoever appended them: the HTTP API, outcomes of
//! attempts, or the driver itself. So the driver never folds a record that is not durable,
//! and folding is the only way the core learns anything — exactly what `cbctl replay` does
//! later with the same log. Every decision (ticks, admission, what to do while the log
//! refuses records, shutdown) is the state's (`driver_state`), which the simulator drives
//! the same way on simulated time.
//!
//! Every queue here is bounded: the commit stream ([`COMMIT_QUEUE`] groups: a driver that
//! falls behind makes appends wait), the inbox ([`INBOX`] queries: askers wait), attempts
//! waiting for a slot are plain data in the state's `Limits`, and the events channel carries
//! one message per thing the driver itself started.
//!
//! Others read the core through [`Handle::query`]: a closure run on the driver's task once
//! the core has folded everything durable when the query was made (read-your-writes for an
//! API client whose append was acknowledged).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cb_core::{Core, Record, Seq};
use cb_store::{wall_clock, Appended, CheckpointWriter, Input, Store, StoreOptions};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::deliver::{Deliverer, DeliveryConfig};
use crate::driver_state::{AppendId, DriverConfig, DriverState, Now, Output, Refusal};
use crate::limits::Slot;
use crate::log::Log;
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
    /// (project, callback) pairs whose metrics have labels of their own; later ones are
    /// counted together ([`crate::metrics::OTHER`]).
    pub metrics_max_series: usize,
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
            metrics_max_series: crate::metrics::DEFAULT_MAX_SERIES,
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

/// What the API asks of the driver.
enum Command {
    Query { min_seq: Seq, ask: Query },
    Shutdown(oneshot::Sender<()>),
}

/// What the driver's own work reports back: answers to its appends (from the store's sync
/// thread) and finished attempts (from their tasks). Unbounded, yet bounded by
/// construction: every message answers an append or an attempt the driver itself started,
/// and it starts at most [`LimitsConfig::most_in_flight`](crate::LimitsConfig::most_in_flight) attempts and one append per
/// outcome, tick, disable or retry of refused records.
enum Event {
    Appended(AppendId, Result<(), Refusal>),
    Done(Slot, cb_core::AttemptReport),
}

/// Groups of durable records the commit stream may hold before the store's sync thread
/// waits for the driver: backpressure on appends rather than growth.
pub const COMMIT_QUEUE: usize = 256;

/// Queries the driver's inbox holds before askers wait.
pub const INBOX: usize = 1024;

/// How the rest of the daemon talks to the driver and the log. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    store: Store,
    /// The commit stream, to wait for room in it before an append (weak: the store's hook
    /// alone keeps it open, so the driver still sees it close).
    commits: mpsc::WeakSender<Vec<Record>>,
    inbox: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    /// The driver's deliverer, for test sends (they take no slot: an operator waits).
    deliverer: Arc<Deliverer>,
}

impl Handle {
    /// The deliverer attempts go through, for an operator's test send.
    pub fn deliverer(&self) -> &Arc<Deliverer> {
        &self.deliverer
    }

    /// The log.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The dispatcher's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits (up to `wait`) until the driver's commit stream has room for another group:
    /// false if it stayed full — the driver is that far behind the log, and an append now
    /// would only queue in memory. Nothing is appended either way.
    pub async fn room(&self, wait: Duration) -> bool {
        room(&self.commits, wait).await
    }

    /// Appends `inputs` as one atomic group and waits until they are durable.
    pub async fn append(&self, inputs: Vec<Input>) -> Result<Appended, cb_store::Error> {
        let (tx, rx) = oneshot::channel();
        self.store.append_then(inputs, move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(cb_store::Error::Closed))
    }

    /// Runs `read` on the log off the async workers (a read may wait on the disk, and a
    /// worker blocked on it stalls every connection it serves).
    pub async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let store = self.store.clone();
        blocking(move || read(&store)).await
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
            .await
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
        let (records_tx, records_rx) = mpsc::channel::<Vec<Record>>(COMMIT_QUEUE);
        let commits_weak = records_tx.downgrade();
        let store_options = StoreOptions {
            // On the store's sync thread, never a runtime's: a full queue makes it wait.
            on_commit: Some(Box::new(move |records: &[Record]| {
                let _ = records_tx.blocking_send(records.to_vec());
            })),
            segment_bytes: options.segment_bytes,
            retention: options.retention.clone(),
            ..StoreOptions::default()
        };
        let path = options.data_dir.clone();
        let store = blocking(move || Store::open(&path, store_options)).await??;
        report_recovery(store.recovery());
        let log: Arc<dyn Log> = Arc::new(store.clone());
        let restored = {
            let log = log.clone();
            blocking(move || {
                let mut start = log.restore()?;
                // The daemon answers delivery lists (`GET /v1/deliveries`) from its core.
                start.core.keep_lists();
                Ok::<_, crate::driver_state::Refusal>(start)
            })
            .await?
            .map_err(|r| Error::Fatal(format!("restoring the core: {r}")))?
        };
        let metrics = Arc::new(Metrics::new(options.metrics_max_series));
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
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let deliverer = Arc::new(Deliverer::new(log.clone(), &options.delivery));
        let handle = Handle {
            store: store.clone(),
            commits: commits_weak,
            inbox: inbox_tx,
            metrics: metrics.clone(),
            deliverer: deliverer.clone(),
        };
        let mut started = Started {
            last_seq: store.last_seq(),
            checkpoint: restored.checkpoint,
            tail_records: restored.tail_records,
            resumed_attempts: 0,
        };
        let epoch = Instant::now();
        let config = DriverConfig {
            tick_spacing: options.tick_spacing,
            checkpoint_every_records: options.checkpoint_every_records,
            checkpoint_interval: options.checkpoint_interval,
            shutdown_grace: options.shutdown_grace,
            limits: options.delivery.limits,
        };
        let now = Now {
            mono: Duration::ZERO,
            wall: wall_clock(),
        };
        let mut state = DriverState::new(
            restored.core,
            config,
            metrics.clone(),
            restored.tail_records,
            now,
        );
        state.set_log_writable(store.writable());
        started.resumed_attempts = state.resume(now);
        let driver = Driver {
            state,
            deliverer,
            log,
            records: records_rx,
            inbox: inbox_rx,
            events: events_rx,
            events_tx,
            attempts: JoinSet::new(),
            checkpoints,
            epoch,
            stop_reply: None,
        };
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
        let _ = self.handle.inbox.send(Command::Shutdown(tx)).await;
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

/// The tokio shell around [`DriverState`]: it feeds the state the commit stream, the
/// queries, the answers to its appends, finished attempts and the clocks, and performs what
/// the state hands out.
struct Driver {
    state: DriverState<Query>,
    /// The log, through the seam.
    log: Arc<dyn Log>,
    deliverer: Arc<Deliverer>,
    records: mpsc::Receiver<Vec<Record>>,
    inbox: mpsc::Receiver<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    attempts: JoinSet<()>,
    checkpoints: CheckpointWriter,
    /// Monotonic time zero of [`Now::mono`].
    epoch: Instant,
    /// Whom to tell once a shutdown is done.
    stop_reply: Option<oneshot::Sender<()>>,
}

impl Driver {
    fn now(&self) -> Now {
        Now {
            mono: self.epoch.elapsed(),
            wall: wall_clock(),
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        loop {
            self.state.set_log_writable(self.log.writable());
            if self.perform()? {
                let result = self.finish().await;
                if let Some(reply) = self.stop_reply.take() {
                    let _ = reply.send(());
                }
                return result;
            }
            let wake = self
                .state
                .poll_timeout(self.now())
                .map(|at| self.epoch + at);
            // Not `biased`: a steady stream of records must not starve queries and ticks.
            tokio::select! {
                batch = self.records.recv() => match batch {
                    Some(batch) => {
                        let now = self.now();
                        self.state.handle_commit(now, &batch);
                    }
                    None => return Err(Error::Fatal("the log's commit hook closed".into())),
                },
                command = self.inbox.recv() => {
                    let now = self.now();
                    match command {
                        Some(Command::Query { min_seq, ask }) => self.state.query(min_seq, ask),
                        Some(Command::Shutdown(reply)) => {
                            self.stop_reply = Some(reply);
                            self.state.shutdown(now);
                        }
                        // Every handle is gone: nobody can ask for anything any more.
                        None => self.state.shutdown(now),
                    }
                }
                Some(event) = self.events.recv() => {
                    let now = self.now();
                    match event {
                        Event::Appended(id, result) => self.state.handle_appended(now, id, result),
                        Event::Done(slot, report) => self.state.handle_attempt_done(now, slot, report),
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    let now = self.now();
                    self.state.handle_timeout(now);
                }
            }
            while self.attempts.try_join_next().is_some() {}
        }
    }

    /// Performs what the state handed out; true once it says the shutdown is done.
    fn perform(&mut self) -> Result<bool, Error> {
        while let Some(output) = self.state.poll_output() {
            match output {
                Output::Append {
                    id,
                    records,
                    patience,
                } => {
                    let inputs = records.into_iter().map(Input::Record).collect();
                    let events = self.events_tx.clone();
                    self.log.append(
                        inputs,
                        patience,
                        Box::new(move |r| {
                            let _ = events.send(Event::Appended(id, r.map(|_| ())));
                        }),
                    );
                }
                Output::Send { attempt, slot } => self.start_attempt(attempt, slot),
                Output::Checkpoint => {
                    if self.checkpoints.offer(self.state.core().checkpoint()) {
                        let now = self.now();
                        self.state.checkpoint_taken(now);
                    }
                }
                Output::Answer(ask) => ask(self.state.core()),
                Output::CancelAttempts => self.attempts.abort_all(),
                Output::Stopped => return Ok(true),
                Output::Fatal(reason) => return Err(Error::Fatal(reason)),
            }
        }
        Ok(false)
    }

    fn start_attempt(&mut self, attempt: cb_core::Attempt, slot: Slot) {
        let deliverer = self.deliverer.clone();
        let events = self.events_tx.clone();
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
                    let mut report = cb_core::AttemptReport::of(
                        attempt,
                        cb_core::Outcome::Connect,
                        0,
                        cb_core::Digest::of(b""),
                    );
                    report.detail =
                        "internal error: cb panicked performing this attempt (see its log)".into();
                    report
                }
            };
            debug!(machine = %report.machine, delivery = report.delivery.0.0, attempt = report.attempt,
                   version = report.version.0, outcome = %report.outcome, latency_ms = report.latency_ms,
                   "attempt finished");
            if !report.outcome.is_delivered() {
                info!(machine = %report.machine, attempt = report.attempt, outcome = %report.outcome,
                      detail = %report.detail, "attempt failed");
            }
            let _ = events.send(Event::Done(slot, report));
        });
    }

    /// The end of a shutdown: fold what the log holds (the outcomes just recorded), write
    /// the final checkpoint, sync.
    async fn finish(&mut self) -> Result<(), Error> {
        let target = self.log.last_seq();
        while self.state.core().last_seq() < target {
            match tokio::time::timeout(Duration::from_secs(5), self.records.recv()).await {
                Ok(Some(batch)) => {
                    let now = self.now();
                    self.state.handle_commit(now, &batch);
                    // Queries answered meanwhile; nothing else is started any more.
                    while let Some(output) = self.state.poll_output() {
                        if let Output::Answer(ask) = output {
                            ask(self.state.core());
                        }
                    }
                }
                _ => break,
            }
        }
        // The store's sync thread must never wait on a driver that has stopped reading.
        self.records.close();
        if self.state.core().last_seq().is_some() && self.state.folded_since_checkpoint() > 0 {
            let log = self.log.clone();
            let checkpoint = self.state.core().checkpoint();
            match blocking(move || log.checkpoint(&checkpoint)).await? {
                Ok(()) => info!("final checkpoint written"),
                Err(e) => error!(error = %e, "final checkpoint failed"),
            }
        }
        let log = self.log.clone();
        blocking(move || log.sync())
            .await?
            .map_err(|r| Error::Fatal(format!("the final sync: {r}")))?;
        Ok(())
    }
}

/// See [`Handle::room`]. A closed stream has room: the append then gets the log's own
/// answer.
async fn room<T>(commits: &mpsc::WeakSender<T>, wait: Duration) -> bool {
    let Some(commits) = commits.upgrade() else {
        return true;
    };
    let reserved = tokio::time::timeout(wait, commits.reserve()).await;
    reserved.is_ok()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_waits_for_a_full_commit_stream_then_gives_up() {
        let (tx, mut rx) = mpsc::channel::<u32>(2);
        let weak = tx.downgrade();
        assert!(room(&weak, Duration::from_millis(10)).await);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert!(
            !room(&weak, Duration::from_millis(50)).await,
            "full for the whole wait"
        );
        let drained = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            rx.recv().await
        });
        assert!(
            room(&weak, Duration::from_secs(5)).await,
            "room once the driver reads"
        );
        drained.await.unwrap();
        drop(tx);
        assert!(
            room(&weak, Duration::from_millis(10)).await,
            "closed: no wait"
        );
    }
}
