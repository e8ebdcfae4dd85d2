//! [`Store`]: the durable event log — open (migrate, recover), append (group commit), read.
//!
//! The store is the only place records get their sequence number and timestamp. The truth
//! is the segment log (`seglog.rs`, `segment.rs`); `commit.rs` says how appends are grouped
//! and made durable, `index.rs` how reads find records without a scan, and `recover.rs`
//! what an open does after a crash.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use cb_core::{
    EventKind, FileCallback, FileKey, Record, RecordKind, Seq, Snapshot, SnapshotView, Timestamp,
};

use crate::base::Base;
use crate::codec;
use crate::commit::{Batch, CommitState, Committer, Health, Prepared, Request, Syncer};
use crate::common_records::RecentIds;
use crate::dir::DataDir;
use crate::error::{Error, Result};
use crate::index::{Index, IndexSettings};
use crate::recover::{self, Recovery};
use crate::seglog::{GroupCursor, SegmentLog, SegmentWriter};
use crate::segment::{self, Loc, SEGMENT_HEADER_LEN};
use crate::storage::{FsStorage, Storage};

/// How far an append goes before it is acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// `fdatasync` of the segment the group went to: the records are on stable storage
    /// (the default; what cbd promises).
    #[default]
    Sync,
    /// No sync per append: for bulk imports that end with [`Store::sync`], and for tests.
    /// What a crash before that sync loses is a tail of whole groups (cut at the next open).
    /// A sync that fails takes back the same tail at once: the tip goes back to the last
    /// good sync, and the next appends get those numbers again.
    Buffered,
}

/// Called with every durable group of records; see [`StoreOptions::on_commit`].
pub type CommitHook = Box<dyn FnMut(&[Record]) + Send>;

/// The directories the log's files live in, when not the data dir's own (tests and the
/// simulator put them on a [`SimDisk`](crate::sim::SimDisk)).
#[derive(Clone)]
pub struct LogStorage {
    /// The segments, and the base beside them.
    pub segments: Arc<dyn Storage>,
    /// The checkpoints.
    pub checkpoints: Arc<dyn Storage>,
}

/// How to open a store.
pub struct StoreOptions {
    /// See [`Durability`].
    pub durability: Durability,
    /// The most records one group commit takes from the queue (a single request larger than
    /// this is still committed whole).
    pub max_group_records: usize,
    /// sled's page cache (the index), in bytes.
    pub cache_capacity_bytes: u64,
    /// The space preallocated for each log segment: the unit in which the log grows, and in
    /// which retention removes it ([`SEGMENT_BYTES`](crate::SEGMENT_BYTES)).
    pub segment_bytes: u64,
    /// Free space to leave when starting a segment, for the index and checkpoints; `None`:
    /// one segment's worth.
    pub reserve_bytes: Option<u64>,
    /// Records per per-file index segment ([`SEGMENT_SPAN`](crate::SEGMENT_SPAN)); tests
    /// lower it to exercise segments with small logs.
    pub index_segment_span: u64,
    /// Where record timestamps come from; the wall clock unless a test or a benchmark
    /// supplies virtual time. Stamps never go backwards whatever it returns.
    pub clock: Box<dyn FnMut() -> Timestamp + Send>,
    /// Called on the sync thread with every durable group, in log order, after the
    /// appenders got their replies: how a driver learns of records others appended. Keep it
    /// short (hand the records to a channel).
    pub on_commit: Option<CommitHook>,
    /// Where the segments and checkpoints live; `None`: in the data dir.
    pub storage: Option<LogStorage>,
    /// Remove old history in the background, as this says; `None` (the default, and what
    /// `cbctl` uses): never.
    pub retention: Option<crate::Retention>,
    /// How long sled may take to open, or one call into it may take, before the index is
    /// given up and rebuilt (in memory, if sled cannot be trusted any more in this process).
    pub index_hang_limit: std::time::Duration,
    /// How long an index held in memory because sled failed (did not hang) waits before
    /// sled is tried again (a full disk may have been freed meanwhile).
    pub index_sled_retry: std::time::Duration,
    /// Faults to inject into the index's sled; tests only.
    pub index_faults: Option<Arc<crate::IndexFaults>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Sync,
            max_group_records: 16 * 1024,
            cache_capacity_bytes: 64 * 1024 * 1024,
            segment_bytes: crate::SEGMENT_BYTES,
            reserve_bytes: None,
            index_segment_span: crate::SEGMENT_SPAN,
            clock: Box::new(wall_clock),
            on_commit: None,
            storage: None,
            retention: None,
            index_hang_limit: crate::watch::HANG_LIMIT,
            index_sled_retry: std::time::Duration::from_secs(600),
            index_faults: None,
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A change to append: a [`RecordKind::ChangeAppended`] with its snapshot body.
#[derive(Clone, Debug)]
pub struct Change {
    /// The file.
    pub file: FileKey,
    /// What happened.
    pub event: EventKind,
    /// The file's full state after the change.
    pub snapshot: Snapshot,
    /// Per-file callbacks given with the change, if any.
    pub callbacks: Option<Arc<[FileCallback]>>,
}

/// One input to append.
#[derive(Clone, Debug)]
pub enum Input {
    /// A change; its snapshot is stored beside the record.
    Change(Change),
    /// Any other record. `ChangeAppended` is refused here: a change needs its snapshot. A
    /// `RedeliverRequested` gets the file's latest version filled in by the store.
    Record(RecordKind),
}

/// Where an append landed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Appended {
    /// The first record's sequence number; the others follow densely.
    pub first: Seq,
    /// How many records.
    pub count: u64,
    /// The timestamp the records got (imports: the last record's).
    pub at: Timestamp,
}

impl Appended {
    /// The last record's sequence number.
    pub fn last(&self) -> Seq {
        Seq(self.first.0 + self.count.saturating_sub(1))
    }

    /// Every sequence number appended, in order.
    pub fn seqs(&self) -> impl Iterator<Item = Seq> {
        (self.first.0..self.first.0 + self.count).map(Seq)
    }
}

/// Bytes a data dir holds, by part.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DiskUsage {
    /// The segments (the log itself, the kept segment and the base).
    pub log_bytes: u64,
    /// The index (sled).
    pub index_bytes: u64,
    /// The checkpoints.
    pub checkpoint_bytes: u64,
    /// Free for the log's segments.
    pub free_bytes: u64,
    /// Of `log_bytes`, the space the newest segment holds ready for groups (preallocated,
    /// not yet written).
    pub preallocated_bytes: u64,
}

