//! Bad input, auth, and the read routes.

use serde_json::{json, Value};

use crate::support::{snapshot, Cbd, Receiver};

/// method, path, content type, body, expected status, expected error code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

/// Every kind of bad input in SPEC §6 → its 4xx with a JSON error, nothing appended, the
/// daemon alive.
#[test]
fn bad_input_is_refused_and_appends_nothing() {
    let cbd = Cbd::start(&[]);
    cbd.put_callback("p", "site", json!({"url": "https://example.org/cb"}));
    let before = cbd.last_seq();
    let xml = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/getFileInfo-556114.xml"
    ))
    .unwrap();
    let big = vec![b' '; 1024 * 1024 + 10];
    let change = |event: &str, project: &str, file_id: &str| {
        serde_json::to_vec(&json!({"project": project, "file_id": file_id, "event": event, "file": snapshot("1", 1)})).unwrap()
    };
    let cases: Vec<Case> = vec![
        ("POST", "/v1/changes", Some("application/json"), b"{\"project\":".to_vec(), 400, "bad_json"),
        ("POST", "/v1/changes", Some("application/json"), b"[1,2]".to_vec(), 400, "bad_json"),
        ("POST", "/v1/changes?project=p&event=rated", Some("application/xml"), b"<result><id>1</id>".to_vec(), 400, "bad_xml"),
        ("POST", "/v1/changes?project=p&event=rated", Some("application/xml"),
            b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">]><result><id>&lol;</id></result>".to_vec(), 400, "bad_xml"),
        ("POST", "/v1/changes?project=p&event=exploded", Some("application/xml"), xml.clone(), 400, "unknown_event"),
        ("POST", "/v1/changes?project=bad%20project&event=rated", Some("application/xml"), xml.clone(), 400, "bad_id"),
        ("POST", "/v1/changes", Some("application/json"), change("exploded", "p", "1"), 400, "unknown_event"),
        ("POST", "/v1/changes", Some("application/json"), change("rated", "p/q", "1"), 400, "bad_id"),
        ("POST", "/v1/changes", Some("application/json"), change("rated", "p", &"x".repeat(129)), 400, "bad_id"),
        ("POST", "/v1/changes", Some("application/json"), big.clone(), 413, "too_large"),
        ("POST", "/v1/changes/batch", Some("application/x-ndjson"),
            [change("rated", "p", "1"), b"\n".to_vec(), change("rated", "p", "bad id"), b"\n".to_vec()].concat(), 400, "bad_id"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"), br#"{"url":"ftp://example.org/"}"#.to_vec(), 400, "bad_callback"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"), br#"{"url":"not a url"}"#.to_vec(), 400, "bad_callback"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"),
            br#"{"url":"https://example.org/","headers":[{"name":"X-A","value":"a\r\nInjected: 1"}]}"#.to_vec(), 400, "bad_callback"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"), br#"{"url":"mailto:ops@example.org"}"#.to_vec(), 400, "bad_callback"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"),
            br#"{"url":"https://example.org/","secret":"whsec_c2hvcnQ="}"#.to_vec(), 400, "bad_callback"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"), br#"{"url":"https://example.org/","window":5}"#.to_vec(), 400, "bad_json"),
        ("PUT", "/v1/projects/p/callbacks/bad%20name", Some("application/json"), br#"{"url":"https://example.org/"}"#.to_vec(), 400, "bad_id"),
        ("DELETE", "/v1/projects/p/callbacks/nope", None, vec![], 404, "not_found"),
        ("GET", "/v1/files/p/never", None, vec![], 404, "not_found"),
        ("GET", "/v1/log?from=abc", None, vec![], 400, "bad_query"),
        ("GET", "/v1/nothing", None, vec![], 404, "not_found"),
        ("DELETE", "/v1/changes", None, vec![], 405, "method_not_allowed"),
        ("GET", "/v1/files/p/1/x/y", None, vec![], 404, "not_found"),
        ("POST", "/v1/changes?project=p&project=q&event=rated", Some("application/xml"), xml.clone(), 400, "bad_query"),
        ("POST", "/v1/changes?project=p&event=rated&file_id=9", Some("application/xml"), xml.clone(), 400, "bad_query"),
        ("POST", "/v1/changes?project=p&event=rated", Some("application/xml"),
            b"<result><id>1</id><t>A&#0;B</t></result>".to_vec(), 400, "bad_xml"),
        ("POST", "/v1/files/p/1/redeliver?cb=site", None, vec![], 400, "bad_query"),
        ("PUT", "/v1/projects/p/callbacks/x", Some("application/json"), br#"{"url":"http:///cb"}"#.to_vec(), 400, "bad_callback"),
    ];
    for (method, path, ct, body, status, code) in cases {
        let body = if method == "GET" || method == "DELETE" {
            None
        } else {
            Some(body.as_slice())
        };
        let (got, text) = cbd.call(method, path, ct, body);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["error"], code, "{method} {path}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        if path.ends_with("batch") {
            assert_eq!(v["line"], 2, "the bad line is named: {v}");
        }
    }
    assert_eq!(cbd.last_seq(), before, "nothing was appended");
    // Still alive and still accepting good input.
    let (status, _) = cbd.call(
        "POST",
        "/v1/changes?project=p&event=rated",
        Some("application/xml"),
        Some(&xml),
    );
    assert_eq!(status, 202);
    assert_eq!(cbd.last_seq(), before + 1);
}

