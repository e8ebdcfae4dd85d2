//! Group commit: one thread stamps and writes every append, many at a time; a second one
//! makes them durable and replies.
//!
//! Appenders hand a [`Request`] to the commit thread and wait for its reply. The commit
//! thread takes the first request, then everything else already queued (up to
//! [`StoreOptions::max_group_records`](crate::StoreOptions::max_group_records)), stamps the
//! group's records (dense sequence numbers, one timestamp) and writes them as one group at
//! the end of the active segment (`seglog.rs`) — one `write`. The group passes to the sync
//! thread, which takes every group written meanwhile, `fdatasync`s once, publishes the new
//! durable tip and only then replies: one sync shared by every appender of those groups,
//! and nothing else on the durable path (the index goes to sled later, `index.rs`). While
//! groups wait for the disk, the next ones are written.
//!
//! **When the disk refuses.** A group that cannot be written (no room for a new segment,
//! an I/O error) is refused — [`Error::DiskFull`] or [`Error::Io`] — and nothing of it is
//! acknowledged; the next group is written to the same place, so appends resume by
//! themselves once the disk takes them again. A failed `fdatasync` is worse: the kernel may
//! have dropped the pages it could not write and report the next sync clean, so every group
//! written since the last good sync is refused, and the commit thread goes back to where
//! they began and writes from there again ([`SegmentWriter::rewind`]). A roll to a new
//! segment waits until the sync thread has made everything before it durable, so a failure
//! never has to reach into a closed segment.
//!
//! Being the only writer of the log is what makes sequence numbers dense and increasing and
//! timestamps non-decreasing without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use cb_core::{FileKey, Record, RecordKind, Seq, Timestamp};

use crate::codec;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::log::{Appended, CommitHook, Durability};
use crate::seglog::{sync_error, SegmentWriter};
use crate::segment::{GroupBuilder, Loc};
use crate::storage::StorageFile;

/// One appender's records, before sequence numbers are known.
pub(crate) struct Request {
    pub(crate) batch: Batch,
    pub(crate) reply: Reply,
    /// Nobody waits on this append to go on (an attempt's outcome): its group may wait up
    /// to [`PATIENCE`] for others to share its `fdatasync`.
    pub(crate) patient: bool,
}

/// How long the sync thread holds a group of patient appends only, for more groups to
/// share one `fdatasync`. On a virtual disk every sync is a costly exit to the host: with
/// a sync for every two or three outcomes, delivery ran at 83 % of its rate with sled on
/// the durable path (whose slower flushes had batched them); 2 ms gets it back. Appends
/// someone waits on (an HTTP 202, a barrier) never wait: they end the hold at once.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_millis(2);

/// A hold ends early once this many records wait.
const PATIENT_RECORDS: usize = 4096;

pub(crate) type Reply = Box<dyn FnOnce(Result<Appended>) + Send>;

/// Records of one request; bodies are encoded by the appender, off the commit thread.
pub(crate) enum Batch {
    /// New records: the commit thread stamps `seq` and `at`.
    Fresh(Vec<Prepared>),
    /// Records that already have `seq` and `at` (an import); they must continue the log.
    Stamped(Vec<(Record, Option<Vec<u8>>)>),
    /// Not records: make everything written so far durable, whatever the durability
    /// setting, then reply (with `Appended` of count 0).
    Sync,
    /// Not records: an empty log now continues after a base imported at this seq and
    /// time (its kept segment and manifest are written): the next record is numbered after
    /// it, in a new segment.
    Rebase(Seq, Timestamp),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Fresh(v) => v.len(),
            Batch::Stamped(v) => v.len(),
            Batch::Sync | Batch::Rebase(..) => 0,
        }
    }
}

/// A record kind with its encoded snapshot body (changes only).
pub(crate) struct Prepared {
    pub(crate) kind: RecordKind,
    pub(crate) body: Option<Vec<u8>>,
}

/// Whether appends are being taken.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Health {
    /// The last group was written and made durable.
    Writable,
    /// The last group could not be written or synced for want of space; appends are tried
    /// again as they come.
    DiskFull(String),
    /// The last group failed with another I/O error; appends are tried again as they come.
    Failing(String),
}

