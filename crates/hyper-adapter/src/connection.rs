//! Serving one connection: HTTP/1.1 or HTTP/2, detected, and what each does once this process
//! is replaced.
//!
//! Invariants:
//! - The protocol is detected here (hyper-util's auto builder does the same, but wraps the io
//!   in a private type, which an upgrade could then not give back): the bytes read to detect
//!   it are replayed to hyper through a [`Prefixed`], so nothing is lost.
//! - Under hyper the io is `TokioIo<Reclaim<Prefixed<TrackedStream<I>>>>`; [`upgraded_stream`]
//!   takes an upgrade (WebSocket) apart into the stream and the bytes read past the request.
//! - Once replaced, with hand-off on, an HTTP/1 connection that is between requests (see
//!   `close.rs`) is taken back from hyper (see `reclaim.rs`) and handed to the successor with
//!   the bytes hyper had read but not processed as its record; so is a connection whose
//!   protocol is not known yet. The successor serves it as an accepted one, prefix first. A
//!   connection busy with a request, one the successor does not take, and every HTTP/2
//!   connection are wound down as without hand-off.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use graceful_tokio::{Graceful, Prefixed, TrackedStream};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::close::CloseWhenReplaced;
use crate::reclaim::Reclaim;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection of one `serve` shares.
pub(crate) struct ConnectionConfig {
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
    pub(crate) idle_grace: Duration,
    pub(crate) graceful: Graceful,
    /// The tag idle HTTP/1 connections are handed over under; `None` without hand-off.
    pub(crate) handoff_tag: Option<String>,
}

/// The io hyper serves, for [`upgraded_stream`].
type HyperIo<I> = TokioIo<Reclaim<Prefixed<TrackedStream<I>>>>;

/// The connection under an upgrade (a WebSocket, say) that [`serve`](crate::serve) served:
/// the tracked stream, reading first the bytes hyper had read past the upgrade request. For a
/// WebSocket that the application runs itself, and may hand over with
/// `Graceful::hand_off`.
///
/// `I` is the listener's connection type (`tokio::net::TcpStream` for a TCP listener).
///
/// # Errors
///
/// The upgrade, untouched, if it did not come from [`serve`](crate::serve) over `I` (an
/// HTTP/2 extended CONNECT, another server, another `I`): serve it as
/// `hyper_util::rt::TokioIo<Upgraded>` then.
pub fn upgraded_stream<I>(upgraded: Upgraded) -> Result<Prefixed<TrackedStream<I>>, Upgraded>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let parts = upgraded.downcast::<HyperIo<I>>()?;
    let (stream, unread) = parts.io.into_inner().into_inner().into_parts();
    // hyper read its buffer from the prefix first: its bytes come before what is left of it.
    let mut prefix = parts.read_buf.to_vec();
    prefix.extend_from_slice(&unread);
    Ok(Prefixed::new(stream, prefix))
}

/// `value` as a `B`, if `A` is `B`; otherwise `value` back.
pub(crate) fn cast<A: 'static, B: 'static>(value: A) -> Result<B, A> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<B>>() {
        Some(cast) => Ok(cast.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    H1,
    H2,
}

/// Reads until the bytes read (kept in `read`) are the HTTP/2 preface or cannot become it.
///
/// Cancel safe: whatever was read is in `read`.
async fn detect<R: AsyncRead + Unpin>(io: &mut R, read: &mut Vec<u8>) -> std::io::Result<Version> {
    let mut chunk = [0u8; 24];
    while read.len() < H2_PREFACE.len() {
        let want = H2_PREFACE.len() - read.len();
        let n = io.read(&mut chunk[..want]).await?;
        read.extend_from_slice(&chunk[..n]);
        if n == 0 || !H2_PREFACE.starts_with(read) {
            return Ok(Version::H1);
        }
    }
    Ok(Version::H2)
}

/// Serves one connection until it ends, is handed over, or has wound down.
pub(crate) async fn serve_connection<I, S, B>(
    mut io: Prefixed<TrackedStream<I>>,
    service: S,
    config: Arc<ConnectionConfig>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Only TCP connections travel.
    let mut may_hand_off = config.handoff_tag.is_some() && is_tcp::<I>();
    let mut read = Vec::new();
    let version = loop {
        let detected = if may_hand_off {
            tokio::select! {
                detected = detect(&mut io, &mut read) => Some(detected),
                () = config.graceful.upgrade_requested() => None,
            }
        } else {
            Some(detect(&mut io, &mut read).await)
        };
        match detected {
            Some(Ok(version)) => break version,
            Some(Err(err)) => return tracing::debug!(%err, "reading the connection's preface"),
            None => {
                // Replaced before the client said anything that tells its protocol: the
                // successor detects it.
                may_hand_off = false;
                io = match hand_off(io, read, &config).await {
                    Ok(()) => return,
                    Err(kept) => kept,
                };
                read = Vec::new();
            }
        }
    };
    let (stream, unread) = io.into_parts();
    read.extend_from_slice(&unread);
    let io = Prefixed::new(stream, read);
    match version {
        Version::H2 => serve_http2(io, service, &config).await,
        Version::H1 => serve_http1(io, service, &config, may_hand_off).await,
    }
}

async fn serve_http2<I, S, B>(io: Prefixed<TrackedStream<I>>, service: S, config: &ConnectionConfig)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let service = CloseWhenReplaced::new(service, config.graceful.clone());
    let connection = config.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return log_end(result.map_err(Into::into)),
        () = config.graceful.upgrade_requested() => {}
    }
    // GOAWAY: the client sends its next request on a new connection; streams in flight end.
    // An HTTP/2 connection's state (streams, flow control, HPACK tables) stays here.
    connection.as_mut().graceful_shutdown();
    log_end(connection.await.map_err(Into::into));
}

