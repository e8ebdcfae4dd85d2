//! `cbctl`: the operator's tool. Audits a log (`replay`), tells one file's story
//! (`history`), shows a file as of a point (`rewind`), totals (`status`), and moves logs
//! around (`export`, `import`). It reads a stopped daemon's data dir directly, or a running
//! daemon's log through `--server` (copied into a temp dir first, so every command runs the
//! same code either way).
//!
//! Exit codes: 0 success (replay: no divergence), 1 replay found divergences, 2 the log or the
//! arguments are unusable, 141 stdout was closed before the output was written (as for a
//! tool that SIGPIPE ended: `cbctl replay | head -1`), with no message.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cb_cli::replay::{self, Audit};
use cb_cli::rewind::{archived_note, Point, RewindError};
use cb_cli::view;
use cb_core::{FileHistory, FileKey, Record, Seq, Timestamp};
use cb_store::{Durability, Store, StoreOptions};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// `println!` that returns the write error instead of panicking: `cbctl replay | head -1`
/// closes the pipe early, and that must end the command quietly ([`main`]), not panic.
macro_rules! outln {
    () => {
        std::io::Write::write_all(&mut crate::Stdout, b"\n")?
    };
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut crate::Stdout, format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// stdout, with its write errors marked as its own ([`StdoutError`]): a broken pipe there
/// means the reader stopped reading, which ends the command quietly; a broken pipe anywhere
/// else (a socket) is an error to report.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout()
            .lock()
            .write(buf)
            .map_err(StdoutError::mark)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush().map_err(StdoutError::mark)
    }
}

/// A failed write to stdout, inside the `io::Error` that reports it (same kind).
#[derive(Debug)]
struct StdoutError(std::io::Error);

impl StdoutError {
    fn mark(e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), StdoutError(e))
    }
}

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

// Replay decodes and renders hundreds of thousands of snapshots and reads sled's blob
// files of 100 KiB and more; glibc's malloc maps and unmaps those for each read (page
// faults were a sixth of a replay's time), mimalloc keeps them. The count of live bytes is
// `cbctl bench`'s core-memory figure: exact, where resident memory would include the
// allocator's retained pages.
#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

thread_local! {
    /// Bytes this thread allocated minus bytes it freed. Per thread, so that the figure is
    /// the core-building thread's alone, and so that counting never puts a shared atomic on
    /// other threads' allocations (a shared counter, always on, cost replay ~5 %:
    /// docs/performance.md). Const-initialized and without a destructor, so reading it
    /// from the allocator neither allocates nor fails during thread teardown (on Linux, where
    /// cbctl runs, std keeps such a value in native thread-local storage; a target where std
    /// falls back to OS keys would allocate on first use and reenter the allocator).
    static LIVE_BYTES: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// Whether the allocator counts: only `cbctl bench` needs it, during its core-memory phase
/// ([`count_allocations`]); every other command and phase, replay first, skips even the
/// thread-local add.
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the allocator count live bytes from now on, or stop (per thread: see
/// [`live_bytes`]).
pub(crate) fn count_allocations(on: bool) {
    COUNTING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Adds `delta` to this thread's count, if counting.
fn count(delta: isize) {
    if COUNTING.load(std::sync::atomic::Ordering::Relaxed) {
        LIVE_BYTES.set(LIVE_BYTES.get().wrapping_add(delta));
    }
}

/// mimalloc, counting live bytes per thread.
struct CountingAlloc;

// SAFETY: every method forwards to mimalloc with the same arguments and only adds
// bookkeeping on a thread-local counter; the layout contracts are mimalloc's.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes the calling thread has allocated and not freed since counting began (blocks it
/// frees that another thread allocated, or that were allocated before, count against it).
/// `cbctl bench` builds the core whose memory it reports on one thread, so the difference
/// of two readings there is exactly what that core holds.
pub(crate) fn live_bytes() -> isize {
    LIVE_BYTES.get()
}

mod bench;

#[derive(Parser)]
#[command(
    name = "cbctl",
    version,
    about = "cb's operator tool: audit the log, rewind a file's history, move logs around",
    after_help = "Exit codes: 0 ok, 1 replay found divergences, 2 unusable log or arguments, 141 stdout closed early.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb replay\n  cbctl --data-dir /var/lib/cb history newzulu/556114\n  \
cbctl --data-dir /var/lib/cb rewind newzulu/556114 --to 2026-11-23T12:00:00Z\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 replay --json\n  cbctl --data-dir ./cbd-data export > log.ndjson"
)]
struct Cli {
    /// A stopped daemon's data dir.
    #[arg(
        long,
        env = "CBCTL_DATA_DIR",
        global = true,
        default_value = "./cbd-data"
    )]
    data_dir: PathBuf,
    /// A running daemon: replay, history, rewind and export copy its /v1/log; the other
    /// commands call its API. Its token is read from --data-dir's token file when --data-dir
    /// is given, else from CBD_TOKEN.
    #[arg(long, env = "CBCTL_SERVER", global = true, value_parser = server_url)]
    server: Option<Server>,
    /// PEM certificates to trust for an https:// --server besides the webpki roots and the
    /// system store: the private CA (or the self-signed certificate) of cbd's --tls-cert.
    /// May be repeated.
    #[arg(long, env = "CBCTL_CA_FILE", global = true, value_name = "PEM")]
    ca_file: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fold the log from scratch and check every recorded attempt against the core's decision.
    #[command(
        after_help = "Checks, for every recorded attempt: the core had started it (same delivery and attempt \
number), it carried the version the core decided, and its digest equals that of the payload \
the core renders for that version. Prints counts and every divergence with its seq.\n\n\
Exit codes: 0 no divergence, 1 divergences, 2 unusable log.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb replay\n  cbctl --data-dir /var/lib/cb replay --until 2026-11-23T12:00:00Z\n  \
cbctl --data-dir /var/lib/cb replay --file newzulu/556114 --json\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 replay"
    )]
    Replay {
        /// Stop after this sequence number or time (RFC 3339, any offset; without one, UTC).
        #[arg(long)]
        until: Option<String>,
        /// Audit one file (PROJECT/ID): its records and its project's.
        #[arg(long)]
        file: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every record of one file, with its machines' states after each.
    #[command(
        after_help = "One line per record of the file (and of its project's callback configuration) and per \
deadline that fired (seq `-`): the time, one column per callback with its machine's state after \
that step (`-`: no machine), and what happened, with each attempt's outcome and detail.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb history newzulu/556114\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 history newzulu/556114 --json"
    )]
    History {
        /// PROJECT/ID
        file: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// A file as of a point: snapshot, machines, due times, and the payload each callback would get.
    #[command(
        after_help = "Folds the file's records up to --to (a seq, or an RFC 3339 time: deadlines up to that time \
fire) and prints its version, each machine with its due, next, sent or abandoned time and last \
outcome, and the exact request each callback in force would get for that version, with its \
digest; for a machine with an attempt in flight, the request that attempt sent (the configuration \
and version it started with), whose digest its outcome records.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb rewind newzulu/556114 --to 412\n  \
cbctl --data-dir /var/lib/cb rewind newzulu/556114 --to 2026-11-23T09:01:10.500Z --json"
    )]
    Rewind {
        /// PROJECT/ID
        file: String,
        /// A sequence number or a time (RFC 3339, any offset; without one, UTC).
        #[arg(long)]
        to: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Totals per state, the earliest due time, retrying and abandoned machines (the first
    /// 100 of each), disabled callbacks.
    #[command(
        after_help = "Examples:\n  cbctl --data-dir /var/lib/cb status\n  CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 status --json"
    )]
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Each project with its callbacks (target, origin, disabled or not) and the machines per
    /// state of each and in all, a page of projects at a time.
    #[command(after_help = "Examples:\n  cbctl --data-dir /var/lib/cb projects\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 projects --json\n  \
