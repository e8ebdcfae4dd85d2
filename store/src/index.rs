//! The derived index: where each record lies in the segments, which records concern one
//! file, and which concern one project — everything a read needs to find records without
//! scanning the log, and nothing the log cannot give again.
//!
//! It lives in sled (`DIR/index-N/`), **off the durability path**: nothing is acknowledged
//! because sled has it, and sled is never flushed for an append. Recent records are indexed
//! in memory (the *tails*); the index writer thread moves them into sled once they are
//! durable, in batches, each batch with a mark saying how far sled reaches and the checksum
//! of the record at the mark (its *anchor*):
//!
//! - **locations** (`L` chunks of [`LOC_CHUNK`] `Loc`s, with the project entries `P` and
//!   the attempt entries `A`/`O` of the same stretch), mark `Mlocated`;
//! - **per-file** entries, as segments of [`SEGMENT_SPAN`] records sorted by file (`X`
//!   parts; a lookup probes each segment with one range query), mark `Mindexed`;
//! - the **kept** records of the base (`K` chunks of `(seq, Loc)`), mark `Mbase`.
//!
//! Opening checks sled against the log ([`Index::open`], [`Index::verify`]): sled's files
//! missing, unreadable, panicking or hanging in sled's open, an index of another format or
//! base, or a mark whose anchor is not the log's record there — each means the index is
//! rebuilt from the segments into a fresh `index-N+1`, and the old one deleted once the new
//! one is whole. An index that is only *behind* the log is caught up from its marks. Every
//! hit is checked against the frame it points at (its seq, its checksum) by the reader, so
//! a stale index can never serve another record: it fails the read, and the store rebuilds.
//!
//! When sled cannot be trusted in this process — a call into it hung (`watch.rs`), or a new
//! index cannot be made in it — the index is rebuilt **in memory** ([`Index::in_memory`]):
//! the same tails, never spilled, with the kept records beside them. It answers everything
//! sled would, at some 40 bytes per record, until the store is opened again.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Duration;

use rustc_hash::FxHashMap;

use cb_core::{FileKey, OutcomeClass, ProjectId, Record, RecordKind, Scope, Seq};

use crate::codec::{self, IndexTag};
use crate::error::{Error, Result};
use crate::segment::Loc;
use crate::watch::{IndexFaults, Watch};

/// Records per per-file index segment: bounds the tail rebuilt at open, and the number of
/// segments a lookup probes (one per this many records of log).
pub const SEGMENT_SPAN: u64 = 65_536;
/// Locations per `L` chunk (24 bytes each: 96 KiB, inline in sled).
pub const LOC_CHUNK: u64 = 4096;
/// The index's own layout version: an index of another one is rebuilt, never misread.
// 2: attempt entries (`A`, `O`).
const INDEX_FORMAT: u32 = 2;

/// The most bytes one per-file index part takes: under sled's inline limit (a quarter of
/// its 512 KiB segment), so parts never become blob files of their own.
const CHUNK_BUDGET: usize = 96 * 1024;

const LOCATIONS: u8 = b'L';
const KEPT: u8 = b'K';
const FILE_SEGMENT: u8 = b'X';
const FORMAT_KEY: &[u8] = b"Mformat";
const LOCATED_KEY: &[u8] = b"Mlocated";
const INDEXED_KEY: &[u8] = b"Mindexed";
const BASE_KEY: &[u8] = b"Mbase";

/// One file's entries: its records' seqs and what each is.
pub(crate) type Entries = Vec<(Seq, IndexTag)>;

/// An attempt as the attempt entries file it: whose, and how it ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct AttemptEntry {
    pub(crate) project: ProjectId,
    /// The callback's name as the log writes it (`site`, `file:0`).
    pub(crate) callback: Vec<u8>,
    pub(crate) class: OutcomeClass,
}

impl AttemptEntry {
    fn of(record: &Record) -> Option<AttemptEntry> {
        match &record.kind {
            RecordKind::AttemptFinished(a) => Some(AttemptEntry {
                project: a.machine.file.project.clone(),
                callback: a.machine.callback.to_string().into_bytes(),
                class: a.outcome.outcome_class(),
            }),
            _ => None,
        }
    }
}

/// Which attempts a lookup wants: each part given narrows it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttemptFilter<'a> {
    pub(crate) project: Option<&'a ProjectId>,
    /// Only with a project (callback names are the project's).
    pub(crate) callback: Option<&'a [u8]>,
    pub(crate) class: Option<OutcomeClass>,
}

impl AttemptFilter<'_> {
    fn keeps(&self, entry: &AttemptEntry) -> bool {
        self.project.is_none_or(|p| *p == entry.project)
            && self.callback.is_none_or(|c| c == entry.callback.as_slice())
            && self.class.is_none_or(|c| c == entry.class)
    }
}

/// What sled says it holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Marks {
    /// Locations and project entries reach this seq; the anchor is that record's CRC.
    pub(crate) located: Option<(Seq, u32)>,
    /// Per-file segments reach this seq.
    pub(crate) indexed: Seq,
    /// The base the kept locations were built for, and its kept segment (0: no base).
    pub(crate) base: (Seq, u32),
}

/// Where indexing resumes after an open: the group to scan from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Resume {
    pub(crate) segment: u32,
    pub(crate) group: u64,
}

/// Where an index keeps what is not in its tails.
enum Backing {
    /// In sled, at `DIR/index-{number}`; the calls into it watched for hangs.
    Sled {
        db: sled::Db,
        number: u64,
        watch: Arc<Watch>,
    },
    /// Nowhere: everything stays in the tails (kept records included), until cbd restarts
    /// or sled can be used again. The index of last resort, when sled cannot be trusted in
    /// this process (it hung, or a new index cannot be made in it); it costs memory (some
    /// 40 bytes per record), never an answer.
    Memory,
    /// Taken by [`Index::adopt`].
    Gone,
}

/// How an index is made: where, and what sled is given.
#[derive(Clone)]
pub(crate) struct IndexSettings {
    pub(crate) dir: PathBuf,
    pub(crate) cache_capacity: u64,
    pub(crate) span: u64,
    /// How long sled may take to open, or one call into it may take, before the index is
    /// given up ([`crate::watch::HANG_LIMIT`]).
    pub(crate) hang_limit: Duration,
    /// How long an index in memory because sled failed waits to try sled again.
    pub(crate) sled_retry: Duration,
    pub(crate) faults: Option<Arc<IndexFaults>>,
}

/// The index; shared by the commit thread (which notes records as it writes them), the
/// index writer thread (which moves durable ones into sled) and every reader.
pub(crate) struct Index {
    settings: IndexSettings,
    backing: RwLock<Backing>,
    /// Why sled was given up, while it is being replaced.
    broken: Mutex<Option<String>>,
    /// Why a call into sled was declared hung, once one was (in this index or one it
    /// replaced): whoever made it may be stuck for good.
    hung: Mutex<Option<String>>,
    tails: Mutex<Tails>,
    /// Recently read `L` chunks, decoded, by first seq.
    chunks: Mutex<BTreeMap<Seq, Arc<[Loc]>>>,
    /// Held by whoever moves the tails into sled (the index writer, retention): two at
    /// once would write and drop the same entries twice. Never taken by [`Index::adopt`]:
    /// its holder may be stuck in sled for good.
    spilling: Mutex<()>,
    span: u64,
}

