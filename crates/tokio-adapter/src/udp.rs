//! A UDP socket that receives only while this generation serves.
//!
//! After a handover both generations hold the same datagram socket, and the kernel gives each
//! datagram to whichever process reads first. A replaced generation that kept reading would
//! answer, at random, datagrams meant for its successor, while it winds down. So a UDP socket
//! goes through the same gate (`gate.rs`) as the listeners: it receives from this generation's
//! readiness until a successor is ready, pauses during the successor's probation, receives
//! again after a rollback, and ends at retirement or on a stop.
//!
//! Invariants:
//! - The read that takes a datagram is a non-blocking `recvfrom` (`try_recv_from`), never a
//!   receive that parks inside the kernel, and it runs while the gate's state is borrowed and
//!   seen open. The borrow holds the read side of the lock that setting the gate takes, so a
//!   pause waits for a read in progress to return, and no read starts once it is set: the
//!   check and the read cannot be split by a pause. Waiting for a datagram is a wait for
//!   readiness, which takes nothing; when it ends, the gate is checked again.
//! - Nothing else is done under that borrow (reporting readiness sets the gate, and would
//!   deadlock), and it is never held across an `.await`.
//! - A receive that waits for a datagram waits for the gate too: a pause, a resume or the end
//!   wakes it, so a pause takes effect at once, not at the next datagram. A receive pending when
//!   the gate pauses returns to waiting for the gate without reading.
//! - Sending is never gated: a datagram read before the pause is answered by whoever read it.
//! - Each socket counts as one of the application's listeners: a UDP-only server can take the
//!   service back after a rollback, and one whose sockets have all been dropped cannot.
//!
//! # What is guaranteed, and what is not
//!
//! Once this generation has paused, which it does as soon as it hears that its successor is
//! ready and before it tells anyone else of the upgrade, it takes no datagram: no read is in
//! progress and none starts; and its successor reads only from then on. A receive that was
//! waiting goes back to waiting for the gate. What
//! the pause cannot undo:
//!
//! - A datagram read before the pause is this generation's, and is answered by it, possibly
//!   after the successor has answered a later one.
//! - Nothing else is lost or split: the successor opens its gate as it reports ready, but
//!   reads only once this generation has said, on the readiness link, that it paused (`paused`,
//!   sent right after the pause; its exit counts too). So the two never read in the same
//!   moment: every datagram this generation took, it took before the successor's first read.
//!   A parent of an older build, which does not say, is not waited for.
//!
//! A server that answers each datagram as soon as it has read it, as the examples do, keeps the
//! first limit to the datagrams it was handling at the pause.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::ToSocketAddrs;
use tokio::sync::watch;

use crate::gate::{Accepting, GateWatch};
use crate::listener::ReportReady;

/// A UDP socket that receives datagrams only while this generation serves, and ends when this
/// process has been replaced by a new generation or asked to stop.
///
/// Like a [`Listener`](crate::Listener), it receives nothing before this generation is ready
/// (the first receive reports it ready, unless [`Builder::explicit_ready`](crate::Builder::explicit_ready)
/// was set or [`wait_for_ready`](Self::wait_for_ready) called), and nothing while a successor
/// is on probation: it pauses instead of ending, so that it can receive again after a rollback.
/// Datagrams that arrive meanwhile stay in the kernel's queue for whichever generation serves,
/// which holds the same socket. Sending is always possible, so a datagram already read can be
/// answered.
///
/// Its methods take `&self`: share it between tasks in an [`Arc`](std::sync::Arc), as a tokio
/// socket. Created by [`udp`](crate::udp()) and [`Graceful::udp`](crate::Graceful::udp).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = graceful_tokio::udp("127.0.0.1:5353").await?;
/// graceful_tokio::ready()?;
/// let mut buf = [0u8; 1500];
/// while let Some((len, peer)) = socket.recv_from(&mut buf).await? {
///     socket.send_to(&buf[..len], peer).await?;
/// }
/// // Replaced or stopping: the new generation receives from here on.
/// # Ok(())
/// # }
/// ```
pub struct UdpSocket {
    inner: tokio::net::UdpSocket,
    /// Keeps this socket counted as a listener; receives subscribe to its state.
    gate: GateWatch,
    /// `None` when the application reports readiness itself.
    report_ready: Option<ReportReady>,
    stopped: AtomicBool,
    /// Cancelled once the previous generation, which holds the same socket, no longer reads
    /// from it; until then this one does not read either.
    predecessor_paused: Option<tokio_util::sync::CancellationToken>,
}

impl UdpSocket {
    pub(crate) fn new(
        inner: tokio::net::UdpSocket,
        gate: GateWatch,
        report_ready: Option<ReportReady>,
    ) -> UdpSocket {
        UdpSocket {
            inner,
            gate,
            report_ready,
            stopped: AtomicBool::new(false),
            predecessor_paused: None,
        }
    }

    /// Makes the first receive wait until `paused` is cancelled: the previous generation no
    /// longer reads.
    pub(crate) fn after(mut self, paused: tokio_util::sync::CancellationToken) -> Self {
        self.predecessor_paused = Some(paused);
        self
    }

