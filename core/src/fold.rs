//! The fold: [`Core`] takes log records in order and hands effects out.
//!
//! It owns every delivery machine, the callback configuration, and the timers; it never
//! performs anything. The driving contract (see the crate docs) is: `apply` each record in
//! log order, perform the effects it pushed, and append a `Ticked` record once
//! [`Core::next_deadline`] has passed.
//!
//! Time is only an input. A deadline `d` fires *before* the first record with `at >= d` is
//! applied, and as of `d` itself — not as of that record. Under rules version 2
//! ([`RULES_VERSION`]), a deadline that a record sets at or before its own time (a leading
//! change is due at once) fires in that record's step, right after it, rather than at the
//! next record: the attempt starts as soon as the change is durable, without a `Ticked`
//! record and its flush in between. Records of a log written under version 1 are folded
//! under version 1 ([`Rules`]), so an old log replays as it was decided. So a machine's decisions depend only
//! on its own records and its deadlines, never on when ticks happen to arrive or on other
//! files' records: folding one file's records (plus its project's configuration) reaches
//! exactly the states and attempts the whole log reaches for that file. That is what makes
//! `cbctl history` and `rewind` cheap and exact, and it is property-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::config::{Callback, FileCallback};
use crate::effect::{Attempt, Effect};
use crate::event::EventKind;
use crate::ids::{CallbackName, CallbackRef, FileKey, MachineKey, ProjectId, Seq, Timestamp};
use crate::lists::{self, Deliveries, DeliveryQuery, ListKey, ListSource};
use crate::machine::{InFlight, Machine, Opening, OutcomeStep, StateName};
use crate::record::{AttemptReport, Record, RecordKind};
use crate::timers::Timers;

/// The newest version of the delivery rules, the one this build decides new records under.
/// Version 1: SPEC §4 as first implemented. Version 2: a deadline a record sets at or
/// before its own time fires in that record's step (module docs).
pub const RULES_VERSION: u32 = 2;

/// Which rules each record is folded under: version 1 before `current_from`, and
/// [`RULES_VERSION`] from it on. The log says where (each segment records the rules of the
/// build that started it, and a build of newer rules starts a new segment), so a fold of a
/// log that began under older rules is told by whoever reads the log
/// (`cb_store::Store::rules`). The default, for a log written by this build alone: every
/// record under the newest rules.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Rules {
    /// The first record folded under [`RULES_VERSION`].
    pub current_from: Seq,
}

impl Rules {
    /// The rules version record `seq` is folded under.
    pub fn version_at(self, seq: Seq) -> u32 {
        if seq >= self.current_from {
            RULES_VERSION
        } else {
            1
        }
    }
}

/// A project callback and whether a `410 Gone` disabled it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CallbackSlot {
    /// The configuration in force.
    pub callback: Arc<Callback>,
    /// The `CallbackPut` record that set it; a disable caused by an earlier outcome is stale.
    pub put_by: Seq,
    /// The outcome record whose `410 Gone` disabled it, if any. A new put enables it again.
    pub disabled_by: Option<Seq>,
}

/// A per-file callback and whether a `410 Gone` disabled it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FileCallbackSlot {
    /// The configuration in force.
    pub callback: FileCallback,
    /// The change that gave it; a disable caused by an earlier outcome is stale.
    pub given_by: Seq,
    /// The outcome record whose `410 Gone` disabled it, if any.
    pub disabled_by: Option<Seq>,
}

/// A file's machines, by callback. Nearly every file has one callback, so its machine is
/// kept inline in the file's entry: a separate allocation was one more cache miss on every
/// step of a fold over many files.
pub type Machines = smallvec::SmallVec<[(CallbackRef, Machine); 1]>;

/// What the core keeps of one file. Files with no machine and no per-file callback are
/// forgotten; their next change starts afresh, which rule 1 makes exact.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's version: the sequence number of its latest change the core has seen.
    pub version: Seq,
    /// Per-file callbacks. Invariant: sorted by name, names unique.
    pub callbacks: Vec<FileCallbackSlot>,
    /// The file's machines. Invariant: sorted by callback, each callback's slot exists.
    pub machines: Machines,
}

impl FileEntry {
    fn is_idle(&self) -> bool {
        self.machines.is_empty() && self.callbacks.is_empty()
    }

    fn machine_pos(&self, callback: &CallbackRef) -> Result<usize, usize> {
        machine_pos(&self.machines, callback)
    }

    /// The machine for `callback`, if any.
    pub fn machine(&self, callback: &CallbackRef) -> Option<&Machine> {
        self.machine_pos(callback).ok().map(|i| &self.machines[i].1)
    }

    fn file_callback(&self, name: &CallbackName) -> Option<&FileCallbackSlot> {
        self.callbacks.iter().find(|s| &s.callback.name == name)
    }
}

/// What applying a record did. Records the rules cannot use are ignored deterministically
/// and counted; they are not errors (a late outcome of a removed callback's attempt is normal).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The record was used.
    Applied,
    /// The record changed nothing, for this reason.
    Ignored(Ignored),
}

/// Why a record changed nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// An outcome that is not the one the machine's attempt in flight awaits (late,
    /// duplicated, or its machine was dropped).
    StaleOutcome,
    /// The callback it names does not exist.
    UnknownCallback,
    /// The callback it names is disabled.
    DisabledCallback,
    /// A redeliver for a file with no known version.
    NothingToRedeliver,
    /// A redeliver while every target already had an attempt in flight.
    AlreadyInFlight,
    /// A `CallbackDisabled` whose 410 predates the callback's latest put.
    SupersededDisable,
    /// A redeliver for a paused callback (rule 8), or a pause of one already paused.
    PausedCallback,
    /// A resume of a callback that is not paused.
    NotPaused,
}

/// Why a change started or moved no machine of a callback in force for its file.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassedOver {
    /// The callback's `events` (or a per-file callback's `on_success`/`on_failure`/
    /// `on_progress` switch) leave the change's event out.
    Events,
    /// A `410 Gone` disabled the callback.
    Disabled,
}

/// Machines per state, and other totals.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Census {
    /// Files the core keeps.
    pub files: u64,
    /// Machines per state, in [`StateName::ALL`] order.
    pub states: [u64; 5],
    /// The earliest deadline.
    pub next_deadline: Option<Timestamp>,
    /// Records ignored so far.
    pub ignored: u64,
}

/// One step of one machine; each maps to one `Machine` transition.
#[derive(Clone, Copy)]
enum Step<'a> {
    Trigger(Opening),
    Due(Timestamp),
    Outcome(&'a AttemptReport, Seq, Timestamp),
    Redeliver(Seq, Timestamp),
    Config,
    /// A deadline that fired while the callback is paused (rule 8).
    DuePaused(Timestamp),
    /// The callback resumed at this time (rule 8).
    Resume(Timestamp),
}

/// Each project's callbacks, by name.
type Projects = BTreeMap<ProjectId, BTreeMap<CallbackName, CallbackSlot>>;

/// The paused project callbacks, by project and name, with the `CallbackPaused` record.
type Paused = BTreeMap<ProjectId, BTreeMap<CallbackName, Seq>>;

