//! Snapshot bodies in append-only segment files beside sled, with their locations in sled.
//!
//! Bodies are nearly all of the log's bytes (a seed-shaped snapshot is ~1 KB encoded, its
//! change record ~60 bytes), and sled is slow with big values: it rewrites whole tree nodes
//! when it consolidates them and moves nodes that outgrow its segment into one blob file
//! each. Written through sled, a batch of 1000 changes ran at ~55,000 changes/s durable;
//! with the bodies here, sled carries only records, index entries and a small directory
//! per group (measured in `docs/performance.md`). This is the value-log design of WiscKey
//! (Lu et al., FAST '16), with sled as the index.
//!
//! ```text
//! DIR/bodies/00000001.seg   body frames (codec.rs), back to back, in log order
//! DIR/bodies/00000002.seg   the next segment, once the first passed `segment_bytes`
//! ```
//!
//! A group commit writes its bodies at the end of the current segment and, under
//! [`Durability::Sync`](crate::Durability::Sync), `fdatasync`s them **before** the sled
//! batch that points at them is applied. Invariant (*a durable pointer points at durable
//! bytes*): a directory entry in sled only ever names bytes already on stable storage, so
//! no crash or power loss leaves a record whose body is gone. The converse is harmless:
//! bytes written for a group whose sled batch never became durable are an unreferenced
//! tail, cut off by [`BodyLog::open`] before anything is appended after them.
//!
//! In sled, `V first_seq` holds a directory: the segment, the offset of the first body, and
//! per body its change's seq and frame length (the bodies are contiguous). A directory
//! covers at most [`DIRECTORY_BODIES`] bodies, so it stays a small inline sled value.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cb_core::{Seq, Snapshot};

use crate::codec;
use crate::dir::sync_dir;
use crate::error::{Error, Result};

/// sled key prefix of body directories.
pub(crate) const DIRECTORIES: u8 = b'V';
/// The most bodies one directory lists (12 bytes each, so ≤ 48 KiB: inline in sled).
pub(crate) const DIRECTORY_BODIES: usize = 4096;
/// A segment is closed and the next one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// The highest segment number a directory may name (far beyond any real log: 256 TiB of
/// bodies at the default size), so that a damaged one cannot size the segment table.
const MAX_SEGMENT: u32 = 1 << 20;
/// The largest body frame: a CRC, a count, the offsets and the text of the largest snapshot.
const MAX_FRAME: usize = 8 + 4 * 2 * Snapshot::MAX_FIELDS + Snapshot::MAX_BYTES;
/// Where a segment's bodies may end at most: far past any configured segment size.
const MAX_SEGMENT_END: u64 = 1 << 40;

/// Where a run of contiguous bodies lies: parsed from a directory value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Directory {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    /// `(seq, frame length)`, seqs increasing.
    pub(crate) bodies: Vec<(Seq, u32)>,
    /// `starts[i]`: where body `i` starts, relative to `offset` (derived, not stored), so
    /// that finding one of 4096 bodies does not sum the lengths before it.
    starts: Vec<u64>,
}

