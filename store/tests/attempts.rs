//! Attempt lists (`Store::attempts`): every filter, paged to the end, answers exactly the
//! attempts a walk over the whole log keeps, newest first — from the index's tails, from
//! sled after a reopen, and from an index held in memory.

mod support;

use cb_core::{
    AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, EventKind, FileId, FileKey,
    MachineKey, Outcome, OutcomeClass, ProjectId, Record, RecordKind, Seq, Timestamp,
};
use cb_store::{AttemptQuery, AttemptsOf, Durability, Input, Store};
use support::*;

const OUTCOMES: [Outcome; 7] = [
    Outcome::Delivered { status: 200 },
    Outcome::Status {
        status: 503,
        retry_after_secs: None,
    },
    Outcome::Status {
        status: 404,
        retry_after_secs: None,
    },
    Outcome::Timeout,
    Outcome::Connect,
    Outcome::Closed,
    Outcome::Status {
        status: 410,
        retry_after_secs: None,
    },
];

fn projects() -> [ProjectId; 2] {
    [
        ProjectId::new("acme").unwrap(),
        ProjectId::new("ac").unwrap(),
    ]
}

fn callbacks() -> [CallbackRef; 3] {
    [
        CallbackRef::Project(CallbackName::new("site").unwrap()),
        CallbackRef::Project(CallbackName::new("site2").unwrap()),
        CallbackRef::File(CallbackName::new("0").unwrap()),
    ]
}

fn key(p: usize, f: u64) -> FileKey {
    FileKey::new(
        projects()[p].clone(),
        FileId::new(&format!("f{f}")).unwrap(),
    )
}

/// Appends `n` records, most of them attempts spread over two projects (one's id a prefix
/// of the other's), three callbacks, six files and six outcomes; time moves on by 0–2 s.
fn fill(store: &Store, clock: &VirtualClock, n: u64) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let r = cb_store::synthetic::xorshift(&mut x);
        clock.advance(r % 3 * 1000);
        let file = key((r >> 8) as usize % 2, (r >> 12) % 6);
        let input = if r.is_multiple_of(5) {
            change(file.clone(), EventKind::Rated, seed_like(&file, i))
        } else {
            Input::Record(RecordKind::AttemptFinished(AttemptReport {
                machine: MachineKey {
                    file,
                    callback: callbacks()[(r >> 20) as usize % 3].clone(),
                },
                delivery: DeliveryId(Seq(1)),
                attempt: 1,
                version: Seq(1),
                outcome: OUTCOMES[(r >> 24) as usize % OUTCOMES.len()],
                latency_ms: 5,
                digest: Digest::of(b"x"),
                detail: String::new(),
            }))
        };
        store.append(vec![input]).unwrap();
    }
}

/// What a walk over the whole log keeps for `query` (its limit and cursor aside).
fn walked(store: &Store, query: &AttemptQuery) -> Vec<Seq> {
    let mut seqs: Vec<Seq> = store
        .records(Seq(1))
        .map(Result::unwrap)
        .filter(|r| keeps(r, query))
        .map(|r| r.seq)
        .collect();
    seqs.reverse();
    seqs
}

fn keeps(record: &Record, q: &AttemptQuery) -> bool {
    let RecordKind::AttemptFinished(a) = &record.kind else {
        return false;
    };
    let whose = match &q.of {
        AttemptsOf::All => true,
        AttemptsOf::Project(p, c) => {
            a.machine.file.project == *p && c.as_ref().is_none_or(|c| *c == a.machine.callback)
        }
        AttemptsOf::File(f, c) => {
            a.machine.file == *f && c.as_ref().is_none_or(|c| *c == a.machine.callback)
        }
    };
    whose
        && q.class.is_none_or(|c| c == a.outcome.outcome_class())
        && q.since.is_none_or(|t| record.at >= t)
        && q.until.is_none_or(|t| record.at <= t)
}

/// Every page of `query`, followed to the end.
fn paged(store: &Store, query: &AttemptQuery) -> Vec<Seq> {
    let mut q = query.clone();
    let mut all = Vec::new();
    loop {
        let page = store.attempts(&q).unwrap();
        assert!(page.records.len() <= q.limit);
        all.extend(page.records.iter().map(|r| r.seq));
        if !page.more {
            return all;
        }
        q.before = Some(page.records.last().expect("more after a full page").seq);
    }
}

