//! `GET /metrics` read by real parsers: Python's prometheus_client reads the default answer
//! (Prometheus text 0.0.4) with `text_string_to_metric_families` and the one a Prometheus
//! `Accept` gets (OpenMetrics 1.0) with `openmetrics.parser.text_string_to_metric_families`,
//! and both give the counts of what happened: changes posted, attempts against a real
//! receiver by outcome, the latency histograms, and the per-(project, callback) series with
//! the pairs past `--metrics-max-series` counted under `~other`.
//!
//! prometheus_client is a Python package that `.ci/run` installs, at the version pinned
//! here. A machine without it fails this test, naming the `pip install` that fixes it: a
//! skipped check would read as a passed one.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{snapshot, Cbd, Receiver, Reply};

/// The version `.ci/run` installs; a failure names it.
const PARSER: &str = "prometheus-client==0.26.0";

/// What Prometheus sends (2.x; 3.x puts protobuf first, which cb does not write).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Reads an exposition on stdin with prometheus_client's parser for `argv[1]` (`text` or
/// `openmetrics`) and prints every family as JSON: `{name: {type, unit, samples: [[name,
/// labels, value]]}}`; a family twice, or any parse error, exits non-zero.
const PARSE: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in out:
        sys.exit(f"family {f.name} twice")
    out[f.name] = {"type": f.type, "unit": f.unit,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
json.dump(out, sys.stdout)
"#;

/// The installed prometheus_client, if it is the pinned one; `Err` says what to install.
fn parser_installed() -> Result<(), String> {
    let want = PARSER.split("==").nth(1).unwrap_or_default();
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m, prometheus_client; print(m.version('prometheus-client'))",
        ])
        .output()
        .map_err(|e| format!("python3 cannot be run ({e}); install Python 3, then pip install {PARSER}"))?;
    let have = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match (out.status.success(), have == want) {
        (true, true) => Ok(()),
        (true, false) => Err(format!(
            "prometheus_client {have} is installed; this test reads with {want}: pip install {PARSER} (.ci/run installs it)"
        )),
        (false, _) => Err(format!(
            "python3 cannot import prometheus_client: pip install {PARSER} (.ci/run installs it)\n{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// `GET /metrics` with `accept`: the content type and the text.
fn scrape(cbd: &Cbd, accept: Option<&str>) -> (String, String) {
    let mut req = ureq::get(&cbd.url("/metrics"));
    if let Some(a) = accept {
        req = req.set("Accept", a);
    }
    let r = req.call().expect("GET /metrics");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("vary"), Some("Accept"));
    let content_type = r.header("content-type").unwrap_or_default().to_owned();
    (content_type, r.into_string().expect("text"))
}

/// The families prometheus_client reads in `text` (`form`: `text` or `openmetrics`).
fn parse(form: &str, text: &str) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", PARSE, form])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client's {form} parser refuses the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The value of `family`'s sample `sample` with exactly `labels`.
fn value(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let want: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family} in {families:#}"));
    samples
        .iter()
        .find(|s| s[0] == sample && s[1].as_object() == Some(&want))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no {sample}{labels:?} in {family}: {samples:#?}"))
}

/// Changes and deliveries against real receivers, then both forms read by both parsers give
/// the same counts: 7 changes (5 alone, 2 in a batch), 5 delivered attempts of project `p`,
/// 1 failed one of project `r` — whose pair is past `--metrics-max-series 1`, so counted
/// under `~other`.
#[test]
fn both_forms_read_by_real_parsers_give_the_counts() {
    if let Err(why) = parser_installed() {
        panic!("{why}");
    }
    let ok = Receiver::start();
    let failing = Receiver::answering(Reply::Status(500, vec![]));
    let cbd = Cbd::start(&["--allow-private-targets", "--metrics-max-series", "1"]);
    // Leading: each file's first change goes at once; the hour-long window and backoff keep
    // anything else from going while the test runs.
    cbd.put_callback(
        "p",
        "hook",
        json!({"url": ok.url("/cb"), "window_secs": 3600, "leading": true}),
    );
    cbd.put_callback(
        "r",
        "down",
        json!({"url": failing.url("/cb"), "window_secs": 3600, "leading": true, "backoff_secs": [3600]}),
    );
    let listed = |project: &str| {
        cbd.get(&format!("/v1/attempts?project={project}"))["items"]
            .as_array()
            .map_or(0, Vec::len)
    };

    // Project p's pair is the first an outcome names: it gets labels of its own.
    for id in ["f1", "f2", "f3"] {
        cbd.change("p", id, "rated", snapshot(id, 1));
    }
    cbd.batch(&[
        json!({"project": "p", "file_id": "f4", "event": "rated", "file": snapshot("f4", 1)}),
        json!({"project": "p", "file_id": "f5", "event": "rated", "file": snapshot("f5", 1)}),
    ]);
    cbd.change("q", "f1", "rated", snapshot("f1", 1)); // no callback: nothing to deliver
    cbd.wait_for("p's 5 attempts", Duration::from_secs(20), || {
        listed("p") == 5
    });
    // Then r's: past the bound.
    cbd.change("r", "f1", "rated", snapshot("f1", 1));
    cbd.wait_for("r's attempt", Duration::from_secs(20), || listed("r") == 1);

    let (content_type, text) = scrape(&cbd, None);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    let (content_type, openmetrics) = scrape(&cbd, Some(PROMETHEUS_ACCEPT));
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

    for (form, families) in [
        ("text", parse("text", &text)),
        ("openmetrics", parse("openmetrics", &openmetrics)),
    ] {
        let v = |family: &str, sample: &str, labels: &[(&str, &str)]| {
            value(&families, family, sample, labels)
        };
        // What the trial found: a counter read as a typed family with its samples, not as
        // an empty family beside an untyped `_total`.
        for (name, family) in families.as_object().unwrap() {
            let kind = family["type"].as_str().unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{form}: {name} is {kind}"
            );
            if kind == "counter" {
                assert!(
                    !family["samples"].as_array().unwrap().is_empty(),
                    "{form}: counter {name} has no samples"
                );
            }
        }
        assert_eq!(families["cb_changes"]["type"], "counter", "{form}");
        assert_eq!(v("cb_changes", "cb_changes_total", &[]), 7.0, "{form}");
        assert_eq!(
            v("cb_records", "cb_records_total", &[("kind", "change")]),
            7.0
        );
        let attempts = |outcome| v("cb_attempts", "cb_attempts_total", &[("outcome", outcome)]);
        assert_eq!(attempts("delivered"), 5.0, "{form}");
        assert_eq!(attempts("5xx"), 1.0, "{form}");
        assert_eq!(attempts("timeout"), 0.0, "{form}");
        let machines = |state| v("cb_machines", "cb_machines", &[("state", state)]);
        assert_eq!(machines("sent"), 5.0, "{form}");
        assert_eq!(machines("retrying"), 1.0, "{form}");
        assert_eq!(v("cb_files", "cb_files", &[]), 6.0, "{form}");

        // Histograms: counts exact; what the latencies were is the machine's business.
        assert_eq!(
            families["cb_ack_latency_seconds"]["type"], "histogram",
            "{form}"
        );
        let acks = |route| {
            v(
                "cb_ack_latency_seconds",
                "cb_ack_latency_seconds_count",
                &[("route", route)],
            )
        };
        assert_eq!(acks("/v1/changes"), 5.0, "{form}");
        assert_eq!(acks("/v1/changes/batch"), 1.0, "{form}");
        assert_eq!(
            v(
                "cb_ack_latency_seconds",
                "cb_ack_latency_seconds_bucket",
                &[("route", "/v1/changes"), ("le", "+Inf")]
            ),
            5.0
        );
        let latency = |outcome| {
            v(
                "cb_attempt_latency_seconds",
                "cb_attempt_latency_seconds_count",
                &[("outcome", outcome)],
            )
        };
        assert_eq!(latency("delivered"), 5.0, "{form}");
        assert_eq!(latency("5xx"), 1.0, "{form}");
        assert_eq!(
            v(
                "cb_delivery_lag_seconds",
                "cb_delivery_lag_seconds_count",
                &[]
            ),
            5.0,
            "{form}"
        );
        if form == "openmetrics" {
            for name in [
                "cb_ack_latency_seconds",
                "cb_attempt_latency_seconds",
                "cb_delivery_lag_seconds",
            ] {
                assert_eq!(families[name]["unit"], "seconds", "{name}");
            }
            assert_eq!(families["cb_disk_free_bytes"]["unit"], "bytes");
        }

        // Per pair: p's own, r's under ~other.
        let pair = |project, callback, outcome| {
            v(
                "cb_callback_attempts",
                "cb_callback_attempts_total",
                &[
                    ("project", project),
                    ("callback", callback),
                    ("outcome", outcome),
                ],
            )
        };
        assert_eq!(pair("p", "hook", "delivered"), 5.0, "{form}");
        assert_eq!(pair("~other", "~other", "5xx"), 1.0, "{form}");
        let pair_machines = |project, callback, state| {
            v(
                "cb_callback_machines",
                "cb_callback_machines",
                &[
                    ("project", project),
                    ("callback", callback),
                    ("state", state),
                ],
            )
        };
        assert_eq!(pair_machines("p", "hook", "sent"), 5.0, "{form}");
        assert_eq!(pair_machines("~other", "~other", "retrying"), 1.0, "{form}");
        assert_eq!(v("cb_callback_pairs", "cb_callback_pairs", &[]), 1.0);
        let samples = families["cb_callback_attempts"]["samples"]
            .as_array()
            .unwrap();
        assert!(
            samples.iter().all(|s| s[1]["project"] != "r"),
            "{form}: r is past the bound: {samples:?}"
        );
    }
}