impl Directory {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(16 + 12 * self.bodies.len());
        payload.extend_from_slice(&self.segment.to_le_bytes());
        payload.extend_from_slice(&self.offset.to_le_bytes());
        payload.extend_from_slice(
            &u32::try_from(self.bodies.len())
                .expect("bounded by DIRECTORY_BODIES")
                .to_le_bytes(),
        );
        for (seq, len) in &self.bodies {
            payload.extend_from_slice(&seq.0.to_le_bytes());
            payload.extend_from_slice(&len.to_le_bytes());
        }
        codec::raw_frame(&payload)
    }

    /// Parses the directory stored under `first`.
    pub(crate) fn decode(first: Seq, bytes: &[u8]) -> Result<Directory> {
        let corrupt = |reason: String| Error::Corrupt {
            seq: first,
            reason: format!("bodies directory: {reason}"),
        };
        let payload = codec::raw_unframe(bytes).map_err(corrupt)?;
        let (head, rest) = payload
            .split_first_chunk::<16>()
            .ok_or_else(|| corrupt(format!("{} bytes, shorter than its header", payload.len())))?;
        let segment = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        if rest.len() != count * 12 {
            return Err(corrupt(format!(
                "{count} bodies need {} bytes, it has {}",
                count * 12,
                rest.len()
            )));
        }
        let bodies: Vec<(Seq, u32)> = rest
            .chunks_exact(12)
            .map(|e| {
                (
                    Seq(u64::from_le_bytes(e[..8].try_into().expect("8 bytes"))),
                    u32::from_le_bytes(e[8..].try_into().expect("4 bytes")),
                )
            })
            .collect();
        // The CRC shows these are the bytes written; this shows they are a directory this
        // code could have written, so that nothing below can overflow, allocate without
        // bound, or cut a segment at a wrapped-around offset.
        if segment == 0 || segment > MAX_SEGMENT {
            return Err(corrupt(format!("segment {segment} is out of range")));
        }
        if bodies.first().is_some_and(|(seq, _)| *seq != first) {
            return Err(corrupt(
                "its first body is not the one its key names".into(),
            ));
        }
        if bodies.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(corrupt("its bodies are not in increasing order".into()));
        }
        if let Some((seq, len)) = bodies.iter().find(|(_, len)| *len as usize > MAX_FRAME) {
            return Err(corrupt(format!("body {seq} claims {len} bytes")));
        }
        let total: u64 = bodies.iter().map(|(_, len)| u64::from(*len)).sum();
        if offset
            .checked_add(total)
            .is_none_or(|end| end > MAX_SEGMENT_END)
        {
            return Err(corrupt(format!(
                "{total} bytes at offset {offset} lie beyond any segment"
            )));
        }
        Ok(Directory::new(segment, offset, bodies))
    }

    pub(crate) fn new(segment: u32, offset: u64, bodies: Vec<(Seq, u32)>) -> Directory {
        let mut at = 0;
        let starts = bodies
            .iter()
            .map(|(_, len)| {
                let start = at;
                at += u64::from(*len);
                start
            })
            .collect();
        Directory {
            segment,
            offset,
            bodies,
            starts,
        }
    }

    /// The first and last versions listed.
    pub(crate) fn span(&self) -> Option<(Seq, Seq)> {
        Some((self.bodies.first()?.0, self.bodies.last()?.0))
    }

    /// Where the listed bodies end in their segment.
    pub(crate) fn end(&self) -> u64 {
        match (self.starts.last(), self.bodies.last()) {
            (Some(start), Some((_, len))) => self.offset + start + u64::from(*len),
            _ => self.offset,
        }
    }

    /// The offset (relative to [`offset`](Self::offset)) and length of `seq`'s frame.
    pub(crate) fn locate(&self, seq: Seq) -> Option<(u64, u32)> {
        let i = self.bodies.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        Some((self.starts[i], self.bodies[i].1))
    }
}

/// The segment files: shared by the committer (which appends) and every reader.
pub(crate) struct BodyLog {
    dir: PathBuf,
    /// Open segments by number (index 0 is unused: numbering starts at 1). Readers clone
    /// an `Arc<File>` out and read without holding the lock.
    segments: RwLock<Vec<Option<Arc<File>>>>,
}

/// The committer's end of the body log: where the next body goes.
pub(crate) struct BodyWriter {
    log: Arc<BodyLog>,
    segment: u32,
    len: u64,
    segment_bytes: u64,
    /// Reused between groups.
    buf: Vec<u8>,
}