#[derive(Default)]
struct Tails {
    /// Locations (with frame CRCs) of the records after `located`, in order.
    located: Seq,
    locs: VecDeque<(Loc, u32)>,
    /// The last anchor written (the CRC of record `located`).
    anchor: u32,
    /// Project-scoped records after `located`.
    projects: Vec<(ProjectId, Seq, IndexTag)>,
    /// Attempts after `located`, in order.
    attempts: Vec<(Seq, AttemptEntry)>,
    /// Per-file segments cover the records up to `indexed`.
    indexed: Seq,
    file_segments: Vec<Seq>,
    /// File-scoped records after `indexed`.
    files: FxHashMap<FileKey, Entries>,
    /// The last record noted.
    noted: Seq,
    /// Records at or before `base` are the kept ones (`K`); none are noted.
    base: Seq,
    base_segment: u32,
    /// The kept records' locations, in seq order, for an index in memory (in sled: `K`).
    kept: Vec<(Seq, Loc)>,
    /// Moves on when [`Index::adopt`] replaces these tails: a spill that wrote to the
    /// sled they replaced drops nothing from the new ones.
    generation: u64,
}

/// How many `L` chunks are kept decoded (96 KiB each).
const CACHED_CHUNKS: usize = 64;

/// Opens sled at `path` on a thread of its own: a panic inside sled's open (a damaged file
/// it cannot recover: spacejam/sled#1387) and a hang both become an `Err`.
fn open_sled(path: &Path, settings: &IndexSettings) -> std::result::Result<sled::Db, String> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    let cache_capacity = settings.cache_capacity;
    let faults = settings.faults.clone();
    let spawned = std::thread::Builder::new()
        .name("cb-index-open".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            let opened = loop {
                let attempt = catch_unwind(|| {
                    if let Some(faults) = &faults {
                        faults.before_call()?;
                    }
                    sled::Config::new()
                        .path(&path)
                        .cache_capacity(cache_capacity)
                        .mode(sled::Mode::HighThroughput)
                        .open()
                });
                match attempt {
                    // A handle just dropped in this process keeps sled's own file lock for a
                    // few milliseconds (spacejam/sled#1234): wait that out.
                    Ok(Err(sled::Error::Io(e)))
                        if e.to_string().contains("could not acquire lock")
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    other => break other,
                }
            };
            let _ = tx.send(opened);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a thread to open it: {e}"));
    }
    match rx.recv_timeout(settings.hang_limit) {
        Ok(Ok(Ok(db))) => Ok(db),
        Ok(Ok(Err(e))) => Err(format!("sled refused to open it: {e}")),
        Ok(Err(panic)) => Err(format!(
            "sled panicked opening it: {}",
            panic_message(&panic)
        )),
        Err(_) => Err(format!(
            "sled did not open it within {} ms",
            settings.hang_limit.as_millis()
        )),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// The `index-N` directories in `dir`, by number.
fn index_dirs(dir: &Path) -> Result<BTreeMap<u64, PathBuf>> {
    let mut found = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("index-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.insert(n, entry.path());
        }
    }
    Ok(found)
}

impl Drop for Index {
    /// sled flushes in the `Drop` of its last `Db` handle, and that flush has been seen to
    /// wait forever with every sled thread parked (the driver's simulator, on the real
    /// store, hung there closing one). So the handle is dropped on a thread of its own,
    /// given the hang limit like any call into sled, and left there past it: a close costs
    /// at most that, never the process. The next start catches the index up or rebuilds it.
    fn drop(&mut self) {
        let backing = self
            .backing
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Backing::Sled { db, number, .. } = std::mem::replace(backing, Backing::Gone) else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new()
            .name("cb-index-close".into())
            .spawn(move || {
                drop(db);
                let _ = tx.send(());
            });
        // If no thread could be made, the closure (and the handle) was dropped right here.
        if closing.is_ok() && rx.recv_timeout(self.settings.hang_limit).is_err() {
            tracing::error!(
                index = number,
                limit_ms = self.settings.hang_limit.as_millis() as u64,
                "sled did not finish closing the index in time: left closing on its own thread (the next start catches the index up or rebuilds it)"
            );
        }
    }
}

impl Index {
    /// Opens the newest index in the data dir and reads its marks, its sled calls watched
    /// by `watch`. `Err(reason)` when there is none, or sled cannot open it, or it is not an
    /// index this build wrote: the caller rebuilds ([`Index::fresh`]).
    pub(crate) fn open(
        settings: &IndexSettings,
        watch: Arc<Watch>,
    ) -> std::result::Result<(Index, Marks), String> {
        let dirs = index_dirs(&settings.dir).map_err(|e| e.to_string())?;
        let Some((&number, path)) = dirs.iter().next_back() else {
            return Err("there is no index".into());
        };
        let db = open_sled(path, settings)?;
        let index = Index::with(settings, Backing::Sled { db, number, watch });
        let marks = index.read_marks().map_err(|e| e.to_string())?;
        Ok((index, marks))
    }

