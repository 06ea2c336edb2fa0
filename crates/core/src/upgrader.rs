//! The upgrader: one per process, it owns the inherited descriptors and performs upgrades.
//!
//! States, in the only order they can be reached:
//!
//! ```text
//! Starting --ready()--> Ready --upgrade()--> Upgrading --child ready--> Probation --> Replaced
//!                        ^ ^                     |                          |
//!                        | +-- failure, stop ----+                          |
//!                        +------------ successor died, or rollback ---------+
//! ```
//!
//! Probation (off unless [`Builder::probation`] sets it): the successor serves, and this
//! generation stops accepting but keeps its sockets. If the successor dies within the window
//! (or asks to be rolled back), this generation takes the service back: PID file, main pid,
//! accepting. The window ends early when the successor stops for good (it says so on the link,
//! so a stop is never taken for a crash), when it is replaced itself, or when this generation
//! stops or must finish. A rollback happens only if the runtime adapter says this generation
//! can still serve ([`Upgrader::set_resume_check`]).
//!
//! Stop versus upgrade: [`Upgrader::stopping`] wins. An upgrade in flight is cancelled (the new
//! process and its process group are killed and reaped) and a probation ends at once; no later
//! upgrade starts.
//!
//! Generations: every process keeps a link to its parent (until the parent exits) and, once
//! replaced, to its child. Each child tells its parent how many living descendants it has, so
//! the oldest living generation, the one whose parent has exited, knows how many are alive and
//! is the one told to finish when there are too many. No generation waits for its parent to
//! exit before it may be upgraded itself.
//!
//! The count relies on the chain of links staying whole: a replaced generation should not exit
//! before its parent has (see [`Upgrader::parent_exited`]). The tokio adapter's drain waits for
//! that, within its deadline.
//!
//! Under a service manager (`NOTIFY_SOCKET` set), each transition is reported as `notify.rs`
//! describes; the report of a successful upgrade is sent before `upgrade()` returns, so the old
//! process cannot exit before the manager has been told which pid is the service now.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, Backlog, SockType, SockaddrStorage};

use crate::env;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::link::{self, Message, Reader};
use crate::name::{self, FdName, Listening};
use crate::notify::{self, Notifier};
use crate::pidfile;
use crate::registry::{Origin, Registry};
use crate::report;
use crate::spawn::{self, FIRST_FD};
use crate::sys;

/// Set once an upgrader exists in this process.
static CREATED: AtomicBool = AtomicBool::new(false);

const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_GENERATIONS: usize = 3;
/// The same default as tokio's `TcpListener::bind`; the kernel caps it at `somaxconn`.
const DEFAULT_BACKLOG: u32 = 1024;

/// Configures an [`Upgrader`].
///
/// ```no_run
/// use std::time::Duration;
///
/// let upgrader = graceful_core::Upgrader::builder()
///     .upgrade_timeout(Duration::from_secs(30))
///     .pid_file("/run/my-server.pid")
///     .build()?;
/// # Ok::<(), graceful_core::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    upgrade_timeout: Duration,
    pid_file: Option<PathBuf>,
    executable: Option<PathBuf>,
    max_generations: usize,
    listen_backlog: u32,
    probation: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            pid_file: None,
            executable: None,
            max_generations: DEFAULT_MAX_GENERATIONS,
            listen_backlog: DEFAULT_BACKLOG,
            probation: Duration::ZERO,
        }
    }
}

impl Builder {
    /// How long a new generation may take to call [`Upgrader::ready`] before it is killed and
    /// the upgrade fails. Default: 60 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// A file that [`Upgrader::ready`] fills with this process's pid, atomically and with mode
    /// 0644. Default: none.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The executable to start on upgrade. Default: the path this process was started from
    /// (`argv[0]`, resolved against the start-up directory or `PATH` when the upgrader is
    /// built), so that the binary a deploy put at that path is the one that runs next.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// How many generations may be alive at once. When an upgrade makes one more, the oldest
    /// is told to finish now through [`Upgrader::finish_requested`]. Default: 3.
    pub fn max_generations(mut self, max: usize) -> Self {
        self.max_generations = max;
        self
    }

    /// How long a replaced generation stays able to take the service back if its successor
    /// dies. Default: zero, none: the runtime adapters, which can resume accepting, set their
    /// own (the tokio adapter's is 5 s).
    ///
    /// During the window this process keeps its sockets but does not accept; if the successor
    /// exits for any reason but a graceful stop, or asks for a rollback, this process serves
    /// again: it rewrites the PID file, tells the service manager it is the main pid again,
    /// reports [`Transition::RolledBack`], and may be upgraded again. The window costs a
    /// replaced process at least this long a life. It ends early when the successor stops for
    /// good, is replaced itself, or when this process stops.
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// The `listen(2)` backlog of listeners this process creates. Default: 1024.
    pub fn listen_backlog(mut self, backlog: u32) -> Self {
        self.listen_backlog = backlog;
        self
    }

