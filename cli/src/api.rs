//! The HTTP API of SPEC §6 on hyper: routing, authentication, body limits, and one handler
//! per route.
//!
//! Handlers validate everything (`ingest`) before they append, append through the
//! dispatcher's [`Handle`] (group commit: the 202 is sent only once the records are durable),
//! and read state through [`Handle::query`] (the live core, caught up with the log) or the
//! store's per-file index. Every refusal is a 4xx `{"error","detail"}`; a handler never
//! panics on input. The operator console's page and files ([`crate::console`]) are served
//! here too, without a token: they hold no data.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use cb_core::{CallbackName, CallbackRef, FileHistory, FileKey, RecordKind, Seq};
use cb_dispatcher::exposition::Format;
use cb_dispatcher::metrics::{AckRoute, Disk, Scrape};
use cb_dispatcher::Handle;
use cb_store::Input;
use futures_util::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, VARY};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{debug, info};

use crate::console;
use crate::credentials::{Caller, Credentials, Scope};
use crate::error::ApiError;
use crate::ingest::{self, Rules};
use crate::lists;
use crate::reload::Current;
use crate::rewind;
use crate::view;

/// A response body: whole, or streamed (`/v1/log`).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Everything a request handler needs.
pub struct Api {
    /// The dispatcher.
    pub handle: Handle,
    /// The tokens accepted now, and what each may do (replaced on SIGHUP).
    pub credentials: Current<Credentials>,
    /// `/metrics` needs a token of scope `read` (`--metrics-auth`).
    pub metrics_auth: bool,
    /// Ingest rules.
    pub rules: Rules,
    /// Largest body, batches excepted.
    pub max_body: usize,
    /// Largest batch body.
    pub max_batch: usize,
}

impl Api {
    /// Builds the API state.
    pub fn new(
        handle: Handle,
        credentials: Credentials,
        rules: Rules,
        max_body: usize,
        max_batch: usize,
    ) -> Api {
        Api {
            handle,
            credentials: Current::new(credentials),
            metrics_auth: false,
            rules,
            max_body,
            max_batch,
        }
    }

    /// `/metrics` needs a token of scope `read` (`--metrics-auth`).
    pub fn with_metrics_auth(mut self, metrics_auth: bool) -> Api {
        self.metrics_auth = metrics_auth;
        self
    }
}

/// One of the console's files ([`console::asset`]), by its path without the leading `/`.
fn console_asset(page: &str) -> Result<Response<Body>, ApiError> {
    console::asset(page).ok_or_else(|| ApiError::not_found(format!("no route /{page}")))
}

/// Answers one request. Never fails: errors are JSON answers.
pub async fn serve(api: Arc<Api>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route(&api, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(%method, %path, code = e.code, detail = %e.detail, "request failed");
            } else {
                info!(%method, %path, status = e.status.as_u16(), code = e.code, detail = %e.detail, "request refused");
            }
            error_response(&e)
        }
    };
    debug!(%method, %path, status = response.status().as_u16(), "request");
    Ok(response)
}

