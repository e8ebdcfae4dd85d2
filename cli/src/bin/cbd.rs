//! `cbd`: the daemon. Resolves settings, binds its port, opens the data dir through the
//! dispatcher (which restores the core and resumes attempts in flight), loads or creates the
//! token, serves the API (over TLS with `--tls-cert`), reloads the tokens file and the TLS
//! files on SIGHUP ([`reload`]), and on SIGTERM/SIGINT stops accepting, lets attempts in
//! flight finish (bounded), writes a final checkpoint and exits 0.
//!
//! Exit codes: 0 stopped by a signal; 2 a setting it refuses, a bad `CBD_TOKEN` or a port it
//! cannot bind, all found before anything is created on disk; 1 anything else.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cb_cli::api::Api;
use cb_cli::credentials::Credentials;
use cb_cli::ingest::Rules;
use cb_cli::reload::Current;
use cb_cli::settings::{Args, LogFormat, Settings};
use cb_cli::token::{Source, Token};
use cb_dispatcher::Dispatcher;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

// glibc's allocator spent a fifth of the delivery path consolidating and unlinking chunks
// (perf, daemon_load); mimalloc's per-thread free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let pages = cb_cli::pages::keep_small_pages();
    let args = Args::parse();
    let settings = match Settings::resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cbd: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the data dir is opened, so a mistyped token creates nothing.
    if let Err(e) = Token::check_env(&std::env::var("CBD_TOKEN").unwrap_or_default()) {
        eprintln!("cbd: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_from_env("CBD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    info!(%pages, "memory pages");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cbd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cbd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = cb_cli::error::one_line(e.as_ref());
            error!("{message}");
            eprintln!("cbd: {message}");
            if e.is::<Unusable>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A start refused for a reason only the operator can fix, found before the data dir is
/// touched: exit 2, as for a bad setting, so that a service manager can be told not to
/// restart into the same refusal (the unit's `RestartPreventExitStatus=2`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unusable(String);

/// Why `addr` cannot be listened on, and what to do, in one sentence.
fn cannot_listen(addr: SocketAddr, e: &std::io::Error) -> Unusable {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::AddrInUse => {
            "another program (another cbd?) listens there: stop it, or give another --listen"
        }
        ErrorKind::PermissionDenied => {
            "a port below 1024 needs CAP_NET_BIND_SERVICE: give another --listen"
        }
        ErrorKind::AddrNotAvailable => {
            "the address is not one of this machine's: give one of its own, or 0.0.0.0, with --listen"
        }
        _ => "give another --listen",
    };
    Unusable(format!("cannot listen on {addr}: {e}; {fix}"))
}

enum Stop {
    Signal(&'static str),
    DriverStopped,
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives once "listening" is printed (or while the log
    // is restored) must stop cbd gracefully, not kill it by the default action. Installed
    // later, a stop sent right after start exited by signal (an e2e test caught it).
    let mut signals = Signals::install();
    // The port before the data dir: a taken port must leave nothing behind (a new data dir
    // and token in the wrong place are worse than a clear refusal). Connections made while
    // the log is restored wait in the kernel's queue and are served once it is.
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| cannot_listen(settings.listen, &e))?;
    let (mut dispatcher, started) = Dispatcher::start(settings.dispatcher())
        .await
        .with_context(|| format!("opening data dir {}", settings.data_dir.display()))?;
    info!(
        data_dir = %settings.data_dir.display(),
        last_seq = started.last_seq.map(|s| s.0),
        checkpoint = started.checkpoint.map(|s| s.0),
        tail_records = started.tail_records,
        resumed_attempts = started.resumed_attempts,
        "log restored"
    );
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&settings.data_dir) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            // cbd makes new data dirs 0700; an older or hand-made one may be open to others.
            warn!(
                data_dir = %settings.data_dir.display(),
                mode = format!("{mode:o}"),
                "other users have access to the data dir, and its log holds signing secrets; chmod 700 it"
            );
        }
    }
    let (token, source) = Token::load(&settings.data_dir, std::env::var("CBD_TOKEN").ok())
        .context("loading the API token")?;
    let credentials = Credentials::new(token, settings.scoped_tokens.clone());
    let tls = match &settings.api_tls {
        Some(files) => Some(Arc::new(Current::new(
            files.load().context("the API's TLS files")?,
        ))),
        None => None,
    };
    let addr = listener.local_addr().context("reading the bound address")?;
    // Two plain lines on stdout, for people and for scripts that start cbd on port 0.
    let token_line = match &source {
        Source::Env => "cbd: token from CBD_TOKEN".to_owned(),
        Source::File(p) => format!("cbd: token in {}", p.display()),
        Source::Generated(p) => format!("cbd: token generated into {}", p.display()),
    };
    notice(&token_line);
    if credentials.scoped_count() > 0 {
        notice(&format!(
            "cbd: {} scoped tokens from {}",
            credentials.scoped_count(),
            settings.tokens.path.display()
        ));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    notice(&format!("cbd: listening on {scheme}://{addr}"));
    info!(
        %addr,
        allow_private_targets = settings.allow_private_targets,
        smtp = settings.smtp.as_deref().unwrap_or("none"),
        "serving"
    );
    let outgoing = &settings.tls;
    for warning in &outgoing.warnings {
        warn!("{warning}; HTTPS deliveries trust the other roots");
    }
    info!(
        webpki_roots = outgoing.roots.webpki,
        system_roots = outgoing.roots.system,
        ca_file_roots = outgoing.roots.ca_file,
        client_cert = outgoing.client_cert,
        "HTTPS deliveries trust these roots"
    );

    let api = Arc::new(
        Api::new(
            dispatcher.handle(),
            credentials,
            Rules {
                smtp: settings.smtp.is_some(),
                allow_private_targets: settings.allow_private_targets,
            },
            settings.max_body_bytes,
            settings.max_batch_bytes,
        )
        .with_metrics_auth(settings.metrics_auth),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cb_cli::server::serve(
        listener,
        api.clone(),
        tls.clone(),
        async move {
            let _ = stop_rx.await;
        },
        settings.shutdown_grace,
        settings.max_connections,
    ));

    let stop = loop {
        tokio::select! {
            s = signals.recv() => match s {
                "SIGHUP" => reload(&settings, &api, tls.as_deref()),
                s => break Stop::Signal(s),
            },
            () = dispatcher.stopped() => break Stop::DriverStopped,
        }
    };
    let _ = stop_tx.send(());
    match stop {
        Stop::Signal(name) => {
            info!(
                signal = name,
                "stopping; a second SIGTERM or SIGINT stops at once"
            );
            let graceful = async {
                let _ = server.await;
                dispatcher.shutdown().await
            };
            tokio::select! {
                done = graceful => {
                    done.context("shutting down")?;
                    info!("stopped");
                    Ok(())
                }
                again = signals.recv() => {
                    // As safe as SIGKILL, which the crash tests cover: what was acknowledged
                    // is on disk, and attempts in flight are made again at the next start.
                    warn!(signal = again, "stopping at once, without waiting for attempts in flight; they will be made again at the next start");
                    std::process::exit(1)
                }
            }
        }
        Stop::DriverStopped => {
            let _ = server.await;
            dispatcher.join().await.context("the dispatcher stopped")?;
            anyhow::bail!("the dispatcher stopped unexpectedly")
        }
    }
}

