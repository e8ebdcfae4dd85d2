//! Effects: what the fold asks the outside world to do. The core never performs them; the
//! dispatcher does, and appends what happened as records.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Callback;
use crate::ids::{DeliveryId, MachineKey, Seq, Timestamp};

/// One thing to do, in imperative mood.
#[must_use = "an effect that is not performed is a delivery that never happens"]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Perform one attempt and append its [`crate::AttemptReport`].
    StartAttempt(Attempt),
    /// A receiver answered `410 Gone`: append a [`crate::RecordKind::CallbackDisabled`] so
    /// that the callback's machines stop, in this log and in every per-file fold of it.
    DisableCallback {
        /// The machine whose attempt got the 410.
        machine: MachineKey,
        /// The outcome record's sequence number.
        cause: Seq,
    },
    /// The earliest deadline changed: append a `Ticked` record at or after `at`.
    WakeAt {
        /// The new earliest deadline.
        at: Timestamp,
    },
}

/// One attempt to perform: the machine, the delivery, and the exact version to render.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// The machine.
    pub machine: MachineKey,
    /// The delivery (stable across its retries).
    pub delivery: DeliveryId,
    /// The attempt's number within the delivery, from 1.
    pub attempt: u32,
    /// The file version to render: the newest change appended before this decision
    /// ("latest wins").
    pub version: Seq,
    /// The logical start: the deadline that fired, or the redeliver record's time.
    pub started_at: Timestamp,
    /// True for an operator's redeliver (exempt from spacing and no-spam).
    pub redeliver: bool,
    /// The callback configuration in force at the decision; render with this.
    pub callback: Arc<Callback>,
}
