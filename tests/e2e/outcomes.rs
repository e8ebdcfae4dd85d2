//! Outcomes that say what happened, against raw local receivers that misbehave on purpose:
//! a 2xx whose body is cut short is delivered once, with the shortfall in its detail; a
//! receiver that reads the request and closes is `closed`, not `connect`; a 3xx names its
//! `Location`; a `Retry-After` past the cap shows what was asked and what cb waited. And a
//! JSON change's numbers, booleans and nulls are taken, in a single change and a batch, and
//! come back typed through a callback's typed fields.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{snapshot, Cbd, Receiver, Reply};

/// What a raw receiver does once it has read a request whole.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Sends this head and these body bytes, then closes.
    Send(&'static str, &'static str),
    /// Closes without a word.
    Close,
}

/// A receiver on 127.0.0.1 that answers every request as `how`; counts the requests.
struct RawReceiver {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl RawReceiver {
    fn start(how: Misbehave) -> RawReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if read_request(&stream).is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut stream = stream;
                    if let Misbehave::Send(head, body) = how {
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(body.as_bytes());
                        let _ = stream.flush();
                    }
                    // Dropped: closed.
                }
            }
        });
        RawReceiver { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cb", self.port)
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request's head and its `Content-Length` body; `None` if the client went away.
fn read_request(stream: &TcpStream) -> Option<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(())
}

/// Puts `config` as callback `site` of project `p`, posts a change of file 1 and waits until
/// the machine is in `state`; the attempt steps of the file's history.
fn attempts_until(cbd: &Cbd, config: Value, state: &str) -> Vec<Value> {
    cbd.put_callback("p", "site", config);
    cbd.change("p", "1", "rated", snapshot("1", 1));
    cbd.wait_for(state, Duration::from_secs(20), || {
        cbd.machine("p", "1", "site")["state"] == state
    });
    let history = cbd.get("/v1/files/p/1/history");
    history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "attempt")
        .cloned()
        .collect()
}

/// A 200 whose body stops at 10 of the 100 bytes it announced: delivered, sent once, and
/// the detail says the body was cut short.
#[test]
fn a_2xx_cut_short_is_delivered_once_and_says_so() {
    let receiver = RawReceiver::start(Misbehave::Send(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        "0123456789",
    ));
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let attempts = attempts_until(
        &cbd,
        json!({"url": receiver.url(), "leading": true, "backoff_secs": [1]}),
        "sent",
    );
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["class"], "delivered");
    assert_eq!(
        attempts[0]["detail"],
        "body cut short after 10 of 100 bytes"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.count(), 1, "a delivered change is not sent twice");
}

/// A receiver that reads the whole request and closes: outcome `closed`, with a detail that
/// says the request went out, and it is retried like any failure.
#[test]
fn a_receiver_that_closes_after_the_request_is_closed_not_connect() {
    let receiver = RawReceiver::start(Misbehave::Close);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let attempts = attempts_until(
        &cbd,
        json!({"url": receiver.url(), "leading": true, "backoff_secs": [60]}),
        "retrying",
    );
    assert_eq!(attempts[0]["class"], "closed", "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "closed-without-answer");
    let detail = attempts[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "the receiver closed the connection after cb sent the request, without an answer"
        ),
        "{detail}"
    );
    // Listed and counted under its own name.
    let listed = cbd.get("/v1/attempts?outcome=closed");
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let (_, metrics) = cbd.call_with("GET", "/metrics", None, None, None);
    assert!(metrics.contains("outcome=\"closed\""), "{metrics}");
    // And a port nobody listens on is still `connect`.
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cbd.put_callback(
        "p",
        "dead",
        json!({"url": format!("http://127.0.0.1:{closed_port}/cb"), "leading": true, "backoff_secs": [60]}),
    );
    cbd.change("p", "2", "rated", snapshot("2", 1));
    cbd.wait_for("the dead port's attempt", Duration::from_secs(20), || {
        cbd.machine("p", "2", "dead")["state"] == "retrying"
    });
    assert_eq!(
        cbd.machine("p", "2", "dead")["last_outcome"]["class"],
        "connect"
    );
}

