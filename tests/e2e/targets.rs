//! The target policy: without `--allow-private-targets`, loopback in any spelling is never
//! connected to, and the outcome says why.

use std::time::Duration;

use serde_json::json;

use crate::support::{snapshot, Cbd, Receiver};

#[test]
fn private_targets_are_refused_at_connect_time() {
    let receiver = Receiver::start();
    let port = receiver.addr.port();
    let cbd = Cbd::start(&[]);
    let urls = [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://localhost:{port}/cb"),
        format!("http://[::1]:{port}/cb"),
        format!("http://[::ffff:127.0.0.1]:{port}/cb"),
        format!("http://[::ffff:7f00:1]:{port}/cb"),
    ];
    for (i, url) in urls.iter().enumerate() {
        cbd.put_callback(
            "p",
            &format!("c{i}"),
            json!({"url": url, "leading": true, "backoff_secs": [60]}),
        );
    }
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd.wait_for("every attempt recorded", Duration::from_secs(10), || {
        let f = cbd.get("/v1/files/p/1");
        f["machines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "retrying")
            .count()
            == urls.len()
    });
    let history = cbd.get("/v1/files/p/1/history");
    let attempts: Vec<_> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "attempt")
        .collect();
    assert_eq!(attempts.len(), urls.len());
    for a in attempts {
        assert_eq!(a["class"], "target_refused", "{a}");
        let detail = a["detail"].as_str().unwrap();
        assert!(
            detail.contains("loopback") || detail.contains("IPv4-mapped"),
            "{detail}"
        );
        assert!(detail.contains("--allow-private-targets"), "{detail}");
    }
    assert_eq!(receiver.connections(), 0, "cbd never connected");
    assert_eq!(receiver.count(), 0);
}

/// A PUT of a callback the policy will refuse is taken (200) with a warning that says why
/// and what to do; `cbctl callbacks set` prints it, through the server and on a data dir.
/// With `--allow-private-targets`, or to a named host (no DNS at PUT), there is none.
#[test]
fn a_put_to_a_refused_address_is_taken_with_a_warning() {
    let mut cbd = Cbd::start(&[]);
    for (url, reason) in [
        (
            "http://127.0.0.1:9000/cb",
            "127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        ("http://localhost:9000/cb", "localhost is loopback"),
        ("http://[::1]:9000/cb", "::1 is loopback (::1)"),
        (
            "https://192.168.1.20/cb",
            "192.168.1.20 is private (192.168.0.0/16)",
        ),
    ] {
        let (status, answer) = cbd.json(
            "PUT",
            "/v1/projects/p/callbacks/site",
            Some(&json!({"url": url})),
        );
        assert_eq!(status, 200, "{answer}");
        let warnings = answer["warnings"].as_array().expect("warnings");
        assert_eq!(warnings.len(), 1, "{url}: {answer}");
        let w = warnings[0].as_str().unwrap();
        assert!(w.contains(reason), "{url}: {w}");
        assert!(
            w.contains("--allow-private-targets") && w.contains("target_refused"),
            "{w}"
        );
    }
    let (status, answer) = cbd.json(
        "PUT",
        "/v1/projects/p/callbacks/site",
        Some(&json!({"url": "https://hooks.example.org/cb"})),
    );
    assert_eq!((status, &answer["warnings"]), (200, &json!([])), "{answer}");

    // cbctl prints it on stderr, online and on a data dir; stdout says what was appended.
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), r#"{"url": "http://127.0.0.1:9000/cb"}"#).unwrap();
    let body = body.path().to_str().unwrap();
    let server = cbd.url("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cbctl"))
        .args(["--server", &server, "callbacks", "set", "p", "site", body])
        .env("CBD_TOKEN", crate::support::TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("callback p/site set: seq "), "{stdout}");
    assert!(
        stderr.contains("cbctl: warning: the callback's host 127.0.0.1 is loopback"),
        "{stderr}"
    );
    assert!(cbd.terminate().success());
    let (code, stdout, stderr) =
        crate::cbctl::cbctl(&cbd.dir, &["callbacks", "set", "p", "site", body]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("callback p/site set: seq "), "{stdout}");
    assert!(stderr.contains("--allow-private-targets"), "{stderr}");

    let allowed = Cbd::start(&["--allow-private-targets"]);
    let (status, answer) = allowed.json(
        "PUT",
        "/v1/projects/p/callbacks/site",
        Some(&json!({"url": "http://127.0.0.1:9000/cb"})),
    );
    assert_eq!((status, &answer["warnings"]), (200, &json!([])), "{answer}");
}
