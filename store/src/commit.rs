//! Group commit: one thread stamps, writes and syncs every append, many at a time.
//!
//! Appenders hand a [`Request`] to the committer thread and wait for its reply. The thread
//! takes the first request, then everything else already queued (up to
//! [`StoreOptions::max_group_records`](crate::StoreOptions::max_group_records)), and commits
//! the group: sequence numbers and one timestamp are assigned, the bodies are written to
//! their segment (and synced), and every record, body directory and index entry goes into
//! one sled batch. The group then passes to the sync thread, which takes every group written
//! meanwhile, has sled `flush` them and `fdatasync`s, and only then replies — one flush and
//! one sync shared by every appender of those groups. The two threads form a pipeline:
//! while groups wait for the disk, the next ones are already being written, so the sync
//! rate, not the append rate, sets the number of flushes and syncs. (Flushing in the
//! committer, once per group, made many small groups — the outcomes of a delivery burst —
//! pay one sled flush each, and its I/O threads were a seventh of the daemon's CPU.)
//!
//! Being the only writer of the log is what makes sequence numbers dense and increasing and
//! timestamps non-decreasing without a lock.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use cb_core::{FileKey, Record, RecordKind, Scope, Seq, Timestamp};

use crate::bodies::{BodyWriter, DIRECTORIES};
use crate::codec::{self, IndexTag, RECORDS};
use crate::dir::sync_dir;
use crate::error::{Error, Result};
use crate::index::FileIndex;
use crate::log::{Appended, CommitHook, Durability};

/// One appender's records, before sequence numbers are known.
pub(crate) struct Request {
    pub(crate) batch: Batch,
    pub(crate) reply: Reply,
}

pub(crate) type Reply = Box<dyn FnOnce(Result<Appended>) + Send>;

/// Records of one request; bodies are encoded by the appender, off the committer thread.
pub(crate) enum Batch {
    /// New records: the committer stamps `seq` and `at`.
    Fresh(Vec<Prepared>),
    /// Records that already have `seq` and `at` (an import); they must continue the log.
    Stamped(Vec<(Record, Option<Vec<u8>>)>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Fresh(v) => v.len(),
            Batch::Stamped(v) => v.len(),
        }
    }
}

/// A record kind with its encoded snapshot body (changes only).
pub(crate) struct Prepared {
    pub(crate) kind: RecordKind,
    pub(crate) body: Option<Vec<u8>>,
}

/// One group's records on their way into chunks.
#[derive(Default)]
struct Staging {
    records: Vec<Record>,
    /// Invariant: `frames[i]` is `records[i]` framed; they are consecutive from the group's
    /// first seq.
    frames: Vec<Vec<u8>>,
    /// Framed bodies of the group's changes, by seq.
    bodies: Vec<(Seq, Vec<u8>)>,
}

/// What the committer needs besides the queue.
pub(crate) struct Committer {
    pub(crate) tree: sled::Tree,
    pub(crate) index: Arc<FileIndex>,
    pub(crate) durability: Durability,
    pub(crate) max_group_records: usize,
    pub(crate) clock: Box<dyn FnMut() -> Timestamp + Send>,
    /// Invariant: the next record gets exactly this number.
    pub(crate) next: Seq,
    /// Invariant: no record gets an earlier `at`.
    pub(crate) last_at: Timestamp,
    pub(crate) poisoned: Arc<Mutex<Option<String>>>,
    /// Where the group's snapshot bodies go, before sled points at them.
    pub(crate) bodies: BodyWriter,
    /// The second stage, moved to its own thread when the committer starts.
    pub(crate) syncer: Option<Syncer>,
}

/// A group written to sled, on its way to the disk.
struct Written {
    records: Vec<Record>,
    accepted: Vec<(Reply, Appended)>,
}

