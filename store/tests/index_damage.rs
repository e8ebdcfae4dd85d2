//! sled holds only an index the segments can give again (`index.rs`), so no damage to its
//! files may cost a record or make the store answer differently: for every way of damaging
//! `DIR/index-N` — the directory gone; each file in it gone, emptied, cut in half, zeroed or
//! with bits flipped; an empty `conf`; an unfinished snapshot left behind — the store opens
//! (rebuilding the index when it must, and saying why), every record and snapshot reads
//! back identical, each file's records and latest version are as before, and a restore
//! folds to the same state. An index that is only behind the log is caught up, not
//! rebuilt; and an index taken from another log never serves that log's answers.
//!
//! The logs are made by support's `Driver` (changes to a few files with real attempts and
//! outcomes, callback puts, ticks, redelivers) plus changes to a few hundred more files, on
//! the real file system, and closed before each damage so that all of the index is in sled.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cb_core::{Checkpoint, EventKind, FileKey, Record, RecordKind, Seq, Snapshot};
use cb_store::{Durability, Store, StoreOptions};
use support::*;

/// Records in each log: more than one `L` chunk of sled locations (4096).
const RECORDS: u64 = 4_600;
/// Files besides the driver's six.
const MORE_FILES: u64 = 300;

fn options(clock: &VirtualClock) -> StoreOptions {
    let clock = clock.clone();
    StoreOptions {
        // Many segments; an index split in several per-file segments.
        segment_bytes: 256 * 1024,
        reserve_bytes: Some(0),
        index_segment_span: 1_000,
        cache_capacity_bytes: 8 * 1024 * 1024,
        clock: Box::new(move || clock.now()),
        ..StoreOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, options(&VirtualClock::at(1_800_000_000_000)))
        .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

/// splitmix64, so that each log is the same on every run.
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
}

/// Writes a log of `records` records into `dir` (appended buffered, then synced, so that
/// closing puts all of the index into sled), opens and closes it once more (sled writes
/// its snapshot file then), and returns what it must read back as.
fn make_log(dir: &Path, seed: u64, records: u64) -> Expected {
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(
        dir,
        StoreOptions {
            durability: Durability::Buffered,
            ..options(&clock)
        },
    )
    .unwrap();
    let mut driver = Driver::new(store, clock.clone());
    let mut rng = Rng(seed);
    driver.step(&Op::Put { config: 0 });
    while driver.store.next_seq().0 <= records {
        match rng.below(10) {
            0..=2 => {
                let f = file(100 + rng.below(MORE_FILES));
                let n = driver.store.next_seq().0 + seed * 1_000_000;
                clock.advance(1);
                driver.append(change(f.clone(), EventKind::Rated, seed_like(&f, n)));
            }
            3..=5 => driver.step(&Op::Change {
                file: rng.below(6) as u8,
                event: rng.below(4) as u8,
            }),
            6 => driver.step(&Op::Wait {
                ms: rng.below(8_000) as u32,
            }),
            7 | 8 => driver.step(&Op::Finish {
                pick: rng.below(256) as u8,
                outcome: rng.below(5) as u8,
            }),
            _ => match rng.below(4) {
                0 => driver.step(&Op::Put {
                    config: rng.below(3) as u8,
                }),
                1 => driver.step(&Op::Remove),
                _ => driver.step(&Op::Redeliver {
                    file: rng.below(6) as u8,
                }),
            },
        }
    }
    driver.store.sync().unwrap();
    let expected = Expected::of(&driver.store);
    assert_eq!(
        expected.records.len() as u64,
        driver.store.last_seq().unwrap().0
    );
    drop(driver);
    let store = open(dir);
    let r = store.recovery().clone();
    assert_eq!(
        (r.rebuilt, r.caught_up, r.cut),
        (None, 0, None),
        "a clean close"
    );
    expected.check(&store, "after a clean close");
    expected
}

