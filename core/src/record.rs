//! The log record: every input of the core, in the past tense, stamped with its sequence
//! number and the wall-clock time of its append.
//!
//! Serde derives here are the log's binary form (bincode 2 is not self-describing): enums are
//! externally tagged and no field is ever skipped. The human-readable interchange (NDJSON)
//! is a documented shape of its own, built by the store.
//!
//! A change record names the file and the event but not the snapshot body: the fold decides
//! *when* and *which version* to deliver, never *what the bytes are*, so it does not need the
//! 1.5 KB body. The store keeps the body beside the record (see `cb-store`), and rendering
//! ([`render`](mod@crate::render)) reads it only when a payload is actually built.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Callback, FileCallback};
use crate::digest::Digest;
use crate::event::EventKind;
use crate::ids::{
    CallbackName, CallbackRef, DeliveryId, FileKey, MachineKey, ProjectId, Seq, Timestamp,
};

/// One entry of the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log. Invariant: strictly increasing along any log the core folds.
    pub seq: Seq,
    /// When it was appended. Invariant: never less than the previous record's.
    pub at: Timestamp,
    /// What happened.
    pub kind: RecordKind,
}

/// What a record says happened.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A file changed; its snapshot (stored beside the record) is the file's new full state,
    /// and this record's `seq` is the file's new version.
    ChangeAppended {
        /// The file.
        file: FileKey,
        /// What happened.
        event: EventKind,
        /// Per-file callbacks given with the change: `Some` replaces the file's set (an empty
        /// list removes them all), `None` keeps it.
        callbacks: Option<Arc<[FileCallback]>>,
    },
    /// A project callback was created or replaced (and, if disabled, enabled again).
    CallbackPut {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
        /// The new configuration.
        callback: Arc<Callback>,
    },
    /// A project callback was removed; its machines are dropped.
    CallbackRemoved {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// A callback was disabled because its receiver answered `410 Gone` (rule 4). Appended by
    /// the dispatcher in response to [`crate::Effect::DisableCallback`]; for a project
    /// callback it stops the machines of every file, for a per-file callback that file's.
    CallbackDisabled {
        /// The machine whose attempt got the 410.
        machine: MachineKey,
        /// The sequence number of that attempt's outcome record.
        cause: Seq,
    },
    /// Time passed; deadlines up to `at` fire. Carries nothing else.
    Ticked,
    /// An attempt ended.
    AttemptFinished(AttemptReport),
    /// An operator asked to deliver a file again (rule 6).
    RedeliverRequested {
        /// The file.
        file: FileKey,
        /// One callback, or `None` for every enabled callback of the file.
        callback: Option<CallbackRef>,
        /// The file's latest version as the store knows it at append time. The core may have
        /// forgotten a file whose deliveries are all complete (that is how it stays small), so
        /// the record brings the version along.
        version: Option<Seq>,
    },
    /// An operator paused a project callback (rule 8): its machines keep taking changes,
    /// latest wins, but no attempt starts; one in flight completes.
    CallbackPaused {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// An operator resumed a paused project callback (rule 8): each of its machines whose
    /// due time passed during the pause starts its attempt at this record.
    CallbackResumed {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
    },
    /// An operator's test send to a project callback (`POST …/callbacks/{name}/test`): the
    /// documented sample ([`crate::render::test_sample`]) went out once with `cb-test: 1`,
    /// whatever the callback's state. It touches no machine: the fold only lets time pass.
    CallbackTested {
        /// The project.
        project: ProjectId,
        /// The callback's name.
        name: CallbackName,
        /// How the send ended.
        outcome: Outcome,
        /// From start to outcome.
        latency_ms: u32,
        /// SHA-256 of the exact payload bytes sent.
        digest: Digest,
        /// A human-readable detail for operators; empty if none.
        detail: String,
    },
}

/// What the dispatcher observed performing one attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AttemptReport {
    /// The machine.
    pub machine: MachineKey,
    /// The delivery the attempt belongs to.
    pub delivery: DeliveryId,
    /// The attempt's number within the delivery, from 1.
    pub attempt: u32,
    /// The file version the attempt carried.
    pub version: Seq,
    /// How it ended.
    pub outcome: Outcome,
    /// From start to outcome.
    pub latency_ms: u32,
    /// SHA-256 of the exact payload bytes sent.
    pub digest: Digest,
    /// A human-readable detail for operators (an error message); empty if none. Never read
    /// by the fold.
    pub detail: String,
}