    /// Makes this socket wait until the application calls [`ready`](crate::ready), instead of
    /// reporting readiness itself at its first receive: for servers that warm up while their
    /// receive loop already runs.
    pub fn wait_for_ready(mut self) -> Self {
        self.report_ready = None;
        self
    }

    /// Receives the next datagram into `buf`; returns its length and sender, or `None` once
    /// this process has been replaced or is stopping. Waits while this generation does not
    /// serve (before it is ready, and during a successor's probation). As with tokio's
    /// `recv_from`, a datagram longer than `buf` is truncated.
    ///
    /// Cancel safe: a datagram is taken only in the step that completes the future, so
    /// dropping it before it completes loses none. Several tasks may receive at once.
    ///
    /// # Errors
    ///
    /// The socket's receive errors, as tokio's [`recv_from`](tokio::net::UdpSocket::recv_from);
    /// the socket stays usable.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        let mut gate = self.gate.receiver();
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(None);
            }
            // Marked seen here, so a change after this read completes `changed()` below.
            let state = *gate.borrow_and_update();
            match state {
                Accepting::Open => {
                    if let Some(paused) = self.predecessor_paused.as_ref() {
                        if !paused.is_cancelled() {
                            // Both generations hold the socket: read only once the previous
                            // one has stopped, which it says right after it heard this one's
                            // `ready` (or by exiting). A change of the gate meanwhile is seen.
                            tokio::select! {
                                () = paused.cancelled() => {}
                                changed = gate.changed() => {
                                    if changed.is_err() {
                                        return Ok(self.stop());
                                    }
                                }
                            }
                            continue;
                        }
                    }
                }
                Accepting::Closed => return Ok(self.stop()),
                Accepting::Paused => {
                    if gate.changed().await.is_err() {
                        return Ok(self.stop());
                    }
                    continue;
                }
                Accepting::NotReady => {
                    match &self.report_ready {
                        None => {
                            if gate.changed().await.is_err() {
                                return Ok(self.stop());
                            }
                        }
                        Some(report_ready) => {
                            if let Err(err) = report_ready() {
                                tracing::error!(
                                    %err,
                                    "this generation cannot report ready, so it receives \
                                     nothing; the previous generation, if any, keeps serving"
                                );
                                return Ok(self.stop());
                            }
                            // Readiness opened the gate; the next turn sees it.
                        }
                    }
                    continue;
                }
            }
            // The only read that takes a datagram: non-blocking, with the gate's state
            // borrowed, which holds the lock a pause needs to set it. So the gate is open during
            // the whole read, and once a pause is set, no read is in flight. tokio skips the
            // system call when the socket is known not to be readable.
            let received = {
                let state = gate.borrow();
                if *state != Accepting::Open {
                    continue;
                }
                self.inner.try_recv_from(buf)
            };
            match received {
                Ok(received) => return Ok(Some(received)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            if !wait_readable_or_change(&self.inner, &mut gate).await? {
                return Ok(self.stop());
            }
        }
    }

    /// Sends `buf` to `target`; returns the number of bytes sent. Never gated: a generation
    /// that has stopped receiving can still answer the datagrams it has read.
    ///
    /// Cancel safe, as tokio's [`send_to`](tokio::net::UdpSocket::send_to).
    ///
    /// # Errors
    ///
    /// As tokio's `send_to`.
    pub async fn send_to(&self, buf: &[u8], target: impl ToSocketAddrs) -> io::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    /// The address this socket is bound to.
    ///
    /// # Errors
    ///
    /// As tokio's `local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Whether the socket has stopped receiving for good.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The wrapped tokio socket, for socket options. Receiving from it directly bypasses the
    /// gate, and with it the guarantee that a replaced generation takes no datagram.
    pub fn get_ref(&self) -> &tokio::net::UdpSocket {
        &self.inner
    }

    /// Marks the socket stopped for good; the `None` a receive then returns.
    fn stop<T>(&self) -> Option<T> {
        self.stopped.store(true, Ordering::SeqCst);
        None
    }
}

