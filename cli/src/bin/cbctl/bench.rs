//! `cbctl bench`: every SPEC §8 figure measured in one run on a temp dir, beside its target
//! and beside this machine's ceilings measured in the same run (raw file appends with
//! `fdatasync`; a plain hyper client→server on loopback).
//!
//! The daemon figures drive a real `cbd` process (the binary next to `cbctl`) over HTTP,
//! with the load generator and a keep-alive receiver in this process: on a small machine
//! they share its cores with the daemon, as they would in any single-host test. The fold
//! figure is `cbctl replay`'s own audit over a generated log shaped like the daemon's.
//! Nothing here is asserted; every figure is what was measured.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use cb_core::{Core, Record, RecordKind, Seq, Timestamp};
use cb_store::{synthetic, Durability, Store, StoreOptions};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::json;

/// What to run, and how big.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Changes in the generated log (fold, restart).
    #[arg(long, default_value_t = 1_000_000)]
    pub changes: u64,
    /// Files the changes are spread over (log, ingest, deliveries).
    #[arg(long, default_value_t = 100_000)]
    pub files: u64,
    /// Files in the core-memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_files: u64,
    /// Seconds per timed phase (ceilings, ingest).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Deliveries in the delivery figure.
    #[arg(long, default_value_t = 50_000)]
    pub deliveries: u64,
    /// Clients sending NDJSON batches at once (SPEC §8 fixes 64 clients for single changes
    /// and says nothing for batches; a platform has several ingest workers). Fewer clients
    /// leave the disk idle between a batch's acknowledgement and the next one.
    #[arg(long, default_value_t = 8)]
    pub batch_clients: u64,
    /// A run under a minute: 100,000 changes over 10,000 files, 2 s phases, 20,000 deliveries.
    #[arg(long)]
    pub quick: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the temp dir (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

impl BenchArgs {
    fn sized(mut self) -> BenchArgs {
        if self.quick {
            self.changes = self.changes.min(100_000);
            self.files = self.files.min(10_000);
            self.duration = self.duration.min(2.0);
            self.deliveries = self.deliveries.min(20_000);
        }
        self
    }
}

/// One measured figure.
#[derive(Serialize, Clone, Debug)]
struct Figure {
    /// What was measured.
    what: String,
    value: f64,
    unit: &'static str,
    /// SPEC §8's target, as text (`≥ 100000`).
    target: Option<String>,
    /// Whether the value meets the target.
    meets: Option<bool>,
    /// The ceiling this figure is bounded by, and the ratio to it.
    ceiling: Option<String>,
    ratio: Option<f64>,
    /// How it was measured.
    how: String,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    json: bool,
}

impl Report {
    fn push(&mut self, f: Figure) {
        if !self.json {
            eprintln!("  {}: {} {}", f.what, fmt(f.value), f.unit);
        }
        self.figures.push(f);
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

impl Figure {
    fn new(what: impl Into<String>, value: f64, unit: &'static str, how: String) -> Figure {
        Figure {
            what: what.into(),
            value,
            unit,
            target: None,
            meets: None,
            ceiling: None,
            ratio: None,
            how,
        }
    }

    fn at_least(mut self, target: f64) -> Figure {
        self.target = Some(format!("≥ {}", fmt(target)));
        self.meets = Some(self.value >= target);
        self
    }

    fn at_most(mut self, target: f64) -> Figure {
        self.target = Some(format!("≤ {}", fmt(target)));
        self.meets = Some(self.value <= target);
        self
    }

    /// The ceiling of the same run this figure is bounded by, in the same unit.
    fn against(mut self, ceiling: &str, value: f64, unit: &str) -> Figure {
        self.ceiling = Some(format!("{ceiling} {} {unit}", fmt(value)));
        self.ratio = Some(self.value / value);
        self
    }
}

/// Runs the benchmark and prints the table (or JSON) on stdout; progress goes to stderr.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let a = args.sized();
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 3600.0) {
        bail!(
            "--duration {}: give seconds, more than 0 and at most 3600",
            a.duration
        );
    }
    for (name, n) in [
        ("--changes", a.changes),
        ("--files", a.files),
        ("--memory-files", a.memory_files),
        ("--deliveries", a.deliveries),
        ("--batch-clients", a.batch_clients),
    ] {
        if n == 0 {
            bail!("{name} must be at least 1");
        }
    }
    if a.batch_clients > 1024 {
        bail!("--batch-clients {}: at most 1024", a.batch_clients);
    }
    let cbd = cbd_path()?;
    let temp = tempfile::Builder::new()
        .prefix("cb-bench-")
        .tempdir()
        .context("creating the temp dir")?;
    let root = temp.path().to_owned();
    let mut report = Report {
        json: a.json,
        ..Report::default()
    };
    let window = Duration::from_secs_f64(a.duration);
    eprintln!(
        "cb bench {} in {} ({} changes over {} files, {:.1} s phases)",
        env!("CARGO_PKG_VERSION"),
        root.display(),
        a.changes,
        a.files,
        a.duration
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    eprintln!("ceilings: raw file, plain HTTP…");
    let file_ceiling = file_durable_ceiling(&root.join("raw-file"), window)?;
    let http_16 = runtime.block_on(http_ceiling(16, window))?;
    let http_64 = runtime.block_on(http_ceiling(64, window))?;
    for (what, v, how) in [
        (
            "ceiling: raw file, 1000 × 1.5 KB appended + fdatasync",
            file_ceiling,
            "one thread, one 1.5 MB write then File::sync_data, repeated",
        ),
        (
            "ceiling: plain hyper HTTP/1.1 requests on loopback, 16 connections",
            http_16,
            "hyper client (pool) → hyper server in this process, empty bodies",
        ),
        (
            "ceiling: plain hyper HTTP/1.1 requests on loopback, 64 connections",
            http_64,
            "as above, 64 concurrent requests",
        ),
    ] {
        let unit = if what.contains("HTTP") {
            "requests/s"
        } else {
            "values/s"
        };
        report.push(Figure::new(what, v, unit, how.into()));
    }

    // ---- the generated log: fold rate, restart ----
    eprintln!("building a log of {} changes…", a.changes);
    let log_dir = root.join("log");
    let bar = progress(a.changes, a.json);
    let built = synthetic::build_log(&log_dir, a.changes, a.files, 60, |n| bar.set_position(n))
        .context("building the log")?;
    bar.finish_and_clear();
    {
        let store = Store::open(&log_dir, buffered())?;
        let started = Instant::now();
        let (summary, in_flight) =
            crate::audit(&store, None, None, &indicatif::ProgressBar::hidden())?;
        let secs = started.elapsed().as_secs_f64();
        let rate = summary.records as f64 / secs;
        if !summary.divergences.is_empty() {
            bail!(
                "the generated log did not replay clean: {:?}",
                summary.divergences.first()
            );
        }
        let how = format!(
            "{} records ({} changes, {} deliveries, {in_flight} in flight at the end) in {secs:.2} s, 0 divergences",
            summary.records, a.changes, summary.deliveries
        );
        report.push(
            Figure::new(
                "fold (cbctl replay, with every digest re-rendered)",
                rate,
                "records/s",
                how,
            )
            .at_least(1_000_000.0),
        );
        // The checkpoint the daemon would have written near the end, for the restart.
        let mut core = Core::new();
        let mut effects = Vec::new();
        for r in store.records_between(Seq(1), built.checkpointable) {
            core.apply(&r?, &mut effects);
            effects.clear();
        }
        store.write_checkpoint(&core.checkpoint())?;
    }
    bytes_per_change(&log_dir, a.changes, &mut report)?;
    eprintln!("index rebuild from the log alone…");
    index_rebuild(&log_dir, a.changes, &mut report)?;
    eprintln!("restart of cbd on that log…");
    let (restart, tail) = restart_time(&cbd, &log_dir)?;
    let how = format!(
        "spawn cbd on the log (checkpoint {tail} records before the end) until GET /healthz answers 200"
    );
    let what = format!("restart with a log of {} changes: serving", a.changes);
    report.push(Figure::new(what, restart, "s", how).at_most(1.0));

    eprintln!("core memory for {} files…", a.memory_files);
    let memory = core_memory(a.memory_files);
    let mb = memory.held as f64 / 1e6;
    let what = format!(
        "core memory, {} files with one delivered change each, windows elapsed",
        a.memory_files
    );
    let how = format!(
        "bytes the core holds at the end (counted by the allocator; it still knows {} files); at the peak, with {} files in their windows at once, it held {:.0} MB",
        memory.files, memory.peak_files, memory.peak as f64 / 1e6
    );
    let figure = Figure::new(what, mb, "MB", how);
    // The target is for a million files; other sizes are reported without it.
    report.push(if a.memory_files == 1_000_000 {
        figure.at_most(128.0)
    } else {
        figure
    });

    eprintln!("a long run under retention…");
    retention_run(&root.join("retention"), &a, &mut report)?;

    // ---- the daemon over HTTP ----
    runtime.block_on(daemon_figures(
        &cbd,
        &root,
        &a,
        &mut report,
        file_ceiling,
        http_16,
        http_64,
    ))?;

    print_report(&report, a.json)?;
    if a.keep {
        let kept = temp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

/// The data dir's bytes per change of the generated log, beside the snapshot's size.
fn bytes_per_change(dir: &Path, changes: u64, report: &mut Report) -> anyhow::Result<()> {
    let store = Store::open(dir, buffered())?;
    let u = store.disk_usage()?;
    let used = u.log_bytes - u.preallocated_bytes + u.index_bytes + u.checkpoint_bytes;
    let per_change = used as f64 / changes as f64;
    let sample = synthetic::seed_like(&synthetic::file(0), 1);
    let xml = cb_core::render(
        &sample,
        &cb_core::Callback::from_json(r#"{"url":"https://example.org/cb"}"#)
            .map_err(anyhow::Error::msg)?,
    )
    .bytes
    .len();
    let text: usize = sample.iter().map(|(n, v)| n.len() + v.len()).sum();
    let records = store.last_seq().map_or(0, |s| s.0);
    let how = format!(
        "the generated log's data dir ÷ its {changes} changes ({records} records in all: ticks and outcomes too): \
         segments {} MB, index {} MB, checkpoints {} MB, plus {} MB preallocated for the next groups (not counted); \
         the snapshot is {xml} bytes as getFileInfo XML, {text} bytes of names and values",
        (u.log_bytes - u.preallocated_bytes) / 1_000_000,
        u.index_bytes / 1_000_000,
        u.checkpoint_bytes / 1_000_000,
        u.preallocated_bytes / 1_000_000,
    );
    report.push(
        Figure::new("bytes on disk per 1.5 KB change", per_change, "bytes", how)
            .at_most(1.2 * xml as f64),
    );
    Ok(())
}

/// Seconds to open the generated log with its index removed: the rebuild from the segments.
fn index_rebuild(dir: &Path, changes: u64, report: &mut Report) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("index-"))
        {
            std::fs::remove_dir_all(&path)?;
        }
    }
    let started = Instant::now();
    let store = Store::open(dir, buffered())?;
    let secs = started.elapsed().as_secs_f64();
    let Some(rebuilt) = store.recovery().rebuilt.clone() else {
        bail!("the open did not rebuild the index it was given none of");
    };
    let how = format!(
        "Store::open with the index dir removed: {} records scanned, checked and indexed (\"{}\")",
        rebuilt.records, rebuilt.reason
    );
    report.push(
        Figure::new(
            format!("index rebuild from the log alone, {changes} changes"),
            secs,
            "s",
            how,
        )
        .at_most(10.0),
    );
    Ok(())
}

/// The data dir's size over a long run with retention on virtual time: flat once the
/// horizon is reached.
fn retention_run(dir: &Path, a: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let changes = a.changes.max(40_000);
    let retain = Duration::from_secs(120);
    let per_sec = 100;
    let samples = synthetic::retention_run(dir, changes, a.files, per_sec, 4 << 20, retain)?;
    let half = samples.len() / 2;
    let peak = |s: &[synthetic::RetentionSample]| s.iter().map(|s| s.bytes).max().unwrap_or(0);
    let (first, second) = (peak(&samples[..half]), peak(&samples[half..]));
    let last = samples.last().map_or(0, |s| s.bytes);
    let how = format!(
        "{changes} changes over {} files at {per_sec}/s of virtual time ({} virtual minutes), --retain 2m, 4 MiB segments; \
         peak {} MB in the first half of the run, {} MB in the second, {} MB at the end (preallocated space included)",
        a.files,
        samples.last().map_or(0, |s| s.secs) / 60,
        first / 1_000_000,
        second / 1_000_000,
        last / 1_000_000
    );
    report.push(Figure::new(
        "disk use under retention: second half's peak ÷ first half's",
        second as f64 / first.max(1) as f64,
        "×",
        how,
    ));
    Ok(())
}

fn buffered() -> StoreOptions {
    StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    }
}

fn progress(len: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    }
}

