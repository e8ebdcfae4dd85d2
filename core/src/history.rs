//! One file's story: the fold of that file's records (plus its project's configuration),
//! step by step, with the file's machines after each step.
//!
//! The projection property (`fold.rs` module docs) makes this exact: folding only these
//! records reaches the same states and attempts the whole log reaches for the file. Each
//! deadline that fires between two records is a step of its own, at its own time, so a reader
//! sees "due → attempt 1 started" where it happened rather than folded into the next record.
//! `GET /v1/files/…/history`, `cbctl history` and `cbctl rewind` are views of this.

use crate::effect::Effect;
use crate::fold::{Checkpoint, Core, Disposition, PassedOver, Rules};
use crate::ids::{CallbackRef, FileKey, Seq, Timestamp};
use crate::machine::{Machine, StateName};
use crate::record::{Record, RecordKind};

/// What moved the file's fold one step.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Cause {
    /// A record of the file or its project.
    Record(Record, Disposition),
    /// Deadlines that fell due at this time, between records.
    Deadline(Timestamp),
}

/// One step of a file's story.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Step {
    /// What happened.
    pub cause: Cause,
    /// The effects it produced for this file (attempts started, disables owed).
    pub effects: Vec<Effect>,
    /// The file's version after it.
    pub version: Option<Seq>,
    /// The file's machines after it, by callback.
    pub machines: Vec<(CallbackRef, Machine)>,
    /// At a change: the callbacks in force that it passed over (filtered by their `events`,
    /// or disabled), which therefore have no machine step to show for it.
    pub passed_over: Vec<(CallbackRef, PassedOver)>,
}

impl Step {
    /// When the step happened.
    pub fn at(&self) -> Timestamp {
        match &self.cause {
            Cause::Record(r, _) => r.at,
            Cause::Deadline(t) => *t,
        }
    }
}

/// A file's fold, kept step by step.
#[derive(Clone, Debug)]
pub struct FileHistory {
    /// The file.
    pub file: FileKey,
    /// Where the fold started, when not at the log's first record: the log's base (history
    /// before it was removed by retention) and the file's version there.
    pub base: Option<FileStart>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The fold's core after the last step (per-file: it knows only this file).
    pub core: Core,
}

/// Where a file's fold starts after retention removed older history: the core's state at
/// the log's base as far as the file can tell ([`Checkpoint::for_file`]), and the file's
/// version there (its latest change at or before the base, kept by retention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStart {
    /// The state at the base.
    pub state: Checkpoint,
    /// The file's version at the base, if it had one.
    pub version: Option<Seq>,
}

impl FileStart {
    /// The base: the last record the state covers.
    pub fn seq(&self) -> Seq {
        self.state.last_seq.unwrap_or(Seq(0))
    }
}

impl FileHistory {
    /// Whether the log knows the file at all: a record of the file itself among `records`
    /// (the file's and its project's), or a version at the base. A file cb never saw has
    /// only its project's configuration records, which are no story of the file (a typo in
    /// a file id must read as "no such file", not as an empty history).
    pub fn knows_file(records: &[Record], start: Option<&FileStart>) -> bool {
        records
            .iter()
            .any(|r| matches!(r.scope(), crate::record::Scope::File(_)))
            || start.is_some_and(|s| s.version.is_some())
    }

    /// Folds `records` (the file's and its project's, in log order) and then lets time run
    /// to `until`, if given and later, firing the deadlines it passes.
    pub fn fold(
        file: &FileKey,
        records: impl IntoIterator<Item = Record>,
        until: Option<Timestamp>,
    ) -> FileHistory {
        FileHistory::fold_from(file, None, records, until, Rules::default())
    }

    /// [`fold`](Self::fold), starting from the state at the log's base (`start`) instead of
    /// the log's first record (`records` are then the ones after the base), under the log's
    /// `rules` (`cb_store::Store::rules`).
    pub fn fold_from(
        file: &FileKey,
        start: Option<FileStart>,
        records: impl IntoIterator<Item = Record>,
        until: Option<Timestamp>,
        rules: Rules,
    ) -> FileHistory {
        let mut core = match &start {
            Some(s) => Core::from_checkpoint(s.state.for_file(file)),
            None => Core::new(),
        };
        core.set_rules(rules);
        let mut h = FileHistory {
            file: file.clone(),
            base: start,
            steps: Vec::new(),
            core,
        };
        for record in records {
            if h.core.last_seq().is_some_and(|s| record.seq <= s) {
                continue;
            }
            h.fire_deadlines_until(record.at);
            let mut effects = Vec::new();
            let disposition = h.core.apply(&record, &mut effects);
            h.push(Cause::Record(record, disposition), effects);
        }
        if let Some(until) = until {
            if until >= h.core.now() {
                h.fire_deadlines_until(until);
                h.core.advance(until, &mut Vec::new());
            }
        }
        h
    }

    /// The file's version as of the last step: the latest change among the records folded.
    /// (The fold's core may have forgotten the file; the records have not.)
    pub fn latest_change(&self) -> Option<Seq> {
        self.steps
            .iter()
            .rev()
            .find_map(|s| match &s.cause {
                Cause::Record(r, _) if matches!(r.kind, RecordKind::ChangeAppended { .. }) => {
                    Some(r.seq)
                }
                _ => None,
            })
            .or_else(|| self.base.as_ref().and_then(|b| b.version))
    }

