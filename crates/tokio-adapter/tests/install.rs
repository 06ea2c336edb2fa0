//! Nothing installs the handle as a side effect: an early `upgrade_requested()` or `drain()`
//! takes neither the process's sockets nor its signals, so the application's own
//! `Builder::install()` afterwards works, with its settings.
#![cfg(unix)]

use std::time::Duration;

use futures::FutureExt;
use graceful_tokio::{Builder, DrainOutcome, Error, Graceful};

#[tokio::test]
async fn asking_before_installing_installs_nothing() {
    // Pending, and it never completes: nothing can ask this process to wind down.
    let early = graceful_tokio::upgrade_requested();
    let err = Graceful::get().expect_err("a handle exists before anything installed one");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let err = graceful_tokio::upgrade()
        .await
        .expect_err("upgrade() without a handle was accepted");
    assert!(err.to_string().contains("nothing installed it"), "{err}");
    let report = graceful_tokio::drain(Duration::from_secs(1)).await;
    assert_eq!(
        (report.open_at_start, report.outcome),
        (0, DrainOutcome::Drained)
    );
    graceful_tokio::stop();

    let graceful = Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .probation(Duration::ZERO)
        .install()
        .expect("the application's install after the early calls");
    assert!(Graceful::get().is_ok());
    assert!(!graceful.is_stopping(), "the early stop() stopped nothing");
    // The early future belongs to no handle; a new one is the handle's.
    assert!(early.now_or_never().is_none());
    let requested = graceful_tokio::upgrade_requested();
    graceful.stop();
    tokio::time::timeout(Duration::from_secs(10), requested)
        .await
        .expect("upgrade_requested() completes at the stop");
}
