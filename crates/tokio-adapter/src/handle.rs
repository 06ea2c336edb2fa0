//! The process's graceful handle: the upgrader, the tokens that tell the server to wind down,
//! the connection tracker, and the signal triggers.
//!
//! Invariants:
//! - There is at most one handle per process, installed explicitly with [`Builder::install`] or
//!   with the defaults by the first call that needs it.
//! - Signal handlers are installed when the handle is, so always before `ready()`: a deploy that
//!   signals the new pid as soon as the PID file names it never hits the default action of
//!   SIGHUP, which is to terminate.
//! - `upgrade_requested()` completes when this process should wind down: a new generation is
//!   ready and serving, or a graceful stop was asked for. Not at SIGHUP: an upgrade that fails
//!   changes nothing for the running server.
//! - The control socket, if any, is registered with the upgrader when the handle is installed,
//!   so that it is inherited like any listener and each generation answers on it while it serves.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use graceful_core::{Error, Result, Upgrader};
use pin_project_lite::pin_project;
use tokio::net::ToSocketAddrs;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::listener::{Listener, TcpListener, UnixListener};
use crate::tracked::{ConnectionGuard, TrackedStream};

static GLOBAL: OnceLock<Graceful> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

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
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            core: Upgrader::builder(),
            upgrade_signal: Some(SignalKind::hangup()),
            stop_signals: vec![SignalKind::terminate(), SignalKind::interrupt()],
            control_socket: None,
        }
    }
}

impl Builder {
    /// The defaults: SIGHUP upgrades, SIGTERM and SIGINT stop gracefully, and the defaults of
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

