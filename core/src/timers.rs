//! [`Timers`]: the machines' deadlines (or expiries), kept so that the fold can fire them in
//! `(time, machine)` order.
//!
//! The machines themselves say which timers are set: a machine's timer is at `t` exactly
//! when its `deadline()` (or `expiry()`) is `Some(t)`. So this structure only has to say
//! *where to look*, and may hold entries a machine has since moved away from; the core drops
//! those when they surface ([`Timers::pop_due`], [`Timers::settle`]), asking the machine. That
//! makes setting a timer a push and clearing one free, where an ordered set paid a B-tree
//! search, node shifts and key comparisons for both, on every step of every machine (a
//! fifth of the fold on a 1.8 M-record log, docs/performance.md).
//!
//! Entries go to the back of a queue when they are not earlier than its back — nearly
//! always, since a timer is set a window or a backoff after the record that sets it and
//! records come in time order — and to a min-heap otherwise. The earliest entry is at the
//! front of one of the two. One timer set far ahead (a long backoff beside short windows)
//! sends the timers set after it, but due before it, to the heap until it is reached: a
//! heap push and pop per timer then, which is what the B-tree cost on every move.
//!
//! Stale entries (a machine's timer moved, or the machine dropped) stay until their time
//! passes, so the entries outnumber the timers set by the moves made within the longest
//! window or backoff; each holds a copy of its machine's key.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use crate::ids::{MachineKey, Timestamp};

/// Where a set of `(time, machine)` timers may be, earliest first. Invariant: every timer
/// set (as the machines say) has an entry here at its time; after [`Timers::settle`], the
/// earliest entry is a timer that is set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    /// Entries in non-decreasing time order.
    queue: VecDeque<(Timestamp, MachineKey)>,
    /// Entries that were earlier than the queue's back when they were set.
    early: BinaryHeap<Early>,
    /// True once [`Timers::settle`] confirmed the earliest entry, until something could have
    /// made it stale: the earliest entry removed ([`Timers::pop_due`]), an earlier one added
    /// ([`Timers::insert`]), or a machine's timer at the earliest time moved, cleared or
    /// dropped ([`Timers::moved`]). Until then `settle` need not ask the machine again — it
    /// was asked twice per record, each time a lookup in the file map.
    settled: bool,
}

/// A heap entry, ordered so that the earliest time is the heap's top.
#[derive(Clone, Debug)]
struct Early(Timestamp, MachineKey);

impl PartialEq for Early {
    fn eq(&self, other: &Early) -> bool {
        self.0 == other.0
    }
}

impl Eq for Early {}

impl PartialOrd for Early {
    fn partial_cmp(&self, other: &Early) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Early {
    fn cmp(&self, other: &Early) -> Ordering {
        other.0.cmp(&self.0)
    }
}

impl Timers {
    /// Notes that `key`'s timer is now at `at`. Where it was before needs no clearing: that
    /// entry is dropped when it surfaces, since the machine no longer says so.
    pub(crate) fn insert(&mut self, at: Timestamp, key: &MachineKey) {
        if self.first().is_none_or(|first| at < first) {
            self.settled = false;
        }
        match self.queue.back() {
            Some((last, _)) if at < *last => self.early.push(Early(at, key.clone())),
            _ => self.queue.push_back((at, key.clone())),
        }
    }

    /// The earliest entry's time, whether or not its timer is still set; exact after
    /// [`Timers::settle`].
    pub(crate) fn first(&self) -> Option<Timestamp> {
        self.earliest().map(|(t, _, _)| t)
    }

    /// Drops earliest entries until the earliest is a timer `is_set` confirms, so that
    /// [`Timers::first`] is exact.
    pub(crate) fn settle(&mut self, mut is_set: impl FnMut(Timestamp, &MachineKey) -> bool) {
        if self.settled {
            return;
        }
        while let Some((t, key, queued)) = self.earliest() {
            if is_set(t, key) {
                break;
            }
            if queued {
                self.queue.pop_front();
            } else {
                self.early.pop();
            }
        }
        self.settled = true;
        self.give_back();
    }

    /// Says that a machine's timer at `from` moved, was cleared, or went with its machine:
    /// if `from` is the earliest time, the earliest entry may be stale now.
    pub(crate) fn moved(&mut self, from: Timestamp) {
        if self.first() == Some(from) {
            self.settled = false;
        }
    }

    /// The earliest entry, and whether it is the queue's front (else the heap's top).
    fn earliest(&self) -> Option<(Timestamp, &MachineKey, bool)> {
        let queued = self.queue.front().map(|(t, key)| (*t, key, true));
        let early = self.early.peek().map(|Early(t, key)| (*t, key, false));
        match (queued, early) {
            (Some(q), Some(e)) => Some(if q.0 <= e.0 { q } else { e }),
            (q, e) => q.or(e),
        }
    }