/// The durable event log of one data dir. Cheap to clone; every clone is the same store.
/// Dropping the last clone stops the commit thread (after it finished the groups it has),
/// writes what the index holds in memory to sled, and releases the data dir's lock.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    queue: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    /// The index keeper thread and what stops it (dropping the sender).
    keeper: Option<(Sender<()>, JoinHandle<()>)>,
    /// The retention thread and what stops it (dropping the sender).
    retainer: std::sync::Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    /// One base advance at a time.
    pub(crate) retaining: Arc<std::sync::Mutex<()>>,
    /// Why the last base switch could not be confirmed, if it could not: the manifest on
    /// disk may name the new base or the old one until the next open settles it.
    pub(crate) base_unsettled: std::sync::Mutex<Option<crate::retention::Unsettled>>,
    /// The base checkpoint, once read (history views start from it).
    pub(crate) base_state: std::sync::Mutex<Option<Arc<cb_core::Checkpoint>>>,
    pub(crate) log: Arc<SegmentLog>,
    pub(crate) index: Arc<Index>,
    pub(crate) state: Arc<CommitState>,
    pub(crate) checkpoints: Arc<dyn Storage>,
    pub(crate) base: Arc<RwLock<Option<Base>>>,
    recovery: Recovery,
    /// What a new segment needs free: its space and the reserve.
    segment_needs: u64,
    // Invariant: dropped last, after the threads have stopped writing.
    dir: DataDir,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.retainer.lock().expect("retention lock").take() {
            drop(stop);
            // The retention thread may itself hold the last handle: it cannot wait for
            // itself (it returns at once, having seen the stop).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        if let Some((stop, thread)) = self.keeper.take() {
            drop(stop);
            let _ = thread.join();
        }
        drop(self.queue.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
        if let Some(indexer) = self.indexer.take() {
            // It may be stuck in sled for good: then it is left there.
            while !indexer.is_finished() {
                if let Some(why) = self.index.check_hang().or_else(|| self.index.hung()) {
                    tracing::error!(reason = %why, "closing without the index writer: it is stuck in sled (the next start catches the index up or rebuilds it)");
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = indexer.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the data dir at `path` and takes its lock; migrates a log
    /// of an older format; finds the durable tip, cutting a torn tail; and catches the index
    /// up or rebuilds it (see [`Store::recovery`] for what was done).
    ///
    /// Errors: [`Error::NotWritable`], [`Error::Locked`] (at once, never waiting),
    /// [`Error::UnknownFormat`], [`Error::Corrupt`] when acknowledged records are damaged,
    /// [`Error::DiskFull`] when the first segment cannot be created.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        let dir = DataDir::open(path)?;
        let mut clock = options.clock;
        let now = clock();
        let segment_bytes = options
            .segment_bytes
            .clamp(SEGMENT_HEADER_LEN * 2, segment::MAX_SEGMENT_BYTES);
        let reserve_bytes = options.reserve_bytes.unwrap_or(segment_bytes);
        let mut migrated = None;
        let (segments, checkpoints) = match options.storage {
            Some(s) => (s.segments, s.checkpoints),
            None => {
                migrated = crate::migrate::run(&dir, segment_bytes, now)?;
                let fs = |p: std::path::PathBuf| -> Result<Arc<dyn Storage>> {
                    let storage = FsStorage::open(&p).map_err(|source| Error::NotWritable {
                        path: p.clone(),
                        source,
                    })?;
                    Ok(Arc::new(storage))
                };
                (fs(dir.segments_path())?, fs(dir.checkpoints_path())?)
            }
        };
        let log = SegmentLog::open(segments.clone())?;
        let base = Base::load(&segments)?;
        crate::retention::remove_leftovers(&log, base.as_ref())?;
        let recovered = recover::recover(
            &log,
            base.as_ref(),
            &recover::Settings {
                index: IndexSettings {
                    dir: dir.path().to_owned(),
                    cache_capacity: options.cache_capacity_bytes,
                    span: options.index_segment_span,
                    hang_limit: options.index_hang_limit,
                    sled_retry: options.index_sled_retry,
                    faults: options.index_faults.clone(),
                },
                segment_bytes,
                now,
            },
        )?;
        let mut recovery = recovered.report;
        recovery.migrated = migrated;
        let index = Arc::new(recovered.index);
        let writer = SegmentWriter::resume(
            log.clone(),
            recovered.end.0,
            recovered.end.1,
            segment_bytes,
            reserve_bytes,
            // A run of its own: above every group the log holds.
            recovered.incarnation + 1,
        )?;
        let state = Arc::new(CommitState::new(recovered.tip, writer.room()));
        let base = Arc::new(RwLock::new(base));
        let (durable_tx, durable_rx) = mpsc::channel();
        let retaining = Arc::new(std::sync::Mutex::new(()));
        let indexer = {
            let (index, state) = (index.clone(), state.clone());
            std::thread::Builder::new()
                .name("cb-store-index".into())
                .spawn(move || run_indexer(&index, &state, durable_rx))
                .map_err(Error::io("starting the index thread"))?
        };
        let keeper = {
            let keeper = Keeper {
                index: index.clone(),
                log: log.clone(),
                base: base.clone(),
                retaining: retaining.clone(),
                state: state.clone(),
            };
            let (stop, stopped) = mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("cb-store-keeper".into())
                .spawn(move || run_keeper(&keeper, &stopped))
                .map_err(Error::io("starting the index keeper thread"))?;
            (stop, thread)
        };
        let committer = Committer {
            index: index.clone(),
            max_group_records: options.max_group_records.max(1),
            clock,
            next: Seq(recovered.tip.0 + 1),
            last_at: recovered.last_at,
            writer,
            state: state.clone(),
            syncer: Some(Syncer {
                durability: options.durability,
                on_commit: options.on_commit,
                state: state.clone(),
                durable: Some(durable_tx),
                told: recovered.tip,
                unsynced: Vec::new(),
                first_unsynced: None,
            }),
        };
        let (queue, inbox) = mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("cb-store-commit".into())
            .spawn(move || committer.run(inbox))
            .map_err(Error::io("starting the commit thread"))?;
        let store = Store {
            shared: Arc::new(Shared {
                queue: Some(queue),
                committer: Some(committer),
                indexer: Some(indexer),
                keeper: Some(keeper),
                retainer: std::sync::Mutex::new(None),
                retaining,
                base_unsettled: std::sync::Mutex::new(None),
                base_state: std::sync::Mutex::new(None),
                log,
                index,
                state,
                checkpoints,
                base,
                recovery,
                segment_needs: segment_bytes.saturating_add(reserve_bytes),
                dir,
            }),
        };
        if let Some(retention) = options.retention {
            let (stop, stopped) = mpsc::channel();
            let weak = Arc::downgrade(&store.shared);
            let thread = std::thread::Builder::new()
                .name("cb-store-retention".into())
                .spawn(move || crate::retention::run(weak, retention, stopped))
                .map_err(Error::io("starting the retention thread"))?;
            *store.shared.retainer.lock().expect("retention lock") = Some((stop, thread));
        }
        Ok(store)
    }

    /// The data dir.
    pub fn dir(&self) -> &DataDir {
        &self.shared.dir
    }

    /// What opening found and did: an index caught up or rebuilt, a torn tail cut, a
    /// migration.
    pub fn recovery(&self) -> &Recovery {
        &self.shared.recovery
    }

    /// The log's base, once retention has removed older segments.
    pub fn base(&self) -> Option<Base> {
        self.shared.base.read().expect("base lock").clone()
    }

    /// Whether appends are being taken (see [`Health`]). A full disk that has room again
    /// reads as writable at once, before the next append proves it.
    pub fn health(&self) -> Health {
        let health = self
            .shared
            .state
            .health
            .lock()
            .expect("health lock")
            .clone();
        match health {
            Health::DiskFull(_) if self.writable() => Health::Writable,
            other => other,
        }
    }

    /// True if an append can be expected to succeed now: the active segment has room for a
    /// few more groups, or the disk has room for a new segment. The dispatcher starts no
    /// attempt while this is false, since its outcome could not be recorded.
    pub fn writable(&self) -> bool {
        const ROOM: u64 = 64 * 1024;
        self.shared.state.room.load(Ordering::Acquire) >= ROOM
            || self
                .shared
                .log
                .storage()
                .free_bytes()
                .is_ok_and(|free| free >= self.shared.segment_needs)
    }

    /// Appends `inputs` as consecutive records and returns once they are durable.
    ///
    /// **Guarantee** (with [`Durability::Sync`], the default): when this returns `Ok`, every
    /// record and its snapshot body are in the log's segment and `fdatasync` has returned on
    /// it (after any new segment's creation was made durable with its directory) — so they
    /// survive a process crash and, provided the drive honours flush requests (as the kernel
    /// asks it to on `fdatasync`), a power loss. The records are committed atomically with
    /// the rest of their group: after a crash either all of them are in the log or none is.
    /// When this returns `Err`, none of them was acknowledged and none will be in the log:
    /// [`Error::DiskFull`] when the disk had no room (a later append may succeed),
    /// [`Error::Io`] for another write error.
    ///
    /// Sequence numbers are dense and increasing across all appenders; all records of one
    /// call are consecutive and share one timestamp, never earlier than any before it.
    /// Concurrent calls are grouped and share one sync.
    pub fn append(&self, inputs: Vec<Input>) -> Result<Appended> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.append_then(inputs, move |result| {
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// [`append`](Self::append) without blocking: `reply` is called on the commit or sync
    /// thread with the outcome, under the same guarantee. It must be quick (send on a
    /// channel).
    pub fn append_then(
        &self,
        inputs: Vec<Input>,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        match prepare(inputs) {
            Ok(prepared) => self.submit(Batch::Fresh(prepared), Box::new(reply), false),
            Err(e) => reply(Err(e)),
        }
    }

    /// [`append_then`](Self::append_then) for records nobody waits on to go on (an
    /// attempt's outcome): the same guarantee before `reply`, but the reply may come up to
    /// 2 ms later, so that more groups share one `fdatasync`. An append someone waits on
    /// ends the wait at once.
    pub fn append_patiently_then(
        &self,
        inputs: Vec<Input>,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        match prepare(inputs) {
            Ok(prepared) => self.submit(Batch::Fresh(prepared), Box::new(reply), true),
            Err(e) => reply(Err(e)),
        }
    }

    /// Appends records that already carry their sequence number and timestamp (an import,
    /// or a generated benchmark log). They must continue this log exactly — the first one
    /// numbered [`next_seq`](Self::next_seq), densely, timestamps never decreasing — and
    /// each change must come with its snapshot and nothing else with one. Same durability
    /// as [`append`](Self::append).
    pub fn append_stamped(&self, records: Vec<(Record, Option<Snapshot>)>) -> Result<Appended> {
        if records.is_empty() {
            return Err(Error::Rejected("nothing to append".into()));
        }
        let items = records
            .into_iter()
            .map(|(record, body)| (record, body.as_ref().map(segment::encode_body)))
            .collect();
        self.wait(Batch::Stamped(items))
    }

    fn wait(&self, batch: Batch) -> Result<Appended> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            batch,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
            false,
        );
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    fn submit(&self, batch: Batch, reply: crate::commit::Reply, patient: bool) {
        let queue = self.shared.queue.as_ref().expect("queue lives until drop");
        let request = Request {
            batch,
            reply,
            patient,
        };
        if let Err(mpsc::SendError(req)) = queue.send(request) {
            (req.reply)(Err(Error::Closed));
        }
    }

    /// An empty log continues after an imported base (see [`Store::import_base`]).
    pub(crate) fn rebase(&self, base: Seq, at: Timestamp) -> Result<()> {
        self.wait(Batch::Rebase(base, at)).map(|_| ())
    }

    /// Makes everything appended so far durable, whatever the [`Durability`].
    pub fn sync(&self) -> Result<()> {
        self.wait(Batch::Sync).map(|_| ())
    }

    /// The last durable record's sequence number; `None` for an empty log.
    pub fn last_seq(&self) -> Option<Seq> {
        match self.tip().0 {
            0 => None,
            n => Some(Seq(n)),
        }
    }

    pub(crate) fn tip(&self) -> Seq {
        Seq(self.shared.state.tip.load(Ordering::Acquire))
    }

    /// The number the next record will get (1 for an empty log).
    pub fn next_seq(&self) -> Seq {
        Seq(self.tip().0 + 1)
    }

    /// Which rules each record of this log is folded under ([`cb_core::Rules`]): the newest
    /// from the first record of the first segment started under them, and version 1 before
    /// it. A log that has none yet (written by an older build) switches at the next record
    /// appended, which starts a segment of the newest rules (`SegmentWriter::fits`); an
    /// empty log is all newest. Every fold of this log's records takes it from here.
    pub fn rules(&self) -> cb_core::Rules {
        let live = self.shared.log.live();
        let current_from = live
            .iter()
            .find(|(_, s)| s.header.rules >= crate::RULES_VERSION)
            .map_or_else(|| self.next_seq(), |(_, s)| s.header.first_seq);
        cb_core::Rules { current_from }
    }

    /// The delivery rules version record `seq` was written under: the version in the header
    /// of the segment that holds it (each segment records the rules of the build that
    /// started it, and a build of other rules starts a new segment). Kept records and
    /// records before the base count as the base's: its state was folded under them.
    pub fn rules_at(&self, seq: Seq) -> u32 {
        let live = self.shared.log.live();
        let holding = live
            .iter()
            .rev()
            .find(|(_, s)| s.header.first_seq <= seq)
            .or(live.first());
        holding.map_or(crate::RULES_VERSION, |(_, s)| s.header.rules)
    }

    /// The first seq the log holds in full: the one after its base (1 without one).
    pub fn first_seq(&self) -> Seq {
        Seq(self.base().map_or(0, |b| b.seq.0) + 1)
    }

    /// The durable records from `from` on, in order, up to the last durable one when called
    /// (from the log's [`first_seq`](Self::first_seq) at the earliest).
    pub fn records(&self, from: Seq) -> impl Iterator<Item = Result<Record>> + 'static {
        self.records_between(from, self.tip())
    }

    /// The durable records numbered `from..=to`, in order.
    pub fn records_between(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<Record>> + 'static {
        let from = from.max(self.first_seq());
        let to = to.min(self.tip());
        if from > to {
            return Records::empty();
        }
        let loc = match self.shared.index.loc(from) {
            Ok(Some(loc)) => loc,
            Ok(None) => return Records::failed(Error::Missing { seq: from }),
            Err(e) => return Records::failed(e),
        };
        // The group the index points at must hold `from`, or the stream would start
        // elsewhere without a word.
        let mut head = [0u8; segment::GROUP_HEAD_LEN];
        let holds = self
            .shared
            .log
            .read(from, loc.segment, u64::from(loc.group), &mut head)
            .ok()
            .and_then(|()| segment::GroupHead::decode(&head).ok())
            .is_some_and(|h| h.first <= from && from <= h.last);
        if !holds {
            return Records::failed(
                self.shared
                    .index
                    .give_up(format!("it pointed record {from} at a group without it")),
            );
        }
        match GroupCursor::new(
            self.shared.log.clone(),
            loc.segment,
            u64::from(loc.group),
            None,
        ) {
            Ok(cursor) => Records::new(cursor, from, to),
            Err(e) => Records::failed(e),
        }
    }

    /// One durable record.
    pub fn record(&self, seq: Seq) -> Result<Option<Record>> {
        match self.record_frame(seq)? {
            Some(frame) => codec::decode_record(seq, &frame).map(Some),
            None => Ok(None),
        }
    }

    /// Where the index says durable record `seq` is.
    fn loc(&self, seq: Seq) -> Result<Option<Loc>> {
        if seq.0 == 0 || seq > self.tip() {
            return Ok(None);
        }
        self.shared.index.loc(seq)
    }

    /// The stored frame of durable record `seq`, checked against the seq it was looked up
    /// by (a frame whose checksum holds but names another record: the index is stale).
    pub(crate) fn record_frame(&self, seq: Seq) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self.loc(seq)? else {
            return Ok(None);
        };
        let mut frame = Vec::new();
        self.shared.log.read_frame(seq, &loc, &mut frame)?;
        match codec::frame_seq(&frame) {
            Ok(found) if found == seq => Ok(Some(frame)),
            Ok(found) => Err(self
                .shared
                .index
                .give_up(format!("it pointed record {seq} at record {found}"))),
            Err(reason) => Err(Error::Corrupt { seq, reason }),
        }
    }

    /// The snapshot that change `version` appended (`None` if `version` is not a change).
    pub fn snapshot(&self, version: Seq) -> Result<Option<Snapshot>> {
        self.snapshot_reader().get(version)
    }

    /// A reader for many snapshots (`cbctl replay`'s digest audit): told which versions
    /// come next, it reads their bodies a stretch at a time (see [`SnapshotReader`]).
    pub fn snapshot_reader(&self) -> SnapshotReader<'_> {
        SnapshotReader {
            store: self,
            run: Vec::new(),
            run_at: (0, 0),
            run_loaded: false,
            plan: Vec::new(),
            planned: 0,
            alone: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The file's latest version: the sequence number of its last durable change (a kept
    /// one, when the file has not changed since the base).
    pub fn latest_version(&self, file: &FileKey) -> Result<Option<Seq>> {
        self.shared.index.latest_change(file, self.tip())
    }

    /// Sequence numbers of every durable record one file's fold needs after the base, in
    /// order: the file's own records and its project's (callback configuration), found
    /// through the indexes without scanning the log. Ticks are left out: a per-file fold
    /// fires deadlines when it reaches the next record or the time it is asked about.
    pub fn file_seqs(&self, file: &FileKey) -> Result<Vec<Seq>> {
        let (tip, first) = (self.tip(), self.first_seq());
        let keep = |seq: &Seq| *seq >= first && *seq <= tip;
        let mut seqs: Vec<Seq> = self
            .shared
            .index
            .file_entries(file)?
            .into_iter()
            .map(|(seq, _)| seq)
            .filter(keep)
            .collect();
        seqs.extend(
            self.shared
                .index
                .project_seqs(&file.project)?
                .into_iter()
                .filter(keep),
        );
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Where `file`'s fold starts when the log has a base: the state there as far as the
    /// file can tell, and its version (its kept change). `None` without a base: the fold
    /// starts at the log's first record.
    pub fn file_start(&self, file: &FileKey) -> Result<Option<cb_core::FileStart>> {
        let Some(base) = self.base() else {
            return Ok(None);
        };
        let state = self.base_state(&base)?;
        // Its latest change at or before the base, whatever came after.
        let version = self.shared.index.latest_change(file, base.seq)?;
        Ok(Some(cb_core::FileStart {
            state: state.for_file(file),
            version,
        }))
    }

    /// The core's state at the log's base (`None` without one): where an audit of the kept
    /// history starts.
    pub fn base_checkpoint(&self) -> Result<Option<cb_core::Checkpoint>> {
        match self.base() {
            Some(base) => Ok(Some((*self.base_state(&base)?).clone())),
            None => Ok(None),
        }
    }

    /// The base checkpoint, read once and kept.
    fn base_state(&self, base: &Base) -> Result<Arc<cb_core::Checkpoint>> {
        let mut cached = self.shared.base_state.lock().expect("base lock");
        if let Some(cp) = cached.as_ref().filter(|cp| cp.last_seq == Some(base.seq)) {
            return Ok(cp.clone());
        }
        let cp = Arc::new(base.checkpoint(self.shared.log.storage())?);
        *cached = Some(cp.clone());
        Ok(cp)
    }

    /// The records [`file_seqs`](Self::file_seqs) names, decoded.
    pub fn file_records(&self, file: &FileKey) -> Result<Vec<Record>> {
        self.file_seqs(file)?
            .into_iter()
            .map(|seq| self.record(seq)?.ok_or(Error::Missing { seq }))
            .collect()
    }

    /// The last durable record (what a restart continues from).
    pub fn last_record(&self) -> Result<Option<Record>> {
        match self.last_seq() {
            Some(seq) => self.record(seq),
            None => Ok(None),
        }
    }

    /// Whether the index is held in memory, because sled hung or failed (see
    /// [`Recovery`]'s `rebuilt`): until the store is opened again, or sled works again.
    pub fn index_in_memory(&self) -> bool {
        self.shared.index.in_memory_only()
    }

    /// The bytes the data dir holds, by part, and the space left.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut checkpoint_bytes = 0;
        for f in self.checkpoints()? {
            checkpoint_bytes += f.bytes;
        }
        Ok(DiskUsage {
            log_bytes: self.shared.log.size_on_disk()?,
            index_bytes: self.shared.index.size_on_disk(),
            checkpoint_bytes,
            free_bytes: self
                .shared
                .log
                .storage()
                .free_bytes()
                .map_err(Error::io("reading the free space"))?,
            preallocated_bytes: self.shared.state.room.load(Ordering::Acquire),
        })
    }

    /// The log's size on disk, in bytes: segments, index and checkpoints.
    pub fn size_on_disk(&self) -> Result<u64> {
        let u = self.disk_usage()?;
        Ok(u.log_bytes + u.index_bytes + u.checkpoint_bytes)
    }
}

/// The index writer thread: moves durable records' index entries into sled as the tip
/// advances. At the end (the store closing) it writes out everything durable and flushes
/// sled, so the next open has nothing to catch up (with `Buffered`, nothing past the last
/// sync). It may be stuck in sled for good: the index keeper sees that and goes on without
/// it.
fn run_indexer(index: &Index, state: &CommitState, durable: Receiver<Seq>) {
    let mut tip = Seq(state.tip.load(Ordering::Acquire));
    loop {
        match durable.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(next) => {
                tip = tip.max(next);
                tip = durable.try_iter().fold(tip, Seq::max);
                if index.broken().is_none() {
                    if let Err(e) = index.spill(tip, false) {
                        tracing::warn!(error = %e, "the index failed: rebuilding it from the log");
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Closing: write out what is in memory, so the next open has nothing to catch up —
    // only what an fdatasync covered: sled is not crashed with the log, and a mark past the
    // log's durable end whose anchor survived would hide a hole before it. If that fails,
    // the next open catches up or rebuilds; nothing else is tried now.
    let tip = Seq(state.synced.load(Ordering::Acquire));
    if index.broken().is_none() {
        if let Err(e) = index.spill(tip, true).and_then(|_| index.flush()) {
            tracing::warn!(error = %e, "the index could not be written out; the next start catches it up or rebuilds it");
        }
    }
}

/// What the index keeper needs.
struct Keeper {
    index: Arc<Index>,
    log: Arc<SegmentLog>,
    base: Arc<RwLock<Option<Base>>>,
    retaining: Arc<std::sync::Mutex<()>>,
    state: Arc<CommitState>,
}

/// How a rebuild went.
enum Rebuild {
    /// Into sled.
    Sled,
    /// Into memory, because sled failed as said; `hung`: sled hung.
    Memory { hung: bool },
    /// Not at all (tried again later).
    Failed,
    /// The store is closing.
    Stopped,
}

/// The index keeper thread: watches every call into sled for a hang (the index writer's,
/// a reader's, retention's), and rebuilds the index from the segments when it was given
/// up — into a new sled on a thread of its own, itself watched, and into memory when sled
/// hangs or fails there too. While the index is in memory because sled failed (not hung),
/// sled is tried again every [`StoreOptions::index_sled_retry`].
fn run_keeper(keeper: &Keeper, stop: &Receiver<()>) {
    let limit = keeper.index.settings().hang_limit;
    let poll = (limit / 4).clamp(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_secs(1),
    );
    let mut next_rebuild = std::time::Instant::now();
    // An index the open had to build in memory waits like one built so here.
    let mut sled_again_at = keeper
        .index
        .in_memory_only()
        .then(|| std::time::Instant::now() + keeper.index.settings().sled_retry);
    // sled's I/O threads are the process's: once a call hung, a new index would hang too.
    let mut sled_hung = false;
    loop {
        match stop.recv_timeout(poll) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Some(why) = keeper.index.check_hang() {
            if !sled_hung {
                tracing::error!(reason = %why, "sled hung: the index is given up and rebuilt in memory");
            }
            sled_hung = true;
        }
        let now = std::time::Instant::now();
        let retry_sled = keeper.index.in_memory_only()
            && !sled_hung
            && sled_again_at.is_some_and(|at| now >= at);
        let broken = keeper.index.broken();
        if !(broken.is_some() && now >= next_rebuild || retry_sled) {
            continue;
        }
        let reason =
            broken.unwrap_or_else(|| "trying sled again for the index held in memory".into());
        match rebuild_running(keeper, &reason, !sled_hung, stop) {
            Rebuild::Sled => sled_again_at = None,
            Rebuild::Memory { hung } => {
                sled_hung |= hung;
                sled_again_at =
                    Some(std::time::Instant::now() + keeper.index.settings().sled_retry);
            }
            Rebuild::Failed => {
                next_rebuild = std::time::Instant::now() + std::time::Duration::from_secs(30);
                // An index in memory that sled could not replace stays as it is.
                if keeper.index.in_memory_only() {
                    sled_again_at =
                        Some(std::time::Instant::now() + keeper.index.settings().sled_retry);
                }
            }
            Rebuild::Stopped => return,
        }
    }
}

/// Rebuilds the index from the segments while the store runs, and swaps it in: into sled
/// when `sled` (on a thread of its own, watched), else — or when that fails — into memory.
fn rebuild_running(keeper: &Keeper, reason: &str, sled: bool, stop: &Receiver<()>) -> Rebuild {
    let started = std::time::Instant::now();
    // No base advance meanwhile: the rebuilt index is of the base it started from.
    let _no_advance = keeper.retaining.lock().expect("retention lock");
    let base = keeper.base.read().expect("base lock").clone();
    let tip = Seq(keeper.state.synced.load(Ordering::Acquire));
    let index = &keeper.index;
    let mut sled_failed = None;
    let mut hung = false;
    if sled {
        let watch = Arc::new(crate::watch::Watch::default());
        let (tx, rx) = mpsc::channel();
        let spawned = {
            let (log, base, watch, settings) = (
                keeper.log.clone(),
                base.clone(),
                watch.clone(),
                index.settings().clone(),
            );
            std::thread::Builder::new()
                .name("cb-index-rebuild".into())
                .spawn(move || {
                    let built = Index::fresh(&settings, watch)
                        .and_then(|fresh| build_index(fresh, &log, base.as_ref(), tip));
                    let _ = tx.send(built);
                })
        };
        let limit = index.settings().hang_limit;
        let poll = (limit / 4).clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(1),
        );
        let built = match spawned {
            Err(e) => Err(format!("cannot start a thread to rebuild it: {e}")),
            Ok(_) => loop {
                match rx.recv_timeout(poll) {
                    Ok(built) => break built.map_err(|e| e.to_string()),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(why) = watch.check(limit) {
                            // The builder is left where it is stuck: every call it makes
                            // from now on fails.
                            hung = true;
                            break Err(why);
                        }
                        match stop.try_recv() {
                            Err(mpsc::TryRecvError::Empty) => {}
                            _ => return Rebuild::Stopped,
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break Err("the rebuild thread stopped".into())
                    }
                }
            },
        };
        match built {
            Ok((fresh, records)) => {
                index.adopt(fresh, tip);
                if let Err(e) = index.remove_older() {
                    tracing::warn!(error = %e, "removing the old index");
                }
                tracing::warn!(%reason, records, took_ms = started.elapsed().as_millis() as u64,
                    "rebuilt the index from the log");
                return Rebuild::Sled;
            }
            Err(why) => sled_failed = Some(why),
        }
    }
    if index.in_memory_only() && index.broken().is_none() {
        // sled was tried again for an index already in memory, and failed: it stays.
        tracing::warn!(
            sled = sled_failed.as_deref().unwrap_or_default(),
            "sled still cannot hold the index; it stays in memory (tried again later)"
        );
        return Rebuild::Memory { hung };
    }
    match build_index(
        Index::in_memory(index.settings()),
        &keeper.log,
        base.as_ref(),
        tip,
    ) {
        Ok((fresh, records)) => {
            index.adopt(fresh, tip);
            let sled = sled_failed.as_deref().unwrap_or("sled hung before");
            tracing::error!(%reason, %sled, records, took_ms = started.elapsed().as_millis() as u64,
                "rebuilt the index from the log in memory: it stays there until cbd restarts or sled works again (some 40 bytes per record)");
            Rebuild::Memory { hung }
        }
        Err(e) => {
            tracing::error!(%reason, error = %e, "rebuilding the index failed; reads that need it fail until it is rebuilt (tried again in 30 s)");
            Rebuild::Failed
        }
    }
}

/// Indexes the live records up to `tip` (and the base's kept ones) into `fresh`.
fn build_index(
    fresh: Index,
    log: &Arc<SegmentLog>,
    base: Option<&Base>,
    tip: Seq,
) -> Result<(Index, u64)> {
    if let Some(base) = base {
        let kept = recover::read_kept(log, base)?;
        fresh.set_base(base.seq, base.kept_segment);
        fresh.write_kept(base.seq, base.kept_segment, &kept)?;
    }
    let first = Seq(base.map_or(0, |b| b.seq.0) + 1);
    let mut records = 0;
    if tip >= first {
        let (id, _) = log
            .live()
            .into_iter()
            .next()
            .ok_or(Error::Missing { seq: first })?;
        let mut cursor = GroupCursor::new(log.clone(), id, SEGMENT_HEADER_LEN, Some(first))?;
        let mut ids = RecentIds::default();
        let mut notes = Vec::new();
        'groups: while let Some(head) = cursor.next_group()? {
            if head.first > tip {
                // Being written past the durable tip: not the index's yet.
                break;
            }
            let (block, segment, at) = cursor.records();
            for entry in segment::record_entries(&head, segment, at, block) {
                let entry = entry?;
                if entry.seq > tip {
                    break 'groups;
                }
                let record = codec::decode_checked(entry.seq, &entry.frame[4..], &mut ids)?;
                let crc = codec::frame_crc(entry.frame).expect("a checked frame");
                notes.push((record, entry.loc, crc));
                records += 1;
            }
            if notes.len() >= crate::index::LOC_CHUNK as usize {
                fresh.note(notes.iter().map(|(r, l, c)| (r, l, *c)));
                notes.clear();
                fresh.spill(fresh.noted(), false)?;
            }
        }
        fresh.note(notes.iter().map(|(r, l, c)| (r, l, *c)));
    }
    fresh.spill(tip, true)?;
    fresh.flush()?;
    Ok((fresh, records))
}

fn prepare(inputs: Vec<Input>) -> Result<Vec<Prepared>> {
    if inputs.is_empty() {
        return Err(Error::Rejected("nothing to append".into()));
    }
    inputs
        .into_iter()
        .map(|input| match input {
            Input::Change(c) => Ok(Prepared {
                body: Some(segment::encode_body(&c.snapshot)),
                kind: RecordKind::ChangeAppended {
                    file: c.file,
                    event: c.event,
                    callbacks: c.callbacks,
                },
            }),
            Input::Record(RecordKind::ChangeAppended { file, .. }) => Err(Error::Rejected(
                format!("a change to {file} needs its snapshot: append it as Input::Change"),
            )),
            Input::Record(kind) => Ok(Prepared { kind, body: None }),
        })
        .collect()
}

/// Iterates records group by group, decoding each record when it is asked for.
pub(crate) struct Records {
    cursor: Option<GroupCursor>,
    /// The group being read: its head, and where the next entry is in its records block.
    group: Option<(segment::GroupHead, usize, Seq)>,
    ids: RecentIds,
    failed: Option<Error>,
    from: Seq,
    to: Seq,
}

impl Records {
    fn new(cursor: GroupCursor, from: Seq, to: Seq) -> Records {
        Records {
            cursor: Some(cursor),
            group: None,
            ids: RecentIds::default(),
            failed: None,
            from,
            to,
        }
    }

    fn empty() -> Records {
        Records {
            cursor: None,
            group: None,
            ids: RecentIds::default(),
            failed: None,
            from: Seq(1),
            to: Seq(0),
        }
    }

    fn failed(e: Error) -> Records {
        Records {
            failed: Some(e),
            ..Records::empty()
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if let Some(e) = self.failed.take() {
            self.cursor = None;
            return Some(Err(e));
        }
        loop {
            let cursor = self.cursor.as_mut()?;
            if let Some((head, at, seq)) = &mut self.group {
                if *seq <= head.last {
                    let this = *seq;
                    if this > self.to {
                        self.cursor = None;
                        return None;
                    }
                    let (block, _, _) = cursor.records();
                    let decoded = match segment::frame_at(block, *at) {
                        Ok((frame, next)) => {
                            *at = next;
                            *seq = Seq(this.0 + 1);
                            if this < self.from {
                                continue;
                            }
                            codec::raw_unframe(frame)
                                .map_err(|reason| Error::Corrupt { seq: this, reason })
                                .and_then(|payload| {
                                    codec::decode_checked(this, payload, &mut self.ids)
                                })
                        }
                        Err(reason) => {
                            self.cursor = None;
                            Err(Error::Corrupt { seq: this, reason })
                        }
                    };
                    // A record that fails its checksum is reported and the next one read:
                    // its entry's length still says where that one is.
                    return Some(decoded);
                }
                self.group = None;
            }
            match cursor.next_group() {
                Ok(Some(head)) => {
                    if head.first > self.to {
                        self.cursor = None;
                        return None;
                    }
                    self.group = Some((head, 0, head.first));
                }
                Ok(None) => {
                    self.cursor = None;
                    return None;
                }
                Err(e) => {
                    self.cursor = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Reads snapshots, many at a time when told which come next: `cbctl replay` announces the
/// versions of a batch ([`expect`](Self::expect)), and the reader reads each stretch of
/// bodies that lie close together in one read instead of one read per body. Versions asked
/// for outside the plan are read alone.
pub struct SnapshotReader<'s> {
    store: &'s Store,
    /// Bytes of segment `run_at.0` from offset `run_at.1`, once loaded (`run_loaded`). The
    /// buffer is kept from read to read.
    run: Vec<u8>,
    run_at: (u32, u64),
    run_loaded: bool,
    /// Versions announced by `expect`, increasing, and how many of them have been passed.
    plan: Vec<Seq>,
    planned: usize,
    /// A body read on its own, outside any run.
    alone: Vec<u8>,
    /// The offset table of the body `with_view` shows, kept from body to body.
    ends: Vec<u32>,
}

/// The most bytes of bodies a [`SnapshotReader`] reads at once.
const RUN_BYTES: u64 = 8 * 1024 * 1024;

/// The widest gap between two planned bodies that one read spans: copying a few unneeded
/// bodies costs less than another system call.
const PLAN_GAP: u64 = 4 * 1024;

impl SnapshotReader<'_> {
    /// Announces the versions to be asked for next, in increasing order (repeats allowed).
    pub fn expect(&mut self, versions: impl IntoIterator<Item = Seq>) {
        self.plan.clear();
        self.plan.extend(versions);
        self.planned = 0;
    }

    /// The snapshot that change `version` appended (`None` if `version` is not a change).
    pub fn get(&mut self, version: Seq) -> Result<Option<Snapshot>> {
        self.with_view(version, |view| view.to_snapshot())
    }

    /// What `f` makes of the snapshot that change `version` appended, seen where it was read
    /// instead of copied into a [`Snapshot`] (`None` if `version` is not a change): replay
    /// renders every body it checks this way.
    pub fn with_view<R>(
        &mut self,
        version: Seq,
        f: impl FnOnce(SnapshotView<'_>) -> R,
    ) -> Result<Option<R>> {
        let Some(range) = self.read_body(version)? else {
            return Ok(None);
        };
        let entry = match range {
            Some(r) => &self.run[r],
            None => &self.alone[..],
        };
        let payload = match segment::checked_body(version, entry) {
            Ok(p) => p,
            Err(segment::BodyCheck::Damaged(e)) => return Err(e),
            // A whole body of another change: the index is stale.
            Err(segment::BodyCheck::OtherChange(found)) => {
                return Err(self.store.shared.index.give_up(format!(
                    "it pointed change {version} at change {found}'s body"
                )))
            }
        };
        let view = segment::decode_body(version, payload, &mut self.ends)?;
        Ok(Some(f(view)))
    }

    /// Reads `version`'s body entry: `Some(Some(range))` in the run, `Some(None)` alone,
    /// `None` when `version` is not a change.
    fn read_body(&mut self, version: Seq) -> Result<Option<Option<std::ops::Range<usize>>>> {
        let Some(loc) = self.store.loc(version)? else {
            return Ok(None);
        };
        if loc.body_len == 0 {
            return Ok(None);
        }
        let (at, end) = (
            u64::from(loc.body),
            u64::from(loc.body) + u64::from(loc.body_len),
        );
        let in_run = self.run_loaded
            && self.run_at.0 == loc.segment
            && self.run_at.1 <= at
            && end <= self.run_at.1 + self.run.len() as u64;
        if !in_run {
            if self.plan_covers(version) {
                let to = self.planned_end(&loc)?;
                self.run_loaded = false;
                self.run.resize((to - at) as usize, 0);
                self.store
                    .shared
                    .log
                    .read(version, loc.segment, at, &mut self.run)?;
                self.run_at = (loc.segment, at);
                self.run_loaded = true;
            } else {
                self.store
                    .shared
                    .log
                    .read_body(version, &loc, &mut self.alone)?;
                return Ok(Some(None));
            }
        }
        let from = (at - self.run_at.1) as usize;
        Ok(Some(Some(from..from + loc.body_len as usize)))
    }

    /// True if `version` is in the plan; moves the plan's cursor up to it.
    fn plan_covers(&mut self, version: Seq) -> bool {
        let passed = self.plan[self.planned..].partition_point(|v| *v < version);
        self.planned += passed;
        self.plan.get(self.planned) == Some(&version)
    }

    /// Where the stretch starting with the planned body at `loc` ends: it goes on over the
    /// next planned bodies of the same segment while each starts within [`PLAN_GAP`] of the
    /// stretch's end, up to [`RUN_BYTES`].
    fn planned_end(&self, loc: &Loc) -> Result<u64> {
        let start = u64::from(loc.body);
        let mut end = start + u64::from(loc.body_len);
        for next in &self.plan[self.planned + 1..] {
            let Some(l) = self.store.loc(*next)? else {
                continue;
            };
            if l.body_len == 0 || l.segment != loc.segment {
                if l.segment != loc.segment {
                    break;
                }
                continue;
            }
            let (next_at, next_end) =
                (u64::from(l.body), u64::from(l.body) + u64::from(l.body_len));
            if next_at < end {
                continue;
            }
            if next_at - end > PLAN_GAP || next_end - start > RUN_BYTES {
                break;
            }
            end = next_end;
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{file, seed_like};

    fn change(i: u64, n: u64) -> Input {
        let f = file(i);
        Input::Change(Change {
            snapshot: seed_like(&f, n),
            file: f,
            event: EventKind::Rated,
            callbacks: None,
        })
    }

    fn small() -> StoreOptions {
        StoreOptions {
            segment_bytes: 16 * 1024,
            reserve_bytes: Some(0),
            ..StoreOptions::default()
        }
    }

    /// Flips one byte of the segment file at `offset` of `segment`.
    fn flip(dir: &Path, segment: u32, offset: u64) {
        use std::os::unix::fs::FileExt;
        let path = dir
            .join("segments")
            .join(crate::seglog::segment_name(segment));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
    }

    fn remove_index(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("index-")
            {
                std::fs::remove_dir_all(p).unwrap();
            }
        }
    }

    fn loc(store: &Store, seq: u64) -> Loc {
        store.shared.index.loc(Seq(seq)).unwrap().unwrap()
    }

    /// Damage inside the log (not its tail) is named by seq when read, and the records
    /// around it still read; the body of a damaged change too.
    #[test]
    fn a_damaged_record_or_body_is_named_by_its_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let (l2, l4) = {
            let store = Store::open(tmp.path(), small()).unwrap();
            for i in 0..6 {
                store.append(vec![change(i, i)]).unwrap();
            }
            (loc(&store, 2), loc(&store, 4))
        };
        flip(
            tmp.path(),
            l2.segment,
            u64::from(l2.record + l2.record_len - 2),
        );
        flip(tmp.path(), l4.segment, u64::from(l4.body + l4.body_len - 2));
        let store = Store::open(tmp.path(), small()).unwrap();
        let results: Vec<_> = store.records(Seq(1)).collect();
        assert_eq!(results.len(), 6);
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (1, Err(Error::Corrupt { seq, reason })) => {
                    assert_eq!(*seq, Seq(2));
                    assert!(reason.contains("checksum"), "{reason}");
                }
                (1, other) => panic!("record 2: expected Corrupt, got {other:?}"),
                (_, r) => assert!(r.is_ok(), "record {}: {r:?}", i + 1),
            }
        }
        assert!(matches!(
            store.record(Seq(2)),
            Err(Error::Corrupt { seq: Seq(2), .. })
        ));
        assert!(matches!(
            store.snapshot(Seq(4)),
            Err(Error::Corrupt { seq: Seq(4), .. })
        ));
        assert_eq!(
            store.snapshot(Seq(5)).unwrap(),
            Some(seed_like(&file(4), 4))
        );
    }

    /// A damaged last group is what a torn write looks like: cut at open, and said.
    #[test]
    fn a_damaged_last_group_is_cut_at_open_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let l5 = {
            let store = Store::open(tmp.path(), small()).unwrap();
            for i in 0..5 {
                store.append(vec![change(i, i)]).unwrap();
            }
            loc(&store, 5)
        };
        flip(tmp.path(), l5.segment, u64::from(l5.body) + 20);
        let store = Store::open(tmp.path(), small()).unwrap();
        assert_eq!(store.last_seq(), Some(Seq(4)));
        let cut = store.recovery().cut.clone().expect("a cut was made");
        assert_eq!((cut.segment, cut.at), (l5.segment, u64::from(l5.group)));
        // The log goes on from there.
        let a = store.append(vec![change(9, 9)]).unwrap();
        assert_eq!(a.first, Seq(5));
        drop(store);
        let store = Store::open(tmp.path(), small()).unwrap();
        assert_eq!(store.recovery().cut, None);
        assert_eq!(
            store.snapshot(Seq(5)).unwrap(),
            Some(seed_like(&file(9), 9))
        );
    }

    /// The groups of a tail lost at a crash (its first group missing, later ones whole but
    /// never made durable) are cut at open with it: a log grown back to one of them must not
    /// take it for its own next record — an older one, never acknowledged, whose time runs
    /// backwards (a restore's fold panics on it).
    #[test]
    fn a_lost_tail_is_cut_whole_so_the_log_never_grows_back_into_it() {
        let tmp = tempfile::tempdir().unwrap();
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_700_000_000_000));
        let options = |durability| {
            let now = now.clone();
            StoreOptions {
                durability,
                clock: Box::new(move || Timestamp(now.load(Ordering::SeqCst))),
                ..small()
            }
        };
        let tick = || vec![Input::Record(RecordKind::Ticked)];
        let (l2, l3) = {
            let store = Store::open(tmp.path(), options(Durability::Buffered)).unwrap();
            store.append(tick()).unwrap();
            store.sync().unwrap();
            // Two groups written while only record 1 was durable.
            store.append(tick()).unwrap();
            store.append(tick()).unwrap();
            store.sync().unwrap();
            (loc(&store, 2), loc(&store, 3))
        };
        // As a power loss leaves it: record 2's group lost, record 3's kept.
        {
            use std::os::unix::fs::FileExt;
            let path = tmp
                .path()
                .join("segments")
                .join(crate::seglog::segment_name(l2.segment));
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let zeros = vec![0u8; (l3.group - l2.group) as usize];
            f.write_all_at(&zeros, u64::from(l2.group)).unwrap();
        }
        // sled never held more than a sync covered: here, the index is simply rebuilt.
        remove_index(tmp.path());
        let store = Store::open(tmp.path(), options(Durability::Sync)).unwrap();
        assert_eq!(store.last_seq(), Some(Seq(1)));
        assert!(store.recovery().cut.is_some(), "{:?}", store.recovery());
        // Later, a group of the same size takes record 2's place.
        now.fetch_add(60_000, Ordering::SeqCst);
        assert_eq!(store.append(tick()).unwrap().first, Seq(2));
        assert_eq!(loc(&store, 2).group, l2.group);
        drop(store);
        let store = Store::open(tmp.path(), options(Durability::Sync)).unwrap();
        assert_eq!(
            store.last_seq(),
            Some(Seq(2)),
            "record 3 was never appended here"
        );
        assert_eq!(store.restore().unwrap().core.last_seq(), Some(Seq(2)));
    }

    /// Damage in an earlier group, proven acknowledged by a later group, is refused at open
    /// when the log is scanned there (an index rebuild), named by seq.
    #[test]
    fn damage_before_the_tail_is_refused_by_seq_not_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let l2 = {
            let store = Store::open(tmp.path(), small()).unwrap();
            for i in 0..4 {
                store.append(vec![change(i, i)]).unwrap();
            }
            loc(&store, 2)
        };
        flip(tmp.path(), l2.segment, u64::from(l2.record) + 3);
        // No index: the open scans every segment from the first.
        remove_index(tmp.path());
        let err = Store::open(tmp.path(), small()).err().expect("refused");
        assert!(matches!(err, Error::Corrupt { seq: Seq(2), .. }), "{err}");
    }

    /// An index whose locations reached sled but whose per-file entries did not (a crash
    /// before the first per-file segment) is caught up from the first record: every file's
    /// records are found after the open.
    #[test]
    fn per_file_entries_never_in_sled_are_caught_up_from_the_first_record() {
        let tmp = tempfile::tempdir().unwrap();
        let mut want: std::collections::BTreeMap<FileKey, Vec<Seq>> = Default::default();
        {
            let store = Store::open(tmp.path(), small()).unwrap();
            for i in 0..(crate::index::LOC_CHUNK + 500) {
                let a = store.append(vec![change(i % 13, i)]).unwrap();
                want.entry(file(i % 13)).or_default().push(a.first);
            }
        }
        // As a crash leaves it: locations in sled, no per-file segment yet.
        let index_dir = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("index-")
            })
            .unwrap();
        {
            let db = sled::open(&index_dir).unwrap();
            assert!(db.get(b"Mlocated").unwrap().is_some());
            db.remove(b"Mindexed").unwrap();
            for key in db.scan_prefix(b"X").keys() {
                db.remove(key.unwrap()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(tmp.path(), small()).unwrap();
        assert_eq!(store.recovery().rebuilt, None, "caught up, not rebuilt");
        for (f, seqs) in &want {
            assert_eq!(&store.file_seqs(f).unwrap(), seqs, "{f}");
        }
    }

    /// A segment of another format (a newer cb) is refused, not misread.
    #[test]
    fn a_data_dir_of_another_format_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path(), small()).unwrap());
        let path = tmp
            .path()
            .join("segments")
            .join(crate::seglog::segment_name(1));
        let mut header =
            crate::segment::SegmentHeader::decode(&std::fs::read(&path).unwrap()).unwrap();
        header.format = 99;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..64].copy_from_slice(&header.encode());
        std::fs::write(&path, bytes).unwrap();
        let err = Store::open(tmp.path(), small()).err().expect("refused");
        assert!(
            matches!(&err, Error::UnknownFormat { found, supported: crate::FORMAT_VERSION, .. } if found == "99"),
            "{err}"
        );
    }

    /// A log written in format 4 (before the `closed` outcome) opens and reads as it is;
    /// new records go to a new format-5 segment rather than after the old ones, so a build
    /// of format 4 refuses the new segment by its header instead of misreading a record.
    #[test]
    fn a_format_4_log_opens_and_grows_in_a_format_5_segment() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path(), small()).unwrap();
            store.append(vec![change(1, 1)]).unwrap();
            store.append(vec![change(2, 2)]).unwrap();
        }
        let dir = tmp.path().join("segments");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mut header = crate::segment::SegmentHeader::decode(&bytes).unwrap();
            header.format = crate::OLDEST_FORMAT_VERSION;
            bytes[..64].copy_from_slice(&header.encode());
            std::fs::write(&path, bytes).unwrap();
        }
        let store = Store::open(tmp.path(), small()).unwrap();
        assert_eq!(store.last_seq(), Some(Seq(2)));
        let before: Vec<u32> = store.shared.log.live().iter().map(|(id, _)| *id).collect();
        store.append(vec![change(3, 3)]).unwrap();
        let live = store.shared.log.live();
        let (newest, segment) = live.last().unwrap();
        assert!(!before.contains(newest), "appended into a format-4 segment");
        assert_eq!(segment.header.format, crate::FORMAT_VERSION);
        drop(store);
        let store = Store::open(tmp.path(), small()).unwrap();
        let seqs: Vec<u64> = store.records(Seq(1)).map(|r| r.unwrap().seq.0).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    /// A log whose segments were started under rules 1 folds them under rules 1, and the
    /// records appended after this build opened it under the newest rules, from the first
    /// seq of the segment they start.
    #[test]
    fn the_rules_switch_where_a_segment_of_the_newest_rules_starts() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path(), small()).unwrap();
            assert_eq!(store.rules().current_from, Seq(1));
            store.append(vec![change(1, 1)]).unwrap();
            store.append(vec![change(2, 2)]).unwrap();
        }
        for entry in std::fs::read_dir(tmp.path().join("segments")).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mut header = crate::segment::SegmentHeader::decode(&bytes).unwrap();
            header.rules = 1;
            bytes[..64].copy_from_slice(&header.encode());
            std::fs::write(&path, bytes).unwrap();
        }
        let store = Store::open(tmp.path(), small()).unwrap();
        assert_eq!(store.rules().current_from, Seq(3));
        assert_eq!(store.rules().version_at(Seq(2)), 1);
        store.append(vec![change(3, 3)]).unwrap();
        store.append(vec![change(4, 4)]).unwrap();
        assert_eq!(store.rules().current_from, Seq(3));
        assert_eq!(
            (store.rules_at(Seq(2)), store.rules_at(Seq(3))),
            (1, crate::RULES_VERSION)
        );
    }

    /// Every record says which rules it was written under (all the newest here).
    #[test]
    fn the_rules_version_is_recorded_per_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small()).unwrap();
        for i in 0..40 {
            store.append(vec![change(i, i)]).unwrap();
        }
        assert!(store.shared.log.live().len() > 1);
        for seq in 1..=40 {
            assert_eq!(store.rules_at(Seq(seq)), crate::RULES_VERSION);
        }
        for (_, s) in store.shared.log.live() {
            assert_eq!(
                (s.header.format, s.header.rules),
                (crate::FORMAT_VERSION, crate::RULES_VERSION)
            );
        }
    }

    /// Groups too big for a segment get one of their own; rolls leave a dense log that
    /// reads back in order across segments, and every body by itself.
    #[test]
    fn bodies_read_back_across_segments_and_rolls() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path(), small()).unwrap();
            for g in 0..10 {
                store
                    .append((0..7).map(|i| change(i, g * 7 + i)).collect())
                    .unwrap();
                store
                    .append(vec![Input::Record(RecordKind::Ticked)])
                    .unwrap();
            }
        }
        let store = Store::open(tmp.path(), small()).unwrap();
        assert!(
            store.shared.log.live().len() >= 4,
            "{} segments",
            store.shared.log.live().len()
        );
        let mut reader = store.snapshot_reader();
        for g in 0..10u64 {
            for i in 0..7u64 {
                let version = Seq(g * 8 + i + 1);
                let want = Some(seed_like(&file(i), g * 7 + i));
                assert_eq!(reader.get(version).unwrap(), want);
                assert_eq!(store.snapshot(version).unwrap(), want);
            }
            assert_eq!(
                reader.get(Seq(g * 8 + 8)).unwrap(),
                None,
                "a tick has no body"
            );
        }
        let seqs: Vec<u64> = store.records(Seq(1)).map(|r| r.unwrap().seq.0).collect();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
    }
}