    /// A new, empty index in `index-N+1`, replacing every other once it is whole
    /// ([`finish_rebuild`](Self::finish_rebuild)).
    pub(crate) fn fresh(settings: &IndexSettings, watch: Arc<Watch>) -> Result<Index> {
        let dir = &settings.dir;
        let number = index_dirs(dir)?.keys().next_back().map_or(1, |n| n + 1);
        let path = dir.join(format!("index-{number}"));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(Error::io(format!("removing {}", path.display())))?;
        }
        let db = open_sled(&path, settings).map_err(|reason| {
            // Nothing of a half-made index is worth keeping.
            let _ = std::fs::remove_dir_all(&path);
            if reason.contains("os error 28") || reason.contains("No space left") {
                Error::DiskFull {
                    context: format!(
                        "there is no room to build the log's index in {} ({reason}); free space and start again",
                        path.display()
                    ),
                }
            } else {
                Error::IndexUnavailable(format!(
                    "a new index in {} cannot be made: {reason}",
                    path.display()
                ))
            }
        })?;
        Ok(Index::with(settings, Backing::Sled { db, number, watch }))
    }

    /// A new, empty index held in memory only (see [`Backing::Memory`]).
    pub(crate) fn in_memory(settings: &IndexSettings) -> Index {
        Index::with(settings, Backing::Memory)
    }

    fn with(settings: &IndexSettings, backing: Backing) -> Index {
        Index {
            settings: settings.clone(),
            backing: RwLock::new(backing),
            broken: Mutex::new(None),
            hung: Mutex::new(None),
            tails: Mutex::new(Tails::default()),
            chunks: Mutex::new(BTreeMap::new()),
            spilling: Mutex::new(()),
            span: settings.span.max(1),
        }
    }

    /// Whether this index is held in memory only.
    pub(crate) fn in_memory_only(&self) -> bool {
        matches!(*self.backing.read().expect("index lock"), Backing::Memory)
    }

    /// How this index was made.
    pub(crate) fn settings(&self) -> &IndexSettings {
        &self.settings
    }

    /// Declares this index's sled hung if a call into it has taken longer than the limit,
    /// and gives the index up; returns why (see [`Watch::check`]).
    pub(crate) fn check_hang(&self) -> Option<String> {
        let why = self.watch()?.check(self.settings.hang_limit)?;
        self.give_up(why.clone());
        self.hung
            .lock()
            .expect("index lock")
            .get_or_insert_with(|| why.clone());
        Some(why)
    }

    /// Why a call into sled was declared hung, if one ever was (see
    /// [`check_hang`](Self::check_hang)).
    pub(crate) fn hung(&self) -> Option<String> {
        self.hung.lock().expect("index lock").clone()
    }

    fn watch(&self) -> Option<Arc<Watch>> {
        match &*self.backing.read().expect("index lock") {
            Backing::Sled { watch, .. } => Some(watch.clone()),
            Backing::Memory | Backing::Gone => None,
        }
    }

    /// Runs `f` on sled, turning its errors, panics and hangs into
    /// [`Error::IndexUnavailable`] and marking the index broken (the index keeper rebuilds
    /// it). The lock is not held during the call: a call stuck in sled must not stop the
    /// index from being replaced.
    fn sled<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        let (db, watch) = match &*self.backing.read().expect("index lock") {
            Backing::Sled { db, watch, .. } => (db.clone(), watch.clone()),
            Backing::Memory => {
                return Err(Error::IndexUnavailable(
                    "the index is held in memory (no sled)".into(),
                ))
            }
            Backing::Gone => return Err(self.unavailable()),
        };
        let call = watch.enter().map_err(|why| self.give_up(why))?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(faults) = &self.settings.faults {
                faults.before_call()?;
            }
            f(&db)
        }));
        if let Err(why) = watch.leave(call) {
            return Err(self.give_up(why));
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.give_up(format!("sled: {e}"))),
            Err(panic) => Err(self.give_up(format!("sled panicked: {}", panic_message(&panic)))),
        }
    }

    fn unavailable(&self) -> Error {
        let why = self.broken.lock().expect("index lock").clone();
        Error::IndexUnavailable(why.unwrap_or_else(|| "the index is being rebuilt".into()))
    }

    /// Marks the index broken; returns the error readers get meanwhile.
    pub(crate) fn give_up(&self, reason: String) -> Error {
        let mut broken = self.broken.lock().expect("index lock");
        if broken.is_none() {
            *broken = Some(reason.clone());
        }
        Error::IndexUnavailable(reason)
    }

    /// Why the index is broken, if it is (the index writer rebuilds it).
    pub(crate) fn broken(&self) -> Option<String> {
        self.broken.lock().expect("index lock").clone()
    }

    fn read_marks(&self) -> Result<Marks> {
        let (format, located, indexed, base) = self.sled(|db| {
            Ok((
                db.get(FORMAT_KEY)?,
                db.get(LOCATED_KEY)?,
                db.get(INDEXED_KEY)?,
                db.get(BASE_KEY)?,
            ))
        })?;
        let bad = |what: &str| Error::IndexUnavailable(format!("its {what} mark is unreadable"));
        match format.as_deref() {
            Some(f) if f == INDEX_FORMAT.to_le_bytes() => {}
            Some(_) => return Err(bad("format")),
            None => return Err(Error::IndexUnavailable("it was never finished".into())),
        }
        let located = match located.as_deref() {
            None => None,
            Some(v) if v.len() == 12 => Some((
                Seq(u64::from_le_bytes(v[..8].try_into().expect("8"))),
                u32::from_le_bytes(v[8..].try_into().expect("4")),
            )),
            Some(_) => return Err(bad("location")),
        };
        let indexed = match indexed.as_deref() {
            None => Seq(0),
            Some(v) => Seq(u64::from_le_bytes(
                v.try_into().map_err(|_| bad("per-file"))?,
            )),
        };
        let base = match base.as_deref() {
            None => (Seq(0), 0),
            Some(v) if v.len() == 12 => (
                Seq(u64::from_le_bytes(v[..8].try_into().expect("8"))),
                u32::from_le_bytes(v[8..].try_into().expect("4")),
            ),
            Some(_) => return Err(bad("base")),
        };
        if indexed > located.map_or(Seq(0), |l| l.0) {
            return Err(bad("per-file"));
        }
        let mut segments = Vec::new();
        let keys: Vec<_> = self.sled(|db| {
            db.scan_prefix([FILE_SEGMENT])
                .keys()
                .collect::<sled::Result<Vec<_>>>()
        })?;
        for key in keys {
            let first = key
                .get(1..9)
                .map(|b| Seq(u64::from_be_bytes(b.try_into().expect("8 bytes"))))
                .ok_or_else(|| bad("per-file segment"))?;
            if segments.last() != Some(&first) && first <= indexed {
                segments.push(first);
            }
        }
        let marks = Marks {
            located,
            indexed,
            base,
        };
        let mut tails = self.tails.lock().expect("index lock");
        // No location yet: records are noted from the one after the base (the kept ones
        // have their own `K` chunks).
        tails.located = located.map_or(base.0, |l| l.0);
        tails.anchor = located.map_or(0, |l| l.1);
        tails.indexed = indexed;
        tails.noted = tails.located.max(base.0);
        tails.file_segments = segments;
        tails.base = base.0;
        tails.base_segment = base.1;
        Ok(marks)
    }

    /// The first entry of each per-file segment past `base` (the kept records' segment
    /// aside): its file's key, its seq, and what that record is. An open checks each against
    /// the log's record (see `recover::check`): the location mark's anchor is one record,
    /// which another log laid out alike can share, while these name files.
    pub(crate) fn file_anchors(&self, base: Seq) -> Result<Vec<(Vec<u8>, Seq, IndexTag)>> {
        let segments = self.tails.lock().expect("index lock").file_segments.clone();
        let mut anchors = Vec::new();
        for segment in segments.into_iter().filter(|s| s.0 > 0) {
            let lo = codec::seq_key(FILE_SEGMENT, segment).to_vec();
            let hi = codec::seq_key(FILE_SEGMENT, Seq(segment.0 + 1)).to_vec();
            let Some((_, part)) = self.sled(|db| db.range(lo..hi).next().transpose())? else {
                continue;
            };
            let bad = || {
                Error::IndexUnavailable(format!("per-file index segment {segment} is unreadable"))
            };
            let bytes = codec::raw_unframe(&part).map_err(|_| bad())?;
            let len = bytes
                .first_chunk::<2>()
                .map(|b| u16::from_le_bytes(*b) as usize)
                .ok_or_else(bad)?;
            let entry = bytes.get(2 + len + 4..2 + len + 4 + 9).ok_or_else(bad)?;
            let seq = Seq(u64::from_le_bytes(entry[..8].try_into().expect("8")));
            let tag = IndexTag::from_byte(entry[8]).ok_or_else(bad)?;
            if seq > base {
                anchors.push((bytes[2..2 + len].to_vec(), seq, tag));
            }
        }
        Ok(anchors)
    }

    /// The location of `seq` as sled has it (`None` if sled has none).
    pub(crate) fn sled_loc(&self, seq: Seq) -> Result<Option<Loc>> {
        self.loc_in_chunks(LOCATIONS, seq)
    }

    /// Where records resume being noted after an open that found `marks`: the group of the
    /// record the per-file mark names; `None`: from the log's first live record.
    pub(crate) fn resume_point(&self, marks: &Marks) -> Result<Option<Resume>> {
        let Some((located, _)) = marks.located else {
            return Ok(None);
        };
        // The earliest record either part still needs: the one after the per-file mark,
        // found through the group of the record at the mark. With no per-file segment past
        // the base yet, every live record needs its per-file entries: from the first.
        if marks.indexed <= marks.base.0 {
            return Ok(None);
        }
        let from = marks.indexed;
        debug_assert!(
            from <= located,
            "the per-file mark never passes the location mark"
        );
        let Some(loc) = self.sled_loc(from)? else {
            return Err(Error::IndexUnavailable(format!(
                "it has no location for record {from}"
            )));
        };
        Ok(Some(Resume {
            segment: loc.segment,
            group: u64::from(loc.group),
        }))
    }

    /// Sets where the kept records are (the log's base), for a fresh index before the kept
    /// segment is noted.
    pub(crate) fn set_base(&self, base: Seq, segment: u32) {
        let mut tails = self.tails.lock().expect("index lock");
        tails.base = base;
        tails.base_segment = segment;
        tails.noted = tails.noted.max(base);
        tails.located = tails.located.max(base);
        tails.indexed = tails.indexed.max(Seq(0));
    }

    /// An empty log now continues after `base`: the next record noted is `base + 1`.
    pub(crate) fn rebase(&self, base: Seq) {
        let mut tails = self.tails.lock().expect("index lock");
        assert!(
            tails.noted.0 == 0 && tails.locs.is_empty(),
            "only an empty log is rebased"
        );
        tails.noted = base;
        tails.located = base;
        tails.indexed = base;
    }

    /// The log's base as the index knows it.
    pub(crate) fn base(&self) -> Seq {
        self.tails.lock().expect("index lock").base
    }

    /// Writes the kept records' locations and per-file entries (a fresh index, or a new
    /// base): `kept` in increasing seq order. Marks the base last.
    pub(crate) fn write_kept(&self, base: Seq, segment: u32, kept: &[(Record, Loc)]) -> Result<()> {
        self.write_kept_with(base, segment, kept, sled::Batch::default())
    }

    /// Moves the index to a new base at `base` (retention): what concerns records at or
    /// before it goes — location chunks wholly before it, per-file segments wholly before
    /// it, project entries before it, the old kept set — and the new kept set comes in, all
    /// in one batch. The caller has spilled everything durable first, so both marks lie
    /// past the base.
    pub(crate) fn advance_base(
        &self,
        base: Seq,
        segment: u32,
        kept: &[(Record, Loc)],
    ) -> Result<()> {
        if self.in_memory_only() {
            self.advance_base_in_memory(base, segment, kept);
            return Ok(());
        }
        let _one = self.spilling.lock().expect("index lock");
        let mut batch = sled::Batch::default();
        let (segments, indexed, generation) = {
            let tails = self.tails.lock().expect("index lock");
            if tails.located < base || tails.indexed < base {
                // Whatever happened (an index rebuilt meanwhile), it no longer fits the log:
                // the index writer rebuilds it.
                return Err(self.give_up(format!(
                    "its marks ({}, {}) lie before the new base {base}",
                    tails.located, tails.indexed
                )));
            }
            (tails.file_segments.clone(), tails.indexed, tails.generation)
        };
        let old: Vec<sled::IVec> = self.sled(|db| {
            let mut keys = Vec::new();
            for kv in db.scan_prefix([KEPT]) {
                keys.push(kv?.0);
            }
            for kv in db.range(codec::seq_key(LOCATIONS, Seq(0))..=codec::seq_key(LOCATIONS, base))
            {
                let (key, value) = kv?;
                let count = codec::raw_unframe(&value)
                    .ok()
                    .and_then(|p| {
                        p.first_chunk::<4>()
                            .map(|c| u64::from(u32::from_le_bytes(*c)))
                    })
                    .unwrap_or(0);
                let first = codec::seq_of_key(&key).unwrap_or(Seq(0));
                if first.0 + count.saturating_sub(1) <= base.0 {
                    keys.push(key);
                }
            }
            for kv in db.scan_prefix([codec::PROJECT_INDEX]) {
                let key = kv?.0;
                if codec::seq_of_key(&key).is_some_and(|s| s <= base) {
                    keys.push(key);
                }
            }
            // Attempts at or before the base: found by class and seq (`O`), whose value
            // names the `A` entry to go with it; costs the entries removed.
            for class in OutcomeClass::ALL {
                let prefix = codec::outcome_prefix(class);
                let from = codec::with_seq(prefix.clone(), Seq(0));
                let to = codec::with_seq(prefix, base);
                for kv in db.range(from..=to) {
                    let (key, whose) = kv?;
                    if let (Some(seq), Some(split)) =
                        (codec::seq_of_key(&key), whose.iter().position(|b| *b == 0))
                    {
                        let mut a = vec![codec::ATTEMPT_INDEX];
                        a.extend_from_slice(&whose[..split]);
                        a.push(0);
                        a.extend_from_slice(&whose[split + 1..]);
                        a.push(0);
                        a.push(class.code());
                        keys.push(codec::with_seq(a, seq).into());
                    }
                    keys.push(key);
                }
            }
            // Per-file segments wholly at or before the base, and the old kept one (0).
            for (i, first) in segments.iter().enumerate() {
                let last = segments.get(i + 1).map_or(indexed, |next| Seq(next.0 - 1));
                if first.0 == 0 || last <= base {
                    for kv in db.scan_prefix(codec::seq_key(FILE_SEGMENT, *first)) {
                        keys.push(kv?.0);
                    }
                }
            }
            Ok(keys)
        })?;
        for key in old {
            batch.remove(key);
        }
        {
            let mut tails = self.tails.lock().expect("index lock");
            if tails.generation != generation {
                return Err(self.give_up("it was replaced while taking a new base".into()));
            }
            let indexed = tails.indexed;
            let firsts = tails.file_segments.clone();
            tails.file_segments = firsts
                .iter()
                .enumerate()
                .filter(|(i, first)| {
                    let last = firsts.get(i + 1).map_or(indexed, |next| Seq(next.0 - 1));
                    first.0 != 0 && last > base
                })
                .map(|(_, f)| *f)
                .collect();
        }
        self.chunks.lock().expect("index lock").clear();
        self.write_kept_with(base, segment, kept, batch)
    }

    fn write_kept_with(
        &self,
        base: Seq,
        segment: u32,
        kept: &[(Record, Loc)],
        mut batch: sled::Batch,
    ) -> Result<()> {
        if self.in_memory_only() {
            self.advance_base_in_memory(base, segment, kept);
            return Ok(());
        }
        for chunk in kept.chunks(LOC_CHUNK as usize) {
            let mut payload = Vec::with_capacity(4 + chunk.len() * (8 + Loc::BYTES));
            payload.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for (record, loc) in chunk {
                payload.extend_from_slice(&record.seq.0.to_le_bytes());
                loc.encode_into(&mut payload);
            }
            batch.insert(
                &codec::seq_key(KEPT, chunk[0].0.seq),
                codec::raw_frame(&payload),
            );
        }
        // The kept changes, as a per-file segment of their own (under the base's seq).
        let mut files: BTreeMap<Vec<u8>, Entries> = BTreeMap::new();
        for (record, _) in kept {
            if let Scope::File(file) = record.scope() {
                if let Some(tag) = IndexTag::of(&record.kind) {
                    files
                        .entry(file_key_bytes(file))
                        .or_default()
                        .push((record.seq, tag));
                }
            }
        }
        let kept_segment = Seq(0);
        file_segment_parts(kept_segment, &files, &mut batch);
        let mut mark = base.0.to_le_bytes().to_vec();
        mark.extend_from_slice(&segment.to_le_bytes());
        batch.insert(BASE_KEY, mark);
        self.sled(|db| db.apply_batch(batch))?;
        let mut tails = self.tails.lock().expect("index lock");
        if !tails.file_segments.contains(&kept_segment) {
            tails.file_segments.insert(0, kept_segment);
        }
        tails.base = base;
        tails.base_segment = segment;
        Ok(())
    }

    /// [`advance_base`](Self::advance_base) (or a first base) for an index in memory: what
    /// concerns records at or before `base` goes from the tails, and the kept set comes in.
    fn advance_base_in_memory(&self, base: Seq, segment: u32, kept: &[(Record, Loc)]) {
        let mut tails = self.tails.lock().expect("index lock");
        // Nothing moves out of an index in memory: its location mark stays at its base.
        let gone = base.0.saturating_sub(tails.located.0) as usize;
        let gone = gone.min(tails.locs.len());
        tails.locs.drain(..gone);
        tails.located = tails.located.max(base);
        tails.indexed = tails.indexed.max(base);
        tails.noted = tails.noted.max(base);
        tails.projects.retain(|(_, s, _)| *s > base);
        tails.attempts.retain(|(s, _)| *s > base);
        let mut files: FxHashMap<FileKey, Entries> = FxHashMap::default();
        for (record, _) in kept {
            if let (Scope::File(file), Some(tag)) = (record.scope(), IndexTag::of(&record.kind)) {
                files
                    .entry(file.clone())
                    .or_default()
                    .push((record.seq, tag));
            }
        }
        for (file, later) in std::mem::take(&mut tails.files) {
            let later: Entries = later.into_iter().filter(|(s, _)| *s > base).collect();
            if !later.is_empty() {
                files.entry(file).or_default().extend(later);
            }
        }
        tails.files = files;
        tails.kept = kept.iter().map(|(r, loc)| (r.seq, *loc)).collect();
        tails.base = base;
        tails.base_segment = segment;
    }

    /// Notes records just written (perhaps not durable yet) with their locations and frame
    /// CRCs, in log order: readers find them at once (bounded by the durable tip, which the
    /// store enforces), and the index writer moves them into sled once durable. Parts sled
    /// already has (after a catch-up's first group) are skipped.
    pub(crate) fn note<'a>(&self, records: impl IntoIterator<Item = (&'a Record, &'a Loc, u32)>) {
        let mut tails = self.tails.lock().expect("index lock");
        for (r, loc, crc) in records {
            if r.seq <= tails.noted && r.seq <= tails.located {
                // Already in sled (the catch-up's first group): per-file entries may not be.
                if r.seq > tails.indexed {
                    note_file(&mut tails, r);
                }
                continue;
            }
            assert_eq!(
                r.seq.0,
                tails.noted.0 + 1,
                "records are noted densely, in order"
            );
            tails.noted = r.seq;
            tails.locs.push_back((*loc, crc));
            if let (Scope::Project(project), Some(tag)) = (r.scope(), IndexTag::of(&r.kind)) {
                tails.projects.push((project.clone(), r.seq, tag));
            }
            if let Some(entry) = AttemptEntry::of(r) {
                tails.attempts.push((r.seq, entry));
            }
            if r.seq > tails.indexed {
                note_file(&mut tails, r);
            }
        }
    }

    /// Forgets what was noted after `seq` (groups written and then given up).
    pub(crate) fn truncate_after(&self, seq: Seq) {
        let mut tails = self.tails.lock().expect("index lock");
        if tails.noted <= seq {
            return;
        }
        assert!(seq >= tails.located, "what sled has was durable");
        let keep = (seq.0 - tails.located.0) as usize;
        tails.locs.truncate(keep);
        tails.projects.retain(|(_, s, _)| *s <= seq);
        tails.attempts.retain(|(s, _)| *s <= seq);
        for entries in tails.files.values_mut() {
            entries.retain(|(s, _)| *s <= seq);
        }
        tails.files.retain(|_, e| !e.is_empty());
        tails.noted = seq;
    }

    /// The last record noted.
    pub(crate) fn noted(&self) -> Seq {
        self.tails.lock().expect("index lock").noted
    }

    /// Moves what is durable (up to `durable`) into sled: whole `L` chunks, or everything
    /// when `all`; then a per-file segment when a span of records is located. Returns
    /// whether anything was written.
    pub(crate) fn spill(&self, durable: Seq, all: bool) -> Result<bool> {
        if self.in_memory_only() {
            return Ok(false);
        }
        let _one = self.spilling.lock().expect("index lock");
        let mut wrote = false;
        loop {
            let (first, payload, projects, attempts, last, crc, generation) = {
                let tails = self.tails.lock().expect("index lock");
                let ready = durable
                    .0
                    .saturating_sub(tails.located.0)
                    .min(tails.locs.len() as u64);
                let n = if ready >= LOC_CHUNK {
                    LOC_CHUNK
                } else if all && ready > 0 {
                    ready
                } else {
                    break;
                };
                let first = Seq(tails.located.0 + 1);
                let last = Seq(tails.located.0 + n);
                let mut payload = Vec::with_capacity(4 + n as usize * Loc::BYTES);
                payload.extend_from_slice(&(n as u32).to_le_bytes());
                for (loc, _) in tails.locs.iter().take(n as usize) {
                    loc.encode_into(&mut payload);
                }
                let crc = tails.locs[n as usize - 1].1;
                let projects: Vec<_> = tails
                    .projects
                    .iter()
                    .filter(|(_, s, _)| *s <= last)
                    .cloned()
                    .collect();
                let attempts: Vec<_> = tails
                    .attempts
                    .iter()
                    .take_while(|(s, _)| *s <= last)
                    .cloned()
                    .collect();
                (
                    first,
                    payload,
                    projects,
                    attempts,
                    last,
                    crc,
                    tails.generation,
                )
            };
            let mut batch = sled::Batch::default();
            batch.insert(
                &codec::seq_key(LOCATIONS, first),
                codec::raw_frame(&payload),
            );
            for (project, seq, tag) in &projects {
                batch.insert(
                    codec::with_seq(codec::project_prefix(project), *seq),
                    vec![*tag as u8],
                );
            }
            for (seq, entry) in &attempts {
                let AttemptEntry {
                    project,
                    callback,
                    class,
                } = entry;
                batch.insert(
                    codec::with_seq(codec::attempt_prefix(project, callback, *class), *seq),
                    &[],
                );
                let mut whose = project.as_str().as_bytes().to_vec();
                whose.push(0);
                whose.extend_from_slice(callback);
                batch.insert(codec::with_seq(codec::outcome_prefix(*class), *seq), whose);
            }
            let mut mark = last.0.to_le_bytes().to_vec();
            mark.extend_from_slice(&crc.to_le_bytes());
            batch.insert(LOCATED_KEY, mark);
            self.sled(|db| db.apply_batch(batch))?;
            let mut tails = self.tails.lock().expect("index lock");
            if tails.generation != generation {
                // Replaced meanwhile: what was written went to a sled no longer used.
                return Ok(wrote);
            }
            let n = (last.0 - first.0 + 1) as usize;
            tails.locs.drain(..n);
            tails.projects.retain(|(_, s, _)| *s > last);
            tails.attempts.retain(|(s, _)| *s > last);
            tails.located = last;
            tails.anchor = crc;
            wrote = true;
        }
        wrote |= self.spill_files(all)?;
        Ok(wrote)
    }

    /// Writes the per-file tail up to the location mark as a segment, once it spans
    /// `span` records (or whatever it holds, when `all`).
    fn spill_files(&self, all: bool) -> Result<bool> {
        let (first, last, sorted, generation) = {
            let tails = self.tails.lock().expect("index lock");
            let last = tails.located;
            let spans = last.0.saturating_sub(tails.indexed.0);
            if spans == 0 || (spans < self.span && !all) {
                return Ok(false);
            }
            let sorted: BTreeMap<Vec<u8>, Entries> = tails
                .files
                .iter()
                .filter_map(|(f, e)| {
                    let upto: Entries = e.iter().copied().filter(|(s, _)| *s <= last).collect();
                    (!upto.is_empty()).then(|| (file_key_bytes(f), upto))
                })
                .collect();
            (Seq(tails.indexed.0 + 1), last, sorted, tails.generation)
        };
        let mut batch = sled::Batch::default();
        file_segment_parts(first, &sorted, &mut batch);
        batch.insert(INDEXED_KEY, &last.0.to_le_bytes());
        self.sled(|db| db.apply_batch(batch))?;
        let mut tails = self.tails.lock().expect("index lock");
        if tails.generation != generation {
            return Ok(false);
        }
        if !sorted.is_empty() {
            tails.file_segments.push(first);
        }
        tails.indexed = last;
        for entries in tails.files.values_mut() {
            entries.retain(|(seq, _)| *seq > last);
        }
        tails.files.retain(|_, entries| !entries.is_empty());
        Ok(true)
    }

    /// Makes what sled holds durable (a finished rebuild, or a clean shutdown), and marks
    /// the index as this build's.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.in_memory_only() {
            return Ok(());
        }
        self.sled(|db| {
            db.insert(FORMAT_KEY, &INDEX_FORMAT.to_le_bytes())?;
            db.flush()
        })?;
        Ok(())
    }

    /// After a rebuild into a fresh index: flush it and remove every older `index-N`.
    pub(crate) fn finish_rebuild(&self) -> Result<()> {
        self.flush()?;
        self.remove_older()
    }

    /// Removes every `index-N` but this one.
    pub(crate) fn remove_older(&self) -> Result<()> {
        let number = match &*self.backing.read().expect("index lock") {
            Backing::Sled { number, .. } => *number,
            // In memory: whatever is on disk is for the next start to judge.
            Backing::Memory | Backing::Gone => return Ok(()),
        };
        for (n, path) in index_dirs(&self.settings.dir)? {
            if n != number {
                std::fs::remove_dir_all(&path).map_err(Error::io(format!(
                    "removing the old index {}",
                    path.display()
                )))?;
            }
        }
        crate::dir::sync_dir(&self.settings.dir)
    }

    /// Takes the place of this index's sled and tails with `rebuilt`'s, which covers the
    /// log up to `through`; what this one noted after `through` is kept.
    pub(crate) fn adopt(&self, rebuilt: Index, through: Seq) {
        let new_backing = std::mem::replace(
            &mut *rebuilt.backing.write().expect("index lock"),
            Backing::Gone,
        );
        let new = std::mem::take(&mut *rebuilt.tails.lock().expect("index lock"));
        let mut tails = self.tails.lock().expect("index lock");
        let mut merged = new;
        // Locations: the rebuilt tail ends at `through`; the live one goes on past it.
        let live_from = tails.located.0 + 1;
        for (i, entry) in tails.locs.iter().enumerate() {
            if live_from + i as u64 > through.0 {
                merged.locs.push_back(*entry);
            }
        }
        merged.projects.extend(
            tails
                .projects
                .iter()
                .filter(|(_, s, _)| *s > through)
                .cloned(),
        );
        merged
            .attempts
            .extend(tails.attempts.iter().filter(|(s, _)| *s > through).cloned());
        for (file, entries) in &tails.files {
            let later: Vec<_> = entries
                .iter()
                .copied()
                .filter(|(s, _)| *s > through)
                .collect();
            if !later.is_empty() {
                merged.files.entry(file.clone()).or_default().extend(later);
            }
        }
        merged.noted = tails.noted;
        merged.generation = tails.generation + 1;
        // The backing changes with the tails, under their lock: a spill that finds the same
        // generation wrote to the same sled.
        let old = std::mem::replace(&mut *self.backing.write().expect("index lock"), new_backing);
        *tails = merged;
        drop(tails);
        self.chunks.lock().expect("index lock").clear();
        // A broken sled may hang in its own threads when dropped: leak it instead (its
        // files are removed with its directory; the process lets go of them at exit).
        std::mem::forget(old);
        *self.broken.lock().expect("index lock") = None;
    }

    /// Where record `seq` lies: in memory for recent records, else in sled. `None` if
    /// the index has no such record.
    pub(crate) fn loc(&self, seq: Seq) -> Result<Option<Loc>> {
        {
            let tails = self.tails.lock().expect("index lock");
            if seq.0 == 0 || seq > tails.noted {
                return Ok(None);
            }
            if seq <= tails.base {
                drop(tails);
                return self.kept_loc(seq);
            }
            if seq > tails.located {
                let i = (seq.0 - tails.located.0 - 1) as usize;
                return Ok(tails.locs.get(i).map(|(loc, _)| *loc));
            }
        }
        self.loc_in_chunks(LOCATIONS, seq)
    }

    fn loc_in_chunks(&self, prefix: u8, seq: Seq) -> Result<Option<Loc>> {
        if prefix == LOCATIONS {
            let cached = self.chunks.lock().expect("index lock");
            if let Some((first, locs)) = cached.range(..=seq).next_back() {
                if let Some(loc) = locs.get((seq.0 - first.0) as usize) {
                    return Ok(Some(*loc));
                }
            }
        }
        let found = self.sled(|db| {
            db.range(codec::seq_key(prefix, Seq(0))..=codec::seq_key(prefix, seq))
                .next_back()
                .transpose()
        })?;
        let Some((key, value)) = found else {
            return Ok(None);
        };
        let first = codec::seq_of_key(&key)
            .ok_or_else(|| self.give_up("a location key without a seq".into()))?;
        let payload = codec::raw_unframe(&value)
            .map_err(|r| self.give_up(format!("location chunk {first}: {r}")))?;
        let count = payload
            .first_chunk::<4>()
            .map(|c| u32::from_le_bytes(*c) as usize)
            .ok_or_else(|| self.give_up(format!("location chunk {first} is empty")))?;
        let entries = &payload[4..];
        if prefix == KEPT {
            if entries.len() != count * (8 + Loc::BYTES) {
                return Err(self.give_up(format!("kept chunk {first} has the wrong length")));
            }
            let found = entries
                .chunks_exact(8 + Loc::BYTES)
                .map(|e| {
                    (
                        Seq(u64::from_le_bytes(e[..8].try_into().expect("8"))),
                        Loc::decode(&e[8..]),
                    )
                })
                .find(|(s, _)| *s == seq)
                .map(|(_, loc)| loc);
            return Ok(found);
        }
        if entries.len() != count * Loc::BYTES {
            return Err(self.give_up(format!("location chunk {first} has the wrong length")));
        }
        let locs: Arc<[Loc]> = entries.chunks_exact(Loc::BYTES).map(Loc::decode).collect();
        let found = locs.get((seq.0 - first.0) as usize).copied();
        let mut cached = self.chunks.lock().expect("index lock");
        if cached.len() >= CACHED_CHUNKS {
            cached.pop_first();
        }
        cached.insert(first, locs);
        Ok(found)
    }

    /// Where kept record `seq` lies (`None`: not kept).
    pub(crate) fn kept_loc(&self, seq: Seq) -> Result<Option<Loc>> {
        if self.in_memory_only() {
            let tails = self.tails.lock().expect("index lock");
            let found = tails.kept.binary_search_by_key(&seq, |(s, _)| *s);
            return Ok(found.ok().map(|i| tails.kept[i].1));
        }
        self.loc_in_chunks(KEPT, seq)
    }

    /// Every indexed record of `file`, in order (kept ones included).
    pub(crate) fn file_entries(&self, file: &FileKey) -> Result<Entries> {
        let (segments, mut tail) = self.file_snapshot(file);
        let key = file_key_bytes(file);
        let mut all = Vec::new();
        for segment in segments {
            all.extend(self.probe(segment, &key)?);
        }
        all.append(&mut tail);
        Ok(all)
    }

    /// The seq of `file`'s latest change at or before `max`, newest segment first. A change
    /// at or before the base counts only if it is kept (a forgotten file has none).
    pub(crate) fn latest_change(&self, file: &FileKey, max: Seq) -> Result<Option<Seq>> {
        let (segments, tail) = self.file_snapshot(file);
        let change = |entries: &[(Seq, IndexTag)]| {
            entries
                .iter()
                .rev()
                .find(|(seq, tag)| *tag == IndexTag::Change && *seq <= max)
                .map(|(seq, _)| *seq)
        };
        let mut found = change(&tail);
        if found.is_none() {
            let key = file_key_bytes(file);
            for segment in segments.into_iter().rev() {
                if let Some(seq) = change(&self.probe(segment, &key)?) {
                    found = Some(seq);
                    break;
                }
            }
        }
        match found {
            Some(seq) if seq <= self.base() => Ok(self.kept_loc(seq)?.map(|_| seq)),
            other => Ok(other),
        }
    }

    /// The records of `project`'s scope (callback configuration), in order.
    pub(crate) fn project_seqs(&self, project: &ProjectId) -> Result<Vec<Seq>> {
        let prefix = codec::project_prefix(project);
        let keys = if self.in_memory_only() {
            Vec::new()
        } else {
            self.sled(|db| {
                db.scan_prefix(&prefix)
                    .keys()
                    .collect::<sled::Result<Vec<_>>>()
            })?
        };
        let mut seqs: Vec<Seq> = keys.iter().filter_map(|k| codec::seq_of_key(k)).collect();
        let tails = self.tails.lock().expect("index lock");
        seqs.extend(
            tails
                .projects
                .iter()
                .filter(|(p, _, _)| p == project)
                .map(|(_, s, _)| *s),
        );
        Ok(seqs)
    }

    /// Up to `limit` attempts that `filter` keeps, numbered `lo..=hi`, newest first. Each
    /// list of entries the filter names is read backwards from `hi` (one per outcome class
    /// and callback the filter leaves open), so a page costs the entries it returns times
    /// the lists merged, never a scan of the log or of the entries it skips.
    pub(crate) fn attempt_seqs(
        &self,
        filter: AttemptFilter<'_>,
        lo: Seq,
        hi: Seq,
        limit: usize,
    ) -> Result<Vec<Seq>> {
        // A rebuilt index adopted between the tails' read and sled's would pair tails and
        // sled that do not meet at one mark: read again (adoptions are rare).
        loop {
            let (found, generation) = self.attempt_seqs_once(filter, lo, hi, limit)?;
            if self.tails.lock().expect("index lock").generation == generation {
                return Ok(found);
            }
        }
    }

    fn attempt_seqs_once(
        &self,
        filter: AttemptFilter<'_>,
        lo: Seq,
        hi: Seq,
        limit: usize,
    ) -> Result<(Vec<Seq>, u64)> {
        if lo > hi || limit == 0 {
            return Ok((
                Vec::new(),
                self.tails.lock().expect("index lock").generation,
            ));
        }
        // sled is read only up to the location mark seen with the tails: a spill landing
        // meanwhile puts the same entries in sled before it drains them from the tails.
        let (mut found, located, generation): (Vec<Seq>, Seq, u64) = {
            let tails = self.tails.lock().expect("index lock");
            let found = tails
                .attempts
                .iter()
                .rev()
                .filter(|(s, e)| *s >= lo && *s <= hi && filter.keeps(e))
                .map(|(s, _)| *s)
                .take(limit)
                .collect();
            (found, tails.located, tails.generation)
        };
        let hi = hi.min(located);
        // The tails hold every attempt after the location mark, sled those up to it: a
        // page the tails fill needs nothing older.
        if found.len() >= limit || lo > hi || self.in_memory_only() {
            return Ok((found, generation));
        }
        let want = limit - found.len();
        let classes: Vec<OutcomeClass> = match filter.class {
            Some(class) => vec![class],
            None => OutcomeClass::ALL.to_vec(),
        };
        let mut prefixes = Vec::new();
        match filter.project {
            Some(project) => {
                let callbacks = match filter.callback {
                    Some(callback) => vec![callback.to_vec()],
                    None => self.attempt_callbacks(project)?,
                };
                for callback in &callbacks {
                    for class in &classes {
                        prefixes.push(codec::attempt_prefix(project, callback, *class));
                    }
                }
            }
            None => prefixes.extend(classes.iter().map(|c| codec::outcome_prefix(*c))),
        }
        let mut older = self.sled(|db| {
            let mut seqs = Vec::new();
            for prefix in &prefixes {
                let from = codec::with_seq(prefix.clone(), lo);
                let to = codec::with_seq(prefix.clone(), hi);
                for kv in db.range(from..=to).rev().take(want) {
                    seqs.extend(codec::seq_of_key(&kv?.0));
                }
            }
            Ok(seqs)
        })?;
        older.sort_unstable_by(|a, b| b.cmp(a));
        found.extend(older);
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.dedup();
        found.truncate(limit);
        Ok((found, generation))
    }

    /// The callbacks of `project` with an attempt entry in sled, skipping from one name to
    /// the next: costs the callbacks, not their entries.
    fn attempt_callbacks(&self, project: &ProjectId) -> Result<Vec<Vec<u8>>> {
        let prefix = codec::attempt_project_prefix(project);
        self.sled(|db| {
            let mut names = Vec::new();
            let mut from = prefix.clone();
            while let Some(kv) = db.range(from.clone()..).next() {
                let key = kv?.0;
                let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                let Some(end) = rest.iter().position(|b| *b == 0) else {
                    break;
                };
                let name = rest[..end].to_vec();
                // Past every key of this name: the name, then a byte above its `\0`.
                from.truncate(prefix.len());
                from.extend_from_slice(&name);
                from.push(1);
                names.push(name);
            }
            Ok(names)
        })
    }

    fn file_snapshot(&self, file: &FileKey) -> (Vec<Seq>, Entries) {
        let tails = self.tails.lock().expect("index lock");
        (
            tails.file_segments.clone(),
            tails.files.get(file).cloned().unwrap_or_default(),
        )
    }

    /// `file`'s entries in one per-file segment: the part whose first key is the greatest
    /// at or before the file's, scanned for an exact match.
    fn probe(&self, segment: Seq, key: &[u8]) -> Result<Entries> {
        let lo = codec::seq_key(FILE_SEGMENT, segment).to_vec();
        let hi = part_key(segment, key);
        let Some((_, part)) = self.sled(|db| db.range(lo..=hi).next_back().transpose())? else {
            return Ok(Vec::new());
        };
        let corrupt =
            |reason: String| self.give_up(format!("per-file index segment {segment}: {reason}"));
        let bytes = codec::raw_unframe(&part).map_err(corrupt)?;
        let mut at = 0;
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let s = bytes
                .get(*at..*at + n)
                .ok_or_else(|| corrupt(format!("truncated at byte {at}")))?;
            *at += n;
            Ok(s)
        };
        while at < bytes.len() {
            let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().expect("2")) as usize;
            let this = take(&mut at, len)?;
            let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4")) as usize;
            if this != key {
                take(&mut at, 9 * n)?;
                continue;
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let e = take(&mut at, 9)?;
                let seq = Seq(u64::from_le_bytes(e[..8].try_into().expect("8")));
                let tag = IndexTag::from_byte(e[8])
                    .ok_or_else(|| corrupt(format!("unknown tag {}", e[8])))?;
                out.push((seq, tag));
            }
            return Ok(out);
        }
        Ok(Vec::new())
    }

    /// The index's bytes on disk (sled's).
    pub(crate) fn size_on_disk(&self) -> u64 {
        if self.in_memory_only() || self.broken().is_some() {
            return 0;
        }
        self.sled(|db| db.size_on_disk()).unwrap_or(0)
    }
}

