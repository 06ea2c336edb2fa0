//! Tracked connections: a `TrackedStream` is its inner stream for reads and writes, and keeps
//! one connection counted until it, or the guard split off it, is dropped.
#![cfg(unix)]

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use graceful_tokio::{Builder, Error, Graceful};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound for every wait; generous, because it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {STEP:?}"))
}

/// The connection count belongs to the process, and the tests of this file run in parallel in
/// one process: each holds this lock so that the count it reads is its own connections only.
static COUNT: Mutex<()> = Mutex::new(());

/// Runs `test` alone, on a runtime of its own.
fn alone(test: impl Future<Output = ()>) {
    let _alone = COUNT.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// The process's handle, installed without signal handlers by whichever test comes first.
fn graceful() -> Graceful {
    match Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
    {
        Ok(graceful) => graceful,
        Err(Error::AlreadyCreated { .. }) => Graceful::get().unwrap(),
        Err(err) => panic!("cannot install graceful: {err}"),
    }
}

/// A loopback connection: the client's end, and the server's end as the graceful listener
/// accepted it.
async fn tcp_pair() -> (TcpStream, graceful_tokio::TrackedStream<TcpStream>) {
    graceful();
    let mut listener = graceful_tokio::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = within("connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    let served = within("accepting", listener.next())
        .await
        .expect("the listener ended");
    (client, served)
}

/// A writer that, like most, does not implement vectored writes.
struct Unvectored(Vec<u8>);

impl AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn reads_and_writes_pass_through() {
    alone(async {
        let (mut client, mut served) = tcp_pair().await;
        assert_eq!(
            served.get_ref().peer_addr().unwrap(),
            client.local_addr().unwrap()
        );

        client.write_all(b"request").await.unwrap();
        let mut request = [0; 7];
        within(
            "reading through the tracked stream",
            served.read_exact(&mut request),
        )
        .await
        .unwrap();
        assert_eq!(&request, b"request");

        served.write_all(b"response").await.unwrap();
        served.flush().await.unwrap();
        let mut response = [0; 8];
        within(
            "what was written through the tracked stream",
            client.read_exact(&mut response),
        )
        .await
        .unwrap();
        assert_eq!(&response, b"response");

        // A TCP stream writes several buffers in one call; had the tracked stream fallen back
        // to the default vectored write, only the first buffer would have been written.
        assert!(served.get_ref().is_write_vectored());
        assert_eq!(
            served.is_write_vectored(),
            served.get_ref().is_write_vectored()
        );
        let bufs = [IoSlice::new(b"head, "), IoSlice::new(b"body")];
        let written = within("a vectored write", served.write_vectored(&bufs))
            .await
            .unwrap();
        assert_eq!(written, 10, "the vectored write did not take both buffers");
        let mut vectored = [0; 10];
        within(
            "what was written vectored",
            client.read_exact(&mut vectored),
        )
        .await
        .unwrap();
        assert_eq!(&vectored, b"head, body");

        // The shutdown reaches the socket: the client reads the end of the stream.
        served.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within("the end of the stream", client.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(
            rest.is_empty(),
            "unexpected bytes after the shutdown: {rest:?}"
        );
    });
}

#[test]
fn is_write_vectored_is_the_inner_streams() {
    alone(async {
        let tracked = graceful().track(Unvectored(Vec::new()));
        assert!(!tracked.get_ref().is_write_vectored());
        assert!(!tracked.is_write_vectored());
    });
}

#[test]
fn the_inner_stream_is_reachable() {
    alone(async {
        let (mut client, mut served) = tcp_pair().await;
        assert_eq!(
            served.get_ref().local_addr().unwrap(),
            client.peer_addr().unwrap()
        );
        // get_mut() is the socket itself: what is written to it directly reaches the client.
        served.get_mut().write_all(b"direct").await.unwrap();
        let mut direct = [0; 6];
        within(
            "what was written to the inner stream",
            client.read_exact(&mut direct),
        )
        .await
        .unwrap();
        assert_eq!(&direct, b"direct");

        let mut tracked = graceful().track(Unvectored(Vec::new()));
        tracked.write_all(b"kept").await.unwrap();
        tracked.get_mut().0.extend_from_slice(b" and added");
        assert_eq!(tracked.get_ref().0, b"kept and added");
    });
}

#[test]
fn track_counts_any_io_until_it_is_dropped() {
    alone(async {
        let graceful = graceful();
        assert_eq!(graceful.connections(), 0);
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = graceful.track(near);
        assert_eq!(graceful.connections(), 1);
        let other = graceful.track(Unvectored(Vec::new()));
        assert_eq!(graceful.connections(), 2);

        // Tracking changes nothing for the stream itself.
        near.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        within(
            "reading from the far end of the duplex",
            far.read_exact(&mut ping),
        )
        .await
        .unwrap();
        assert_eq!(&ping, b"ping");

        drop(near);
        assert_eq!(graceful.connections(), 1);
        drop(other);
        assert_eq!(graceful.connections(), 0);
    });
}

#[test]
fn a_split_connection_counts_until_its_guard_is_dropped() {
    alone(async {
        let graceful = graceful();
        let (client, served) = tcp_pair().await;
        assert_eq!(graceful.connections(), 1);
        let (stream, guard) = served.into_parts();
        assert_eq!(graceful.connections(), 1);
        // The stream is plain tokio from here on, and still the same connection.
        assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
        drop(stream);
        assert_eq!(
            graceful.connections(),
            1,
            "the connection stopped counting with its stream, before its guard"
        );
        drop(guard);
        assert_eq!(graceful.connections(), 0);
    });
}
