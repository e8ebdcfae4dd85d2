//! `cbctl` on a real daemon's log: a clean replay after a busy scenario, and a tampered log
//! that replay must catch.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{snapshot, Cbd, Receiver, Reply};

/// Runs cbctl against the daemon at `server` with the test token; exit code, stdout, stderr.
pub fn cbctl_online(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args(["--server", server])
        .args(args)
        .env("CBD_TOKEN", crate::support::TOKEN)
        .output()
        .expect("run cbctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn cbctl(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run cbctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replay_of_a_busy_log_is_clean_and_tampering_is_caught() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(500, vec![]), Reply::ok()]);
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "window_secs": 1, "backoff_secs": [1]}),
    );
    cbd.put_callback(
        "p",
        "q",
        json!({"url": receiver.url("/q"), "method": "GET", "window_secs": 1}),
    );
    // A receiver that always fails, for a callback that gives up after 2 s.
    let failing = Receiver::answering(Reply::Status(500, vec![]));
    cbd.put_callback(
        "p",
        "down",
        json!({"url": failing.url("/down"), "window_secs": 1, "backoff_secs": [1], "retry_for_secs": 2, "events": ["deleted"]}),
    );
    for i in 0..5 {
        cbd.change(
            "p",
            &format!("f{i}"),
            "rated",
            snapshot(&format!("f{i}"), i),
        );
    }
    receiver.wait_for_count(11, Duration::from_secs(10));
    // A configuration change between deliveries: the GET callback's fields.
    cbd.put_callback(
        "p",
        "q",
        json!({"url": receiver.url("/q"), "method": "GET", "window_secs": 1, "fields": ["id", "title"]}),
    );
    cbd.change("p", "f0", "moderated", snapshot("f0", 99));
    cbd.change("p", "f4", "deleted", snapshot("f4", 100));
    cbd.wait_for(
        "the failing callback abandoned",
        Duration::from_secs(15),
        || cbd.machine("p", "f4", "down")["state"] == "abandoned",
    );
    cbd.kill_and_restart();
    let (status, _) = cbd.json("POST", "/v1/files/p/f1/redeliver?callback=site", None);
    assert_eq!(status, 202);
    cbd.wait_for("everything sent", Duration::from_secs(10), || {
        ["site", "q"]
            .iter()
            .all(|c| cbd.machine("p", "f0", c)["state"] == "sent")
            && cbd.machine("p", "f1", "site")["last_outcome"]["seq"].as_u64() > Some(20)
    });
    assert!(cbd.terminate().success());

    let (code, out, err) = cbctl(&cbd.dir, &["replay", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["divergences"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["files"], 5);
    assert_eq!(v["callbacks"], 3);
    // The first attempt of all got the scripted 500; `down` failed until it gave up.
    let down_attempts = failing.count() as u64;
    assert!(down_attempts >= 2, "{down_attempts}");
    assert_eq!(v["outcomes"]["5xx"], 1 + down_attempts, "{v}");
    // site and q for 5 files, for f0's and f4's second change, and the redeliver.
    assert_eq!(v["outcomes"]["delivered"], 15, "{v}");
    assert_eq!(v["machines"]["abandoned"], 1, "{v}");
    assert_eq!(v["in_flight_at_end"], 0, "{v}");

    // History of one file: the states, in columns per callback.
    let (code, out, _) = cbctl(&cbd.dir, &["history", "p/f4"]);
    assert_eq!(code, 0);
    let header = out.lines().nth(1).unwrap();
    assert!(
        header.contains("down") && header.contains("q") && header.contains("site"),
        "{out}"
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.contains("abandoned") && last.contains("down attempt"),
        "the last step is the attempt that gave up: {out}"
    );

    // Tamper with one attempt's digest, and separately with one's version.
    let (code, log, _) = cbctl(&cbd.dir, &["export"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = log.lines().collect();
    let (i, attempt) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains("\"kind\":\"attempt\"") && l.contains("\"delivered\""))
        .unwrap();
    let seq = serde_json::from_str::<Value>(attempt).unwrap()["seq"]
        .as_u64()
        .unwrap();
    for (what, edit) in [
        ("digest", {
            let mut v: Value = serde_json::from_str(attempt).unwrap();
            v["digest"] = "0".repeat(64).into();
            v
        }),
        ("version", {
            let mut v: Value = serde_json::from_str(attempt).unwrap();
            v["version"] = (v["version"].as_u64().unwrap() - 1).into();
            v
        }),
    ] {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[i] = edit.to_string();
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("copy");
        let file = temp.path().join("log.ndjson");
        std::fs::write(&file, edited.join("\n") + "\n").unwrap();
        let (code, _, err) = cbctl(&dir, &["import", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let (code, out, _) = cbctl(&dir, &["replay"]);
        assert_eq!(code, 1, "a tampered {what} must be caught: {out}");
        assert!(
            out.contains(&format!("seq {seq}:")),
            "the {what} divergence names seq {seq}: {out}"
        );
    }
}

#[test]
fn a_running_daemon_holds_the_lock_and_cbctl_says_so() {
    let cbd = Cbd::start(&[]);
    let (code, _, err) = cbctl(&cbd.dir, &["replay"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("locked") && err.contains("is cbd running?"),
        "{err}"
    );
}

/// The operator commands work on a stopped daemon's dir (appending records the daemon folds
/// at its next start) and against a running daemon with `--server`, with the same answers.
#[test]
fn operator_commands_offline_and_through_the_server() {
    let receiver = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    assert!(cbd.terminate().success());
    let dir = cbd.dir.clone();
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("cb.json");
    std::fs::write(
        &config,
        json!({"url": receiver.url("/cb"), "leading": true}).to_string(),
    )
    .unwrap();
    let (code, out, err) = cbctl(
        &dir,
        &["callbacks", "set", "p", "site", config.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("callback p/site set: seq "), "{out}");
    let change = temp.path().join("change.json");
    std::fs::write(
        &change,
        json!({"project": "p", "file_id": "9", "event": "rated", "file": snapshot("9", 1)})
            .to_string(),
    )
    .unwrap();
    let (code, out, err) = cbctl(&dir, &["emit", "--json", change.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert!(answer["seq"].as_u64().is_some(), "{out}");
    let (code, out, _) = cbctl(&dir, &["callbacks", "list", "p"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("site POST http://127.0.0.1:"), "{out}");
    let (code, _, err) = cbctl(&dir, &["callbacks", "rm", "p", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no callback nope"), "{err}");

    // The daemon folds what cbctl appended: the change is delivered at start.
    cbd.kill_and_restart();
    receiver.wait_for_count(1, Duration::from_secs(5));
    assert_eq!(receiver.received()[0].field("id").as_deref(), Some("9"));

    // Through the server: the same list, and a redeliver.
    let server = cbd.url("");
    let run = |args: &[&str]| cbctl_online(&server, args);
    let (code, online, err) = run(&["callbacks", "list", "p"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(online, out, "the same output online and offline");
    let (code, out, err) = run(&["redeliver", "p/9", "--callback", "site"]);
    assert_eq!(code, 0, "{err}");
    // A refusal reads as on a data dir: the detail, then the status and code.
    let (code, _, refused) = run(&["redeliver", "p/404"]);
    assert_eq!(code, 2);
    assert!(
        refused.contains("file p/404 has no change to deliver (HTTP 404 not_found)"),
        "{refused}"
    );
    assert!(
        out.starts_with("redeliver of p/9 to site appended: seq "),
        "{out}"
    );
    receiver.wait_for_count(2, Duration::from_secs(5));
    let (code, out, err) = run(&["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("divergences: none"), "{out}");
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for cmd in [
        "replay",
        "history",
        "rewind",
        "status",
        "callbacks",
        "emit",
        "redeliver",
        "export",
        "import",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
            .args(["help", cmd])
            .output()
            .expect("run cbctl");
        assert!(out.status.success(), "cbctl help {cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:") && text.contains(&format!(" {cmd}")),
            "cbctl help {cmd} shows examples: {text}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .arg("--help")
        .output()
        .expect("run cbctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Exit codes: 0 ok, 1 replay found divergences, 2"),
        "{text}"
    );
}

/// `cbctl bench` at toy sizes: every SPEC §8 figure is reported (nothing about speed is
/// asserted here; that is the bench's own output), and the coalescing check holds.
#[test]
fn bench_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args([
            "bench",
            "--json",
            "--changes",
            "3000",
            "--files",
            "100",
            "--memory-files",
            "20000",
            "--duration",
            "0.3",
            "--deliveries",
            "300",
        ])
        .output()
        .expect("run cbctl bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON figures");
    let named = |what: &str| {
        figures
            .iter()
            .find(|f| f["what"].as_str().unwrap().starts_with(what))
            .unwrap_or_else(|| panic!("no figure {what}: {figures:?}"))
            .clone()
    };
    for what in [
        "ceiling: raw file",
        "ceiling: plain hyper",
        "fold (cbctl replay",
        "restart with a log of 3000 changes",
        "core memory, 20000 files",
        "ingest, NDJSON batches",
        "ingest, single-change requests",
        "delivery to a local keep-alive",
    ] {
        let f = named(what);
        assert!(f["value"].as_f64().unwrap() > 0.0, "{f}");
    }
    let coalescing = named("coalescing");
    assert_eq!(coalescing["value"], 1.0, "{coalescing}");
    assert_eq!(coalescing["meets"], true, "{coalescing}");
    assert!(named("delivery")["how"]
        .as_str()
        .unwrap()
        .starts_with("300 deliveries"));
}

/// A reader that stops early (`cbctl export | head`) ends the command quietly: no panic and
/// no error message, exit 141 as for a tool that SIGPIPE ended. The pipe's read end is
/// closed before cbctl starts, so its first write fails on every run.
#[test]
fn a_closed_stdout_ends_cbctl_quietly() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    cb_store::synthetic::build_log(&dir, 300, 20, 1, |_| {}).unwrap();
    let file = cb_store::synthetic::file(0).to_string();
    for args in [
        vec!["replay"],
        vec!["replay", "--json"],
        vec!["export"],
        vec!["history", file.as_str()],
        vec!["status"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_cbctl"))
            .arg("--data-dir")
            .arg(&dir)
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run cbctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// A redeliver that cannot happen is refused before anything is appended, by the API and by
/// `cbctl redeliver` on a data dir alike (rule 6): a per-file callback disabled by a 410
/// (which `status` and the file's view also show), an unknown callback, and an attempt in
/// flight.
#[test]
fn redelivers_that_cannot_happen_are_refused_online_and_offline() {
    let gone = Receiver::answering(Reply::Status(410, vec![]));
    let slow = Receiver::answering(Reply::Delayed(Duration::from_secs(3), 200));
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    let (status, body) = cbd.json(
        "POST",
        "/v1/changes",
        Some(
            &json!({"project": "lf", "file_id": "a", "event": "published", "file": {"id": "a"},
            "callbacks": [{"name": "x", "url": gone.url("/x"), "window_secs": 0}]}),
        ),
    );
    assert_eq!(status, 202, "{body}");
    cbd.wait_for(
        "the per-file callback disabled",
        Duration::from_secs(5),
        || {
            cbd.get("/v1/status")["disabled_callbacks"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        },
    );
    let status = cbd.get("/v1/status");
    let d = &status["disabled_callbacks"][0];
    assert_eq!(
        (d["file"].as_str(), d["name"].as_str()),
        (Some("lf/a"), Some("file:x")),
        "{status}"
    );
    let file = cbd.get("/v1/files/lf/a");
    assert_eq!(
        file["disabled_callbacks"][0]["callback"], "file:x",
        "{file}"
    );
    let (code, body) = cbd.json("POST", "/v1/files/lf/a/redeliver?callback=file:x", None);
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("carries the file's callbacks"),
        "{body}"
    );
    let (code, body) = cbd.json("POST", "/v1/files/lf/a/redeliver?callback=x", None);
    assert_eq!(code, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("file:x"),
        "a per-file name is hinted: {body}"
    );

    // An attempt in flight: a redeliver would change nothing, so it is refused.
    cbd.put_callback(
        "p",
        "slow",
        json!({"url": slow.url("/s"), "leading": true, "window_secs": 1}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    slow.wait_for_count(1, Duration::from_secs(5));
    let before = cbd.last_seq();
    let (code, body) = cbd.json("POST", "/v1/files/p/1/redeliver?callback=slow", None);
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("already_in_flight")),
        "{body}"
    );
    let (code, _) = cbd.json("POST", "/v1/files/p/1/redeliver", None);
    assert_eq!(code, 409, "every enabled callback is in flight");
    assert_eq!(
        cbd.last_seq(),
        before,
        "a refused redeliver appends nothing"
    );
    cbd.wait_for("the slow attempt done", Duration::from_secs(10), || {
        cbd.machine("p", "1", "slow")["state"] == "sent"
    });
    assert!(cbd.terminate().success());

    // On the data dir, the same refusals, and nothing appended.
    let (_, before, _) = cbctl(&cbd.dir, &["export"]);
    for (args, says) in [
        (
            vec!["redeliver", "lf/a", "--callback", "file:x"],
            "disabled",
        ),
        (
            vec!["redeliver", "p/1", "--callback", "nope"],
            "has no callback nope",
        ),
        (vec!["redeliver", "p/404"], "has no change"),
    ] {
        let (code, out, err) = cbctl(&cbd.dir, &args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (_, after, _) = cbctl(&cbd.dir, &["export"]);
    assert_eq!(before, after, "refused redelivers append nothing");
    let (code, out, err) = cbctl(&cbd.dir, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("disabled: lf/a file:x (410 at seq"), "{out}");
    // A disabled callback is not in force: rewind shows no payload for it.
    let (code, out, err) = cbctl(&cbd.dir, &["rewind", "lf/a", "--to", "9999", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["payloads"], json!([]), "{v}");
    assert_eq!(v["disabled_callbacks"][0]["callback"], "file:x", "{v}");
    let (code, _, err) = cbctl(&cbd.dir, &["redeliver", "p/1", "--callback", "slow"]);
    assert_eq!(code, 0, "a sent machine can be redelivered: {err}");
}

/// cbctl does not mistake what is not there for a clean answer: a directory that is not a
/// data dir is refused (and left as it was, not turned into one), and `replay --file` of a
/// file the log never saw is an error, not an audit of nothing. The data dir cbd makes is
/// its owner's only: the log holds signing secrets.
#[test]
fn cbctl_refuses_what_is_not_there() {
    let empty = tempfile::tempdir().unwrap();
    for args in [vec!["status"], vec!["replay"], vec!["history", "p/1"]] {
        let (code, out, err) = cbctl(empty.path(), &args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains("is not a cb data dir"), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "left as it was"
    );
    let (code, _, err) = cbctl(empty.path(), &["--server", "127.0.0.1:8650", "status"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a URL"), "{err}");
    // A dir with something else in it is not a data dir for appending either.
    std::fs::write(empty.path().join("notes.txt"), "x").unwrap();
    let (code, _, err) = cbctl(empty.path(), &["redeliver", "p/1"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a cb data dir"), "{err}");
    // An empty dir may be set up before cbd's first start.
    let fresh = tempfile::tempdir().unwrap();
    let config = fresh.path().join("cb.json");
    std::fs::write(&config, r#"{"url":"https://example.org/cb"}"#).unwrap();
    let dir = fresh.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let (code, out, err) = cbctl(
        &dir,
        &["callbacks", "set", "p", "site", config.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cbctl(&dir, &["callbacks", "list", "p"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("site POST https://example.org/cb"), "{out}");

    let mut cbd = Cbd::start(&[]);
    cbd.change("p", "1", "rated", snapshot("1", 1));
    assert!(cbd.terminate().success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cbd.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    let (code, out, err) = cbctl(&cbd.dir, &["replay", "--file", "p/nosuch"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("no record of file p/nosuch"), "{err}");
    let (code, out, err) = cbctl(&cbd.dir, &["replay", "--file", "p/1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cbctl(&cbd.dir, &["rewind", "p/1", "--to", "9999"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the log's end: it has no seq 9999"), "{out}");
}

/// `rewind` to a tick's seq shows what that tick did to the file (its window fired), and
/// for an attempt in flight it shows the request that attempt sent — the configuration and
/// version it started with, whose digest its outcome records — not what a PUT made during
/// the flight would render.
#[test]
fn rewind_shows_ticks_and_what_an_attempt_in_flight_sent() {
    let slow = Receiver::answering(Reply::Delayed(Duration::from_secs(3), 200));
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": slow.url("/xml"), "window_secs": 1}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    slow.wait_for_count(1, Duration::from_secs(5));
    cbd.put_callback(
        "p",
        "site",
        json!({"url": slow.url("/json"), "format": "json", "window_secs": 1}),
    );
    let put = cbd.last_seq();
    cbd.wait_for("the attempt recorded", Duration::from_secs(10), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
    // A snapshot whose fields are not in alphabetical order keeps its order in `--json`.
    let (status, text) = cbd.call(
        "POST",
        "/v1/changes",
        Some("application/json"),
        Some(br#"{"project":"p","file_id":"o","event":"rated","file":{"zeta":"1","alpha":"2"}}"#),
    );
    assert_eq!(status, 202, "{text}");
    assert!(cbd.terminate().success());
    let (code, out, err) = cbctl(&cbd.dir, &["rewind", "p/o", "--to", "9999", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.find("\"zeta\"") < out.find("\"alpha\""), "{out}");

    let (_, export, _) = cbctl(&cbd.dir, &["export"]);
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let attempt = lines
        .iter()
        .find(|l| l["kind"] == "attempt")
        .expect("an attempt");
    let tick = lines
        .iter()
        .rfind(|l| l["kind"] == "tick" && l["seq"].as_u64() < Some(put))
        .expect("the tick that fired the window");
    let rewind = |to: u64| {
        let (code, out, err) = cbctl(
            &cbd.dir,
            &["rewind", "p/1", "--to", &to.to_string(), "--json"],
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let at_tick = rewind(tick["seq"].as_u64().unwrap());
    assert_eq!(at_tick["machines"][0]["state"], "pending", "{at_tick}");
    let during = rewind(put);
    let p = &during["payloads"][0];
    assert_eq!(p["callback"], "site", "{p}");
    assert_eq!(p["in_flight"]["attempt"], 1, "{p}");
    assert!(p["url"].as_str().unwrap().ends_with("/xml"), "{p}");
    assert_eq!(p["digest"], attempt["digest"], "{p}");
    let after = rewind(attempt["seq"].as_u64().unwrap());
    let p = &after["payloads"][0];
    assert_eq!(p["callback"], "site", "{p}");
    assert!(p.get("in_flight").is_none(), "{p}");
    assert!(p["url"].as_str().unwrap().ends_with("/json"), "{p}");
}

/// `export --redact` (and `/v1/log?redact=true`) leaves no signing secret or header value
/// in the export, which still imports and replays with no divergence: credentials never
/// reach a digest.
#[test]
fn a_redacted_export_keeps_no_credentials_and_replays_clean() {
    let receiver = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "secret": secret,
            "headers": [{"name": "X-Token", "value": "tok-abc-123"}]}),
    );
    let (status, body) = cbd.json(
        "POST",
        "/v1/changes",
        Some(
            &json!({"project": "p", "file_id": "1", "event": "published", "file": snapshot("1", 1),
            "callbacks": [{"name": "lf", "url": receiver.url("/lf"), "window_secs": 0,
                "headers": [{"name": "Authorization", "value": "Bearer pf-secret-9"}]}]}),
        ),
    );
    assert_eq!(status, 202, "{body}");
    receiver.wait_for_count(2, Duration::from_secs(5));
    let credentials = [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "tok-abc-123",
        "pf-secret-9",
    ];
    let (status, text) = cbd.call("GET", "/v1/log?redact=true", None, None);
    assert_eq!(status, 200, "{text}");
    assert!(credentials.iter().all(|c| !text.contains(c)), "{text}");
    assert!(cbd.terminate().success());

    let (code, plain, err) = cbctl(&cbd.dir, &["export"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        credentials.iter().all(|c| plain.contains(c)),
        "kept without --redact"
    );
    let (code, redacted, err) = cbctl(&cbd.dir, &["export", "--redact"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        credentials.iter().all(|c| !redacted.contains(c)),
        "{redacted}"
    );
    assert!(redacted.contains("[redacted]"), "{redacted}");
    assert_eq!(plain.lines().count(), redacted.lines().count());

    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("log.ndjson");
    std::fs::write(&file, &redacted).unwrap();
    let dir = elsewhere.path().join("data");
    let (code, out, err) = cbctl(&dir, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cbctl(&dir, &["replay"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("divergences: none"), "{out}");
}

/// A file cb never saw, in a project with callbacks, is "no such file" everywhere (not the
/// project's configuration records as its history); a callback whose `events` leave a
/// change out shows as filtered at that change, and rewind says it would not send.
#[test]
fn unseen_files_are_refused_and_filtered_callbacks_show() {
    let receiver = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1, "leading": true}),
    );
    cbd.put_callback(
        "p",
        "deletions",
        json!({"url": receiver.url("/del"), "window_secs": 1, "events": ["deleted"]}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(1, Duration::from_secs(10));

    // Through the API: 404 for the unseen file, `filtered` at the change for the seen one.
    let (status, body) = cbd.call("GET", "/v1/files/p/nosuch/history", None, None);
    assert_eq!(status, 404, "{body}");
    let history = cbd.get("/v1/files/p/1/history");
    let change = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "change")
        .unwrap()
        .clone();
    assert_eq!(
        change["filtered"],
        json!([{"callback": "deletions", "why": "events"}]),
        "{change}"
    );
    assert!(cbd.terminate().success());

    for args in [
        vec!["history", "p/nosuch"],
        vec!["rewind", "p/nosuch", "--to", "9999"],
    ] {
        let (code, out, err) = cbctl(&cbd.dir, &args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(
            err.contains("no record of file p/nosuch"),
            "{args:?}: {err}"
        );
    }
    let (code, out, err) = cbctl(&cbd.dir, &["history", "p/1"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.contains("change rated")).unwrap();
    assert!(line.contains("deletions filtered (events)"), "{out}");
    assert!(
        line.contains("filtered "),
        "the callback's column says so: {out}"
    );

    let (code, out, err) = cbctl(&cbd.dir, &["rewind", "p/1", "--to", "9999", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rewound: Value = serde_json::from_str(&out).unwrap();
    let payload = |name: &str| {
        rewound["payloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["callback"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(payload("deletions")["would_send"], false, "{rewound}");
    assert_eq!(payload("deletions")["filtered"], "events", "{rewound}");
    assert_eq!(payload("site")["would_send"], true, "{rewound}");
    assert!(payload("site").get("filtered").is_none(), "{rewound}");
    let (_, out, _) = cbctl(&cbd.dir, &["rewind", "p/1", "--to", "9999"]);
    assert!(
        out.contains("deletions: would not send: the latest change was filtered (events)"),
        "{out}"
    );
}

/// `cbctl emit --xml FILE --project P --event E` appends the getFileInfo document as
/// `POST /v1/changes?project=P&event=E` with `Content-Type: application/xml` does, on a data
/// dir and through the server alike, and its refusals read the same both ways.
#[test]
fn emit_takes_getfileinfo_xml_offline_and_online() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/getFileInfo-556114.xml"
    );
    let xml = ["--xml", sample, "--project", "newzulu"];
    let mut cbd = Cbd::start(&[]);
    assert!(cbd.terminate().success());
    let (code, out, err) = cbctl(
        &cbd.dir,
        &[&["emit"], &xml[..], &["--event", "rated"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("change appended: seq "), "{out}");
    let (code, _, offline) = cbctl(
        &cbd.dir,
        &[&["emit"], &xml[..], &["--event", "liked"]].concat(),
    );
    assert_eq!(code, 2);

    cbd.start_again();
    let server = cbd.url("");
    let online = |args: &[&str]| cbctl_online(&server, &[&["emit"], args].concat());
    let (code, out, err) = online(&[&xml[..], &["--event", "moderated", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let seq = serde_json::from_str::<Value>(&out).unwrap()["seq"].as_u64();
    assert!(seq.is_some(), "{out}");
    let (code, _, refused) = online(&[&xml[..], &["--event", "liked"]].concat());
    assert_eq!(code, 2);
    let detail = |e: &str| e.split(" (").next().unwrap_or_default().to_owned();
    assert_eq!(detail(&refused), detail(&offline), "{refused} / {offline}");
    assert!(refused.contains("unknown_event"), "{refused}");
    // Without --project or --event it is a usage error, before anything is read.
    let (code, _, err) = online(&["--xml", sample, "--project", "newzulu"]);
    assert_eq!(code, 2);
    assert!(err.contains("--event"), "{err}");

    // The same document through the API: all three are one file's changes, with one snapshot.
    let body = std::fs::read(sample).unwrap();
    let (status, text) = cbd.call(
        "POST",
        "/v1/changes?project=newzulu&event=transcoded",
        Some("application/xml"),
        Some(&body),
    );
    assert_eq!(status, 202, "{text}");
    let history = cbd.get("/v1/files/newzulu/556114/history");
    let events: Vec<&str> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "change")
        .map(|s| s["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["rated", "moderated", "transcoded"]);
    let file = cbd.get("/v1/files/newzulu/556114");
    assert_eq!(file["file"]["title"], "Test 7 : single + empty", "{file}");
}

/// A log written under delivery rules version 1, where a leading change's deadline fired at
/// the next record (a tick), replays clean, and its history shows the attempt started where
/// the daemon started it: each record is folded under the rules its segment records. The
/// same records marked as written under version 2 show the attempt started at the change
/// itself (and replay clean too: the rule changes which record's step starts an attempt, not
/// what the attempt carries, or when).
#[test]
fn a_log_of_rules_1_is_folded_under_rules_1() {
    use cb_core::{
        AttemptReport, Callback, Core, Digest, Effect, FileKey, Outcome, Record, RecordKind, Rules,
        Seq, Snapshot, Timestamp,
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let callback = std::sync::Arc::new(
        Callback::from_json(r#"{"url":"https://example.org/cb","window_secs":10,"leading":true}"#)
            .unwrap(),
    );
    let file = FileKey::parse("p/1").unwrap();
    let snapshot = Snapshot::from_pairs([("id", "1"), ("title", "a")]).unwrap();
    // What a rules-1 daemon appended: the put, the change, the tick that fired the change's
    // deadline and started the attempt, and the attempt's outcome.
    let mut core = Core::new();
    core.set_rules(Rules {
        current_from: Seq(u64::MAX),
    });
    let mut effects = Vec::new();
    let mut records: Vec<(Record, Option<Snapshot>)> = Vec::new();
    let mut push =
        |kind: RecordKind, at: u64, snap: Option<Snapshot>, effects: &mut Vec<Effect>| {
            effects.clear();
            let record = Record {
                seq: Seq(records.len() as u64 + 1),
                at: Timestamp(at),
                kind,
            };
            core.apply(&record, effects);
            records.push((record, snap));
        };
    push(
        RecordKind::CallbackPut {
            project: file.project.clone(),
            name: cb_core::CallbackName::new("site").unwrap(),
            callback: callback.clone(),
        },
        1_000,
        None,
        &mut effects,
    );
    push(
        RecordKind::ChangeAppended {
            file: file.clone(),
            event: "rated".parse().unwrap(),
            callbacks: None,
        },
        2_000,
        Some(snapshot.clone()),
        &mut effects,
    );
    assert!(effects
        .iter()
        .all(|e| !matches!(e, Effect::StartAttempt(_))));
    push(RecordKind::Ticked, 2_000, None, &mut effects);
    let attempt = effects
        .iter()
        .find_map(|e| match e {
            Effect::StartAttempt(a) => Some(a.clone()),
            _ => None,
        })
        .expect("the tick starts the attempt under rules 1");
    let digest: Digest = cb_core::render(&snapshot, &callback).digest();
    let report = AttemptReport {
        machine: attempt.machine.clone(),
        delivery: attempt.delivery,
        attempt: attempt.attempt,
        version: attempt.version,
        outcome: Outcome::Delivered { status: 200 },
        latency_ms: 5,
        digest,
        detail: String::new(),
    };
    push(
        RecordKind::AttemptFinished(report),
        2_100,
        None,
        &mut effects,
    );
    {
        let store = cb_store::Store::open(&dir, Default::default()).unwrap();
        store.append_stamped(records).unwrap();
    }
    let set_rules = |rules: u32| {
        for entry in std::fs::read_dir(dir.join("segments")).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            // The header's rules word (bytes 12..16), then its checksum over bytes 0..60.
            bytes[12..16].copy_from_slice(&rules.to_le_bytes());
            let crc = crc32fast::hash(&bytes[..60]);
            bytes[60..64].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
        }
    };
    // The kind of the step whose attempts_started holds the attempt: a deadline of its own
    // between the change and the tick, or the change itself.
    let started_by_step = || {
        let (code, out, err) = cbctl(&dir, &["history", "p/1", "--json"]);
        assert_eq!(code, 0, "{err}");
        let h: Value = serde_json::from_str(&out).unwrap();
        h["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["attempts_started"].is_array())
            .map(|s| s["kind"].as_str().unwrap().to_owned())
    };
    for (rules, started_by) in [(1, "deadline"), (2, "change")] {
        set_rules(rules);
        let (code, out, err) = cbctl(&dir, &["replay"]);
        assert_eq!(code, 0, "rules {rules}: {out}{err}");
        assert!(out.contains("divergences: none"), "rules {rules}: {out}");
        assert_eq!(
            started_by_step().as_deref(),
            Some(started_by),
            "rules {rules}"
        );
    }
}
