//! The platform doorway: every nix/libc call outside the fork-to-exec window goes through here
//! and comes out as `io::Result`. The code that runs between fork and exec lives in
//! `spawn.rs`, because it obeys stricter rules (async-signal-safe calls only).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
    sockopt,
};
use nix::sys::stat::{SFlag, fstat};
use nix::unistd::Pid;

/// Converts a nix result into an `io::Result`.
pub(crate) fn cvt<T>(result: nix::Result<T>) -> io::Result<T> {
    result.map_err(io::Error::from)
}

/// The descriptor flags of `fd` (FD_CLOEXEC), or `None` if it is not open in this process.
pub(crate) fn fd_flags(fd: RawFd) -> Option<FdFlag> {
    // SAFETY: F_GETFD only inspects the descriptor table; an unopened number gives EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)
        .ok()
        .map(FdFlag::from_bits_truncate)
}

/// Sets FD_CLOEXEC on a descriptor. This is a per-descriptor flag: unlike O_NONBLOCK it is not
/// shared with other processes holding the same open file description.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    cvt(fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))).map(drop)
}

/// Duplicates a descriptor, close-on-exec, without touching the shared file status flags.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// What a descriptor turned out to be, for checks and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FdKind {
    Socket(SocketInfo),
    RegularFile,
    Directory,
    Pipe,
    CharDevice,
    Other,
}

/// The parts of a socket that decide whether it may be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub(crate) ty: Option<SockType>,
    pub(crate) listening: bool,
    pub(crate) local: Local,
}

/// A socket's local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Local {
    Inet(SocketAddr),
    UnixPath(std::path::PathBuf),
    UnixAbstract(Vec<u8>),
    UnixUnnamed,
    Family(Option<AddressFamily>),
}

/// Inspects a descriptor: its file type and, for a socket, its type, state and local address.
pub(crate) fn describe(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let stat = cvt(fstat(fd))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    Ok(match kind {
        SFlag::S_IFSOCK => FdKind::Socket(socket_info(fd)?),
        SFlag::S_IFREG => FdKind::RegularFile,
        SFlag::S_IFDIR => FdKind::Directory,
        SFlag::S_IFIFO => FdKind::Pipe,
        SFlag::S_IFCHR => FdKind::CharDevice,
        _ => FdKind::Other,
    })
}

fn socket_info(fd: BorrowedFd<'_>) -> io::Result<SocketInfo> {
    let ty = socket::getsockopt(&fd, sockopt::SockType).ok();
    // Datagram sockets have no listening state; some platforms answer ENOPROTOOPT.
    let listening = socket::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let local: SockaddrStorage = cvt(socket::getsockname(fd.as_raw_fd()))?;
    let local = if let Some(v4) = local.as_sockaddr_in() {
        Local::Inet(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = local.as_sockaddr_in6() {
        Local::Inet(SocketAddr::V6((*v6).into()))
    } else if let Some(unix) = local.as_unix_addr() {
        if let Some(path) = unix.path() {
            Local::UnixPath(path.to_owned())
        } else {
            unix_abstract(unix).map_or(Local::UnixUnnamed, Local::UnixAbstract)
        }
    } else {
        Local::Family(local.family())
    };
    Ok(SocketInfo {
        ty,
        listening,
        local,
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn unix_abstract(addr: &UnixAddr) -> Option<Vec<u8>> {
    addr.as_abstract().map(<[u8]>::to_vec)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unix_abstract(_: &UnixAddr) -> Option<Vec<u8>> {
    None
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdKind::Socket(info) => info.fmt(f),
            FdKind::RegularFile => f.write_str("a regular file"),
            FdKind::Directory => f.write_str("a directory"),
            FdKind::Pipe => f.write_str("a pipe"),
            FdKind::CharDevice => f.write_str("a character device"),
            FdKind::Other => f.write_str("neither a socket nor a regular file"),
        }
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match &self.local {
            Local::Inet(SocketAddr::V4(_)) => "IPv4",
            Local::Inet(SocketAddr::V6(_)) => "IPv6",
            Local::Family(_) => "non-IP, non-Unix",
            _ => "Unix",
        };
        let ty = match self.ty {
            Some(SockType::Stream) => "stream",
            Some(SockType::Datagram) => "datagram",
            Some(SockType::SeqPacket) => "seqpacket",
            _ => "other-type",
        };
        let what = if self.listening {
            format!("a listening {family} {ty} socket")
        } else if family.starts_with('I') {
            format!("an {family} {ty} socket")
        } else {
            format!("a {family} {ty} socket")
        };
        f.write_str(&what)?;
        match &self.local {
            Local::Inet(addr) => write!(f, " bound to {addr}"),
            Local::UnixPath(path) => write!(f, " bound to {}", path.display()),
            Local::UnixAbstract(name) => {
                write!(f, " bound to @{}", String::from_utf8_lossy(name))
            }
            Local::UnixUnnamed => f.write_str(" with no address"),
            Local::Family(family) => write!(f, " of family {family:?}"),
        }
    }
}

/// Creates a close-on-exec socket, binds it and, for stream sockets, listens.
///
/// `SO_REUSEADDR` is set on TCP listeners (as std and tokio do) so that a restart is not refused
/// while old connections sit in TIME_WAIT. It never shares a port with another live listener:
/// that would be `SO_REUSEPORT`, which graceful never needs.
pub(crate) fn bind(
    addr: &dyn SockaddrLike,
    family: AddressFamily,
    ty: SockType,
    backlog: Option<Backlog>,
) -> io::Result<OwnedFd> {
    let fd = cvt(socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None))?;
    if matches!(family, AddressFamily::Inet | AddressFamily::Inet6) && ty == SockType::Stream {
        cvt(socket::setsockopt(&fd, sockopt::ReuseAddr, &true))?;
    }
    cvt(socket::bind(fd.as_raw_fd(), addr))?;
    if let Some(backlog) = backlog {
        cvt(socket::listen(&fd, backlog))?;
    }
    Ok(fd)
}

/// A Unix stream listener at `addr` whose socket file only its owner may use: mode 0600 from
/// the moment it exists. Linux creates the file with the socket's own mode (less the umask),
/// so the mode is set on the socket before `bind`; a chmod after `bind` would leave a window
/// in which anyone could connect.
pub(crate) fn bind_private_unix(addr: &UnixAddr, backlog: Backlog) -> io::Result<OwnedFd> {
    let fd = cvt(socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ))?;
    cvt(nix::sys::stat::fchmod(
        &fd,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    ))?;
    cvt(socket::bind(fd.as_raw_fd(), addr))?;
    // Elsewhere the socket's mode may not carry over to the file: restrict the file itself,
    // after the fact.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    if let Some(path) = addr.path() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    cvt(socket::listen(&fd, backlog))?;
    Ok(fd)
}

/// A Unix socket address for a path.
pub(crate) fn unix_path_addr(path: &Path) -> io::Result<UnixAddr> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Unix socket path cannot contain a NUL byte",
        ));
    }
    cvt(UnixAddr::new(path))
}