    /// Builds the process's upgrader: reads the inheritance environment and takes ownership of
    /// the descriptors it announces.
    ///
    /// Build it early, first thing in `main`, before a runtime starts or the process starts
    /// other programs: until then the inherited descriptors are not yet close-on-exec, and
    /// nothing of the process's own can sit at the announced numbers.
    ///
    /// An announced descriptor that this process opened itself (it is close-on-exec, so it did
    /// not survive an exec) is never adopted, closed or re-flagged: the build fails with
    /// [`Error::NotInherited`]. Every announced descriptor is checked before any is taken, so a
    /// failed build leaves them all as they were. The environment is read once per process: if
    /// the build fails from then on, every later build returns the same error and takes nothing
    /// (a failure in the settings, checked first, may be corrected and built again).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyCreated`] if this process has an upgrader already; [`Error::Environment`],
    /// [`Error::InheritedFdMissing`] or [`Error::NotInherited`] if the inheritance environment
    /// is malformed or announces descriptors that were not inherited;
    /// [`Error::InvalidConfig`] for out-of-range settings.
    pub fn build(self) -> Result<Upgrader> {
        let backlog = i32::try_from(self.listen_backlog)
            .ok()
            .filter(|b| *b > 0)
            .and_then(|b| Backlog::new(b).ok())
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "listen_backlog({}) is outside 1..=SOMAXCONN ({})",
                    self.listen_backlog,
                    nix::libc::SOMAXCONN
                ))
            })?;
        if self.max_generations == 0 {
            return Err(Error::InvalidConfig(
                "max_generations(0): at least the running generation must be allowed".into(),
            ));
        }
        if self.upgrade_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "upgrade_timeout must not be zero".into(),
            ));
        }
        let pid = sys::pid();
        if CREATED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyCreated { pid });
        }
        let upgrader = self.build_inner(pid, backlog);
        if let Err(err) = &upgrader {
            env::build_failed(err);
            CREATED.store(false, Ordering::SeqCst);
        }
        upgrader
    }

    fn build_inner(self, pid: u32, backlog: Backlog) -> Result<Upgrader> {
        let cwd = std::env::current_dir().ok();
        let executable = match self.executable {
            Some(path) => match &cwd {
                Some(cwd) if path.is_relative() => cwd.join(path),
                _ => path,
            },
            None => spawn::resolve_executable(cwd.as_deref())
                .map_err(|e| Error::io("resolving this process's executable", e))?,
        };
        let inherited = env::take_once(pid)?;
        let (fds, link, generation, join_pgid) = match inherited {
            Some(i) => (i.fds, i.link, i.generation, i.pgid),
            None => (Vec::new(), None, 1, None),
        };
        let parent_reader = link
            .as_ref()
            .map(|l| sys::dup_cloexec(std::os::fd::AsFd::as_fd(l)))
            .transpose()
            .map_err(|e| Error::io("duplicating the parent link", e))?;
        // The link's creator, as the kernel recorded it: getppid() would name a subreaper if
        // the parent had exited already.
        let parent_pid = link
            .as_ref()
            .map(|l| sys::peer_pid(l.as_fd()))
            .transpose()
            .map_err(|e| Error::io("reading the parent's pid from the link", e))?;

        let inner = Arc::new(Inner {
            pid,
            parent_pid,
            generation,
            join_pgid,
            config: Config {
                upgrade_timeout: self.upgrade_timeout,
                pid_file: self.pid_file,
                executable,
                args: std::env::args_os().collect(),
                cwd,
                max_generations: self.max_generations,
                backlog,
                probation: self.probation,
            },
            state: Mutex::new(State::Starting),
            stopping: AtomicBool::new(false),
            observers: Mutex::new(Vec::new()),
            resume_check: Mutex::new(None),
            starting_link: Mutex::new(None),
            rollback_answer: Mutex::new(None),
            registry: Mutex::new(Registry::new(fds)),
            lineage: Mutex::new(Lineage {
                parent_alive: link.is_some(),
                descendants: 0,
            }),
            parent_link: link,
            notifier: Notifier::from_env(|key| std::env::var_os(key)),
            replaced: Event::new(),
            parent_exited: Event::new(),
            finish_requested: Event::new(),
        });
        report::claim(&mut inner.registry());
        if let Some(reader) = parent_reader {
            let watcher = inner.clone();
            std::thread::Builder::new()
                .name("graceful-parent".into())
                .spawn(move || watcher.watch_parent(Reader::new(reader)))
                .map_err(|e| Error::io("starting the parent watcher thread", e))?;
            tracing::info!(
                pid,
                parent_pid,
                generation,
                "started by an upgrade; inherited descriptors are waiting to be adopted"
            );
        }
        Ok(Upgrader { inner })
    }
}

/// Performs zero-downtime upgrades of this process: inherits or creates its sockets, reports
/// readiness, and starts the next generation.
///
/// There is one per process; clone the handle to share it. All methods are synchronous;
/// [`upgrade`](Self::upgrade) blocks until the new generation is ready or has failed, so async
/// code should call it on a thread that may block.
///
/// See the [crate documentation](crate) for the life of a generation.
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

type Observer = Arc<dyn Fn(&Transition) + Send + Sync>;
type ResumeCheck = Box<dyn Fn() -> bool + Send + Sync>;
/// The previous generation's answer to a rollback request: its pid, or why not.
type RollbackAnswer = std::result::Result<u32, String>;

struct Inner {
    pid: u32,
    parent_pid: Option<u32>,
    generation: u64,
    /// The process group to move back into once ready (`GRACEFUL_PGID`, the parent's).
    join_pgid: Option<i32>,
    config: Config,
    state: Mutex<State>,
    /// Set once by [`Upgrader::stopping`]; read and written under the `state` lock, so that a
    /// stop and an upgrade never both win.
    stopping: AtomicBool,
    observers: Mutex<Vec<Observer>>,
    resume_check: Mutex<Option<ResumeCheck>>,
    /// A duplicate of our end of the link to a child that is starting: a stop shuts it down,
    /// which wakes the upgrade's wait at once, whoever else holds the child's end.
    starting_link: Mutex<Option<OwnedFd>>,
    /// Where the parent watcher delivers the answer to a pending [`Upgrader::rollback`].
    rollback_answer: Mutex<Option<mpsc::Sender<RollbackAnswer>>>,
    registry: Mutex<Registry>,
    lineage: Mutex<Lineage>,
    /// Our end of the link to the parent, for sending; a watcher thread reads a duplicate.
    parent_link: Option<OwnedFd>,
    notifier: Notifier,
    replaced: Event,
    parent_exited: Event,
    finish_requested: Event,
}

struct Config {
    upgrade_timeout: Duration,
    pid_file: Option<PathBuf>,
    executable: PathBuf,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    max_generations: usize,
    backlog: Backlog,
    probation: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// `child` is known from fork until it is being reaped; a stop kills it only meanwhile.
    Upgrading {
        child: Option<u32>,
    },
    Probation {
        successor: u32,
    },
    Replaced {
        successor: u32,
    },
}

