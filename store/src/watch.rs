//! What keeps sled from taking the store down with it: every call into sled is registered
//! while it runs, so that a call that never returns (sled's own I/O threads stuck or dead:
//! its thread pool is shared by the whole process, and a panic in one of them leaves work
//! queued that nobody runs) is *seen* by a thread that is not stuck — the index keeper
//! while the store runs, the opener during recovery — and the index is given up and
//! rebuilt, in memory when sled cannot be trusted in this process any more.
//!
//! Deciding "hung" and a call returning are serialized under one lock, so a call is either
//! finished before it is declared hung (its result stands) or declared hung first (its
//! result, should it ever come, is discarded as an error). Once a [`Watch`] has seen a hang
//! every later call through it fails at once: whoever is stuck in it unwinds with an error
//! instead of going on with a store that has moved past it.
//!
//! [`IndexFaults`] injects what sled may do — hang, fail, panic — at this seam, for tests.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long one call into sled may take before the index is given up (sled's calls take
/// microseconds; a flush on a slow disk, seconds).
pub(crate) const HANG_LIMIT: Duration = Duration::from_secs(30);

/// The calls into one index's sled in flight, and whether one of them was declared hung.
#[derive(Default)]
pub(crate) struct Watch {
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    next: u64,
    calls: BTreeMap<u64, Instant>,
    hung: Option<String>,
}

/// A call in flight (see [`Watch::enter`]).
pub(crate) struct Call(u64);

impl Watch {
    /// Registers a call about to start; `Err(why)` once a call was declared hung.
    pub(crate) fn enter(&self) -> Result<Call, String> {
        let mut state = self.state.lock().expect("watch lock");
        if let Some(why) = &state.hung {
            return Err(why.clone());
        }
        let id = state.next;
        state.next += 1;
        state.calls.insert(id, Instant::now());
        Ok(Call(id))
    }

    /// The call returned; `Err(why)` if it was declared hung meanwhile (its result must not
    /// be used: the store went on without it).
    pub(crate) fn leave(&self, call: Call) -> Result<(), String> {
        let mut state = self.state.lock().expect("watch lock");
        state.calls.remove(&call.0);
        match &state.hung {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Declares the watch hung if a call has been in flight longer than `limit`; returns
    /// why, now or from before.
    pub(crate) fn check(&self, limit: Duration) -> Option<String> {
        let mut state = self.state.lock().expect("watch lock");
        if state.hung.is_none() {
            let oldest = state.calls.values().min().copied()?;
            let waited = oldest.elapsed();
            if waited < limit {
                return None;
            }
            state.hung = Some(format!(
                "a call into sled has not returned in {} ms",
                waited.as_millis()
            ));
        }
        state.hung.clone()
    }

    /// Why the watch was declared hung, if it was.
    pub(crate) fn hung(&self) -> Option<String> {
        self.state.lock().expect("watch lock").hung.clone()
    }
}

/// What a test makes sled do from now on, at cb's seam with it (every call, and every
/// open of a new index, in the store it was given to: a fault in sled's shared thread pool
/// reaches every instance in the process, so a new index is no way out).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SledFault {
    /// sled works.
    #[default]
    None,
    /// Every call and open blocks until the fault is lifted (sled's I/O threads stuck).
    Hang,
    /// Every call and open fails (sled's answer once an I/O thread has panicked).
    Fail,
    /// Every call and open panics (one of sled's assertions).
    Panic,
}

/// Faults injected into a store's index (see [`SledFault`]); given to
/// [`StoreOptions::index_faults`](crate::StoreOptions::index_faults) by tests.
#[derive(Default)]
pub struct IndexFaults {
    fault: Mutex<SledFault>,
    /// Calls and opens that still go through before the fault applies.
    grace: Mutex<u64>,
    lifted: Condvar,
    /// How many calls or opens met a fault.
    met: Mutex<u64>,
}

impl IndexFaults {
    /// Makes sled do `fault` from now on (`SledFault::None` lifts it and lets hung calls
    /// go on).
    pub fn set(&self, fault: SledFault) {
        self.set_after(0, fault);
    }

    /// Makes sled do `fault` once `calls` more calls and opens went through as usual (to
    /// reach a step inside an open, say).
    pub fn set_after(&self, calls: u64, fault: SledFault) {
        let mut current = self.fault.lock().expect("faults lock");
        *self.grace.lock().expect("faults lock") = calls;
        *current = fault;
        self.lifted.notify_all();
    }

    /// How many calls or opens met a fault so far.
    pub fn met(&self) -> u64 {
        *self.met.lock().expect("faults lock")
    }

    /// Called before each call into sled and each open: does what the fault says.
    pub(crate) fn before_call(&self) -> Result<(), sled::Error> {
        let mut fault = self.fault.lock().expect("faults lock");
        {
            let mut grace = self.grace.lock().expect("faults lock");
            if *grace > 0 {
                *grace -= 1;
                return Ok(());
            }
        }
        if *fault != SledFault::None {
            *self.met.lock().expect("faults lock") += 1;
        }
        loop {
            match *fault {
                SledFault::None => return Ok(()),
                SledFault::Fail => {
                    return Err(sled::Error::ReportableBug(
                        "IO thread unexpectedly panicked (injected)".into(),
                    ))
                }
                SledFault::Panic => {
                    drop(fault);
                    panic!("tried to serialize Uninitialized (injected)");
                }
                SledFault::Hang => {
                    fault = self.lifted.wait(fault).expect("faults lock");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_finished_before_the_check_stands() {
        let watch = Watch::default();
        let call = watch.enter().unwrap();
        assert_eq!(watch.check(Duration::from_secs(60)), None);
        assert_eq!(watch.leave(call), Ok(()));
        assert_eq!(watch.check(Duration::ZERO), None, "nothing in flight");
    }

    #[test]
    fn a_call_declared_hung_is_discarded_and_later_calls_fail() {
        let watch = Watch::default();
        let call = watch.enter().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let why = watch.check(Duration::from_millis(1)).expect("hung");
        assert!(why.contains("has not returned"), "{why}");
        assert_eq!(watch.leave(call), Err(why.clone()));
        assert_eq!(watch.enter().err(), Some(why.clone()));
        assert_eq!(watch.hung(), Some(why));
    }
}