/// Waits until `socket` may be readable or the gate changes, whichever comes first; `false`
/// when the handle has gone, so nothing will change the gate again. Takes no datagram.
async fn wait_readable_or_change(
    socket: &tokio::net::UdpSocket,
    gate: &mut watch::Receiver<Accepting>,
) -> io::Result<bool> {
    tokio::select! {
        // The gate first: a pause that comes with a datagram wins.
        biased;
        changed = gate.changed() => Ok(changed.is_ok()),
        readable = socket.readable() => readable.map(|()| true),
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("inner", &self.inner)
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::gate::Gate;

    /// A bound for every wait; generous, because it only matters when something is wrong.
    const STEP: Duration = Duration::from_secs(10);

    /// A socket on a free loopback port behind `gate`, with a client socket to send from.
    fn sockets(gate: &Gate) -> (Arc<UdpSocket>, std::net::UdpSocket) {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(std_socket).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(socket.local_addr().unwrap()).unwrap();
        let socket = UdpSocket::new(socket, gate.watch(true), None);
        (Arc::new(socket), client)
    }

    /// Whether a datagram `text` waits in the socket's queue: what a datagram left there looks
    /// like to the next generation. Waits for one, for [`STEP`] at most, without taking it (a
    /// peek, through the wrapped socket, so that the gate does not hide it).
    async fn queued(socket: &UdpSocket, text: &[u8]) -> bool {
        let mut buf = [0u8; 64];
        let peeked = tokio::time::timeout(STEP, socket.get_ref().peek_from(&mut buf)).await;
        matches!(peeked, Ok(Ok((len, _))) if &buf[..len] == text)
    }

    /// Lets every other task on this current-thread runtime run, and the reactor deliver the
    /// socket's readiness: a receive that wrongly reads while paused has taken the datagram by
    /// then.
    async fn let_others_run() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    /// The next datagram the receiving task passed on; `None` once its loop has ended.
    async fn next(received: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Option<Vec<u8>> {
        tokio::time::timeout(STEP, received.recv())
            .await
            .expect("the receiving task passed a datagram on, or ended, in time")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pending_receive_takes_nothing_while_paused_and_resumes_and_ends_with_the_gate() {
        let gate = Gate::new();
        gate.set(Accepting::Open);
        let (socket, client) = sockets(&gate);
        let (received_tx, mut received) = mpsc::unbounded_channel();
        let receiver = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut buf = [0u8; 64];
                while let Some((len, _)) = socket.recv_from(&mut buf).await.unwrap() {
                    received_tx.send(buf[..len].to_vec()).unwrap();
                }
            }
        });
        client.send(b"open").unwrap();
        assert_eq!(next(&mut received).await.as_deref(), Some(&b"open"[..]));

        // The receive is pending again, waiting for a datagram, when the gate pauses.
        let_others_run().await;
        gate.set(Accepting::Paused);
        client.send(b"paused").unwrap();
        assert!(
            queued(&socket, b"paused").await,
            "the datagram reached the socket"
        );
        let_others_run().await;
        assert!(
            received.try_recv().is_err(),
            "a paused socket received a datagram"
        );
        assert!(
            queued(&socket, b"paused").await,
            "the datagram stays queued for the generation that serves"
        );

        // A rollback: the same receive takes it now.
        gate.set(Accepting::Open);
        assert_eq!(next(&mut received).await.as_deref(), Some(&b"paused"[..]));

        // Retired: the receive ends, and what arrives is left for the successor.
        gate.set(Accepting::Closed);
        assert_eq!(next(&mut received).await, None, "the receive loop ended");
        tokio::time::timeout(STEP, receiver)
            .await
            .expect("the receiving task ended")
            .unwrap();
        assert!(socket.is_stopped());
        client.send(b"closed").unwrap();
        assert!(queued(&socket, b"closed").await);
        let mut buf = [0u8; 64];
        assert!(socket.recv_from(&mut buf).await.unwrap().is_none());
        // Sending still works, for answers to what was read.
        socket
            .send_to(b"answer", client.local_addr().unwrap())
            .await
            .unwrap();
        client.set_read_timeout(Some(STEP)).unwrap();
        let len = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"answer");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_received_before_ready() {
        let gate = Gate::new();
        let (socket, client) = sockets(&gate);
        let receiver = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut buf = [0u8; 64];
                let (len, _) = socket.recv_from(&mut buf).await.unwrap().unwrap();
                buf[..len].to_vec()
            }
        });
        client.send(b"early").unwrap();
        assert!(queued(&socket, b"early").await);
        let_others_run().await;
        assert!(!receiver.is_finished(), "received before ready");
        gate.open_if_not_ready();
        let received = tokio::time::timeout(STEP, receiver)
            .await
            .expect("received once ready")
            .unwrap();
        assert_eq!(received, b"early");
    }

    /// What the guarantee rests on: tokio documents that an outstanding borrow of a watch
    /// channel's value holds its read lock, which sending waits for. A receive reads with the
    /// state borrowed, so a pause cannot be set in the middle of a read.
    #[test]
    fn a_pause_waits_for_a_read_in_progress() {
        let gate = Arc::new(Gate::new());
        gate.set(Accepting::Open);
        let watch = gate.watch(false);
        let receiver = watch.receiver();
        let reading = receiver.borrow();
        let (paused_tx, paused) = std::sync::mpsc::channel();
        let pausing = std::thread::spawn({
            let gate = gate.clone();
            move || {
                gate.set(Accepting::Paused);
                paused_tx.send(()).unwrap();
            }
        });
        assert!(
            paused.recv_timeout(Duration::from_millis(200)).is_err(),
            "the pause was set while a read was in progress"
        );
        drop(reading);
        paused
            .recv_timeout(STEP)
            .expect("the pause is set once the read is done");
        pausing.join().unwrap();
        assert_eq!(*receiver.borrow(), Accepting::Paused);
    }

    #[test]
    fn a_socket_counts_as_a_listener_while_it_lives() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let gate = Gate::new();
        let (socket, _client) = sockets(&gate);
        assert_eq!(gate.listeners(), 1);
        drop(socket);
        assert_eq!(gate.listeners(), 0);
    }
}