/// What the commit and sync threads share with the store.
pub(crate) struct CommitState {
    /// The last durable sequence number (0: none). Readers never look past it. With
    /// [`Durability::Buffered`], the last acknowledged one, durable or not.
    pub(crate) tip: AtomicU64,
    /// The last sequence number an `fdatasync` made durable: `tip` with
    /// [`Durability::Sync`], behind it with `Buffered` until the next sync. What a group's
    /// head records as `synced_through`, and how far the index writer goes.
    pub(crate) synced: AtomicU64,
    pub(crate) health: Mutex<Health>,
    /// What a failed sync asks of the commit thread. The two parts change together, under
    /// one lock: a group tagged with an epoch older than a failure is refused, and then a
    /// rewind to before it is always pending.
    rewind: Mutex<Rewind>,
    /// Bytes the active segment has left (appends that fit need no new space).
    pub(crate) room: AtomicU64,
}

impl CommitState {
    pub(crate) fn new(tip: Seq, room: u64) -> CommitState {
        CommitState {
            tip: AtomicU64::new(tip.0),
            synced: AtomicU64::new(tip.0),
            health: Mutex::new(Health::Writable),
            rewind: Mutex::new(Rewind::default()),
            room: AtomicU64::new(room),
        }
    }

    fn set_health(&self, health: Health) {
        *self.health.lock().expect("health lock") = health;
    }

    fn note_failure(&self, e: &Error) {
        self.set_health(match e {
            Error::DiskFull { context } => Health::DiskFull(context.clone()),
            other => Health::Failing(other.to_string()),
        });
    }
}

/// See [`CommitState::rewind`].
#[derive(Default)]
struct Rewind {
    /// Bumped with every failed sync; groups written before the bump are refused.
    epoch: u64,
    /// The first seq a failed sync did not make durable, and where its group begins: the
    /// commit thread goes back there before its next group.
    to: Option<(Seq, (u32, u64))>,
}

/// One group's records, stamped, on their way into the group's bytes.
#[derive(Default)]
struct Staging {
    records: Vec<Record>,
    /// The frames' CRCs, by record (the index's anchors).
    crcs: Vec<u32>,
    group: GroupBuilder,
}

/// The commit thread's state.
pub(crate) struct Committer {
    pub(crate) index: Arc<Index>,
    pub(crate) max_group_records: usize,
    pub(crate) clock: Box<dyn FnMut() -> Timestamp + Send>,
    /// Invariant: the next record gets exactly this number.
    pub(crate) next: Seq,
    /// Invariant: no record gets an earlier `at`.
    pub(crate) last_at: Timestamp,
    pub(crate) writer: SegmentWriter,
    pub(crate) state: Arc<CommitState>,
    /// The second stage, moved to its own thread when the committer starts.
    pub(crate) syncer: Option<Syncer>,
}

/// A message to the sync thread.
enum ToSync {
    /// A group written to the segment named, waiting to be made durable.
    Written(Written),
    /// Everything before this is to be durable (a roll, or [`Batch::Sync`]): the reply says
    /// whether it is.
    Barrier(SyncSender<Result<()>>),
}

impl ToSync {
    fn is_patient(&self) -> bool {
        matches!(self, ToSync::Written(w) if w.patient)
    }

    fn records(&self) -> usize {
        match self {
            ToSync::Written(w) => w.records.len(),
            ToSync::Barrier(_) => 0,
        }
    }
}

struct Written {
    records: Vec<Record>,
    accepted: Vec<(Reply, Appended)>,
    /// Every appender of the group is patient ([`Request::patient`]).
    patient: bool,
    file: Arc<dyn StorageFile>,
    /// Where the group begins.
    at: (u32, u64),
    epoch: u64,
}

/// The sync thread's state: makes written groups durable, then replies, in log order.
pub(crate) struct Syncer {
    pub(crate) durability: Durability,
    pub(crate) on_commit: Option<CommitHook>,
    pub(crate) state: Arc<CommitState>,
    /// Told the new tip (the index writer thread), every [`NOTIFY_EVERY`] records: it has
    /// nothing to write before a chunk's worth is durable.
    pub(crate) durable: Option<mpsc::Sender<Seq>>,
    /// The durable tip the index writer was last told.
    pub(crate) told: Seq,
    /// The files written since their last `fdatasync`, and the first group written since
    /// then: with `Buffered`, groups are acknowledged long before a sync covers them.
    pub(crate) unsynced: Vec<(u32, Arc<dyn StorageFile>)>,
    pub(crate) first_unsynced: Option<(Seq, (u32, u64))>,
}

