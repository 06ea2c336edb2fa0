//! Starting a first generation by hand, for a caller that plays the previous generation itself:
//! a test harness, a supervisor.
//!
//! The process is started exactly as an upgrade starts the next generation: forked, the
//! handed-over descriptors placed at fd 3 onward, announced with `LISTEN_FDS`, `LISTEN_PID` (its
//! own pid) and `LISTEN_FDNAMES` in graceful's names, and given the readiness link. So a server
//! cannot tell the difference: its listeners adopt the descriptors, its `ready()` answers over
//! the link.
//!
//! What differs is the parent, which does not exit once its child is ready. So
//! [`Started::wait_ready`] closes the link as soon as the child has said `ready`: the child then
//! sees its parent exit, as any generation does once the one before it has drained. From then
//! on it behaves as the oldest generation alive, which a server started by hand is: it counts
//! its successors for `max_generations`, and its own drain does not wait for a parent. It is
//! generation 1.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::link::Reader;
use crate::name::{self, FdName};
use crate::report;
use crate::spawn::Setup;
use crate::successor::{self, Next};
use crate::sys::{self, FdKind, Local, SockType};

/// How long the started process may take to reach `execve`.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a program with sockets handed over the way an upgrade hands them to the next
/// generation, and waits until it calls `ready()`: for a test harness or a supervisor that
/// plays the generation before the first.
///
/// The program cannot tell the difference from an upgrade: its listeners adopt the sockets,
/// its `ready()` answers over the readiness link. Unlike a replaced generation, the caller does
/// not exit once the program is ready, so [`Started::wait_ready`] closes the link then: the
/// program sees its parent exit and behaves from then on as a server started by hand, the
/// oldest generation (generation 1), which counts its successors for `max_generations` and
/// whose drain never waits for a parent.
///
/// ```no_run
/// use std::time::Duration;
/// use graceful_core::harness::Handover;
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let started = Handover::new("target/debug/my-server")
///     .args(["--addr", "127.0.0.1:0"]) // adopts the listener: same IP, port 0
///     .listener(listener)
///     .spawn()?;
/// let pid = started.wait_ready(Duration::from_secs(10))?;
/// println!("pid {pid} serves on {addr}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct Handover {
    executable: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    fds: Vec<(Handed, OwnedFd)>,
    stdio: [Option<OwnedFd>; 3],
    process_group: bool,
}

/// How a descriptor is named in `LISTEN_FDNAMES`.
enum Handed {
    /// Under the address it is bound to, found when the process is started.
    Listener,
    /// Under a name of the caller's choice.
    File(String),
}