/// A 301 names where it points, and that cb does not follow it.
#[test]
fn a_redirect_names_its_location() {
    let receiver = Receiver::answering(Reply::Status(
        301,
        vec![("location", "https://new.example.org/cb".into())],
    ));
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let attempts = attempts_until(
        &cbd,
        json!({"url": receiver.url("/cb"), "leading": true, "backoff_secs": [60]}),
        "retrying",
    );
    assert_eq!(attempts[0]["class"], "redirect");
    let detail = attempts[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("HTTP 301 Moved Permanently to Location: https://new.example.org/cb (cb does not follow redirects"),
        "{detail}"
    );
}

/// `Retry-After: 3600` on a 503 with a 2 s schedule: retried after at most 4.8 s, and the
/// history says what was asked and what cb waited, in the API and in `cbctl history`.
#[test]
fn a_capped_retry_after_shows_what_was_asked_and_what_cb_waited() {
    let receiver = Receiver::start();
    receiver.script([
        Reply::Status(503, vec![("retry-after", "3600".into())]),
        Reply::ok(),
    ]);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    let attempts = attempts_until(
        &cbd,
        json!({"url": receiver.url("/cb"), "leading": true, "backoff_secs": [2]}),
        "retrying",
    );
    let wait = &attempts[0]["retry_after"];
    assert_eq!(wait["asked_secs"], 3600, "{attempts:?}");
    assert_eq!(wait["capped"], true);
    let waited = wait["waited_ms"].as_u64().unwrap();
    assert!((3200..=4800).contains(&waited), "{waited}");
    let note = wait["note"].as_str().unwrap();
    let secs = format!("{}", (waited as f64 / 100.0).round() / 10.0);
    assert_eq!(
        note,
        format!("asked 3600 s, retried after {secs} s (cap: 2 × the scheduled delay)")
    );
    let (_, text, _) = crate::cbctl::cbctl_online(&cbd.url(""), &["history", "p/1"]);
    assert!(text.contains(&format!("[{note}]")), "{text}");
    receiver.wait_for_count(2, Duration::from_secs(10));
}

/// Numbers, booleans and null in a JSON change's `file` are taken — a number or boolean
/// keeps its text, null is empty — in one change and in a batch; a callback's typed fields
/// send them typed; an object is refused with the field named.
#[test]
fn json_scalars_are_taken_and_come_back_typed() {
    let receiver = Receiver::start();
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({
            "url": receiver.url("/cb"), "leading": true, "format": "json",
            "fields": ["id", "duration:number", "live:bool", "price:number", "note", "raw=duration"]
        }),
    );
    let file = json!({"id": "7", "duration": 120, "live": true, "price": 1.50, "note": null});
    // serde_json writes 1.5: send the body as text to keep `1.50` as a platform wrote it.
    let body = r#"{"project":"p","file_id":"7","event":"rated","file":{"id":"7","duration":120,"live":true,"price":1.50,"note":null}}"#;
    let (status, text) = cbd.call(
        "POST",
        "/v1/changes",
        Some("application/json"),
        Some(body.as_bytes()),
    );
    assert_eq!(status, 202, "{text}");
    receiver.wait_for_count(1, Duration::from_secs(10));
    let got: Value = serde_json::from_slice(&receiver.received()[0].body).unwrap();
    assert_eq!(
        got,
        json!({"id": "7", "duration": 120, "live": true, "price": 1.50, "note": "", "raw": "120"})
    );
    let state = cbd.get("/v1/files/p/7");
    assert_eq!(state["file"]["price"], "1.50", "{state}");
    assert_eq!(state["file"]["note"], "", "{state}");

    let (first, last) = cbd.batch(&[
        json!({"project": "p", "file_id": "8", "event": "rated", "file": {"id": "8", "duration": -3, "live": false}}),
        json!({"project": "p", "file_id": "9", "event": "rated", "file": file}),
    ]);
    assert_eq!(last - first, 1);
    receiver.wait_for_count(3, Duration::from_secs(10));

    for (bad, what) in [
        (
            json!({"id": "1", "meta": {"a": 1}}),
            "field \"meta\" is an object",
        ),
        (
            json!({"id": "1", "tags": ["a"]}),
            "field \"tags\" is an array",
        ),
    ] {
        let (status, v) = cbd.json(
            "POST",
            "/v1/changes",
            Some(&json!({"project": "p", "file_id": "1", "event": "rated", "file": bad})),
        );
        assert_eq!(status, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(what), "{v}");
    }
}
