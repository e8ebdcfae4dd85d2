//! Performing one attempt: load the version, render it, send it, classify what happened.
//!
//! The result is always an [`AttemptReport`] — a failed delivery is an outcome to record,
//! never a Rust error — carrying the digest of the exact bytes rendered for the request, the
//! latency from the moment the attempt got its slot, and a one-line detail for operators.
//! Requests go through one pooled keep-alive client (HTTP/1.1, rustls trusting what
//! [`crate::tls`] says) whose TCP layer is the [`GuardedConnector`], so every connection is
//! checked against the target policy.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cb_core::render::request_url;
use cb_core::{
    render, Attempt, AttemptReport, Digest, MachineKey, Method, Outcome, Placement, Target,
};
use std::sync::Arc;

use crate::log::Log;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};

use crate::limits::LimitsConfig;
use crate::mail::Mailer;
use crate::target::{GuardedConnector, Refused};
use crate::tls::OutgoingTls;

/// What a response body may be before cb stops reading it (and drops the connection).
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;
/// How long a response body may take to drain after the status arrived.
const BODY_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// The longest detail an outcome record carries.
const DETAIL_LIMIT: usize = 300;
/// `User-Agent` of every request.
pub const USER_AGENT_VALUE: &str = concat!("cb/", env!("CARGO_PKG_VERSION"));

/// How deliveries are made.
#[derive(Clone, Debug, Default)]
pub struct DeliveryConfig {
    /// Connect to loopback, private and other non-public addresses too.
    pub allow_private_targets: bool,
    /// Bounds on attempts in flight.
    pub limits: LimitsConfig,
    /// The SMTP relay for `mailto:` callbacks (`host:port`), if any.
    pub smtp: Option<String>,
    /// The sender of those mails (default [`Mailer::DEFAULT_FROM`]).
    pub mail_from: Option<String>,
    /// What HTTPS deliveries trust and present; [`OutgoingTls::system`] when `None`.
    pub tls: Option<OutgoingTls>,
}

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Performs attempts. One per daemon; shared by every attempt task.
pub struct Deliverer {
    client: HttpClient,
    log: Arc<dyn Log>,
    mailer: Option<Result<Mailer, String>>,
    /// Test sends so far: with the time, each one's id.
    tests_sent: AtomicU64,
    /// Whether a client certificate is offered (a TLS failure's sentence depends on it).
    client_cert: bool,
}

impl Deliverer {
    /// A deliverer reading versions from `log`.
    pub fn new(log: Arc<dyn Log>, config: &DeliveryConfig) -> Deliverer {
        let tls = config.tls.clone().unwrap_or_else(OutgoingTls::system);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.client_config().clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector {
                allow_private: config.allow_private_targets,
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.limits.per_origin * 2)
            .build(https);
        Deliverer {
            client,
            log,
            tests_sent: AtomicU64::new(0),
            client_cert: tls.client_cert,
            mailer: config.smtp.as_deref().map(|relay| {
                Mailer::new(
                    relay,
                    config.mail_from.as_deref().unwrap_or(Mailer::DEFAULT_FROM),
                )
            }),
        }
    }

    /// Performs `attempt` and reports how it ended. The driver hands it out holding its slot
    /// (SPEC §6 "Isolation", `limits`); the attempt's timeout and latency start now.
    pub async fn perform(&self, attempt: &Attempt) -> AttemptReport {
        let started = Instant::now();
        let (outcome, digest, detail) = self.attempt(attempt).await;
        let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let mut report = AttemptReport::of(attempt.clone(), outcome, latency_ms, digest);
        report.detail = clip(detail);
        report
    }

    async fn attempt(&self, attempt: &Attempt) -> (Outcome, Digest, String) {
        // Read on this worker, not off it: the version was appended moments ago and is in
        // the page cache, and a thread hop per attempt (spawn_blocking, or one per burst of
        // attempts handed out together) cost 13-47 % of the delivery rate in A/B runs of `cbctl bench`.
        let snapshot = match self.log.snapshot(attempt.version) {
            Ok(Some(s)) => s,
            // The log names a version it cannot produce: record it, so the delivery retries
            // and the operator sees why (and `cbctl replay` flags the digest).
            Ok(None) => {
                return (
                    Outcome::Connect,
                    Digest::of(b""),
                    format!("cb could not find version {} in its log", attempt.version),
                )
            }
            Err(e) => {
                return (
                    Outcome::Connect,
                    Digest::of(b""),
                    format!("cb could not read version {}: {e}", attempt.version),
                )
            }
        };
        // The version is a change record; its event goes in a mail's subject.
        let event = || match self.log.record(attempt.version) {
            Ok(Some(cb_core::Record {
                kind: cb_core::RecordKind::ChangeAppended { event, .. },
                ..
            })) => Some(event),
            _ => None,
        };
        self.send(attempt, &snapshot, Sending::Delivery(&event))
            .await
    }

