//! The log's base: where its kept history begins once retention removed older segments.
//!
//! Retention (`retention.rs`) removes whole segments once a checkpoint covers them; that
//! checkpoint is the **base**: `cbctl replay` starts from its state, and the latest change
//! of every file the log still knows is kept in a *kept segment* so that every file's
//! current state is still served, redeliverable and rewindable. The manifest ties the three
//! together, and switching to a new base is one atomic rename of it:
//!
//! ```text
//! DIR/segments/BASE            "CBBASE01" seq:u64 at:u64 kept_segment:u32 checkpoint_len:u64
//!                              anchor:u32 archive_len:u16 archive (UTF-8) crc:u32
//!                              (crc of the bytes before it; archive: where retention wrote
//!                              the removed history, empty if nowhere)
//! DIR/segments/base-<seq>.cp   the core's state at the base (a checkpoint frame)
//! DIR/segments/NNNNNNNN.seg    the kept segment (kind Kept) the manifest names
//! ```

use std::io;
use std::sync::Arc;

use cb_core::{Checkpoint, Seq, Timestamp};

use crate::codec;
use crate::error::{Error, Result};
use crate::storage::Storage;

const MAGIC: &[u8; 8] = b"CBBASE01";
const MANIFEST: &str = "BASE";
/// The fixed part, before the archive path.
const FIXED: usize = 8 + 8 + 8 + 4 + 8 + 4;

/// True for the names the base keeps beside the segments.
pub(crate) fn is_manifest_name(name: &str) -> bool {
    name == MANIFEST || (name.starts_with("base-") && name.ends_with(".cp"))
}

pub(crate) fn checkpoint_name(seq: Seq) -> String {
    format!("base-{:020}.cp", seq.0)
}

/// The log's base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The last seq the base covers: records after it are all in live segments.
    pub seq: Seq,
    /// The time of record `seq`.
    pub at: Timestamp,
    /// The kept segment.
    pub kept_segment: u32,
    /// The base checkpoint's size.
    pub(crate) checkpoint_len: u64,
    /// The CRC of the base checkpoint's frame.
    pub(crate) anchor: u32,
    /// Where the history before the base was archived, if anywhere (`--archive-dir`).
    pub archive: Option<std::path::PathBuf>,
}

impl Base {
    fn encode(&self) -> Vec<u8> {
        let archive = self
            .archive
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let archive = &archive.as_bytes()[..archive.len().min(u16::MAX as usize)];
        let mut b = Vec::with_capacity(FIXED + 2 + archive.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.seq.0.to_le_bytes());
        b.extend_from_slice(&self.at.0.to_le_bytes());
        b.extend_from_slice(&self.kept_segment.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_len.to_le_bytes());
        b.extend_from_slice(&self.anchor.to_le_bytes());
        b.extend_from_slice(&(archive.len() as u16).to_le_bytes());
        b.extend_from_slice(archive);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> std::result::Result<Base, String> {
        if b.len() < FIXED + 2 + 4 || &b[0..8] != MAGIC {
            return Err(format!("{} bytes, not a base manifest", b.len()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err("it fails its checksum".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let archive_len = u16::from_le_bytes(b[FIXED..FIXED + 2].try_into().expect("2")) as usize;
        let archive = body
            .get(FIXED + 2..)
            .filter(|a| a.len() == archive_len)
            .ok_or("its archive path has the wrong length")?;
        let archive = std::str::from_utf8(archive).map_err(|e| format!("its archive path: {e}"))?;
        Ok(Base {
            seq: Seq(u64_at(8)),
            at: Timestamp(u64_at(16)),
            kept_segment: u32::from_le_bytes(b[24..28].try_into().expect("4")),
            checkpoint_len: u64_at(28),
            anchor: u32::from_le_bytes(b[36..40].try_into().expect("4")),
            archive: (!archive.is_empty()).then(|| archive.into()),
        })
    }

    /// The base named by the manifest in `storage`, if there is one.
    pub(crate) fn load(storage: &Arc<dyn Storage>) -> Result<Option<Base>> {
        let file = match storage.open(MANIFEST) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening the base manifest")(e)),
        };
        let len = file.len().map_err(Error::io("reading the base manifest"))?;
        let mut buf = vec![0u8; len.min(1 << 17) as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(Error::io("reading the base manifest"))?;
        Base::decode(&buf)
            .map(Some)
            .map_err(|reason| Error::Corrupt {
                seq: Seq(0),
                reason: format!("the base manifest {}/BASE: {reason}", storage.describe()),
            })
    }

    /// Writes `checkpoint` as this base's checkpoint, then the manifest naming it (each
    /// synced, then the directory): the switch to this base is the manifest's rename.
    pub(crate) fn commit(
        storage: &Arc<dyn Storage>,
        seq: Seq,
        at: Timestamp,
        kept_segment: u32,
        checkpoint: &Checkpoint,
        archive: Option<std::path::PathBuf>,
    ) -> Result<Base> {
        let frame = codec::encode_value(checkpoint);
        let base = Base {
            seq,
            at,
            kept_segment,
            checkpoint_len: frame.len() as u64,
            anchor: codec::frame_crc(&frame).expect("a frame has a CRC"),
            archive,
        };
        write_whole(storage, &checkpoint_name(seq), &frame)?;
        write_whole(storage, MANIFEST, &base.encode())?;
        Ok(base)
    }

    /// The core's state at the base.
    pub(crate) fn checkpoint(&self, storage: &Arc<dyn Storage>) -> Result<Checkpoint> {
        let name = checkpoint_name(self.seq);
        let damaged = |reason: String| Error::Corrupt {
            seq: self.seq,
            reason: format!("the base checkpoint {name}: {reason}"),
        };
        let file = storage
            .open(&name)
            .map_err(|e| damaged(format!("cannot be opened: {e}")))?;
        let mut frame = vec![0u8; self.checkpoint_len as usize];
        file.read_exact_at(&mut frame, 0)
            .map_err(|e| damaged(format!("cannot be read: {e}")))?;
        if codec::frame_crc(&frame) != Some(self.anchor) {
            return Err(damaged("it is not the one the manifest names".into()));
        }
        let cp: Checkpoint = codec::decode_value(&frame).map_err(damaged)?;
        if cp.last_seq != Some(self.seq) {
            return Err(damaged(format!("it holds the state at {:?}", cp.last_seq)));
        }
        Ok(cp)
    }
}

/// Writes `bytes` as file `name`: to a temporary name, synced, renamed into place, the
/// directory synced — so a crash leaves the old file or the new one, never a torn one.
pub(crate) fn write_whole(storage: &Arc<dyn Storage>, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!("{name}.tmp");
    let written = (|| -> io::Result<()> {
        let f = storage.create(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.sync_data()?;
        storage.rename(&tmp, name)?;
        storage.sync_dir()
    })();
    written.map_err(|e| {
        let _ = storage.remove(&tmp);
        if crate::storage::is_disk_full(&e) {
            Error::DiskFull {
                context: format!("writing {name}: {e}"),
            }
        } else {
            Error::io(format!("writing {name} in {}", storage.describe()))(e)
        }
    })
}
