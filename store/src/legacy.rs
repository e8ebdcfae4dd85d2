//! A reader of the data dirs cb wrote before format 4 — records in sled, bodies in segment
//! files beside it (format 3) or in sled too (format 2) — for the one-time migration
//! (`migrate.rs`) and nothing else. It reads what those builds wrote and checks every
//! checksum they wrote; it never writes.
//!
//! ```text
//! DIR/log/        sled: `R` first_seq → a chunk of record frames; `V` first_seq → where a run
//!                 of bodies lies; `B` first_seq → a chunk of bodies (format 2); `Mformat`
//! DIR/bodies/     NNNNNNNN.seg: body frames back to back (format 3)
//! ```
//! A records chunk is `count:u32` then per record `len:u32` and its frame; a bodies chunk is
//! `count:u32` then per body `seq:u64 len:u32` and its frame; a directory is a raw frame of
//! `segment:u32 offset:u64 count:u32` then per body `seq:u64 len:u32`. A format-3 body frame
//! is `crc:u32 count:u32 ends:u32* text`; a format-2 one is a bincode snapshot frame.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cb_core::{Record, Seq, Snapshot, SnapshotView};

use crate::codec;
use crate::common_records::RecentIds;
use crate::error::{Error, Result};

const RECORDS: u8 = b'R';
const DIRECTORIES: u8 = b'V';
const BODIES: u8 = b'B';
const FORMAT_KEY: &[u8] = b"Mformat";

/// A format-3 bodies directory: its first seq, the segment and offset of its run, and each
/// body's seq and frame length.
type Directory = (Seq, u32, u64, Vec<(Seq, u32)>);

/// An open format-2 or format-3 log.
pub(crate) struct LegacyLog {
    tree: sled::Tree,
    _db: sled::Db,
    bodies_dir: PathBuf,
    /// The format found (2 or 3).
    pub(crate) format: u32,
    /// The directory that listed the last body read: first seq, segment, offset, bodies.
    directory: Option<Directory>,
    segment: Option<(u32, File)>,
    /// A format-2 bodies chunk: its first seq and bytes.
    chunk: Option<(Seq, sled::IVec)>,
}

/// True if `dir` holds a log of a format before 4 (a sled database in `log/`).
pub(crate) fn present(dir: &Path) -> bool {
    dir.join("log").join("db").exists() || dir.join("log").join("conf").exists()
}

impl LegacyLog {
    /// Opens the sled database of the data dir at `dir`; `Err` for a format this reader
    /// does not know.
    pub(crate) fn open(dir: &Path) -> Result<LegacyLog> {
        let db = sled::Config::new().path(dir.join("log")).open()?;
        let tree = db.open_tree("cb")?;
        let format = match tree.get(FORMAT_KEY)? {
            Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
                Ok(raw) => u32::from_le_bytes(raw),
                Err(_) => 0,
            },
            None if tree.is_empty() => 3,
            None => 0,
        };
        if format != 2 && format != 3 {
            return Err(Error::UnknownFormat {
                path: dir.to_owned(),
                found: format.to_string(),
                supported: crate::FORMAT_VERSION,
            });
        }
        Ok(LegacyLog {
            tree,
            _db: db,
            bodies_dir: dir.join("bodies"),
            format,
            directory: None,
            segment: None,
            chunk: None,
        })
    }

    /// Every record, in order, with each change's snapshot.
    pub(crate) fn for_each(
        &mut self,
        mut each: impl FnMut(Record, Option<Snapshot>) -> Result<()>,
    ) -> Result<()> {
        let mut ids = RecentIds::default();
        let mut expect = Seq(1);
        let chunks: Vec<_> = self.tree.scan_prefix([RECORDS]).collect();
        for entry in chunks {
            let (key, chunk) = entry?;
            let first = codec::seq_of_key(&key)
                .ok_or_else(|| corrupt(expect, "a records key without a seq"))?;
            let mut frames = Frames::new(&chunk, 0).map_err(|r| corrupt(first, &r))?;
            let mut seq = first;
            while let Some(frame) = frames.next_frame().map_err(|r| corrupt(seq, &r))? {
                if seq != expect {
                    return Err(corrupt(
                        seq,
                        &format!("the log skips from {expect} to {seq}"),
                    ));
                }
                let record = codec::decode_record_with(seq, frame, &mut ids)?;
                let body = match record.kind {
                    cb_core::RecordKind::ChangeAppended { .. } => {
                        Some(self.body(seq)?.ok_or(Error::Missing { seq })?)
                    }
                    _ => None,
                };
                each(record, body)?;
                seq = Seq(seq.0 + 1);
                expect = seq;
            }
        }
        Ok(())
    }

    fn body(&mut self, seq: Seq) -> Result<Option<Snapshot>> {
        if self.format == 2 {
            if let Some(body) = self.body_in_chunk(seq)? {
                return Ok(Some(body));
            }
        }
        let held = self
            .directory
            .as_ref()
            .is_some_and(|(first, _, _, bodies)| {
                *first <= seq && bodies.last().is_some_and(|b| b.0 >= seq)
            });
        if !held {
            self.directory = None;
            let Some((first, bytes)) = at_or_before(&self.tree, DIRECTORIES, seq)? else {
                return Ok(None);
            };
            self.directory = Some(decode_directory(first, &bytes)?);
        }
        let (_, segment, offset, bodies) = self.directory.as_ref().expect("loaded above");
        let mut at = *offset;
        let mut found = None;
        for (s, len) in bodies {
            if *s == seq {
                found = Some((at, *len));
                break;
            }
            at += u64::from(*len);
        }
        let Some((at, len)) = found else {
            return Ok(None);
        };
        let segment = *segment;
        if self.segment.as_ref().is_none_or(|(n, _)| *n != segment) {
            let path = self.bodies_dir.join(format!("{segment:08}.seg"));
            let file = File::open(&path).map_err(|e| {
                corrupt(
                    seq,
                    &format!("its body segment {} cannot be opened: {e}", path.display()),
                )
            })?;
            self.segment = Some((segment, file));
        }
        let (_, file) = self.segment.as_ref().expect("opened above");
        let mut frame = vec![0u8; len as usize];
        file.read_exact_at(&mut frame, at)
            .map_err(|e| corrupt(seq, &format!("its body cannot be read: {e}")))?;
        let payload =
            codec::raw_unframe(&frame).map_err(|r| corrupt(seq, &format!("snapshot body: {r}")))?;
        let (count, rest) = payload
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(seq, "snapshot body: no offset count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        let (table, text) = rest
            .split_at_checked(count.saturating_mul(4))
            .ok_or_else(|| corrupt(seq, "snapshot body: its offsets do not fit"))?;
        let ends: Vec<u32> = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let text =
            std::str::from_utf8(text).map_err(|e| corrupt(seq, &format!("snapshot body: {e}")))?;
        let view = SnapshotView::from_stored_parts(text, &ends)
            .map_err(|e| corrupt(seq, &format!("snapshot body: {e}")))?;
        Ok(Some(view.to_snapshot()))
    }

    /// A body format 2 kept in a sled `B` chunk.
    fn body_in_chunk(&mut self, seq: Seq) -> Result<Option<Snapshot>> {
        if self.chunk.as_ref().is_none_or(|(first, _)| *first > seq) {
            self.chunk = at_or_before(&self.tree, BODIES, seq)?;
        }
        let Some((first, bytes)) = &self.chunk else {
            return Ok(None);
        };
        let mut frames = Frames::new(bytes, 8).map_err(|r| corrupt(*first, &r))?;
        loop {
            let at = frames.at;
            let Some(frame) = frames.next_frame().map_err(|r| corrupt(seq, &r))? else {
                return Ok(None);
            };
            let this = Seq(u64::from_le_bytes(
                bytes[at..at + 8].try_into().expect("checked"),
            ));
            if this == seq {
                return codec::decode_value::<Snapshot>(frame)
                    .map(Some)
                    .map_err(|r| corrupt(seq, &format!("snapshot body: {r}")));
            }
            if this > seq {
                return Ok(None);
            }
        }
    }
}