impl Handover {
    /// Starts `executable` (with `argv[0]` set to it), in this process's working directory
    /// and environment, with nothing handed over yet.
    pub fn new(executable: impl Into<PathBuf>) -> Handover {
        Handover {
            executable: executable.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            fds: Vec::new(),
            stdio: [None, None, None],
            process_group: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable. The variables of the inheritance protocol (`LISTEN_*`,
    /// `GRACEFUL_*`) are always set by the handover itself.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The working directory of the new process. Default: this process's.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Hands over a socket under the address it is bound to: a listening TCP or Unix stream
    /// socket, or a bound UDP socket. The server adopts it when it asks for that address; a TCP
    /// or UDP socket is also adopted by a request for port 0 on its IP, so a server told to
    /// listen on `127.0.0.1:0` takes it.
    pub fn listener(mut self, socket: impl Into<OwnedFd>) -> Self {
        self.fds.push((Handed::Listener, socket.into()));
        self
    }

    /// Hands over a descriptor under `name`, adopted by
    /// [`Upgrader::file`](crate::Upgrader::file) with the same name.
    pub fn file(mut self, name: impl Into<String>, fd: impl Into<OwnedFd>) -> Self {
        self.fds.push((Handed::File(name.into()), fd.into()));
        self
    }

    /// Hands over the end of a datagram socket on which the started process, and every
    /// generation after it, sends [`Report`](crate::harness::Report)s: each upgrade's outcome, each
    /// drain's end, each descriptor it did not adopt. Read them from the other end.
    pub fn report(self, socket: UnixDatagram) -> Self {
        self.file(report::NAME, socket)
    }

    /// The new process's standard input. Default: this process's.
    pub fn stdin(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[0] = Some(fd.into());
        self
    }

    /// The new process's standard output, which later generations share. Default: this
    /// process's.
    pub fn stdout(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[1] = Some(fd.into());
        self
    }

    /// The new process's standard error, which later generations share. Default: this
    /// process's.
    pub fn stderr(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stdio[2] = Some(fd.into());
        self
    }

    /// Keeps the process in the new process group it starts in, which every later generation
    /// joins once ready, so that they can all be signalled at once (`killpg` with the returned
    /// pid).
    ///
    /// Without it, the process starts in a group of its own too (so that a failed start is
    /// killed with everything it started, see [`Started::wait_ready`]), and moves into this
    /// process's group once it is ready, as a generation started by an upgrade does.
    pub fn process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// Starts the process and returns once it has exec'd.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if a descriptor given to [`listener`](Self::listener) is not a
    /// bound socket or its name would be too long; [`Error::Spawn`] if the program cannot be
    /// started (missing, not executable, …); [`Error::Io`] if the link cannot be created.
    pub fn spawn(self) -> Result<Started> {
        let mut names = Vec::with_capacity(self.fds.len());
        for (handed, fd) in &self.fds {
            let name = match handed {
                Handed::Listener => listener_name(fd)?,
                Handed::File(name) => FdName::File(name.clone()),
            };
            let encoded = name.encode();
            if encoded.len() > name::MAX_LEN {
                return Err(Error::InvalidConfig(format!(
                    "{name} cannot be handed over: its name would be longer than the 255 bytes \
                     LISTEN_FDNAMES allows"
                )));
            }
            names.push(encoded);
        }

        let (ours, theirs) = sys::socketpair().map_err(|e| Error::io("creating the link", e))?;
        let count = self.fds.len();
        let mut args = vec![self.executable.clone().into_os_string()];
        args.extend(self.args);
        let pid = successor::start(
            Next {
                executable: &self.executable,
                args: &args,
                cwd: self.cwd.as_deref(),
                env: self.env,
                names,
                fds: self.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect(),
                link: theirs.as_raw_fd(),
                handoff: None,
                generation: 1,
                join_our_group: !self.process_group,
                setup: Setup {
                    stdio: [0, 1, 2].map(|i| self.stdio[i].as_ref().map(AsRawFd::as_raw_fd)),
                },
            },
            EXEC_TIMEOUT,
        )?;
        tracing::info!(
            pid,
            executable = %self.executable.display(),
            fds = count,
            "started a first generation with descriptors handed over"
        );
        Ok(Started {
            pid,
            link: Reader::new(ours),
        })
    }
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("executable", &self.executable)
            .field("args", &self.args)
            .field("fds", &self.fds.len())
            .field("process_group", &self.process_group)
            .finish_non_exhaustive()
    }
}

/// The name a socket is handed over under: the address it is bound to.
fn listener_name(fd: &OwnedFd) -> Result<FdName> {
    let found = sys::describe(fd.as_fd()).map_err(|e| Error::io("inspecting a listener", e))?;
    let not_a_listener = |found: &dyn fmt::Display| {
        Error::InvalidConfig(format!(
            "fd {} cannot be handed over as a listener: it is {found}, not a listening TCP or \
             Unix socket or a bound UDP socket",
            fd.as_raw_fd()
        ))
    };
    let FdKind::Socket(info) = &found else {
        return Err(not_a_listener(&found));
    };
    let listening_stream = info.ty == Some(SockType::Stream) && info.listening;
    match (&info.local, info.ty) {
        (Local::Inet(addr), _) if listening_stream => Ok(FdName::Tcp(*addr)),
        (Local::Inet(addr), Some(SockType::Datagram)) if addr.port() != 0 => Ok(FdName::Udp(*addr)),
        (Local::UnixPath(path), _) if listening_stream => Ok(FdName::Unix(path.clone())),
        (Local::UnixAbstract(name), _) if listening_stream => {
            Ok(FdName::UnixAbstract(name.clone()))
        }
        _ => Err(not_a_listener(&found)),
    }
}

/// A process started by [`Handover::spawn`], not yet ready.
///
/// Dropping it closes the link: the process then sees its parent exit, and goes on running.
#[derive(Debug)]
pub struct Started {
    pid: u32,
    link: Reader,
}

impl Started {
    /// The started process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the process calls `ready()`, for `timeout` at most; returns its pid.
    ///
    /// Then closes the link: the process sees its parent exit and, from then on, behaves as
    /// the oldest generation alive (see [`Handover`]). The caller remains its parent and reaps
    /// it when it exits.
    ///
    /// Blocks.
    ///
    /// # Errors
    ///
    /// [`Error::ChildExited`] if the process exited first (it has been reaped; the error has
    /// its status); [`Error::Timeout`] if it was not ready in time (it has been killed and
    /// reaped); [`Error::Io`] if the link could not be read (killed and reaped too). Each
    /// time, everything the process started in its process group has been killed as well.
    pub fn wait_ready(mut self, timeout: Duration) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        successor::wait_ready(
            &mut self.link,
            self.pid,
            deadline,
            timeout,
            || {},
            || {},
            |other| {
                tracing::debug!(?other, "ignoring a message before ready");
            },
        )?;
        Ok(self.pid)
    }
}