/// The pure fold from log records to delivery machines.
#[derive(Clone, Debug, Default)]
pub struct Core {
    /// The `at` of the latest record (or `advance`). Invariant: never decreases.
    now: Timestamp,
    /// Invariant: strictly increases with every record.
    last_seq: Option<Seq>,
    projects: Projects,
    /// Never iterated where the order could reach an effect or a checkpoint (those sort), so
    /// a fast hash map cannot make the fold nondeterministic.
    files: FxHashMap<FileKey, FileEntry>,
    /// Invariant: an entry `(m.deadline(), key)` for every machine with a deadline — but a
    /// paused callback's machine whose deadline has passed, which is parked until the resume
    /// (rule 8, `StepOut::unparked`) — and, between records, the earliest entry is one of
    /// those (`settle_deadlines`).
    deadlines: Timers,
    /// Invariant: an entry `(m.expiry(), key)` for every machine with an expiry.
    expiries: Timers,
    /// 410s whose `CallbackDisabled` has not been appended yet, with the outcome's seq. Kept
    /// in the state (and checkpoints) so a driver that crashed between the two appends can
    /// append the disable after restart ([`Core::owed_disables`]).
    owed_disables: BTreeMap<MachineKey, Seq>,
    ignored: u64,
    /// The paused project callbacks (rule 8), with the record that paused each.
    paused: Paused,
    /// Kept as machines move, so a census (every `/metrics` scrape, every status) costs
    /// nothing per file held.
    tally: Tally,
    /// Which rules each record is folded under.
    rules: Rules,
}

/// The machines per state, counted and listed: what reports and lists ask for, kept as
/// machines move so that none scans the files.
#[derive(Clone, Debug)]
struct Tally {
    /// Invariant: `states[i]` is the number of machines in state `StateName::ALL[i]`.
    states: [u64; 5],
    /// Invariant: `lists[i]`, when kept, holds the [`ListKey`] of every machine in state
    /// `StateName::ALL[i]`. Retrying and abandoned are always kept (they move on failures
    /// only); coalescing, pending and sent move on every delivery, so they are kept once
    /// [`Core::keep_lists`] asks (the daemon, for its delivery lists), not in a replay.
    lists: [Option<BTreeSet<ListKey>>; 5],
    /// Invariant: the per-file callbacks a `410 Gone` disabled, as (file, callback) keys.
    disabled_file_callbacks: BTreeSet<MachineKey>,
    /// Invariant, when kept (with the lists): for each (project, callback) that has
    /// machines, their number per state — `GET /v1/projects`' counts.
    groups: Option<GroupCounts>,
}

/// Machines per state of each (project, callback), for those that have any.
pub type GroupCounts = BTreeMap<ProjectId, BTreeMap<CallbackRef, [u64; 5]>>;

impl Default for Tally {
    fn default() -> Tally {
        let mut lists: [Option<BTreeSet<ListKey>>; 5] = Default::default();
        lists[state_index(StateName::Retrying)] = Some(BTreeSet::new());
        lists[state_index(StateName::Abandoned)] = Some(BTreeSet::new());
        Tally {
            states: [0; 5],
            lists,
            disabled_file_callbacks: BTreeSet::new(),
            groups: None,
        }
    }
}

impl Tally {
    /// Notes that `key`'s machine moved from state `was` to `is` (`None`: no machine).
    fn moved(&mut self, key: &MachineKey, was: Option<StateName>, is: Option<StateName>) {
        if was == is {
            return;
        }
        if let Some(groups) = &mut self.groups {
            count_in_group(groups, key, was, is);
        }
        let listed = |s: Option<StateName>| s.is_some_and(|s| self.lists[state_index(s)].is_some());
        let list_key = (listed(was) || listed(is)).then(|| ListKey::of(key));
        if let Some(was) = was {
            let i = state_index(was);
            self.states[i] -= 1;
            if let (Some(list), Some(k)) = (&mut self.lists[i], &list_key) {
                list.remove(k);
            }
        }
        if let Some(is) = is {
            let i = state_index(is);
            self.states[i] += 1;
            if let (Some(list), Some(k)) = (&mut self.lists[i], list_key) {
                list.insert(k);
            }
        }
    }
}

/// Moves `key`'s machine from `was` to `is` in its group's counts; a group left with no
/// machine goes, so the counts hold only groups with machines.
fn count_in_group(
    groups: &mut GroupCounts,
    key: &MachineKey,
    was: Option<StateName>,
    is: Option<StateName>,
) {
    let project = &key.file.project;
    if groups
        .get(project)
        .is_none_or(|g| !g.contains_key(&key.callback))
    {
        let g = groups.entry(project.clone()).or_default();
        g.insert(key.callback.clone(), [0; 5]);
    }
    let callbacks = groups.get_mut(project).expect("made above");
    let counts = callbacks.get_mut(&key.callback).expect("made above");
    if let Some(was) = was {
        counts[state_index(was)] -= 1;
    }
    if let Some(is) = is {
        counts[state_index(is)] += 1;
    }
    if counts.iter().all(|n| *n == 0) {
        callbacks.remove(&key.callback);
        if callbacks.is_empty() {
            groups.remove(project);
        }
    }
}

/// Where a state is in [`StateName::ALL`].
fn state_index(state: StateName) -> usize {
    match state {
        StateName::Coalescing => 0,
        StateName::Pending => 1,
        StateName::Sent => 2,
        StateName::Retrying => 3,
        StateName::Abandoned => 4,
    }
}

impl Core {
    /// An empty core: no callbacks, no files, time zero.
    pub fn new() -> Core {
        Core::default()
    }

    /// Folds records from here on under `rules` (where the log switched to the newest
    /// rules). The state folded so far is kept: a rule applies to the records folded under
    /// it.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// The rules records are folded under.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Folds one record: fires the deadlines it passes, applies it, and pushes the effects to
    /// perform onto `effects`. Cannot fail; records it cannot use are ignored and counted.
    ///
    /// # Panics
    /// If `record` is out of order (its `seq` not above the previous one, or its `at` before
    /// the previous one): logs are validated before they reach the core.
    pub fn apply(&mut self, record: &Record, effects: &mut Vec<Effect>) -> Disposition {
        assert!(
            self.last_seq.is_none_or(|s| record.seq > s),
            "record {} out of order (after {:?})",
            record.seq,
            self.last_seq
        );
        let before = self.next_deadline();
        self.advance(record.at, effects);
        self.last_seq = Some(record.seq);
        let (seq, at) = (record.seq, record.at);
        let disposition = match &record.kind {
            RecordKind::ChangeAppended {
                file,
                event,
                callbacks,
            } => self.on_change(file, *event, callbacks.as_deref(), seq, at, effects),
            RecordKind::CallbackPut {
                project,
                name,
                callback,
            } => self.on_callback_put(project, name, callback, seq, effects),
            RecordKind::CallbackRemoved { project, name } => {
                self.on_callback_removed(project, name)
            }
            RecordKind::CallbackDisabled { machine, cause } => {
                self.on_callback_disabled(machine, *cause)
            }
            RecordKind::Ticked => Disposition::Applied,
            RecordKind::AttemptFinished(report) => {
                self.step(&report.machine, Step::Outcome(report, seq, at), effects)
            }
            RecordKind::RedeliverRequested {
                file,
                callback,
                version,
            } => self.on_redeliver(file, callback.as_ref(), *version, seq, at, effects),
            RecordKind::CallbackPaused { project, name } => self.on_paused(project, name, seq),
            RecordKind::CallbackResumed { project, name } => {
                self.on_resumed(project, name, at, effects)
            }
            // A test send is a fact for operators, not an input of any machine.
            RecordKind::CallbackTested { .. } => Disposition::Applied,
        };
        if let Disposition::Ignored(_) = disposition {
            self.ignored += 1;
        }
        if seq >= self.rules.current_from {
            // Rules 2: what the record made due at its own time fires now, as of that time.
            // Expiries wait for the next record, as before: forgetting a `sent` machine is
            // no decision, and a history shows the machine sent before it is forgotten.
            self.fire_deadlines(at, effects);
        }
        self.settle_deadlines();
        let after = self.next_deadline();
        if after != before {
            if let Some(t) = after {
                effects.push(Effect::WakeAt { at: t });
            }
        }
        disposition
    }

