//! The operator console and the rewind route it reads: the page served by the real `cbd`
//! without a token under a strict policy; `GET …/rewind` answering what `cbctl rewind
//! --json` prints.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cbctl::cbctl;
use crate::support::{Cbd, Receiver, Reply};

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// GET without a token: status, headers, body.
fn get_plain(cbd: &Cbd, path: &str) -> (u16, Vec<(String, String)>, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let r = match agent.get(&cbd.url(path)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = r.status();
    let headers = r
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = r.header(&n).unwrap_or("").to_owned();
            (n, v)
        })
        .collect();
    (status, headers, r.into_string().unwrap_or_default())
}

#[test]
fn the_console_is_served_without_a_token_under_a_strict_policy() {
    let cbd = Cbd::start(&[]);
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/console", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get_plain(&cbd, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(header(&headers, "content-type"), Some(ty), "{path}");
        let csp = header(&headers, "content-security-policy").expect("a CSP");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        // The cheap guard: nothing in the console parses a string as HTML.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!body.contains(banned), "{path} uses {banned}");
        }
    }
    let (_, _, page) = get_plain(&cbd, "/");
    assert!(page.contains(r#"<script src="/console.js" defer></script>"#));
    assert!(!page.contains("<script>"), "no inline script");
    // The page holds no data; the data does need the token.
    let (status, _, _) = get_plain(&cbd, "/v1/projects");
    assert_eq!(status, 401);
    let (status, text) = cbd.call_with("POST", "/", None, Some(b""), None);
    assert_eq!(status, 405, "{text}");
}

/// `GET …/rewind?to=` answers exactly what `cbctl rewind --json` prints, at a change, at an
/// attempt in flight (the request it sent, with the digest its outcome records), at a time;
/// and refuses what it cannot answer with the API's errors.
#[test]
fn rewind_over_the_api_is_cbctl_rewind() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(500, vec![])]);
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "format": "json", "window_secs": 1, "leading": true, "backoff_secs": [1]}),
    );
    // Fields out of alphabetical order: the answer keeps the snapshot's order.
    let (status, text) = cbd.call(
        "POST",
        "/v1/changes",
        Some("application/json"),
        Some(br#"{"project":"p","file_id":"f1","event":"rated","file":{"zeta":"1","alpha":"<b>2</b>"}}"#),
    );
    assert_eq!(status, 202, "{text}");
    let change: u64 = serde_json::from_str::<Value>(&text).unwrap()["seq"]
        .as_u64()
        .unwrap();
    cbd.wait_for(
        "a failure, then a delivery",
        Duration::from_secs(15),
        || cbd.machine("p", "f1", "site")["state"] == "sent",
    );
    let log = cbd.log();
    let attempts: Vec<&Value> = log.iter().filter(|l| l["kind"] == "attempt").collect();
    assert_eq!(attempts.len(), 2, "{log:?}");
    let failed = attempts[0]["seq"].as_u64().unwrap();
    let time = attempts[1]["time"].as_str().unwrap().to_owned();

    let points = [change.to_string(), (failed - 1).to_string(), time.clone()];
    let mut answers = Vec::new();
    for to in &points {
        let path = format!("/v1/files/p/f1/rewind?to={}", to.replace('+', "%2B"));
        let (status, text) = cbd.call("GET", &path, None, None);
        assert_eq!(status, 200, "{path}: {text}");
        assert!(text.find("\"zeta\"") < text.find("\"alpha\""), "{text}");
        answers.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    let at_change = &answers[0];
    assert_eq!(at_change["version"], change, "{at_change}");
    assert_eq!(at_change["file"]["alpha"], "<b>2</b>", "{at_change}");
    assert_eq!(at_change["payloads"][0]["would_send"], true, "{at_change}");
    // Just before the failure's record, the attempt is in flight: its request and digest.
    let in_flight = &answers[1]["payloads"][0];
    assert_eq!(in_flight["in_flight"]["attempt"], 1, "{in_flight}");
    assert_eq!(in_flight["digest"], attempts[0]["digest"], "{in_flight}");
    assert_eq!(answers[2]["machines"][0]["state"], "sent", "{}", answers[2]);

    // Refusals: no such file by then (404 no_such_file), a bad or missing point (400), an
    // unknown parameter (400), another method (405).
    let refused = |path: &str| -> (u16, Value) { cbd.json("GET", path, None) };
    let (status, v) = refused("/v1/files/p/nosuch/rewind?to=9999");
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("no_such_file")),
        "{v}"
    );
    let (status, v) = refused("/v1/files/p/f1/rewind?to=1");
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("no_such_file")),
        "{v}"
    );
    for bad in ["to=yesterday", "", "to=1&to=2", "at=3"] {
        let (status, v) = refused(&format!("/v1/files/p/f1/rewind?{bad}"));
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"], "bad_query", "{bad}: {v}");
    }
    let (status, v) = cbd.json("POST", "/v1/files/p/f1/rewind?to=1", None);
    assert_eq!(status, 405, "{v}");

    // The same points through cbctl on the stopped daemon's data dir: the same JSON.
    assert!(cbd.terminate().success());
    for (to, api) in points.iter().zip(&answers) {
        let (code, out, err) = cbctl(&cbd.dir, &["rewind", "p/f1", "--to", to, "--json"]);
        assert_eq!(code, 0, "{err}");
        let printed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(&printed, api, "rewind --to {to}");
    }
}
