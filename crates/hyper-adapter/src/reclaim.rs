//! Taking an idle HTTP/1 connection back from hyper without closing it.
//!
//! hyper 1's HTTP/1 server connection with upgrades (`UpgradeableConnection`) gives its io
//! back with `into_parts()` (the io and the bytes it had read but not processed), but the only
//! way to end it cleanly between requests is `graceful_shutdown()`, after which it flushes and
//! then shuts the io down (`poll_shutdown`: a FIN to the client). `without_shutdown()`, which
//! skips that, exists only on the connection *without* upgrades, where a WebSocket upgrade
//! fails ("manual upgrade").
//!
//! So the io itself declines the shutdown: once [`Reclaim::arm`] has been called (only on a
//! connection that is between requests), a shutdown that comes before any further read is a
//! flush and nothing else, and the io is marked kept. A read after arming means hyper had
//! something left to do on the connection (a request body it had not read), and then the
//! shutdown happens as usual.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const OFF: u8 = 0;
const ARMED: u8 = 1;
const READ_AFTER_ARMING: u8 = 2;
const KEPT: u8 = 3;

pin_project! {
    /// An io that can decline hyper's shutdown; see the module documentation. Reads and writes
    /// pass straight through.
    #[derive(Debug)]
    pub(crate) struct Reclaim<S> {
        #[pin]
        inner: S,
        state: Arc<AtomicU8>,
    }
}

/// Arms a [`Reclaim`] and tells whether it kept its io.
#[derive(Debug, Clone)]
pub(crate) struct ReclaimControl {
    state: Arc<AtomicU8>,
}

impl<S> Reclaim<S> {
    pub(crate) fn new(inner: S) -> (Reclaim<S>, ReclaimControl) {
        let state = Arc::new(AtomicU8::new(OFF));
        let control = ReclaimControl {
            state: state.clone(),
        };
        (Reclaim { inner, state }, control)
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl ReclaimControl {
    /// From now on, a shutdown before any read keeps the io open.
    pub(crate) fn arm(&self) {
        let _ = self
            .state
            .compare_exchange(OFF, ARMED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether a shutdown was declined: the io is open, and whole.
    pub(crate) fn kept(&self) -> bool {
        self.state.load(Ordering::SeqCst) == KEPT
    }
}

impl<S: AsyncRead> AsyncRead for Reclaim<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        // A plain load on the common path; armed only once, at the upgrade.
        if this.state.load(Ordering::Relaxed) == ARMED {
            let _ = this.state.compare_exchange(
                ARMED,
                READ_AFTER_ARMING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Reclaim<S> {
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
        let this = self.project();
        match this.state.load(Ordering::SeqCst) {
            ARMED | KEPT => {
                std::task::ready!(this.inner.poll_flush(cx))?;
                this.state.store(KEPT, Ordering::SeqCst);
                Poll::Ready(Ok(()))
            }
            _ => this.inner.poll_shutdown(cx),
        }
    }
}
