//! The log's bytes: a segment file's header, the groups appended to it, the record and body
//! entries inside a group, and the scan that finds where a segment's good data ends.
//!
//! ```text
//! segment  = header (64 bytes) group* zeros*       (preallocated: the unwritten rest is zeros)
//! header   = "CBLOGSEG" format:u32 rules:u32 id:u32 kind:u32 first_seq:u64 created_ms:u64
//!            reserved[20] crc:u32                  (crc of the 60 bytes before it)
//! group    = head records bodies padding           (padded to 8 bytes)
//! head     = "CBGR" crc:u32 first:u64 last:u64 count:u32 records_len:u32 bodies_len:u32
//!            incarnation:u32 synced_through:u64    (48 bytes; crc of bytes 8..48)
//! records  = count × (frame_len:u32 body_len:u32 frame)
//! frame    = crc:u32 bincode(Record)               (the crc a checkpoint's anchor names)
//! bodies   = one body entry per change, in record order, each `body_len` bytes:
//!            crc:u32 seq:u64 payload               (crc of seq and payload)
//! payload  = fields:varint (name_len:varint value_len:varint)* text
//! ```
//! All integers little-endian. A group is one `write` of the commit thread and holds the
//! records of one group commit: the records together, then their bodies, so that a reader
//! that wants records (the fold, replay, an index rebuild) reads a group's records and skips
//! its bodies in one seek. Every record and every body has its own checksum and names its
//! seq, so damage is reported by seq and a stale index can never serve another record.
//!
//! **Where the data ends.** A segment is preallocated, so after its last group come zeros.
//! After a power loss the last groups may be torn (partly written) or missing while a later
//! one survives, because unsynced pages reach the disk in any order. Each group's head
//! carries `synced_through`, the last seq that was durable when the group was written; the
//! scan ([`scan`]) uses it to tell the two cases apart: a bad group followed by a valid
//! later one that says the bad one was already durable is **damage** (acknowledged data
//! lost: reported by seq, never skipped); otherwise everything from the bad group on was
//! never acknowledged, and is a **torn tail**, cut by the caller.

use std::io;

use cb_core::{Seq, Snapshot, SnapshotView, Timestamp};

use crate::error::{Error, Result};
use crate::storage::StorageFile;

/// The on-disk format of the log this build writes. Format 3 and earlier kept records in
/// sled; they are migrated once (`migrate.rs`). Format 5 added the `closed` attempt outcome
/// ([`cb_core::Outcome::Closed`]): a format-4 segment holds a subset of what format 5 can,
/// so it is read as it is ([`OLDEST_FORMAT_VERSION`]), and new records go to a new
/// format-5 segment, which a build that knows only format 4 refuses by its header rather
/// than misreading a record.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest segment format this build reads in place.
pub const OLDEST_FORMAT_VERSION: u32 = 4;
/// The delivery rules this build decides new records under ([`cb_core::RULES_VERSION`]),
/// recorded in every segment it starts, so that an older log replays under the rules it was
/// written with (`Store::rules`). Version 2: a deadline a record sets at or before its own
/// time fires in that record's step.
pub const RULES_VERSION: u32 = cb_core::RULES_VERSION;

const SEGMENT_MAGIC: [u8; 8] = *b"CBLOGSEG";
/// Bytes before a segment's first group.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 64;
const GROUP_MAGIC: [u8; 4] = *b"CBGR";
/// Bytes of a group's head.
pub(crate) const GROUP_HEAD_LEN: usize = 48;
/// Bytes before a record's frame in the records block.
const RECORD_ENTRY_HEAD: usize = 8;
/// Bytes before a body's payload in its entry.
const BODY_ENTRY_HEAD: usize = 12;
/// Groups start at multiples of this, so the scan looks for a lost group's successor only
/// at aligned offsets.
pub(crate) const GROUP_ALIGN: u64 = 8;
/// The largest segment: offsets inside one are `u32`.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

/// What a segment holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SegmentKind {
    /// Records in a dense run from `first_seq`, in the order they were appended.
    Live,
    /// The latest change of every file kept when older segments were removed (retention):
    /// increasing seqs, with gaps, all at or before the log's base.
    Kept,
}

/// A segment's header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct SegmentHeader {
    pub(crate) format: u32,
    pub(crate) rules: u32,
    pub(crate) id: u32,
    pub(crate) kind: SegmentKind,
    /// Live: the seq of its first record. Kept: the base it was written for.
    pub(crate) first_seq: Seq,
    pub(crate) created: Timestamp,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.format.to_le_bytes());
        b[12..16].copy_from_slice(&self.rules.to_le_bytes());
        b[16..20].copy_from_slice(&self.id.to_le_bytes());
        let kind: u32 = match self.kind {
            SegmentKind::Live => 1,
            SegmentKind::Kept => 2,
        };
        b[20..24].copy_from_slice(&kind.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.created.0.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header; `Err` says why it is not one this build reads.
    pub(crate) fn decode(b: &[u8]) -> std::result::Result<SegmentHeader, HeaderError> {
        let b: &[u8; SEGMENT_HEADER_LEN as usize] = b
            .get(..SEGMENT_HEADER_LEN as usize)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                HeaderError::Damaged(format!("{} bytes, shorter than a segment header", b.len()))
            })?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Damaged("no CBLOGSEG header".into()));
        }
        if crc32fast::hash(&b[..60]) != u32_at(b, 60) {
            return Err(HeaderError::Damaged("its header fails its checksum".into()));
        }
        let format = u32_at(b, 8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&format) {
            return Err(HeaderError::Format(format));
        }
        let rules = u32_at(b, 12);
        if rules == 0 || rules > RULES_VERSION {
            return Err(HeaderError::Rules(rules));
        }
        let kind = match u32_at(b, 20) {
            1 => SegmentKind::Live,
            2 => SegmentKind::Kept,
            other => {
                return Err(HeaderError::Damaged(format!(
                    "unknown segment kind {other}"
                )))
            }
        };
        Ok(SegmentHeader {
            format,
            rules,
            id: u32_at(b, 16),
            kind,
            first_seq: Seq(u64_at(b, 24)),
            created: Timestamp(u64_at(b, 32)),
        })
    }
}

