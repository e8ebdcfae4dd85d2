//! The log's contract: what is appended reads back identical and in order, numbered densely,
//! stamped monotonically, indexed per file, across reopen and concurrent appenders; damage
//! and misuse get typed errors.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use cb_core::{FileKey, Record, RecordKind, Seq, Snapshot, Timestamp};
use cb_store::{Durability, Error, Input, Store};
use proptest::prelude::*;
use support::*;

/// What the store should hold after `chunks` were appended one call each, the clock moved
/// by `steps[i]` ms before call i (sometimes backwards).
fn expected(chunks: &[Vec<Input>], stamps: &[Timestamp]) -> Vec<(Record, Option<Snapshot>)> {
    let mut out = Vec::new();
    let mut latest: HashMap<FileKey, Seq> = HashMap::new();
    for (chunk, at) in chunks.iter().zip(stamps) {
        for input in chunk {
            let seq = Seq(out.len() as u64 + 1);
            let (kind, body) = match input.clone() {
                Input::Change(c) => {
                    latest.insert(c.file.clone(), seq);
                    (
                        RecordKind::ChangeAppended {
                            file: c.file,
                            event: c.event,
                            callbacks: c.callbacks,
                        },
                        Some(c.snapshot),
                    )
                }
                Input::Record(RecordKind::RedeliverRequested { file, callback, .. }) => {
                    let version = latest.get(&file).copied();
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
            out.push((Record { seq, at: *at, kind }, body));
        }
    }
    out
}

fn read_all(store: &Store) -> Vec<(Record, Option<Snapshot>)> {
    store
        .records(Seq(1))
        .map(|r| {
            let r = r.unwrap();
            let body = store.snapshot(r.seq).unwrap();
            (r, body)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of inputs, appended in any chunking, reads back identical and in
    /// order — before and after a reopen — with dense numbers, monotonic stamps, the
    /// redelivers' versions filled in, and a per-file index that agrees with a scan.
    #[test]
    fn round_trip(
        chunks in prop::collection::vec(prop::collection::vec(input_strategy(), 1..6), 1..12),
        steps in prop::collection::vec(-3_000i64..3_000, 12),
        from_pick in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let clock = VirtualClock::at(1_000_000);
        let mut stamps = Vec::new();
        {
            let store = open(tmp.path(), &clock);
            let mut last = Timestamp(0);
            for (chunk, step) in chunks.iter().zip(&steps) {
                clock.set((clock.now().0 as i64 + step) as u64);
                let appended = store.append(chunk.clone()).unwrap();
                prop_assert_eq!(appended.count, chunk.len() as u64);
                prop_assert!(appended.at >= last, "stamps never go backwards");
                last = appended.at;
                stamps.push(appended.at);
            }
        }
        let want = expected(&chunks, &stamps);
        let store = open(tmp.path(), &clock);
        let got = read_all(&store);
        prop_assert_eq!(&got, &want);
        // Reading from any point, mid-chunk included, gives the same tail.
        let from = 1 + from_pick.index(want.len()) as u64;
        let tail: Vec<Record> = store.records(Seq(from)).map(|r| r.unwrap()).collect();
        let want_tail: Vec<Record> = want[from as usize - 1..].iter().map(|(r, _)| r.clone()).collect();
        prop_assert_eq!(tail, want_tail);
        let one: Vec<Record> = store.records_between(Seq(from), Seq(from)).map(|r| r.unwrap()).collect();
        prop_assert_eq!(one, vec![want[from as usize - 1].0.clone()]);
        prop_assert_eq!(store.next_seq(), Seq(want.len() as u64 + 1));

        for f in 0..4 {
            let key = file(f);
            let scan: Vec<Seq> = want
                .iter()
                .filter(|(r, _)| match r.scope() {
                    cb_core::Scope::File(k) => *k == key,
                    cb_core::Scope::Project(p) => *p == key.project,
                    cb_core::Scope::Global => false,
                })
                .map(|(r, _)| r.seq)
                .collect();
            prop_assert_eq!(store.file_seqs(&key).unwrap(), scan);
            let latest = want
                .iter()
                .rev()
                .find(|(r, _)| matches!(&r.kind, RecordKind::ChangeAppended { file, .. } if *file == key))
                .map(|(r, _)| r.seq);
            prop_assert_eq!(store.latest_version(&key).unwrap(), latest);
        }

        // The NDJSON interchange carries the same log into a new dir.
        let mut text = Vec::new();
        prop_assert_eq!(store.export(Seq(1), &mut text).unwrap(), want.len() as u64);
        let other = tempfile::tempdir().unwrap();
        let copy = open(other.path(), &VirtualClock::default());
        prop_assert_eq!(copy.import(&text[..], |_| {}).unwrap(), want.len() as u64);
        prop_assert_eq!(read_all(&copy), want);
    }
}

#[test]
fn concurrent_appenders_get_dense_numbers_and_their_own_records() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(5);
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..50u64 {
                    let key = file(t);
                    let n = 1 + (i % 3);
                    let inputs = (0..n)
                        .map(|j| change(key.clone(), EVENTS[0], seed_like(&key, i * 10 + j)))
                        .collect();
                    let a = store.append(inputs).unwrap();
                    assert_eq!(a.count, n);
                    mine.extend(a.seqs().zip((0..n).map(move |j| i * 10 + j)));
                }
                (t, mine)
            })
        })
        .collect();
    let mut all = Vec::new();
    for th in threads {
        let (t, mine) = th.join().unwrap();
        let key = file(t);
        for (seq, n) in &mine {
            assert_eq!(store.snapshot(*seq).unwrap(), Some(seed_like(&key, *n)));
            let r = store.record(*seq).unwrap().unwrap();
            assert!(matches!(r.kind, RecordKind::ChangeAppended { ref file, .. } if *file == key));
        }
        all.extend(mine.into_iter().map(|(s, _)| s));
    }
    all.sort();
    let dense: Vec<Seq> = (1..=all.len() as u64).map(Seq).collect();
    assert_eq!(all, dense, "every number handed out once, none skipped");
    assert_eq!(store.last_seq(), Some(Seq(all.len() as u64)));
}

