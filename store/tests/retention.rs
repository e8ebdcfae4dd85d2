//! Retention: over a long run with a short horizon and small segments, the log's size stays
//! flat; every file's latest change is still served and redeliverable; the state restored
//! from the base equals the state folded from the first record; and the archives of what
//! was removed import back into exactly the records that were appended.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cb_core::{EventKind, FileKey, Record, RecordKind, Seq, Snapshot};
use cb_store::{Durability, Input, Retention, Store, StoreOptions};
use support::*;

fn store_options(clock: &VirtualClock) -> StoreOptions {
    StoreOptions {
        segment_bytes: 16 * 1024,
        ..options(clock, Durability::Sync)
    }
}

fn retention(archive: Option<&std::path::Path>) -> Retention {
    Retention {
        max_age: Some(Duration::from_secs(60)),
        max_bytes: None,
        archive_dir: archive.map(|p| p.to_owned()),
        check_every: Duration::from_secs(3600),
    }
}

/// Every record of the log, as appended, with its snapshot.
type Appended = BTreeMap<Seq, (Record, Option<Snapshot>)>;

fn remember(store: &Store, from: Seq, all: &mut Appended) {
    for record in store.records(from) {
        let record = record.unwrap();
        let snapshot = store.snapshot(record.seq).unwrap();
        all.insert(record.seq, (record, snapshot));
    }
}