    /// Moves time to `to`: fires every deadline up to it, each as of its own time, in
    /// (deadline, machine) order, and forgets machines whose `sent` window has elapsed.
    /// `apply` does this first for every record; a per-file fold may call it to see a file's
    /// state at a later time.
    pub fn advance(&mut self, to: Timestamp, effects: &mut Vec<Effect>) {
        assert!(
            to >= self.now,
            "time runs backwards: {to} after {}",
            self.now
        );
        self.fire_deadlines(to, effects);
        while let Some((t, keys)) = self.expiries.pop_due(to) {
            for key in keys {
                if timer_is_set(&self.files, Machine::expiry, t, &key) {
                    self.drop_machine(&key);
                }
            }
        }
        self.settle_deadlines();
        self.now = to;
    }

    /// Fires every deadline up to `to`, each as of its own time, in (deadline, machine)
    /// order.
    fn fire_deadlines(&mut self, to: Timestamp, effects: &mut Vec<Effect>) {
        // A due machine goes pending (no deadline) and touches no other machine, so firing
        // one time's machines in a row keeps the (deadline, machine) order exactly. Entries
        // whose machine has moved its timer (or is gone) are skipped: the machine's own
        // entry sits at its current time.
        while let Some((t, keys)) = self.deadlines.pop_due(to) {
            for key in keys {
                if timer_is_set(&self.files, Machine::deadline, t, &key) {
                    let fired = self.step(&key, Step::Due(t), effects);
                    assert_eq!(
                        fired,
                        Disposition::Applied,
                        "deadline of {key} without its callback"
                    );
                }
            }
        }
    }

