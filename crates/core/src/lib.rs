//! Zero-downtime binary upgrades for Unix servers, without a runtime.
//!
//! A running server (the parent) starts the new binary with its listening sockets inherited:
//! the very same kernel sockets, so the accept queue is never closed and no connection is
//! refused. The new process (the child) adopts them instead of binding, and reports ready. Only
//! then does the parent's [`Upgrader::upgrade`] return, and the parent stops accepting, finishes
//! its work and exits. If the child fails, it is killed and reaped and the parent keeps serving.
//!
//! This crate is the mechanism, for synchronous code and for runtime adapters. Async servers use
//! the `graceful-upgrade` package (library `graceful`), which builds on it.
//!
//! # Example
//!
//! ```
//! use graceful_core::Upgrader;
//!
//! // Once per process, early: takes over the sockets of the previous generation, if any.
//! let upgrader = Upgrader::new()?;
//!
//! // Instead of TcpListener::bind: inherited after an upgrade, bound on first start.
//! let listener = upgrader.tcp_listener("127.0.0.1:0".parse().unwrap())?;
//!
//! // Signal handlers installed, sockets adopted: tell the previous generation.
//! upgrader.ready()?;
//!
//! // On SIGHUP, in a thread that may block:
//! //     match upgrader.upgrade() {
//! //         Ok(pid) => { /* pid serves now: stop accepting, drain, exit */ }
//! //         Err(err) => { /* logged; keep serving */ }
//! //     }
//! # drop(listener);
//! # Ok::<(), graceful_core::Error>(())
//! ```
//!
//! # What the new process gets
//!
//! The sockets and files registered with the upgrader, at fd 3 onward, announced with systemd's
//! variables (`LISTEN_FDS`, `LISTEN_PID` set to the new process's pid, `LISTEN_FDNAMES`), so a
//! child reading them the systemd way works too; the same arguments, environment and start-up
//! directory; and the executable found at start-up's path now, so a binary replaced on disk is
//! the one that runs. Nothing else leaks: every other descriptor is closed before exec.
//!
//! An inherited descriptor is adopted only if it is what the new process asks for (a socket of
//! the right family and type, listening, bound to the asked address); otherwise the call that
//! asked for it fails with [`Error::Mismatch`].
//!
//! # State and connections
//!
//! Besides the sockets, each upgrade opens a hand-off channel to the new process
//! (`GRACEFUL_HANDOFF_FD`, see [`handoff`]): the new generation may ask for the application's
//! state before it is ready ([`Upgrader::inherited_state`], answered by the writer set with
//! [`Upgrader::set_state_writer`]), and announce the kinds of live connections it takes
//! ([`Upgrader::take_connections`]); a runtime adapter then sends those over it, socket and
//! all ([`Upgrader::successor_handoff`]). A process of an older build never asks and is sent
//! nothing.
//!
//! # Takeover without a parent
//!
//! A process that the running server did not start (a second instance of a template unit, a
//! second container sharing the control socket's volume) can take over too:
//! [`Builder::takeover`] asks the server at a control socket for its descriptors, which come
//! over SCM_RIGHTS with their names and are adopted with the same checks, and
//! [`Upgrader::ready`] returns once that server has stopped accepting. The running side answers
//! with [`Upgrader::yield_to`]; from then on it is an upgrade, probation, rollback and the
//! hand-off channel included, except that the old process never kills the new one, which it
//! did not start.
//!
//! # Generations
//!
//! A new generation may be upgraded as soon as it is ready, even while older ones are still
//! draining. When more than [`Builder::max_generations`] are alive, the oldest is told through
//! [`Upgrader::finish_requested`] to end its remaining connections now.
//!
//! # Where reports go
//!
//! Every phase is reported through `tracing` with the pids involved, under the target
//! `graceful_core` (`info` for each phase, `error` for a failed upgrade). Without a tracing
//! subscriber, a failed or rolled-back upgrade is also written to stderr, as one line starting
//! `graceful:` with the reason, so that it is never lost; with one, it goes to the subscriber
//! alone. Under a service manager, the reason is also sent as `STATUS=`.
//!
//! # Restarts and crashes under systemd
//!
//! Under a unit with `FileDescriptorStoreMax=`, the sockets a process binds are kept in systemd's
//! file descriptor store too, so a `systemctl restart` or a crash restarted by `Restart=` keeps
//! them and their queues: see [`Builder::fd_store_max`] and [`Upgrader::close_for_good`].
//!
//! # Playing the previous generation
//!
//! A test harness or a supervisor can start a server the way an upgrade would, with sockets it
//! bound itself, and wait until the server is ready: see [`harness::Handover`]. A server it
//! starts so reports the outcome of each upgrade back to it ([`harness::Report`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg(unix)]

mod alert;
mod builder;
mod drain;
mod env;
mod error;
mod event;
mod fdstore;
pub mod handoff;
mod handover;
pub mod harness;
mod identity;
mod lineage;
mod link;
mod name;
mod notify;
mod pidfile;
mod registry;
mod report;
mod sockets;
mod spawn;
mod stage;
mod successor;
mod sys;
mod takeover;
mod upgrader;

#[doc(hidden)]
pub use alert::alert;
pub use builder::Builder;
pub use drain::{DrainOutcome, DrainReport};
pub use error::{Error, Result};
pub use event::Event;
pub use handoff::SavedState;
pub use identity::{BuildIdentity, Successor};
pub use stage::SpawnStage;
pub use takeover::REQUEST as TAKEOVER_REQUEST;
pub use upgrader::{Transition, Upgrader};
