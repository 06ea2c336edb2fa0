//! Outside a Tokio runtime, graceful cannot install its handle: it says so with an error, not
//! a panic, and the failure uses up nothing, so a later install inside a runtime works. Asking
//! for readiness installs nothing.
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

    // ready() installs nothing: with no handle, it says so.
    let err = graceful_tokio::ready().expect_err("ready() without a handle was accepted");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing installed it"), "{err}");
    // listen() does install, with the defaults, and fails the same way outside a runtime.
    let err = futures::FutureExt::now_or_never(graceful_tokio::listen("127.0.0.1:0"))
        .expect("listen() fails at once outside a runtime")
        .expect_err("listen() outside a runtime was accepted");
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
