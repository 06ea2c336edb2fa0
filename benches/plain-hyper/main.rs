//! The throughput ceiling: the bench's hyper service (`GET /` answers `hello from <pid>`)
//! served by hyper-util's auto builder on a plain `tokio::net::TcpListener`, with no upgrade
//! support and no drain.
//!
//! ```text
//! plain-hyper-server [--addr 127.0.0.1:8080]
//! ```
//!
//! Once it serves, it prints `ready pid=… generation=1 addr=…`, like the example servers.
//! SIGTERM or SIGINT end it at once. The accept loop runs on its own task and every connection
//! on its own, as in `graceful::serve` and `peer-ecdysis`, so the three differ only in how they
//! survive an upgrade.

#[path = "../../examples/common/args.rs"]
mod args;
#[path = "../common/peer.rs"]
mod peer;

use std::process::ExitCode;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::task::AbortOnDropHandle;

const USAGE: &str = "usage: plain-hyper-server [--addr 127.0.0.1:8080]";

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match args::Flags::parse(&["addr"]) {
        Ok(flags) => flags
            .text("addr")
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
        Err(problem) => {
            eprintln!("plain-hyper-server: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(&addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("plain-hyper-server: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: &str) -> Result<(), String> {
    // Both handlers are installed before the ready line, so a script that signals at once is
    // never met by the default action.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listener's address: {e}"))?;

    let accepting = AbortOnDropHandle::new(tokio::spawn(async move {
        let http = auto::Builder::new(TokioExecutor::new());
        loop {
            // Accept errors (EMFILE, a connection reset while queued) end no server.
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // As graceful::serve does, so that the ceiling is served like for like.
            let _ = stream.set_nodelay(true);
            let connection = http
                .serve_connection(TokioIo::new(stream), service_fn(peer::hello))
                .into_owned();
            tokio::spawn(connection);
        }
    }));
    peer::print_ready(1, local);
    tokio::select! {
        ended = accepting => Err(format!("the accept task ended: {ended:?}")),
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    }
}