fn queries(first_at: Timestamp, last_at: Timestamp) -> Vec<AttemptQuery> {
    let [acme, ac] = projects();
    let [site, _, file0] = callbacks();
    let mid = Timestamp((first_at.0 + last_at.0) / 2);
    let base = AttemptQuery {
        of: AttemptsOf::All,
        class: None,
        since: None,
        until: None,
        before: None,
        limit: 7,
    };
    let mut qs = Vec::new();
    let ofs = [
        AttemptsOf::All,
        AttemptsOf::Project(acme.clone(), None),
        AttemptsOf::Project(ac.clone(), None),
        AttemptsOf::Project(acme.clone(), Some(site.clone())),
        AttemptsOf::Project(ac, Some(file0.clone())),
        AttemptsOf::File(key(0, 3), None),
        AttemptsOf::File(key(1, 2), Some(site)),
        AttemptsOf::Project(ProjectId::new("nobody").unwrap(), None),
    ];
    for of in ofs {
        for class in [None, Some(OutcomeClass::Server), Some(OutcomeClass::Gone)] {
            qs.push(AttemptQuery {
                of: of.clone(),
                class,
                ..base.clone()
            });
        }
        qs.push(AttemptQuery {
            of: of.clone(),
            since: Some(mid),
            ..base.clone()
        });
        qs.push(AttemptQuery {
            of: of.clone(),
            until: Some(mid),
            class: Some(OutcomeClass::Delivered),
            limit: 1000,
            ..base.clone()
        });
        qs.push(AttemptQuery {
            of,
            since: Some(Timestamp(mid.0 - 20_000)),
            until: Some(Timestamp(mid.0 + 20_000)),
            limit: 3,
            ..base.clone()
        });
    }
    qs
}

fn check_every_query(store: &Store) {
    let first_at = store.record(Seq(1)).unwrap().unwrap().at;
    let last_at = store.last_record().unwrap().unwrap().at;
    for q in queries(first_at, last_at) {
        let expected = walked(store, &q);
        assert_eq!(paged(store, &q), expected, "{q:?}");
        let first = store.attempts(&q).unwrap();
        assert_eq!(
            first.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            expected.iter().copied().take(q.limit).collect::<Vec<_>>()
        );
        assert_eq!(first.more, expected.len() > q.limit, "{q:?}");
    }
}

#[test]
fn every_filter_pages_exactly_what_a_walk_keeps_before_and_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    // Past one location chunk (4096), so both sled and the tails answer.
    fill(&store, &clock, 5000);
    check_every_query(&store);
    drop(store);
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    check_every_query(&store);
    fill(&store, &clock, 300);
    check_every_query(&store);
}

#[test]
fn an_index_rebuilt_from_the_segments_lists_the_same_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    fill(&store, &clock, 1500);
    drop(store);
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("index-"))
        {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    check_every_query(&store);
}

#[test]
fn a_cursor_past_every_attempt_and_an_empty_window_answer_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_700_000_000_000);
    let store = Store::open(tmp.path(), options(&clock, Durability::Sync)).unwrap();
    let q = AttemptQuery {
        of: AttemptsOf::All,
        class: None,
        since: None,
        until: None,
        before: None,
        limit: 10,
    };
    assert!(store.attempts(&q).unwrap().records.is_empty());
    fill(&store, &clock, 50);
    let none = store
        .attempts(&AttemptQuery {
            before: Some(Seq(1)),
            ..q.clone()
        })
        .unwrap();
    assert!(none.records.is_empty() && !none.more);
    let none = store
        .attempts(&AttemptQuery {
            since: Some(Timestamp(clock.now().0 + 1)),
            ..q.clone()
        })
        .unwrap();
    assert!(none.records.is_empty());
    let none = store
        .attempts(&AttemptQuery {
            until: Some(Timestamp(1)),
            ..q
        })
        .unwrap();
    assert!(none.records.is_empty());
}
