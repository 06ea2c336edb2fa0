//! The platform doorway of the harness: reaping single processes, pidfds and pipes, each turned
//! into `io::Result`. Process groups, signals and the subreaper are in [`crate::process`].
//!
//! The harness is the parent of the first generation only. Later generations are started by
//! the server itself; the harness makes itself a child subreaper, so that a generation whose
//! parent has exited becomes its child, and it can collect that generation's exit status and
//! reap it instead of leaving it to init.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The process groups of successors still starting on behalf of group `pgid`: graceful starts
/// each new generation in a group of its own, which joins its parent's group (announced to it
/// as `GRACEFUL_PGID`) only once it is ready. Found by their environment, in `/proc`.
pub(crate) fn starting_successors(pgid: u32) -> Vec<u32> {
    let marker = format!("GRACEFUL_PGID={pgid}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// What became of a process that has ended.
pub(crate) enum Reaped {
    /// It was our child; here is how it ended.
    Status(ExitStatus),
    /// Another process reaped it (its parent, still alive when it ended).
    Elsewhere,
}

/// Reaps `pid`, which has ended. If it is a zombie that is not (yet) our child, waits up to
/// `timeout` for it to become ours (its parent exiting) or to be reaped by its parent.
pub(crate) fn reap_ended(pid: u32, timeout: Duration) -> Reaped {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let ret = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if ret == pid as libc::pid_t {
            return Reaped::Status(ExitStatus::from_raw(status));
        }
        let interrupted = ret < 0 && Errno::last() == Errno::EINTR;
        if !interrupted && (!exists(pid) || Instant::now() >= deadline) {
            return Reaped::Elsewhere;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a process with this pid exists; a zombie does.
pub(crate) fn exists(pid: u32) -> bool {
    matches!(kill(as_pid(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// A descriptor that becomes readable when process `pid` ends (Linux 5.3 and later).
pub(crate) fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel has just opened for us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable or `timeout` has passed; returns whether it is readable.
/// Retries after a signal, with what is left of the timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pollfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd, owned by this frame, for a descriptor the caller keeps open.
        let ret = unsafe { libc::poll(&mut pollfd, 1, ms) };
        match ret {
            0 => return Ok(false),
            1.. => return Ok(true),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn as_pid(pid: u32) -> Pid {
    Pid::from_raw(pid as libc::pid_t)
}

/// Whether process `pid` exists and has not ended: a zombie has ended.
pub(crate) fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}
