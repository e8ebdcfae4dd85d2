//! The segment log — cb's own append-only log and the single source of truth: which segment
//! files exist, where the next group goes, and reading groups, records and bodies back.
//!
//! ```text
//! DIR/segments/00000001.seg   live: records first_seq.. in append order (segment.rs)
//! DIR/segments/00000002.seg   the next one, started when the first could not take a group
//! DIR/segments/00000007.seg   kept: the latest change of every file at the base (retention)
//! DIR/segments/BASE           which kept segment and checkpoint make the base, if any
//! ```
//!
//! **Writing** ([`SegmentWriter`]) is the commit thread's alone. A segment is created whole
//! before anything is written to it — header written, space for `segment_bytes`
//! preallocated, the file synced, then renamed from a temporary name and the directory
//! synced — so a visible segment always has its header and its space, and a group written
//! into it cannot fail for want of room: a full disk shows up as a segment that cannot be
//! created ([`Error::DiskFull`]), before any byte of the group is written. A segment is
//! closed only once everything written to it is durable (the roll syncs it), so a torn
//! tail can only be in the newest segment: opening scans only that one's tail.
//!
//! **Reading** goes by [`Loc`] (from the index) for one record or body, or group by group
//! ([`GroupCursor`]) for a stretch of the log; readers never look past the durable tip,
//! which the store keeps.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};

use cb_core::{Seq, Timestamp};

use crate::error::{Error, Result};
use crate::segment::{
    self, align, GroupBuilder, GroupHead, HeaderError, Loc, ScanEnd, ScannedGroup, SegmentHeader,
    SegmentKind, FORMAT_VERSION, GROUP_HEAD_LEN, MAX_SEGMENT_BYTES, RULES_VERSION,
    SEGMENT_HEADER_LEN,
};
use crate::storage::{is_disk_full, Storage, StorageFile};

/// A segment file and what its header says.
#[derive(Clone)]
pub(crate) struct Segment {
    pub(crate) header: SegmentHeader,
    pub(crate) file: Arc<dyn StorageFile>,
}

/// The segment files of one log; shared by the writer and every reader.
pub(crate) struct SegmentLog {
    storage: Arc<dyn Storage>,
    segments: RwLock<BTreeMap<u32, Segment>>,
    /// The next segment id to hand out. Invariant: above every id in use or being made, so
    /// the commit thread's roll and retention's kept segment never take the same one.
    next_id: std::sync::atomic::AtomicU32,
}

pub(crate) fn segment_name(id: u32) -> String {
    format!("{id:08}.seg")
}

fn parse_name(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok().filter(|n| *n > 0)
}

impl SegmentLog {
    /// Lists the segments in `storage` and reads their headers. Leftovers of an interrupted
    /// segment creation (`*.seg.tmp`) are removed; anything else that is not a segment is
    /// refused (the directory is the log's alone).
    pub(crate) fn open(storage: Arc<dyn Storage>) -> Result<Arc<SegmentLog>> {
        let io = |what: &str| {
            let what = format!("{what} {}", storage.describe());
            move |e| Error::Io {
                context: what,
                source: e,
            }
        };
        let mut segments = BTreeMap::new();
        let mut removed = false;
        for name in storage.list().map_err(io("listing"))? {
            if name.ends_with(".tmp") {
                storage
                    .remove(&name)
                    .map_err(io("removing a leftover in"))?;
                removed = true;
                continue;
            }
            if crate::base::is_manifest_name(&name) {
                continue;
            }
            let Some(id) = parse_name(&name) else {
                return Err(Error::Io {
                    context: format!(
                        "{} holds {name:?}, which is not a log segment",
                        storage.describe()
                    ),
                    source: io::ErrorKind::InvalidData.into(),
                });
            };
            let file = storage.open(&name).map_err(io("opening a segment in"))?;
            let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
            let header = match file.read_exact_at(&mut head, 0) {
                Ok(()) => SegmentHeader::decode(&head),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Err(HeaderError::Damaged("shorter than a segment header".into()))
                }
                Err(e) => return Err(io("reading a segment header in")(e)),
            };
            let header = header.map_err(|e| match e {
                HeaderError::Damaged(reason) => Error::Corrupt {
                    seq: Seq(0),
                    reason: format!("log segment {name}: {reason}"),
                },
                HeaderError::Format(found) => Error::UnknownFormat {
                    path: storage.describe().into(),
                    found: found.to_string(),
                    supported: FORMAT_VERSION,
                },
                HeaderError::Rules(found) => Error::UnknownFormat {
                    path: storage.describe().into(),
                    found: format!("{FORMAT_VERSION} with delivery rules version {found} (this build knows 1 to {RULES_VERSION})"),
                    supported: FORMAT_VERSION,
                },
            })?;
            if header.id != id {
                return Err(Error::Corrupt {
                    seq: header.first_seq,
                    reason: format!("log segment {name} says it is segment {}", header.id),
                });
            }
            segments.insert(id, Segment { header, file });
        }
        if removed {
            storage.sync_dir().map_err(io("syncing"))?;
        }
        let next_id = segments.keys().next_back().map_or(1, |id| id + 1);
        Ok(Arc::new(SegmentLog {
            storage,
            segments: RwLock::new(segments),
            next_id: std::sync::atomic::AtomicU32::new(next_id),
        }))
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Every segment, by id.
    pub(crate) fn segments(&self) -> BTreeMap<u32, Segment> {
        self.segments.read().expect("segments lock").clone()
    }

