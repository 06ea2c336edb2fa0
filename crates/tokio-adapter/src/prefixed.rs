//! A stream that yields some bytes before its own: input read by someone else first.

use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// A stream whose reads yield `prefix` first, then the inner stream's bytes; writes go
    /// straight to the inner stream.
    ///
    /// For a connection handed over with input that the previous generation had read but not
    /// processed (its record), and for a protocol library that read past a boundary: serve it
    /// through a `Prefixed`, and nothing is lost. [`into_parts`](Self::into_parts) gives back
    /// what is left of the prefix, for handing the connection on again.
    pub struct Prefixed<S> {
        prefix: Vec<u8>,
        read: usize,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// Reads `prefix`, then `inner`.
    pub fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            prefix,
            read: 0,
            inner,
        }
    }

    /// The part of the prefix not read yet.
    pub fn unread(&self) -> &[u8] {
        &self.prefix[self.read..]
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably. Reading from it directly skips what is left of the prefix.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream and the part of the prefix not read yet.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.prefix.drain(..self.read);
        (self.inner, self.prefix)
    }
}

impl<S: fmt::Debug> fmt::Debug for Prefixed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefixed")
            .field("unread", &self.unread().len())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S: AsFd> AsFd for Prefixed<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let unread = &this.prefix[*this.read..];
        if unread.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        *this.read += n;
        if *this.read == this.prefix.len() {
            // Done with it: free it.
            *this.prefix = Vec::new();
            *this.read = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_prefix_comes_first_and_what_is_left_of_it_comes_back() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        let mut prefixed = Prefixed::new(a, b"hello".to_vec());
        let mut first = [0u8; 3];
        prefixed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hel");
        let (a, left) = prefixed.into_parts();
        assert_eq!(left, b"lo");
        let mut prefixed = Prefixed::new(a, left);
        let mut rest = [0u8; 8];
        prefixed.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"lo world");
        assert!(prefixed.unread().is_empty());
        prefixed.write_all(b"back").await.unwrap();
        let mut echoed = [0u8; 4];
        b.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"back");
    }
}
