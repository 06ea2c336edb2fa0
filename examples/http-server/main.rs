//! An axum server that survives binary upgrades with no failed request.
//!
//! ```text
//! http-server [--addr 127.0.0.1:8080 | --fd-name NAME] [--pid-file PATH] [--control-socket PATH]
//!             [--takeover PATH] [--upgrade-timeout 60s] [--drain-timeout 30s] [--probation 5s]
//!             [--handoff on|off] [--ready-delay 0s] [--fd-store-max N]
//! http-server upgrade --control-socket PATH [--timeout 90s]
//! ```
//!
//! - `GET /` answers `hello from <pid>`.
//! - `GET /slow?ms=N` answers `slow N from <pid>` after N milliseconds.
//! - `GET /ws` is a WebSocket echo: each text message comes back followed by the pid. When this
//!   process is replaced, it finishes the message it is on and, with `--handoff on` (the
//!   default), hands the WebSocket over to the new process at that message boundary: the
//!   client keeps its TCP connection and its WebSocket (no close frame, no new handshake), and
//!   its next message is answered by the new pid. With `--handoff off`, or when the new
//!   process does not take WebSockets, it closes with 1001 (going away) there instead, and the
//!   client reconnects. The WebSocket is run by `websocket.rs`, which says why not by axum's.
//! - Idle HTTP/1.1 keep-alive connections are handed over too (`graceful::axum::serve` does
//!   it; `--handoff off` turns it off): the next request on the same connection is answered by
//!   the new pid.
//!
//! `--ready-delay 2s` waits that long, sockets adopted, before reporting ready: a slow start, for
//! seeing (and testing) that the previous generation serves meanwhile.
//!
//! `kill -HUP` upgrades it; SIGTERM stops it. Like `echo-server`, each generation prints
//! `ready pid=… generation=… addr=…` when it serves, `stopped pid=… successor=…` when it stops
//! accepting and `exited pid=… …` when it exits.
//!
//! With `--control-socket`, `http-server upgrade --control-socket PATH` upgrades it too, and
//! reports the outcome: `upgraded pid=… generation=… version=… build=…` (what the new
//! generation runs) and exit status 0 once it serves, or the reason and status 1;
//! `http-server status --control-socket PATH` prints `serving pid=… generation=… version=…
//! build=…`.
//!
//! `--takeover PATH` takes over from the server whose control socket is at PATH, a server this
//! process was not started by: start a second `http-server --takeover PATH` (in another
//! terminal, another unit, another container sharing the socket's directory) and it receives
//! that server's listening sockets, serves on them, and the first one stops accepting, drains
//! and exits, as after an upgrade (with its probation: if the new one dies within it, the old
//! one serves again). Nothing serving at PATH is a first start. The process then answers on
//! PATH itself (unless `--control-socket` names another path), so the next one can take over
//! from it. Under systemd, a socket passed by socket activation is adopted: the
//! one bound to `--addr`, or the one named `--fd-name` (the socket unit's
//! `FileDescriptorName=`); see `examples/systemd/`. With `--fd-store-max N` (the unit's
//! `FileDescriptorStoreMax=`, for systemd before 254, which does not set `$FDSTORE`), the
//! listener is kept in systemd's file descriptor store, so that a restart or a crash keeps its
//! queue (`examples/systemd/http-server-fdstore.service`).

#[path = "../common/args.rs"]
mod args;
#[path = "../common/server.rs"]
mod server;
mod websocket;

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use graceful::{Graceful, Prefixed, TrackedStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use websocket::{Message, Next, WebSocket};

/// How long a WebSocket waits for its client to answer the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The tag WebSockets are handed over under; the record is the input read but not processed,
/// at a message boundary.
const WEBSOCKET: &str = "ws-echo";

#[tokio::main]
async fn main() -> ExitCode {
    server::main("http-server", "127.0.0.1:8080", &[], serve).await
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    graceful: Graceful,
    handoff: bool,
}

async fn serve(config: server::Config) -> Result<(), graceful::Error> {
    let graceful = config.install()?;
    // Before ready: the previous generation hands over only what is asked for by then.
    let handed = if config.handoff {
        Some(graceful.handed_over(WEBSOCKET)?)
    } else {
        None
    };
    let listener = config.listen(&graceful).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;

    let state = App {
        graceful: graceful.clone(),
        handoff: config.handoff,
    };
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/ws", get(websocket))
        .with_state(state);
    // Created here, so before ready: it asks for the keep-alive connections handed over.
    let serving = graceful::axum::serve(listener, app)
        .drain_timeout(config.drain_timeout)
        .handoff(config.handoff)
        .without_ready()
        .into_future();
    let running = tokio::spawn(serving);
    if let Some(mut handed) = handed {
        let graceful = graceful.clone();
        tokio::spawn(async move {
            while let Some(conn) = handed.next().await {
                let (stream, record) = conn.into_parts();
                let socket = WebSocket::new(Prefixed::new(stream, Vec::new()), record);
                tokio::spawn(echo(socket, graceful.clone(), true));
            }
        });
    }
    // A slow start (`--ready-delay`): the previous generation serves meanwhile.
    tokio::time::sleep(config.ready_delay).await;
    // Serving has started; the previous generation may stop now.
    graceful.ready()?;
    server::print_ready(&graceful, addr);
    // The accept task stops on the same signal.
    let stopping = graceful.clone();
    let stopped = tokio::spawn(async move {
        stopping.upgrade_requested().await;
        server::print_stopped(&stopping);
    });
    let report = running
        .await
        .map_err(|e| graceful::Error::io("the server task failed", std::io::Error::other(e)))??;
    // Let the line out before this process exits, however short the drain was.
    if graceful.is_upgrade_requested() {
        let _ = stopped.await;
    }
    server::print_exited(&report, graceful.handed_off());
    Ok(())
}

async fn hello() -> String {
    format!("hello from {}", std::process::id())
}

#[derive(serde::Deserialize)]
struct Slow {
    ms: u64,
}

async fn slow(Query(Slow { ms }): Query<Slow>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slow {ms} from {}", std::process::id())
}

/// The WebSocket handshake, taken at hyper's level so that the connection can be had back
/// whole (`graceful::upgraded_stream`): axum's `WebSocket` cannot give its stream back.
async fn websocket(State(app): State<App>, mut request: Request) -> Response {
    let headers = request.headers();
    let has = |name, value: &str| header_has(headers, name, value);
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if has(header::UPGRADE, "websocket")
                && has(header::CONNECTION, "upgrade")
                && has(header::SEC_WEBSOCKET_VERSION, "13") =>
        {
            websocket::accept_key(key.as_bytes())
        }
        _ => return (StatusCode::BAD_REQUEST, "not a WebSocket handshake").into_response(),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => return tracing::debug!(%err, "the WebSocket upgrade failed"),
        };
        match graceful::upgraded_stream::<TcpStream>(upgraded) {
            Ok(stream) => {
                let (stream, read) = stream.into_parts();
                let socket = WebSocket::new(Prefixed::new(stream, Vec::new()), read);
                echo(socket, app.graceful, app.handoff).await;
            }
            // Not over a TCP connection that `serve` accepted: served, never handed over.
            Err(upgraded) => {
                let socket = WebSocket::new(hyper_util::rt::TokioIo::new(upgraded), Vec::new());
                echo_here(socket, app.graceful).await;
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Whether header `name` lists `value` (case-insensitively, among comma-separated tokens).
fn header_has(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(value)))
    })
}

