//! A seeded, deterministic simulation of the whole driver: the real [`Core`], the real
//! [`DriverState`] and the real [`Limits`](crate::limits::Limits), driven on simulated time
//! against simulated receivers, clients and a simulated log that fails, stalls and crashes.
//! TigerBeetle's VOPR and quinn's `Pair::step` are the models: one PRNG seeded once decides
//! everything, events are kept in time order, and the same seed gives the same run, so a
//! failure is one line to reproduce (`cargo run -p cb-dispatcher --bin sim -- --seed N`).
//!
//! What a run does: five projects, each with one callback to its own origin — a healthy
//! one, a dead one (every request hangs until its timeout), a flaky one (2xx, 3xx, 429 and
//! 503 with `Retry-After`, 5xx, resets, slow answers), a flapping one (healthy and dead by
//! turns) and one that sometimes answers `410 Gone` — while clients append changes and now
//! and then a callback's configuration, and an operator pauses one callback (not the healthy
//! origin's) for some seconds and resumes it (rule 8), across crashes and restarts. The log takes appends in groups after a simulated
//! sync latency; it can run out of space, fail an fsync, stall, and the process can crash
//! (everything not synced is lost, attempts in flight die with it) or shut down gracefully,
//! then restart from its last checkpoint and the log's tail. At the end every fault stops,
//! every receiver heals, and the run goes on until nothing is due.
//!
//! What it checks, from the outside (SPEC §4, and the isolation promise of §6): every
//! acknowledged change's file ends delivered with its latest version, or abandoned, or its
//! callback disabled by a 410; every attempt carries a version no older than the newest
//! change appended before its due time; first attempts of successive deliveries of one
//! machine start at least `W` apart; never two attempts of one machine in flight; delivered
//! versions never go back; no more deliveries than triggering changes; no attempt starts
//! while the log refuses records (its outcome could not be recorded); attempts in flight to
//! one origin and in all stay within the limits; the healthy origin's requests arrive within
//! [`HEALTHY_LAG`] of their due time whatever the others do (outside crash and full-disk
//! periods); and a fold of the whole log from scratch gives the live core's state, with
//! every recorded outcome matching an attempt that fold decided (what `cbctl replay`
//! audits). Every fault class it injected is counted; [`SimReport::missing_faults`] names
//! any that never occurred.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cb_core::{
    Attempt, AttemptReport, Callback, CallbackName, CallbackRef, Checkpoint, Core, DeliveryId,
    Digest, Effect, EventKind, FileId, FileKey, MachineKey, Outcome, ProjectId, Record, RecordKind,
    Seq, Snapshot, StateName, Timestamp,
};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

use cb_store::sim::{CrashMode, SimDisk};
use cb_store::{Change, Input, LogStorage, Store, StoreOptions};

use crate::driver_state::{AppendId, DriverConfig, DriverState, Now, Output, Patience, Refusal};
use crate::limits::{LimitsConfig, Slot};
use crate::log::{AppendDone, Log, Start};
use crate::metrics::Metrics;

/// The wall clock at simulated time zero.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// How late the healthy origin's requests may arrive after their due time.
pub const HEALTHY_LAG: Duration = Duration::from_secs(2);
/// How long after a crash, a restart or a full disk the healthy origin's lag is not held to
/// [`HEALTHY_LAG`] (the process was down, or could not record outcomes).
const DISTURBANCE_MS: u64 = 3_000;
/// Simulated time the healing phase may take before the run gives up waiting for quiet.
const HEAL_LIMIT_MS: u64 = 300_000;
/// The per-origin share of the simulated driver (small, so that bounds are reached).
const PER_ORIGIN: usize = 4;
/// The global share.
const GLOBAL: usize = 12;

/// The fault classes a run can inject; [`SimReport::missing_faults`] checks each occurred.
pub const FAULT_CLASSES: &[&str] = &[
    "2xx",
    "3xx",
    "410",
    "429_retry_after",
    "503_retry_after",
    "5xx",
    "hang",
    "slow",
    "reset",
    "flap",
    "crash",
    "graceful_restart",
    "disk_full",
    "fsync_failed",
    "log_stall",
    "config_change",
    "pause",
];

/// One run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Decides everything.
    pub seed: u64,
    /// Simulated seconds of traffic and faults before the healing phase.
    pub seconds: u64,
    /// Files per project.
    pub files: u32,
    /// Changes per simulated second, all projects together.
    pub changes_per_sec: u32,
    /// Run on the real store over the storage fault layer instead of [`SimLog`].
    pub store: bool,
}

impl SimConfig {
    /// A run of `seconds` for `seed`, with the default traffic.
    pub fn new(seed: u64, seconds: u64) -> SimConfig {
        SimConfig {
            seed,
            seconds,
            files: 40,
            changes_per_sec: 20,
            store: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Simulated time, healing included.
    pub simulated_ms: u64,
    /// Records in the log at the end.
    pub records: u64,
    /// Changes acknowledged to clients.
    pub acknowledged: u64,
    /// Changes refused (disk full, process down, failed fsync).
    pub refused: u64,
    /// Attempts sent.
    pub attempts: u64,
    /// Restarts (crashes and graceful ones).
    pub restarts: u64,
    /// How many times each fault class occurred.
    pub faults: BTreeMap<&'static str, u64>,
    /// The most attempts in flight to one origin at once.
    pub max_origin_in_flight: usize,
    /// The most attempts in flight at once.
    pub max_in_flight: usize,
    /// The healthy origin's worst lag behind a due time, outside disturbances.
    pub healthy_lag_max_ms: u64,
}

impl SimReport {
    /// The fault classes that never occurred in this run.
    pub fn missing_faults(&self) -> Vec<&'static str> {
        FAULT_CLASSES
            .iter()
            .copied()
            .filter(|c| self.faults.get(c).copied().unwrap_or(0) == 0)
            .collect()
    }
}

/// An invariant that did not hold.
#[derive(Debug, thiserror::Error)]
#[error("seed {seed} at {at_ms} ms: {what} (reproduce: cargo run -p cb-dispatcher --bin sim -- --seed {seed} --seconds {seconds}{})", if *store { " --store" } else { "" })]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Its run length.
    pub seconds: u64,
    /// Whether it ran on the real store.
    pub store: bool,
    /// Simulated time of the failure.
    pub at_ms: u64,
    /// What failed.
    pub what: String,
}