async fn route(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // HEAD is GET without the body (hyper sends none for HEAD): load balancers and
    // monitors probe with it.
    let asked = req.method().clone();
    let method = match asked {
        Method::HEAD => Method::GET,
        ref m => m.clone(),
    };
    let access = access(&method, &segments, api.metrics_auth);
    if access != Access::Open {
        let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        let Some(caller) = api.credentials.get().authenticate(auth) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token> (CBD_TOKEN, the file DIR/token, or a \
                 token of the tokens file)",
            ));
        };
        if let Access::Scope(needed) = access {
            check_scope(&caller, needed, &asked, &path)?;
        }
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => healthz(api),
        (&Method::GET, [""]) => console_asset(""),
        (&Method::GET, ["console"]) => console_asset("console"),
        (&Method::GET, ["console.js"]) => console_asset("console.js"),
        (&Method::GET, ["console.css"]) => console_asset("console.css"),
        (&Method::GET, ["metrics"]) => metrics(api, req.headers().get(ACCEPT)).await,
        (&Method::GET, ["v1", "openapi.json"]) => Ok(openapi()),
        (&Method::POST, ["v1", "changes"]) => post_change(api, req).await,
        (&Method::POST, ["v1", "changes", "batch"]) => post_batch(api, req).await,
        (&Method::GET, ["v1", "projects", p, "callbacks"]) => list_callbacks(api, p).await,
        (&Method::GET, ["v1", "projects", p, "callbacks", n]) => get_callback(api, p, n).await,
        (&Method::PUT, ["v1", "projects", p, "callbacks", n]) => {
            let (p, n) = (p.to_string(), n.to_string());
            put_callback(api, &p, &n, req).await
        }
        (&Method::DELETE, ["v1", "projects", p, "callbacks", n]) => {
            delete_callback(api, p, n).await
        }
        (&Method::POST, ["v1", "projects", p, "callbacks", n, "pause"]) => {
            pause(api, p, n, true).await
        }
        (&Method::POST, ["v1", "projects", p, "callbacks", n, "test"]) => {
            test_send(api, p, n).await
        }
        (&Method::POST, ["v1", "projects", p, "callbacks", n, "resume"]) => {
            pause(api, p, n, false).await
        }
        (&Method::GET, ["v1", "files", p, f]) => file_state(api, p, f).await,
        (&Method::GET, ["v1", "files", p, f, "history"]) => {
            let page = view::HistoryPage::from_query(req.uri().query())?;
            file_history(api, p, f, page).await
        }
        (&Method::GET, ["v1", "files", p, f, "rewind"]) => {
            let q = query(req.uri().query(), &["to"])?;
            file_rewind(api, p, f, q.get("to").map(String::as_str)).await
        }
        (&Method::POST, ["v1", "files", p, f, "redeliver"]) => {
            let q = query(req.uri().query(), &["callback"])?;
            redeliver(api, p, f, q.get("callback").map(String::as_str)).await
        }
        (&Method::GET, ["v1", "log"]) => log(api, req.uri().query()),
        (&Method::GET, ["v1", "status"]) => status(api).await,
        (&Method::GET, ["v1", "deliveries"]) => deliveries(api, req.uri().query()).await,
        (&Method::GET, ["v1", "attempts"]) => attempts(api, req.uri().query()).await,
        (&Method::POST, ["v1", "redeliver"]) => bulk_redeliver(api, req).await,
        (&Method::GET, ["v1", "projects"]) => {
            let params = lists::ProjectParams::from_query(req.uri().query())?;
            let page = api
                .handle
                .query(move |core| params.page(core))
                .await
                .map_err(driver_stopped)?;
            Ok(json_response(StatusCode::OK, &page))
        }
        (_, route) => match allowed_methods(route) {
            Some(allow) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{asked} is not allowed on {path}; it takes {allow}"),
            )
            .allowing(allow)),
            None => Err(ApiError::not_found(format!("no route {path}"))),
        },
    }
}

/// The methods a known path takes (the `Allow` header of a 405); `None` for no such path.
fn allowed_methods(route: &[&str]) -> Option<&'static str> {
    Some(match route {
        ["healthz" | "metrics"] => "GET, HEAD",
        [""] | ["console"] | ["console.js"] | ["console.css"] => "GET, HEAD",
        ["v1", "changes"] | ["v1", "changes", "batch"] => "POST",
        ["v1", "log" | "status" | "deliveries" | "attempts" | "projects"] => "GET, HEAD",
        ["v1", "openapi.json"] => "GET, HEAD",
        ["v1", "projects", _, "callbacks"] => "GET, HEAD",
        ["v1", "projects", _, "callbacks", _] => "GET, HEAD, PUT, DELETE",
        ["v1", "projects", _, "callbacks", _, "pause" | "resume" | "test"] => "POST",
        ["v1", "files", _, _] | ["v1", "files", _, _, "history"] => "GET, HEAD",
        ["v1", "files", _, _, "rewind"] => "GET, HEAD",
        ["v1", "files", _, _, "redeliver"] | ["v1", "redeliver"] => "POST",
        _ => return None,
    })
}

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Nothing: `/healthz`, the console's files, and `/metrics` without `--metrics-auth`.
    Open,
    /// Any token cbd accepts: `/v1/openapi.json`, and `/v1` paths that are no route (so a
    /// caller without a token learns nothing of which exist).
    AnyToken,
    /// A token whose scope allows this one.
    Scope(Scope),
}

