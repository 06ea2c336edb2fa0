//! The no-library baseline: the `GET /` of `examples/http-server`, served by plain
//! `axum::serve` on a plain `tokio::net::TcpListener`, without graceful.
//!
//! ```text
//! plain-http-server [--addr 127.0.0.1:8080]
//! ```
//!
//! `GET /` answers `hello from <pid>`, like the example. Once it serves, it prints the line the
//! example servers print, so that one script drives both:
//!
//! ```text
//! ready pid=4242 generation=1 addr=127.0.0.1:8080
//! ```
//!
//! SIGTERM or SIGINT end it at once; it has no upgrades and no drain. The runtime is the
//! examples' (`#[tokio::main]`, multi-threaded), and like them it leaves Nagle's algorithm as
//! the OS sets it, so a throughput comparison differs only by the library.

use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: plain-http-server [--addr 127.0.0.1:8080]";

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match addr_argument(std::env::args().skip(1)) {
        Ok(addr) => addr,
        Err(problem) => {
            eprintln!("plain-http-server: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(&addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("plain-http-server: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// The value of `--addr`, the only argument.
fn addr_argument(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    let mut addr = "127.0.0.1:8080".to_owned();
    while let Some(arg) = args.next() {
        if arg != "--addr" {
            return Err(format!("unknown argument {arg:?}"));
        }
        addr = args.next().ok_or("--addr needs a value")?;
    }
    Ok(addr)
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

    let app = Router::new().route("/", get(hello));
    let mut serving = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("ready pid={} generation=1 addr={local}", std::process::id());
    tokio::select! {
        ended = &mut serving => match ended {
            Ok(Ok(())) => Err("the server ended by itself".to_owned()),
            Ok(Err(err)) => Err(format!("the server failed: {err}")),
            Err(err) => Err(format!("the server task failed: {err}")),
        },
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    }
}

async fn hello() -> String {
    format!("hello from {}", std::process::id())
}