/// `cbd`, next to this `cbctl`.
fn cbd_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating cbctl")?;
    let cbd = exe.with_file_name("cbd");
    if !cbd.exists() {
        bail!(
            "cbd is not next to cbctl ({}): build both with `cargo build --release -p cb-cli`",
            cbd.display()
        );
    }
    Ok(cbd)
}

const TOKEN: &str = "cb-bench-token-0123456789";

/// A `cbd` child process on `dir`, port 0, private targets allowed.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn spawn(cbd: &Path, dir: &Path) -> anyhow::Result<Daemon> {
        let stderr = std::fs::File::create(dir.with_extension("stderr"))?;
        let mut child = Command::new(cbd)
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--allow-private-targets"])
            .env("CBD_TOKEN", TOKEN)
            .env("CBD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", cbd.display()))?;
        let stdout = child.stdout.take().context("cbd's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.wait();
                bail!(
                    "cbd exited before listening; see {}",
                    dir.with_extension("stderr").display()
                );
            };
            if let Some(a) = line?.strip_prefix("cbd: listening on http://") {
                break a.parse().context("cbd's address")?;
            }
        };
        Ok(Daemon { child, addr })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds from spawning cbd on `dir` until `/healthz` answers 200, and the tail the
/// restart folded.
fn restart_time(cbd: &Path, dir: &Path) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let daemon = Daemon::spawn(cbd, dir)?;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    loop {
        if let Ok(r) = agent.get(&daemon.url("/healthz")).call() {
            if r.status() == 200 {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("cbd did not become healthy within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    let store_tail = {
        drop(daemon);
        let store = Store::open(dir, buffered())?;
        let last = store.last_seq().map_or(0, |s| s.0);
        let cp = store
            .checkpoints()?
            .iter()
            .map(|c| c.seq.0)
            .max()
            .unwrap_or(0);
        last.saturating_sub(cp)
    };
    Ok((secs, store_tail))
}

/// What the core held.
struct Memory {
    /// Bytes at the end.
    held: usize,
    /// Files it still knows at the end.
    files: u64,
    /// The most bytes it held (sampled after each second of changes).
    peak: usize,
    /// Files it knew at that moment.
    peak_files: u64,
}

/// Bytes this thread allocated since `live_bytes()` read `base`, and has not freed.
fn held_since(base: isize) -> usize {
    usize::try_from(crate::live_bytes() - base).unwrap_or(0)
}

/// The core's memory after folding `files` files that each had one change, delivered, and
/// whose windows then elapsed: live bytes counted by the allocator on this thread (which
/// builds the core alone), less those of before.
fn core_memory(files: u64) -> Memory {
    // From here on, so that nothing this thread frees below was allocated uncounted.
    crate::count_allocations(true);
    let project = synthetic::project();
    let callback = std::sync::Arc::new(
        cb_core::Callback::from_json(r#"{"url":"https://example.org/cb","window_secs":60}"#)
            .expect("a valid callback"),
    );
    let mut seq = 0u64;
    let mut next = |kind: RecordKind, at: Timestamp| {
        seq += 1;
        Record {
            seq: Seq(seq),
            at,
            kind,
        }
    };
    let base = crate::live_bytes();
    let mut core = Core::new();
    let mut effects = Vec::new();
    let mut at = Timestamp(1_700_000_000_000);
    core.apply(
        &next(
            RecordKind::CallbackPut {
                project,
                name: cb_core::CallbackName::new("site").expect("valid"),
                callback,
            },
            at,
        ),
        &mut effects,
    );
    effects.clear();
    let (mut peak, mut peak_files) = (0, 0);
    // 10,000 changes a second of simulated time; each falls due 60 s later and its
    // attempt succeeds at once.
    let group = 10_000u64;
    for start in (0..files).step_by(group as usize) {
        for i in start..(start + group).min(files) {
            let r = next(
                RecordKind::ChangeAppended {
                    file: synthetic::file(i),
                    event: cb_core::EventKind::Rated,
                    callbacks: None,
                },
                at,
            );
            core.apply(&r, &mut effects);
        }
        effects.clear();
        at = at.plus_ms(1000);
        deliver_due(&mut core, &mut effects, &mut next, at);
        let now = held_since(base);
        if now > peak {
            (peak, peak_files) = (now, core.census().files);
        }
    }
    for _ in 0..2 {
        at = at.plus_ms(61_000);
        deliver_due(&mut core, &mut effects, &mut next, at);
    }
    drop(effects);
    let memory = Memory {
        held: held_since(base),
        files: core.census().files,
        peak,
        peak_files,
    };
    crate::count_allocations(false);
    memory
}

/// Ticks at `at` and answers 200 to every attempt that starts.
fn deliver_due(
    core: &mut Core,
    effects: &mut Vec<cb_core::Effect>,
    next: &mut impl FnMut(RecordKind, Timestamp) -> Record,
    at: Timestamp,
) {
    core.apply(&next(RecordKind::Ticked, at), effects);
    let started: Vec<cb_core::Attempt> = effects
        .drain(..)
        .filter_map(|e| match e {
            cb_core::Effect::StartAttempt(a) => Some(a),
            _ => None,
        })
        .collect();
    for a in started {
        let r = next(
            RecordKind::AttemptFinished(cb_core::AttemptReport::of(
                a,
                cb_core::Outcome::Delivered { status: 200 },
                1,
                cb_core::Digest::of(b""),
            )),
            at,
        );
        core.apply(&r, effects);
        effects.clear();
    }
}

/// The disk alone: 1000 values of 1.5 KB appended to a file with one write, then
/// fdatasync, again and again.
fn file_durable_ceiling(path: &Path, window: Duration) -> anyhow::Result<f64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).context("creating the ceiling's file")?;
    let chunk = vec![7u8; 1500 * 1000];
    let (mut n, t) = (0u64, Instant::now());
    while t.elapsed() < window {
        f.write_all(&chunk)?;
        f.sync_data()?;
        n += 1000;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client(idle: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build_http()
}

/// Plain hyper on loopback: `concurrency` requests in flight, empty bodies.
async fn http_ceiling(concurrency: usize, window: Duration) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let client = http_client(concurrency);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url: hyper::Uri = format!("http://{addr}/").parse()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, count, stop, url) =
                (client.clone(), count.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::post(url.clone())
                        .body(Full::new(Bytes::new()))
                        .expect("a valid request");
                    if let Ok(resp) = client.request(req).await {
                        let _ = resp.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    Ok(count.load(Ordering::Relaxed) as f64 / secs)
}

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn expect(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Bytes,
    status: u16,
) -> anyhow::Result<Bytes> {
    let (s, b) = call(client, method, url, body).await?;
    if s != status {
        bail!("{method} {url}: {s} {}", String::from_utf8_lossy(&b));
    }
    Ok(b)
}

/// The seed's 52-field sample as a JSON object, with this id and counter.
fn snapshot_json(id: &str, n: u64) -> serde_json::Value {
    let s = synthetic::seed_like(&synthetic::file(0), n);
    let mut m = serde_json::Map::new();
    for (name, value) in s.iter() {
        let v = if name == "id" { id } else { value };
        m.insert(name.to_owned(), v.into());
    }
    serde_json::Value::Object(m)
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    delivered: AtomicU64,
    /// Requests to `/e2e` and `/steady`, answered at once.
    e2e: AtomicU64,
    steady: AtomicU64,
    /// `cb-file-version` of each request to `/coalesce`.
    coalesce: Mutex<Vec<u64>>,
    /// While false, answers to `/deliver` wait.
    open: AtomicBool,
    notify: tokio::sync::Notify,
}

async fn receiver(seen: Arc<Seen>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let version = req
                            .headers()
                            .get("cb-file-version")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let _ = req.into_body().collect().await;
                        if path == "/coalesce" {
                            seen.coalesce.lock().expect("not poisoned").push(version);
                        } else if path == "/e2e" {
                            seen.e2e.fetch_add(1, Ordering::Relaxed);
                        } else if path == "/steady" {
                            seen.steady.fetch_add(1, Ordering::Relaxed);
                        } else {
                            while !seen.open.load(Ordering::Acquire) {
                                let wait = seen.notify.notified();
                                if seen.open.load(Ordering::Acquire) {
                                    break;
                                }
                                wait.await;
                            }
                            seen.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[allow(clippy::too_many_arguments)]
async fn daemon_figures(
    cbd: &Path,
    root: &Path,
    a: &BenchArgs,
    report: &mut Report,
    disk_ceiling: f64,
    http_16: f64,
    http_64: f64,
) -> anyhow::Result<()> {
    eprintln!("cbd: ingest, delivery, coalescing…");
    let daemon = Daemon::spawn(cbd, &root.join("daemon"))?;
    let seen = Arc::new(Seen::default());
    let receiver_addr = receiver(seen.clone()).await?;
    let client = http_client(128);
    let put = |project: &'static str, path: &'static str, window: u32| {
        let (client, url) = (
            client.clone(),
            daemon.url(&format!("/v1/projects/{project}/callbacks/site")),
        );
        let body = json!({"url": format!("http://{receiver_addr}{path}"), "window_secs": window})
            .to_string();
        async move {
            expect(&client, "PUT", &url, body.into(), 200)
                .await
                .map(drop)
        }
    };
    let window = Duration::from_secs_f64(a.duration);

    // 1. NDJSON batches of 1000 from `batch_clients` clients, for `duration`. A long window keeps
    // deliveries out of the way; 64 distinct batches are prepared and sent in turn.
    put("ingest", "/ingest", 3600).await?;
    let batches: Arc<Vec<Bytes>> = Arc::new(
        (0..64u64)
            .map(|b| {
                let mut body = Vec::with_capacity(1000 * 2200);
                for i in b * 1000..(b + 1) * 1000 {
                    let id = format!("f{}", i % a.files.max(1));
                    let line = json!({"project": "ingest", "file_id": id, "event": "rated", "file": snapshot_json(&id, i)});
                    serde_json::to_writer(&mut body, &line).expect("serializes");
                    body.push(b'\n');
                }
                Bytes::from(body)
            })
            .collect(),
    );
    let clients = usize::try_from(a.batch_clients).expect("checked: at most 1024");
    let (count, secs) = timed_clients(clients, window, {
        let (client, url, batches) = (
            client.clone(),
            daemon.url("/v1/changes/batch"),
            batches.clone(),
        );
        move |_, n| {
            let (client, url, body) = (
                client.clone(),
                url.clone(),
                batches[n % batches.len()].clone(),
            );
            async move { expect(&client, "POST", &url, body, 202).await.map(|_| 1000) }
        }
    })
    .await?;
    let rate = count as f64 / secs;
    let how =
        format!("{count} changes in {secs:.2} s from {clients} clients, each 202 after fdatasync");
    report.push(
        Figure::new(
            "ingest, NDJSON batches of 1000, durable",
            rate,
            "changes/s",
            how,
        )
        .at_least(100_000.0)
        .against("raw file durable appends", disk_ceiling, "values/s"),
    );

    // 2. Single changes from 64 concurrent clients.
    let file_json = Arc::new(snapshot_json("x", 0).to_string());
    let (count, secs) = timed_clients(64, window, {
        let (client, url, files) = (client.clone(), daemon.url("/v1/changes"), a.files.max(1));
        move |c, n| {
            let id = format!("f{}", (c as u64 * 7919 + n as u64 * 64) % files);
            let body = format!(
                r#"{{"project":"ingest","file_id":"{id}","event":"moderated","file":{file_json}}}"#
            );
            let (client, url) = (client.clone(), url.clone());
            async move {
                expect(&client, "POST", &url, body.into(), 202)
                    .await
                    .map(|_| 1)
            }
        }
    })
    .await?;
    let rate = count as f64 / secs;
    let how = format!("{count} changes in {secs:.2} s, each 202 after fdatasync (group commit)");
    let what = "ingest, single-change requests, 64 concurrent clients, durable";
    report.push(
        Figure::new(what, rate, "changes/s", how)
            .at_least(10_000.0)
            .against("plain HTTP, 64 connections", http_64, "requests/s"),
    );

    // 3. Delivery: `deliveries` files change once (window 1 s); the receiver holds its
    // answers until every change is acknowledged and due, then the drain is timed.
    put("deliver", "/deliver", 1).await?;
    let url = daemon.url("/v1/changes/batch");
    for start in (0..a.deliveries).step_by(1000) {
        let mut body = Vec::new();
        for i in start..(start + 1000).min(a.deliveries) {
            let id = format!("d{i}");
            let line = json!({"project": "deliver", "file_id": id, "event": "rated", "file": snapshot_json(&id, i)});
            serde_json::to_writer(&mut body, &line)?;
            body.push(b'\n');
        }
        expect(&client, "POST", &url, body.into(), 202).await?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    seen.open.store(true, Ordering::Release);
    seen.notify.notify_waiters();
    let (mut last, mut last_progress) = (0, Instant::now());
    loop {
        let now = seen.delivered.load(Ordering::Relaxed);
        if now >= a.deliveries {
            break;
        }
        if now != last {
            (last, last_progress) = (now, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            eprintln!("delivery stalled at {now} of {}", a.deliveries);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let delivered = seen.delivered.load(Ordering::Relaxed);
    let rate = delivered as f64 / secs;
    let how = format!(
        "{delivered} deliveries (XML of the 52-field seed) in {secs:.2} s over at most 16 connections"
    );
    report.push(
        Figure::new(
            "delivery to a local keep-alive HTTP receiver",
            rate,
            "callbacks/s",
            how,
        )
        .at_least(20_000.0)
        .against("plain HTTP, 16 connections", http_16, "requests/s"),
    );

    // 4. 1000 changes to one file inside one window.
    put("coalesce", "/coalesce", 2).await?;
    let mut last_seq = 0;
    for b in 0..10u64 {
        let mut body = Vec::new();
        for i in 0..100 {
            let line = json!({"project": "coalesce", "file_id": "556114", "event": "rated", "file": snapshot_json("556114", b * 100 + i)});
            serde_json::to_writer(&mut body, &line)?;
            body.push(b'\n');
        }
        let answer = expect(&client, "POST", &url, body.into(), 202).await?;
        let v: serde_json::Value = serde_json::from_slice(&answer)?;
        last_seq = v["seq"].as_u64().unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let versions = seen.coalesce.lock().expect("not poisoned").clone();
    let how = format!(
        "10 batches of 100 within a 2 s window; versions received {versions:?}, last change {last_seq}"
    );
    let what = "coalescing: 1000 changes to one file inside one window";
    let mut figure = Figure::new(what, versions.len() as f64, "requests", how);
    figure.target = Some("exactly 1, carrying the last".into());
    figure.meets = Some(versions == [last_seq]);
    report.push(figure);
    drop(daemon);

    // 5 and 6 on a daemon of their own, so that what the phases above left (their machines,
    // their index) does not weigh on the end-to-end time or the CPU counted.
    let daemon = Daemon::spawn(cbd, &root.join("daemon-steady"))?;
    let leading = |project: &'static str, path: &'static str| {
        let (client, url) = (
            client.clone(),
            daemon.url(&format!("/v1/projects/{project}/callbacks/site")),
        );
        let body = json!({"url": format!("http://{receiver_addr}{path}"), "window_secs": 3600, "leading": true})
            .to_string();
        async move {
            expect(&client, "PUT", &url, body.into(), 200)
                .await
                .map(drop)
        }
    };
    end_to_end(
        &daemon,
        &client,
        &seen,
        a,
        report,
        http_64,
        leading("e2e", "/e2e"),
    )
    .await?;
    steady_rate(
        &daemon,
        &client,
        &seen,
        a,
        report,
        leading("steady", "/steady"),
    )
    .await?;
    Ok(())
}

/// Phase 5: `E2E_CHANGES` distinct files, one change per request from 64 clients, to a
/// leading callback (so each change is due at once): the time from the first send to the
/// last delivery received, as changes per second through the whole daemon.
async fn end_to_end(
    daemon: &Daemon,
    client: &HttpClient,
    seen: &Seen,
    a: &BenchArgs,
    report: &mut Report,
    http_64: f64,
    put: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let changes = a.deliveries.min(E2E_CHANGES);
    eprintln!("cbd: end to end, {changes} single changes to {changes} files, leading…");
    put.await?;
    let file_json = Arc::new(snapshot_json("x", 0).to_string());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, next, file_json) = (
                client.clone(),
                daemon.url("/v1/changes"),
                next.clone(),
                file_json.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= changes {
                        return anyhow::Ok(());
                    }
                    let body = format!(
                        r#"{{"project":"e2e","file_id":"e{i}","event":"rated","file":{file_json}}}"#
                    );
                    expect(&client, "POST", &url, body.into(), 202).await?;
                }
            })
        })
        .collect();
    for s in senders {
        s.await??;
    }
    let acknowledged = started.elapsed().as_secs_f64();
    let delivered = wait_for_count(&seen.e2e, changes).await;
    let secs = started.elapsed().as_secs_f64();
    let how = format!(
        "{delivered} of {changes} changes, one per request from 64 clients, each to a file of its own with a leading \
         callback: {secs:.2} s from the first send to the last delivery received (the last 202 at {acknowledged:.2} s)"
    );
    report.push(
        Figure::new(
            "end to end: single changes in, deliveries out",
            delivered as f64 / secs,
            "changes/s",
            how,
        )
        .against("plain HTTP, 64 connections", http_64, "requests/s"),
    );
    Ok(())
}

/// How many distinct files the end-to-end phase changes.
const E2E_CHANGES: u64 = 20_000;
/// The steady phase's rate, changes per second.
const STEADY_RATE: u64 = 500;

/// Phase 6: single changes at a steady `STEADY_RATE` per second, each to a file of its own
/// with a leading callback, for the phase's duration (at least 5 s): cbd's CPU time (user
/// and system, from /proc) over that time and until the last delivery, per delivered
/// message.
async fn steady_rate(
    daemon: &Daemon,
    client: &HttpClient,
    seen: &Seen,
    a: &BenchArgs,
    report: &mut Report,
    put: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let secs = a.duration.max(5.0);
    let total = (secs * STEADY_RATE as f64) as u64;
    eprintln!("cbd: a steady {STEADY_RATE} changes/s for {secs:.0} s, leading…");
    put.await?;
    let file_json = Arc::new(snapshot_json("x", 0).to_string());
    let pid = daemon.child.id();
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / STEADY_RATE as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let (client, url, file_json) =
            (client.clone(), daemon.url("/v1/changes"), file_json.clone());
        sends.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"project":"steady","file_id":"s{i}","event":"rated","file":{file_json}}}"#
            );
            expect(&client, "POST", &url, body.into(), 202)
                .await
                .map(drop)
        }));
    }
    let sending = started.elapsed().as_secs_f64();
    for s in sends {
        s.await??;
    }
    let delivered = wait_for_count(&seen.steady, total).await;
    let cpu = cpu_seconds(pid)? - before;
    let wall = started.elapsed().as_secs_f64();
    let per_message_ms = cpu / delivered.max(1) as f64 * 1000.0;
    let how = format!(
        "{total} changes sent at {:.0}/s over {sending:.2} s, {delivered} delivered; cbd used {cpu:.2} s of CPU \
         (user + system, /proc/{pid}/stat) in {wall:.2} s, {:.0} % of one core",
        total as f64 / sending,
        cpu / wall * 100.0
    );
    report.push(Figure::new(
        format!("CPU per delivered message at a steady {STEADY_RATE} changes/s (leading)"),
        per_message_ms,
        "ms",
        how,
    ));
    Ok(())
}