/// Why a segment header cannot be read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum HeaderError {
    /// It is not a whole header.
    Damaged(String),
    /// It is of another log format.
    Format(u32),
    /// Its records were written under delivery rules this build does not know.
    Rules(u32),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A group's head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct GroupHead {
    pub(crate) first: Seq,
    pub(crate) last: Seq,
    pub(crate) count: u32,
    pub(crate) records_len: u32,
    pub(crate) bodies_len: u32,
    /// The last seq durable when the group was written (see the module docs).
    pub(crate) synced_through: Seq,
    /// Which run of the writer wrote it: raised at every open and every rewind, so the
    /// leftovers of groups given up (a failed sync's, a crashed run's) are never taken for
    /// data after newer groups (the scan stops at a group older than the one before it).
    pub(crate) incarnation: u32,
}

impl GroupHead {
    fn encode(&self) -> [u8; GROUP_HEAD_LEN] {
        let mut b = [0u8; GROUP_HEAD_LEN];
        b[0..4].copy_from_slice(&GROUP_MAGIC);
        b[8..16].copy_from_slice(&self.first.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.last.0.to_le_bytes());
        b[24..28].copy_from_slice(&self.count.to_le_bytes());
        b[28..32].copy_from_slice(&self.records_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.bodies_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.incarnation.to_le_bytes());
        b[40..48].copy_from_slice(&self.synced_through.0.to_le_bytes());
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a head, or says why the bytes are not one. Checks only the head itself.
    pub(crate) fn decode(b: &[u8]) -> std::result::Result<GroupHead, NotAGroup> {
        let other = |why: String| NotAGroup::Other(why);
        let b = b
            .get(..GROUP_HEAD_LEN)
            .ok_or_else(|| other("shorter than a group head".into()))?;
        if b[0..4] != GROUP_MAGIC {
            return Err(if b.iter().all(|x| *x == 0) {
                NotAGroup::Zeros
            } else {
                other("no group magic".into())
            });
        }
        if crc32fast::hash(&b[8..]) != u32_at(b, 4) {
            return Err(other("group head fails its checksum".into()));
        }
        let head = GroupHead {
            first: Seq(u64_at(b, 8)),
            last: Seq(u64_at(b, 16)),
            count: u32_at(b, 24),
            records_len: u32_at(b, 28),
            bodies_len: u32_at(b, 32),
            incarnation: u32_at(b, 36),
            synced_through: Seq(u64_at(b, 40)),
        };
        if head.count == 0 || head.first.0 == 0 || head.last < head.first {
            return Err(other(format!(
                "group head claims {} records from {} to {}",
                head.count, head.first, head.last
            )));
        }
        if u64::from(head.count) > head.last.0 - head.first.0 + 1 {
            return Err(other(format!(
                "group head claims {} records between {} and {}",
                head.count, head.first, head.last
            )));
        }
        Ok(head)
    }

    /// Bytes from the group's start to the next group's.
    pub(crate) fn total_len(&self) -> u64 {
        align(GROUP_HEAD_LEN as u64 + u64::from(self.records_len) + u64::from(self.bodies_len))
    }

    /// True if the seqs are consecutive (every live group).
    pub(crate) fn is_dense(&self) -> bool {
        self.last.0 - self.first.0 + 1 == u64::from(self.count)
    }
}

/// Why bytes are not a group head.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum NotAGroup {
    /// Only zeros: where the data of a preallocated segment ends.
    Zeros,
    /// Anything else, and what.
    Other(String),
}

impl std::fmt::Display for NotAGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAGroup::Zeros => f.write_str("zeros"),
            NotAGroup::Other(why) => f.write_str(why),
        }
    }
}

pub(crate) fn align(n: u64) -> u64 {
    n.div_ceil(GROUP_ALIGN) * GROUP_ALIGN
}

/// Where one record (and its body) lies: enough to read either with one positioned read.
/// Offsets are inside the segment numbered `segment`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Loc {
    pub(crate) segment: u32,
    /// The group's start.
    pub(crate) group: u32,
    /// The record's frame.
    pub(crate) record: u32,
    pub(crate) record_len: u32,
    /// The body entry (0 and 0 for a record without a body).
    pub(crate) body: u32,
    pub(crate) body_len: u32,
}