/// What the route of `method` and `segments` needs (HEAD is asked as GET). The scopes:
/// `ingest` appends changes; `read` GETs, but not `/v1/log`, which holds the callbacks'
/// signing secrets; `admin` does the rest.
fn access(method: &Method, segments: &[&str], metrics_auth: bool) -> Access {
    match (method, segments) {
        (_, ["metrics"]) if metrics_auth => Access::Scope(Scope::Read),
        (_, [first, ..]) if *first != "v1" => Access::Open,
        (&Method::GET, ["v1", "openapi.json"]) => Access::AnyToken,
        (&Method::POST, ["v1", "changes"] | ["v1", "changes", "batch"]) => {
            Access::Scope(Scope::Ingest)
        }
        (&Method::GET, ["v1", "log"]) => Access::Scope(Scope::Admin),
        (_, route) if allowed_methods(route).is_none() => Access::AnyToken,
        (&Method::GET, _) => Access::Scope(Scope::Read),
        _ => Access::Scope(Scope::Admin),
    }
}

/// Refuses a caller whose scope does not allow `needed`: 403, naming the token, its scope and
/// what the route needs.
fn check_scope(
    caller: &Caller,
    needed: Scope,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    if caller.scope.allows(needed) {
        return Ok(());
    }
    let needs = match needed {
        Scope::Admin => "admin".to_owned(),
        other => format!("{other} or admin"),
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "the token {:?} has scope {}; {method} {path} needs {needs}",
            &*caller.name, caller.scope
        ),
    ))
}

/// The answer to a refused or failed request: its JSON body and the headers it asks for.
pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut response = json_response(e.status, &e.body());
    let headers = response.headers_mut();
    if let Some(allow) = e.allow {
        headers.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(secs) = e.retry_after {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        // RFC 6750: say which scheme the token goes in.
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cb\""),
        );
    }
    if e.close {
        // The rest of the body was never read, so this connection cannot carry another
        // request; say so, or a pooling client would send its next one into the void.
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(bytes))
        .expect("static headers are valid")
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The query parameters of a route that takes `allowed` ones. A parameter it does not
/// take, or one given twice, is refused: a typo (`?cb=site`) must not widen a redeliver to
/// every callback, and `?project=a&project=b` has no single meaning.
pub(crate) fn query(
    q: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned() {
        if !allowed.contains(&k.as_str()) {
            let takes = match allowed {
                [] => "none".to_owned(),
                _ => allowed.join(", "),
            };
            return Err(ApiError::bad_request(
                "bad_query",
                format!(
                    "unknown query parameter {:?}; this request takes {takes}",
                    clip(&k)
                ),
            ));
        }
        if out.contains_key(&k) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("query parameter {k} is given twice"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// At most 64 bytes of `s`, for echoing client input in an error.
pub(crate) fn clip(s: &str) -> String {
    match cb_core::clipped(s, 64) {
        whole if whole.len() == s.len() => s.to_owned(),
        start => format!("{start}…"),
    }
}

/// How long a request body may take to arrive.
const BODY_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the body, refusing it past `limit` bytes without reading further.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    // Past the limit nothing more is kept, but the rest is read and dropped (up to
    // DRAIN_EXTRA more): a client still writing its body when the 413 comes back and the
    // connection closes would get a broken pipe instead of the answer.
    let drain_cap = limit.saturating_add(DRAIN_EXTRA);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_cap as u64) {
        return Err(too_large().closing());
    }
    let (parts, mut body) = req.into_parts();
    // Sized from Content-Length (within the limit) so a 2 MB batch is not regrown and
    // copied a dozen times as it arrives.
    let mut kept: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| (n as usize).min(limit)));
    let mut seen: usize = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request("bad_body", format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen <= limit {
                    kept.extend_from_slice(&data);
                } else if seen > drain_cap {
                    return Ok(false);
                }
            }
        }
        Ok::<bool, ApiError>(true)
    };
    let drained = match tokio::time::timeout(BODY_READ_LIMIT, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {}s",
                    BODY_READ_LIMIT.as_secs()
                ),
            )
            .closing())
        }
    };
    if seen > limit {
        return Err(if drained {
            too_large()
        } else {
            too_large().closing()
        });
    }
    Ok((parts, Bytes::from(kept)))
}