/// HTTP's own rules: a 405 names the methods the path takes (`Allow`), a 401 the scheme
/// (`WWW-Authenticate`), and a load balancer's `HEAD /healthz` gets a 200.
#[test]
fn methods_and_auth_are_answered_as_http_says() {
    let cbd = Cbd::start(&[]);
    let agent = ureq::agent();
    let r = agent.head(&cbd.url("/healthz")).call().unwrap();
    assert_eq!(r.status(), 200);
    let r = agent
        .head(&cbd.url("/v1/status"))
        .set(
            "Authorization",
            &format!("Bearer {}", crate::support::TOKEN),
        )
        .call()
        .unwrap();
    assert_eq!((r.status(), r.into_string().unwrap()), (200, String::new()));
    for (method, path, allow) in [
        ("DELETE", "/v1/changes", "POST"),
        (
            "POST",
            "/v1/projects/p/callbacks/x",
            "GET, HEAD, PUT, DELETE",
        ),
        ("GET", "/v1/files/p/1/redeliver", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ] {
        match agent
            .request(method, &cbd.url(path))
            .set(
                "Authorization",
                &format!("Bearer {}", crate::support::TOKEN),
            )
            .call()
        {
            Err(ureq::Error::Status(405, r)) => {
                assert_eq!(r.header("Allow"), Some(allow), "{method} {path}")
            }
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    match agent.get(&cbd.url("/v1/status")).call() {
        Err(ureq::Error::Status(401, r)) => {
            assert_eq!(r.header("WWW-Authenticate"), Some("Bearer realm=\"cb\""))
        }
        other => panic!("{other:?}"),
    }
}

/// No or a wrong token → 401 on every /v1 route; /healthz is open.
#[test]
fn auth() {
    let cbd = Cbd::start(&[]);
    for (method, path) in [
        ("GET", "/v1/projects/p/callbacks"),
        ("POST", "/v1/changes"),
        ("GET", "/v1/log"),
        ("GET", "/v1/files/p/1"),
    ] {
        for token in [None, Some("wrong-token-0123456789")] {
            let (status, text) = cbd.call_with(method, path, None, Some(b"{}"), token);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
            assert!(text.contains("unauthorized"));
        }
    }
    let (status, text) = cbd.call_with("GET", "/healthz", None, None, None);
    assert_eq!(status, 200, "{text}");
    let (status, text) = cbd.call_with("GET", "/metrics", None, None, None);
    assert_eq!(status, 200);
    assert!(text.contains("cb_changes_total"), "{text}");
}

/// The read routes show what was configured and what happened.
#[test]
fn callbacks_crud_and_file_views() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "a",
        json!({"url": receiver.url("/a"), "leading": true}),
    );
    cbd.put_callback(
        "p",
        "b",
        json!({"url": receiver.url("/b"), "method": "GET", "window_secs": 1}),
    );
    let list = cbd.get("/v1/projects/p/callbacks");
    let names: Vec<&str> = list["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(list["callbacks"][1]["callback"]["format"], "query");
    // Raw text: a `json!` value would sort the fields before they are sent.
    let body = r#"{"project":"p","file_id":"7","event":"rated","file":{"id":"7","status":"3","title":"change 1","counter":"1","message":""}}"#;
    let (status, text) = cbd.call(
        "POST",
        "/v1/changes",
        Some("application/json"),
        Some(body.as_bytes()),
    );
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let v = v["seq"].as_u64().unwrap();
    receiver.wait_for_count(2, std::time::Duration::from_secs(5));
    let file = cbd.get("/v1/files/p/7");
    assert_eq!(file["version"], v);
    assert_eq!(file["file"]["title"], "change 1");
    assert_eq!(file["machines"].as_array().unwrap().len(), 2);
    // The snapshot keeps its field order (a JSON map in document order, not sorted).
    let (_, raw) = cbd.call("GET", "/v1/files/p/7", None, None);
    let pos = |k: &str| raw.find(&format!("\"{k}\":")).unwrap();
    assert!(
        pos("id") < pos("status")
            && pos("title") < pos("counter")
            && pos("counter") < pos("message"),
        "{raw}"
    );
    let get = receiver
        .received()
        .into_iter()
        .find(|r| r.method == "GET")
        .unwrap();
    assert!(
        get.uri.starts_with("/b?mediaid=7&status=3&title=change+1"),
        "{}",
        get.uri
    );
    let (status, _) = cbd.json("DELETE", "/v1/projects/p/callbacks/b", None);
    assert_eq!(status, 200);
    let list = cbd.get("/v1/projects/p/callbacks");
    assert_eq!(list["callbacks"].as_array().unwrap().len(), 1);
    let log = cbd.log();
    assert_eq!(log.first().unwrap()["kind"], "callback_put");
    assert_eq!(log.last().unwrap()["kind"], "callback_removed");
}

/// A `CBD_TOKEN` that cannot be a token stops cbd before it opens its data dir: exit 2, one
/// line saying why, and no data dir left behind.
#[test]
fn a_bad_token_is_refused_before_the_data_dir_is_made() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cbd"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("CBD_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("CBD_TOKEN").count(), 1, "{err}");
    assert!(!dir.exists(), "no data dir was made");
}