/// How an origin answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Healthy,
    Dead,
    Flaky,
    /// Healthy and dead by turns; `dead` is the current turn.
    Flapping {
        dead: bool,
    },
    Gone,
}

#[derive(Debug)]
enum Event {
    ClientChange,
    ClientPut {
        project: usize,
    },
    /// An operator pauses a project's callback (rule 8) ...
    ClientPause {
        project: usize,
    },
    /// ... and resumes it: repeated until the core says it is not paused.
    ClientResume {
        project: usize,
        paused_at: u64,
    },
    Sync,
    Reply {
        flight: u64,
    },
    Wake {
        generation: u64,
    },
    Crash {
        graceful: bool,
    },
    Restart,
    DiskFull {
        until_ms: u64,
    },
    DiskFree,
    FsyncFail,
    Stall {
        until_ms: u64,
    },
    StallEnd,
    Flap {
        project: usize,
    },
    Heal,
}

struct Flight {
    generation: u64,
    project: usize,
    attempt: Attempt,
    slot: Option<Slot>,
    outcome: Outcome,
}

/// Who hears of an append's fate, through [`SimLog`]'s completions.
enum Completion {
    Driver {
        generation: u64,
        id: AppendId,
        result: Result<Seq, Refusal>,
    },
    Client {
        changes: usize,
        result: Result<Seq, Refusal>,
    },
}

/// The simulated log behind the [`Log`] seam: in memory, synced in groups when the
/// simulation says ([`SimLog::commit_group`]); it can be full (appends refused at once),
/// fail an fsync (the pending group refused and forgotten, as the store does), and lose
/// everything not synced in a crash. Durable groups go to its commit stream, which the
/// simulation feeds to the driver, as the store's commit hook does.
#[derive(Default)]
pub struct SimLog {
    state: Mutex<SimLogState>,
}

#[derive(Default)]
struct SimLogState {
    durable: Vec<Record>,
    pending: Vec<(Vec<Input>, AppendDone)>,
    checkpoint: Option<Checkpoint>,
    full: bool,
    /// The time records get when they become durable.
    clock: Timestamp,
    /// Durable groups not yet handed to the driver.
    stream: VecDeque<Vec<Record>>,
}

impl SimLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, SimLogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_clock(&self, at: Timestamp) {
        self.lock().clock = at;
    }

    fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// The group commit: everything pending becomes durable and goes to the commit stream
    /// (or, if `fsync_fails`, is refused and forgotten). Returns how many appends it
    /// answered.
    fn commit_group(&self, fsync_fails: bool) -> usize {
        let (pending, answers) = {
            let mut state = self.lock();
            let pending = std::mem::take(&mut state.pending);
            if fsync_fails {
                (pending, None)
            } else {
                let at = state.clock;
                let mut batch = Vec::new();
                let mut answers = Vec::new();
                for (inputs, _) in &pending {
                    for input in inputs {
                        let kind = match input {
                            Input::Change(c) => RecordKind::ChangeAppended {
                                file: c.file.clone(),
                                event: c.event,
                                callbacks: c.callbacks.clone(),
                            },
                            Input::Record(kind) => kind.clone(),
                        };
                        let record = Record {
                            seq: Seq(state.durable.len() as u64 + 1),
                            at,
                            kind,
                        };
                        state.durable.push(record.clone());
                        batch.push(record);
                    }
                    answers.push(Seq(state.durable.len() as u64));
                }
                if !batch.is_empty() {
                    state.stream.push_back(batch);
                }
                (pending, Some(answers))
            }
        };
        let n = pending.len();
        // Outside the lock: appenders hear first, then the commit stream is read.
        match answers {
            Some(answers) => {
                for ((_, done), last) in pending.into_iter().zip(answers) {
                    done(Ok(last));
                }
            }
            None => {
                for (_, done) in pending {
                    done(Err(Refusal::ForNow(
                        "fdatasync failed (simulated EIO)".into(),
                    )));
                }
            }
        }
        n
    }

    /// A power cut: what was not synced is gone, and nobody hears of it. (Durable groups
    /// not yet read stay in the stream: a restarted driver skips what it restored.)
    fn crash(&self) {
        self.lock().pending.clear();
    }

    fn next_group(&self) -> Option<Vec<Record>> {
        self.lock().stream.pop_front()
    }

    fn durable(&self) -> Vec<Record> {
        self.lock().durable.clone()
    }
}

impl Log for SimLog {
    fn append(&self, inputs: Vec<Input>, _patience: Patience, done: AppendDone) {
        let mut state = self.lock();
        if state.full {
            drop(state);
            done(Err(Refusal::ForNow(
                "no space left on device (simulated)".into(),
            )));
            return;
        }
        state.pending.push((inputs, done));
    }

    fn last_seq(&self) -> Option<Seq> {
        let n = self.lock().durable.len() as u64;
        (n > 0).then_some(Seq(n))
    }

    fn writable(&self) -> bool {
        !self.lock().full
    }

    fn restore(&self) -> Result<Start, Refusal> {
        let state = self.lock();
        let checkpoint = state.checkpoint.clone();
        let mut core = match checkpoint {
            Some(cp) => Core::from_checkpoint(cp),
            None => Core::new(),
        };
        let from = core.last_seq();
        let mut effects = Vec::new();
        let mut tail_records = 0;
        for record in state.durable.iter().filter(|r| Some(r.seq) > from) {
            core.apply(record, &mut effects);
            effects.clear();
            tail_records += 1;
        }
        Ok(Start {
            core,
            checkpoint: from,
            tail_records,
        })
    }

    fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Refusal> {
        let mut state = self.lock();
        let covered = checkpoint
            .last_seq
            .is_some_and(|s| s.0 as usize <= state.durable.len());
        if !covered {
            return Err(Refusal::Fatal("a checkpoint beyond the durable log".into()));
        }
        state.checkpoint = Some(checkpoint.clone());
        Ok(())
    }

    fn sync(&self) -> Result<(), Refusal> {
        self.commit_group(false);
        Ok(())
    }