#[test]
fn numbering_and_time_continue_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(10_000);
    {
        let store = open(tmp.path(), &clock);
        store
            .append(vec![Input::Record(RecordKind::Ticked)])
            .unwrap();
    }
    clock.set(500); // the wall clock went backwards across the restart
    let store = open(tmp.path(), &clock);
    let a = store
        .append(vec![Input::Record(RecordKind::Ticked)])
        .unwrap();
    assert_eq!(a.first, Seq(2));
    assert_eq!(a.at, Timestamp(10_000));
}

#[test]
fn a_change_without_its_snapshot_and_an_empty_append_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let err = store
        .append(vec![Input::Record(RecordKind::ChangeAppended {
            file: file(0),
            event: EVENTS[0],
            callbacks: None,
        })])
        .unwrap_err();
    assert!(matches!(err, Error::Rejected(_)), "{err}");
    assert!(matches!(store.append(vec![]), Err(Error::Rejected(_))));
    assert_eq!(store.last_seq(), None, "nothing appended");
}

#[test]
fn stamped_records_must_continue_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let tick = |seq, at| {
        (
            Record {
                seq: Seq(seq),
                at: Timestamp(at),
                kind: RecordKind::Ticked,
            },
            None,
        )
    };
    let err = store.append_stamped(vec![tick(2, 10)]).unwrap_err();
    assert!(
        err.to_string().contains("next sequence number is 1"),
        "{err}"
    );
    store
        .append_stamped(vec![tick(1, 10), tick(2, 20)])
        .unwrap();
    let err = store.append_stamped(vec![tick(3, 19)]).unwrap_err();
    assert!(
        err.to_string().contains("before the previous record"),
        "{err}"
    );
    let err = store
        .append_stamped(vec![(
            tick(3, 20).0,
            Some(Snapshot::builder().finish().unwrap()),
        )])
        .unwrap_err();
    assert!(err.to_string().contains("needs its snapshot"), "{err}");
    assert_eq!(store.last_seq(), Some(Seq(2)));
}

#[test]
fn a_locked_data_dir_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let _held = open(tmp.path(), &VirtualClock::default());
    let t0 = std::time::Instant::now();
    let err = Store::open(tmp.path(), Default::default())
        .err()
        .expect("refused");
    assert!(t0.elapsed() < std::time::Duration::from_millis(500));
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("is cbd running?"));
}

#[test]
fn the_commit_hook_sees_every_record_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let options = cb_store::StoreOptions {
        durability: Durability::Buffered,
        on_commit: Some(Box::new(move |records: &[Record]| {
            sink.lock().unwrap().extend(records.iter().map(|r| r.seq));
        })),
        ..Default::default()
    };
    let store = Store::open(tmp.path(), options).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    store
                        .append(vec![Input::Record(RecordKind::Ticked)])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(store);
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, (1..=400).map(Seq).collect::<Vec<_>>());
}