    /// The live segments, in log order.
    pub(crate) fn live(&self) -> Vec<(u32, Segment)> {
        self.segments
            .read()
            .expect("segments lock")
            .iter()
            .filter(|(_, s)| s.header.kind == SegmentKind::Live)
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }

    pub(crate) fn get(&self, id: u32) -> Option<Segment> {
        self.segments
            .read()
            .expect("segments lock")
            .get(&id)
            .cloned()
    }

    /// The live segment after `id`.
    pub(crate) fn next_live(&self, id: u32) -> Option<(u32, Segment)> {
        self.segments
            .read()
            .expect("segments lock")
            .range(id + 1..)
            .find(|(_, s)| s.header.kind == SegmentKind::Live)
            .map(|(id, s)| (*id, s.clone()))
    }

    pub(crate) fn insert(&self, id: u32, segment: Segment) {
        let mut segments = self.segments.write().expect("segments lock");
        assert!(
            !segments.contains_key(&id),
            "segment ids are handed out once (new_id)"
        );
        segments.insert(id, segment);
        self.next_id
            .fetch_max(id + 1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Forgets segment `id` and removes its file (not synced: the caller syncs the dir).
    pub(crate) fn remove(&self, id: u32) -> Result<()> {
        self.segments.write().expect("segments lock").remove(&id);
        match self.storage.remove(&segment_name(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                context: format!("removing log segment {id}"),
                source: e,
            }),
        }
    }

    /// A segment id no one else has or will be given.
    pub(crate) fn new_id(&self) -> u32 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
    }

