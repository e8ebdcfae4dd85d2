//! `cbctl replay`: fold a log from scratch with the pure core and audit every recorded
//! attempt against the decision the core makes at that point.
//!
//! For every `StartAttempt` the fold hands out, the audit remembers what was decided (the
//! machine, delivery, attempt number, version and callback). Every `AttemptFinished` record
//! must then match one of those decisions, carry the same version, and carry the digest of
//! the payload the core renders for that version and callback. Anything else is a
//! [`Divergence`], named by its sequence number.
//!
//! The digest comparison is split from the fold: the fold collects [`Check`]s and hands
//! them over in [`Batch`]es, held back so that a batch covers whole stretches of versions;
//! [`check`] renders a batch, sorted by version, from any [`Snapshots`]. That keeps the
//! audit testable without a data dir, and lets `cbctl replay` read snapshots in version
//! order and render on its other cores while the fold goes on.

use std::collections::BTreeMap;
use std::sync::Arc;

use cb_core::{
    render, Attempt, Callback, Core, DeliveryId, Digest, Effect, FileKey, MachineKey, Record,
    RecordKind, Seq, SnapshotView, StateName,
};
use rustc_hash::{FxHashMap, FxHashSet};
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
    /// The log's base, when the audit started from it (retention removed what was before).
    pub base: Option<u64>,
    /// Every divergence, in log order.
    pub divergences: Vec<Divergence>,
}

/// A decided attempt, waiting for its outcome.
struct Decided {
    version: Seq,
    callback: Arc<Callback>,
    /// An operator's redeliver, whose version may be any age.
    redeliver: bool,
}

/// A recorded outcome whose digest is still to be compared with a fresh render of the
/// version the core decided. Checks leave the fold in batches ([`Audit::take_batch`]) so
/// that [`verify`] can read their snapshots in version order, on another thread.
pub struct Check {
    /// The outcome record.
    pub seq: Seq,
    /// The version the core decided (and the outcome carries).
    pub version: Seq,
    /// The callback as configured when the attempt was decided.
    pub callback: Arc<Callback>,
    /// The digest the outcome recorded.
    pub digest: Digest,
    /// Whose attempt it was, for the explanation.
    pub machine: MachineKey,
    /// Which attempt.
    pub attempt: u32,
}

/// The audit in progress: the fold, and what it decided that no outcome has answered yet.
pub struct Audit {
    core: Core,
    decided: FxHashMap<(MachineKey, DeliveryId, u32), Decided>,
    callbacks: FxHashSet<(cb_core::ProjectId, cb_core::CallbackName)>,
    batch: Batch,
    held: HeldChecks,
    summary: Summary,
    effects: Vec<Effect>,
}

/// Checks held back so that a batch covers a stretch of versions whole. Outcomes come in
/// log order, but their versions do not: a coalesced delivery carries a version up to a
/// window old, interleaved with fresh ones, so a batch in arrival order needed a third of
/// the bodies of each stretch it touched, and the checkers read 3.3 times the bodies'
/// bytes. Held by version, a stretch is released once outcomes stop coming for it: when
/// the fold is further past it than the furthest a first attempt's version has lagged.
#[derive(Default)]
struct HeldChecks {
    /// By stretch (`version >> STRETCH_BITS`).
    by_stretch: BTreeMap<u64, Vec<Check>>,
    count: usize,
    /// Stretches below this one were released; a check for them goes out at once.
    released_below: u64,
    /// The most a first attempt's version lagged behind its outcome, in sequence numbers.
    lag: u64,
}

/// A stretch is 8192 sequence numbers: about a bodies directory on a busy log.
const STRETCH_BITS: u32 = 13;
/// The most checks held back; past it the lowest stretches go out early (a callback with an
/// hour-long window must not make the audit hold an hour of outcomes).
const MOST_HELD: usize = 65_536;

impl HeldChecks {
    /// Holds `check` (of the outcome numbered `at`), or hands it to `out` if its stretch
    /// has been released. `first` says it answers the first attempt of a delivery the core
    /// opened (not a redeliver, whose version may be any age): those set the lag.
    fn hold(&mut self, check: Check, at: Seq, first: bool, out: &mut Vec<Check>) {
        if first {
            self.lag = self.lag.max(at.0.saturating_sub(check.version.0));
        }
        let stretch = check.version.0 >> STRETCH_BITS;
        if stretch < self.released_below {
            out.push(check);
            return;
        }
        self.by_stretch.entry(stretch).or_default().push(check);
        self.count += 1;
    }

