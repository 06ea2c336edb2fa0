//! The platform doorway: every nix/libc call outside the fork-to-exec window goes through here
//! and comes out as `io::Result`. The code that runs between fork and exec lives in
//! `spawn.rs`, because it obeys stricter rules (async-signal-safe calls only).
//!
//! A descriptor number that may not be open (one announced by the environment, before it is
//! checked and owned) is only ever passed to the kernel as a number ([`fd_cloexec`],
//! [`file_type`], [`set_cloexec_raw`]), never turned into a `BorrowedFd`, which promises an
//! open descriptor.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockaddrLike, SockaddrStorage, UnixAddr, sockopt,
};
use nix::sys::stat::{SFlag, fstat};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

pub(crate) use nix::sys::socket::{Backlog, SockType};

/// The most the kernel may allow as a `listen(2)` backlog, for messages.
pub(crate) const SOMAXCONN: i32 = libc::SOMAXCONN;

/// `backlog` as a `listen(2)` backlog, if it is in 1..=SOMAXCONN.
pub(crate) fn backlog(backlog: u32) -> Option<Backlog> {
    i32::try_from(backlog)
        .ok()
        .filter(|b| *b > 0)
        .and_then(|b| Backlog::new(b).ok())
}

/// Converts a nix result into an `io::Result`.
pub(crate) fn cvt<T>(result: nix::Result<T>) -> io::Result<T> {
    result.map_err(io::Error::from)
}

/// Whether the descriptor number `fd` is close-on-exec; `None` if it is not open in this
/// process.
pub(crate) fn fd_cloexec(fd: RawFd) -> Option<bool> {
    // SAFETY: F_GETFD takes a number and only reads the descriptor table; a number that is not
    // open gives EBADF. No memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}

/// Sets FD_CLOEXEC on the descriptor number `fd`, which may not be owned yet.
pub(crate) fn set_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: as in `fd_cloexec`; F_SETFD changes only this descriptor's own flag.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What kind of file the descriptor number `fd` is, without its socket details (those need
/// an owned descriptor: see [`describe`]).
pub(crate) fn file_type(fd: RawFd) -> io::Result<FileType> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat takes a number (EBADF if it is not open) and writes into the buffer given.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let mode = unsafe { stat.assume_init() }.st_mode;
    Ok(FileType::from_mode(mode))
}

/// A descriptor's file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileType {
    Socket,
    RegularFile,
    Directory,
    Pipe,
    CharDevice,
    Other,
}

impl FileType {
    fn from_mode(mode: libc::mode_t) -> FileType {
        match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
            SFlag::S_IFSOCK => FileType::Socket,
            SFlag::S_IFREG => FileType::RegularFile,
            SFlag::S_IFDIR => FileType::Directory,
            SFlag::S_IFIFO => FileType::Pipe,
            SFlag::S_IFCHR => FileType::CharDevice,
            _ => FileType::Other,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileType::Socket => "a socket",
            FileType::RegularFile => "a regular file",
            FileType::Directory => "a directory",
            FileType::Pipe => "a pipe",
            FileType::CharDevice => "a character device",
            FileType::Other => "neither a socket nor a regular file",
        })
    }
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
    Ok(match FileType::from_mode(stat.st_mode) {
        FileType::Socket => FdKind::Socket(socket_info(fd)?),
        FileType::RegularFile => FdKind::RegularFile,
        FileType::Directory => FdKind::Directory,
        FileType::Pipe => FdKind::Pipe,
        FileType::CharDevice => FdKind::CharDevice,
        FileType::Other => FdKind::Other,
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
            FdKind::RegularFile => FileType::RegularFile.fmt(f),
            FdKind::Directory => FileType::Directory.fmt(f),
            FdKind::Pipe => FileType::Pipe.fmt(f),
            FdKind::CharDevice => FileType::CharDevice.fmt(f),
            FdKind::Other => FileType::Other.fmt(f),
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
fn bind(
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

/// A TCP listener on `addr`: see [`bind`].
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: Backlog) -> io::Result<OwnedFd> {
    bind(
        &SockaddrStorage::from(addr),
        inet_family(&addr),
        SockType::Stream,
        Some(backlog),
    )
}

/// A UDP socket bound to `addr`.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<OwnedFd> {
    bind(
        &SockaddrStorage::from(addr),
        inet_family(&addr),
        SockType::Datagram,
        None,
    )
}

/// A Unix stream listener on the filesystem path `path`.
pub(crate) fn bind_unix_path(path: &Path, backlog: Backlog) -> io::Result<OwnedFd> {
    let addr = unix_path_addr(path)?;
    bind(&addr, AddressFamily::Unix, SockType::Stream, Some(backlog))
}

/// A Unix stream listener in the abstract namespace, named `name` without the leading NUL.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn bind_unix_abstract(name: &[u8], backlog: Backlog) -> io::Result<OwnedFd> {
    let addr = cvt(UnixAddr::new_abstract(name))?;
    bind(&addr, AddressFamily::Unix, SockType::Stream, Some(backlog))
}

