//! A line echo server over TLS 1.3 whose clients resume their TLS sessions on each new
//! generation: the session-ticket key is state handed over at every upgrade.
//!
//! ```text
//! tls-echo [--addr 127.0.0.1:7443 | --fd-name NAME] [--pid-file PATH] [--control-socket PATH]
//!          [--upgrade-timeout 60s] [--drain-timeout 30s] [--probation 5s] [--handoff on|off]
//!          [--ready-delay 0s] [--cert-out PATH] [--ticket-key inherit|fresh]
//! tls-echo upgrade --control-socket PATH [--timeout 90s]
//! ```
//!
//! Each line is answered with the line and the pid that answered, as by `echo-server`: `hello`
//! gets `hello 4242`.
//!
//! At first start it makes a self-signed certificate for `localhost` and 127.0.0.1, writes it
//! as PEM to `--cert-out PATH` for clients to trust, and a random session-ticket key. Each new
//! generation inherits both (`state.rs` says why the certificate travels too), so the clients'
//! tickets, sealed under that key (`ticketer.rs`), open there: a client that comes back after
//! an upgrade resumes its session (an abbreviated handshake, no certificate) on the new
//! process. `--ticket-key fresh` makes each generation start with a key of its own instead,
//! which shows what carrying it buys: every client's first handshake with the new generation
//! is a full one. `--handoff off` carries nothing: each generation is a first start, with a
//! certificate of its own.
//!
//! The live TLS connections themselves are not handed over: rustls' connection state (keys,
//! sequence numbers) cannot be exported to another process. Once the new generation is ready,
//! this one finishes the line each connection is on, ends the TLS session (close_notify) and
//! closes; the client reconnects to the new process and resumes.
//!
//! Like the other examples, each generation prints `ready pid=… generation=… addr=…`,
//! `stopped pid=… successor=…` and `exited pid=… …` on stdout.

#[path = "../common/args.rs"]
mod args;
#[path = "../common/server.rs"]
mod server;
mod state;
mod ticketer;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use graceful::{Graceful, SavedState, TrackedStream};
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::state::Carried;
use crate::ticketer::{TicketKey, Ticketer};

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(2);

/// A session's connection.
type Conn = BufReader<TlsStream<TrackedStream<TcpStream>>>;

#[tokio::main]
async fn main() -> ExitCode {
    server::main(
        "tls-echo",
        "127.0.0.1:7443",
        &[("cert-out", "PATH"), ("ticket-key", "inherit|fresh")],
        serve,
    )
    .await
}

async fn serve(config: server::Config) -> Result<(), graceful::Error> {
    let fresh_key = match config.option("ticket-key") {
        None | Some("inherit") => false,
        Some("fresh") => true,
        Some(other) => {
            return Err(graceful::Error::InvalidConfig(format!(
                "--ticket-key is inherit or fresh, not {other:?}"
            )));
        }
    };
    let graceful = config.install()?;
    // Before ready: the previous generation waits for this request, and serves on meanwhile.
    let inherited = if config.handoff {
        graceful
            .inherited_state(state::VERSION..=state::VERSION)
            .await?
    } else {
        None
    };
    let mut carried = match inherited {
        Some(saved) => {
            Carried::decode(&saved.bytes).map_err(|problem| graceful::Error::HandOff {
                pid: std::process::id(),
                problem,
            })?
        }
        None => {
            let (carried, pem) = Carried::generate()
                .map_err(|e| graceful::Error::io("making the TLS identity", e))?;
            if let Some(path) = config.option("cert-out") {
                std::fs::write(path, pem)
                    .map_err(|e| graceful::Error::io("writing the certificate (--cert-out)", e))?;
            }
            carried
        }
    };
    if fresh_key {
        carried.ticket_key = TicketKey::generate()
            .map_err(|e| graceful::Error::io("making a session-ticket key", e))?;
    }
    let acceptor = TlsAcceptor::from(tls_config(&carried)?);
    if config.handoff {
        let saved = carried.encode();
        graceful.save_state(
            move || Ok(SavedState::new(state::VERSION, saved.clone())),
            // The key and certificate stay this generation's too; nothing to undo.
            || {},
        );
    }
    let mut listener = config.listen(&graceful).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;
    tokio::time::sleep(config.ready_delay).await;
    graceful.ready()?;
    server::print_ready(&graceful, addr);
    let stopping = graceful.clone();
    let stopped = tokio::spawn(async move {
        stopping.upgrade_requested().await;
        server::print_stopped(&stopping);
    });

    while let Some(conn) = listener.next().await {
        tokio::spawn(session(acceptor.clone(), conn, graceful.clone()));
    }
    let _ = stopped.await;
    let report = graceful.drain(config.drain_timeout).await;
    server::print_exited(&report, graceful.handed_off());
    Ok(())
}

/// TLS 1.3 only, on ring, with the carried certificate and tickets sealed under the carried
/// key.
fn tls_config(carried: &Carried) -> Result<Arc<ServerConfig>, graceful::Error> {
    let tls_error = |e: rustls::Error| {
        graceful::Error::io("configuring TLS", std::io::Error::other(e.to_string()))
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![carried.cert.clone()], carried.private_key())
            .map_err(tls_error)?;
    config.ticketer = Arc::new(Ticketer::new(&carried.ticket_key));
    Ok(Arc::new(config))
}

/// Completes the handshake, then answers lines until the client leaves or, once the new
/// generation is ready, until the next line boundary, where it ends the TLS session.
async fn session(acceptor: TlsAcceptor, conn: TrackedStream<TcpStream>, graceful: Graceful) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    tracing::debug!(kind = ?tls.get_ref().1.handshake_kind(), "TLS session");
    let mut conn = BufReader::new(tls);
    let pid = std::process::id();
    let mut line = String::new();
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    loop {
        // At a boundary: input that has arrived is served, as its client expects an answer.
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = upgrade.as_mut() => break,
        }
        // A line has begun: it is finished even if an upgrade is requested meanwhile.
        line.clear();
        match conn.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => {}
            _ => return, // the client left, mid-line or not
        }
        let reply = format!("{} {pid}\n", line.trim_end());
        if conn.write_all(reply.as_bytes()).await.is_err() || conn.flush().await.is_err() {
            return;
        }
    }
    close_at_boundary(conn).await;
}

/// Ends the TLS session (close_notify, then the write side of the socket), so that the client
/// reads a clean end after its last answer, then discards whatever it sent meanwhile until it
/// closes too: closing a socket with unread data would reset the connection instead.
async fn close_at_boundary(mut conn: Conn) {
    if conn.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
