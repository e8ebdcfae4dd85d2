//! `mailto:` callbacks through a real (local) SMTP relay.

use std::time::Duration;

use serde_json::json;

use crate::support::{snapshot, Cbd, SmtpSink};

#[test]
fn mail_is_delivered_through_the_relay() {
    let sink = SmtpSink::start(false);
    let relay = sink.addr.to_string();
    let cbd = Cbd::start(&[
        "--smtp",
        &relay,
        "--mail-from",
        "Newzulu callbacks <callbacks@newzulu.example>",
    ]);
    cbd.put_callback(
        "p",
        "ops",
        json!({"url": "mailto:ops@example.org", "leading": true}),
    );
    let v = cbd.change("p", "556114", "rated", snapshot("556114", 1));
    cbd.wait_for("a message", Duration::from_secs(10), || {
        !sink.messages().is_empty()
    });
    let m = &sink.messages()[0];
    assert!(
        m.contains(&format!("Subject: [cb] p/556114 rated (version {v})")),
        "the subject names the project, file, event and version: {m}"
    );
    assert!(
        m.contains("From: \"Newzulu callbacks\" <callbacks@newzulu.example>"),
        "{m}"
    );
    assert!(m.contains("To: ops@example.org"), "{m}");
    assert!(
        m.contains("MIME-Version: 1.0"),
        "a MIME message says so: {m}"
    );
    assert!(m.contains("Content-Type: application/xml"), "{m}");
    assert!(m.contains("<id>556114</id>"), "{m}");
    cbd.wait_for("sent", Duration::from_secs(5), || {
        cbd.machine("p", "556114", "ops")["state"] == "sent"
    });
    assert_eq!(cbd.machine("p", "556114", "ops")["delivered_version"], v);

    // A test send: the documented sample, its own subject and `cb-test: 1`.
    let (status, answer) = cbd.json("POST", "/v1/projects/p/callbacks/ops/test", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(answer["status"], 250, "{answer}");
    let m = &sink.messages()[1];
    assert!(m.contains("Subject: [cb] test send to p/ops"), "{m}");
    assert!(m.contains("cb-test: 1"), "{m}");
    assert!(m.contains("<id>cb-test</id>"), "{m}");
}

#[test]
fn a_rejecting_relay_means_retries() {
    let sink = SmtpSink::start(true);
    let relay = sink.addr.to_string();
    let cbd = mail_retried_every_second(&relay);
    cbd.wait_for("two attempts", Duration::from_secs(10), || {
        sink.attempts() >= 2
    });
    let m = cbd.machine("p", "1", "ops");
    assert_eq!(m["last_outcome"]["class"], "smtp", "{m}");
    assert_eq!(m["last_outcome"]["outcome"], "smtp-550", "{m}");
    assert!(sink.messages().is_empty());
}

#[test]
fn an_unreachable_relay_means_retries() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = format!("127.0.0.1:{port}");
    let cbd = mail_retried_every_second(&relay);
    let mut seen = serde_json::Value::Null;
    cbd.wait_for("a second failed attempt", Duration::from_secs(10), || {
        seen = cbd.machine("p", "1", "ops");
        seen["state"] == "retrying" && seen["attempts"].as_u64() >= Some(2)
    });
    assert_eq!(seen["last_outcome"]["class"], "connect", "{seen}");
}

/// cbd on `relay`, with a mail callback retried every second and one change sent to it.
fn mail_retried_every_second(relay: &str) -> Cbd {
    let cbd = Cbd::start(&["--smtp", relay]);
    cbd.put_callback(
        "p",
        "ops",
        json!({"url": "mailto:ops@example.org", "leading": true, "backoff_secs": [1]}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd
}
