//! The upgrader: one per process, it owns the inherited descriptors and performs upgrades.
//! This module keeps its state machine; `builder.rs` builds it, `sockets.rs` hands out its
//! sockets, `successor.rs` starts the next generation, `lineage.rs` watches the generations
//! before and after this one.
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
//! Probation (off unless [`Builder::probation`](crate::Builder::probation) sets it): the
//! successor serves, and this generation stops accepting but keeps its sockets, able to take
//! the service back; its two ways out, retired or rolled back, are in `upgrader/probation.rs`.
//!
//! Stop versus upgrade: [`Upgrader::stopping`] wins. An upgrade in flight is cancelled (the new
//! process and its process group are killed and reaped) and a probation ends at once; no later
//! upgrade starts. The `stopping` flag is read and written under the `state` lock, so that a
//! stop and an upgrade never both win.
//!
//! Under a service manager (`NOTIFY_SOCKET` set), each transition is reported as `notify.rs`
//! describes; the report of a successful upgrade is sent before `upgrade()` returns, so the old
//! process cannot exit before the manager has been told which pid is the service now.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::identity::{BuildIdentity, Successor};
use crate::lineage::{self, Generation, Lineage};
use crate::link::{self, Message, Reader};
use crate::notify::{self, Notifier};
use crate::pidfile;
use crate::registry::Registry;
use crate::report::{self, Report};
use crate::spawn::Setup;
use crate::successor::{self, Next};
use crate::sys;

mod handoff;
mod probation;
pub(crate) mod takeover;

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

/// What a build hands to the upgrader it creates.
pub(crate) struct Parts {
    pub(crate) pid: u32,
    pub(crate) parent_pid: Option<u32>,
    pub(crate) generation: u64,
    /// The process group to move back into once ready (`GRACEFUL_PGID`, the parent's).
    pub(crate) join_pgid: Option<i32>,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    /// The harness's report channel, claimed from the registry.
    pub(crate) report: report::Channel,
    /// Our end of the link to the parent, if started by an upgrade.
    pub(crate) parent_link: Option<OwnedFd>,
    /// Our end of the hand-off channel to the parent, if it opened one.
    pub(crate) parent_handoff: Option<OwnedFd>,
    /// A takeover to confirm at `ready` (`upgrader/takeover.rs`), if this process took its
    /// sockets over from a running server.
    pub(crate) takeover: Option<takeover::Pending>,
}

/// The settings an upgrader runs with, resolved by the build.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) upgrade_timeout: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) executable: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) max_generations: usize,
    pub(crate) backlog: sys::Backlog,
    pub(crate) probation: Duration,
    /// What this generation runs, told to the parent before `ready`.
    pub(crate) build: BuildIdentity,
}

type Observer = Arc<dyn Fn(&Transition) + Send + Sync>;
type ResumeCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The upgrader's state, shared by its handles and its watcher threads.
pub(crate) struct Inner {
    pid: u32,
    parent_pid: Option<u32>,
    generation: u64,
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
    registry: Mutex<Registry>,
    lineage: Lineage,
    notifier: Notifier,
    /// This process's end of the harness's report channel, claimed at build; inert unless a
    /// harness started the server.
    report: report::Channel,
    replaced: Event,
    handoffs: handoff::HandOffs,
    takeover: takeover::Confirmation,
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

impl Upgrader {
    /// Creates the upgrader of a build, and starts watching the parent through
    /// `parent_reader`, a duplicate of the link to it.
    pub(crate) fn from_parts(parts: Parts, parent_reader: Option<OwnedFd>) -> Result<Upgrader> {
        let inner = Arc::new(Inner {
            pid: parts.pid,
            parent_pid: parts.parent_pid,
            generation: parts.generation,
            join_pgid: parts.join_pgid,
            config: parts.config,
            state: Mutex::new(State::Starting),
            stopping: AtomicBool::new(false),
            observers: Mutex::new(Vec::new()),
            resume_check: Mutex::new(None),
            starting_link: Mutex::new(None),
            registry: Mutex::new(parts.registry),
            lineage: Lineage::new(parts.parent_link),
            notifier: Notifier::from_env(|key| std::env::var_os(key)),
            report: parts.report,
            replaced: Event::new(),
            handoffs: handoff::HandOffs::new(parts.parent_handoff),
            takeover: takeover::Confirmation::new(parts.takeover),
        });
        // A parent that opened no hand-off channel is of a build that never says `paused`;
        // a process without a parent has nobody to wait for.
        if !inner.handoffs.has_parent() {
            inner.lineage.parent_paused().set();
        }
        if let Some(reader) = parent_reader {
            lineage::start_parent_watcher(inner.clone(), reader)
                .map_err(|e| Error::io("starting the parent watcher thread", e))?;
        }
        Ok(Upgrader { inner })
    }

