//! Both ends of a takeover in the state machine (`takeover.rs` has the wire): the running
//! generation hands its sockets to a process it did not start ([`Upgrader::yield_to`]), and
//! that process, once ready, waits for it to yield ([`Inner::confirm_takeover`]).
//!
//! Invariants kept here:
//! - A takeover is a transition like an upgrade: `Ready → Upgrading → Probation`, one at a
//!   time. An upgrade or takeover in flight, a process not ready yet, replaced or stopping
//!   refuses with the same errors as [`Upgrader::upgrade`], sent on the connection as
//!   `error REASON`.
//! - Only the same user or root may take over (SO_PEERCRED), whatever the socket file's mode,
//!   and only from this pid namespace or one below it: a process whose pid this one cannot see
//!   could be neither watched on probation nor named to a service manager.
//! - The new process is not this one's child: it is never killed, signalled or reaped. If it
//!   fails before ready (exits, closes the connection, is not ready within the upgrade
//!   timeout), this process closes the connection and serves on; a new process still alive
//!   then finds its `ready()` failing, because it waits for `yielded`, and must exit. Its exit
//!   is seen through a pidfd (SO_PEERPIDFD, or `pidfd_open` on the connecting pid), both
//!   before ready and during the probation.
//! - From `ready` on, the connection is the link: the probation and rollback (`lineage.rs`)
//!   run on it as they do after an upgrade.
//! - A hand-off channel goes with the sockets, as with an upgrade: the new process may ask
//!   for the application's state before it is ready, and announce the connections it takes
//!   (`takes …` on the link, before `ready`); once it serves, they are handed to it as after an
//!   upgrade (`upgrader/handoff.rs`).
//! - Under systemd, `MAINPID=` names the new process only if it is in this process's control
//!   group (the same unit, with `NotifyAccess=all`); a new process in another unit (a template
//!   instance) reports `READY=1` to its own unit instead.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::handoff::StateServer;
use super::{Inner, State, Transition, Upgrader};
use crate::error::{Error, Result};
use crate::handoff::{OutFrame, ToSuccessor};
use crate::lineage::{self, Kin};
use crate::link::{Message, Reader};
use crate::notify;
use crate::pidfile;
use crate::report::Report;
use crate::sys;
use crate::takeover::{self, Granted, Taken};

/// Why a takeover failed when the new process went away.
const GONE: &str = "it exited or closed the connection before it was ready";

/// A takeover whose `ready` is still to be confirmed by the previous generation.
#[derive(Debug)]
pub(crate) struct Pending {
    /// A duplicate of the link, read until `yielded`, then by the parent watcher.
    reader: OwnedFd,
    previous: u32,
    path: PathBuf,
}

impl Pending {
    /// The pending confirmation of `taken`, and the link it leaves for sending.
    pub(crate) fn new(taken: &Taken) -> std::io::Result<Pending> {
        Ok(Pending {
            reader: sys::dup_cloexec(taken.link.as_fd())?,
            previous: taken.previous,
            path: taken.path.clone(),
        })
    }
}

#[derive(Debug)]
enum Awaiting {
    /// Not a takeover, or confirmed.
    Nothing,
    Pending(Pending),
    /// The previous generation did not yield: this process must not serve.
    Failed {
        path: PathBuf,
        problem: String,
    },
}

/// The new process's side: whether its `ready` must wait for the previous generation to yield.
#[derive(Debug)]
pub(crate) struct Confirmation(Mutex<Awaiting>);