    /// If the earliest time is at or before `to`: removes every entry of that time and
    /// returns the time with their machines, sorted and without repeats. Some may no longer
    /// have their timer at that time; the caller asks each machine before firing it.
    pub(crate) fn pop_due(&mut self, to: Timestamp) -> Option<(Timestamp, Vec<MachineKey>)> {
        let at = self.first().filter(|t| *t <= to)?;
        self.settled = false;
        let mut keys = Vec::new();
        while self.queue.front().is_some_and(|(t, _)| *t == at) {
            keys.push(self.queue.pop_front().expect("checked above").1);
        }
        while self.early.peek().is_some_and(|e| e.0 == at) {
            keys.push(self.early.pop().expect("checked above").1);
        }
        if keys.len() > 1 {
            keys.sort_unstable();
            keys.dedup();
        }
        self.give_back();
        Some((at, keys))
    }

    /// A burst of timers must not pin its peak memory after they fire (SPEC §8 counts the
    /// core's memory once windows have elapsed); halving at a quarter keeps it amortized O(1).
    fn give_back(&mut self) {
        if self.queue.capacity() > 4096 && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
        if self.early.capacity() > 4096 && self.early.len() < self.early.capacity() / 4 {
            self.early.shrink_to(self.early.len() * 2);
        }
    }

    /// Every entry at or before `to`, set or not, repeats included, in no particular order.
    /// Walks the queue's due front and the whole heap (entries set out of order: few).
    pub(crate) fn due(&self, to: Timestamp) -> impl Iterator<Item = (Timestamp, &MachineKey)> {
        let queued = self.queue.iter().take_while(move |(t, _)| *t <= to);
        let early = self.early.iter().filter(move |e| e.0 <= to);
        queued
            .map(|(t, k)| (*t, k))
            .chain(early.map(|Early(t, k)| (*t, k)))
    }

    /// How many entries are kept, set or not.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.queue.len() + self.early.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::ids::{CallbackName, CallbackRef, FileId, FileKey, ProjectId};

    fn key(file: u8, callback: u8) -> MachineKey {
        MachineKey {
            file: FileKey::new(
                ProjectId::new("p").unwrap(),
                FileId::new(&format!("f{file}")).unwrap(),
            ),
            callback: CallbackRef::Project(CallbackName::new(&format!("c{callback}")).unwrap()),
        }
    }

    proptest! {
        /// Driven as the core drives it — each machine's timer moved, cleared or fired, and
        /// the machines asked whether an entry is still set — the timers fire exactly what an
        /// ordered set of `(time, machine)` would, and `first` agrees with it once settled.
        #[test]
        fn agrees_with_an_ordered_set(
            ops in prop::collection::vec((0u8..3, 0u64..12, 0u8..5, 0u8..2, 0u64..16), 0..300),
        ) {
            let mut timers = Timers::default();
            // What the machines say: each machine's timer, if set.
            let mut machines: BTreeMap<MachineKey, Timestamp> = BTreeMap::new();
            let mut now = 0u64;
            for (op, t, f, c, to) in ops {
                let k = key(f, c);
                // Timers are never set in the past (the core asserts it).
                let t = Timestamp(now + t);
                match op {
                    0 => {
                        match machines.get(&k) {
                            Some(before) if *before == t => {}
                            Some(before) => {
                                timers.moved(*before);
                                timers.insert(t, &k);
                            }
                            None => timers.insert(t, &k),
                        }
                        machines.insert(k, t);
                    }
                    1 => {
                        if let Some(before) = machines.remove(&k) {
                            timers.moved(before);
                        }
                    }
                    _ => {
                        let to = now + to;
                        let model: BTreeSet<(Timestamp, MachineKey)> =
                            machines.iter().map(|(k, t)| (*t, k.clone())).collect();
                        let want: Vec<(Timestamp, MachineKey)> = match model.first() {
                            Some((first, _)) if first.0 <= to => {
                                let first = *first;
                                model.iter().take_while(|(t, _)| *t == first).cloned().collect()
                            }
                            _ => Vec::new(),
                        };
                        timers.settle(|t, k| machines.get(k) == Some(&t));
                        let got: Vec<(Timestamp, MachineKey)> = match timers.pop_due(Timestamp(to)) {
                            None => Vec::new(),
                            Some((t, keys)) => keys
                                .into_iter()
                                .filter(|k| machines.get(k) == Some(&t))
                                .map(|k| (t, k))
                                .collect(),
                        };
                        for (_, k) in &got {
                            machines.remove(k);
                        }
                        prop_assert_eq!(&got, &want);
                        if let Some((t, _)) = got.first() {
                            now = now.max(t.0);
                        }
                    }
                }
                timers.settle(|t, k| machines.get(k) == Some(&t));
                prop_assert_eq!(timers.first(), machines.values().min().copied());
                prop_assert!(timers.entries() >= machines.len());
            }
        }
    }

    #[test]
    fn a_timer_set_earlier_than_the_queue_back_still_fires_first() {
        let mut timers = Timers::default();
        timers.insert(Timestamp(10), &key(1, 0));
        timers.insert(Timestamp(5), &key(2, 0));
        timers.insert(Timestamp(10), &key(0, 0));
        assert_eq!(timers.first(), Some(Timestamp(5)));
        assert_eq!(
            timers.pop_due(Timestamp(100)),
            Some((Timestamp(5), vec![key(2, 0)]))
        );
        assert_eq!(
            timers.pop_due(Timestamp(100)),
            Some((Timestamp(10), vec![key(0, 0), key(1, 0)]))
        );
        assert_eq!(timers.pop_due(Timestamp(100)), None);
    }
}
