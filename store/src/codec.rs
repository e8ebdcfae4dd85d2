//! The on-disk form: sled keys, chunks of records and bodies, checksummed bincode frames.
//!
//! Everything but the snapshot bodies lives in one sled tree, so that one `apply_batch`
//! writes a group commit's records, body directories and index entries atomically; the
//! bodies themselves are in segment files, synced before the batch (`bodies.rs`). A one-byte prefix keeps each kind of key
//! in its own contiguous range, and sequence numbers are big-endian so that byte order is
//! log order:
//!
//! | key | value |
//! |---|---|
//! | `R` first_seq | a chunk of consecutive records from `first_seq` (no snapshot bodies) |
//! | `V` first_seq | where a run of snapshot bodies lies in the body segments (`bodies.rs`) |
//! | `B` first_seq | format 2 only, read but no longer written: a chunk of snapshot bodies |
//! | `X` segment_first_seq first_file_key | a part of a per-file index segment (`index.rs`) |
//! | `P` project `\0` seq | one [`IndexTag`] byte: the project's records |
//! | `M` name | store metadata: the format version, the index mark |
//!
//! Ids cannot contain `\0` (SPEC §3 grammars), so the separators are unambiguous.
//!
//! **Why chunks**: sled's cost is per key (several microseconds an insert), not per byte, so
//! a group commit writes its records as a few chunks of up to [`CHUNK_BUDGET`] bytes rather
//! than one key each; the budget keeps a chunk under sled's inline limit (a quarter of its
//! 512 KiB segment), so chunks never become separate blob files. Replay reads a chunk and
//! decodes its records in a row; one record is found with a range lookup of the chunk that
//! starts at or before it. Replay's fold never reads a body.
//!
//! A **frame** is the CRC-32 of the payload (4 bytes, little-endian) followed by the payload,
//! bincode 2 with its standard configuration. Every record and every body has its own
//! frame, so damage is named by sequence number. A records chunk is `count: u32` then, per
//! record, `len: u32` and the frame; a bodies chunk is `count: u32` then, per body,
//! `seq: u64`, `len: u32` and the frame (all little-endian). sled checksums its own log too;
//! ours also catches a value written by something other than this code.

use cb_core::{ProjectId, Record, RecordKind, Seq, Snapshot, SnapshotView};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::common_records::RecentIds;
use crate::error::{Error, Result};

/// The log format this build reads and writes. Bump it whenever a record's encoding
/// changes; a store with another number refuses to open rather than misread.
pub const FORMAT_VERSION: u32 = 3;
/// The previous format, opened and upgraded in place: it kept snapshot bodies in sled
/// (`B` chunks), which stay readable; format 3 writes them to segment files (`bodies.rs`).
pub(crate) const LEGACY_FORMAT_VERSION: u32 = 2;

pub(crate) const RECORDS: u8 = b'R';
pub(crate) const BODIES: u8 = b'B';
/// The most bytes of frames one chunk takes (an entry larger than this gets a chunk alone).
pub const CHUNK_BUDGET: usize = 96 * 1024;
pub(crate) const PROJECT_INDEX: u8 = b'P';
pub(crate) const FORMAT_KEY: &[u8] = b"Mformat";

/// What an index entry points at, so that a lookup (the file's latest version) need not
/// decode the record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum IndexTag {
    /// `ChangeAppended`.
    Change = b'c',
    /// `AttemptFinished`.
    Attempt = b'a',
    /// `RedeliverRequested`.
    Redeliver = b'r',
    /// `CallbackDisabled`.
    Disabled = b'd',
    /// `CallbackPut`.
    Put = b'p',
    /// `CallbackRemoved`.
    Removed = b'x',
}

impl IndexTag {
    pub(crate) fn from_byte(b: u8) -> Option<IndexTag> {
        [
            IndexTag::Change,
            IndexTag::Attempt,
            IndexTag::Redeliver,
            IndexTag::Disabled,
            IndexTag::Put,
            IndexTag::Removed,
        ]
        .into_iter()
        .find(|t| *t as u8 == b)
    }

    pub(crate) fn of(kind: &RecordKind) -> Option<IndexTag> {
        Some(match kind {
            RecordKind::ChangeAppended { .. } => IndexTag::Change,
            RecordKind::AttemptFinished(_) => IndexTag::Attempt,
            RecordKind::RedeliverRequested { .. } => IndexTag::Redeliver,
            RecordKind::CallbackDisabled { .. } => IndexTag::Disabled,
            RecordKind::CallbackPut { .. } => IndexTag::Put,
            RecordKind::CallbackRemoved { .. } => IndexTag::Removed,
            RecordKind::Ticked => return None,
        })
    }
}