    fn snapshot(&self, seq: Seq) -> Result<Option<Snapshot>, Refusal> {
        let state = self.lock();
        let is_change = state
            .durable
            .get((seq.0 as usize).wrapping_sub(1))
            .is_some_and(|r| is_change(&r.kind));
        Ok(is_change.then(Snapshot::default))
    }

    fn record(&self, seq: Seq) -> Result<Option<Record>, Refusal> {
        Ok(self
            .lock()
            .durable
            .get((seq.0 as usize).wrapping_sub(1))
            .cloned())
    }
}

/// The real store over [`SimDisk`], the storage fault layer: segments and checkpoints on
/// the simulated disk (a crash drops, tears or partly keeps what was not synced; syncs can
/// fail; the disk can fill), the index in a temp dir. The store's own threads commit, so
/// a group commit here is [`Store::sync`]'s barrier: when it returns, every earlier append
/// has its answer and every durable group is in the commit stream.
struct StoreBackend {
    disk: SimDisk,
    dir: tempfile::TempDir,
    store: Option<Store>,
    clock: Arc<AtomicU64>,
    stream: Arc<Mutex<VecDeque<Vec<Record>>>>,
    /// Appends not answered yet.
    outstanding: Arc<AtomicUsize>,
    /// Opens so far: each process gets a data dir (the index's) of its own.
    opens: u64,
}

impl StoreBackend {
    fn new(seed: u64) -> StoreBackend {
        StoreBackend {
            disk: SimDisk::new(seed ^ 0x5107_e000),
            dir: tempfile::tempdir().expect("a temp dir for the index"),
            store: None,
            clock: Arc::default(),
            stream: Arc::default(),
            outstanding: Arc::default(),
            opens: 0,
        }
    }

    fn open(&mut self) -> Result<(), String> {
        if self.store.is_some() {
            return Ok(());
        }
        let (clock, stream) = (self.clock.clone(), self.stream.clone());
        let options = StoreOptions {
            storage: Some(LogStorage {
                segments: self.disk.dir("segments"),
                checkpoints: self.disk.dir("checkpoints"),
            }),
            segment_bytes: 1 << 20,
            reserve_bytes: Some(0),
            // A sled call (or close) stuck this long is given up: the run goes on.
            index_hang_limit: Duration::from_secs(2),
            clock: Box::new(move || Timestamp(clock.load(Ordering::Relaxed))),
            on_commit: Some(Box::new(move |records: &[Record]| {
                lock(&stream).push_back(records.to_vec());
            })),
            ..StoreOptions::default()
        };
        // A fresh index dir per process, so every restart rebuilds the index from the
        // segments: a restarted process has no sled of the last one in memory, and sled
        // reopened in the same process waits on the lock its earlier instance, left closing
        // past the hang limit, still holds.
        self.opens += 1;
        let dir = self.dir.path().join(format!("data-{}", self.opens));
        let store = Store::open(&dir, options).map_err(|e| e.to_string())?;
        self.store = Some(store);
        Ok(())
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open while the process runs")
    }
}

/// Which log the simulated process runs on.
enum Backend {
    /// [`SimLog`], in memory.
    Memory(Arc<SimLog>),
    /// The real store on the simulated disk.
    Store(Box<StoreBackend>),
}

impl Backend {
    fn log(&self) -> &dyn Log {
        match self {
            Backend::Memory(log) => log.as_ref(),
            Backend::Store(b) => b.store(),
        }
    }

    fn set_clock(&self, at: Timestamp) {
        match self {
            Backend::Memory(log) => log.set_clock(at),
            Backend::Store(b) => b.clock.store(at.0, Ordering::Relaxed),
        }
    }

    fn set_full(&self, full: bool, was: bool) {
        match self {
            Backend::Memory(log) => log.set_full(full),
            Backend::Store(b) if full && !was => b.disk.full_from(Some(0)),
            Backend::Store(b) if !full && was => b.disk.set_capacity(None),
            Backend::Store(_) => {}
        }
    }

    fn append(&self, inputs: Vec<Input>, patience: Patience, done: AppendDone) {
        match self {
            Backend::Memory(log) => log.append(inputs, patience, done),
            Backend::Store(b) => {
                let outstanding = b.outstanding.clone();
                outstanding.fetch_add(1, Ordering::SeqCst);
                Log::append(
                    b.store(),
                    inputs,
                    patience,
                    Box::new(move |r| {
                        done(r);
                        outstanding.fetch_sub(1, Ordering::SeqCst);
                    }),
                );
            }
        }
    }

    fn has_pending(&self) -> bool {
        match self {
            Backend::Memory(log) => log.has_pending(),
            Backend::Store(b) => b.outstanding.load(Ordering::SeqCst) > 0,
        }
    }

    fn commit_group(&self, fsync_fails: bool) {
        match self {
            Backend::Memory(log) => {
                log.commit_group(fsync_fails);
            }
            Backend::Store(b) => {
                if b.store.is_none() {
                    return; // the process is down: nothing to commit
                }
                if fsync_fails {
                    b.disk.fail_next_syncs(1);
                }
                // A failed sync is the appends' answer, not this barrier's business.
                let _ = b.store().sync();
                while b.outstanding.load(Ordering::SeqCst) > 0 {
                    // Answers refused by the failed sync come from the store's threads.
                    let _ = b.store().sync();
                    std::thread::yield_now();
                }
            }
        }
    }

    fn crash(&mut self, mode: CrashMode) {
        match self {
            Backend::Memory(log) => log.crash(),
            Backend::Store(b) => {
                // The process is gone with its threads; then the power.
                drop(b.store.take());
                b.outstanding.store(0, Ordering::SeqCst);
                b.disk.crash(mode);
            }
        }
    }

    fn reopen(&mut self) -> Result<(), String> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Store(b) => b.open(),
        }
    }

    fn next_group(&self) -> Option<Vec<Record>> {
        match self {
            Backend::Memory(log) => log.next_group(),
            Backend::Store(b) => lock(&b.stream).pop_front(),
        }
    }

    fn durable(&self) -> Result<Vec<Record>, String> {
        match self {
            Backend::Memory(log) => Ok(log.durable()),
            Backend::Store(b) => b
                .store()
                .records(Seq(1))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string()),
        }
    }
}