/// Files whose answers are compared: the driver's (many records of every kind) and some
/// of the others.
fn sample_files() -> Vec<FileKey> {
    (0..6)
        .chain((100..100 + MORE_FILES).step_by(37))
        .chain([9_999]) // never changed
        .map(file)
        .collect()
}

/// What a log reads back as: every record, every snapshot, some files' answers, the fold.
#[derive(Debug, PartialEq)]
struct Expected {
    records: Vec<Record>,
    snapshots: BTreeMap<Seq, Snapshot>,
    files: Vec<(FileKey, Option<Seq>, Vec<Record>)>,
    fold: Checkpoint,
}

impl Expected {
    /// Reads `store`; panics on any error (the caller says what it was doing).
    fn of(store: &Store) -> Expected {
        Expected::try_of(store).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_of(store: &Store) -> Result<Expected, String> {
        let mut records = Vec::new();
        let mut snapshots = BTreeMap::new();
        for r in store.records(Seq(1)) {
            let r = r.map_err(|e| format!("reading the log: {e}"))?;
            let by_seq = store
                .record(r.seq)
                .map_err(|e| format!("record {}: {e}", r.seq))?;
            if by_seq.as_ref() != Some(&r) {
                return Err(format!("record {} by seq is {by_seq:?}", r.seq));
            }
            if matches!(r.kind, RecordKind::ChangeAppended { .. }) {
                let s = store
                    .snapshot(r.seq)
                    .map_err(|e| format!("snapshot {}: {e}", r.seq))?
                    .ok_or_else(|| format!("change {} has no snapshot", r.seq))?;
                snapshots.insert(r.seq, s);
            }
            records.push(r);
        }
        let mut files = Vec::new();
        for f in sample_files() {
            let latest = store
                .latest_version(&f)
                .map_err(|e| format!("latest version of {f}: {e}"))?;
            let recs = store
                .file_records(&f)
                .map_err(|e| format!("records of {f}: {e}"))?;
            files.push((f, latest, recs));
        }
        let fold = store
            .restore()
            .map_err(|e| format!("restore: {e}"))?
            .core
            .checkpoint();
        Ok(Expected {
            records,
            snapshots,
            files,
            fold,
        })
    }

    /// Asserts `store` reads back as `self`, naming `case`.
    fn check(&self, store: &Store, case: &str) {
        let got = Expected::try_of(store).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(got.records.len(), self.records.len(), "{case}: records");
        assert!(got.records == self.records, "{case}: records differ");
        assert!(got.snapshots == self.snapshots, "{case}: snapshots differ");
        for (g, w) in got.files.iter().zip(&self.files) {
            assert_eq!(g, w, "{case}: the answers for {}", w.0);
        }
        assert!(got.fold == self.fold, "{case}: the fold differs");
    }
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

/// The data dir's only `index-N`.
fn index_dir(dir: &Path) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("index-"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// Every file and every directory under `dir`, relative to it.
fn contents(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = PathBuf::from(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            let (f, d) = contents(&entry.path());
            files.extend(f.into_iter().map(|f| name.join(f)));
            dirs.extend(d.into_iter().map(|d| name.join(d)));
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// One way of damaging sled's files.
#[derive(Clone, Debug)]
enum Damage {
    RemoveDir,
    RemoveSubdir(PathBuf),
    Remove(PathBuf),
    Truncate(PathBuf, Cut),
    ZeroFill(PathBuf),
    /// Flips one bit in each of a few bytes spread over the file.
    FlipBits(PathBuf),
    /// Creates (or replaces) a file of this many copies of this byte.
    Put(PathBuf, usize, u8),
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    ToZero,
    ToHalf,
}

impl Damage {
    fn apply(&self, index: &Path) {
        let at = |p: &PathBuf| index.join(p);
        let rw = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(at(p))
                .unwrap()
        };
        match self {
            Damage::RemoveDir => std::fs::remove_dir_all(index).unwrap(),
            Damage::RemoveSubdir(p) => std::fs::remove_dir_all(at(p)).unwrap(),
            Damage::Remove(p) => std::fs::remove_file(at(p)).unwrap(),
            Damage::Truncate(p, cut) => {
                let f = rw(p);
                let len = f.metadata().unwrap().len();
                f.set_len(match cut {
                    Cut::ToZero => 0,
                    Cut::ToHalf => len / 2,
                })
                .unwrap();
            }
            Damage::ZeroFill(p) => {
                let len = std::fs::metadata(at(p)).unwrap().len();
                std::fs::write(at(p), vec![0u8; len as usize]).unwrap();
            }
            Damage::FlipBits(p) => {
                let mut bytes = std::fs::read(at(p)).unwrap();
                let len = bytes.len();
                for i in 1..8 {
                    if len > 0 {
                        bytes[len * i / 8] ^= 1 << i;
                    }
                }
                std::fs::write(at(p), bytes).unwrap();
            }
            Damage::Put(p, len, byte) => std::fs::write(at(p), vec![*byte; *len]).unwrap(),
        }
    }
}

/// Every damage this test applies to an index holding `files` and `dirs`.
fn damages(files: &[PathBuf], dirs: &[PathBuf]) -> Vec<Damage> {
    let mut out: Vec<Damage> = dirs.iter().cloned().map(Damage::RemoveSubdir).collect();
    out.extend([
        Damage::RemoveDir,
        Damage::Put("conf".into(), 0, 0),
        // A snapshot sled began and never finished (a crash while it wrote it).
        Damage::Put("snap.00000000DEADBEEF.generating".into(), 0, 0),
        Damage::Put("snap.FFFFFFFFFFFFFFFF".into(), 64, 0xA5),
    ]);
    for f in files {
        out.extend([
            Damage::Remove(f.clone()),
            Damage::Truncate(f.clone(), Cut::ToZero),
            Damage::Truncate(f.clone(), Cut::ToHalf),
            Damage::ZeroFill(f.clone()),
            Damage::FlipBits(f.clone()),
        ]);
    }
    out
}

#[test]
fn every_damage_to_sled_leaves_every_answer_as_it_was() {
    let started = std::time::Instant::now();
    let pristine = tempfile::tempdir().unwrap();
    let want = make_log(pristine.path(), 1, RECORDS);
    let (files, dirs) = contents(&index_dir(pristine.path()));
    for name in ["db", "conf"] {
        assert!(files.iter().any(|f| f == Path::new(name)), "{files:?}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().starts_with("snap.")),
        "no snapshot file to damage: {files:?}"
    );
    eprintln!(
        "index_damage: a log of {} records; sled's files {files:?}, directories {dirs:?}",
        want.records.len()
    );
    let damages = damages(&files, &dirs);
    let mut rebuilt = 0;
    let mut reasons = BTreeMap::<String, Vec<String>>::new();
    for damage in &damages {
        let case = format!("{damage:?}");
        let copy = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), copy.path());
        damage.apply(&index_dir(copy.path()));
        let store = open(copy.path());
        let recovery = store.recovery().clone();
        want.check(&store, &case);
        if let Some(r) = &recovery.rebuilt {
            rebuilt += 1;
            assert_eq!(r.records, want.records.len() as u64, "{case}: {r:?}");
            // Group reasons without the numbers and paths in them.
            let short: String = r.reason.chars().take(48).collect();
            reasons.entry(short).or_default().push(case.clone());
        }
        // Whatever the open did, the index it leaves is whole: the next open uses it.
        store
            .append(vec![cb_store::Input::Record(RecordKind::Ticked)])
            .unwrap_or_else(|e| panic!("{case}: append after the open: {e}"));
        drop(store);
        let store = open(copy.path());
        let again = store.recovery().clone();
        assert_eq!(
            (again.rebuilt, again.cut),
            (None, None),
            "{case}: the index left by the first open was not used by the next"
        );
        assert_eq!(store.last_seq(), Some(Seq(want.records.len() as u64 + 1)));
        let tick = store.record(store.last_seq().unwrap()).unwrap().unwrap();
        assert!(matches!(tick.kind, RecordKind::Ticked), "{case}");
    }
    eprintln!(
        "index_damage: {} damages, {rebuilt} rebuilt, in {:?}; reasons: {reasons:#?}",
        damages.len(),
        started.elapsed()
    );
    // Most damage must have been noticed, or the cases above did not reach the rebuild.
    assert!(
        reasons
            .get("there is no index")
            .is_some_and(|cases| cases == &["RemoveDir"]),
        "{reasons:?}"
    );
    assert!(rebuilt >= files.len() * 3, "only {rebuilt} rebuilds");
}

/// A snapshot file whose checksum holds but whose page table is wrong (one byte of it
/// changed, the checksum made to fit) sends sled's recovery into an assertion: a panic in
/// its open, not an error — the shape of spacejam/sled#1387. The store catches it, says so,
/// and rebuilds; every answer is as before.
#[test]
fn a_panic_inside_sleds_open_is_caught_and_the_index_rebuilt() {
    let pristine = tempfile::tempdir().unwrap();
    let want = make_log(pristine.path(), 2, 400);
    let index = index_dir(pristine.path());
    let (files, _) = contents(&index);
    let snap = files
        .iter()
        .find(|f| f.to_string_lossy().starts_with("snap."))
        .expect("sled wrote a snapshot")
        .clone();
    let bytes = std::fs::read(index.join(&snap)).unwrap();
    // A snapshot file: the snapshot, its length (8 bytes), its CRC-32 (4 bytes).
    let body_len = bytes.len() - 12;
    let mut panicked = None;
    for at in 0..body_len {
        let mut body = bytes[..body_len].to_vec();
        body[at] = body[at].wrapping_add(0x41);
        let mut damaged = body.clone();
        damaged.extend_from_slice(&bytes[body_len..body_len + 8]);
        damaged.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        let copy = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), copy.path());
        std::fs::write(index_dir(copy.path()).join(&snap), damaged).unwrap();
        let store = open(copy.path());
        let case = format!("snapshot byte {at} changed");
        want.check(&store, &case);
        if let Some(r) = &store.recovery().rebuilt {
            if r.reason.contains("panicked") {
                panicked = Some((at, r.reason.clone()));
                break;
            }
        }
    }
    let (at, reason) =
        panicked.expect("no change to sled's snapshot made its open panic: nothing was tested");
    eprintln!("index_damage: snapshot byte {at} changed: {reason}");
}

/// Appends `n` changes and ticks through `store` (the clock moves on by itself).
fn append_more(store: &Store, n: u64) {
    for i in 0..n {
        let input = if i % 4 == 3 {
            cb_store::Input::Record(RecordKind::Ticked)
        } else {
            let f = file(100 + i % 50);
            change(f.clone(), EventKind::Moderated, seed_like(&f, 77_000 + i))
        };
        store.append(vec![input]).unwrap();
    }
}

/// An index that is only behind the log (an older copy of it, as a backup restored over
/// a newer one leaves it) agrees with the log as far as it goes: the open catches it up
/// from there rather than rebuilding it.
#[test]
fn an_index_behind_the_log_is_caught_up_not_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 3, 2_000);
    let index = index_dir(dir.path());
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&index, saved.path());
    let want = {
        let store = open(dir.path());
        append_more(&store, 300);
        Expected::of(&store)
    };
    assert_eq!(index_dir(dir.path()), index, "no rebuild so far");
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(saved.path(), &index);
    let store = open(dir.path());
    let r = store.recovery().clone();
    assert_eq!(r.rebuilt, None, "{r:?}");
    assert_eq!(r.caught_up, 300, "{r:?}");
    want.check(&store, "an index behind the log");
}