    fn on_change(
        &mut self,
        file: &FileKey,
        event: EventKind,
        callbacks: Option<&[FileCallback]>,
        seq: Seq,
        at: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Disposition {
        // Per-file callbacks come with the change and apply to it (LightFlow: defined when the
        // asset is published).
        if let Some(list) = callbacks {
            self.replace_file_callbacks(file, list, seq, effects);
        }
        // The most common record: it looks the file up once and steps the machines where
        // they live (each further lookup was a hash and a key comparison, and the list of
        // triggered callbacks an allocation, on a million changes).
        let (projects, files, mut out) = self.parts(effects);
        let triggers = |s: &CallbackSlot| project_passes_over(s, event).is_none();
        let project_callbacks = projects.get(&file.project);
        // Rule 2: every change moves the file's version, triggering or not. A file the core
        // does not keep has no per-file callbacks and needs no version until something
        // triggers.
        let entry = match files.get_mut(file) {
            Some(entry) => {
                entry.version = seq;
                entry
            }
            None if project_callbacks
                .into_iter()
                .flatten()
                .any(|(_, s)| triggers(s)) =>
            {
                files.entry(file.clone()).or_insert_with(|| FileEntry {
                    version: seq,
                    callbacks: Vec::new(),
                    machines: Machines::new(),
                })
            }
            None => return Disposition::Applied,
        };
        let FileEntry {
            version,
            callbacks,
            machines,
        } = entry;
        let opening = Step::Trigger(Opening { seq, at });
        // The project's callbacks by name, then the file's (names unique:
        // `FileCallback::check_list`).
        for (name, slot) in project_callbacks.into_iter().flatten() {
            if triggers(slot) {
                let key = MachineKey {
                    file: file.clone(),
                    callback: CallbackRef::Project(name.clone()),
                };
                transition(machines, *version, &key, &slot.callback, opening, &mut out);
            }
        }
        for slot in callbacks.iter() {
            if file_passes_over(slot, event).is_none() {
                let key = MachineKey {
                    file: file.clone(),
                    callback: CallbackRef::File(slot.callback.name.clone()),
                };
                let callback = &slot.callback.callback;
                transition(machines, *version, &key, callback, opening, &mut out);
            }
        }
        Disposition::Applied
    }

    fn replace_file_callbacks(
        &mut self,
        file: &FileKey,
        list: &[FileCallback],
        seq: Seq,
        effects: &mut Vec<Effect>,
    ) {
        if list.is_empty() && !self.files.contains_key(file) {
            return;
        }
        let entry = self.files.entry(file.clone()).or_insert_with(|| FileEntry {
            version: seq,
            callbacks: Vec::new(),
            machines: Machines::new(),
        });
        let mut slots: Vec<FileCallbackSlot> = list
            .iter()
            .map(|c| FileCallbackSlot {
                callback: c.clone(),
                given_by: seq,
                disabled_by: None,
            })
            .collect();
        slots.sort_by(|a, b| a.callback.name.cmp(&b.callback.name));
        for old in &entry.callbacks {
            if old.disabled_by.is_some() {
                self.tally.disabled_file_callbacks.remove(&MachineKey {
                    file: file.clone(),
                    callback: CallbackRef::File(old.callback.name.clone()),
                });
            }
        }
        entry.callbacks = slots;
        let affected: Vec<CallbackRef> = entry
            .machines
            .iter()
            .filter(|(r, _)| matches!(r, CallbackRef::File(_)))
            .map(|(r, _)| r.clone())
            .collect();
        if entry.is_idle() {
            self.forget_file(file);
            return;
        }
        for callback in affected {
            let key = MachineKey {
                file: file.clone(),
                callback,
            };
            let kept = self
                .files
                .get(file)
                .is_some_and(|e| e.file_callback(key.callback.name()).is_some());
            if kept {
                self.step(&key, Step::Config, effects);
            } else {
                self.drop_machine(&key);
            }
        }
    }

    fn on_callback_put(
        &mut self,
        project: &ProjectId,
        name: &CallbackName,
        callback: &Arc<Callback>,
        seq: Seq,
        effects: &mut Vec<Effect>,
    ) -> Disposition {
        // Rule 7: the new configuration applies from here on; a put also enables a callback
        // a 410 disabled.
        self.projects.entry(project.clone()).or_default().insert(
            name.clone(),
            CallbackSlot {
                callback: callback.clone(),
                put_by: seq,
                disabled_by: None,
            },
        );
        let callback = CallbackRef::Project(name.clone());
        for key in self.machines_of(project, &callback) {
            self.step(&key, Step::Config, effects);
        }
        Disposition::Applied
    }

    fn on_paused(&mut self, project: &ProjectId, name: &CallbackName, seq: Seq) -> Disposition {
        if !self
            .projects
            .get(project)
            .is_some_and(|c| c.contains_key(name))
        {
            return Disposition::Ignored(Ignored::UnknownCallback);
        }
        if self.is_paused(project, name) {
            return Disposition::Ignored(Ignored::PausedCallback);
        }
        // Rule 8: from here no attempt starts (`Core::step` turns each deadline into a
        // `Step::DuePaused`); machines keep taking changes.
        let paused = self.paused.entry(project.clone()).or_default();
        paused.insert(name.clone(), seq);
        Disposition::Applied
    }

    fn on_resumed(
        &mut self,
        project: &ProjectId,
        name: &CallbackName,
        at: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Disposition {
        if !self.unpause(project, name) {
            return Disposition::Ignored(Ignored::NotPaused);
        }
        // Rule 8: each machine whose deadline passed during the pause starts now, as if its
        // due time had just come; in machine order, so the effects are deterministic.
        let mut keys = self.machines_of(project, &CallbackRef::Project(name.clone()));
        keys.sort_unstable();
        for key in keys {
            self.step(&key, Step::Resume(at), effects);
        }
        Disposition::Applied
    }

    /// Whether a project callback is paused (rule 8).
    pub fn is_paused(&self, project: &ProjectId, name: &CallbackName) -> bool {
        self.paused_by(project, name).is_some()
    }

    /// The `CallbackPaused` record that paused a project callback, if it is paused.
    pub fn paused_by(&self, project: &ProjectId, name: &CallbackName) -> Option<Seq> {
        self.paused.get(project)?.get(name).copied()
    }

    /// Lifts a pause; whether there was one.
    fn unpause(&mut self, project: &ProjectId, name: &CallbackName) -> bool {
        let Some(names) = self.paused.get_mut(project) else {
            return false;
        };
        let was = names.remove(name).is_some();
        if names.is_empty() {
            self.paused.remove(project);
        }
        was
    }

    fn on_callback_removed(&mut self, project: &ProjectId, name: &CallbackName) -> Disposition {
        let removed = self
            .projects
            .get_mut(project)
            .and_then(|callbacks| callbacks.remove(name))
            .is_some();
        if !removed {
            return Disposition::Ignored(Ignored::UnknownCallback);
        }
        if self.projects.get(project).is_some_and(BTreeMap::is_empty) {
            self.projects.remove(project);
        }
        self.unpause(project, name);
        // Rule 7: a removed callback's machines stop.
        for key in self.machines_of(project, &CallbackRef::Project(name.clone())) {
            self.drop_machine(&key);
        }
        Disposition::Applied
    }

    fn on_callback_disabled(&mut self, machine: &MachineKey, cause: Seq) -> Disposition {
        // The disable this record owed has landed, whatever it finds below.
        self.owed_disables.remove(machine);
        match &machine.callback {
            CallbackRef::Project(name) => {
                let Some(slot) = self
                    .projects
                    .get_mut(&machine.file.project)
                    .and_then(|c| c.get_mut(name))
                else {
                    return Disposition::Ignored(Ignored::UnknownCallback);
                };
                // A put after the 410 is a newer decision than the 410 (rule 4: "a new PUT
                // enables it again"), even if this record lands after the put.
                if cause < slot.put_by {
                    return Disposition::Ignored(Ignored::SupersededDisable);
                }
                // Rule 4: 410 Gone disables the callback; all its machines stop.
                slot.disabled_by = Some(cause);
                for key in self.machines_of(&machine.file.project, &machine.callback) {
                    self.drop_machine(&key);
                }
            }
            CallbackRef::File(name) => {
                let Some(slot) = self
                    .files
                    .get_mut(&machine.file)
                    .and_then(|e| e.callbacks.iter_mut().find(|s| &s.callback.name == name))
                else {
                    return Disposition::Ignored(Ignored::UnknownCallback);
                };
                if cause < slot.given_by {
                    return Disposition::Ignored(Ignored::SupersededDisable);
                }
                slot.disabled_by = Some(cause);
                self.tally.disabled_file_callbacks.insert(machine.clone());
                self.drop_machine(machine);
            }
        }
        Disposition::Applied
    }

    fn on_redeliver(
        &mut self,
        file: &FileKey,
        callback: Option<&CallbackRef>,
        version: Option<Seq>,
        seq: Seq,
        at: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Disposition {
        let (version, targets) = match self.redeliver_targets(file, callback, version) {
            Ok(found) => found,
            Err(ignored) => return Disposition::Ignored(ignored),
        };
        let entry = self.files.entry(file.clone()).or_insert_with(|| FileEntry {
            version,
            callbacks: Vec::new(),
            machines: Machines::new(),
        });
        entry.version = version;
        let mut started = false;
        for callback in targets {
            let key = MachineKey {
                file: file.clone(),
                callback,
            };
            started |= self.step(&key, Step::Redeliver(seq, at), effects) == Disposition::Applied;
        }
        if started {
            Disposition::Applied
        } else {
            Disposition::Ignored(Ignored::AlreadyInFlight)
        }
    }

    /// Rule 6's targets of a redeliver of `file` (`callback`, or every enabled one) and the
    /// version it delivers, or why it is ignored before any machine is looked at.
    fn redeliver_targets(
        &self,
        file: &FileKey,
        callback: Option<&CallbackRef>,
        version: Option<Seq>,
    ) -> Result<(Seq, Vec<CallbackRef>), Ignored> {
        let known = self.files.get(file).map(|e| e.version);
        let version = known.max(version).ok_or(Ignored::NothingToRedeliver)?;
        let paused = |c: &CallbackRef| match c {
            CallbackRef::Project(name) => self.is_paused(&file.project, name),
            CallbackRef::File(_) => false,
        };
        let targets: Vec<CallbackRef> = match callback {
            Some(c) => match self.callback_for(file, c) {
                Some((_, false)) => return Err(Ignored::DisabledCallback),
                // Rule 8: a paused callback cannot be redelivered.
                Some(_) if paused(c) => return Err(Ignored::PausedCallback),
                Some((_, true)) => vec![c.clone()],
                None => return Err(Ignored::UnknownCallback),
            },
            None => {
                let enabled = self.enabled_callbacks(file);
                let any = !enabled.is_empty();
                let targets: Vec<CallbackRef> =
                    enabled.into_iter().filter(|c| !paused(c)).collect();
                if any && targets.is_empty() {
                    return Err(Ignored::PausedCallback);
                }
                targets
            }
        };
        if targets.is_empty() {
            return Err(Ignored::UnknownCallback);
        }
        Ok((version, targets))
    }

    /// What a `RedeliverRequested` for `file` (`callback`, or every enabled one) would do if
    /// it were folded now: `Ok` if it would start an attempt, else the reason it would be
    /// ignored. `version` is the file's latest change as the store knows it (the core
    /// forgets delivered files). The API and `cbctl` ask before they append a redeliver, so
    /// an operator hears at once that it cannot happen instead of finding an ignored record
    /// in the history; a record that races past the check is still ignored by the fold.
    pub fn redeliver_check(
        &self,
        file: &FileKey,
        callback: Option<&CallbackRef>,
        version: Option<Seq>,
    ) -> Result<(), Ignored> {
        let (_, targets) = self.redeliver_targets(file, callback, version)?;
        let entry = self.files.get(file);
        // Rule 6: a machine with an attempt in flight is left as it is (`Machine::on_redeliver`).
        let in_flight = |c: &CallbackRef| {
            entry
                .and_then(|e| e.machine(c))
                .is_some_and(|m| m.in_flight().is_some())
        };
        if targets.iter().all(in_flight) {
            return Err(Ignored::AlreadyInFlight);
        }
        Ok(())
    }

    /// Every callback that applies to `file`: its project's, by name, then its per-file ones
    /// (the order `on_change` steps them in), each with the outcome record whose `410 Gone`
    /// disabled it, if any.
    pub fn callbacks_of<'a>(
        &'a self,
        file: &'a FileKey,
    ) -> impl Iterator<Item = (CallbackRef, &'a Arc<Callback>, Option<Seq>)> + 'a {
        let project = self
            .projects
            .get(&file.project)
            .into_iter()
            .flatten()
            .map(|(name, s)| {
                (
                    CallbackRef::Project(name.clone()),
                    &s.callback,
                    s.disabled_by,
                )
            });
        let per_file = self
            .files
            .get(file)
            .into_iter()
            .flat_map(|entry| &entry.callbacks)
            .map(|s| {
                let name = CallbackRef::File(s.callback.name.clone());
                (name, &s.callback.callback, s.disabled_by)
            });
        project.chain(per_file)
    }

    /// The callbacks in force for `file` that a change of `event` passes over, and why: what
    /// a history shows as `filtered` at that change. Asked after the change is folded (its
    /// per-file callbacks, which come with it, apply to it).
    pub fn passed_over(&self, file: &FileKey, event: EventKind) -> Vec<(CallbackRef, PassedOver)> {
        let project = self.projects.get(&file.project).into_iter().flatten();
        let project = project.filter_map(|(name, s)| {
            Some((
                CallbackRef::Project(name.clone()),
                project_passes_over(s, event)?,
            ))
        });
        let per_file = self.files.get(file).into_iter().flat_map(|e| &e.callbacks);
        let per_file = per_file.filter_map(|s| {
            let why = file_passes_over(s, event)?;
            Some((CallbackRef::File(s.callback.name.clone()), why))
        });
        project.chain(per_file).collect()
    }

    /// The enabled callbacks of `file`, in [`Core::callbacks_of`]'s order.
    fn enabled_callbacks(&self, file: &FileKey) -> Vec<CallbackRef> {
        self.callbacks_of(file)
            .filter(|(_, _, disabled_by)| disabled_by.is_none())
            .map(|(callback, ..)| callback)
            .collect()
    }

    /// The configuration of `callback` for `file`, and whether it is enabled.
    fn callback_for(
        &self,
        file: &FileKey,
        callback: &CallbackRef,
    ) -> Option<(Arc<Callback>, bool)> {
        match callback {
            CallbackRef::Project(name) => self
                .projects
                .get(&file.project)?
                .get(name)
                .map(|s| (s.callback.clone(), s.disabled_by.is_none())),
            CallbackRef::File(name) => self
                .files
                .get(file)?
                .file_callback(name)
                .map(|s| (s.callback.callback.clone(), s.disabled_by.is_none())),
        }
    }

    /// Every machine of `callback` among `project`'s files. Iterates the file map, so callers
    /// must not let the order reach an effect: they only drop machines or reconfigure them
    /// (which moves timers, an order-free set).
    fn machines_of(&self, project: &ProjectId, callback: &CallbackRef) -> Vec<MachineKey> {
        self.files
            .iter()
            .filter(|(k, e)| &k.project == project && e.machine(callback).is_some())
            .map(|(k, _)| MachineKey {
                file: k.clone(),
                callback: callback.clone(),
            })
            .collect()
    }

    /// Runs one transition of one machine and keeps the timers and effects in step with it.
    fn step(&mut self, key: &MachineKey, step: Step<'_>, effects: &mut Vec<Effect>) -> Disposition {
        // Rule 8: a paused callback starts no attempt: its deadlines fire as `DuePaused`,
        // and its redelivers are refused.
        let step = match (&key.callback, step) {
            (CallbackRef::Project(name), Step::Due(at) | Step::Redeliver(_, at))
                if self.is_paused(&key.file.project, name) =>
            {
                match step {
                    Step::Due(_) => Step::DuePaused(at),
                    _ => return Disposition::Ignored(Ignored::PausedCallback),
                }
            }
            _ => step,
        };
        let refused = |why: Ignored| match step {
            Step::Outcome(..) => Disposition::Ignored(Ignored::StaleOutcome),
            _ => Disposition::Ignored(why),
        };
        let (projects, files, mut out) = self.parts(effects);
        // The configuration is borrowed where it lives (the project's slot, or the file's
        // own, beside its machines): an `Arc` clone and drop per step was a locked
        // instruction waiting on the step's stores.
        let (callback, version, machines) = match &key.callback {
            CallbackRef::Project(name) => {
                let Some(slot) = projects.get(&key.file.project).and_then(|c| c.get(name)) else {
                    return refused(Ignored::UnknownCallback);
                };
                if slot.disabled_by.is_some() {
                    return refused(Ignored::DisabledCallback);
                }
                let Some(entry) = files.get_mut(&key.file) else {
                    return Disposition::Ignored(Ignored::StaleOutcome);
                };
                (&slot.callback, entry.version, &mut entry.machines)
            }
            CallbackRef::File(name) => {
                let Some(FileEntry {
                    version,
                    callbacks,
                    machines,
                }) = files.get_mut(&key.file)
                else {
                    return refused(Ignored::UnknownCallback);
                };
                let Some(slot) = callbacks.iter().find(|s| &s.callback.name == name) else {
                    return refused(Ignored::UnknownCallback);
                };
                if slot.disabled_by.is_some() {
                    return refused(Ignored::DisabledCallback);
                }
                (&slot.callback.callback, *version, machines)
            }
        };
        transition(machines, version, key, callback, step, &mut out)
    }

    /// The core taken apart for stepping machines: the callbacks and the files to find a
    /// machine and its configuration in, and what its transition writes.
    fn parts<'a>(
        &'a mut self,
        effects: &'a mut Vec<Effect>,
    ) -> (
        &'a Projects,
        &'a mut FxHashMap<FileKey, FileEntry>,
        StepOut<'a>,
    ) {
        let Core {
            projects,
            files,
            deadlines,
            expiries,
            owed_disables,
            now,
            tally,
            paused,
            ..
        } = self;
        let out = StepOut {
            now: *now,
            deadlines,
            expiries,
            owed_disables,
            tally,
            paused,
            effects,
        };
        (projects, files, out)
    }

    /// Drops stale entries from the front of the deadlines, so that [`Core::next_deadline`]
    /// is exact: it becomes a `WakeAt` effect, which replay compares byte for byte.
    fn settle_deadlines(&mut self) {
        let files = &self.files;
        self.deadlines
            .settle(|t, key| timer_is_set(files, Machine::deadline, t, key));
    }

    /// Forgets a machine (and its file, if nothing else is kept for it).
    fn drop_machine(&mut self, key: &MachineKey) {
        let Some(entry) = self.files.get_mut(&key.file) else {
            return;
        };
        let Ok(pos) = entry.machine_pos(&key.callback) else {
            return;
        };
        // Its timers' entries need no removing, they are stale with the machine gone; the
        // deadlines are only told, in case its deadline was the earliest (the expiries are
        // never settled, so they need not know).
        let (_, m) = entry.machines.remove(pos);
        self.tally.moved(key, Some(m.state.name()), None);
        if let Some(t) = m.deadline() {
            self.deadlines.moved(t);
        }
        if entry.is_idle() {
            self.forget_file(&key.file);
        }
    }

    /// Drops an idle file. The map gives memory back once it is three quarters empty: a
    /// burst of a million files must not pin its peak size after their windows elapse
    /// (SPEC §8 counts the core's memory then). Halving at a quarter keeps it amortized
    /// O(1) per removal.
    fn forget_file(&mut self, file: &FileKey) {
        self.files.remove(file);
        let (len, capacity) = (self.files.len(), self.files.capacity());
        if capacity > 4096 && len < capacity / 4 {
            self.files.shrink_to(len * 2);
        }
    }

    // ---- queries ----

    /// The earliest deadline: when the driver should append a `Ticked` record.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first()
    }

    /// The time of the latest record folded.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The sequence number of the latest record folded.
    pub fn last_seq(&self) -> Option<Seq> {
        self.last_seq
    }

    /// One machine.
    pub fn machine(&self, key: &MachineKey) -> Option<&Machine> {
        self.files.get(&key.file)?.machine(&key.callback)
    }

    /// What the core keeps of one file, if anything.
    pub fn file(&self, file: &FileKey) -> Option<&FileEntry> {
        self.files.get(file)
    }

    /// Every file the core keeps, in no particular order (reports sort what they show).
    pub fn files(&self) -> impl Iterator<Item = (&FileKey, &FileEntry)> {
        self.files.iter()
    }

    /// A project's callbacks, by name.
    pub fn callbacks(
        &self,
        project: &ProjectId,
    ) -> impl Iterator<Item = (&CallbackName, &CallbackSlot)> {
        self.projects.get(project).into_iter().flatten()
    }

    /// Every project with callbacks.
    pub fn projects(&self) -> impl Iterator<Item = &ProjectId> {
        self.projects.keys()
    }

    /// Every attempt in flight, in machine order: what a restarted dispatcher performs again.
    pub fn in_flight(&self) -> Vec<Attempt> {
        let mut out: Vec<Attempt> = self
            .files
            .iter()
            .flat_map(|(file, entry)| {
                entry.machines.iter().filter_map(move |(callback, m)| {
                    let flight = m.in_flight()?;
                    let key = MachineKey {
                        file: file.clone(),
                        callback: callback.clone(),
                    };
                    let (cb, _) = self.callback_for(file, callback)?;
                    Some(attempt_of(&key, flight, cb))
                })
            })
            .collect();
        out.sort_by(|a, b| a.machine.cmp(&b.machine));
        out
    }

    /// Every `DisableCallback` effect whose `CallbackDisabled` record has not been folded:
    /// what a restarted driver appends again (driving contract, step 5).
    pub fn owed_disables(&self) -> Vec<Effect> {
        self.owed_disables
            .iter()
            .map(|(machine, cause)| Effect::DisableCallback {
                machine: machine.clone(),
                cause: *cause,
            })
            .collect()
    }

    /// Totals per state: every machine the core holds. Kept as machines move: O(1).
    pub fn census(&self) -> Census {
        // Invariant: no file entry is idle (`FileEntry::is_idle` entries are forgotten), so
        // every entry holds a machine or per-file callbacks.
        Census {
            files: self.files.len() as u64,
            states: self.tally.states,
            next_deadline: self.next_deadline(),
            ignored: self.ignored,
        }
    }

    /// Totals per state as they are once time reaches `now`: a machine whose expiry is due
    /// by then is left out, with a file it leaves idle, though the core drops them only
    /// when it next folds a record (its clock moves with the log alone). For reports taken
    /// between records, on the wall clock.
    ///
    /// Costs O(1) when no expiry is due, else the cheaper of two counts: the kept totals less
    /// the machines whose expiry is due (a lookup each, in time order: cache misses), or
    /// every machine counted in the map's order — once more than a quarter of the files'
    /// worth of expiries is due, as after a burst's windows elapse with no record since.
    pub fn census_at(&self, now: Timestamp) -> Census {
        let due = self.expiries.due(now).count();
        if due == 0 {
            self.census()
        } else if due > self.files.len() / 4 {
            self.census_scanned_at(now)
        } else {
            self.census_walked_at(now)
        }
    }

    /// [`Core::census_at`] as the kept totals less the machines whose expiry is due.
    #[doc(hidden)]
    pub fn census_walked_at(&self, now: Timestamp) -> Census {
        let mut c = self.census();
        // Machines by address: an entry's key may repeat (a timer moved away and back), the
        // machine it finds is one; hashing an address is cheaper than hashing the key.
        let mut expired: FxHashSet<*const Machine> = FxHashSet::default();
        for (t, key) in self.expiries.due(now) {
            let Some(entry) = self.files.get(&key.file) else {
                continue;
            };
            let Ok(i) = entry.machine_pos(&key.callback) else {
                continue;
            };
            let m = &entry.machines[i].1;
            // An entry counts once, and only if it is the machine's expiry still.
            if m.expiry() != Some(t) || !expired.insert(m) {
                continue;
            }
            c.states[state_index(m.state.name())] -= 1;
            // A file left idle has every machine expired, its first one too: asking at the
            // first one asks once per file.
            if i == 0 && entry.callbacks.is_empty() {
                let all = entry.machines.iter();
                c.files -= u64::from(
                    all.map(|(_, m)| m.expiry())
                        .all(|e| e.is_some_and(|e| e <= now)),
                );
            }
        }
        c
    }

    /// [`Core::census_at`] counted the slow way, machine by machine: what the property tests
    /// hold the kept totals to.
    #[doc(hidden)]
    pub fn census_scanned_at(&self, now: Timestamp) -> Census {
        let mut c = Census {
            next_deadline: self.next_deadline(),
            ignored: self.ignored,
            ..Census::default()
        };
        for entry in self.files.values() {
            let mut held = !entry.callbacks.is_empty();
            for (_, m) in &entry.machines {
                if m.expiry().is_none_or(|e| e > now) {
                    held = true;
                    c.states[state_index(m.state.name())] += 1;
                }
            }
            c.files += u64::from(held);
        }
        c
    }

    /// The machines in `state`, in list order (project, callback, file): e.g. the abandoned
    /// list of `cbctl status`. A kept list ([`Core::keep_lists`]; retrying and abandoned
    /// always) costs what is listed; otherwise the machines are found one by one.
    pub fn machines_in(
        &self,
        state: StateName,
    ) -> Box<dyn Iterator<Item = (MachineKey, &Machine)> + '_> {
        match &self.tally.lists[state_index(state)] {
            Some(keys) => Box::new(keys.iter().map(|key| {
                let key = key.machine_key();
                let m = self.machine(&key).expect("a listed key has its machine");
                (key, m)
            })),
            None => Box::new(self.machines_scanned_in(state).into_iter()),
        }
    }

