//! The data dir: its layout, its lock, and the fsyncs that make new directory entries
//! durable.
//!
//! ```text
//! DIR/
//!   LOCK           held (flock, exclusive) by the process that owns the dir; holds its pid
//!   segments/      the log: append-only segment files, the truth (`seglog.rs`), and the
//!                  base once retention has removed old segments (`base.rs`)
//!   index-N/       sled: what can be derived from the segments, rebuilt when it cannot be
//!                  used (`index.rs`)
//!   checkpoints/   the core's state at some sequence numbers (see `checkpoint.rs`)
//! ```
//! A dir written before format 4 has `log/` (sled) and `bodies/` instead of `segments/`;
//! it is migrated at its first open (`migrate.rs`).
//!
//! The lock is taken with a non-blocking `flock`, so a second `cbd` or a `cbctl` pointed at
//! a running daemon's dir fails at once with [`Error::Locked`] instead of hanging; the kernel
//! drops the lock when its holder dies, SIGKILL included, so there is no stale-lock cleanup.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An open, locked data dir.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    // Invariant: held for the whole life of this value; dropping it releases the dir.
    _lock: File,
}

impl DataDir {
    /// Creates the dir if needed and takes its lock.
    pub fn open(path: &Path) -> Result<DataDir> {
        let not_writable = |source| Error::NotWritable {
            path: path.to_owned(),
            source,
        };
        let created = !path.exists();
        // Owner only: the log holds callbacks' signing secrets and customers' data.
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path).map_err(not_writable)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join("LOCK"))
            .map_err(not_writable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held_by = String::new();
                let _ = lock.read_to_string(&mut held_by);
                return Err(Error::Locked {
                    path: path.to_owned(),
                    pid: held_by.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!(
                    "locking {}",
                    path.join("LOCK").display()
                ))(e))
            }
        }
        // The pid is for the operator reading the error above; it is never trusted. Written
        // over the old one in place, padded to one size: on a full disk the file's block is
        // reused instead of freed and asked for again.
        let pid = format!("{:<20}\n", std::process::id());
        let pid_written = if lock.metadata().map(|m| m.len()).unwrap_or(0) == pid.len() as u64 {
            std::os::unix::fs::FileExt::write_all_at(&lock, pid.as_bytes(), 0)
        } else {
            lock.set_len(0)
                .and_then(|()| lock.rewind())
                .and_then(|()| lock.write_all(pid.as_bytes()))
        };
        pid_written.map_err(not_writable)?;
        fs::create_dir_all(path.join("checkpoints")).map_err(not_writable)?;
        let dir = DataDir {
            path: path.to_owned(),
            _lock: lock,
        };
        if created {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        sync_dir(path)?;
        Ok(dir)
    }

    /// True if `path` holds a cb log: its segments, or the sled log of a format before 4
    /// (which an open migrates).
    pub fn holds_log(path: &Path) -> bool {
        path.join("segments").is_dir() || crate::legacy::present(path)
    }

    /// The dir itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's segment files.
    pub fn segments_path(&self) -> PathBuf {
        self.path.join("segments")
    }

    /// Where checkpoints are written.
    pub fn checkpoints_path(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
}

/// Makes a directory's entries (files created or renamed in it) durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing directory {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_at_once_naming_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap();
        let t0 = std::time::Instant::now();
        let err = DataDir::open(tmp.path()).unwrap_err();
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        match &err {
            Error::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other}"),
        }
        assert!(err.to_string().contains("is cbd running?"), "{err}");
        drop(first);
        DataDir::open(tmp.path()).expect("released on drop");
    }

    #[test]
    fn a_path_under_a_file_is_not_writable() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = DataDir::open(&file.join("data")).unwrap_err();
        assert!(matches!(err, Error::NotWritable { .. }), "{err}");
    }
}