/// The index of another log with as many records, put in this log's place, is found out
/// at open (its marks' anchors are not this log's records): it is rebuilt, and nothing
/// of the other log is served.
#[test]
fn an_index_from_another_log_is_rebuilt_never_served() {
    let this = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let want = make_log(this.path(), 4, 1_500);
    let theirs = make_log(other.path(), 5, 1_500);
    assert_ne!(want, theirs);
    let index = index_dir(this.path());
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&index_dir(other.path()), &index);
    let store = open(this.path());
    let r = store.recovery().clone();
    let reason = r.rebuilt.map(|r| r.reason).unwrap_or_default();
    assert!(reason.contains("is not the log's record"), "{reason:?}");
    want.check(&store, "another log's index");
}

/// The hardest case for the anchors: another log with the very same layout (its changes
/// are to other files, whose ids and snapshots have the same lengths) and the very same
/// last record, so that the location mark's anchor holds. Its index must still not answer
/// for this log: per-file answers that name records of other files are found out.
#[test]
fn an_index_from_a_log_laid_out_alike_never_answers_for_this_one() {
    let make = |dir: &Path, first_file: u64| {
        let clock = VirtualClock::at(1_700_000_000_000);
        let store = Store::open(dir, options(&clock)).unwrap();
        for i in 0..600u64 {
            clock.advance(1);
            let f = file(first_file + i % 7);
            store
                .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, i))])
                .unwrap();
        }
        clock.advance(1);
        store
            .append(vec![cb_store::Input::Record(RecordKind::Ticked)])
            .unwrap();
        drop(store);
        let store = open(dir);
        Expected::of(&store)
    };
    let this = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let want = make(this.path(), 0);
    let theirs = make(other.path(), 10);
    assert_eq!(want.records.last(), theirs.records.last());
    let index = index_dir(this.path());
    std::fs::remove_dir_all(&index).unwrap();
    copy_dir(&index_dir(other.path()), &index);
    let store = open(this.path());
    let r = store.recovery().clone();
    let reason = r.rebuilt.map(|r| r.reason).unwrap_or_default();
    assert!(reason.contains("per-file entries"), "{reason:?}");
    want.check(&store, "a log laid out alike's index");
}