    /// Every machine in `state`, found machine by machine, in list order: what the kept
    /// lists of [`Core::machines_in`] are held to by the property tests.
    #[doc(hidden)]
    pub fn machines_scanned_in(&self, state: StateName) -> Vec<(MachineKey, &Machine)> {
        let mut out: Vec<(ListKey, MachineKey, &Machine)> = self
            .files
            .iter()
            .flat_map(|(file, entry)| {
                entry
                    .machines
                    .iter()
                    .filter(|(_, m)| m.state.name() == state)
                    .map(|(r, m)| {
                        let key = MachineKey {
                            file: file.clone(),
                            callback: r.clone(),
                        };
                        (ListKey::of(&key), key, m)
                    })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, k, m)| (k, m)).collect()
    }

    /// Keeps a list of every state from now on (retrying and abandoned are always kept), so
    /// that [`Core::deliveries`] costs what it lists. A daemon asks once, after its restore;
    /// a replay does not, and its fold does not pay for them. Builds them machine by machine.
    pub fn keep_lists(&mut self) {
        let mut missing = Vec::new();
        for (i, list) in self.tally.lists.iter_mut().enumerate() {
            if list.is_none() {
                *list = Some(BTreeSet::new());
                missing.push(i);
            }
        }
        let mut groups = GroupCounts::new();
        for (file, entry) in &self.files {
            for (callback, m) in &entry.machines {
                let i = state_index(m.state.name());
                let key = MachineKey {
                    file: file.clone(),
                    callback: callback.clone(),
                };
                count_in_group(&mut groups, &key, None, Some(m.state.name()));
                if missing.contains(&i) {
                    let list = self.tally.lists[i].as_mut().expect("made above");
                    list.insert(ListKey::of(&key));
                }
            }
        }
        self.tally.groups = Some(groups);
    }