    /// Installs the process's handle and its signal handlers, and starts answering on the
    /// control socket if there is one; returns the handle.
    ///
    /// Must be called inside a Tokio runtime, before any other function of this crate.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyCreated`] if a handle was installed already (perhaps with the defaults,
    /// by an earlier `listen`); the errors of [`graceful_core::Builder::build`]; an
    /// [`Error::Io`] when there is no runtime or a signal handler cannot be installed; the
    /// errors of [`Upgrader::unix_listener`] for the control socket. After an error about the
    /// control socket, this process's upgrader is spent: exit with the error.
    pub fn install(self) -> Result<Graceful> {
        let _installing = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
        if GLOBAL.get().is_some() {
            return Err(Error::AlreadyCreated {
                pid: std::process::id(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Io {
            context: "graceful must be installed inside a Tokio runtime",
            source: io::Error::other("no Tokio runtime is running on this thread"),
        })?;
        let _entered = runtime.enter();
        // Register the handlers first: if one cannot be installed, no upgrader is consumed.
        let upgrade_signal = self
            .upgrade_signal
            .map(|kind| {
                signal(kind).map_err(|e| Error::io("installing the upgrade signal handler", e))
            })
            .transpose()?;
        let stop_signals = self
            .stop_signals
            .iter()
            .map(|&kind| signal(kind).map_err(|e| Error::io("installing a stop signal handler", e)))
            .collect::<Result<Vec<_>>>()?;

        let graceful = Graceful::new(self.core.build()?);
        if let Some(path) = &self.control_socket {
            crate::control::serve(&graceful, path)?;
        }
        if let Some(mut upgrade_signal) = upgrade_signal {
            let graceful = graceful.clone();
            runtime.spawn(async move {
                while upgrade_signal.recv().await.is_some() {
                    graceful.on_upgrade_signal();
                }
            });
        }
        for mut stop_signal in stop_signals {
            let graceful = graceful.clone();
            runtime.spawn(async move {
                while stop_signal.recv().await.is_some() {
                    graceful.on_stop_signal();
                }
            });
        }
        GLOBAL
            .set(graceful.clone())
            .unwrap_or_else(|_| unreachable!("checked under the install lock"));
        Ok(graceful)
    }
}

/// The process's graceful handle. The free functions of this crate ([`listen`](crate::listen),
/// [`ready`](crate::ready), …) call the same methods on the installed handle.
///
/// Cheap to clone; all clones are the same handle.
#[derive(Clone)]
pub struct Graceful {
    inner: Arc<Inner>,
}

struct Inner {
    upgrader: Upgrader,
    /// Cancelled when this process should wind down: replaced, or stopping.
    shutdown: CancellationToken,
    /// Cancelled when the drain should end now: too many generations, or a second stop signal.
    finish: CancellationToken,
    stopping: AtomicBool,
    tracker: TaskTracker,
}

impl Graceful {
    fn new(upgrader: Upgrader) -> Graceful {
        let inner = Inner {
            upgrader,
            shutdown: CancellationToken::new(),
            finish: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            tracker: TaskTracker::new(),
        };
        let shutdown = inner.shutdown.clone();
        inner.upgrader.replaced().on_set(move || shutdown.cancel());
        let finish = inner.finish.clone();
        inner
            .upgrader
            .finish_requested()
            .on_set(move || finish.cancel());
        Graceful {
            inner: Arc::new(inner),
        }
    }

    /// The installed handle, installing one with the defaults if there is none yet.
    ///
    /// # Errors
    ///
    /// As [`Builder::install`].
    pub fn get() -> Result<Graceful> {
        match GLOBAL.get() {
            Some(graceful) => Ok(graceful.clone()),
            None => match Builder::new().install() {
                // Another thread installed one meanwhile.
                Err(Error::AlreadyCreated { .. }) if GLOBAL.get().is_some() => {
                    Ok(GLOBAL.get().expect("just checked").clone())
                }
                other => other,
            },
        }
    }

    /// A TCP listener on `addr`: inherited from the previous generation, or bound now.
    ///
    /// `addr` may be anything tokio can resolve; its addresses are tried in order. The returned
    /// listener is a stream of tracked connections that ends when this process is replaced or
    /// stopping.
    ///
    /// # Errors
    ///
    /// [`Error::Create`] when the address cannot be resolved or bound (in use, permission
    /// denied); [`Error::Mismatch`] when the inherited socket is not the asked one;
    /// [`Error::AlreadyRegistered`] when the address was asked for before.
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<TcpListener> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| Error::Create {
                what: "a TCP listener (the address does not resolve)".into(),
                source,
            })?
            .collect();
        let mut last_error = None;
        for addr in addrs {
            match self.inner.upgrader.tcp_listener(addr) {
                Ok(listener) => {
                    listener
                        .set_nonblocking(true)
                        .map_err(|e| Error::io("making the listener non-blocking", e))?;
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| Error::io("registering the listener with tokio", e))?;
                    return Ok(self.wrap(listener));
                }
                Err(err @ Error::Create { .. }) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Create {
            what: "a TCP listener".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolves to nothing",
            ),
        }))
    }

    /// The TCP listener that the service manager passed under `name` (a socket unit's
    /// `FileDescriptorName=`), and, after an upgrade, the same socket inherited from the
    /// previous generation; see [`Upgrader::tcp_listener_named`].
    ///
    /// [`listen`](Self::listen) adopts a passed socket too, found by its address, and binds
    /// one when nothing was passed; this asks for the socket unit's socket only.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::tcp_listener_named`].
    pub async fn listen_named(&self, name: &str) -> Result<TcpListener> {
        let listener = self.inner.upgrader.tcp_listener_named(name)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("registering the listener with tokio", e))?;
        Ok(self.wrap(listener))
    }

    /// A Unix stream listener on `path`: inherited from the previous generation, or bound now.
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen).
    pub async fn listen_unix(&self, path: impl AsRef<Path>) -> Result<UnixListener> {
        let listener = self.inner.upgrader.unix_listener(path)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io("registering the listener with tokio", e))?;
        Ok(self.wrap(listener))
    }

    fn wrap<L: crate::listener::Accept>(&self, listener: L) -> Listener<L> {
        Listener::new(
            listener,
            self.inner.shutdown.clone().cancelled_owned(),
            self.inner.tracker.clone(),
        )
    }

    /// Reports that this process serves: writes the PID file and lets the previous generation
    /// stop accepting. Call it once listeners are created and the server is warmed up. A second
    /// call does nothing.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::ready`].
    pub fn ready(&self) -> Result<()> {
        self.inner.upgrader.ready()
    }

    /// Completes when this process should wind down: a new generation is ready and serving, or
    /// a graceful stop was asked for. Servers stop their long-lived connections at their next
    /// boundary (after a complete response or message) when it does.
    ///
    /// Cancel safe, and cheap enough to call once per connection, in `tokio::select!` branches.
    pub fn upgrade_requested(&self) -> UpgradeRequested {
        UpgradeRequested {
            inner: Some(self.inner.shutdown.clone().cancelled_owned()),
        }
    }

    /// Whether [`upgrade_requested`](Self::upgrade_requested) has completed.
    pub fn is_upgrade_requested(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Starts the next generation now and waits until it is ready; returns its pid. What the
    /// upgrade signal does, for servers that trigger upgrades themselves.
    ///
    /// Cancel safe in the sense that dropping the future does not stop the upgrade, which runs
    /// to its end on a blocking thread.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::upgrade`].
    pub async fn upgrade(&self) -> Result<u32> {
        let upgrader = self.inner.upgrader.clone();
        tokio::task::spawn_blocking(move || upgrader.upgrade())
            .await
            .map_err(|e| Error::io("the upgrade task failed", io::Error::other(e)))?
    }

    /// Stops gracefully without a successor: listeners end and `upgrade_requested()` completes.
    /// What the stop signals do. The PID file is removed if it names this process, and the
    /// service manager is told (see [`Upgrader::stopping`]).
    pub fn stop(&self) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(pid = std::process::id(), "stopping gracefully");
        self.inner.upgrader.stopping();
        self.inner.shutdown.cancel();
        if let Err(err) = self.inner.upgrader.remove_pid_file() {
            tracing::warn!(%err, "cannot remove the PID file");
        }
    }

    /// Tracks a connection that did not come from a graceful listener, so that
    /// [`drain`](Self::drain) waits for it too.
    pub fn track<S>(&self, io: S) -> TrackedStream<S> {
        TrackedStream::new(io, ConnectionGuard::new(self.inner.tracker.token()))
    }

    /// How many tracked connections are open.
    pub fn connections(&self) -> usize {
        self.inner.tracker.len()
    }

    /// Waits until every tracked connection is closed, for `timeout` at most, and reports how
    /// many were still open when it gave up. Cut short when this process is the oldest of too
    /// many generations, or by a second stop signal.
    ///
    /// A replaced generation whose own parent is still draining then also waits, within the
    /// same `timeout`, until that parent has exited: generations retire oldest first, which
    /// keeps the count of generations alive exact.
    ///
    /// Call it after the listener has ended; then return from `main`, which closes whatever
    /// was abandoned.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let tracker = &self.inner.tracker;
        let open_at_start = tracker.len();
        tracker.close();
        let outcome = tokio::select! {
            biased;
            () = tracker.wait() => DrainOutcome::Drained,
            () = self.inner.finish.cancelled() => DrainOutcome::CutShort,
            () = tokio::time::sleep_until(deadline) => DrainOutcome::Deadline,
        };
        if outcome == DrainOutcome::Drained {
            self.outlive_parent(deadline).await;
        }
        let report = DrainReport {
            open_at_start,
            abandoned: tracker.len(),
            outcome,
            elapsed: started.elapsed(),
        };
        if report.abandoned == 0 {
            tracing::info!(pid = std::process::id(), %report, "drained");
        } else {
            tracing::warn!(pid = std::process::id(), %report, "drain ended with open connections");
        }
        // Inert unless a test harness started this server.
        let outcome = format!("{:?}", report.outcome);
        self.inner
            .upgrader
            .report_drained(report.open_at_start, report.abandoned, &outcome);
        report
    }

    /// A replaced generation exits after its parent, within its own deadline, so that the
    /// generations alive stay one chain that the oldest can count (see
    /// [`Upgrader::parent_exited`]).
    async fn outlive_parent(&self, deadline: tokio::time::Instant) {
        let upgrader = &self.inner.upgrader;
        if upgrader.parent_pid().is_none() || upgrader.parent_exited().is_set() {
            return;
        }
        tracing::info!(
            pid = upgrader.pid(),
            parent_pid = upgrader.parent_pid(),
            "drained; waiting for the previous generation to exit first"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        upgrader.parent_exited().on_set(move || {
            let _ = tx.send(());
        });
        tokio::select! {
            _ = rx => {}
            () = self.inner.finish.cancelled() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// The runtime-agnostic upgrader underneath, for what this crate does not wrap (UDP
    /// sockets, named files).
    pub fn upgrader(&self) -> &Upgrader {
        &self.inner.upgrader
    }

    fn on_upgrade_signal(&self) {
        if self.inner.shutdown.is_cancelled() {
            tracing::info!("upgrade signal ignored: this process is already replaced or stopping");
            return;
        }
        tracing::info!(pid = std::process::id(), "upgrade signal received");
        let graceful = self.clone();
        tokio::spawn(async move {
            match graceful.upgrade().await {
                Ok(pid) => tracing::info!(successor = pid, "upgraded; winding down"),
                Err(
                    err @ (Error::UpgradeInProgress { .. }
                    | Error::NotReady { .. }
                    | Error::AlreadyReplaced { .. }),
                ) => tracing::warn!(%err, "upgrade signal ignored"),
                // The upgrader has logged the failure; the server keeps serving.
                Err(_) => {}
            }
        });
    }

    fn on_stop_signal(&self) {
        if self.inner.stopping.load(Ordering::SeqCst) {
            tracing::warn!("second stop signal: ending the drain now");
            self.inner.finish.cancel();
        } else {
            self.stop();
        }
    }
}

impl fmt::Debug for Graceful {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graceful")
            .field("upgrader", &self.inner.upgrader)
            .field("upgrade_requested", &self.inner.shutdown.is_cancelled())
            .field("connections", &self.inner.tracker.len())
            .finish()
    }
}

pin_project! {
    /// Completes when this process should wind down; see [`Graceful::upgrade_requested`].
    #[must_use = "futures do nothing unless polled"]
    pub struct UpgradeRequested {
        #[pin]
        inner: Option<WaitForCancellationFutureOwned>,
    }
}

impl UpgradeRequested {
    /// A future that never completes: graceful could not start, so nothing will ask.
    pub(crate) fn never() -> UpgradeRequested {
        UpgradeRequested { inner: None }
    }
}

impl Future for UpgradeRequested {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().inner.as_pin_mut() {
            Some(cancelled) => cancelled.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl fmt::Debug for UpgradeRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeRequested").finish_non_exhaustive()
    }
}

/// What [`Graceful::drain`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Tracked connections open when the drain began.
    pub open_at_start: usize,
    /// Tracked connections still open when it ended.
    pub abandoned: usize,
    /// Why it ended.
    pub outcome: DrainOutcome,
    /// How long it took.
    pub elapsed: Duration,
}

impl DrainReport {
    pub(crate) fn empty() -> DrainReport {
        DrainReport {
            open_at_start: 0,
            abandoned: 0,
            outcome: DrainOutcome::Drained,
            elapsed: Duration::ZERO,
        }
    }
}

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// Every tracked connection closed.
    Drained,
    /// The timeout ran out.
    Deadline,
    /// Too many generations were alive, or a second stop signal came.
    CutShort,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.outcome {
            DrainOutcome::Drained => "all connections closed",
            DrainOutcome::Deadline => "deadline reached",
            DrainOutcome::CutShort => "cut short",
        };
        write!(
            f,
            "{} of {} connections closed in {:?} ({why}), {} abandoned",
            self.open_at_start.saturating_sub(self.abandoned),
            self.open_at_start,
            self.elapsed,
            self.abandoned
        )
    }
}

/// The installed handle for the free functions; logs the error once if graceful cannot start.
pub(crate) fn global() -> Option<Graceful> {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    match Graceful::get() {
        Ok(graceful) => Some(graceful),
        Err(err) => {
            if !REPORTED.swap(true, Ordering::SeqCst) {
                tracing::error!(%err, "graceful could not start; upgrades are unavailable");
            }
            None
        }
    }
}
