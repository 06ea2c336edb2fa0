//! Keep-alive without the race: once this process is replaced, every HTTP/1 response carries
//! `Connection: close`, so hyper closes the connection after writing it and the client's next
//! request goes to a new connection, accepted by the new process.
//!
//! Closing a keep-alive connection the moment it is idle instead (what hyper-util's graceful
//! shutdown does) loses the request that a busy client is sending at that instant.
//!
//! The wrapper also tells whether the connection is between requests (no request in flight,
//! no response being written, no protocol switch), which decides whether an idle HTTP/1
//! connection can be handed over to the new process instead (see `connection.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use graceful_tokio::Graceful;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What one connection's requests have done so far, shared with the code that serves it.
#[derive(Debug, Default)]
pub(crate) struct Exchanges {
    /// Requests whose response has not been written to its end (or dropped) yet.
    in_flight: AtomicUsize,
    /// A response switched protocols: the connection belongs to the upgrade now.
    switched: AtomicBool,
}

impl Exchanges {
    /// Between requests: nothing in flight and no protocol switch. Read it only while hyper's
    /// connection is not being polled (from the task that polls it), so that it cannot start a
    /// request meanwhile.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.switched.load(Ordering::SeqCst)
    }
}

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Exchanges>);

impl InFlight {
    fn new(exchanges: Arc<Exchanges>) -> InFlight {
        exchanges.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(exchanges)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps a hyper service for one connection; see the module documentation.
#[derive(Debug)]
pub(crate) struct CloseWhenReplaced<S> {
    // Boxed so that the wrapper is `Unpin` whatever the service: hyper's HTTP/1 connection
    // can then be taken apart (`into_parts`) after it has been polled.
    inner: Box<S>,
    graceful: Graceful,
    exchanges: Arc<Exchanges>,
}

impl<S> CloseWhenReplaced<S> {
    pub(crate) fn new(inner: S, graceful: Graceful) -> Self {
        CloseWhenReplaced {
            inner: Box::new(inner),
            graceful,
            exchanges: Arc::default(),
        }
    }

    /// What this connection's requests have done; readable after the service has been handed
    /// to hyper.
    pub(crate) fn exchanges(&self) -> Arc<Exchanges> {
        self.exchanges.clone()
    }
}

impl<S, R, B> hyper::service::Service<Request<R>> for CloseWhenReplaced<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<Counted<B>>;
    type Error = S::Error;
    type Future = CloseFuture<S::Future>;

    fn call(&self, request: Request<R>) -> Self::Future {
        // HTTP/2 has no Connection header; its connections get GOAWAY instead.
        let http1 = request.version() < Version::HTTP_2;
        CloseFuture {
            in_flight: Some(InFlight::new(self.exchanges.clone())),
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
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for CloseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Counted<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(in_flight) = &in_flight {
                in_flight.0.switched.store(true, Ordering::SeqCst);
            }
        }
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
        Poll::Ready(Ok(response.map(|inner| Counted {
            inner,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until hyper has written it to its end
    /// (and dropped it).
    #[derive(Debug)]
    pub(crate) struct Counted<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
