//! The per-file index: which records concern one file, without scanning the log.
//!
//! A sled key per record would cost a random-page insert on the durable path of every
//! change (measured at ~7 µs each, more than the rest of an append together), so the index
//! is built like a small LSM tree instead:
//!
//! - the **tail** — file-scoped records after the last segment — is indexed in memory
//!   ([`FileIndex::note`] after each group is written) and rebuilt at open by reading those
//!   records (at most about [`SEGMENT_SPAN`] of them);
//! - every [`SEGMENT_SPAN`] records the tail is written out as a **segment**: its entries
//!   sorted by file, packed into parts of at most [`CHUNK_BUDGET`](crate::codec::CHUNK_BUDGET)
//!   bytes, each part keyed `X` segment_first_seq first_file_key, together with the mark
//!   `Mindexed` (the last seq the segments cover) in one atomic sled batch.
//!
//! Segments are derived data: the batch that writes one is not synced on its own (the next
//! group commit's flush carries it), and if a crash loses it, the tail is simply rebuilt from
//! the older mark. A lookup reads the tail and probes each segment with one range query.
//! A part is `CRC-32` then entries `key_len: u16, key, n: u32, n × (seq: u64, tag: u8)`.
//!
//! Project-scoped records (callback configuration) are rare and keep one `P` key each.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Mutex;

use cb_core::{FileKey, Record, Scope, Seq};

use crate::codec::{self, IndexTag, CHUNK_BUDGET};
use crate::error::{Error, Result};

/// Records per segment: bounds the tail to rebuild at open, and the number of segments a
/// lookup probes (one per this many records of log).
pub const SEGMENT_SPAN: u64 = 65_536;

const SEGMENT: u8 = b'X';
const INDEXED_KEY: &[u8] = b"Mindexed";

/// One file's entry: its records' seqs and what each is.
type Entries = Vec<(Seq, IndexTag)>;

/// The index of file-scoped records; shared by the commit thread and readers.
pub(crate) struct FileIndex {
    state: Mutex<State>,
    /// Records per segment ([`SEGMENT_SPAN`] unless a test asks for small segments).
    span: u64,
}

struct State {
    /// The last seq the segments cover (0: none).
    indexed_through: Seq,
    /// First seqs of the segments, ascending.
    segments: Vec<Seq>,
    /// File-scoped records after `indexed_through` (written, perhaps not yet durable).
    tail: FxHashMap<FileKey, Entries>,
    /// The last seq noted.
    noted_through: Seq,
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
    k.extend_from_slice(&codec::seq_key(SEGMENT, segment));
    k.extend_from_slice(first_file);
    k
}

