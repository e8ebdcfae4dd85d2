//! The operator console and the rewind route it reads: the page served by the real `cbd`
//! without a token under a strict policy; `GET …/rewind` answering what `cbctl rewind
//! --json` prints; and the console driven in a real headless Chromium (Debian's `chromium`
//! and `chromium-driver`, through WebDriver) against a real receiver, with customer text
//! built to run script if it were ever parsed as HTML.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::cbctl::cbctl;
use crate::support::{snapshot, Cbd, Receiver, Reply, TOKEN};

/// Field values and a receiver's answer that run script if a page parses them as HTML.
const XSS_IMG: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_SCRIPT: &str = "</script><script>window.__xss=2</script>";

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

// ---------------------------------------------------------------------------------------
// The browser test.

/// A receiver whose status can be switched, answering a body with customer text in it (a
/// failure's detail carries the start of the answer, and the console shows it).
struct Switchable {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Switchable {
    fn start(status: u16) -> Switchable {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (status.clone(), hits.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (s, h) = (s.clone(), h.clone());
                        async move {
                            let _ = req.into_body().collect().await;
                            h.fetch_add(1, Ordering::SeqCst);
                            let body = format!("{XSS_IMG} {XSS_SCRIPT}");
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(s.load(Ordering::SeqCst))
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Switchable {
            addr,
            status,
            hits,
            _runtime: runtime,
        }
    }
}

/// A program on the PATH (or in /usr/bin, /usr/lib/chromium), or `None`.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// chromedriver on a free local port; killed (with the browser it started) on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        // A free port: bound by the kernel, released, then taken by chromedriver.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page until it returns something `done` accepts, or fails after
/// `limit` with the last value.
async fn wait_js(
    c: &Client,
    what: &str,
    script: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.expect(what);
        if done(&v) {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The console in a real headless Chromium: log in with the token, see a failing delivery
/// (with a receiver's answer that is script if parsed as HTML, shown as text), redeliver it
/// once the receiver is back and see it delivered, open the file's timeline and a mark's
/// record and payload; no script from the data ran, and no URL the browser loaded carries
/// the token. Fails, naming the packages, when Chromium or chromedriver is missing: CI
/// installs them (.ci/run).
#[test]
fn the_console_in_a_real_browser() {
    let started = Instant::now();
    let (Some(chromedriver), Some(chromium)) = (program("chromedriver"), program("chromium"))
    else {
        panic!(
            "this test drives a real headless Chromium: install it with \
             `apt-get install chromium chromium-driver` (.ci/run does)"
        );
    };
    let receiver = Switchable::start(500);
    let cbd = Cbd::start(&["--allow-private-targets"]);
    cbd.put_callback(
        "p",
        "site",
        json!({
            "url": format!("http://{}/hook", receiver.addr),
            "format": "json",
            "window_secs": 1,
            "leading": true,
            "backoff_secs": [3600],
        }),
    );
    let mut fields = snapshot("556114", 1);
    fields["title"] = XSS_IMG.into();
    fields["message"] = XSS_SCRIPT.into();
    cbd.change("p", "556114", "rated", fields);
    cbd.wait_for("the delivery retrying", Duration::from_secs(10), || {
        cbd.machine("p", "556114", "site")["state"] == "retrying"
    });

    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let shots = tempfile::Builder::new()
        .prefix("cb-console-e2e-")
        .tempdir()
        .unwrap()
        .keep();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session with headless Chromium");
        let result = AssertUnwindSafe(scenario(&c, &cbd, &receiver, &shots))
            .catch_unwind()
            .await;
        // The browser goes with its session, even when the scenario failed: killing
        // chromedriver alone would leave Chromium running.
        let _ = c.close().await;
        if let Err(failure) = result {
            std::panic::resume_unwind(failure);
        }
    });
    eprintln!(
        "console browser test: {:.1} s; screenshot in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

async fn scenario(c: &Client, cbd: &Cbd, receiver: &Switchable, shots: &Path) {
    let wait = Duration::from_secs(15);
    c.goto(&cbd.url("/")).await.expect("open the console");
    // Any policy violation from here on (an inline style the console set, say) is kept.
    c.execute(
        "document.addEventListener('securitypolicyviolation', \
         (e) => (window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));",
        vec![],
    )
    .await
    .unwrap();
    let input = c
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#login:not([hidden]) #token"))
        .await
        .expect("the token form");
    input.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Css("#login-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The failing delivery, listed, the receiver's answer shown as the text it is.
    let row_css = "#deliveries tbody tr[data-file='p/556114'][data-callback='site']";
    let row = c
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(row_css))
        .await
        .expect("the failing delivery listed");
    let state = row.find(Locator::Css("td.state")).await.unwrap();
    assert_eq!(state.text().await.unwrap(), "retrying");
    let outcome = row
        .find(Locator::Css("td.outcome"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        outcome.contains(XSS_IMG) && outcome.contains(XSS_SCRIPT),
        "{outcome}"
    );
    // The project's card: its counts and the failing origin.
    let card = c
        .find(Locator::Css(".card[data-project='p']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(card.contains("retrying 1"), "{card}");
    let failing = c
        .find(Locator::Css(".card[data-project='p'] .failing"))
        .await
        .expect("the failing origins")
        .text()
        .await
        .unwrap();
    assert!(
        failing.contains(&format!("http://{} — 1 failing", receiver.addr)),
        "{failing}"
    );

    // The receiver is back: redeliver, and the row follows the attempt to `sent`.
    receiver.status.store(200, Ordering::SeqCst);
    row.find(Locator::Css("button.redeliver"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let script = format!("return document.querySelector(\"{row_css} td.state\").textContent;");
    wait_js(c, "the row delivered", &script, wait, |v| v == "sent").await;
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 2);

    // The file's timeline: both attempts, one failed and one delivered.
    row.find(Locator::Css("button.link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let counts = wait_js(
        c,
        "the timeline's attempt marks",
        "return [document.querySelectorAll('#timeline svg .mark.attempt').length, \
                 document.querySelectorAll('#timeline svg .mark.attempt.failed').length, \
                 document.querySelectorAll('#timeline svg .mark.attempt.delivered').length, \
                 document.querySelectorAll('#timeline svg .mark.change').length];",
        wait,
        |v| v[0].as_u64() >= Some(2),
    )
    .await;
    assert!(counts[0].as_u64() >= Some(2), "{counts}");
    assert!(counts[1].as_u64() >= Some(1), "a failed attempt: {counts}");
    assert!(
        counts[2].as_u64() >= Some(1),
        "a delivered attempt: {counts}"
    );
    assert!(counts[3].as_u64() >= Some(1), "the change: {counts}");

    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(shots.join("timeline.png"), png).unwrap();

    // A mark opens its record and the request it sent, the snapshot as text.
    c.find(Locator::Css("#timeline svg .mark.attempt.failed"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let values = wait_js(
        c,
        "the failed attempt's payload",
        "return [...document.querySelectorAll('#detail-body table.snapshot td')].map((td) => td.textContent);",
        wait,
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    )
    .await;
    let values: Vec<&str> = values
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(values.contains(&XSS_IMG), "{values:?}");
    assert!(values.contains(&XSS_SCRIPT), "{values:?}");
    let detail = c
        .find(Locator::Id("detail-body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(detail.contains("sent by attempt 1"), "{detail}");
    assert!(
        detail.contains("\"outcome\": \"500\""),
        "the record: {detail}"
    );

    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(shots.join("detail.png"), png).unwrap();

    // Nothing from the data ran or became an element; the policy was never violated.
    let v = c
        .execute(
            "return {xss: typeof window.__xss, imgs: document.querySelectorAll('img').length, \
                     scripts: document.scripts.length, csp: window.__csp || [], \
                     cookie: document.cookie, local: localStorage.length, \
                     session: sessionStorage.getItem('cb.console.token'), \
                     entries: [location.href, ...performance.getEntries().map((e) => e.name)], \
                     urls: [location.href, ...performance.getEntriesByType('navigation'), \
                            ...performance.getEntriesByType('resource')].map((e) => e.name || e)};",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(v["xss"], "undefined", "{v}");
    assert_eq!(v["imgs"], 0, "{v}");
    assert_eq!(v["scripts"], 1, "only console.js: {v}");
    assert_eq!(v["csp"], json!([]), "{v}");
    // The token is in the tab's sessionStorage, and only there.
    assert_eq!(v["session"], TOKEN, "{v}");
    assert_eq!(v["cookie"], "", "{v}");
    assert_eq!(v["local"], 0, "{v}");
    for name in v["entries"].as_array().unwrap() {
        let name = name.as_str().unwrap_or("");
        assert!(!name.contains(TOKEN), "the token in a URL: {name}");
    }
    let urls = v["urls"].as_array().unwrap();
    assert!(
        urls.len() > 5,
        "the page, its files, and the API calls: {v}"
    );
    for url in urls {
        let url = url.as_str().unwrap_or("");
        assert!(!url.contains(TOKEN), "the token in a URL: {url}");
        assert!(url.starts_with(&cbd.url("/")), "a URL elsewhere: {url}");
    }
}