    /// Reads `buf.len()` bytes at `offset` of segment `segment`, for record `seq` (named in
    /// errors).
    pub(crate) fn read(&self, seq: Seq, segment: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(s) = self.get(segment) else {
            return Err(Error::Missing { seq });
        };
        s.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::Corrupt {
                seq,
                reason: format!(
                    "{} bytes at {offset} of log segment {segment} cannot be read: {e}",
                    buf.len()
                ),
            })
    }

    /// The frame of record `seq`, which `loc` says is where.
    pub(crate) fn read_frame(&self, seq: Seq, loc: &Loc, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(loc.record_len as usize, 0);
        self.read(seq, loc.segment, u64::from(loc.record), buf)
    }

    /// The body entry of change `seq`, which `loc` says is where.
    pub(crate) fn read_body(&self, seq: Seq, loc: &Loc, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(loc.body_len as usize, 0);
        self.read(seq, loc.segment, u64::from(loc.body), buf)
    }

    /// Bytes of every segment on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        let mut total = 0;
        for s in self.segments.read().expect("segments lock").values() {
            total += s.file.len().map_err(|e| Error::Io {
                context: "reading a segment's size".into(),
                source: e,
            })?;
        }
        Ok(total)
    }

    /// Creates segment `id` whole (header, preallocated space, synced, renamed into place,
    /// directory synced) and adds it to the log. Nothing is left behind when it fails.
    pub(crate) fn create(
        &self,
        header: SegmentHeader,
        capacity: u64,
        reserve: u64,
    ) -> Result<Segment> {
        let free = self.storage.free_bytes().map_err(|e| Error::Io {
            context: format!("reading the free space of {}", self.storage.describe()),
            source: e,
        })?;
        if free < capacity.saturating_add(reserve) {
            return Err(Error::DiskFull {
                context: format!(
                    "a new log segment needs {} and a reserve of {} free in {}; {} are",
                    bytes(capacity),
                    bytes(reserve),
                    self.storage.describe(),
                    bytes(free)
                ),
            });
        }
        self.make(header, |file| {
            file.write_all_at(&header.encode(), 0)?;
            file.allocate(capacity)
        })
    }

    /// Creates a segment holding `bytes` (its header and groups), written whole: to a
    /// temporary name, synced, renamed into place, the directory synced.
    pub(crate) fn create_whole(&self, header: SegmentHeader, bytes: &[u8]) -> Result<Segment> {
        self.make(header, |file| file.write_all_at(bytes, 0))
    }

    /// Makes segment file `header.id` with `fill`, whole: under a temporary name, synced,
    /// renamed into place, the directory synced; then adds it to the log. On failure
    /// nothing is left, under either name: a rename whose directory sync failed may still
    /// reach the disk, and an open must not find a segment the log never used.
    fn make(
        &self,
        header: SegmentHeader,
        fill: impl FnOnce(&dyn StorageFile) -> io::Result<()>,
    ) -> Result<Segment> {
        let name = segment_name(header.id);
        let tmp = format!("{name}.tmp");
        let made = (|| -> io::Result<Arc<dyn StorageFile>> {
            let file = self.storage.create(&tmp)?;
            fill(&*file)?;
            file.sync_data()?;
            self.storage.rename(&tmp, &name)?;
            self.storage.sync_dir()?;
            Ok(file)
        })();
        match made {
            Ok(file) => {
                let segment = Segment { header, file };
                self.insert(header.id, segment.clone());
                Ok(segment)
            }
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                let _ = self.storage.remove(&name);
                let _ = self.storage.sync_dir();
                Err(if is_disk_full(&e) {
                    Error::DiskFull {
                        context: format!("making log segment {name}: {e}"),
                    }
                } else {
                    Error::Io {
                        context: format!("making log segment {name}"),
                        source: e,
                    }
                })
            }
        }
    }

    /// Scans segment `id` from `from` (a group boundary), as [`segment::scan`] does; a
    /// live segment with a successor ends where the successor begins.
    pub(crate) fn scan(
        &self,
        id: u32,
        from: u64,
        next_seq: Option<Seq>,
        each: impl FnMut(&ScannedGroup<'_>) -> Result<()>,
    ) -> Result<ScanEnd> {
        let s = self.get(id).ok_or(Error::Missing {
            seq: next_seq.unwrap_or(Seq(0)),
        })?;
        let len = s.file.len().map_err(|e| Error::Io {
            context: format!("reading the size of log segment {id}"),
            source: e,
        })?;
        let until = match (s.header.kind, next_seq) {
            (SegmentKind::Live, Some(_)) => self.next_live(id).map(|(_, n)| n.header.first_seq),
            _ => None,
        };
        segment::scan(&*s.file, id, from, len, next_seq, until, each)
    }

    /// Cuts segment `id` at `at` (a torn tail found by a scan): what follows becomes zeros
    /// again, up to the space it had, and that is made durable.
    pub(crate) fn cut(&self, id: u32, at: u64) -> Result<()> {
        let s = self.get(id).ok_or(Error::Missing { seq: Seq(0) })?;
        let io = |e| Error::Io {
            context: format!("cutting the torn tail of log segment {id}"),
            source: e,
        };
        let had = s.file.len().map_err(io)?;
        s.file.set_len(at).map_err(io)?;
        // Space back where it can be had: a segment that cannot have it is just shorter, and
        // the writer's next group rolls to a new one.
        let _ = s.file.allocate(had);
        s.file.sync_data().map_err(io)
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{n} bytes")
    }
}

/// Where a group went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) segment: u32,
    /// The group's first byte and the end of its bytes.
    pub(crate) at: u64,
    pub(crate) end: u64,
}

