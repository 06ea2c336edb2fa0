//! A graceful stop, seen from one process: the listener stream ends at once, even while it waits
//! for a connection; a client that connects afterwards is left in the kernel backlog, not
//! accepted and dropped; and drain waits for the tracked connections, for its timeout at most.
//!
//! The stop is global and irreversible, so this file is one sequential test.
#![cfg(unix)]

use std::future::{Future, poll_fn};
use std::os::fd::AsFd;
use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use graceful_tokio::{Builder, DrainOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound for every wait; generous, because it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {STEP:?}"))
}

/// Sends a byte from one end of a connection and checks that it arrives at the other.
async fn exchange(from: &mut (impl AsyncWrite + Unpin), to: &mut (impl AsyncRead + Unpin)) {
    from.write_all(b"x").await.unwrap();
    let mut byte = [0];
    within("a byte sent over the connection", to.read_exact(&mut byte))
        .await
        .unwrap();
    assert_eq!(&byte, b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_listener_leaves_the_backlog_and_drain_waits_for_connections() {
    let graceful = Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap();
    let mut listener = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    graceful_tokio::ready().unwrap();

    // Before the stop, an accepted connection counts.
    assert_eq!(graceful.connections(), 0);
    let mut client = within("connecting before the stop", TcpStream::connect(addr))
        .await
        .unwrap();
    let mut served = within("accepting before the stop", listener.next())
        .await
        .expect("the listener ended before the stop");
    assert_eq!(
        served.get_ref().peer_addr().unwrap(),
        client.local_addr().unwrap()
    );
    assert_eq!(graceful.connections(), 1);
    exchange(&mut client, &mut served).await;

    let mut requested = std::pin::pin!(graceful_tokio::upgrade_requested());
    assert!(
        requested.as_mut().now_or_never().is_none(),
        "upgrade_requested() completed before any stop"
    );
    assert!(!graceful.is_upgrade_requested());

    // Another task waits for the next connection, and tells us once it has polled and found
    // none. Tokio polls a task again only when it is woken, so the stream can end only if the
    // stop itself wakes it: a waker left unregistered would hang here until the timeout.
    let (pending_tx, pending_rx) = oneshot::channel();
    let waiting = tokio::spawn(async move {
        let mut pending_tx = Some(pending_tx);
        let next = poll_fn(|cx| {
            let poll = listener.poll_next_unpin(cx);
            if poll.is_pending() {
                if let Some(tx) = pending_tx.take() {
                    let _ = tx.send(());
                }
            }
            poll
        })
        .await;
        (listener, next)
    });
    within("the listener task to find no connection", pending_rx)
        .await
        .expect("the listener task ended before it waited");
    graceful_tokio::stop();
    let (mut listener, next) = within("the pending next() to be woken by stop()", waiting)
        .await
        .unwrap();
    assert!(
        next.is_none(),
        "the listener yielded a connection after stop()"
    );
    assert!(listener.is_stopped());
    within("upgrade_requested() after stop()", requested).await;
    assert!(graceful.is_upgrade_requested());
    within(
        "a fresh upgrade_requested() after stop()",
        graceful_tokio::upgrade_requested(),
    )
    .await;

    // After the stop, the kernel still completes connections into the backlog (the next
    // generation would accept them from the same socket), but the stream does not take them.
    let mut late = within("connecting after the stop", TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(
        within("next() after the stop", listener.next())
            .await
            .is_none(),
        "the listener accepted a connection after stop()"
    );
    assert_eq!(graceful.connections(), 1);
    // The late connection is still queued: accept it from a duplicate of the listening socket,
    // as the next generation would, and talk over it.
    let duplicate = listener.get_ref().as_fd().try_clone_to_owned().unwrap();
    // The duplicate shares the socket's file description, which the library made non-blocking.
    let duplicate = tokio::net::TcpListener::from_std(duplicate.into()).unwrap();
    let (mut adopted, peer) = within(
        "the late connection in the backlog of the stopped listener",
        duplicate.accept(),
    )
    .await
    .unwrap();
    assert_eq!(peer, late.local_addr().unwrap());
    exchange(&mut late, &mut adopted).await;
    exchange(&mut adopted, &mut late).await;
    // Untracked: the library never saw it.
    assert_eq!(graceful.connections(), 1);

    // The stop leaves accepted connections open: they are drained, not cut.
    exchange(&mut served, &mut client).await;

    // One tracked connection stays open: the drain gives up at its deadline and says so.
    let report = within(
        "a drain with a short timeout",
        graceful_tokio::drain(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(report.open_at_start, 1, "{report}");
    assert_eq!(report.abandoned, 1, "{report}");
    assert_eq!(report.outcome, DrainOutcome::Deadline, "{report}");

    // Once it is closed, a drain finds nothing left; its own timeout is shorter than the bound,
    // so a drain that waited for nothing would end as Deadline and fail below.
    drop(served);
    assert_eq!(graceful.connections(), 0);
    let report = within("a drain with nothing open", graceful_tokio::drain(STEP / 2)).await;
    assert_eq!(report.open_at_start, 0, "{report}");
    assert_eq!(report.abandoned, 0, "{report}");
    assert_eq!(report.outcome, DrainOutcome::Drained, "{report}");
}