impl Loc {
    pub(crate) const BYTES: usize = 24;

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for v in [
            self.segment,
            self.group,
            self.record,
            self.record_len,
            self.body,
            self.body_len,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub(crate) fn decode(b: &[u8]) -> Loc {
        Loc {
            segment: u32_at(b, 0),
            group: u32_at(b, 4),
            record: u32_at(b, 8),
            record_len: u32_at(b, 12),
            body: u32_at(b, 16),
            body_len: u32_at(b, 20),
        }
    }
}

/// A group being built by the commit thread: entries go in as the group's records are
/// stamped, and [`finish`](Self::finish) lays them out as one contiguous write.
#[derive(Default)]
pub(crate) struct GroupBuilder {
    records: Vec<u8>,
    bodies: Vec<u8>,
    /// Per record: its seq, where its entry starts in `records`, its frame length, and where
    /// its body entry starts in `bodies` with its length (0 if none).
    entries: Vec<(Seq, u32, u32, u32, u32)>,
}

impl GroupBuilder {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The seq of the group's first record.
    pub(crate) fn first_seq(&self) -> Option<Seq> {
        self.entries.first().map(|e| e.0)
    }

    /// Bytes the group will take.
    pub(crate) fn byte_len(&self) -> u64 {
        align(GROUP_HEAD_LEN as u64 + self.records.len() as u64 + self.bodies.len() as u64)
    }

    /// Adds record `seq`, framed, with its body payload if it is a change.
    pub(crate) fn push(&mut self, seq: Seq, frame: &[u8], body: Option<&[u8]>) {
        assert!(
            self.entries.last().is_none_or(|e| e.0 < seq),
            "records of a group are in increasing order"
        );
        let (body_at, body_len) = match body {
            Some(payload) => {
                let at = self.bodies.len();
                let mut crc = crc32fast::Hasher::new();
                crc.update(&seq.0.to_le_bytes());
                crc.update(payload);
                self.bodies.extend_from_slice(&crc.finalize().to_le_bytes());
                self.bodies.extend_from_slice(&seq.0.to_le_bytes());
                self.bodies.extend_from_slice(payload);
                (at, BODY_ENTRY_HEAD + payload.len())
            }
            None => (0, 0),
        };
        let at = self.records.len();
        self.records
            .extend_from_slice(&len_u32(frame.len()).to_le_bytes());
        self.records
            .extend_from_slice(&len_u32(body_len).to_le_bytes());
        self.records.extend_from_slice(frame);
        self.entries.push((
            seq,
            len_u32(at),
            len_u32(frame.len()),
            len_u32(body_at),
            len_u32(body_len),
        ));
    }

