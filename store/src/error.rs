//! The store's errors: what can go wrong opening, appending to and reading a data dir.
//!
//! Fatal conditions (the disk refused a write, the log is damaged) are kept apart from input
//! the store refuses (an import line out of sequence), so callers can tell "stop the daemon"
//! from "answer 4xx".

use std::io;
use std::path::PathBuf;

use cb_core::Seq;

/// Everything the store can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data dir cannot be created or written.
    #[error("data dir {path} is not writable: {source}")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Another process holds the data dir's lock.
    #[error("data dir {path} is locked by another process{} — is cbd running?", pid_note(*.pid))]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The holder's process id, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// The data dir was written by a format this build does not read.
    #[error("data dir {path} has log format {found}, this build reads format {supported}")]
    UnknownFormat {
        /// The directory.
        path: PathBuf,
        /// The format found, as stored (or a description when unreadable).
        found: String,
        /// The format this build reads and writes.
        supported: u32,
    },
    /// A data dir of an older format could not be migrated; the old log is left as it was.
    #[error(
        "data dir {path} holds a log of format {format} that could not be migrated ({reason}); \
         it is untouched. With the cb build that wrote it, run `cbctl --data-dir {path} export \
         > log.ndjson`, then with this one `cbctl --data-dir NEW_DIR import log.ndjson` and start \
         cbd on NEW_DIR"
    )]
    Migration {
        /// The directory.
        path: PathBuf,
        /// The format found.
        format: u32,
        /// What went wrong.
        reason: String,
    },
    /// A record of the log cannot be decoded or fails its checksum.
    #[error("log record {seq} is corrupt: {reason}")]
    Corrupt {
        /// The record's sequence number.
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },
    /// The log does not hold a record that its own index or a caller says exists.
    #[error("log record {seq} is missing")]
    Missing {
        /// The sequence number looked up.
        seq: Seq,
    },
    /// The disk has no room for the append: nothing of it was appended. Appends are tried
    /// again as they come, so the store takes them once space is freed.
    #[error("disk full: {context}")]
    DiskFull {
        /// What could not be written, and what the OS said.
        context: String,
    },
    /// The index (sled) cannot answer: it failed and is being rebuilt from the log.
    #[error("the log's index is unavailable ({0}); it is rebuilt from the log")]
    IndexUnavailable(String),
    /// Input the store refuses; nothing was appended for it.
    #[error("{0}")]
    Rejected(String),
    /// The store cannot take appends at all (a thread it needs is gone).
    #[error("the store stopped accepting appends: {0}")]
    Poisoned(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// sled reported an error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What the OS said.
        source: io::Error,
    },
}

fn pid_note(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