/// Records between two wake-ups of the index writer.
const NOTIFY_EVERY: u64 = 1024;

impl Committer {
    pub(crate) fn run(mut self, queue: Receiver<Request>) {
        // Groups written and not yet synced: this bounds how far writing runs ahead of the
        // disk.
        let (to_sync, from_commit) = mpsc::sync_channel::<ToSync>(64);
        let syncer = self.syncer.take().expect("a committer runs once");
        let sync_thread = std::thread::Builder::new()
            .name("cb-store-sync".into())
            .spawn(move || syncer.run(from_commit));
        let sync_thread = match sync_thread {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot start the sync thread: {e}");
                self.state.set_health(Health::Failing(why.clone()));
                for req in queue {
                    (req.reply)(Err(Error::Poisoned(why.clone())));
                }
                return;
            }
        };
        let mut group: Vec<Request> = Vec::new();
        while let Ok(first) = queue.recv() {
            let mut records = first.batch.len();
            group.push(first);
            while records < self.max_group_records {
                match queue.try_recv() {
                    Ok(req) => {
                        records += req.batch.len();
                        group.push(req);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(&mut group, &to_sync);
            self.state.room.store(self.writer.room(), Ordering::Release);
        }
        // Closing: what `Buffered` left unsynced is made durable too, as a clean close
        // promises.
        let _ = self.barrier(&to_sync);
        drop(to_sync);
        let _ = sync_thread.join();
    }

    /// Goes back to where a failed sync left the log, if it did; returns the epoch groups
    /// written from here are tagged with. Taken with the rewind under one lock: a failure
    /// after this makes those groups stale, and leaves its rewind pending for the next.
    fn apply_rewind(&mut self) -> u64 {
        let (epoch, to) = {
            let mut rewind = self.state.rewind.lock().expect("rewind lock");
            (rewind.epoch, rewind.to.take())
        };
        if let Some((seq, at)) = to {
            assert!(seq <= self.next, "a rewind goes back");
            self.writer.rewind(at);
            self.index.truncate_after(Seq(seq.0 - 1));
            self.next = seq;
        }
        epoch
    }

    /// Stages and writes one group (refusing what cannot be), and hands it to the sync
    /// thread.
    fn commit(&mut self, group: &mut Vec<Request>, to_sync: &SyncSender<ToSync>) {
        let epoch = self.apply_rewind();
        let (first_of_group, at_before) = (self.next, self.last_at);
        let at = self.last_at.max((self.clock)());
        let mut staging = Staging::default();
        // Versions of files changed earlier in this group, not yet readable from the index.
        let mut staged_versions: FxHashMap<FileKey, Seq> = FxHashMap::default();
        let mut accepted: Vec<(Reply, Appended)> = Vec::with_capacity(group.len());
        let patient = group.iter().all(|r| r.patient);
        let mut syncs = Vec::new();
        let mut rebases = Vec::new();
        for req in group.drain(..) {
            let staged = match req.batch {
                Batch::Fresh(items) => {
                    self.stage_fresh(items, at, &mut staging, &mut staged_versions)
                }
                Batch::Stamped(items) => {
                    self.stage_stamped(items, &mut staging, &mut staged_versions)
                }
                Batch::Sync => {
                    syncs.push(req.reply);
                    continue;
                }
                Batch::Rebase(base, at) => {
                    rebases.push((base, at, req.reply));
                    continue;
                }
            };
            match staged {
                Ok(appended) => accepted.push((req.reply, appended)),
                Err(e) => (req.reply)(Err(e)),
            }
        }
        if !staging.records.is_empty() {
            if let Err(e) = self.write(&mut staging, accepted, patient, at, epoch, to_sync) {
                // Nothing of the group was appended: its numbers are handed out again (and
                // earlier ones too, if a failed sync sent the log back before them).
                self.next = self.next.min(first_of_group);
                self.last_at = at_before;
                self.state.note_failure(&e);
            }
        }
        for (base, at, reply) in rebases {
            reply(self.rebase(base, at).map(|()| Appended {
                first: self.next,
                count: 0,
                at,
            }));
        }
        for reply in syncs {
            let result = self.barrier(to_sync);
            reply(result.map(|()| Appended {
                first: self.next,
                count: 0,
                at: self.last_at,
            }));
        }
    }

    /// Writes a staged group (rolling to a new segment first if it does not fit) and passes
    /// it to the sync thread. On `Err` every appender of the group has been answered.
    fn write(
        &mut self,
        staging: &mut Staging,
        accepted: Vec<(Reply, Appended)>,
        patient: bool,
        at: Timestamp,
        epoch: u64,
        to_sync: &SyncSender<ToSync>,
    ) -> Result<()> {
        let synced_through = Seq(self.state.synced.load(Ordering::Acquire));
        let mut locs: Vec<(Seq, Loc)> = Vec::with_capacity(staging.records.len());
        let result = match self.writer.fits(&staging.group) {
            true => Ok(()),
            // A new segment exists only once everything before it is durable.
            false => self.barrier(to_sync).and_then(|()| {
                self.writer.roll(
                    staging.group.first_seq().expect("not empty"),
                    at,
                    staging.group.byte_len(),
                )
            }),
        };
        let written = result.and_then(|()| {
            let synced_through = Seq(self.state.synced.load(Ordering::Acquire)).max(synced_through);
            self.writer
                .write(&mut staging.group, synced_through, &mut locs)
        });
        let placed = match written {
            Ok(placed) => placed,
            Err(e) => {
                let why = e.to_string();
                for (reply, _) in accepted {
                    reply(Err(same_error(&e, &why)));
                }
                return Err(e);
            }
        };
        let records = std::mem::take(&mut staging.records);
        // Indexed now, before the sync, so that the next group's redelivers see these
        // changes; readers never look past the durable tip.
        self.index
            .note(
                records
                    .iter()
                    .zip(&locs)
                    .zip(&staging.crcs)
                    .map(|((r, (seq, loc)), crc)| {
                        debug_assert_eq!(r.seq, *seq);
                        (r, loc, *crc)
                    }),
            );
        let (_, file) = self.writer.active();
        let written = Written {
            records,
            accepted,
            patient,
            file,
            at: (placed.segment, placed.at),
            epoch,
        };
        if let Err(mpsc::SendError(ToSync::Written(w))) = to_sync.send(ToSync::Written(written)) {
            // The sync thread is gone (a reply or the hook panicked): nothing more can be
            // acknowledged.
            let why = "the sync thread stopped".to_string();
            self.state.set_health(Health::Failing(why.clone()));
            for (reply, _) in w.accepted {
                reply(Err(Error::Poisoned(why.clone())));
            }
        }
        Ok(())
    }

    /// Moves an empty log past a base at `base`: the next record is `base + 1`, written to
    /// a new segment that starts there.
    fn rebase(&mut self, base: Seq, at: Timestamp) -> Result<()> {
        if self.next != Seq(1) || self.state.tip.load(Ordering::Acquire) != 0 {
            return Err(Error::Rejected(format!(
                "a base can be imported only into an empty log; this one goes on at {}",
                self.next
            )));
        }
        self.writer.roll(Seq(base.0 + 1), at, 0)?;
        self.next = Seq(base.0 + 1);
        self.last_at = self.last_at.max(at);
        self.state.tip.store(base.0, Ordering::Release);
        self.index.rebase(base);
        Ok(())
    }

    /// Waits until everything written so far is durable (or says why it is not).
    fn barrier(&mut self, to_sync: &SyncSender<ToSync>) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        if to_sync.send(ToSync::Barrier(tx)).is_err() {
            return Err(Error::Poisoned("the sync thread stopped".into()));
        }
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(Error::Poisoned("the sync thread stopped".into())));
        if result.is_err() {
            // The sync thread has set the rewind: go back before writing anything else.
            self.apply_rewind();
        }
        result
    }

