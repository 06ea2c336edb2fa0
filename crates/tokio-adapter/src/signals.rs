//! The signals that drive the handle: one upgrades, others stop.
//!
//! Invariants:
//! - The handlers are registered by the builder before anything is taken; the tasks that
//!   answer them are spawned here, on the runtime that installed the handle.
//! - An upgrade signal never blocks a signal task: the upgrade runs on a thread of its own.
//!   One that comes while an upgrade runs, or once this process is replaced or stopping, is
//!   logged and ignored.
//! - A second stop signal ends the drain at once.

use graceful_core::Error;
use tokio::signal::unix::Signal;

use crate::handle::Graceful;

/// Spawns the tasks that answer the handle's signals.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    graceful: &Graceful,
    upgrade_signal: Option<Signal>,
    stop_signals: Vec<Signal>,
) {
    if let Some(mut upgrade_signal) = upgrade_signal {
        let graceful = graceful.clone();
        runtime.spawn(async move {
            while upgrade_signal.recv().await.is_some() {
                on_upgrade_signal(&graceful);
            }
        });
    }
    for mut stop_signal in stop_signals {
        let graceful = graceful.clone();
        runtime.spawn(async move {
            while stop_signal.recv().await.is_some() {
                on_stop_signal(&graceful);
            }
        });
    }
}

fn on_upgrade_signal(graceful: &Graceful) {
    if graceful.is_upgrade_requested() {
        tracing::info!("upgrade signal ignored: this process is already replaced or stopping");
        graceful_core::alert(format_args!(
            "upgrade signal ignored: pid {} is already replaced or stopping",
            std::process::id()
        ));
        return;
    }
    tracing::info!(pid = std::process::id(), "upgrade signal received");
    let graceful = graceful.clone();
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

fn on_stop_signal(graceful: &Graceful) {
    if graceful.is_stopping() {
        tracing::warn!("second stop signal: ending the drain now");
        graceful.finish_now();
    } else {
        graceful.stop();
    }
}