pub(crate) fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(crate) fn seq_key(prefix: u8, seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

/// Reads the sequence number at the end of any key of this module.
pub(crate) fn seq_of_key(key: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

/// `P project \0`: the prefix of every index entry of one project.
pub(crate) fn project_prefix(project: &ProjectId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + project.as_str().len());
    k.push(PROJECT_INDEX);
    k.extend_from_slice(project.as_str().as_bytes());
    k.push(0);
    k
}

pub(crate) fn with_seq(mut prefix: Vec<u8>, seq: Seq) -> Vec<u8> {
    prefix.extend_from_slice(&seq.0.to_be_bytes());
    prefix
}

fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("writing to a Vec cannot fail and every core type is serde-encodable");
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a frame and decodes its value. Decoding borrows from `bytes`, so a snapshot's
/// names and values are copied once, into the snapshot, not first into strings of their own.
fn unframe<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> std::result::Result<T, String> {
    decode_payload(raw_unframe(bytes)?)
}

/// Decodes a frame's payload (its checksum already checked).
pub(crate) fn decode_payload<'de, T: Deserialize<'de>>(
    payload: &'de [u8],
) -> std::result::Result<T, String> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(payload, config())
        .map_err(|e| format!("undecodable: {e}"))?;
    if used != payload.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        ));
    }
    Ok(value)
}

pub(crate) fn encode_record(record: &Record) -> Vec<u8> {
    frame(record)
}

/// Decodes the record framed as `bytes` at position `seq`, and checks that it says it is
/// that record.
pub(crate) fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Record> {
    decode_record_with(seq, bytes, &mut RecentIds::default())
}

/// [`decode_record`] for a reader of many records, which keeps the ids it read last.
pub(crate) fn decode_record_with(seq: Seq, bytes: &[u8], ids: &mut RecentIds) -> Result<Record> {
    let payload = raw_unframe(bytes).map_err(|reason| Error::Corrupt { seq, reason })?;
    let record = match crate::common_records::decode(payload, ids) {
        Some(record) => record,
        None => decode_payload(payload).map_err(|reason| Error::Corrupt { seq, reason })?,
    };
    if record.seq != seq {
        return Err(Error::Corrupt {
            seq,
            reason: format!("stored as {seq} but says it is {}", record.seq),
        });
    }
    Ok(record)
}

/// Frames a snapshot as format 3 stores it in a body segment: `count: u32`, that many
/// offsets (`u32` each), then the text — the snapshot's own storage ([`Snapshot::as_parts`]),
/// so that reading it back is a copy and a structure check, not a parse.
pub(crate) fn encode_body(snapshot: &Snapshot) -> Vec<u8> {
    let (text, ends) = snapshot.as_parts();
    let mut out = Vec::with_capacity(8 + 4 * ends.len() + text.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(
        &u32::try_from(ends.len())
            .expect("bounded by MAX_FIELDS")
            .to_le_bytes(),
    );
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Undoes [`encode_body`], without copying: the snapshot where `bytes` holds it, its offset
/// table decoded into `ends` (which it replaces).
pub(crate) fn decode_body<'b>(
    seq: Seq,
    bytes: &'b [u8],
    ends: &'b mut Vec<u32>,
) -> Result<SnapshotView<'b>> {
    let corrupt = |reason: String| Error::Corrupt {
        seq,
        reason: format!("snapshot body: {reason}"),
    };
    let payload = raw_unframe(bytes).map_err(corrupt)?;
    let (count, rest) = payload
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("no offset count".into()))?;
    let count = u32::from_le_bytes(*count) as usize;
    let (table, text) = rest
        .split_at_checked(count.saturating_mul(4))
        .ok_or_else(|| corrupt(format!("{count} offsets do not fit {} bytes", rest.len())))?;
    ends.clear();
    ends.extend(
        table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
    );
    let text = std::str::from_utf8(text).map_err(|e| corrupt(format!("text: {e}")))?;
    SnapshotView::from_stored_parts(text, ends).map_err(|e| corrupt(e.to_string()))
}