// ---- sled hanging, failing or panicking in the running process -------------------------
//
// What sled does once one of its I/O threads has panicked (its thread pool is the
// process's: every instance is affected) is injected at cb's seam with sled
// (`IndexFaults`): every call and every open of a new index hangs, fails or panics. The
// store must answer everything as before, from an index held in memory, and never hang.

use cb_store::{IndexFaults, Retention, SledFault};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A short hang limit, so that a hang is given up in tests within a second.
const HANG_LIMIT: Duration = Duration::from_millis(300);

fn open_faulty(dir: &Path, faults: &Arc<IndexFaults>) -> Store {
    Store::open(
        dir,
        StoreOptions {
            index_hang_limit: HANG_LIMIT,
            index_faults: Some(faults.clone()),
            ..options(&VirtualClock::at(1_800_000_000_000))
        },
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every fault from the very start: the open cannot use sled at all (an open that hangs is
/// timed out, one that fails or panics is caught); it builds the index in memory, says so,
/// and every answer is as before — for appends made afterwards too, and after a restart
/// without the fault.
#[test]
fn sled_hanging_failing_or_panicking_at_open_leaves_the_index_in_memory() {
    let pristine = tempfile::tempdir().unwrap();
    let want = make_log(pristine.path(), 6, 2_000);
    for fault in [SledFault::Fail, SledFault::Panic, SledFault::Hang] {
        let case = format!("{fault:?} at open");
        let copy = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), copy.path());
        let faults = Arc::new(IndexFaults::default());
        faults.set(fault);
        let started = Instant::now();
        let store = open_faulty(copy.path(), &faults);
        let took = started.elapsed();
        let rebuilt = store.recovery().rebuilt.clone().expect("rebuilt");
        assert!(rebuilt.in_memory.is_some(), "{case}: {rebuilt:?}");
        assert!(store.index_in_memory(), "{case}");
        assert!(faults.met() > 0, "{case}: the fault was never met");
        eprintln!(
            "index_damage: {case}: open took {} ms, in memory: {}",
            took.as_millis(),
            rebuilt.in_memory.unwrap()
        );
        want.check(&store, &case);
        append_more(&store, 1_500);
        let more = Expected::of(&store);
        assert!(more.records.len() > want.records.len());
        faults.set(SledFault::None);
        drop(store);
        let store = open(copy.path());
        more.check(&store, &format!("{case}, opened again without faults"));
    }
}

/// A hang after sled opened, inside the open's reading of the index: the opener sees the
/// call stuck past the limit and recovers with the index in memory; the stuck recovery,
/// released later, stops without touching anything.
#[test]
fn a_hang_inside_the_open_is_seen_and_the_index_held_in_memory() {
    let pristine = tempfile::tempdir().unwrap();
    let want = make_log(pristine.path(), 7, 2_000);
    for grace in [1, 2, 4] {
        let case = format!("a hang after {grace} calls");
        let copy = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), copy.path());
        let faults = Arc::new(IndexFaults::default());
        faults.set_after(grace, SledFault::Hang);
        let store = open_faulty(copy.path(), &faults);
        let rebuilt = store.recovery().rebuilt.clone().expect("rebuilt");
        let why = rebuilt.in_memory.clone().unwrap_or_default();
        assert!(why.contains("has not returned"), "{case}: {rebuilt:?}");
        want.check(&store, &case);
        faults.set(SledFault::None);
        // The stuck recovery goes on now, and must change nothing the store serves.
        std::thread::sleep(Duration::from_millis(100));
        want.check(&store, &format!("{case}, released"));
        drop(store);
        let store = open(copy.path());
        want.check(&store, &format!("{case}, opened again without faults"));
    }
}

