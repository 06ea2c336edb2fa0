//! Serving a hyper service over a graceful listener.
//!
//! Invariants:
//! - Accepting runs on its own task (on 2 cores, accepting inside a `select!` on the caller's
//!   task cost about 20% of throughput with one request per connection), owned by the `serve`
//!   future: dropping the future stops accepting (the connections already accepted are served
//!   on their own tasks and drained as usual).
//! - Until this process is replaced, connections are served as hyper-util's auto builder serves
//!   them (HTTP/1.1 and HTTP/2, detected, with upgrades such as WebSocket).
//! - Once it is replaced: HTTP/2 connections get GOAWAY at once and finish their streams.
//!   HTTP/1 connections answer their next request with `Connection: close` (see `close.rs`)
//!   and are closed only if they stay idle through the idle grace. A connection accepted just
//!   before the upgrade whose first request arrives within the grace is served, not closed.
//! - Every connection is tracked, upgraded ones (WebSocket) included, so the drain waits for
//!   them until its deadline.

use std::any::Any;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use graceful_tokio::{Accept, DrainReport, Error, Graceful, Listener, TrackedStream};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

use crate::close::CloseWhenReplaced;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `service` on every connection of `listener` until this process is replaced or
/// stopped, then drains. Await it (it is an [`IntoFuture`]); it returns the drain's report.
///
/// ```no_run
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
///
/// # async fn run() -> Result<(), graceful_tokio::Error> {
/// let listener = graceful_tokio::listen("127.0.0.1:8080").await?;
/// let hello = service_fn(|_: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
/// });
/// let report = graceful_hyper::serve(listener, hello).await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<L, S>(listener: Listener<L>, service: S) -> Serve<L, S> {
    Serve {
        listener,
        service,
        idle_grace: DEFAULT_IDLE_GRACE,
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        call_ready: true,
        tcp_nodelay: true,
        builder: auto::Builder::new(TokioExecutor::new()),
    }
}

/// A server in the making; see [`serve`].
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<L, S> {
    listener: Listener<L>,
    service: S,
    idle_grace: Duration,
    drain_timeout: Duration,
    call_ready: bool,
    tcp_nodelay: bool,
    builder: auto::Builder<TokioExecutor>,
}

impl<L, S> std::fmt::Debug for Serve<L, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("idle_grace", &self.idle_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("call_ready", &self.call_ready)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .finish_non_exhaustive()
    }
}

impl<L, S> Serve<L, S> {
    /// How long an HTTP/1 connection may stay idle after this process is replaced before it is
    /// closed. A request that arrives within it is answered (with `Connection: close`). Default:
    /// 1 s.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// How long the old process waits for its connections once replaced. Default: 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Do not call `graceful::ready()` once serving has started: the application will, when
    /// it has warmed up. Nothing is accepted until it does.
    pub fn without_ready(mut self) -> Self {
        self.call_ready = false;
        self
    }

    /// Whether accepted TCP connections get `TCP_NODELAY`. Default: true, as a server that
    /// writes small responses wants: without it, a response written in more than one piece
    /// (an HTTP/2 HEADERS frame, then DATA) waits for the client's delayed ACK, up to 40 ms on
    /// Linux. Neither hyper-util's builder nor `axum::serve` sets it for you (axum documents
    /// `ListenerExt::tap_io` for it); here it is on unless turned off. Unix sockets are left
    /// alone.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// hyper-util's connection builder, for HTTP/1 and HTTP/2 settings.
    pub fn http_builder(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }
}

impl<L, S, B> IntoFuture for Serve<L, S>
where
    L: Accept + Send + 'static,
    L::Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<DrainReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let graceful = Graceful::get()?;
            let connection = Arc::new(ConnectionConfig {
                builder: self.builder,
                idle_grace: self.idle_grace,
                graceful: graceful.clone(),
            });
            let mut listener = if self.call_ready {
                self.listener
            } else {
                self.listener.wait_for_ready()
            };
            let service = self.service;
            let nodelay = self.tcp_nodelay;
            let accepting = AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some((io, _)) = listener.accept().await {
                    if nodelay {
                        set_nodelay(&io);
                    }
                    let service =
                        CloseWhenReplaced::new(service.clone(), connection.graceful.clone());
                    tokio::spawn(serve_connection(io, service, connection.clone()));
                }
            }));
            if self.call_ready {
                if let Err(err) = graceful.ready() {
                    // Not serving after all: the caller gets the error, not a server behind its back.
                    accepting.abort();
                    return Err(err);
                }
            }
            if let Err(err) = accepting.await {
                return Err(Error::io(
                    "the accept task failed",
                    std::io::Error::other(err),
                ));
            }
            Ok(graceful.drain(self.drain_timeout).await)
        })
    }
}

struct ConnectionConfig {
    builder: auto::Builder<TokioExecutor>,
    idle_grace: Duration,
    graceful: Graceful,
}

async fn serve_connection<I, S, B>(
    io: TrackedStream<I>,
    service: CloseWhenReplaced<S>,
    config: Arc<ConnectionConfig>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http2 = service.http2_seen();
    let connection = config
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    tokio::select! {
        result = connection.as_mut() => return log_end(result),
        () = config.graceful.upgrade_requested() => {}
    }
    if http2.load(std::sync::atomic::Ordering::Relaxed) {
        // GOAWAY: the client sends its next request on a new connection; streams in flight end.
        connection.as_mut().graceful_shutdown();
    } else {
        // Requests from now on are answered with Connection: close; a connection that stays
        // idle through the grace is closed.
        tokio::select! {
            result = connection.as_mut() => return log_end(result),
            () = tokio::time::sleep(config.idle_grace) => connection.as_mut().graceful_shutdown(),
        }
    }
    log_end(connection.await);
}

/// Sets `TCP_NODELAY` on an accepted connection if it is a TCP one.
fn set_nodelay<I: 'static>(io: &TrackedStream<I>) {
    let io: &dyn Any = io.get_ref();
    if let Some(tcp) = io.downcast_ref::<tokio::net::TcpStream>() {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on an accepted connection");
        }
    }
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}
