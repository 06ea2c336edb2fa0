//! `graceful_hyper::serve` sets `TCP_NODELAY` on the connections it accepts by default. In a
//! file of its own: it installs the process's graceful handle.
#![cfg(unix)]

use std::future::IntoFuture;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

/// Whether this process's socket connected to `peer` has TCP_NODELAY, if there is one.
fn nodelay_of_socket_to(peer: SocketAddr) -> Option<bool> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.into_iter().find_map(|fd| {
        // SAFETY: the descriptor is only borrowed (never closed: ManuallyDrop), and only read
        // through getsockopt/getpeername, which fail harmlessly on what is not a TCP socket.
        let stream = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        (stream.peer_addr().ok()? == peer).then(|| stream.nodelay().ok())?
    })
}

#[tokio::test]
async fn accepted_tcp_connections_get_nodelay_by_default() {
    let _graceful = graceful_tokio::Builder::new()
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

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Answered: the server has accepted the connection and set its options.
    let mut response = [0; 1024];
    let read = tokio::time::timeout(STEP, client.read(&mut response))
        .await
        .expect("a response within the step")
        .unwrap();
    assert!(response[..read].starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        nodelay_of_socket_to(client.local_addr().unwrap()),
        Some(true),
        "the server's end of the connection"
    );

    drop(client);
    graceful_tokio::stop();
    tokio::time::timeout(STEP, server)
        .await
        .expect("serve returned after the stop")
        .unwrap()
        .unwrap();
}