    fn fire_deadlines_until(&mut self, to: Timestamp) {
        while let Some(t) = self.core.next_deadline().filter(|t| *t <= to) {
            let mut effects = Vec::new();
            self.core.advance(t, &mut effects);
            self.push(Cause::Deadline(t), effects);
        }
    }

    fn push(&mut self, cause: Cause, mut effects: Vec<Effect>) {
        effects.retain(|e| match e {
            Effect::StartAttempt(a) => a.machine.file == self.file,
            Effect::DisableCallback { machine, .. } => machine.file == self.file,
            Effect::WakeAt { .. } => false,
        });
        let passed_over = match &cause {
            Cause::Record(r, _) => match &r.kind {
                RecordKind::ChangeAppended { event, .. } => {
                    self.core.passed_over(&self.file, *event)
                }
                _ => Vec::new(),
            },
            Cause::Deadline(_) => Vec::new(),
        };
        let entry = self.core.file(&self.file);
        self.steps.push(Step {
            cause,
            effects,
            version: entry.map(|e| e.version),
            machines: entry.map(|e| e.machines.to_vec()).unwrap_or_default(),
            passed_over,
        });
    }

    /// The latest state each callback's machine had, as of the end: the machine itself if
    /// the core keeps it, else the last state it had before the core forgot it (a `sent`
    /// machine whose window elapsed), flagged `false`.
    pub fn latest_machines(&self) -> Vec<(CallbackRef, Machine, bool)> {
        let mut out: Vec<(CallbackRef, Machine, bool)> = Vec::new();
        let kept = self
            .core
            .file(&self.file)
            .map(|e| e.machines.clone())
            .unwrap_or_default();
        for (r, m) in &kept {
            out.push((r.clone(), m.clone(), true));
        }
        let mut seen: Vec<&CallbackRef> = kept.iter().map(|(r, _)| r).collect();
        for step in self.steps.iter().rev() {
            for (r, m) in &step.machines {
                if seen.contains(&r) {
                    continue;
                }
                seen.push(r);
                // Only a `sent` machine is forgotten on its own; one dropped with its
                // callback (removed, disabled) has no latest state to show.
                if m.state.name() == StateName::Sent {
                    out.push((r.clone(), m.clone(), false));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::digest::Digest;
    use crate::event::EventKind;
    use crate::ids::{CallbackName, CallbackRef, DeliveryId, MachineKey, ProjectId};
    use crate::record::{AttemptReport, Outcome, RecordKind};
    use crate::Callback;

    fn rec(seq: u64, at: u64, kind: RecordKind) -> Record {
        Record {
            seq: Seq(seq),
            at: Timestamp(at),
            kind,
        }
    }

    #[test]
    fn deadlines_are_steps_of_their_own_and_forgotten_sent_machines_stay_visible() {
        let project = ProjectId::new("p").unwrap();
        let file = FileKey::new(project.clone(), crate::FileId::new("1").unwrap());
        let name = CallbackName::new("a").unwrap();
        let callback = Arc::new(
            Callback::from_json(r#"{"url":"http://x.example/","window_secs":10}"#).unwrap(),
        );
        let machine = MachineKey {
            file: file.clone(),
            callback: CallbackRef::Project(name.clone()),
        };
        let records = vec![
            rec(
                1,
                0,
                RecordKind::CallbackPut {
                    project,
                    name,
                    callback,
                },
            ),
            rec(
                2,
                1_000,
                RecordKind::ChangeAppended {
                    file: file.clone(),
                    event: EventKind::Rated,
                    callbacks: None,
                },
            ),
            rec(
                3,
                11_050,
                RecordKind::AttemptFinished(AttemptReport {
                    machine,
                    delivery: DeliveryId(Seq(2)),
                    attempt: 1,
                    version: Seq(2),
                    outcome: Outcome::Delivered { status: 200 },
                    latency_ms: 50,
                    digest: Digest::of(b""),
                    detail: String::new(),
                }),
            ),
        ];
        let h = FileHistory::fold(&file, records, Some(Timestamp(60_000)));
        let kinds: Vec<String> = h
            .steps
            .iter()
            .map(|s| match &s.cause {
                Cause::Record(r, _) => format!("{}@{}", r.seq, r.at.0),
                Cause::Deadline(t) => format!("deadline@{}", t.0),
            })
            .collect();
        assert_eq!(kinds, ["1@0", "2@1000", "deadline@11000", "3@11050"]);
        assert!(matches!(h.steps[2].effects[..], [Effect::StartAttempt(_)]));
        assert_eq!(h.steps[3].machines[0].1.state.name(), StateName::Sent);
        // By 60 s the window has elapsed and the core forgot the machine; the view keeps it.
        assert!(h.core.file(&file).is_none());
        let latest = h.latest_machines();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].1.state.name(), StateName::Sent);
        assert!(!latest[0].2, "flagged as forgotten");
        assert_eq!(h.latest_change(), Some(Seq(2)));
    }
}