#[test]
fn a_short_horizon_keeps_the_log_flat_and_every_file_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let archive = tmp.path().join("archive");
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(&dir, store_options(&clock)).unwrap();
    let mut driver = Driver::new(store, clock.clone());
    driver.step(&Op::Put { config: 0 });
    // A file that changes once, at the start: only the kept segment will hold its change.
    let quiet = file(99);
    driver.append(change(
        quiet.clone(),
        EventKind::Uploaded,
        seed_like(&quiet, 1),
    ));
    let mut all = Appended::new();
    remember(&driver.store, Seq(1), &mut all);
    let mut sizes = Vec::new();
    let mut advances = 0;
    let mut x = 7u64;
    for round in 0..40u64 {
        let from = driver.store.next_seq();
        for _ in 0..120 {
            let r = cb_store::synthetic::xorshift(&mut x);
            let op = match r % 10 {
                0..=4 => Op::Change {
                    file: (r >> 8) as u8 % 6,
                    event: (r >> 16) as u8 % 4,
                },
                5 | 6 => Op::Wait { ms: 600 },
                _ => Op::Finish {
                    pick: (r >> 24) as u8,
                    outcome: u8::from(r.is_multiple_of(7)),
                },
            };
            driver.step(&op);
        }
        remember(&driver.store, from, &mut all);
        if let Some(a) = driver.store.retain_now(&retention(Some(&archive))).unwrap() {
            advances += 1;
            assert!(a.segments_removed > 0 && a.bytes_removed > 0, "{a:?}");
            assert_eq!(driver.store.base().unwrap().seq, a.base);
            assert!(a.archive.as_ref().unwrap().exists());
        }
        sizes.push(driver.store.disk_usage().unwrap().log_bytes);
        let _ = round;
    }
    assert!(advances >= 10, "the base advanced {advances} times");
    // Flat: the second half never holds much more than the first half's peak.
    let early = *sizes[..20].iter().max().unwrap();
    let late = *sizes[20..].iter().max().unwrap();
    assert!(late <= early + early / 2, "log bytes grew: {sizes:?}");

    // Every file's latest change is served, and a redeliver carries it.
    let base = driver.store.base().unwrap().seq;
    let mut latest: BTreeMap<FileKey, Seq> = BTreeMap::new();
    for (seq, (r, _)) in &all {
        if let RecordKind::ChangeAppended { file, .. } = &r.kind {
            latest.insert(file.clone(), *seq);
        }
    }
    assert!(
        latest.values().any(|v| *v <= base),
        "some file's latest change is kept"
    );
    for (file, version) in &latest {
        assert_eq!(
            driver.store.latest_version(file).unwrap(),
            Some(*version),
            "{file}"
        );
        assert_eq!(
            driver.store.snapshot(*version).unwrap(),
            all[version].1,
            "{file}"
        );
        let r = driver.append(Input::Record(RecordKind::RedeliverRequested {
            file: file.clone(),
            callback: None,
            version: None,
        }));
        match driver.store.record(r).unwrap().unwrap().kind {
            RecordKind::RedeliverRequested { version: v, .. } => assert_eq!(v, Some(*version)),
            other => panic!("{other:?}"),
        }
    }
    // A removed record is gone, and the log starts after the base.
    assert_eq!(driver.store.first_seq(), Seq(base.0 + 1));
    assert_eq!(
        driver.store.records(Seq(1)).next().unwrap().unwrap().seq,
        Seq(base.0 + 1)
    );

    // The state restored from the base (and the tail) is the state folded from record 1.
    let restored = driver.store.restore().unwrap();
    assert_eq!(restored.core.checkpoint(), driver.core.checkpoint());
    let want = driver.core.checkpoint();
    drop(driver);

    // Reopened, the base holds, the index is caught up (not rebuilt), files still served.
    let store = Store::open(&dir, store_options(&clock)).unwrap();
    assert_eq!(store.base().unwrap().seq, base);
    assert_eq!(store.recovery().rebuilt, None);
    assert_eq!(store.restore().unwrap().core.checkpoint(), want);
    for (file, version) in &latest {
        assert_eq!(
            store.latest_version(file).unwrap(),
            Some(*version),
            "{file}"
        );
    }
    // The attempts listed are those the log holds, from the base on.
    let mut listed = Vec::new();
    let mut query = cb_store::AttemptQuery {
        of: cb_store::AttemptsOf::All,
        class: None,
        since: None,
        until: None,
        before: None,
        limit: 100,
    };
    loop {
        let page = store.attempts(&query).unwrap();
        listed.extend(page.records.iter().map(|r| r.seq));
        match (page.more, page.records.last()) {
            (true, Some(last)) => query.before = Some(last.seq),
            _ => break,
        }
    }
    let mut walked: Vec<Seq> = store
        .records(Seq(1))
        .map(Result::unwrap)
        .filter(|r| matches!(r.kind, RecordKind::AttemptFinished(_)))
        .map(|r| r.seq)
        .collect();
    walked.reverse();
    assert!(!walked.is_empty());
    assert_eq!(listed, walked);
    // A file's history starts at the base, from the state there.
    let (file, _) = latest.iter().next().unwrap();
    let start = store.file_start(file).unwrap().expect("a base");
    assert_eq!(start.seq(), base);
    // The export carries the base: imported into an empty dir, it is the same log from
    // the base on, in the same state.
    let mut export = Vec::new();
    store.export(Seq(1), &mut export).unwrap();
    let tip = store.last_seq().unwrap();
    drop(store);
    let copy = Store::open(
        &tmp.path().join("copy"),
        options(&clock, Durability::Buffered),
    )
    .unwrap();
    copy.import(&export[..], |_| {}).unwrap();
    assert_eq!(copy.base().unwrap().seq, base);
    assert_eq!(copy.last_seq(), Some(tip));
    assert_eq!(copy.restore().unwrap().core.checkpoint(), want);
    for (file, version) in &latest {
        assert_eq!(copy.latest_version(file).unwrap(), Some(*version), "{file}");
        assert_eq!(copy.snapshot(*version).unwrap(), all[version].1, "{file}");
    }
    drop(copy);

    // The archives, imported in order into an empty dir, are the records up to the base.
    let mut names: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let fresh = Store::open(
        &tmp.path().join("imported"),
        options(&clock, Durability::Buffered),
    )
    .unwrap();
    for path in &names {
        let bytes = std::fs::read(path).unwrap();
        let text = zstd::decode_all(&bytes[..]).unwrap();
        fresh.import(&text[..], |_| {}).unwrap();
    }
    assert_eq!(fresh.last_seq(), Some(base));
    for record in fresh.records(Seq(1)) {
        let record = record.unwrap();
        let (want, snapshot) = &all[&record.seq];
        assert_eq!(&record, want);
        assert_eq!(&fresh.snapshot(record.seq).unwrap(), snapshot);
    }
    // Then the export after them: its base is skipped, the records after it continue.
    fresh.import(&export[..], |_| {}).unwrap();
    assert_eq!(fresh.last_seq(), Some(tip));
    assert_eq!(fresh.base(), None, "the whole history, from record 1");
    assert_eq!(fresh.restore().unwrap().core.checkpoint(), want);
}