/// A change in this generation's standing, for runtime adapters; see
/// [`Upgrader::on_transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The successor is ready and serves: stop accepting and wind long-lived connections down.
    /// With a probation, keep the listeners: the service may come back.
    Replaced {
        /// The new generation.
        successor: u32,
    },
    /// The probation is over (or there was none): this generation never serves again. End the
    /// listeners and drain.
    Retired {
        /// The new generation.
        successor: u32,
    },
    /// The successor died during the probation, or asked for a rollback: accept again and
    /// serve as before.
    RolledBack {
        /// The generation that failed.
        successor: u32,
        /// How it ended, or that a rollback was asked for.
        reason: String,
    },
    /// The previous generation took the service back from this one (a rollback): stop
    /// gracefully.
    StopRequested {
        /// The previous generation, which serves again.
        by: u32,
    },
}

struct Lineage {
    /// Whether the link to our parent is still open. The oldest living generation has none.
    parent_alive: bool,
    /// How many generations after us are alive, as far as our child has told us.
    descendants: usize,
}

impl Upgrader {
    /// A builder with the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This process's upgrader with the default settings; see [`Builder::build`].
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn new() -> Result<Upgrader> {
        Builder::default().build()
    }

    /// A TCP listener on `addr`: the one inherited from the previous generation under that
    /// address, or passed by the service manager bound to it (socket activation, whatever name
    /// it was passed under), or a new one bound now (close-on-exec, `SO_REUSEADDR`, the
    /// configured backlog). The other methods for sockets find passed sockets the same way.
    ///
    /// Port 0 binds a free port; the listener is handed over under the port the kernel chose,
    /// and a next generation asking for port 0 on the same IP again gets it back.
    ///
    /// The socket's O_NONBLOCK flag is left as it is: it is shared with the other generations.
    ///
    /// # Errors
    ///
    /// [`Error::Mismatch`] if the inherited descriptor is not a listening TCP socket bound to
    /// `addr`; [`Error::Create`] if binding fails (address in use, permission denied…);
    /// [`Error::AlreadyRegistered`] if it was asked for before.
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<std::net::TcpListener> {
        let family = inet_family(&addr);
        let backlog = self.inner.config.backlog;
        self.inherit_or_create(FdName::Tcp(addr), || {
            sys::bind(
                &SockaddrStorage::from(addr),
                family,
                SockType::Stream,
                Some(backlog),
            )
        })
        .map(std::net::TcpListener::from)
    }

    /// A Unix stream listener on the filesystem path `path`, inherited or bound now.
    ///
    /// A stale socket file from a process that crashed makes binding fail with "address in
    /// use"; remove it first if that is safe for your deployment. The file is never removed by
    /// graceful, because the next generation is listening on it.
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn unix_listener(&self, path: impl AsRef<Path>) -> Result<UnixListener> {
        let path = path.as_ref();
        let backlog = self.inner.config.backlog;
        self.inherit_or_create(FdName::Unix(path.to_owned()), || {
            let addr = sys::unix_path_addr(path)?;
            sys::bind(&addr, AddressFamily::Unix, SockType::Stream, Some(backlog))
        })
        .map(UnixListener::from)
    }

