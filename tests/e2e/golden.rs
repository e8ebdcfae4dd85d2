//! `cbctl history` and `rewind` on a file with a known story, compared with golden files
//! (`tests/e2e/golden/`; after an intended change of output, regenerate them with
//! `UPDATE_EXPECT=1 cargo test -p cb-cli --test e2e golden` and review the diff).
//!
//! The story is written straight into a data dir with fixed times, the way the daemon
//! would have written it: every record is folded by the core as it is appended, ticks come
//! exactly at the core's deadlines, and each outcome carries the digest of what the core
//! decided to send. So the output is the same on every run and every machine, and the same
//! log must also replay clean.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cb_core::{
    render, Attempt, AttemptReport, Callback, CallbackName, Core, Effect, EventKind, FileId,
    FileKey, Outcome, ProjectId, Record, RecordKind, Seq, Snapshot, Timestamp,
};
use cb_store::{Durability, Store, StoreOptions};
use expect_test::expect_file;
use serde_json::Value;

use crate::cbctl::cbctl;

/// 2026-11-23T09:00:00Z.
const T0: u64 = 1_795_424_400_000;

/// Appends records the way the daemon's driver does, at times the story chooses.
struct Story {
    store: Store,
    core: Core,
    at: Timestamp,
    started: Vec<Attempt>,
    snapshots: HashMap<Seq, Snapshot>,
}

