//! One delivery state machine per (file, callback): its five states and its transitions.
//!
//! Every rule of SPEC §4 that concerns a single machine has exactly one home here, marked
//! `// Rule N:`. The machine knows nothing of maps, timers or effects; [`crate::Core`] finds
//! the machine, calls one transition, and turns what it returns into timer updates and
//! effects. A machine that does not exist is the "no state" of rule 1.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backoff;
use crate::config::Callback;
use crate::ids::{DeliveryId, Seq, Timestamp};
use crate::record::{AttemptReport, Outcome};

/// A delivery state machine.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// Where the machine is.
    pub state: State,
    /// The earliest time rule 1 may schedule a new delivery: the start of the latest attempt
    /// plus the window in force at that start. Invariant: set whenever an attempt starts;
    /// `None` only if no attempt ever started.
    pub quiet_until: Option<Timestamp>,
    /// The first triggering change that arrived while an attempt was in flight, so no
    /// attempt carried it yet. Invariant: `Some` only in `Pending`.
    pub unsent: Option<Opening>,
    /// The newest version a receiver acknowledged with 2xx.
    pub delivered: Option<Seq>,
    /// The latest outcome this machine accepted, for operators.
    pub last_outcome: Option<LastOutcome>,
}

/// The change that opens a delivery: its sequence number (which becomes the delivery id)
/// and time.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Opening {
    /// The change's sequence number.
    pub seq: Seq,
    /// The change's time.
    pub at: Timestamp,
}

/// An outcome as a machine remembers it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LastOutcome {
    /// The outcome record's sequence number.
    pub seq: Seq,
    /// Its time.
    pub at: Timestamp,
    /// The attempt's number.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// The five states of SPEC §4, each holding only what is valid in it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A change is waiting; the first attempt is due at `due_at`.
    Coalescing {
        /// The delivery this window opened.
        delivery: DeliveryId,
        /// The time of the change that opened it (rule 1's `change_at`).
        since: Timestamp,
        /// When the first attempt starts.
        due_at: Timestamp,
    },
    /// An attempt is in flight (at most one per machine).
    Pending(InFlight),
    /// The latest known version was delivered.
    Sent {
        /// The delivery.
        delivery: DeliveryId,
        /// The version delivered.
        version: Seq,
        /// When the 2xx arrived.
        at: Timestamp,
    },
    /// The last attempt failed; the next one starts at `next_at`.
    Retrying {
        /// The delivery.
        delivery: DeliveryId,
        /// Attempts made so far in this delivery, all failed.
        failed: u32,
        /// When the next attempt starts.
        next_at: Timestamp,
        /// When this delivery's first failure happened (the retry horizon counts from it).
        first_failure_at: Timestamp,
        /// True if the delivery is an operator's redeliver.
        redeliver: bool,
    },
    /// Retried for `retry_for_secs` without success (or the receiver answered 410).
    Abandoned {
        /// The delivery given up on.
        delivery: DeliveryId,
        /// Attempts made.
        attempts: u32,
        /// When it was given up.
        at: Timestamp,
    },
}

/// The attempt in flight of a `Pending` machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InFlight {
    /// The delivery.
    pub delivery: DeliveryId,
    /// The attempt's number within the delivery, from 1.
    pub attempt: u32,
    /// The version it carries.
    pub version: Seq,
    /// Its logical start (the deadline that fired, or the redeliver's time).
    pub started_at: Timestamp,
    /// The delivery's first failure, if an earlier attempt failed.
    pub first_failure_at: Option<Timestamp>,
    /// True for an operator's redeliver.
    pub redeliver: bool,
}

/// The name of a state, for counts and tables.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// See [`State::Coalescing`].
    Coalescing,
    /// See [`State::Pending`].
    Pending,
    /// See [`State::Sent`].
    Sent,
    /// See [`State::Retrying`].
    Retrying,
    /// See [`State::Abandoned`].
    Abandoned,
}

impl StateName {
    /// All states, in lifecycle order.
    pub const ALL: [StateName; 5] = [
        StateName::Coalescing,
        StateName::Pending,
        StateName::Sent,
        StateName::Retrying,
        StateName::Abandoned,
    ];

    /// The SPEC's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Coalescing => "coalescing",
            StateName::Pending => "pending",
            StateName::Sent => "sent",
            StateName::Retrying => "retrying",
            StateName::Abandoned => "abandoned",
        }
    }
}

impl State {
    /// The state's name.
    pub fn name(&self) -> StateName {
        match self {
            State::Coalescing { .. } => StateName::Coalescing,
            State::Pending(_) => StateName::Pending,
            State::Sent { .. } => StateName::Sent,
            State::Retrying { .. } => StateName::Retrying,
            State::Abandoned { .. } => StateName::Abandoned,
        }
    }

