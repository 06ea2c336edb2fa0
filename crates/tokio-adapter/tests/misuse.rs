//! Misuse is harmless: each mistake is an error that says what went wrong, or nothing at all,
//! and the handle keeps working.
//!
//! The handle is one per process and these steps depend on its state (before and after
//! `ready()`), so this file is one sequential test.
#![cfg(unix)]

use graceful_tokio::{Builder, Error};

#[tokio::test]
async fn misuse_gives_errors_that_say_what_went_wrong() {
    let graceful = Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();

    // An upgrade before ready() would hand the sockets to a successor while this process is
    // still setting them up: refused, and nothing is started.
    let err = graceful_tokio::upgrade()
        .await
        .expect_err("upgrade() before ready() was accepted");
    assert!(matches!(err, Error::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("has not called ready()"), "{err}");
    assert!(!graceful.upgrader().is_ready());

    // The same address twice: the second caller is told which address, not handed a second
    // socket that the next generation could not tell apart from the first.
    let first = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
    let addr = first.local_addr().unwrap();
    let err = graceful_tokio::listen(addr)
        .await
        .expect_err("a second listen() on the same address was accepted");
    assert!(matches!(err, Error::AlreadyRegistered { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // The first listener is untouched: a client still reaches it.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .expect("connecting to the first listener: nothing after 10 s")
    .expect("the first listener no longer accepts connections");

    // ready() twice: the second does nothing.
    graceful_tokio::ready().unwrap();
    assert!(graceful.upgrader().is_ready());
    graceful_tokio::ready().unwrap();
    assert!(graceful.upgrader().is_ready());

    // A second handle would fight the first over the inherited sockets and the signals.
    let err = Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .expect_err("a second install() was accepted");
    assert!(
        matches!(err, Error::AlreadyCreated { pid } if pid == std::process::id()),
        "{err:?}"
    );
}
