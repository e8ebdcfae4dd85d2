//! Retention: the log stops growing. Whole live segments past the horizon are removed once a
//! checkpoint covers them; that checkpoint becomes the log's **base** (`base.rs`), and the
//! latest change of every file the log still knows is kept, in a kept segment, so a file's
//! current state is always served, redeliverable and rewindable (a compacted Kafka topic
//! keeps the latest value per key the same way).
//!
//! One advance of the base, to `E` (the last seq of the newest removable segment):
//! 1. the core's state at `E`: the newest checkpoint at or before `E` (or the old base),
//!    folded up to `E` — the state the live core had there;
//! 2. the kept set: the latest change at or before `E` of every file, from the old kept
//!    segment and the removed segments — except a file whose latest change is a `deleted`
//!    older than the horizon that the state at `E` no longer holds (it is forgotten);
//! 3. with `--archive-dir`, the removed stretch as zstd NDJSON (`cbctl import` reads it);
//! 4. the kept segment and the base checkpoint written and synced, then the manifest
//!    renamed into place — the one step that switches the base;
//! 5. the index told, the old segments, kept segment and checkpoints removed.
//!
//! A crash anywhere before step 4 leaves the old base; after it, the next open removes what
//! is left of the old one ([`remove_leftovers`]). Age is measured on the log's own clock:
//! the time of its newest record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use cb_core::{Core, EventKind, FileKey, Record, RecordKind, Seq, Timestamp};

use crate::base::{self, Base};
use crate::codec;
use crate::common_records::RecentIds;
use crate::error::{Error, Result};
use crate::log::Store;
use crate::seglog::SegmentLog;
use crate::segment::{
    self, GroupBuilder, Loc, SegmentHeader, SegmentKind, FORMAT_VERSION, GROUP_HEAD_LEN,
    RULES_VERSION, SEGMENT_HEADER_LEN,
};
use crate::storage::{Storage, StorageFile};

/// How much history the log keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Remove segments whose records are all older than this (`None`: keep all).
    pub max_age: Option<Duration>,
    /// Remove the oldest segments while the live segments take more than this many bytes
    /// (`None`: no limit). With both set, whichever removes more applies.
    pub max_bytes: Option<u64>,
    /// Write what is removed here first, as zstd-compressed NDJSON.
    pub archive_dir: Option<PathBuf>,
    /// How often the store looks for segments to remove.
    pub check_every: Duration,
}

impl Default for Retention {
    /// 30 days, no byte limit, no archive.
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_bytes: None,
            archive_dir: None,
            check_every: Duration::from_secs(60),
        }
    }
}

impl Retention {
    /// Keeps everything (`--retain forever`).
    pub fn forever() -> Retention {
        Retention {
            max_age: None,
            ..Retention::default()
        }
    }
}

/// What one advance of the base did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advanced {
    /// The new base.
    pub base: Seq,
    /// Live segments removed, and their bytes.
    pub segments_removed: usize,
    /// Bytes freed (segments, old kept segment).
    pub bytes_removed: u64,
    /// Changes kept (the latest of each file still known).
    pub kept: u64,
    /// Files forgotten (a `deleted` past the horizon).
    pub forgotten: u64,
    /// The archive written, if any.
    pub archive: Option<PathBuf>,
}