    /// The delivery the state belongs to.
    pub fn delivery(&self) -> DeliveryId {
        match *self {
            State::Coalescing { delivery, .. }
            | State::Sent { delivery, .. }
            | State::Retrying { delivery, .. }
            | State::Abandoned { delivery, .. } => delivery,
            State::Pending(f) => f.delivery,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Coalescing {
                delivery, due_at, ..
            } => write!(f, "coalescing {delivery} due={due_at}"),
            State::Pending(p) => write!(
                f,
                "pending {} #{} v{}{}",
                p.delivery,
                p.attempt,
                p.version,
                if p.redeliver { " redeliver" } else { "" }
            ),
            State::Sent {
                delivery, version, ..
            } => write!(f, "sent {delivery} v{version}"),
            State::Retrying {
                delivery,
                failed,
                next_at,
                ..
            } => write!(f, "retrying {delivery} failed={failed} next={next_at}"),
            State::Abandoned {
                delivery, attempts, ..
            } => write!(f, "abandoned {delivery} attempts={attempts}"),
        }
    }
}

/// What an outcome did to a machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OutcomeStep {
    /// It was the outcome of the attempt in flight, and was applied.
    Applied,
    /// It was a `410 Gone`: the machine stopped and the callback must be disabled.
    Gone,
    /// It does not belong to the attempt in flight (late, duplicated, superseded).
    Stale,
}

/// Rule 1's `due` for a delivery opened by `opening`, decided at `now`.
///
/// Never before `now`: a window re-opened late (a 2xx that took long, a config put shrinking
/// the window) starts at once rather than in the past, so an attempt's logical start is
/// never earlier than the record that decided it, and spacing holds in real time too.
fn due_at(
    opening: Opening,
    callback: &Callback,
    quiet_until: Option<Timestamp>,
    now: Timestamp,
) -> Timestamp {
    let due = opening.at.plus_secs(callback.initial_delay_secs()).max(now);
    quiet_until.map_or(due, |q| due.max(q))
}

fn redeliver_flight(seq: Seq, at: Timestamp, version: Seq) -> InFlight {
    InFlight {
        delivery: DeliveryId(seq),
        attempt: 1,
        version,
        started_at: at,
        first_failure_at: None,
        redeliver: true,
    }
}

fn coalescing(
    opening: Opening,
    callback: &Callback,
    quiet_until: Option<Timestamp>,
    now: Timestamp,
) -> State {
    State::Coalescing {
        delivery: DeliveryId(opening.seq),
        since: opening.at,
        due_at: due_at(opening, callback, quiet_until, now),
    }
}

impl Machine {
    /// The time this machine next needs the core's attention: a first attempt or a retry.
    pub fn deadline(&self) -> Option<Timestamp> {
        match self.state {
            State::Coalescing { due_at, .. } => Some(due_at),
            State::Retrying { next_at, .. } => Some(next_at),
            State::Pending(_) | State::Sent { .. } | State::Abandoned { .. } => None,
        }
    }

    /// The time from which this machine carries nothing a fresh machine lacks, so the core
    /// may forget it: a `sent` machine whose window has elapsed (SPEC §8 memory target).
    /// Forgetting is exact: rule 1's `due` for a new change is then `change_at + D` either way.
    pub fn expiry(&self) -> Option<Timestamp> {
        match self.state {
            State::Sent { at, .. } => Some(self.quiet_until.map_or(at, |q| q.max(at))),
            _ => None,
        }
    }

    /// The attempt in flight, if any.
    pub fn in_flight(&self) -> Option<&InFlight> {
        match &self.state {
            State::Pending(f) => Some(f),
            _ => None,
        }
    }

    /// The machine a triggering change opens for a callback that has none (rule 1: a
    /// machine in no state starts coalescing).
    pub(crate) fn opened_by(change: Opening, callback: &Callback) -> Machine {
        Machine::fresh(coalescing(change, callback, None, change.at))
    }

    /// A machine that starts in `state`, with no past.
    fn fresh(state: State) -> Machine {
        Machine {
            state,
            quiet_until: None,
            unsent: None,
            delivered: None,
            last_outcome: None,
        }
    }