    /// Lays the group out at `offset` of segment `segment`: its bytes (into `out`, replacing
    /// them) and each record's location, in order. Empties the builder for reuse.
    pub(crate) fn finish(
        &mut self,
        segment: u32,
        offset: u64,
        synced_through: Seq,
        incarnation: u32,
        out: &mut Vec<u8>,
        locs: &mut Vec<(Seq, Loc)>,
    ) {
        let first = self.entries.first().expect("a group has records").0;
        let last = self.entries.last().expect("a group has records").0;
        let head = GroupHead {
            first,
            last,
            count: len_u32(self.entries.len()),
            records_len: len_u32(self.records.len()),
            bodies_len: len_u32(self.bodies.len()),
            synced_through,
            incarnation,
        };
        let total = head.total_len();
        assert!(
            offset + total <= MAX_SEGMENT_BYTES,
            "a group never passes a segment's largest size"
        );
        out.clear();
        out.reserve(total as usize);
        out.extend_from_slice(&head.encode());
        out.extend_from_slice(&self.records);
        out.extend_from_slice(&self.bodies);
        out.resize(total as usize, 0);
        let group = offset as u32;
        let records_at = offset as u32 + GROUP_HEAD_LEN as u32;
        let bodies_at = records_at + head.records_len;
        for &(seq, at, frame_len, body_at, body_len) in &self.entries {
            locs.push((
                seq,
                Loc {
                    segment,
                    group,
                    record: records_at + at + RECORD_ENTRY_HEAD as u32,
                    record_len: frame_len,
                    body: if body_len > 0 { bodies_at + body_at } else { 0 },
                    body_len,
                },
            ));
        }
        self.records.clear();
        self.bodies.clear();
        self.entries.clear();
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a group's parts are far below 4 GiB")
}

/// The record frame of the entry at `at` of a records block, and where the next entry
/// starts; `Err` says how the block is broken there.
pub(crate) fn frame_at(records: &[u8], at: usize) -> std::result::Result<(&[u8], usize), String> {
    let h = records
        .get(at..at + RECORD_ENTRY_HEAD)
        .ok_or_else(|| format!("the group's records end at byte {at}"))?;
    let frame_len = u32_at(h, 0) as usize;
    let frame_at = at + RECORD_ENTRY_HEAD;
    let frame = records
        .get(frame_at..frame_at + frame_len)
        .ok_or_else(|| format!("a record of {frame_len} bytes passes its group's end"))?;
    Ok((frame, frame_at + frame_len))
}

/// One record entry of a group, as read back.
pub(crate) struct RecordEntry<'a> {
    pub(crate) seq: Seq,
    pub(crate) frame: &'a [u8],
    pub(crate) loc: Loc,
}

/// The record entries of a group's records block, with their locations; checks each frame's
/// checksum and that its seq is the next one the head allows.
pub(crate) fn record_entries<'a>(
    head: &GroupHead,
    segment: u32,
    group_at: u64,
    records: &'a [u8],
) -> impl Iterator<Item = Result<RecordEntry<'a>>> + 'a {
    let head = *head;
    let records_at = group_at + GROUP_HEAD_LEN as u64;
    let bodies_at = records_at + u64::from(head.records_len);
    let mut at = 0usize;
    let mut body_at = 0u64;
    let mut left = head.count;
    let mut prev: Option<Seq> = None;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let next_seq = prev.map_or(head.first, |p| Seq(p.0 + 1));
        let fail = |reason: String| Error::Corrupt {
            seq: next_seq,
            reason,
        };
        let result = (|| {
            let h = records
                .get(at..at + RECORD_ENTRY_HEAD)
                .ok_or_else(|| fail(format!("the group's records end at byte {at}")))?;
            let frame_len = u32_at(h, 0) as usize;
            let body_len = u32_at(h, 4);
            let frame_at = at + RECORD_ENTRY_HEAD;
            let frame = records.get(frame_at..frame_at + frame_len).ok_or_else(|| {
                fail(format!(
                    "a record of {frame_len} bytes passes its group's end"
                ))
            })?;
            let seq = crate::codec::frame_seq(frame).map_err(&fail)?;
            if prev.is_some_and(|p| seq <= p) || seq < head.first || seq > head.last {
                return Err(fail(format!(
                    "record {seq} is out of order in the group of {}..={}",
                    head.first, head.last
                )));
            }
            if head.is_dense() && seq != next_seq {
                return Err(fail(format!(
                    "record {seq} stands where {next_seq} belongs"
                )));
            }
            let (body, len) = if body_len > 0 {
                let b = bodies_at + body_at;
                body_at += u64::from(body_len);
                if body_at > u64::from(head.bodies_len) {
                    return Err(Error::Corrupt {
                        seq,
                        reason: "its body passes its group's end".into(),
                    });
                }
                (b as u32, body_len)
            } else {
                (0, 0)
            };
            at = frame_at + frame_len;
            prev = Some(seq);
            Ok(RecordEntry {
                seq,
                frame,
                loc: Loc {
                    segment,
                    group: group_at as u32,
                    record: (records_at + frame_at as u64) as u32,
                    record_len: frame_len as u32,
                    body,
                    body_len: len,
                },
            })
        })();
        if result.is_err() {
            // Nothing after a broken entry can be located.
            left = 0;
        }
        Some(result)
    })
}

/// Checks a body entry read back and returns its payload.
pub(crate) fn body_payload(seq: Seq, entry: &[u8]) -> Result<&[u8]> {
    match checked_body(seq, entry) {
        Ok(payload) => Ok(payload),
        Err(BodyCheck::Damaged(e)) => Err(e),
        Err(BodyCheck::OtherChange(stored)) => Err(Error::Corrupt {
            seq,
            reason: format!("snapshot body: the body read is change {stored}'s"),
        }),
    }
}

/// Why a body entry read back is not change `seq`'s.
pub(crate) enum BodyCheck {
    /// It fails its checks.
    Damaged(Error),
    /// It is whole, but another change's: whoever said where to read it was wrong.
    OtherChange(Seq),
}

/// [`body_payload`], telling a damaged entry from another change's.
pub(crate) fn checked_body(seq: Seq, entry: &[u8]) -> std::result::Result<&[u8], BodyCheck> {
    let corrupt = |reason: String| {
        BodyCheck::Damaged(Error::Corrupt {
            seq,
            reason: format!("snapshot body: {reason}"),
        })
    };
    let (crc, rest) = entry
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(format!("{} bytes, shorter than a body entry", entry.len())))?;
    if rest.len() < 8 {
        return Err(corrupt(format!(
            "{} bytes, shorter than a body entry",
            entry.len()
        )));
    }
    let (want, got) = (u32::from_le_bytes(*crc), crc32fast::hash(rest));
    if want != got {
        return Err(corrupt(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x}) over {} bytes",
            rest.len()
        )));
    }
    let stored = Seq(u64_at(rest, 0));
    if stored != seq {
        return Err(BodyCheck::OtherChange(stored));
    }
    Ok(&rest[8..])
}

/// A snapshot as a body payload: the field count, each field's name and value lengths as
/// LEB128 varints, then the text. (Format 3 stored each field's two end offsets as `u32`s,
/// a quarter of a seed-shaped body.)
pub(crate) fn encode_body(snapshot: &Snapshot) -> Vec<u8> {
    let (text, ends) = snapshot.as_parts();
    let mut out = Vec::with_capacity(4 + ends.len() + text.len());
    put_varint(&mut out, (ends.len() / 2) as u64);
    let mut prev = 0u32;
    for end in ends {
        put_varint(&mut out, u64::from(end - prev));
        prev = *end;
    }
    out.extend_from_slice(text.as_bytes());
    out
}

