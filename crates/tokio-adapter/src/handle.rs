//! The process's graceful handle: the upgrader, the tokens that tell the server to wind down,
//! the gate its listeners accept through, and the connection tracker.
//!
//! Invariants:
//! - `upgrade_requested()` completes when this process should wind down: a new generation is
//!   ready and serving, or a graceful stop was asked for. Not at SIGHUP: an upgrade that fails
//!   changes nothing for the running server. After a rollback it is pending again: futures
//!   made from then on wait for the next upgrade.
//! - Listeners accept, and UDP sockets receive, only through the gate (`gate.rs`): from
//!   readiness until a successor serves; they pause during the successor's probation and
//!   resume after a rollback.
//! - A stop wins over an upgrade: one in flight is cancelled and its process group killed, and
//!   no wait of this handle depends on the upgrade's thread, so a second stop signal ends the
//!   drain at once.
//! - The upgrader does not keep the handle alive: its observers hold it weakly.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use graceful_core::{Error, Result, Successor, Transition, Upgrader};
use pin_project_lite::pin_project;
use tokio::net::ToSocketAddrs;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::gate::{Accepting, Gate};
use crate::listener::{Listener, ReportReady, TcpListener, UnixListener};
use crate::tracked::{ConnectionGuard, TrackedStream};
use crate::udp::UdpSocket;

/// The process's graceful handle. The free functions of this crate ([`listen`](crate::listen),
/// [`ready`](crate::ready), …) call the same methods on the installed handle.
///
/// Cheap to clone; all clones are the same handle.
#[derive(Clone)]
pub struct Graceful {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) upgrader: Upgrader,
    /// Cancelled when this process should wind down: replaced, or stopping. Replaced by a
    /// fresh token after a rollback.
    shutdown: Mutex<CancellationToken>,
    gate: Gate,
    explicit_ready: bool,
    /// Cancelled when the drain should end now: too many generations, or a second stop signal.
    pub(crate) finish: CancellationToken,
    stopping: AtomicBool,
    /// Set when the previous generation took the service back: it serves on, so this one
    /// does not wait for it to exit before its own exit.
    pub(crate) taken_back: AtomicBool,
    pub(crate) tracker: TaskTracker,
    pub(crate) handoffs: crate::handoff::HandOffs,
    /// Cancelled when the previous generation no longer reads from the sockets both hold
    /// ([`Upgrader::predecessor_paused`]).
    predecessor_paused: tokio_util::sync::CancellationToken,
}