async fn serve_http1<I, S, B>(
    mut io: Prefixed<TrackedStream<I>>,
    service: S,
    config: &ConnectionConfig,
    mut may_hand_off: bool,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let service = CloseWhenReplaced::new(service.clone(), config.graceful.clone());
        let exchanges = service.exchanges();
        let (reclaim, control) = Reclaim::new(io);
        let mut connection = config
            .http1
            .serve_connection(TokioIo::new(reclaim), service)
            .with_upgrades();
        tokio::select! {
            result = &mut connection => return log_end(result.map_err(Into::into)),
            () = config.graceful.upgrade_requested() => {}
        }
        if !(may_hand_off && exchanges.idle()) {
            // Requests from now on are answered with Connection: close; a connection that
            // stays idle through the grace is closed.
            tokio::select! {
                result = &mut connection => return log_end(result.map_err(Into::into)),
                () = tokio::time::sleep(config.idle_grace) => {
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                }
            }
            return log_end(connection.await.map_err(Into::into));
        }
        // Between requests: hyper closes it at once, and the io keeps the socket open.
        control.arm();
        std::pin::Pin::new(&mut connection).graceful_shutdown();
        let result = (&mut connection).await;
        let parts = match (result, control.kept(), connection.into_parts()) {
            (Ok(()), true, Some(parts)) => parts,
            (result, ..) => return log_end(result.map_err(Into::into)),
        };
        let (stream, unread) = parts.io.into_inner().into_inner().into_parts();
        let mut record = parts.read_buf.to_vec();
        record.extend_from_slice(&unread);
        io = match hand_off(Prefixed::new(stream, Vec::new()), record, config).await {
            Ok(()) => return,
            // Served on as without hand-off: its next request gets Connection: close.
            Err(kept) => kept,
        };
        may_hand_off = false;
    }
}

/// Hands `io` over with `record` (the input read from it but not processed); gives it back,
/// reading `record` first, if it did not go.
async fn hand_off<I: 'static>(
    io: Prefixed<TrackedStream<I>>,
    record: Vec<u8>,
    config: &ConnectionConfig,
) -> Result<(), Prefixed<TrackedStream<I>>> {
    let (stream, unread) = io.into_parts();
    let mut record = record;
    record.extend_from_slice(&unread);
    let (Some(tag), Ok(tcp)) = (
        &config.handoff_tag,
        cast::<TrackedStream<I>, TrackedStream<TcpStream>>(stream),
    ) else {
        unreachable!("only TCP connections of a server with hand-off get here")
    };
    match config.graceful.hand_off(tcp, tag, &record).await {
        Ok(()) => Ok(()),
        Err(kept) => {
            tracing::debug!(reason = kept.reason, "serving the connection on");
            let stream = cast::<TrackedStream<TcpStream>, TrackedStream<I>>(kept.stream)
                .unwrap_or_else(|_| unreachable!("I is TcpStream"));
            Err(Prefixed::new(stream, record))
        }
    }
}

fn is_tcp<I: 'static>() -> bool {
    std::any::TypeId::of::<I>() == std::any::TypeId::of::<TcpStream>()
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}
