//! Serving a hyper service over a graceful listener.
//!
//! Invariants:
//! - Accepting runs on its own task (on 2 cores, accepting inside a `select!` on the caller's
//!   task cost about 20% of throughput with one request per connection), owned by the `serve`
//!   future: dropping the future stops accepting (the connections already accepted are served
//!   on their own tasks and drained as usual).
//! - Until this process is replaced, connections are served with hyper's HTTP/1.1 and HTTP/2
//!   builders, the protocol detected per connection, with upgrades such as WebSocket; see
//!   `connection.rs` for what happens once it is replaced.
//! - With hand-off (the default, for TCP listeners), the tag idle HTTP/1 connections travel
//!   under (`http1@<address>`) is asked for when the future is created, so before `ready()`;
//!   connections handed over by the previous generation are served like accepted ones, on
//!   their own tasks, for as long as the `serve` future lives.
//! - Every connection is tracked, upgraded and handed-over ones included, so the drain waits
//!   for them until its deadline.

use std::any::Any;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use graceful_tokio::{
    Accept, DrainReport, Error, Graceful, HandedOver, Listener, Prefixed, TrackedStream,
};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;

use crate::connection::{ConnectionConfig, serve_connection};

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
        handoff: true,
        http1: http1::Builder::new(),
        http2: http2::Builder::new(TokioExecutor::new()),
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
    handoff: bool,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl<L, S> std::fmt::Debug for Serve<L, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("idle_grace", &self.idle_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("call_ready", &self.call_ready)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("handoff", &self.handoff)
            .finish_non_exhaustive()
    }
}

impl<L, S> Serve<L, S> {
    /// How long an HTTP/1 connection that is not handed over may stay idle after this process
    /// is replaced before it is closed. A request that arrives within it is answered (with
    /// `Connection: close`). Default: 1 s.
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

    /// Whether idle HTTP/1 keep-alive connections are handed over to the new process once
    /// this one is replaced (default: true), instead of answering their next request with
    /// `Connection: close`. The client keeps its TCP connection, and its next request is
    /// answered by the new process; a connection busy with a request, and every HTTP/2
    /// connection, winds down as without hand-off. Only connections of TCP listeners travel,
    /// and only to a new process that takes them (one that runs `serve` with hand-off on the
    /// same address).
    pub fn handoff(mut self, handoff: bool) -> Self {
        self.handoff = handoff;
        self
    }

    /// hyper's HTTP/1 connection builder, for its settings. Connections are always served
    /// with upgrades (WebSocket).
    pub fn http1_builder(&mut self) -> &mut http1::Builder {
        &mut self.http1
    }

    /// hyper's HTTP/2 connection builder, for its settings.
    pub fn http2_builder(&mut self) -> &mut http2::Builder<TokioExecutor> {
        &mut self.http2
    }
}

impl<L, S, B> IntoFuture for Serve<L, S>
where
    L: Accept + Send + 'static,
    L::Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    L::Addr: 'static,
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
        let graceful = Graceful::get();
        // Asked for now, before the future runs: with `without_ready`, the application may
        // call `ready()` right after creating it.
        let (handoff_tag, handed) = match (&graceful, self.handoff) {
            (Ok(graceful), true) => take_handed_over(graceful, &self.listener),
            _ => (None, None),
        };
        Box::pin(async move {
            let graceful = graceful?;
            let connection = Arc::new(ConnectionConfig {
                http1: self.http1,
                http2: self.http2,
                idle_grace: self.idle_grace,
                graceful: graceful.clone(),
                handoff_tag,
            });
            let mut listener = if self.call_ready {
                self.listener
            } else {
                self.listener.wait_for_ready()
            };
            let service = self.service;
            let nodelay = self.tcp_nodelay;
            let _receiving = handed.map(|handed| {
                AbortOnDropHandle::new(tokio::spawn(receive(
                    handed,
                    service.clone(),
                    connection.clone(),
                )))
            });
            let accepting = AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some((io, _)) = listener.accept().await {
                    if nodelay {
                        set_nodelay(&io);
                    }
                    let io = Prefixed::new(io, Vec::new());
                    tokio::spawn(serve_connection(io, service.clone(), connection.clone()));
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

/// The tag this server hands idle HTTP/1 connections over under, and the connections the
/// previous generation hands over under it; `None`s for a listener that is not TCP.
fn take_handed_over<L: Accept>(
    graceful: &Graceful,
    listener: &Listener<L>,
) -> (Option<String>, Option<HandedOver>)
where
    L::Addr: 'static,
{
    let Ok(addr) = listener.local_addr() else {
        return (None, None);
    };
    let Some(addr) = (&addr as &dyn Any).downcast_ref::<std::net::SocketAddr>() else {
        return (None, None);
    };
    let tag = format!("http1@{addr}");
    match graceful.handed_over(&tag) {
        Ok(handed) => (Some(tag), Some(handed)),
        Err(err) => {
            // After ready (this server started late): the previous generation has handed over
            // already. This one still hands its connections to the next.
            tracing::debug!(%err, "not taking handed-over HTTP/1 connections");
            (Some(tag), None)
        }
    }
}

/// Serves the connections the previous generation hands over, as they arrive.
async fn receive<S, B>(mut handed: HandedOver, service: S, connection: Arc<ConnectionConfig>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    while let Some(conn) = handed.next().await {
        tokio::spawn(serve_connection(
            conn.into_stream(),
            service.clone(),
            connection.clone(),
        ));
    }
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
