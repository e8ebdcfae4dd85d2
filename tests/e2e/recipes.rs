//! The seed platforms' callback styles (docs/recipes.md), each reproduced from configuration
//! alone against the real daemon, plus Standard Webhooks signing: every test asserts the
//! exact request the receiver gets.

use std::time::Duration;

use serde_json::json;

use crate::support::{Cbd, Received, Receiver};

/// The Standard Webhooks specification's example secret, and a second one for rotation.
const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn header_map(r: &Received) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in &r.headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn signed_requests_verify_with_the_reference_library_during_a_rotation() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    // The XML POST signs its body; the GET signs the empty body.
    cbd.put_callback(
        "p",
        "post",
        json!({"url": receiver.url("/post"), "window_secs": 0, "secret": [NEW_SECRET, OLD_SECRET]}),
    );
    cbd.put_callback(
        "p",
        "get",
        json!({"url": receiver.url("/get"), "method": "GET", "window_secs": 0, "secret": OLD_SECRET}),
    );
    cbd.change(
        "p",
        "556114",
        "rated",
        json!({"id": "556114", "status": "3", "title": "Sunset"}),
    );
    receiver.wait_for_count(2, Duration::from_secs(10));

    // The standardwebhooks crate (the specification's reference library for Rust) checks
    // the signature and that the timestamp is within 5 minutes of now.
    let new = standardwebhooks::Webhook::new(NEW_SECRET).unwrap();
    let old = standardwebhooks::Webhook::new(OLD_SECRET).unwrap();
    let other =
        standardwebhooks::Webhook::new("whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
            .unwrap();
    for r in receiver.received() {
        let headers = header_map(&r);
        let id = r.header("webhook-id").unwrap();
        assert!(id.starts_with("msg_"), "{id}");
        let signatures = r.header("webhook-signature").unwrap();
        assert!(
            other.verify(&r.body, &headers).is_err(),
            "a third secret does not verify"
        );
        if r.uri.starts_with("/post") {
            assert_eq!(
                signatures.split(' ').count(),
                2,
                "one signature per secret: {signatures}"
            );
            new.verify(&r.body, &headers)
                .expect("the new secret verifies");
            old.verify(&r.body, &headers)
                .expect("the old secret still verifies");
            let mut tampered = r.body.clone();
            tampered[0] ^= 1;
            assert!(
                old.verify(&tampered, &headers).is_err(),
                "the body is signed"
            );
        } else {
            assert_eq!(signatures.split(' ').count(), 1, "{signatures}");
            assert!(r.body.is_empty());
            old.verify(b"", &headers)
                .expect("a GET signs the empty body");
        }
    }

    // The API shows which secrets are in force, never the secrets.
    let shown = cbd.get("/v1/projects/p/callbacks/post");
    let text = shown.to_string();
    assert!(
        !text.contains("MfKQ9r8G") && !text.contains("BwcHBwcH"),
        "{text}"
    );
    assert_eq!(
        shown["callback"]["secret"].as_array().map(Vec::len),
        Some(2),
        "{text}"
    );
    assert!(shown["callback"]["secret"][0]
        .as_str()
        .unwrap()
        .starts_with("whsec_… (sha256 "));
}