/// How much of an oversize body beyond the limit is read (and dropped) before the
/// connection is closed.
const DRAIN_EXTRA: usize = 4 * 1024 * 1024;

/// How long an append waits for a driver that is behind the log before it is refused.
pub const APPEND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn append(api: &Api, inputs: Vec<Input>) -> Result<cb_store::Appended, ApiError> {
    // Backpressure: a driver far behind the log makes appends wait, then refuses them,
    // rather than let them queue in memory without end.
    if !api.handle.room(APPEND_WAIT).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "cbd's driver has been {} groups of records behind its log for {} s; nothing was appended, try again",
                cb_dispatcher::driver::COMMIT_QUEUE,
                APPEND_WAIT.as_secs()
            ),
        )
        .retry_after(1));
    }
    api.handle
        .append(inputs)
        .await
        .map_err(|e| ApiError::store(&e))
}

/// 200 while the log takes appends; 503 with `disk_full` or `failing` (and the reason)
/// while it refuses them — reads still work, and cbd takes appends again by itself once
/// the disk does.
fn healthz(api: &Api) -> Result<Response<Body>, ApiError> {
    let store = api.handle.store();
    let last_seq = store.last_seq().map(|s| s.0);
    Ok(match store.health() {
        cb_store::Health::Writable => json_response(
            StatusCode::OK,
            &json!({"status": "ok", "last_seq": last_seq}),
        ),
        cb_store::Health::DiskFull(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "disk_full", "detail": reason, "last_seq": last_seq}),
        ),
        cb_store::Health::Failing(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failing", "detail": reason, "last_seq": last_seq}),
        ),
    })
}

/// `GET /v1/openapi.json`: the API's description ([`crate::openapi`]), built in.
fn openapi() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from_static(
            crate::openapi::DOCUMENT.as_bytes(),
        )))
        .expect("static headers are valid")
}

/// `GET /metrics`: text 0.0.4, or OpenMetrics when the scraper's `Accept` asks for it
/// ([`Format::negotiate`]). The core is asked for its kept totals and per-(project,
/// callback) counts, never for a walk of its machines.
async fn metrics(api: &Api, accept: Option<&HeaderValue>) -> Result<Response<Body>, ApiError> {
    let format = Format::negotiate(accept.and_then(|v| v.to_str().ok()));
    // On the wall clock: a `sent` machine past its window is not counted, though the core
    // drops it only at the next record it folds.
    let now = cb_store::wall_clock();
    let m = api.handle.metrics().clone();
    let (census, folded, pair_machines) = api
        .handle
        .query(move |core| {
            let pairs = m.pair_machines(&core.group_counts());
            (core.census_at(now), core.last_seq(), pairs)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "driver_stopped",
                e.to_string(),
            )
        })?;
    let store = api.handle.store();
    // Sizes of the log's files and the file system's free space: system calls, off the
    // async workers. Left out of the scrape if they cannot be read.
    let disk = match api.handle.read(|store| store.disk_usage()).await {
        Ok(Ok(usage)) => Some(Disk {
            log_bytes: usage.log_bytes,
            index_bytes: usage.index_bytes,
            free_bytes: usage.free_bytes,
        }),
        _ => None,
    };
    let scrape = Scrape {
        files: census.files,
        machines: census.states,
        deadline_lag_seconds: census
            .next_deadline
            .map_or(0.0, |d| now.0.saturating_sub(d.0) as f64 / 1000.0),
        pair_machines,
        folded_seq: folded.map_or(0, |s| s.0),
        log_seq: store.last_seq().map_or(0, |s| s.0),
        base_seq: store.base().map_or(0, |b| b.seq.0),
        disk,
        index_in_memory: store.index_in_memory(),
    };
    let text = api.handle.metrics().encode(format, &scrape);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, format.content_type())
        // The answer depends on `Accept`: a cache between must not hand one form to a
        // scraper that asked for the other.
        .header(VARY, "Accept")
        .body(full(text))
        .expect("static headers are valid"))
}

