//! A graceful UDP socket, seen from one process: the first receive reports the process ready,
//! the address is registered once, and a stop ends a receive that is waiting for a datagram.
//!
//! The stop is global and irreversible, so this file is one sequential test.
#![cfg(unix)]

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Duration;

use graceful_tokio::{Builder, Error};

/// A bound for every wait; generous, because it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {STEP:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_receive_reports_ready_and_a_stop_ends_a_waiting_receive() {
    let graceful = Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();
    let socket = Arc::new(graceful_tokio::udp("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    assert!(matches!(
        graceful_tokio::udp(addr).await,
        Err(Error::AlreadyRegistered { .. })
    ));

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(addr).await.unwrap();
    client.send(b"first").await.unwrap();
    let mut buf = [0u8; 64];
    let (len, peer) = within("the first datagram", socket.recv_from(&mut buf))
        .await
        .unwrap()
        .expect("the socket ended before the stop");
    assert_eq!(&buf[..len], b"first");
    assert_eq!(peer, client.local_addr().unwrap());
    within(
        "readiness, reported by the first receive",
        graceful.ready_reported(),
    )
    .await;

    socket.send_to(b"answer", peer).await.unwrap();
    let len = within("the answer", client.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..len], b"answer");

    // A receive waits for the next datagram when the stop comes, and says so once it has
    // polled and found none. Tokio polls a task again only when it is woken, so the receive can
    // end only if the stop itself wakes it.
    let (pending_tx, pending_rx) = tokio::sync::oneshot::channel();
    let waiting = tokio::spawn({
        let socket = socket.clone();
        async move {
            let mut buf = [0u8; 64];
            let mut receive = std::pin::pin!(socket.recv_from(&mut buf));
            let mut pending_tx = Some(pending_tx);
            poll_fn(|cx| {
                let poll = receive.as_mut().poll(cx);
                if poll.is_pending() {
                    if let Some(tx) = pending_tx.take() {
                        let _ = tx.send(());
                    }
                }
                poll
            })
            .await
            .unwrap()
        }
    });
    within("the receive to wait for a datagram", pending_rx)
        .await
        .unwrap();
    graceful.stop();
    let ended = within("the waiting receive to end at the stop", waiting)
        .await
        .unwrap();
    assert_eq!(ended, None);
    assert!(socket.is_stopped());
}