impl Story {
    fn new(dir: &Path) -> Story {
        let store = Store::open(
            dir,
            StoreOptions {
                durability: Durability::Buffered,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        Story {
            store,
            core: Core::new(),
            at: Timestamp(T0),
            started: Vec::new(),
            snapshots: HashMap::new(),
        }
    }

    fn push(&mut self, kind: RecordKind, body: Option<Snapshot>) -> Seq {
        let record = Record {
            seq: self.store.next_seq(),
            at: self.at,
            kind,
        };
        let seq = record.seq;
        if let Some(b) = &body {
            self.snapshots.insert(seq, b.clone());
        }
        self.store
            .append_stamped(vec![(record.clone(), body)])
            .unwrap();
        let mut effects = Vec::new();
        self.core.apply(&record, &mut effects);
        for e in effects {
            match e {
                Effect::StartAttempt(a) => self.started.push(a),
                Effect::DisableCallback { machine, cause } => {
                    self.push(RecordKind::CallbackDisabled { machine, cause }, None);
                }
                Effect::WakeAt { .. } => {}
            }
        }
        seq
    }

    /// Moves time to `T0 + ms`, ticking at every deadline passed on the way.
    fn at(&mut self, ms: u64) {
        let to = Timestamp(T0 + ms);
        while let Some(due) = self.core.next_deadline().filter(|d| *d <= to) {
            self.at = due.max(self.at);
            self.push(RecordKind::Ticked, None);
        }
        self.at = to;
    }

    fn put(&mut self, name: &str, json: &str) {
        self.push(
            RecordKind::CallbackPut {
                project: project(),
                name: CallbackName::new(name).unwrap(),
                callback: Arc::new(Callback::from_json(json).unwrap()),
            },
            None,
        );
    }

    fn change(&mut self, id: &str, event: EventKind, fields: &[(&str, &str)]) -> Seq {
        let snapshot = Snapshot::from_pairs(fields.iter().copied()).unwrap();
        self.push(
            RecordKind::ChangeAppended {
                file: file(id),
                event,
                callbacks: None,
            },
            Some(snapshot),
        )
    }

    /// The outcome of the started attempt of `callback` for file `id`, with the digest of
    /// exactly what the core decided to send.
    fn finish(
        &mut self,
        id: &str,
        callback: &str,
        outcome: Outcome,
        latency_ms: u32,
        detail: &str,
    ) {
        let i = self
            .started
            .iter()
            .position(|a| {
                a.machine.file.file_id.as_str() == id && a.machine.callback.to_string() == callback
            })
            .unwrap_or_else(|| panic!("no attempt of {callback} for {id} in flight"));
        let a = self.started.remove(i);
        let digest = render(&self.snapshots[&a.version], &a.callback).digest();
        self.push(
            RecordKind::AttemptFinished(AttemptReport {
                machine: a.machine,
                delivery: a.delivery,
                attempt: a.attempt,
                version: a.version,
                outcome,
                latency_ms,
                digest,
                detail: detail.to_owned(),
            }),
            None,
        );
    }
}

fn project() -> ProjectId {
    ProjectId::new("newzulu").unwrap()
}

fn file(id: &str) -> FileKey {
    FileKey {
        project: project(),
        file_id: FileId::new(id).unwrap(),
    }
}

fn ok() -> Outcome {
    Outcome::Delivered { status: 200 }
}

/// File 556114's story, beside another file's: two changes coalesced into one delivery per
/// callback; a 503 retried and delivered; a configuration change; a third change whose GET
/// callback answers 410 and is disabled; an operator's redeliver. Returns the seq of the
/// second change.
fn write_story(dir: &Path) -> Seq {
    let mut s = Story::new(dir);
    s.put(
        "site",
        r#"{"url":"https://cms.example.com/cb","window_secs":60,"backoff_secs":[30],"retry_for_secs":3600}"#,
    );
    s.put(
        "crm",
        r#"{"url":"https://crm.example.com/hook","method":"GET","fields":["mediaid=id","status","title"],"window_secs":60}"#,
    );
    s.at(10_000);
    let base = [
        ("id", "556114"),
        ("title", "Sunset over Kits"),
        ("status", "1"),
        ("rating", "0"),
    ];
    s.change("556114", EventKind::Uploaded, &base);
    s.at(20_000);
    let second = s.change(
        "556114",
        EventKind::Rated,
        &[
            ("id", "556114"),
            ("title", "Sunset over Kits"),
            ("status", "3"),
            ("rating", "4"),
        ],
    );
    s.at(25_000);
    s.change(
        "777",
        EventKind::Rated,
        &[("id", "777"), ("title", "Other"), ("status", "3")],
    );
    s.at(70_120);
    s.finish(
        "556114",
        "site",
        Outcome::Status {
            status: 503,
            retry_after_secs: None,
        },
        120,
        "HTTP 503 Service Unavailable: down for maintenance",
    );
    s.finish("556114", "crm", ok(), 80, "");
    s.at(85_050);
    s.finish("777", "site", ok(), 50, "");
    s.finish("777", "crm", ok(), 50, "");
    // The retry falls due 30 s after the 503, less its jitter: 09:01:38.530.
    s.at(98_625);
    s.finish("556114", "site", ok(), 95, "");
    s.at(200_000);
    s.put(
        "site",
        r#"{"url":"https://cms.example.com/cb","window_secs":30,"backoff_secs":[30],"retry_for_secs":3600}"#,
    );
    s.at(300_000);
    s.change(
        "556114",
        EventKind::Moderated,
        &[
            ("id", "556114"),
            ("title", "Sunset over Kitsilano"),
            ("status", "3"),
            ("rating", "4"),
        ],
    );
    s.at(330_070);
    s.finish("556114", "site", ok(), 70, "");
    s.at(360_030);
    s.finish(
        "556114",
        "crm",
        Outcome::Status {
            status: 410,
            retry_after_secs: None,
        },
        30,
        "HTTP 410 Gone",
    );
    s.at(400_000);
    s.push(
        RecordKind::RedeliverRequested {
            file: file("556114"),
            callback: Some(cb_core::CallbackRef::parse("site").unwrap()),
            version: s.store.latest_version(&file("556114")).unwrap(),
        },
        None,
    );
    s.at(400_100);
    s.finish("556114", "site", ok(), 60, "");
    assert!(s.started.is_empty(), "every attempt has its outcome");
    s.store.sync().unwrap();
    second
}

#[test]
fn history_and_rewind_of_a_known_story_match_the_golden_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let second = write_story(&dir);
    let dir = dir.as_path();

    let run = |args: &[&str]| {
        let (code, out, err) = cbctl(dir, args);
        assert_eq!(code, 0, "cbctl {args:?}: {err}");
        out
    };
    expect_file!["golden/history-556114.txt"].assert_eq(&run(&["history", "newzulu/556114"]));
    let second = second.0.to_string();
    expect_file!["golden/rewind-556114-second-change.txt"].assert_eq(&run(&[
        "rewind",
        "newzulu/556114",
        "--to",
        &second,
    ]));
    // Just after the 503: the site is retrying, the crm has its delivery.
    expect_file!["golden/rewind-556114-after-503.txt"].assert_eq(&run(&[
        "rewind",
        "newzulu/556114",
        "--to",
        "2026-11-23T09:01:10.500Z",
    ]));
    // The JSON forms carry the same story.
    let history: Value =
        serde_json::from_str(&run(&["history", "newzulu/556114", "--json"])).unwrap();
    let outcomes: Vec<(&str, &str)> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "attempt")
        .map(|s| {
            (
                s["callback"].as_str().unwrap(),
                s["class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("site", "5xx"),
            ("crm", "delivered"),
            ("site", "delivered"),
            ("site", "delivered"),
            ("crm", "gone"),
            ("site", "delivered"),
        ]
    );

    // The same log replays clean, whole and for the one file.
    for args in [
        &["replay", "--json"][..],
        &["replay", "--json", "--file", "newzulu/556114"][..],
    ] {
        let (code, out, err) = cbctl(dir, args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["divergences"], serde_json::json!([]), "{args:?}");
        assert_eq!(v["in_flight_at_end"], 0, "{args:?}");
    }
    let (_, out, _) = cbctl(dir, &["replay", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"], 2);
    assert_eq!(v["callbacks"], 2);
    // 556114: site 3 deliveries (coalesced pair, third change, redeliver), crm 2; 777: 2.
    assert_eq!(v["deliveries"], 7);
    assert_eq!(v["attempts_started"], 8);
    assert_eq!(
        v["outcomes"],
        serde_json::json!({"delivered": 6, "5xx": 1, "gone": 1})
    );
    let (_, out, _) = cbctl(dir, &["replay", "--json", "--file", "newzulu/556114"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(v["deliveries"], 5);
    assert_eq!(v["attempts_started"], 6);
}