cbctl projects --after acme   # the page after that one")]
    Projects {
        /// At most this many projects (1 to 1000; 100 by default).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this project (the `next` of the page before).
        #[arg(long)]
        after: Option<String>,
        /// JSON output: the API's answer, `{"items": [...], "next": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// The deliveries the core holds now, filtered, a page at a time, in (project, callback,
    /// file) order: each machine's state, its due or next attempt, attempts so far and its
    /// last outcome with the detail.
    #[command(
        after_help = "Examples:\n  cbctl --data-dir /var/lib/cb deliveries --state retrying\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 deliveries --project acme --origin https://hooks.acme.example\n  \
cbctl deliveries --state abandoned --after 'acme~site~556114'   # the page after that one\n\n\
Every filter given must match. A page lists at most --limit machines (100 by default, at most 1000) and \
ends with the --after that gives the next one."
    )]
    Deliveries {
        /// Only machines in this state: coalescing, pending, sent, retrying or abandoned.
        #[arg(long)]
        state: Option<String>,
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Only this callback's (`file:NAME` for a per-file callback).
        #[arg(long)]
        callback: Option<String>,
        /// Only callbacks whose target is at this origin, `scheme://host[:port]`.
        #[arg(long)]
        origin: Option<String>,
        /// At most this many (1 to 1000; 100 by default).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this cursor (the `next` of the page before).
        #[arg(long)]
        after: Option<String>,
        /// JSON output: the API's answer, `{"items": [...], "next": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// Recorded attempts, newest first, filtered: when each went out, for which file and
    /// callback, how it ended and why.
    #[command(
        after_help = "Examples:\n  cbctl --data-dir /var/lib/cb attempts --project acme --outcome 5xx\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 attempts --project acme --file 556114\n  \
cbctl attempts --since 2026-11-23T09:00:00Z --until 2026-11-23T10:00:00Z --after 4711   # the page after that one\n\n\
Outcomes: delivered, redirect, gone, 4xx, 5xx, timeout, connect, tls, target_refused, smtp. \
--callback and --file need --project. A page lists at most --limit attempts (100 by default, at most 1000) \
and ends with the --after that gives the next one."
    )]
    Attempts {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Only this callback's (`file:NAME` for a per-file callback); needs --project.
        #[arg(long)]
        callback: Option<String>,
        /// Only this file's; needs --project.
        #[arg(long)]
        file: Option<String>,
        /// Only those that ended so: delivered, redirect, gone, 4xx, 5xx, timeout, connect,
        /// tls, target_refused or smtp.
        #[arg(long)]
        outcome: Option<String>,
        /// Only those recorded at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only those recorded at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many (1 to 1000; 100 by default).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this cursor (the `next` of the page before).
        #[arg(long)]
        after: Option<String>,
        /// JSON output: the API's answer, `{"items": [...], "next": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// A project's callbacks: list, set (create or replace) or rm.
    #[command(
        after_help = "On a data dir the daemon must be stopped; the change is appended and takes effect at its next \
start. With --server it goes through the API at once.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb callbacks list newzulu\n  \
echo '{\"url\":\"https://example.com/cb\",\"window_secs\":300}' | cbctl --data-dir /var/lib/cb callbacks set newzulu site\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 callbacks rm newzulu site"
    )]
    Callbacks {
        #[command(subcommand)]
        action: CallbacksAction,
    },
    /// Append one change: a JSON change body (as POST /v1/changes takes), or with --xml a
    /// getFileInfo document, from FILE or stdin.
    #[command(
        after_help = "Examples:\n  cbctl --data-dir /var/lib/cb emit change.json\n  \
echo '{\"project\":\"newzulu\",\"file_id\":\"556114\",\"event\":\"rated\",\"file\":{\"id\":\"556114\",\"rating\":\"4\"}}' | \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 emit\n  \
cbctl --server http://127.0.0.1:8650 --data-dir ./cbd-data emit --xml getFileInfo-556114.xml --project newzulu --event rated"
    )]
    Emit {
        /// The change: JSON, or getFileInfo XML with --xml; stdin if absent.
        file: Option<PathBuf>,
        /// FILE is a getFileInfo `<result>` document, as POST /v1/changes takes with
        /// Content-Type application/xml: the file id is its <id>; --project and --event say
        /// the rest.
        #[arg(long, requires_all = ["project", "event"])]
        xml: bool,
        /// The project of an --xml change.
        #[arg(long, requires = "xml", value_name = "PROJECT")]
        project: Option<String>,
        /// The event of an --xml change (rated, moderated, transcoded, …).
        #[arg(long, requires = "xml", value_name = "EVENT")]
        event: Option<String>,
        /// The answer as JSON (`{"seq": N}`).
        #[arg(long)]
        json: bool,
    },
    /// Deliver a file again now (rule 6), to one callback or all of them.
    #[command(
        after_help = "A redeliver that could not happen is refused and appends nothing: the file has no \
change, the callback is unknown or disabled by a 410, or every callback it names has an attempt in \
flight.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb redeliver newzulu/556114\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 redeliver newzulu/556114 --callback site"
    )]
    Redeliver {
        /// PROJECT/ID
        file: String,
        /// One callback (`name`, or `file:name` for a per-file one).
        #[arg(long)]
        callback: Option<String>,
        /// The answer as JSON (`{"seq": N}`).
        #[arg(long)]
        json: bool,
    },
    /// Redeliver every failing delivery of a project at once (`POST /v1/redeliver`): its
    /// retrying and abandoned machines, or one callback's, one state's, or those whose last
    /// attempt failed within --since..--until. One record each, in one append.
    #[command(
        after_help = "At most 10,000 at a time: past that the answer says so (\"more\") and the same \
command again takes the next ones.\n\n\
Examples:\n  CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 bulk-redeliver acme --state abandoned\n  \
cbctl --data-dir /var/lib/cb bulk-redeliver acme --callback site --since 2026-12-07T09:00:00Z"
    )]
    BulkRedeliver {
        /// The project.
        project: String,
        /// Only this callback's (`file:NAME` for a per-file one).
        #[arg(long)]
        callback: Option<String>,
        /// Only `retrying` or only `abandoned` machines (both by default).
        #[arg(long)]
        state: Option<String>,
        /// Only machines whose last attempt failed at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only machines whose last attempt failed at or before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// The answer as JSON (`{"count", "first_seq", "last_seq", "more"}`).
        #[arg(long)]
        json: bool,
    },
    /// Pause a project callback (rule 8): its deliveries keep coalescing, latest wins, but
    /// no attempt starts until `resume`; an attempt in flight completes.
    #[command(
        after_help = "Examples:\n  CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 pause acme site\n  \
cbctl --data-dir /var/lib/cb pause acme site   # cbd stopped: takes effect at its next start"
    )]
    Pause(PauseArgs),
    /// Scoped API tokens in the tokens file (DIR/tokens.toml, or --tokens-file): add one
    /// (printed once; only its hash is kept), list them, remove one. cbd reads the file at
    /// start and on SIGHUP.
    #[command(
        after_help = "Scopes: ingest (POST /v1/changes and /v1/changes/batch), read (GET /v1/… but \
/v1/log, and /metrics), admin (everything).\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb token add platform --scope ingest\n  \
cbctl --data-dir /var/lib/cb token list\n  cbctl --data-dir /var/lib/cb token rm platform\n  \
systemctl reload cbd      # or: kill -HUP $(pidof cbd)"
    )]
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// The tokens file [default: DIR/tokens.toml of --data-dir, the file cbd reads when
        /// it is given no --tokens-file].
        #[arg(long, global = true, value_name = "FILE")]
        tokens_file: Option<PathBuf>,
    },
    /// Resume a paused project callback (rule 8): each delivery that came due during the
    /// pause goes out now, with the file's latest state, once.
    #[command(
        after_help = "Examples:\n  CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 resume acme site"
    )]
    Resume(PauseArgs),
    /// Send a project callback cb's documented test sample now (header `cb-test: 1`),
    /// whatever its state, and print how it went; the send is recorded and touches no
    /// delivery. Needs the running daemon (--server): it sends with cbd's network settings.
    #[command(
        after_help = "Examples:\n  CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 test acme site\n\n\
Exit code 0 when the receiver took it (2xx), 1 when it did not, 2 on an error."
    )]
    Test(PauseArgs),
    /// The log as NDJSON on stdout (docs/interchange.md).
    #[command(
        after_help = "The log holds callbacks' signing secrets and header values: an export is a \
credential. For a bug report, --redact replaces them; the export still imports and replays with \
the same decisions.\n\n\
Examples:\n  cbctl --data-dir /var/lib/cb export --redact > cb-log.ndjson\n  \
CBD_TOKEN=… cbctl --server http://127.0.0.1:8650 export --from 100000 | gzip > tail.ndjson.gz"
    )]
    Export {
        /// The first sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Replace callbacks' signing secrets and header values (for a bug report: it still
        /// replays with the same decisions, but cannot sign or authenticate as the original).
        #[arg(long)]
        redact: bool,
    },
    /// Read NDJSON logs (FILEs in order, or stdin) into a new --data-dir.
    #[command(
        after_help = "The dir must be new. The first file starts at seq 1, or with the base line of an \
export taken after retention; each file continues the one before it. Files compressed with zstd \
(cbd's --archive-dir writes them so) are read as they are. Every line is validated as the API \
would, and a bad line stops the import naming its file and line number.\n\n\
Examples:\n  cbctl --data-dir /tmp/audit import cb-log.ndjson && cbctl --data-dir /tmp/audit replay\n  \
cbctl --data-dir /tmp/full import archive/cb-*.ndjson.zst export.ndjson   (the whole history)"
    )]
    Import {
        /// The files, in log order; stdin if none.
        files: Vec<PathBuf>,
    },
    /// Every SPEC §8 figure, measured on a temp dir beside its target and this machine's
    /// ceilings (needs cbd next to cbctl).
    #[command(
        after_help = "Runs the raw file and plain HTTP ceilings, builds a generated log and \
replays it (fold rate), measures its bytes on disk per change and the rebuild of its index, \
restarts cbd on it, measures the core's memory and the log's size over a long run under \
retention (virtual time), then drives a real cbd \
(the binary next to cbctl) over HTTP: ingest in batches and from 64 clients, delivery to a \
built-in receiver, and 1000 changes to one file in one window. Progress goes to stderr, the \
table (or --json) to stdout. A full run takes about 2 minutes on 2 cores; --quick, about 30 s.\n\n\
Examples:\n  cargo build --release -p cb-cli && target/release/cbctl bench\n  \
target/release/cbctl bench --quick --json > figures.json"
    )]
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum CallbacksAction {
    /// The project's callbacks, with their configuration and whether they are enabled.
    List {
        /// The project.
        project: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a callback from its JSON configuration (FILE, or stdin).
    Set {
        /// The project.
        project: String,
        /// The callback's name.
        name: String,
        /// The JSON file; stdin if absent.
        file: Option<PathBuf>,
        /// The answer as JSON (the API's, or `{"seq": N}` on a data dir).
        #[arg(long)]
        json: bool,
    },
    /// Remove a callback.
    Rm {
        /// The project.
        project: String,
        /// The callback's name.
        name: String,
        /// The answer as JSON (`{"seq": N}`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a new token, print it (the only time it is shown) and write its name, scope and
    /// SHA-256 to the tokens file.
    Add {
        /// Who will hold it (`platform`, `grafana`): 1 to 64 letters, digits, '.', '_', '-'.
        name: String,
        /// What it may do: ingest, read or admin.
        #[arg(long, value_parser = scope)]
        scope: cb_cli::credentials::Scope,
    },
    /// The tokens of the file: name, scope, and the first digits of the token's SHA-256.
    List {
        /// JSON output: one object per token, with its whole hash.
        #[arg(long)]
        json: bool,
    },
    /// Remove a token from the file (cbd refuses it from its next SIGHUP or start).
    Rm {
        /// The token's name.
        name: String,
    },
}

fn scope(s: &str) -> Result<cb_cli::credentials::Scope, String> {
    s.parse()
}

/// Which callback `pause` and `resume` act on.
#[derive(clap::Args)]
struct PauseArgs {
    /// The project.
    project: String,
    /// The callback's name.
    name: String,
    /// The answer as JSON (`{"seq": N}`).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Replays are faster on small pages; a failure only leaves them as the kernel sets them.
    let _ = cb_cli::pages::keep_small_pages();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A --data-dir given with --server names the daemon's dir: its token file is the token.
    // The default ./cbd-data is not read, so a token is never taken from a dir nobody named.
    if matches.value_source("data_dir") != Some(clap::parser::ValueSource::DefaultValue) {
        if let Some(server) = &mut cli.server {
            server.token_file = Some(cli.data_dir.join("token"));
        }
    }
    if let Some(server) = &mut cli.server {
        server.ca_files = cli.ca_file.clone();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) if reader_went_away(&e) => ExitCode::from(STDOUT_CLOSED),
        Err(e) if e.is::<NoSuchFile>() => {
            // Like grep's "no match": the question was fine, the log has no such file.
            eprintln!("cbctl: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cbctl: {}", cb_cli::error::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// A file the log has no record of: exit 1, where other errors exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NoSuchFile(String);

/// The exit code when whoever reads stdout stopped reading: 128 + SIGPIPE, what a shell
/// reports for a tool the signal ended (Rust ignores SIGPIPE, so cbctl sees the error).
const STDOUT_CLOSED: u8 = 141;

/// True if `e` is, or was caused by, a write to stdout when nobody reads it any more: the
/// reader (`head`, a pager) has all it wanted, so it is not an error to report.
fn reader_went_away(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::BrokenPipe
                && io.get_ref().is_some_and(|inner| inner.is::<StdoutError>())
        })
    })
}

/// Where the log comes from: the data dir, or a copy of a server's log in a temp dir.
struct Source {
    store: Store,
    _temp: Option<tempfile::TempDir>,
}

fn open(cli: &Cli) -> anyhow::Result<Source> {
    let options = || StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    };
    match &cli.server {
        None => {
            existing_data_dir(cli, false)?;
            let store = Store::open(&cli.data_dir, options())
                .with_context(|| format!("opening {}", cli.data_dir.display()))?;
            Ok(Source { store, _temp: None })
        }
        Some(server) => {
            let temp = tempfile::tempdir().context("creating a temp dir for the server's log")?;
            let store = Store::open(&temp.path().join("log"), options())?;
            let response = fetch(server, "/v1/log?from=1")?;
            store
                .import(BufReader::new(response.into_reader()), |_| {})
                .context("reading the server's log")?;
            Ok(Source {
                store,
                _temp: Some(temp),
            })
        }
    }
}