    /// The machines per state of each (project, callback) that has any (`GET /v1/projects`):
    /// kept with the lists ([`Core::keep_lists`]), else counted machine by machine.
    pub fn group_counts(&self) -> std::borrow::Cow<'_, GroupCounts> {
        match &self.tally.groups {
            Some(groups) => std::borrow::Cow::Borrowed(groups),
            None => std::borrow::Cow::Owned(self.group_counts_scanned()),
        }
    }

    /// [`Core::group_counts`] counted machine by machine: what the kept counts are held to.
    #[doc(hidden)]
    pub fn group_counts_scanned(&self) -> GroupCounts {
        let mut groups = GroupCounts::new();
        for (file, entry) in &self.files {
            for (callback, m) in &entry.machines {
                let key = MachineKey {
                    file: file.clone(),
                    callback: callback.clone(),
                };
                count_in_group(&mut groups, &key, None, Some(m.state.name()));
            }
        }
        groups
    }

    /// Whether every state's list is kept ([`Core::keep_lists`]).
    pub fn keeps_lists(&self) -> bool {
        self.tally.lists.iter().all(Option::is_some)
    }

    /// One page of the machines `query` asks for, in list order: `GET /v1/deliveries`.
    /// Costs a seek per `(project, callback)` group the filters rule out and a step per
    /// machine listed ([`crate::lists`]), when the lists are kept; otherwise the states
    /// not kept are found machine by machine first.
    pub fn deliveries<'a>(&'a self, query: &DeliveryQuery<'_>) -> Deliveries<'a> {
        let mut lists = Lists {
            core: self,
            built: Default::default(),
        };
        for (i, state) in StateName::ALL.iter().enumerate() {
            let asked = query.state.is_none_or(|s| s == *state);
            if self.tally.lists[i].is_none() {
                if !asked {
                    lists.built[i] = Some(BTreeSet::new());
                    continue;
                }
                let found = self.machines_scanned_in(*state);
                lists.built[i] = Some(found.iter().map(|(k, _)| ListKey::of(k)).collect());
            }
        }
        lists::deliveries(&lists, query)
    }

    /// The per-file callbacks a `410 Gone` disabled, sorted, with the outcome that did.
    pub fn disabled_file_callbacks(&self) -> impl Iterator<Item = (&MachineKey, Seq)> {
        self.tally.disabled_file_callbacks.iter().map(|key| {
            let slot = self.files[&key.file]
                .file_callback(key.callback.name())
                .expect("a kept key has its callback");
            (key, slot.disabled_by.expect("a kept key is disabled"))
        })
    }

    // ---- checkpoints ----

    /// The whole state, in a canonical order: two cores that folded the same records give
    /// byte-identical checkpoints.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut files: Vec<(FileKey, FileEntry)> = self
            .files
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Checkpoint {
            now: self.now,
            last_seq: self.last_seq,
            ignored: self.ignored,
            projects: self
                .projects
                .iter()
                .map(|(p, cbs)| {
                    (
                        p.clone(),
                        cbs.iter().map(|(n, s)| (n.clone(), s.clone())).collect(),
                    )
                })
                .collect(),
            files,
            owed_disables: self
                .owed_disables
                .iter()
                .map(|(k, s)| (k.clone(), *s))
                .collect(),
            paused: self
                .paused
                .iter()
                .flat_map(|(p, names)| names.iter().map(|(n, s)| (p.clone(), n.clone(), *s)))
                .collect(),
        }
    }

    /// Rebuilds a core from a checkpoint; the timers are derived from the machines.
    pub fn from_checkpoint(cp: Checkpoint) -> Core {
        let mut core = Core {
            now: cp.now,
            last_seq: cp.last_seq,
            ignored: cp.ignored,
            projects: cp
                .projects
                .into_iter()
                .map(|(p, cbs)| (p, cbs.into_iter().collect()))
                .collect(),
            owed_disables: cp.owed_disables.into_iter().collect(),
            ..Core::default()
        };
        for (project, name, seq) in cp.paused {
            core.paused.entry(project).or_default().insert(name, seq);
        }
        for (file, entry) in cp.files {
            for (callback, m) in &entry.machines {
                let key = MachineKey {
                    file: file.clone(),
                    callback: callback.clone(),
                };
                // A machine of a paused callback whose deadline has passed is parked (rule 8).
                let parked = m
                    .deadline()
                    .is_some_and(|t| t <= core.now && is_paused_in(&core.paused, &key));
                if !parked {
                    set_timer(&mut core.deadlines, &key, None, m.deadline());
                }
                set_timer(&mut core.expiries, &key, None, m.expiry());
                core.tally.moved(&key, None, Some(m.state.name()));
            }
            for slot in entry.callbacks.iter().filter(|s| s.disabled_by.is_some()) {
                core.tally.disabled_file_callbacks.insert(MachineKey {
                    file: file.clone(),
                    callback: CallbackRef::File(slot.callback.name.clone()),
                });
            }
            core.files.insert(file, entry);
        }
        core
    }
}