fn inet_family(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A Unix stream listener at `path` whose socket file only its owner may use: mode 0600 from
/// the moment it exists. Linux creates the file with the socket's own mode (less the umask),
/// so the mode is set on the socket before `bind`; a chmod after `bind` would leave a window
/// in which anyone could connect.
pub(crate) fn bind_private_unix(path: &Path, backlog: Backlog) -> io::Result<OwnedFd> {
    let addr = unix_path_addr(path)?;
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
    cvt(socket::bind(fd.as_raw_fd(), &addr))?;
    // Elsewhere the socket's mode may not carry over to the file: restrict the file itself,
    // after the fact.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
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
    wait_for(fd, nix::poll::PollFlags::POLLIN, timeout)
}

/// Waits until `fd` can take more bytes or `timeout` runs out; returns whether it can.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    wait_for(fd, nix::poll::PollFlags::POLLOUT, timeout)
}

/// Waits until `fd` has one of `events` (or an error or hang-up), for `timeout` at most.
fn wait_for(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use nix::poll::{PollFd, PollTimeout, poll};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let millis = u16::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Which of two descriptors became readable; see [`wait_readable_either`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    First,
    Second,
}

/// Waits until `first` or `second` is readable, for `timeout` at most (`None`: no limit);
/// `None` when the time ran out. `first` wins when both are.
pub(crate) fn wait_readable_either(
    first: BorrowedFd<'_>,
    second: Option<BorrowedFd<'_>>,
    timeout: Option<std::time::Duration>,
) -> io::Result<Option<Readable>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let (wait, left) = match deadline {
            None => (PollTimeout::NONE, None),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let millis = u16::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u16::MAX);
                (PollTimeout::from(millis), Some(left))
            }
        };
        let polled = match second {
            None => poll(&mut [PollFd::new(first, PollFlags::POLLIN)], wait),
            Some(second) => {
                let mut both = [
                    PollFd::new(first, PollFlags::POLLIN),
                    PollFd::new(second, PollFlags::POLLIN),
                ];
                let polled = poll(&mut both, wait);
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                if polled.is_ok_and(|n| n > 0) && !ready(&both[0]) && ready(&both[1]) {
                    return Ok(Some(Readable::Second));
                }
                polled
            }
        };
        match polled {
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Ok(None),
            Ok(0) => continue,
            Ok(_) => return Ok(Some(Readable::First)),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// A pidfd for the child `pid`: readable once it has exited, whoever else still holds the
/// descriptors it had (its link among them). Close-on-exec, as pidfds always are.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel has just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Elsewhere there is no pidfd: the caller watches the link alone.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn pidfd(_pid: u32) -> io::Result<OwnedFd> {
    Err(io::ErrorKind::Unsupported.into())
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

/// (device, inode) of the object behind a descriptor: the same for every duplicate of it, in
/// any process.
pub(crate) fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let stat = cvt(fstat(fd))?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// A pipe whose both ends are close-on-exec from the start.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    cvt(nix::unistd::pipe2(OFlag::O_CLOEXEC))
}

/// The highest descriptor number worth closing when `close_range` is missing: below the soft
/// RLIMIT_NOFILE (1024 if it cannot be read), at most 2^20.
pub(crate) fn max_fd() -> RawFd {
    let mut limit = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit writes into the provided struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) } == 0;
    let soft = if ok {
        // SAFETY: initialised by the successful call above.
        unsafe { limit.assume_init() }.rlim_cur
    } else {
        1024
    };
    RawFd::try_from(soft.min(1 << 20)).unwrap_or(1 << 20) - 1
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd's `MONOTONIC_USEC=` is read against.
pub(crate) fn monotonic_usec() -> io::Result<u64> {
    let now = cvt(clock_gettime(ClockId::CLOCK_MONOTONIC))?;
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec() / 1000).unwrap_or(0);
    Ok(secs * 1_000_000 + micros)
}