fn is_xml(parts: &http::request::Parts, body: &[u8]) -> bool {
    let ct = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ct.as_deref() {
        Some("application/xml" | "text/xml") => true,
        Some(t) if t.ends_with("+xml") => true,
        Some("application/json") => false,
        // No or another type: go by the first byte, as liberal ingest is safe here.
        _ => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<'),
    }
}

async fn post_change(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    // The ack latency runs from here (the request's head has arrived) to the 202.
    let arrived = std::time::Instant::now();
    let (parts, body) = read_body(req, api.max_body).await?;
    let input = if is_xml(&parts, &body) {
        let q = query(parts.uri.query(), &["project", "event"])?;
        ingest::xml_change(
            &body,
            q.get("project").map(String::as_str),
            q.get("event").map(String::as_str),
        )?
    } else {
        ingest::json_change(&body, api.rules)?
    };
    let appended = append(api, vec![input]).await?;
    let response = json_response(StatusCode::ACCEPTED, &json!({"seq": appended.first.0}));
    api.handle
        .metrics()
        .observe_ack(AckRoute::Change, arrived.elapsed());
    Ok(response)
}

async fn post_batch(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let arrived = std::time::Instant::now();
    let (_, body) = read_body(req, api.max_batch).await?;
    let inputs = ingest::ndjson_batch(&body, api.rules, api.max_body)?;
    let appended = append(api, inputs).await?;
    let response = json_response(
        StatusCode::ACCEPTED,
        &json!({"seq": appended.last().0, "first": appended.first.0, "count": appended.count}),
    );
    api.handle
        .metrics()
        .observe_ack(AckRoute::Batch, arrived.elapsed());
    Ok(response)
}

fn callback_name(s: &str) -> Result<CallbackName, ApiError> {
    CallbackName::new(s).map_err(|e| ApiError::bad_request("bad_id", format!("callback name: {e}")))
}

async fn list_callbacks(api: &Api, project: &str) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let list = api
        .handle
        .query(move |core| {
            core.callbacks(&project)
                .map(|(n, s)| view::callback(n, &s.callback, s.disabled_by.is_none(), s.put_by.0))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(driver_stopped)?;
    Ok(json_response(StatusCode::OK, &json!({ "callbacks": list })))
}

async fn get_callback(api: &Api, project: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let name = callback_name(name)?;
    let found = {
        let name = name.clone();
        api.handle
            .query(move |core| {
                core.callbacks(&project)
                    .find(|(n, _)| **n == name)
                    .map(|(n, s)| {
                        view::callback(n, &s.callback, s.disabled_by.is_none(), s.put_by.0)
                    })
            })
            .await
            .map_err(driver_stopped)?
    };
    match found {
        Some(v) => Ok(json_response(StatusCode::OK, &v)),
        None => Err(ApiError::not_found(format!("no callback {name}"))),
    }
}

fn driver_stopped(e: cb_dispatcher::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "driver_stopped",
        e.to_string(),
    )
}

