//! Prove in `cargo test` that your server survives an upgrade.
//!
//! The harness starts your server binary as a real process, the way an upgrade would start it:
//! it binds the listening socket itself (a free loopback port, known before the server starts)
//! and hands it over, then waits until the server calls `graceful::ready()`. It then upgrades
//! the server as a deploy does, with `SIGHUP`, and learns each outcome from the server itself:
//! the new generation's pid, or the reason the upgrade failed. Clients run meanwhile and count
//! every failure by kind. Each generation's drain and exit are recorded, and everything is
//! killed and reaped when the harness is dropped, even if the test panics, at which point what
//! the server wrote is printed.
//!
//! ```no_run
//! use graceful_testing::{Error, Harness};
//!
//! // #[tokio::test], in the package of the binary `my-server`
//! async fn survives_upgrades_under_load() -> Result<(), Error> {
//! # macro_rules! env { ($name:literal) => { "target/debug/my-server" } }
//!     let harness = Harness::builder(env!("CARGO_BIN_EXE_my-server"))
//!         .arg("--addr")
//!         .arg_addr()
//!         .start()
//!         .await?;
//!     let report = harness
//!         .under_load(|| async {
//!             for _ in 0..3 {
//!                 harness.upgrade().await?;
//!             }
//!             Ok::<_, Error>(())
//!         })
//!         .await;
//!     assert_eq!(report.failures(), 0, "{report}");
//!     report.outcome?;
//!     for generation in harness.stop().await? {
//!         assert!(generation.status().is_some_and(|s| s.success()), "{generation}");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # What the server must do
//!
//! Nothing it would not do in production. It listens with `graceful::listen` on the address
//! the harness passes ([`Builder::arg_addr`]) or on port 0 of the same IP (`127.0.0.1:0`),
//! either of which adopts the harness's listener, and calls `graceful::ready()`. A server that
//! asks for another address is caught with [`Error::ListenerNotAdopted`]; one that never calls
//! `ready()`, with [`Error::NotReady`].
//!
//! # How it works
//!
//! The harness is the first generation's parent, using the same protocol as an upgrade
//! ([`graceful_core::harness::Handover`]). It closes the readiness link as soon as the server is ready,
//! so the server sees its parent exit, and from then on behaves exactly as a server started by
//! hand. The server reports upgrade outcomes and drains on a channel that only a harness
//! creates (see [`graceful_core::harness::Report`]); a server not started by a harness sends nothing.
//!
//! Tests may run in parallel: each harness has its own port, its own process group and no
//! global state, except that the harness makes the test process a child subreaper (generations
//! whose parent has exited become its children, so their exit status can be collected). Linux
//! only.
//!
//! # The engines, on their own
//!
//! The clients and the supervision are usable without a harness: [`load`] runs the clients
//! against any address ([`Load::start`]) with live counters and latency timings, and
//! [`process`] starts a server in a process group of its own and kills and reaps it. graceful's
//! `cargo xtask demo` and `bench`, its `echo-client` example and its `scale-probe` use them, so
//! that a failure is counted the same way everywhere.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg(target_os = "linux")]

mod error;
mod harness;
pub mod load;
mod monitor;
mod output;
pub mod process;
mod sys;

pub use error::{Error, Result};
pub use harness::{Builder, Harness, Upgraded, is_server};
pub use load::{Client, Failure, Load, LoadReport, Running, Tally};
pub use monitor::{Generation, Rollback};