    fn stage_fresh(
        &mut self,
        items: Vec<Prepared>,
        at: Timestamp,
        staging: &mut Staging,
        staged_versions: &mut FxHashMap<FileKey, Seq>,
    ) -> Result<Appended> {
        let first = self.next;
        // An import earlier in this group may have moved time past the group's stamp.
        let at = at.max(self.last_at);
        // Look the versions up before staging anything, so a failed read stages nothing;
        // changes earlier in this request count, at the numbers they are about to get.
        let mut own_versions: FxHashMap<&FileKey, Seq> = FxHashMap::default();
        let mut versions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match &item.kind {
                RecordKind::ChangeAppended { file, .. } => {
                    own_versions.insert(file, Seq(first.0 + i as u64));
                }
                RecordKind::RedeliverRequested { file, .. } => {
                    let version = match own_versions.get(file).or(staged_versions.get(file)) {
                        Some(v) => Some(*v),
                        None => self.index.latest_change(file, Seq(u64::MAX))?,
                    };
                    versions.push(version);
                }
                _ => {}
            }
        }
        drop(own_versions);
        let mut versions = versions.into_iter();
        let mut kinds = Vec::with_capacity(items.len());
        for Prepared { mut kind, body } in items {
            if let RecordKind::RedeliverRequested { version, .. } = &mut kind {
                *version = versions.next().expect("one lookup per redeliver");
            }
            kinds.push((kind, body));
        }
        for (kind, body) in kinds {
            let record = Record {
                seq: self.next,
                at,
                kind,
            };
            self.stage(record, body, staging, staged_versions);
        }
        self.last_at = at;
        Ok(Appended {
            first,
            count: self.next.0 - first.0,
            at,
        })
    }

    fn stage_stamped(
        &mut self,
        items: Vec<(Record, Option<Vec<u8>>)>,
        staging: &mut Staging,
        staged_versions: &mut FxHashMap<FileKey, Seq>,
    ) -> Result<Appended> {
        let first = self.next;
        let (mut expect, mut last_at) = (self.next, self.last_at);
        for (record, body) in &items {
            if record.seq != expect {
                return Err(Error::Rejected(format!(
                    "record {} does not continue the log: the next sequence number is {expect}",
                    record.seq
                )));
            }
            if record.at < last_at {
                return Err(Error::Rejected(format!(
                    "record {} is stamped {} ms, before the previous record ({} ms)",
                    record.seq, record.at, last_at
                )));
            }
            let is_change = matches!(record.kind, RecordKind::ChangeAppended { .. });
            if is_change != body.is_some() {
                return Err(Error::Rejected(format!(
                    "record {}: a change needs its snapshot and nothing else has one",
                    record.seq
                )));
            }
            expect = Seq(expect.0 + 1);
            last_at = record.at;
        }
        let at = items.last().map_or(self.last_at, |(r, _)| r.at);
        for (record, body) in items {
            self.stage(record, body, staging, staged_versions);
        }
        self.last_at = last_at;
        Ok(Appended {
            first,
            count: self.next.0 - first.0,
            at,
        })
    }

    fn stage(
        &mut self,
        record: Record,
        body: Option<Vec<u8>>,
        staging: &mut Staging,
        staged_versions: &mut FxHashMap<FileKey, Seq>,
    ) {
        assert_eq!(record.seq, self.next, "sequence numbers are dense");
        let seq = record.seq;
        let frame = codec::encode_record(&record);
        staging
            .crcs
            .push(codec::frame_crc(&frame).expect("a frame has a CRC"));
        staging.group.push(seq, &frame, body.as_deref());
        if let RecordKind::ChangeAppended { file, .. } = &record.kind {
            staged_versions.insert(file.clone(), seq);
        }
        self.next = Seq(seq.0 + 1);
        staging.records.push(record);
    }
}

