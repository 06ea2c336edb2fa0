//! Keep-alive without the race: once this process is replaced, every HTTP/1 response carries
//! `Connection: close`, so hyper closes the connection after writing it and the client's next
//! request goes to a new connection, accepted by the new process.
//!
//! Closing a keep-alive connection the moment it is idle instead (what hyper-util's graceful
//! shutdown does) loses the request that a busy client is sending at that instant.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use graceful_tokio::Graceful;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;

/// Wraps a hyper service for one connection; see the module documentation. It also notes
/// whether the connection speaks HTTP/2, which decides how the connection is wound down.
#[derive(Debug)]
pub(crate) struct CloseWhenReplaced<S> {
    inner: S,
    graceful: Graceful,
    http2: Arc<AtomicBool>,
}

impl<S> CloseWhenReplaced<S> {
    pub(crate) fn new(inner: S, graceful: Graceful) -> Self {
        CloseWhenReplaced {
            inner,
            graceful,
            http2: Arc::default(),
        }
    }

    /// Whether a request of this connection came over HTTP/2; readable after the service has
    /// been handed to hyper.
    pub(crate) fn http2_seen(&self) -> Arc<AtomicBool> {
        self.http2.clone()
    }
}

impl<S, R, B> hyper::service::Service<Request<R>> for CloseWhenReplaced<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = CloseFuture<S::Future>;

    fn call(&self, request: Request<R>) -> Self::Future {
        // HTTP/2 has no Connection header; its connections get GOAWAY instead.
        let http1 = request.version() < Version::HTTP_2;
        if !http1 {
            self.http2.store(true, Ordering::Relaxed);
        }
        CloseFuture {
            inner: self.inner.call(request),
            graceful: http1.then(|| self.graceful.clone()),
        }
    }
}

pin_project! {
    /// The wrapped service's response, with `Connection: close` added when due.
    pub(crate) struct CloseFuture<F> {
        #[pin]
        inner: F,
        graceful: Option<Graceful>,
    }
}

impl<F, B, E> Future for CloseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        // Decided when the response is ready, so a request in flight at the upgrade closes too.
        // A protocol switch (WebSocket) keeps its own Connection header.
        let replaced = this
            .graceful
            .as_ref()
            .is_some_and(Graceful::is_upgrade_requested);
        if replaced && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
