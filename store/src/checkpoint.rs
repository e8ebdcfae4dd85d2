//! Checkpoints: the core's state at a sequence number, so that a restart folds only the tail.
//!
//! A checkpoint is a file `checkpoints/<seq, 20 digits>.cp`, written beside the log rather
//! than into it (a many-megabyte value would churn sled's segments for nothing):
//!
//! ```text
//! "CBCHECKP"  8 bytes, magic
//! format      u32 LE, the log format (codec::FORMAT_VERSION)
//! seq         u64 LE, the last record folded into it
//! anchor      u32 LE, the CRC-32 stored in that record's frame in the log
//! length      u64 LE, the frame's length (so a truncated file says so)
//! frame       CRC-32 + bincode of cb_core::Checkpoint (codec.rs)
//! ```
//!
//! `format` is the log format the checkpoint was taken under: 3 and 4 hold the same
//! encoding of the core's state (format 4 changed only where records live), so both load.
//!
//! It is written to a temporary name, `fsync`ed, renamed into place and the directory
//! `fsync`ed, so a crash mid-write leaves either the old set or the new file, never a torn
//! `.cp`. The anchor ties a checkpoint to the log it was taken from: one left over from
//! another log (an import into a reused dir) fails the check instead of restoring a wrong
//! state. Restoring tries the newest checkpoint first; any that fails a check is reported
//! as [`Damaged`] and the next older is tried, down to a full fold from the first record.

use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use cb_core::{Checkpoint, Core, Seq};

use crate::base::write_whole;
use crate::codec;
use crate::error::{Error, Result};
use crate::log::Store;
use crate::segment::FORMAT_VERSION;

const MAGIC: &[u8; 8] = b"CBCHECKP";
const HEADER_LEN: usize = 8 + 4 + 8 + 4 + 8;
/// How many checkpoints are kept: the newest plus fallbacks should it turn out damaged.
pub const KEEP: usize = 3;

/// A checkpoint on disk.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckpointFile {
    /// The last record folded into it.
    pub seq: Seq,
    /// Its file name in the checkpoints directory.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// A checkpoint that could not be used, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Damaged {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The result of [`Store::restore`].
pub struct Restored {
    /// The core, having folded every durable record.
    pub core: Core,
    /// The checkpoint it started from, or `None` for a fold from the first record.
    pub checkpoint: Option<Seq>,
    /// Newer checkpoints that were skipped: report each as a warning.
    pub damaged: Vec<Damaged>,
    /// Records folded after the checkpoint.
    pub tail_records: u64,
}

impl Store {
    /// Writes `checkpoint` durably and deletes all but the newest [`KEEP`]. It must describe
    /// a prefix of this log: its last record must be durable here. Blocking; call it off
    /// the thread that drives the core (see [`CheckpointWriter`]).
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<CheckpointFile> {
        let seq = checkpoint
            .last_seq
            .ok_or_else(|| Error::Rejected("a checkpoint of an empty log is not kept".into()))?;
        let anchor = self.anchor(seq)?.ok_or_else(|| {
            Error::Rejected(format!(
                "checkpoint at {seq}: that record is not durable in this log"
            ))
        })?;
        let frame = codec::encode_value(checkpoint);
        let mut bytes = Vec::with_capacity(HEADER_LEN + frame.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&seq.0.to_le_bytes());
        bytes.extend_from_slice(&anchor.to_le_bytes());
        bytes.extend_from_slice(&(frame.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&frame);

        let storage = &self.shared.checkpoints;
        let name = format!("{:020}.cp", seq.0);
        write_whole(storage, &name, &bytes)?;

        // Keep the newest KEEP up to this one; one numbered past the durable log cannot be
        // valid (left from another log) and must not push this one out.
        let tip = self.last_seq().unwrap_or(Seq(0));
        let files = self.checkpoints()?;
        let (stale, current): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| f.seq > tip);
        for old in stale.iter().chain(current.iter().skip(KEEP)) {
            storage
                .remove(&old.name)
                .map_err(Error::io(format!("removing {}", old.path.display())))?;
        }
        Ok(CheckpointFile {
            seq,
            path: self.checkpoint_path(&name),
            name,
            bytes: bytes.len() as u64,
        })
    }

