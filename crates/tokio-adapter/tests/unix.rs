//! `listen_unix`: a Unix listener bound through graceful yields tracked connections.
#![cfg(unix)]

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_unix_listener_yields_tracked_connections() {
    let graceful = graceful_tokio::Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let mut listener = graceful_tokio::listen_unix(&path).await.unwrap();
    assert_eq!(
        listener.local_addr().unwrap().as_pathname(),
        Some(path.as_path())
    );
    graceful_tokio::ready().unwrap();

    let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut served = tokio::time::timeout(STEP, listener.next())
        .await
        .expect("a connection within the step")
        .expect("the listener has not stopped");
    assert_eq!(graceful.connections(), 1);
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    served.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    drop(served);
    assert_eq!(graceful.connections(), 0);

    // The same path twice is refused, naming it.
    let err = graceful_tokio::listen_unix(&path).await.unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
