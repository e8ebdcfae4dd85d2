//! Coalescing, many files, retries, abandon, redeliver.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{snapshot, Cbd, Receiver, Reply};

fn line(project: &str, file_id: &str, counter: usize) -> Value {
    json!({"project": project, "file_id": file_id, "event": "rated", "file": snapshot(file_id, counter)})
}

/// 1000 changes to one file inside a 2 s window → exactly one POST, carrying the last
/// snapshot as well-formed XML, `cb-file-version` = the last change's seq.
#[test]
fn coalescing_sends_one_request_with_the_last_snapshot() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "newzulu",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 2}),
    );
    let mut last = 0;
    let mut counter = 0;
    for _ in 0..10 {
        let lines: Vec<Value> = (0..100)
            .map(|_| {
                counter += 1;
                line("newzulu", "556114", counter)
            })
            .collect();
        last = cbd.batch(&lines).1;
    }
    receiver.wait_for_count(1, Duration::from_secs(10));
    // One more window: nothing else may arrive.
    std::thread::sleep(Duration::from_millis(2500));
    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly one request");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/cb");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/xml"));
    assert_eq!(r.version(), last);
    assert_eq!(r.field("counter").as_deref(), Some("1000"));
    assert_eq!(r.field("user_firstname").as_deref(), Some("エヴァート"));
    assert!(r.header("webhook-id").is_some());
    let m = cbd.machine("newzulu", "556114", "site");
    assert_eq!(m["state"], "sent", "{m}");
    assert_eq!(m["delivered_version"], last);
}

/// 10,000 changes over 1,000 files → each file's final snapshot once, over a handful of
/// persistent connections.
#[test]
fn many_files_each_get_their_final_snapshot_over_few_connections() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 2}),
    );
    let mut latest: HashMap<String, (u64, usize)> = HashMap::new();
    let mut counter = 0;
    for _ in 0..10 {
        let mut lines = Vec::new();
        let mut files = Vec::new();
        for f in 0..1000 {
            counter += 1;
            let id = format!("f{f}");
            lines.push(line("p", &id, counter));
            files.push((id, counter));
        }
        let (first, _) = cbd.batch(&lines);
        for (i, (id, c)) in files.into_iter().enumerate() {
            latest.insert(id, (first + i as u64, c));
        }
    }
    receiver.wait_for_count(1000, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(2500));
    let got = receiver.received();
    let mut per_file: HashMap<String, Vec<&crate::support::Received>> = HashMap::new();
    for r in &got {
        per_file.entry(r.field("id").unwrap()).or_default().push(r);
    }
    assert_eq!(per_file.len(), 1000);
    for (id, reqs) in &per_file {
        assert_eq!(reqs.len(), 1, "file {id}: one delivery per window");
        let (version, counter) = latest[id];
        assert_eq!(reqs[0].version(), version, "file {id}");
        assert_eq!(reqs[0].field("counter").unwrap(), counter.to_string());
    }
    let connections = receiver.connections();
    let used: std::collections::HashSet<usize> = got.iter().map(|r| r.connection).collect();
    eprintln!(
        "{} deliveries over {} connections ({connections} opened)",
        got.len(),
        used.len()
    );
    // The per-origin bound (16 in flight) sets the scale; the pool opens a few more when a
    // request takes a freed slot before its connection is back in the pool.
    assert!(
        used.len() <= 32,
        "{} connections carried 1000 requests",
        used.len()
    );
    assert!(
        connections <= 32,
        "{connections} connections opened for 1000 requests"
    );
}

/// 500, then a timeout, then 200 with `backoff_secs: [1]` → three attempts, `sent`, the
/// outcomes in the history.
#[test]
fn retries_until_delivered() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(500, vec![]), Reply::Hang, Reply::ok()]);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1, "leading": true, "timeout_secs": 1, "backoff_secs": [1]}),
    );
    let v = cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(3, Duration::from_secs(15));
    cbd.wait_for("sent", Duration::from_secs(5), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "webhook-id stable across retries: {ids:?}"
    );
    assert!(got.iter().all(|r| r.version() == v));
    let history = cbd.get("/v1/files/p/1/history");
    let outcomes: Vec<String> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "attempt")
        .map(|s| s["class"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["5xx", "timeout", "delivered"]);
}

/// A receiver that always fails, `retry_for_secs: 3` → abandoned; a new change restarts
/// delivery; a redeliver sends again.
#[test]
fn abandon_then_new_change_then_redeliver() {
    let receiver = Receiver::answering(Reply::Status(503, vec![]));
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1, "leading": true, "backoff_secs": [1], "retry_for_secs": 3}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    // Between failures the status lists the machine as retrying, with the count.
    cbd.wait_for("listed as retrying", Duration::from_secs(10), || {
        let status = cbd.get("/v1/status");
        status["retrying"][0]["file"] == "p/1" && status["machines"]["retrying"] == 1
    });
    cbd.wait_for("abandoned", Duration::from_secs(15), || {
        cbd.machine("p", "1", "site")["state"] == "abandoned"
    });
    let failed = receiver.count();
    assert!(
        (3..=6).contains(&failed),
        "{failed} attempts in 3 s with 1 s backoff"
    );
    let status = cbd.get("/v1/status");
    assert_eq!(status["abandoned"][0]["file"], "p/1", "{status}");
    assert_eq!(status["retrying"], json!([]), "{status}");

    receiver.set_default(Reply::ok());
    let v2 = cbd.change("p", "1", "moderated", snapshot("1", 2));
    cbd.wait_for("sent after a new change", Duration::from_secs(10), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
    assert_eq!(receiver.received().last().unwrap().version(), v2);

    let before = receiver.count();
    let (status, body) = cbd.json("POST", "/v1/files/p/1/redeliver?callback=site", None);
    assert_eq!(status, 202, "{body}");
    receiver.wait_for_count(before + 1, Duration::from_secs(5));
    let r = receiver.received().last().unwrap().clone();
    assert_eq!(r.version(), v2);
    assert_eq!(r.field("counter").as_deref(), Some("2"));
    let (status, _) = cbd.json("POST", "/v1/files/p/1/redeliver?callback=nope", None);
    assert_eq!(status, 404);
    let (status, _) = cbd.json("POST", "/v1/files/p/404/redeliver", None);
    assert_eq!(status, 404);
}