/// An error of the same kind, for each appender of a failed group.
fn same_error(e: &Error, why: &str) -> Error {
    match e {
        Error::DiskFull { context } => Error::DiskFull {
            context: context.clone(),
        },
        Error::Rejected(r) => Error::Rejected(r.clone()),
        _ => Error::Io {
            context: why.to_string(),
            source: std::io::ErrorKind::Other.into(),
        },
    }
}

impl Syncer {
    fn run(mut self, from_commit: Receiver<ToSync>) {
        let mut batch = Vec::new();
        while let Ok(first) = from_commit.recv() {
            let hold_until = (self.durability == Durability::Sync && first.is_patient())
                .then(|| std::time::Instant::now() + PATIENCE);
            batch.push(first);
            batch.extend(from_commit.try_iter());
            if let Some(until) = hold_until {
                let mut records: usize = batch.iter().map(ToSync::records).sum();
                while records < PATIENT_RECORDS && batch.iter().all(ToSync::is_patient) {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    match from_commit.recv_timeout(left) {
                        Ok(m) => {
                            records += m.records();
                            batch.push(m);
                        }
                        Err(_) => break,
                    }
                }
            }
            self.make_durable(&mut batch);
        }
    }

    /// Syncs every file written since its last sync (with `Buffered`, only when `batch`
    /// holds a barrier), then replies in order; after a failed sync refuses them all and
    /// sets the rewind to the first group the failed sync was to cover.
    fn make_durable(&mut self, batch: &mut Vec<ToSync>) {
        let epoch = self.state.rewind.lock().expect("rewind lock").epoch;
        let has_barrier = batch.iter().any(|m| matches!(m, ToSync::Barrier(_)));
        // Groups written before a failed sync that the commit thread had not yet seen.
        let (stale, current): (Vec<ToSync>, Vec<ToSync>) = batch
            .drain(..)
            .partition(|m| matches!(m, ToSync::Written(w) if w.epoch < epoch));
        for m in stale {
            if let ToSync::Written(w) = m {
                refuse(
                    w,
                    "an earlier fdatasync failed; the log goes on from before it",
                );
            }
        }
        for m in &current {
            if let ToSync::Written(w) = m {
                if !self.unsynced.iter().any(|(id, _)| *id == w.at.0) {
                    self.unsynced.push((w.at.0, w.file.clone()));
                }
                self.first_unsynced.get_or_insert((w.records[0].seq, w.at));
            }
        }
        // Groups of earlier batches count too: a barrier (a roll, `Store::sync`) promises
        // everything written before it, not only what came with it.
        let sync_now = self.durability == Durability::Sync || has_barrier;
        let synced = if sync_now {
            self.unsynced
                .iter()
                .try_for_each(|(id, f)| f.sync_data().map_err(|e| sync_error(*id, e)))
        } else {
            Ok(())
        };
        let first_unsynced = if sync_now {
            // Synced, or (fsyncgate) never to be: either way a later sync cannot help.
            self.unsynced.clear();
            self.first_unsynced.take()
        } else {
            None
        };
        if let Err(e) = synced {
            // The failed sync may have dropped every write since the last good one,
            // acknowledged ones of `Buffered` too: the log goes back to before them, and
            // readers no longer see them.
            {
                let mut rewind = self.state.rewind.lock().expect("rewind lock");
                if let Some(first) = first_unsynced {
                    self.state.tip.fetch_min(first.0 .0 - 1, Ordering::AcqRel);
                    rewind.to = Some(first);
                }
                rewind.epoch += 1;
            }
            self.state.note_failure(&e);
            let why = e.to_string();
            for m in current {
                match m {
                    ToSync::Written(w) => refuse_with(w, &e, &why),
                    ToSync::Barrier(reply) => {
                        let _ = reply.send(Err(same_error(&e, &why)));
                    }
                }
            }
            return;
        }
        // A barrier promises everything written before it. After a failed sync the commit
        // thread has written on from where the log is to go back to; until it has gone
        // back, what it wrote before the barrier is not the log (a roll now would leave
        // the rewind behind in a closed segment).
        let rewind_pending = self.state.rewind.lock().expect("rewind lock").to.is_some();
        if current.iter().any(|m| matches!(m, ToSync::Written(_))) {
            // Before the replies: an appender told Ok sees a writable store.
            self.state.set_health(Health::Writable);
        }
        for m in current {
            match m {
                ToSync::Written(w) => {
                    let last = w.records.last().expect("groups are not empty").seq;
                    self.state.tip.store(last.0, Ordering::Release);
                    for (reply, appended) in w.accepted {
                        reply(Ok(appended));
                    }
                    if let Some(hook) = &mut self.on_commit {
                        hook(&w.records);
                    }
                }
                ToSync::Barrier(reply) if rewind_pending => {
                    let _ = reply.send(Err(Error::Io {
                        context: "an earlier fdatasync failed; the log goes on from before it"
                            .into(),
                        source: std::io::ErrorKind::Other.into(),
                    }));
                }
                ToSync::Barrier(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        if sync_now {
            let tip = self.state.tip.load(Ordering::Acquire);
            self.state.synced.store(tip, Ordering::Release);
            // A failed sync may have taken the tip back.
            self.told = self.told.min(Seq(tip));
            if tip >= self.told.0 + NOTIFY_EVERY {
                if let Some(durable) = &self.durable {
                    let _ = durable.send(Seq(tip));
                }
                self.told = Seq(tip);
            }
        }
    }
}

fn refuse(w: Written, why: &str) {
    for (reply, _) in w.accepted {
        reply(Err(Error::Io {
            context: why.to_string(),
            source: std::io::ErrorKind::Other.into(),
        }));
    }
}

fn refuse_with(w: Written, e: &Error, why: &str) {
    for (reply, _) in w.accepted {
        reply(Err(same_error(e, why)));
    }
}