impl Store {
    /// Removes what the retention settings say is past the horizon, if anything: whole
    /// segments, once a checkpoint at their end (the new base) is written. Returns what was
    /// done. Called by the store's retention thread; tests call it directly.
    pub fn retain_now(&self, retention: &Retention) -> Result<Option<Advanced>> {
        let _one = self.shared.retaining.lock().expect("retention lock");
        if let Some(settled) = self.settle_switch()? {
            // An earlier advance, finished now: this call's. The next one goes on from it.
            return Ok(Some(settled));
        }
        let log = &self.shared.log;
        let live = log.live();
        if live.len() < 2 {
            return Ok(None);
        }
        let old_base = self.base();
        let now = match self.last_record()? {
            Some(r) => r.at,
            None => return Ok(None),
        };
        // Sealed segments (all but the newest), each with the last seq it holds and the
        // time its successor started (no record in it is later).
        let sealed: Vec<(u32, Seq, Timestamp, u64)> = live
            .windows(2)
            .map(|w| {
                let size = w[0].1.file.len().unwrap_or(0);
                (
                    w[0].0,
                    Seq(w[1].1.header.first_seq.0 - 1),
                    w[1].1.header.created,
                    size,
                )
            })
            .collect();
        let mut remove = 0;
        if let Some(age) = retention.max_age {
            let horizon = now
                .0
                .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            remove = sealed.iter().take_while(|s| s.2 .0 < horizon).count();
        }
        if let Some(max) = retention.max_bytes {
            let mut total: u64 = live.iter().map(|(_, s)| s.file.len().unwrap_or(0)).sum();
            let mut n = 0;
            for s in &sealed {
                if total <= max {
                    break;
                }
                total = total.saturating_sub(s.3);
                n += 1;
            }
            remove = remove.max(n);
        }
        if remove == 0 {
            return Ok(None);
        }
        let removed = &sealed[..remove];
        let end = removed.last().expect("not empty").1;
        if old_base.is_some_and(|b| b.seq >= end) {
            return Ok(None);
        }
        let horizon = retention.max_age.map_or(Timestamp(0), |age| {
            Timestamp(
                now.0
                    .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            )
        });
        self.advance_base(
            end,
            removed.iter().map(|s| s.0).collect(),
            horizon,
            retention.archive_dir.as_deref(),
        )
        .map(Some)
    }

    /// Advances the base to `end`, removing the live segments `segments` (which hold every
    /// record from the old base to `end`).
    fn advance_base(
        &self,
        end: Seq,
        segments: Vec<u32>,
        horizon: Timestamp,
        archive_dir: Option<&Path>,
    ) -> Result<Advanced> {
        let log = &self.shared.log;
        let storage = log.storage().clone();
        let old_base = self.base();
        let from = Seq(old_base.as_ref().map_or(0, |b| b.seq.0) + 1);

        // 1. The core's state at `end`.
        let core = self.core_at(end)?;
        let at_end = core.now();
        // 2. The kept set: the latest change of every file, at or before `end`.
        let mut latest: FxHashMap<FileKey, (Seq, Timestamp, bool)> = FxHashMap::default();
        let mut kept_before: Vec<(Record, Loc)> = Vec::new();
        if let Some(base) = &old_base {
            kept_before = crate::recover::read_kept(log, base)?;
            for (r, _) in &kept_before {
                if let RecordKind::ChangeAppended { file, event, .. } = &r.kind {
                    latest.insert(file.clone(), (r.seq, r.at, *event == EventKind::Deleted));
                }
            }
        }
        let mut archive = match archive_dir {
            Some(dir) => Some(Archive::create(dir, from, end)?),
            None => None,
        };
        for record in self.records_between(from, end) {
            let record = record?;
            if let RecordKind::ChangeAppended { file, event, .. } = &record.kind {
                latest.insert(
                    file.clone(),
                    (record.seq, record.at, *event == EventKind::Deleted),
                );
            }
            if let Some(a) = &mut archive {
                let snapshot = match record.kind {
                    RecordKind::ChangeAppended { .. } => Some(
                        self.snapshot(record.seq)?
                            .ok_or(Error::Missing { seq: record.seq })?,
                    ),
                    _ => None,
                };
                a.write(&record, snapshot.as_ref())?;
            }
        }
        // A file is forgotten when its latest change is a `deleted` past the horizon,
        // nothing at the base waits for it, and no record after the base names it (a
        // redeliver appended since carries its version).
        let mut forget = Vec::new();
        for (file, (_, at, deleted)) in &latest {
            if *deleted && *at < horizon && core.file(file).is_none() {
                let named_since = self
                    .shared
                    .index
                    .file_entries(file)?
                    .iter()
                    .any(|(seq, _)| *seq > end);
                if !named_since {
                    forget.push(file.clone());
                }
            }
        }
        let forgotten = forget.len() as u64;
        for file in &forget {
            latest.remove(file);
        }
        let mut kept: Vec<Seq> = latest.values().map(|(seq, _, _)| *seq).collect();
        // And the version of every attempt in flight at the base, though newer changes came
        // since: its outcome, after the base, is checked against it (`cbctl replay`).
        kept.extend(
            core.in_flight()
                .into_iter()
                .map(|a| a.version)
                .filter(|v| *v <= end),
        );
        kept.sort_unstable();
        kept.dedup();
        // 3. The archive, whole and synced, before anything is removed.
        let archive = match archive {
            Some(a) => Some(a.finish()?),
            None => None,
        };
        // 4. The kept segment, the base checkpoint, the manifest.
        let kept_id = log.new_id();
        let kept_locs = self.write_kept_segment(kept_id, end, at_end, &kept, &kept_before)?;
        let mut bytes_removed = 0;
        for id in &segments {
            if let Some(s) = log.get(*id) {
                bytes_removed += s.file.len().unwrap_or(0);
            }
        }
        if let Some(old) = &old_base {
            if let Some(s) = log.get(old.kept_segment) {
                bytes_removed += s.file.len().unwrap_or(0);
            }
        }
        let advanced = Advanced {
            base: end,
            segments_removed: segments.len(),
            bytes_removed,
            kept: kept.len() as u64,
            forgotten,
            archive,
        };
        let new_base =
            match self.switch_base(end, at_end, kept_id, &core, old_base.as_ref(), archive_dir) {
                Switch::Made(b) => b,
                Switch::NotMade(e) => {
                    // What this advance wrote for its base goes now, not at the next advance
                    // (on a full disk it holds the very space retention frees).
                    let _ = log.remove(kept_id);
                    let _ = storage.remove(&crate::base::checkpoint_name(end));
                    let _ = storage.sync_dir();
                    return Err(e);
                }
                // Either base may be the one after a crash: both keep their files, and the
                // next open removes the other's. The next advance settles it first.
                Switch::Unknown(e) => {
                    *self.shared.base_unsettled.lock().expect("base lock") = Some(Unsettled {
                        why: e.to_string(),
                        kept_id,
                        advanced,
                    });
                    return Err(e);
                }
            };
        // 5. The switch is made.
        self.switched(new_base, &kept_locs);
        Ok(advanced)
    }