impl Graceful {
    pub(crate) fn new(upgrader: Upgrader, explicit_ready: bool) -> Graceful {
        let inner = Arc::new(Inner {
            upgrader,
            shutdown: Mutex::new(CancellationToken::new()),
            gate: Gate::new(),
            explicit_ready,
            finish: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            taken_back: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            handoffs: crate::handoff::HandOffs::default(),
            predecessor_paused: tokio_util::sync::CancellationToken::new(),
        });
        let paused = inner.predecessor_paused.clone();
        inner
            .upgrader
            .predecessor_paused()
            .on_set(move || paused.cancel());
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
                self.inner.handoffs.forget_successor();
                self.inner.handoffs.successor_ready(&self.inner.upgrader);
                self.inner.gate.set(Accepting::Paused);
                self.shutdown_token().cancel();
            }
            Transition::Retired { .. } => {
                self.inner.gate.set(Accepting::Closed);
                self.shutdown_token().cancel();
            }
            Transition::RolledBack { .. } => {
                self.inner.handoffs.forget_successor();
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

    /// The process's installed handle.
    ///
    /// Nothing is installed by asking: [`Builder::install`](crate::Builder::install) installs
    /// the handle, and so does the first [`listen`](crate::listen) (or `listen_named`,
    /// `listen_unix`, [`udp`](crate::udp())) with the defaults.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when nothing installed the handle, or when its installation
    /// failed (the reason is the first error, remembered).
    pub fn get() -> Result<Graceful> {
        crate::global::installed()
    }

    /// Completes once this generation has reported ready, by [`ready`](Self::ready) or by the
    /// first listener polled. Cancel safe.
    pub async fn ready_reported(&self) {
        self.inner.gate.reported_ready().await;
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

    /// A UDP socket bound to `addr`: inherited from the previous generation, or bound now.
    ///
    /// `addr` may be anything tokio can resolve; its addresses are tried in order. Port 0 binds
    /// a free port, and the next generation asking for port 0 on the same IP gets the same
    /// socket back. The socket receives only while this generation serves, like a listener
    /// accepts; see [`UdpSocket`].
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen): [`Error::Create`], [`Error::Mismatch`] (the inherited
    /// socket is not a UDP socket bound to `addr`), [`Error::AlreadyRegistered`].
    pub async fn udp(&self, addr: impl ToSocketAddrs) -> Result<UdpSocket> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| Error::Create {
                what: "a UDP socket (the address does not resolve)".into(),
                source,
            })?
            .collect();
        let mut last_error = None;
        for addr in addrs {
            match self.inner.upgrader.udp_socket(addr) {
                Ok(socket) => {
                    socket
                        .set_nonblocking(true)
                        .map_err(|e| Error::io("making the UDP socket non-blocking", e))?;
                    let socket = tokio::net::UdpSocket::from_std(socket)
                        .map_err(|e| Error::io("registering the UDP socket with tokio", e))?;
                    return Ok(UdpSocket::new(
                        socket,
                        self.inner.gate.watch(true),
                        self.report_ready(),
                    )
                    .after(self.inner.predecessor_paused.clone()));
                }
                Err(err @ Error::Create { .. }) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Create {
            what: "a UDP socket".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolves to nothing",
            ),
        }))
    }

    fn wrap<L: crate::listener::Accept>(&self, listener: L) -> Listener<L> {
        Listener::new(
            listener,
            self.inner.gate.watch(true),
            self.report_ready(),
            self.inner.tracker.clone(),
        )
    }

    /// What a listener or UDP socket calls to report readiness itself, unless the application
    /// does.
    fn report_ready(&self) -> Option<ReportReady> {
        (!self.inner.explicit_ready).then(|| {
            let graceful = self.clone();
            Arc::new(move || graceful.ready()) as ReportReady
        })
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
    /// polled call it (see [`Builder::explicit_ready`](crate::Builder::explicit_ready)). A
    /// second call does nothing.
    ///
    /// # Errors
    ///
    /// As [`Upgrader::ready`]. The listeners then stay closed, so nothing accepted is dropped
    /// when the process exits with the error; the previous generation keeps serving.
    pub fn ready(&self) -> Result<()> {
        let first = !self.inner.upgrader.is_ready();
        self.inner.upgrader.ready()?;
        self.inner.gate.open_if_not_ready();
        if first {
            self.start_receiving();
        }
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

    /// [`upgrade`](Self::upgrade), and what the new generation runs: its pid, generation and
    /// build identity. The control socket's `upgrade` request answers with it.
    ///
    /// Cancel safe as [`upgrade`](Self::upgrade).
    ///
    /// # Errors
    ///
    /// As [`Upgrader::upgrade`].
    pub async fn upgrade_identified(&self) -> Result<Successor> {
        let upgrader = self.inner.upgrader.clone();
        run_blocking("graceful-upgrade", move || upgrader.upgrade_identified()).await
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

    /// Whether [`stop`](Self::stop) has been called (by a stop signal, or the application).
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Ends the drain now: a second stop signal.
    pub(crate) fn finish_now(&self) {
        self.inner.finish.cancel();
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

    /// The runtime-agnostic upgrader underneath, for what this crate does not wrap (named
    /// files).
    pub fn upgrader(&self) -> &Upgrader {
        &self.inner.upgrader
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
pub(crate) async fn run_blocking<T: Send + 'static>(
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