    fn checkpoint_path(&self, name: &str) -> PathBuf {
        PathBuf::from(self.shared.checkpoints.describe()).join(name)
    }

    /// The checkpoints on disk, newest first (names only; contents are checked on restore).
    /// Leftover temporary files of an interrupted write are removed.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointFile>> {
        let storage = &self.shared.checkpoints;
        let listing = Error::io(format!("listing {}", storage.describe()));
        let mut found = Vec::new();
        for name in storage.list().map_err(listing)? {
            if name.starts_with('.') && name.ends_with(".tmp") || name.ends_with(".cp.tmp") {
                let _ = storage.remove(&name);
                continue;
            }
            let Some(seq) = name.strip_suffix(".cp").and_then(|s| s.parse().ok()) else {
                continue;
            };
            let bytes = storage.open(&name).and_then(|f| f.len()).unwrap_or(0);
            found.push(CheckpointFile {
                seq: Seq(seq),
                path: self.checkpoint_path(&name),
                name,
                bytes,
            });
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.seq));
        Ok(found)
    }

    /// Rebuilds the core: the newest valid checkpoint, then a fold of every durable record
    /// after it. Falls back to older checkpoints, then to a full fold; never restores from a
    /// checkpoint that fails a check. Fails only if the log itself cannot be read.
    pub fn restore(&self) -> Result<Restored> {
        let mut damaged = Vec::new();
        let mut start = None;
        let first = self.first_seq();
        for file in self.checkpoints()? {
            if file.seq < first {
                // Older than the base: the base is newer (and is where the log starts).
                continue;
            }
            match self.load_checkpoint(&file) {
                Ok(cp) => {
                    start = Some((file.seq, cp));
                    break;
                }
                Err(reason) => damaged.push(Damaged {
                    path: file.path,
                    reason,
                }),
            }
        }
        let (checkpoint, mut core, from) = match start {
            Some((seq, cp)) => (Some(seq), Core::from_checkpoint(cp), Seq(seq.0 + 1)),
            None => match self.base() {
                Some(base) => (
                    Some(base.seq),
                    Core::from_checkpoint(base.checkpoint(&self.shared.log.storage().clone())?),
                    Seq(base.seq.0 + 1),
                ),
                None => (None, Core::new(), Seq(1)),
            },
        };
        core.set_rules(self.rules());
        let mut effects = Vec::new();
        let mut tail_records = 0;
        for record in self.records(from) {
            core.apply(&record?, &mut effects);
            effects.clear();
            tail_records += 1;
        }
        Ok(Restored {
            core,
            checkpoint,
            damaged,
            tail_records,
        })
    }

    /// Reads and checks one checkpoint.
    pub fn load_checkpoint(&self, file: &CheckpointFile) -> Result<Checkpoint, String> {
        let bytes = read_all(&*self.shared.checkpoints, &file.name)
            .map_err(|e| format!("unreadable: {e}"))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(format!(
                "not a checkpoint ({} bytes, no CBCHECKP header)",
                bytes.len()
            ));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let format = word(8);
        if !(3..=FORMAT_VERSION).contains(&format) {
            return Err(format!(
                "log format {format}, this build reads {FORMAT_VERSION}"
            ));
        }
        let seq = Seq(u64::from_le_bytes(
            bytes[12..20].try_into().expect("8 bytes"),
        ));
        if seq != file.seq {
            return Err(format!("named {} but holds {seq}", file.seq));
        }
        match self.anchor(seq) {
            Ok(Some(anchor)) if anchor == word(20) => {}
            Ok(Some(_)) => {
                return Err(format!(
                    "taken from another log: record {seq} here is not the one it folded"
                ))
            }
            Ok(None) => return Err(format!("the log has no durable record {seq}")),
            Err(e) => return Err(format!("cannot read record {seq}: {e}")),
        }
        let length = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
        let frame = &bytes[HEADER_LEN..];
        if frame.len() as u64 != length {
            return Err(format!(
                "truncated or padded: {} bytes of state where the header says {length}",
                frame.len()
            ));
        }
        // A checkpoint written before rule 8 (pause) has no `paused` list: it is that state
        // with nothing paused.
        let cp: Checkpoint = codec::decode_value(frame).or_else(|e| {
            codec::decode_value::<cb_core::CheckpointBeforePauses>(frame)
                .map(Checkpoint::from)
                .map_err(|_| e)
        })?;
        if cp.last_seq != Some(seq) {
            return Err(format!("says it folded up to {:?}, not {seq}", cp.last_seq));
        }
        Ok(cp)
    }

    /// The CRC-32 in the frame of durable record `seq`: it differs between two logs whose
    /// record `seq` differs.
    fn anchor(&self, seq: Seq) -> Result<Option<u32>> {
        Ok(self
            .record_frame(seq)?
            .and_then(|frame| codec::frame_crc(&frame)))
    }
}

