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