    /// A triggering change arrived.
    pub(crate) fn on_trigger(&mut self, change: Opening, callback: &Callback) {
        match self.state {
            // Rule 1: so does a sent or abandoned one, no earlier than a window after its
            // latest attempt.
            State::Sent { .. } | State::Abandoned { .. } => {
                self.state = coalescing(change, callback, self.quiet_until, change.at);
            }
            // Rule 2: the attempt in flight carries an older version. The snapshot is
            // replaced (the file's version moved); remember that the receiver is owed
            // this change, for rule 4.
            State::Pending(_) => {
                self.unsent.get_or_insert(change);
            }
            // Rule 2: the coming attempt carries the latest snapshot anyway. A retry also
            // notes the change (an attempt clears it, `begin`): if a pause keeps the retry
            // from happening and the delivery is abandoned, the change is still owed (rule 8).
            State::Retrying { .. } => {
                self.unsent.get_or_insert(change);
            }
            State::Coalescing { .. } => {}
        }
    }

    /// The machine's deadline `at` fired; `version` is the file's latest. Returns the attempt
    /// to start.
    pub(crate) fn on_due(&mut self, at: Timestamp, version: Seq, callback: &Callback) -> InFlight {
        assert_eq!(
            self.deadline(),
            Some(at),
            "a machine fires only at its own deadline"
        );
        let flight = match self.state {
            // Rule 3: the window is over; attempt with the latest snapshot.
            State::Coalescing { delivery, .. } => InFlight {
                delivery,
                attempt: 1,
                version,
                started_at: at,
                first_failure_at: None,
                redeliver: false,
            },
            // Rule 5: the backoff is over; attempt again with the latest snapshot.
            State::Retrying {
                delivery,
                failed,
                first_failure_at,
                redeliver,
                ..
            } => InFlight {
                delivery,
                attempt: failed + 1,
                version,
                started_at: at,
                first_failure_at: Some(first_failure_at),
                redeliver,
            },
            State::Pending(_) | State::Sent { .. } | State::Abandoned { .. } => {
                unreachable!("deadline() is None in this state")
            }
        };
        self.begin(flight, callback)
    }

    fn begin(&mut self, flight: InFlight, callback: &Callback) -> InFlight {
        // Invariant (no spam): at most one attempt in flight per machine.
        assert!(
            !matches!(self.state, State::Pending(f) if f != flight),
            "an attempt is already in flight"
        );
        self.state = State::Pending(flight);
        self.quiet_until = Some(flight.started_at.plus_secs(callback.window_secs));
        self.unsent = None;
        flight
    }

    /// An attempt's outcome arrived at `at` in record `seq`.
    pub(crate) fn on_outcome(
        &mut self,
        report: &AttemptReport,
        seq: Seq,
        at: Timestamp,
        callback: &Callback,
    ) -> OutcomeStep {
        let State::Pending(flight) = self.state else {
            return OutcomeStep::Stale;
        };
        if (flight.delivery, flight.attempt, flight.version)
            != (report.delivery, report.attempt, report.version)
        {
            return OutcomeStep::Stale;
        }
        self.last_outcome = Some(LastOutcome {
            seq,
            at,
            attempt: flight.attempt,
            outcome: report.outcome,
        });
        match report.outcome {
            Outcome::Delivered { .. } => {
                self.delivered = Some(
                    self.delivered
                        .map_or(flight.version, |d| d.max(flight.version)),
                );
                self.state = match self.unsent.take() {
                    // Rule 4: a newer version arrived meanwhile; coalesce again as rule 1 does.
                    Some(opening) => coalescing(opening, callback, self.quiet_until, at),
                    // Rule 4: the receiver has the latest version.
                    None => State::Sent {
                        delivery: flight.delivery,
                        version: flight.version,
                        at,
                    },
                };
                OutcomeStep::Applied
            }
            // Rule 4: 410 Gone stops this machine; the core has the callback disabled.
            Outcome::Status { status: 410, .. } => {
                self.unsent = None;
                self.state = State::Abandoned {
                    delivery: flight.delivery,
                    attempts: flight.attempt,
                    at,
                };
                OutcomeStep::Gone
            }
            failure => {
                // A retry carries the latest snapshot, so nothing stays owed unless the
                // delivery is abandoned (below).
                let first_failure_at = flight.first_failure_at.unwrap_or(at);
                let owed = self.unsent.take();
                self.state = if at >= first_failure_at.plus_secs(callback.retry_for_secs) {
                    match owed {
                        // Rule 1: a triggering change that arrived during the last attempt
                        // of an abandoned delivery re-opens the machine, as it would had it
                        // arrived just after the abandonment.
                        Some(opening) => coalescing(opening, callback, self.quiet_until, at),
                        // Rule 4: retried for retry_for_secs without success.
                        None => State::Abandoned {
                            delivery: flight.delivery,
                            attempts: flight.attempt,
                            at,
                        },
                    }
                } else {
                    // Rule 4: back off; Retry-After counts only on 429 and 503.
                    let retry_after = match failure {
                        Outcome::Status {
                            status: 429 | 503,
                            retry_after_secs,
                        } => retry_after_secs,
                        _ => None,
                    };
                    State::Retrying {
                        delivery: flight.delivery,
                        failed: flight.attempt,
                        next_at: backoff::retry_at(
                            at,
                            &callback.backoff_secs,
                            flight.delivery,
                            flight.attempt,
                            retry_after,
                        ),
                        first_failure_at,
                        redeliver: flight.redeliver,
                    }
                };
                if matches!(self.state, State::Retrying { .. }) {
                    // The retry carries the change owed; until it starts (a pause may keep
                    // it from starting, rule 8), the change stays owed.
                    self.unsent = owed;
                }
                OutcomeStep::Applied
            }
        }
    }