impl BodyLog {
    /// Opens `dir` (creating it), given the last directory sled holds; cuts off whatever was
    /// written after it, and returns the log with a writer positioned at its end.
    pub(crate) fn open(
        dir: &Path,
        last: Option<(Seq, &Directory)>,
        segment_bytes: u64,
    ) -> Result<(Arc<BodyLog>, BodyWriter)> {
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        if created {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(Error::io(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0);
            match number {
                Some(n) => numbers.push(n),
                None => {
                    return Err(Error::io(format!(
                        "{} holds {:?}, which is not a body segment",
                        dir.display(),
                        name
                    ))(
                        std::io::ErrorKind::InvalidData.into()
                    ))
                }
            }
        }
        numbers.sort_unstable();
        // The segment and offset the log's last durable directory ends at.
        let (segment, end) = match last {
            Some((_, d)) => (d.segment, d.end()),
            None => (1, 0),
        };
        let mut removed_any = false;
        for n in numbers.iter().copied().filter(|n| *n > segment) {
            // Started by a group whose sled batch never became durable.
            fs::remove_file(segment_path(dir, n))
                .map_err(Error::io(format!("removing unreferenced segment {n}")))?;
            removed_any = true;
        }
        if removed_any {
            sync_dir(dir)?;
        }
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        let on_disk = file
            .metadata()
            .map_err(Error::io(format!("reading the size of {}", path.display())))?
            .len();
        if on_disk < end {
            let (first, _) = last.expect("end > 0 only with a directory");
            return Err(Error::Corrupt {
                seq: first,
                reason: format!(
                    "its bodies end at byte {end} of {}, which has {on_disk} bytes",
                    path.display()
                ),
            });
        }
        if on_disk > end {
            // Written for a group whose sled batch never became durable: never acknowledged.
            file.set_len(end).map_err(Error::io(format!(
                "cutting the unreferenced tail of {}",
                path.display()
            )))?;
        }
        // A run that appended without syncing (an import, `Buffered`) may have left sled
        // pointing at bytes only in the page cache. The caller syncs sled's recovered file
        // after this, so the bodies become durable first.
        file.sync_all()
            .map_err(Error::io(format!("syncing {}", path.display())))?;
        if !numbers.contains(&segment) {
            sync_dir(dir)?;
        }
        let mut segments = vec![None; segment as usize + 1];
        segments[segment as usize] = Some(Arc::new(file));
        let log = Arc::new(BodyLog {
            dir: dir.to_owned(),
            segments: RwLock::new(segments),
        });
        let writer = BodyWriter {
            log: log.clone(),
            segment,
            len: end,
            segment_bytes: segment_bytes.max(1),
            buf: Vec::new(),
        };
        Ok((log, writer))
    }

    /// The open file of segment `n`, opening it on first use.
    fn segment(&self, n: u32, seq: Seq) -> Result<Arc<File>> {
        if let Some(Some(f)) = self.segments.read().expect("segments lock").get(n as usize) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, n);
        let file = File::open(&path).map_err(|e| Error::Corrupt {
            seq,
            reason: format!("its body segment {} cannot be opened: {e}", path.display()),
        })?;
        let file = Arc::new(file);
        let mut segments = self.segments.write().expect("segments lock");
        if segments.len() <= n as usize {
            segments.resize(n as usize + 1, None);
        }
        Ok(segments[n as usize].get_or_insert(file).clone())
    }

    /// Reads `len` bytes at `offset` of segment `segment` (for change `seq`, named in errors)
    /// into `buf`, replacing its contents: a reader of many runs reuses one buffer instead
    /// of mapping and zeroing megabytes for each.
    pub(crate) fn read_into(
        &self,
        seq: Seq,
        segment: u32,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let file = self.segment(segment, seq)?;
        buf.resize(len, 0);
        file.read_exact_at(buf, offset).map_err(|e| Error::Corrupt {
            seq,
            reason: format!(
                "its body ({len} bytes at {offset} of segment {segment}) cannot be read: {e}"
            ),
        })
    }

    /// `fdatasync`s the newest segment (what [`Store::sync`](crate::Store::sync) adds for
    /// bodies; older segments were synced when they were closed).
    pub(crate) fn sync(&self) -> Result<()> {
        let newest = self
            .segments
            .read()
            .expect("segments lock")
            .iter()
            .rev()
            .find_map(Clone::clone);
        match newest {
            Some(f) => f.sync_data().map_err(Error::io("fdatasync of the bodies")),
            None => Ok(()),
        }
    }

