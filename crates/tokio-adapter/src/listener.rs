//! A listener that accepts only while this generation serves.
//!
//! Invariants:
//! - The gate (`gate.rs`) is checked before every accept: nothing is accepted before this
//!   generation is ready, nor once a successor serves. Connections in the kernel backlog stay
//!   there for whichever generation serves, which holds the same socket. Nothing is accepted
//!   and then dropped.
//! - The gate's waker is registered whenever accept is pending, so a pause, a resume (after a
//!   rollback) or the end takes effect at once, not at the next connection.
//! - Unless the application asked for explicit readiness, the first time a listener is polled
//!   before this generation is ready, it reports readiness itself: a server that never calls
//!   `ready()` (`axum::serve(graceful::listen(..))`) still upgrades.
//! - Accept errors never end the stream: per-connection errors are skipped; running out of
//!   descriptors or memory is logged and retried after a pause, as axum and hyper-util do.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Arc;

use futures::Stream;
use graceful_core::Result;
use tokio_util::task::TaskTracker;

use crate::gate::{Accepting, GateWatch};
use crate::tracked::{ConnectionGuard, TrackedStream};

/// Reports this generation ready; what a listener calls when it is first polled.
pub(crate) type ReportReady = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// How long to wait before accepting again after running out of descriptors or memory.
const RESOURCE_BACKOFF: Duration = Duration::from_secs(1);

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio::net::TcpListener {}
    impl Sealed for tokio::net::UnixListener {}
}

/// A tokio listener that [`Listener`] can wrap. Sealed: implemented for
/// [`tokio::net::TcpListener`] and [`tokio::net::UnixListener`].
pub trait Accept: sealed::Sealed + Unpin {
    /// The accepted connection.
    type Io;
    /// The peer's address.
    type Addr;

    /// Polls for the next connection.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>>;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}

/// A stream of accepted, [tracked](TrackedStream) connections that ends when this process has
/// been replaced by a new generation or asked to stop.
///
/// It accepts only while this generation serves: not before it is ready (the first poll
/// reports it ready, unless [`Builder::explicit_ready`](crate::Builder::explicit_ready) was
/// set or [`wait_for_ready`](Self::wait_for_ready) called), and not while a successor is on
/// probation, when it pauses instead of ending so that it can resume after a rollback.
///
/// Created by [`listen`](crate::listen) and [`listen_unix`](crate::listen_unix).
///
/// ```no_run
/// use futures::StreamExt;
///
/// # async fn run() -> Result<(), graceful_tokio::Error> {
/// let mut listener = graceful_tokio::listen("127.0.0.1:8080").await?;
/// graceful_tokio::ready()?;
/// while let Some(conn) = listener.next().await {
///     tokio::spawn(async move {
///         // serve `conn`; stop at a boundary once `upgrade_requested()` completes
///         # drop(conn);
///     });
/// }
/// // Replaced or stopping: the new generation accepts from here on.
/// let report = graceful_tokio::drain(std::time::Duration::from_secs(30)).await;
/// # Ok(())
/// # }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct Listener<L> {
    inner: L,
    gate: GateWatch,
    /// `None` when the application reports readiness itself.
    report_ready: Option<ReportReady>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    tracker: TaskTracker,
    stopped: bool,
}

/// A connection accepted by a [`Listener`], with its peer's address.
type Accepted<L> = (TrackedStream<<L as Accept>::Io>, <L as Accept>::Addr);

/// A graceful TCP listener.
pub type TcpListener = Listener<tokio::net::TcpListener>;

/// A graceful Unix stream listener.
pub type UnixListener = Listener<tokio::net::UnixListener>;

impl<L: Accept> Listener<L> {
    pub(crate) fn new(
        inner: L,
        gate: GateWatch,
        report_ready: Option<ReportReady>,
        tracker: TaskTracker,
    ) -> Listener<L> {
        Listener {
            inner,
            gate,
            report_ready,
            backoff: None,
            tracker,
            stopped: false,
        }
    }

    /// Makes this listener wait until the application calls [`ready`](crate::ready), instead
    /// of reporting readiness itself when it is first polled: for servers that warm up while
    /// their accept loop already runs.
    pub fn wait_for_ready(mut self) -> Self {
        self.report_ready = None;
        self
    }

    /// Accepts the next connection with its peer's address; `None` once this process has been
    /// replaced or is stopping.
    ///
    /// Cancel safe: if the future is dropped before it completes, no connection is lost.
    pub async fn accept(&mut self) -> Option<Accepted<L>> {
        std::future::poll_fn(|cx| self.poll_accept_tracked(cx)).await
    }

    /// The address this listener is bound to.
    ///
    /// # Errors
    ///
    /// As the wrapped tokio listener's `local_addr`.
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        self.inner.local_addr()
    }

    /// Whether the listener has stopped accepting for good.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The wrapped tokio listener, for its address or socket options. Accepting from it
    /// directly bypasses the stop and the tracking.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    fn poll_accept_tracked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Accepted<L>>> {
        loop {
            if self.stopped {
                return Poll::Ready(None);
            }
            match self.gate.poll_state(cx) {
                Accepting::Open => {}
                Accepting::Paused => return Poll::Pending,
                Accepting::Closed => {
                    self.stopped = true;
                    return Poll::Ready(None);
                }
                Accepting::NotReady => match &self.report_ready {
                    None => return Poll::Pending,
                    Some(report_ready) => {
                        if let Err(err) = report_ready() {
                            tracing::error!(
                                %err,
                                "this generation cannot report ready, so it accepts nothing; \
                                 the previous generation, if any, keeps serving"
                            );
                            self.stopped = true;
                            return Poll::Ready(None);
                        }
                        // Readiness opened the gate; the next turn sees it.
                        continue;
                    }
                },
            }
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.inner.poll_accept(cx)) {
                Ok((io, addr)) => {
                    let guard = ConnectionGuard::new(self.tracker.token());
                    return Poll::Ready(Some((TrackedStream::new(io, guard), addr)));
                }
                Err(err) if is_connection_error(&err) => {
                    tracing::debug!(%err, "accepted connection failed before it was served");
                }
                Err(err) => {
                    tracing::error!(%err, "accept failed; retrying in {RESOURCE_BACKOFF:?}");
                    self.backoff = Some(Box::pin(tokio::time::sleep(RESOURCE_BACKOFF)));
                }
            }
        }
    }
}

impl<L: Accept> Stream for Listener<L> {
    type Item = TrackedStream<L::Io>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_accept_tracked(cx)
            .map(|accepted| accepted.map(|(io, _)| io))
    }
}

impl<L: fmt::Debug> fmt::Debug for Listener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("inner", &self.inner)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// Errors that concern one connection only (it was reset or aborted while queued); the
/// listener itself is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(nix::errno::Errno::EPROTO as i32)
}
