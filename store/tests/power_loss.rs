//! Power loss, simulated: the store runs on a [`SimDisk`] and, for each seed, goes through
//! several cycles of appends (sequential, and concurrent bursts), syncs, injected faults
//! (failed `fdatasync`s with fsyncgate semantics, failed writes, a full disk at a roll),
//! then a crash in any mode, and a reopen on the same disk and the same data dir — whose
//! sled index lives on the real file system and is *not* crashed, so it may reach past the
//! log that survived. After every reopen, every acknowledged record is there with its own
//! bytes and its own snapshot, the log is dense and readable to its end, whatever survived
//! past the acknowledged ones is whole and is what was appended, the index answers as the
//! log says, a restore equals a fold of the log, and appends go on at the next seq.
//!
//! This is the store's central promise ([`Store::append`]'s guarantee) checked against the
//! failures a real disk has and a real test cannot cause on demand.
//!
//! The second property runs the same cycles with retention among their steps, because an
//! advance of the base rewrites and removes files while the log goes on, and its one
//! switching step (the manifest's rename) must leave either base whole whatever fails or
//! crashes around it. `retain_now` is called at random points with a horizon of seconds of
//! virtual time (the appends and some idle time pass it), sometimes a byte limit and an
//! archive dir, under a full disk, failed syncs or writes, or every disk operation failing
//! from one of the advance's on ([`SimDisk::fail_from`]) — for a while, or up to a crash
//! there. The test predicts each advance from the segments on disk (its new base, the state
//! there, the change kept for each file, the files forgotten) and checks what the store
//! reports and serves. After every reopen the base is the one the store had or the new one
//! of an advance cut short, never another nor a mix; its state is the fold up to it and a
//! restore is that state plus the records after it; each file's latest change is served with
//! its own bytes and its start is the base's; nothing of another base is left on disk; the
//! archives follow one another from record 1 to the base; and the next advance works. Each
//! seed ends with its log exported and imported into another store with power cut during
//! the import.
//!
//! Every random choice comes from the seed (the disk's and the test's), which a failure
//! prints; the concurrent bursts add scheduling to it, so a seed that fails there may need a
//! few reruns. `CB_POWER_LOSS_SEEDS=N` runs `N` seeds (default [`DEFAULT_SEEDS`], and
//! [`DEFAULT_RETENTION_SEEDS`] for retention) from `CB_POWER_LOSS_FIRST_SEED` (default 0);
//! `CB_POWER_LOSS_SEED=S` runs seed `S` alone, and `CB_POWER_LOSS_TRACE=1` prints every step
//! it takes.
//!
//! The tests after the properties are the failures they found, each made deterministic.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cb_core::{
    AttemptReport, CallbackName, CallbackRef, Checkpoint, Core, Digest, EventKind, FileCallback,
    FileKey, MachineKey, Outcome, Record, RecordKind, Scope, Seq, Snapshot, Timestamp,
};
use cb_store::sim::{CrashMode, FaultCounts, SimDisk};
use cb_store::{
    Appended, Change, Durability, Error, Input, LogStorage, Retention, Store, StoreOptions,
};
use support::*;

/// Seeds run by a plain `cargo test`: a few seconds in a debug build.
const DEFAULT_SEEDS: u64 = 64;
/// Seeds of the retention property run by a plain `cargo test`.
const DEFAULT_RETENTION_SEEDS: u64 = 32;
/// Retention seeds that found a bug, run by every `cargo test` besides the default ones:
/// 191 — an advance after a base switch that could not be confirmed removed the
/// checkpoint the manifest on disk named (an unsynced rename that survived the crash);
/// 200 and 567 — the same unconfirmed switch, settled on a healthy disk by the next call
/// (made after all: reported as that call's advance); 349 — the model taking an attempt
/// that failed before its switch for that one.
const RETENTION_REGRESSIONS: &[u64] = &[191, 200, 349, 567];
/// Crash-and-reopen cycles per seed.
const CYCLES: usize = 4;
const FILES: u64 = 6;

const MODES: [CrashMode; 4] = [
    CrashMode::DropUnsynced,
    CrashMode::TornWrite,
    CrashMode::KeepSome,
    CrashMode::Any,
];

/// splitmix64, for the test's own choices (the disk has its own stream from the same seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `1/n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A record as the log must hold it.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    record: Record,
    snapshot: Option<Snapshot>,
}

/// Every change the test ever submitted, acknowledged or not, by the number its snapshot's
/// title carries: how a record that survived without being acknowledged is checked to be
/// one that was appended, whole.
#[derive(Clone)]
struct Made {
    file: FileKey,
    event: EventKind,
    pad: usize,
}

/// A snapshot unique to `n`, about a seed's size plus `pad` bytes.
fn body(file: &FileKey, n: u64, pad: usize) -> Snapshot {
    let mut b = Snapshot::builder();
    for (name, value) in seed_like(file, n).iter() {
        b.push(name, value).unwrap();
    }
    if pad > 0 {
        let c = char::from(b'a' + (n % 26) as u8);
        b.push("pad", &c.to_string().repeat(pad)).unwrap();
    }
    b.finish().unwrap()
}

/// The `n` of a snapshot made by [`body`] (its title is `Test {n} : …`).
fn n_of(snapshot: &Snapshot) -> Option<u64> {
    snapshot
        .get("title")?
        .strip_prefix("Test ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn per_file_callbacks() -> Arc<[FileCallback]> {
    Arc::from(
        FileCallback::validate_list(vec![serde_json::from_str(
            r#"{"url":"https://example.org/lf","method":"PUT","format":"json","on_progress":true}"#,
        )
        .unwrap()])
        .unwrap(),
    )
}

fn site() -> CallbackName {
    CallbackName::new("site").unwrap()
}

/// Counts of what the run did, for its summary and its coverage checks.
#[derive(Default, Debug)]
struct Tally {
    faults: FaultCounts,
    opens: u64,
    rebuilt: u64,
    cut: u64,
    caught_up: u64,
    index_removed: u64,
    acked_records: u64,
    survivors_unacked: u64,
    refused_io: u64,
    refused_disk_full: u64,
    bursts_crashed: u64,
    checkpoints: u64,
    buffered_cycles: u64,
    taken_back: u64,
    older_index_caught_up: u64,
    retention: RetentionTally,
}

/// What the retention steps did.
#[derive(Default, Debug)]
struct RetentionTally {
    /// Calls of `retain_now`, and those that advanced the base or found nothing to remove.
    calls: u64,
    advances: u64,
    nothing_to_remove: u64,
    /// Advances refused by a fault, by kind of error.
    refused_io: u64,
    refused_disk_full: u64,
    /// The file a full disk refused: the kept segment, the base checkpoint, the manifest.
    full_at: BTreeMap<&'static str, u64>,
    /// Of those, the ones after which the running store already had the new base.
    refused_after_the_switch: u64,
    /// Advances left unconfirmed by a fault and found made by the next call.
    settled: u64,
    /// Crashes during an advance (a power cut at one of its disk operations).
    crashes_mid_advance: u64,
    /// Advances a fault or a crash left uncertain whose reopen found the new base / the old.
    reopened_on_the_new_base: u64,
    reopened_on_the_old_base: u64,
    /// Where power cuts landed: the operation of the advance (0: its first) → how many
    /// reopens found the old base, and how many the new one.
    cuts: BTreeMap<u64, (u64, u64)>,
    /// Changes kept and files forgotten by the advances that succeeded.
    kept: u64,
    forgotten: u64,
    /// Archives read back and checked, records in them.
    archives: u64,
    archived_records: u64,
    /// Exports imported into a fresh store under a fault, and how the crash after left it:
    /// empty, with the base and a prefix of the records after it, or whole.
    imports: u64,
    imports_left_empty: u64,
    imports_left_partial: u64,
    imports_left_whole: u64,
}

impl RetentionTally {
    fn add(&mut self, t: &RetentionTally) {
        self.calls += t.calls;
        self.advances += t.advances;
        self.nothing_to_remove += t.nothing_to_remove;
        self.refused_io += t.refused_io;
        self.refused_disk_full += t.refused_disk_full;
        for (file, n) in &t.full_at {
            *self.full_at.entry(file).or_default() += n;
        }
        self.refused_after_the_switch += t.refused_after_the_switch;
        self.settled += t.settled;
        self.crashes_mid_advance += t.crashes_mid_advance;
        self.reopened_on_the_new_base += t.reopened_on_the_new_base;
        self.reopened_on_the_old_base += t.reopened_on_the_old_base;
        for (at, (old, new)) in &t.cuts {
            let c = self.cuts.entry(*at).or_default();
            c.0 += old;
            c.1 += new;
        }
        self.kept += t.kept;
        self.forgotten += t.forgotten;
        self.archives += t.archives;
        self.archived_records += t.archived_records;
        self.imports += t.imports;
        self.imports_left_empty += t.imports_left_empty;
        self.imports_left_partial += t.imports_left_partial;
        self.imports_left_whole += t.imports_left_whole;
    }
}

/// The log's base as the test expects it.
#[derive(Clone, Debug)]
struct BaseModel {
    seq: u64,
    at: Timestamp,
    /// The core's state there: the fold of every record up to it.
    state: Checkpoint,
    /// The change kept for each file (its latest at or before the base, unless forgotten).
    kept: BTreeMap<FileKey, Entry>,
    /// Older versions kept too: those of attempts in flight at the base (their outcomes,
    /// after it, are checked against them).
    in_flight: std::collections::BTreeSet<u64>,
    forgotten: u64,
    /// The power cut armed for the advance to it, if any (for the tally of where cuts land).
    cut_at: Option<u64>,
}

/// What a world that runs retention knows beyond its log.
struct Retained {
    /// The age of the horizon, in virtual milliseconds: short enough for a cycle to pass it.
    age: u64,
    /// Where every advance writes the history it removes, if anywhere.
    archive: Option<tempfile::TempDir>,
    /// The base the running store has (as far as the test can tell).
    base: Option<BaseModel>,
    /// Bases an advance that failed or was cut short may have switched the disk to without
    /// the running store knowing: after a crash the base is `base` or one of these.
    maybe: Vec<BaseModel>,
    /// Every record at or before the base, which the log no longer holds.
    history: BTreeMap<u64, Entry>,
    /// The most disk operations one advance took so far: where a cut can land.
    advance_ops: u64,
}

/// A fault armed while retention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetainFault {
    None,
    /// The disk fills during the advance: the kept segment, the checkpoint or the manifest
    /// finds no room, or none of them.
    DiskFull,
    /// The next `fdatasync`s fail (fsyncgate).
    FailingSyncs,
    /// The next write fails half-way.
    FailingWrite,
    /// Every disk operation fails from one on, for the rest of the call; then the disk works
    /// again, without a crash.
    FailingFrom,
    /// Power is cut at one of the call's disk operations: a crash there.
    PowerCut,
}

impl Tally {
    fn add_faults(&mut self, f: FaultCounts) {
        let t = &mut self.faults;
        t.crashes += f.crashes;
        t.lost_writes += f.lost_writes;
        t.torn_writes += f.torn_writes;
        t.failed_syncs += f.failed_syncs;
        t.failed_writes += f.failed_writes;
        t.disk_full += f.disk_full;
        t.failed_ops += f.failed_ops;
    }

    fn add(&mut self, t: &Tally) {
        self.add_faults(t.faults);
        self.opens += t.opens;
        self.rebuilt += t.rebuilt;
        self.cut += t.cut;
        self.caught_up += t.caught_up;
        self.index_removed += t.index_removed;
        self.acked_records += t.acked_records;
        self.survivors_unacked += t.survivors_unacked;
        self.refused_io += t.refused_io;
        self.refused_disk_full += t.refused_disk_full;
        self.bursts_crashed += t.bursts_crashed;
        self.checkpoints += t.checkpoints;
        self.buffered_cycles += t.buffered_cycles;
        self.taken_back += t.taken_back;
        self.older_index_caught_up += t.older_index_caught_up;
        self.retention.add(&t.retention);
    }
}

