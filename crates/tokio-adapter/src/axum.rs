//! axum's `Listener` for the graceful listener, so that
//! `axum::serve(graceful::listen(addr).await?, app)` works.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::listener::{Accept, Listener};
use crate::tracked::TrackedStream;

impl<L> axum::serve::Listener for Listener<L>
where
    L: Accept + Send + 'static,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L::Addr: Send,
{
    type Io = TrackedStream<L::Io>;
    type Addr = L::Addr;

    /// The next connection. Once this process is replaced or stopping, it never completes:
    /// axum's `with_graceful_shutdown(graceful::upgrade_requested())` ends the accept loop at
    /// that same moment.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match Listener::accept(self).await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(self)
    }
}