/// The core's state at one point of the log, in canonical order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Time of the latest record folded.
    pub now: Timestamp,
    /// The latest record folded.
    pub last_seq: Option<Seq>,
    /// Records ignored so far.
    pub ignored: u64,
    /// Project callbacks, sorted.
    pub projects: Vec<(ProjectId, Vec<(CallbackName, CallbackSlot)>)>,
    /// Files, sorted.
    pub files: Vec<(FileKey, FileEntry)>,
    /// 410s whose disable is not yet in the log, sorted.
    pub owed_disables: Vec<(MachineKey, Seq)>,
    /// Paused project callbacks (rule 8) and the records that paused them, sorted. Last, so
    /// that a checkpoint written before pauses existed is this one without it
    /// ([`CheckpointBeforePauses`]).
    pub paused: Vec<(ProjectId, CallbackName, Seq)>,
}

/// A [`Checkpoint`] as builds before rule 8 wrote it: the same fields, without `paused`.
/// The store reads one of these when a checkpoint does not decode as the current shape.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CheckpointBeforePauses {
    /// See [`Checkpoint::now`].
    pub now: Timestamp,
    /// See [`Checkpoint::last_seq`].
    pub last_seq: Option<Seq>,
    /// See [`Checkpoint::ignored`].
    pub ignored: u64,
    /// See [`Checkpoint::projects`].
    pub projects: Vec<(ProjectId, Vec<(CallbackName, CallbackSlot)>)>,
    /// See [`Checkpoint::files`].
    pub files: Vec<(FileKey, FileEntry)>,
    /// See [`Checkpoint::owed_disables`].
    pub owed_disables: Vec<(MachineKey, Seq)>,
}

impl From<CheckpointBeforePauses> for Checkpoint {
    fn from(old: CheckpointBeforePauses) -> Checkpoint {
        Checkpoint {
            now: old.now,
            last_seq: old.last_seq,
            ignored: old.ignored,
            projects: old.projects,
            files: old.files,
            owed_disables: old.owed_disables,
            paused: Vec::new(),
        }
    }
}

impl Checkpoint {
    /// This state as far as one file can tell: its project's callbacks, its own entry and
    /// the disables owed for it. Folding the file's later records from here reaches the
    /// states the whole log reaches for the file (the projection property, `fold.rs`
    /// module docs): how a file's history starts at the log's base after retention.
    pub fn for_file(&self, file: &FileKey) -> Checkpoint {
        Checkpoint {
            now: self.now,
            last_seq: self.last_seq,
            ignored: 0,
            projects: self
                .projects
                .iter()
                .filter(|(p, _)| *p == file.project)
                .cloned()
                .collect(),
            files: self
                .files
                .iter()
                .filter(|(f, _)| f == file)
                .cloned()
                .collect(),
            owed_disables: self
                .owed_disables
                .iter()
                .filter(|(m, _)| m.file == *file)
                .cloned()
                .collect(),
            paused: self
                .paused
                .iter()
                .filter(|(p, ..)| *p == file.project)
                .cloned()
                .collect(),
        }
    }
}

/// Why a change of `event` moves no machine of the project callback in `slot` (rule 2's
/// filter, rule 4's disable), or `None` when it triggers it. `Core::on_change` and
/// `Core::passed_over` both ask here, so what a history says was filtered is what the fold
/// filtered.
fn project_passes_over(slot: &CallbackSlot, event: EventKind) -> Option<PassedOver> {
    passes_over(slot.disabled_by, || slot.callback.triggers(event))
}

/// [`project_passes_over`] for a per-file callback.
fn file_passes_over(slot: &FileCallbackSlot, event: EventKind) -> Option<PassedOver> {
    passes_over(slot.disabled_by, || slot.callback.triggers(event))
}

fn passes_over(disabled_by: Option<Seq>, triggers: impl Fn() -> bool) -> Option<PassedOver> {
    if disabled_by.is_some() {
        Some(PassedOver::Disabled)
    } else if !triggers() {
        Some(PassedOver::Events)
    } else {
        None
    }
}