    /// The shared state, for the modules that extend the upgrader.
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Sends `report` to the harness that started this server, if one did.
    pub(crate) fn report(&self, report: &Report) {
        self.inner.report.send(report);
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
    /// not told, so it keeps serving; `ready` may be called again. After a
    /// [`takeover`](crate::Builder::takeover), [`Error::Takeover`] if the server taken over
    /// from did not yield (it gave up waiting, or stopped): it serves on, and this process
    /// must exit; `ready` fails the same way from then on.
    pub fn ready(&self) -> Result<()> {
        let inner = &self.inner;
        let mut state = inner.state();
        if *state != State::Starting {
            return Ok(());
        }
        inner.takeover.check_not_failed()?;
        // After a takeover, once the previous generation has yielded (`confirm` writes it).
        if let Some(path) = inner
            .config
            .pid_file
            .as_ref()
            .filter(|_| !inner.takeover.is_pending())
        {
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
            inner.report.unclaimed(inner.pid, &name);
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
        if let Some(takes) = inner.handoffs.announcement() {
            if let Some(Err(err)) = inner.lineage.tell_parent(&takes) {
                tracing::debug!(%err, "cannot announce the connections this generation takes");
            }
        }
        // What this generation runs, for the parent to report; a parent of an older version
        // ignores the line. A failure to send shows in the `ready` that follows.
        let _ = inner
            .lineage
            .tell_parent(&Message::Build(inner.config.build.clone()));
        let told = if inner.takeover.is_pending() {
            inner.confirm_takeover()?;
            Some(Ok(()))
        } else {
            inner.lineage.tell_parent(&Message::Ready)
        };
        if let Some(Err(err)) = &told {
            tracing::warn!(
                pid = inner.pid,
                parent_pid = inner.parent_pid,
                %err,
                "cannot tell the previous generation that this one is ready; it has gone"
            );
        }
        if told.is_none() {
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
        self.upgrade_identified().map(|successor| successor.pid)
    }

    /// [`upgrade`](Self::upgrade), and what the new generation runs: its pid, generation and
    /// [`BuildIdentity`], as it told this process just before it was ready. A deploy checks
    /// with it that the binary it shipped is the one that serves.
    ///
    /// While it waits for the new generation under a service manager, it sends
    /// `EXTEND_TIMEOUT_USEC=` every 5 s, so that the reload's timeout does not fire before the
    /// upgrade's own (see [`upgrade`](Self::upgrade) for the rest of what is sent).
    ///
    /// # Errors
    ///
    /// As [`upgrade`](Self::upgrade).
    pub fn upgrade_identified(&self) -> Result<Successor> {
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
        let started = started.and_then(|(child, reader, build, successor)| {
            // A stop that came while the child got ready still wins.
            if inner.stopping.load(Ordering::SeqCst) {
                if let Err(err) = inner.end_child(child) {
                    tracing::warn!(child_pid = child, %err, "cannot reap the cancelled process");
                }
                return Err(Error::UpgradeCancelled { pid: inner.pid });
            }
            Ok((child, reader, build, successor))
        });
        let mut state = inner.state();
        let (child, reader, build, successor) = match started {
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
                inner.report.upgrade_failed(inner.pid, &err);
                inner.handoffs.undo_if_given(inner.pid);
                return Err(err);
            }
        };
        let probation = inner.config.probation;
        *state = State::Probation { successor: child };
        drop(state);
        inner.handoffs.set_successor(successor);
        // Stop accepting first: whoever learns of the upgrade next finds the new one serving.
        inner.emit(&Transition::Replaced { successor: child });
        // Now the successor alone reads from the shared sockets; it waits for this to read UDP.
        if let Err(err) = link::send_fd(reader.fd(), &Message::Paused) {
            tracing::debug!(child_pid = child, %err, "cannot tell the new generation that this one paused");
        }
        // Before anything lets this process stop accepting or exit: the manager must know the
        // new main pid first, or it takes this process's exit for the service's end.
        inner.notifier.send(&format!(
            "MAINPID={child}\nREADY=1\nSTATUS=Serving: pid {child}, generation {}",
            inner.generation + 1
        ));
        inner.report.send(&Report::Upgraded {
            pid: inner.pid,
            successor: child,
        });
        inner.lineage.set_descendants(1);
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
        lineage::check_generations(&**inner);
        let deadline = Instant::now() + probation;
        // The child's exit, seen directly: a wrapper's background process may hold the link.
        let reader = match sys::pidfd(child) {
            Ok(pidfd) => reader.ending_at_exit(pidfd),
            Err(err) => {
                tracing::debug!(child_pid = child, %err, "watching the new generation by its link alone");
                reader
            }
        };
        let kin = lineage::Kin::Child;
        if let Err(err) = lineage::start_child_watcher(inner.clone(), child, kin, reader, deadline)
        {
            tracing::warn!(%err, "cannot watch the new generation; its probation ends now");
            inner.retire(child, "the new generation cannot be watched");
        }
        Ok(Successor {
            pid: child,
            generation: inner.generation + 1,
            build,
        })
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

    /// What this generation runs: the version and build id it was built with (see
    /// [`Builder::version`](crate::Builder::version) and
    /// [`Builder::build_id`](crate::Builder::build_id)).
    pub fn build_identity(&self) -> &BuildIdentity {
        &self.inner.config.build
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

    /// Set when this process has been replaced for good (after the probation, if there is
    /// one): a new generation serves, and this one should stop accepting, finish its work and
    /// exit.
    pub fn replaced(&self) -> &Event {
        &self.inner.replaced
    }

    /// Set when the generation that started this one no longer accepts connections or reads
    /// datagrams (it paused as it heard this one's `ready`), or has exited; set from the start
    /// in a process without a parent, or whose parent is of a build that does not say. Until
    /// then both read from the UDP sockets they share, so a runtime adapter's UDP socket waits
    /// for it before its first read.
    pub fn predecessor_paused(&self) -> &Event {
        self.inner.lineage.parent_paused()
    }

    /// Set when the generation that started this one has exited. Never set in a process that
    /// was not started by an upgrade.
    ///
    /// A replaced generation that has finished its work should wait for this before it exits:
    /// the count of generations alive travels through each generation's link to its parent, so
    /// a generation that exits before its parent hides its successors from the older ones.
    pub fn parent_exited(&self) -> &Event {
        self.inner.lineage.parent_exited()
    }

    /// Set when more generations are alive than
    /// [`max_generations`](crate::Builder::max_generations) allows and this is the oldest: it
    /// should end its remaining connections now and exit.
    pub fn finish_requested(&self) -> &Event {
        self.inner.lineage.finish_requested()
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
        // A parent that has gone needs no telling.
        let _ = inner.lineage.tell_parent(&Message::Stopping);
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

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn starting_link(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.starting_link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the next generation and waits for its `ready`; returns its pid, the link to it,
    /// what it said it runs, and the hand-off channel to it if it takes connections.
    fn start_successor(
        &self,
    ) -> Result<(
        u32,
        Reader,
        Option<BuildIdentity>,
        Option<crate::handoff::ToSuccessor>,
    )> {
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
        let (handoff_ours, handoff_theirs) =
            crate::handoff::channel().map_err(|e| Error::io("creating the hand-off channel", e))?;
        let state_server = sys::dup_cloexec(handoff_ours.as_fd())
            .and_then(|socket| handoff::StateServer::start(self, socket, deadline))
            .map_err(|e| Error::io("starting the hand-off thread", e))?;
        let child = {
            let registry = self.registry();
            let (names, fds) = registry.handover();
            tracing::info!(
                executable = %config.executable.display(),
                fds = names.len(),
                "starting the new generation"
            );
            successor::start(
                Next {
                    executable: &config.executable,
                    args: &config.args,
                    cwd: config.cwd.as_deref(),
                    env: Vec::new(),
                    names,
                    fds,
                    link: theirs.as_raw_fd(),
                    handoff: Some(handoff_theirs.as_raw_fd()),
                    generation: self.generation + 1,
                    join_our_group: true,
                    setup: Setup::default(),
                },
                config.upgrade_timeout,
            )?
        };
        drop(theirs);
        drop(handoff_theirs);
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
        // Under a service manager, keep the reload's timeout from firing before ours.
        let still_upgrading = || {
            if self.notifier.is_enabled() {
                self.notifier.send(&notify::still_upgrading(&format!(
                    "Upgrading: pid {} (generation {}) has waited {} s of {} s for pid {child} \
                     (generation {}) to be ready",
                    self.pid,
                    self.generation,
                    started.elapsed().as_secs(),
                    config.upgrade_timeout.as_secs(),
                    self.generation + 1
                )));
            }
        };
        let mut takes = Vec::new();
        let waited = successor::wait_ready(
            &mut reader,
            child,
            deadline,
            config.upgrade_timeout,
            || self.forget_child(),
            still_upgrading,
            |message| match message {
                Message::Takes(tags) => takes = tags,
                other => tracing::debug!(?other, "ignoring a message before ready"),
            },
        );
        // Whatever the outcome, the state has been handed over or will not be any more.
        state_server.finish();
        let build = waited?;
        tracing::info!(
            child_pid = child,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            version = build.as_ref().map(BuildIdentity::version),
            build = build.as_ref().map(BuildIdentity::id),
            "new generation is ready; this one is replaced"
        );
        let successor = (!takes.is_empty()).then(|| crate::handoff::ToSuccessor {
            pid: child,
            socket: handoff_ours,
            tags: takes,
        });
        Ok((child, reader, build, successor))
    }

    /// Forgets the new process under the state lock, before it is reaped, so that a
    /// concurrent stop never signals a pid that has been reaped and may belong to someone else
    /// by now.
    fn forget_child(&self) {
        if let State::Upgrading { child: known } = &mut *self.state() {
            *known = None;
        }
    }

    /// Kills a new process that failed, with everything it started, and reaps it; forgotten
    /// first (see [`forget_child`](Self::forget_child)).
    fn end_child(&self, child: u32) -> std::io::Result<std::process::ExitStatus> {
        self.forget_child();
        successor::kill_and_reap(child)
    }

    pub(crate) fn emit(&self, transition: &Transition) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for observer in observers {
            observer(transition);
        }
    }
}

impl Generation for Inner {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn parent_pid(&self) -> Option<u32> {
        self.parent_pid
    }

    fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    fn max_generations(&self) -> usize {
        self.config.max_generations
    }

    fn on_probation_for(&self, successor: u32) -> bool {
        *self.state() == (State::Probation { successor })
    }

    fn probation_successor(&self) -> Option<u32> {
        match *self.state() {
            State::Probation { successor } => Some(successor),
            _ => None,
        }
    }

    fn retire(&self, successor: u32, why: &str) {
        Inner::retire(self, successor, why);
    }

    fn roll_back(&self, successor: u32, reason: &str) -> std::result::Result<(), String> {
        Inner::roll_back(self, successor, reason)
    }

    fn stop_requested(&self, by: u32) {
        self.emit(&Transition::StopRequested { by });
    }
}