    /// Bytes of every segment on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir).map_err(Error::io("listing the bodies"))? {
            let entry = entry.map_err(Error::io("listing the bodies"))?;
            total += entry
                .metadata()
                .map_err(Error::io("listing the bodies"))?
                .len();
        }
        Ok(total)
    }
}

impl BodyWriter {
    /// Appends `bodies` (framed, seqs increasing) and returns the directories to store in
    /// sled, each with its first seq. With `sync`, the bytes are on stable storage when this
    /// returns — which must happen before the directories are applied (module invariant).
    pub(crate) fn append(
        &mut self,
        bodies: &[(Seq, Vec<u8>)],
        sync: bool,
    ) -> Result<Vec<(Seq, Directory)>> {
        let mut directories = Vec::new();
        let mut rest = bodies;
        while !rest.is_empty() {
            if self.len > 0 && self.len + rest[0].1.len() as u64 > self.segment_bytes {
                self.roll()?;
            }
            // Fill the segment up to its size (at least one body), one directory at most.
            let mut take = 0;
            let mut bytes = 0u64;
            while take < rest.len()
                && take < DIRECTORY_BODIES
                && (take == 0 || self.len + bytes + rest[take].1.len() as u64 <= self.segment_bytes)
            {
                bytes += rest[take].1.len() as u64;
                take += 1;
            }
            let (run, after) = rest.split_at(take);
            self.buf.clear();
            let mut listed = Vec::with_capacity(run.len());
            for (seq, frame) in run {
                self.buf.extend_from_slice(frame);
                listed.push((*seq, u32::try_from(frame.len()).expect("a body < 4 GiB")));
            }
            self.current()
                .write_all(&self.buf)
                .map_err(Error::io("writing snapshot bodies"))?;
            directories.push((run[0].0, Directory::new(self.segment, self.len, listed)));
            self.len += bytes;
            rest = after;
        }
        if sync && !directories.is_empty() {
            self.current()
                .sync_data()
                .map_err(Error::io("fdatasync of the snapshot bodies"))?;
        }
        Ok(directories)
    }

    fn current(&self) -> Arc<File> {
        self.log.segments.read().expect("segments lock")[self.segment as usize]
            .clone()
            .expect("the writer's segment is open")
    }

    /// Closes the current segment (synced, so only the newest ever needs a sync) and starts
    /// the next.
    fn roll(&mut self) -> Result<()> {
        self.current()
            .sync_data()
            .map_err(Error::io("fdatasync of a full body segment"))?;
        let next = self.segment + 1;
        let path = segment_path(&self.log.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(format!("creating {}", path.display())))?;
        // Left over from a crash, it would be unreferenced; start it empty.
        file.set_len(0)
            .map_err(Error::io(format!("emptying {}", path.display())))?;
        sync_dir(&self.log.dir)?;
        let mut segments = self.log.segments.write().expect("segments lock");
        if segments.len() <= next as usize {
            segments.resize(next as usize + 1, None);
        }
        segments[next as usize] = Some(Arc::new(file));
        drop(segments);
        self.segment = next;
        self.len = 0;
        Ok(())
    }
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(seqs: std::ops::Range<u64>, len: usize) -> Vec<(Seq, Vec<u8>)> {
        seqs.map(|s| (Seq(s), vec![s as u8; len])).collect()
    }

    fn read_back(log: &BodyLog, d: &Directory, seq: Seq) -> Vec<u8> {
        let (at, len) = d.locate(seq).unwrap();
        let mut buf = Vec::new();
        log.read_into(seq, d.segment, d.offset + at, len as usize, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn directories_round_trip_and_locate_bodies() {
        let d = Directory::new(3, 100, vec![(Seq(5), 10), (Seq(9), 20), (Seq(12), 7)]);
        let bytes = d.encode();
        assert_eq!(Directory::decode(Seq(5), &bytes).unwrap(), d);
        assert_eq!(d.locate(Seq(12)), Some((30, 7)));
        assert_eq!(d.locate(Seq(6)), None);
        assert_eq!(d.end(), 137);
        assert_eq!(d.span(), Some((Seq(5), Seq(12))));
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Directory::decode(Seq(5), &bad),
            Err(Error::Corrupt { seq: Seq(5), .. })
        ));
    }