impl Confirmation {
    pub(crate) fn new(pending: Option<Pending>) -> Confirmation {
        Confirmation(Mutex::new(
            pending.map_or(Awaiting::Nothing, Awaiting::Pending),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Awaiting> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_pending(&self) -> bool {
        matches!(*self.lock(), Awaiting::Pending(_))
    }

    /// The error again, for a `ready` after a takeover that failed.
    pub(crate) fn check_not_failed(&self) -> Result<()> {
        match &*self.lock() {
            Awaiting::Failed { path, problem } => Err(Error::Takeover {
                path: path.clone(),
                problem: problem.clone(),
            }),
            _ => Ok(()),
        }
    }
}

impl Inner {
    /// At `ready` after a takeover: says `ready` on the link and waits, for the upgrade timeout
    /// at most, until the previous generation yields; then writes the PID file, starts
    /// watching the previous generation and reports `READY=1` to this process's own service
    /// manager. Called under the state lock: a stop waits for it, for that long at most.
    pub(super) fn confirm_takeover(self: &Arc<Inner>) -> Result<()> {
        let pending = match std::mem::replace(&mut *self.takeover.lock(), Awaiting::Nothing) {
            Awaiting::Pending(pending) => pending,
            other => {
                *self.takeover.lock() = other;
                return Ok(());
            }
        };
        let previous = pending.previous;
        let deadline = Instant::now() + self.config.upgrade_timeout;
        let yielded = match self.lineage.tell_parent(&Message::Ready) {
            Some(Err(err)) => Err(format!("cannot tell it this process is ready: {err}")),
            _ => takeover::wait_yielded(pending.reader.as_fd(), deadline),
        };
        if let Err(problem) = yielded {
            let problem = format!(
                "the server (pid {previous}) did not yield: {problem}; it serves on, and this \
                 process must not"
            );
            tracing::error!(
                pid = self.pid,
                previous_pid = previous,
                problem,
                "takeover failed"
            );
            *self.takeover.lock() = Awaiting::Failed {
                path: pending.path.clone(),
                problem: problem.clone(),
            };
            return Err(Error::Takeover {
                path: pending.path,
                problem,
            });
        }
        tracing::info!(
            pid = self.pid,
            previous_pid = previous,
            generation = self.generation,
            "the previous server yielded; this process serves"
        );
        // It stopped accepting and reading before it said so: the sockets are this one's.
        self.lineage.parent_paused().set();
        if let Err(err) = lineage::start_parent_watcher(self.clone(), pending.reader) {
            tracing::warn!(%err, "cannot watch the previous generation");
        }
        if let Some(path) = &self.config.pid_file {
            pidfile::write(path, self.pid).map_err(|source| Error::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        self.notifier.send(&format!(
            "MAINPID={pid}\nREADY=1\nSTATUS=Serving: pid {pid}, generation {}, took over from \
             pid {previous}",
            self.generation,
            pid = self.pid
        ));
        Ok(())
    }

    /// Sends the registry's descriptors on `link`, in as many frames as they need, then the
    /// new process's end of the hand-off channel, `handoff`.
    fn send_listeners(
        &self,
        link: BorrowedFd<'_>,
        handoff: BorrowedFd<'_>,
        deadline: Instant,
    ) -> std::io::Result<usize> {
        // Our own duplicates, so that a slow reader never holds the registry's lock.
        let (names, fds) = {
            let registry = self.registry();
            let (names, raw) = registry.handover();
            let fds = raw
                .into_iter()
                // SAFETY: the registry owns these descriptors and keeps them open while its
                // lock is held.
                .map(|fd| sys::dup_cloexec(unsafe { BorrowedFd::borrow_raw(fd) }))
                .collect::<std::io::Result<Vec<OwnedFd>>>()?;
            (names, fds)
        };
        let granted = Granted {
            pid: self.pid,
            generation: self.generation,
            count: names.len(),
            handoff: true,
        };
        sys::send_all(link, granted.encode().as_bytes())?;
        let chunk = sys::MAX_FDS_PER_MESSAGE;
        for (names, fds) in names.chunks(chunk).zip(fds.chunks(chunk)) {
            let fds = fds.iter().map(AsFd::as_fd).collect();
            OutFrame::listeners(names, fds)?.send_until(link, deadline)?;
        }
        OutFrame::channel(handoff).send_until(link, deadline)?;
        Ok(names.len())
    }

    /// Hands the sockets over on `link` to process `successor` and waits for its `ready`;
    /// returns the link's reader, or what went wrong.
    fn hand_over(
        &self,
        successor: u32,
        link: OwnedFd,
        exit: Option<&OwnedFd>,
    ) -> std::result::Result<(Reader, Option<ToSuccessor>), String> {
        let timeout = self.config.upgrade_timeout;
        let deadline = Instant::now() + timeout;
        let (ours, theirs) = crate::handoff::channel()
            .map_err(|err| format!("cannot create the hand-off channel: {err}"))?;
        // Answers the new process's request for the state while it gets ready.
        let state_server = sys::dup_cloexec(ours.as_fd())
            .and_then(|socket| StateServer::start(self, socket, deadline))
            .map_err(|err| format!("cannot start the hand-off thread: {err}"))?;
        let count = self
            .send_listeners(link.as_fd(), theirs.as_fd(), deadline)
            .map_err(|err| format!("cannot hand the sockets over: {err}"))?;
        drop(theirs);
        tracing::info!(
            successor_pid = successor,
            fds = count,
            "sockets handed over; waiting until the new process is ready"
        );
        let mut reader = Reader::new(link);
        if let Some(exit) = exit.and_then(|pidfd| sys::dup_cloexec(pidfd.as_fd()).ok()) {
            reader = reader.ending_at_exit(exit);
        }
        let mut takes = Vec::new();
        let ready = loop {
            match reader.next_until(deadline) {
                Ok(Some(Message::Ready)) => break Ok(()),
                Ok(Some(Message::Takes(tags))) => takes = tags,
                Ok(Some(other)) => tracing::debug!(?other, "ignoring a message before ready"),
                Ok(None) => break Err(GONE.into()),
                // It closed the connection with the frames unread.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    break Err(GONE.into());
                }
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                    break Err(format!("it was not ready within {timeout:?}"));
                }
                Err(err) => break Err(format!("cannot read from it: {err}")),
            }
        };
        // Whatever the outcome, the state has been handed over or will not be any more.
        state_server.finish();
        ready?;
        let channel = (!takes.is_empty()).then(|| ToSuccessor {
            pid: successor,
            socket: ours,
            tags: takes,
        });
        Ok((reader, channel))
    }

    /// The takeover succeeded: the same steps as after an upgrade, for a successor that is not
    /// this process's child.
    fn yielded(
        self: &Arc<Inner>,
        successor: u32,
        reader: Reader,
        channel: Option<ToSuccessor>,
        exit: Option<OwnedFd>,
    ) {
        self.handoffs.set_successor(channel);
        // Stop accepting first: whoever learns of the takeover next finds the new one serving.
        self.emit(&Transition::Replaced { successor });
        let generation = self.generation + 1;
        if sys::same_cgroup(successor) {
            self.notifier.send(&format!(
                "MAINPID={successor}\nREADY=1\nSTATUS=Serving: pid {successor}, generation \
                 {generation} (took over)"
            ));
        } else {
            self.notifier.send(&format!(
                "STATUS=Replaced by pid {successor} (generation {generation}), which took over; \
                 draining"
            ));
        }
        self.report.send(&Report::Upgraded {
            pid: self.pid,
            successor,
        });
        if let Err(err) = sys::send_all(reader.fd(), format!("yielded {}\n", self.pid).as_bytes()) {
            // Its end is seen below, and on probation rolls back.
            tracing::warn!(successor_pid = successor, %err, "cannot tell the new process it serves");
        }
        self.lineage.set_descendants(1);
        let probation = self.config.probation;
        if probation.is_zero() {
            self.retire(successor, "there is no probation");
        } else {
            tracing::info!(
                pid = self.pid,
                successor,
                ?probation,
                "on probation: this generation keeps its sockets, without accepting, and takes \
                 the service back if the new one dies"
            );
        }
        lineage::check_generations(&**self);
        let reader = match exit.as_ref().map(|pidfd| sys::dup_cloexec(pidfd.as_fd())) {
            Some(Ok(pidfd)) => reader.ending_at_exit(pidfd),
            _ => reader,
        };
        let deadline = Instant::now() + probation;
        let kin = Kin::Stranger(exit);
        if let Err(err) =
            lineage::start_child_watcher(self.clone(), successor, kin, reader, deadline)
        {
            tracing::warn!(%err, "cannot watch the new generation; its probation ends now");
            self.retire(successor, "the new generation cannot be watched");
        }
    }

    /// The takeover failed: this generation serves on.
    fn takeover_failed(&self, err: &Error) {
        tracing::error!(pid = self.pid, %err, "takeover failed; this generation keeps serving");
        crate::alert::upgrade_failed(self.pid, self.generation, err);
        self.notifier.send(&format!(
            "STATUS={}",
            notify::one_line(&format!(
                "Takeover failed; pid {} (generation {}) still serving: {err}",
                self.pid, self.generation
            ))
        ));
        self.report.upgrade_failed(self.pid, err);
    }
}

impl Upgrader {
    /// Hands this generation's sockets to the process at the other end of `connection`, which
    /// asked to take over (it sent [`TAKEOVER_REQUEST`](crate::TAKEOVER_REQUEST) on the
    /// control socket: read that line, then pass the connection, in blocking mode), and waits
    /// until it is ready; returns its pid. When this returns `Ok`, the new process serves:
    /// this one stops accepting, as after [`upgrade`](Self::upgrade), with the same probation.
    /// The tokio adapter's control socket answers `takeover` with it.
    ///
    /// The new process gets the descriptors an upgrade would pass, under the same names, over
    /// SCM_RIGHTS, and this process's generation number (it becomes the next). It must be of
    /// the same user, or root. One takeover or upgrade at a time: while this runs, others are
    /// refused.
    ///
    /// If the new process fails before it is ready (it exits, closes the connection, or is not
    /// ready within the upgrade timeout), the connection is closed and nothing in this process
    /// has changed. The new process is not this one's child, so it is not killed: one that is
    /// still alive finds its own `ready()` failing and must exit. During the probation, its
    /// death (seen through a pidfd) rolls the service back to this process.
    ///
    /// Blocks for up to the upgrade timeout.
    ///
    /// # Errors
    ///
    /// [`Error::TakeoverForbidden`] for another user; [`Error::NotReady`],
    /// [`Error::UpgradeInProgress`], [`Error::AlreadyReplaced`] and [`Error::Stopping`] as for
    /// an upgrade (each is also sent to the asking process); [`Error::TakeoverFailed`] when
    /// the new process failed; [`Error::Stopping`] also when a stop came meanwhile (the new
    /// process then finds its `ready()` failing).
    pub fn yield_to(&self, connection: OwnedFd) -> Result<u32> {
        let inner = &self.inner;
        let refuse = |err: Error| {
            let line = format!("error {}\n", err.to_string().replace(['\n', '\r'], " "));
            let _ = sys::send_all(connection.as_fd(), line.as_bytes());
            tracing::warn!(pid = inner.pid, %err, "takeover refused");
            Err(err)
        };
        let peer = match sys::peer(connection.as_fd()) {
            Ok(peer) => peer,
            Err(err) => return refuse(Error::io("reading who asks to take over", err)),
        };
        let uid = sys::euid();
        if peer.uid != uid && peer.uid != 0 {
            return refuse(Error::TakeoverForbidden {
                pid: inner.pid,
                peer_pid: peer.pid,
                peer_uid: peer.uid,
                uid,
            });
        }
        if peer.pid == 0 {
            // Another pid namespace (a container of its own): it could not be watched, nor
            // named to a service manager.
            return refuse(Error::TakeoverFailed {
                pid: inner.pid,
                successor: 0,
                problem: "the asking process's pid is not visible from here (another pid \
                          namespace); run both in one pid namespace (a pod with a shared \
                          process namespace)"
                    .into(),
            });
        }
        {
            let mut state = inner.state();
            let refused = match *state {
                _ if inner.stopping.load(Ordering::SeqCst) => {
                    Some(Error::Stopping { pid: inner.pid })
                }
                State::Starting => Some(Error::NotReady { pid: inner.pid }),
                State::Upgrading { .. } => Some(Error::UpgradeInProgress { pid: inner.pid }),
                State::Probation { successor } | State::Replaced { successor } => {
                    Some(Error::AlreadyReplaced {
                        pid: inner.pid,
                        successor,
                    })
                }
                State::Ready => {
                    *state = State::Upgrading { child: None };
                    None
                }
            };
            if let Some(err) = refused {
                drop(state);
                return refuse(err);
            }
        }
        let successor = peer.pid;
        tracing::info!(
            pid = inner.pid,
            successor_pid = successor,
            "pid {successor} asks to take over; handing the sockets over"
        );
        let exit = match sys::peer_pidfd(connection.as_fd(), successor) {
            Ok(pidfd) => Some(pidfd),
            Err(err) => {
                tracing::debug!(successor_pid = successor, %err, "watching the new process by its connection alone");
                None
            }
        };
        // A stop shuts it down, which ends the wait at once.
        match sys::dup_cloexec(connection.as_fd()) {
            Ok(dup) => *inner.starting_link() = Some(dup),
            Err(err) => tracing::debug!(%err, "a stop will not cut this takeover short"),
        }
        let outcome = inner.hand_over(successor, connection, exit.as_ref());
        inner.starting_link().take();
        let mut state = inner.state();
        let stopping = inner.stopping.load(Ordering::SeqCst);
        match outcome {
            Ok((reader, channel)) if !stopping => {
                *state = State::Probation { successor };
                drop(state);
                inner.yielded(successor, reader, channel, exit);
                Ok(successor)
            }
            outcome => {
                *state = State::Ready;
                drop(state);
                if let Ok((reader, _)) = &outcome {
                    // It said ready as the stop came: the connection's end tells it no.
                    let _ = sys::shutdown(reader.fd());
                }
                // The state it may have read is this generation's again.
                inner.handoffs.undo_if_given(inner.pid);
                let err = match outcome {
                    _ if stopping => Error::Stopping { pid: inner.pid },
                    Err(problem) => Error::TakeoverFailed {
                        pid: inner.pid,
                        successor,
                        problem,
                    },
                    Ok(_) => unreachable!("a ready successor fails only when stopping"),
                };
                if stopping {
                    tracing::warn!(pid = inner.pid, %err, "takeover cancelled by the stop");
                    inner.report.upgrade_failed(inner.pid, &err);
                } else {
                    inner.takeover_failed(&err);
                }
                Err(err)
            }
        }
    }
}