/// Undoes [`encode_body`] without copying the text: the snapshot where `payload` holds it,
/// its offset table rebuilt into `ends` (which it replaces).
pub(crate) fn decode_body<'b>(
    seq: Seq,
    payload: &'b [u8],
    ends: &'b mut Vec<u32>,
) -> Result<SnapshotView<'b>> {
    let corrupt = |reason: String| Error::Corrupt {
        seq,
        reason: format!("snapshot body: {reason}"),
    };
    let mut at = 0;
    let fields = get_varint(payload, &mut at).ok_or_else(|| corrupt("no field count".into()))?;
    if fields > Snapshot::MAX_FIELDS as u64 {
        return Err(corrupt(format!("{fields} fields")));
    }
    ends.clear();
    let mut end = 0u64;
    for _ in 0..fields * 2 {
        let len = get_varint(payload, &mut at)
            .ok_or_else(|| corrupt("field lengths cut short".into()))?;
        end += len;
        if end > Snapshot::MAX_BYTES as u64 {
            return Err(corrupt("its fields pass the largest snapshot".into()));
        }
        ends.push(end as u32);
    }
    let text = &payload[at..];
    if text.len() as u64 != end {
        return Err(corrupt(format!(
            "the fields need {end} bytes of text, it has {}",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text).map_err(|e| corrupt(format!("text: {e}")))?;
    SnapshotView::from_stored_parts(text, ends).map_err(|e| corrupt(e.to_string()))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// How a segment's scan ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum ScanEnd {
    /// The data ends at `at`: zeros (or the file's end) follow the last group.
    Clean { at: u64 },
    /// The group at `at` is torn or missing and nothing after it was ever acknowledged: the
    /// caller cuts the segment there. `reason` says what was found.
    Torn { at: u64, reason: String },
}

/// One whole group found by [`scan`].
pub(crate) struct ScannedGroup<'a> {
    pub(crate) at: u64,
    pub(crate) head: GroupHead,
    /// The records block.
    pub(crate) records: &'a [u8],
}

/// Reads the groups of segment `file` (numbered `segment`) from `from` (a group boundary)
/// up to `len` bytes, calls `each` with every whole, checked group in order, and says where
/// the good data ends. `next_seq` is the seq the first group must start with when the
/// segment is live (dense), `None` for a kept segment.
///
/// A group is whole when its head, every record frame and every body entry pass their
/// checksums and its seqs continue the log. The first group that is not, at `at`, is a torn
/// tail ([`ScanEnd::Torn`]) unless a whole group further on continues the log and says the
/// bad one was durable when it was written (`synced_through`): then acknowledged data is
/// damaged, and the scan fails with [`Error::Corrupt`] naming the first seq lost.
///
/// `until`: the first seq of the next live segment, when this one is closed. Its data ends
/// where its seqs reach that one, whatever bytes follow: a failed write may have left some
/// past the last group, made durable by that group's sync, which the roll's cut (not
/// synced) does not remove for good.
pub(crate) fn scan(
    file: &dyn StorageFile,
    segment: u32,
    from: u64,
    len: u64,
    mut next_seq: Option<Seq>,
    until: Option<Seq>,
    mut each: impl FnMut(&ScannedGroup<'_>) -> Result<()>,
) -> Result<ScanEnd> {
    let io = |e: io::Error| Error::Io {
        context: format!("reading log segment {segment}"),
        source: e,
    };
    let mut at = from;
    let mut buf = Vec::new();
    let mut incarnation = 0;
    loop {
        if at + GROUP_HEAD_LEN as u64 > len || (next_seq.is_some() && next_seq == until) {
            return Ok(ScanEnd::Clean { at });
        }
        let checked =
            read_group(file, segment, at, len, next_seq, incarnation, &mut buf).map_err(io)?;
        match checked {
            Ok(head) => {
                let records = &buf[GROUP_HEAD_LEN..GROUP_HEAD_LEN + head.records_len as usize];
                each(&ScannedGroup { at, head, records })?;
                next_seq = next_seq.map(|_| Seq(head.last.0 + 1));
                incarnation = head.incarnation;
                at += head.total_len();
            }
            Err(NotAGroup::Zeros) => {
                // The clean end, unless a durable group follows a lost one (damage) — or
                // groups of a lost tail do, which must go like any torn tail: a log grown
                // back to one of them would take it for its own next group.
                return match later_group(file, segment, at, len, next_seq, incarnation)
                    .map_err(io)?
                {
                    Later::Durable(later) => Err(damage(next_seq, at, &later)),
                    Later::Lost(lost) => Ok(ScanEnd::Torn {
                        at,
                        reason: format!("zeros, then a group of a lost tail at {lost}"),
                    }),
                    Later::Nothing => Ok(ScanEnd::Clean { at }),
                };
            }
            Err(NotAGroup::Other(reason)) => {
                return match later_group(file, segment, at, len, next_seq, incarnation)
                    .map_err(io)?
                {
                    Later::Durable(later) => Err(damage(next_seq, at, &later)),
                    Later::Lost(_) | Later::Nothing => Ok(ScanEnd::Torn { at, reason }),
                };
            }
        }
    }
}

fn damage(next_seq: Option<Seq>, at: u64, later: &(u64, GroupHead)) -> Error {
    let (later_at, head) = later;
    Error::Corrupt {
        seq: next_seq.unwrap_or(Seq(0)),
        reason: format!(
            "the log's bytes from offset {at} are damaged: the group at {later_at} ({}..={}) \
             was written after they were durable",
            head.first, head.last
        ),
    }
}

/// Reads the group at `at` into `buf` and checks it whole, and not older than `incarnation`
/// (the writer's run of the group before it); the inner `Err` says why it is not a whole
/// group.
fn read_group(
    file: &dyn StorageFile,
    segment: u32,
    at: u64,
    len: u64,
    next_seq: Option<Seq>,
    incarnation: u32,
    buf: &mut Vec<u8>,
) -> io::Result<std::result::Result<GroupHead, NotAGroup>> {
    buf.resize(GROUP_HEAD_LEN, 0);
    file.read_exact_at(buf, at)?;
    let head = match GroupHead::decode(buf) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    if head.incarnation < incarnation {
        return Ok(Err(NotAGroup::Other(format!(
            "a group of {}..={} left by an earlier run of the writer",
            head.first, head.last
        ))));
    }
    if next_seq.is_some_and(|s| head.first != s) || (next_seq.is_some() && !head.is_dense()) {
        return Ok(Err(NotAGroup::Other(format!(
            "a group of {}..={} where {} was expected",
            head.first,
            head.last,
            next_seq.expect("checked")
        ))));
    }
    if at + head.total_len() > len {
        return Ok(Err(NotAGroup::Other(format!(
            "a group of {} bytes at {at} passes the segment's end ({len})",
            head.total_len()
        ))));
    }
    let body_end = GROUP_HEAD_LEN + head.records_len as usize + head.bodies_len as usize;
    buf.resize(body_end, 0);
    file.read_exact_at(&mut buf[GROUP_HEAD_LEN..], at + GROUP_HEAD_LEN as u64)?;
    let records = &buf[GROUP_HEAD_LEN..GROUP_HEAD_LEN + head.records_len as usize];
    let bodies_at = GROUP_HEAD_LEN + head.records_len as usize;
    for entry in record_entries(&head, segment, at, records) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Ok(Err(NotAGroup::Other(e.to_string()))),
        };
        if entry.loc.body_len > 0 {
            let from = bodies_at + (u64::from(entry.loc.body) - at - bodies_at as u64) as usize;
            let body = &buf[from..from + entry.loc.body_len as usize];
            if let Err(e) = body_payload(entry.seq, body) {
                return Ok(Err(NotAGroup::Other(e.to_string())));
            }
        }
    }
    Ok(Ok(head))
}