/// A WebSocket on a connection that can be handed over.
type Conn = Prefixed<TrackedStream<TcpStream>>;

/// Echoes messages until the client leaves or, once this process is replaced, until the next
/// message boundary; there the WebSocket is handed over to the new generation if it can be,
/// or closed with 1001 (going away) so that the client reconnects: without hand-off, when the
/// new generation does not take `ws-echo`, or when the record would be over 64 KiB (a large
/// frame half received).
async fn echo(socket: WebSocket<Conn>, graceful: Graceful, handoff: bool) {
    let Some(socket) = serve_until_replaced(socket, &graceful).await else {
        return;
    };
    if !handoff {
        return close_going_away(socket).await;
    }
    // At a message boundary: whatever is buffered is input not processed yet, and travels as
    // the record, followed by what is left of the stream's own prefix (read after it).
    let (stream, mut record) = socket.into_parts();
    let (stream, unread) = stream.into_parts();
    record.extend_from_slice(&unread);
    match graceful.hand_off(stream, WEBSOCKET, &record).await {
        Ok(()) => {}
        Err(kept) => {
            tracing::debug!(reason = kept.reason, "closing the WebSocket instead");
            close_going_away(WebSocket::new(
                Prefixed::new(kept.stream, Vec::new()),
                record,
            ))
            .await;
        }
    }
}

/// [`echo`] for a WebSocket that cannot be handed over.
async fn echo_here<S: AsyncRead + AsyncWrite + Unpin>(socket: WebSocket<S>, graceful: Graceful) {
    if let Some(socket) = serve_until_replaced(socket, &graceful).await {
        close_going_away(socket).await;
    }
}

/// Echoes messages until the client leaves (`None`) or this process is replaced and the
/// WebSocket is at a message boundary (the WebSocket back, every buffered message answered).
async fn serve_until_replaced<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: WebSocket<S>,
    graceful: &Graceful,
) -> Option<WebSocket<S>> {
    let pid = std::process::id();
    let replaced = graceful.upgrade_requested();
    tokio::pin!(replaced);
    loop {
        // Messages already received are answered first: their client expects it.
        match socket.next_buffered().await {
            Ok(Next::Message(Message::Text(text))) => {
                let mut reply = text;
                reply.extend_from_slice(format!(" {pid}").as_bytes());
                if socket.send(&Message::Text(reply)).await.is_err() {
                    return None;
                }
                continue;
            }
            Ok(Next::Message(binary)) => {
                if socket.send(&binary).await.is_err() {
                    return None;
                }
                continue;
            }
            Ok(Next::NeedMore) => {}
            Ok(Next::Closed) | Err(_) => return None,
        }
        let at_boundary = socket.at_boundary();
        tokio::select! {
            biased;
            more = socket.read_more() => match more {
                Ok(true) => {}
                Ok(false) | Err(_) => return None,
            },
            // A message begun is finished first.
            () = &mut replaced, if at_boundary => return Some(socket),
        }
    }
}

/// Closes with 1001 (going away) and waits, briefly, for the client's close reply, so that
/// the connection ends cleanly.
async fn close_going_away<S: AsyncRead + AsyncWrite + Unpin>(mut socket: WebSocket<S>) {
    if socket
        .close(websocket::GOING_AWAY, "server upgrading; reconnect")
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.closed()).await;
    }
}