fn note_file(tails: &mut Tails, r: &Record) {
    if let (Scope::File(file), Some(tag)) = (r.scope(), IndexTag::of(&r.kind)) {
        tails
            .files
            .entry(file.clone())
            .or_default()
            .push((r.seq, tag));
    }
}

/// True if `record` is what a per-file entry of `key` with `tag` says it is.
pub(crate) fn entry_is(record: &Record, key: &[u8], tag: IndexTag) -> bool {
    matches!(record.scope(), Scope::File(f) if file_key_bytes(f) == key)
        && IndexTag::of(&record.kind) == Some(tag)
}

/// The bytes a file's entries are sorted by: `project \0 file_id`.
fn file_key_bytes(file: &FileKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(file.project.as_str().len() + 1 + file.file_id.as_str().len());
    k.extend_from_slice(file.project.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(file.file_id.as_str().as_bytes());
    k
}

fn part_key(segment: Seq, first_file: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + first_file.len());
    k.extend_from_slice(&codec::seq_key(FILE_SEGMENT, segment));
    k.extend_from_slice(first_file);
    k
}

/// A per-file segment: entries sorted by file, packed into parts of at most
/// [`CHUNK_BUDGET`] bytes, each keyed `X` segment first_file_key. A part is `CRC-32` then
/// entries `key_len: u16, key, n: u32, n × (seq: u64, tag: u8)`.
fn file_segment_parts(segment: Seq, sorted: &BTreeMap<Vec<u8>, Entries>, batch: &mut sled::Batch) {
    let mut part: Vec<u8> = Vec::new();
    let mut part_first: Option<Vec<u8>> = None;
    for (key, entries) in sorted {
        let size = 2 + key.len() + 4 + 9 * entries.len();
        if part_first.is_some() && part.len() + size > CHUNK_BUDGET {
            let done = std::mem::take(&mut part);
            batch.insert(
                part_key(segment, &part_first.take().expect("set")),
                codec::raw_frame(&done),
            );
        }
        part_first.get_or_insert_with(|| key.clone());
        part.extend_from_slice(
            &u16::try_from(key.len())
                .expect("ids are short")
                .to_le_bytes(),
        );
        part.extend_from_slice(key);
        part.extend_from_slice(&u32::try_from(entries.len()).expect("< 4G").to_le_bytes());
        for (seq, tag) in entries {
            part.extend_from_slice(&seq.0.to_le_bytes());
            part.push(*tag as u8);
        }
    }
    if let Some(key) = part_first {
        batch.insert(part_key(segment, &key), codec::raw_frame(&part));
    }
}