#[test]
fn a_deleted_file_past_the_horizon_is_forgotten_unless_something_still_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), store_options(&clock)).unwrap();
    let mut driver = Driver::new(store, clock.clone());
    let (gone, kept) = (file(1), file(2));
    driver.append(change(
        gone.clone(),
        EventKind::Uploaded,
        seed_like(&gone, 1),
    ));
    let last_of_gone = driver.append(change(
        gone.clone(),
        EventKind::Deleted,
        seed_like(&gone, 2),
    ));
    driver.append(change(
        kept.clone(),
        EventKind::Uploaded,
        seed_like(&kept, 3),
    ));
    let last_of_kept = driver.append(change(
        kept.clone(),
        EventKind::Deleted,
        seed_like(&kept, 4),
    ));
    // A per-file callback keeps `kept` known to the core: it is not forgotten.
    driver.append(Input::Change(cb_store::Change {
        file: kept.clone(),
        event: EventKind::Deleted,
        snapshot: seed_like(&kept, 5),
        callbacks: Some(
            cb_core::FileCallback::validate_list(vec![serde_json::from_str(
                r#"{"name":"pf","url":"https://example.org/pf"}"#,
            )
            .unwrap()])
            .unwrap()
            .into(),
        ),
    }));
    let _ = last_of_kept;
    // Two minutes of other files, in many segments.
    for i in 0..400u64 {
        clock.advance(400);
        let f = file(10 + i % 20);
        driver.append(change(f.clone(), EventKind::Rated, seed_like(&f, i)));
    }
    let a = driver
        .store
        .retain_now(&retention(None))
        .unwrap()
        .expect("an advance");
    assert!(a.forgotten >= 1, "{a:?}");
    assert_eq!(
        driver.store.latest_version(&gone).unwrap(),
        None,
        "forgotten"
    );
    assert!(last_of_gone <= a.base);
    assert!(
        driver.store.latest_version(&kept).unwrap().is_some(),
        "still known"
    );
}

#[test]
fn a_byte_limit_removes_the_oldest_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), store_options(&clock)).unwrap();
    for i in 0..600u64 {
        let f = file(i % 50);
        store
            .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, i))])
            .unwrap();
    }
    let before = store.disk_usage().unwrap().log_bytes;
    let limit = 96 * 1024;
    let a = store
        .retain_now(&Retention {
            max_age: None,
            max_bytes: Some(limit),
            archive_dir: None,
            check_every: Duration::from_secs(3600),
        })
        .unwrap()
        .expect("an advance");
    let after = store.disk_usage().unwrap().log_bytes;
    assert!(after < before, "{before} → {after}");
    // The live segments fit the limit (the kept segment is extra: 50 files' latest).
    assert!(a.kept == 50, "{a:?}");
    for i in 0..50u64 {
        assert!(store.latest_version(&file(i)).unwrap().is_some());
    }
    // Forever keeps everything.
    assert_eq!(store.retain_now(&Retention::forever()).unwrap(), None);
}