    /// Step 5 of an advance, once the manifest names `new_base` durably: everyone else
    /// learns of it, then the old files go. What fails from here is left to the index's
    /// rebuild and the next open's cleanup.
    fn switched(&self, new_base: Base, kept_locs: &[(Record, Loc)]) {
        let (end, kept_id) = (new_base.seq, new_base.kept_segment);
        *self.shared.base.write().expect("base lock") = Some(new_base.clone());
        *self.shared.base_state.lock().expect("base lock") = None;
        if let Err(e) = self.shared.index.advance_base(end, kept_id, kept_locs) {
            tracing::warn!(error = %e, "the index did not take the new base; it is rebuilt");
        }
        if let Err(e) = remove_leftovers(&self.shared.log, Some(&new_base)) {
            tracing::warn!(error = %e, "removing the segments before the base; the next start does");
        }
        for file in self.checkpoints().unwrap_or_default() {
            if file.seq <= end {
                let _ = self.shared.checkpoints.remove(&file.name);
            }
        }
    }

    /// Settles a base switch an earlier advance could not confirm, before anything else is
    /// tried: the manifest on disk may name that base, so another advance must not write —
    /// or on failure remove — a checkpoint of the same name. The manifest is read and its
    /// directory synced: if it names the unconfirmed base, the switch is finished now;
    /// otherwise that base's files go. `Err` while the disk still cannot say. Returns the
    /// advance, if it was made after all.
    fn settle_switch(&self) -> Result<Option<Advanced>> {
        let Some(unsettled) = self
            .shared
            .base_unsettled
            .lock()
            .expect("base lock")
            .clone()
        else {
            return Ok(None);
        };
        let end = unsettled.advanced.base;
        let storage = self.shared.log.storage();
        let still = |e: &dyn std::fmt::Display| {
            Error::Io {
            context: format!(
                "an earlier switch of the log's base to {end} could not be confirmed ({}), and still cannot be: {e}",
                unsettled.why
            ),
            source: std::io::ErrorKind::Other.into(),
        }
        };
        let on_disk = Base::load(storage).map_err(|e| still(&e))?;
        storage.sync_dir().map_err(|e| still(&e))?;
        let made = match on_disk {
            Some(base) if base.seq == end && base.kept_segment == unsettled.kept_id => {
                let kept = crate::recover::read_kept(&self.shared.log, &base)?;
                tracing::info!(base = %base.seq, "an unconfirmed switch of the log's base was made after all: finished now");
                self.switched(base, &kept);
                Some(unsettled.advanced)
            }
            _ => {
                let _ = self.shared.log.remove(unsettled.kept_id);
                let _ = storage.remove(&crate::base::checkpoint_name(end));
                let _ = storage.sync_dir();
                None
            }
        };
        *self.shared.base_unsettled.lock().expect("base lock") = None;
        Ok(made)
    }

