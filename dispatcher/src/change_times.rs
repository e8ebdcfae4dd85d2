//! When each change folded was appended, kept small, for the change → delivery lag: a
//! delivered outcome names the version it carried (a change's seq) and has its own time; the
//! version's time is found here.
//!
//! Neither the core nor the log has it at hand: a machine in flight keeps its version's seq,
//! not its time, and reading the change record back would cost a read of the log per
//! delivery. So the driver notes, as it folds, the first seq of each new append time, and
//! thins the older notes as they age: a version's time is the time of the newest note at or
//! before it, exact for the notes still kept, and otherwise early by less than a sixteenth of
//! the lag it yields — never late, so a lag is never understated (property tested below).
//! Kept notes are at most a few hundred per factor of 17/16 in age plus the last ones, about
//! 2,000 at most, whatever the rate of changes or the age of the oldest version waiting.

use std::collections::VecDeque;

use cb_core::{Record, RecordKind, Seq, Timestamp};

/// Notes at which a thinning pass runs, at the least (then at twice what the last pass kept).
const THIN_AT: usize = 1024;

/// The thinning's bound on a lag's error: the lag divided by this.
const ERROR_DIVISOR: u64 = 16;

/// See the module docs.
#[derive(Debug, Default)]
pub struct ChangeTimes {
    /// `(seq, at)`: `seq` was the first change folded at time `at` (or, once thinned, the
    /// first change of a span that began at `at`). Invariant: both strictly increasing.
    notes: VecDeque<(Seq, Timestamp)>,
    /// How many notes the next thinning waits for.
    thin_at: usize,
}

impl ChangeTimes {
    /// Folds one record: a change is noted; a delivered outcome gives the lag, in
    /// milliseconds, from its version's change to its own time — `None` for any other record,
    /// or for a version folded before this driver started (its time is not known here).
    pub fn fold(&mut self, record: &Record) -> Option<u64> {
        match &record.kind {
            RecordKind::ChangeAppended { .. } => {
                self.note(record.seq, record.at);
                None
            }
            RecordKind::AttemptFinished(report) if report.outcome.is_delivered() => self
                .time_of(report.version)
                .map(|at| record.at.0.saturating_sub(at.0)),
            _ => None,
        }
    }

    /// Notes that change `seq` was appended at `at`. Seqs come in increasing order, and
    /// times never go back (the log's invariants).
    pub fn note(&mut self, seq: Seq, at: Timestamp) {
        match self.notes.back() {
            // The same time as the last note: that note already answers for `seq`.
            Some(&(last, last_at)) if at <= last_at || seq <= last => {}
            _ => self.notes.push_back((seq, at)),
        }
        if self.notes.len() >= self.thin_at.max(THIN_AT) {
            self.thin(at);
            self.thin_at = 2 * self.notes.len();
        }
    }

    /// The time of change `seq`, or a little earlier (see the module docs); `None` if `seq`
    /// came before the first note.
    pub fn time_of(&self, seq: Seq) -> Option<Timestamp> {
        let after = self.notes.partition_point(|&(s, _)| s <= seq);
        after.checked_sub(1).map(|i| self.notes[i].1)
    }

    /// How many notes are kept.
    pub fn len(&self) -> usize {
        self.notes.len()
    }