    /// Rule 6: an operator's redeliver in record `seq` at `at`, for a callback with no
    /// machine: one starts, pending at once. Returns it with its attempt.
    pub(crate) fn redelivered(
        seq: Seq,
        at: Timestamp,
        version: Seq,
        callback: &Callback,
    ) -> (Machine, InFlight) {
        let flight = redeliver_flight(seq, at, version);
        let mut m = Machine::fresh(State::Pending(flight));
        let started = m.begin(flight, callback);
        (m, started)
    }

    /// Rule 6: an operator's redeliver in record `seq` at `at`. Returns the attempt to start,
    /// or `None` if one is already in flight.
    pub(crate) fn on_redeliver(
        &mut self,
        seq: Seq,
        at: Timestamp,
        version: Seq,
        callback: &Callback,
    ) -> Option<InFlight> {
        match self.state {
            // Rule 6: with an attempt already in flight, a redeliver changes nothing.
            State::Pending(_) => None,
            // Rule 6: any other state goes to pending at once.
            _ => Some(self.begin(redeliver_flight(seq, at, version), callback)),
        }
    }

    /// The machine's deadline `at` fired while its callback is paused (rule 8): no attempt
    /// starts, and the deadline stays where it was, passed, until the resume. The retry
    /// horizon keeps running: a retry due at or past it abandons the delivery here, as the
    /// failure of that retry would have.
    pub(crate) fn on_due_paused(&mut self, at: Timestamp, callback: &Callback) {
        // Rule 8: a paused callback starts no attempt; its retry horizon keeps running.
        self.abandon_past_horizon(at, callback);
    }

    /// Its callback resumed at `now` (rule 8): a deadline that passed during the pause comes
    /// due now, as if it had just come — unless the retry horizon passed during the pause,
    /// which abandons the delivery. Whether the caller is to fire it now.
    pub(crate) fn on_resume(&mut self, now: Timestamp, callback: &Callback) -> bool {
        if self.deadline().is_none_or(|t| t > now) {
            return false;
        }
        // Past the horizon the delivery ends here (abandoned, or reopened for a change that
        // came in during the pause, which then goes now if it is due).
        self.abandon_past_horizon(now, callback);
        match &mut self.state {
            // Rule 8: the resume delivers what came due during the pause, as if just due.
            State::Coalescing { due_at: t, .. } | State::Retrying { next_at: t, .. }
                if *t <= now =>
            {
                *t = now;
                true
            }
            _ => false,
        }
    }

    /// Rule 4's horizon for a retrying machine that makes no attempt (rule 8): abandoned if
    /// `at` is at or past `retry_for_secs` after its first failure — unless a triggering
    /// change came in since its last attempt, which no attempt carried: that one opens a new
    /// delivery (rule 1), as one arriving during a last attempt does (`on_outcome`). Whether
    /// the delivery ended.
    fn abandon_past_horizon(&mut self, at: Timestamp, callback: &Callback) -> bool {
        let State::Retrying {
            delivery,
            failed,
            first_failure_at,
            ..
        } = self.state
        else {
            return false;
        };
        let past = at >= first_failure_at.plus_secs(callback.retry_for_secs);
        if past {
            self.state = match self.unsent.take() {
                Some(change) => coalescing(change, callback, self.quiet_until, at),
                None => State::Abandoned {
                    delivery,
                    attempts: failed,
                    at,
                },
            };
        }
        past
    }

    /// Rule 7: the callback's configuration changed. A window already waiting adopts the new
    /// `leading`/`window_secs` for its own delay; windows already spent (`quiet_until`) and
    /// scheduled retries keep the configuration they were computed with.
    pub(crate) fn on_config(&mut self, callback: &Callback, now: Timestamp) {
        if let State::Coalescing {
            delivery, since, ..
        } = self.state
        {
            self.state = coalescing(
                Opening {
                    seq: delivery.0,
                    at: since,
                },
                callback,
                self.quiet_until,
                now,
            );
        }
    }
}
