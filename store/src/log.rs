//! [`Store`]: the durable event log — open, append (group commit), read, per-file index.
//!
//! The store is the only place records get their sequence number and timestamp, and the
//! only writer of the sled tree; see `commit.rs` for how appends are grouped and made
//! durable, and `codec.rs` for what is stored under which key.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use cb_core::{
    EventKind, FileCallback, FileKey, Record, RecordKind, Seq, Snapshot, SnapshotView, Timestamp,
};

use crate::bodies::{BodyLog, Directory, DIRECTORIES};
use crate::codec::{
    self, FramesCursor, RecordFrames, BODIES, FORMAT_KEY, FORMAT_VERSION, LEGACY_FORMAT_VERSION,
    RECORDS,
};
use crate::commit::{Batch, Committer, Prepared, Request, Syncer};
use crate::common_records::RecentIds;
use crate::dir::{sync_dir, DataDir};
use crate::error::{Error, Result};
use crate::index::FileIndex;

/// How far an append goes before it is acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// sled `flush`, then `fdatasync` of sled's data file and of any new blob file: the
    /// records are on stable storage, metadata included (the default; what cbd promises).
    #[default]
    Sync,
    /// sled `flush` only: written to the device with `sync_file_range`, but neither the
    /// file's size nor the drive's write cache is flushed. Survives a process crash, not
    /// necessarily a power loss. For measuring what the extra sync costs.
    SledFlush,
    /// No flush per append (sled writes in the background within about half a second):
    /// for bulk imports that end with [`Store::sync`], and for tests. A power loss before
    /// that sync can leave sled pointing past the end of the body segments, and such a
    /// dir refuses to open ([`Error::Corrupt`]): redo the import.
    Buffered,
}

/// Called with every durable group of records; see [`StoreOptions::on_commit`].
pub type CommitHook = Box<dyn FnMut(&[Record]) + Send>;

/// How to open a store.
pub struct StoreOptions {
    /// See [`Durability`].
    pub durability: Durability,
    /// The most records one group commit takes from the queue (a single request larger than
    /// this is still committed whole).
    pub max_group_records: usize,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// Size at which a snapshot bodies segment file is closed and the next begun
    /// ([`SEGMENT_BYTES`](crate::SEGMENT_BYTES)); tests lower it.
    pub body_segment_bytes: u64,
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Sync,
            max_group_records: 16 * 1024,
            cache_capacity_bytes: 256 * 1024 * 1024,
            body_segment_bytes: crate::SEGMENT_BYTES,
            index_segment_span: crate::SEGMENT_SPAN,
            clock: Box::new(wall_clock),
            on_commit: None,
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

/// The durable event log of one data dir. Cheap to clone; every clone is the same store.
/// Dropping the last clone stops the commit thread (after it finished the groups it has)
/// and releases the data dir's lock.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    tree: sled::Tree,
    db: sled::Db,
    index: Arc<FileIndex>,
    bodies: Arc<BodyLog>,
    directories: DirectoryCache,
    /// Whether the log still has bodies stored inside sled (`B` chunks, written by format
    /// 2); they stay readable where they are.
    legacy_bodies: bool,
    data_file: File,
    /// The last durable sequence number (0: none). Readers never look past it.
    tip: Arc<AtomicU64>,
    poisoned: Arc<Mutex<Option<String>>>,
    // Invariant: dropped last, after the commit thread has stopped writing.
    dir: DataDir,
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the data dir at `path` and takes its lock.
    ///
    /// Errors: [`Error::NotWritable`], [`Error::Locked`] (at once, never waiting),
    /// [`Error::UnknownFormat`], [`Error::Corrupt`] for an unreadable last record, and
    /// [`Error::Sled`] when sled cannot recover its files.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        let dir = DataDir::open(path)?;
        let db = open_sled(&dir, options.cache_capacity_bytes)?;
        let tree = db.open_tree("cb")?;
        check_format(&dir, &tree)?;
        let data_file =
            File::open(dir.log_path().join("db")).map_err(Error::io("opening sled's data file"))?;
        // sled created its files (db, conf, snapshots) in there.
        sync_dir(&dir.log_path())?;

