//! Frames and keys: how a record, a checkpoint and the derived index's entries are encoded.
//!
//! A **frame** is the CRC-32 of the payload (4 bytes, little-endian) followed by the payload,
//! bincode 2 with its standard configuration. Every record has its own frame (inside a
//! segment's group, `segment.rs`), so damage is named by sequence number; a checkpoint's
//! anchor is the CRC of its last record's frame.
//!
//! The derived index (`index.rs`) lives in sled under one-byte key prefixes, sequence
//! numbers big-endian so that byte order is log order:
//!
//! | key | value |
//! |---|---|
//! | `L` first_seq | where consecutive records lie in the segments (`Loc`s), from `first_seq` |
//! | `K` first_seq | where kept records lie (the base's kept segment): `(seq, Loc)` pairs |
//! | `X` segment_first_seq first_file_key | a part of a per-file index segment (`index.rs`) |
//! | `P` project `\0` seq | one [`IndexTag`] byte: the project's records |
//! | `A` project `\0` callback `\0` class seq | nothing: the attempts of one callback, by outcome class |
//! | `O` class seq | project `\0` callback: every attempt, by outcome class |
//! | `M` name | the index's marks: how far each part reaches, and what it was built for |
//!
//! Ids cannot contain `\0` (SPEC §3 grammars), so the separators are unambiguous. Nothing
//! in sled is needed to read the log: it is rebuilt from the segments when it is missing,
//! damaged or disagrees with them.

use cb_core::{OutcomeClass, ProjectId, Record, RecordKind, Seq};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::common_records::RecentIds;
use crate::error::{Error, Result};

pub(crate) const PROJECT_INDEX: u8 = b'P';
pub(crate) const ATTEMPT_INDEX: u8 = b'A';
pub(crate) const OUTCOME_INDEX: u8 = b'O';

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
    /// `CallbackPaused`.
    Paused = b'z',
    /// `CallbackResumed`.
    Resumed = b'u',
    /// `CallbackTested`.
    Tested = b't',
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
            IndexTag::Paused,
            IndexTag::Resumed,
            IndexTag::Tested,
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
            RecordKind::CallbackPaused { .. } => IndexTag::Paused,
            RecordKind::CallbackResumed { .. } => IndexTag::Resumed,
            RecordKind::CallbackTested { .. } => IndexTag::Tested,
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

/// `A project \0`: the prefix of every attempt entry of one project.
pub(crate) fn attempt_project_prefix(project: &ProjectId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + project.as_str().len());
    k.push(ATTEMPT_INDEX);
    k.extend_from_slice(project.as_str().as_bytes());
    k.push(0);
    k
}

/// `A project \0 callback \0 class`: the prefix of one callback's attempts of one class.
pub(crate) fn attempt_prefix(project: &ProjectId, callback: &[u8], class: OutcomeClass) -> Vec<u8> {
    let mut k = attempt_project_prefix(project);
    k.extend_from_slice(callback);
    k.push(0);
    k.push(class.code());
    k
}

/// `O class`: the prefix of every attempt of one class.
pub(crate) fn outcome_prefix(class: OutcomeClass) -> Vec<u8> {
    vec![OUTCOME_INDEX, class.code()]
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
    decode_checked(seq, payload, ids)
}

/// [`decode_record_with`] for a frame whose checksum was just checked (by
/// [`frame_seq`]): the payload after the CRC.
pub(crate) fn decode_checked(seq: Seq, payload: &[u8], ids: &mut RecentIds) -> Result<Record> {
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

/// The CRC-32 stored at the head of a frame.
pub(crate) fn frame_crc(frame: &[u8]) -> Option<u32> {
    frame.first_chunk::<4>().map(|c| u32::from_le_bytes(*c))
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

/// Checks a record frame's checksum and reads the seq it says it is, without decoding the
/// rest: the scan of a segment checks every record this way.
pub(crate) fn frame_seq(frame: &[u8]) -> std::result::Result<Seq, String> {
    let payload = raw_unframe(frame)?;
    // bincode's standard configuration writes integers as varints: one byte below 251, else
    // a marker (251: u16, 252: u32, 253: u64) and the little-endian value.
    let (&first, rest) = payload
        .split_first()
        .ok_or_else(|| "an empty record".to_string())?;
    let seq = match first {
        0..=250 => u64::from(first),
        251 => rest
            .first_chunk::<2>()
            .map(|b| u16::from_le_bytes(*b).into())
            .ok_or("a cut seq")?,
        252 => rest
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b).into())
            .ok_or("a cut seq")?,
        253 => rest
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
            .ok_or("a cut seq")?,
        other => return Err(format!("a record starting with byte {other}")),
    };
    Ok(Seq(seq))
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
        let a = seq_key(b'L', Seq(255));
        let b = seq_key(b'L', Seq(256));
        assert!(a < b);
        assert_eq!(seq_of_key(&b), Some(Seq(256)));
        let k = with_seq(project_prefix(&ProjectId::new("p").unwrap()), Seq(7));
        assert_eq!(&k[..3], b"Pp\0");
        assert_eq!(seq_of_key(&k), Some(Seq(7)));
    }

    #[test]
    fn a_frame_names_its_seq_and_a_flipped_bit_is_named_by_seq() {
        for seq in [1, 250, 251, 65_535, 65_536, u64::from(u32::MAX) + 1] {
            assert_eq!(frame_seq(&encode_record(&tick(seq))), Ok(Seq(seq)));
        }
        let r = tick(42);
        let mut bytes = encode_record(&r);
        assert_eq!(decode_record(Seq(42), &bytes).unwrap(), r);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(frame_seq(&bytes).unwrap_err().contains("checksum"));
        let err = decode_record(Seq(42), &bytes).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { seq: Seq(42), reason } if reason.contains("checksum")),
            "{err}"
        );
        let err = decode_record(Seq(42), &bytes[..2]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { seq: Seq(42), .. }), "{err}");
        let err = decode_record(Seq(43), &encode_record(&r)).unwrap_err();
        assert!(err.to_string().contains("says it is 42"), "{err}");
    }
}