    /// Hands to `out` every stretch the fold, now at `at`, is past by more than the lag,
    /// and the lowest ones beyond [`MOST_HELD`].
    fn release(&mut self, at: Seq, out: &mut Vec<Check>) {
        while let Some(entry) = self.by_stretch.first_entry() {
            let end = (*entry.key() + 1) << STRETCH_BITS;
            if end.saturating_add(self.lag) > at.0 && self.count <= MOST_HELD {
                break;
            }
            let (stretch, checks) = entry.remove_entry();
            self.count -= checks.len();
            self.released_below = stretch + 1;
            out.extend(checks);
        }
    }

    /// Hands everything to `out`.
    fn release_all(&mut self, out: &mut Vec<Check>) {
        for (_, checks) in std::mem::take(&mut self.by_stretch) {
            out.extend(checks);
        }
        self.count = 0;
        self.released_below = u64::MAX;
    }
}

/// Digest checks leave the fold in batches of this many: small enough that the checkers
/// are seldom left waiting for the next (16 Ki left them idle for ~0.1 s of a replay).
pub const CHECKS_PER_BATCH: usize = 8_192;
/// A batch also leaves once it lists this many changed files (a log of changes that
/// trigger nothing has no checks to send them with).
const CHANGES_PER_BATCH: usize = 16_384;

/// What the fold hands over to be checked off its thread ([`check`]): digest checks, and
/// the files that changed. Counting distinct files needs a set of every file ever changed,
/// and looking a file up in it was a cache miss on every change — a tenth of the fold
/// thread's time on a log of 100,000 files — so the set is kept where digests are checked.
#[derive(Default)]
pub struct Batch {
    /// Recorded outcomes to compare with a fresh render.
    pub checks: Vec<Check>,
    /// The file of every change, in log order, repeats included.
    pub changed: Vec<FileKey>,
}

/// What checking found, on one thread or (after [`Verified::absorb`]) on all of them.
#[derive(Default)]
pub struct Verified {
    /// Outcomes whose digest does not match.
    pub divergences: Vec<Divergence>,
    /// Every file that had a change.
    pub files: FxHashSet<FileKey>,
}

impl Verified {
    /// Adds what another thread found.
    pub fn absorb(&mut self, other: Verified) {
        self.divergences.extend(other.divergences);
        let (mut big, small) = if other.files.len() > self.files.len() {
            (other.files, std::mem::take(&mut self.files))
        } else {
            (std::mem::take(&mut self.files), other.files)
        };
        big.extend(small);
        self.files = big;
    }
}

/// Checks one batch into `verified`, reading its snapshots from `snapshots`.
pub fn check(batch: Batch, verified: &mut Verified, snapshots: &mut impl Snapshots) {
    verified.files.extend(batch.changed);
    let found = verify(batch.checks, snapshots);
    verified.divergences.extend(found);
}

/// Where [`verify`] reads the snapshots it renders.
pub trait Snapshots {
    /// The versions about to be asked for, increasing: a reader may plan its reads.
    fn expect(&mut self, versions: &[Seq]);

    /// What `f` makes of the snapshot that change `version` appended; `Ok(None)` if
    /// `version` is not a change.
    fn with<R>(
        &mut self,
        version: Seq,
        f: impl FnOnce(SnapshotView<'_>) -> R,
    ) -> Result<Option<R>, String>;
}

/// A store's reader renders each body where it read it, without a copy.
impl Snapshots for cb_store::SnapshotReader<'_> {
    fn expect(&mut self, versions: &[Seq]) {
        cb_store::SnapshotReader::expect(self, versions.iter().copied());
    }

    fn with<R>(
        &mut self,
        version: Seq,
        f: impl FnOnce(SnapshotView<'_>) -> R,
    ) -> Result<Option<R>, String> {
        self.with_view(version, f).map_err(|e| e.to_string())
    }
}

impl Default for Audit {
    fn default() -> Audit {
        Audit::new()
    }
}

impl Audit {
    /// A fresh audit.
    pub fn new() -> Audit {
        Audit {
            core: Core::new(),
            decided: FxHashMap::default(),
            callbacks: FxHashSet::default(),
            batch: Batch::default(),
            held: HeldChecks::default(),
            summary: Summary::default(),
            effects: Vec::new(),
        }
    }

    /// Folds the records from here on under `rules` (the log's: `Store::rules`), so that a
    /// log begun under older rules is audited under the rules it was decided by.
    pub fn set_rules(&mut self, rules: cb_core::Rules) {
        self.core.set_rules(rules);
    }