impl AttemptReport {
    /// The report of `attempt` (the effect the core handed out), ending with `outcome`.
    /// The attempt's identity and version are copied, so they cannot be mixed up.
    pub fn of(
        attempt: crate::effect::Attempt,
        outcome: Outcome,
        latency_ms: u32,
        digest: Digest,
    ) -> AttemptReport {
        AttemptReport {
            machine: attempt.machine,
            delivery: attempt.delivery,
            attempt: attempt.attempt,
            version: attempt.version,
            outcome,
            latency_ms,
            digest,
            detail: String::new(),
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer (or an SMTP relay accepting the message: 250).
    Delivered {
        /// The status code.
        status: u16,
    },
    /// Any non-2xx HTTP answer; 3xx are not followed and count here.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After` in seconds, as sent with a 429 or 503.
        retry_after_secs: Option<u32>,
    },
    /// No complete answer within `timeout_secs`.
    Timeout,
    /// Could not connect: DNS failure, refused, reset, closed early.
    Connect,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The target resolved to a non-public address and private targets are not allowed.
    TargetRefused,
    /// The SMTP relay rejected the message.
    Smtp {
        /// The SMTP reply code.
        code: u16,
    },
    /// The request was sent whole, and the receiver closed the connection without an
    /// answer. Unlike [`Connect`](Outcome::Connect), the receiver may have acted on it: a
    /// failed attempt all the same (retried under the same `webhook-id`, which is how a
    /// receiver tells the retry from a new delivery). Added in log format 5.
    Closed,
}

impl Outcome {
    /// Classifies an HTTP status: 2xx delivers, everything else fails.
    pub fn from_status(status: u16, retry_after_secs: Option<u32>) -> Outcome {
        if (200..300).contains(&status) {
            Outcome::Delivered { status }
        } else {
            Outcome::Status {
                status,
                retry_after_secs,
            }
        }
    }

    /// True for a successful delivery.
    pub fn is_delivered(self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    /// A short name for metrics and tables (`delivered`, `5xx`, `timeout`, …).
    pub fn class(self) -> &'static str {
        self.outcome_class().as_str()
    }

    /// The kind of outcome, as lists filter by it.
    pub fn outcome_class(self) -> OutcomeClass {
        match self {
            Outcome::Delivered { .. } => OutcomeClass::Delivered,
            Outcome::Status { status: 410, .. } => OutcomeClass::Gone,
            Outcome::Status { status, .. } if status < 400 => OutcomeClass::Redirect,
            Outcome::Status { status, .. } if status < 500 => OutcomeClass::Client,
            Outcome::Status { .. } => OutcomeClass::Server,
            Outcome::Timeout => OutcomeClass::Timeout,
            Outcome::Connect => OutcomeClass::Connect,
            Outcome::Tls => OutcomeClass::Tls,
            Outcome::TargetRefused => OutcomeClass::TargetRefused,
            Outcome::Smtp { .. } => OutcomeClass::Smtp,
            Outcome::Closed => OutcomeClass::Closed,
        }
    }
}

/// The kinds of outcome an operator filters attempts by (`GET /v1/attempts?outcome=`) and
/// metrics count by. Each has a stable one-byte code: the store's attempt index is keyed
/// by it, so a code once given is never reused for another kind.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum OutcomeClass {
    /// A 2xx answer, or an SMTP relay accepting the message.
    Delivered = b'd',
    /// Any other status below 400 (3xx are not followed).
    Redirect = b'r',
    /// 410 Gone: the callback is disabled.
    Gone = b'g',
    /// A 4xx other than 410.
    Client = b'4',
    /// A 5xx (or a status past 599).
    Server = b'5',
    /// No complete answer in time.
    Timeout = b't',
    /// Could not connect.
    Connect = b'c',
    /// TLS handshake or certificate verification failed.
    Tls = b's',
    /// The target's address is not allowed.
    TargetRefused = b'x',
    /// The SMTP relay rejected the message.
    Smtp = b'm',
    /// The receiver closed the connection after the request was sent, without answering.
    Closed = b'k',
}

