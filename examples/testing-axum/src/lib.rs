//! A small axum server that survives upgrades, and its test (`tests/upgrade.rs`), written with
//! `graceful::testing` alone: the README's "Testing your upgrade".
//!
//! ```text
//! testing-axum [--addr 127.0.0.1:8080]
//! ```
//!
//! `GET /` answers `hello from <pid>`. `kill -HUP` upgrades it, SIGTERM stops it.
//! `testing-axum-never-ready` is the same server with a bug: it asks for explicit readiness and
//! never calls `graceful::ready()`. `testing-axum-plain` serves it with the plain-axum line of
//! the README (`axum::serve(..).with_graceful_shutdown(graceful::upgrade_requested())`).

use axum::Router;
use axum::routing::get;

/// The application, shared by the binaries.
pub fn app() -> Router {
    Router::new().route(
        "/",
        get(|| async { format!("hello from {}", std::process::id()) }),
    )
}

/// The address to listen on: `--addr`, or `127.0.0.1:8080`.
///
/// # Errors
///
/// A message naming the argument that is not understood.
pub fn addr() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_owned();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            _ => return Err(format!("unknown argument {arg:?}; usage: --addr HOST:PORT")),
        }
    }
    Ok(addr)
}