/// SIGHUP: reads the tokens file and the API's TLS files again. Each that reads and checks
/// is put in force for the requests and connections that come after; each that does not
/// leaves what was in force, and says why in the log (cbd keeps running either way: a
/// reload is not a restart).
fn reload(settings: &Settings, api: &Api, tls: Option<&Current<tokio_rustls::TlsAcceptor>>) {
    match settings.tokens.read() {
        Ok(file) => {
            let count = file.tokens.len();
            api.credentials.set(api.credentials.get().with_file(file));
            info!(
                tokens_file = %settings.tokens.path.display(),
                scoped_tokens = count,
                "SIGHUP: the tokens file is in force"
            );
        }
        Err(e) => error!(
            error = %e,
            "SIGHUP: the tokens file does not read; the tokens in force are unchanged"
        ),
    }
    if let (Some(files), Some(current)) = (&settings.api_tls, tls) {
        match files.load() {
            Ok(acceptor) => {
                current.set(acceptor);
                info!(cert = %files.cert.display(), "SIGHUP: the API's TLS certificate is in force for new connections");
            }
            Err(e) => error!(
                error = %e,
                "SIGHUP: the API's TLS files do not read; the certificate in force is unchanged"
            ),
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed.
struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some((term, int, hup))),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                // Without handlers cbd still runs; it stops when killed.
                warn!(error = %e, "cannot catch SIGTERM/SIGINT/SIGHUP: cbd will not stop gracefully nor reload");
                Signals(None)
            }
        }
    }

    /// The name of the next signal received (pending forever without handlers).
    async fn recv(&mut self) -> &'static str {
        let Some((term, int, hup)) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        }
    }
}

/// Writes one line to stdout for whoever started cbd. A reader that went away (a script that
/// read the address and closed the pipe) must not stop the daemon, so failures are ignored:
/// the same facts are in the log.
fn notice(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