/// The commit thread's end of the log: the active (newest live) segment and where its data
/// ends.
pub(crate) struct SegmentWriter {
    log: Arc<SegmentLog>,
    id: u32,
    file: Arc<dyn StorageFile>,
    /// Where the next group goes. Invariant: everything before it in the active segment is
    /// whole groups.
    end: u64,
    /// The space the active segment has.
    capacity: u64,
    segment_bytes: u64,
    reserve_bytes: u64,
    /// The rules version of the active segment: a build of other rules starts a new one.
    rules: u32,
    /// The format of the active segment: a segment of an older format is read, never
    /// written to (a build that knows only that format must not meet a newer record in it).
    format: u32,
    /// The run of the writer its groups are marked with ([`GroupHead::incarnation`]):
    /// above every run before it, and raised at every rewind.
    incarnation: u32,
    buf: Vec<u8>,
}

impl SegmentWriter {
    /// A writer appending to live segment `id` after its data, which ends at `end`, as run
    /// `incarnation` of the writer.
    pub(crate) fn resume(
        log: Arc<SegmentLog>,
        id: u32,
        end: u64,
        segment_bytes: u64,
        reserve_bytes: u64,
        incarnation: u32,
    ) -> Result<SegmentWriter> {
        let s = log.get(id).ok_or(Error::Missing { seq: Seq(0) })?;
        let capacity = s.file.len().map_err(|e| Error::Io {
            context: format!("reading the size of log segment {id}"),
            source: e,
        })?;
        Ok(SegmentWriter {
            log,
            id,
            rules: s.header.rules,
            format: s.header.format,
            file: s.file,
            end,
            capacity,
            segment_bytes: segment_bytes.clamp(SEGMENT_HEADER_LEN * 2, MAX_SEGMENT_BYTES),
            reserve_bytes,
            incarnation,
            buf: Vec::new(),
        })
    }

    /// The active segment's file (what the sync thread `fdatasync`s) and id.
    pub(crate) fn active(&self) -> (u32, Arc<dyn StorageFile>) {
        (self.id, self.file.clone())
    }

    /// Bytes the active segment has left for groups.
    pub(crate) fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.end)
    }

    /// True if `group` fits after the active segment's data.
    pub(crate) fn fits(&self, group: &GroupBuilder) -> bool {
        self.end + group.byte_len() <= self.capacity
            && self.rules == RULES_VERSION
            && self.format == FORMAT_VERSION
    }

    /// Starts a new segment for records from `first_seq` on, with room for at least
    /// `at_least` bytes of groups. The caller has made everything written so far durable:
    /// a newer segment exists only then. The old one is cut to its data (an empty one is
    /// removed). On failure nothing changed.
    pub(crate) fn roll(&mut self, first_seq: Seq, now: Timestamp, at_least: u64) -> Result<()> {
        let id = self.log.new_id();
        let header = SegmentHeader {
            format: FORMAT_VERSION,
            rules: RULES_VERSION,
            id,
            kind: SegmentKind::Live,
            first_seq,
            created: now,
        };
        let want = SEGMENT_HEADER_LEN + align(at_least);
        if want > MAX_SEGMENT_BYTES {
            return Err(Error::Rejected(format!(
                "a group of {at_least} bytes is larger than a log segment can be"
            )));
        }
        let capacity = self.segment_bytes.max(want);
        let segment = self.log.create(header, capacity, self.reserve_bytes)?;
        if self.end == SEGMENT_HEADER_LEN {
            // Nothing was ever written to it: the new one takes its place.
            self.log.remove(self.id)?;
            self.log.storage().sync_dir().map_err(|e| Error::Io {
                context: "syncing the segments directory".into(),
                source: e,
            })?;
        } else {
            // Its unused space goes back to the disk. (Not synced: if a crash forgets the
            // cut, zeros follow the data, which reads the same.)
            let _ = self.file.set_len(self.end);
        }
        self.id = id;
        self.rules = RULES_VERSION;
        self.format = FORMAT_VERSION;
        self.file = segment.file;
        self.end = SEGMENT_HEADER_LEN;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `group` after the active segment's data ([`fits`](Self::fits) must hold); its
    /// records' locations go to `locs`. Not durable until the file is synced. On failure
    /// nothing was appended: the next group goes to the same place (whatever bytes this one
    /// left there are overwritten or, past the next group's end, found torn by a scan).
    pub(crate) fn write(
        &mut self,
        group: &mut GroupBuilder,
        synced_through: Seq,
        locs: &mut Vec<(Seq, Loc)>,
    ) -> Result<Placed> {
        assert!(self.fits(group), "a group is written only where it fits");
        let at = self.end;
        let start = locs.len();
        group.finish(
            self.id,
            at,
            synced_through,
            self.incarnation,
            &mut self.buf,
            locs,
        );
        if let Err(e) = self.file.write_all_at(&self.buf, at) {
            locs.truncate(start);
            return Err(write_error(self.id, e));
        }
        self.end = at + self.buf.len() as u64;
        Ok(Placed {
            segment: self.id,
            at,
            end: self.end,
        })
    }

    /// Goes back to `to` (a group boundary of the active segment) after groups written from
    /// there could not be made durable: they will be written again or not at all. What they
    /// left is zeroed where the disk allows, so a scan never mistakes it for data.
    pub(crate) fn rewind(&mut self, to: (u32, u64)) {
        assert_eq!(to.0, self.id, "a failed sync never spans a roll");
        assert!(to.1 <= self.end, "rewinds go back");
        if to.1 < self.end {
            let _ = self.file.set_len(to.1);
            if self.file.allocate(self.capacity).is_err() {
                // No room to have the space back: the segment is what it is now, and the
                // next group that does not fit rolls (a group never half fits).
                self.capacity = self.file.len().unwrap_or(to.1).max(to.1);
            }
        }
        self.end = to.1;
        // What was written from `to` on may still be on disk (the cut is not synced): it
        // is of this run, and what follows from now is of the next, which a scan tells apart.
        self.incarnation += 1;
    }
}

