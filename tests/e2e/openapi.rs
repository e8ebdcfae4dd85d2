//! The API's OpenAPI document (`GET /v1/openapi.json`, `cli/src/openapi.json`) against a real
//! cbd: it is served, a real OpenAPI validator (openapi-spec-validator) accepts it, and a
//! schema fuzzer (schemathesis) sends every operation requests made from it and finds no
//! server error and no answer — status, content type, body — that it does not describe.
//!
//! Both tools are Python packages that `.ci/run` installs. A machine without them fails
//! these tests, naming the `pip install` that fixes it: a skipped check would read as a
//! passed one.
//!
//! The fuzzer puts callbacks with whatever URLs it makes up and then changes and redelivers
//! files, so the cbd it fuzzes could try to deliver anywhere. It runs in a network namespace
//! of its own with only a loopback interface (`unshare --net`, as root, as CI runs), and the
//! fuzzer is started inside it (`nsenter`): every delivery it attempts fails at once, and
//! no request leaves the machine. Without `--allow-private-targets`, deliveries to the
//! loopback are refused too.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::support::{Cbd, Receiver, Reply, TOKEN};

/// The versions `.ci/run` installs; the failure messages name them.
const VALIDATOR: &str = "openapi-spec-validator==0.9.0";
const FUZZER: &str = "schemathesis==4.32.5";

/// Examples per operation in CI's run; `CB_FUZZ_EXAMPLES` asks for more (docs/operations.md).
const EXAMPLES: u32 = 25;

/// The seed of CI's run; `CB_FUZZ_SEED` asks for another.
const SEED: &str = "20261207";

/// The checks the fuzzer leaves out. Every other one of schemathesis's is made: no 5xx;
/// status, content type, headers and body of each answer as the document says; 405 with
/// `Allow` for a method a path does not take; the token enforced; a deleted callback gone.
/// Left out: whether every request the schema allows is accepted, and every one it does
/// not is refused. Some constraints are not written as schema (`GET` goes only with format
/// `query`; `mailto:` needs `--smtp`; `63.0` is an integer to JSON Schema and not to
/// cbd), and a JSON change ignores the query an XML one needs.
const LEFT_OUT: &str = "positive_data_acceptance,negative_data_rejection";

/// Whether `python3` can import `module`; `Err` says why not and what to install.
fn python_module(module: &str, package: &str) -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map_err(|e| {
            format!("python3 cannot be run ({e}); install Python 3, then pip install {package}")
        })?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "python3 cannot import {module}: pip install {package} (.ci/run installs it)\n{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The served document is the built-in one, behind the token, and openapi-spec-validator
/// finds it a valid OpenAPI 3.1 document.
#[test]
fn the_served_document_is_valid_openapi() {
    if let Err(why) = python_module("openapi_spec_validator", VALIDATOR) {
        panic!("{why}");
    }
    let cbd = Cbd::start(&[]);
    let (status, _) = cbd.call_with("GET", "/v1/openapi.json", None, None, None);
    assert_eq!(
        status, 401,
        "the document is under the token like all of /v1"
    );
    let (status, served) = cbd.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, cb_cli::openapi::DOCUMENT);
    let doc: Value = serde_json::from_str(&served).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &served).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&path)
        .output()
        .expect("run openapi_spec_validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses the document:\n{}",
        text(&out)
    );
}

/// Validates each answer in `cases` (`{"method", "path", "status", "body"}`, `path` as the
/// document names it) against the schema the document gives that operation and status, with
/// the JSON Schema 2020-12 validator openapi-spec-validator brings (`jsonschema`). Prints
/// each mismatch and exits 1 on any.
const CONFORMS: &str = r##"
import json, sys, urllib.parse
import jsonschema

doc = json.load(open(sys.argv[1]))
cases = json.load(open(sys.argv[2]))
bad = 0
for case in cases:
    op = doc["paths"][case["path"]][case["method"]]
    answer = op["responses"].get(str(case["status"]))
    if answer is None:
        print(f'{case["method"]} {case["path"]}: status {case["status"]} is not described')
        bad += 1
        continue
    if "$ref" in answer:
        base = answer["$ref"]
    else:
        tokens = ["paths", case["path"], case["method"], "responses", str(case["status"])]
        escaped = (t.replace("~", "~0").replace("/", "~1") for t in tokens)
        base = "#/" + "/".join(urllib.parse.quote(t, safe="~") for t in escaped)
    # The document is the root resource, so that its `#/components/...` refs resolve.
    schema = dict(doc, **{"$ref": base + "/content/application~1json/schema"})
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(case["body"]))
    for e in errors:
        print(f'{case["method"]} {case["path"]} {case["status"]}: at {list(e.absolute_path)}: {e.message}')
    bad += len(errors)