/// Where `callback`'s machine is among a file's `machines` (sorted by callback), or would go.
fn machine_pos(machines: &Machines, callback: &CallbackRef) -> Result<usize, usize> {
    machines.binary_search_by(|(r, _)| r.cmp(callback))
}

/// What a machine's transition writes besides the machine: the core's timers, its owed
/// disables and the effects. Borrowed apart from the file map, so that a caller holding a
/// file's entry can step its machines without looking the file up again.
struct StepOut<'a> {
    now: Timestamp,
    deadlines: &'a mut Timers,
    expiries: &'a mut Timers,
    owed_disables: &'a mut BTreeMap<MachineKey, Seq>,
    tally: &'a mut Tally,
    paused: &'a Paused,
    effects: &'a mut Vec<Effect>,
}

impl StepOut<'_> {
    /// Rule 8: a deadline at or before now of a paused callback's machine is parked at once,
    /// as one that fires during the pause is: no timer entry, so nothing fires until the
    /// resume. `Core::from_checkpoint` derives the same from the machines.
    fn unparked(&self, key: &MachineKey, deadline: Option<Timestamp>) -> Option<Timestamp> {
        deadline.filter(|t| *t > self.now || !is_paused_in(self.paused, key))
    }
}

/// Whether `key`'s callback is a paused project callback.
fn is_paused_in(paused: &Paused, key: &MachineKey) -> bool {
    match &key.callback {
        CallbackRef::Project(name) => paused
            .get(&key.file.project)
            .is_some_and(|names| names.contains_key(name)),
        CallbackRef::File(_) => false,
    }
}

/// One transition of the machine of `key` among a file's `machines` (the file at `version`),
/// under the enabled configuration `callback`; keeps the timers and effects in step with it.
fn transition(
    machines: &mut Machines,
    version: Seq,
    key: &MachineKey,
    callback: &Arc<Callback>,
    step: Step<'_>,
    out: &mut StepOut<'_>,
) -> Disposition {
    let mut start: Option<InFlight> = None;
    let mut disposition = Disposition::Applied;
    // The machine is stepped where it lives in the file's entry: moving it out and back
    // was a tenth of the fold's memory traffic.
    let (before, after) = match machine_pos(machines, &key.callback) {
        Err(i) => {
            // No machine: only a trigger or a redeliver starts one.
            let m = match step {
                Step::Trigger(opening) => Machine::opened_by(opening, callback),
                Step::Redeliver(seq, at) => {
                    let (m, flight) = Machine::redelivered(seq, at, version, callback);
                    start = Some(flight);
                    m
                }
                Step::Outcome(..) => return Disposition::Ignored(Ignored::StaleOutcome),
                Step::Config | Step::Resume(_) => return Disposition::Applied,
                Step::Due(_) | Step::DuePaused(_) => {
                    unreachable!("{key}: a deadline belongs to a machine")
                }
            };
            let after = (m.deadline(), m.expiry());
            out.tally.moved(key, None, Some(m.state.name()));
            machines.insert(i, (key.callback.clone(), m));
            ((None, None), after)
        }
        Ok(i) => {
            let m = &mut machines[i].1;
            let before = (m.deadline(), m.expiry());
            let was = m.state.name();
            match step {
                Step::Trigger(opening) => m.on_trigger(opening, callback),
                Step::Due(at) => start = Some(m.on_due(at, version, callback)),
                Step::Outcome(report, seq, at) => match m.on_outcome(report, seq, at, callback) {
                    OutcomeStep::Applied => {}
                    OutcomeStep::Stale => {
                        disposition = Disposition::Ignored(Ignored::StaleOutcome);
                    }
                    OutcomeStep::Gone => {
                        out.owed_disables.insert(key.clone(), seq);
                        out.effects.push(Effect::DisableCallback {
                            machine: key.clone(),
                            cause: seq,
                        });
                    }
                },
                Step::Redeliver(seq, at) => {
                    start = m.on_redeliver(seq, at, version, callback);
                    if start.is_none() {
                        disposition = Disposition::Ignored(Ignored::AlreadyInFlight);
                    }
                }
                Step::Config => m.on_config(callback, out.now),
                Step::DuePaused(at) => m.on_due_paused(at, callback),
                Step::Resume(at) => {
                    if m.on_resume(at, callback) {
                        start = Some(m.on_due(at, version, callback));
                    }
                }
            }
            let is = m.state.name();
            out.tally.moved(key, Some(was), Some(is));
            (before, (m.deadline(), m.expiry()))
        }
    };
    if let (Some(t), Step::Trigger(_) | Step::Outcome(..) | Step::Config) = (after.0, step) {
        // Invariant: a deadline is never set in the past of the record that sets it. (One a
        // pause left passed, unchanged by this step, is not set by it: rule 8.)
        assert!(
            t >= out.now || after.0 == before.0,
            "{key}: deadline {t} before now {}",
            out.now
        );
    }
    let deadline = out.unparked(key, after.0);
    set_timer(out.deadlines, key, before.0, deadline);
    set_timer(out.expiries, key, before.1, after.1);
    if let Some(flight) = start {
        out.effects.push(Effect::StartAttempt(attempt_of(
            key,
            &flight,
            callback.clone(),
        )));
    }
    disposition
}

/// Notes a machine's timer that moved from `before` to `after`. The entry at `before` is not
/// removed — it is stale once the machine no longer says so (see [`Timers`]) — the timers
/// are only told it may be, in case it was the earliest.
fn set_timer(
    timers: &mut Timers,
    key: &MachineKey,
    before: Option<Timestamp>,
    after: Option<Timestamp>,
) {
    if after == before {
        return;
    }
    if let Some(t) = before {
        timers.moved(t);
    }
    if let Some(t) = after {
        timers.insert(t, key);
    }
}

/// Whether `key`'s machine has its timer (as `which` reads it) at `at`: what makes a
/// [`Timers`] entry live.
fn timer_is_set(
    files: &FxHashMap<FileKey, FileEntry>,
    which: fn(&Machine) -> Option<Timestamp>,
    at: Timestamp,
    key: &MachineKey,
) -> bool {
    files
        .get(&key.file)
        .and_then(|e| e.machine(&key.callback))
        .and_then(which)
        == Some(at)
}

fn attempt_of(key: &MachineKey, flight: &InFlight, callback: Arc<Callback>) -> Attempt {
    Attempt {
        machine: key.clone(),
        delivery: flight.delivery,
        attempt: flight.attempt,
        version: flight.version,
        started_at: flight.started_at,
        redeliver: flight.redeliver,
        callback,
    }
}

/// The core's lists, with those it does not keep built for one query.
struct Lists<'c> {
    core: &'c Core,
    built: [Option<BTreeSet<ListKey>>; 5],
}

impl<'c> ListSource<'c> for Lists<'c> {
    fn keys_in(&self, state: StateName) -> &BTreeSet<ListKey> {
        let i = state_index(state);
        let list = self.core.tally.lists[i].as_ref().or(self.built[i].as_ref());
        list.expect("every list is kept or built")
    }

    fn machine_of(&self, key: &ListKey) -> Option<&'c Machine> {
        self.core.machine(&key.machine_key())
    }

    fn project_callback(&self, project: &ProjectId, name: &CallbackName) -> Option<&Arc<Callback>> {
        let slot = self.core.projects.get(project)?.get(name)?;
        Some(&slot.callback)
    }

    fn file_callback(&self, key: &ListKey) -> Option<&Arc<Callback>> {
        let file = FileKey::new(key.project.clone(), key.file_id.clone());
        let slot = self
            .core
            .files
            .get(&file)?
            .file_callback(key.callback.name())?;
        Some(&slot.callback.callback)
    }
}
