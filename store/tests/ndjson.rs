//! The NDJSON interchange: one line per kind exactly as `docs/interchange.md` shows it, and
//! imports that refuse bad input by line number and append nothing for it.

mod support;

use std::sync::Arc;

use cb_core::{
    AttemptReport, CallbackName, CallbackRef, DeliveryId, Digest, FileCallback, MachineKey,
    Outcome, RecordKind, Seq, Snapshot,
};
use cb_store::{Change, Input};
use expect_test::expect;
use support::*;

/// A small log with one record of every kind, exported.
fn export_every_kind() -> String {
    let tmp = tempfile::tempdir().unwrap();
    let clock = VirtualClock::at(1_763_888_400_000);
    let store = open(tmp.path(), &clock);
    let f = file(0);
    let site = CallbackName::new("site").unwrap();
    let mut snapshot = Snapshot::builder();
    snapshot.push("id", "556114").unwrap();
    snapshot.push("status", "3").unwrap();
    snapshot.push("title", "Test 7 : single + empty").unwrap();
    snapshot.push("user_firstname", "エヴァート").unwrap();
    let snapshot = snapshot.finish().unwrap();
    let per_file = FileCallback::validate_list(vec![serde_json::from_str(
        r#"{"url":"https://lf.example.org/hook","method":"PUT","format":"json",
            "headers":[{"name":"X-Token","value":"abc"}]}"#,
    )
    .unwrap()])
    .unwrap();
    let inputs = vec![
        Input::Record(RecordKind::CallbackPut {
            project: project(),
            name: site.clone(),
            callback: callback(r#"{"url":"https://cms.example.com/cb","window_secs":60}"#),
        }),
        Input::Change(Change {
            file: f.clone(),
            event: cb_core::EventKind::Rated,
            snapshot,
            callbacks: Some(Arc::from(per_file)),
        }),
        Input::Record(RecordKind::Ticked),
        Input::Record(RecordKind::AttemptFinished(AttemptReport {
            machine: MachineKey {
                file: f.clone(),
                callback: CallbackRef::Project(site.clone()),
            },
            delivery: DeliveryId(Seq(2)),
            attempt: 1,
            version: Seq(2),
            outcome: Outcome::Status {
                status: 503,
                retry_after_secs: Some(30),
            },
            latency_ms: 41,
            digest: Digest::of(b"<result/>"),
            detail: String::new(),
        })),
        Input::Record(RecordKind::AttemptFinished(AttemptReport {
            machine: MachineKey {
                file: f.clone(),
                callback: CallbackRef::File(CallbackName::new("0").unwrap()),
            },
            delivery: DeliveryId(Seq(2)),
            attempt: 1,
            version: Seq(2),
            outcome: Outcome::Status {
                status: 410,
                retry_after_secs: None,
            },
            latency_ms: 12,
            digest: Digest::of(b"{}"),
            detail: String::new(),
        })),
        Input::Record(RecordKind::CallbackDisabled {
            machine: MachineKey {
                file: f.clone(),
                callback: CallbackRef::File(CallbackName::new("0").unwrap()),
            },
            cause: Seq(5),
        }),
        Input::Record(RecordKind::RedeliverRequested {
            file: f.clone(),
            callback: Some(CallbackRef::Project(site.clone())),
            version: None,
        }),
        Input::Record(RecordKind::CallbackRemoved {
            project: project(),
            name: site,
        }),
    ];
    store.append(inputs).unwrap();
    let mut out = Vec::new();
    store.export(Seq(1), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn one_line_of_every_kind() {
    let text = export_every_kind();
    expect![[r#"
        {"seq":1,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"callback_put","project":"acme","name":"site","callback":{"url":"https://cms.example.com/cb","method":"POST","format":"xml","fields":null,"headers":[],"events":["all"],"window_secs":60,"leading":false,"timeout_secs":15,"retry_for_secs":172800,"backoff_secs":[5,30,120,600,1800,3600,7200],"secret":null}}
        {"seq":2,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"change","project":"acme","file_id":"556114","event":"rated","file":{"id":"556114","status":"3","title":"Test 7 : single + empty","user_firstname":"エヴァート"},"callbacks":[{"name":"0","on_success":true,"on_failure":true,"on_progress":false,"callback":{"url":"https://lf.example.org/hook","method":"PUT","format":"json","fields":null,"headers":[{"name":"X-Token","value":"abc"}],"events":["all"],"window_secs":60,"leading":false,"timeout_secs":15,"retry_for_secs":172800,"backoff_secs":[5,30,120,600,1800,3600,7200],"secret":null}}]}
        {"seq":3,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"tick"}
        {"seq":4,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"attempt","project":"acme","file_id":"556114","callback":"site","delivery":2,"attempt":1,"version":2,"outcome":{"kind":"status","status":503,"retry_after_secs":30},"latency_ms":41,"digest":"50ffdcbf61347239c3475865a3a3f04eac77fa506e3b88650298ee9d5ad00e76","detail":""}
        {"seq":5,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"attempt","project":"acme","file_id":"556114","callback":"file:0","delivery":2,"attempt":1,"version":2,"outcome":{"kind":"status","status":410},"latency_ms":12,"digest":"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","detail":""}
        {"seq":6,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"callback_disabled","project":"acme","file_id":"556114","callback":"file:0","cause":5}
        {"seq":7,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"redeliver","project":"acme","file_id":"556114","callback":"site","version":2}
        {"seq":8,"at":1763888400000,"time":"2025-11-23T09:00:00.000Z","kind":"callback_removed","project":"acme","name":"site"}
    "#]]
    .assert_eq(&text);
}

#[test]
fn import_refuses_a_bad_line_by_number_and_keeps_the_valid_prefix() {
    let text = export_every_kind();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = r#"{"seq":4,"at":1763888400000,"kind":"attempt","project":"acme"}"#;
    let broken = lines.join("\n");
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let err = store.import(broken.as_bytes(), |_| {}).unwrap_err();
    assert!(
        err.to_string().starts_with("line 4: missing field"),
        "{err}"
    );
    assert_eq!(
        store.last_seq(),
        None,
        "nothing of an import that failed early"
    );

    let gap = text.replacen("\"seq\":3,", "\"seq\":30,", 1);
    let err = store.import(gap.as_bytes(), |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 3: seq 30 does not continue the log: the next sequence number is 3"),
        "the line is named: {err}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let at = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["at"]
            .as_u64()
            .unwrap()
    };
    let earlier = lines[2].replacen(&format!("\"at\":{}", at(lines[2])), "\"at\":5", 1);
    let back: String = [lines[0], lines[1], &earlier].join("\n");
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let err = store.import(back.as_bytes(), |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 3: at 5 ms is before the line before it"),
        "{err}"
    );
}

#[test]
fn unknown_kinds_and_invalid_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    for line in [
        r#"{"seq":1,"at":5,"kind":"teleport"}"#,
        r#"{"seq":1,"at":5,"kind":"change","project":"a b","file_id":"1","event":"rated","file":{}}"#,
        r#"{"seq":1,"at":5,"kind":"change","project":"a","file_id":"1","event":"exploded","file":{}}"#,
        r#"{"seq":1,"at":5,"kind":"change","project":"a","file_id":"1","event":"rated","file":{"1x":"v"}}"#,
        r#"{"seq":1,"at":5,"kind":"attempt","project":"a","file_id":"1","callback":"x","delivery":1,"attempt":1,"version":1,"outcome":{"kind":"delivered","status":200},"latency_ms":1,"digest":"zz"}"#,
    ] {
        let err = store.import(line.as_bytes(), |_| {}).unwrap_err();
        assert!(err.to_string().starts_with("line 1:"), "{line}: {err}");
    }
    assert_eq!(store.last_seq(), None);
}

/// A change line's per-file callbacks are held to the API's list rules: two callbacks of one
/// name would leave the core to pick one by name, and more than 16 are refused at the API.
#[test]
fn import_refuses_per_file_callbacks_the_api_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let named = |name: &str| {
        let list = FileCallback::validate_list(vec![serde_json::from_str(&format!(
            r#"{{"name":"{name}","url":"https://lf.example.org/hook"}}"#
        ))
        .unwrap()])
        .unwrap();
        serde_json::to_value(&list[0]).unwrap()
    };
    let line = |callbacks: Vec<serde_json::Value>| {
        serde_json::json!({
            "seq": 1, "at": 5, "kind": "change", "project": "a", "file_id": "1",
            "event": "rated", "file": {"id": "1"}, "callbacks": callbacks,
        })
        .to_string()
    };
    let twice = line(vec![named("hook"), named("other"), named("hook")]);
    let err = store.import(twice.as_bytes(), |_| {}).unwrap_err();
    assert!(
        err.to_string().starts_with("line 1:") && err.to_string().contains("hook"),
        "{err}"
    );
    let many = line((0..17).map(|i| named(&format!("c{i}"))).collect());
    let err = store.import(many.as_bytes(), |_| {}).unwrap_err();
    assert!(
        err.to_string().starts_with("line 1:") && err.to_string().contains("16"),
        "{err}"
    );
    assert_eq!(store.last_seq(), None);
    // The same list without the repeat is taken.
    let fine = line(vec![named("hook"), named("other")]);
    assert_eq!(store.import(fine.as_bytes(), |_| {}).unwrap(), 1);
}

/// An export of an older cb's log imports as it was written: a callback URL that today's API
/// refuses (`http:///x`, which the URL standard repairs to `http://x/`) was valid then, and
/// an audit (`cbctl --server`, `export | import`) must be able to read it.
#[test]
fn import_takes_urls_an_older_cb_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &VirtualClock::default());
    let put = serde_json::json!({
        "seq": 1, "at": 5, "kind": "callback_put", "project": "a", "name": "site",
        "callback": {"url": "http:///x", "method": "POST", "format": "xml", "fields": null,
            "headers": [], "events": ["all"], "window_secs": 60, "leading": false,
            "timeout_secs": 15, "retry_for_secs": 172800,
            "backoff_secs": [5, 30, 120, 600, 1800, 3600, 7200], "secret": null},
    })
    .to_string();
    assert_eq!(store.import(put.as_bytes(), |_| {}).unwrap(), 1);
    let mut out = Vec::new();
    store.export(cb_core::Seq(1), &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains(r#""url":"http:///x""#));
}
