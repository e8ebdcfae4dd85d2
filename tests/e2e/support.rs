//! The harness: a real `cbd` process on a temp data dir and port 0, a real HTTP receiver on
//! 127.0.0.1:0 with scripted answers (or over TLS, with the certificates a test made), and a
//! small blocking API client.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const TOKEN: &str = "e2e-token-0123456789abcdef";

/// A running `cbd`.
pub struct Cbd {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    child: Child,
    args: Vec<String>,
    /// Environment variables set for cbd besides the harness's own.
    env: Vec<(String, String)>,
    agent: ureq::Agent,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Cbd {
    /// Starts cbd on a fresh temp dir with `args` (plus `--data-dir` and `--listen`).
    pub fn start(args: &[&str]) -> Cbd {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let dir = temp.path().join("data");
        let mut cbd = Cbd::start_in(&dir, args);
        cbd._temp = Some(temp);
        cbd
    }

    /// Starts cbd on `dir`.
    pub fn start_in(dir: &Path, args: &[&str]) -> Cbd {
        Cbd::start_in_with_env(dir, args, &[])
    }

    /// Starts cbd on `dir` with `env` set too.
    pub fn start_in_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Cbd {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = spawn(dir, &args, &env);
        Cbd {
            dir: dir.to_owned(),
            addr,
            child,
            args,
            env,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            _temp: None,
        }
    }

    /// Starts cbd on `dir`, or `None` if it exits before it serves (its stderr says why).
    pub fn try_start_in(dir: &Path, args: &[&str]) -> Option<Cbd> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = try_spawn(dir, &args, &[]).ok()?;
        Some(Cbd {
            dir: dir.to_owned(),
            addr,
            child,
            args,
            env: Vec::new(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            _temp: None,
        })
    }

    /// SIGKILLs cbd and starts it again on the same dir with the same arguments.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        let (child, addr) = spawn(&self.dir, &self.args, &self.env);
        self.child = child;
        self.addr = addr;
    }

    /// Starts cbd again on the same dir with the same arguments, after it stopped.
    pub fn start_again(&mut self) {
        let (child, addr) = spawn(&self.dir, &self.args, &self.env);
        self.child = child;
        self.addr = addr;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, without waiting.
    pub fn signal_term(&self) {
        sigterm(&self.child);
    }

    /// Sends `signal` (`HUP`, `TERM`…) without waiting.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// The exit status, once cbd has exited.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for cbd")
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm(&self.child);
        self.child.wait().expect("wait for cbd")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request with the token; returns status and body (error statuses included).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, String) {
        self.call_with(method, path, content_type, body, Some(TOKEN))
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut req = self.agent.request(method, &self.url(path));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.set("Content-Type", ct);
        }
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let (status, text) = self.call(method, path, Some("application/json"), bytes.as_deref());
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.json("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub fn put_callback(&self, project: &str, name: &str, config: Value) {
        let (status, v) = self.json(
            "PUT",
            &format!("/v1/projects/{project}/callbacks/{name}"),
            Some(&config),
        );
        assert_eq!(status, 200, "PUT callback: {v}");
    }

    /// Posts one JSON change; returns its seq.
    pub fn change(&self, project: &str, file_id: &str, event: &str, file: Value) -> u64 {
        let body = serde_json::json!({"project": project, "file_id": file_id, "event": event, "file": file});
        let (status, v) = self.json("POST", "/v1/changes", Some(&body));
        assert_eq!(status, 202, "POST change: {v}");
        v["seq"].as_u64().expect("seq")
    }