    #[test]
    fn a_directory_this_code_could_not_have_written_is_refused() {
        let ok = Directory::new(1, 0, vec![(Seq(5), 10), (Seq(9), 20)]);
        assert!(Directory::decode(Seq(5), &ok.encode()).is_ok());
        let bad = [
            (Seq(5), Directory::new(0, 0, vec![(Seq(5), 10)])),
            (
                Seq(5),
                Directory::new(MAX_SEGMENT + 1, 0, vec![(Seq(5), 10)]),
            ),
            (Seq(4), Directory::new(1, 0, vec![(Seq(5), 10)])),
            (
                Seq(5),
                Directory::new(1, 0, vec![(Seq(5), 10), (Seq(5), 10)]),
            ),
            (Seq(5), Directory::new(1, 0, vec![(Seq(5), u32::MAX)])),
            (Seq(5), Directory::new(1, u64::MAX - 5, vec![(Seq(5), 10)])),
        ];
        for (first, d) in bad {
            let err = Directory::decode(first, &d.encode()).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{d:?}: {err}");
        }
    }

    #[test]
    fn appends_roll_segments_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bodies");
        let (log, mut w) = BodyLog::open(&dir, None, 250).unwrap();
        let dirs = w.append(&bodies(1..11, 100), true).unwrap();
        // 250 bytes a segment: two bodies each (the third would pass it).
        assert_eq!(dirs.len(), 5);
        assert_eq!(
            dirs.iter().map(|(_, d)| d.segment).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        for (first, d) in &dirs {
            assert_eq!(d.bodies[0].0, *first);
            for (seq, _) in &d.bodies {
                assert_eq!(read_back(&log, d, *seq), vec![seq.0 as u8; 100]);
            }
        }
        log.sync().unwrap();
        assert_eq!(log.size_on_disk().unwrap(), 1000);
    }

    #[test]
    fn open_cuts_what_no_directory_references() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bodies");
        let (_, mut w) = BodyLog::open(&dir, None, 250).unwrap();
        let dirs = w.append(&bodies(1..4, 100), true).unwrap();
        // The group of seqs 4..6 was written but its sled batch never became durable.
        w.append(&bodies(4..7, 100), true).unwrap();
        drop(w);
        // Seqs 1, 2 in segment 1; 3, 4 in segment 2; 5, 6 in segment 3.
        assert!(segment_path(&dir, 3).exists());
        let (first, last) = dirs.last().unwrap();
        let (log, mut w) = BodyLog::open(&dir, Some((*first, last)), 250).unwrap();
        assert!(
            !segment_path(&dir, 3).exists(),
            "unreferenced segment removed"
        );
        assert_eq!(fs::metadata(segment_path(&dir, 2)).unwrap().len(), 100);
        // Appends continue right after the last referenced body.
        let more = w.append(&bodies(7..8, 100), true).unwrap();
        assert_eq!((more[0].1.segment, more[0].1.offset), (2, 100));
        assert_eq!(read_back(&log, &more[0].1, Seq(7)), vec![7u8; 100]);
        assert_eq!(read_back(&log, &dirs[0].1, Seq(1)), vec![1u8; 100]);
    }

    #[test]
    fn a_segment_shorter_than_its_directory_is_corrupt_and_strangers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bodies");
        let (_, mut w) = BodyLog::open(&dir, None, 1 << 20).unwrap();
        let dirs = w.append(&bodies(1..3, 100), true).unwrap();
        drop(w);
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, 1))
            .unwrap();
        f.set_len(150).unwrap();
        let (first, d) = &dirs[0];
        let err = BodyLog::open(&dir, Some((*first, d)), 1 << 20)
            .err()
            .unwrap();
        assert!(err.to_string().contains("has 150 bytes"), "{err}");
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        let err = BodyLog::open(&dir, None, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("not a body segment"), "{err}");
    }
}
