//! `graceful_hyper::serve` in one process, with a plain hyper service: it calls `ready()` itself
//! once it serves, answers requests, and on a stop returns the drain's report.
#![cfg(unix)]

use std::future::IntoFuture;
use std::time::Duration;

use graceful_tokio::DrainOutcome;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn serve_reports_ready_serves_and_returns_the_drain_report_on_stop() {
    let graceful = graceful_tokio::Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();
    let listener = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = service_fn(|_: hyper::Request<Incoming>| async {
        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hello"))))
    });
    assert!(!graceful.upgrader().is_ready());
    let server = tokio::spawn(graceful_hyper::serve(listener, hello).into_future());

    tokio::time::timeout(STEP, graceful.ready_reported())
        .await
        .expect("serve did not call ready()");
    assert!(graceful.upgrader().is_ready());

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

    graceful_tokio::stop();
    let report = tokio::time::timeout(STEP, server)
        .await
        .expect("serve returned after the stop")
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, DrainOutcome::Drained, "{report}");
    assert_eq!(report.abandoned, 0, "{report}");
}