fn fetch(server: &Server, path: &str) -> anyhow::Result<ureq::Response> {
    call(server, "GET", path, None)
}

/// How long `--server` waits for the daemon's next bytes.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One API request to a running daemon with a JSON body, if any ([`request`]).
fn call(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<ureq::Response> {
    request(server, method, path, body.map(|b| (b, "application/json")))
}

/// One API request to a running daemon, with its token ([`Server::token`]) and a body of
/// the given content type, if any.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
) -> anyhow::Result<ureq::Response> {
    let (token, token_from) = server.token()?;
    let url = format!("{}{path}", server.url.trim_end_matches('/'));
    // A daemon that accepts and never answers must give an error, not a hang. The read limit
    // is per read: a long `/v1/log` stream keeps going as long as bytes arrive.
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(SERVER_READ_TIMEOUT)
        .timeout_write(SERVER_READ_TIMEOUT);
    if server.url.to_ascii_lowercase().starts_with("https://") {
        // What cbd's deliveries trust (webpki roots, the system store) and each --ca-file.
        let tls = cb_dispatcher::OutgoingTls::load(&cb_dispatcher::TlsFiles {
            ca_files: server.ca_files.clone(),
            ..Default::default()
        })?;
        agent = agent.tls_config(Arc::new(tls.client_config().clone()));
    }
    let agent = agent.build();
    let req = agent
        .request(method, &url)
        .set("Authorization", &format!("Bearer {token}"));
    let result = match body {
        Some((b, content_type)) => req.set("Content-Type", content_type).send_bytes(b),
        None => req.call(),
    };
    match result {
        Ok(r) => Ok(r),
        Err(ureq::Error::Transport(t))
            if t.kind() == ureq::ErrorKind::ConnectionFailed
                && t.to_string().contains("certificate") =>
        {
            bail!(
                "{t}: cbctl does not trust the certificate of {}; give --ca-file with the CA \
                 that signed cbd's --tls-cert (or the certificate itself, if self-signed)",
                server.url
            )
        }
        Err(ureq::Error::Status(401, _)) => bail!(
            "the daemon at {} refused the token from {token_from} (HTTP 401 unauthorized): \
             give the --data-dir it runs on, or set CBD_TOKEN to the token it was started with",
            server.url
        ),
        Err(ureq::Error::Status(code, r)) => {
            // The API's refusals read as on a data dir: the detail, then the code.
            let text = r.into_string().unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if v["detail"].is_string() => bail!(
                    "{} (HTTP {code} {})",
                    v["detail"].as_str().unwrap_or_default(),
                    v["error"].as_str().unwrap_or_default()
                ),
                _ => bail!("{url}: {code} {}", text.trim()),
            }
        }
        // ureq names the URL in its transport errors.
        Err(e) => bail!("{e}"),
    }
}

/// A running daemon (`--server`): where it is, and where its token is read.
#[derive(Clone, Debug)]
struct Server {
    /// The base URL, scheme included.
    url: String,
    /// `DIR/token` of the `--data-dir` given beside `--server`, read before `CBD_TOKEN`.
    token_file: Option<PathBuf>,
    /// `--ca-file`: trusted for an `https://` URL besides the webpki roots and system store.
    ca_files: Vec<PathBuf>,
}

