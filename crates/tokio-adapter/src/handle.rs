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
//!   changes nothing for the running server. After a rollback it is pending again: futures
//!   made from then on wait for the next upgrade.
//! - Listeners accept only through the gate (`gate.rs`): from readiness until a successor
//!   serves; they pause during the successor's probation and resume after a rollback.
//! - A stop wins over an upgrade: one in flight is cancelled and its process group killed, and
//!   no wait of this handle depends on the upgrade's thread, so a second stop signal ends the
//!   drain at once.
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

use graceful_core::Transition;
use graceful_core::{DrainOutcome, DrainReport, Error, Result, Upgrader};
use pin_project_lite::pin_project;
use tokio::net::ToSocketAddrs;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::gate::{Accepting, Gate};
use crate::listener::{Listener, ReportReady, TcpListener, UnixListener};
use crate::tracked::{ConnectionGuard, TrackedStream};

static GLOBAL: OnceLock<Graceful> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

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

        let graceful = Graceful::new(self.core.build()?, self.explicit_ready);
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
    /// Cancelled when this process should wind down: replaced, or stopping. Replaced by a
    /// fresh token after a rollback.
    shutdown: Mutex<CancellationToken>,
    gate: Gate,
    explicit_ready: bool,
    /// Cancelled when the drain should end now: too many generations, or a second stop signal.
    finish: CancellationToken,
    stopping: AtomicBool,
    /// Set when the previous generation took the service back: it serves on, so this one
    /// does not wait for it to exit before its own exit.
    taken_back: AtomicBool,
    tracker: TaskTracker,
}

impl Graceful {
    fn new(upgrader: Upgrader, explicit_ready: bool) -> Graceful {
        let inner = Arc::new(Inner {
            upgrader,
            shutdown: Mutex::new(CancellationToken::new()),
            gate: Gate::new(),
            explicit_ready,
            finish: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            taken_back: AtomicBool::new(false),
            tracker: TaskTracker::new(),
        });
        let finish = inner.finish.clone();
        inner
            .upgrader
            .finish_requested()
            .on_set(move || finish.cancel());
        // Weak: the upgrader must not keep the handle that owns it alive.
        let weak = Arc::downgrade(&inner);
        inner.upgrader.on_transition(move |transition| {
            if let Some(inner) = weak.upgrade() {
                Graceful { inner }.on_transition(transition);
            }
        });
        let weak = Arc::downgrade(&inner);
        inner.upgrader.set_resume_check(move || {
            weak.upgrade().is_some_and(|inner| {
                !inner.stopping.load(Ordering::SeqCst) && inner.gate.listeners() > 0
            })
        });
        Graceful { inner }
    }

    fn on_transition(&self, transition: &Transition) {
        match transition {
            Transition::Replaced { .. } => {
                self.inner.gate.set(Accepting::Paused);
                self.shutdown_token().cancel();
            }
            Transition::Retired { .. } => {
                self.inner.gate.set(Accepting::Closed);
                self.shutdown_token().cancel();
            }
            Transition::RolledBack { .. } => {
                *self
                    .inner
                    .shutdown
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = CancellationToken::new();
                self.inner.gate.set(Accepting::Open);
            }
            Transition::StopRequested { .. } => {
                self.inner.taken_back.store(true, Ordering::SeqCst);
                self.stop();
            }
            _ => {}
        }
    }

    fn shutdown_token(&self) -> CancellationToken {
        self.inner
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
        let report_ready = (!self.inner.explicit_ready).then(|| {
            let graceful = self.clone();
            Arc::new(move || graceful.ready()) as ReportReady
        });
        Listener::new(
            listener,
            self.inner.gate.watch(true),
            report_ready,
            self.inner.tracker.clone(),
        )
    }

    /// A listener for the control socket: it follows the gate like the application's, but
    /// never reports readiness and does not count as one that can serve after a rollback.
    pub(crate) fn wrap_control(&self, listener: tokio::net::UnixListener) -> UnixListener {
        Listener::new(
            listener,
            self.inner.gate.watch(false),
            None,
            self.inner.tracker.clone(),
        )
    }

    /// Reports that this process serves: writes the PID file, lets the previous generation
    /// stop accepting, and opens this generation's listeners, which accept nothing before. Call
    /// it once listeners are created and the server is warmed up, or let the first listener
    /// polled call it (see [`Builder::explicit_ready`]). A second call does nothing.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::ready`]. The listeners then stay closed, so nothing accepted is dropped
    /// when the process exits with the error; the previous generation keeps serving.
    pub fn ready(&self) -> Result<()> {
        self.inner.upgrader.ready()?;
        self.inner.gate.open_if_not_ready();
        Ok(())
    }