/// sled hangs while the store runs: a reader stuck in it is seen, the index is rebuilt in
/// memory, every answer is served from there (the stuck reader gets an error, never a
/// wrong answer, once released), appends go on, and closing does not wait for the stuck
/// index writer.
#[test]
fn sled_hanging_while_the_store_runs_leaves_the_index_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let want = make_log(dir.path(), 8, 2_000);
    let faults = Arc::new(IndexFaults::default());
    let store = open_faulty(dir.path(), &faults);
    assert!(!store.index_in_memory());
    faults.set(SledFault::Hang);
    // A file's per-file entries are in sled (never cached): this read hangs.
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.file_records(&file(0)))
    };
    wait_for("the index in memory", || store.index_in_memory());
    want.check(&store, "sled hung while running");
    // Appends go on; the index writer's spills (into sled) are not needed any more.
    append_more(&store, 2_500);
    let more = Expected::of(&store);
    faults.set(SledFault::None);
    let stuck = reader.join().unwrap();
    assert!(stuck.is_err(), "a read stuck in sled answered {stuck:?}");
    let started = Instant::now();
    drop(store);
    eprintln!(
        "index_damage: closing with sled hung took {} ms",
        started.elapsed().as_millis()
    );
    let store = open(dir.path());
    more.check(&store, "sled hung while running, opened again");
}