impl OutcomeClass {
    /// Every kind, in the order documentation lists them.
    pub const ALL: [OutcomeClass; 11] = [
        OutcomeClass::Delivered,
        OutcomeClass::Redirect,
        OutcomeClass::Gone,
        OutcomeClass::Client,
        OutcomeClass::Server,
        OutcomeClass::Timeout,
        OutcomeClass::Connect,
        OutcomeClass::Closed,
        OutcomeClass::Tls,
        OutcomeClass::TargetRefused,
        OutcomeClass::Smtp,
    ];

    /// Its name in the API, metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Delivered => "delivered",
            OutcomeClass::Redirect => "redirect",
            OutcomeClass::Gone => "gone",
            OutcomeClass::Client => "4xx",
            OutcomeClass::Server => "5xx",
            OutcomeClass::Timeout => "timeout",
            OutcomeClass::Connect => "connect",
            OutcomeClass::Tls => "tls",
            OutcomeClass::TargetRefused => "target_refused",
            OutcomeClass::Smtp => "smtp",
            OutcomeClass::Closed => "closed",
        }
    }

    /// The kind named `name` ([`as_str`](Self::as_str)).
    pub fn parse(name: &str) -> Option<OutcomeClass> {
        OutcomeClass::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Its stable one-byte code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind whose code is `code`.
    pub fn from_code(code: u8) -> Option<OutcomeClass> {
        OutcomeClass::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered { status } => write!(f, "{status}"),
            Outcome::Status {
                status,
                retry_after_secs: Some(s),
            } => write!(f, "{status} retry-after={s}s"),
            Outcome::Status { status, .. } => write!(f, "{status}"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Connect => f.write_str("connect-error"),
            Outcome::Tls => f.write_str("tls-error"),
            Outcome::TargetRefused => f.write_str("target-refused"),
            Outcome::Smtp { code } => write!(f, "smtp-{code}"),
            Outcome::Closed => f.write_str("closed-without-answer"),
        }
    }
}

/// Which part of the log a record belongs to, so the store can index it without knowing the
/// rules: one file's history is its own records plus its project's and the global ones.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope<'a> {
    /// Concerns every file (ticks).
    Global,
    /// Concerns every file of a project (project callback configuration).
    Project(&'a ProjectId),
    /// Concerns one file.
    File(&'a FileKey),
}

impl Record {
    /// The record's scope; see [`Scope`].
    pub fn scope(&self) -> Scope<'_> {
        match &self.kind {
            RecordKind::ChangeAppended { file, .. }
            | RecordKind::RedeliverRequested { file, .. } => Scope::File(file),
            RecordKind::AttemptFinished(r) => Scope::File(&r.machine.file),
            RecordKind::CallbackPut { project, .. }
            | RecordKind::CallbackRemoved { project, .. }
            | RecordKind::CallbackPaused { project, .. }
            | RecordKind::CallbackResumed { project, .. }
            | RecordKind::CallbackTested { project, .. } => Scope::Project(project),
            RecordKind::CallbackDisabled { machine, .. } => match machine.callback {
                CallbackRef::Project(_) => Scope::Project(&machine.file.project),
                CallbackRef::File(_) => Scope::File(&machine.file),
            },
            RecordKind::Ticked => Scope::Global,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes_have_distinct_names_and_codes_that_read_back() {
        let mut codes: Vec<u8> = OutcomeClass::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), OutcomeClass::ALL.len());
        for class in OutcomeClass::ALL {
            assert_eq!(OutcomeClass::parse(class.as_str()), Some(class));
            assert_eq!(OutcomeClass::from_code(class.code()), Some(class));
        }
        assert_eq!(OutcomeClass::parse("2xx"), None);
        assert_eq!(OutcomeClass::from_code(0), None);
    }

    #[test]
    fn statuses_fall_into_their_classes() {
        let class = |status| Outcome::from_status(status, None).outcome_class();
        assert_eq!(class(204), OutcomeClass::Delivered);
        assert_eq!(class(302), OutcomeClass::Redirect);
        assert_eq!(class(410), OutcomeClass::Gone);
        assert_eq!(class(429), OutcomeClass::Client);
        assert_eq!(class(503), OutcomeClass::Server);
    }
}