#[test]
fn large_groups_span_chunks_and_big_bodies_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), options(&VirtualClock::at(1), Durability::Sync)).unwrap();
    // 300 seed-sized changes in one call: one group.
    let inputs: Vec<Input> = (0..300)
        .map(|i| change(file(i % 7), EVENTS[1], seed_like(&file(i % 7), i)))
        .collect();
    let a = store.append(inputs).unwrap();
    // A body of ~800 KB: bigger than the test's segments, so it gets one of its own.
    let mut b = Snapshot::builder();
    b.push("id", "big").unwrap();
    b.push("description", &"エヴァート ".repeat(40_000))
        .unwrap();
    let big = b.finish().unwrap();
    let b = store
        .append(vec![change(file(1), EVENTS[0], big.clone())])
        .unwrap();
    drop(store);
    let store = open(tmp.path(), &VirtualClock::default());
    for (i, seq) in a.seqs().enumerate() {
        let i = i as u64;
        assert_eq!(
            store.snapshot(seq).unwrap(),
            Some(seed_like(&file(i % 7), i))
        );
    }
    assert_eq!(store.snapshot(b.first).unwrap(), Some(big.clone()));
    // The sequential reader gives the same answers in order, backwards, and across gaps.
    let mut reader = store.snapshot_reader();
    for (i, seq) in a.seqs().enumerate() {
        let i = i as u64;
        assert_eq!(reader.get(seq).unwrap(), Some(seed_like(&file(i % 7), i)));
    }
    assert_eq!(reader.get(b.first).unwrap(), Some(big.clone()));
    assert_eq!(reader.get(a.first).unwrap(), Some(seed_like(&file(0), 0)));
    assert_eq!(reader.get(Seq(0)).unwrap(), None);
    assert_eq!(
        reader.get(Seq(b.first.0 + 1)).unwrap(),
        None,
        "past the end"
    );
    assert_eq!(store.records(Seq(1)).count(), 301);
    assert_eq!(
        store.records(Seq(150)).next().unwrap().unwrap().seq,
        Seq(150)
    );
    assert_eq!(store.latest_version(&file(1)).unwrap(), Some(b.first));
}

#[test]
fn reading_past_the_end_or_backwards_yields_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    assert_eq!(store.records(Seq(1)).count(), 0, "empty log");
    assert_eq!(store.records(Seq(0)).count(), 0);
    assert_eq!(store.record(Seq(0)).unwrap(), None);
    assert_eq!(store.snapshot(Seq(1)).unwrap(), None);
    assert_eq!(store.file_seqs(&file(0)).unwrap(), vec![]);
    assert_eq!(store.latest_version(&file(0)).unwrap(), None);
    let inputs = (0..5)
        .map(|i| change(file(i), EVENTS[0], seed_like(&file(i), i)))
        .collect();
    store.append(inputs).unwrap();
    assert_eq!(store.records(Seq(6)).count(), 0);
    assert_eq!(store.records(Seq(99)).count(), 0);
    assert_eq!(store.records_between(Seq(4), Seq(2)).count(), 0);
    assert_eq!(store.records_between(Seq(0), Seq(2)).count(), 2);
    assert_eq!(store.record(Seq(6)).unwrap(), None);
}

#[test]
fn appends_after_an_import_from_a_clock_ahead_are_not_stamped_earlier() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_000);
    let store = open(tmp.path(), &clock);
    let ahead = Record {
        seq: Seq(1),
        at: Timestamp(6_000),
        kind: RecordKind::Ticked,
    };
    store.append_stamped(vec![(ahead, None)]).unwrap();
    let a = store
        .append(vec![Input::Record(RecordKind::Ticked)])
        .unwrap();
    assert_eq!(a.at, Timestamp(6_000));
}

/// A log of 600 seed-sized changes in 12 groups (so 12 directories), with a tick after each
/// group: shared by the planned-reader property, built once.
fn planned_reader_log() -> &'static (tempfile::TempDir, u64) {
    static LOG: std::sync::OnceLock<(tempfile::TempDir, u64)> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path(), &VirtualClock::at(1));
        for g in 0..12u64 {
            let inputs: Vec<Input> = (0..50)
                .map(|i| change(file(i % 9), EVENTS[0], seed_like(&file(i % 9), g * 50 + i)))
                .collect();
            store.append(inputs).unwrap();
            store
                .append(vec![Input::Record(RecordKind::Ticked)])
                .unwrap();
        }
        let tip = store.last_seq().unwrap().0;
        (tmp, tip)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A reader told which versions come next (`expect`) reads only stretches of bodies,
    /// yet answers exactly what a lone `snapshot` read answers, through `get` and through
    /// `with_view` alike: for the planned versions in
    /// order, for versions asked for outside the plan in between, for ticks (no body) and
    /// for versions past the end — whatever the gaps between them.
    #[test]
    fn a_planned_reader_answers_like_single_reads(
        mut planned in prop::collection::vec(0u64..620, 0..120),
        strays in prop::collection::vec((any::<prop::sample::Index>(), 0u64..620), 0..8),
    ) {
        let (tmp, tip) = planned_reader_log();
        prop_assert!(*tip < 620);
        let store = Store::open(tmp.path(), cb_store::StoreOptions::default()).unwrap();
        planned.sort_unstable();
        let mut asks: Vec<u64> = planned.clone();
        for (at, v) in &strays {
            asks.insert(at.index(asks.len() + 1), *v);
        }
        let mut reader = store.snapshot_reader();
        reader.expect(planned.iter().map(|v| Seq(*v)));
        // The same asks through `with_view`, which shows the body where it was read.
        let mut viewer = store.snapshot_reader();
        viewer.expect(planned.iter().map(|v| Seq(*v)));
        for v in asks {
            let want = store.snapshot(Seq(v)).unwrap();
            prop_assert_eq!(reader.get(Seq(v)).unwrap(), want.clone(), "version {}", v);
            let seen = viewer.with_view(Seq(v), |view| view.to_snapshot()).unwrap();
            prop_assert_eq!(seen, want, "version {} seen in place", v);
        }
    }
}
