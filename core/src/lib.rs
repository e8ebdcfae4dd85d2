//! cb-core: the pure, deterministic heart of cb.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod digest;
pub mod effect;
pub mod event;
pub mod ids;
pub mod record;
pub mod snapshot;

pub use config::{
    Callback, CallbackSpec, ConfigError, FieldSpec, FileCallback, Format, Header, Method,
    Projection, Target,
};
pub use digest::Digest;
pub use effect::{Attempt, Effect};
pub use event::{EventKind, EventSet, UnknownEvent};
pub use ids::{
    CallbackName, CallbackRef, DeliveryId, FileId, FileKey, IdError, MachineKey, ProjectId, Seq,
    Timestamp,
};
pub use record::{AttemptReport, Outcome, Record, RecordKind, Scope};
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotError};