fn write_error(id: u32, e: io::Error) -> Error {
    if is_disk_full(&e) {
        Error::DiskFull {
            context: format!("writing log segment {id}: {e}"),
        }
    } else {
        Error::Io {
            context: format!("writing log segment {id}"),
            source: e,
        }
    }
}

pub(crate) fn sync_error(id: u32, e: io::Error) -> Error {
    if is_disk_full(&e) {
        Error::DiskFull {
            context: format!("fdatasync of log segment {id}: {e}"),
        }
    } else {
        Error::Io {
            context: format!("fdatasync of log segment {id}"),
            source: e,
        }
    }
}

/// Reads groups one after another from a place in the log, across live segments: the
/// records block of each, its bodies skipped. Reads ahead in windows, so that a log of
/// small groups costs one read per window, not per group.
pub(crate) struct GroupCursor {
    log: Arc<SegmentLog>,
    segment: u32,
    file: Arc<dyn StorageFile>,
    /// The segment's size when it was entered.
    seg_len: u64,
    /// The next group's offset.
    at: u64,
    /// The seq the next group must start with (`None`: the first group's, whatever it is).
    next_seq: Option<Seq>,
    /// Bytes of the segment from `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
    /// The group just returned: its head and where its records are in `buf`.
    current: Option<(GroupHead, usize)>,
    /// The first seq of the next live segment, once known.
    successor: Option<Seq>,
}

fn removed_while_read(seq: Seq) -> Error {
    Error::Missing { seq }
}

/// The window a [`GroupCursor`] reads at once.
const WINDOW: usize = 256 * 1024;

impl GroupCursor {
    /// A cursor at the group at `at` of live segment `segment`, which starts with
    /// `first_seq` (or whatever the group there starts with, for `None`).
    pub(crate) fn new(
        log: Arc<SegmentLog>,
        segment: u32,
        at: u64,
        first_seq: Option<Seq>,
    ) -> Result<GroupCursor> {
        let s = log.get(segment).ok_or(Error::Missing {
            seq: first_seq.unwrap_or(Seq(0)),
        })?;
        let seg_len = s.file.len().map_err(|e| Error::Io {
            context: format!("reading the size of log segment {segment}"),
            source: e,
        })?;
        Ok(GroupCursor {
            log,
            segment,
            file: s.file,
            seg_len,
            at,
            next_seq: first_seq,
            buf: Vec::new(),
            buf_at: 0,
            current: None,
            successor: None,
        })
    }