async fn put_callback(
    api: &Api,
    project: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let name = callback_name(name)?;
    let (_, body) = read_body(req, api.max_body).await?;
    let callback = Arc::new(ingest::callback(&body, api.rules)?);
    // Taken all the same (200): the flag may be turned on later, and the put is a record
    // worth keeping; the answer says why no attempt would get through now.
    let warnings = ingest::target_warnings(&callback, api.rules);
    let appended = append(
        api,
        vec![Input::Record(RecordKind::CallbackPut {
            project: project.clone(),
            name: name.clone(),
            callback: callback.clone(),
        })],
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "seq": appended.first.0,
            "project": project.as_str(),
            "name": name.as_str(),
            "callback": view::callback_config(&callback),
            "warnings": warnings,
        }),
    ))
}

/// `POST …/callbacks/{name}/pause` and `/resume` (rule 8): a record each, refused with a
/// sentence when the callback does not exist or already is as asked.
async fn pause(
    api: &Api,
    project: &str,
    name: &str,
    pausing: bool,
) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let name = callback_name(name)?;
    {
        let (project, name) = (project.clone(), name.clone());
        api.handle
            .query(move |core| crate::lists::pause_check(core, &project, &name, pausing))
            .await
            .map_err(driver_stopped)??;
    }
    let record = match pausing {
        true => RecordKind::CallbackPaused { project, name },
        false => RecordKind::CallbackResumed { project, name },
    };
    let appended = append(api, vec![Input::Record(record)]).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"seq": appended.first.0}),
    ))
}

/// `POST …/callbacks/{name}/test`: sends the documented sample now, whatever the callback's
/// state (paused, disabled, failing), and answers how it went; the send is recorded
/// (`CallbackTested`) and touches no machine (SPEC §4).
async fn test_send(api: &Api, project: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let name = callback_name(name)?;
    let callback = {
        let (project, name) = (project.clone(), name.clone());
        api.handle
            .query(move |core| {
                core.callbacks(&project)
                    .find(|(n, _)| **n == name)
                    .map(|(_, slot)| slot.callback.clone())
            })
            .await
            .map_err(driver_stopped)?
    }
    .ok_or_else(|| ApiError::not_found(format!("no callback {name} in {project}")))?;
    // A send the log cannot record would be one nobody can audit: refuse it first.
    if !api.handle.store().writable() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_writable",
            "the log takes no records now (see /healthz); nothing was sent",
        )
        .retry_after(10));
    }
    let report = api
        .handle
        .deliverer()
        .test_send(&project, &name, callback, cb_store::wall_clock())
        .await;
    let record = RecordKind::CallbackTested {
        project: project.clone(),
        name: name.clone(),
        outcome: report.outcome,
        latency_ms: report.latency_ms,
        digest: report.digest,
        detail: report.detail.clone(),
    };
    let appended = append(api, vec![Input::Record(record)]).await?;
    let status = match report.outcome {
        cb_core::Outcome::Delivered { status } | cb_core::Outcome::Status { status, .. } => {
            Some(status)
        }
        cb_core::Outcome::Smtp { code } => Some(code),
        _ => None,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "seq": appended.first.0,
            "project": project.as_str(),
            "callback": name.as_str(),
            "delivered": report.outcome.is_delivered(),
            "outcome": report.outcome.to_string(),
            "class": report.outcome.class(),
            "status": status,
            "latency_ms": report.latency_ms,
            "digest": report.digest.to_hex(),
            "detail": report.detail,
        }),
    ))
}

async fn delete_callback(api: &Api, project: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let project = ingest::project(project)?;
    let name = callback_name(name)?;
    let exists = {
        let (project, name) = (project.clone(), name.clone());
        api.handle
            .query(move |core| core.callbacks(&project).any(|(n, _)| *n == name))
            .await
            .map_err(driver_stopped)?
    };
    if !exists {
        return Err(ApiError::not_found(format!(
            "no callback {name} in {project}"
        )));
    }
    let appended = append(
        api,
        vec![Input::Record(RecordKind::CallbackRemoved { project, name })],
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"seq": appended.first.0}),
    ))
}

