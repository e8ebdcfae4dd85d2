//! Drives a running `cbd` and measures what SPEC §8 asks of the daemon end to end: durable
//! ingest (NDJSON batches of 1000; single changes from 64 concurrent clients) and delivery to
//! a local keep-alive receiver that this program runs itself.
//!
//! ```sh
//! cargo build --release -p cb-cli
//! CBD_TOKEN=bench-token-0123456789 target/release/cbd --data-dir /tmp/cb-load --allow-private-targets &
//! CBD_TOKEN=bench-token-0123456789 cargo run --release -p cb-cli --example daemon_load -- \
//!     --server http://127.0.0.1:8650 [--changes 200000] [--files 100000] [--seconds 5] [--deliveries 50000]
//! ```
//!
//! Snapshots are the seed's 52-field getFileInfo sample (~1.7 KB as XML), ids varied. The
//! delivery phase holds the receiver's answers until every change of the phase is
//! acknowledged and due, then releases them and times the drain, so the figure is the
//! delivery rate and not the ingest rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

struct Opts {
    server: String,
    changes: usize,
    files: usize,
    seconds: u64,
    deliveries: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        server: "http://127.0.0.1:8650".into(),
        changes: 200_000,
        files: 100_000,
        seconds: 5,
        deliveries: 50_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--server" => o.server = v,
            "--changes" => o.changes = v.parse().expect("--changes N"),
            "--files" => o.files = v.parse().expect("--files N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--deliveries" => o.deliveries = v.parse().expect("--deliveries N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

fn snapshot(id: &str, counter: usize) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (name, value) in cb_core::render::fixtures::SEED_001_FIELDS {
        let value = match name {
            "id" => id.to_owned(),
            "title" => format!("change {counter}"),
            _ => value.to_owned(),
        };
        m.insert(name.to_owned(), value.into());
    }
    m
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    token: &str,
    method: &str,
    url: &str,
    body: Bytes,
) -> (u16, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

#[tokio::main]
async fn main() {
    let o = opts();
    let token = std::env::var("CBD_TOKEN").expect("set CBD_TOKEN to cbd's token");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http();

    // The receiver: counts requests; holds answers while `gate` is closed.
    let received = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(AtomicBool::new(true));
    let notify = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}/cb", listener.local_addr().unwrap());
    {
        let (received, gate, notify) = (received.clone(), gate.clone(), notify.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                let (received, gate, notify) = (received.clone(), gate.clone(), notify.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (received, gate, notify) =
                                (received.clone(), gate.clone(), notify.clone());
                            async move {
                                let _ = req.into_body().collect().await;
                                while !gate.load(Ordering::Acquire) {
                                    let wait = notify.notified();
                                    if gate.load(Ordering::Acquire) {
                                        break;
                                    }
                                    wait.await;
                                }
                                received.fetch_add(1, Ordering::Relaxed);
                                Ok::<_, std::convert::Infallible>(Response::new(
                                    Empty::<Bytes>::new(),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    let server = o.server.trim_end_matches('/').to_owned();
    let put = |project: &str, window: u32| {
        let (client, token, server, url) = (
            client.clone(),
            token.clone(),
            server.clone(),
            receiver_url.clone(),
        );
        let project = project.to_owned();
        async move {
            let body = json!({"url": url, "window_secs": window});
            let (s, b) = call(
                &client,
                &token,
                "PUT",
                &format!("{server}/v1/projects/{project}/callbacks/site"),
                body.to_string().into(),
            )
            .await;
            assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        }
    };

    // 1. NDJSON batches of 1000, durable. A long window keeps deliveries out of the way.
    put("ingest", 3600).await;
    println!("preparing {} changes over {} files…", o.changes, o.files);
    let batches: Vec<Bytes> = (0..o.changes.div_ceil(1000))
        .map(|b| {
            let mut body = Vec::with_capacity(1000 * 2200);
            for i in b * 1000..((b + 1) * 1000).min(o.changes) {
                let id = format!("f{}", i % o.files);
                let line = json!({"project": "ingest", "file_id": id, "event": "rated", "file": snapshot(&id, i)});
                serde_json::to_writer(&mut body, &line).unwrap();
                body.push(b'\n');
            }
            Bytes::from(body)
        })
        .collect();
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (client, token, server, batches, next) = (
                client.clone(),
                token.clone(),
                server.clone(),
                batches.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(body) = batches.get(i) else { break };
                    let (s, b) = call(
                        &client,
                        &token,
                        "POST",
                        &format!("{server}/v1/changes/batch"),
                        body.clone(),
                    )
                    .await;
                    assert_eq!(s, 202, "{}", String::from_utf8_lossy(&b));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest, NDJSON batches of 1000, 2 clients, durable: {} changes in {:.2} s = {:.0} changes/s (SPEC §8: ≥ 100,000)",
        o.changes, secs, o.changes as f64 / secs
    );
    drop(batches);

    // 2. Single changes from 64 concurrent clients, durable.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // The client's own work stays small (it shares the machine): the snapshot is serialized
    // once, and each request only formats the file id in.
    let file_json = Arc::new(serde_json::to_string(&snapshot("x", 0)).unwrap());
    let workers: Vec<_> = (0..64)
        .map(|c| {
            let file_json = file_json.clone();
            let (client, token, server, stop, count) = (client.clone(), token.clone(), server.clone(), stop.clone(), count.clone());
            let files = o.files;
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("f{}", (c * 7919 + n * 64) % files);
                    let body = format!(
                        r#"{{"project":"ingest","file_id":"{id}","event":"moderated","file":{file_json}}}"#
                    );
                    let (s, b) = call(&client, &token, "POST", &format!("{server}/v1/changes"), body.into()).await;
                    assert_eq!(s, 202, "{}", String::from_utf8_lossy(&b));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    println!(
        "ingest, single changes, 64 concurrent clients, durable: {n} changes in {secs:.2} s = {:.0} changes/s (SPEC §8: ≥ 10,000)",
        n as f64 / secs
    );

    // 3. Delivery: `deliveries` files change once (window 1 s); the receiver holds its
    // answers until all are acknowledged and due, then the drain is timed.
    put("deliver", 1).await;
    gate.store(false, Ordering::Release);
    let before = received.load(Ordering::Relaxed);
    for chunk in (0..o.deliveries).collect::<Vec<_>>().chunks(1000) {
        let mut body = Vec::new();
        for &i in chunk {
            let id = format!("d{i}");
            let line = json!({"project": "deliver", "file_id": id, "event": "rated", "file": snapshot(&id, i)});
            serde_json::to_writer(&mut body, &line).unwrap();
            body.push(b'\n');
        }
        let (s, b) = call(
            &client,
            &token,
            "POST",
            &format!("{server}/v1/changes/batch"),
            body.into(),
        )
        .await;
        assert_eq!(s, 202, "{}", String::from_utf8_lossy(&b));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    gate.store(true, Ordering::Release);
    notify.notify_waiters();
    let target = before + o.deliveries as u64;
    let mut last_progress = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    while received.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            println!("delivery stalled at {} of {}", now - before, o.deliveries);
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let delivered = received.load(Ordering::Relaxed) - before;
    println!(
        "delivery to a local keep-alive receiver: {delivered} callbacks in {secs:.2} s = {:.0} callbacks/s (SPEC §8: ≥ 20,000)",
        delivered as f64 / secs
    );
    // Let the outcomes land, then show the daemon's own view.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, m) = call(
        &client,
        &token,
        "GET",
        &format!("{server}/metrics"),
        Bytes::new(),
    )
    .await;
    for line in String::from_utf8_lossy(&m).lines() {
        if line.starts_with("cb_attempts_total")
            || line.starts_with("cb_changes_total")
            || line.starts_with("cb_machines")
        {
            println!("  {line}");
        }
    }
}