fn read_all(storage: &dyn crate::storage::Storage, name: &str) -> std::io::Result<Vec<u8>> {
    let file = storage.open(name)?;
    let mut bytes = vec![0u8; file.len()? as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Writes checkpoints on a background thread, one at a time: the driver offers one now and
/// then and goes on folding; an offer while the previous one is still being written is
/// declined (the next offer will be newer anyway).
pub struct CheckpointWriter {
    queue: Option<SyncSender<Checkpoint>>,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointWriter {
    /// Starts the writer; `report` is called on its thread with each outcome.
    pub fn spawn(
        store: Store,
        mut report: impl FnMut(Result<CheckpointFile>) + Send + 'static,
    ) -> Result<CheckpointWriter> {
        let (queue, inbox) = mpsc::sync_channel::<Checkpoint>(0);
        let thread = std::thread::Builder::new()
            .name("cb-store-checkpoint".into())
            .spawn(move || {
                for cp in inbox {
                    report(store.write_checkpoint(&cp));
                }
            })
            .map_err(Error::io("starting the checkpoint thread"))?;
        Ok(CheckpointWriter {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands `checkpoint` to the writer if it is idle; returns whether it was taken.
    pub fn offer(&self, checkpoint: Checkpoint) -> bool {
        match self
            .queue
            .as_ref()
            .expect("lives until drop")
            .try_send(checkpoint)
        {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Drop for CheckpointWriter {
    /// Waits for a checkpoint being written to finish.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use cb_core::{CheckpointBeforePauses, RecordKind, Timestamp};

    use super::*;
    use crate::{Input, StoreOptions};

    /// A checkpoint written before rule 8 (no `paused` list) still loads, with nothing
    /// paused: upgrading cb does not cost a fold from the first record.
    #[test]
    fn a_checkpoint_written_before_pauses_loads_with_nothing_paused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .append(vec![Input::Record(RecordKind::Ticked)])
            .unwrap();
        let old = CheckpointBeforePauses {
            now: Timestamp(5),
            last_seq: Some(Seq(1)),
            ignored: 0,
            projects: Vec::new(),
            files: Vec::new(),
            owed_disables: Vec::new(),
        };
        let current = Checkpoint::from(old.clone());
        let file = store.write_checkpoint(&current).unwrap();
        assert_eq!(store.load_checkpoint(&file), Ok(current.clone()));
        // The same state in the shape earlier builds wrote.
        let frame = codec::encode_value(&old);
        let mut bytes = std::fs::read(&file.path).unwrap();
        bytes.truncate(HEADER_LEN);
        bytes[24..32].copy_from_slice(&(frame.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&frame);
        std::fs::write(&file.path, bytes).unwrap();
        assert_eq!(store.load_checkpoint(&file), Ok(current));
    }
}
