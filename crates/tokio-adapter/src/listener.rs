//! A listener that stops accepting the moment this process is replaced or asked to stop.
//!
//! Invariants:
//! - Once the stop token is cancelled, nothing more is accepted: connections still in the
//!   kernel backlog stay there for the new generation, which holds the same socket. Nothing is
//!   accepted and then dropped.
//! - The stop is checked before every accept, and its waker is registered whenever accept is
//!   pending, so the stream ends as soon as the token is cancelled, not at the next connection.
//! - Accept errors never end the stream: per-connection errors are skipped; running out of
//!   descriptors or memory is logged and retried after a pause, as axum and hyper-util do.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::TaskTracker;

use crate::tracked::{ConnectionGuard, TrackedStream};

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
    // Boxed once per listener so that the listener is `Unpin` and `StreamExt::next` just works.
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
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
        stop: WaitForCancellationFutureOwned,
        tracker: TaskTracker,
    ) -> Listener<L> {
        Listener {
            inner,
            stop: Box::pin(stop),
            backoff: None,
            tracker,
            stopped: false,
        }
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
            if self.stopped || self.stop.as_mut().poll(cx).is_ready() {
                self.stopped = true;
                return Poll::Ready(None);
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