/// Appends that roll segments, retention advancing the base, and readers, all at once: no
/// acknowledged record after the base is lost, a reader gets a dense stream or an error
/// (never a shorter log without a word), and the log reopens whole.
#[test]
fn appends_rolls_readers_and_retention_at_once_lose_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let open = || {
        Store::open(
            tmp.path(),
            StoreOptions {
                segment_bytes: 16 * 1024,
                ..options(&clock, Durability::Sync)
            },
        )
        .unwrap()
    };
    let store = open();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Seq, u64)>>> = Arc::default();
    let appender = {
        let (store, stop, acked, clock) =
            (store.clone(), stop.clone(), acked.clone(), clock.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || i < 400 {
                i += 1;
                clock.advance(250);
                let f = file(i % 17);
                let a = store
                    .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, i))])
                    .unwrap();
                acked.lock().unwrap().push((a.first, i));
                if i > 3000 {
                    break;
                }
            }
        })
    };
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let first = store.first_seq();
                let mut expect = None;
                for r in store.records(first) {
                    match r {
                        Ok(r) => {
                            if let Some(e) = expect {
                                assert_eq!(r.seq, e, "a reader's stream skipped records");
                            }
                            expect = Some(Seq(r.seq.0 + 1));
                        }
                        Err(_) => break, // removed while read: said, not skipped
                    }
                }
                let mut out = Vec::new();
                if store.export(Seq(1), &mut out).is_ok() {
                    // What an export gives, an empty dir takes.
                    let t = tempfile::tempdir().unwrap();
                    let copy = Store::open(
                        t.path(),
                        options(&VirtualClock::default(), Durability::Buffered),
                    )
                    .unwrap();
                    copy.import(&out[..], |_| {}).unwrap();
                }
                reads += 1;
            }
            reads
        })
    };
    let mut advances = 0;
    let retention = retention(None);
    while !appender.is_finished() {
        if store.retain_now(&retention).unwrap().is_some() {
            advances += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    appender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(advances >= 3, "{advances} advances");
    assert!(reads >= 1);
    let base = store.base().unwrap().seq;
    let acked = acked.lock().unwrap().clone();
    let mut latest = std::collections::BTreeMap::new();
    for (seq, i) in &acked {
        latest.insert(file(i % 17), (*seq, *i));
    }
    drop(store);
    let store = open();
    for (seq, i) in &acked {
        if *seq > base {
            let f = file(i % 17);
            assert_eq!(
                store.snapshot(*seq).unwrap(),
                Some(seed_like(&f, *i)),
                "record {seq}"
            );
        }
    }
    for (f, (seq, i)) in &latest {
        assert_eq!(store.latest_version(f).unwrap(), Some(*seq), "{f}");
        assert_eq!(store.snapshot(*seq).unwrap(), Some(seed_like(f, *i)));
    }
}

/// A file changed after the base still starts there from its kept change: a rewind to a
/// point before the later change, and a history, begin with that version.
#[test]
fn a_file_changed_after_the_base_starts_from_its_kept_change() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), store_options(&clock)).unwrap();
    let f = file(1);
    let kept = store
        .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, 0))])
        .unwrap()
        .first;
    for i in 0..200u64 {
        clock.advance(1000);
        let g = file(10 + i % 20);
        store
            .append(vec![change(g.clone(), EventKind::Rated, seed_like(&g, i))])
            .unwrap();
    }
    let a = store
        .retain_now(&retention(None))
        .unwrap()
        .expect("an advance");
    assert!(kept <= a.base, "{a:?}");
    let later = store
        .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, 1))])
        .unwrap()
        .first;
    assert_eq!(store.latest_version(&f).unwrap(), Some(later));
    let start = store.file_start(&f).unwrap().expect("a base");
    assert_eq!(start.version, Some(kept));
}

/// An import of only a base (its line and the kept changes, no record after them) leaves an
/// index with kept records and no location yet: reopened, the log goes on after the base and
/// finds what is appended.
#[test]
fn records_appended_after_an_imported_base_alone_are_found_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let source = Store::open(&tmp.path().join("source"), store_options(&clock)).unwrap();
    for i in 0..200u64 {
        clock.advance(1000);
        let f = file(i % 20);
        source
            .append(vec![change(f.clone(), EventKind::Rated, seed_like(&f, i))])
            .unwrap();
    }
    let a = source
        .retain_now(&retention(None))
        .unwrap()
        .expect("an advance");
    let mut export = Vec::new();
    source.export(Seq(1), &mut export).unwrap();
    let lines = 1 + a.kept as usize;
    let base_alone: Vec<u8> = export
        .split_inclusive(|b| *b == b'\n')
        .take(lines)
        .flatten()
        .copied()
        .collect();
    let dir = tmp.path().join("copy");
    let copy = Store::open(&dir, store_options(&clock)).unwrap();
    copy.import(&base_alone[..], |_| {}).unwrap();
    assert_eq!(copy.last_seq(), Some(a.base));
    drop(copy);
    let copy = Store::open(&dir, store_options(&clock)).unwrap();
    let f = file(1);
    let next = copy
        .append(vec![change(
            f.clone(),
            EventKind::Rated,
            seed_like(&f, 999),
        )])
        .unwrap()
        .first;
    assert_eq!(next, Seq(a.base.0 + 1));
    assert_eq!(copy.snapshot(next).unwrap(), Some(seed_like(&f, 999)));
    assert_eq!(copy.latest_version(&f).unwrap(), Some(next));
    drop(copy);
    let copy = Store::open(&dir, store_options(&clock)).unwrap();
    assert_eq!(copy.snapshot(next).unwrap(), Some(seed_like(&f, 999)));
}