#[cfg(test)]
mod attempt_page_tests {
    use super::*;
    use cb_core::{
        AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, FileId, MachineKey, Outcome,
        Timestamp,
    };

    fn settings(dir: &Path) -> IndexSettings {
        IndexSettings {
            dir: dir.to_owned(),
            cache_capacity: 1 << 20,
            span: SEGMENT_SPAN,
            hang_limit: Duration::from_secs(30),
            sled_retry: Duration::from_secs(60),
            faults: None,
        }
    }

    fn attempt(seq: u64) -> Record {
        Record {
            seq: Seq(seq),
            at: Timestamp(seq),
            kind: RecordKind::AttemptFinished(AttemptReport {
                machine: MachineKey {
                    file: FileKey::new(ProjectId::new("p").unwrap(), FileId::new("f").unwrap()),
                    callback: CallbackRef::Project(CallbackName::new("site").unwrap()),
                },
                delivery: DeliveryId(Seq(1)),
                attempt: 1,
                version: Seq(1),
                outcome: Outcome::Delivered { status: 200 },
                latency_ms: 1,
                digest: Digest::of(b""),
                detail: String::new(),
            }),
        }
    }

    /// `spill` applies its batch to sled and only then drains the tails: a page read in
    /// between finds the batch's attempts in both, and the duplicates use up the sled lists'
    /// `take(want)`, so the page comes out short (and `more` false) while older ones match.
    #[test]
    fn a_page_read_while_a_spill_lands_is_not_short() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::fresh(&settings(tmp.path()), Arc::new(Watch::default())).unwrap();
        let records: Vec<Record> = (1..=10).map(attempt).collect();
        let loc = Loc::default();
        index.note(records.iter().map(|r| (r, &loc, 0)));
        // sled: 1..=5 (mark 5); tails: 6..=10.
        assert!(index.spill(Seq(5), true).unwrap());
        // The next spill's batch (6..=10) has landed in sled; its tails are not drained yet.
        index
            .sled(|db| {
                for r in &records[5..] {
                    let e = AttemptEntry::of(r).unwrap();
                    db.insert(
                        codec::with_seq(
                            codec::attempt_prefix(&e.project, &e.callback, e.class),
                            r.seq,
                        ),
                        &[],
                    )?;
                    let mut whose = e.project.as_str().as_bytes().to_vec();
                    whose.push(0);
                    whose.extend_from_slice(&e.callback);
                    db.insert(
                        codec::with_seq(codec::outcome_prefix(e.class), r.seq),
                        whose,
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let want: Vec<Seq> = (3..=10).rev().map(Seq).collect();
        let p = ProjectId::new("p").unwrap();
        for filter in [
            AttemptFilter::default(),
            AttemptFilter {
                project: Some(&p),
                ..AttemptFilter::default()
            },
        ] {
            let got = index.attempt_seqs(filter, Seq(1), Seq(10), 8).unwrap();
            assert_eq!(got, want, "{filter:?}");
        }
    }
}