/// What follows a missing or bad group, as [`later_group`] finds it.
enum Later {
    /// A whole group that continues the log and was written when the bad one was durable:
    /// proof that the bytes at the bad one were acknowledged.
    Durable((u64, GroupHead)),
    /// Only group heads that prove nothing (at the first one's offset): what is left of a
    /// tail lost with the bad group.
    Lost(u64),
    Nothing,
}

/// The first whole group after the bad one at `bad` that continues the log (seqs from
/// `next_seq` on) and was written when `next_seq` was already durable; else whether any
/// group head follows. Looks at every aligned offset to the segment's end.
fn later_group(
    file: &dyn StorageFile,
    segment: u32,
    bad: u64,
    len: u64,
    next_seq: Option<Seq>,
    incarnation: u32,
) -> io::Result<Later> {
    // A kept segment is written whole and synced before it is used: no tail to tell apart.
    let Some(next_seq) = next_seq else {
        return Ok(Later::Nothing);
    };
    let mut lost = None;
    const WINDOW: u64 = 1 << 20;
    let mut window = vec![0u8; WINDOW as usize + GROUP_HEAD_LEN];
    let mut buf = Vec::new();
    let mut start = bad + GROUP_ALIGN;
    while start + GROUP_HEAD_LEN as u64 <= len {
        let n = (len - start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..n], start)?;
        let mut i = 0;
        while i + GROUP_HEAD_LEN <= n {
            if window[i..i + 4] == GROUP_MAGIC {
                if let Ok(head) = GroupHead::decode(&window[i..]) {
                    let at = start + i as u64;
                    if head.first >= next_seq && head.synced_through >= next_seq {
                        // Whole, or it proves nothing.
                        let whole =
                            read_group(file, segment, at, len, None, incarnation, &mut buf)?;
                        if whole.is_ok() {
                            return Ok(Later::Durable((at, head)));
                        }
                    }
                    lost = lost.or(Some(at));
                }
            }
            i += GROUP_ALIGN as usize;
        }
        start += WINDOW;
    }
    Ok(lost.map_or(Later::Nothing, Later::Lost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FsStorage, Storage};
    use cb_core::{Record, RecordKind};

    fn frame(seq: u64) -> Vec<u8> {
        crate::codec::encode_record(&Record {
            seq: Seq(seq),
            at: Timestamp(seq),
            kind: RecordKind::Ticked,
        })
    }

    fn group(
        seqs: std::ops::RangeInclusive<u64>,
        synced: u64,
        offset: u64,
    ) -> (Vec<u8>, Vec<(Seq, Loc)>) {
        group_of_run(seqs, synced, offset, 1)
    }

    fn group_of_run(
        seqs: std::ops::RangeInclusive<u64>,
        synced: u64,
        offset: u64,
        incarnation: u32,
    ) -> (Vec<u8>, Vec<(Seq, Loc)>) {
        let mut g = GroupBuilder::default();
        for s in seqs {
            let body = format!("body {s}");
            g.push(Seq(s), &frame(s), (s % 2 == 0).then_some(body.as_bytes()));
        }
        let (mut out, mut locs) = (Vec::new(), Vec::new());
        g.finish(1, offset, Seq(synced), incarnation, &mut out, &mut locs);
        (out, locs)
    }

    #[test]
    fn headers_round_trip_and_refuse_what_they_cannot_read() {
        let h = SegmentHeader {
            format: FORMAT_VERSION,
            rules: RULES_VERSION,
            id: 7,
            kind: SegmentKind::Live,
            first_seq: Seq(100),
            created: Timestamp(5),
        };
        assert_eq!(SegmentHeader::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[30] ^= 1;
        assert!(
            matches!(SegmentHeader::decode(&bad), Err(HeaderError::Damaged(why)) if why.contains("checksum"))
        );
        let newer = SegmentHeader {
            rules: RULES_VERSION + 1,
            ..h
        };
        assert_eq!(
            SegmentHeader::decode(&newer.encode()),
            Err(HeaderError::Rules(RULES_VERSION + 1))
        );
        let other = SegmentHeader { format: 9, ..h };
        assert_eq!(
            SegmentHeader::decode(&other.encode()),
            Err(HeaderError::Format(9))
        );
        let older = SegmentHeader {
            format: OLDEST_FORMAT_VERSION,
            ..h
        };
        assert_eq!(SegmentHeader::decode(&older.encode()).unwrap(), older);
        let oldest = SegmentHeader {
            format: OLDEST_FORMAT_VERSION - 1,
            ..h
        };
        assert_eq!(
            SegmentHeader::decode(&oldest.encode()),
            Err(HeaderError::Format(OLDEST_FORMAT_VERSION - 1))
        );
    }

    #[test]
    fn a_group_reads_back_with_its_locations() {
        let (bytes, locs) = group(5..=9, 4, 64);
        assert_eq!(bytes.len() as u64 % GROUP_ALIGN, 0);
        let head = GroupHead::decode(&bytes).unwrap();
        assert_eq!((head.first, head.last, head.count), (Seq(5), Seq(9), 5));
        let records = &bytes[GROUP_HEAD_LEN..GROUP_HEAD_LEN + head.records_len as usize];
        let read: Vec<_> = record_entries(&head, 1, 64, records)
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(read.len(), 5);
        for (entry, (seq, loc)) in read.iter().zip(&locs) {
            assert_eq!(entry.seq, *seq);
            assert_eq!(entry.loc, *loc);
            let at = (loc.record - 64) as usize;
            assert_eq!(&bytes[at..at + loc.record_len as usize], entry.frame);
            if seq.0 % 2 == 0 {
                let at = (loc.body - 64) as usize;
                let entry = &bytes[at..at + loc.body_len as usize];
                assert_eq!(
                    body_payload(*seq, entry).unwrap(),
                    format!("body {seq}").as_bytes()
                );
                assert!(
                    body_payload(Seq(seq.0 + 1), entry).is_err(),
                    "another seq's body"
                );
            } else {
                assert_eq!(loc.body_len, 0);
            }
        }
    }

    #[test]
    fn bodies_round_trip_compactly() {
        let snap =
            Snapshot::from_pairs([("id", "556114"), ("title", "Vidéo エ"), ("m", "")]).unwrap();
        let payload = encode_body(&snap);
        let (text, ends) = snap.as_parts();
        assert_eq!(payload.len(), 1 + ends.len() + text.len());
        let mut ends = Vec::new();
        assert_eq!(
            decode_body(Seq(1), &payload, &mut ends)
                .unwrap()
                .to_snapshot(),
            snap
        );
        let empty = encode_body(&Snapshot::default());
        assert_eq!(
            decode_body(Seq(1), &empty, &mut ends)
                .unwrap()
                .to_snapshot(),
            Snapshot::default()
        );
        for bad in [
            &b""[..],
            b"\x05",
            b"\x01\x02\x02ab",
            b"\x01\x80",
            b"\x01\x01\x01\xff\xfe",
        ] {
            assert!(
                matches!(
                    decode_body(Seq(3), bad, &mut ends),
                    Err(Error::Corrupt { seq: Seq(3), .. })
                ),
                "{bad:?}"
            );
        }
    }

    fn segment_with(
        groups: &[Vec<u8>],
        capacity: u64,
    ) -> (tempfile::TempDir, std::sync::Arc<dyn StorageFile>) {
        let tmp = tempfile::tempdir().unwrap();
        let s = FsStorage::open(tmp.path()).unwrap();
        let f = s.create("1.seg").unwrap();
        f.allocate(capacity).unwrap();
        let mut at = SEGMENT_HEADER_LEN;
        for g in groups {
            f.write_all_at(g, at).unwrap();
            at += g.len() as u64;
        }
        (tmp, f)
    }

    fn seqs_scanned(f: &dyn StorageFile, len: u64) -> (Vec<u64>, Result<ScanEnd>) {
        let mut seen = Vec::new();
        let end = scan(f, 1, SEGMENT_HEADER_LEN, len, Some(Seq(1)), None, |g| {
            seen.extend(g.head.first.0..=g.head.last.0);
            Ok(())
        });
        (seen, end)
    }

    #[test]
    fn the_scan_ends_cleanly_at_zeros() {
        let (g1, _) = group(1..=3, 0, SEGMENT_HEADER_LEN);
        let (g2, _) = group(4..=4, 3, SEGMENT_HEADER_LEN + g1.len() as u64);
        let end = SEGMENT_HEADER_LEN + (g1.len() + g2.len()) as u64;
        let (_t, f) = segment_with(&[g1, g2], 4096);
        let (seen, result) = seqs_scanned(&*f, 4096);
        assert_eq!(seen, [1, 2, 3, 4]);
        assert_eq!(result.unwrap(), ScanEnd::Clean { at: end });
    }

    #[test]
    fn a_torn_last_group_is_a_tail_and_a_lost_durable_one_is_damage() {
        let (g1, _) = group(1..=3, 0, SEGMENT_HEADER_LEN);
        let g2_at = SEGMENT_HEADER_LEN + g1.len() as u64;
        let (mut g2, locs) = group(4..=6, 3, g2_at);
        let g3_at = g2_at + g2.len() as u64;
        // Written while 4..=6 were not yet durable.
        let (g3, _) = group(7..=7, 3, g3_at);
        let last_body = locs.last().unwrap().1;
        let inside = (u64::from(last_body.body) - g2_at) as usize + last_body.body_len as usize - 1;
        g2[inside] ^= 0xff; // the last byte of the last body
        let (_t, f) = segment_with(&[g1.clone(), g2.clone(), g3], 4096);
        let (seen, result) = seqs_scanned(&*f, 4096);
        assert_eq!(seen, [1, 2, 3]);
        assert!(matches!(result.unwrap(), ScanEnd::Torn { at, .. } if at == g2_at));

        // The same damage, but a later group was written after 4..=6 were durable.
        let (g3, _) = group(7..=7, 6, g3_at);
        let (_t, f) = segment_with(&[g1, g2, g3], 4096);
        let (seen, result) = seqs_scanned(&*f, 4096);
        assert_eq!(seen, [1, 2, 3]);
        let err = result.unwrap_err();
        assert!(matches!(&err, Error::Corrupt { seq: Seq(4), .. }), "{err}");
    }

    #[test]
    fn a_closed_segment_ends_where_its_successor_begins() {
        // What a failed write of 4..=6 left after the group that was written in its place
        // (a shorter one, 3..=3) and synced with it: a whole head, a torn body.
        let (g1, _) = group(1..=2, 0, SEGMENT_HEADER_LEN);
        let g2_at = SEGMENT_HEADER_LEN + g1.len() as u64;
        let (g2, _) = group(3..=3, 2, g2_at);
        let (mut left, _) = group(4..=6, 3, g2_at + g2.len() as u64);
        let last = left.len() - 9;
        left[last] ^= 0xff;
        let (_t, f) = segment_with(&[g1, g2, left], 4096);
        let (_, open_end) = seqs_scanned(&*f, 4096);
        assert!(matches!(open_end.unwrap(), ScanEnd::Torn { .. }));
        let mut seen = Vec::new();
        let end = scan(
            &*f,
            1,
            SEGMENT_HEADER_LEN,
            4096,
            Some(Seq(1)),
            Some(Seq(4)),
            |g| {
                seen.extend(g.head.first.0..=g.head.last.0);
                Ok(())
            },
        );
        assert_eq!(seen, [1, 2, 3]);
        assert!(matches!(end.unwrap(), ScanEnd::Clean { .. }));
    }

    /// A run that lost its newest group at a crash, then wrote one of the same size: the
    /// group the crash kept after it (never acknowledged, of the older run) continues the
    /// seqs exactly, and is still not taken for data.
    #[test]
    fn a_group_of_an_earlier_run_after_newer_ones_ends_the_log() {
        let (g1, _) = group_of_run(1..=3, 0, SEGMENT_HEADER_LEN, 2);
        let at = SEGMENT_HEADER_LEN + g1.len() as u64;
        let (stale, _) = group_of_run(4..=4, 3, at, 1);
        let (_t, f) = segment_with(&[g1, stale], 4096);
        let (seen, result) = seqs_scanned(&*f, 4096);
        assert_eq!(seen, [1, 2, 3]);
        assert!(matches!(result.unwrap(), ScanEnd::Torn { at: a, .. } if a == at));
    }

    #[test]
    fn a_group_out_of_sequence_ends_the_log() {
        let (g1, _) = group(1..=3, 0, SEGMENT_HEADER_LEN);
        let (stale, _) = group(2..=2, 0, SEGMENT_HEADER_LEN + g1.len() as u64);
        let (_t, f) = segment_with(&[g1, stale], 4096);
        let (seen, result) = seqs_scanned(&*f, 4096);
        assert_eq!(seen, [1, 2, 3]);
        assert!(matches!(result.unwrap(), ScanEnd::Torn { .. }));
    }
}
