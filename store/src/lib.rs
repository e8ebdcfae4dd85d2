//! cb-store: cb's durable event log — the single source of truth.
//!
//! Every input of the core is appended here as a [`Record`](cb_core::Record), numbered and
//! timestamped by the store, and made durable before anyone is told it exists
//! ([`Store::append`] says exactly what that means). The log is cb's own: append-only
//! segment files of CRC-framed records and snapshot bodies (`segment.rs`, `seglog.rs`),
//! written by a group commit that shares one `fdatasync` among many appenders
//! (`commit.rs`). Folding the log ([`Store::records`]) reads records and skips bodies;
//! rendering reads one body with [`Store::snapshot`].
//!
//! sled holds only what can be derived from the segments — where each record lies, which
//! records concern one file or one project (`index.rs`) — and is off the durability path:
//! it is caught up or rebuilt from the segments whenever it is behind, missing, damaged or
//! unwilling to open (`recover.rs`). Restarting folds only the tail after the newest valid
//! checkpoint ([`Store::restore`], [`CheckpointWriter`]); retention removes whole segments
//! past a horizon once a checkpoint (the log's [`Base`]) covers them (`retention.rs`). The
//! log leaves the store as NDJSON ([`Store::export`], [`Store::import`], [`ndjson::Line`]).
//!
//! All file I/O that decides durability goes through the [`Storage`] seam, so the same code
//! runs on the real file system and on [`sim::SimDisk`], which simulates power loss.
//!
//! Layout on disk: see [`DataDir`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attempts;
mod base;
mod checkpoint;
mod codec;
mod commit;
mod common_records;
mod dir;
mod error;
mod index;
mod legacy;
mod log;
mod migrate;
pub mod ndjson;
mod recover;
mod retention;
mod seglog;
mod segment;
pub mod sim;
pub mod storage;
pub mod synthetic;
mod watch;

pub use attempts::{AttemptPage, AttemptQuery, AttemptsOf};
pub use base::Base;
pub use checkpoint::{CheckpointFile, CheckpointWriter, Damaged, Restored, KEEP};
pub use codec::IndexTag;
pub use commit::Health;
pub use dir::DataDir;
pub use error::{Error, Result};
pub use index::SEGMENT_SPAN;
pub use log::{
    wall_clock, Appended, Change, CommitHook, DiskUsage, Durability, Input, LogStorage,
    SnapshotReader, Store, StoreOptions,
};
pub use migrate::Migrated;
pub use recover::{CutTail, Rebuilt, Recovery};
pub use retention::{Advanced, Retention};
pub use segment::{FORMAT_VERSION, MAX_SEGMENT_BYTES, OLDEST_FORMAT_VERSION, RULES_VERSION};
pub use storage::{FsStorage, Storage, StorageFile};
pub use watch::{IndexFaults, SledFault};

/// The default space of one log segment: the unit in which the log grows and in which
/// retention removes it.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
