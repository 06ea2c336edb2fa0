//! Serve hyper and axum across graceful upgrades with no failed request.
//!
//! [`serve`] runs a hyper service (HTTP/1.1 and HTTP/2, detected) on a graceful listener, calls
//! `graceful::ready()` once it serves, and when the process is replaced:
//!
//! - requests in flight finish on the old process;
//! - HTTP/2 connections get GOAWAY, so their clients open a new connection, to the new process;
//! - an HTTP/1 keep-alive connection that is between requests is handed over to the new
//!   process (with the bytes of a request begun), and the client's next request on the same
//!   connection is answered there ([`Serve::handoff`], on by default, TCP only);
//! - one busy with a request, or any without hand-off, answers its next request with
//!   `Connection: close`, so a busy client never sends a request into a connection that is
//!   being closed under it; only a connection that stays idle through a short grace (1 s) is
//!   closed;
//! - a connection accepted just before the upgrade is served (or handed over), not closed;
//! - upgraded connections (WebSocket) stay tracked until they close: the application closes
//!   them, or hands them over ([`upgraded_stream`] gives the stream back), at a message
//!   boundary when `graceful::upgrade_requested()` completes;
//! - the old process drains its connections, up to the drain timeout, and the future returns.
//!
//! With axum, [`axum::serve`] does the same for a `Router`. Plain
//! `axum::serve(graceful::listen(addr).await?, app).with_graceful_shutdown(graceful::upgrade_requested())`
//! also works, with axum's own shutdown: it closes idle keep-alive connections at once, which
//! can cost a busy client one request per connection and upgrade.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg(unix)]

#[cfg(feature = "axum")]
pub mod axum;
mod close;
mod connection;
mod reclaim;
mod serve;

pub use connection::upgraded_stream;
pub use serve::{Serve, serve};