/// Sends `GET /healthz` on `stream` and reads one whole answer (head and body).
fn healthz_on(stream: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: cb\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if answer.len() >= head_end + 4 + length {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

/// Past `--max-connections`, a connection is answered 503 `too_many_connections` with
/// `Retry-After` and closed, and the connections already open keep working; once one
/// closes, a new one is served again.
#[test]
fn connections_past_the_limit_get_503_with_retry_after() {
    use std::net::TcpStream;
    let cbd = Cbd::start(&["--max-connections", "2"]);
    let mut first = TcpStream::connect(cbd.addr).unwrap();
    let mut second = TcpStream::connect(cbd.addr).unwrap();
    assert!(healthz_on(&mut first).starts_with("HTTP/1.1 200"));
    assert!(healthz_on(&mut second).starts_with("HTTP/1.1 200"));
    let mut third = TcpStream::connect(cbd.addr).unwrap();
    let refused = healthz_on(&mut third);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let lower = refused.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{refused}");
    assert!(lower.contains("connection: close"), "{refused}");
    assert!(refused.contains("\"too_many_connections\""), "{refused}");
    assert!(
        healthz_on(&mut first).starts_with("HTTP/1.1 200"),
        "open connections keep working"
    );
    drop(second);
    let mut again = None;
    crate::support::wait_for(
        "a connection served once one closed",
        std::time::Duration::from_secs(10),
        &mut || {
            let mut s = TcpStream::connect(cbd.addr).unwrap();
            let ok = healthz_on(&mut s).starts_with("HTTP/1.1 200");
            if ok {
                again = Some(s);
            }
            ok
        },
    );
    drop((first, again));
    let mut metrics = String::new();
    crate::support::wait_for(
        "metrics once the test's connections closed",
        std::time::Duration::from_secs(10),
        &mut || {
            let (status, body) = cbd.call("GET", "/metrics", None, None);
            metrics = body;
            status == 200
        },
    );
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cb_api_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused count in {metrics}"));
    assert!(refused >= 1, "{metrics}");
}