/// Decodes a body format 2 stored in sled: the snapshot as a bincode map.
pub(crate) fn decode_legacy_body(seq: Seq, bytes: &[u8]) -> Result<Snapshot> {
    unframe(bytes).map_err(|reason| Error::Corrupt {
        seq,
        reason: format!("snapshot body: {reason}"),
    })
}

/// The CRC-32 stored at the head of a frame.
pub(crate) fn frame_crc(frame: &[u8]) -> Option<u32> {
    frame.first_chunk::<4>().map(|c| u32::from_le_bytes(*c))
}

/// Packs consecutive framed records, the first numbered `first`, into chunks of at most
/// [`CHUNK_BUDGET`] bytes; returns each chunk with its first seq.
pub(crate) fn records_chunks(first: Seq, frames: &[Vec<u8>]) -> Vec<(Seq, Vec<u8>)> {
    pack(frames, |f| f.as_slice(), |_, _| {})
        .into_iter()
        .map(|(start, chunk)| (Seq(first.0 + start as u64), chunk))
        .collect()
}

/// Frames a snapshot as format 2 did (a bincode map), for tests of reading such a log.
#[cfg(test)]
pub(crate) fn encode_legacy_body(snapshot: &Snapshot) -> Vec<u8> {
    frame(snapshot)
}

/// Packs framed bodies (with their changes' seqs, increasing) into chunks of at most
/// [`CHUNK_BUDGET`] bytes; returns each chunk with its first seq. Format 2 stored bodies
/// so; tests write such chunks to check they are still read.
#[cfg(test)]
pub(crate) fn bodies_chunks(bodies: &[(Seq, Vec<u8>)]) -> Vec<(Seq, Vec<u8>)> {
    pack(
        bodies,
        |(_, f)| f.as_slice(),
        |buf, (seq, _)| buf.extend_from_slice(&seq.0.to_le_bytes()),
    )
    .into_iter()
    .map(|(start, chunk)| (bodies[start].0, chunk))
    .collect()
}

/// Greedy packing shared by both chunk kinds: `count: u32`, then per item its `prefix`,
/// `len: u32` and frame. Returns each chunk with the index of its first item.
fn pack<T>(
    items: &[T],
    frame: impl Fn(&T) -> &[u8],
    prefix: impl Fn(&mut Vec<u8>, &T),
) -> Vec<(usize, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut size = 0;
        while end < items.len() && (end == start || size + frame(&items[end]).len() <= CHUNK_BUDGET)
        {
            size += frame(&items[end]).len();
            end += 1;
        }
        let mut buf = Vec::with_capacity(4 + size + 12 * (end - start));
        buf.extend_from_slice(&u32::try_from(end - start).expect("bounded").to_le_bytes());
        for item in &items[start..end] {
            let f = frame(item);
            prefix(&mut buf, item);
            buf.extend_from_slice(
                &u32::try_from(f.len())
                    .expect("frames < 4 GiB")
                    .to_le_bytes(),
            );
            buf.extend_from_slice(f);
        }
        chunks.push((start, buf));
        start = end;
    }
    chunks
}

/// A cursor over the frames of a records chunk, yielding `(seq, frame)`.
pub(crate) struct RecordFrames<'a> {
    bytes: &'a [u8],
    at: usize,
    next_seq: Seq,
    left: u32,
}

/// Where a [`RecordFrames`] stands, so that it can be resumed over the same bytes later
/// (a reader that keeps a chunk and hands out one record at a time).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FramesCursor {
    at: usize,
    next_seq: Seq,
    left: u32,
}

impl<'a> RecordFrames<'a> {
    /// Where this reader stands.
    pub(crate) fn cursor(&self) -> FramesCursor {
        FramesCursor {
            at: self.at,
            next_seq: self.next_seq,
            left: self.left,
        }
    }