    /// Writes the base at `end` (the kept segment `kept_id` is written) and switches to it:
    /// the index out of memory first, then the base checkpoint and the manifest. A manifest
    /// written but whose directory sync failed is read back and synced again to tell.
    fn switch_base(
        &self,
        end: Seq,
        at_end: Timestamp,
        kept_id: u32,
        core: &Core,
        old_base: Option<&Base>,
        archive_dir: Option<&Path>,
    ) -> Switch {
        // Where the removed history is: this archive's dir, else where the last one went.
        let archived_in = match archive_dir {
            Some(dir) => Some(dir.to_owned()),
            None => old_base.and_then(|b| b.archive.clone()),
        };
        // The index writes out what it holds in memory first, so that its marks lie past
        // the new base — before the switch, so that nothing after it can fail for it (sled
        // holds only what an fdatasync covered: what is synced now reaches past `end`, which
        // lies in a closed segment).
        if let Err(e) = self.sync() {
            return Switch::NotMade(e);
        }
        let synced = Seq(self
            .shared
            .state
            .synced
            .load(std::sync::atomic::Ordering::Acquire));
        if let Err(e) = self.shared.index.spill(synced, true) {
            return Switch::NotMade(e);
        }
        let storage = self.shared.log.storage();
        match Base::commit(
            storage,
            end,
            at_end,
            kept_id,
            &core.checkpoint(),
            archived_in,
        ) {
            Ok(base) => Switch::Made(base),
            Err(e) => match Base::load(storage) {
                Ok(Some(base)) if base.seq == end && base.kept_segment == kept_id => {
                    match storage.sync_dir() {
                        Ok(()) => Switch::Made(base),
                        Err(_) => Switch::Unknown(e),
                    }
                }
                Ok(_) => Switch::NotMade(e),
                Err(_) => Switch::Unknown(e),
            },
        }
    }

    /// The core's state right after record `seq`: a checkpoint at or before it (or the
    /// base), folded up to it.
    fn core_at(&self, seq: Seq) -> Result<Core> {
        let mut start = None;
        for file in self.checkpoints()? {
            if file.seq > seq || file.seq < self.first_seq() {
                continue;
            }
            if let Ok(cp) = self.load_checkpoint(&file) {
                start = Some((file.seq, cp));
                break;
            }
        }
        let (mut core, from) = match start {
            Some((at, cp)) => (Core::from_checkpoint(cp), Seq(at.0 + 1)),
            None => match self.base() {
                Some(base) => (
                    Core::from_checkpoint(base.checkpoint(self.shared.log.storage())?),
                    Seq(base.seq.0 + 1),
                ),
                None => (Core::new(), Seq(1)),
            },
        };
        core.set_rules(self.rules());
        let mut effects = Vec::new();
        for record in self.records_between(from, seq) {
            core.apply(&record?, &mut effects);
            effects.clear();
        }
        if core.last_seq() != Some(seq) {
            return Err(Error::Missing { seq });
        }
        Ok(core)
    }