    /// The next group (its head), or `None` at the end of the log's data. Its records block
    /// is [`records`](Self::records).
    pub(crate) fn next_group(&mut self) -> Result<Option<GroupHead>> {
        self.current = None;
        loop {
            let successor = self.successor_first();
            if let Some(next) = self.next_seq.filter(|n| Some(*n) == successor) {
                // A closed segment's data ends where the next one's begins, whatever bytes
                // follow it (see `segment::scan`). Retention may have removed that one
                // meanwhile (it removes the oldest segments, this one too): an error, never
                // a shorter log.
                let id = match self.log.next_live(self.segment) {
                    Some((id, s)) if s.header.first_seq == next => id,
                    _ => return Err(removed_while_read(next)),
                };
                *self = GroupCursor::new(self.log.clone(), id, SEGMENT_HEADER_LEN, Some(next))?;
                continue;
            }
            let head = if self.at + GROUP_HEAD_LEN as u64 <= self.seg_len {
                self.fill(self.at, GROUP_HEAD_LEN)?;
                let from = (self.at - self.buf_at) as usize;
                GroupHead::decode(&self.buf[from..from + GROUP_HEAD_LEN]).ok()
            } else {
                None
            };
            let Some(head) = head else {
                // The segment's data ends here: the next live segment goes on, if any.
                let Some((id, s)) = self.log.next_live(self.segment) else {
                    if self.log.get(self.segment).is_none() {
                        return Err(removed_while_read(self.next_seq.unwrap_or(Seq(0))));
                    }
                    return Ok(None);
                };
                let expected = self.next_seq.unwrap_or(s.header.first_seq);
                if s.header.first_seq != expected {
                    return Err(Error::Corrupt {
                        seq: expected,
                        reason: format!(
                            "log segment {} ends before it, and segment {id} starts at {}",
                            self.segment, s.header.first_seq
                        ),
                    });
                }
                *self = GroupCursor::new(self.log.clone(), id, SEGMENT_HEADER_LEN, Some(expected))?;
                continue;
            };
            if self.next_seq.is_some_and(|s| head.first != s) || !head.is_dense() {
                // Bytes past the durable data (a group being written, or what a failed write
                // left): readers stop at the tip before reaching them.
                return Ok(None);
            }
            let records = GROUP_HEAD_LEN + head.records_len as usize;
            self.fill(self.at, records)?;
            let from = (self.at - self.buf_at) as usize + GROUP_HEAD_LEN;
            self.current = Some((head, from));
            self.at += head.total_len();
            self.next_seq = Some(Seq(head.last.0 + 1));
            return Ok(Some(head));
        }
    }

    /// The first seq of the live segment after this one, once there is one (it changes
    /// only when retention removes it, and this one with it).
    fn successor_first(&mut self) -> Option<Seq> {
        if self.successor.is_none() {
            self.successor = self
                .log
                .next_live(self.segment)
                .map(|(_, s)| s.header.first_seq);
        }
        self.successor
    }

    /// The records block of the group [`next_group`](Self::next_group) returned last, and
    /// where that group starts.
    pub(crate) fn records(&self) -> (&[u8], u32, u64) {
        let (head, from) = self.current.as_ref().expect("a group was returned");
        let group_at = self.at - head.total_len();
        (
            &self.buf[*from..*from + head.records_len as usize],
            self.segment,
            group_at,
        )
    }

    /// Makes `buf` hold `len` bytes from `at`, reading a window if it does not.
    fn fill(&mut self, at: u64, len: usize) -> Result<()> {
        if at >= self.buf_at && at + len as u64 <= self.buf_at + self.buf.len() as u64 {
            return Ok(());
        }
        let want = len.max(WINDOW).min((self.seg_len - at) as usize).max(len);
        self.buf.resize(want, 0);
        self.buf_at = at;
        let result = self.file.read_exact_at(&mut self.buf, at);
        if let Err(e) = result {
            self.buf.clear();
            return Err(Error::Corrupt {
                seq: self.next_seq.unwrap_or(Seq(0)),
                reason: format!("log segment {} cannot be read at {at}: {e}", self.segment),
            });
        }
        Ok(())
    }
}