    /// Goes on reading `bytes` (the chunk a [`FramesCursor`] came from) where `cursor` was.
    pub(crate) fn resume(bytes: &'a [u8], cursor: FramesCursor) -> RecordFrames<'a> {
        RecordFrames {
            bytes,
            at: cursor.at,
            next_seq: cursor.next_seq,
            left: cursor.left,
        }
    }

    /// Starts reading the chunk stored under `first`.
    pub(crate) fn new(first: Seq, bytes: &'a [u8]) -> Result<RecordFrames<'a>> {
        let count = bytes
            .first_chunk::<4>()
            .map(|c| u32::from_le_bytes(*c))
            .ok_or_else(|| Error::Corrupt {
                seq: first,
                reason: format!("records chunk of {} bytes has no header", bytes.len()),
            })?;
        Ok(RecordFrames {
            bytes,
            at: 4,
            next_seq: first,
            left: count,
        })
    }
}

impl<'a> Iterator for RecordFrames<'a> {
    type Item = Result<(Seq, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let seq = self.next_seq;
        let entry = take_entry(self.bytes, self.at, 0);
        match entry {
            Ok((frame, next)) => {
                self.at = next;
                self.left -= 1;
                self.next_seq = Seq(seq.0 + 1);
                Some(Ok((seq, frame)))
            }
            Err(reason) => {
                // The chunk's structure is broken: nothing after this point can be located.
                self.left = 0;
                Some(Err(Error::Corrupt { seq, reason }))
            }
        }
    }
}

/// Finds change `seq`'s body frame in the bodies chunk stored under `first`.
pub(crate) fn find_body(first: Seq, bytes: &[u8], seq: Seq) -> Result<Option<&[u8]>> {
    let corrupt = |reason| Error::Corrupt { seq, reason };
    let count = bytes
        .first_chunk::<4>()
        .map(|c| u32::from_le_bytes(*c))
        .ok_or_else(|| corrupt(format!("bodies chunk {first} has no header")))?;
    let mut at = 4;
    for _ in 0..count {
        let (frame, next) =
            take_entry(bytes, at, 8).map_err(|r| corrupt(format!("bodies chunk {first}: {r}")))?;
        let this = Seq(u64::from_le_bytes(
            bytes[at..at + 8].try_into().expect("checked by take_entry"),
        ));
        if this == seq {
            return Ok(Some(frame));
        }
        if this > seq {
            break;
        }
        at = next;
    }
    Ok(None)
}

/// The version of the last body in a bodies chunk (`first` if it is empty).
pub(crate) fn last_body(first: Seq, bytes: &[u8]) -> Result<Seq> {
    let corrupt = |reason| Error::Corrupt { seq: first, reason };
    let count = bytes
        .first_chunk::<4>()
        .map(|c| u32::from_le_bytes(*c))
        .ok_or_else(|| corrupt(format!("bodies chunk {first} has no header")))?;
    let mut at = 4;
    let mut last = first;
    for _ in 0..count {
        let (_, next) =
            take_entry(bytes, at, 8).map_err(|r| corrupt(format!("bodies chunk {first}: {r}")))?;
        last = Seq(u64::from_le_bytes(
            bytes[at..at + 8].try_into().expect("checked by take_entry"),
        ));
        at = next;
    }
    Ok(last)
}

/// Reads one entry at `at`: `skip` bytes (a seq), a `u32` length, then that many bytes.
fn take_entry(bytes: &[u8], at: usize, skip: usize) -> std::result::Result<(&[u8], usize), String> {
    let len_at = at + skip;
    let len = bytes
        .get(len_at..len_at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| format!("chunk truncated at byte {at} of {}", bytes.len()))?;
    let start = len_at + 4;
    let frame = bytes.get(start..start + len).ok_or_else(|| {
        format!(
            "chunk truncated: an entry of {len} bytes at byte {start}, the chunk has {}",
            bytes.len()
        )
    })?;
    Ok((frame, start + len))
}

/// Frames bytes that are not bincode (the index's own layout).
pub(crate) fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a [`raw_frame`] and returns its payload.
pub(crate) fn raw_unframe(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    let (crc, payload) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("{} bytes, shorter than a frame header", bytes.len()))?;
    let (want, got) = (u32::from_le_bytes(*crc), crc32fast::hash(payload));
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x}) over {} bytes",
            payload.len()
        ));
    }
    Ok(payload)
}

/// Frames any serde value (checkpoints use the same frame as records).
pub(crate) fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    frame(value)
}