        let (next, last_at) = match last_record(&tree)? {
            Some(r) => (Seq(r.seq.0 + 1), r.at),
            None => (Seq(1), Timestamp(0)),
        };
        let last_directory = match chunk_at_or_before(&tree, DIRECTORIES, Seq(u64::MAX))? {
            Some((first, bytes)) => Some((first, Directory::decode(first, &bytes)?)),
            None => None,
        };
        let (bodies, body_writer) = BodyLog::open(
            &dir.bodies_path(),
            last_directory.as_ref().map(|(first, d)| (*first, d)),
            options.body_segment_bytes,
        )?;
        // What sled recovered may have been written but never synced (a crash between a
        // group's flush and its fdatasync): make it durable before anyone acts on it — after
        // the bodies it points at, which `BodyLog::open` has just synced.
        data_file
            .sync_data()
            .map_err(Error::io("fdatasync of the recovered log"))?;
        let legacy_bodies = tree.scan_prefix([BODIES]).next().is_some();
        let index = Arc::new(FileIndex::open(
            &tree,
            Seq(next.0 - 1),
            options.index_segment_span,
        )?);
        let tip = Arc::new(AtomicU64::new(next.0 - 1));
        let poisoned = Arc::new(Mutex::new(None));
        let syncer = Syncer {
            tree: tree.clone(),
            db: db.clone(),
            index: index.clone(),
            durability: options.durability,
            on_commit: options.on_commit,
            data_file: data_file
                .try_clone()
                .map_err(Error::io("opening sled's data file"))?,
            blobs_dir: dir.log_path().join("blobs"),
            synced_blobs: Default::default(),
            tip: tip.clone(),
            poisoned: poisoned.clone(),
        };
        let committer = Committer {
            tree: tree.clone(),
            index: index.clone(),
            durability: options.durability,
            max_group_records: options.max_group_records.max(1),
            clock: options.clock,
            next,
            last_at,
            poisoned: poisoned.clone(),
            bodies: body_writer,
            syncer: Some(syncer),
        };
        let (queue, inbox) = mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("cb-store-commit".into())
            .spawn(move || committer.run(inbox))
            .map_err(Error::io("starting the commit thread"))?;
        Ok(Store {
            shared: Arc::new(Shared {
                queue: Some(queue),
                committer: Some(committer),
                tree,
                db,
                index,
                bodies,
                directories: DirectoryCache::default(),
                legacy_bodies,
                data_file,
                tip,
                poisoned,
                dir,
            }),
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &DataDir {
        &self.shared.dir
    }

    /// Appends `inputs` as consecutive records and returns once they are durable.
    ///
    /// **Guarantee** (with [`Durability::Sync`], the default): when this returns `Ok`, every
    /// record, its snapshot body and its index entries have been written by sled, sled's
    /// `flush` has completed, and `fdatasync` has returned on sled's data file and on every
    /// blob file sled created — so they survive a process crash and, provided the drive
    /// honours flush requests (as the kernel asks it to on `fdatasync`), a power loss.
    /// The records are committed atomically with the rest of their group: after a crash
    /// either all of them are in the log or none is. When this returns `Err`, none of them
    /// was acknowledged; after [`Error::Poisoned`] they may or may not be in the log.
    ///
    /// Sequence numbers are dense and increasing across all appenders; all records of one
    /// call are consecutive and share one timestamp, never earlier than any before it.
    /// Concurrent calls are grouped and share one flush.
    pub fn append(&self, inputs: Vec<Input>) -> Result<Appended> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.append_then(inputs, move |result| {
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// [`append`](Self::append) without blocking: `reply` is called on the commit thread
    /// with the outcome, under the same guarantee. It must be quick (send on a channel).
    pub fn append_then(
        &self,
        inputs: Vec<Input>,
        reply: impl FnOnce(Result<Appended>) + Send + 'static,
    ) {
        match prepare(inputs) {
            Ok(prepared) => self.submit(Batch::Fresh(prepared), Box::new(reply)),
            Err(e) => reply(Err(e)),
        }
    }

    /// Appends records that already carry their sequence number and timestamp (an import,
    /// or a generated benchmark log). They must continue this log exactly — the first one
    /// numbered [`next_seq`](Self::next_seq), densely, timestamps never decreasing — and
    /// each change must come with its snapshot and nothing else with one. Same durability
    /// as [`append`](Self::append).
    pub fn append_stamped(&self, records: Vec<(Record, Option<Snapshot>)>) -> Result<Appended> {
        let mut items = Vec::with_capacity(records.len());
        for (record, body) in records {
            let body = body.as_ref().map(codec::encode_body);
            items.push((record, body));
        }
        if items.is_empty() {
            return Err(Error::Rejected("nothing to append".into()));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            Batch::Stamped(items),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    fn submit(&self, batch: Batch, reply: crate::commit::Reply) {
        let queue = self.shared.queue.as_ref().expect("queue lives until drop");
        if let Err(mpsc::SendError(req)) = queue.send(Request { batch, reply }) {
            (req.reply)(Err(Error::Closed));
        }
    }

    /// Makes everything appended so far durable, whatever the [`Durability`]: sled `flush`
    /// and `fdatasync` of its data file and blob files.
    pub fn sync(&self) -> Result<()> {
        // Bodies first: what sled points at is on disk before the pointers are (for what
        // was appended before this call; see `Durability::Buffered` for the rest).
        self.shared.bodies.sync()?;
        self.shared.db.flush()?;
        self.shared
            .data_file
            .sync_data()
            .map_err(Error::io("fdatasync of the log"))?;
        crate::commit::sync_blobs(
            &self.shared.dir.log_path().join("blobs"),
            &mut Default::default(),
        )
    }

    /// Why appends are refused, if an earlier write failed.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.lock().expect("poison flag").clone()
    }

    /// The last durable record's sequence number; `None` for an empty log.
    pub fn last_seq(&self) -> Option<Seq> {
        match self.shared.tip.load(Ordering::Acquire) {
            0 => None,
            n => Some(Seq(n)),
        }
    }

    /// The number the next record will get (1 for an empty log).
    pub fn next_seq(&self) -> Seq {
        Seq(self.shared.tip.load(Ordering::Acquire) + 1)
    }

    /// The durable records from `from` on, in order, up to the last durable one when called.
    pub fn records(&self, from: Seq) -> impl Iterator<Item = Result<Record>> + 'static {
        let tip = Seq(self.shared.tip.load(Ordering::Acquire));
        self.records_between(from, tip)
    }

    /// The durable records numbered `from..=to`, in order.
    pub fn records_between(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<Record>> + 'static {
        let to = to.min(Seq(self.shared.tip.load(Ordering::Acquire)));
        read_records(&self.shared.tree, from, to)
    }

    /// One durable record.
    pub fn record(&self, seq: Seq) -> Result<Option<Record>> {
        match self.record_frame(seq)? {
            Some(frame) => codec::decode_record(seq, &frame).map(Some),
            None => Ok(None),
        }
    }

    /// The stored frame of durable record `seq`.
    pub(crate) fn record_frame(&self, seq: Seq) -> Result<Option<Vec<u8>>> {
        if seq.0 == 0 || seq.0 > self.shared.tip.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some((first, chunk)) = chunk_at_or_before(&self.shared.tree, RECORDS, seq)? else {
            return Ok(None);
        };
        for entry in RecordFrames::new(first, &chunk)? {
            let (this, frame) = entry?;
            if this == seq {
                return Ok(Some(frame.to_vec()));
            }
        }
        Ok(None)
    }

    /// The snapshot that change `version` appended (`None` if `version` is not a change).
    pub fn snapshot(&self, version: Seq) -> Result<Option<Snapshot>> {
        self.snapshot_reader().get(version)
    }

    /// A reader for many snapshots asked for in increasing version order (`cbctl replay`'s
    /// digest audit): each bodies directory is fetched from sled once, and its bodies read
    /// from their segment a stretch at a time (see [`SnapshotReader`]), not once per
    /// snapshot.
    pub fn snapshot_reader(&self) -> SnapshotReader<'_> {
        SnapshotReader {
            store: self,
            directory: None,
            run: Vec::new(),
            run_from: 0,
            run_loaded: false,
            plan: Vec::new(),
            planned: 0,
            alone: Vec::new(),
            ends: Vec::new(),
            legacy: None,
        }
    }

    /// The file's latest version: the sequence number of its last durable change.
    pub fn latest_version(&self, file: &FileKey) -> Result<Option<Seq>> {
        let tip = Seq(self.shared.tip.load(Ordering::Acquire));
        self.shared
            .index
            .latest_change(&self.shared.tree, file, tip)
    }

    /// Sequence numbers of every durable record one file's fold needs, in order: the file's
    /// own records and its project's (callback configuration), found through the indexes
    /// without scanning the log. Ticks are left out: a per-file fold fires deadlines when
    /// it reaches the next record or the time it is asked about.
    pub fn file_seqs(&self, file: &FileKey) -> Result<Vec<Seq>> {
        let tip = self.shared.tip.load(Ordering::Acquire);
        let mut seqs: Vec<Seq> = self
            .shared
            .index
            .entries(&self.shared.tree, file)?
            .into_iter()
            .map(|(seq, _)| seq)
            .filter(|seq| seq.0 <= tip)
            .collect();
        for entry in self
            .shared
            .tree
            .scan_prefix(codec::project_prefix(&file.project))
            .keys()
        {
            let key = entry?;
            if let Some(seq) = codec::seq_of_key(&key).filter(|s| s.0 <= tip) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
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

    /// The log's size on disk, in bytes: sled's files and the body segments.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.shared.db.size_on_disk()? + self.shared.bodies.size_on_disk()?)
    }
}

/// Opens sled's database in the data dir. sled takes a lock of its own on its file, and a
/// handle just dropped in this process can keep it for a few milliseconds while sled's
/// background threads wind down (spacejam/sled#1234). Holding the data dir's lock, only such
/// a handle can hold sled's, so that refusal is waited out (briefly) rather than reported.
fn open_sled(dir: &DataDir, cache_capacity_bytes: u64) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let opened = sled::Config::new()
            .path(dir.log_path())
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

fn prepare(inputs: Vec<Input>) -> Result<Vec<Prepared>> {
    if inputs.is_empty() {
        return Err(Error::Rejected("nothing to append".into()));
    }
    inputs
        .into_iter()
        .map(|input| match input {
            Input::Change(c) => Ok(Prepared {
                body: Some(codec::encode_body(&c.snapshot)),
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

fn check_format(dir: &DataDir, tree: &sled::Tree) -> Result<()> {
    let unknown = |found: String| Error::UnknownFormat {
        path: dir.path().to_owned(),
        found,
        supported: FORMAT_VERSION,
    };
    match tree.get(FORMAT_KEY)? {
        Some(bytes) => {
            let raw: [u8; 4] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| unknown(format!("{:?} (unreadable)", bytes.as_ref())))?;
            match u32::from_le_bytes(raw) {
                FORMAT_VERSION => Ok(()),
                // Format 2 kept bodies in sled; they are still read from there, and new ones
                // go to segments. Marked 3 from now on, so that an older build, which would
                // not find the new bodies, refuses the dir instead.
                LEGACY_FORMAT_VERSION => {
                    tree.insert(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())?;
                    tree.flush()?;
                    Ok(())
                }
                found => Err(unknown(found.to_string())),
            }
        }
        None if tree.is_empty() => {
            tree.insert(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())?;
            tree.flush()?;
            Ok(())
        }
        None => Err(unknown(
            "none (the log has records but no format mark)".into(),
        )),
    }
}

/// The records numbered `from..=to` in `tree`, in order, chunk by chunk.
pub(crate) fn read_records(tree: &sled::Tree, from: Seq, to: Seq) -> Records {
    if from > to {
        return Records::new(None, from, to);
    }
    let start = match chunk_at_or_before(tree, RECORDS, from) {
        Ok(Some((first, _))) => first,
        Ok(None) => from,
        Err(e) => return Records::failed(e),
    };
    let chunks = tree.range(codec::seq_key(RECORDS, start)..=codec::seq_key(RECORDS, to));
    Records::new(Some(chunks), from, to)
}

fn last_record(tree: &sled::Tree) -> Result<Option<Record>> {
    let Some((first, chunk)) = chunk_at_or_before(tree, RECORDS, Seq(u64::MAX))? else {
        return Ok(None);
    };
    let mut last = None;
    for entry in RecordFrames::new(first, &chunk)? {
        let (seq, frame) = entry?;
        last = Some(codec::decode_record(seq, frame)?);
    }
    Ok(last)
}

/// Reads snapshots through the bodies directory that held the last one, so that versions
/// asked for in increasing order cost one sled lookup per directory and one segment read
/// per run of bodies. Out-of-order requests are answered too, just without that saving.
///
/// A reader told which versions are coming ([`expect`](Self::expect)) reads only the
/// stretches of a directory that hold them. Without that, it reads a directory's whole run
/// once a second body of it is asked for: replay's digest batches need a third of each
/// directory on average (coalesced deliveries carry versions a window old, interleaved
/// with fresh ones), and reading whole runs copied 3.3 times the bodies' bytes.
pub struct SnapshotReader<'s> {
    store: &'s Store,
    /// The current directory, with its first and last versions.
    directory: Option<(Seq, Seq, Arc<Directory>)>,
    /// Bytes of the current directory's bodies: those from `run_from` (relative to the
    /// directory's offset) to `run_from + run.len()`, once loaded (`run_loaded`). The buffer
    /// is kept from read to read.
    run: Vec<u8>,
    run_from: u64,
    run_loaded: bool,
    /// Versions announced by `expect`, increasing, and how many of them have been passed.
    plan: Vec<Seq>,
    planned: usize,
    /// A body read on its own, outside any run.
    alone: Vec<u8>,
    /// The offset table of the body `with_view` shows, kept from body to body.
    ends: Vec<u32>,
    /// A format-2 bodies chunk held in sled: its first and last versions, and its bytes.
    legacy: Option<(Seq, Seq, sled::IVec)>,
}

/// Where [`SnapshotReader::read_body`] found a body.
enum Body {
    /// `version` is not a change (or not yet in the log).
    Absent,
    /// A format-2 body, decoded from sled.
    Legacy(Snapshot),
    /// This range of the run.
    InRun(std::ops::Range<usize>),
    /// In the reader's buffer for a lone body.
    Alone,
}

/// Recently used body directories, decoded: the dispatcher reads the snapshots of recent
/// changes, a few thousand to a directory, and decoding one for every read was a tenth of
/// its time. Directories never change once written, so entries never go stale.
#[derive(Default)]
struct DirectoryCache {
    by_first: Mutex<BTreeMap<Seq, (Seq, Arc<Directory>)>>,
}

/// Directories the cache keeps (at most ~50 KB each).
const CACHED_DIRECTORIES: usize = 64;

impl DirectoryCache {
    /// The directory that lists `version`, with its first and last versions.
    fn find(&self, tree: &sled::Tree, version: Seq) -> Result<Option<(Seq, Seq, Arc<Directory>)>> {
        {
            let cached = self.by_first.lock().expect("directory cache");
            if let Some((first, (last, d))) = cached.range(..=version).next_back() {
                if version <= *last {
                    return Ok(Some((*first, *last, d.clone())));
                }
            }
        }
        let Some((first, bytes)) = chunk_at_or_before(tree, DIRECTORIES, version)? else {
            return Ok(None);
        };
        let directory = Arc::new(Directory::decode(first, &bytes)?);
        let Some((_, last)) = directory.span() else {
            return Ok(None);
        };
        if version > last {
            return Ok(None);
        }
        let mut cached = self.by_first.lock().expect("directory cache");
        if cached.len() >= CACHED_DIRECTORIES {
            // The oldest go first: reads favour recent changes.
            cached.pop_first();
        }
        cached.insert(first, (last, directory.clone()));
        Ok(Some((first, last, directory)))
    }
}

/// The most bytes of one directory's bodies a [`SnapshotReader`] holds at once.
const RUN_BYTES: u64 = 8 * 1024 * 1024;

/// The widest gap between two planned bodies that one read spans: copying a few unneeded
/// bodies costs less than another system call.
const PLAN_GAP: u64 = 4 * 1024;

impl SnapshotReader<'_> {
    /// Announces the versions to be asked for next, in increasing order (repeats allowed):
    /// reads then take only the stretches of bodies that hold them ([`PLAN_GAP`]). Versions
    /// asked for outside the plan are still answered.
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
        let frame = match self.read_body(version)? {
            Body::Absent => return Ok(None),
            Body::Legacy(snapshot) => return Ok(Some(f(snapshot.view()))),
            Body::InRun(frame) => &self.run[frame],
            Body::Alone => &self.alone[..],
        };
        let view = codec::decode_body(version, frame, &mut self.ends)?;
        Ok(Some(f(view)))
    }

    /// Reads `version`'s body frame into the run (or alone), or finds it there already.
    fn read_body(&mut self, version: Seq) -> Result<Body> {
        let shared = &self.store.shared;
        if version.0 == 0 || version.0 > shared.tip.load(Ordering::Acquire) {
            return Ok(Body::Absent);
        }
        let held = self
            .directory
            .as_ref()
            .is_some_and(|(first, last, _)| *first <= version && version <= *last);
        if !held {
            self.directory = None;
            self.run_loaded = false;
            self.directory = shared.directories.find(&shared.tree, version)?;
        }
        let Some((_, last, directory)) = &self.directory else {
            return Ok(match self.get_legacy(version)? {
                Some(snapshot) => Body::Legacy(snapshot),
                None => Body::Absent,
            });
        };
        let (last, directory) = (*last, directory.clone());
        let Some((at, len)) = directory.locate(version) else {
            return Ok(Body::Absent);
        };
        let end = at + u64::from(len);
        let in_run =
            self.run_loaded && self.run_from <= at && end <= self.run_from + self.run.len() as u64;
        if !in_run {
            let (segment, offset, run_len) = (
                directory.segment,
                directory.offset,
                directory.end() - directory.offset,
            );
            let span = if self.plan_covers(version) {
                Some(self.planned_span(&directory, last, at, end))
            } else if held && run_len <= RUN_BYTES {
                // A second body of this directory: read the run once for all that follow.
                Some((0, run_len))
            } else {
                None
            };
            match span {
                Some((from, to)) => {
                    // Until the read succeeds the run holds nothing: a failed read leaves it
                    // part new bytes, part old.
                    self.run_loaded = false;
                    shared.bodies.read_into(
                        version,
                        segment,
                        offset + from,
                        (to - from) as usize,
                        &mut self.run,
                    )?;
                    (self.run_from, self.run_loaded) = (from, true);
                }
                None => {
                    shared.bodies.read_into(
                        version,
                        segment,
                        offset + at,
                        len as usize,
                        &mut self.alone,
                    )?;
                    return Ok(Body::Alone);
                }
            }
        }
        let from = (at - self.run_from) as usize;
        let frame = from..from + len as usize;
        if frame.end > self.run.len() {
            return Err(Error::Corrupt {
                seq: version,
                reason: "its body lies outside its directory's run".into(),
            });
        }
        Ok(Body::InRun(frame))
    }

    /// True if `version` is in the plan; moves the plan's cursor up to it.
    fn plan_covers(&mut self, version: Seq) -> bool {
        let passed = self.plan[self.planned..].partition_point(|v| *v < version);
        self.planned += passed;
        self.plan.get(self.planned) == Some(&version)
    }

    /// The stretch of `directory` (offsets relative to its start) to read for the planned
    /// version whose body is `at..end`: it goes on over the next planned bodies of the same
    /// directory while each starts within [`PLAN_GAP`] of the stretch's end, up to
    /// [`RUN_BYTES`].
    fn planned_span(&self, directory: &Directory, last: Seq, at: u64, mut end: u64) -> (u64, u64) {
        for next in &self.plan[self.planned + 1..] {
            if *next > last {
                break;
            }
            let Some((next_at, next_len)) = directory.locate(*next) else {
                continue;
            };
            let next_end = next_at + u64::from(next_len);
            if next_at < end {
                continue;
            }
            if next_at - end > PLAN_GAP || next_end - at > RUN_BYTES {
                break;
            }
            end = next_end;
        }
        (at, end)
    }

    /// Reads a body that format 2 kept inside sled.
    fn get_legacy(&mut self, version: Seq) -> Result<Option<Snapshot>> {
        if !self.store.shared.legacy_bodies {
            return Ok(None);
        }
        let held = self
            .legacy
            .as_ref()
            .is_some_and(|(first, last, _)| *first <= version && version <= *last);
        if !held {
            self.legacy = None;
            let Some((first, bytes)) =
                chunk_at_or_before(&self.store.shared.tree, BODIES, version)?
            else {
                return Ok(None);
            };
            let last = codec::last_body(first, &bytes)?;
            self.legacy = Some((first, last, bytes));
        }
        let (first, _, bytes) = self.legacy.as_ref().expect("loaded above");
        match codec::find_body(*first, bytes, version)? {
            Some(frame) => codec::decode_legacy_body(version, frame).map(Some),
            None => Ok(None),
        }
    }
}

/// The chunk of `prefix` kind whose first seq is the greatest at or before `seq`.
fn chunk_at_or_before(
    tree: &sled::Tree,
    prefix: u8,
    seq: Seq,
) -> Result<Option<(Seq, sled::IVec)>> {
    match tree
        .range(codec::seq_key(prefix, Seq(0))..=codec::seq_key(prefix, seq))
        .next_back()
    {
        Some(entry) => {
            let (key, value) = entry?;
            let first = codec::seq_of_key(&key).expect("chunk keys end with a seq");
            Ok(Some((first, value)))
        }
        None => Ok(None),
    }
}

/// Iterates records chunk by chunk, decoding each record when it is asked for (a record is
/// ~200 bytes: decoding a chunk's records into a queue first moved each one twice more).
pub(crate) struct Records {
    chunks: Option<sled::Iter>,
    /// The chunk being read, and where.
    chunk: Option<(sled::IVec, FramesCursor)>,
    /// The ids of the record read last.
    ids: RecentIds,
    /// An error to hand out before anything else.
    failed: Option<Error>,
    from: Seq,
    to: Seq,
}

impl Records {
    fn new(chunks: Option<sled::Iter>, from: Seq, to: Seq) -> Records {
        Records {
            chunks,
            chunk: None,
            ids: RecentIds::default(),
            failed: None,
            from,
            to,
        }
    }

    fn failed(e: Error) -> Records {
        Records {
            failed: Some(e),
            ..Records::new(None, Seq(0), Seq(u64::MAX))
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        loop {
            if let Some((chunk, cursor)) = &mut self.chunk {
                let mut frames = RecordFrames::resume(chunk, *cursor);
                while let Some(entry) = frames.next() {
                    let decoded = match entry {
                        Ok((seq, _)) if seq < self.from || seq > self.to => continue,
                        Ok((seq, frame)) => codec::decode_record_with(seq, frame, &mut self.ids),
                        Err(e) => Err(e),
                    };
                    *cursor = frames.cursor();
                    return Some(decoded);
                }
                self.chunk = None;
            }
            let (key, chunk) = match self.chunks.as_mut()?.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let first = codec::seq_of_key(&key).expect("chunk keys end with a seq");
            match RecordFrames::new(first, &chunk) {
                Ok(frames) => {
                    let cursor = frames.cursor();
                    self.chunk = Some((chunk, cursor));
                }
                Err(e) => return Some(Err(e)),
            }
        }
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

    fn buffered() -> StoreOptions {
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        }
    }

    /// A format-2 dir (bodies inside sled) opens, is marked format 3, and serves its old
    /// bodies from sled and its new ones from segments.
    #[test]
    fn a_format_2_dir_opens_and_keeps_its_bodies_readable() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = Store::open(tmp.path(), buffered()).unwrap();
            store
                .append((0..3).map(|i| change(i, i)).collect())
                .unwrap();
            store.sync().unwrap();
        }
        // Rewrite it as format 2 wrote it: the bodies as a `B` chunk, no segments.
        {
            let db = sled::open(tmp.path().join("log")).unwrap();
            let tree = db.open_tree("cb").unwrap();
            let bodies: Vec<(Seq, Vec<u8>)> = (0..3)
                .map(|i| {
                    (
                        Seq(i + 1),
                        codec::encode_legacy_body(&seed_like(&file(i), i)),
                    )
                })
                .collect();
            for key in tree.scan_prefix([DIRECTORIES]).keys() {
                tree.remove(key.unwrap()).unwrap();
            }
            for (first, chunk) in codec::bodies_chunks(&bodies) {
                tree.insert(codec::seq_key(BODIES, first), chunk).unwrap();
            }
            tree.insert(FORMAT_KEY, &LEGACY_FORMAT_VERSION.to_le_bytes())
                .unwrap();
            db.flush().unwrap();
            std::fs::remove_dir_all(tmp.path().join("bodies")).unwrap();
        }
        for round in 0..2 {
            let store = Store::open(tmp.path(), buffered()).unwrap();
            let mark = store.shared.tree.get(FORMAT_KEY).unwrap().unwrap();
            assert_eq!(mark.as_ref(), FORMAT_VERSION.to_le_bytes());
            if round == 0 {
                store.append(vec![change(7, 70)]).unwrap();
                store.sync().unwrap();
            }
            for i in 0..3 {
                assert_eq!(
                    store.snapshot(Seq(i + 1)).unwrap(),
                    Some(seed_like(&file(i), i))
                );
            }
            let mut reader = store.snapshot_reader();
            for i in 0..3 {
                assert_eq!(
                    reader.get(Seq(i + 1)).unwrap(),
                    Some(seed_like(&file(i), i))
                );
            }
            assert_eq!(reader.get(Seq(4)).unwrap(), Some(seed_like(&file(7), 70)));
            assert_eq!(store.snapshot(Seq(5)).unwrap(), None);
        }
    }

    /// Bodies written through many groups and segments read back, singly and in order, and
    /// the segments are counted in the size on disk.
    #[test]
    fn bodies_read_back_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let options = || StoreOptions {
            body_segment_bytes: 8 * 1024,
            ..buffered()
        };
        {
            let store = Store::open(tmp.path(), options()).unwrap();
            for g in 0..10 {
                store
                    .append((0..7).map(|i| change(i, g * 7 + i)).collect())
                    .unwrap();
                store
                    .append(vec![Input::Record(RecordKind::Ticked)])
                    .unwrap();
            }
            store.sync().unwrap();
        }
        let store = Store::open(tmp.path(), options()).unwrap();
        let segments = std::fs::read_dir(tmp.path().join("bodies"))
            .unwrap()
            .count();
        assert!(segments >= 8, "{segments} segments");
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
        assert!(store.size_on_disk().unwrap() > 70 * 900);
    }
}
