//! cb-store: cb's durable event log on sled — the single source of truth.
//!
//! Every input of the core is appended here as a [`Record`](cb_core::Record), numbered and
//! timestamped by the store, and made durable before anyone is told it exists
//! ([`Store::append`] says exactly what that means). Many appenders share one flush (group
//! commit, `commit.rs`). Changes keep their snapshot body apart from the record, in
//! append-only segment files that sled points into (`bodies.rs`), so folding the log
//! ([`Store::records`]) never reads a body; rendering reads one with
//! [`Store::snapshot`]. A per-file index (`index.rs`) finds one file's records without a
//! scan ([`Store::file_records`]), for `cbctl history` and `rewind`.
//!
//! Restarting folds only the tail after the newest valid checkpoint ([`Store::restore`],
//! [`CheckpointWriter`]). The log leaves the store as NDJSON ([`Store::export`],
//! [`Store::import`], [`ndjson::Line`]).
//!
//! Layout on disk: see [`DataDir`] for the directory and `codec.rs` for the keys.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bodies;
mod checkpoint;
mod codec;
mod commit;
mod common_records;
mod dir;
mod error;
mod index;
mod log;
pub mod ndjson;
pub mod synthetic;

pub use bodies::SEGMENT_BYTES;
pub use checkpoint::{CheckpointFile, CheckpointWriter, Damaged, Restored, KEEP};
pub use codec::{IndexTag, FORMAT_VERSION};
pub use dir::DataDir;
pub use error::{Error, Result};
pub use index::SEGMENT_SPAN;
pub use log::{
    wall_clock, Appended, Change, CommitHook, Durability, Input, SnapshotReader, Store,
    StoreOptions,
};