/// `GET /v1/deliveries`: the machines the core holds now, filtered by state, project,
/// callback and origin, in (project, callback, file) order, a page at a time
/// ([`crate::lists`]).
async fn deliveries(api: &Api, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let params = lists::DeliveryParams::from_query(q)?;
    let page = api
        .handle
        .query(move |core| params.page(core))
        .await
        .map_err(driver_stopped)?;
    // The last outcome's detail is in its record, not in the machine: one read per item.
    let seqs = page.outcome_seqs();
    let details = api
        .handle
        .read(move |store| lists::details(store, &seqs))
        .await
        .map_err(driver_stopped)?;
    Ok(json_response(StatusCode::OK, &page.into_json(details)))
}

/// `GET /v1/attempts`: recorded attempts, newest first, from the store's attempt index
/// ([`cb_store::AttemptQuery`]): a page costs the attempts it lists.
async fn attempts(api: &Api, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let params = lists::AttemptParams::from_query(q)?;
    let page = api
        .handle
        .read(move |store| params.page(store))
        .await
        .map_err(driver_stopped)?
        .map_err(|e| ApiError::store(&e))?;
    Ok(json_response(StatusCode::OK, &page))
}

fn file_key(project: &str, file_id: &str) -> Result<FileKey, ApiError> {
    Ok(FileKey::new(
        ingest::project(project)?,
        ingest::file_id(file_id)?,
    ))
}

/// The file's records (and its project's) folded on their own, up to the live core's time:
/// the same states the live core has (the projection property), plus what it forgot.
async fn fold_file(api: &Api, file: &FileKey) -> Result<FileHistory, ApiError> {
    let now = api
        .handle
        .query(|core| core.now())
        .await
        .map_err(driver_stopped)?;
    let store = api.handle.store().clone();
    let key = file.clone();
    // The records and the fold off the async workers: a file with a long history takes a while.
    let folded = tokio::task::spawn_blocking(move || {
        let records = store.file_records(&key)?;
        // After retention a file may have only its kept change, before the base.
        let start = store.file_start(&key)?;
        let known = FileHistory::knows_file(&records, start.as_ref());
        Ok::<_, cb_store::Error>(
            known.then(|| FileHistory::fold_from(&key, start, records, Some(now), store.rules())),
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::store(&e))?;
    folded.ok_or_else(|| ApiError::not_found(format!("no record of file {file}")))
}

async fn file_state(api: &Api, project: &str, file_id: &str) -> Result<Response<Body>, ApiError> {
    let file = file_key(project, file_id)?;
    let history = fold_file(api, &file).await?;
    // The version from the records folded, so the snapshot and the machines always agree.
    let version = history.latest_change();
    let snapshot = match version {
        Some(v) => api
            .handle
            .read(move |store| store.snapshot(v))
            .await
            .map_err(driver_stopped)?
            .map_err(|e| ApiError::store(&e))?,
        None => None,
    };
    Ok(json_response(
        StatusCode::OK,
        &view::file_state(&history, version.map(|v| v.0), snapshot.as_ref()),
    ))
}

async fn file_history(
    api: &Api,
    project: &str,
    file_id: &str,
    page: view::HistoryPage,
) -> Result<Response<Body>, ApiError> {
    let file = file_key(project, file_id)?;
    let history = fold_file(api, &file).await?;
    Ok(json_response(
        StatusCode::OK,
        &view::history_page(&history, page),
    ))
}

/// `GET /v1/files/{p}/{id}/rewind?to=SEQ|TIME`: the file as of that point, as
/// `cbctl rewind --json` shows it ([`crate::rewind`]), read from its own records.
async fn file_rewind(
    api: &Api,
    project: &str,
    file_id: &str,
    to: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let file = file_key(project, file_id)?;
    let to = to.ok_or_else(|| {
        ApiError::bad_request(
            "bad_query",
            "give to=SEQ or to=TIME (RFC 3339, e.g. 2026-12-07T09:00:00Z)",
        )
    })?;
    let to = rewind::Point::parse(to)
        .map_err(|e| ApiError::bad_request("bad_query", format!("to={e}")))?;
    let rewound = api
        .handle
        .read(move |store| rewind::rewind(store, &file, to))
        .await
        .map_err(driver_stopped)?
        .map_err(|e| match e {
            rewind::RewindError::NoSuchFile(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_file", e.to_string())
            }
            rewind::RewindError::BeforeBase { .. } => {
                ApiError::new(StatusCode::GONE, "before_base", e.to_string())
            }
            rewind::RewindError::Store(e) => ApiError::store(&e),
        })?;
    Ok(json_response(StatusCode::OK, &rewound.json()))
}

async fn redeliver(
    api: &Api,
    project: &str,
    file_id: &str,
    callback: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let file = file_key(project, file_id)?;
    let callback = callback
        .map(|c| {
            CallbackRef::parse(c)
                .map_err(|e| ApiError::bad_request("bad_id", format!("callback: {e}")))
        })
        .transpose()?;
    let key = file.clone();
    let version = api
        .handle
        .read(move |store| store.latest_version(&key))
        .await
        .map_err(driver_stopped)?
        .map_err(|e| ApiError::store(&e))?;
    let (key, cb) = (file.clone(), callback.clone());
    api.handle
        .query(move |core| crate::redeliver::check(core, &key, cb.as_ref(), version))
        .await
        .map_err(driver_stopped)??;
    let appended = append(
        api,
        vec![Input::Record(RecordKind::RedeliverRequested {
            file,
            callback,
            version: None,
        })],
    )
    .await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"seq": appended.first.0}),
    ))
}

