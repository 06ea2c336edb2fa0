//! The control socket: an upgrade that reports whether it worked.
//!
//! A signal cannot answer. `kill -HUP` returns at once, before anyone knows whether the new
//! binary started, so `systemctl reload` and deploy scripts cannot tell a failed upgrade from a
//! good one. The control socket can: a client connects, asks for an upgrade, and gets the answer
//! once the new generation is ready or the attempt has failed.
//!
//! The protocol is one line from the client, and one or two lines back, on a Unix stream
//! socket; the server closes its side after its answer:
//!
//! ```text
//! -> upgrade
//! <- ok 4243                                  the new generation, pid 4243, serves
//! <- serving pid=4243 generation=2 version=1.4.0 build=18093520@1764608980.123456789
//! <- error new process (pid 4243) exited …    nothing changed; the old generation serves on
//!
//! -> rollback
//! <- ok 4242                                  the previous generation, pid 4242, serves again
//! <- error cannot roll back from pid 4243: …  nothing changed
//!
//! -> status
//! <- ok 4243                                  what serves now: the generation that answers
//! <- serving pid=4243 generation=2 version=1.4.0 build=18093520@1764608980.123456789
//!
//! -> takeover                                a process the server did not start asks for its
//! <- ok 4242 1 3, then 3 sockets              sockets (see `Builder::takeover`); the
//!    …                                        connection then carries the readiness link
//! <- error an upgrade is already in progress  refused; nothing changed
//! ```
//!
//! The `serving` line names the generation's build identity, as it told its parent before it
//! was ready (see [`BuildIdentity`](crate::BuildIdentity): the application's version and a
//! build id, by default the executable file's `SIZE@MTIME`, each escaped to one word);
//! `version=` and `build=` are left out when a new generation of an older graceful did not
//! say. The first line is `ok PID` alone, as before the second line existed, so that older
//! clients, which read the first line, still understand the answer; and a newer client reads
//! an older server's one-line answer as the pid alone.
//!
//! `takeover` is answered by [`Upgrader::yield_to`](graceful_core::Upgrader::yield_to): the
//! asking process must be of the same user or root, gets the listening sockets over
//! SCM_RIGHTS, and reports ready on the same connection; one upgrade or takeover runs at a
//! time. Its connection is counted by the drain until the takeover has succeeded or failed (a
//! stop cuts it short at once), not after: it is then the link between the two generations.
//!
//! `rollback` is for a deploy that sees the new build misbehave within the previous
//! generation's probation (see [`Builder::probation`](crate::Builder::probation)): the previous
//! generation accepts again and the one that answered stops gracefully.
//!
//! The server side is [`Builder::control_socket`](crate::Builder::control_socket); the client
//! side is [`upgrade`] (or [`upgrade_identified`], which returns what serves), [`rollback`]
//! and [`status`]. The socket is handed over like any listener: the old
//! generation stops accepting on it when it is replaced, and the new one answers from then on
//! (after a rollback, the old one again). A connection the old generation accepted is answered
//! by it, and counted by its drain until it is answered.

mod client;
pub(crate) mod server;

pub use client::{ControlError, Serving, rollback, status, upgrade, upgrade_identified};

/// The longest request or answer line read.
const MAX_LINE: u64 = 4096;
