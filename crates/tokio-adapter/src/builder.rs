//! Configuring and installing the process's handle.
//!
//! Invariants:
//! - Signal handlers are registered before anything is taken: if one cannot be installed, the
//!   process's inherited descriptors are still unclaimed. They are installed when the handle
//!   is, so always before `ready()`: a deploy that signals the new pid as soon as the PID file
//!   names it never hits the default action of SIGHUP, which is to terminate.
//! - The control socket, if any, is registered with the upgrader when the handle is installed,
//!   so that it is inherited like any listener and each generation answers on it while it
//!   serves.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use graceful_core::{Error, Result, Upgrader};
use tokio::signal::unix::{SignalKind, signal};

use crate::handle::Graceful;
use crate::signals;

/// How long a replaced generation can take the service back by default; see
/// [`Builder::probation`].
const DEFAULT_PROBATION: Duration = Duration::from_secs(5);

/// Configures and installs the process's [`Graceful`] handle, for servers that need more than
/// the defaults.
///
/// ```no_run
/// use std::time::Duration;
/// use tokio::signal::unix::SignalKind;
///
/// # async fn run() -> Result<(), graceful_tokio::Error> {
/// graceful_tokio::Builder::new()
///     .pid_file("/run/my-server.pid")
///     .upgrade_timeout(Duration::from_secs(30))
///     .upgrade_signal(Some(SignalKind::user_defined2()))
///     .install()?;
/// let listener = graceful_tokio::listen("127.0.0.1:8080").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct Builder {
    core: graceful_core::Builder,
    upgrade_signal: Option<SignalKind>,
    stop_signals: Vec<SignalKind>,
    control_socket: Option<PathBuf>,
    explicit_ready: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            core: Upgrader::builder().probation(DEFAULT_PROBATION),
            upgrade_signal: Some(SignalKind::hangup()),
            stop_signals: vec![SignalKind::terminate(), SignalKind::interrupt()],
            control_socket: None,
            explicit_ready: false,
        }
    }
}

impl Builder {
    /// The defaults: SIGHUP upgrades, SIGTERM and SIGINT stop gracefully, a 5 s probation,
    /// listeners report readiness when first polled, and the defaults of
    /// [`graceful_core::Builder`].
    pub fn new() -> Builder {
        Builder::default()
    }

