//! The on-disk form: sled keys and checksummed bincode frames.
//!
//! Everything lives in one sled tree, so that one `apply_batch` writes a group of records,
//! their bodies and their index entries atomically. A one-byte prefix keeps each kind of key
//! in its own contiguous range, and sequence numbers are big-endian so that byte order is
//! log order:
//!
//! | key | value |
//! |---|---|
//! | `L` seq | frame of the [`Record`] (no snapshot body: replay never reads bodies) |
//! | `B` seq | frame of the [`Snapshot`] that change `seq` appended |
//! | `F` project `\0` file_id `\0` seq | one [`IndexTag`] byte: the file's records |
//! | `P` project `\0` seq | one [`IndexTag`] byte: the project's records |
//! | `M` name | store metadata (the format version) |
//!
//! Ids cannot contain `\0` (SPEC §3 grammars), so the separators are unambiguous.
//!
//! A frame is the CRC-32 of the payload (4 bytes, little-endian) followed by the payload,
//! bincode 2 with its standard configuration. sled checksums its own log too; ours also
//! catches a value written by something other than this code, and names the record.

use cb_core::{FileKey, ProjectId, Record, RecordKind, Seq, Snapshot};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// The log format this build reads and writes. Bump it whenever a record's encoding
/// changes; a store with another number refuses to open rather than misread.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const LOG: u8 = b'L';
pub(crate) const BODY: u8 = b'B';
pub(crate) const FILE_INDEX: u8 = b'F';
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

fn config() -> bincode::config::Configuration {
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

/// `F project \0 file_id \0`: the prefix of every index entry of one file.
pub(crate) fn file_prefix(file: &FileKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + file.project.as_str().len() + file.file_id.as_str().len());
    k.push(FILE_INDEX);
    k.extend_from_slice(file.project.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(file.file_id.as_str().as_bytes());
    k.push(0);
    k
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

fn unframe<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let (crc, payload) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("{} bytes, shorter than a frame header", bytes.len()))?;
    let want = u32::from_le_bytes(*crc);
    let got = crc32fast::hash(payload);
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x}) over {} bytes",
            payload.len()
        ));
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, config())
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

/// Decodes the record stored under `seq`, and checks that it says it is that record.
pub(crate) fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Record> {
    let record: Record = unframe(bytes).map_err(|reason| Error::Corrupt { seq, reason })?;
    if record.seq != seq {
        return Err(Error::Corrupt {
            seq,
            reason: format!("stored under {seq} but says it is {}", record.seq),
        });
    }
    Ok(record)
}

pub(crate) fn encode_body(snapshot: &Snapshot) -> Vec<u8> {
    frame(snapshot)
}

pub(crate) fn decode_body(seq: Seq, bytes: &[u8]) -> Result<Snapshot> {
    unframe(bytes).map_err(|reason| Error::Corrupt {
        seq,
        reason: format!("snapshot body: {reason}"),
    })
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

    #[test]
    fn keys_sort_in_log_order() {
        let a = seq_key(LOG, Seq(255));
        let b = seq_key(LOG, Seq(256));
        assert!(a < b);
        assert_eq!(seq_of_key(&b), Some(Seq(256)));
        let file = FileKey::parse("p/f").unwrap();
        let k = with_seq(file_prefix(&file), Seq(7));
        assert_eq!(&k[..5], b"Fp\0f\0");
        assert_eq!(seq_of_key(&k), Some(Seq(7)));
    }

    #[test]
    fn a_flipped_bit_is_named_by_seq() {
        let r = Record {
            seq: Seq(42),
            at: Timestamp(1),
            kind: RecordKind::Ticked,
        };
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
    }
}