/// The index writer itself stuck in sled (a spill that never returns), sled hanging on
/// until after the store closes: the keeper sees it, the index goes to memory, and closing
/// leaves the writer where it is rather than waiting for it.
#[test]
fn an_index_writer_stuck_in_sled_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let want = make_log(dir.path(), 9, 1_000);
    let faults = Arc::new(IndexFaults::default());
    let store = open_faulty(dir.path(), &faults);
    faults.set(SledFault::Hang);
    // More than a location chunk (4096) of records: the index writer spills into sled.
    append_more(&store, 5_000);
    wait_for("the index in memory", || store.index_in_memory());
    let more = Expected::of(&store);
    assert!(more.records.len() >= want.records.len() + 5_000);
    let started = Instant::now();
    drop(store);
    let closed = started.elapsed();
    faults.set(SledFault::None);
    assert!(
        closed < Duration::from_secs(10),
        "closing waited {} ms for a stuck writer",
        closed.as_millis()
    );
    let store = open(dir.path());
    more.check(&store, "index writer stuck, opened again");
}

/// sled failing in every instance while the store runs (its answer once an I/O thread
/// panicked): a read fails once, the index cannot be rebuilt in sled, so it is rebuilt in
/// memory, and every answer is served.
#[test]
fn sled_failing_while_the_store_runs_leaves_the_index_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let want = make_log(dir.path(), 10, 2_000);
    let faults = Arc::new(IndexFaults::default());
    let store = open_faulty(dir.path(), &faults);
    faults.set(SledFault::Fail);
    assert!(
        store.file_records(&file(0)).is_err(),
        "the read that found sled failing"
    );
    wait_for("the index in memory", || store.index_in_memory());
    want.check(&store, "sled failing while running");
    append_more(&store, 500);
    let more = Expected::of(&store);
    faults.set(SledFault::None);
    drop(store);
    let store = open(dir.path());
    more.check(&store, "sled failing while running, opened again");
}

