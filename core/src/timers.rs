//! [`Timers`]: the machines' deadlines (or expiries), kept so that the fold can fire them in
//! `(time, machine)` order.
//!
//! A `BTreeSet<(Timestamp, MachineKey)>` does that directly, and was a third of the fold's
//! time on a 100,000-file log: every timer move removed and inserted a ~90-byte key, shifting
//! B-tree nodes and comparing strings, because the records of one group commit share a
//! timestamp and so do the deadlines they set. Here the ordered part is keyed by time alone;
//! the machines of one time are a hash set (or, nearly always, a single key), and are sorted
//! only when that time fires — once, instead of at every insert and remove.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use crate::ids::{MachineKey, Timestamp};

/// A set of `(time, machine)` timers, fired earliest first and, within one time, in machine
/// order. Invariant: no bucket is empty, and `len` counts the timers of every bucket.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    by_time: BTreeMap<Timestamp, Bucket>,
    len: usize,
}

/// The machines whose timer is at one time. Most times have one machine, which takes no
/// allocation of its own.
#[derive(Clone, Debug)]
enum Bucket {
    One(MachineKey),
    Many(FxHashSet<MachineKey>),
}

impl Timers {
    /// Sets a timer; returns false if it was already set.
    pub(crate) fn insert(&mut self, at: Timestamp, key: &MachineKey) -> bool {
        let added = match self.by_time.get_mut(&at) {
            None => {
                self.by_time.insert(at, Bucket::One(key.clone()));
                true
            }
            Some(Bucket::One(one)) if one == key => false,
            Some(bucket @ Bucket::One(_)) => {
                let Bucket::One(one) = std::mem::replace(bucket, Bucket::Many(Default::default()))
                else {
                    unreachable!("matched One above")
                };
                let Bucket::Many(set) = bucket else {
                    unreachable!("replaced by Many")
                };
                set.insert(one);
                set.insert(key.clone())
            }
            Some(Bucket::Many(set)) => set.insert(key.clone()),
        };
        self.len += usize::from(added);
        added
    }

    /// Clears a timer; returns false if it was not set.
    pub(crate) fn remove(&mut self, at: Timestamp, key: &MachineKey) -> bool {
        let (removed, emptied) = match self.by_time.get_mut(&at) {
            None => (false, false),
            Some(Bucket::One(one)) => {
                let hit = one == key;
                (hit, hit)
            }
            Some(Bucket::Many(set)) => {
                let hit = set.remove(key);
                (hit, set.is_empty())
            }
        };
        if emptied {
            self.by_time.remove(&at);
        }
        self.len -= usize::from(removed);
        removed
    }

    /// The earliest time set.
    pub(crate) fn first(&self) -> Option<Timestamp> {
        self.by_time.first_key_value().map(|(t, _)| *t)
    }

    /// If the earliest time is at or before `to`: clears every timer of that time and returns
    /// the time with its machines, sorted.
    pub(crate) fn pop_due(&mut self, to: Timestamp) -> Option<(Timestamp, Vec<MachineKey>)> {
        if self.first()? > to {
            return None;
        }
        let (at, bucket) = self.by_time.pop_first().expect("first() was Some");
        let keys = match bucket {
            Bucket::One(one) => vec![one],
            Bucket::Many(set) => {
                let mut keys: Vec<MachineKey> = set.into_iter().collect();
                keys.sort_unstable();
                keys
            }
        };
        self.len -= keys.len();
        Some((at, keys))
    }

    /// How many timers are set.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        /// Any sequence of inserts, removes and pops agrees with the ordered set it replaces.
        #[test]
        fn agrees_with_an_ordered_set(
            ops in prop::collection::vec((0u8..3, 0u64..6, 0u8..5, 0u8..2, 0u64..8), 0..200),
        ) {
            let mut timers = Timers::default();
            let mut model: BTreeSet<(Timestamp, MachineKey)> = BTreeSet::new();
            for (op, t, f, c, to) in ops {
                let (t, k) = (Timestamp(t), key(f, c));
                match op {
                    0 => prop_assert_eq!(timers.insert(t, &k), model.insert((t, k))),
                    1 => prop_assert_eq!(timers.remove(t, &k), model.remove(&(t, k))),
                    _ => {
                        let popped = timers.pop_due(Timestamp(to));
                        let want: Vec<(Timestamp, MachineKey)> = match model.first() {
                            Some((first, _)) if first.0 <= to => {
                                let first = *first;
                                model.iter().take_while(|(t, _)| *t == first).cloned().collect()
                            }
                            _ => Vec::new(),
                        };
                        for e in &want {
                            model.remove(e);
                        }
                        let got: Vec<(Timestamp, MachineKey)> = popped
                            .map(|(t, keys)| keys.into_iter().map(|k| (t, k)).collect())
                            .unwrap_or_default();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(timers.len(), model.len());
                prop_assert_eq!(timers.first(), model.first().map(|(t, _)| *t));
            }
        }
    }
}