    /// Posts a batch of changes; returns (first, last) seqs.
    pub fn batch(&self, lines: &[Value]) -> (u64, u64) {
        let mut body = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut body, l).unwrap();
            body.push(b'\n');
        }
        let (status, text) = self.call(
            "POST",
            "/v1/changes/batch",
            Some("application/x-ndjson"),
            Some(&body),
        );
        assert_eq!(status, 202, "batch: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        (v["first"].as_u64().unwrap(), v["seq"].as_u64().unwrap())
    }

    /// The last durable seq, from /healthz.
    pub fn last_seq(&self) -> u64 {
        let (_, text) = self.call_with("GET", "/healthz", None, None, None);
        let v: Value = serde_json::from_str(&text).unwrap();
        v["last_seq"].as_u64().unwrap_or(0)
    }

    /// The whole log, as NDJSON lines.
    pub fn log(&self) -> Vec<Value> {
        let (status, text) = self.call("GET", "/v1/log?from=1", None, None);
        assert_eq!(status, 200);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A file's machine for `callback`, from /v1/files.
    pub fn machine(&self, project: &str, file_id: &str, callback: &str) -> Value {
        let v = self.get(&format!("/v1/files/{project}/{file_id}"));
        v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["callback"] == callback)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits until `check` holds, or panics with `what` after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        wait_for(what, limit, &mut check)
    }

    /// What cbd wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("stderr")).unwrap_or_default()
    }
}

impl Drop for Cbd {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for(what: &str, limit: Duration, check: &mut dyn FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends SIGTERM to `child` (std offers only SIGKILL; the `kill` binary avoids `unsafe`).
pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

fn spawn(dir: &Path, args: &[String], env: &[(String, String)]) -> (Child, SocketAddr) {
    try_spawn(dir, args, env).unwrap_or_else(|log| panic!("cbd did not start:\n{log}"))
}

fn try_spawn(
    dir: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<(Child, SocketAddr), String> {
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("stderr"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cbd"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(args)
        .env("CBD_TOKEN", TOKEN)
        .env("CBD_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start cbd");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line
                    .strip_prefix("cbd: listening on http://")
                    .or_else(|| line.strip_prefix("cbd: listening on https://"))
                {
                    break rest.parse::<SocketAddr>().expect("address");
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(
                    std::fs::read_to_string(dir.with_extension("stderr")).unwrap_or_default()
                );
            }
        }
    };
    // Keep draining stdout so cbd never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

// ---------------------------------------------------------------------------------------
// The receiver.

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, with these headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Never answer (the connection stays open).
    Hang,
    /// Answer `status` after a delay.
    Delayed(Duration, u16),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(200, vec![])
    }
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which TCP connection carried it (numbered from 0 in accept order).
    pub connection: usize,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn version(&self) -> u64 {
        self.header("cb-file-version").unwrap().parse().unwrap()
    }

    /// The `(name, value)` fields of an XML `<result>` body.
    pub fn xml_fields(&self) -> Vec<(String, String)> {
        let mut reader = quick_xml::Reader::from_reader(self.body.as_slice());
        let mut fields = Vec::new();
        let mut depth = 0;
        let mut name = String::new();
        let mut value = String::new();
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf).expect("well-formed XML") {
                quick_xml::events::Event::Start(e) => {
                    depth += 1;
                    if depth == 2 {
                        name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                        value.clear();
                    }
                }
                quick_xml::events::Event::Empty(e) if depth == 1 => {
                    fields.push((
                        String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                        String::new(),
                    ));
                }
                quick_xml::events::Event::Text(t) if depth == 2 => {
                    value.push_str(&t.unescape().unwrap());
                }
                quick_xml::events::Event::End(_) => {
                    if depth == 2 {
                        fields.push((name.clone(), value.clone()));
                    }
                    depth -= 1;
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        assert_eq!(depth, 0, "unbalanced XML");
        fields
    }

    pub fn field(&self, name: &str) -> Option<String> {
        self.xml_fields()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

struct ReceiverState {
    script: VecDeque<Reply>,
    default: Reply,
    received: Vec<Received>,
}

/// A real HTTP/1.1 server on 127.0.0.1:0, answering from a script.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub fn start() -> Receiver {
        Receiver::answering(Reply::ok())
    }

    /// A receiver answering `default` unless a scripted reply is queued.
    pub fn answering(default: Reply) -> Receiver {
        Receiver::serving(default, None)
    }

    /// A receiver over TLS with `config` (its certificate, and whether it asks for a
    /// client's), answering 200 to everything; `https_url` names it.
    pub fn tls(config: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::serving(Reply::ok(), Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    fn serving(default: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            script: VecDeque::new(),
            default,
            received: Vec::new(),
        }));
        let connections = Arc::new(AtomicUsize::new(0));
        {
            let state = state.clone();
            let connections = connections.clone();
            runtime.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let connection = connections.fetch_add(1, Ordering::SeqCst);
                    let state = state.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let Some(acceptor) = tls else {
                            return serve_http(stream, state, connection).await;
                        };
                        match acceptor.accept(stream).into_fallible().await {
                            Ok(stream) => serve_http(stream, state, connection).await,
                            Err((_, mut stream)) => {
                                // The alert is written; read what the client still sends
                                // until it closes, since closing on unread data resets the
                                // connection, and the reset can overtake the alert.
                                use tokio::io::AsyncReadExt;
                                let mut sink = [0u8; 4096];
                                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                            }
                        }
                    });
                }
            });
        }
        Receiver {
            addr,
            state,
            connections,
            _runtime: runtime,
        }
    }

    /// Its `https://` URL, by the name its test certificates are for.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queues replies for the next requests.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Changes the reply once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn wait_for_count(&self, n: usize, limit: Duration) {
        wait_for(
            &format!("{n} requests at {}", self.addr),
            limit,
            &mut || self.count() >= n,
        );
    }
}

