//! Replace a running Tokio server's binary without dropping a connection.
//!
//! A deploy puts the new binary on disk and sends the server SIGHUP. The server starts the new
//! binary with its listening sockets inherited (the same kernel sockets, so no connection is
//! refused), waits until the new process is ready, then stops accepting, lets its connections
//! finish, and exits. If the new process fails, the old one keeps serving.
//!
//! The package is `graceful-upgrade`; its library is `graceful`:
//!
//! ```toml
//! [dependencies]
//! graceful = { package = "graceful-upgrade", version = "0.1" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! futures = "0.3"
//! tracing-subscriber = "0.3"
//! ```
//!
//! Adopting it takes three lines:
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), graceful::Error> {
//!     tracing_subscriber::fmt().with_writer(std::io::stderr).init(); // graceful's reports
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
//! Long-lived connections need not close: at a boundary, `graceful.hand_off(stream, tag,
//! record)` moves one to the new process, socket and all, which asked for that tag with
//! `graceful.handed_over(tag)` before it was ready; the client keeps its TCP connection. The
//! application's state moves with `save_state` and `inherited_state`. A UDP socket
//! (`graceful::udp`) stops reading the moment the new process serves, and a process that this
//! one did not start can take over through the control socket (`Builder::takeover`).
//!
//! This crate re-exports [`graceful_tokio`] (the listener, tracked connections, triggers,
//! hand-off and drain) and the error type of [`graceful_core`] (the runtime-agnostic mechanism). With the
//! feature `hyper`, `serve` runs a hyper service across upgrades; with `axum`, `axum::serve`
//! runs a Router. With `testing` (Linux, for dev-dependencies), `graceful::testing` is a
//! `cargo test` harness that starts your server as a real process and upgrades it under load.
//!
//! # Where reports go
//!
//! graceful reports through [`tracing`](https://docs.rs/tracing): each phase at `info`, what needs
//! a look at `warn`, a failed upgrade at `error`, under the targets `graceful_core`,
//! `graceful_tokio` and `graceful_hyper`. Install a subscriber to see them, as above. Without one,
//! a failed or rolled-back upgrade, an ignored upgrade signal, graceful unable to start and
//! connections abandoned by a drain are still written to stderr, each as one line starting
//! `graceful:` with the reason, so a deploy that failed never leaves an empty log.

#![warn(missing_docs)]
#![cfg(unix)]

pub use graceful_tokio::*;

#[cfg(feature = "hyper")]
pub use graceful_hyper::{Serve, serve, upgraded_stream};

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
