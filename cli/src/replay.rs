//! `cbctl replay`: fold a log from scratch with the pure core and audit every recorded
//! attempt against the decision the core makes at that point.
//!
//! For every `StartAttempt` the fold hands out, the audit remembers what was decided (the
//! machine, delivery, attempt number, version and callback). Every `AttemptFinished` record
//! must then match one of those decisions, carry the same version, and carry the digest of
//! the payload the core renders for that version and callback. Anything else is a
//! [`Divergence`], named by its sequence number. The audit reads snapshots only to render,
//! through a lookup the caller gives (the store), so it stays testable without a data dir.

use std::collections::{BTreeMap, HashMap, HashSet};

use cb_core::{
    render, Attempt, Core, DeliveryId, Digest, Effect, FileKey, MachineKey, Record, RecordKind,
    Seq, Snapshot, StateName,
};
use serde::Serialize;

/// A recorded outcome that does not match what the core decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The outcome record's sequence number.
    pub seq: u64,
    /// What does not match, in one line.
    pub explanation: String,
}

/// The audit's counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Records folded.
    pub records: u64,
    /// Distinct files that had a change.
    pub files: u64,
    /// Distinct callbacks ever configured (project callbacks).
    pub callbacks: u64,
    /// Deliveries opened (distinct machine and delivery id with an attempt).
    pub deliveries: u64,
    /// Attempts the core started.
    pub attempts_started: u64,
    /// Recorded outcomes by class.
    pub outcomes: BTreeMap<String, u64>,
    /// Machines per state at the end.
    pub machines: BTreeMap<String, u64>,
    /// Records the core ignored.
    pub ignored: u64,
    /// The last record folded.
    pub last_seq: Option<u64>,
    /// Every divergence, in log order.
    pub divergences: Vec<Divergence>,
}

/// A decided attempt, waiting for its outcome.
struct Decided {
    version: Seq,
    callback: std::sync::Arc<cb_core::Callback>,
}

/// The audit in progress.
pub struct Audit<S> {
    core: Core,
    snapshots: S,
    decided: HashMap<(MachineKey, DeliveryId, u32), Decided>,
    files: HashSet<FileKey>,
    callbacks: HashSet<(cb_core::ProjectId, cb_core::CallbackName)>,
    deliveries: HashSet<(MachineKey, DeliveryId)>,
    /// Digests of renders already made, by (version, callback).
    rendered: HashMap<(Seq, std::sync::Arc<cb_core::Callback>), Digest>,
    summary: Summary,
    effects: Vec<Effect>,
}

/// Why a snapshot could not be read for rendering.
pub type LookupError = String;

impl<S> Audit<S>
where
    S: FnMut(Seq) -> Result<Option<Snapshot>, LookupError>,
{
    /// A fresh audit reading snapshots through `snapshots`.
    pub fn new(snapshots: S) -> Audit<S> {
        Audit {
            core: Core::new(),
            snapshots,
            decided: HashMap::new(),
            files: HashSet::new(),
            callbacks: HashSet::new(),
            deliveries: HashSet::new(),
            rendered: HashMap::new(),
            summary: Summary::default(),
            effects: Vec::new(),
        }
    }

    /// Folds one record and checks it if it is an outcome.
    pub fn feed(&mut self, record: &Record) {
        if self.core.last_seq().is_some_and(|s| record.seq <= s) {
            self.diverge(
                record.seq,
                "out of order: not after the previous record".into(),
            );
            return;
        }
        if record.at < self.core.now() {
            self.diverge(
                record.seq,
                format!(
                    "time runs backwards: {} before {}",
                    record.at,
                    self.core.now()
                ),
            );
            return;
        }
        self.summary.records += 1;
        self.summary.last_seq = Some(record.seq.0);
        match &record.kind {
            RecordKind::ChangeAppended { file, .. } => {
                self.files.insert(file.clone());
            }
            RecordKind::CallbackPut { project, name, .. } => {
                self.callbacks.insert((project.clone(), name.clone()));
            }
            RecordKind::AttemptFinished(report) => {
                *self
                    .summary
                    .outcomes
                    .entry(report.outcome.class().to_owned())
                    .or_default() += 1;
                let key = (report.machine.clone(), report.delivery, report.attempt);
                match self.decided.remove(&key) {
                    None => self.diverge(
                        record.seq,
                        format!(
                            "outcome of {} delivery {} attempt {} that the core never started",
                            report.machine, report.delivery.0, report.attempt
                        ),
                    ),
                    Some(decided) => {
                        if decided.version != report.version {
                            self.diverge(
                                record.seq,
                                format!(
                                    "{} attempt {} carried version {}, the core decided version {}",
                                    report.machine, report.attempt, report.version, decided.version
                                ),
                            );
                        } else {
                            self.check_digest(record.seq, report, decided);
                        }
                    }
                }
            }
            _ => {}
        }
        let mut effects = std::mem::take(&mut self.effects);
        // Deadlines fire inside `apply`; their attempts are decided as of this point.
        if let cb_core::Disposition::Ignored(_) = self.core.apply(record, &mut effects) {
            self.summary.ignored += 1;
        }
        for effect in effects.drain(..) {
            if let Effect::StartAttempt(a) = effect {
                self.decide(a);
            }
        }
        self.effects = effects;
    }

    fn decide(&mut self, a: Attempt) {
        self.summary.attempts_started += 1;
        self.deliveries.insert((a.machine.clone(), a.delivery));
        self.decided.insert(
            (a.machine, a.delivery, a.attempt),
            Decided {
                version: a.version,
                callback: a.callback,
            },
        );
    }

    fn check_digest(&mut self, seq: Seq, report: &cb_core::AttemptReport, decided: Decided) {
        let key = (decided.version, decided.callback.clone());
        let digest = match self.rendered.get(&key) {
            Some(d) => *d,
            None => match (self.snapshots)(decided.version) {
                Ok(Some(snapshot)) => {
                    let d = render(&snapshot, &decided.callback).digest();
                    if self.rendered.len() > 100_000 {
                        self.rendered.clear();
                    }
                    self.rendered.insert(key, d);
                    d
                }
                Ok(None) => {
                    self.diverge(
                        seq,
                        format!("version {} has no snapshot in the log", decided.version),
                    );
                    return;
                }
                Err(e) => {
                    self.diverge(seq, format!("reading version {}: {e}", decided.version));
                    return;
                }
            },
        };
        if digest != report.digest {
            self.diverge(
                seq,
                format!(
                    "{} attempt {} sent bytes with digest {}, the core renders {} for version {}",
                    report.machine,
                    report.attempt,
                    short(&report.digest),
                    short(&digest),
                    decided.version
                ),
            );
        }
    }

    fn diverge(&mut self, seq: Seq, explanation: String) {
        self.summary.divergences.push(Divergence {
            seq: seq.0,
            explanation,
        });
    }

    /// The counts, and the core as of the last record.
    pub fn finish(mut self) -> (Summary, Core) {
        let census = self.core.census();
        for (state, n) in StateName::ALL.iter().zip(census.states) {
            self.summary.machines.insert(state.as_str().to_owned(), n);
        }
        self.summary.files = self.files.len() as u64;
        self.summary.callbacks = self.callbacks.len() as u64;
        self.summary.deliveries = self.deliveries.len() as u64;
        (self.summary, self.core)
    }

    /// Attempts decided whose outcome is not in the log (in flight at its end).
    pub fn in_flight(&self) -> usize {
        self.decided.len()
    }
}

fn short(d: &Digest) -> String {
    d.to_hex()[..12].to_owned()
}
