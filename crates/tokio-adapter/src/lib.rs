//! Zero-downtime binary upgrades for Tokio servers.
//!
//! Three changes to a server: bind with [`listen`] instead of `TcpListener::bind`, call
//! [`ready`] once it serves, and stop long-lived connections at a boundary when
//! [`upgrade_requested`] completes. Then [`drain`] before returning from `main`.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), graceful_tokio::Error> {
//!     let mut listener = graceful_tokio::listen("127.0.0.1:7000").await?; // 1: inherit or bind
//!     graceful_tokio::ready()?; // 2: the previous generation may stop now
//!     while let Some(conn) = listener.next().await {
//!         tokio::spawn(async move {
//!             let mut conn = BufReader::new(conn);
//!             let mut line = String::new();
//!             loop {
//!                 tokio::select! {
//!                     biased;
//!                     read = conn.read_line(&mut line) => match read {
//!                         Ok(0) | Err(_) => break,
//!                         Ok(_) => {
//!                             if conn.write_all(line.as_bytes()).await.is_err() { break }
//!                             line.clear();
//!                         }
//!                     },
//!                     () = graceful_tokio::upgrade_requested() => break, // 3: stop at a boundary
//!                 }
//!             }
//!         });
//!     }
//!     // The listener ended: a new generation serves. Wait for our connections, then exit.
//!     graceful_tokio::drain(Duration::from_secs(30)).await;
//!     Ok(())
//! }
//! ```
//!
//! By default SIGHUP upgrades (the new binary at the path this one was started from takes
//! over), and SIGTERM or SIGINT stop gracefully; [`Builder`] changes that, and adds a
//! [`control`] socket on which an upgrade reports whether it worked, and through which a process
//! started by someone else can take the service over ([`Builder::takeover`]). Under systemd, sockets
//! passed by socket activation are adopted, and upgrades are reported as reloads with the new
//! main pid (see [`Upgrader::upgrade`]). A failed upgrade is logged with its reason and the
//! server keeps serving as if nothing happened.
//!
//! A replaced generation stays on probation for 5 s ([`Builder::probation`]): its listeners
//! pause instead of ending, and if the new generation dies within that window, this one takes
//! the service back and accepts again. A stop during an upgrade cancels it: the new process and
//! its process group are killed. Listeners accept nothing before the process is ready; the first
//! one polled reports readiness itself unless [`Builder::explicit_ready`] asks the application
//! to call [`ready`].
//!
//! UDP sockets ([`udp()`]) follow the same switch: a generation receives datagrams only while it
//! serves, so a replaced one, which still holds the same socket, takes none meant for its
//! successor; see [`UdpSocket`] for what is guaranteed.
//!
//! Long-lived connections can move instead of closing: at a boundary, [`Graceful::hand_off`]
//! gives the connection itself (and the input read but not processed) to the new generation,
//! which asked for it with [`Graceful::handed_over`] before it was ready; the client keeps its
//! TCP connection. The application's state moves the same way ([`Graceful::save_state`],
//! [`Graceful::inherited_state`]). A successor that does not take a connection gets none, and
//! the connection comes back to be closed as before.
//!
//! Everything is reported through `tracing`, under the targets `graceful_tokio` (signals,
//! listeners, the drain, the control socket) and `graceful_core` (the upgrade itself); install a
//! subscriber to see it. Without one, a failed or rolled-back upgrade, an ignored upgrade signal,
//! graceful unable to start and connections abandoned by a drain are still written to stderr,
//! each as one line starting `graceful:` with the reason.
//!
//! Misuse is harmless: a second `listen` on the same address is an
//! [`Error::AlreadyRegistered`]; a second `ready` does nothing; an upgrade signal before `ready`
//! is logged and ignored.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg(unix)]

#[cfg(feature = "axum")]
mod axum;
mod builder;
pub mod control;
mod drain;
mod gate;
mod global;
mod handle;
mod handoff;
mod listener;
mod prefixed;
mod signals;
mod tracked;
mod udp;

use std::path::Path;
use std::time::Duration;

pub use builder::Builder;
pub use graceful_core::{
    BuildIdentity, DrainOutcome, DrainReport, Error, Result, SavedState, Successor, Upgrader,
};
pub use handle::{Graceful, UpgradeRequested};
pub use handoff::{HAND_OFF_TIMEOUT, Handed, HandedOver, NotHandedOff, QUEUE};
pub use listener::{Accept, Listener, TcpListener, UnixListener};
pub use prefixed::Prefixed;
pub use tracked::{ConnectionGuard, TrackedStream};
pub use udp::UdpSocket;

/// Inherits the TCP listener for `addr` from the previous generation, or binds it; see
/// [`Graceful::listen`]. Installs the process's handle with the defaults if [`Builder::install`]
/// was not called: with `listen_named`, `listen_unix` and [`udp()`], the only functions that do.
///
/// # Errors
///
/// As [`Graceful::listen`] and [`Builder::install`].
pub async fn listen(addr: impl tokio::net::ToSocketAddrs) -> Result<TcpListener> {
    global::installed_or_default()?.listen(addr).await
}

/// Adopts the TCP listener that the service manager passed under `name`; see
/// [`Graceful::listen_named`].
///
/// # Errors
///
/// As [`Graceful::listen_named`] and [`Builder::install`].
pub async fn listen_named(name: &str) -> Result<TcpListener> {
    global::installed_or_default()?.listen_named(name).await
}

/// Inherits the Unix listener for `path` from the previous generation, or binds it; see
/// [`Graceful::listen_unix`].
///
/// # Errors
///
/// As [`Graceful::listen`] and [`Builder::install`].
pub async fn listen_unix(path: impl AsRef<Path>) -> Result<UnixListener> {
    global::installed_or_default()?.listen_unix(path).await
}

/// Inherits the UDP socket bound to `addr` from the previous generation, or binds it; see
/// [`Graceful::udp`]. Installs the process's handle with the defaults, as [`listen`] does.
///
/// # Errors
///
/// As [`Graceful::udp`] and [`Builder::install`].
pub async fn udp(addr: impl tokio::net::ToSocketAddrs) -> Result<UdpSocket> {
    global::installed_or_default()?.udp(addr).await
}

/// Reports that this process serves; see [`Graceful::ready`].
///
/// # Errors
///
/// As [`Graceful::ready`]; [`Error::Unavailable`] when no handle is installed.
pub fn ready() -> Result<()> {
    global::installed()?.ready()
}

/// Completes when this process should wind down; see [`Graceful::upgrade_requested`]. Never
/// completes if no handle is installed (call it after [`listen`] or [`Builder::install`]; the
/// reason is logged once): it installs nothing itself.
pub fn upgrade_requested() -> UpgradeRequested {
    global::current().map_or_else(UpgradeRequested::never, |g| g.upgrade_requested())
}

/// Starts the next generation now; see [`Graceful::upgrade`].
///
/// # Errors
///
/// As [`Graceful::upgrade`]; [`Error::Unavailable`] when no handle is installed.
pub async fn upgrade() -> Result<u32> {
    global::installed()?.upgrade().await
}

/// Stops gracefully without a successor; see [`Graceful::stop`].
pub fn stop() {
    if let Some(graceful) = global::current() {
        graceful.stop();
    }
}

/// Waits for the tracked connections, for `timeout` at most; see [`Graceful::drain`]. Returns
/// at once, with nothing to report, if no handle is installed.
pub async fn drain(timeout: Duration) -> DrainReport {
    match global::current() {
        Some(graceful) => graceful.drain(timeout).await,
        None => DrainReport::empty(),
    }
}
