//! The probation: a replaced generation that keeps its sockets, without accepting, for a
//! window after its successor became ready, and its two ways out.
//!
//! Invariants kept here:
//! - Off unless [`Builder::probation`](crate::Builder::probation) sets it. If the successor
//!   dies within the window (or asks to be rolled back), this generation takes the service back:
//!   PID file, main pid (`MAINPID=` and `READY=1` to a service manager), accepting. The window
//!   ends early when the successor stops for good (it says so on the link, so a stop is never
//!   taken for a crash), when it is replaced itself, or when this generation stops or must
//!   finish (`lineage.rs` watches for each).
//! - A rollback happens only from `Probation` for that very successor, never while this
//!   generation is stopping, and only if the runtime adapter says this generation can still
//!   serve ([`Upgrader::set_resume_check`]); the state changes under the `state` lock before
//!   anything is announced, so a rollback and a retirement never both happen.
//! - Retiring releases this generation's copies of the handed-over descriptors: from then on
//!   only the successor holds them.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Inner, State, Transition, Upgrader};
use crate::error::{Error, Result};
use crate::notify;
use crate::pidfile;
use crate::report::Report;

impl Upgrader {
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
        let parent_pid = inner.parent_pid.unwrap_or_default();
        inner
            .lineage
            .ask_rollback(parent_pid, timeout)
            .map_err(|reason| Error::RollbackUnavailable {
                pid: inner.pid,
                reason,
            })
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

    /// Whether this process is on probation: replaced, but able to take the service back if
    /// its successor dies (see [`Builder::probation`](crate::Builder::probation)).
    pub fn on_probation(&self) -> bool {
        matches!(*self.inner.state(), State::Probation { .. })
    }
}

impl Inner {
    /// Ends the probation: this generation will not serve again.
    pub(crate) fn retire(&self, successor: u32, why: &str) {
        {
            let mut state = self.state();
            if *state != (State::Probation { successor }) {
                return;
            }
            *state = State::Replaced { successor };
        }
        self.registry().release();
        self.handoffs.settle();
        self.replaced.set();
        tracing::info!(
            pid = self.pid,
            successor,
            "replaced for good ({why}); this generation will not serve again"
        );
        self.emit(&Transition::Retired { successor });
    }

    /// Takes the service back from a successor on probation; returns whether it did.
    pub(crate) fn roll_back(
        &self,
        successor: u32,
        reason: &str,
    ) -> std::result::Result<(), String> {
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
        self.report.send(&Report::RolledBack {
            pid: self.pid,
            successor,
            reason: reason.to_owned(),
        });
        self.lineage.set_descendants(0);
        self.handoffs.set_successor(None);
        self.handoffs.undo_if_given(self.pid);
        self.emit(&Transition::RolledBack {
            successor,
            reason: reason.to_owned(),
        });
        Ok(())
    }
}
