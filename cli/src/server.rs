//! The accept loop: HTTP/1.1 keep-alive connections served by hyper, with a header timeout
//! against idle or slow clients, a bound on open connections, and a graceful stop that lets
//! requests in progress finish.
//!
//! The bound (mini-redis's `Semaphore` is the model): a connection takes a permit of
//! `max_connections` before it gets a task, and gives it back when it closes. Past the bound
//! a connection is not left waiting in the kernel's backlog, where a client cannot tell a
//! busy daemon from a dead one: it is read (its request head, within a few seconds) and
//! answered `503 too_many_connections` with `Retry-After`, then closed. Those answers are
//! bounded too ([`REFUSING`] at once); past that, a connection is closed unanswered.
//!
//! With `--tls-cert` every connection is TLS: the handshake runs in the connection's own
//! task, bounded by [`HANDSHAKE_TIMEOUT`], with the acceptor in force when it was accepted
//! (SIGHUP replaces it for later connections; open ones keep theirs).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::api::{self, Api};
use crate::error::ApiError;
use crate::reload::Current;

/// The default bound on open API connections (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Connections past the bound answered 503 at once; more are closed unanswered.
pub const REFUSING: usize = 64;

/// How long a connection past the bound has to send its request head.
const REFUSING_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The handshake of an accepted connection, within [`HANDSHAKE_TIMEOUT`]; `None` (logged at
/// debug: a port scan or a client that does not trust the certificate is not cbd's fault)
/// if it fails.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves `listener` (over TLS when `tls` is given) until `stop` completes, then stops
/// accepting and waits (up to `grace`) for the requests in progress. At most
/// `max_connections` are open at once.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<Current<TlsAcceptor>>>,
    stop: impl Future<Output = ()>,
    grace: Duration,
    max_connections: usize,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let mut refuse = hyper::server::conn::http1::Builder::new();
    refuse
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSING_HEAD_TIMEOUT)
        .keep_alive(false);
    let open = Arc::new(Semaphore::new(max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let metrics = api.handle.metrics().clone();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    metrics.connections_refused.inc();
                    let Ok(refusing) = refusing.clone().try_acquire_owned() else {
                        debug!(%peer, "closed a connection past --max-connections unanswered");
                        continue;
                    };
                    let refuse = refuse.clone();
                    let acceptor = tls.as_ref().map(|t| (*t.get()).clone());
                    tokio::spawn(async move {
                        match acceptor {
                            None => refuse_on(&refuse, stream, max_connections).await,
                            Some(acceptor) => {
                                if let Some(tls) = handshake(acceptor, stream, peer).await {
                                    refuse_on(&refuse, tls, max_connections).await;
                                }
                            }
                        }
                        drop(refusing);
                    });
                    continue;
                };
                metrics.connections_open.inc();
                let api = api.clone();
                let metrics = metrics.clone();
                let Some(current) = &tls else {
                    let conn = http.serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| api::serve(api.clone(), req)),
                    );
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!(%peer, error = %e, "connection ended with an error");
                        }
                        metrics.connections_open.dec();
                        drop(permit);
                    });
                    continue;
                };
                // The connection's own task does the handshake, so a slow client holds only
                // that task; its watcher, taken now, makes a graceful stop wait for it.
                let acceptor = (*current.get()).clone();
                let watcher = graceful.watcher();
                let http = http.clone();
                tokio::spawn(async move {
                    if let Some(stream) = handshake(acceptor, stream, peer).await {
                        let conn = http.serve_connection(
                            TokioIo::new(stream),
                            service_fn(move |req| api::serve(api.clone(), req)),
                        );
                        if let Err(e) = watcher.watch(conn).await {
                            debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    metrics.connections_open.dec();
                    drop(permit);
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in progress after the grace period; closing them");
    }
}

/// Answers one request on `io` with [`too_many_connections`], then closes it.
async fn refuse_on<I>(refuse: &hyper::server::conn::http1::Builder, io: I, max: usize)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = refuse.serve_connection(
        TokioIo::new(io),
        service_fn(move |_req| async move { Ok::<_, Infallible>(too_many_connections(max)) }),
    );
    let _ = conn.await;
}

fn too_many_connections(max: usize) -> hyper::Response<api::Body> {
    api::error_response(
        &ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "cbd has {max} connections open, its limit (--max-connections); try again shortly, or reuse connections"
            ),
        )
        .retry_after(1)
        .closing(),
    )
}