    /// Writes the kept segment `id` for the base at `end`: the records `kept` (increasing),
    /// each copied with its body from where it is now (the old kept segment `before`, or a
    /// live segment). Synced and renamed into place. Returns each kept record's location.
    fn write_kept_segment(
        &self,
        id: u32,
        end: Seq,
        now: Timestamp,
        kept: &[Seq],
        before: &[(Record, Loc)],
    ) -> Result<Vec<(Record, Loc)>> {
        let log = &self.shared.log;
        let in_before: FxHashMap<Seq, &Loc> = before.iter().map(|(r, l)| (r.seq, l)).collect();
        let (mut frame, mut body) = (Vec::new(), Vec::new());
        let items = kept.iter().map(|&seq| {
            let loc = match in_before.get(&seq) {
                Some(l) => **l,
                None => self.shared.index.loc(seq)?.ok_or(Error::Missing { seq })?,
            };
            log.read_frame(seq, &loc, &mut frame)?;
            log.read_body(seq, &loc, &mut body)?;
            let payload = segment::body_payload(seq, &body)?.to_vec();
            Ok((seq, frame.clone(), payload))
        });
        write_kept(log, id, end, now, items)
    }

    /// Makes this empty log continue after an imported base: the core's state at `base`
    /// (time `at`) and the kept changes `kept` (increasing seqs, at or before `base`) are
    /// written as the log's base, and the next record appended is `base + 1`. For
    /// `cbctl import` of an export taken after retention.
    pub fn import_base(
        &self,
        base: Seq,
        state: &cb_core::Checkpoint,
        kept: Vec<(Record, cb_core::Snapshot)>,
    ) -> Result<()> {
        let _one = self.shared.retaining.lock().expect("retention lock");
        if self.last_seq().is_some() || self.base().is_some() {
            return Err(Error::Rejected(
                "a base can be imported only into an empty data dir".into(),
            ));
        }
        if state.last_seq != Some(base) {
            return Err(Error::Rejected(format!(
                "the base state is the state at {:?}, not at {base}",
                state.last_seq
            )));
        }
        let mut prev = Seq(0);
        for (r, _) in &kept {
            if r.seq <= prev || r.seq > base || !matches!(r.kind, RecordKind::ChangeAppended { .. })
            {
                return Err(Error::Rejected(format!(
                    "kept record {}: the kept records are changes, in increasing order, at or before the base {base}",
                    r.seq
                )));
            }
            prev = r.seq;
        }
        let at = state.now;
        let log = &self.shared.log;
        let id = log.new_id();
        let items = kept.iter().map(|(r, snapshot)| {
            Ok((
                r.seq,
                codec::encode_record(r),
                segment::encode_body(snapshot),
            ))
        });
        let kept_locs = write_kept(log, id, base, at, items)?;
        let new_base = Base::commit(log.storage(), base, at, id, state, None)?;
        *self.shared.base.write().expect("base lock") = Some(new_base);
        self.shared.index.write_kept(base, id, &kept_locs)?;
        self.rebase(base, at)
    }
}

