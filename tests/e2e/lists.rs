//! The operator's lists against a real daemon and real receivers: which deliveries are
//! failing, filtered by state, project, callback and origin, paged with a cursor, the same
//! through `cbctl` online and offline.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cbctl::cbctl;
use crate::support::{snapshot, Cbd, Receiver, Reply, TOKEN};

fn files_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["file"].as_str().unwrap(),
                d["callback"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn deliveries_list_the_failing_ones_by_state_project_callback_and_origin() {
    let failing = Receiver::answering(Reply::Status(503, vec![]));
    let ok = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    // Two projects on the healthy receiver with long windows (their machines stay
    // coalescing), one callback of project `b` on the failing one.
    for p in ["a", "b"] {
        cbd.put_callback(
            p,
            "site",
            json!({"url": ok.url("/cb"), "window_secs": 3600}),
        );
    }
    cbd.put_callback(
        "b",
        "mirror",
        json!({"url": failing.url("/m"), "window_secs": 1, "leading": true, "backoff_secs": [3600]}),
    );
    for i in 0..3 {
        cbd.change("a", &format!("{i}"), "rated", snapshot(&i.to_string(), 1));
    }
    cbd.change("b", "556114", "rated", snapshot("556114", 1));
    cbd.wait_for("the mirror retrying", Duration::from_secs(10), || {
        cbd.machine("b", "556114", "mirror")["state"] == "retrying"
    });

    // Which deliveries are failing: one, with its last outcome's detail.
    let retrying = cbd.get("/v1/deliveries?state=retrying");
    assert_eq!(files_of(&retrying), ["b/556114 mirror"], "{retrying}");
    let d = &retrying["items"][0];
    assert_eq!(d["project"], "b");
    assert_eq!(d["file_id"], "556114");
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(d["next_time"].is_string(), "{d}");
    assert_eq!(d["last_outcome"]["outcome"], "503", "{d}");
    assert!(d["last_outcome"]["detail"].is_string(), "{d}");
    assert_eq!(retrying["next"], Value::Null);

    // Each filter alone and together; the origin as scheme://host:port.
    let origin = failing.url("").trim_end_matches('/').to_owned();
    let by_origin = cbd.get(&format!("/v1/deliveries?origin={origin}"));
    assert_eq!(files_of(&by_origin), ["b/556114 mirror"], "{by_origin}");
    let by_project = cbd.get("/v1/deliveries?project=b");
    assert_eq!(
        files_of(&by_project),
        ["b/556114 mirror", "b/556114 site"],
        "in (project, callback, file) order: {by_project}"
    );
    let by_callback = cbd.get("/v1/deliveries?callback=site&state=coalescing");
    assert_eq!(
        files_of(&by_callback),
        ["a/0 site", "a/1 site", "a/2 site", "b/556114 site"],
        "{by_callback}"
    );
    let none = cbd.get("/v1/deliveries?project=a&state=retrying");
    assert_eq!(none, json!({"items": [], "next": null}));

    // Paging: one at a time, each cursor giving the next, every machine once.
    let mut seen = Vec::new();
    let mut path = "/v1/deliveries?limit=1".to_owned();
    loop {
        let page = cbd.get(&path);
        seen.extend(files_of(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/deliveries?limit=1&after={next}"),
            None => break,
        }
        assert!(seen.len() <= 5, "the pages do not end: {seen:?}");
    }
    assert_eq!(
        seen,
        [
            "a/0 site",
            "a/1 site",
            "a/2 site",
            "b/556114 mirror",
            "b/556114 site"
        ]
    );

    // Bad parameters: 400 with a sentence, never a 500.
    for (q, says) in [
        ("state=stuck", "one of coalescing"),
        ("limit=0", "from 1 to 1000"),
        ("origin=example.org", "scheme://host"),
        ("after=nonsense", "cursor"),
        ("cb=site", "unknown query parameter"),
    ] {
        let (status, body) = cbd.call("GET", &format!("/v1/deliveries?{q}"), None, None);
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(says), "{q}: {body}");
    }

    // Projects: each callback with its counts per state, and the project's totals.
    let projects = cbd.get("/v1/projects");
    assert_eq!(projects["next"], Value::Null, "{projects}");
    let a = &projects["items"][0];
    assert_eq!(a["project"], "a");
    assert_eq!(a["machines"]["coalescing"], 3, "{a}");
    let b = &projects["items"][1];
    assert_eq!(b["machines"]["coalescing"], 1, "{b}");
    assert_eq!(b["machines"]["retrying"], 1, "{b}");
    let mirror = &b["callbacks"][0];
    assert_eq!(mirror["callback"], "mirror", "{b}");
    assert_eq!(mirror["origin"], origin, "{b}");
    assert_eq!(mirror["machines"]["retrying"], 1, "{b}");
    assert_eq!(mirror["disabled_by"], Value::Null, "{b}");
    let first = cbd.get("/v1/projects?limit=1");
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    assert_eq!(first["next"], "a");
    let second = cbd.get("/v1/projects?limit=1&after=a");
    assert_eq!(second["items"][0]["project"], "b");
    assert_eq!(second["next"], Value::Null);

    // Bulk redeliver: the failing ones of a project, one record each; the receiver gets a
    // second attempt at once (the backoff was an hour). Filters that match none append none.
    let redeliver = |body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        cbd.call(
            "POST",
            "/v1/redeliver",
            Some("application/json"),
            Some(&bytes),
        )
    };
    let (status, body) = redeliver(json!({"project": "b", "since": "2100-01-01T00:00:00Z"}));
    assert_eq!(status, 202, "{body}");
    let none: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        none,
        json!({"count": 0, "first_seq": null, "last_seq": null, "more": false})
    );
    let (status, body) = redeliver(json!({"project": "a"}));
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["count"].clone()
        ),
        (202, json!(0))
    );
    let before = failing.count();
    let (status, body) =
        redeliver(json!({"project": "b", "state": "retrying", "callback": "mirror"}));
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["count"], 1, "{answer}");
    assert_eq!(answer["first_seq"], answer["last_seq"], "{answer}");
    assert_eq!(answer["more"], false, "{answer}");
    failing.wait_for_count(before + 1, Duration::from_secs(10));
    for (bad, says) in [
        (json!({"state": "retrying"}), "missing field `project`"),
        (
            json!({"project": "b", "state": "sent"}),
            "a bulk redeliver takes",
        ),
        (json!({"project": "b", "since": "yesterday"}), "RFC 3339"),
        (json!({"project": "b", "cb": "x"}), "unknown field"),
    ] {
        let (status, body) = redeliver(bad.clone());
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(says), "{bad}: {body}");
    }
    cbd.wait_for("retrying again", Duration::from_secs(10), || {
        cbd.machine("b", "556114", "mirror")["state"] == "retrying"
    });

    // A file's history a page at a time: pages cut at records, each cursor a seq, and
    // the pages together are the whole history.
    let whole = cbd.get("/v1/files/b/556114/history");
    assert_eq!(whole["next"], Value::Null, "{whole}");
    let mut steps: Vec<Value> = Vec::new();
    let mut path = "/v1/files/b/556114/history?limit=2".to_owned();
    loop {
        let page = cbd.get(&path);
        let records = page["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["seq"].is_u64())
            .count();
        assert!(records <= 2, "{page}");
        steps.extend(page["steps"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => path = format!("/v1/files/b/556114/history?limit=2&from={next}"),
            None => break,
        }
    }
    assert_eq!(&Value::from(steps), &whole["steps"]);
    let (status, body) = cbd.call("GET", "/v1/files/b/556114/history?limit=0", None, None);
    assert_eq!(status, 400, "{body}");

    // cbctl, through the server and then on the stopped daemon's data dir: the same list.
    let server = cbd.url("");
    let online = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args(["--server", &server, "deliveries", "--state", "retrying"])
        .env("CBD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(online.status.success(), "{online:?}");
    let online = String::from_utf8_lossy(&online.stdout).into_owned();
    assert!(online.starts_with("b/556114  mirror  retrying"), "{online}");
    assert!(online.contains("attempts=1  last=503"), "{online}");
    assert!(cbd.terminate().success());
    let (code, offline, err) = cbctl(&cbd.dir, &["deliveries", "--state", "retrying"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        offline.starts_with("b/556114  mirror  retrying"),
        "{offline}"
    );
    let (code, out, err) = cbctl(&cbd.dir, &["deliveries", "--limit", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(files_of(&page), ["a/0 site", "a/1 site"]);
    assert_eq!(page["next"], "a~site~1");
    let (code, out, err) = cbctl(&cbd.dir, &["projects"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("a  coalescing 3\n"), "{out}");
    assert!(out.contains("\nb  coalescing 1 · retrying 1\n"), "{out}");
    assert!(
        out.contains(&format!("  mirror  {origin}/m  retrying 1")),
        "{out}"
    );
    // Offline, the bulk redeliver appends for the daemon's next start.
    let (code, out, err) = cbctl(&cbd.dir, &["bulk-redeliver", "b", "--state", "retrying"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 redelivers appended: seq "), "{out}");
    let (code, out, err) = cbctl(&cbd.dir, &["pause", "b", "mirror"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pause of b/mirror appended: seq "), "{out}");
    let (code, _, err) = cbctl(&cbd.dir, &["pause", "b", "mirror"]);
    assert_eq!(code, 2);
    assert!(err.contains("b/mirror is already paused"), "{err}");
    let (code, out, _) = cbctl(&cbd.dir, &["projects"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("  mirror  ") && out.contains("paused (seq "),
        "{out}"
    );
    let (code, _, err) = cbctl(&cbd.dir, &["deliveries", "--state", "stuck"]);
    assert_eq!(code, 2);
    assert!(err.contains("one of coalescing"), "{err}");
}

/// Rule 8 against a real receiver: a paused callback's changes coalesce and nothing goes
/// out (a redeliver is refused with 409 `callback_paused`); the resume sends the latest
/// state once; pause and resume are records, refused with a sentence when they cannot be.
#[test]
fn a_paused_callback_holds_its_deliveries_and_the_resume_sends_the_latest_once() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1}),
    );
    let post = |path: &str| cbd.call("POST", path, None, None);
    let (status, body) = post("/v1/projects/p/callbacks/site/pause");
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/v1/projects/p/callbacks/site/pause");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already_paused"), "{body}");
    let (status, body) = post("/v1/projects/p/callbacks/nosuch/pause");
    assert_eq!(status, 404, "{body}");

    cbd.change("p", "1", "rated", snapshot("1", 1));
    let latest = cbd.change("p", "1", "moderated", snapshot("1", 2));
    // Past the window: still nothing, the delivery waits coalescing.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(receiver.count(), 0, "a paused callback sends nothing");
    assert_eq!(cbd.machine("p", "1", "site")["state"], "coalescing");
    let (status, body) = post("/v1/files/p/1/redeliver?callback=site");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("callback_paused"), "{body}");
    let projects = cbd.get("/v1/projects");
    assert!(
        projects["items"][0]["callbacks"][0]["paused_by"].is_u64(),
        "{projects}"
    );

    let (status, body) = post("/v1/projects/p/callbacks/site/resume");
    assert_eq!(status, 200, "{body}");
    receiver.wait_for_count(1, Duration::from_secs(10));
    assert_eq!(
        receiver.received()[0].version(),
        latest,
        "the latest state, once"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.count(), 1);
    let (status, body) = post("/v1/projects/p/callbacks/site/resume");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not_paused"), "{body}");

    let history = cbd.get("/v1/files/p/1/history");
    let kinds: Vec<&str> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"callback_paused") && kinds.contains(&"callback_resumed"),
        "{kinds:?}"
    );
}

/// `GET /v1/attempts` against real receivers: recorded attempts newest first, narrowed by
/// project, callback, file, outcome and time, paged with a seq cursor; the same through
/// `cbctl attempts` online and offline.
#[test]
fn attempts_list_what_went_out_newest_first_by_whose_how_and_when() {
    let failing = Receiver::answering(Reply::Status(503, vec![]));
    let ok = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "a",
        "site",
        json!({"url": ok.url("/cb"), "window_secs": 1, "leading": true}),
    );
    cbd.put_callback(
        "a",
        "mirror",
        json!({"url": failing.url("/m"), "window_secs": 1, "leading": true, "backoff_secs": [3600]}),
    );
    cbd.put_callback(
        "b",
        "site",
        json!({"url": ok.url("/b"), "window_secs": 1, "leading": true}),
    );
    for i in 0..3 {
        cbd.change(
            "a",
            &format!("f{i}"),
            "rated",
            snapshot(&format!("f{i}"), 1),
        );
    }
    cbd.change("b", "f0", "rated", snapshot("f0", 1));
    let all_in = || cbd.get("/v1/attempts")["items"].as_array().unwrap().len() == 7;
    cbd.wait_for("seven attempts", Duration::from_secs(10), all_in);

    let all = cbd.get("/v1/attempts");
    assert_eq!(all["next"], Value::Null, "{all}");
    let items = all["items"].as_array().unwrap();
    let seqs: Vec<u64> = items.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    for a in items {
        assert_eq!(a["kind"], "attempt", "{a}");
        assert!(a["time"].as_str().unwrap().ends_with('Z'), "{a}");
        assert!(a["digest"].as_str().unwrap().len() == 64, "{a}");
    }
    let whose = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{}/{} {} {}",
                    a["project"].as_str().unwrap(),
                    a["file_id"].as_str().unwrap(),
                    a["callback"].as_str().unwrap(),
                    a["class"].as_str().unwrap()
                )
            })
            .collect()
    };
    let failed = cbd.get("/v1/attempts?outcome=5xx");
    let mut got = whose(&failed);
    got.sort();
    assert_eq!(
        got,
        ["a/f0 mirror 5xx", "a/f1 mirror 5xx", "a/f2 mirror 5xx"],
        "{failed}"
    );
    assert!(failed["items"][0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("503"));
    assert_eq!(
        whose(&cbd.get("/v1/attempts?project=b")),
        ["b/f0 site delivered"]
    );
    assert_eq!(
        cbd.get("/v1/attempts?project=a&callback=site&outcome=delivered")["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let mut got = whose(&cbd.get("/v1/attempts?project=a&file=f1"));
    got.sort();
    assert_eq!(got, ["a/f1 mirror 5xx", "a/f1 site delivered"]);
    assert!(cbd.get("/v1/attempts?project=a&outcome=timeout")["items"]
        .as_array()
        .unwrap()
        .is_empty());
    // Time: the window around the newest attempt holds it; one before the first holds none.
    let newest = &items[0];
    let t = newest["time"].as_str().unwrap();
    let around = cbd.get(&format!("/v1/attempts?since={t}&until={t}"));
    assert!(around["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["seq"] == newest["seq"]));
    assert!(cbd.get("/v1/attempts?until=2000-01-01T00:00:00Z")["items"]
        .as_array()
        .unwrap()
        .is_empty());
    // Paged two at a time with the seq cursor: the same seven, in the same order.
    let mut paged = Vec::new();
    let mut path = "/v1/attempts?limit=2".to_owned();
    loop {
        let page = cbd.get(&path);
        paged.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["seq"].as_u64().unwrap()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/attempts?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, seqs);
    for (q, says) in [
        ("callback=site", "give project= too"),
        ("file=f1", "give project= too"),
        ("outcome=2xx", "one of delivered, redirect, gone, 4xx, 5xx"),
        ("since=yesterday", "RFC 3339"),
        ("after=0", "`next` of the previous page"),
        ("limit=5000", "from 1 to 1000"),
        ("state=retrying", "unknown query parameter"),
    ] {
        let (status, body) = cbd.call("GET", &format!("/v1/attempts?{q}"), None, None);
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(says), "{q}: {body}");
    }

    // cbctl through the server, then on the stopped daemon's data dir: the same list.
    let online = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args([
            "--server",
            &cbd.url(""),
            "attempts",
            "--project",
            "a",
            "--outcome",
            "5xx",
        ])
        .env("CBD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(online.status.success(), "{online:?}");
    let online = String::from_utf8_lossy(&online.stdout).into_owned();
    assert_eq!(online.lines().count(), 3, "{online}");
    assert!(
        online
            .lines()
            .all(|l| l.contains("  mirror  attempt 1 of delivery ")),
        "{online}"
    );
    assert!(online.contains("  503"), "{online}");
    assert!(cbd.terminate().success());
    let (code, offline, err) = cbctl(
        &cbd.dir,
        &["attempts", "--project", "a", "--outcome", "5xx"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(offline, online);
    let (code, out, err) = cbctl(&cbd.dir, &["attempts", "--limit", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"][0]["seq"], seqs[0]);
    assert_eq!(page["next"], seqs[0].to_string());
    let (code, _, err) = cbctl(&cbd.dir, &["attempts", "--callback", "site"]);
    assert_eq!(code, 2);
    assert!(err.contains("give project= too"), "{err}");
}

/// A test send against real receivers: the documented sample goes out once with
/// `cb-test: 1` (and the callback's own headers), even to a paused callback; the answer says
/// how it went; the send is a record and no delivery moves.
#[test]
fn a_test_send_goes_out_once_whatever_the_state_and_touches_no_delivery() {
    let ok = Receiver::start();
    let failing = Receiver::answering(Reply::Status(503, vec![]));
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "a",
        "site",
        json!({"url": ok.url("/cb"), "format": "json", "window_secs": 3600,
               "headers": [{"name": "X-Api-Key", "value": "k1"}]}),
    );
    cbd.put_callback(
        "a",
        "mirror",
        json!({"url": failing.url("/m"), "window_secs": 3600}),
    );
    cbd.change("a", "556114", "rated", snapshot("556114", 1));
    let before = cbd.machine("a", "556114", "site");
    let (status, _) = cbd.json("POST", "/v1/projects/a/callbacks/site/pause", None);
    assert_eq!(status, 200);

    let (status, answer) = cbd.json("POST", "/v1/projects/a/callbacks/site/test", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["class"], "delivered", "{answer}");
    assert!(answer["latency_ms"].is_u64(), "{answer}");
    ok.wait_for_count(1, Duration::from_secs(5));
    let got = &ok.received()[0];
    assert_eq!(got.header("cb-test"), Some("1"));
    assert_eq!(got.header("x-api-key"), Some("k1"));
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["id"], "cb-test", "{body}");
    assert_eq!(body["title"], "cb test send", "{body}");
    assert_eq!(
        answer["digest"].as_str().unwrap(),
        sha256_hex(&got.body),
        "the digest is of the bytes sent"
    );
    // No delivery moved: the machine is as it was, and the log has the send.
    assert_eq!(cbd.machine("a", "556114", "site"), before);
    let tested: Vec<Value> = cbd
        .log()
        .into_iter()
        .filter(|l| l["kind"] == "callback_tested")
        .collect();
    assert_eq!(tested.len(), 1, "{tested:?}");
    assert_eq!(tested[0]["seq"], answer["seq"]);
    assert_eq!(tested[0]["outcome"]["status"], 200, "{tested:?}");

    // A failing receiver: the answer says so, with the detail.
    let (status, answer) = cbd.json("POST", "/v1/projects/a/callbacks/mirror/test", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], false, "{answer}");
    assert_eq!(answer["status"], 503, "{answer}");
    assert_eq!(answer["class"], "5xx", "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().starts_with("HTTP 503"),
        "{answer}"
    );
    let (status, answer) = cbd.json("POST", "/v1/projects/a/callbacks/nobody/test", None);
    assert_eq!(status, 404, "{answer}");

    // cbctl: the line, exit 0 when taken and 1 when not; offline it says to use --server.
    let run = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_cbctl"))
            .args(["--server", &cbd.url(""), "test", "a", name])
            .env("CBD_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = run("site");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("test send to a/site: 200 in "), "{text}");
    let out = run("mirror");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": HTTP 503"));
    assert_eq!(ok.count(), 2);
    assert!(cbd.terminate().success());
    let (code, _, err) = cbctl(&cbd.dir, &["test", "a", "site"]);
    assert_eq!(code, 2);
    assert!(err.contains("give --server"), "{err}");
}

/// Two test sends are two messages: receivers deduplicate on `webhook-id` (Standard
/// Webhooks), so each send has its own.
#[test]
fn two_test_sends_carry_two_webhook_ids() {
    let ok = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback("a", "site", json!({"url": ok.url("/cb")}));
    for _ in 0..2 {
        let (status, answer) = cbd.json("POST", "/v1/projects/a/callbacks/site/test", None);
        assert_eq!(status, 200, "{answer}");
    }
    ok.wait_for_count(2, Duration::from_secs(5));
    let got = ok.received();
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids[0].is_some(), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}

fn sha256_hex(bytes: &[u8]) -> String {
    cb_core::Digest::of(bytes).to_hex()
}