    /// Sends a project callback the documented test sample now (SPEC §4: `cb-test: 1`,
    /// whatever the callback's state), outside any machine and any slot: an operator is
    /// waiting for the answer.
    pub async fn test_send(
        &self,
        project: &cb_core::ProjectId,
        name: &cb_core::CallbackName,
        callback: Arc<cb_core::Callback>,
        now: cb_core::Timestamp,
    ) -> TestReport {
        let attempt = Attempt {
            machine: MachineKey {
                file: cb_core::FileKey::new(
                    project.clone(),
                    cb_core::FileId::new(cb_core::render::TEST_FILE_ID)
                        .expect("the test file id is a valid id"),
                ),
                callback: cb_core::CallbackRef::Project(name.clone()),
            },
            // Its own id (`webhook-id`, a mail's Message-ID) each time: receivers and mail
            // providers drop a message whose id they have seen, and a second test send is
            // not a resend of the first.
            delivery: cb_core::DeliveryId(cb_core::Seq(
                now.0
                    .saturating_mul(1000)
                    .saturating_add(self.tests_sent.fetch_add(1, Ordering::Relaxed) % 1000),
            )),
            attempt: 1,
            version: cb_core::Seq(0),
            started_at: now,
            redeliver: false,
            callback,
        };
        let started = Instant::now();
        let sample = cb_core::render::test_sample();
        let (outcome, digest, detail) = self.send(&attempt, &sample, Sending::Test).await;
        TestReport {
            outcome,
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            digest,
            detail: clip(detail),
        }
    }

    async fn send<'a>(
        &self,
        attempt: &Attempt,
        snapshot: impl Into<cb_core::SnapshotView<'a>>,
        sending: Sending<'_>,
    ) -> (Outcome, Digest, String) {
        let rendered = render(snapshot, &attempt.callback);
        let digest = rendered.digest();
        let timeout = Duration::from_secs(u64::from(attempt.callback.timeout_secs));
        let (outcome, detail) = match &attempt.callback.target {
            Target::Http(url) => {
                let url = request_url(url, &rendered);
                let test = matches!(sending, Sending::Test);
                let request = match build_request(attempt, &url, &rendered, test) {
                    Ok(r) => r,
                    Err(detail) => return (Outcome::Connect, digest, detail),
                };
                self.exchange(request, timeout).await
            }
            Target::Mail(address) => match &self.mailer {
                None => (
                    Outcome::Connect,
                    format!(
                        "no SMTP relay configured (start cbd with --smtp) for mailto:{address}"
                    ),
                ),
                Some(Err(e)) => (Outcome::Connect, e.clone()),
                Some(Ok(mailer)) => {
                    let id = webhook_id(&attempt.machine, attempt.delivery);
                    let subject = match sending {
                        Sending::Delivery(event) => crate::mail::Subject::Change(event()),
                        Sending::Test => crate::mail::Subject::Test,
                    };
                    let send = mailer.send(address, attempt, subject, &rendered, &id);
                    match tokio::time::timeout(timeout, send).await {
                        Ok(result) => result,
                        Err(_) => (
                            Outcome::Timeout,
                            format!(
                                "the SMTP relay did not finish within {}s",
                                timeout.as_secs()
                            ),
                        ),
                    }
                }
            },
        };
        (outcome, digest, detail)
    }

    /// Sends the request; the answer is its status line and headers, which must arrive
    /// within `timeout`. The body is then drained (bounded in size and time) only so the
    /// connection can carry the next request: a receiver that said 2xx and then stalls its
    /// body has still answered 2xx, and a second delivery would be a duplicate.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> (Outcome, String) {
        // Kept for a failure's sentence (a clone of its shared parts).
        let uri = request.uri().clone();
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return classify_error(&e, uri.host().unwrap_or(""), self.client_cert),
            Err(_) => {
                return (
                    Outcome::Timeout,
                    format!("no answer within {}s", timeout.as_secs()),
                )
            }
        };
        let status = response.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
            _ => None,
        };
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let location = status
            .is_redirection()
            .then(|| response.headers().get(LOCATION))
            .flatten()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // A stalled or oversized body only costs its connection (dropped with the body).
        let deadline = tokio::time::Instant::now() + BODY_DRAIN_LIMIT.min(timeout);
        let body = read_body(response.into_body(), deadline).await;
        let outcome = Outcome::from_status(status.as_u16(), retry_after);
        let mut detail = if outcome.is_delivered() {
            String::new()
        } else {
            let text = String::from_utf8_lossy(&body.text);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut d = format!("HTTP {status}");
            if let Some(location) = &location {
                d.push_str(&format!(
                    " to Location: {location} (cb does not follow redirects: point the \
                     callback's url there if that is where it belongs)"
                ));
            }
            if !text.is_empty() {
                d.push_str(&format!(": {text}"));
            }
            d
        };
        if let Some(note) = body.end.note(body.received, length) {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str(&note);
        }
        (outcome, detail)
    }
}