    /// An audit that starts from the log's base (after retention removed older history):
    /// the core's state there, whose attempts in flight count as decided — their outcomes
    /// come after the base and are checked like any other (not counted as started here).
    pub fn from_base(state: cb_core::Checkpoint) -> Audit {
        let mut audit = Audit::new();
        audit.summary.base = state.last_seq.map(|s| s.0);
        audit.core = Core::from_checkpoint(state);
        for a in audit.core.in_flight() {
            audit.decided.insert(
                (a.machine, a.delivery, a.attempt),
                Decided {
                    version: a.version,
                    callback: a.callback,
                    redeliver: a.redeliver,
                },
            );
        }
        audit
    }

    /// The checks and changed files ready so far (hand them to [`check`]).
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    /// Every check and changed file left, held back or not, in batches of at most
    /// [`CHECKS_PER_BATCH`] checks: for the end of the fold, so that every checker can
    /// take a share.
    pub fn take_rest(&mut self) -> Vec<Batch> {
        self.held.release_all(&mut self.batch.checks);
        let Batch { checks, changed } = self.take_batch();
        let mut batches = vec![Batch {
            checks: Vec::new(),
            changed,
        }];
        let mut checks = checks.into_iter().peekable();
        while checks.peek().is_some() {
            batches.push(Batch {
                checks: checks.by_ref().take(CHECKS_PER_BATCH).collect(),
                changed: Vec::new(),
            });
        }
        batches
    }

    /// True once the batch collected so far is full enough to hand over.
    pub fn batch_ready(&self) -> bool {
        self.batch.checks.len() >= CHECKS_PER_BATCH || self.batch.changed.len() >= CHANGES_PER_BATCH
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
        // `apply` fires the deadlines up to this record before applying it, so the attempts
        // decided at those deadlines come out with the record's own: an outcome is matched
        // once both are known, which finds an attempt decided at such a deadline even when
        // no tick sits between them (a per-file log leaves ticks out). An outcome cannot
        // answer an attempt its own application starts: that is a later attempt or delivery.
        let mut effects = std::mem::take(&mut self.effects);
        if let cb_core::Disposition::Ignored(_) = self.core.apply(record, &mut effects) {
            self.summary.ignored += 1;
        }
        self.decide_all(&mut effects);
        match &record.kind {
            RecordKind::ChangeAppended { file, .. } => self.batch.changed.push(file.clone()),
            RecordKind::CallbackPut { project, name, .. } => {
                self.callbacks.insert((project.clone(), name.clone()));
            }
            RecordKind::AttemptFinished(report) => {
                let class = report.outcome.class();
                match self.summary.outcomes.get_mut(class) {
                    Some(n) => *n += 1,
                    None => {
                        self.summary.outcomes.insert(class.to_owned(), 1);
                    }
                }
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
                            let check = Check {
                                seq: record.seq,
                                version: decided.version,
                                callback: decided.callback,
                                digest: report.digest,
                                machine: report.machine.clone(),
                                attempt: report.attempt,
                            };
                            let first = report.attempt == 1 && !decided.redeliver;
                            self.held
                                .hold(check, record.seq, first, &mut self.batch.checks);
                            self.held.release(record.seq, &mut self.batch.checks);
                        }
                    }
                }
            }
            _ => {}
        }
        self.effects = effects;
    }

    fn decide_all(&mut self, effects: &mut Vec<Effect>) {
        for effect in effects.drain(..) {
            if let Effect::StartAttempt(a) = effect {
                self.decide(a);
            }
        }
    }

    fn decide(&mut self, a: Attempt) {
        self.summary.attempts_started += 1;
        // A delivery opens with its first attempt; the core decides each attempt once.
        if a.attempt == 1 {
            self.summary.deliveries += 1;
        }
        self.decided.insert(
            (a.machine, a.delivery, a.attempt),
            Decided {
                version: a.version,
                callback: a.callback,
                redeliver: a.redeliver,
            },
        );
    }

    fn diverge(&mut self, seq: Seq, explanation: String) {
        self.summary.divergences.push(Divergence {
            seq: seq.0,
            explanation,
        });
    }

    /// The counts, and the core as of the last record. `verified` is what checking every
    /// batch found: its divergences join the fold's own, in log order.
    pub fn finish(mut self, verified: Verified) -> (Summary, Core) {
        self.summary.divergences.extend(verified.divergences);
        self.summary.divergences.sort_by_key(|d| d.seq);
        let census = self.core.census();
        for (state, n) in StateName::ALL.iter().zip(census.states) {
            self.summary.machines.insert(state.as_str().to_owned(), n);
        }
        self.summary.files = verified.files.len() as u64;
        self.summary.callbacks = self.callbacks.len() as u64;
        (self.summary, self.core)
    }

    /// Attempts decided whose outcome is not in the log (in flight at its end).
    pub fn in_flight(&self) -> usize {
        self.decided.len()
    }
}