/// A connected pair of close-on-exec Unix stream sockets.
/// The pid of the process that created the other end of a Unix socket (for a socketpair, the
/// process that called `socketpair`), as the kernel recorded it then: still right after that
/// process has exited.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let creds = cvt(socket::getsockopt(&fd, socket::sockopt::PeerCredentials))?;
    u32::try_from(creds.pid()).map_err(|_| io::Error::other("the peer has no pid"))
}

/// Elsewhere, the parent process's pid, read now: a new generation's parent.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_pid(_: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(nix::unistd::getppid().as_raw() as u32)
}

/// Shuts a socket down both ways: a reader blocked on it, in any process, sees end of file.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    cvt(socket::shutdown(fd.as_raw_fd(), socket::Shutdown::Both))
}

pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    cvt(socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    ))
}

/// Sends all of `buf` on a stream socket without raising SIGPIPE if the peer is gone.
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match socket::send(fd.as_raw_fd(), buf, socket::MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Reads from a descriptor, retrying on EINTR. Zero means end of file.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return cvt(other),
        }
    }
}

/// Waits until `fd` is readable (data or end of file) or `timeout` runs out; returns whether it
/// became readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let millis = u16::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Sends SIGKILL to a process; a process that is already gone is not an error.
pub(crate) fn kill_hard(pid: u32) {
    match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pid, %err, "cannot kill process"),
    }
}

/// Kills a successor that failed, with everything it started: SIGKILL to its process group
/// (every process `spawn.rs` starts leads one, which its descendants share), then to the
/// process itself, in case it has left its group. Whatever has gone already is not an error.
/// It does not reap: the caller waits for `pid`, its child.
///
/// The one place for this, for every path on which a successor must go (timeout, exit before
/// ready, a stop during an upgrade). Not covered: a descendant that called `setsid` or
/// `setpgid` and so left the group (a service manager's cgroup covers that, e.g. systemd's
/// `KillMode=control-group`), and, once the successor has moved back into its parent's group
/// at `ready()`, whatever it starts from then on (that is in the parent's group).
pub(crate) fn kill_successor(pid: u32) {
    kill_group(pid);
    kill_hard(pid);
}

/// SIGKILL to process group `pgid`, for what a successor left behind. Safe after the leader
/// has been reaped: a pid is not reused while a group of that number exists.
pub(crate) fn kill_group(pgid: u32) {
    // kill(0) or kill(-1) would reach far more than one successor's group.
    let Some(raw) = i32::try_from(pgid).ok().filter(|raw| *raw > 1) else {
        tracing::warn!(
            pgid,
            "not killing the process group of an impossible successor pid"
        );
        return;
    };
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid, %err, "cannot kill the successor's process group"),
    }
}

/// Makes the child `pid`, just forked, the leader of a process group of its own. The child
/// does the same before exec; whichever runs first wins the race, so that the group exists
/// before either side goes on. EACCES (the child has exec'd, so it did it already) and ESRCH
/// (it has gone) are expected.
pub(crate) fn lead_own_group(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    match nix::unistd::setpgid(pid, pid) {
        Ok(()) | Err(Errno::EACCES | Errno::ESRCH) => {}
        Err(err) => tracing::debug!(%pid, %err, "cannot put the new process in its own group"),
    }
}

/// This process's process group.
pub(crate) fn process_group() -> i32 {
    nix::unistd::getpgrp().as_raw()
}

/// Moves this process into process group `pgid` of the same session.
pub(crate) fn join_process_group(pgid: i32) -> io::Result<()> {
    cvt(nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(pgid)))
}

/// Waits for a child process to end and reaps it.
pub(crate) fn wait_child(pid: u32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status through a valid pointer to a local.
        let ret = unsafe { nix::libc::waitpid(pid as i32, &mut status, 0) };
        if ret >= 0 {
            return Ok(ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes ownership of an inherited descriptor number.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process.
pub(crate) unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// This process's pid.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Sends one datagram without blocking and without raising SIGPIPE: a full queue or a peer that
/// has gone is an error for the caller to ignore, never a stall.
pub(crate) fn send_datagram(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    let flags = socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL;
    loop {
        match socket::send(fd.as_raw_fd(), buf, flags) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}
