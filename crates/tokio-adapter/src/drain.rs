//! The drain: waiting for this generation's connections once it no longer accepts.
//!
//! Invariants:
//! - A drain waits for every tracked connection, upgraded ones included, for its timeout at
//!   most; too many generations alive, or a second stop signal, cut it short.
//! - A replaced generation exits after its parent, within the same deadline, so that the
//!   generations alive stay one chain that the oldest can count; not one whose parent took the
//!   service back (a rollback), which serves on.
//! - It also waits for the connections its parent handed over until it exited: they arrive
//!   on the hand-off channel until then, and are tracked once received.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use graceful_core::{DrainOutcome, DrainReport};

use crate::handle::Graceful;

impl Graceful {
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
        let mut outcome = self.wait_tracked(deadline).await;
        if outcome == DrainOutcome::Drained && !self.inner.taken_back.load(Ordering::SeqCst) {
            self.outlive_parent(deadline).await;
            // Connections the previous generation handed over until it exited are this one's
            // to serve (or to hand on) too. Before ready nothing was received, nor will be.
            let received_all = self.inner.upgrader.is_ready()
                && tokio::select! {
                    () = self.inner.handoffs.received_all() => true,
                    () = self.inner.finish.cancelled() => false,
                    () = tokio::time::sleep_until(deadline) => false,
                };
            if received_all {
                outcome = self.wait_tracked(deadline).await;
            }
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

    /// Waits until no tracked connection is left.
    async fn wait_tracked(&self, deadline: tokio::time::Instant) -> DrainOutcome {
        tokio::select! {
            biased;
            () = self.inner.tracker.wait() => DrainOutcome::Drained,
            () = self.inner.finish.cancelled() => DrainOutcome::CutShort,
            () = tokio::time::sleep_until(deadline) => DrainOutcome::Deadline,
        }
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
}