/// Compares each check's recorded digest with the digest of a fresh render. Snapshots are
/// asked of `snapshots` once per version, in increasing version order (what
/// [`cb_store::SnapshotReader`] reads fastest), after it was told all those versions; each
/// (version, callback) is rendered once.
pub fn verify(mut checks: Vec<Check>, snapshots: &mut impl Snapshots) -> Vec<Divergence> {
    checks.sort_unstable_by_key(|c| (c.version, c.seq));
    let same_version = |a: &Check, b: &Check| a.version == b.version;
    let versions: Vec<Seq> = checks
        .chunk_by(same_version)
        .map(|group| group[0].version)
        .collect();
    snapshots.expect(&versions);
    let diverge = |check: &Check, explanation| Divergence {
        seq: check.seq.0,
        explanation,
    };
    let mut divergences = Vec::new();
    // One version's digests, by callback; the vector is kept from version to version.
    let mut digests: Vec<(&Arc<Callback>, Digest)> = Vec::new();
    for group in checks.chunk_by(same_version) {
        let version = group[0].version;
        digests.clear();
        let rendered = snapshots.with(version, |snapshot| {
            for check in group {
                let known = digests
                    .iter()
                    .find(|(cb, _)| Arc::ptr_eq(cb, &check.callback) || ***cb == *check.callback);
                let digest = match known {
                    Some((_, d)) => *d,
                    None => {
                        let d = render(snapshot, &check.callback).digest();
                        digests.push((&check.callback, d));
                        d
                    }
                };
                if digest != check.digest {
                    divergences.push(diverge(
                        check,
                        format!(
                            "{} attempt {} sent bytes with digest {}, the core renders {} for version {}",
                            check.machine,
                            check.attempt,
                            short(&check.digest),
                            short(&digest),
                            check.version
                        ),
                    ));
                }
            }
        });
        let explanation = match rendered {
            Ok(Some(())) => continue,
            Ok(None) => format!("version {version} has no snapshot in the log"),
            Err(e) => format!("reading version {version}: {e}"),
        };
        divergences.extend(
            group
                .iter()
                .map(|check| diverge(check, explanation.clone())),
        );
    }
    divergences
}

