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
//! - A drain cut short (too many generations) still gives connections on their way to a
//!   successor that takes them a moment ([`HAND_OFF_GRACE`]): in a chain of quick upgrades, the
//!   oldest may be told to finish while it holds sessions it received and is handing on.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use graceful_core::{DrainOutcome, DrainReport};

use crate::handle::Graceful;

/// How long a drain cut short still waits for connections that are being handed over.
const HAND_OFF_GRACE: Duration = Duration::from_secs(1);

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
            if self.inner.upgrader.is_ready() {
                outcome = tokio::select! {
                    () = self.inner.handoffs.received_all() => self.wait_tracked(deadline).await,
                    () = self.inner.finish.cancelled() => DrainOutcome::CutShort,
                    () = tokio::time::sleep_until(deadline) => DrainOutcome::Deadline,
                };
            }
        }
        if outcome == DrainOutcome::CutShort
            && !tracker.is_empty()
            && self.inner.handoffs.can_hand_off()
        {
            // Cut short (too many generations): what is still here is going to the successor,
            // and a hand-off ends a connection here without ending it for its client. A moment
            // for that, not for connections stuck in the middle of something.
            let grace = deadline.min(tokio::time::Instant::now() + HAND_OFF_GRACE);
            let _ = tokio::time::timeout_at(grace, async {
                self.inner.handoffs.received_all().await;
                tracker.wait().await;
            })
            .await;
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