/// The second stage: makes written groups durable, then replies, in log order.
pub(crate) struct Syncer {
    pub(crate) tree: sled::Tree,
    pub(crate) db: sled::Db,
    pub(crate) index: Arc<FileIndex>,
    pub(crate) durability: Durability,
    pub(crate) on_commit: Option<CommitHook>,
    /// sled's data file, opened for `fdatasync`.
    pub(crate) data_file: File,
    pub(crate) blobs_dir: PathBuf,
    pub(crate) synced_blobs: BlobsSynced,
    /// The last durable sequence number, published for readers.
    pub(crate) tip: Arc<AtomicU64>,
    pub(crate) poisoned: Arc<Mutex<Option<String>>>,
}

impl Committer {
    pub(crate) fn run(mut self, queue: Receiver<Request>) {
        // Groups written and not yet synced: the sync thread takes them all at once, so this
        // bounds how far writing runs ahead of the disk.
        let (to_sync, written) = mpsc::sync_channel::<Written>(64);
        let syncer = self.syncer.take().expect("a committer runs once");
        let sync_thread = std::thread::Builder::new()
            .name("cb-store-sync".into())
            .spawn(move || syncer.run(written));
        let sync_thread = match sync_thread {
            Ok(t) => t,
            Err(e) => {
                *self.poisoned.lock().expect("poison flag") =
                    Some(format!("cannot start the sync thread: {e}"));
                for req in queue {
                    (req.reply)(Err(Error::Poisoned(format!(
                        "cannot start the sync thread: {e}"
                    ))));
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
            if let Some(w) = self.commit(&mut group) {
                if let Err(mpsc::SendError(w)) = to_sync.send(w) {
                    // The sync thread is gone (a reply or the hook panicked): what was just
                    // written may or may not reach the disk, so stop here.
                    let why = "the sync thread stopped".to_string();
                    *self.poisoned.lock().expect("poison flag") = Some(why.clone());
                    for (reply, _) in w.accepted {
                        reply(Err(Error::Poisoned(why.clone())));
                    }
                }
            }
        }
        drop(to_sync);
        let _ = sync_thread.join();
    }

    /// Stages and writes one group; returns it for the sync thread, or `None` when nothing
    /// was written (every request refused, or the write failed and was answered).
    fn commit(&mut self, group: &mut Vec<Request>) -> Option<Written> {
        if let Some(why) = self.poisoned.lock().expect("poison flag").clone() {
            for req in group.drain(..) {
                (req.reply)(Err(Error::Poisoned(why.clone())));
            }
            return None;
        }
        let (first_of_group, at_before) = (self.next, self.last_at);
        let at = self.last_at.max((self.clock)());
        let mut batch = sled::Batch::default();
        let mut staging = Staging::default();
        // Versions of files changed earlier in this group, not yet readable from the index.
        let mut staged_versions: FxHashMap<FileKey, Seq> = FxHashMap::default();
        let mut accepted: Vec<(Reply, Appended)> = Vec::with_capacity(group.len());
        for req in group.drain(..) {
            let staged = match req.batch {
                Batch::Fresh(items) => {
                    self.stage_fresh(items, at, &mut batch, &mut staging, &mut staged_versions)
                }
                Batch::Stamped(items) => {
                    self.stage_stamped(items, &mut batch, &mut staging, &mut staged_versions)
                }
            };
            match staged {
                Ok(appended) => accepted.push((req.reply, appended)),
                Err(e) => (req.reply)(Err(e)),
            }
        }
        if staging.records.is_empty() {
            return None;
        }
        for (first, chunk) in codec::records_chunks(first_of_group, &staging.frames) {
            batch.insert(&codec::seq_key(RECORDS, first), chunk);
        }
        let records = staging.records;
        // Bodies first, synced under Durability::Sync, and only then the sled batch that
        // points at them: a durable pointer points at durable bytes (bodies.rs).
        let written = self
            .bodies
            .append(&staging.bodies, self.durability == Durability::Sync)
            .and_then(|directories| {
                for (first, directory) in directories {
                    batch.insert(&codec::seq_key(DIRECTORIES, first), directory.encode());
                }
                self.tree.apply_batch(batch).map_err(Error::from)
            });
        if let Err(e) = written {
            // The group may be partly on disk or not at all; only a reopen (sled's recovery
            // to its last flush) can tell, so no number is handed out again until then.
            self.next = first_of_group;
            self.last_at = at_before;
            let why = e.to_string();
            *self.poisoned.lock().expect("poison flag") = Some(why.clone());
            for (reply, _) in accepted {
                reply(Err(Error::Poisoned(why.clone())));
            }
            return None;
        }
        // Indexed now, before the sync, so that the next group's redelivers see these
        // changes; readers never look past the durable tip.
        self.index.note(&records);
        Some(Written { records, accepted })
    }

    fn stage_fresh(
        &mut self,
        items: Vec<Prepared>,
        at: Timestamp,
        batch: &mut sled::Batch,
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
                        None => self.index.latest_change(&self.tree, file, Seq(u64::MAX))?,
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
            self.stage(record, body, batch, staging, staged_versions);
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
        batch: &mut sled::Batch,
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
            self.stage(record, body, batch, staging, staged_versions);
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
        batch: &mut sled::Batch,
        staging: &mut Staging,
        staged_versions: &mut FxHashMap<FileKey, Seq>,
    ) {
        assert_eq!(record.seq, self.next, "sequence numbers are dense");
        let seq = record.seq;
        staging.frames.push(codec::encode_record(&record));
        if let Some(body) = body {
            staging.bodies.push((seq, body));
        }
        if let Some(tag) = IndexTag::of(&record.kind) {
            // File-scoped records are indexed in memory once durable (index.rs).
            if let Scope::Project(project) = record.scope() {
                batch.insert(
                    codec::with_seq(codec::project_prefix(project), seq),
                    vec![tag as u8],
                );
            }
        }
        if let RecordKind::ChangeAppended { file, .. } = &record.kind {
            staged_versions.insert(file.clone(), seq);
        }
        self.next = Seq(seq.0 + 1);
        staging.records.push(record);
    }
}

impl Syncer {
    fn run(mut self, written: Receiver<Written>) {
        let mut groups = Vec::new();
        while let Ok(first) = written.recv() {
            groups.push(first);
            groups.extend(written.try_iter());
            let failed = self.poisoned.lock().expect("poison flag").clone();
            let result = match failed {
                Some(why) => Err(why),
                None => self.make_durable().map_err(|e| e.to_string()),
            };
            if let Err(why) = result {
                *self.poisoned.lock().expect("poison flag") = Some(why.clone());
                for w in groups.drain(..) {
                    for (reply, _) in w.accepted {
                        reply(Err(Error::Poisoned(why.clone())));
                    }
                }
                continue;
            }
            for w in groups.drain(..) {
                let last = w.records.last().expect("groups are not empty").seq;
                self.tip.store(last.0, Ordering::Release);
                for (reply, appended) in w.accepted {
                    reply(Ok(appended));
                }
                if let Some(hook) = &mut self.on_commit {
                    hook(&w.records);
                }
            }
            if let Err(e) = self.index.maybe_write_segment(&self.tree) {
                *self.poisoned.lock().expect("poison flag") =
                    Some(format!("writing a per-file index segment: {e}"));
            }
        }
    }

    fn make_durable(&mut self) -> Result<()> {
        if self.durability == Durability::Buffered {
            return Ok(());
        }
        // Every group handed over so far is applied to sled: one flush writes them all.
        self.db.flush()?;
        if self.durability != Durability::Sync {
            return Ok(());
        }
        // The committer's sled flush ended in sync_file_range, which neither writes the file's metadata
        // (its grown size) nor flushes the drive's cache: fdatasync does both.
        self.data_file
            .sync_data()
            .map_err(Error::io("fdatasync of the log"))?;
        self.sync_new_blobs()
    }

    /// sled writes values too big for a log segment into `blobs/`, one file each, and never
    /// syncs them; a durable record pointing at a lost blob would be a corrupt log.
    fn sync_new_blobs(&mut self) -> Result<()> {
        sync_blobs(&self.blobs_dir, &mut self.synced_blobs)
    }
}

/// `fdatasync`s every file in sled's `blobs/` not in `synced`, then the directory if any
/// was new; `synced` becomes the set of files present.
/// What the sync thread knows of sled's `blobs/` dir: the files it already synced, and the
/// dir's mtime at the last listing.
#[derive(Default)]
pub(crate) struct BlobsSynced {
    names: HashSet<OsString>,
    /// The dir's mtime when it was last listed, and the wall-clock time of that listing.
    listed: Option<(SystemTime, SystemTime)>,
}

/// How long a dir's mtime must have been still before a listing trusts it: creating a file
/// sets the mtime to the (coarse, a few ms) current time, so a file created after a listing
/// taken this long after the last change always moves the mtime.
const MTIME_SETTLE: Duration = Duration::from_secs(2);

/// `fdatasync`s every file in `blobs_dir` not synced before (sled writes blobs with no sync
/// of its own), then the dir if any was new.
///
/// Listing the dir at every group commit costs a `getdents` per commit, growing with the
/// number of blobs; so if the dir's mtime has not moved since a listing taken well after its
/// last change, nothing was added and the listing is skipped (the "racy mtime" guard of
/// `MTIME_SETTLE` keeps a same-tick creation from hiding).
pub(crate) fn sync_blobs(blobs_dir: &std::path::Path, known: &mut BlobsSynced) -> Result<()> {
    let mtime = match std::fs::metadata(blobs_dir).and_then(|m| m.modified()) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => None,
    };
    if let (Some(now), Some((then, listed_at))) = (mtime, known.listed) {
        if now == then && then + MTIME_SETTLE <= listed_at {
            return Ok(());
        }
    }
    let listed_at = SystemTime::now();
    let entries = match std::fs::read_dir(blobs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing sled's blobs")(e)),
    };
    let mut present = HashSet::new();
    let mut synced_any = false;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing sled's blobs"))?;
        let name = entry.file_name();
        if !known.names.contains(&name) {
            match File::open(entry.path()).and_then(|f| f.sync_data()) {
                Ok(()) => synced_any = true,
                // Collected by sled between the listing and the open: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(format!(
                        "syncing blob {}",
                        entry.path().display()
                    ))(e))
                }
            }
        }
        present.insert(name);
    }
    if synced_any {
        sync_dir(blobs_dir)?;
    }
    known.names = present;
    known.listed = mtime.map(|m| (m, listed_at));
    Ok(())
}

#[cfg(test)]
mod blob_tests {
    use super::*;

    #[test]
    fn a_quiet_blobs_dir_is_not_listed_again_and_a_new_blob_is_always_seen() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("1"), b"a").unwrap();
        // Make the dir look quiet for a while.
        let past = SystemTime::now() - Duration::from_secs(60);
        File::open(&blobs).unwrap().set_modified(past).unwrap();
        let mut known = BlobsSynced::default();
        sync_blobs(&blobs, &mut known).unwrap();
        assert_eq!(known.names.len(), 1);
        let listed = known.listed;
        assert!(listed.is_some());
        // Nothing changed: the listing is skipped (its record is untouched).
        sync_blobs(&blobs, &mut known).unwrap();
        assert_eq!(known.listed, listed);
        // A new blob moves the mtime: it is listed and synced.
        std::fs::write(blobs.join("2"), b"b").unwrap();
        sync_blobs(&blobs, &mut known).unwrap();
        assert_eq!(known.names.len(), 2, "the new blob was seen");
        // Listed right after a change: not trusted yet, so the next call lists again.
        std::fs::write(blobs.join("3"), b"c").unwrap();
        sync_blobs(&blobs, &mut known).unwrap();
        assert_eq!(known.names.len(), 3);
    }
}
