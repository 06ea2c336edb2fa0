//! The accept loop belongs to the `serve` future: dropping the future stops accepting, while
//! the socket stays open for the generations that hold it (nothing is refused).
#![cfg(unix)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);
/// How long a client waits, after the drop, to see that nothing answers it.
const UNANSWERED: Duration = Duration::from_secs(1);

async fn get(addr: SocketAddr) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn dropping_serve_stops_accepting() {
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
    let server = tokio::spawn(graceful_hyper::serve(listener, hello).into_future());
    tokio::time::timeout(STEP, graceful.ready_reported())
        .await
        .expect("serve did not call ready()");
    let response = tokio::time::timeout(STEP, get(addr))
        .await
        .expect("an answer while serving");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    server.abort();
    let _ = server.await;
    // The connection is made (the socket is still open, its backlog takes it) but nobody
    // accepts it any more.
    let unanswered = tokio::time::timeout(UNANSWERED, get(addr)).await;
    assert!(
        unanswered.is_err(),
        "answered after serve was dropped: {unanswered:?}"
    );
}
