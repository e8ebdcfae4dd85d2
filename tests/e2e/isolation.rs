//! A dead and a failing receiver do not slow deliveries to a healthy one; `Retry-After`
//! and `410 Gone` behave as SPEC §4 rule 4 says.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{snapshot, Cbd, Receiver, Reply};

/// Delivery latency to `healthy` for `files` fresh files (leading delivery), in ms, sorted.
fn latencies(cbd: &Cbd, healthy: &Receiver, prefix: &str, files: usize) -> Vec<u128> {
    let mut out = Vec::new();
    for i in 0..files {
        let before = healthy.count();
        let t = Instant::now();
        cbd.change("p", &format!("{prefix}{i}"), "rated", snapshot("x", i));
        healthy.wait_for_count(before + 1, Duration::from_secs(10));
        out.push(t.elapsed().as_millis());
    }
    out.sort_unstable();
    out
}

#[test]
fn dead_and_failing_receivers_do_not_slow_a_healthy_one() {
    let healthy = Receiver::start();
    let dead = Receiver::answering(Reply::Hang);
    let failing = Receiver::answering(Reply::Status(500, vec![]));
    let cbd = Cbd::start(&["--allow-private-targets", "--max-in-flight-per-origin", "4"]);
    cbd.put_callback(
        "p",
        "healthy",
        json!({"url": healthy.url("/h"), "leading": true, "window_secs": 1}),
    );
    let alone = latencies(&cbd, &healthy, "a", 30);

    cbd.put_callback(
        "p",
        "dead",
        json!({"url": dead.url("/d"), "leading": true, "window_secs": 1, "timeout_secs": 30}),
    );
    cbd.put_callback(
        "p",
        "failing",
        json!({"url": failing.url("/f"), "leading": true, "window_secs": 1, "backoff_secs": [1]}),
    );
    // Fill the dead origin's slots and give the failing one retries to make.
    for i in 0..20 {
        cbd.change("p", &format!("warm{i}"), "rated", snapshot("w", i));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let with_bad = latencies(&cbd, &healthy, "b", 30);
    let p50 = |v: &[u128]| v[v.len() / 2];
    eprintln!(
        "healthy receiver delivery latency: alone p50 {} ms max {} ms; beside a dead and a failing receiver p50 {} ms max {} ms",
        p50(&alone), alone.last().unwrap(), p50(&with_bad), with_bad.last().unwrap()
    );
    // An origin that never answered holds only its starting share (limits.rs).
    assert!(
        dead.count() >= cb_dispatcher::limits::STARTING_SLOTS,
        "the dead receiver holds its slots"
    );
    assert!(failing.count() >= 20, "the failing receiver was tried");
    assert!(
        *with_bad.last().unwrap() < 500,
        "a healthy delivery waited {} ms beside bad receivers",
        with_bad.last().unwrap()
    );
}

/// `Retry-After` on a 503 pushes the next attempt later, capped at twice the scheduled delay.
#[test]
fn retry_after_pushes_the_retry_later_within_the_cap() {
    let receiver = Receiver::start();
    receiver.script([
        Reply::Status(503, vec![("retry-after", "2".into())]),
        Reply::ok(),
        Reply::Status(429, vec![("retry-after", "3600".into())]),
        Reply::ok(),
    ]);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "backoff_secs": [1]}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(2, Duration::from_secs(10));
    cbd.change("p", "2", "rated", snapshot("2", 1));
    receiver.wait_for_count(4, Duration::from_secs(10));
    let got = receiver.received();
    let gap1 = got[1].at.duration_since(got[0].at);
    let gap2 = got[3].at.duration_since(got[2].at);
    // Scheduled 1 s ± 20 %; asked 2 s → between 1.6 s (the cap) and 2 s.
    assert!(
        gap1 >= Duration::from_millis(1550) && gap1 <= Duration::from_millis(2300),
        "{gap1:?}"
    );
    // Asked an hour → capped at twice the scheduled delay (≤ 2.4 s).
    assert!(
        gap2 >= Duration::from_millis(1550) && gap2 <= Duration::from_millis(2700),
        "{gap2:?}"
    );
}

/// `410 Gone` disables the callback for every file; a new PUT enables it again.
#[test]
fn gone_disables_the_callback_until_it_is_put_again() {
    let receiver = Receiver::start();
    receiver.script([Reply::Status(410, vec![])]);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let config = json!({"url": receiver.url("/cb"), "leading": true, "window_secs": 1});
    cbd.put_callback("p", "site", config.clone());
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd.wait_for("disabled", Duration::from_secs(5), || {
        cbd.get("/v1/projects/p/callbacks")["callbacks"][0]["enabled"] == false
    });
    let status = cbd.get("/v1/status");
    assert_eq!(status["disabled_callbacks"][0]["name"], "site", "{status}");
    cbd.change("p", "2", "rated", snapshot("2", 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.count(), 1, "a disabled callback sends nothing");
    let (code, body) = cbd.json("POST", "/v1/files/p/1/redeliver?callback=site", None);
    assert_eq!(code, 409, "{body}");

    cbd.put_callback("p", "site", config);
    cbd.change("p", "3", "rated", snapshot("3", 1));
    receiver.wait_for_count(2, Duration::from_secs(5));
    assert_eq!(receiver.received()[1].field("id").as_deref(), Some("3"));
}

/// A receiver that answers `200` and then stalls its body has answered: the delivery is
/// `sent` and nothing is sent again (a timeout here would mean a duplicate delivery).
#[test]
fn a_2xx_whose_body_stalls_is_delivered_once() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let requests = requests.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 65536];
                    // One read takes the whole small request on loopback.
                    if stream.read(&mut buf).unwrap_or(0) > 0 {
                        requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial");
                        std::thread::sleep(Duration::from_secs(30));
                    }
                });
            }
        });
    }
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": format!("http://{addr}/cb"), "leading": true, "timeout_secs": 1, "backoff_secs": [1]}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd.wait_for("sent", Duration::from_secs(10), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "delivered once"
    );
}