    /// See [`graceful_core::Builder::upgrade_timeout`].
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.core = self.core.upgrade_timeout(timeout);
        self
    }

    /// See [`graceful_core::Builder::pid_file`].
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.core = self.core.pid_file(path);
        self
    }

    /// See [`graceful_core::Builder::executable`].
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.core = self.core.executable(path);
        self
    }

    /// See [`graceful_core::Builder::max_generations`].
    pub fn max_generations(mut self, max: usize) -> Self {
        self.core = self.core.max_generations(max);
        self
    }

    /// How long a replaced generation keeps its listeners, paused, and takes the service back
    /// if its successor dies: it accepts again, rewrites the PID file and is the service's
    /// main pid again. Default: 5 s, long enough to catch a new build that crashes on its
    /// first requests or at its first timer, short enough that frequent deploys do not pile
    /// up processes (a newer upgrade ends the window early, and so does a stop).
    /// `Duration::ZERO` turns it off. See [`graceful_core::Builder::probation`].
    ///
    /// The cost: a replaced process lives at least this long, with its memory. What it buys:
    /// a successor that dies after reporting ready refuses no connection.
    pub fn probation(mut self, window: Duration) -> Self {
        self.core = self.core.probation(window);
        self
    }

    /// Listeners wait until the application calls [`ready`](crate::ready) (default: a
    /// listener first polled before `ready()` reports readiness itself, so that
    /// `axum::serve(graceful::listen(..).await?, app)` upgrades as written). For servers that
    /// warm up after their accept loop has started.
    pub fn explicit_ready(mut self) -> Self {
        self.explicit_ready = true;
        self
    }

    /// The application's version, reported with each upgrade: usually
    /// `env!("CARGO_PKG_VERSION")`. See [`graceful_core::Builder::version`].
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.core = self.core.version(version);
        self
    }

    /// The build id reported with the version; by default a fingerprint of the executable
    /// file. See [`graceful_core::Builder::build_id`].
    pub fn build_id(mut self, id: impl Into<String>) -> Self {
        self.core = self.core.build_id(id);
        self
    }

    /// Keep the listeners this process binds in systemd's file descriptor store, for a unit
    /// with `FileDescriptorStoreMax=max`, under systemd older than 254 (newer ones say so
    /// themselves through `$FDSTORE`, and the store is used without this setting). See
    /// [`graceful_core::Builder::fd_store_max`].
    pub fn fd_store_max(mut self, max: usize) -> Self {
        self.core = self.core.fd_store_max(max);
        self
    }

    /// See [`graceful_core::Builder::listen_backlog`].
    pub fn listen_backlog(mut self, backlog: u32) -> Self {
        self.core = self.core.listen_backlog(backlog);
        self
    }

    /// The signal that starts an upgrade (default SIGHUP); `None` for none, when upgrades are
    /// triggered with [`Graceful::upgrade`] only.
    pub fn upgrade_signal(mut self, signal: Option<SignalKind>) -> Self {
        self.upgrade_signal = signal;
        self
    }

    /// The signals that stop the server gracefully, without a successor (default SIGTERM and
    /// SIGINT). A second one cuts the drain short.
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = SignalKind>) -> Self {
        self.stop_signals = signals.into_iter().collect();
        self
    }

    /// A Unix socket at `path` on which `upgrade` requests are answered with the outcome, for
    /// `systemctl reload` and deploy scripts, which a signal cannot tell whether the upgrade
    /// worked; see [`control`](crate::control). Default: none.
    ///
    /// The socket is inherited across upgrades like any listener, so whichever generation
    /// serves answers on it. When graceful creates it, its mode is 0600: only the server's user
    /// may upgrade it. A socket file left behind by a process that has gone is replaced.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Takes over from the server answering on the control socket at `path`, if one serves
    /// there: this process, which that server did not start (a second instance of a systemd
    /// template unit, a container entrypoint sharing a volume with the running one), receives
    /// its listening sockets, adopts them as an upgrade's new generation would, and serves
    /// once ready; only then does the running server stop accepting and drain, with its
    /// probation. Nothing at `path` is a first start: the sockets are bound. See
    /// [`graceful_core::Builder::takeover`].
    ///
    /// Give the same path to [`control_socket`](Self::control_socket) so that this process
    /// answers there once it serves: the running server's control socket is among the sockets
    /// taken over, and a later process can take over from this one the same way.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), graceful_tokio::Error> {
    /// let path = "/run/my-server/control.sock";
    /// graceful_tokio::Builder::new()
    ///     .takeover(path)
    ///     .control_socket(path)
    ///     .install()?;
    /// let listener = graceful_tokio::listen("127.0.0.1:8080").await?; // the running server's
    /// # Ok(())
    /// # }
    /// ```
    pub fn takeover(mut self, path: impl Into<PathBuf>) -> Self {
        self.core = self.core.takeover(path);
        self
    }

    /// Installs the process's handle and its signal handlers, and starts answering on the
    /// control socket if there is one; returns the handle.
    ///
    /// Must be called inside a Tokio runtime, before any other function of this crate.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyCreated`] if a handle was installed already (perhaps with the defaults,
    /// by an earlier `listen`), or an installation was tried and failed (the first error is
    /// what [`Graceful::get`] and the free functions return); the errors of [`graceful_core::Builder::build`]; an
    /// [`Error::Io`] when there is no runtime or a signal handler cannot be installed; the
    /// errors of [`Upgrader::unix_listener`] for the control socket. After an error about the
    /// control socket, this process's upgrader is spent: exit with the error.
    pub fn install(self) -> Result<Graceful> {
        crate::global::install(|| self.build())
    }

    /// Builds the handle and starts its signal tasks and control socket; `install` makes it the
    /// process's.
    pub(crate) fn build(self) -> std::result::Result<Graceful, Failed> {
        let untouched = |error| Failed {
            error,
            spent: false,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Io {
                context: "graceful must be installed inside a Tokio runtime",
                source: io::Error::other("no Tokio runtime is running on this thread"),
            })
            .map_err(untouched)?;
        let _entered = runtime.enter();
        // Register the handlers first: if one cannot be installed, no upgrader is consumed.
        let upgrade_signal = self
            .upgrade_signal
            .map(|kind| {
                signal(kind).map_err(|e| Error::io("installing the upgrade signal handler", e))
            })
            .transpose()
            .map_err(untouched)?;
        let stop_signals = self
            .stop_signals
            .iter()
            .map(|&kind| signal(kind).map_err(|e| Error::io("installing a stop signal handler", e)))
            .collect::<Result<Vec<_>>>()
            .map_err(untouched)?;

        let spent = |error| Failed { error, spent: true };
        let graceful = Graceful::new(self.core.build().map_err(spent)?, self.explicit_ready);
        if let Some(path) = &self.control_socket {
            crate::control::server::serve(&graceful, path).map_err(spent)?;
        }
        signals::spawn(&runtime, &graceful, upgrade_signal, stop_signals);
        Ok(graceful)
    }
}

/// Why a handle could not be built, and whether the attempt spent the process's upgrader (its
/// inherited descriptors were taken): only then is the failure final.
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) spent: bool,
}
