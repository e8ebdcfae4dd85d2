//! cb-core: the pure, deterministic heart of cb — log records in, effects out.
//!
//! Every change of a media file, every configuration change, every clock tick that fires a
//! deadline and every attempt's outcome is a [`Record`] in cb's log. [`Core::apply`] folds
//! records, in log order, into one delivery state machine per (file, callback)
//! ([`Machine`]: `coalescing`, `pending`, `sent`, `retrying`, `abandoned`) and pushes the
//! [`Effect`]s the rules of SPEC §4 call for. The core performs none of them.
//!
//! # Driving contract
//! A driver (the dispatcher, `cbctl replay`, a test) owns a `Core` and:
//! 1. appends each input to the log, stamping `seq` (dense, increasing) and `at` (wall clock,
//!    never decreasing), and calls [`Core::apply`] with it, in log order;
//! 2. performs every [`Effect::StartAttempt`] — rendering the named version of the file with
//!    [`render::render()`](fn@render::render) and the attempt's callback — and appends an
//!    [`RecordKind::AttemptFinished`] with the outcome;
//! 3. appends a [`RecordKind::CallbackDisabled`] for every [`Effect::DisableCallback`];
//! 4. appends a [`RecordKind::Ticked`] once the wall clock reaches [`Core::next_deadline`]
//!    (announced by [`Effect::WakeAt`]);
//! 5. after a restart, performs [`Core::in_flight`] again (their outcomes were never logged)
//!    and appends the disables of [`Core::owed_disables`].
//!
//! Between a 410's outcome and its `CallbackDisabled` record other machines of that callback
//! keep working; the driver closes that gap by appending the disable at once.
//!
//! Folding the same records always yields the same effects and the same [`Checkpoint`],
//! byte for byte: the core has no I/O, no clock, no randomness, no threads and no async, and
//! it never lets a hash map's order reach an output.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod digest;
pub mod effect;
pub mod event;
pub mod fold;
pub mod history;
pub mod ids;
pub mod ingest;
pub mod lists;
pub mod machine;
pub mod record;
pub mod render;
pub mod signing;
pub mod snapshot;
mod timers;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: how
/// cb echoes client input or a receiver's answer in an error, whatever its length.
pub fn clipped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub use config::{
    Callback, CallbackSpec, ConfigError, FieldSpec, FileCallback, Format, Header, Method,
    Projection, Secrets, Target, ValueKind,
};
pub use digest::Digest;
pub use effect::{Attempt, Effect};
pub use event::{EventKind, EventSet, UnknownEvent};
pub use fold::{
    Census, Checkpoint, CheckpointBeforePauses, Core, Disposition, FileEntry, Ignored, Machines,
    PassedOver, Rules, RULES_VERSION,
};
pub use history::{Cause, FileHistory, FileStart, Step};
pub use ids::{
    CallbackName, CallbackRef, DeliveryId, FileId, FileKey, IdError, MachineKey, ProjectId, Seq,
    Timestamp,
};
pub use lists::{Deliveries, DeliveryQuery, ListKey};
pub use machine::{InFlight, Machine, State, StateName};
pub use record::{AttemptReport, Outcome, OutcomeClass, Record, RecordKind, Scope};
pub use render::{render, Placement, Rendered};
pub use signing::{SecretError, SigningSecret};
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotError, SnapshotView};
