//! Outside a Tokio runtime, graceful cannot install its handle: it says so with an error, not
//! a panic, and the failure uses up nothing, so a later install inside a runtime works.
#![cfg(unix)]

use graceful_tokio::{Builder, Error};

#[test]
fn outside_a_runtime_install_and_ready_fail_with_an_error() {
    let err = Builder::new()
        .install()
        .expect_err("install() outside a runtime was accepted");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("must be installed inside a Tokio runtime"),
        "{err}"
    );

    // ready() installs the handle implicitly, so it fails the same way.
    let err = graceful_tokio::ready().expect_err("ready() outside a runtime was accepted");
    assert!(
        err.to_string()
            .contains("must be installed inside a Tokio runtime"),
        "{err}"
    );

    // Neither failure took the process's one upgrader.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        Builder::new()
            .upgrade_signal(None)
            .stop_signals([])
            .install()
            .expect("installing inside a runtime after the failures");
        graceful_tokio::ready().unwrap();
    });
}