fn corrupt(seq: Seq, reason: &str) -> Error {
    Error::Corrupt {
        seq,
        reason: format!("(format 3 log) {reason}"),
    }
}

fn at_or_before(tree: &sled::Tree, prefix: u8, seq: Seq) -> Result<Option<(Seq, sled::IVec)>> {
    match tree
        .range(codec::seq_key(prefix, Seq(0))..=codec::seq_key(prefix, seq))
        .next_back()
    {
        Some(entry) => {
            let (key, value) = entry?;
            let first =
                codec::seq_of_key(&key).ok_or_else(|| corrupt(seq, "a key without a seq"))?;
            Ok(Some((first, value)))
        }
        None => Ok(None),
    }
}

fn decode_directory(first: Seq, bytes: &[u8]) -> Result<Directory> {
    let payload =
        codec::raw_unframe(bytes).map_err(|r| corrupt(first, &format!("bodies directory: {r}")))?;
    let (head, rest) = payload
        .split_first_chunk::<16>()
        .ok_or_else(|| corrupt(first, "bodies directory shorter than its header"))?;
    let segment = u32::from_le_bytes(head[0..4].try_into().expect("4"));
    let offset = u64::from_le_bytes(head[4..12].try_into().expect("8"));
    let count = u32::from_le_bytes(head[12..16].try_into().expect("4")) as usize;
    if rest.len() != count * 12 {
        return Err(corrupt(first, "bodies directory of the wrong length"));
    }
    let bodies = rest
        .chunks_exact(12)
        .map(|e| {
            (
                Seq(u64::from_le_bytes(e[..8].try_into().expect("8"))),
                u32::from_le_bytes(e[8..].try_into().expect("4")),
            )
        })
        .collect();
    Ok((first, segment, offset, bodies))
}

/// The entries of a chunk: `count:u32`, then per entry `skip` bytes, `len:u32` and a frame.
struct Frames<'a> {
    bytes: &'a [u8],
    at: usize,
    left: u32,
    skip: usize,
}

impl<'a> Frames<'a> {
    fn new(bytes: &'a [u8], skip: usize) -> std::result::Result<Frames<'a>, String> {
        let left = bytes
            .first_chunk::<4>()
            .map(|c| u32::from_le_bytes(*c))
            .ok_or_else(|| format!("a chunk of {} bytes has no header", bytes.len()))?;
        Ok(Frames {
            bytes,
            at: 4,
            left,
            skip,
        })
    }

    fn next_frame(&mut self) -> std::result::Result<Option<&'a [u8]>, String> {
        if self.left == 0 {
            return Ok(None);
        }
        let len_at = self.at + self.skip;
        let len = self
            .bytes
            .get(len_at..len_at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| format!("chunk truncated at byte {}", self.at))?;
        let frame = self
            .bytes
            .get(len_at + 4..len_at + 4 + len)
            .ok_or_else(|| format!("chunk truncated: an entry of {len} bytes at byte {len_at}"))?;
        self.at = len_at + 4 + len;
        self.left -= 1;
        Ok(Some(frame))
    }
}