/// One seed's world: the disk, the data dir, and what the log must hold.
struct World {
    seed: u64,
    rng: Rng,
    disk: SimDisk,
    dir: tempfile::TempDir,
    clock: VirtualClock,
    segment_bytes: u64,
    span: u64,
    /// Every record the log holds as far as the test knows, by seq: acknowledged ones,
    /// appended-but-unsynced ones (buffered), and whatever a reopen found.
    model: BTreeMap<u64, Entry>,
    /// Every record up to here was acknowledged durable.
    durable: u64,
    made: HashMap<u64, Made>,
    next_n: u64,
    /// A checkpoint was taken of records that were not durable (buffered): a later restore
    /// may rightly report it damaged.
    unsynced_checkpoint: bool,
    tally: Tally,
    /// `CB_POWER_LOSS_TRACE` set: every step is printed (to see how a seed fails).
    trace: bool,
    /// A copy of the index as an earlier close left it, with the base it was built for, and
    /// that base when it was put back in place of the current one for the next open.
    saved_index: Option<(tempfile::TempDir, u64)>,
    index_put_back: Option<u64>,
    /// `Some` in the retention property.
    retained: Option<Retained>,
}

/// Says which seed failed, and how to run it alone, when a check panics: the seed and the
/// name of the property's test.
struct SeedGuard(u64, &'static str);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "power_loss: seed {} failed; rerun it alone with CB_POWER_LOSS_SEED={} \
                 CB_POWER_LOSS_TRACE=1 cargo test -p cb-store --test power_loss {}",
                self.0, self.0, self.1
            );
        }
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed ^ 0x5EED_0FC0_FFEE);
        let segment_bytes = [8, 16, 32][rng.below(3) as usize] * 1024;
        let span = 2 + rng.below(9);
        World {
            seed,
            rng,
            disk: SimDisk::new(seed),
            dir: tempfile::tempdir().unwrap(),
            clock: VirtualClock::at(1_700_000_000_000),
            segment_bytes,
            span,
            model: BTreeMap::new(),
            durable: 0,
            made: HashMap::new(),
            next_n: 1,
            unsynced_checkpoint: false,
            tally: Tally::default(),
            trace: std::env::var_os("CB_POWER_LOSS_TRACE").is_some(),
            saved_index: None,
            index_put_back: None,
            retained: None,
        }
    }

    /// A world whose cycles also run retention, with a horizon of well under a cycle.
    fn retaining(seed: u64) -> World {
        let mut world = World::new(seed);
        let age = (10 + world.rng.below(80)) * 1000;
        let archive = world.rng.one_in(2).then(|| tempfile::tempdir().unwrap());
        world.retained = Some(Retained {
            age,
            archive,
            base: None,
            maybe: Vec::new(),
            history: BTreeMap::new(),
            advance_ops: 24,
        });
        world
    }

    fn options(&self, durability: Durability) -> StoreOptions {
        let clock = self.clock.clone();
        StoreOptions {
            durability,
            storage: Some(LogStorage {
                segments: self.disk.dir("segments"),
                checkpoints: self.disk.dir("checkpoints"),
            }),
            segment_bytes: self.segment_bytes,
            reserve_bytes: Some(0),
            index_segment_span: self.span,
            cache_capacity_bytes: 4 * 1024 * 1024,
            clock: Box::new(move || clock.now()),
            ..StoreOptions::default()
        }
    }

    fn crash(&mut self) {
        let mode = MODES[self.rng.below(4) as usize];
        self.trace(|| format!("crash {mode:?}"));
        self.disk.crash(mode);
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[seed {}] {}", self.seed, what());
        }
    }

    fn ctx(&self) -> String {
        let retention = match &self.retained {
            Some(r) => format!(
                ", a horizon of {} s{}",
                r.age / 1000,
                if r.archive.is_some() {
                    ", archived"
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        format!(
            "seed {} (segments of {} KiB, index span {}{retention})",
            self.seed,
            self.segment_bytes / 1024,
            self.span
        )
    }

    // ---- inputs ----

    fn file(&mut self) -> FileKey {
        file(self.rng.below(FILES))
    }

    fn change(&mut self, pad: usize) -> Input {
        let f = self.file();
        let event = EVENTS[self.rng.below(EVENTS.len() as u64) as usize];
        let n = self.next_n;
        self.next_n += 1;
        self.made.insert(
            n,
            Made {
                file: f.clone(),
                event,
                pad,
            },
        );
        Input::Change(Change {
            snapshot: body(&f, n, pad),
            file: f,
            event,
            callbacks: self.rng.one_in(5).then(per_file_callbacks),
        })
    }

    fn small_pad(&mut self) -> usize {
        if self.rng.one_in(6) {
            self.rng.below(4000) as usize
        } else {
            self.rng.below(300) as usize
        }
    }

    /// Any input, the kinds in roughly the proportions a daemon appends them.
    fn input(&mut self) -> Input {
        match self.rng.below(20) {
            0..=10 => {
                let pad = self.small_pad();
                self.change(pad)
            }
            11 | 12 => Input::Record(RecordKind::Ticked),
            13 => Input::Record(RecordKind::CallbackPut {
                project: project(),
                name: site(),
                callback: callback(
                    r#"{"url":"https://example.org/a","window_secs":2,"backoff_secs":[1,3]}"#,
                ),
            }),
            14 => Input::Record(RecordKind::CallbackRemoved {
                project: project(),
                name: site(),
            }),
            15 | 16 => Input::Record(RecordKind::RedeliverRequested {
                file: self.file(),
                callback: self.rng.one_in(2).then(|| CallbackRef::Project(site())),
                version: None,
            }),
            17 | 18 => {
                let f = self.file();
                let seq = self.rng.below(self.model.len() as u64 + 1) + 1;
                Input::Record(RecordKind::AttemptFinished(AttemptReport {
                    machine: MachineKey {
                        file: f,
                        callback: CallbackRef::Project(site()),
                    },
                    delivery: cb_core::DeliveryId(Seq(seq)),
                    attempt: 1 + self.rng.below(3) as u32,
                    version: Seq(seq),
                    outcome: [
                        Outcome::Delivered { status: 200 },
                        Outcome::Timeout,
                        Outcome::Status {
                            status: 503,
                            retry_after_secs: Some(3),
                        },
                    ][self.rng.below(3) as usize],
                    latency_ms: self.rng.below(5000) as u32,
                    digest: Digest::of(&self.rng.next().to_le_bytes()),
                    detail: "x".repeat(self.rng.below(40) as usize),
                }))
            }
            _ => Input::Record(RecordKind::CallbackDisabled {
                machine: MachineKey {
                    file: self.file(),
                    callback: CallbackRef::Project(site()),
                },
                cause: Seq(self.rng.below(self.model.len() as u64 + 1) + 1),
            }),
        }
    }

    fn inputs(&mut self) -> Vec<Input> {
        let n = 1 + self.rng.below(4);
        (0..n).map(|_| self.input()).collect()
    }

    // ---- the model ----

    /// The latest change of `file` the model holds before `seq`, or else the one the base
    /// keeps of it.
    fn latest_before(&self, file: &FileKey, seq: u64) -> Option<Seq> {
        self.model
            .range(..seq)
            .rev()
            .find(|(_, e)| {
                matches!(&e.record.kind, RecordKind::ChangeAppended { file: f, .. } if f == file)
            })
            .map(|(s, _)| Seq(*s))
            .or_else(|| self.kept(file).map(|e| e.record.seq))
    }

    /// The change the base keeps of `file`, if there is a base and it keeps one.
    fn kept(&self, file: &FileKey) -> Option<&Entry> {
        self.retained.as_ref()?.base.as_ref()?.kept.get(file)
    }

    /// The base's seq, 0 without one.
    fn base_seq(&self) -> u64 {
        self.retained
            .as_ref()
            .and_then(|r| r.base.as_ref())
            .map_or(0, |b| b.seq)
    }

    /// What record `seq`, stamped `at`, made of `input` must be.
    fn expected(&self, seq: Seq, at: Timestamp, input: &Input) -> Entry {
        let (kind, snapshot) = match input.clone() {
            Input::Change(c) => (
                RecordKind::ChangeAppended {
                    file: c.file,
                    event: c.event,
                    callbacks: c.callbacks,
                },
                Some(c.snapshot),
            ),
            Input::Record(RecordKind::RedeliverRequested { file, callback, .. }) => {
                let version = self.latest_before(&file, seq.0);
                (
                    RecordKind::RedeliverRequested {
                        file,
                        callback,
                        version,
                    },
                    None,
                )
            }
            Input::Record(kind) => (kind, None),
        };
        Entry {
            record: Record { seq, at, kind },
            snapshot,
        }
    }

    /// Notes an acknowledged append in the model; `durable` when its acknowledgement says
    /// it is on disk. With `store`, also checks that the store serves it as appended.
    fn acked(
        &mut self,
        store: Option<&Store>,
        appended: &Appended,
        inputs: &[Input],
        durable: bool,
    ) {
        assert_eq!(appended.count, inputs.len() as u64, "{}", self.ctx());
        for (seq, input) in appended.seqs().zip(inputs) {
            let want = self.expected(seq, appended.at, input);
            if let Some(store) = store {
                let got = read_entry(store, seq)
                    .unwrap_or_else(|e| panic!("{}: record {seq} just appended: {e}", self.ctx()));
                assert_eq!(got, want, "{}: record {seq} as appended", self.ctx());
            }
            let replaced = self.model.insert(seq.0, want);
            assert!(
                replaced.is_none(),
                "{}: seq {seq} acknowledged twice",
                self.ctx()
            );
        }
        self.tally.acked_records += appended.count;
        if durable {
            self.durable = self.durable.max(appended.last().0);
        }
    }

    /// The fold of every record: those before the base (which only the test still has),
    /// then the log's.
    fn fold(&self) -> Core {
        self.fold_to(u64::MAX)
    }

    /// The fold of every record up to `seq`.
    fn fold_to(&self, seq: u64) -> Core {
        let mut core = Core::new();
        let mut effects = Vec::new();
        let history = self.retained.as_ref().map(|r| &r.history);
        for e in history
            .into_iter()
            .flat_map(|h| h.values())
            .chain(self.model.values())
            .take_while(|e| e.record.seq.0 <= seq)
        {
            core.apply(&e.record, &mut effects);
            effects.clear();
        }
        core
    }

    // ---- one append ----

    /// Appends `inputs`; on success checks and notes them. Errors are returned (after
    /// checking they are of a kind a disk fault gives).
    fn append(
        &mut self,
        store: &Store,
        durability: Durability,
        inputs: Vec<Input>,
    ) -> Result<Appended, String> {
        self.clock.advance(1 + self.rng.below(2_000));
        let result = store.append(inputs.clone());
        self.trace(|| {
            let kinds: Vec<String> = inputs
                .iter()
                .map(|i| match i {
                    Input::Change(c) => format!("change({} B)", c.snapshot.as_parts().0.len()),
                    Input::Record(k) => format!("{k:?}").chars().take(20).collect(),
                })
                .collect();
            format!("append {kinds:?} -> {result:?}")
        });
        match result {
            Ok(a) => {
                assert_eq!(
                    Some(a.last()),
                    store.last_seq(),
                    "{}: appended past the tip",
                    self.ctx()
                );
                self.acked(Some(store), &a, &inputs, durability == Durability::Sync);
                Ok(a)
            }
            Err(e) => {
                self.after_failure(store, durability);
                match &e {
                    Error::Io { .. } => self.tally.refused_io += 1,
                    Error::DiskFull { .. } => self.tally.refused_disk_full += 1,
                    other => panic!(
                        "{}: an append failed with {other}, not a disk error",
                        self.ctx()
                    ),
                }
                Err(e.to_string())
            }
        }
    }

    /// [`Store::sync`]; on success everything appended so far is acknowledged durable.
    fn sync(&mut self, store: &Store) -> bool {
        let tip = store.last_seq().map_or(0, |s| s.0);
        let result = store.sync();
        self.trace(|| format!("sync at {tip} -> {result:?}"));
        match result {
            Ok(()) => {
                self.durable = self.durable.max(tip);
                true
            }
            Err(e) => {
                assert!(
                    matches!(e, Error::Io { .. } | Error::DiskFull { .. }),
                    "{}: sync failed with {e}",
                    self.ctx()
                );
                self.after_failure(store, Durability::Buffered);
                false
            }
        }
    }

    /// After a refused append or sync: a failed `fdatasync` may have dropped what was
    /// written since the last good one, so the store takes back what it acknowledged
    /// without a sync (buffered) — never what a sync covered.
    fn after_failure(&mut self, store: &Store, durability: Durability) {
        let tip = store.last_seq().map_or(0, |s| s.0);
        assert!(
            tip >= self.durable,
            "{}: a failure took back durable records (tip {tip}, durable {})",
            self.ctx(),
            self.durable
        );
        let taken_back = self.model.split_off(&(tip + 1));
        assert!(
            taken_back.is_empty() || durability == Durability::Buffered,
            "{}: a failure took back acknowledged records {:?}",
            self.ctx(),
            taken_back.keys().collect::<Vec<_>>()
        );
        if !taken_back.is_empty() {
            self.trace(|| format!("taken back: {:?}", taken_back.keys().collect::<Vec<_>>()));
            self.tally.taken_back += taken_back.len() as u64;
        }
    }

    // ---- open and check ----

    /// Opens the store (after a crash, or the first time) and checks everything the log
    /// must hold; the model becomes what was found.
    fn open_and_check(&mut self, durability: Durability, cycle: usize) -> Store {
        let ctx = format!("{}, open {cycle}", self.ctx());
        // Faults are for the running store; the open itself sees a working disk.
        self.disk.fail_next_syncs(0);
        self.disk.fail_next_writes(0);
        self.disk.set_capacity(None);
        let store = Store::open(self.dir.path(), self.options(durability)).unwrap_or_else(|e| {
            dump_segments(&self.disk);
            panic!("{ctx}: the store did not open after a crash: {e}")
        });
        self.tally.opens += 1;
        let recovery = store.recovery().clone();
        self.trace(|| {
            format!(
                "open {cycle} ({durability:?}): tip {:?}, {recovery:?}",
                store.last_seq()
            )
        });
        self.settle_base(&store, &ctx);
        if let Some(built_for) = self.index_put_back.take() {
            // It agrees with the log as far as it goes: caught up, not rebuilt — unless the
            // base moved since it was saved.
            if built_for == self.base_seq() {
                assert_eq!(
                    recovery.rebuilt, None,
                    "{ctx}: an older index put back was rebuilt"
                );
                self.tally.older_index_caught_up += 1;
            }
        }
        self.tally.rebuilt += u64::from(recovery.rebuilt.is_some());
        self.tally.cut += u64::from(recovery.cut.is_some());
        self.tally.caught_up += recovery.caught_up;

        let last = store.last_seq().map_or(0, |s| s.0);
        assert!(
            last >= self.durable,
            "{ctx}: acknowledged records up to {} but the log ends at {last} ({recovery:?})",
            self.durable
        );
        // The log is dense and readable from its first record (after the base) to its last.
        let mut found = BTreeMap::new();
        let mut expect = self.base_seq() + 1;
        assert_eq!(
            store.first_seq(),
            Seq(expect),
            "{ctx}: the log's first record"
        );
        for r in store.records(Seq(1)) {
            let r = r.unwrap_or_else(|e| {
                dump_segments(&self.disk);
                panic!("{ctx}: the log is unreadable at {expect}: {e}")
            });
            assert_eq!(r.seq.0, expect, "{ctx}: the log has a hole");
            let snapshot = store
                .snapshot(r.seq)
                .unwrap_or_else(|e| panic!("{ctx}: snapshot of {}: {e}", r.seq));
            let is_change = matches!(r.kind, RecordKind::ChangeAppended { .. });
            assert_eq!(
                snapshot.is_some(),
                is_change,
                "{ctx}: record {} and its body",
                r.seq
            );
            let by_seq = store
                .record(r.seq)
                .unwrap_or_else(|e| panic!("{ctx}: record {}: {e}", r.seq));
            assert_eq!(by_seq.as_ref(), Some(&r), "{ctx}: record {} by seq", r.seq);
            found.insert(
                expect,
                Entry {
                    record: r,
                    snapshot,
                },
            );
            expect += 1;
        }
        assert_eq!(expect - 1, last, "{ctx}: records end before the tip");

        for (&seq, got) in &found {
            match self.model.get(&seq) {
                // Acknowledged durable: its own bytes.
                Some(want) if seq <= self.durable => {
                    assert_eq!(got, want, "{ctx}: record {seq} after the crash");
                }
                // Acknowledged without a sync (buffered): the crash's failed sync may have
                // taken it back and given its seq to another append.
                Some(want) if got != want => {
                    self.tally.survivors_unacked += 1;
                    self.check_sent(seq, got, &ctx);
                }
                Some(_) => {}
                None => {
                    assert!(
                        seq > self.durable,
                        "{ctx}: acknowledged record {seq} unknown to the test"
                    );
                    self.tally.survivors_unacked += 1;
                    self.check_sent(seq, got, &ctx);
                }
            }
        }
        self.model = found;
        // Everything the open found is on disk now (the tail was synced before it counted).
        self.durable = last;

        self.check_index(&store, &ctx);
        let restored = store
            .restore()
            .unwrap_or_else(|e| panic!("{ctx}: restore failed: {e}"));
        if !self.unsynced_checkpoint {
            assert!(
                restored.damaged.is_empty(),
                "{ctx}: a checkpoint of durable records was lost: {:?}",
                restored.damaged
            );
        }
        assert_eq!(
            restored.core.checkpoint(),
            self.fold().checkpoint(),
            "{ctx}: the restore is not the fold of the log"
        );
        if self.retained.is_some() {
            self.check_base(&store, &ctx);
            self.check_files_on_disk(&store, &ctx);
            self.check_archives(&ctx);
        }
        store
    }

    /// A record the test knows only from the log (it survived without its acknowledgement,
    /// or a buffered acknowledgement was taken back and its seq reused): whole, and if a
    /// change, one that was sent, with its own snapshot.
    fn check_sent(&self, seq: u64, got: &Entry, ctx: &str) {
        if let (RecordKind::ChangeAppended { file, event, .. }, Some(snapshot)) =
            (&got.record.kind, &got.snapshot)
        {
            let n = n_of(snapshot).unwrap_or_else(|| {
                panic!("{ctx}: record {seq} has a snapshot the test never made")
            });
            let made = self
                .made
                .get(&n)
                .unwrap_or_else(|| panic!("{ctx}: record {seq} has snapshot {n}, never sent"));
            assert_eq!(
                (file, event, snapshot),
                (&made.file, &made.event, &body(&made.file, n, made.pad)),
                "{ctx}: record {seq} is not what was sent"
            );
        }
    }

    /// The index answers as the log says: each file's records and latest version.
    fn check_index(&self, store: &Store, ctx: &str) {
        for i in 0..FILES {
            let f = file(i);
            let want: Vec<Seq> = self
                .model
                .iter()
                .filter(|(_, e)| match e.record.scope() {
                    Scope::File(g) => *g == f,
                    Scope::Project(p) => *p == f.project,
                    Scope::Global => false,
                })
                .map(|(s, _)| Seq(*s))
                .collect();
            let got = store
                .file_seqs(&f)
                .unwrap_or_else(|e| panic!("{ctx}: file_seqs of {f}: {e}"));
            assert_eq!(got, want, "{ctx}: the index's records of {f}");
            let latest = store
                .latest_version(&f)
                .unwrap_or_else(|e| panic!("{ctx}: latest_version of {f}: {e}"));
            assert_eq!(
                latest,
                self.latest_before(&f, u64::MAX),
                "{ctx}: latest version of {f}"
            );
        }
    }

    // ---- the base ----

    /// After an open: the base is the one the running store had or one an advance that
    /// failed or was cut short was switching to — never another, nor a mix of two (the
    /// checks that follow compare its state and kept changes with that advance's).
    fn settle_base(&mut self, store: &Store, ctx: &str) {
        let Some(r) = &mut self.retained else {
            assert_eq!(store.base(), None, "{ctx}: a base, with no retention");
            return;
        };
        let found = store.base().map(|b| b.seq.0);
        let known = r.base.as_ref().map(|b| b.seq);
        let maybe = std::mem::take(&mut r.maybe);
        if found == known {
            if !maybe.is_empty() {
                self.tally.retention.reopened_on_the_old_base += 1;
                for cut in maybe.iter().filter_map(|m| m.cut_at) {
                    self.tally.retention.cuts.entry(cut).or_default().0 += 1;
                }
            }
            return;
        }
        let new = maybe
            .iter()
            .find(|m| Some(m.seq) == found)
            .unwrap_or_else(|| {
                panic!(
                    "{ctx}: the base is {found:?}: neither the one the store had ({known:?}) nor \
                     one an advance was making ({:?})",
                    maybe.iter().map(|m| m.seq).collect::<Vec<_>>()
                )
            })
            .clone();
        self.tally.retention.reopened_on_the_new_base += 1;
        if let Some(cut) = new.cut_at {
            self.tally.retention.cuts.entry(cut).or_default().1 += 1;
        }
        self.trace(|| format!("the open found the new base {}", new.seq));
        self.switch_base(new, ctx);
    }

    /// The base is now `new`: the records up to it leave the log for the test's history.
    fn switch_base(&mut self, new: BaseModel, ctx: &str) {
        let after = self.model.split_off(&(new.seq + 1));
        let before = std::mem::replace(&mut self.model, after);
        let r = self.retained.as_mut().expect("a retaining world");
        let old = r.base.as_ref().map_or(0, |b| b.seq);
        assert!(
            before.keys().copied().eq(old + 1..=new.seq),
            "{ctx}: the records {}..={} of the base at {} are not all known",
            old + 1,
            new.seq,
            new.seq
        );
        r.history.extend(before);
        r.base = Some(new);
    }

    /// The base as the store serves it: where it is, the state there (what a fold from it
    /// starts with), each file's start and kept change with its own bytes.
    fn check_base(&self, store: &Store, ctx: &str) {
        let Some(r) = &self.retained else {
            return;
        };
        let want = r.base.as_ref();
        let got = store.base();
        assert_eq!(
            got.as_ref().map(|b| (b.seq.0, b.at)),
            want.map(|b| (b.seq, b.at)),
            "{ctx}: the base"
        );
        let state = store
            .base_checkpoint()
            .unwrap_or_else(|e| panic!("{ctx}: the base checkpoint: {e}"));
        assert_eq!(
            state.as_ref(),
            want.map(|b| &b.state),
            "{ctx}: the state at the base"
        );
        // Folding the records after the base onto it is folding them all.
        let mut core = state.map_or_else(Core::new, Core::from_checkpoint);
        let mut effects = Vec::new();
        for e in self.model.values() {
            core.apply(&e.record, &mut effects);
            effects.clear();
        }
        assert_eq!(
            core.checkpoint(),
            self.fold().checkpoint(),
            "{ctx}: the base's state and the records after it are not the whole log's fold"
        );
        for i in 0..FILES {
            let f = file(i);
            let start = store
                .file_start(&f)
                .unwrap_or_else(|e| panic!("{ctx}: file_start of {f}: {e}"));
            let Some(want) = want else {
                assert_eq!(start, None, "{ctx}: the start of {f} without a base");
                continue;
            };
            let start = start.unwrap_or_else(|| panic!("{ctx}: no start for {f} with a base"));
            assert_eq!(start.seq(), Seq(want.seq), "{ctx}: the start of {f}");
            assert_eq!(
                start.state,
                want.state.for_file(&f),
                "{ctx}: the state {f} starts from"
            );
            let kept = want.kept.get(&f);
            assert_eq!(
                start.version,
                kept.map(|e| e.record.seq),
                "{ctx}: the version {f} starts from"
            );
            if let Some(kept) = kept {
                let got = read_entry(store, kept.record.seq).unwrap_or_else(|e| {
                    panic!("{ctx}: the kept change {} of {f}: {e}", kept.record.seq)
                });
                assert_eq!(&got, kept, "{ctx}: the kept change of {f}");
            }
        }
    }

    /// After an open, nothing an advance left half done is on disk.
    fn check_files_on_disk(&self, store: &Store, ctx: &str) {
        check_segment_files(&*self.disk.dir("segments"), store.base().as_ref(), ctx);
    }

    /// With an archive dir, the archives hold the records the advances removed with their
    /// own bytes, and follow one another from record 1 up to the base.
    fn check_archives(&mut self, ctx: &str) {
        let Some(r) = &self.retained else {
            return;
        };
        let Some(dir) = &r.archive else {
            return;
        };
        let mut spans: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let (mut archives, mut records) = (0, 0);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let span = name
                .strip_prefix("cb-")
                .and_then(|n| n.strip_suffix(".ndjson.zst"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            let (from, to) = span.unwrap_or_else(|| panic!("{ctx}: {name} in the archive dir"));
            let text = zstd::decode_all(&std::fs::read(&path).unwrap()[..])
                .unwrap_or_else(|e| panic!("{ctx}: archive {name}: {e}"));
            let mut seq = from;
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let line: cb_store::ndjson::Line = serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("{ctx}: archive {name}: {e}"));
                let (record, snapshot) = line.into_record().unwrap();
                assert_eq!(record.seq.0, seq, "{ctx}: archive {name} is not dense");
                // An archive of an advance that did not switch reaches past the base.
                let want = r.history.get(&seq).or_else(|| self.model.get(&seq));
                assert_eq!(
                    Some(&Entry { record, snapshot }),
                    want,
                    "{ctx}: record {seq} in archive {name}"
                );
                seq += 1;
            }
            assert_eq!(seq, to + 1, "{ctx}: archive {name} ends at {}", seq - 1);
            spans.entry(from).or_default().insert(to);
            archives += 1;
            records += to + 1 - from;
        }
        // Some chain of archives leads from record 1 to the base.
        let base = self.base_seq();
        let mut reached = BTreeSet::from([0]);
        let mut todo = vec![0];
        while let Some(end) = todo.pop() {
            for &to in spans.get(&(end + 1)).into_iter().flatten() {
                if reached.insert(to) {
                    todo.push(to);
                }
            }
        }
        assert!(
            reached.contains(&base),
            "{ctx}: no chain of archives from record 1 to the base at {base}: {spans:?}"
        );
        self.tally.retention.archives += archives;
        self.tally.retention.archived_records += records;
    }

    // ---- retention ----

    /// Retention settings for one call: the world's horizon, often shorter or longer, and
    /// sometimes a byte limit of a few segments (alone or with the age).
    fn retention(&mut self) -> Retention {
        let r = self.retained.as_ref().expect("a retaining world");
        let (age, archive) = (r.age, r.archive.as_ref().map(|d| d.path().to_owned()));
        let max_age = match self.rng.below(6) {
            0 => Some(age / 2),
            1 => Some(age * 2),
            2 => None,
            _ => Some(age),
        };
        let max_bytes = (max_age.is_none() || self.rng.one_in(4))
            .then(|| self.segment_bytes * (2 + self.rng.below(6)));
        Retention {
            max_age: max_age.map(Duration::from_millis),
            max_bytes,
            archive_dir: archive,
            check_every: Duration::from_secs(3600),
        }
    }

    /// The base an advance now must move to, and the horizon of its forgetting: the end of
    /// the newest sealed segment the settings remove (from the segments' headers and sizes
    /// on disk), if that is past the base.
    fn predict(&self, store: &Store, retention: &Retention) -> Option<(u64, Timestamp)> {
        let base = store.base().map_or(0, |b| b.seq.0);
        let dir = self.disk.dir("segments");
        let mut live: Vec<(u32, Header, u64)> = Vec::new();
        for name in dir.list().unwrap() {
            let Some(header) = segment_header(&*dir, &name) else {
                continue;
            };
            if header.kind == 1 {
                let len = dir.open(&name).unwrap().len().unwrap();
                live.push((header.id, header, len));
            }
        }
        live.sort_by_key(|s| s.0);
        // Segments the store let go of but could not remove (a failed advance's cleanup)
        // lie wholly at or before the base: they change nothing below, and are left out.
        while live.len() >= 2 && live[1].1.first_seq <= base + 1 {
            live.remove(0);
        }
        if live.len() < 2 {
            return None;
        }
        let now = self.model.values().next_back()?.record.at;
        // (last seq, successor's creation, size) of each sealed segment.
        let sealed: Vec<(u64, u64, u64)> = live
            .windows(2)
            .map(|w| (w[1].1.first_seq - 1, w[1].1.created, w[0].2))
            .collect();
        let mut remove = 0;
        if let Some(age) = retention.max_age {
            let horizon = now.0.saturating_sub(age.as_millis() as u64);
            remove = sealed.iter().take_while(|s| s.1 < horizon).count();
        }
        if let Some(max) = retention.max_bytes {
            let mut total: u64 = live.iter().map(|s| s.2).sum();
            let mut n = 0;
            for s in &sealed {
                if total <= max {
                    break;
                }
                total -= s.2;
                n += 1;
            }
            remove = remove.max(n);
        }
        let end = sealed[..remove].last()?.0;
        let horizon = retention.max_age.map_or(Timestamp(0), |age| {
            Timestamp(now.0.saturating_sub(age.as_millis() as u64))
        });
        (end > base).then_some((end, horizon))
    }

    /// The base an advance to `end` makes: the state there, and the latest change of every
    /// file up to it — but a `deleted` one older than `horizon` of a file the state no
    /// longer holds, which is forgotten.
    fn expected_base(&self, end: u64, horizon: Timestamp) -> BaseModel {
        let core = self.fold_to(end);
        let at = core.now();
        let r = self.retained.as_ref().expect("a retaining world");
        let mut kept = r.base.as_ref().map(|b| b.kept.clone()).unwrap_or_default();
        for e in self.model.range(..=end).map(|(_, e)| e) {
            if let RecordKind::ChangeAppended { file, .. } = &e.record.kind {
                kept.insert(file.clone(), e.clone());
            }
        }
        let before = kept.len();
        // Files named by a record after the base (a redeliver appended since) are not
        // forgotten: that record carries their version.
        let named_since: std::collections::BTreeSet<FileKey> = self
            .model
            .range(end + 1..)
            .filter_map(|(_, e)| match e.record.scope() {
                cb_core::Scope::File(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        kept.retain(|file, e| {
            let deleted = matches!(
                e.record.kind,
                RecordKind::ChangeAppended {
                    event: EventKind::Deleted,
                    ..
                }
            );
            !(deleted
                && e.record.at < horizon
                && core.file(file).is_none()
                && !named_since.contains(file))
        });
        let forgotten = (before - kept.len()) as u64;
        let latest: std::collections::BTreeSet<u64> =
            kept.values().map(|e| e.record.seq.0).collect();
        let in_flight = core
            .in_flight()
            .into_iter()
            .map(|a| a.version.0)
            .filter(|v| *v <= end && !latest.contains(v))
            .collect();
        let mut state = core;
        state.advance(at, &mut Vec::new());
        BaseModel {
            seq: end,
            at,
            state: state.checkpoint(),
            kept,
            in_flight,
            forgotten,
            cut_at: None,
        }
    }

    /// Time passes past much of the horizon, and a tick marks it in the log (age is
    /// measured on the log's own clock).
    fn pass_time(&mut self, store: &Store, durability: Durability) {
        let age = self.retained.as_ref().expect("a retaining world").age;
        let ms = age / 2 + self.rng.below(age);
        self.trace(|| format!("{ms} ms pass"));
        self.clock.advance(ms);
        let a = self.append(store, durability, vec![Input::Record(RecordKind::Ticked)]);
        assert!(a.is_ok(), "{}: a tick on a healthy disk: {a:?}", self.ctx());
    }

    /// One call of retention with `fault` armed during it, checked against what the test
    /// predicts. Returns `true` if it crashed the disk.
    fn retain(&mut self, store: &Store, durability: Durability, fault: RetainFault) -> bool {
        let retention = self.retention();
        self.retain_with(store, durability, fault, retention)
    }

    fn retain_with(
        &mut self,
        store: &Store,
        durability: Durability,
        fault: RetainFault,
        retention: Retention,
    ) -> bool {
        let mut predicted = self.predict(store, &retention);
        if predicted.is_none() && fault != RetainFault::None {
            // A fault is for an advance: let time make one due.
            let age = self.retained.as_ref().expect("retaining").age;
            self.clock.advance(2 * age);
            let a = self.append(store, durability, vec![Input::Record(RecordKind::Ticked)]);
            assert!(a.is_ok(), "{}: a tick on a healthy disk: {a:?}", self.ctx());
            predicted = self.predict(store, &retention);
        }
        let mut expected = predicted.map(|(end, horizon)| self.expected_base(end, horizon));
        let ops = self.retained.as_ref().expect("retaining").advance_ops;
        match fault {
            RetainFault::None => {}
            // The disk fills at one of the advance's operations: before its kept segment, its
            // checkpoint or its manifest is written, or after all three.
            RetainFault::DiskFull => self.disk.full_from(Some(self.rng.below(ops + 2))),
            RetainFault::FailingSyncs => self.disk.fail_next_syncs(1 + self.rng.below(2) as u32),
            RetainFault::FailingWrite => self.disk.fail_next_writes(1),
            RetainFault::FailingFrom | RetainFault::PowerCut => {
                let at = self.rng.below(ops + 2);
                if let Some(e) = &mut expected {
                    e.cut_at = (fault == RetainFault::PowerCut).then_some(at);
                }
                self.disk.fail_from(Some(at));
            }
        }
        let old = store.base().map(|b| b.seq.0);
        let before = self.disk.operations();
        let result = store.retain_now(&retention);
        let took = self.disk.operations() - before;
        // What the advance did not use is disarmed: the steps after it expect a healthy disk.
        self.disk.full_from(None);
        self.disk.set_capacity(None);
        self.disk.fail_next_syncs(0);
        self.disk.fail_next_writes(0);
        self.disk.fail_from(None);
        self.trace(|| {
            format!(
                "retain {retention:?} with {fault:?} (predicted {:?}): {result:?} in {took} disk operations",
                expected.as_ref().map(|e| e.seq)
            )
        });
        let ctx = self.ctx();
        self.tally.retention.calls += 1;
        let crashed = fault == RetainFault::PowerCut;
        let mid_advance = crashed && expected.is_some();
        match result {
            Ok(Some(a)) => {
                // An advance an earlier call could not confirm, made after all: the store
                // settles it first and reports it as this call's.
                // Which one it is shows in what it kept (an earlier attempt with other
                // settings may have aimed at the same seq).
                let fits = |m: &BaseModel| {
                    Seq(m.seq) == a.base
                        && (m.kept.len() + m.in_flight.len()) as u64 == a.kept
                        && m.forgotten == a.forgotten
                };
                let settled = match &expected {
                    Some(e) if fits(e) => None,
                    _ => self
                        .retained
                        .as_ref()
                        .and_then(|r| r.maybe.iter().rev().find(|m| fits(m)).cloned()),
                };
                if settled.is_some() {
                    self.tally.retention.settled += 1;
                }
                let want = settled.or(expected).unwrap_or_else(|| {
                    panic!(
                        "{ctx}: the base advanced to {} when nothing was past the horizon",
                        a.base
                    )
                });
                assert_eq!(a.base, Seq(want.seq), "{ctx}: the base an advance moved to");
                assert_eq!(
                    a.kept,
                    (want.kept.len() + want.in_flight.len()) as u64,
                    "{ctx}: changes kept"
                );
                assert_eq!(a.forgotten, want.forgotten, "{ctx}: files forgotten");
                assert_eq!(
                    a.archive.is_some(),
                    retention.archive_dir.is_some(),
                    "{ctx}: the archive"
                );
                if fault == RetainFault::None {
                    let r = self.retained.as_mut().expect("retaining");
                    r.advance_ops = r.advance_ops.max(took);
                }
                if let Some(cut) = want.cut_at {
                    self.tally.retention.cuts.entry(cut).or_default().1 += 1;
                }
                self.tally.retention.advances += 1;
                self.tally.retention.kept += a.kept;
                self.tally.retention.forgotten += a.forgotten;
                self.switch_base(want, &ctx);
                if let Some(r) = &mut self.retained {
                    r.maybe.clear();
                }
            }
            Ok(None) => {
                assert!(
                    expected.is_none(),
                    "{ctx}: no advance, when the base should have moved to {:?}",
                    expected.map(|e| e.seq)
                );
                self.tally.retention.nothing_to_remove += 1;
            }
            Err(e) => {
                assert!(
                    fault != RetainFault::None,
                    "{ctx}: retention failed on a healthy disk: {e}"
                );
                match &e {
                    Error::Io { .. } => self.tally.retention.refused_io += 1,
                    Error::DiskFull { context } => {
                        self.tally.retention.refused_disk_full += 1;
                        let file = if context.contains("BASE") {
                            "manifest"
                        } else if context.contains("base-") {
                            "checkpoint"
                        } else if context.contains(".seg") {
                            "kept segment"
                        } else {
                            "other"
                        };
                        *self.tally.retention.full_at.entry(file).or_default() += 1;
                    }
                    other => panic!("{ctx}: retention failed with {other}, not a disk error"),
                }
                let want = expected.unwrap_or_else(|| {
                    panic!("{ctx}: retention failed ({e}) with nothing to remove")
                });
                self.after_failure(store, durability);
                let now = store.base().map(|b| b.seq.0);
                if now == Some(want.seq) {
                    // The switch was made (and the running store knows it); what failed came
                    // after.
                    self.tally.retention.refused_after_the_switch += 1;
                    if let Some(cut) = want.cut_at {
                        self.tally.retention.cuts.entry(cut).or_default().1 += 1;
                    }
                    self.switch_base(want, &ctx);
                    if let Some(r) = &mut self.retained {
                        r.maybe.clear();
                    }
                } else {
                    assert_eq!(
                        now, old,
                        "{ctx}: the running store's base after a failed advance"
                    );
                    self.retained.as_mut().expect("retaining").maybe.push(want);
                }
            }
        }
        if crashed {
            self.tally.retention.crashes_mid_advance += u64::from(mid_advance);
            self.crash();
            return true;
        }
        // Checked as the running store serves it.
        self.check_base(store, &ctx);
        self.check_index(store, &ctx);
        false
    }

    /// After the last reopen: time passes far past the horizon with a segment sealed in
    /// between, so one more advance must happen — and does, checked as every other.
    fn advance_once_more(&mut self, store: &Store) {
        let durability = Durability::Sync;
        let age = self.retained.as_ref().expect("retaining").age;
        let retention = Retention {
            max_age: Some(Duration::from_millis(age)),
            max_bytes: None,
            ..self.retention()
        };
        let tick = || vec![Input::Record(RecordKind::Ticked)];
        // A group larger than a segment starts one of its own, sealing the one before —
        // unless the active segment was made larger for an earlier one: then again.
        for _ in 0..4 {
            assert!(self.append(store, durability, tick()).is_ok());
            self.clock.advance(2 * age);
            let big = vec![self.change(self.segment_bytes as usize)];
            assert!(self.append(store, durability, big).is_ok());
            self.clock.advance(2 * age);
            assert!(self.append(store, durability, tick()).is_ok());
            if self.predict(store, &retention).is_some() {
                break;
            }
        }
        let before = self.tally.retention.advances;
        self.retain_with(store, durability, RetainFault::None, retention);
        assert_eq!(
            self.tally.retention.advances,
            before + 1,
            "{}: no advance after the last reopen",
            self.ctx()
        );
    }

    /// The log exported (with a base: the base line, the kept changes, then the records
    /// after it) and imported into an empty store on another disk, with power cut at one of
    /// the import's disk operations. Reopened, the copy is empty, or has the base with some
    /// of the records after it, each with its own bytes; an import into it then (empty, or
    /// at the base) makes it whole: the same records, kept changes and state.
    fn import_under_a_power_cut(&mut self, source: &Store) {
        let ctx = format!("{}, import", self.ctx());
        let mut export = Vec::new();
        source.export(Seq(1), &mut export).unwrap();
        let want = all_entries(source, &ctx);
        let base = source.base();
        let (segment_bytes, span) = (self.segment_bytes, self.span);
        let open = |disk: &SimDisk, dir: &Path| {
            Store::open(
                dir,
                StoreOptions {
                    storage: Some(LogStorage {
                        segments: disk.dir("segments"),
                        checkpoints: disk.dir("checkpoints"),
                    }),
                    segment_bytes,
                    reserve_bytes: Some(0),
                    index_segment_span: span,
                    cache_capacity_bytes: 4 * 1024 * 1024,
                    ..StoreOptions::default()
                },
            )
        };
        // How many disk operations a whole import takes: the power is cut at one of them.
        let ops = {
            let (disk, tmp) = (SimDisk::new(self.seed), tempfile::tempdir().unwrap());
            let copy = open(&disk, tmp.path()).unwrap();
            let before = disk.operations();
            copy.import(&export[..], |_| {}).unwrap();
            disk.operations() - before
        };
        let disk = SimDisk::new(self.seed ^ 0x1AB0);
        let tmp = tempfile::tempdir().unwrap();
        let copy = open(&disk, tmp.path()).unwrap();
        let cut = self.rng.below(ops);
        disk.fail_from(Some(cut));
        let imported = copy.import(&export[..], |_| {});
        self.trace(|| format!("import cut at operation {cut} of {ops}: {imported:?}"));
        assert!(
            matches!(imported, Err(Error::Io { .. } | Error::DiskFull { .. })),
            "{ctx}: an import with power cut at {cut} of its {ops} operations: {imported:?}"
        );
        disk.crash(MODES[self.rng.below(4) as usize]);
        drop(copy);
        let copy = open(&disk, tmp.path())
            .unwrap_or_else(|e| panic!("{ctx}: the copy cut at {cut} of {ops} does not open: {e}"));
        let ctx = format!("{ctx} cut at operation {cut} of {ops}");
        let got = all_entries(&copy, &ctx);
        let copy_base = copy.base();
        match &copy_base {
            None => assert!(
                got.is_empty() || base.is_none(),
                "{ctx}: records without the base"
            ),
            Some(b) => assert_eq!(
                Some((b.seq, b.at)),
                base.as_ref().map(|b| (b.seq, b.at)),
                "{ctx}: the base"
            ),
        }
        check_segment_files(&*disk.dir("segments"), copy_base.as_ref(), &ctx);
        let first = copy.first_seq().0;
        assert!(
            got.keys().copied().eq(first..first + got.len() as u64),
            "{ctx}: the copy is not dense"
        );
        for (seq, e) in &got {
            assert_eq!(Some(e), want.get(seq), "{ctx}: record {seq}");
        }
        if copy_base.is_some() {
            same_base(source, &copy, &ctx);
        }
        self.tally.retention.imports += 1;
        let whole = copy.last_seq() == source.last_seq();
        if whole {
            self.tally.retention.imports_left_whole += 1;
        } else if copy.last_seq().is_none() {
            self.tally.retention.imports_left_empty += 1;
        } else {
            self.tally.retention.imports_left_partial += 1;
        }
        if !whole && got.is_empty() {
            copy.import(&export[..], |_| {})
                .unwrap_or_else(|e| panic!("{ctx}: importing again: {e}"));
            assert_eq!(all_entries(&copy, &ctx), want, "{ctx}: imported again");
            if base.is_some() {
                same_base(source, &copy, &ctx);
            }
            assert_eq!(
                copy.restore().unwrap().core.checkpoint(),
                self.fold().checkpoint(),
                "{ctx}: the state imported again"
            );
        }
    }

    // ---- steps ----

    /// One step of a running cycle. Returns `true` if it crashed the disk (the cycle ends).
    fn step(&mut self, store: &Store, durability: Durability) -> bool {
        // The retention property draws from more steps: the first 40 are the same.
        let steps = if self.retained.is_some() { 52 } else { 40 };
        match self.rng.below(steps) {
            0..=21 => {
                let inputs = self.inputs();
                let a = self.append(store, durability, inputs);
                assert!(a.is_ok(), "{}: append on a healthy disk: {a:?}", self.ctx());
            }
            22 | 23 => {
                // A group larger than a segment: it gets one of its own.
                let pad = (self.segment_bytes + self.rng.below(self.segment_bytes)) as usize;
                let inputs = vec![self.change(pad)];
                let a = self.append(store, durability, inputs);
                assert!(a.is_ok(), "{}: a big append: {a:?}", self.ctx());
            }
            24..=27 if durability == Durability::Buffered => {
                assert!(self.sync(store), "{}: sync on a healthy disk", self.ctx());
            }
            28 | 29 => return self.failing_syncs(store, durability),
            30 | 31 => return self.failing_writes(store, durability),
            32 | 33 => self.disk_full(store, durability),
            34 | 35 => return self.burst(store, durability),
            36 => {
                if !self.model.is_empty() {
                    let cp = self.fold().checkpoint();
                    store
                        .write_checkpoint(&cp)
                        .unwrap_or_else(|e| panic!("{}: checkpoint: {e}", self.ctx()));
                    self.tally.checkpoints += 1;
                    if durability == Durability::Buffered {
                        self.unsynced_checkpoint = true;
                    }
                    self.trace(|| format!("checkpoint at {:?}", cp.last_seq));
                }
            }
            40 | 41 => self.pass_time(store, durability),
            42..=45 => return self.retain(store, durability, RetainFault::None),
            46 => return self.retain(store, durability, RetainFault::DiskFull),
            47 => return self.retain(store, durability, RetainFault::FailingSyncs),
            48 => return self.retain(store, durability, RetainFault::FailingWrite),
            49 => return self.retain(store, durability, RetainFault::FailingFrom),
            50 | 51 => return self.retain(store, durability, RetainFault::PowerCut),
            _ => {
                let a = self.append(store, durability, vec![Input::Record(RecordKind::Ticked)]);
                assert!(a.is_ok(), "{}: a tick on a healthy disk: {a:?}", self.ctx());
            }
        }
        false
    }

    /// The next syncs fail: the appends they would acknowledge are refused, and the store
    /// goes on by itself — or the disk crashes before it did.
    fn failing_syncs(&mut self, store: &Store, durability: Durability) -> bool {
        let n = 1 + self.rng.below(3) as u32;
        let failed_before = self.disk.faults().failed_syncs;
        self.disk.fail_next_syncs(n);
        self.trace(|| format!("fail the next {n} syncs"));
        if durability == Durability::Sync {
            let inputs = self.inputs();
            let first = self.append(store, durability, inputs);
            assert!(
                first.is_err(),
                "{}: an append whose fdatasync failed was acknowledged",
                self.ctx()
            );
        } else {
            for _ in 0..1 + self.rng.below(3) {
                let inputs = self.inputs();
                let _ = self.append(store, durability, inputs);
            }
            if self.sync(store) && self.disk.faults().failed_syncs - failed_before < u64::from(n) {
                // A sync that succeeds with failures still armed synced nothing: right only
                // if nothing was left to sync. A power loss now shows which it was.
                self.trace(|| "sync succeeded with failures armed: crash".into());
                self.disk.crash(CrashMode::DropUnsynced);
                return true;
            }
        }
        if self.rng.one_in(3) {
            // Crash while the log is still to be rewound.
            self.crash();
            return true;
        }
        self.recovers_by_itself(store, durability, n);
        false
    }

    /// The next writes fail half-way: the appends are refused, and later ones succeed.
    fn failing_writes(&mut self, store: &Store, durability: Durability) -> bool {
        let n = 1 + self.rng.below(2) as u32;
        self.disk.fail_next_writes(n);
        self.trace(|| format!("fail the next {n} writes"));
        let inputs = self.inputs();
        let first = self.append(store, durability, inputs);
        assert!(
            first.is_err(),
            "{}: an append whose write failed was acknowledged",
            self.ctx()
        );
        if self.rng.one_in(4) {
            self.crash();
            return true;
        }
        self.recovers_by_itself(store, durability, n);
        false
    }

    /// After `n` injected faults, appends (and syncs) succeed again without a reopen.
    fn recovers_by_itself(&mut self, store: &Store, durability: Durability, n: u32) {
        let mut ok = false;
        for _ in 0..n + 4 {
            let inputs = self.inputs();
            if self.append(store, durability, inputs).is_ok()
                && (durability == Durability::Sync || self.sync(store))
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "{}: appends did not resume after faults", self.ctx());
        healthy_again(store, &self.ctx());
    }

    /// The disk fills up: the append that needs a new segment is refused with
    /// `Error::DiskFull`; once space is back, appends resume by themselves.
    fn disk_full(&mut self, store: &Store, durability: Durability) {
        let spare = self.rng.below(self.segment_bytes / 2);
        self.disk.set_capacity(Some(self.disk.used_bytes() + spare));
        self.trace(|| format!("capacity: {spare} bytes spare"));
        let mut refused = None;
        for _ in 0..64 {
            let pad = (self.segment_bytes / 4) as usize;
            let inputs = vec![self.change(pad)];
            if let Err(e) = self.append(store, durability, inputs) {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.unwrap_or_else(|| {
            panic!(
                "{}: 64 appends of a quarter segment each fit a full disk",
                self.ctx()
            )
        });
        assert!(
            refused.starts_with("disk full"),
            "{}: refused for {refused}",
            self.ctx()
        );
        if !self.model.is_empty() {
            // A checkpoint needs room too: refused for it, and nothing of it is left.
            self.disk.set_capacity(Some(self.disk.used_bytes()));
            let cp = self.fold().checkpoint();
            let written = store.write_checkpoint(&cp);
            self.trace(|| format!("checkpoint on a full disk: {written:?}"));
            assert!(
                matches!(written, Err(Error::DiskFull { .. })),
                "{}: a checkpoint on a full disk: {written:?}",
                self.ctx()
            );
            self.disk.set_capacity(Some(self.disk.used_bytes() + spare));
        }
        // Still full: still refused, nothing half-appended.
        let before = store.last_seq();
        let inputs = vec![self.change(self.segment_bytes as usize)];
        assert!(self.append(store, durability, inputs).is_err());
        assert_eq!(store.last_seq(), before, "{}", self.ctx());
        self.disk.set_capacity(None);
        let inputs = self.inputs();
        let a = self.append(store, durability, inputs);
        assert!(
            a.is_ok(),
            "{}: appends did not resume after space came back: {a:?}",
            self.ctx()
        );
        healthy_again(store, &self.ctx());
    }

    /// Several threads append at once (groups of many appenders); sometimes the disk
    /// crashes while they do.
    fn burst(&mut self, store: &Store, durability: Durability) -> bool {
        let threads = 2 + self.rng.below(3);
        let plans: Vec<Vec<Vec<Input>>> = (0..threads)
            .map(|_| {
                (0..2 + self.rng.below(6))
                    .map(|_| {
                        (0..1 + self.rng.below(3))
                            .map(|_| {
                                if self.rng.one_in(5) {
                                    Input::Record(RecordKind::Ticked)
                                } else {
                                    let pad = self.small_pad();
                                    self.change(pad)
                                }
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let total: usize = plans.iter().map(Vec::len).sum();
        let crash_after = self
            .rng
            .one_in(2)
            .then(|| self.rng.below(total as u64) as usize);
        let mode = MODES[self.rng.below(4) as usize];
        self.clock.advance(1 + self.rng.below(2_000));
        let (tx, rx) = mpsc::channel();
        // Every other thread appends patiently (as the dispatcher does outcomes): a group
        // held for company is under the same promise.
        let handles: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(t, plan)| {
                let (store, tx) = (store.clone(), tx.clone());
                std::thread::spawn(move || {
                    for inputs in plan {
                        let result = if t % 2 == 1 {
                            let (done, wait) = mpsc::sync_channel(1);
                            store.append_patiently_then(inputs.clone(), move |r| {
                                let _ = done.send(r);
                            });
                            wait.recv().expect("a reply")
                        } else {
                            store.append(inputs.clone())
                        };
                        let _ = tx.send((result, inputs));
                    }
                })
            })
            .collect();
        drop(tx);
        let mut results = Vec::new();
        let mut crashed = false;
        for (i, got) in rx.iter().enumerate() {
            results.push(got);
            if crash_after == Some(i) {
                self.trace(|| format!("crash {mode:?} during a burst"));
                self.disk.crash(mode);
                crashed = true;
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        let mut acked: Vec<(Appended, Vec<Input>)> = Vec::new();
        for (result, inputs) in results {
            match result {
                Ok(a) => acked.push((a, inputs)),
                Err(e) => assert!(
                    crashed,
                    "{}: an append of a burst failed on a healthy disk: {e}",
                    self.ctx()
                ),
            }
        }
        acked.sort_by_key(|(a, _)| a.first);
        if durability == Durability::Buffered {
            // Buffered acknowledgements may be taken back by a failed sync (the crash's), and
            // their seqs given again: only the log says what is there.
            if !crashed {
                self.adopt_tail(store);
            }
            if crashed {
                self.tally.bursts_crashed += 1;
            }
            return crashed;
        }
        self.trace(|| {
            let seqs: Vec<String> = acked
                .iter()
                .map(|(a, _)| format!("{}..={}", a.first, a.last()))
                .collect();
            format!("burst of {total} appends on {threads} threads acknowledged {seqs:?}")
        });
        // Read back only while the disk has not crashed (after, the store's handles are
        // dead; the reopen checks these records).
        let reader = (!crashed).then_some(store);
        for (a, inputs) in &acked {
            self.acked(reader, a, inputs, durability == Durability::Sync);
        }
        if crashed {
            self.tally.bursts_crashed += 1;
        }
        crashed
    }

    /// Takes the records past the model's last from the log itself, checking each is one
    /// that was sent.
    fn adopt_tail(&mut self, store: &Store) {
        let from = self.model.keys().next_back().map_or(1, |s| s + 1);
        for r in store.records(Seq(from)) {
            let record = r.unwrap_or_else(|e| panic!("{}: reading the tail: {e}", self.ctx()));
            let seq = record.seq;
            let entry = read_entry(store, seq)
                .unwrap_or_else(|e| panic!("{}: record {seq}: {e}", self.ctx()));
            assert_eq!(entry.record, record, "{}", self.ctx());
            self.check_sent(seq.0, &entry, &self.ctx());
            self.model.insert(seq.0, entry);
        }
    }

    /// A cycle: open, check, append and fail for a while, crash, drop.
    fn cycle(&mut self, cycle: usize) {
        let durability = if self.rng.one_in(4) {
            self.tally.buffered_cycles += 1;
            Durability::Buffered
        } else {
            Durability::Sync
        };
        let store = self.open_and_check(durability, cycle);
        // Appends go on at the next seq after whatever recovery found.
        let next = store.next_seq();
        let a = self
            .append(&store, durability, vec![Input::Record(RecordKind::Ticked)])
            .unwrap_or_else(|e| panic!("{}: the first append after open: {e}", self.ctx()));
        assert_eq!(a.first, next, "{}", self.ctx());
        let steps = 5 + self.rng.below(40);
        // Retention right after an open (an advance after one before the crash).
        let mut crashed = self.retained.is_some()
            && self.rng.one_in(2)
            && self.retain(&store, durability, RetainFault::None);
        for _ in 0..steps {
            if crashed {
                break;
            }
            crashed = self.step(&store, durability);
        }
        if !crashed {
            self.crash();
        }
        drop(store);
        match self.rng.below(10) {
            0 | 1 => {
                self.trace(|| "index removed".into());
                remove_index(self.dir.path());
                self.tally.index_removed += 1;
            }
            2 | 3 => {
                // An index the log has since gone past (as a backup put back leaves it).
                if let Some((saved, base)) = &self.saved_index {
                    self.trace(|| "an older index put back".into());
                    remove_index(self.dir.path());
                    copy_dir(saved.path(), self.dir.path());
                    self.index_put_back = Some(*base);
                }
            }
            4 | 5 => {
                // Closed: sled holds everything the log made durable.
                let saved = tempfile::tempdir().unwrap();
                for index in index_dirs(self.dir.path()) {
                    copy_dir(&index, &saved.path().join(index.file_name().unwrap()));
                }
                self.saved_index = Some((saved, self.base_seq()));
            }
            _ => {}
        }
    }
}

fn index_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("index-"))
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The store says it is writable again once an append succeeded (its health is set before
/// the replies go out).
fn healthy_again(store: &Store, ctx: &str) {
    let health = store.health();
    assert_eq!(
        health,
        cb_store::Health::Writable,
        "{ctx}: still unhealthy after a good append"
    );
}

fn dump_segments(disk: &SimDisk) {
    let d = disk.dir("segments");
    let mut names = d.list().unwrap();
    names.sort();
    for name in names {
        let f = d.open(&name).unwrap();
        let len = f.len().unwrap();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, 0).unwrap();
        eprintln!("{name}: {len} bytes");
        let mut at = 64usize;
        while at + 48 <= b.len() {
            if &b[at..at + 4] == b"CBGR" {
                let u64a = |i: usize| u64::from_le_bytes(b[at + i..at + i + 8].try_into().unwrap());
                let u32a = |i: usize| u32::from_le_bytes(b[at + i..at + i + 4].try_into().unwrap());
                eprintln!(
                    "  {at}: group {}..={} records {} bodies {} synced {}",
                    u64a(8),
                    u64a(16),
                    u32a(28),
                    u32a(32),
                    u64a(40)
                );
            }
            at += 8;
        }
    }
}

/// A segment's header, the fields the test reads (`segment.rs` has the layout).
struct Header {
    id: u32,
    /// 1: live, 2: kept.
    kind: u32,
    first_seq: u64,
    created: u64,
}

/// The header of the file `name` if it is a segment (not the manifest or a leftover).
fn segment_header(dir: &dyn cb_store::Storage, name: &str) -> Option<Header> {
    let id: u32 = name.strip_suffix(".seg")?.parse().ok()?;
    let mut b = [0u8; 64];
    dir.open(name).ok()?.read_exact_at(&mut b, 0).ok()?;
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    (&b[..8] == b"CBLOGSEG").then(|| Header {
        id,
        kind: u32_at(20),
        first_seq: u64_at(24),
        created: u64_at(32),
    })
}

/// A segments directory holds the live segments (the first right after the base) and,
/// with a base, its manifest, checkpoint and kept segment — nothing an advance or an
/// import left half done.
fn check_segment_files(dir: &dyn cb_store::Storage, base: Option<&cb_store::Base>, ctx: &str) {
    let mut names = dir.list().unwrap();
    names.sort();
    let mut live = Vec::new();
    let mut kept = Vec::new();
    for name in &names {
        if name == "BASE" {
            assert!(base.is_some(), "{ctx}: a manifest without a base");
            continue;
        }
        if name.starts_with("base-") {
            assert_eq!(
                Some(name.clone()),
                base.map(|b| format!("base-{:020}.cp", b.seq.0)),
                "{ctx}: a base checkpoint the manifest does not name ({names:?})"
            );
            continue;
        }
        let header = segment_header(dir, name)
            .unwrap_or_else(|| panic!("{ctx}: {name} in the segments directory"));
        match header.kind {
            1 => live.push(header.first_seq),
            _ => kept.push(header.id),
        }
    }
    assert_eq!(
        kept,
        base.map(|b| b.kept_segment).into_iter().collect::<Vec<_>>(),
        "{ctx}: kept segments ({names:?})"
    );
    assert_eq!(
        live.first().copied(),
        Some(base.map_or(0, |b| b.seq.0) + 1),
        "{ctx}: the first live segment starts right after the base ({names:?})"
    );
}

/// Every record of a store's log after its base, with its snapshot.
fn all_entries(store: &Store, ctx: &str) -> BTreeMap<u64, Entry> {
    store
        .records(Seq(1))
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("{ctx}: reading the log: {e}"));
            let e = read_entry(store, r.seq).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(e.record, r, "{ctx}");
            (r.seq.0, e)
        })
        .collect()
}

/// Two stores have the same base: the same state there, and the same change kept for each
/// file, with the same bytes.
fn same_base(a: &Store, b: &Store, ctx: &str) {
    assert_eq!(
        a.base_checkpoint().unwrap(),
        b.base_checkpoint().unwrap(),
        "{ctx}: the state at the base"
    );
    for i in 0..FILES {
        let f = file(i);
        let (x, y) = (a.file_start(&f).unwrap(), b.file_start(&f).unwrap());
        assert_eq!(x, y, "{ctx}: the start of {f}");
        if let Some(v) = x.and_then(|s| s.version) {
            assert_eq!(
                read_entry(a, v).unwrap(),
                read_entry(b, v).unwrap(),
                "{ctx}: the kept change of {f}"
            );
        }
    }
}

fn read_entry(store: &Store, seq: Seq) -> Result<Entry, Error> {
    let record = store.record(seq)?.ok_or(Error::Missing { seq })?;
    let snapshot = store.snapshot(seq)?;
    Ok(Entry { record, snapshot })
}

fn remove_index(dir: &Path) {
    for path in index_dirs(dir) {
        std::fs::remove_dir_all(path).unwrap();
    }
}

fn run_seed(seed: u64) -> Tally {
    let _guard = SeedGuard(seed, "acknowledged");
    let mut world = World::new(seed);
    for cycle in 0..CYCLES {
        world.cycle(cycle);
    }
    // The last crash, checked too.
    drop(world.open_and_check(Durability::Sync, CYCLES));
    world.tally.add_faults(world.disk.faults());
    world.tally
}

/// A seed of the retention property: the cycles (with retention among their steps), then
/// one more advance after the last reopen, a crash and a reopen after it, and the log
/// exported and imported into another store under a power cut.
fn run_retention_seed(seed: u64) -> Tally {
    let _guard = SeedGuard(seed, "the_base");
    let mut world = World::retaining(seed);
    for cycle in 0..CYCLES {
        world.cycle(cycle);
    }
    let store = world.open_and_check(Durability::Sync, CYCLES);
    world.advance_once_more(&store);
    world.import_under_a_power_cut(&store);
    world.crash();
    drop(store);
    drop(world.open_and_check(Durability::Sync, CYCLES + 1));
    world.tally.add_faults(world.disk.faults());
    world.tally
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("CB_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let first = var("CB_POWER_LOSS_FIRST_SEED", 0);
    (first..first + var("CB_POWER_LOSS_SEEDS", default)).collect()
}

#[test]
fn acknowledged_records_survive_every_crash_mode_and_fault() {
    let started = Instant::now();
    let seeds = seeds(DEFAULT_SEEDS);
    let mut total = Tally::default();
    for &seed in &seeds {
        total.add(&run_seed(seed));
    }
    eprintln!(
        "power_loss: {} seeds × {CYCLES} cycles in {:?}: {total:#?}",
        seeds.len(),
        started.elapsed()
    );
    // The fixed seeds must reach every kind of fault and every path of recovery, or the
    // property above says less than it seems to.
    if seeds.len() as u64 >= DEFAULT_SEEDS {
        let f = total.faults;
        for (class, count) in [
            ("crashes", f.crashes),
            ("lost writes", f.lost_writes),
            ("torn writes", f.torn_writes),
            ("failed syncs", f.failed_syncs),
            ("failed writes", f.failed_writes),
            ("disk full", f.disk_full),
            ("torn tails cut at open", total.cut),
            ("index rebuilds", total.rebuilt),
            ("index catch-ups", total.caught_up),
            ("older indexes put back", total.older_index_caught_up),
            ("unacknowledged survivors", total.survivors_unacked),
            ("crashes during a burst", total.bursts_crashed),
        ] {
            assert!(count > 0, "no {class} over {} seeds", seeds.len());
        }
    }
}

#[test]
fn the_base_is_whole_and_the_old_or_the_new_one_after_a_crash_anywhere_in_retention() {
    let started = Instant::now();
    let mut seeds = seeds(DEFAULT_RETENTION_SEEDS);
    if std::env::var("CB_POWER_LOSS_SEED").is_err() {
        for seed in RETENTION_REGRESSIONS {
            if !seeds.contains(seed) {
                seeds.push(*seed);
            }
        }
    }
    let mut total = Tally::default();
    for &seed in &seeds {
        total.add(&run_retention_seed(seed));
    }
    eprintln!(
        "power_loss with retention: {} seeds × {CYCLES} cycles in {:?}: {total:#?}",
        seeds.len(),
        started.elapsed()
    );
    // The fixed seeds must reach every step of an advance with a fault and a crash, and
    // every way a reopen settles it, or the property says less than it seems to.
    if seeds.len() as u64 >= DEFAULT_RETENTION_SEEDS {
        let r = &total.retention;
        let cuts_old = r.cuts.values().map(|c| c.0).sum::<u64>();
        let cuts_new = r.cuts.values().map(|c| c.1).sum::<u64>();
        for (class, count) in [
            ("advances", r.advances),
            ("calls with nothing to remove", r.nothing_to_remove),
            ("advances refused by an I/O error", r.refused_io),
            ("advances refused for a full disk", r.refused_disk_full),
            // None is refused after the switch any more: what fails after it is left to
            // the next open's cleanup, and the advance answers Ok.
            ("crashes mid-advance", r.crashes_mid_advance),
            ("reopens on the old base", r.reopened_on_the_old_base),
            ("cuts that left the old base", cuts_old),
            ("cuts that left the new base", cuts_new),
            ("files forgotten", r.forgotten),
            ("imports left empty", r.imports_left_empty),
            ("imports left partial", r.imports_left_partial),
            ("failed operations", total.faults.failed_ops),
            ("index rebuilds", total.rebuilt),
        ] {
            assert!(count > 0, "no {class} over {} seeds", seeds.len());
        }
    }
}

/// Three appends queued at once, each its own group: the first one's fdatasync fails, and
/// the third does not fit in the segment, so the commit thread rolls while the failure is
/// still being handled. Whatever is acknowledged must be in the log after a power loss,
/// with its own snapshot — in every interleaving the scheduler happens to give.
#[test]
fn a_roll_right_after_a_failed_sync_acknowledges_nothing_past_a_hole() {
    let segment_bytes = 8 * 1024;
    for trial in 0..200 {
        let disk = SimDisk::new(trial);
        let tmp = tempfile::tempdir().unwrap();
        let open = || {
            Store::open(
                tmp.path(),
                StoreOptions {
                    storage: Some(LogStorage {
                        segments: disk.dir("segments"),
                        checkpoints: disk.dir("checkpoints"),
                    }),
                    segment_bytes,
                    reserve_bytes: Some(0),
                    max_group_records: 1,
                    ..StoreOptions::default()
                },
            )
        };
        let store = open().unwrap();
        let sent =
            |n: u64, pad: usize| change(file(n % FILES), EVENTS[0], body(&file(n % FILES), n, pad));
        store.append(vec![sent(0, 100)]).unwrap();
        disk.fail_next_syncs(1);
        let (tx, rx) = mpsc::channel();
        for (n, pad) in [(1, 100), (2, 100), (3, segment_bytes as usize)] {
            let tx = tx.clone();
            store.append_then(vec![sent(n, pad)], move |r| {
                let _ = tx.send((n, pad, r));
            });
        }
        drop(tx);
        let acked: Vec<(u64, usize, Appended)> = rx
            .iter()
            .filter_map(|(n, pad, r)| r.ok().map(|a| (n, pad, a)))
            .collect();
        disk.crash(CrashMode::DropUnsynced);
        drop(store);
        let store = open().unwrap_or_else(|e| panic!("trial {trial}: reopen: {e}"));
        for (n, pad, a) in acked {
            let f = file(n % FILES);
            assert_eq!(
                store.snapshot(a.first).unwrap(),
                Some(body(&f, n, pad)),
                "trial {trial}: acknowledged change {n} at {}",
                a.first
            );
        }
        let seqs: Vec<u64> = store.records(Seq(1)).map(|r| r.unwrap().seq.0).collect();
        assert_eq!(seqs, (1..=store.last_seq().unwrap().0).collect::<Vec<_>>());
    }
}

/// `Store::sync` with `Durability::Buffered` (how an import ends) makes every append before
/// it durable, not only those whose groups the sync thread had not yet seen; and rolls in
/// between close only synced segments.
#[test]
fn a_buffered_sync_makes_every_earlier_append_durable() {
    for mode in MODES {
        let disk = SimDisk::new(7);
        let tmp = tempfile::tempdir().unwrap();
        let open = |durability| {
            Store::open(
                tmp.path(),
                StoreOptions {
                    durability,
                    storage: Some(LogStorage {
                        segments: disk.dir("segments"),
                        checkpoints: disk.dir("checkpoints"),
                    }),
                    segment_bytes: 8 * 1024,
                    reserve_bytes: Some(0),
                    ..StoreOptions::default()
                },
            )
            .unwrap()
        };
        let store = open(Durability::Buffered);
        let mut want = Vec::new();
        for n in 0..40 {
            let f = file(n % FILES);
            let pad = 100 + (n as usize * 37) % 900;
            let a = store
                .append(vec![change(f.clone(), EVENTS[0], body(&f, n, pad))])
                .unwrap();
            want.push((a.first, body(&f, n, pad)));
        }
        store.sync().unwrap();
        disk.crash(mode);
        drop(store);
        let store = open(Durability::Sync);
        assert_eq!(store.last_seq(), Some(Seq(40)), "{mode:?}");
        for (seq, snapshot) in want {
            assert_eq!(store.snapshot(seq).unwrap(), Some(snapshot), "{mode:?}");
        }
    }
}

/// A power loss before a buffered append was synced loses a tail of whole groups: the open
/// cuts it where the first one is missing, and never finds (or, through sled, which is not
/// crashed, believes in) a later one behind a hole.
#[test]
fn an_unsynced_buffered_tail_is_lost_whole_never_past_a_hole() {
    for seed in 0..48 {
        let disk = SimDisk::new(seed);
        let tmp = tempfile::tempdir().unwrap();
        let open = |durability| {
            Store::open(
                tmp.path(),
                StoreOptions {
                    durability,
                    storage: Some(LogStorage {
                        segments: disk.dir("segments"),
                        checkpoints: disk.dir("checkpoints"),
                    }),
                    segment_bytes: 64 * 1024,
                    reserve_bytes: Some(0),
                    ..StoreOptions::default()
                },
            )
        };
        let store = open(Durability::Buffered).unwrap();
        let sent = |n: u64| {
            let f = file(n % FILES);
            change(f.clone(), EVENTS[0], body(&f, n, 700))
        };
        for n in 0..3 {
            store.append(vec![sent(n)]).unwrap();
        }
        store.sync().unwrap();
        for n in 3..15 {
            store.append(vec![sent(n)]).unwrap();
        }
        // A last group small enough to survive whole in many seeds.
        store
            .append(vec![Input::Record(RecordKind::Ticked)])
            .unwrap();
        disk.crash(CrashMode::KeepSome);
        drop(store);
        let store = open(Durability::Sync)
            .unwrap_or_else(|e| panic!("seed {seed}: the open refused the log: {e}"));
        let last = store.last_seq().unwrap().0;
        assert!(last >= 3, "seed {seed}: synced records lost");
        let mut seqs = Vec::new();
        for r in store.records(Seq(1)) {
            let r = r.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let n = r.seq.0 - 1;
            if n < 15 {
                let f = file(n % FILES);
                assert_eq!(store.snapshot(r.seq).unwrap(), Some(body(&f, n, 700)));
            }
            seqs.push(r.seq.0);
        }
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "seed {seed}");
    }
}

/// A failed sync with `Durability::Buffered` may have dropped (fsyncgate) appends that were
/// acknowledged without a sync: the store takes them back — the tip goes back to the last
/// good sync and their seqs are given again — so that what a later sync promises is all
/// there after a power loss, with no hole before it.
#[test]
fn a_failed_buffered_sync_takes_back_what_it_could_not_make_durable() {
    for mode in MODES {
        let disk = SimDisk::new(3);
        let tmp = tempfile::tempdir().unwrap();
        let open = |durability| {
            Store::open(
                tmp.path(),
                StoreOptions {
                    durability,
                    storage: Some(LogStorage {
                        segments: disk.dir("segments"),
                        checkpoints: disk.dir("checkpoints"),
                    }),
                    segment_bytes: 64 * 1024,
                    reserve_bytes: Some(0),
                    ..StoreOptions::default()
                },
            )
            .unwrap()
        };
        let store = open(Durability::Buffered);
        let sent = |n: u64| {
            let f = file(n % FILES);
            change(f.clone(), EVENTS[0], body(&f, n, 300))
        };
        for n in 0..3 {
            store.append(vec![sent(n)]).unwrap();
        }
        store.sync().unwrap();
        for n in 3..8 {
            store.append(vec![sent(n)]).unwrap();
        }
        disk.fail_next_syncs(1);
        assert!(store.sync().is_err(), "{mode:?}");
        assert_eq!(store.last_seq(), Some(Seq(3)), "{mode:?}: taken back");
        assert_eq!(store.record(Seq(4)).unwrap(), None, "{mode:?}");
        for n in 100..104 {
            let a = store.append(vec![sent(n)]).unwrap();
            assert_eq!(a.first, Seq(n - 96), "{mode:?}: the seqs are given again");
        }
        store.sync().unwrap();
        disk.crash(mode);
        drop(store);
        let store = open(Durability::Sync);
        let got: Vec<Option<Snapshot>> = (1..=7).map(|s| store.snapshot(Seq(s)).unwrap()).collect();
        let want: Vec<Option<Snapshot>> = [0, 1, 2, 100, 101, 102, 103]
            .iter()
            .map(|&n| Some(body(&file(n % FILES), n, 300)))
            .collect();
        assert_eq!(got, want, "{mode:?}");
        assert_eq!(store.last_seq(), Some(Seq(7)), "{mode:?}");
    }
}

/// An import of a log with a base, with power cut at each of its disk operations in turn:
/// the copy always reopens — empty, or with the source's base and some of the records after
/// it, as they are in the source — and an import into it when it holds no record makes it
/// whole.
#[test]
fn an_import_cut_at_any_disk_operation_reopens_empty_or_on_its_base() {
    let clock = VirtualClock::at(1_700_000_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let source = Store::open(
        tmp.path(),
        StoreOptions {
            segment_bytes: 16 * 1024,
            ..options(&clock, Durability::Buffered)
        },
    )
    .unwrap();
    let append = |n: u64| {
        clock.advance(1000);
        let f = file(n % FILES);
        source
            .append(vec![change(f.clone(), EVENTS[0], body(&f, n, 100))])
            .unwrap();
    };
    (0..300).for_each(append);
    let retention = Retention {
        max_age: Some(Duration::from_secs(60)),
        ..Retention::default()
    };
    let base = source
        .retain_now(&retention)
        .unwrap()
        .expect("an advance")
        .base;
    (300..330).for_each(append);
    source.sync().unwrap();
    let mut export = Vec::new();
    source.export(Seq(1), &mut export).unwrap();
    let want = all_entries(&source, "source");

    let open = |disk: &SimDisk, dir: &Path| {
        Store::open(
            dir,
            StoreOptions {
                storage: Some(LogStorage {
                    segments: disk.dir("segments"),
                    checkpoints: disk.dir("checkpoints"),
                }),
                segment_bytes: 16 * 1024,
                reserve_bytes: Some(0),
                ..StoreOptions::default()
            },
        )
    };
    let ops = {
        let (disk, tmp) = (SimDisk::new(0), tempfile::tempdir().unwrap());
        let copy = open(&disk, tmp.path()).unwrap();
        let before = disk.operations();
        copy.import(&export[..], |_| {}).unwrap();
        disk.operations() - before
    };
    for cut in 0..ops {
        let ctx = format!("cut at operation {cut} of {ops}");
        let (disk, tmp) = (SimDisk::new(cut), tempfile::tempdir().unwrap());
        let copy = open(&disk, tmp.path()).unwrap();
        disk.fail_from(Some(cut));
        assert!(copy.import(&export[..], |_| {}).is_err(), "{ctx}");
        disk.crash(MODES[cut as usize % 4]);
        drop(copy);
        let copy = open(&disk, tmp.path()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        let got = all_entries(&copy, &ctx);
        match copy.base() {
            None => assert!(got.is_empty(), "{ctx}: records without the base"),
            Some(b) => {
                assert_eq!(b.seq, base, "{ctx}");
                same_base(&source, &copy, &ctx);
            }
        }
        check_segment_files(&*disk.dir("segments"), copy.base().as_ref(), &ctx);
        for (seq, e) in &got {
            assert_eq!(Some(e), want.get(seq), "{ctx}: record {seq}");
        }
        if got.is_empty() {
            copy.import(&export[..], |_| {})
                .unwrap_or_else(|e| panic!("{ctx}: importing again: {e}"));
            assert_eq!(all_entries(&copy, &ctx), want, "{ctx}: imported again");
            same_base(&source, &copy, &ctx);
        }
    }
}

/// The first advance of the base, and a second one, with power cut at each of their disk
/// operations in turn: the reopened log is on the old base or on the new one — with the new
/// one's state, kept changes and records after it, exactly as an advance that was not cut
/// leaves them — holds no file of the other, and advances as an uncut one would.
#[test]
fn an_advance_cut_at_any_disk_operation_reopens_on_the_old_base_or_the_new() {
    struct Seen {
        base: Option<Seq>,
        state: Option<Checkpoint>,
        latest: Vec<Option<Seq>>,
        entries: BTreeMap<u64, Entry>,
    }
    let seen = |store: &Store| Seen {
        base: store.base().map(|b| b.seq),
        state: store.base_checkpoint().unwrap(),
        latest: (0..FILES)
            .map(|i| store.latest_version(&file(i)).unwrap())
            .collect(),
        entries: all_entries(store, "seen"),
    };
    let retention = Retention {
        max_age: Some(Duration::from_secs(60)),
        ..Retention::default()
    };
    // A log of a few minutes on `disk`, with `advances` advances of its base; the store is
    // left for one more.
    let log = |disk: &SimDisk, dir: &Path, advances: usize| {
        let clock = VirtualClock::at(1_700_000_000_000);
        let open = {
            let (disk, clock, dir) = (disk.clone(), clock.clone(), dir.to_owned());
            move || {
                let clock = clock.clone();
                Store::open(
                    &dir,
                    StoreOptions {
                        storage: Some(LogStorage {
                            segments: disk.dir("segments"),
                            checkpoints: disk.dir("checkpoints"),
                        }),
                        segment_bytes: 8 * 1024,
                        reserve_bytes: Some(0),
                        index_segment_span: 5,
                        clock: Box::new(move || clock.now()),
                        ..StoreOptions::default()
                    },
                )
                .unwrap()
            }
        };
        let store = open();
        let mut n = 0;
        for round in 0..=advances {
            for _ in 0..90 {
                clock.advance(1000);
                let f = file(n % FILES);
                let event = EVENTS[(n / FILES % 4) as usize];
                store
                    .append(vec![change(f.clone(), event, body(&f, n, 200))])
                    .unwrap();
                n += 1;
            }
            if round < advances {
                store.retain_now(&retention).unwrap().expect("an advance");
            }
        }
        (store, open)
    };
    for advances in [0, 1] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(0);
        let (store, _) = log(&disk, tmp.path(), advances);
        let before = seen(&store);
        let ops = disk.operations();
        let new_base = store
            .retain_now(&retention)
            .unwrap()
            .expect("an advance")
            .base;
        let ops = disk.operations() - ops;
        let after = seen(&store);
        assert_eq!(after.base, Some(new_base));
        drop(store);
        for cut in 0..=ops {
            let ctx = format!("advance {} cut at operation {cut} of {ops}", advances + 1);
            let tmp = tempfile::tempdir().unwrap();
            let disk = SimDisk::new(cut);
            let (store, open) = log(&disk, tmp.path(), advances);
            disk.fail_from(Some(cut));
            let result = store.retain_now(&retention);
            // Once the manifest is renamed the advance is made: what fails after it is left
            // to the next open's cleanup, and the call answers Ok.
            let switched = result.is_ok();
            disk.crash(MODES[cut as usize % 4]);
            drop(store);
            let store = open();
            let got = seen(&store);
            let want = if got.base == after.base {
                &after
            } else {
                assert!(!switched, "{ctx}: {result:?}, yet the base did not move");
                assert_eq!(got.base, before.base, "{ctx}: the base");
                &before
            };
            assert_eq!(got.state, want.state, "{ctx}: the state at the base");
            assert_eq!(got.latest, want.latest, "{ctx}: the files' latest changes");
            assert_eq!(
                got.entries, want.entries,
                "{ctx}: the records after the base"
            );
            check_segment_files(&*disk.dir("segments"), store.base().as_ref(), &ctx);
            let again = store.retain_now(&retention).unwrap().map(|a| a.base);
            let want_again = (got.base != after.base).then_some(new_base);
            assert_eq!(again, want_again, "{ctx}: the advance after the reopen");
        }
    }
}

/// A roll fails at any of its disk operations (its directory sync included, after the
/// rename), the log goes on in the segment before it, and the power goes: the dir opens
/// with every acknowledged record. (Before: an open found the renamed, empty segment after
/// records it claimed to start before, and refused the log.)
#[test]
fn a_roll_that_failed_at_any_operation_leaves_a_log_that_opens_whole() {
    for seed in 0..16u64 {
        for k in 0..8u64 {
            let disk = SimDisk::new(seed);
            let tmp = tempfile::tempdir().unwrap();
            let open = || {
                Store::open(
                    tmp.path(),
                    StoreOptions {
                        storage: Some(LogStorage {
                            segments: disk.dir("segments"),
                            checkpoints: disk.dir("checkpoints"),
                        }),
                        segment_bytes: 8 * 1024,
                        reserve_bytes: Some(0),
                        ..StoreOptions::default()
                    },
                )
            };
            let store = open().unwrap();
            let f = file(1);
            let mut acked = Vec::new();
            for i in 0..3 {
                let a = store
                    .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, i))])
                    .unwrap();
                acked.push(a.first);
            }
            // A group too big for what is left: a roll, failing from its k-th operation.
            let mut big = cb_core::Snapshot::builder();
            big.push("pad", &"x".repeat(7000)).unwrap();
            disk.fail_from(Some(k));
            let r = store.append(vec![change(
                f.clone(),
                EventKind::Rated,
                big.finish().unwrap(),
            )]);
            disk.fail_from(None);
            if let Ok(a) = r {
                acked.push(a.first);
            }
            // Small ones still fit the segment before it.
            for _ in 0..2 {
                if let Ok(a) = store.append(vec![Input::Record(RecordKind::Ticked)]) {
                    acked.push(a.first);
                }
            }
            disk.crash(CrashMode::DropUnsynced);
            drop(store);
            let store = open()
                .unwrap_or_else(|e| panic!("seed {seed}, roll failing from operation {k}: {e}"));
            for seq in &acked {
                assert!(
                    store.record(*seq).unwrap().is_some(),
                    "seed {seed}, roll failing from operation {k}: acknowledged {seq} lost"
                );
            }
        }
    }
}