/// How reading an answer's body ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BodyEnd {
    /// It arrived whole.
    Complete,
    /// The connection ended (or broke) before the body did.
    CutShort,
    /// It did not finish before the deadline.
    Stalled,
    /// It ran past [`RESPONSE_BODY_LIMIT`], where cb stops reading.
    TooLong,
}

impl BodyEnd {
    /// What an attempt's detail says about a body that did not arrive whole, having read
    /// `received` bytes of `length` (its `Content-Length`, if it gave one). A 2xx answer
    /// delivered all the same: the status line is the receiver's word.
    fn note(&self, received: u64, length: Option<u64>) -> Option<String> {
        let of = match length {
            Some(total) => format!("{received} of {total} bytes"),
            None => format!("{received} bytes"),
        };
        match self {
            BodyEnd::Complete | BodyEnd::TooLong => None,
            BodyEnd::CutShort => Some(format!("body cut short after {of}")),
            BodyEnd::Stalled => Some(format!(
                "body unfinished after {}s, at {of}",
                BODY_DRAIN_LIMIT.as_secs()
            )),
        }
    }
}

/// An answer's body as read: its first [`RESPONSE_BODY_LIMIT`] bytes (a failure's detail
/// quotes them), how many arrived, and how it ended.
struct BodyRead {
    text: Vec<u8>,
    received: u64,
    end: BodyEnd,
}

/// Reads `body` until it ends, breaks, passes [`RESPONSE_BODY_LIMIT`] or `deadline`, counting
/// what arrived: only so the connection can carry the next request, and so an attempt can
/// say a body was cut short.
async fn read_body(mut body: hyper::body::Incoming, deadline: tokio::time::Instant) -> BodyRead {
    let mut read = BodyRead {
        text: Vec::new(),
        received: 0,
        end: BodyEnd::Complete,
    };
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                read.end = BodyEnd::Stalled;
                return read;
            }
            Ok(None) => return read,
            Ok(Some(Err(_))) => {
                read.end = BodyEnd::CutShort;
                return read;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read.received += data.len() as u64;
                    let room = RESPONSE_BODY_LIMIT.saturating_sub(read.text.len());
                    read.text.extend_from_slice(&data[..data.len().min(room)]);
                    if read.received > RESPONSE_BODY_LIMIT as u64 {
                        read.end = BodyEnd::TooLong;
                        return read;
                    }
                }
            }
        }
    }
}

/// What a test send observed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TestReport {
    /// How it ended.
    pub outcome: Outcome,
    /// From start to outcome.
    pub latency_ms: u32,
    /// SHA-256 of the exact payload bytes sent.
    pub digest: Digest,
    /// A one-line detail for operators; empty if none.
    pub detail: String,
}

/// Why a request goes out: an attempt of a delivery (with the event of the change it
/// carries, read only if a mail subject needs it), or an operator's test send.
enum Sending<'a> {
    Delivery(&'a (dyn Fn() -> Option<cb_core::EventKind> + Sync)),
    Test,
}

/// The `webhook-id` of a delivery: stable across its retries, unique per machine (delivery
/// ids are shared by every callback a change triggers).
pub fn webhook_id(machine: &MachineKey, delivery: cb_core::DeliveryId) -> String {
    let mut h = Sha256::new();
    h.update(machine.to_string().as_bytes());
    let h = h.finalize();
    format!("msg_{}_{}", delivery.0 .0, hex::encode(&h[..8]))
}