impl FileIndex {
    /// Loads the segment list and rebuilds the tail from the records after the last
    /// segment, up to `last`.
    pub(crate) fn open(tree: &sled::Tree, last: Seq, span: u64) -> Result<FileIndex> {
        let indexed_through = match tree.get(INDEXED_KEY)? {
            Some(v) => Seq(u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
                Error::Corrupt {
                    seq: Seq(0),
                    reason: "the index mark is not 8 bytes".into(),
                }
            })?)),
            None => Seq(0),
        };
        let mut segments = Vec::new();
        for key in tree.scan_prefix([SEGMENT]).keys() {
            let key = key?;
            let first = key
                .get(1..9)
                .map(|b| Seq(u64::from_be_bytes(b.try_into().expect("8 bytes"))))
                .ok_or_else(|| Error::Corrupt {
                    seq: Seq(0),
                    reason: "an index segment key is too short".into(),
                })?;
            if segments.last() != Some(&first) && first <= indexed_through {
                segments.push(first);
            }
        }
        let index = FileIndex {
            state: Mutex::new(State {
                indexed_through,
                segments,
                tail: FxHashMap::default(),
                noted_through: indexed_through,
            }),
            span: span.max(1),
        };
        let mut batch = Vec::new();
        for record in crate::log::read_records(tree, Seq(indexed_through.0 + 1), last) {
            // A damaged record cannot be indexed; reading it names it (Error::Corrupt), and
            // the store still opens so the rest of the log can be read and exported.
            let Ok(record) = record else { continue };
            batch.push(record);
            if batch.len() == 4096 {
                index.note(&batch);
                batch.clear();
            }
        }
        index.note(&batch);
        Ok(index)
    }

    /// Adds written records, in log order, to the tail. They may not be durable yet:
    /// readers bound what they take by the durable tip.
    pub(crate) fn note(&self, records: &[Record]) {
        let mut state = self.state.lock().expect("index lock");
        for r in records {
            if let (Scope::File(file), Some(tag)) = (r.scope(), IndexTag::of(&r.kind)) {
                state
                    .tail
                    .entry(file.clone())
                    .or_default()
                    .push((r.seq, tag));
            }
            state.noted_through = r.seq;
        }
    }

    /// Writes the tail out as a segment once it spans [`SEGMENT_SPAN`] records. Called by
    /// the sync thread after each group.
    pub(crate) fn maybe_write_segment(&self, tree: &sled::Tree) -> Result<()> {
        let (first, last, sorted) = {
            let state = self.state.lock().expect("index lock");
            if state
                .noted_through
                .0
                .saturating_sub(state.indexed_through.0)
                < self.span
            {
                return Ok(());
            }
            let sorted: BTreeMap<Vec<u8>, Entries> = state
                .tail
                .iter()
                .map(|(f, e)| (file_key_bytes(f), e.clone()))
                .collect();
            (
                Seq(state.indexed_through.0 + 1),
                state.noted_through,
                sorted,
            )
        };
        let mut batch = sled::Batch::default();
        let mut part: Vec<u8> = Vec::new();
        let mut part_first: Option<Vec<u8>> = None;
        for (key, entries) in &sorted {
            let size = 2 + key.len() + 4 + 9 * entries.len();
            if part_first.is_some() && part.len() + size > CHUNK_BUDGET {
                let done = std::mem::take(&mut part);
                batch.insert(
                    part_key(first, &part_first.take().expect("set")),
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
            batch.insert(part_key(first, &key), codec::raw_frame(&part));
        }
        batch.insert(INDEXED_KEY, &last.0.to_le_bytes());
        tree.apply_batch(batch)?;

        let mut state = self.state.lock().expect("index lock");
        state.segments.push(first);
        state.indexed_through = last;
        // Records noted while the segment was built stay in the tail.
        for entries in state.tail.values_mut() {
            entries.retain(|(seq, _)| *seq > last);
        }
        state.tail.retain(|_, entries| !entries.is_empty());
        Ok(())
    }

    /// Every indexed record of `file`, in order.
    pub(crate) fn entries(&self, tree: &sled::Tree, file: &FileKey) -> Result<Entries> {
        let (segments, mut tail) = self.snapshot(file);
        let key = file_key_bytes(file);
        let mut all = Vec::new();
        for segment in segments {
            all.extend(probe(tree, segment, &key)?);
        }
        all.append(&mut tail);
        Ok(all)
    }

    /// The seq of `file`'s latest change at or before `max`, newest segment first.
    pub(crate) fn latest_change(
        &self,
        tree: &sled::Tree,
        file: &FileKey,
        max: Seq,
    ) -> Result<Option<Seq>> {
        let (segments, tail) = self.snapshot(file);
        let change = |entries: &[(Seq, IndexTag)]| {
            entries
                .iter()
                .rev()
                .find(|(seq, tag)| *tag == IndexTag::Change && *seq <= max)
                .map(|(seq, _)| *seq)
        };
        if let Some(seq) = change(&tail) {
            return Ok(Some(seq));
        }
        let key = file_key_bytes(file);
        for segment in segments.into_iter().rev() {
            if let Some(seq) = change(&probe(tree, segment, &key)?) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// The segments to probe and the tail entries of `file`, taken together under the lock
    /// so that a segment written meanwhile is neither missed nor counted twice.
    fn snapshot(&self, file: &FileKey) -> (Vec<Seq>, Entries) {
        let state = self.state.lock().expect("index lock");
        (
            state.segments.clone(),
            state.tail.get(file).cloned().unwrap_or_default(),
        )
    }
}

/// `file`'s entries in one segment: the part whose first key is the greatest at or before
/// the file's, scanned for an exact match.
fn probe(tree: &sled::Tree, segment: Seq, key: &[u8]) -> Result<Entries> {
    let lo = codec::seq_key(SEGMENT, segment).to_vec();
    let Some(entry) = tree.range(lo..=part_key(segment, key)).next_back() else {
        return Ok(Vec::new());
    };
    let (_, part) = entry?;
    let corrupt = |reason: String| Error::Corrupt {
        seq: segment,
        reason: format!("per-file index segment {segment}: {reason}"),
    };
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