/// One simulation.
struct Sim {
    config: SimConfig,
    rng: XorShiftRng,
    now_ms: u64,
    order: u64,
    events: BTreeMap<(u64, u64), Event>,
    report: SimReport,
    // The process.
    driver: Option<DriverState<()>>,
    /// Bumped at every crash: replies and wake-ups of a dead process are dropped.
    generation: u64,
    wake_generation: u64,
    /// When the current wake-up is scheduled.
    wake_at: Option<u64>,
    shutting_down: bool,
    // The log.
    log: Backend,
    completions: Arc<Mutex<VecDeque<Completion>>>,
    sync_scheduled: bool,
    /// Whether the log was last told it is full.
    log_full: bool,
    disk_full_until: Option<u64>,
    fsync_fail_armed: bool,
    stall_until: Option<u64>,
    // The world.
    behaviors: Vec<Behavior>,
    windows: Vec<u32>,
    flights: HashMap<u64, Flight>,
    next_flight: u64,
    healing: bool,
    disturbed_until: u64,
    // Observations.
    /// Per file: its changes' (seq, at), oldest first.
    changes: HashMap<FileKey, Vec<(Seq, Timestamp)>>,
    /// Per machine: the versions 2xx answers carried, in order.
    delivered: HashMap<MachineKey, Vec<Seq>>,
    /// Per machine: the last first attempt's start and the distinct deliveries.
    first_starts: HashMap<MachineKey, (DeliveryId, Timestamp)>,
    deliveries: HashMap<MachineKey, BTreeSet<DeliveryId>>,
    /// Machines with an attempt in flight now.
    machines_in_flight: BTreeSet<MachineKey>,
    origin_in_flight: Vec<usize>,
}

