//! The one-time migration of a data dir written by cb before format 4 (records and their
//! index in sled, `DIR/log/`; bodies in `DIR/bodies/`) to the segment log.
//!
//! Every record is read back with its checksums (`legacy.rs`) and written, with its own
//! seq and time, into segments in `DIR/segments.migrating/`, which are synced; then that
//! directory is renamed to `DIR/segments` — the one step that switches the dir to format
//! 4 — and only then are the old files removed. A crash before the rename leaves the old
//! log as it was (the next open migrates again); after it, the next open finds the new log
//! and removes what is left of the old one. Checkpoints stay valid: a record's frame is the
//! same bytes in both formats, so their anchors still match.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cb_core::{Seq, Timestamp};

use crate::codec;
use crate::dir::{sync_dir, DataDir};
use crate::error::{Error, Result};
use crate::legacy::{self, LegacyLog};
use crate::seglog::{SegmentLog, SegmentWriter};
use crate::segment::{
    encode_body, GroupBuilder, SegmentHeader, SegmentKind, FORMAT_VERSION, RULES_VERSION,
    SEGMENT_HEADER_LEN,
};
use crate::storage::FsStorage;

/// A migration that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// The format the dir had.
    pub from_format: u32,
    /// Records moved.
    pub records: u64,
    /// How long it took.
    pub took: Duration,
}

/// Records per group the migration writes.
const GROUP: usize = 1024;

/// Migrates the data dir if it holds an older log; removes what a finished migration left.
pub(crate) fn run(dir: &DataDir, segment_bytes: u64, now: Timestamp) -> Result<Option<Migrated>> {
    let root = dir.path();
    let segments = dir.segments_path();
    let staging = root.join("segments.migrating");
    if segments.exists() {
        if legacy::present(root) {
            remove_legacy(root)?;
        }
        return Ok(None);
    }
    if !legacy::present(root) {
        return Ok(None);
    }
    let started = Instant::now();
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(Error::io(format!("removing {}", staging.display())))?;
    }
    let refuse = |format: u32, e: Error| Error::Migration {
        path: root.to_owned(),
        format,
        reason: e.to_string(),
    };
    // sled may panic on a damaged log (spacejam/sled#1387): that is a refusal too.
    let opened = std::panic::catch_unwind(|| LegacyLog::open(root)).unwrap_or_else(|_| {
        Err(Error::Corrupt {
            seq: Seq(0),
            reason: "sled panicked opening it".into(),
        })
    });
    let mut old = match opened {
        Ok(old) => old,
        Err(e @ Error::UnknownFormat { .. }) => return Err(e),
        Err(e) => return Err(refuse(3, e)),
    };
    let from_format = old.format;
    let copied = copy(&mut old, &staging, segment_bytes, now, &refuse);
    drop(old);
    let records = match copied {
        Ok(records) => records,
        Err(e) => {
            // Nothing of the old log changed; the half copy goes.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, &segments).map_err(Error::io(format!(
        "renaming {} to {}",
        staging.display(),
        segments.display()
    )))?;
    sync_dir(root)?;
    remove_legacy(root)?;
    Ok(Some(Migrated {
        from_format,
        records,
        took: started.elapsed(),
    }))
}

/// Writes every record of `old` into segments in `staging`, synced; returns how many.
fn copy(
    old: &mut LegacyLog,
    staging: &Path,
    segment_bytes: u64,
    now: Timestamp,
    refuse: &dyn Fn(u32, Error) -> Error,
) -> Result<u64> {
    let from_format = old.format;
    let storage: Arc<dyn crate::storage::Storage> = Arc::new(
        FsStorage::open(staging).map_err(Error::io(format!("creating {}", staging.display())))?,
    );
    let log = SegmentLog::open(storage.clone())?;
    let header = SegmentHeader {
        format: FORMAT_VERSION,
        rules: RULES_VERSION,
        id: 1,
        kind: SegmentKind::Live,
        first_seq: Seq(1),
        created: now,
    };
    log.create(header, segment_bytes, 0)?;
    let mut writer =
        SegmentWriter::resume(log.clone(), 1, SEGMENT_HEADER_LEN, segment_bytes, 0, 1)?;
    let mut group = GroupBuilder::default();
    let mut locs = Vec::new();
    let mut records = 0u64;
    // Every group claims the ones before it durable: true once the copy is synced, which
    // happens before anything reads it (a copy cut short is discarded whole).
    let mut written_through = Seq(0);
    // The time of the first record of the group being built: a segment is created as of
    // it, so that age-based retention sees how old the migrated records are.
    let mut group_at = now;
    let mut flush = |group: &mut GroupBuilder,
                     writer: &mut SegmentWriter,
                     through: &mut Seq,
                     at: Timestamp|
     -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let last = Seq(group.first_seq().expect("not empty").0 + group.len() as u64 - 1);
        if !writer.fits(group) {
            let (id, file) = writer.active();
            file.sync_data()
                .map_err(|e| crate::seglog::sync_error(id, e))?;
            writer.roll(group.first_seq().expect("not empty"), at, group.byte_len())?;
        }
        locs.clear();
        writer.write(group, *through, &mut locs)?;
        *through = last;
        Ok(())
    };
    // sled may panic on a damaged log while it is read, not only when it is opened.
    let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        old.for_each(|record, body| {
            let frame = codec::encode_record(&record);
            let payload = body.as_ref().map(encode_body);
            if group.is_empty() {
                group_at = record.at;
            }
            group.push(record.seq, &frame, payload.as_deref());
            records += 1;
            if group.len() >= GROUP {
                flush(&mut group, &mut writer, &mut written_through, group_at)?;
            }
            Ok(())
        })
    }))
    .unwrap_or_else(|_| {
        Err(Error::Corrupt {
            seq: Seq(0),
            reason: "sled panicked reading it".into(),
        })
    });
    copied.map_err(|e| refuse(from_format, e))?;
    flush(&mut group, &mut writer, &mut written_through, group_at)?;
    let (id, file) = writer.active();
    file.sync_data()
        .map_err(|e| crate::seglog::sync_error(id, e))?;
    storage
        .sync_dir()
        .map_err(Error::io("syncing the migrated segments"))?;
    Ok(records)
}

fn remove_legacy(root: &Path) -> Result<()> {
    for sub in ["log", "bodies"] {
        let path = root.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(Error::io(format!("removing the old {}", path.display())))?;
        }
    }
    sync_dir(root)
}
