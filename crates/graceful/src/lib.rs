//! Replace a running Tokio server's binary without dropping a connection.
//!
//! A deploy puts the new binary on disk and sends the server SIGHUP. The server starts the new
//! binary with its listening sockets inherited (the same kernel sockets, so no connection is
//! refused), waits until the new process is ready, then stops accepting, lets its connections
//! finish, and exits. If the new process fails, the old one keeps serving.
//!
//! Adopting it takes three lines:
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), graceful::Error> {
//!     let mut listener = graceful::listen("127.0.0.1:8080").await?; // was TcpListener::bind
//!     graceful::ready()?;
//!     while let Some(conn) = listener.next().await {
//!         tokio::spawn(async move {
//!             // Serve `conn`. At each boundary (after a complete response or message), stop
//!             // if `graceful::upgrade_requested()` has completed.
//!             # drop(conn);
//!         });
//!     }
//!     graceful::drain(Duration::from_secs(30)).await;
//!     Ok(())
//! }
//! ```
//!
//! This crate re-exports [`graceful_tokio`] (the listener, tracked connections, triggers and
//! drain) and the error type of [`graceful_core`] (the runtime-agnostic mechanism). With the
//! feature `hyper`, `serve` runs a hyper service across upgrades; with `axum`, `axum::serve`
//! runs a Router. With `testing` (Linux, for dev-dependencies), `graceful::testing` is a
//! `cargo test` harness that starts your server as a real process and upgrades it under load.

#![warn(missing_docs)]
#![cfg(unix)]

pub use graceful_tokio::*;

#[cfg(feature = "hyper")]
pub use graceful_hyper::{Serve, serve};

/// axum on graceful listeners (feature `axum`): [`axum::serve`] adds the keep-alive behaviour
/// and the drain of [`serve`]; the graceful listener also implements axum's own `Listener`.
#[cfg(feature = "axum")]
pub mod axum {
    pub use graceful_hyper::axum::serve;
}

/// A `cargo test` harness for your server's upgrades (feature `testing`, Linux): see
/// [`graceful_testing`].
#[cfg(all(feature = "testing", target_os = "linux"))]
pub use graceful_testing as testing;