/// Serves HTTP/1.1 on one accepted connection, recording each request and answering from the
/// script.
async fn serve_http<S>(stream: S, state: Arc<Mutex<ReceiverState>>, connection: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let reply = {
                let mut s = state.lock().unwrap();
                s.received.push(Received {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body: body.to_vec(),
                    connection,
                    at: Instant::now(),
                });
                s.script.pop_front().unwrap_or_else(|| s.default.clone())
            };
            let (status, headers) = match reply {
                Reply::Status(s, h) => (s, h),
                Reply::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Reply::Delayed(d, s) => {
                    tokio::time::sleep(d).await;
                    (s, vec![])
                }
            };
            let mut resp = Response::builder().status(status);
            for (n, v) in headers {
                resp = resp.header(n, v);
            }
            Ok::<_, std::convert::Infallible>(
                resp.body(Full::new(Bytes::from_static(b"ok"))).unwrap(),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A snapshot of the seed's shape with a counter, as JSON.
pub fn snapshot(id: &str, counter: usize) -> Value {
    serde_json::json!({
        "id": id,
        "status": "3",
        "title": format!("change {counter}"),
        "counter": counter.to_string(),
        "user_firstname": "エヴァート",
        "message": "",
    })
}

// ---------------------------------------------------------------------------------------
// A minimal SMTP sink: enough of RFC 5321 for one relay client, accepting or rejecting.

/// A local SMTP server that stores every message's DATA, or rejects recipients with 550.
pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<String>>>,
    attempts: Arc<AtomicUsize>,
}

impl SmtpSink {
    pub fn start(reject: bool) -> SmtpSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let attempts = Arc::new(AtomicUsize::new(0));
        {
            let (messages, attempts) = (messages.clone(), attempts.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (messages, attempts) = (messages.clone(), attempts.clone());
                    std::thread::spawn(move || {
                        let _ = smtp_session(stream, reject, &messages, &attempts);
                    });
                }
            });
        }
        SmtpSink {
            addr,
            messages,
            attempts,
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Recipients offered (accepted or not).
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

fn smtp_session(
    stream: std::net::TcpStream,
    reject: bool,
    messages: &Mutex<Vec<String>>,
    attempts: &AtomicUsize,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 sink ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250 sink\r\n")?;
        } else if upper.starts_with("MAIL") {
            out.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("RCPT") {
            attempts.fetch_add(1, Ordering::SeqCst);
            if reject {
                out.write_all(b"550 no such mailbox\r\n")?;
            } else {
                out.write_all(b"250 ok\r\n")?;
            }
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(&line);
            }
            messages.lock().unwrap().push(data);
            out.write_all(b"250 queued\r\n")?;
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}
