//! Crashes and restarts: nothing acknowledged is lost, windows keep their due times,
//! attempts in flight are attempted again, SIGTERM stops cleanly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{snapshot, Cbd, Receiver, Reply, TOKEN};

/// SIGKILL while 64 clients post changes and callbacks are in flight; after a restart every
/// change that got a 202 is in the log, and every file's final snapshot is delivered.
#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    // Slow answers keep attempts in flight at the moment of the kill.
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(100), 200));
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 1, "leading": true}),
    );
    let acked: Arc<Mutex<Vec<(u64, String, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = cbd.url("/v1/changes");
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let file_id = format!("f{}", (c * 7 + n) % 50);
                    let counter = c * 100_000 + n;
                    let body = json!({"project": "p", "file_id": file_id, "event": "rated", "file": snapshot(&file_id, counter)});
                    match agent
                        .post(&url)
                        .set("Authorization", &format!("Bearer {TOKEN}"))
                        .send_json(body)
                    {
                        Ok(r) if r.status() == 202 => {
                            let v: serde_json::Value = r.into_json().unwrap();
                            acked.lock().unwrap().push((v["seq"].as_u64().unwrap(), file_id, counter));
                        }
                        // The daemon died under us: this change was never acknowledged.
                        _ => break,
                    }
                }
            })
        })
        .collect();
    cbd.wait_for("deliveries under way", Duration::from_secs(10), || {
        receiver.count() >= 20
    });
    std::thread::sleep(Duration::from_millis(300));
    cbd.kill();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} changes acknowledged",
        acked.len()
    );

    cbd.kill_and_restart();
    let log = cbd.log();
    let changes: HashMap<u64, &serde_json::Value> = log
        .iter()
        .filter(|l| l["kind"] == "change")
        .map(|l| (l["seq"].as_u64().unwrap(), l))
        .collect();
    for (seq, file_id, counter) in &acked {
        let line = changes
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged change {seq} lost"));
        assert_eq!(line["file_id"], file_id.as_str());
        assert_eq!(line["file"]["counter"], counter.to_string());
    }
    // Every file's final version (acknowledged or not, it is in the log) gets delivered.
    let mut final_version: HashMap<String, u64> = HashMap::new();
    for (seq, line) in &changes {
        let f = line["file_id"].as_str().unwrap().to_owned();
        let e = final_version.entry(f).or_insert(0);
        *e = (*e).max(*seq);
    }
    cbd.wait_for(
        "every final snapshot delivered",
        Duration::from_secs(30),
        || {
            let delivered: HashSet<(String, u64)> = receiver
                .received()
                .iter()
                .map(|r| (r.field("id").unwrap(), r.version()))
                .collect();
            final_version
                .iter()
                .all(|(f, v)| delivered.contains(&(f.clone(), *v)))
        },
    );
    eprintln!(
        "{} acknowledged changes survived the kill; {} files delivered",
        acked.len(),
        final_version.len()
    );
}

/// A change with a 5 s window, cbd killed and restarted after 1 s → delivered at ~5 s.
#[test]
fn restart_keeps_windows() {
    let receiver = Receiver::start();
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "window_secs": 5}),
    );
    let t0 = Instant::now();
    cbd.change("p", "1", "rated", snapshot("1", 1));
    std::thread::sleep(Duration::from_secs(1));
    cbd.kill_and_restart();
    receiver.wait_for_count(1, Duration::from_secs(10));
    let at = receiver.received()[0].at.duration_since(t0);
    assert!(
        at >= Duration::from_millis(4900) && at <= Duration::from_millis(5800),
        "delivered {at:?} after the change"
    );
}

/// An attempt in flight when cbd dies is attempted again after the restart; SIGTERM waits
/// for attempts in flight and exits 0.
#[test]
fn in_flight_attempts_resume_and_sigterm_is_graceful() {
    let receiver = Receiver::start();
    receiver.script([Reply::Hang]);
    let mut cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "timeout_secs": 30}),
    );
    let v = cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(1, Duration::from_secs(5));
    cbd.kill_and_restart();
    receiver.wait_for_count(2, Duration::from_secs(5));
    let got = receiver.received();
    assert_eq!(got[1].version(), v);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    cbd.wait_for("sent", Duration::from_secs(5), || {
        cbd.machine("p", "1", "site")["state"] == "sent"
    });

    // Graceful: an attempt in flight (a 1 s answer) finishes before the exit.
    receiver.script([Reply::Delayed(Duration::from_secs(1), 200)]);
    cbd.change("p", "2", "rated", snapshot("2", 1));
    receiver.wait_for_count(3, Duration::from_secs(5));
    let status = cbd.terminate();
    assert!(status.success(), "{status}");
    let stderr = cbd.stderr();
    assert!(stderr.contains("final checkpoint written"), "{stderr}");
    cbd.kill_and_restart();
    assert_eq!(cbd.machine("p", "2", "site")["state"], "sent");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.count(), 3, "nothing was left in flight to resend");
}

/// A second SIGTERM during the shutdown grace stops cbd at once (exit 1), as an operator's
/// second Ctrl-C expects; the attempt it left in flight is made again at the next start,
/// with the same `webhook-id`.
#[test]
fn a_second_signal_stops_at_once_and_the_attempt_is_made_again() {
    let receiver = Receiver::answering(Reply::Hang);
    let mut cbd = Cbd::start(&["--allow-private-targets", "--shutdown-grace-secs", "30"]);
    cbd.put_callback(
        "p",
        "site",
        json!({"url": receiver.url("/cb"), "leading": true, "timeout_secs": 60}),
    );
    cbd.change("p", "1", "rated", snapshot("1", 1));
    receiver.wait_for_count(1, Duration::from_secs(5));
    let asked = std::time::Instant::now();
    cbd.signal_term();
    std::thread::sleep(Duration::from_millis(300));
    cbd.signal_term();
    let status = cbd.wait();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(
        cbd.stderr().contains("stopping at once"),
        "{}",
        cbd.stderr()
    );
    receiver.set_default(Reply::ok());
    cbd.kill_and_restart();
    receiver.wait_for_count(2, Duration::from_secs(5));
    let got = receiver.received();
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

/// A stop sent while cbd is still starting is caught, not fatal: cbd installs its signal
/// handlers before it opens the data dir, so once `LOCK` exists a SIGTERM is cbd's to
/// handle — it finishes starting, stops gracefully and exits 0. (With the handlers
/// installed after "listening", a stop right after start killed cbd by the default action.)
#[test]
fn sigterm_while_starting_stops_gracefully() {
    use std::process::{Command, Stdio};
    for _ in 0..3 {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let child = Command::new(env!("CARGO_BIN_EXE_cbd"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("CBD_TOKEN", TOKEN)
            .env("CBD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cbd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("LOCK").exists() {
            assert!(Instant::now() < deadline, "cbd never locked its data dir");
            std::thread::sleep(Duration::from_micros(200));
        }
        crate::support::sigterm(&child);
        let out = child.wait_with_output().expect("wait for cbd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", out.status);
        assert!(stderr.contains("stopping"), "{stderr}");
    }
}