    /// A Unix stream listener on `path` that only this user may connect to: when it is bound
    /// now, its socket file has mode 0600 from the moment it exists (never wider, not even
    /// briefly). For control sockets. Otherwise as [`unix_listener`](Self::unix_listener).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn private_unix_listener(&self, path: impl AsRef<Path>) -> Result<UnixListener> {
        let path = path.as_ref();
        let backlog = self.inner.config.backlog;
        self.inherit_or_create(FdName::Unix(path.to_owned()), || {
            sys::bind_private_unix(&sys::unix_path_addr(path)?, backlog)
        })
        .map(UnixListener::from)
    }

    /// A Unix stream listener in the abstract namespace (Linux), named `name` without the
    /// leading NUL, inherited or bound now.
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn abstract_unix_listener(&self, name: impl AsRef<[u8]>) -> Result<UnixListener> {
        let name = name.as_ref();
        let backlog = self.inner.config.backlog;
        self.inherit_or_create(FdName::UnixAbstract(name.to_owned()), || {
            let addr = sys::cvt(nix::sys::socket::UnixAddr::new_abstract(name))?;
            sys::bind(&addr, AddressFamily::Unix, SockType::Stream, Some(backlog))
        })
        .map(UnixListener::from)
    }

    /// The TCP listener that the service manager passed under `name`: a socket unit's
    /// `FileDescriptorName=` (systemd's default is the socket unit's name), or
    /// `systemd-socket-activate --fdname`. It is handed over under that name, so the next
    /// generation asks for it the same way.
    ///
    /// Nothing is bound when no socket was passed under `name`: the address belongs to the
    /// socket unit. To run with or without socket activation, ask by address instead
    /// ([`tcp_listener`](Self::tcp_listener)); a passed socket bound to that address is adopted
    /// whatever its name.
    ///
    /// # Errors
    ///
    /// [`Error::Create`] (not found) when nothing was passed under `name`; [`Error::Mismatch`]
    /// when what was passed is not a listening TCP socket; [`Error::AlreadyRegistered`] if it was
    /// asked for before.
    pub fn tcp_listener_named(&self, name: &str) -> Result<std::net::TcpListener> {
        self.inherit_passed(FdName::Passed(name.to_owned(), Listening::Tcp))
            .map(std::net::TcpListener::from)
    }

    /// The Unix stream listener that the service manager passed under `name`; see
    /// [`tcp_listener_named`](Self::tcp_listener_named).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener_named`](Self::tcp_listener_named).
    pub fn unix_listener_named(&self, name: &str) -> Result<UnixListener> {
        self.inherit_passed(FdName::Passed(name.to_owned(), Listening::Unix))
            .map(UnixListener::from)
    }

    /// A UDP socket bound to `addr`, inherited or bound now. Port 0 works as for
    /// [`tcp_listener`](Self::tcp_listener).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<std::net::UdpSocket> {
        let family = inet_family(&addr);
        self.inherit_or_create(FdName::Udp(addr), || {
            sys::bind(
                &SockaddrStorage::from(addr),
                family,
                SockType::Datagram,
                None,
            )
        })
        .map(std::net::UdpSocket::from)
    }

    /// Any descriptor, handed over under `name`: the inherited one if the previous generation
    /// registered `name`, or the one `open` returns.
    ///
    /// # Errors
    ///
    /// [`Error::Create`] with the error of `open`; [`Error::AlreadyRegistered`] if `name` was
    /// registered before.
    pub fn file(
        &self,
        name: &str,
        open: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<OwnedFd> {
        self.inherit_or_create(FdName::File(name.to_owned()), open)
    }

    fn inherit_or_create(
        &self,
        want: FdName,
        create: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<OwnedFd> {
        if want.encode().len() > name::MAX_LEN {
            return Err(Error::Create {
                what: want.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "its name would be longer than the 255 bytes LISTEN_FDNAMES allows",
                ),
            });
        }
        let (fd, origin) = self
            .inner
            .registry()
            .inherit_or_create(want.clone(), create)?;
        self.log_origin(&want, &fd, origin);
        Ok(fd)
    }

    fn inherit_passed(&self, want: FdName) -> Result<OwnedFd> {
        let fd = self.inner.registry().inherit_passed(want.clone())?;
        self.log_origin(&want, &fd, Origin::Inherited);
        Ok(fd)
    }

    fn log_origin(&self, want: &FdName, fd: &OwnedFd, origin: Origin) {
        match origin {
            Origin::Inherited => tracing::info!(
                pid = self.inner.pid,
                fd = fd.as_raw_fd(),
                "adopted the inherited descriptor: {want}"
            ),
            Origin::Created => {
                tracing::debug!(pid = self.inner.pid, fd = fd.as_raw_fd(), "created {want}")
            }
        }
    }

    /// Reports that this process is set up and serving.
    ///
    /// Writes the PID file (if configured), closes inherited descriptors that this generation
    /// did not ask for, and tells the previous generation, whose [`upgrade`](Self::upgrade)
    /// then returns. Install signal handlers before calling it: a deploy may signal the new pid
    /// as soon as the PID file names it.
    ///
    /// At first start under a service manager (`NOTIFY_SOCKET`), it sends `READY=1`. A new
    /// generation sends nothing itself: its parent, still the service's main process, reports
    /// it (see [`upgrade`](Self::upgrade)).
    ///
    /// A generation started by an upgrade ran in a process group of its own until now, so that
    /// a failed start could be killed with everything it started; here it moves back into its
    /// parent's group (`GRACEFUL_PGID`), where a terminal's Ctrl-C, `tini -g` or a supervisor's
    /// `killpg` reach it. If that fails it stays where it is (logged at debug level). The move
    /// waits for readiness so that, until then, whatever the new generation starts (workers it
    /// forks without exec included, which keep the listening sockets) is killed with it if it
    /// fails; the price is that signals sent to the parent's group miss it until this call.
    ///
    /// Calling it again once it succeeded does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::PidFile`] if the PID file cannot be written. The previous generation is then
    /// not told, so it keeps serving; `ready` may be called again.
    pub fn ready(&self) -> Result<()> {
        let inner = &self.inner;
        let mut state = inner.state();
        if *state != State::Starting {
            return Ok(());
        }
        if let Some(path) = &inner.config.pid_file {
            pidfile::write(path, inner.pid).map_err(|source| Error::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        for (name, fd) in inner.registry().close_unclaimed() {
            tracing::warn!(
                pid = inner.pid,
                fd,
                name,
                "closed an inherited descriptor that this generation did not ask for"
            );
            report::unclaimed(inner.pid, &name);
        }
        // Before the parent hears `ready`: once told, it may exit, and whoever waits for its
        // group (a supervisor, `tini -g`) must find this process in it by then.
        if let Some(pgid) = inner.join_pgid {
            match sys::join_process_group(pgid) {
                Ok(()) => {
                    tracing::debug!(pid = inner.pid, pgid, "back in the parent's process group")
                }
                Err(err) => tracing::debug!(
                    pid = inner.pid,
                    pgid,
                    %err,
                    "cannot move into the parent's process group; staying in this one"
                ),
            }
        }
        if let Some(link) = &inner.parent_link {
            if let Err(err) = link::send(link, &Message::Ready) {
                tracing::warn!(
                    pid = inner.pid,
                    parent_pid = inner.parent_pid,
                    %err,
                    "cannot tell the previous generation that this one is ready; it has gone"
                );
            }
        }
        if inner.parent_link.is_none() {
            inner.notifier.send(&format!(
                "READY=1\nSTATUS=Serving: pid {}, generation {}",
                inner.pid, inner.generation
            ));
        }
        *state = State::Ready;
        tracing::info!(pid = inner.pid, generation = inner.generation, "ready");
        Ok(())
    }

    /// Starts the next generation and waits until it is ready; returns its pid.
    ///
    /// The new process gets this process's sockets and files at fd 3 onward with systemd's
    /// variables, the same arguments, environment and start-up directory, and runs the
    /// configured executable. When this returns `Ok`, the new generation serves: stop accepting,
    /// finish in-flight work and exit.
    ///
    /// If the new process fails (cannot start, exits before it is ready, or is not ready within
    /// the upgrade timeout), it is killed with everything it started (its process group: it
    /// runs in one of its own until it is ready, see `ready`), reaped, nothing in this process
    /// has changed, and a later upgrade may be tried. A descendant that left the group
    /// (`setsid`) escapes this; under systemd, `KillMode=control-group` covers it.
    ///
    /// Under a service manager (`NOTIFY_SOCKET`), the upgrade is a reload: `RELOADING=1` when
    /// it begins; then, before this returns, `MAINPID=<new pid>` and `READY=1` when it
    /// succeeded, or `READY=1` and a `STATUS=` line with the reason when it failed. These come
    /// from this process because, until the new one is ready, it is the service's main process,
    /// the only one systemd hears under the default `NotifyAccess=main`.
    ///
    /// Blocks for up to the upgrade timeout.
    ///
    /// # Errors
    ///
    /// [`Error::NotReady`], [`Error::UpgradeInProgress`] and [`Error::AlreadyReplaced`] when this
    /// process is not in a state to upgrade; [`Error::Spawn`], [`Error::ChildExited`] and
    /// [`Error::Timeout`] when the new process failed.
    pub fn upgrade(&self) -> Result<u32> {
        let inner = &self.inner;
        {
            let mut state = inner.state();
            if inner.stopping.load(Ordering::SeqCst) {
                return Err(Error::Stopping { pid: inner.pid });
            }
            match *state {
                State::Starting => return Err(Error::NotReady { pid: inner.pid }),
                State::Upgrading { .. } => {
                    return Err(Error::UpgradeInProgress { pid: inner.pid });
                }
                State::Probation { successor } | State::Replaced { successor } => {
                    return Err(Error::AlreadyReplaced {
                        pid: inner.pid,
                        successor,
                    });
                }
                State::Ready => *state = State::Upgrading { child: None },
            }
        }
        inner.notifier.send(&notify::reloading(&format!(
            "Upgrading: pid {} (generation {}) is starting generation {}",
            inner.pid,
            inner.generation,
            inner.generation + 1
        )));
        let started = inner.start_successor();
        inner.starting_link().take();
        let started = started.and_then(|(child, reader)| {
            // A stop that came while the child got ready still wins.
            if inner.stopping.load(Ordering::SeqCst) {
                if let Err(err) = inner.end_child(child) {
                    tracing::warn!(child_pid = child, %err, "cannot reap the cancelled process");
                }
                return Err(Error::UpgradeCancelled { pid: inner.pid });
            }
            Ok((child, reader))
        });
        let mut state = inner.state();
        let (child, reader) = match started {
            Ok(started) => started,
            Err(err) => {
                *state = State::Ready;
                let stopping = inner.stopping.load(Ordering::SeqCst);
                drop(state);
                let err = if stopping {
                    Error::UpgradeCancelled { pid: inner.pid }
                } else {
                    err
                };
                if stopping {
                    tracing::warn!(pid = inner.pid, %err, "upgrade cancelled by the stop");
                } else {
                    tracing::error!(pid = inner.pid, %err, "upgrade failed; this generation keeps serving");
                    crate::alert::upgrade_failed(inner.pid, inner.generation, &err);
                    inner.notifier.send(&format!(
                        "READY=1\nSTATUS={}",
                        notify::one_line(&format!(
                            "Upgrade failed; pid {} (generation {}) still serving: {err}",
                            inner.pid, inner.generation
                        ))
                    ));
                }
                report::upgrade_failed(inner.pid, &err);
                return Err(err);
            }
        };
        let probation = inner.config.probation;
        *state = State::Probation { successor: child };
        drop(state);
        // Stop accepting first: whoever learns of the upgrade next finds the new one serving.
        inner.emit(&Transition::Replaced { successor: child });
        // Before anything lets this process stop accepting or exit: the manager must know the
        // new main pid first, or it takes this process's exit for the service's end.
        inner.notifier.send(&format!(
            "MAINPID={child}\nREADY=1\nSTATUS=Serving: pid {child}, generation {}",
            inner.generation + 1
        ));
        report::send(&report::Report::Upgraded {
            pid: inner.pid,
            successor: child,
        });
        inner.lineage().descendants = 1;
        inner.report_descendants();
        if probation.is_zero() {
            inner.retire(child, "there is no probation");
        } else {
            tracing::info!(
                pid = inner.pid,
                successor = child,
                ?probation,
                "on probation: this generation keeps its sockets, without accepting, and takes \
                 the service back if the new one dies"
            );
        }
        inner.check_generations();
        let watcher = inner.clone();
        let deadline = Instant::now() + probation;
        if let Err(err) = std::thread::Builder::new()
            .name("graceful-child".into())
            .spawn(move || watcher.watch_child(child, reader, deadline))
        {
            tracing::warn!(%err, "cannot watch the new generation; its probation ends now");
            inner.retire(child, "the new generation cannot be watched");
        }
        Ok(child)
    }

    /// Asks the previous generation, on probation, to take the service back, and returns its
    /// pid once it serves again. This process is then told to stop gracefully
    /// ([`Transition::StopRequested`]). For a deploy that sees the new build misbehave; the
    /// tokio adapter's control socket answers `rollback` requests with it.
    ///
    /// Blocks for up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::RollbackUnavailable`] when this process was not started by an upgrade, its
    /// parent has exited or refuses (its probation is over, it is stopping, its listeners are
    /// gone), or no answer came within `timeout`.
    pub fn rollback(&self, timeout: Duration) -> Result<u32> {
        let inner = &self.inner;
        let unavailable = |reason: String| Error::RollbackUnavailable {
            pid: inner.pid,
            reason,
        };
        let Some(link) = &inner.parent_link else {
            return Err(unavailable(
                "this generation was not started by an upgrade".into(),
            ));
        };
        if inner.parent_exited.is_set() {
            return Err(unavailable(format!(
                "the previous generation (pid {}) has exited",
                inner.parent_pid.unwrap_or_default()
            )));
        }
        let (tx, rx) = mpsc::channel();
        {
            let mut pending = inner
                .rollback_answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.is_some() {
                return Err(unavailable("a rollback is already being asked for".into()));
            }
            *pending = Some(tx);
        }
        let asked = link::send(link, &Message::Rollback);
        let answer = match asked {
            Err(err) => Err(format!("cannot ask the previous generation: {err}")),
            Ok(()) => match rx.recv_timeout(timeout) {
                Ok(answer) => answer,
                Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                    "no answer from the previous generation within {timeout:?}"
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
                    "the previous generation (pid {}) exited without answering",
                    inner.parent_pid.unwrap_or_default()
                )),
            },
        };
        inner
            .rollback_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        answer.map_err(unavailable)
    }

    /// Calls `observer` on every [`Transition`] of this generation, on the thread that makes
    /// it. For runtime adapters; the observer must not block.
    pub fn on_transition(&self, observer: impl Fn(&Transition) + Send + Sync + 'static) {
        self.inner
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(observer));
    }

    /// Sets what decides whether this generation can serve again when its successor fails
    /// during the probation: a runtime adapter answers whether it still has a listener that
    /// can resume accepting. Without a check, a generation never rolls back: the caller of
    /// [`upgrade`](Self::upgrade) may have closed its sockets already.
    pub fn set_resume_check(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        *self
            .inner
            .resume_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(check));
    }

    /// This process's pid.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The pid of the generation that started this one, if it was started by an upgrade.
    pub fn parent_pid(&self) -> Option<u32> {
        self.inner.parent_pid
    }

    /// 1 for a process started by hand (or by systemd), 2 for its first successor, and so on.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Whether [`ready`](Self::ready) has succeeded.
    pub fn is_ready(&self) -> bool {
        *self.inner.state() != State::Starting
    }

    /// The pid of the generation that replaced this one, once [`upgrade`](Self::upgrade)
    /// succeeded (and until a rollback, if the successor fails during the probation).
    pub fn successor(&self) -> Option<u32> {
        match *self.inner.state() {
            State::Probation { successor } | State::Replaced { successor } => Some(successor),
            _ => None,
        }
    }

    /// Whether this process is on probation: replaced, but able to take the service back if
    /// its successor dies (see [`Builder::probation`]).
    pub fn on_probation(&self) -> bool {
        matches!(*self.inner.state(), State::Probation { .. })
    }

    /// Set when this process has been replaced for good (after the probation, if there is
    /// one): a new generation serves, and this one should stop accepting, finish its work and
    /// exit.
    pub fn replaced(&self) -> &Event {
        &self.inner.replaced
    }

    /// Set when the generation that started this one has exited. Never set in a process that
    /// was not started by an upgrade.
    ///
    /// A replaced generation that has finished its work should wait for this before it exits:
    /// the count of generations alive travels through each generation's link to its parent, so
    /// a generation that exits before its parent hides its successors from the older ones.
    pub fn parent_exited(&self) -> &Event {
        &self.inner.parent_exited
    }

    /// Set when more generations are alive than
    /// [`max_generations`](Builder::max_generations) allows and this is the oldest: it should
    /// end its remaining connections now and exit.
    pub fn finish_requested(&self) -> &Event {
        &self.inner.finish_requested
    }

    /// Removes the PID file if it still names this process; returns whether it did. For a
    /// graceful stop without successor; after an upgrade the file names the successor and is
    /// left alone.
    ///
    /// # Errors
    ///
    /// [`Error::PidFile`] if the file exists but cannot be read or removed.
    pub fn remove_pid_file(&self) -> Result<bool> {
        let Some(path) = &self.inner.config.pid_file else {
            return Ok(false);
        };
        pidfile::remove_if_ours(path, self.inner.pid).map_err(|source| Error::PidFile {
            path: path.clone(),
            source,
        })
    }

    /// Marks this process as stopping for good, without a successor, and tells the service
    /// manager (`NOTIFY_SOCKET`) `STOPPING=1`; returns whether that was sent. Call it once, when
    /// a stop is asked for; the tokio adapter's stop does.
    ///
    /// The stop wins over an upgrade: one in flight is cancelled (the new process and its
    /// process group are killed and reaped, and [`upgrade`](Self::upgrade) returns
    /// [`Error::UpgradeCancelled`]), a probation ends at once without a rollback, and no later
    /// upgrade starts. The previous generation, if it is alive, is told that this one stops
    /// on purpose, so that it does not take the stop for a crash and roll back.
    ///
    /// `STOPPING=1` is not sent by a process that has been replaced: the service is its
    /// successor, and `STOPPING=1` would have systemd stop the service. Nothing is sent either
    /// when no service manager listens.
    pub fn stopping(&self) -> bool {
        let inner = &self.inner;
        let mut state = inner.state();
        if inner.stopping.swap(true, Ordering::SeqCst) {
            return false;
        }
        let current = *state;
        match current {
            State::Upgrading { child } => {
                tracing::warn!(
                    pid = inner.pid,
                    child_pid = child,
                    "stopping during an upgrade: cancelling it"
                );
                if let Some(child) = child {
                    sys::kill_successor(child);
                }
                if let Some(link) = inner.starting_link().as_ref() {
                    if let Err(err) = sys::shutdown(link.as_fd()) {
                        tracing::debug!(%err, "cannot shut the starting link down");
                    }
                }
            }
            State::Probation { successor } => {
                drop(state);
                inner.retire(successor, "this generation is stopping");
                state = inner.state();
            }
            _ => {}
        }
        drop(state);
        if let Some(link) = &inner.parent_link {
            // A parent that has gone needs no telling.
            let _ = link::send(link, &Message::Stopping);
        }
        if !inner.notifier.is_enabled() {
            return false;
        }
        if let State::Probation { .. } | State::Replaced { .. } = current {
            tracing::debug!(
                pid = inner.pid,
                state = ?current,
                "not telling the service manager STOPPING=1: the service continues in a successor"
            );
            return false;
        }
        inner.notifier.send(&format!(
            "STOPPING=1\nSTATUS=Stopping: pid {} (generation {}) finishes its connections",
            inner.pid, inner.generation
        ));
        true
    }

    /// Whether [`stopping`](Self::stopping) has been called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("pid", &self.inner.pid)
            .field("generation", &self.inner.generation)
            .field("state", &*self.inner.state())
            .field("executable", &self.inner.config.executable)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn starting_link(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.starting_link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lineage(&self) -> MutexGuard<'_, Lineage> {
        self.lineage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the next generation and waits for its `ready`.
    fn start_successor(&self) -> Result<(u32, Reader)> {
        let config = &self.config;
        let span = tracing::info_span!(
            "upgrade",
            pid = self.pid,
            generation = self.generation,
            child_pid = tracing::field::Empty
        );
        let _entered = span.enter();
        let started = Instant::now();
        let deadline = started + config.upgrade_timeout;

        let (ours, theirs) = sys::socketpair().map_err(|e| Error::io("creating the link", e))?;
        *self.starting_link() =
            Some(sys::dup_cloexec(ours.as_fd()).map_err(|e| Error::io("duplicating the link", e))?);
        let child = {
            let registry = self.registry();
            let (names, mut fds) = registry.handover();
            let count = names.len();
            fds.push(theirs.as_raw_fd());
            let vars = [
                (env::LISTEN_FDS, count.to_string()),
                (env::LISTEN_FDNAMES, names.join(":")),
                (env::LINK_FD, (FIRST_FD as usize + count).to_string()),
                (env::GENERATION, (self.generation + 1).to_string()),
                (env::PGID, sys::process_group().to_string()),
            ];
            tracing::info!(
                executable = %config.executable.display(),
                fds = count,
                "starting the new generation"
            );
            spawn::spawn(
                spawn::Command {
                    executable: &config.executable,
                    args: &config.args,
                    cwd: config.cwd.as_deref(),
                    env: vars.map(|(k, v)| (k.into(), v.into())).into(),
                    env_remove: &env::ALL,
                    fds,
                },
                config.upgrade_timeout,
            )?
        };
        drop(theirs);
        span.record("child_pid", child);
        {
            let mut state = self.state();
            *state = State::Upgrading { child: Some(child) };
            if self.stopping.load(Ordering::SeqCst) {
                drop(state);
                if let Err(err) = self.end_child(child) {
                    tracing::warn!(child_pid = child, %err, "cannot reap the cancelled process");
                }
                return Err(Error::UpgradeCancelled { pid: self.pid });
            }
        }
        tracing::info!(
            child_pid = child,
            "new generation started; waiting until it is ready"
        );

        let mut reader = Reader::new(ours);
        loop {
            match reader.next_until(deadline) {
                Ok(Some(Message::Ready)) => break,
                Ok(Some(other)) => tracing::debug!(?other, "ignoring a message before ready"),
                Ok(None) => {
                    // The child closed the link: it exited. Killing a zombie is harmless and
                    // makes sure nothing lingers if it only closed the descriptor; its group
                    // goes too, with whatever it started (a wrapper's background children).
                    return Err(match self.end_child(child) {
                        Ok(status) => Error::ChildExited { pid: child, status },
                        Err(e) => Error::io("reaping the new process that exited early", e),
                    });
                }
                Err(err) => {
                    if let Err(e) = self.end_child(child) {
                        tracing::warn!(child_pid = child, %e, "cannot reap the killed process");
                    }
                    return Err(if err.kind() == std::io::ErrorKind::TimedOut {
                        Error::Timeout {
                            pid: child,
                            timeout: config.upgrade_timeout,
                        }
                    } else {
                        Error::io("reading from the new process", err)
                    });
                }
            }
        }
        tracing::info!(
            child_pid = child,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "new generation is ready; this one is replaced"
        );
        Ok((child, reader))
    }

    /// Kills a new process that failed, with everything it started, and reaps it. It is
    /// forgotten first, under the state lock, so that a concurrent stop never signals a pid
    /// that has been reaped and may belong to someone else by now.
    fn end_child(&self, child: u32) -> std::io::Result<std::process::ExitStatus> {
        if let State::Upgrading { child: known } = &mut *self.state() {
            *known = None;
        }
        sys::kill_successor(child);
        sys::wait_child(child)
    }

    fn emit(&self, transition: &Transition) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for observer in observers {
            observer(transition);
        }
    }

    /// Ends the probation: this generation will not serve again.
    fn retire(&self, successor: u32, why: &str) {
        {
            let mut state = self.state();
            if *state != (State::Probation { successor }) {
                return;
            }
            *state = State::Replaced { successor };
        }
        self.registry().release();
        self.replaced.set();
        tracing::info!(
            pid = self.pid,
            successor,
            "replaced for good ({why}); this generation will not serve again"
        );
        self.emit(&Transition::Retired { successor });
    }

    /// Takes the service back from a successor on probation; returns whether it did.
    fn roll_back(&self, successor: u32, reason: &str) -> std::result::Result<(), String> {
        {
            let mut state = self.state();
            if *state != (State::Probation { successor }) {
                return Err(format!(
                    "pid {} is not on probation for pid {successor} (it is {:?})",
                    self.pid, *state
                ));
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Err(format!("pid {} is stopping", self.pid));
            }
            let can_serve = self
                .resume_check
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|check| check());
            if !can_serve {
                return Err(format!(
                    "pid {} cannot accept again: its listeners are gone",
                    self.pid
                ));
            }
            *state = State::Ready;
        }
        tracing::error!(
            pid = self.pid,
            successor,
            reason,
            "rolled back: the new generation failed during its probation; this generation \
             serves again"
        );
        crate::alert::rolled_back(self.pid, successor, reason);
        if let Some(path) = &self.config.pid_file {
            if let Err(err) = pidfile::write(path, self.pid) {
                tracing::error!(path = %path.display(), %err, "cannot rewrite the PID file after the rollback");
            }
        }
        self.notifier.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS={}",
            self.pid,
            notify::one_line(&format!(
                "Rolled back: pid {} (generation {}) serves again; pid {successor}: {reason}",
                self.pid, self.generation
            ))
        ));
        report::send(&report::Report::RolledBack {
            pid: self.pid,
            successor,
            reason: reason.to_owned(),
        });
        self.lineage().descendants = 0;
        self.report_descendants();
        self.emit(&Transition::RolledBack {
            successor,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Runs on its own thread while the parent lives: end of file on the link means it exited.
    /// The parent also answers rollback requests and, after taking the service back, asks this
    /// generation to stop.
    fn watch_parent(&self, mut reader: Reader) {
        while let Ok(Some(message)) = reader.next() {
            match message {
                Message::Resumed(pid) => self.answer_rollback(Ok(pid)),
                Message::Refused(reason) => self.answer_rollback(Err(reason)),
                Message::Stop => {
                    let by = self.parent_pid.unwrap_or_default();
                    tracing::warn!(
                        pid = self.pid,
                        parent_pid = by,
                        "the previous generation took the service back; stopping"
                    );
                    self.emit(&Transition::StopRequested { by });
                }
                _ => {}
            }
        }
        tracing::info!(
            pid = self.pid,
            parent_pid = self.parent_pid,
            "the previous generation has exited"
        );
        // A pending rollback learns that nobody will answer.
        self.rollback_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.lineage().parent_alive = false;
        self.parent_exited.set();
        self.check_generations();
    }

    fn answer_rollback(&self, answer: RollbackAnswer) {
        if let Some(pending) = self
            .rollback_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = pending.send(answer);
        }
    }

    /// Runs on its own thread once replaced: watches the successor through its probation, then
    /// counts the living descendants.
    fn watch_child(&self, child: u32, mut reader: Reader, probation_ends: Instant) {
        // Whether the successor said it stops on purpose: its exit is then no failure.
        let mut child_stopping = false;
        loop {
            let on_probation = *self.state() == (State::Probation { successor: child });
            let next = if on_probation {
                reader.next_until(probation_ends)
            } else {
                reader.next()
            };
            match next {
                Ok(Some(Message::Descendants(n))) => {
                    self.lineage().descendants = n + 1;
                    self.report_descendants();
                    if n > 0 {
                        self.retire(child, "the new generation was replaced itself");
                    }
                    self.check_generations();
                }
                Ok(Some(Message::Stopping)) => {
                    child_stopping = true;
                    self.retire(child, "the new generation is stopping");
                }
                Ok(Some(Message::Rollback)) => {
                    let answer = self.roll_back(child, "a rollback was asked for");
                    let link = reader.fd();
                    match answer {
                        Ok(()) => {
                            let _ = link::send_fd(link, &Message::Resumed(self.pid));
                            let _ = link::send_fd(link, &Message::Stop);
                        }
                        Err(reason) => {
                            let _ = link::send_fd(link, &Message::Refused(reason));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                    self.retire(child, "the probation passed");
                }
                Ok(None) | Err(_) => break,
            }
        }
        drop(reader);
        // A child that had a successor of its own retired after its drain; one that had none
        // has left nobody serving after it.
        let had_successor = std::mem::take(&mut self.lineage().descendants) > 1;
        self.report_descendants();
        // A rolled-back successor stops gracefully and ends here only once it has exited.
        let status = sys::wait_child(child);
        let on_probation = *self.state() == (State::Probation { successor: child });
        if on_probation && !child_stopping {
            // It left its own group at ready(); what it started before (a wrapper's other
            // children) may still be there, holding the sockets.
            sys::kill_group(child);
            let reason = match &status {
                Ok(status) => format!("pid {child} ended during its probation: {status}"),
                Err(err) => format!("pid {child} ended during its probation (not reaped: {err})"),
            };
            if let Err(why_not) = self.roll_back(child, &reason) {
                tracing::error!(
                    pid = self.pid,
                    child_pid = child,
                    reason,
                    why_not,
                    "the new generation died during its probation, and this one cannot take \
                     the service back"
                );
                self.retire(child, "the new generation died and no rollback is possible");
            }
            return;
        }
        self.retire(child, "the new generation has exited");
        match (had_successor, status) {
            (true, Ok(status)) => tracing::warn!(
                pid = self.pid,
                child_pid = child,
                %status,
                "the next generation, itself replaced, exited before this one: the count of \
                 generations alive no longer includes its successors"
            ),
            (false, Ok(status)) if child_stopping => tracing::info!(
                pid = self.pid,
                child_pid = child,
                %status,
                "the generation that replaced this one has stopped"
            ),
            (false, Ok(status)) => tracing::error!(
                pid = self.pid,
                child_pid = child,
                %status,
                "the generation that replaced this one has exited while this one still runs"
            ),
            (_, Err(err)) => tracing::debug!(child_pid = child, %err, "cannot reap the successor"),
        }
    }

    fn report_descendants(&self) {
        let lineage = self.lineage();
        if let (true, Some(link)) = (lineage.parent_alive, &self.parent_link) {
            // A parent that has just gone cannot be told; its exit is noticed separately.
            let _ = link::send(link, &Message::Descendants(lineage.descendants));
        }
    }

    /// The oldest living generation finishes when there are too many.
    fn check_generations(&self) {
        let lineage = self.lineage();
        let alive = 1 + lineage.descendants;
        if lineage.parent_alive || alive <= self.config.max_generations {
            return;
        }
        drop(lineage);
        if let State::Probation { successor } = *self.state() {
            self.retire(successor, "too many generations are alive");
        }
        if self.finish_requested.set() {
            tracing::warn!(
                pid = self.pid,
                alive,
                max = self.config.max_generations,
                "too many generations alive; the oldest, this one, must finish now"
            );
        }
    }
}

fn inet_family(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_before_anything_is_taken() {
        let err = Upgrader::builder().max_generations(0).build().unwrap_err();
        assert!(err.to_string().contains("max_generations(0)"), "{err}");
        let err = Upgrader::builder()
            .upgrade_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("upgrade_timeout"), "{err}");
        let err = Upgrader::builder().listen_backlog(0).build().unwrap_err();
        assert!(err.to_string().contains("listen_backlog(0)"), "{err}");
        assert!(!CREATED.load(Ordering::SeqCst));
    }
}