fn short(d: &Digest) -> String {
    d.to_hex()[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cb_core::render::fixtures::seed_001_snapshot;
    use cb_core::{CallbackName, CallbackRef, Snapshot};

    /// Snapshots from a function, recording what was announced and asked.
    struct Lookup<F> {
        get: F,
        planned: Vec<Seq>,
        asked: Vec<u64>,
    }

    impl<F: FnMut(Seq) -> Result<Option<Snapshot>, String>> Lookup<F> {
        fn new(get: F) -> Self {
            Lookup {
                get,
                planned: Vec::new(),
                asked: Vec::new(),
            }
        }
    }

    impl<F: FnMut(Seq) -> Result<Option<Snapshot>, String>> Snapshots for Lookup<F> {
        fn expect(&mut self, versions: &[Seq]) {
            self.planned = versions.to_vec();
        }

        fn with<R>(
            &mut self,
            version: Seq,
            f: impl FnOnce(SnapshotView<'_>) -> R,
        ) -> Result<Option<R>, String> {
            self.asked.push(version.0);
            Ok((self.get)(version)?.map(|s| f(s.view())))
        }
    }

    fn check(seq: u64, version: u64, callback: &Arc<Callback>, digest: Digest) -> Check {
        Check {
            seq: Seq(seq),
            version: Seq(version),
            callback: callback.clone(),
            digest,
            machine: MachineKey {
                file: FileKey::parse("newzulu/556114").unwrap(),
                callback: CallbackRef::Project(CallbackName::new("site").unwrap()),
            },
            attempt: 1,
        }
    }

    #[test]
    fn verify_names_each_wrong_digest_and_reads_each_version_once_in_order() {
        let xml = Arc::new(Callback::from_json(r#"{"url":"https://example.org/a"}"#).unwrap());
        let get = Arc::new(
            Callback::from_json(r#"{"url":"https://example.org/b","method":"GET"}"#).unwrap(),
        );
        let snap = seed_001_snapshot();
        let good_xml = render(&snap, &xml).digest();
        let good_get = render(&snap, &get).digest();
        let checks = vec![
            check(40, 7, &xml, good_xml),
            check(41, 3, &get, good_get),
            check(42, 7, &get, good_xml), // the XML body's digest for the GET callback
            check(43, 9, &xml, good_xml), // version 9 is not a change
            check(44, 3, &xml, good_xml),
        ];
        let mut snapshots = Lookup::new(|v| Ok((v != Seq(9)).then(|| snap.clone())));
        let divergences = verify(checks, &mut snapshots);
        let (asked, planned) = (snapshots.asked, snapshots.planned);
        assert_eq!(asked, vec![3, 7, 9], "one lookup per version, in order");
        assert_eq!(planned, vec![Seq(3), Seq(7), Seq(9)], "announced before");
        let seqs: Vec<u64> = divergences.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, vec![42, 43]);
        assert!(divergences[0].explanation.contains("for version 7"));
        assert!(divergences[1]
            .explanation
            .contains("version 9 has no snapshot"));
    }

    #[test]
    fn a_lookup_error_is_a_divergence_not_a_panic() {
        let xml = Arc::new(Callback::from_json(r#"{"url":"https://example.org/a"}"#).unwrap());
        let mut snapshots = Lookup::new(|_| Err("chunk 2: checksum mismatch".into()));
        let d = verify(vec![check(5, 2, &xml, Digest::of(b"x"))], &mut snapshots);
        assert_eq!(d.len(), 1);
        assert!(d[0].explanation.contains("checksum mismatch"), "{d:?}");
    }

    proptest::proptest! {
        /// Held checks come out exactly once each, whether a stretch is released in passing
        /// or at the end, and a stretch goes out whole, below every stretch still held.
        #[test]
        fn held_checks_come_out_once_each_by_stretch(
            outcomes in proptest::collection::vec((0u64..40_000, 1u32..3, 1u64..50), 0..400),
        ) {
            let xml = Arc::new(Callback::from_json(r#"{"url":"https://example.org/a"}"#).unwrap());
            let mut held = HeldChecks::default();
            let mut out = Vec::new();
            let mut seq = 100_000u64;
            let mut sent = Vec::new();
            for (lag, attempt, step) in outcomes {
                seq += step * 100;
                let mut c = check(seq, seq - lag, &xml, Digest::of(b"x"));
                c.attempt = attempt;
                sent.push(seq);
                let before = out.len();
                held.hold(c, Seq(seq), attempt == 1, &mut out);
                held.release(Seq(seq), &mut out);
                // What a release hands out is whole stretches, below every stretch held.
                if let Some(lowest_held) = held.by_stretch.keys().next() {
                    for c in &out[before..] {
                        proptest::prop_assert!(c.version.0 >> STRETCH_BITS < *lowest_held);
                    }
                }
            }
            held.release_all(&mut out);
            let mut got: Vec<u64> = out.iter().map(|c| c.seq.0).collect();
            got.sort_unstable();
            proptest::prop_assert_eq!(got, sent);
            proptest::prop_assert_eq!(held.count, 0);
        }
    }

    #[test]
    fn a_stretch_is_held_until_the_fold_is_past_it_by_the_lag() {
        let xml = Arc::new(Callback::from_json(r#"{"url":"https://example.org/a"}"#).unwrap());
        let stretch = 1u64 << STRETCH_BITS;
        let mut held = HeldChecks::default();
        let mut out = Vec::new();
        // A first attempt 1000 behind its outcome sets the lag.
        held.hold(
            check(5_000, 4_000, &xml, Digest::of(b"x")),
            Seq(5_000),
            true,
            &mut out,
        );
        held.release(Seq(5_000), &mut out);
        assert!(out.is_empty(), "the stretch is still open");
        held.release(Seq(stretch + 999), &mut out);
        assert!(out.is_empty(), "not yet a lag past its end");
        held.release(Seq(stretch + 1_000), &mut out);
        assert_eq!(out.len(), 1);
        // A late check for a released stretch goes straight out; a redeliver of an old
        // version does not widen the lag.
        held.hold(
            check(stretch + 2_000, 10, &xml, Digest::of(b"x")),
            Seq(stretch + 2_000),
            false,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(held.lag, 1_000);
    }
}