impl Server {
    /// The daemon's token, and where it came from (for a 401's message): the token file of
    /// the `--data-dir` given, else `CBD_TOKEN`; else an error that says what to set.
    fn token(&self) -> anyhow::Result<(String, String)> {
        let env = std::env::var("CBD_TOKEN").ok().filter(|t| !t.is_empty());
        let Some(path) = &self.token_file else {
            return env.map(|t| (t, "CBD_TOKEN".to_owned())).ok_or_else(|| {
                anyhow::anyhow!(
                    "--server needs the daemon's token: set CBD_TOKEN to it (the CBD_TOKEN cbd \
                     was started with, or the contents of DIR/token in its data dir), or give \
                     --data-dir DIR, the daemon's data dir, to read DIR/token"
                )
            });
        };
        let unread = match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => {
                return Ok((text.trim().to_owned(), path.display().to_string()))
            }
            Ok(_) => "it is empty".to_owned(),
            Err(e) => e.to_string(),
        };
        // A daemon started with CBD_TOKEN writes no token file: the variable still works.
        env.map(|t| (t, "CBD_TOKEN".to_owned())).ok_or_else(|| {
            anyhow::anyhow!(
                "--server needs the daemon's token: {} cannot be read ({unread}); run as a user \
                 who can read it, or set CBD_TOKEN to the token cbd was started with",
                path.display()
            )
        })
    }
}

/// `--server`: the daemon's base URL, scheme included (`127.0.0.1:8650` alone is refused
/// here rather than by the HTTP client, with a message that says what to write).
fn server_url(s: &str) -> Result<Server, String> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Server {
            url: s.to_owned(),
            token_file: None,
            ca_files: Vec::new(),
        })
    } else {
        Err(format!(
            "{s:?} is not a URL: give the daemon's, as http://127.0.0.1:8650"
        ))
    }
}