/// Runs one simulation and checks its invariants.
pub fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(config);
    sim.start()?;
    let mut same_ms = 0;
    while let Some(((at, _), event)) = sim.events.pop_first() {
        same_ms = if at == sim.now_ms { same_ms + 1 } else { 0 };
        if same_ms > 100_000 {
            let state = sim.driver.as_ref().map(|d| d.debug_timeouts(sim.now()));
            return Err(sim.fail(format!(
                "no progress: 100,000 events at one moment, the last {event:?}; {state:?}"
            )));
        }
        sim.now_ms = at;
        sim.handle(event)?;
        if sim.healing && sim.quiet() {
            break;
        }
        if sim.healing && sim.now_ms > sim.config.seconds * 1000 + HEAL_LIMIT_MS {
            return Err(sim.fail("the healing phase did not end: deliveries still due"));
        }
    }
    sim.finish()
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let rng = XorShiftRng::seed_from_u64(config.seed);
        let log = if config.store {
            Backend::Store(Box::new(StoreBackend::new(config.seed)))
        } else {
            Backend::Memory(Arc::default())
        };
        Sim {
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            config,
            rng,
            now_ms: 0,
            order: 0,
            events: BTreeMap::new(),
            driver: None,
            generation: 0,
            wake_generation: 0,
            wake_at: None,
            shutting_down: false,
            log,
            completions: Arc::default(),
            sync_scheduled: false,
            log_full: false,
            disk_full_until: None,
            fsync_fail_armed: false,
            stall_until: None,
            behaviors: vec![
                Behavior::Healthy,
                Behavior::Dead,
                Behavior::Flaky,
                Behavior::Flapping { dead: false },
                Behavior::Gone,
            ],
            windows: vec![1; 5],
            flights: HashMap::new(),
            next_flight: 0,
            healing: false,
            disturbed_until: 0,
            changes: HashMap::new(),
            delivered: HashMap::new(),
            first_starts: HashMap::new(),
            deliveries: HashMap::new(),
            machines_in_flight: BTreeSet::new(),
            origin_in_flight: vec![0; 5],
        }
    }

    fn fail(&self, what: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            seconds: self.config.seconds,
            store: self.config.store,
            at_ms: self.now_ms,
            what: what.into(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: Duration::from_millis(self.now_ms),
            wall: Timestamp(EPOCH_MS + self.now_ms),
        }
    }

    fn at(&mut self, at_ms: u64, event: Event) {
        self.order += 1;
        self.events.insert((at_ms, self.order), event);
    }

    fn count(&mut self, class: &'static str) {
        *self.report.faults.entry(class).or_default() += 1;
    }

    fn project(i: usize) -> ProjectId {
        ProjectId::new(&format!("p{i}")).expect("a valid id")
    }

    fn callback_name() -> CallbackName {
        CallbackName::new("site").expect("a valid name")
    }

    fn callback(&self, project: usize) -> Callback {
        Callback::from_json(&format!(
            r#"{{"url":"http://o{project}.sim.test/cb","window_secs":{},"timeout_secs":5,"retry_for_secs":60,"backoff_secs":[1,2,5]}}"#,
            self.windows[project]
        ))
        .expect("a valid callback")
    }

    fn put(&mut self, project: usize) -> RecordKind {
        RecordKind::CallbackPut {
            project: Sim::project(project),
            name: Sim::callback_name(),
            callback: Arc::new(self.callback(project)),
        }
    }

    /// Schedules the first events: the callbacks, the clients, and one of each process and
    /// disk fault at a random moment of the run (more at random after).
    fn start(&mut self) -> Result<(), SimFailure> {
        self.boot();
        let puts = (0..5).map(|p| Input::Record(self.put(p))).collect();
        self.client_append(puts, 0);
        self.at(10, Event::ClientChange);
        let end = self.config.seconds * 1000;
        let span = end.max(2_000);
        for event in [
            Event::Crash { graceful: false },
            Event::Crash { graceful: true },
            Event::FsyncFail,
        ] {
            let at = self.rng.random_range(span / 10..span * 9 / 10);
            self.at(at, event);
        }
        let at = self.rng.random_range(span / 10..span * 9 / 10);
        let until_ms = at + self.rng.random_range(500..5_000);
        self.at(at, Event::DiskFull { until_ms });
        let at = self.rng.random_range(span / 10..span * 9 / 10);
        let until_ms = at + self.rng.random_range(200..3_000);
        self.at(at, Event::Stall { until_ms });
        let flap = self.rng.random_range(1_000..10_000);
        self.at(flap, Event::Flap { project: 3 });
        for project in 0..5 {
            let at = self.rng.random_range(span / 10..span);
            self.at(at, Event::ClientPut { project });
        }
        // One pause of a callback other than the healthy origin's (whose lag is held to a
        // bound), resumed some seconds later.
        let at = self.rng.random_range(span / 10..span * 8 / 10);
        let project = self.rng.random_range(1..5usize);
        self.at(at, Event::ClientPause { project });
        self.at(end, Event::Heal);
        Ok(())
    }

    /// Starts the process: the core from the log's last checkpoint and its tail (through the
    /// seam, as the shell does), then the driving contract's resume.
    fn boot(&mut self) {
        let now = self.now();
        self.log.set_clock(now.wall);
        if let Err(e) = self.log.reopen() {
            panic!(
                "seed {}: the store did not open after a crash: {e}",
                self.config.seed
            );
        }
        let mut start = self.log.log().restore().expect("the log restores");
        // As the daemon does: its lists then move with every step the simulation takes.
        start.core.keep_lists();
        let config = DriverConfig {
            tick_spacing: Duration::from_millis(10),
            checkpoint_every_records: 500,
            checkpoint_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            limits: LimitsConfig {
                global: GLOBAL,
                per_origin: PER_ORIGIN,
            },
        };
        let mut driver = DriverState::new(
            start.core,
            config,
            Arc::new(Metrics::default()),
            start.tail_records,
            now,
        );
        driver.set_log_writable(self.log.log().writable());
        self.driver = Some(driver);
        self.shutting_down = false;
        let _ = self.driver.as_mut().expect("booted").resume(now);
    }

    /// A client's append; `changes` of its inputs are changes (counted when acknowledged
    /// or refused).
    fn client_append(&mut self, inputs: Vec<Input>, changes: usize) {
        let completions = self.completions.clone();
        self.log.append(
            inputs,
            Patience::Now,
            Box::new(move |result| {
                lock(&completions).push_back(Completion::Client { changes, result });
            }),
        );
        self.schedule_sync();
    }

    fn handle(&mut self, event: Event) -> Result<(), SimFailure> {
        let now = self.now();
        match event {
            Event::ClientChange => self.client_change(),
            Event::ClientPut { project } => {
                if self.healing {
                    return Ok(());
                }
                self.windows[project] = if self.windows[project] == 1 { 2 } else { 1 };
                let put = self.put(project);
                if self.accepts_clients() {
                    self.count("config_change");
                    self.client_append(vec![Input::Record(put)], 0);
                }
                let next = self.now_ms + self.rng.random_range(5_000..40_000);
                self.at(next, Event::ClientPut { project });
            }
            Event::ClientPause { project } => {
                if self.healing {
                    return Ok(());
                }
                if !self.accepts_clients() {
                    self.at(self.now_ms + 1_000, Event::ClientPause { project });
                    return Ok(());
                }
                self.count("pause");
                let pause = RecordKind::CallbackPaused {
                    project: Sim::project(project),
                    name: Sim::callback_name(),
                };
                self.client_append(vec![Input::Record(pause)], 0);
                let paused_at = self.now_ms;
                let resume = paused_at + self.rng.random_range(1_000..10_000);
                self.at(resume, Event::ClientResume { project, paused_at });
            }
            Event::ClientResume { project, paused_at } => {
                // Until the core has folded a resume: the pause's append may still be on its
                // way, a resume may be refused by the disk or lost in a crash.
                let paused = match &self.driver {
                    Some(driver) => driver
                        .core()
                        .is_paused(&Sim::project(project), &Sim::callback_name()),
                    None => true,
                };
                if paused && self.accepts_clients() {
                    let resume = RecordKind::CallbackResumed {
                        project: Sim::project(project),
                        name: Sim::callback_name(),
                    };
                    self.client_append(vec![Input::Record(resume)], 0);
                }
                if paused || self.now_ms < paused_at + 15_000 {
                    self.at(
                        self.now_ms + 1_000,
                        Event::ClientResume { project, paused_at },
                    );
                }
            }
            Event::Sync => self.sync()?,
            Event::Reply { flight } => self.reply(flight),
            Event::Wake { generation } => {
                if generation == self.wake_generation {
                    self.wake_at = None;
                    if let Some(driver) = &mut self.driver {
                        driver.handle_timeout(now);
                    }
                }
            }
            Event::Crash { graceful } => self.crash(graceful),
            Event::Restart => {
                if self.driver.is_none() {
                    self.boot();
                    self.disturbed_until = self.disturbed_until.max(self.now_ms + DISTURBANCE_MS);
                }
            }
            Event::DiskFull { until_ms } => {
                if !self.healing {
                    self.count("disk_full");
                    self.disk_full_until = Some(until_ms);
                    self.at(until_ms, Event::DiskFree);
                    self.disturbed_until = self.disturbed_until.max(until_ms + DISTURBANCE_MS);
                }
            }
            Event::DiskFree => self.disk_full_until = None,
            Event::FsyncFail => {
                if !self.healing {
                    self.fsync_fail_armed = true;
                }
            }
            Event::Stall { until_ms } => {
                if !self.healing {
                    self.count("log_stall");
                    self.stall_until = Some(until_ms);
                    self.at(until_ms, Event::StallEnd);
                    self.disturbed_until = self.disturbed_until.max(until_ms + DISTURBANCE_MS);
                }
            }
            Event::StallEnd => self.stall_until = None,
            Event::Flap { project } => {
                if let Behavior::Flapping { dead } = self.behaviors[project] {
                    self.behaviors[project] = Behavior::Flapping { dead: !dead };
                    self.count("flap");
                    let next = self.now_ms + self.rng.random_range(5_000..30_000);
                    self.at(next, Event::Flap { project });
                }
            }
            Event::Heal => {
                self.healing = true;
                self.behaviors = vec![Behavior::Healthy; 5];
                self.disk_full_until = None;
                self.stall_until = None;
                self.fsync_fail_armed = false;
                if self.driver.is_none() {
                    self.at(self.now_ms, Event::Restart);
                }
            }
        }
        self.pump()
    }

    fn accepts_clients(&self) -> bool {
        self.driver.is_some() && !self.shutting_down && self.disk_full_until.is_none()
    }

    fn client_change(&mut self) {
        if self.healing {
            return;
        }
        let project = self.rng.random_range(0..5usize);
        let file = self.rng.random_range(0..self.config.files);
        if self.accepts_clients() {
            let change = Change {
                file: FileKey::new(
                    Sim::project(project),
                    FileId::new(&file.to_string()).expect("a valid id"),
                ),
                event: EventKind::Uploaded,
                snapshot: Snapshot::default(),
                callbacks: None,
            };
            self.client_append(vec![Input::Change(change)], 1);
        } else {
            self.report.refused += 1;
        }
        let mean = 1000 / u64::from(self.config.changes_per_sec.max(1));
        let next = self.now_ms + self.rng.random_range(0..=2 * mean);
        self.at(next, Event::ClientChange);
    }

    fn schedule_sync(&mut self) {
        if self.sync_scheduled {
            return;
        }
        self.sync_scheduled = true;
        let latency = match self.stall_until {
            Some(until) if until > self.now_ms => until - self.now_ms,
            _ => self.rng.random_range(1..5),
        };
        self.at(self.now_ms + latency, Event::Sync);
    }

    /// The log's group commit: everything pending becomes durable at once (or, if an fsync
    /// fails, is refused and forgotten, as the store does).
    fn sync(&mut self) -> Result<(), SimFailure> {
        self.sync_scheduled = false;
        let fails = self.fsync_fail_armed && self.log.has_pending();
        if fails {
            self.fsync_fail_armed = false;
            self.count("fsync_failed");
        }
        self.log.commit_group(fails);
        Ok(())
    }

    /// Hands the driver what the log told: answers to appends first, then the commit
    /// stream, as the store does. True if there was anything.
    fn deliver_log_news(&mut self) -> bool {
        let now = self.now();
        let mut any = false;
        loop {
            let completion = lock(&self.completions).pop_front();
            let Some(completion) = completion else { break };
            any = true;
            match completion {
                Completion::Driver {
                    generation,
                    id,
                    result,
                } => {
                    if generation == self.generation {
                        if let Some(driver) = &mut self.driver {
                            driver.handle_appended(now, id, result.map(|_| ()));
                        }
                    }
                }
                Completion::Client { changes, result } => match result {
                    Ok(_) => self.report.acknowledged += changes as u64,
                    Err(_) => self.report.refused += changes as u64,
                },
            }
        }
        while let Some(batch) = self.log.next_group() {
            any = true;
            for record in &batch {
                if let RecordKind::ChangeAppended { file, .. } = &record.kind {
                    self.changes
                        .entry(file.clone())
                        .or_default()
                        .push((record.seq, record.at));
                }
            }
            if let Some(driver) = &mut self.driver {
                driver.handle_commit(now, &batch);
            }
        }
        any
    }

    fn crash(&mut self, graceful: bool) {
        if self.healing {
            return;
        }
        if self.driver.is_none() || self.shutting_down {
            // Down already, or on its way: this fault comes a moment later.
            let later = self.now_ms + self.rng.random_range(1_000..5_000);
            self.at(later, Event::Crash { graceful });
            return;
        }
        if graceful {
            self.count("graceful_restart");
            self.shutting_down = true;
            let now = self.now();
            self.driver.as_mut().expect("running").shutdown(now);
            return;
        }
        self.count("crash");
        self.die();
    }

    /// The process is gone: unsynced appends are lost, attempts in flight die with their
    /// connections, and it comes back a moment later.
    fn die(&mut self) {
        self.driver = None;
        self.generation += 1;
        self.wake_generation += 1;
        self.wake_at = None;
        self.report.restarts += 1;
        let mode = [
            CrashMode::DropUnsynced,
            CrashMode::TornWrite,
            CrashMode::KeepSome,
        ][self.rng.random_range(0..3usize)];
        self.log.crash(mode);
        for flight in self.flights.values_mut() {
            if flight.slot.take().is_some() {
                self.origin_in_flight[flight.project] -= 1;
            }
        }
        self.machines_in_flight.clear();
        let back = self.now_ms + self.rng.random_range(100..3_000);
        self.disturbed_until = self.disturbed_until.max(back + DISTURBANCE_MS);
        self.at(back, Event::Restart);
    }

    fn reply(&mut self, id: u64) {
        let Some(flight) = self.flights.remove(&id) else {
            return;
        };
        let Some(slot) = flight.slot else {
            return; // its process died
        };
        self.origin_in_flight[flight.project] -= 1;
        self.machines_in_flight.remove(&flight.attempt.machine);
        if flight.generation != self.generation {
            return;
        }
        if let Outcome::Delivered { .. } = flight.outcome {
            self.delivered
                .entry(flight.attempt.machine.clone())
                .or_default()
                .push(flight.attempt.version);
        }
        let report = AttemptReport::of(flight.attempt, flight.outcome, 1, Digest::of(b""));
        let now = self.now();
        if let Some(driver) = &mut self.driver {
            driver.handle_attempt_done(now, slot, report);
        }
    }

    /// Performs what the driver handed out until it has nothing more, then schedules its
    /// next wake-up.
    fn pump(&mut self) -> Result<(), SimFailure> {
        self.log.set_clock(self.now().wall);
        let full = self.disk_full_until.is_some();
        self.log.set_full(full, self.log_full);
        self.log_full = full;
        loop {
            let now = self.now();
            let Some(driver) = &mut self.driver else {
                return Ok(());
            };
            driver.set_log_writable(self.log.log().writable());
            let Some(output) = driver.poll_output() else {
                if self.deliver_log_news() {
                    continue;
                }
                break;
            };
            match output {
                Output::Append {
                    id,
                    records,
                    patience,
                } => {
                    let (completions, generation) = (self.completions.clone(), self.generation);
                    self.log.append(
                        records.into_iter().map(Input::Record).collect(),
                        patience,
                        Box::new(move |result| {
                            lock(&completions).push_back(Completion::Driver {
                                generation,
                                id,
                                result,
                            });
                        }),
                    );
                    if self.log.has_pending() {
                        self.schedule_sync();
                    }
                }
                Output::Send { attempt, slot } => self.send(attempt, slot)?,
                Output::Checkpoint => {
                    let cp = driver.core().checkpoint();
                    if self.log.log().checkpoint(&cp).is_ok() {
                        driver.checkpoint_taken(now);
                    }
                }
                Output::Answer(()) => {}
                Output::CancelAttempts => {
                    for flight in self.flights.values_mut() {
                        if flight.generation == self.generation {
                            if let Some(_slot) = flight.slot.take() {
                                self.origin_in_flight[flight.project] -= 1;
                                self.machines_in_flight.remove(&flight.attempt.machine);
                            }
                        }
                    }
                }
                Output::Stopped => {
                    // The shell's end of a shutdown: fold what the log has, a final
                    // checkpoint, the log synced.
                    self.deliver_log_news();
                    if let Some(driver) = &self.driver {
                        let cp = driver.core().checkpoint();
                        // As the shell does, a failed final checkpoint (a full disk) is only
                        // logged: the restart folds a longer tail.
                        if cp.last_seq.is_some() {
                            let _ = self.log.log().checkpoint(&cp);
                        }
                    }
                    // A failed final sync is the store's to report; the restart finds out.
                    let _ = self.log.log().sync();
                    self.deliver_log_news();
                    self.die();
                    return Ok(());
                }
                Output::Fatal(why) => return Err(self.fail(format!("the driver stopped: {why}"))),
            }
        }
        let now = self.now();
        if let Some(driver) = &self.driver {
            let wanted = driver
                .poll_timeout(now)
                .map(|at| (at.as_millis() as u64).max(self.now_ms));
            if wanted != self.wake_at {
                self.wake_generation += 1;
                self.wake_at = wanted;
                if let Some(at_ms) = wanted {
                    let generation = self.wake_generation;
                    self.at(at_ms, Event::Wake { generation });
                }
            }
        }
        Ok(())
    }

    /// An attempt leaves: check it, then decide what its receiver does.
    fn send(&mut self, attempt: Attempt, slot: Slot) -> Result<(), SimFailure> {
        self.report.attempts += 1;
        let machine = attempt.machine.clone();
        let project: usize = machine.file.project.as_str()[1..]
            .parse()
            .expect("simulated projects are p0..p4");
        // Latest wins: no change of the file appended before the due time is newer.
        if let Some(changes) = self.changes.get(&machine.file) {
            let newest_before = changes
                .iter()
                .rev()
                .find(|(_, at)| *at < attempt.started_at)
                .map(|(s, _)| *s);
            if newest_before.is_some_and(|n| n > attempt.version) {
                return Err(self.fail(format!(
                    "{machine}: attempt {} of delivery {} carries version {} though {} was appended before its due time",
                    attempt.attempt, attempt.delivery.0 .0, attempt.version, newest_before.unwrap()
                )));
            }
        }
        // No attempt starts while its outcome could not be recorded: while the log says it
        // would refuse an append (the store learns of a full disk from its first refusal).
        if !self.log.log().writable() {
            return Err(self.fail(format!(
                "{machine}: an attempt started while the log refused records (a full disk)"
            )));
        }
        // No spam: one attempt in flight per machine.
        if !self.machines_in_flight.insert(machine.clone()) {
            return Err(self.fail(format!("{machine}: two attempts in flight at once")));
        }
        // Spacing: first attempts of successive deliveries start W apart.
        if attempt.attempt == 1 && !attempt.redeliver {
            let window_ms = u64::from(attempt.callback.window_secs) * 1000;
            if let Some((delivery, started)) = self.first_starts.get(&machine) {
                // Rule 1 spaces by the window in force when the change came; the configs
                // alternate between 1 and 2 s, so 1 s is the least any spacing may be.
                if *delivery != attempt.delivery
                    && attempt.started_at.0 < started.0 + window_ms.min(1000)
                {
                    return Err(self.fail(format!(
                        "{machine}: delivery {} started {} ms after delivery {} (window {} ms)",
                        attempt.delivery.0 .0,
                        attempt.started_at.0 - started.0,
                        delivery.0 .0,
                        window_ms
                    )));
                }
            }
            self.first_starts
                .insert(machine.clone(), (attempt.delivery, attempt.started_at));
            self.deliveries
                .entry(machine.clone())
                .or_default()
                .insert(attempt.delivery);
        }
        // Bounded concurrency.
        self.origin_in_flight[project] += 1;
        let in_origin = self.origin_in_flight[project];
        let in_all: usize = self.origin_in_flight.iter().sum();
        self.report.max_origin_in_flight = self.report.max_origin_in_flight.max(in_origin);
        self.report.max_in_flight = self.report.max_in_flight.max(in_all);
        let cap = PER_ORIGIN + PER_ORIGIN / 2;
        if in_origin > cap {
            return Err(self.fail(format!(
                "{in_origin} attempts in flight to origin o{project}; the bound is {cap}"
            )));
        }
        if in_all > GLOBAL + GLOBAL / 4 {
            return Err(self.fail(format!(
                "{in_all} attempts in flight; the bound is {}",
                GLOBAL + GLOBAL / 4
            )));
        }
        // The healthy origin's lag.
        if project == 0 && attempt.started_at.0 >= EPOCH_MS + self.disturbed_until {
            let lag = (EPOCH_MS + self.now_ms).saturating_sub(attempt.started_at.0);
            self.report.healthy_lag_max_ms = self.report.healthy_lag_max_ms.max(lag);
            if lag > HEALTHY_LAG.as_millis() as u64 {
                return Err(self.fail(format!(
                    "{machine}: the healthy origin's request left {lag} ms after it was due (at most {} ms)",
                    HEALTHY_LAG.as_millis()
                )));
            }
        }
        let (outcome, latency) = self.answer(project, &attempt);
        let id = self.next_flight;
        self.next_flight += 1;
        self.flights.insert(
            id,
            Flight {
                generation: self.generation,
                project,
                attempt,
                slot: Some(slot),
                outcome,
            },
        );
        self.at(self.now_ms + latency, Event::Reply { flight: id });
        Ok(())
    }

    /// What the receiver answers, and after how long.
    fn answer(&mut self, project: usize, attempt: &Attempt) -> (Outcome, u64) {
        let timeout_ms = u64::from(attempt.callback.timeout_secs) * 1000;
        let ok = Outcome::Delivered { status: 200 };
        let behavior = self.behaviors[project];
        let (class, outcome, latency) = match behavior {
            Behavior::Healthy | Behavior::Flapping { dead: false } => {
                ("2xx", ok, self.rng.random_range(1..50))
            }
            Behavior::Dead | Behavior::Flapping { dead: true } => {
                ("hang", Outcome::Timeout, timeout_ms)
            }
            Behavior::Gone => {
                if self.rng.random_range(0..20) == 0 {
                    ("410", Outcome::from_status(410, None), 5)
                } else {
                    ("2xx", ok, 5)
                }
            }
            Behavior::Flaky => match self.rng.random_range(0..8) {
                0 => ("3xx", Outcome::from_status(302, None), 5),
                1 => (
                    "429_retry_after",
                    Outcome::from_status(429, Some(self.rng.random_range(1..10))),
                    5,
                ),
                2 => (
                    "503_retry_after",
                    Outcome::from_status(503, Some(self.rng.random_range(1..10))),
                    5,
                ),
                3 => ("5xx", Outcome::from_status(500, None), 5),
                4 => ("reset", Outcome::Connect, 2),
                5 => ("slow", ok, self.rng.random_range(1_000..timeout_ms)),
                _ => ("2xx", ok, self.rng.random_range(1..100)),
            },
        };
        self.count(class);
        (outcome, latency)
    }

    /// True when nothing is due any more: no change waiting, no attempt, no retry.
    fn quiet(&self) -> bool {
        let Some(driver) = &self.driver else {
            return false;
        };
        !self.log.has_pending()
            && driver.attempts_in_flight() == 0
            && self.log.log().last_seq().is_some()
            && driver.core().next_deadline().is_none()
    }

    /// The end-of-run checks that need the whole history.
    fn finish(mut self) -> Result<SimReport, SimFailure> {
        let durable = self
            .log
            .durable()
            .map_err(|e| self.fail(format!("reading the log at the end: {e}")))?;
        self.report.simulated_ms = self.now_ms;
        self.report.records = durable.len() as u64;
        let driver = self
            .driver
            .as_ref()
            .ok_or_else(|| self.fail("the run ended with the process down"))?;
        let core = driver.core();
        // Replay: a fold from scratch decides what the live core decided, and every
        // recorded outcome answers an attempt it decided.
        let mut fresh = Core::new();
        let mut effects = Vec::new();
        let mut decided: BTreeSet<(MachineKey, DeliveryId, u32, Seq)> = BTreeSet::new();
        for record in &durable {
            if let RecordKind::AttemptFinished(r) = &record.kind {
                let key = (r.machine.clone(), r.delivery, r.attempt, r.version);
                if !decided.remove(&key) {
                    return Err(self.fail(format!(
                        "replay: the outcome at seq {} answers no attempt the fold decided ({} delivery {} attempt {})",
                        record.seq, r.machine, r.delivery.0 .0, r.attempt
                    )));
                }
            }
            fresh.apply(record, &mut effects);
            for effect in effects.drain(..) {
                if let Effect::StartAttempt(a) = effect {
                    decided.insert((a.machine, a.delivery, a.attempt, a.version));
                }
            }
        }
        if fresh.checkpoint() != core.checkpoint() {
            return Err(
                self.fail("replay: a fold of the log from scratch differs from the live core")
            );
        }
        // Every acknowledged change's file ends delivered with its latest version, or
        // abandoned, or its callback disabled by a 410 (from the log: a disable whose cause
        // is newer than the callback's last put), whether the disable came before the change
        // (a disabled callback starts nothing until a new put) or after it.
        let mut disabled_during: HashMap<ProjectId, Vec<(Seq, Option<Seq>)>> = HashMap::new();
        let mut put_by: HashMap<ProjectId, Seq> = HashMap::new();
        for record in &durable {
            match &record.kind {
                RecordKind::CallbackPut { project, .. } => {
                    put_by.insert(project.clone(), record.seq);
                    if let Some(last) = disabled_during.get_mut(project).and_then(|v| v.last_mut())
                    {
                        last.1.get_or_insert(record.seq);
                    }
                }
                RecordKind::CallbackDisabled { machine, cause } => {
                    let project = &machine.file.project;
                    if put_by.get(project).is_some_and(|p| *cause > *p) {
                        let spans = disabled_during.entry(project.clone()).or_default();
                        if spans.last().is_none_or(|s| s.1.is_some()) {
                            spans.push((record.seq, None));
                        }
                    }
                }
                _ => {}
            }
        }
        let exempt = |file: &FileKey, v: Seq| {
            disabled_during.get(&file.project).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|(from, to)| *from > v || to.is_none_or(|t| v < t))
            })
        };
        for (file, changes) in &self.changes {
            let latest = changes.last().expect("not empty").0;
            let machine = MachineKey {
                file: file.clone(),
                callback: CallbackRef::Project(Sim::callback_name()),
            };
            let got = self.delivered.get(&machine);
            // Monotonic: delivered versions never go back.
            if let Some(got) = got {
                if let Some(w) = got.windows(2).find(|w| w[1] < w[0]) {
                    return Err(self.fail(format!(
                        "{machine}: version {} was delivered after {}",
                        w[1], w[0]
                    )));
                }
            }
            if got.is_some_and(|g| g.contains(&latest)) {
                continue;
            }
            let state = core.machine(&machine).map(|m| m.state.name());
            if state == Some(StateName::Abandoned) || exempt(file, latest) {
                continue;
            }
            return Err(self.fail(format!(
                "{machine}: acknowledged version {latest} was never delivered (state {state:?}, delivered {:?})",
                got.map(|g| g.iter().rev().take(3).collect::<Vec<_>>())
            )));
        }
        // No spam: no more deliveries than triggering changes.
        for (machine, deliveries) in &self.deliveries {
            let changes = self.changes.get(&machine.file).map_or(0, Vec::len);
            if deliveries.len() > changes {
                return Err(self.fail(format!(
                    "{machine}: {} deliveries for {changes} changes",
                    deliveries.len()
                )));
            }
        }
        Ok(self.report)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_change(kind: &RecordKind) -> bool {
    matches!(kind, RecordKind::ChangeAppended { .. })
}