/// Creates `path`, which must not exist, for writing with `mode`, without following a
/// symlink planted there.
pub(crate) fn create_new_nofollow(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// Opens `path` for reading without following a symlink (`Ok(None)` if one sits there) and
/// without blocking on a FIFO.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The most descriptors one message may carry (the kernel's SCM_MAX_FD).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `buf` (on a stream socket, as much of it as fits) without waiting, with `fds`
/// attached to its first byte (SCM_RIGHTS); returns how many bytes went. On a datagram socket,
/// it is one datagram. A peer that has gone is an error, never SIGPIPE; a full socket is
/// `WouldBlock`.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [io::IoSlice::new(buf)];
    let rights = [socket::ControlMessage::ScmRights(&raw)];
    let cmsgs: &[socket::ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let flags = socket::MsgFlags::MSG_NOSIGNAL | socket::MsgFlags::MSG_DONTWAIT;
    loop {
        match socket::sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, flags, None) {
            Err(Errno::EINTR) => continue,
            other => return cvt(other),
        }
    }
}

/// Receives what a stream socket holds now, without waiting, into `buf`; descriptors that
/// came with it are appended to `fds`, close-on-exec. Returns the byte count (zero: end of
/// file) and whether the kernel had to drop descriptors sent with these bytes (the process is
/// at its descriptor limit, or more came than one message may carry): those are gone. Nothing
/// there yet is `WouldBlock`.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let cloexec = socket::MsgFlags::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let cloexec = socket::MsgFlags::empty();
    let flags = socket::MsgFlags::MSG_DONTWAIT | cloexec;
    let mut iov = [io::IoSliceMut::new(buf)];
    let (bytes, truncated, received) = loop {
        match socket::recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
            Ok(msg) => {
                let mut received = Vec::new();
                for message in msg.cmsgs().map_err(io::Error::from)? {
                    if let socket::ControlMessageOwned::ScmRights(raw) = message {
                        received.extend(raw);
                    }
                }
                let truncated = msg.flags.contains(socket::MsgFlags::MSG_CTRUNC);
                break (msg.bytes, truncated, received);
            }
        }
    };
    for fd in received {
        // SAFETY: the kernel just installed this descriptor in this process for this
        // message; nothing else knows its number.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        set_cloexec_raw(owned.as_raw_fd())?;
        fds.push(owned);
    }
    Ok((bytes, truncated))
}

/// Who is at the other end of a connected Unix socket, as the kernel recorded it at `connect`
/// (for the accepting side) or `listen` (for the connecting side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// The peer's credentials (SO_PEERCRED).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer(fd: BorrowedFd<'_>) -> io::Result<Peer> {
    let creds = cvt(socket::getsockopt(&fd, sockopt::PeerCredentials))?;
    Ok(Peer {
        pid: u32::try_from(creds.pid()).map_err(|_| io::Error::other("the peer has no pid"))?,
        uid: creds.uid(),
    })
}

/// Elsewhere, the peer's uid alone (`getpeereid`); its pid is unknown (0).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer(fd: BorrowedFd<'_>) -> io::Result<Peer> {
    let (uid, _) = cvt(nix::unistd::getpeereid(fd))?;
    Ok(Peer {
        pid: 0,
        uid: uid.as_raw(),
    })
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A pidfd of the process at the other end of a connected Unix socket, the one that connected:
/// SO_PEERPIDFD (Linux 6.5) names that very process even if it has exited and its pid was
/// reused since; before 6.5, `pidfd_open` on the pid SO_PEERCRED recorded.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_pidfd(fd: BorrowedFd<'_>, pid: u32) -> io::Result<OwnedFd> {
    /// Not in every libc yet; the same number on every Linux architecture.
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut raw: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the int it is given.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut raw).cast(),
            &mut len,
        )
    };
    if ret == 0 && raw >= 0 {
        // SAFETY: the kernel has just installed this descriptor for us; nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    pidfd(pid)
}

/// Elsewhere there is no pidfd.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_pidfd(_fd: BorrowedFd<'_>, _pid: u32) -> io::Result<OwnedFd> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Whether process `pid` is in the same control group as this one (`/proc/PID/cgroup`): under
/// systemd, whether it belongs to the same unit. `false` when either cannot be read.
pub(crate) fn same_cgroup(pid: u32) -> bool {
    let ours = std::fs::read("/proc/self/cgroup");
    let theirs = std::fs::read(format!("/proc/{pid}/cgroup"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a == b)
}

/// Reads one line of at most `max` bytes from a stream socket, a byte at a time, so that
/// nothing after the line is consumed (the descriptors of a frame that follows must be read
/// with it), waiting until `deadline` at most. The line comes without its newline; `None` at
/// end of file before any byte.
pub(crate) fn read_line_exact(
    fd: BorrowedFd<'_>,
    deadline: std::time::Instant,
    max: usize,
) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !wait_readable(fd, left)? {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut byte = [0u8; 1];
        match read(fd, &mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a line",
                ));
            }
            Ok(_) if byte[0] == b'\n' => {
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            Ok(_) if line.len() >= max => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line longer than {max} bytes"),
                ));
            }
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}