fn file_key(s: &str) -> anyhow::Result<FileKey> {
    FileKey::parse(s).with_context(|| format!("{s:?} is not PROJECT/FILE_ID"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Bench(args) => {
            bench::run(args.clone())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { files } => {
            if cli.server.is_some() {
                bail!("import writes a new --data-dir; it does not talk to a server");
            }
            let store = Store::open(
                &cli.data_dir,
                StoreOptions {
                    durability: Durability::Buffered,
                    ..StoreOptions::default()
                },
            )
            .with_context(|| format!("opening {}", cli.data_dir.display()))?;
            if store.last_seq().is_some() {
                bail!(
                    "{} already holds a log; import into a new data dir",
                    cli.data_dir.display()
                );
            }
            let mut n = 0;
            if files.is_empty() {
                n += store.import(ndjson_input(Box::new(std::io::stdin()))?, |_| {})?;
            }
            for path in files {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                n += store
                    .import(ndjson_input(Box::new(file))?, |_| {})
                    .with_context(|| format!("importing {}", path.display()))?;
            }
            eprintln!("imported {n} records into {}", cli.data_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { from, redact } => {
            if let Some(server) = &cli.server {
                let r = fetch(server, &format!("/v1/log?from={from}&redact={redact}"))?;
                std::io::copy(&mut r.into_reader(), &mut Stdout)?;
                return Ok(ExitCode::SUCCESS);
            }
            let credentials = match redact {
                true => cb_store::ndjson::Credentials::Redact,
                false => cb_store::ndjson::Credentials::Keep,
            };
            let source = open(&cli)?;
            let mut out = std::io::BufWriter::new(Stdout);
            source
                .store
                .export_with(Seq(*from), &mut out, credentials)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { until, file, json } => {
            let until = until.as_deref().map(Point::parse).transpose()?;
            let file = file.as_deref().map(file_key).transpose()?;
            let source = open(&cli)?;
            if let Some(key) = &file {
                // A typo must not read as a clean audit of nothing.
                if source.store.latest_version(key)?.is_none() {
                    return Err(NoSuchFile(format!("no record of file {key} in the log")).into());
                }
            }
            replay(&source.store, until, file, *json)
        }
        Command::History { file, json } => {
            let source = open(&cli)?;
            let key = file_key(file)?;
            let records = source.store.file_records(&key)?;
            let start = source.store.file_start(&key)?;
            if !FileHistory::knows_file(&records, start.as_ref()) {
                return Err(NoSuchFile(format!("no record of file {key}")).into());
            }
            let h = FileHistory::fold_from(&key, start, records, None, source.store.rules());
            if *json {
                outln!("{}", serde_json::to_string_pretty(&view::history(&h))?);
            } else {
                if let Some(base) = &h.base {
                    outln!(
                        "kept history begins after seq {} (the log's base; its version there: {}){}",
                        base.seq(),
                        base.version.map_or("none".into(), |v| v.to_string()),
                        archived_note(&source.store)
                    );
                }
                print_history(&h)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rewind { file, to, json } => {
            let to = Point::parse(to)?;
            let source = open(&cli)?;
            rewind(&source.store, &file_key(file)?, to, *json)
        }
        Command::Callbacks { action } => callbacks(&cli, action),
        Command::Emit {
            file,
            xml,
            project,
            event,
            json,
        } => {
            let body = read_input(file.as_ref())?;
            let answer = match &cli.server {
                Some(server) if *xml => {
                    let query = form_urlencoded::Serializer::new(String::new())
                        .append_pair("project", project.as_deref().unwrap_or_default())
                        .append_pair("event", event.as_deref().unwrap_or_default())
                        .finish();
                    let path = format!("/v1/changes?{query}");
                    let body = Some((&body[..], "application/xml"));
                    request(server, "POST", &path, body)?.into_json()?
                }
                Some(server) => send(server, "POST", "/v1/changes", Some(&body))?,
                None => {
                    let input = if *xml {
                        cb_cli::ingest::xml_change(&body, project.as_deref(), event.as_deref())
                    } else {
                        cb_cli::ingest::json_change(&body, offline_rules())
                    }
                    .map_err(refused)?;
                    let store = open_for_append(&cli)?;
                    let appended = store.append(vec![input])?;
                    serde_json::json!({"seq": appended.first.0})
                }
            };
            say_appended("change appended", &answer, *json)
        }
        Command::Redeliver {
            file,
            callback,
            json,
        } => {
            let key = file_key(file)?;
            let callback = callback
                .as_deref()
                .map(cb_core::CallbackRef::parse)
                .transpose()
                .context("--callback")?;
            let answer = match &cli.server {
                Some(server) => {
                    let mut path = format!("/v1/files/{}/{}/redeliver", key.project, key.file_id);
                    if let Some(c) = &callback {
                        path.push_str(&format!("?callback={c}"));
                    }
                    send(server, "POST", &path, None)?
                }
                None => {
                    let store = open_for_append(&cli)?;
                    let version = store.latest_version(&key)?;
                    let restored = store.restore()?;
                    cb_cli::redeliver::check(&restored.core, &key, callback.as_ref(), version)
                        .map_err(refused)?;
                    let appended = store.append(vec![cb_store::Input::Record(
                        cb_core::RecordKind::RedeliverRequested {
                            file: key.clone(),
                            callback: callback.clone(),
                            version: None,
                        },
                    )])?;
                    serde_json::json!({"seq": appended.first.0})
                }
            };
            let what = match &callback {
                Some(c) => format!("redeliver of {key} to {c} appended"),
                None => format!("redeliver of {key} appended"),
            };
            say_appended(&what, &answer, *json)
        }
        Command::Token {
            action,
            tokens_file,
        } => {
            let path = tokens_file
                .clone()
                .unwrap_or_else(|| cli.data_dir.join("tokens.toml"));
            token(&path, action)
        }
        Command::Pause(PauseArgs {
            project,
            name,
            json,
        })
        | Command::Resume(PauseArgs {
            project,
            name,
            json,
        }) => {
            let pausing = matches!(&cli.command, Command::Pause(_));
            let verb = if pausing { "pause" } else { "resume" };
            let answer = match &cli.server {
                Some(server) => send(
                    server,
                    "POST",
                    &format!("/v1/projects/{project}/callbacks/{name}/{verb}"),
                    None,
                )?,
                None => {
                    let p = cb_core::ProjectId::new(project).context("project")?;
                    let n = cb_core::CallbackName::new(name).context("callback")?;
                    let store = open_for_append(&cli)?;
                    cb_cli::lists::pause_check(&store.restore()?.core, &p, &n, pausing)
                        .map_err(refused)?;
                    let record = match pausing {
                        true => cb_core::RecordKind::CallbackPaused {
                            project: p,
                            name: n,
                        },
                        false => cb_core::RecordKind::CallbackResumed {
                            project: p,
                            name: n,
                        },
                    };
                    let appended = store.append(vec![cb_store::Input::Record(record)])?;
                    serde_json::json!({"seq": appended.first.0})
                }
            };
            say_appended(
                &format!("{verb} of {project}/{name} appended"),
                &answer,
                *json,
            )
        }
        Command::Test(PauseArgs {
            project,
            name,
            json,
        }) => {
            let Some(server) = &cli.server else {
                anyhow::bail!(
                    "a test send goes through the running daemon (its network settings, its log): \
give --server URL (and CBD_TOKEN)"
                );
            };
            let answer = send(
                server,
                "POST",
                &format!("/v1/projects/{project}/callbacks/{name}/test"),
                None,
            )?;
            if *json {
                outln!("{answer}");
            } else {
                let mut line = format!(
                    "test send to {project}/{name}: {} in {} ms (seq {})",
                    answer["outcome"].as_str().unwrap_or("?"),
                    answer["latency_ms"],
                    answer["seq"]
                );
                if let Some(detail) = answer["detail"].as_str().filter(|d| !d.is_empty()) {
                    line.push_str(&format!(": {detail}"));
                }
                outln!("{line}");
            }
            Ok(if answer["delivered"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::BulkRedeliver {
            project,
            callback,
            state,
            since,
            until,
            json,
        } => {
            let mut body = serde_json::json!({"project": project});
            for (k, v) in [
                ("callback", callback),
                ("state", state),
                ("since", since),
                ("until", until),
            ] {
                if let Some(v) = v {
                    body[k] = v.as_str().into();
                }
            }
            let body = serde_json::to_vec(&body)?;
            let answer = match &cli.server {
                Some(server) => send(server, "POST", "/v1/redeliver", Some(&body))?,
                None => {
                    // The same request, checked and answered by the same code as the API's.
                    let bulk = cb_cli::lists::BulkRedeliver::from_json(&body).map_err(refused)?;
                    let store = open_for_append(&cli)?;
                    let (machines, more) = bulk.select(&store.restore()?.core);
                    let count = machines.len();
                    let first = match count {
                        0 => None,
                        _ => Some(
                            store
                                .append(cb_cli::lists::redeliver_records(machines))?
                                .first,
                        ),
                    };
                    cb_cli::lists::bulk_answer(count, first, more)
                }
            };
            if *json {
                outln!("{answer}");
            } else {
                match (answer["count"].as_u64(), answer["first_seq"].as_u64()) {
                    (Some(n), Some(first)) if n > 0 => outln!(
                        "{n} redelivers appended: seq {first} to {}",
                        answer["last_seq"]
                    ),
                    _ => outln!("nothing to redeliver: no failing delivery matches"),
                }
                if answer["more"] == true {
                    outln!("more remain: run the same command again");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries {
            state,
            project,
            callback,
            origin,
            limit,
            after,
            json,
        } => {
            let limit = limit.map(|n| n.to_string());
            let q = list_query([
                ("state", state),
                ("project", project),
                ("callback", callback),
                ("origin", origin),
                ("limit", &limit),
                ("after", after),
            ]);
            let v = match &cli.server {
                Some(server) => fetch(server, &format!("/v1/deliveries?{q}"))?
                    .into_json::<serde_json::Value>()?,
                None => {
                    // The same parameters, checked the same way, as the API's.
                    let params =
                        cb_cli::lists::DeliveryParams::from_query(Some(&q)).map_err(refused)?;
                    let source = open(&cli)?;
                    let page = params.page(&source.store.restore()?.core);
                    let details = cb_cli::lists::details(&source.store, &page.outcome_seqs());
                    page.into_json(details)
                }
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_deliveries(&v)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Attempts {
            project,
            callback,
            file,
            outcome,
            since,
            until,
            limit,
            after,
            json,
        } => {
            let limit = limit.map(|n| n.to_string());
            let q = list_query([
                ("project", project),
                ("callback", callback),
                ("file", file),
                ("outcome", outcome),
                ("since", since),
                ("until", until),
                ("limit", &limit),
                ("after", after),
            ]);
            let v = match &cli.server {
                Some(server) => {
                    fetch(server, &format!("/v1/attempts?{q}"))?.into_json::<serde_json::Value>()?
                }
                None => {
                    let params =
                        cb_cli::lists::AttemptParams::from_query(Some(&q)).map_err(refused)?;
                    let source = open(&cli)?;
                    params.page(&source.store)?
                }
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_attempts(&v)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Projects { limit, after, json } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(n) = limit {
                q.append_pair("limit", &n.to_string());
            }
            if let Some(a) = after {
                q.append_pair("after", a);
            }
            let q = q.finish();
            let v = match &cli.server {
                Some(server) => {
                    fetch(server, &format!("/v1/projects?{q}"))?.into_json::<serde_json::Value>()?
                }
                None => {
                    let params =
                        cb_cli::lists::ProjectParams::from_query(Some(&q)).map_err(refused)?;
                    let source = open(&cli)?;
                    params.page(&source.store.restore()?.core)
                }
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_projects(&v)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let v = match &cli.server {
                Some(server) => fetch(server, "/v1/status")?.into_json::<serde_json::Value>()?,
                None => {
                    let source = open(&cli)?;
                    let restored = source.store.restore()?;
                    view::status(&restored.core, cb_store::wall_clock())
                }
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match file {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            Ok(buf)
        }
    }
}

/// NDJSON from `input`, decompressed when it is zstd (cbd's archives).
fn ndjson_input(input: Box<dyn std::io::Read>) -> anyhow::Result<Box<dyn BufRead>> {
    let mut input = BufReader::new(input);
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let head = input.fill_buf().context("reading the input")?;
    if head.starts_with(&ZSTD_MAGIC) {
        let decoder = zstd::Decoder::with_buffer(input).context("reading zstd input")?;
        return Ok(Box::new(BufReader::new(decoder)));
    }
    Ok(Box::new(input))
}

/// Refuses a `--data-dir` that is not one cbd made: opening it would create a log there
/// (a read-only command must not write into a directory it was pointed at by mistake). A
/// command that appends may also start a log in an empty dir (`empty_is_new`): setting
/// callbacks up before cbd's first start.
fn existing_data_dir(cli: &Cli, empty_is_new: bool) -> anyhow::Result<()> {
    let dir = &cli.data_dir;
    if !dir.exists() {
        bail!(
            "no data dir at {} (give --data-dir, or --server for a running daemon)",
            dir.display()
        );
    }
    let empty = || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    let usable = cb_store::DataDir::holds_log(dir) || (empty_is_new && empty());
    if !usable {
        bail!(
            "{} is not a cb data dir (it has no segments/ inside): give the dir cbd runs on, \
             or --server for a running daemon",
            dir.display()
        );
    }
    Ok(())
}

/// Opens the data dir to append, durably (the daemon is stopped; it folds these at start).
fn open_for_append(cli: &Cli) -> anyhow::Result<Store> {
    existing_data_dir(cli, true)?;
    Store::open(&cli.data_dir, StoreOptions::default())
        .with_context(|| format!("opening {}", cli.data_dir.display()))
}

/// An input the API would refuse, refused on a data dir in the words a `--server` refusal
/// uses ([`call`]): the detail, then the code.
fn refused(e: cb_cli::error::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e.detail, e.code)
}

/// `cbctl token`: adds, lists or removes a scoped token of the tokens file at `path`.
fn token(path: &Path, action: &TokenAction) -> anyhow::Result<ExitCode> {
    use cb_cli::credentials::{self, ScopedToken, TokensFile};
    let mut file = TokensFile::read_or_empty(path)?;
    match action {
        TokenAction::Add { name, scope } => {
            credentials::check_name(name).map_err(|e| anyhow::anyhow!(e))?;
            if file.tokens.iter().any(|t| &t.name == name) {
                bail!(
                    "{} already has a token named {name:?}: `cbctl token rm {name}` first, or \
                     give another name",
                    path.display()
                );
            }
            let token = credentials::new_token()
                .map_err(|e| anyhow::anyhow!("no randomness for a new token: {e}"))?;
            file.tokens.push(ScopedToken {
                name: name.clone(),
                scope: *scope,
                sha256: credentials::token_sha256(&token),
            });
            file.write(path)?;
            // The token alone on stdout (TOKEN=$(cbctl token add …) works); the rest on stderr.
            outln!("{token}");
            eprintln!(
                "cbctl: token {name:?} (scope {scope}) added to {}; it is shown only this once. \
                 cbd accepts it from its next SIGHUP (systemctl reload cbd) or start.",
                path.display()
            );
        }
        TokenAction::List { json } => {
            if *json {
                let list: Vec<serde_json::Value> = file
                    .tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "scope": t.scope.as_str(),
                            "sha256": hex::encode(t.sha256),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::Value::from(list));
            } else if file.tokens.is_empty() {
                outln!("no scoped tokens in {}", path.display());
            } else {
                for t in &file.tokens {
                    outln!(
                        "{:<24} {:<6} sha256:{}…",
                        t.name,
                        t.scope.as_str(),
                        &hex::encode(t.sha256)[..12]
                    );
                }
            }
        }
        TokenAction::Rm { name } => {
            let before = file.tokens.len();
            file.tokens.retain(|t| &t.name != name);
            if file.tokens.len() == before {
                bail!("{} has no token named {name:?}", path.display());
            }
            file.write(path)?;
            eprintln!(
                "cbctl: token {name:?} removed from {}; cbd refuses it from its next SIGHUP \
                 (systemctl reload cbd) or start.",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The ingest rules on a data dir, where the daemon's settings are not known: `mailto:`
/// callbacks are let through (its `--smtp` may be set), and callbacks to addresses the
/// target policy refuses are warned of (its `--allow-private-targets` may not be).
fn offline_rules() -> cb_cli::ingest::Rules {
    cb_cli::ingest::Rules {
        smtp: true,
        allow_private_targets: false,
    }
}

/// One API request to a running daemon that appends a record; its JSON answer.
fn send(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<serde_json::Value> {
    Ok(call(server, method, path, body)?.into_json()?)
}

/// What an appending command says: `what` and the record's seq, or `answer` as JSON. The
/// answer's `warnings` (a callback the daemon will not deliver as it runs) go to stderr,
/// one a line, where they are seen without spoiling what a script reads from stdout.
fn say_appended(what: &str, answer: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{answer}");
    } else {
        outln!("{what}: seq {}", answer["seq"]);
    }
    for warning in answer["warnings"].as_array().into_iter().flatten() {
        eprintln!("cbctl: warning: {}", warning.as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn callbacks(cli: &Cli, action: &CallbacksAction) -> anyhow::Result<ExitCode> {
    match action {
        CallbacksAction::List { project, json } => {
            let v = match &cli.server {
                Some(server) => fetch(server, &format!("/v1/projects/{project}/callbacks"))?
                    .into_json::<serde_json::Value>()?,
                None => {
                    let project = cb_core::ProjectId::new(project).context("project")?;
                    let source = open(cli)?;
                    let core = source.store.restore()?.core;
                    let list: Vec<serde_json::Value> = core
                        .callbacks(&project)
                        .map(|(n, s)| {
                            view::callback(n, &s.callback, s.disabled_by.is_none(), s.put_by.0)
                        })
                        .collect();
                    serde_json::json!({ "callbacks": list })
                }
            };
            if *json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list = v["callbacks"].as_array().map_or(&[][..], Vec::as_slice);
                if list.is_empty() {
                    // Silence would look like a failure, or hide a misspelt project.
                    outln!("project {project} has no callbacks");
                }
                for c in list {
                    let cb = &c["callback"];
                    outln!(
                        "{} {} {} {} window={}s{}",
                        c["name"].as_str().unwrap_or("?"),
                        cb["method"].as_str().unwrap_or("?"),
                        cb["url"].as_str().unwrap_or("?"),
                        cb["format"].as_str().unwrap_or("?"),
                        cb["window_secs"],
                        if c["enabled"] == false {
                            " (disabled by a 410)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CallbacksAction::Set {
            project,
            name,
            file,
            json,
        } => {
            let body = read_input(file.as_ref())?;
            let answer = match &cli.server {
                Some(server) => send(
                    server,
                    "PUT",
                    &format!("/v1/projects/{project}/callbacks/{name}"),
                    Some(&body),
                )?,
                None => {
                    let project = cb_core::ProjectId::new(project).context("project")?;
                    let name = cb_core::CallbackName::new(name).context("callback name")?;
                    let callback =
                        cb_cli::ingest::callback(&body, offline_rules()).map_err(refused)?;
                    let warnings = cb_cli::ingest::target_warnings(&callback, offline_rules());
                    let store = open_for_append(cli)?;
                    let appended = store.append(vec![cb_store::Input::Record(
                        cb_core::RecordKind::CallbackPut {
                            project,
                            name,
                            callback: std::sync::Arc::new(callback),
                        },
                    )])?;
                    serde_json::json!({"seq": appended.first.0, "warnings": warnings})
                }
            };
            say_appended(&format!("callback {project}/{name} set"), &answer, *json)
        }
        CallbacksAction::Rm {
            project,
            name,
            json,
        } => {
            let answer = match &cli.server {
                Some(server) => send(
                    server,
                    "DELETE",
                    &format!("/v1/projects/{project}/callbacks/{name}"),
                    None,
                )?,
                None => {
                    let project = cb_core::ProjectId::new(project).context("project")?;
                    let name = cb_core::CallbackName::new(name).context("callback name")?;
                    let store = open_for_append(cli)?;
                    let exists = store
                        .restore()?
                        .core
                        .callbacks(&project)
                        .any(|(n, _)| *n == name);
                    if !exists {
                        bail!("no callback {name} in {project}");
                    }
                    let appended = store.append(vec![cb_store::Input::Record(
                        cb_core::RecordKind::CallbackRemoved { project, name },
                    )])?;
                    serde_json::json!({"seq": appended.first.0})
                }
            };
            say_appended(
                &format!("callback {project}/{name} removed"),
                &answer,
                *json,
            )
        }
    }
}

/// The audit of `cbctl replay` (and of `cbctl bench`'s fold figure): folds the log (or one
/// file's records) up to `until`, verifying digests on `cores − 1` threads (at least one)
/// and on the fold's own thread when they are behind, each with its own snapshot reader. Returns the summary and the attempts in flight at the
/// end.
pub(crate) fn audit(
    store: &Store,
    until: Option<Point>,
    file: Option<FileKey>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(replay::Summary, usize)> {
    // The fold runs here; digest checks go in batches to verifier threads that read their
    // snapshots in version order and render them. Checking digests costs about as much as
    // the fold (docs/performance.md), so the fold never waits for a verifier: when the
    // queue is full it checks the batch itself, and at the end it helps drain the queue.
    let (checks_tx, checks_rx) = std::sync::mpsc::sync_channel::<replay::Batch>(2);
    let checks_rx = std::sync::Arc::new(std::sync::Mutex::new(checks_rx));
    // One core stays the fold's: a third thread on two cores only preempts it (measured:
    // 380 k records/s with two verifiers on 2 cores).
    let workers =
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let outcome = std::thread::scope(|scope| -> anyhow::Result<_> {
        // Owned here, so that any early return drops it and the verifiers already started
        // see the queue close instead of waiting on it forever.
        let checks_tx = checks_tx;
        let verifiers: Vec<_> = (0..workers)
            .map(|_| {
                let checks_rx = checks_rx.clone();
                std::thread::Builder::new()
                    .name("cbctl-verify".into())
                    .spawn_scoped(scope, move || {
                        let mut reader = store.snapshot_reader();
                        let mut verified = replay::Verified::default();
                        while let Some(batch) = next_batch(&checks_rx) {
                            replay::check(batch, &mut verified, &mut reader);
                        }
                        verified
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("starting the digest verifier threads")?;
        let mut reader = store.snapshot_reader();
        let mut verified = replay::Verified::default();
        // After retention the audit starts from the base: the state there, then the records
        // after it.
        let start = match &file {
            Some(key) => store.file_start(key)?.map(|s| s.state),
            None => store.base_checkpoint()?,
        };
        let mut audit = match start {
            Some(state) => Audit::from_base(state),
            None => Audit::new(),
        };
        audit.set_rules(store.rules());
        let records: Box<dyn Iterator<Item = cb_store::Result<Record>>> = match &file {
            Some(key) => match store.file_records(key) {
                Ok(records) => Box::new(records.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            },
            None => Box::new(store.records(Seq(1))),
        };
        let mut unusable = None;
        for (i, record) in records.enumerate() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    unusable = Some(e);
                    break;
                }
            };
            if until.is_some_and(|u| !u.includes(&record)) {
                break;
            }
            audit.feed(&record);
            if audit.batch_ready() {
                hand_over(audit.take_batch(), &checks_tx, &mut reader, &mut verified);
            }
            if i % 65_536 == 0 {
                bar.set_position(record.seq.0);
            }
        }
        for batch in audit.take_rest() {
            hand_over(batch, &checks_tx, &mut reader, &mut verified);
        }
        drop(checks_tx);
        while let Some(batch) = next_batch(&checks_rx) {
            replay::check(batch, &mut verified, &mut reader);
        }
        let mut verifier_failed = false;
        for v in verifiers {
            match v.join() {
                Ok(theirs) => verified.absorb(theirs),
                Err(_) => verifier_failed = true,
            }
        }
        Ok((audit, verified, unusable, verifier_failed))
    })?;
    bar.finish_and_clear();
    let (audit, verified, unusable, verifier_failed) = outcome;
    if verifier_failed {
        bail!("a digest verifier thread panicked (a bug in cbctl; its message is above)");
    }
    if let Some(e) = unusable {
        bail!("the log is unusable: {e}");
    }
    let in_flight = audit.in_flight();
    let (summary, _) = audit.finish(verified);
    Ok((summary, in_flight))
}

/// Gives `batch` to a verifier, or checks it here if they are all busy, so that the fold
/// never waits. (A verifier that died leaves the queue full, not closed, since this thread
/// holds the receiver too; its join reports it.)
fn hand_over(
    batch: replay::Batch,
    queue: &std::sync::mpsc::SyncSender<replay::Batch>,
    reader: &mut cb_store::SnapshotReader<'_>,
    verified: &mut replay::Verified,
) {
    match queue.try_send(batch) {
        Ok(()) => {}
        Err(
            std::sync::mpsc::TrySendError::Full(batch)
            | std::sync::mpsc::TrySendError::Disconnected(batch),
        ) => replay::check(batch, verified, reader),
    }
}

/// The next batch of digest checks for a verifier; `None` once the fold is done (or a
/// verifier panicked while holding the queue, which its join reports).
fn next_batch(
    queue: &std::sync::Mutex<std::sync::mpsc::Receiver<replay::Batch>>,
) -> Option<replay::Batch> {
    queue.lock().ok()?.recv().ok()
}

/// Where removed history went, for the notes that say history starts at the base.
fn replay(
    store: &Store,
    until: Option<Point>,
    file: Option<FileKey>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let total = store.last_seq().map_or(0, |s| s.0);
    let bar = if std::io::stderr().is_terminal() && file.is_none() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (summary, in_flight) = audit(store, until, file, &bar)?;
    let secs = started.elapsed().as_secs_f64();
    let rate = summary.records as f64 / secs.max(1e-9);
    if json {
        let mut v = serde_json::to_value(&summary)?;
        v["seconds"] = secs.into();
        v["records_per_second"] = rate.round().into();
        v["in_flight_at_end"] = in_flight.into();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(base) = summary.base {
            outln!(
                "from the log's base at seq {base} (history before it was removed by retention{})",
                archived_note(store)
            );
        }
        outln!(
            "replayed {} records in {secs:.2} s ({rate:.0} records/s), up to seq {}",
            summary.records,
            summary.last_seq.unwrap_or(0)
        );
        outln!(
            "files {} · callbacks {} · deliveries {} · attempts started {} · in flight at the end {} · ignored records {}",
            summary.files, summary.callbacks, summary.deliveries, summary.attempts_started, in_flight, summary.ignored
        );
        let outcomes: Vec<String> = summary
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        outln!(
            "outcomes: {}",
            if outcomes.is_empty() {
                "none".into()
            } else {
                outcomes.join(", ")
            }
        );
        let states: Vec<String> = cb_core::StateName::ALL
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.as_str(),
                    summary.machines.get(s.as_str()).copied().unwrap_or(0)
                )
            })
            .collect();
        outln!("machines: {}", states.join(", "));
        if summary.divergences.is_empty() {
            outln!("divergences: none");
        } else {
            outln!("divergences: {}", summary.divergences.len());
            for d in &summary.divergences {
                outln!("  seq {}: {}", d.seq, d.explanation);
            }
        }
    }
    Ok(if summary.divergences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn time_of(at: Timestamp) -> String {
    cb_store::ndjson::rfc3339(at).unwrap_or_else(|| at.to_string())
}

/// One line per step: time, seq (`-` for a deadline between records), one column per
/// callback the file ever had with its machine's state after the step (`-`: no machine),
/// then what happened. The columns come first because what happened varies in length.
fn print_history(h: &FileHistory) -> std::io::Result<()> {
    let v = view::history(h);
    let steps: Vec<&serde_json::Value> = v["steps"].as_array().into_iter().flatten().collect();
    // A column per callback that had a machine or that a change passed over.
    let mut callbacks: Vec<String> = steps
        .iter()
        .flat_map(|s| {
            let machines = s["machines"].as_array().into_iter().flatten();
            machines.chain(s["filtered"].as_array().into_iter().flatten())
        })
        .filter_map(|m| m["callback"].as_str().map(str::to_owned))
        .collect();
    callbacks.sort();
    callbacks.dedup();
    let width = |name: &str| name.chars().count().max("coalescing".len());
    let mut header = format!("{:<24}  {:>6}", "time", "seq");
    for c in &callbacks {
        header.push_str(&format!("  {c:<w$}", w = width(c)));
    }
    outln!("history of {}", h.file);
    outln!("{header}  what");
    for step in steps {
        let at = step["time"].as_str().unwrap_or("");
        let seq = step["seq"]
            .as_u64()
            .map_or("-".to_owned(), |s| s.to_string());
        let mut line = format!("{at:<24}  {seq:>6}");
        for c in &callbacks {
            let state = step["machines"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["callback"].as_str() == Some(c.as_str()))
                .and_then(|m| m["state"].as_str())
                .or_else(|| {
                    // No machine, and this change passed the callback over: say so.
                    let filtered = step["filtered"].as_array().into_iter().flatten();
                    let mut filtered = filtered.filter(|f| f["callback"].as_str() == Some(c));
                    filtered.next().map(|_| "filtered")
                })
                .unwrap_or("-");
            line.push_str(&format!("  {state:<w$}", w = width(c)));
        }
        outln!("{line}  {}", describe(step));
    }
    Ok(())
}

fn describe(step: &serde_json::Value) -> String {
    let s = |k: &str| step[k].as_str().unwrap_or("").to_owned();
    let mut d = match step["kind"].as_str().unwrap_or("") {
        "change" => format!("change {}", s("event")),
        "callback_put" => format!("callback {} put", s("name")),
        "callback_removed" => format!("callback {} removed", s("name")),
        "callback_disabled" => format!(
            "callback {} disabled (410 at seq {})",
            s("callback"),
            step["cause"]
        ),
        "attempt" => {
            let mut a = format!(
                "{} attempt {} v{} → {} ({} ms)",
                s("callback"),
                step["attempt"],
                step["version"],
                s("outcome"),
                step["latency_ms"]
            );
            if !s("detail").is_empty() {
                a.push_str(&format!(": {}", s("detail")));
            }
            if let Some(note) = step["retry_after"]["note"].as_str() {
                a.push_str(&format!(" [{note}]"));
            }
            a
        }
        "redeliver" => format!("redeliver {}", step["callback"].as_str().unwrap_or("all")),
        "deadline" => "deadline".to_owned(),
        "tick" => "tick".to_owned(),
        other => other.to_owned(),
    };
    for a in step["attempts_started"].as_array().into_iter().flatten() {
        d.push_str(&format!(
            " ⇒ start {} attempt {} v{}",
            a["callback"].as_str().unwrap_or("?"),
            a["attempt"],
            a["version"]
        ));
    }
    if let Some(why) = step["ignored"].as_str() {
        d.push_str(&format!(" (ignored: {why})"));
    }
    for f in step["filtered"].as_array().into_iter().flatten() {
        d.push_str(&format!(
            "; {} filtered ({})",
            f["callback"].as_str().unwrap_or("?"),
            f["why"].as_str().unwrap_or("?")
        ));
    }
    d
}

/// `cbctl rewind`: [`cb_cli::rewind::rewind`], printed as a table or as JSON (the JSON is
/// the API's `GET /v1/files/{p}/{id}/rewind?to=` answer).
fn rewind(store: &Store, file: &FileKey, to: Point, json: bool) -> anyhow::Result<ExitCode> {
    let rewound = match cb_cli::rewind::rewind(store, file, to) {
        Ok(r) => r,
        Err(e @ RewindError::NoSuchFile(_)) => return Err(NoSuchFile(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&rewound.json())?);
        return Ok(ExitCode::SUCCESS);
    }
    let (last_seq, last_at) = rewound.last;
    let until = rewound.until;
    let version = rewound.version;
    let state = rewound.state();
    let payloads = &rewound.payloads;
    let log_end = store.last_seq().unwrap_or(last_seq);
    let (as_of, past_end) = match to {
        Point::Seq(s) if s > log_end => (log_end, format!(", the log's end: it has no seq {s}")),
        Point::Seq(s) => (s, String::new()),
        Point::Time(_) => (last_seq, String::new()),
    };
    outln!(
        "{file} as of seq {as_of}{past_end} ({})",
        time_of(until.unwrap_or(last_at))
    );
    outln!(
        "version {}",
        version.map_or("none".into(), |v| v.to_string())
    );
    let v = serde_json::to_value(&state)?;
    for m in v["machines"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {}: {}",
            m["callback"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?")
        );
        for k in [
            "due_time",
            "next_time",
            "started_time",
            "sent_time",
            "abandoned_time",
        ] {
            if let Some(t) = m[k].as_str() {
                line.push_str(&format!(" {}={t}", k.trim_end_matches("_time")));
            }
        }
        if let Some(o) = m["last_outcome"]["outcome"].as_str() {
            line.push_str(&format!(" last={o}"));
        }
        outln!("{line}");
    }
    for d in v["disabled_callbacks"].as_array().into_iter().flatten() {
        outln!(
            "  {}: disabled (410 at seq {})",
            d["callback"].as_str().unwrap_or("?"),
            d["disabled_by"]
        );
    }
    for p in payloads {
        let flight = match p.in_flight {
            Some((attempt, version)) => {
                format!(" (in flight: attempt {attempt} of version {version})")
            }
            None => String::new(),
        };
        let r = &p.rendered;
        if let Some(why) = p.passed_over {
            let why = serde_json::to_value(why)?;
            outln!(
                "\n{}: would not send: the latest change was filtered ({}) and no delivery is waiting; \
                 a change it takes would send:",
                p.callback,
                why.as_str().unwrap_or("?")
            );
        }
        outln!(
            "\n{}{flight}: {} {}  (digest {})",
            p.callback,
            p.config.method.as_str(),
            p.url,
            r.digest().to_hex()
        );
        for h in &p.config.headers {
            outln!("{}: {}", h.name, h.value);
        }
        if let cb_core::Placement::Body { content_type } = r.placement {
            outln!(
                "Content-Type: {content_type}\n{}",
                String::from_utf8_lossy(&r.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_projects(v: &serde_json::Value) -> std::io::Result<()> {
    // Only the states that hold machines: a project's line stays short.
    let states = |m: &serde_json::Value| -> String {
        let held: Vec<String> = cb_core::StateName::ALL
            .iter()
            .filter_map(|s| {
                let n = m[s.as_str()].as_u64().unwrap_or(0);
                (n > 0).then(|| format!("{} {n}", s.as_str()))
            })
            .collect();
        if held.is_empty() {
            "no machines".to_owned()
        } else {
            held.join(" · ")
        }
    };
    let items = v["items"].as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        outln!("no projects");
    }
    for p in items {
        outln!(
            "{}  {}",
            p["project"].as_str().unwrap_or("?"),
            states(&p["machines"])
        );
        for c in p["callbacks"].as_array().into_iter().flatten() {
            let mut line = format!("  {}", c["callback"].as_str().unwrap_or("?"));
            if let Some(url) = c["url"].as_str() {
                line.push_str(&format!("  {url}"));
            }
            if let Some(by) = c["disabled_by"].as_u64() {
                line.push_str(&format!("  disabled (410 at seq {by})"));
            }
            if let Some(by) = c["paused_by"].as_u64() {
                line.push_str(&format!("  paused (seq {by})"));
            }
            outln!("{line}  {}", states(&c["machines"]));
        }
    }
    if let Some(next) = v["next"].as_str() {
        outln!("more: --after {next}");
    }
    Ok(())
}

fn print_deliveries(v: &serde_json::Value) -> std::io::Result<()> {
    let items = v["items"].as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        outln!("no deliveries match");
    }
    for d in items {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
        let mut line = format!("{}  {}  {}", s("file"), s("callback"), s("state"));
        for k in [
            "due_time",
            "next_time",
            "started_time",
            "sent_time",
            "abandoned_time",
        ] {
            if let Some(t) = d[k].as_str() {
                line.push_str(&format!("  {}={t}", k.trim_end_matches("_time")));
            }
        }
        if let Some(n) = d["attempts"].as_u64() {
            line.push_str(&format!("  attempts={n}"));
        }
        let o = &d["last_outcome"];
        if let Some(outcome) = o["outcome"].as_str() {
            line.push_str(&format!("  last={outcome}"));
            if let Some(detail) = o["detail"].as_str().filter(|d| !d.is_empty()) {
                line.push_str(&format!(" ({detail})"));
            }
        }
        outln!("{line}");
    }
    if let Some(next) = v["next"].as_str() {
        outln!("more: --after '{next}'");
    }
    Ok(())
}

/// A list's query string from the options given, as the API reads it (and, on a data dir,
/// the same parser does): the options absent are left out.
fn list_query<const N: usize>(options: [(&str, &Option<String>); N]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (name, value) in options {
        if let Some(value) = value {
            q.append_pair(name, value);
        }
    }
    q.finish()
}

fn print_attempts(v: &serde_json::Value) -> std::io::Result<()> {
    let items = v["items"].as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        outln!("no attempts match");
    }
    for a in items {
        let s = |k: &str| match &a[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut line = format!(
            "{}  #{}  {}/{}  {}  attempt {} of delivery {}  {}  {} ms",
            s("time"),
            s("seq"),
            s("project"),
            s("file_id"),
            s("callback"),
            s("attempt"),
            s("delivery"),
            s("outcome"),
            s("latency_ms"),
        );
        if let Some(detail) = a["detail"].as_str().filter(|d| !d.is_empty()) {
            line.push_str(&format!("  ({detail})"));
        }
        outln!("{line}");
    }
    if let Some(next) = v["next"].as_str() {
        outln!("more: --after {next}");
    }
    Ok(())
}

fn print_status(v: &serde_json::Value) -> std::io::Result<()> {
    let m = &v["machines"];
    outln!(
        // What the core holds now: a machine `sent` and past its window is dropped (it is a
        // fresh one), so these are not totals over the log; `replay` counts those.
        "held now: files {} · coalescing {} · pending {} · sent, window open {} · retrying {} · abandoned {}",
        v["files"],
        m["coalescing"],
        m["pending"],
        m["sent"],
        m["retrying"],
        m["abandoned"]
    );
    if let Some(t) = v["next_deadline"].as_u64() {
        outln!("oldest due: {}", time_of(Timestamp(t)));
    }
    for state in ["retrying", "abandoned"] {
        let listed = v[state].as_array().map_or(&[][..], Vec::as_slice);
        for a in listed {
            outln!(
                "{state}: {} {} (delivery {}, {} attempts)",
                a["file"].as_str().unwrap_or("?"),
                a["callback"].as_str().unwrap_or("?"),
                a["delivery"],
                a["attempts"]
            );
        }
        // The server lists the first ones by key; the totals count them all.
        let more = m[state]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(listed.len() as u64);
        if more > 0 {
            outln!("{state}: … and {more} more");
        }
    }
    for d in v["disabled_callbacks"].as_array().into_iter().flatten() {
        match d["file"].as_str() {
            Some(file) => outln!(
                "disabled: {file} {} (410 at seq {}; a change carrying the file's callbacks enables it)",
                d["name"].as_str().unwrap_or("?"),
                d["disabled_by"]
            ),
            None => outln!(
                "disabled: {}/{} (410 at seq {}; a PUT of the callback enables it)",
                d["project"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or("?"),
                d["disabled_by"]
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod stdout_tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_on_stdout_ends_quietly() {
        let pipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let on_stdout =
            anyhow::Error::from(StdoutError::mark(pipe())).context("writing the export");
        assert!(reader_went_away(&on_stdout));
        let on_a_socket = anyhow::Error::from(pipe()).context("sending to the server");
        assert!(!reader_went_away(&on_a_socket), "reported, not swallowed");
        let other = anyhow::Error::from(StdoutError::mark(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert!(!reader_went_away(&other));
    }
}