/// Retention with the index in memory removes the same history and keeps the same
/// answers as with the index in sled.
#[test]
fn retention_over_an_index_in_memory_keeps_the_same_answers() {
    let pristine = tempfile::tempdir().unwrap();
    make_log(pristine.path(), 11, 4_000);
    let (in_sled, in_memory) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_dir(pristine.path(), in_sled.path());
    copy_dir(pristine.path(), in_memory.path());
    let faults = Arc::new(IndexFaults::default());
    faults.set(SledFault::Fail);
    let memory = open_faulty(in_memory.path(), &faults);
    assert!(memory.index_in_memory());
    let sled = open(in_sled.path());
    let retention = Retention {
        max_age: None,
        max_bytes: Some(512 * 1024),
        ..Retention::default()
    };
    let a = sled
        .retain_now(&retention)
        .unwrap()
        .expect("history removed");
    let b = memory
        .retain_now(&retention)
        .unwrap()
        .expect("history removed");
    assert_eq!(a, b);
    let want = Expected::of(&sled);
    want.check(&memory, "retention in memory");
    append_more(&memory, 300);
    append_more(&sled, 300);
    let want = Expected::of(&sled);
    want.check(&memory, "retention in memory, then appends");
    let b = memory.retain_now(&retention).unwrap();
    let a = sled.retain_now(&retention).unwrap();
    assert_eq!(a, b);
    Expected::of(&sled).check(&memory, "a second advance in memory");
    faults.set(SledFault::None);
    drop(memory);
    let memory = open(in_memory.path());
    Expected::of(&sled).check(&memory, "retention in memory, opened again");
}

/// An index held in memory because sled failed (not hung) goes back into sled by itself
/// once sled works again, and the next open finds it whole there.
#[test]
fn an_index_in_memory_goes_back_to_sled_once_sled_works() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 12, 1_500);
    let faults = Arc::new(IndexFaults::default());
    faults.set(SledFault::Fail);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            index_hang_limit: HANG_LIMIT,
            index_sled_retry: Duration::from_millis(200),
            index_faults: Some(faults.clone()),
            ..options(&VirtualClock::at(1_800_000_000_000))
        },
    )
    .unwrap();
    assert!(store.index_in_memory());
    append_more(&store, 300);
    // Tried again while sled still fails: it stays in memory.
    let met = faults.met();
    wait_for("sled tried again", || faults.met() > met);
    assert!(store.index_in_memory());
    faults.set(SledFault::None);
    wait_for("the index back in sled", || !store.index_in_memory());
    append_more(&store, 300);
    let want = Expected::of(&store);
    drop(store);
    let store = open(dir.path());
    let r = store.recovery().clone();
    assert_eq!(r.rebuilt, None, "{r:?}");
    want.check(&store, "back in sled, opened again");
}