/// Undoes [`encode_value`].
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    unframe(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cb_core::Timestamp;

    fn tick(seq: u64) -> Record {
        Record {
            seq: Seq(seq),
            at: Timestamp(1),
            kind: RecordKind::Ticked,
        }
    }

    #[test]
    fn keys_sort_in_log_order() {
        let a = seq_key(RECORDS, Seq(255));
        let b = seq_key(RECORDS, Seq(256));
        assert!(a < b);
        assert_eq!(seq_of_key(&b), Some(Seq(256)));
        let k = with_seq(project_prefix(&ProjectId::new("p").unwrap()), Seq(7));
        assert_eq!(&k[..3], b"Pp\0");
        assert_eq!(seq_of_key(&k), Some(Seq(7)));
    }

    #[test]
    fn chunks_split_at_the_budget_and_read_back_in_order() {
        let frames: Vec<Vec<u8>> = (10..110).map(|s| encode_record(&tick(s))).collect();
        let per = frames[0].len() + 4;
        let chunks = records_chunks(Seq(10), &frames);
        assert_eq!(chunks.len(), 1, "{per} bytes a record fit one chunk");
        let mut seqs = Vec::new();
        for (first, bytes) in &chunks {
            for entry in RecordFrames::new(*first, bytes).unwrap() {
                let (seq, frame) = entry.unwrap();
                assert_eq!(decode_record(seq, frame).unwrap(), tick(seq.0));
                seqs.push(seq.0);
            }
        }
        assert_eq!(seqs, (10..110).collect::<Vec<_>>());

        let big = vec![vec![0u8; CHUNK_BUDGET / 2 + 1]; 3];
        let chunks = records_chunks(Seq(1), &big);
        assert_eq!(
            chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Seq(1), Seq(2), Seq(3)]
        );
        let bodies: Vec<(Seq, Vec<u8>)> = vec![(Seq(4), vec![1; 10]), (Seq(9), vec![2; 20])];
        let chunks = bodies_chunks(&bodies);
        assert_eq!(chunks.len(), 1);
        let (first, bytes) = &chunks[0];
        assert_eq!(*first, Seq(4));
        assert_eq!(
            find_body(*first, bytes, Seq(9)).unwrap(),
            Some(&[2u8; 20][..])
        );
        assert_eq!(find_body(*first, bytes, Seq(5)).unwrap(), None);
        assert!(find_body(*first, &bytes[..bytes.len() - 1], Seq(9)).is_err());
    }

    /// A body decoded and copied out.
    fn body(seq: Seq, bytes: &[u8]) -> Result<Snapshot> {
        decode_body(seq, bytes, &mut Vec::new()).map(|view| view.to_snapshot())
    }

    #[test]
    fn bodies_round_trip_and_damage_is_named() {
        let snap = Snapshot::from_pairs([("id", "556114"), ("title", "Vidéo"), ("m", "")]).unwrap();
        let bytes = encode_body(&snap);
        assert_eq!(body(Seq(3), &bytes).unwrap(), snap);
        assert_eq!(
            body(Seq(3), &encode_body(&Snapshot::default())).unwrap(),
            Snapshot::default()
        );
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        let err = body(Seq(3), &flipped).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // A well-checksummed payload that is not a snapshot: refused, never a panic.
        for payload in [&b""[..], b"\x05\0\0\0", b"\x02\0\0\0\x09\0\0\0\x01\0\0\0ab"] {
            let err = body(Seq(4), &raw_frame(payload)).unwrap_err();
            assert!(matches!(err, Error::Corrupt { seq: Seq(4), .. }), "{err}");
        }
        let legacy = encode_legacy_body(&snap);
        assert_eq!(decode_legacy_body(Seq(3), &legacy).unwrap(), snap);
    }

    #[test]
    fn a_flipped_bit_is_named_by_seq() {
        let r = tick(42);
        let mut bytes = encode_record(&r);
        assert_eq!(decode_record(Seq(42), &bytes).unwrap(), r);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = decode_record(Seq(42), &bytes).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { seq: Seq(42), reason } if reason.contains("checksum")),
            "{err}"
        );
        let err = decode_record(Seq(42), &bytes[..2]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { seq: Seq(42), .. }), "{err}");
        let err = decode_record(Seq(43), &encode_record(&r)).unwrap_err();
        assert!(err.to_string().contains("says it is 42"), "{err}");

        let chunk = &records_chunks(Seq(42), &[encode_record(&r), encode_record(&tick(43))])[0].1;
        let cut = &chunk[..chunk.len() - 2];
        let entries: Vec<_> = RecordFrames::new(Seq(42), cut).unwrap().collect();
        assert!(entries[0].is_ok());
        assert!(
            matches!(&entries[1], Err(Error::Corrupt { seq: Seq(43), reason }) if reason.contains("truncated"))
        );
    }
}