/// Writes kept segment `id` of the base at `end` from `items` (seq, record frame, body
/// payload; increasing seqs): whole, synced, renamed into place. Returns the records with
/// their locations.
fn write_kept(
    log: &SegmentLog,
    id: u32,
    end: Seq,
    now: Timestamp,
    items: impl Iterator<Item = Result<(Seq, Vec<u8>, Vec<u8>)>>,
) -> Result<Vec<(Record, Loc)>> {
    let header = SegmentHeader {
        format: FORMAT_VERSION,
        rules: RULES_VERSION,
        id,
        kind: SegmentKind::Kept,
        first_seq: end,
        created: now,
    };
    let mut bytes = header.encode().to_vec();
    let mut group = GroupBuilder::default();
    let mut locs = Vec::new();
    let mut buf = Vec::new();
    let mut ids = RecentIds::default();
    let mut out: Vec<(Record, Loc)> = Vec::new();
    let mut items = items.peekable();
    while items.peek().is_some() {
        for item in items.by_ref().take(1024) {
            let (seq, frame, payload) = item?;
            group.push(seq, &frame, Some(&payload));
        }
        let at = bytes.len() as u64;
        let first = locs.len();
        // Kept segments are written whole and never scanned for a tail: no run to tell apart.
        group.finish(id, at, end, 0, &mut buf, &mut locs);
        bytes.extend_from_slice(&buf);
        for (seq, loc) in &locs[first..] {
            let from = loc.record as usize;
            let frame = &bytes[from..from + loc.record_len as usize];
            let payload =
                codec::raw_unframe(frame).map_err(|reason| Error::Corrupt { seq: *seq, reason })?;
            out.push((codec::decode_checked(*seq, payload, &mut ids)?, *loc));
        }
        if bytes.len() as u64 > segment::MAX_SEGMENT_BYTES {
            return Err(Error::Rejected(format!(
                "the kept changes (over {} bytes) do not fit one segment",
                bytes.len()
            )));
        }
    }
    log.create_whole(header, &bytes)?;
    Ok(out)
}

/// A base switch whose outcome the disk could not tell (see `Store::settle_switch`).
#[derive(Clone, Debug)]
pub(crate) struct Unsettled {
    why: String,
    kept_id: u32,
    /// What the advance did, should the switch turn out made.
    advanced: Advanced,
}

/// How a switch to a new base went.
enum Switch {
    /// The manifest names it, durably.
    Made(Base),
    /// The old manifest stands: the new base's files are nobody's.
    NotMade(Error),
    /// The new manifest was renamed into place but may not survive a crash.
    Unknown(Error),
}

/// A stretch of the log being written as zstd NDJSON.
struct Archive {
    tmp: PathBuf,
    path: PathBuf,
    out: zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>,
    buf: Vec<u8>,
}

impl Archive {
    fn create(dir: &Path, from: Seq, to: Seq) -> Result<Archive> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let name = format!("cb-{:020}-{:020}.ndjson.zst", from.0, to.0);
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp).map_err(archive_error(&tmp))?;
        let out =
            zstd::Encoder::new(std::io::BufWriter::new(file), 3).map_err(archive_error(&tmp))?;
        Ok(Archive {
            tmp,
            path,
            out,
            buf: Vec::new(),
        })
    }

    fn write(&mut self, record: &Record, snapshot: Option<&cb_core::Snapshot>) -> Result<()> {
        let line = crate::ndjson::Line::from_record(record, snapshot)?;
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &line).expect("a Line always serializes");
        self.buf.push(b'\n');
        self.out
            .write_all(&self.buf)
            .map_err(archive_error(&self.tmp))
    }

    fn finish(self) -> Result<PathBuf> {
        let tmp = self.tmp.clone();
        let written = (|| -> std::io::Result<()> {
            let file = self
                .out
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                // An advance that failed after its archive was written left one from the
                // same seq to an earlier end: this one holds all of it.
                let name = self.path.file_name().unwrap_or_default().to_string_lossy();
                let same_start = format!("{}-", &name[..name.len().min("cb-".len() + 20)]);
                for entry in std::fs::read_dir(dir)? {
                    let other = entry?.file_name().to_string_lossy().into_owned();
                    if other != name
                        && other.starts_with(&same_start)
                        && other.ends_with(".ndjson.zst")
                    {
                        let _ = std::fs::remove_file(dir.join(other));
                    }
                }
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(archive_error(&tmp))?;
        Ok(self.path)
    }
}

fn archive_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |e| {
        let _ = std::fs::remove_file(&path);
        if crate::storage::is_disk_full(&e) {
            Error::DiskFull {
                context: format!("writing the archive {}: {e}", path.display()),
            }
        } else {
            Error::io(format!("writing the archive {}", path.display()))(e)
        }
    }
}