fn build_request(
    attempt: &Attempt,
    url: &str,
    rendered: &cb_core::Rendered,
    test: bool,
) -> Result<Request<Full<Bytes>>, String> {
    let cb = &attempt.callback;
    let method = match cb.method {
        Method::Post => hyper::Method::POST,
        Method::Put => hyper::Method::PUT,
        Method::Get => hyper::Method::GET,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(url)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header("cb-file-version", attempt.version.0.to_string());
    let id = webhook_id(&attempt.machine, attempt.delivery);
    // A `Content-Type` among the callback's headers replaces cb's (one, not two).
    let own_type = cb
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-type"));
    let body = match rendered.placement {
        Placement::Body { content_type } => {
            if !own_type {
                builder = builder.header(CONTENT_TYPE, content_type);
            }
            Bytes::copy_from_slice(&rendered.bytes)
        }
        Placement::Query => Bytes::new(),
    };
    if !cb.secrets.is_empty() {
        // Standard Webhooks: each attempt is signed afresh, at the time it is sent, so a
        // receiver's replay-window check passes on a retry hours later.
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        builder = builder
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                cb_core::signing::signature_header(&cb.secrets, &id, timestamp, &body),
            );
    }
    builder = builder.header("webhook-id", id);
    if test {
        builder = builder.header("cb-test", "1");
    }
    for h in &cb.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| format!("header name {:?}: {e}", h.name))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|e| format!("header {:?} value: {e}", h.name))?;
        builder = builder.header(name, value);
    }
    builder.body(Full::new(body)).map_err(|e| {
        // The cause first: a URL too long to build is the usual case, and the detail is
        // clipped.
        let shown = cb_core::clipped(url, 120);
        format!(
            "cannot build the request ({e}) for a URL of {} bytes: {shown}…",
            url.len()
        )
    })
}

/// Seconds from a `Retry-After` value: delta-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<u32> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let secs = when
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_secs());
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

/// Maps a client error to an outcome: the target policy, TLS, or anything else that kept a
/// complete answer from arriving (connect, reset, closed early). A TLS failure's detail is
/// the sentence [`crate::tls::explain`] gives for talking to `host`; others' is the chain of
/// errors.
fn classify_error(
    e: &hyper_util::client::legacy::Error,
    host: &str,
    client_cert: bool,
) -> (Outcome, String) {
    let mut chain: Vec<String> = Vec::new();
    let mut outcome = Outcome::Connect;
    let mut tls_detail = None;
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if err.downcast_ref::<Refused>().is_some() {
            outcome = Outcome::TargetRefused;
        } else if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            && outcome == Outcome::Connect
        {
            // hyper reads an answer only once the request is written: the end of the
            // connection before any answer came after the request went out.
            outcome = Outcome::Closed;
        } else if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            if outcome == Outcome::Connect {
                outcome = Outcome::Tls;
                tls_detail = Some(crate::tls::explain(tls, host, client_cert));
            }
        }
        let text = err.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        // `io::Error::source` skips the error it wraps: step into it explicitly.
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    match (outcome, tls_detail) {
        (Outcome::Tls, Some(sentence)) => (outcome, sentence),
        (Outcome::Closed, _) => (
            outcome,
            format!(
                "the receiver closed the connection after cb sent the request, without an \
                 answer ({}); it may have acted on it: the retry carries the same webhook-id",
                chain.last().map_or("", String::as_str)
            ),
        ),
        _ => (outcome, chain.join(": ")),
    }
}

fn clip(mut s: String) -> String {
    let end = cb_core::clipped(&s, DETAIL_LIMIT).len();
    if end < s.len() {
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(120));
        assert_eq!(parse_retry_after(" 7 "), Some(7));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// A `Content-Type` among the callback's headers replaces cb's: one header, not two.
    #[test]
    fn a_configured_content_type_replaces_cbs() {
        let attempt = |headers: &str| {
            let callback = cb_core::Callback::from_json(&format!(
                r#"{{"url":"https://x.org/cb","format":"json","headers":{headers}}}"#
            ))
            .unwrap();
            Attempt {
                machine: MachineKey {
                    file: cb_core::FileKey::parse("p/1").unwrap(),
                    callback: cb_core::CallbackRef::parse("site").unwrap(),
                },
                delivery: cb_core::DeliveryId(cb_core::Seq(2)),
                attempt: 1,
                version: cb_core::Seq(2),
                started_at: cb_core::Timestamp(0),
                redeliver: false,
                callback: std::sync::Arc::new(callback),
            }
        };
        let snapshot = cb_core::Snapshot::from_pairs([("id", "1")]).unwrap();
        let types = |a: &Attempt| {
            let rendered = cb_core::render(&snapshot, &a.callback);
            let request = build_request(a, "https://x.org/cb", &rendered, false).unwrap();
            let values: Vec<String> = request
                .headers()
                .get_all(CONTENT_TYPE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            values
        };
        assert_eq!(types(&attempt("[]")), ["application/json"]);
        let own = attempt(r#"[{"name":"Content-Type","value":"application/json; charset=utf-8"}]"#);
        assert_eq!(types(&own), ["application/json; charset=utf-8"]);
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let s = "é".repeat(400);
        let c = clip(s);
        assert!(c.len() <= DETAIL_LIMIT + 3);
        assert!(c.ends_with('…'));
    }
}
