//! Connections that count while they live.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::task_tracker::TaskTrackerToken;

pin_project! {
    /// A connection that the old process waits for before it exits.
    ///
    /// It counts from the moment it is accepted until it is dropped, whatever it becomes in
    /// between: a hyper connection, an upgraded WebSocket, a framed codec. Reads and writes pass
    /// straight through to the inner stream.
    pub struct TrackedStream<S> {
        #[pin]
        inner: S,
        guard: ConnectionGuard,
    }
}

/// Keeps one connection counted while it lives; see [`TrackedStream::into_parts`].
pub struct ConnectionGuard {
    _token: TaskTrackerToken,
}

impl ConnectionGuard {
    pub(crate) fn new(token: TaskTrackerToken) -> ConnectionGuard {
        ConnectionGuard { _token: token }
    }
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard").finish_non_exhaustive()
    }
}

impl<S> TrackedStream<S> {
    pub(crate) fn new(inner: S, guard: ConnectionGuard) -> TrackedStream<S> {
        TrackedStream { inner, guard }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().inner
    }

    /// Splits into the inner stream and the guard that keeps it counted; drop the guard when
    /// the connection is done.
    pub fn into_parts(self) -> (S, ConnectionGuard) {
        (self.inner, self.guard)
    }
}

impl<S: fmt::Debug> fmt::Debug for TrackedStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: std::os::fd::AsFd> std::os::fd::AsFd for TrackedStream<S> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<S: AsyncRead> AsyncRead for TrackedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
