//! Retention: removing whole segments past the horizon once a checkpoint covers them, and
//! keeping the latest change of every file the log still knows.

use crate::base::{self, Base};
use crate::error::{Error, Result};
use crate::seglog::SegmentLog;
use crate::segment::SegmentKind;

/// Removes what an interrupted switch to `base` left: kept segments and base checkpoints
/// the manifest does not name, and live segments whose records are all at or before the
/// base.
pub(crate) fn remove_leftovers(log: &SegmentLog, base: &Base) -> Result<()> {
    let storage = log.storage().clone();
    let mut removed = false;
    let live = log.live();
    for (i, (id, _)) in live.iter().enumerate() {
        // A live segment ends where the next begins; the newest is never removed here.
        let Some((_, next)) = live.get(i + 1) else {
            break;
        };
        if next.header.first_seq.0 <= base.seq.0 + 1 {
            log.remove(*id)?;
            removed = true;
        }
    }
    for (id, s) in log.segments() {
        if s.header.kind == SegmentKind::Kept && id != base.kept_segment {
            log.remove(id)?;
            removed = true;
        }
    }
    let keep = base::checkpoint_name(base.seq);
    for name in storage.list().map_err(Error::io("listing the segments"))? {
        if name.starts_with("base-") && name.ends_with(".cp") && name != keep {
            storage
                .remove(&name)
                .map_err(Error::io(format!("removing {name}")))?;
            removed = true;
        }
    }
    if removed {
        storage
            .sync_dir()
            .map_err(Error::io("syncing the segments directory"))?;
    }
    Ok(())
}