print(f"{len(cases)} answers checked, {bad} mismatches")
sys.exit(1 if bad else 0)
"##;

/// The answers the fuzzer cannot reach, where deliveries succeed (`sent`), a receiver
/// answers 410 (a disabled callback), a per-file callback delivers and a callback is
/// paused, match the document: every read route's JSON, and the actions' answers.
#[test]
fn scripted_answers_match_the_document() {
    if let Err(why) = python_module("jsonschema", VALIDATOR) {
        panic!("{why}");
    }
    let ok = Receiver::start();
    let gone = Receiver::answering(Reply::Status(410, vec![]));
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let mut cases: Vec<Value> = Vec::new();
    let mut record = |method: &str, template: &str, status: u16, body: Value| {
        cases.push(serde_json::json!({
            "method": method, "path": template, "status": status, "body": body
        }));
    };
    let call = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        cbd.json(method, path, body.as_ref())
    };

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (s, v) = call(
        "PUT",
        "/v1/projects/p/callbacks/site",
        Some(
            serde_json::json!({"url": ok.url("/site"), "leading": true, "window_secs": 1,
            "secret": secret, "headers": [{"name": "X-Site", "value": "1"}]}),
        ),
    );
    record("put", "/v1/projects/{project}/callbacks/{name}", s, v);
    let (s, v) = call(
        "PUT",
        "/v1/projects/p/callbacks/gone",
        Some(
            serde_json::json!({"url": gone.url("/gone"), "method": "GET", "leading": true,
            "fields": ["mediaid=id", "title"], "events": ["rated", "published"]}),
        ),
    );
    record("put", "/v1/projects/{project}/callbacks/{name}", s, v);
    let (s, v) = call(
        "POST",
        "/v1/changes",
        Some(
            serde_json::json!({"project": "p", "file_id": "1", "event": "published",
            "file": {"id": "1", "title": "one"},
            "callbacks": [{"name": "lf", "url": ok.url("/lf"), "method": "PUT",
                "format": "json", "leading": true, "onSuccess": true}]}),
        ),
    );
    record("post", "/v1/changes", s, v);
    cbd.wait_for(
        "site delivered, gone disabled",
        std::time::Duration::from_secs(20),
        || {
            let file = cbd.get("/v1/files/p/1");
            cbd.machine("p", "1", "site")["state"] == "sent"
                && cbd.machine("p", "1", "file:lf")["state"] == "sent"
                && !file["disabled_callbacks"].as_array().unwrap().is_empty()
        },
    );
    let (s, v) = call("POST", "/v1/projects/p/callbacks/site/pause", None);
    record(
        "post",
        "/v1/projects/{project}/callbacks/{name}/pause",
        s,
        v,
    );
    let (s, v) = call("POST", "/v1/projects/p/callbacks/site/pause", None);
    record(
        "post",
        "/v1/projects/{project}/callbacks/{name}/pause",
        s,
        v,
    );
    let (s, v) = call("POST", "/v1/files/p/1/redeliver?callback=site", None);
    record("post", "/v1/files/{project}/{file_id}/redeliver", s, v);
    let (s, v) = call("POST", "/v1/files/p/1/redeliver?callback=gone", None);
    record("post", "/v1/files/{project}/{file_id}/redeliver", s, v);
    let (s, v) = call(
        "POST",
        "/v1/redeliver",
        Some(serde_json::json!({"project": "p", "since": "2020-01-01T00:00:00Z"})),
    );
    record("post", "/v1/redeliver", s, v);
    for (path, template) in [
        ("/v1/files/p/1", "/v1/files/{project}/{file_id}"),
        (
            "/v1/files/p/1/history",
            "/v1/files/{project}/{file_id}/history",
        ),
        (
            "/v1/files/p/1/history?limit=1",
            "/v1/files/{project}/{file_id}/history",
        ),
        ("/v1/status", "/v1/status"),
        ("/v1/deliveries", "/v1/deliveries"),
        ("/v1/deliveries?state=sent&limit=1", "/v1/deliveries"),
        ("/v1/projects", "/v1/projects"),
        (
            "/v1/projects/p/callbacks",
            "/v1/projects/{project}/callbacks",
        ),
        (
            "/v1/projects/p/callbacks/gone",
            "/v1/projects/{project}/callbacks/{name}",
        ),
        ("/v1/files/p/nothing", "/v1/files/{project}/{file_id}"),
        ("/v1/deliveries?state=stuck", "/v1/deliveries"),
    ] {
        let (s, v) = call("GET", path, None);
        record("get", template, s, v);
    }
    let (s, v) = cbd.json("POST", "/v1/projects/p/callbacks/site/resume", None);
    record(
        "post",
        "/v1/projects/{project}/callbacks/{name}/resume",
        s,
        v,
    );
    let line =
        serde_json::json!({"project": "p", "file_id": "2", "event": "rated", "file": {"id": "2"}});
    let (s, raw) = cbd.call(
        "POST",
        "/v1/changes/batch",
        Some("application/x-ndjson"),
        Some(format!("{line}\n{line}\n{{\n").as_bytes()),
    );
    record(
        "post",
        "/v1/changes/batch",
        s,
        serde_json::from_str(&raw).unwrap(),
    );
    let (s, raw) = cbd.call("GET", "/healthz", None, None);
    record("get", "/healthz", s, serde_json::from_str(&raw).unwrap());
    let (s, v) = cbd.json("DELETE", "/v1/projects/p/callbacks/gone", None);
    record("delete", "/v1/projects/{project}/callbacks/{name}", s, v);

    let statuses: Vec<u64> = cases.iter().filter_map(|c| c["status"].as_u64()).collect();
    for status in [200, 202, 400, 404, 409] {
        assert!(statuses.contains(&status), "no {status} among {statuses:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (doc, answers) = (
        dir.path().join("openapi.json"),
        dir.path().join("cases.json"),
    );
    std::fs::write(&doc, cb_cli::openapi::DOCUMENT).unwrap();
    std::fs::write(&answers, serde_json::to_vec_pretty(&cases).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", CONFORMS])
        .arg(&doc)
        .arg(&answers)
        .output()
        .expect("run python3");
    println!("{}", text(&out));
    assert!(
        out.status.success(),
        "answers the document does not describe:\n{}\nthe answers: {}",
        text(&out),
        serde_json::to_string_pretty(&cases).unwrap()
    );
}

/// A cbd in a network namespace of its own with only loopback: it can be reached from inside
/// the namespace (`nsenter --net=/proc/PID/ns/net`) and reaches nothing outside it.
struct Isolated {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Isolated {
    fn start() -> Isolated {
        for tool in ["unshare", "nsenter", "ip"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} is missing: the fuzzer's cbd runs in a network namespace of its own \
                 (apt-get install util-linux iproute2)"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = std::fs::File::create(dir.path().join("cbd.stderr")).unwrap();
        // `sh -c SCRIPT ARG0 ARGS…`: the script sees the cbd binary as $0 and its flags as $@.
        let mut child = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .arg(env!("CARGO_BIN_EXE_cbd"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("CBD_TOKEN", TOKEN)
            .env("CBD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start unshare");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("cbd: listening on http://") {
                        break rest.parse::<SocketAddr>().expect("address");
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "cbd did not start in a network namespace of its own (creating one \
                         needs root, as CI runs):\n{}",
                        std::fs::read_to_string(dir.path().join("cbd.stderr")).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout so cbd never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Isolated {
            child,
            addr,
            _dir: dir,
        }
    }

    /// A command run inside cbd's network namespace.
    fn inside(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("--")
            .arg(program);
        c
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("cbd.stderr")).unwrap_or_default()
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operations the document describes ahead of this build's routes (`AHEAD`) that a cbd
/// answers `no route` for, as schemathesis names them (`GET /v1/attempts`): not fuzzed.
fn unserved_ahead(cbd: &Cbd) -> Vec<String> {
    let mut out = Vec::new();
    for (method, template) in cb_cli::openapi::AHEAD {
        let path = template
            .replace("{project}", "p")
            .replace("{file_id}", "f")
            .replace("{name}", "n");
        let (status, body) = cbd.call(&method.to_uppercase(), &path, None, None);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let no_route = status == 404
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("no route"));
        if no_route {
            out.push(format!("{} {template}", method.to_uppercase()));
        }
    }
    out
}

/// schemathesis against a real cbd: every operation, positive and negative examples made
/// from the document, each answer checked against it (all checks but [`LEFT_OUT`]), then
/// sequences of calls that follow the document's links. Seeded, on one worker: the same
/// build sends the same requests. `CB_FUZZ_EXAMPLES` raises the examples per operation
/// (CI's 25 take well under a minute), `CB_FUZZ_SEED` changes the seed.
#[test]
fn the_fuzzer_finds_no_answer_the_document_does_not_describe() {
    if let Err(why) = python_module("schemathesis", FUZZER) {
        panic!("{why}");
    }
    let examples: u32 = match std::env::var("CB_FUZZ_EXAMPLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("CB_FUZZ_EXAMPLES={v:?}: give a number")),
        Err(_) => EXAMPLES,
    };
    let seed = std::env::var("CB_FUZZ_SEED").unwrap_or_else(|_| SEED.to_owned());
    let skipped = unserved_ahead(&Cbd::start(&[]));
    let cbd = Isolated::start();
    let report = tempfile::tempdir().unwrap();
    let base = format!("http://{}", cbd.addr);
    // As a module of the python3 that imported it above, whatever else is on PATH.
    let mut run = cbd.inside("python3");
    run.args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{base}/v1/openapi.json"))
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--exclude-checks", LEFT_OUT])
        .args(["--max-examples", &examples.to_string(), "--seed", &seed])
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["--request-timeout", "30", "--no-color"])
        .args(["--report", "ndjson", "--report-dir"])
        .arg(report.path())
        // The batch's NDJSON body (schemathesis_hooks.py says how).
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/e2e/schemathesis_hooks.py"
            ),
        )
        // Its working dir: nothing of the run is left in the source tree.
        .current_dir(report.path());
    for name in &skipped {
        run.args(["--exclude-name", name]);
    }
    let started = std::time::Instant::now();
    let out = run
        .output()
        .expect("run schemathesis inside cbd's namespace");
    let log = text(&out);
    let figures = figures(report.path());
    println!(
        "schemathesis: {examples} examples an operation, seed {seed}, {:.1} s; {figures}{}\n{log}",
        started.elapsed().as_secs_f64(),
        match skipped.is_empty() {
            true => String::new(),
            false => format!("; not served yet, skipped: {skipped:?}"),
        }
    );
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe:\n{log}\n\ncbd's log:\n{}",
        cbd.stderr()
    );
    assert!(alive(&cbd), "cbd died under the fuzzer:\n{}", cbd.stderr());
}

/// Whether the fuzzed cbd still answers.
fn alive(cbd: &Isolated) -> bool {
    cbd.inside("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request; urllib.request.urlopen('http://{}/healthz', timeout=5)",
                cbd.addr
            ),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// The run's figures from schemathesis's NDJSON events: requests sent and the statuses they
/// got.
fn figures(dir: &Path) -> String {
    let mut statuses = std::collections::BTreeMap::<u64, u64>::new();
    let mut requests = 0u64;
    let events = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ndjson"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>();
    for line in events.iter().flat_map(|t| t.lines()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        collect_statuses(&v, &mut requests, &mut statuses);
    }
    let shown: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
    format!("{requests} requests, statuses {}", shown.join(" "))
}

/// Every response recorded in an event (`"status_code"` beside `"elapsed"`), wherever it
/// nests.
fn collect_statuses(
    v: &Value,
    requests: &mut u64,
    statuses: &mut std::collections::BTreeMap<u64, u64>,
) {
    match v {
        Value::Object(m) => {
            if let (Some(status), true) = (
                m.get("status_code").and_then(Value::as_u64),
                m.contains_key("elapsed"),
            ) {
                *requests += 1;
                *statuses.entry(status).or_default() += 1;
            }
            m.values()
                .for_each(|v| collect_statuses(v, requests, statuses));
        }
        Value::Array(a) => a
            .iter()
            .for_each(|v| collect_statuses(v, requests, statuses)),
        _ => {}
    }
}
