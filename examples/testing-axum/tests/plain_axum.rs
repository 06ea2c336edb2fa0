//! The README's plain-axum line upgrades as written: nothing in it calls `graceful::ready()`,
//! so the listener reports readiness when axum first waits on it, and SIGHUP works.

use std::time::Duration;

use graceful::testing::{Error, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound for each request; it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(10);

/// `GET /` on a new connection; returns the pid that answered.
async fn answered_by(harness: &Harness) -> u32 {
    let exchange = async {
        let mut conn = TcpStream::connect(harness.addr()).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to GET / within {STEP:?}"));
    let pid = response
        .rsplit("hello from ")
        .next()
        .and_then(|pid| pid.trim().parse().ok());
    pid.unwrap_or_else(|| panic!("not an answer of the app: {response:?}"))
}

#[tokio::test]
async fn the_plain_axum_line_is_upgraded_by_sighup() -> Result<(), Error> {
    let harness = Harness::builder(env!("CARGO_BIN_EXE_testing-axum-plain"))
        .arg("--addr")
        .arg_addr()
        .ready_timeout(STEP)
        .start()
        .await?; // returns only once the server reported ready: here, by its listener
    assert_eq!(answered_by(&harness).await, harness.pid());

    for generation in 2..=3 {
        let upgraded = harness.upgrade().await?;
        assert_eq!(harness.generation(), generation);
        assert_ne!(upgraded.pid, upgraded.from);
        assert_eq!(answered_by(&harness).await, upgraded.pid);
    }

    let generations = harness.stop().await?;
    assert_eq!(generations.len(), 3);
    for generation in &generations {
        assert!(
            generation.status().is_some_and(|s| s.success()),
            "{generation}"
        );
    }
    Ok(())
}
