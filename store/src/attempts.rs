//! Recorded attempts as an operator lists them (`GET /v1/attempts`, `cbctl attempts`):
//! newest first, narrowed by whose they are, how they ended and when. Pages come from the
//! index's attempt entries (`index.rs`: by project, callback and outcome class, or by class
//! alone) and a file's own entries, and times become seq bounds by a binary search over
//! the log (record times never go back: `commit.rs` refuses a record stamped before the
//! one it follows) — so a page costs the attempts it returns, not the log it skips.

use cb_core::{CallbackRef, FileKey, OutcomeClass, ProjectId, Record, RecordKind, Seq, Timestamp};

use crate::codec::IndexTag;
use crate::error::{Error, Result};
use crate::index::AttemptFilter;
use crate::log::Store;

/// Whose attempts a list asks for. A callback is named within its project, so it never
/// comes without one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AttemptsOf {
    /// Every attempt in the log.
    All,
    /// One project's, of any callback (or of one).
    Project(ProjectId, Option<CallbackRef>),
    /// One file's, of any callback (or of one).
    File(FileKey, Option<CallbackRef>),
}

/// A page of recorded attempts to list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AttemptQuery {
    /// Whose.
    pub of: AttemptsOf,
    /// Only those that ended so.
    pub class: Option<OutcomeClass>,
    /// Only those recorded at or after this time.
    pub since: Option<Timestamp>,
    /// Only those recorded at or before this time.
    pub until: Option<Timestamp>,
    /// Only those numbered below this: the previous page's last.
    pub before: Option<Seq>,
    /// The most to answer.
    pub limit: usize,
}

/// What [`Store::attempts`] answers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AttemptPage {
    /// `AttemptFinished` records, newest first.
    pub records: Vec<Record>,
    /// Whether older ones match too (the next page starts below the last record here).
    pub more: bool,
}

impl Store {
    /// The durable attempts `query` asks for, newest first.
    pub fn attempts(&self, query: &AttemptQuery) -> Result<AttemptPage> {
        let (mut lo, mut hi) = (self.first_seq(), self.tip());
        if let Some(before) = query.before {
            hi = hi.min(Seq(before.0.saturating_sub(1)));
        }
        if let Some(since) = query.since {
            lo = lo.max(self.first_stamped_from(since, lo, hi)?);
        }
        if let Some(until) = query.until {
            let after = self.first_stamped_from(Timestamp(until.0.saturating_add(1)), lo, hi)?;
            hi = hi.min(Seq(after.0.saturating_sub(1)));
        }
        // One more than asked says whether there are more.
        let want = query.limit.saturating_add(1);
        let mut records = match &query.of {
            AttemptsOf::File(file, callback) => {
                self.file_attempts(file, callback.as_ref(), query.class, lo, hi, want)?
            }
            AttemptsOf::All | AttemptsOf::Project(..) => {
                let (project, callback) = match &query.of {
                    AttemptsOf::Project(p, c) => (Some(p), c.as_ref().map(ToString::to_string)),
                    _ => (None, None),
                };
                let filter = AttemptFilter {
                    project,
                    callback: callback.as_deref().map(str::as_bytes),
                    class: query.class,
                };
                let seqs = self.shared.index.attempt_seqs(filter, lo, hi, want)?;
                let mut records = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    let Some(record) = self.still_held(seq)? else {
                        continue;
                    };
                    if !matches!(record.kind, RecordKind::AttemptFinished(_)) {
                        return Err(self
                            .shared
                            .index
                            .give_up(format!("it filed record {seq} as an attempt")));
                    }
                    records.push(record);
                }
                records
            }
        };
        let more = records.len() > query.limit;
        records.truncate(query.limit);
        Ok(AttemptPage { records, more })
    }

    /// One file's attempts, from its own index entries (newest first).
    fn file_attempts(
        &self,
        file: &FileKey,
        callback: Option<&CallbackRef>,
        class: Option<OutcomeClass>,
        lo: Seq,
        hi: Seq,
        want: usize,
    ) -> Result<Vec<Record>> {
        let mut seqs: Vec<Seq> = self
            .shared
            .index
            .file_entries(file)?
            .into_iter()
            .filter(|(seq, tag)| *tag == IndexTag::Attempt && *seq >= lo && *seq <= hi)
            .map(|(seq, _)| seq)
            .collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.dedup();
        let mut records = Vec::new();
        for seq in seqs {
            let Some(record) = self.still_held(seq)? else {
                continue;
            };
            let RecordKind::AttemptFinished(a) = &record.kind else {
                return Err(self
                    .shared
                    .index
                    .give_up(format!("it filed record {seq} as an attempt of {file}")));
            };
            if callback.is_some_and(|c| *c != a.machine.callback)
                || class.is_some_and(|c| c != a.outcome.outcome_class())
            {
                continue;
            }
            records.push(record);
            if records.len() >= want {
                break;
            }
        }
        Ok(records)
    }

    /// Record `seq`, or `None` when retention removed it while the page was read (the
    /// base moved past it): such a page simply ends at the new base.
    fn still_held(&self, seq: Seq) -> Result<Option<Record>> {
        match self.record(seq)? {
            Some(record) => Ok(Some(record)),
            None if seq < self.first_seq() => Ok(None),
            None => Err(Error::Missing { seq }),
        }
    }

    /// The first seq in `lo..=hi` stamped at or after `t` (`hi + 1` when none is): record
    /// times never go back, so a binary search finds it in some 20-odd reads.
    fn first_stamped_from(&self, t: Timestamp, lo: Seq, hi: Seq) -> Result<Seq> {
        let (mut lo, mut hi) = (lo.0, hi.0.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // A record retention removed meanwhile lies before every one still held.
            let before = match self.still_held(Seq(mid))? {
                Some(record) => record.at < t,
                None => true,
            };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(Seq(lo))
    }
}