    /// Completes when this process should wind down: a new generation is ready and serving, or
    /// a graceful stop was asked for. Servers stop their long-lived connections at their next
    /// boundary (after a complete response or message) when it does.
    ///
    /// Cancel safe, and cheap enough to call once per connection, in `tokio::select!` branches.
    pub fn upgrade_requested(&self) -> UpgradeRequested {
        UpgradeRequested {
            inner: Some(self.shutdown_token().cancelled_owned()),
        }
    }

    /// Whether [`upgrade_requested`](Self::upgrade_requested) has completed (and no rollback
    /// has happened since).
    pub fn is_upgrade_requested(&self) -> bool {
        self.inner
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_cancelled()
    }

    /// Starts the next generation now and waits until it is ready; returns its pid. What the
    /// upgrade signal does, for servers that trigger upgrades themselves.
    ///
    /// Cancel safe in the sense that dropping the future does not stop the upgrade, which runs
    /// to its end on a thread of its own. That thread is not the runtime's: shutting the
    /// runtime down never waits for an upgrade (a stop cancels it anyway).
    ///
    /// # Errors
    ///
    /// As [`Upgrader::upgrade`].
    pub async fn upgrade(&self) -> Result<u32> {
        let upgrader = self.inner.upgrader.clone();
        run_blocking("graceful-upgrade", move || upgrader.upgrade()).await
    }

    /// Asks the previous generation, on probation, to take the service back; returns its pid.
    /// This process then stops gracefully. The control socket's `rollback` request.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::rollback`].
    pub async fn rollback(&self, timeout: Duration) -> Result<u32> {
        let upgrader = self.inner.upgrader.clone();
        run_blocking("graceful-rollback", move || upgrader.rollback(timeout)).await
    }

    /// Stops gracefully without a successor: listeners end and `upgrade_requested()` completes.
    /// What the stop signals do. An upgrade in flight is cancelled (the new process and what
    /// it started are killed), and a probation ends without a rollback. The PID file is
    /// removed if it names this process, and the service manager is told (see
    /// [`Upgrader::stopping`]).
    pub fn stop(&self) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(pid = std::process::id(), "stopping gracefully");
        self.inner.upgrader.stopping();
        self.inner.gate.set(Accepting::Closed);
        self.shutdown_token().cancel();
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
        if outcome == DrainOutcome::Drained && !self.inner.taken_back.load(Ordering::SeqCst) {
            self.outlive_parent(deadline).await;
        }
        let report = DrainReport::new(open_at_start, tracker.len(), outcome, started.elapsed());
        if report.abandoned == 0 {
            tracing::info!(pid = std::process::id(), %report, "drained");
        } else {
            tracing::warn!(pid = std::process::id(), %report, "drain ended with open connections");
            graceful_core::alert(format_args!(
                "drain ended with open connections: pid {} {report}",
                std::process::id()
            ));
        }
        // Inert unless a test harness started this server.
        graceful_core::harness::report_drained(&self.inner.upgrader, &report);
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
        if self.is_upgrade_requested() {
            tracing::info!("upgrade signal ignored: this process is already replaced or stopping");
            graceful_core::alert(format_args!(
                "upgrade signal ignored: pid {} is already replaced or stopping",
                std::process::id()
            ));
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
                    | Error::AlreadyReplaced { .. }
                    | Error::Stopping { .. }),
                ) => {
                    tracing::warn!(%err, "upgrade signal ignored");
                    graceful_core::alert(format_args!("upgrade signal ignored: {err}"));
                }
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
            .field("upgrade_requested", &self.is_upgrade_requested())
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

/// Runs `work` on a thread of its own and awaits its result.
async fn run_blocking<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| Error::io("starting a thread", e))?;
    rx.await.map_err(|_| {
        Error::io(
            "the thread ended without an answer",
            io::Error::other(name.to_owned()),
        )
    })?
}

/// The installed handle for the free functions; logs the error once if graceful cannot start.
pub(crate) fn global() -> Option<Graceful> {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    match Graceful::get() {
        Ok(graceful) => Some(graceful),
        Err(err) => {
            if !REPORTED.swap(true, Ordering::SeqCst) {
                tracing::error!(%err, "graceful could not start; upgrades are unavailable");
                graceful_core::alert(format_args!(
                    "graceful could not start; upgrades are unavailable: {err}"
                ));
            }
            None
        }
    }
}
