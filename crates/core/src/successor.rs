//! The next process, from start to ready: start it with the handed-over descriptors and the
//! readiness link, wait for its `ready`, and kill and reap it when it fails. Used by an upgrade
//! (`upgrader.rs`) and by a caller that plays the previous generation itself (`handover.rs`),
//! so that both start, wait and clean up the same way.
//!
//! Invariants kept here:
//! - The new process is announced with systemd's variables (`LISTEN_FDS`, `LISTEN_FDNAMES`;
//!   `LISTEN_PID` is written by `spawn.rs` in the child) and ours (`GRACEFUL_LINK_FD` right
//!   after the handed-over range, `GRACEFUL_GENERATION`, and `GRACEFUL_PGID` when it is to move
//!   into this process's group once ready). Any value of those variables the caller passed is
//!   replaced.
//! - A process that fails before it is ready (it exits, closes the link, is not ready in time,
//!   or the link cannot be read) is killed with its process group and reaped before the error
//!   is returned: nothing it started lingers with the inherited sockets.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::env;
use crate::error::{Error, Result};
use crate::identity::BuildIdentity;
use crate::link::{Message, Reader};
use crate::spawn::{self, FIRST_FD, Setup};
use crate::sys;

/// What the next process gets, beyond this process's environment.
pub(crate) struct Next<'a> {
    pub(crate) executable: &'a Path,
    /// The whole argument vector, `argv[0]` included.
    pub(crate) args: &'a [OsString],
    pub(crate) cwd: Option<&'a Path>,
    /// Extra variables of the caller's; the protocol's own are dropped from them.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The `LISTEN_FDNAMES` names of `fds`, in order.
    pub(crate) names: Vec<String>,
    /// The descriptors handed over, to appear at fd 3 onward.
    pub(crate) fds: Vec<std::os::fd::RawFd>,
    /// The new process's end of the readiness link, placed right after `fds`.
    pub(crate) link: std::os::fd::RawFd,
    /// Its end of the hand-off channel, placed right after the link.
    pub(crate) handoff: Option<std::os::fd::RawFd>,
    /// Its generation number.
    pub(crate) generation: u64,
    /// Whether it moves into this process's group once ready (`GRACEFUL_PGID`); it leads a
    /// group of its own until then either way.
    pub(crate) join_our_group: bool,
    /// Its standard streams.
    pub(crate) setup: Setup,
}

/// Starts the next process and returns its pid once it has exec'd; `exec_timeout` bounds the
/// wait for exec.
///
/// # Errors
///
/// [`Error::Spawn`] if a step before exec failed (the child has been reaped);
/// [`Error::Timeout`] if it did not reach exec in time (killed and reaped).
pub(crate) fn start(next: Next<'_>, exec_timeout: Duration) -> Result<u32> {
    let count = next.names.len();
    let mut fds = next.fds;
    fds.push(next.link);
    fds.extend(next.handoff);
    let mut vars: Vec<(OsString, OsString)> = next
        .env
        .into_iter()
        .filter(|(key, _)| !env::ALL.iter().any(|var| key == var))
        .collect();
    vars.extend(
        [
            (env::LISTEN_FDS, count.to_string()),
            (env::LISTEN_FDNAMES, next.names.join(":")),
            (env::LINK_FD, (FIRST_FD as usize + count).to_string()),
            (env::GENERATION, next.generation.to_string()),
        ]
        .map(|(k, v)| (k.into(), v.into())),
    );
    if next.handoff.is_some() {
        let fd = FIRST_FD as usize + count + 1;
        vars.push((env::HANDOFF_FD.into(), fd.to_string().into()));
    }
    if next.join_our_group {
        vars.push((env::PGID.into(), sys::process_group().to_string().into()));
    }
    spawn::spawn(
        spawn::Command {
            executable: next.executable,
            args: next.args,
            cwd: next.cwd,
            env: vars,
            env_remove: &env::ALL,
            fds,
        },
        next.setup,
        exec_timeout,
    )
}

/// How often [`wait_ready`] calls its `heartbeat` while it waits (the upgrader's keeps a
/// service manager's timeout from firing, see `notify.rs`).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// Waits on the link until process `pid` says `ready`, until `deadline` at most (`timeout` is
/// the bound reported in [`Error::Timeout`]); returns the build identity it sent before, if it
/// did. Calls `heartbeat` every [`HEARTBEAT`] while it waits; other messages before `ready` go
/// to `on_message`.
/// On failure the process has been killed
/// with its group and reaped; `forget` runs first, for a caller that must stop signalling the
/// pid before it can be reused.
///
/// # Errors
///
/// [`Error::ChildExited`] if it exited (or closed the link) first; [`Error::Timeout`] if it
/// was not ready by the deadline; [`Error::Io`] if the link could not be read.
pub(crate) fn wait_ready(
    link: &mut Reader,
    pid: u32,
    deadline: Instant,
    timeout: Duration,
    forget: impl Fn(),
    mut heartbeat: impl FnMut(),
    mut on_message: impl FnMut(Message),
) -> Result<Option<BuildIdentity>> {
    let mut build = None;
    let mut beat = Instant::now() + HEARTBEAT;
    loop {
        match link.next_until(deadline.min(beat)) {
            Ok(Some(Message::Ready)) => return Ok(build),
            Ok(Some(Message::Build(identity))) => build = Some(identity),
            Ok(Some(other)) => on_message(other),
            // A wake-up to beat, not the deadline: wait on.
            Err(err) if err.kind() == io::ErrorKind::TimedOut && Instant::now() < deadline => {
                heartbeat();
                beat = Instant::now() + HEARTBEAT;
            }
            Ok(None) => {
                // It closed the link: it exited. Killing a zombie is harmless and makes sure
                // nothing lingers if it only closed the descriptor; its group goes too, with
                // whatever it started (a wrapper's background children).
                forget();
                return Err(match kill_and_reap(pid) {
                    Ok(status) => Error::ChildExited { pid, status },
                    Err(e) => Error::io("reaping the new process that exited early", e),
                });
            }
            Err(err) => {
                forget();
                if let Err(e) = kill_and_reap(pid) {
                    tracing::warn!(child_pid = pid, %e, "cannot reap the killed process");
                }
                return Err(if err.kind() == io::ErrorKind::TimedOut {
                    Error::Timeout { pid, timeout }
                } else {
                    Error::io("reading from the new process", err)
                });
            }
        }
    }
}

/// Kills a process that failed, with everything it started (`sys::kill_successor`), and
/// reaps it.
pub(crate) fn kill_and_reap(pid: u32) -> io::Result<ExitStatus> {
    sys::kill_successor(pid);
    sys::wait_child(pid)
}
