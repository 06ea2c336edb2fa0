//! Process supervision: the one place where the project's tools start, signal, kill and reap
//! the servers they run. The [`Harness`](crate::Harness), `cargo xtask demo`/`bench` and
//! `scale-probe` use it.
//!
//! Invariants:
//! - A supervised server runs in a process group of its own ([`Group`]), with every generation
//!   it upgrades into, so that killing the group stops them all.
//! - The supervisor is a child subreaper ([`become_subreaper`]): a generation whose parent has
//!   exited becomes its child, so that it can be reaped instead of being left to init.
//! - Every wait is bounded; a [`Group`] is killed and reaped when dropped, even in a panic.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use graceful_testing::process::{self, Group};
//!
//! # fn run() -> std::io::Result<()> {
//! process::become_subreaper()?;
//! let server = Group::spawn(Command::new("target/release/http-server").arg("--addr").arg("127.0.0.1:0"))?;
//! // … upgrade it, with `process::signal(pid, Signal::SIGHUP)` …
//! server.stop(Duration::from_secs(10)); // SIGTERM, then SIGKILL; every member reaped
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

/// How long a dropped [`Group`] waits for its killed members to be reaped.
const REAP: Duration = Duration::from_secs(5);

/// Makes this process the reaper of its orphaned descendants. Process-wide and idempotent.
///
/// # Errors
///
/// The `prctl` error, on a kernel without child subreapers (before Linux 3.4).
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to process `pid`.
///
/// # Errors
///
/// `kill`'s: no such process (`ESRCH`), or not allowed (`EPERM`).
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    kill(as_pid(pid), signal).map_err(io::Error::from)
}

/// Sends `signal` to every process of group `pgid`.
///
/// # Errors
///
/// `killpg`'s: no such group (`ESRCH`), or not allowed (`EPERM`).
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    killpg(as_pid(pgid), signal).map_err(io::Error::from)
}

/// Kills every process of group `pgid`; a group that has gone is not an error.
pub fn kill_group(pgid: u32) {
    match killpg(as_pid(pgid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid, %err, "cannot kill a process group"),
    }
}

/// Reaps every process of group `pgid` as it ends, until none is left or `timeout` runs out;
/// returns whether none is left. It polls, because members that are not yet our children
/// become ours only when their parent exits.
pub fn reap_group(pgid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // 0: members are alive but none has ended; -1: none is our child (yet).
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        while unsafe { libc::waitpid(-(pgid as libc::pid_t), &mut status, libc::WNOHANG) } > 0 {}
        if killpg(as_pid(pgid), None).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn as_pid(pid: u32) -> Pid {
    Pid::from_raw(pid as libc::pid_t)
}

/// A process watched until it ends, whoever reaps it: its parent, this process as its
/// subreaper, or nobody yet (a zombie has ended). Through a pidfd, so it must be opened while
/// the process is known to be alive, before its pid could be reused.
#[derive(Debug)]
pub struct Watched {
    pid: u32,
    pidfd: OwnedFd,
}

impl Watched {
    /// Starts watching process `pid`.
    ///
    /// # Errors
    ///
    /// `pidfd_open`'s: no such process (`ESRCH`), or a kernel older than Linux 5.3 (`ENOSYS`).
    pub fn open(pid: u32) -> io::Result<Watched> {
        Ok(Watched {
            pid,
            pidfd: crate::sys::pidfd(pid)?,
        })
    }

    /// The watched pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Blocks until the process has ended or `timeout` has passed; returns whether it ended.
    /// It does not reap it.
    ///
    /// # Errors
    ///
    /// `poll`'s, which on a pidfd means a bug.
    pub fn wait_ended(&self, timeout: Duration) -> io::Result<bool> {
        crate::sys::wait_readable(self.pidfd.as_fd(), timeout)
    }
}

/// A child started in a process group of its own, with everything it starts: killed and
/// reaped when dropped. Not `Clone`: the group has one owner, who ends it.
#[derive(Debug)]
pub struct Group {
    leader: Child,
}

impl Group {
    /// Spawns `command` as the leader of a new process group.
    ///
    /// # Errors
    ///
    /// The spawn's.
    pub fn spawn(command: &mut Command) -> io::Result<Group> {
        let leader = command.process_group(0).spawn()?;
        Ok(Group { leader })
    }

    /// The group's id: its leader's pid.
    pub fn pgid(&self) -> u32 {
        self.leader.id()
    }

    /// The leader, for its pipes.
    pub fn leader(&mut self) -> &mut Child {
        &mut self.leader
    }

    /// Reaps the members that have ended, without waiting.
    pub fn reap_ended(&mut self) {
        let _ = self.leader.try_wait();
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        while unsafe { libc::waitpid(-(self.pgid() as libc::pid_t), &mut status, libc::WNOHANG) }
            > 0
        {}
    }

    /// SIGTERM to the whole group, SIGKILL to whatever is left after `grace`, and every
    /// member reaped (for a few seconds at most).
    pub fn stop(self, grace: Duration) {
        let pgid = self.pgid();
        if signal_group(pgid, Signal::SIGTERM).is_ok() {
            reap_group(pgid, grace);
        }
        // Drop kills what is left and reaps it.
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.pgid();
        kill_group(pgid);
        // The leader first: std's Child keeps its own view of whether it was waited for.
        let _ = self.leader.try_wait();
        reap_group(pgid, REAP);
        let _ = self.leader.try_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn a_dropped_group_is_killed_and_reaped_with_what_it_started() {
        become_subreaper().unwrap();
        // The leader starts a grandchild in its group, prints both pids, and waits.
        let mut group = Group::spawn(
            Command::new("sh")
                .args(["-c", "sleep 60 & echo $$ $!; wait"])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(group.leader().stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pids: Vec<u32> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{line:?}");
        let pgid = group.pgid();
        drop(group);
        for pid in pids {
            assert!(
                signal(pid, Signal::SIGCONT).is_err(),
                "pid {pid} of group {pgid} is still there (alive or a zombie)"
            );
        }
    }

    #[test]
    fn a_watched_process_is_seen_to_end_before_anyone_reaps_it() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let watched = Watched::open(child.id()).unwrap();
        assert_eq!(watched.pid(), child.id());
        assert!(!watched.wait_ended(Duration::from_millis(20)).unwrap());
        child.kill().unwrap();
        // A zombie, not reaped yet: it has ended all the same.
        assert!(
            watched.wait_ended(Duration::from_secs(10)).unwrap(),
            "pid {} did not end within 10 s of SIGKILL",
            child.id()
        );
        child.wait().unwrap();
        assert!(watched.wait_ended(Duration::ZERO).unwrap());
    }
}
