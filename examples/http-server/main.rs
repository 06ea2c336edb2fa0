//! An axum server that survives binary upgrades with no failed request.
//!
//! ```text
//! http-server [--addr 127.0.0.1:8080 | --fd-name NAME] [--pid-file PATH] [--control-socket PATH]
//!             [--takeover PATH] [--upgrade-timeout 60s] [--drain-timeout 30s] [--probation 5s]
//!             [--ready-delay 0s]
//! http-server upgrade --control-socket PATH [--timeout 90s]
//! ```
//!
//! - `GET /` answers `hello from <pid>`.
//! - `GET /slow?ms=N` answers `slow N from <pid>` after N milliseconds.
//! - `GET /ws` is a WebSocket echo: each text message comes back followed by the pid. When this
//!   process is replaced, it finishes the message it is on and closes with 1001 (going away).
//!
//! `--ready-delay 2s` waits that long, sockets adopted, before reporting ready: a slow start, for
//! seeing (and testing) that the previous generation serves meanwhile.
//!
//! `kill -HUP` upgrades it; SIGTERM stops it. Like `echo-server`, each generation prints
//! `ready pid=… generation=… addr=…` when it serves, `stopped pid=… successor=…` when it stops
//! accepting and `exited pid=… …` when it exits.
//!
//! With `--control-socket`, `http-server upgrade --control-socket PATH` upgrades it too, and
//! reports the outcome: `upgraded pid=…` and exit status 0 once the new generation serves, or
//! the reason and status 1.
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
//! `FileDescriptorName=`); see `examples/systemd/`.

#[path = "../common/args.rs"]
mod args;
#[path = "../common/server.rs"]
mod server;

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use graceful::Graceful;

/// How long a WebSocket waits for its client to answer the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    server::main("http-server", "127.0.0.1:8080", serve).await
}

async fn serve(config: server::Config) -> Result<(), graceful::Error> {
    let graceful = config.install()?;
    let listener = config.listen(&graceful).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;

    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/ws", get(websocket))
        .with_state(graceful.clone());
    let running = tokio::spawn(
        graceful::axum::serve(listener, app)
            .drain_timeout(config.drain_timeout)
            .without_ready()
            .into_future(),
    );
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

async fn websocket(upgrade: WebSocketUpgrade, State(graceful): State<Graceful>) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, graceful))
}

/// Echoes messages until the client leaves or, once this process is replaced, until the next
/// message boundary; then closes with 1001 (going away) so the client reconnects.
async fn echo(mut socket: WebSocket, graceful: Graceful) {
    let pid = std::process::id();
    let replaced = graceful.upgrade_requested();
    tokio::pin!(replaced);
    loop {
        tokio::select! {
            biased;
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let reply = Message::Text(format!("{} {pid}", text.as_str()).into());
                    if socket.send(reply).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(data))) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            () = &mut replaced => break,
        }
    }
    let close = CloseFrame {
        code: axum::extract::ws::close_code::AWAY,
        reason: "server upgrading; reconnect".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_ok() {
        // Wait for the client's close reply, briefly, so the connection ends cleanly.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