    /// True before the first change is noted.
    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    /// Drops each note whose removal leaves a span no longer than a sixteenth of its end's
    /// age at `now`. A version in the widened span then reads the time of the note before
    /// it: early by less than the span, while its lag, measured at `now` or later, is at
    /// least the age of the span's end. The first note (the limit of what is known) and the
    /// last are kept.
    fn thin(&mut self, now: Timestamp) {
        let mut kept: VecDeque<(Seq, Timestamp)> = VecDeque::with_capacity(self.notes.len());
        let mut notes = self.notes.iter().copied().peekable();
        while let Some(note) = notes.next() {
            let (Some(&(_, prev_at)), Some(&(_, next_at))) = (kept.back(), notes.peek()) else {
                kept.push_back(note);
                continue;
            };
            let span = next_at.0 - prev_at.0;
            let age = now.0.saturating_sub(next_at.0);
            if span * ERROR_DIVISOR > age {
                kept.push_back(note);
            }
        }
        self.notes = kept;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_version_reads_the_time_of_its_change() {
        let mut t = ChangeTimes::default();
        assert_eq!(t.time_of(Seq(5)), None);
        t.note(Seq(3), Timestamp(1000));
        t.note(Seq(4), Timestamp(1000));
        t.note(Seq(7), Timestamp(1500));
        assert_eq!(t.len(), 2);
        assert_eq!(t.time_of(Seq(2)), None, "before the first note");
        assert_eq!(t.time_of(Seq(3)), Some(Timestamp(1000)));
        assert_eq!(t.time_of(Seq(4)), Some(Timestamp(1000)));
        assert_eq!(t.time_of(Seq(7)), Some(Timestamp(1500)));
    }

    #[test]
    fn a_delivered_outcome_gives_its_lag() {
        use cb_core::{
            AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, EventKind, FileId,
            FileKey, MachineKey, Outcome, ProjectId,
        };
        let file = FileKey {
            project: ProjectId::new("p").unwrap(),
            file_id: FileId::new("f").unwrap(),
        };
        let change = Record {
            seq: Seq(1),
            at: Timestamp(10_000),
            kind: RecordKind::ChangeAppended {
                file: file.clone(),
                event: EventKind::ALL[0],
                callbacks: None,
            },
        };
        let outcome = |outcome| Record {
            seq: Seq(3),
            at: Timestamp(12_500),
            kind: RecordKind::AttemptFinished(AttemptReport {
                machine: MachineKey {
                    file: file.clone(),
                    callback: CallbackRef::Project(CallbackName::new("hook").unwrap()),
                },
                delivery: DeliveryId(Seq(1)),
                attempt: 1,
                version: Seq(1),
                outcome,
                latency_ms: 7,
                digest: Digest::of(b""),
                detail: String::new(),
            }),
        };
        let mut t = ChangeTimes::default();
        assert_eq!(t.fold(&outcome(Outcome::Delivered { status: 200 })), None);
        assert_eq!(t.fold(&change), None);
        assert_eq!(t.fold(&outcome(Outcome::Timeout)), None, "not delivered");
        assert_eq!(
            t.fold(&outcome(Outcome::Delivered { status: 200 })),
            Some(2_500)
        );
    }

    proptest! {
        /// Whatever the rate and the gaps, every version reads a time no later than its
        /// change's and early by less than a sixteenth of its lag at any later time; and the
        /// notes stay few.
        #[test]
        fn thinned_times_are_early_by_less_than_a_sixteenth_of_the_lag(
            gaps in prop::collection::vec((1u64..4, prop_oneof![0u64..3, 0u64..2_000, 0u64..10_000_000]), 1..6_000),
            later in 0u64..100_000_000,
        ) {
            let mut t = ChangeTimes::default();
            let mut truth = Vec::new();
            let (mut seq, mut at) = (0u64, 1_700_000_000_000u64);
            for (step, dt) in gaps {
                seq += step;
                at += dt;
                t.note(Seq(seq), Timestamp(at));
                truth.push((seq, at));
            }
            prop_assert!(t.len() <= 2_100, "{} notes", t.len());
            let first = truth[0].0;
            let now = at + later;
            for &(seq, at) in &truth {
                let read = t.time_of(Seq(seq)).expect("noted");
                prop_assert!(read.0 <= at, "seq {seq}: read {} after {at}", read.0);
                let lag = now - at;
                prop_assert!((at - read.0) * ERROR_DIVISOR <= lag, "seq {seq}: early by {} for a lag of {lag}", at - read.0);
            }
            prop_assert_eq!(t.time_of(Seq(first)), Some(Timestamp(truth[0].1)));
            prop_assert_eq!(t.time_of(Seq(first - 1)), None);
        }
    }
}