/// Waits until `counter` reaches `want`, or until it has not moved for 10 s; what it reached.
async fn wait_for_count(counter: &AtomicU64, want: u64) -> u64 {
    let (mut last, mut last_progress) = (0, Instant::now());
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= want {
            return now;
        }
        if now != last {
            (last, last_progress) = (now, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            eprintln!("deliveries stalled at {now} of {want}");
            return now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The CPU time (user and system) process `pid` has used, in seconds, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of proc(5), utime and stime, are the 12th and 13th after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second)
}

/// Runs `clients` loops for `window`, each calling `request(client, n)` and counting what
/// it returns; returns the total and the seconds.
async fn timed_clients<F, Fut>(
    clients: usize,
    window: Duration,
    request: F,
) -> anyhow::Result<(u64, f64)>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, count, request) = (stop.clone(), count.clone(), request.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    count.fetch_add(request(c, n).await?, Ordering::Relaxed);
                    n += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    Ok((
        count.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&report.figures)?);
        return Ok(());
    }
    outln!("| figure | measured | SPEC §8 target | meets | ceiling (same run) | ratio |");
    outln!("|---|---|---|---|---|---|");
    for f in &report.figures {
        outln!(
            "| {} | {} {} | {} | {} | {} | {} |",
            f.what,
            fmt(f.value),
            f.unit,
            f.target.as_deref().unwrap_or(""),
            match f.meets {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            },
            f.ceiling.as_deref().unwrap_or(""),
            f.ratio
                .map_or(String::new(), |r| format!("{:.0} %", r * 100.0)),
        );
    }
    outln!();
    for f in &report.figures {
        outln!("- {}: {}", f.what, f.how);
    }
    Ok(())
}
