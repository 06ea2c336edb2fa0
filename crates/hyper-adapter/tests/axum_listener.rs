//! Plain `axum::serve` on a graceful listener, with axum's own graceful shutdown: it serves,
//! and it returns once this process is asked to stop.
#![cfg(unix)]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn axum_serve_runs_on_a_graceful_listener_until_the_stop() {
    graceful_tokio::Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();
    let listener = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(graceful_tokio::upgrade_requested())
            .await
    });
    graceful_tokio::ready().unwrap();

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, client.read_to_string(&mut response))
        .await
        .expect("a response")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello"), "{response}");

    graceful_tokio::stop();
    tokio::time::timeout(STEP, server)
        .await
        .expect("axum::serve returned after the stop")
        .unwrap()
        .unwrap();
}