/// Removes what an interrupted switch to `base` left: kept segments and base checkpoints
/// the manifest does not name, and live segments whose records are all at or before the
/// base. Without a base (`None`: an interrupted first switch, or import of one), every kept
/// segment and base checkpoint is a leftover — if the log starts at record 1, as a log
/// without a base does (else it is left as found, for the open to refuse).
pub(crate) fn remove_leftovers(log: &SegmentLog, base: Option<&Base>) -> Result<()> {
    let storage = log.storage().clone();
    let mut removed = false;
    let live = log.live();
    let Some(base) = base else {
        if live
            .first()
            .is_some_and(|(_, s)| s.header.first_seq != Seq(1))
        {
            return Ok(());
        }
        for (id, s) in log.segments() {
            if s.header.kind == SegmentKind::Kept {
                log.remove(id)?;
                removed = true;
            }
        }
        removed |= remove_base_checkpoints(&storage, None)?;
        if removed {
            storage
                .sync_dir()
                .map_err(Error::io("syncing the segments directory"))?;
        }
        return Ok(());
    };
    for (i, (id, _)) in live.iter().enumerate() {
        // A live segment ends where the next begins.
        let Some((_, next)) = live.get(i + 1) else {
            break;
        };
        if next.header.first_seq.0 <= base.seq.0 + 1 {
            log.remove(*id)?;
            removed = true;
        }
    }
    // The newest too, when it starts at or before the base and nothing was ever written to
    // it: an import of a base cut short before the segment after the base was made (the
    // open makes one).
    if let Some((id, newest)) = live.last() {
        if newest.header.first_seq <= base.seq && never_written(&newest.file)? {
            log.remove(*id)?;
            removed = true;
        }
    }
    for (id, s) in log.segments() {
        if s.header.kind == SegmentKind::Kept && id != base.kept_segment {
            log.remove(id)?;
            removed = true;
        }
    }
    removed |= remove_base_checkpoints(&storage, Some(base))?;
    if removed {
        storage
            .sync_dir()
            .map_err(Error::io("syncing the segments directory"))?;
    }
    Ok(())
}

/// Removes the base checkpoints but `base`'s; true if it removed one.
fn remove_base_checkpoints(storage: &Arc<dyn Storage>, base: Option<&Base>) -> Result<bool> {
    let keep = base.map(|b| base::checkpoint_name(b.seq));
    let mut removed = false;
    for name in storage.list().map_err(Error::io("listing the segments"))? {
        if name.starts_with("base-") && name.ends_with(".cp") && Some(&name) != keep.as_ref() {
            storage
                .remove(&name)
                .map_err(Error::io(format!("removing {name}")))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// True if no group was ever written to this live segment: zeros where its first would be.
fn never_written(file: &Arc<dyn StorageFile>) -> Result<bool> {
    let mut head = [0u8; GROUP_HEAD_LEN];
    match file.read_exact_at(&mut head, SEGMENT_HEADER_LEN) {
        Ok(()) => Ok(head.iter().all(|b| *b == 0)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(Error::io("reading a log segment")(e)),
    }
}

/// Runs retention every `retention.check_every` until `stop` says so.
pub(crate) fn run(
    store: std::sync::Weak<crate::log::Shared>,
    retention: Retention,
    stop: std::sync::mpsc::Receiver<()>,
) {
    loop {
        match stop.recv_timeout(retention.check_every) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(shared) = store.upgrade() else {
            return;
        };
        let store = Store { shared };
        // A bug in an advance must not end retention for the life of the process.
        let advanced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.retain_now(&retention)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Rejected(
                "retention panicked (see the log above)".into(),
            ))
        });
        match advanced {
            Ok(Some(a)) => tracing::info!(
                base = a.base.0,
                segments = a.segments_removed,
                bytes = a.bytes_removed,
                kept = a.kept,
                forgotten = a.forgotten,
                archive = ?a.archive,
                "retention removed history up to the new base"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "retention could not remove old history; it tries again later")
            }
        }
        drop(store);
    }
}