/// `POST /v1/redeliver`: every failing delivery of a project (or one callback, one state,
/// failed within `since..=until`) redelivered, as one append of one record each.
async fn bulk_redeliver(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, api.max_body).await?;
    let bulk = lists::BulkRedeliver::from_json(&body)?;
    let (machines, more) = api
        .handle
        .query(move |core| bulk.select(core))
        .await
        .map_err(driver_stopped)?;
    let count = machines.len();
    let first = match count {
        0 => None,
        _ => Some(append(api, lists::redeliver_records(machines)).await?.first),
    };
    Ok(json_response(
        StatusCode::ACCEPTED,
        &lists::bulk_answer(count, first, more),
    ))
}

async fn status(api: &Api) -> Result<Response<Body>, ApiError> {
    let v = api
        .handle
        .query(|core| view::status(core, cb_store::wall_clock()))
        .await
        .map_err(driver_stopped)?;
    Ok(json_response(StatusCode::OK, &v))
}

/// `GET /v1/log?from=SEQ[&redact=true]`: the log as NDJSON, streamed as the store reads it;
/// with `redact`, callbacks' credentials replaced (`Line::redact`).
fn log(api: &Api, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q = query(q, &["from", "redact"])?;
    let from = match q.get("from") {
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::bad_request("bad_query", format!("from={s}: not a sequence number"))
        })?,
        None => 1,
    };
    let credentials = match q.get("redact").map(String::as_str) {
        None | Some("false") => cb_store::ndjson::Credentials::Keep,
        Some("true") => cb_store::ndjson::Credentials::Redact,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("redact={}: true or false", clip(other)),
            ))
        }
    };
    let store = api.handle.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = store
            .export_with(Seq(from.max(1)), &mut out, credentials)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|_| out.flush());
        if let Err(e) = result {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let frames = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("static headers are valid"))
}

const CHUNK: usize = 64 * 1024;

struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(Frame::data(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}
