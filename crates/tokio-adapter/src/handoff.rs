//! Live hand-off: connections and state move to the next generation instead of being closed.
//!
//! The old generation, at a boundary of a connection's protocol (after a complete answer, with
//! nothing half-read), hands the connection over with [`Graceful::hand_off`]: its socket
//! travels to the successor over the hand-off channel (SCM_RIGHTS), with a record (the
//! protocol's state and any input already read but not processed). The successor, which asked
//! for that tag with [`Graceful::handed_over`] before it was ready, receives a stream of
//! [`Handed`] connections and serves on: the client keeps its TCP connection, and the kernel
//! keeps whatever was in flight in its buffers.
//!
//! Invariants kept here:
//! - A connection is handed over only to a successor that announced its tag; otherwise, and
//!   whenever the hand-off cannot start (no successor, a record over
//!   [`MAX_RECORD`](graceful_core::handoff::MAX_RECORD), the successor not reading within
//!   [`HAND_OFF_TIMEOUT`]), [`hand_off`](Graceful::hand_off) gives the connection back
//!   untouched, and the application closes it as it would without hand-off.
//! - Frames never interleave: one writer task per successor sends them, in batches of up to
//!   253 connections per system call, and finishes what it has begun.
//! - Once sent, a connection is the successor's: this generation's copy is dropped, which does
//!   not close it (the successor's copy keeps it open). If the successor dies before taking
//!   it, the kernel closes it, and its client sees the connection end at a boundary, as
//!   without hand-off.
//! - The successor takes each connection as a tracked one (its drain waits for it), checks
//!   that it is a connected TCP socket, and queues at most [`QUEUE`] per tag for the
//!   application: beyond that it stops reading, which makes the old generation wait, then give
//!   connections back. A connection it cannot take is shut down and counted.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use graceful_core::handoff::{Frame, FrameReader, OutFrame, ToSuccessor};
use graceful_core::{Error, Result, SavedState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::handle::Graceful;
use crate::prefixed::Prefixed;
use crate::tracked::{ConnectionGuard, TrackedStream};

/// How long [`Graceful::hand_off`] waits for room on the channel before it gives the
/// connection back.
pub const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(5);

/// How many handed-over connections of one tag wait for the application at most.
pub const QUEUE: usize = 1024;

/// A connection handed over by the previous generation; see [`Graceful::handed_over`].
#[derive(Debug)]
pub struct Handed {
    stream: TrackedStream<TcpStream>,
    record: Vec<u8>,
}

impl Handed {
    /// The record the previous generation sent with it: the protocol's state and the input it
    /// had read but not processed, in the format the two generations agree on for the tag.
    pub fn record(&self) -> &[u8] {
        &self.record
    }

    /// The connection (tracked: this generation's drain waits for it) and its record.
    pub fn into_parts(self) -> (TrackedStream<TcpStream>, Vec<u8>) {
        (self.stream, self.record)
    }

    /// The connection, reading its record first: for a record that is the input the previous
    /// generation had read but not processed.
    pub fn into_stream(self) -> Prefixed<TrackedStream<TcpStream>> {
        Prefixed::new(self.stream, self.record)
    }
}

/// The connections handed over under one tag, as they arrive. Ends when the previous
/// generation has exited (or has no more to give); see [`Graceful::handed_over`].
#[must_use = "streams do nothing unless polled"]
pub struct HandedOver {
    rx: mpsc::Receiver<Handed>,
}

impl fmt::Debug for HandedOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedOver").finish_non_exhaustive()
    }
}

impl Stream for HandedOver {
    type Item = Handed;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Handed>> {
        self.rx.poll_recv(cx)
    }
}

/// A connection [`Graceful::hand_off`] gave back: serve it on, or close it as without hand-off.
pub struct NotHandedOff<S> {
    /// The connection, untouched.
    pub stream: S,
    /// Why it stays.
    pub reason: String,
}

impl<S> fmt::Debug for NotHandedOff<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotHandedOff")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Display for NotHandedOff<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the connection was not handed over: {}", self.reason)
    }
}

impl<S> std::error::Error for NotHandedOff<S> {}

/// The hand-off side of the handle.
#[derive(Default)]
pub(crate) struct HandOffs {
    /// Where connections of each tag go, asked for before ready.
    routes: Mutex<HashMap<String, mpsc::Sender<Handed>>>,
    /// The task that receives them from the previous generation.
    receiver: Mutex<Option<AbortOnDropHandle<()>>>,
    /// Cancelled once that task has ended (or if none runs): nothing more will arrive.
    received_all: tokio_util::sync::CancellationToken,
    /// The channel to the successor, as the upgrader gave it when the successor was ready,
    /// until the first hand-off opens it.
    pending: Mutex<Option<ToSuccessor>>,
    /// The channel to the successor, opened at the first hand-off after it is ready.
    outgoing: Mutex<Option<Arc<Outgoing>>>,
    /// Connections handed over to successors.
    pub(crate) handed_off: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The channel to a successor: connections queue for its writer task, which sends them in
/// batches.
struct Outgoing {
    pid: u32,
    tags: Vec<String>,
    jobs: mpsc::UnboundedSender<Job>,
    _writer: AbortOnDropHandle<()>,
}

/// One connection on its way out: a duplicate of its descriptor (the caller keeps its own until
/// the answer), and where the answer goes.
struct Job {
    fd: OwnedFd,
    tag: String,
    record: Vec<u8>,
    queued: tokio::time::Instant,
    answer: oneshot::Sender<std::result::Result<(), String>>,
}

impl HandOffs {
    /// Completes once nothing more can arrive from the previous generation: it closed the
    /// channel (it exited), or there is none.
    pub(crate) async fn received_all(&self) {
        self.received_all.cancelled().await;
    }

    /// Forgets the channel to a successor: a new one is ready, or it was rolled back.
    pub(crate) fn forget_successor(&self) {
        lock(&self.pending).take();
        lock(&self.outgoing).take();
    }

    /// Keeps the channel to the successor that just became ready, if it takes connections.
    pub(crate) fn successor_ready(&self, upgrader: &graceful_core::Upgrader) {
        *lock(&self.pending) = upgrader.successor_handoff();
    }

    /// Whether connections can be handed to a successor now.
    pub(crate) fn can_hand_off(&self) -> bool {
        lock(&self.pending).is_some() || lock(&self.outgoing).is_some()
    }
}

impl Graceful {
    /// Sets what saves this generation's state for the next one, and what undoes the save if
    /// the upgrade fails or is rolled back; see [`Upgrader::set_state_writer`] and
    /// [`Upgrader::set_state_undo`](graceful_core::Upgrader::set_state_undo). The writer runs
    /// on the upgrade's thread, when the new generation asks for the state.
    ///
    /// [`Upgrader::set_state_writer`]: graceful_core::Upgrader::set_state_writer
    pub fn save_state(
        &self,
        writer: impl Fn() -> io::Result<SavedState> + Send + Sync + 'static,
        undo: impl Fn() + Send + Sync + 'static,
    ) {
        self.inner.upgrader.set_state_writer(writer);
        self.inner.upgrader.set_state_undo(undo);
    }

    /// The state the previous generation handed over, if this one was started by an upgrade
    /// and the previous one saves state ([`save_state`](Self::save_state)); `None` otherwise.
    /// Call it once, before [`ready`](Self::ready). Waits for the previous generation's
    /// answer, on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`Error::StateVersion`] when the version is not in `versions`: return it to fail this
    /// start (the previous generation serves on with its state; the default), or match it to
    /// start fresh. [`Error::HandOff`] as
    /// [`Upgrader::inherited_state`](graceful_core::Upgrader::inherited_state).
    pub async fn inherited_state(
        &self,
        versions: RangeInclusive<u32>,
    ) -> Result<Option<SavedState>> {
        let upgrader = self.inner.upgrader.clone();
        crate::handle::run_blocking("graceful-state", move || upgrader.inherited_state(versions))
            .await
    }

    /// The connections tagged `tag` that the previous generation hands over, as they arrive.
    /// Ask before [`ready`](Self::ready): the tag is announced to the previous generation with
    /// the readiness, and it hands over only what the new one announced. Serve each like an
    /// accepted connection, starting from its [`record`](Handed::record).
    ///
    /// The stream ends when the previous generation has exited; it never yields anything in a
    /// process that was not started by an upgrade, or whose parent has no hand-off.
    ///
    /// # Errors
    ///
    /// [`Error::HandOff`] after `ready`, for a tag asked for twice, or a tag that is not 1 to
    /// 64 printable ASCII characters.
    pub fn handed_over(&self, tag: &str) -> Result<HandedOver> {
        let mut routes = lock(&self.inner.handoffs.routes);
        if routes.contains_key(tag) {
            return Err(Error::HandOff {
                pid: std::process::id(),
                problem: format!("connections tagged {tag:?} are asked for already"),
            });
        }
        self.inner.upgrader.take_connections(tag)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        routes.insert(tag.to_owned(), tx);
        Ok(HandedOver { rx })
    }

    /// Starts receiving connections from the previous generation, once ready.
    pub(crate) fn start_receiving(&self) {
        let received_all = self.inner.handoffs.received_all.clone();
        let Some(socket) = self.inner.upgrader.parent_handoff() else {
            received_all.cancel();
            return;
        };
        let routes = std::mem::take(&mut *lock(&self.inner.handoffs.routes));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "ready() was called outside a Tokio runtime: handed-over connections cannot be \
                 received, and the previous generation closes them"
            );
            received_all.cancel();
            return;
        };
        let graceful = self.clone();
        let task = runtime.spawn(async move {
            let _done = received_all.drop_guard();
            let parent = graceful.inner.upgrader.parent_pid().unwrap_or_default();
            match receive(&graceful, socket, routes).await {
                Ok(counts) => tracing::info!(
                    pid = std::process::id(),
                    parent,
                    received = counts.received,
                    refused = counts.refused,
                    "the previous generation has no more connections to hand over"
                ),
                Err((counts, err)) => tracing::warn!(
                    pid = std::process::id(),
                    parent,
                    received = counts.received,
                    refused = counts.refused,
                    %err,
                    "the hand-off channel from the previous generation failed"
                ),
            }
        });
        *lock(&self.inner.handoffs.receiver) = Some(AbortOnDropHandle::new(task));
    }

    /// Hands the connection `stream` over to the generation that replaced this one, with
    /// `record` (at most 64 KiB: the protocol's state and the input read but not processed),
    /// under `tag`. Call it at a boundary of the protocol, once
    /// [`upgrade_requested`](Self::upgrade_requested) has completed, instead of closing the
    /// connection.
    ///
    /// Once it returns `Ok`, the successor has the connection and this process's copy is
    /// closed (which does not close the connection). Otherwise the connection is given back,
    /// untouched, with the reason: no successor takes `tag` (none is ready, it is an older
    /// build, or this process is stopping), the record is too long, or the successor did not
    /// make room within [`HAND_OFF_TIMEOUT`]. Close it then as without hand-off.
    ///
    /// Connections are sent in batches by a task of their own, one system call for up to 253.
    /// One that waits more than [`HAND_OFF_TIMEOUT`] for room on the channel is given back.
    /// Dropping the future does not take a connection back that is already queued: it may be
    /// handed over all the same (this process's copy is closed either way).
    ///
    /// # Errors
    ///
    /// [`NotHandedOff`] with the connection, as above.
    pub async fn hand_off<S: AsFd>(
        &self,
        stream: S,
        tag: &str,
        record: &[u8],
    ) -> std::result::Result<(), NotHandedOff<S>> {
        let give_back = |stream, reason: String| Err(NotHandedOff { stream, reason });
        // Checked here, so that what the writer sends is known to fit.
        if let Err(err) = graceful_core::handoff::check_connection(tag, record) {
            return give_back(stream, err.to_string());
        }
        let outgoing = match self.outgoing() {
            Ok(outgoing) => outgoing,
            Err(reason) => return give_back(stream, reason),
        };
        if !outgoing.tags.iter().any(|t| t == tag) {
            let reason = format!(
                "the successor (pid {}) takes {:?}, not {tag:?}",
                outgoing.pid, outgoing.tags
            );
            return give_back(stream, reason);
        }
        let fd = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(err) => return give_back(stream, format!("cannot duplicate it: {err}")),
        };
        let (answer, answered) = oneshot::channel();
        let job = Job {
            fd,
            tag: tag.to_owned(),
            record: record.to_vec(),
            queued: tokio::time::Instant::now(),
            answer,
        };
        if outgoing.jobs.send(job).is_err() {
            return give_back(stream, "the hand-off writer has ended".into());
        }
        let sent = answered
            .await
            .unwrap_or_else(|_| Err("the hand-off writer has ended".into()));
        match sent {
            Ok(()) => {
                self.inner
                    .handoffs
                    .handed_off
                    .fetch_add(1, Ordering::Relaxed);
                drop(stream);
                Ok(())
            }
            Err(reason) => give_back(stream, reason),
        }
    }

    /// How many connections this generation has handed over to its successors.
    pub fn handed_off(&self) -> usize {
        self.inner.handoffs.handed_off.load(Ordering::Relaxed)
    }

    fn outgoing(&self) -> std::result::Result<Arc<Outgoing>, String> {
        let mut outgoing = lock(&self.inner.handoffs.outgoing);
        if let Some(current) = &*outgoing {
            return Ok(current.clone());
        }
        if self.is_stopping() {
            return Err("this generation is stopping, without a successor".into());
        }
        let ToSuccessor { pid, socket, tags } = lock(&self.inner.handoffs.pending)
            .take()
            .ok_or("no successor takes connections")?;
        let socket = watch(socket, Interest::READABLE | Interest::WRITABLE)
            .map_err(|err| format!("cannot watch the hand-off channel: {err}"))?;
        let (jobs, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(socket, queue, pid));
        let current = Arc::new(Outgoing {
            pid,
            tags,
            jobs,
            _writer: AbortOnDropHandle::new(writer),
        });
        *outgoing = Some(current.clone());
        Ok(current)
    }
}

/// Registers the channel with the runtime's reactor.
fn watch(socket: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open until dropped, and its number never changes; the `AsyncFd`
    // owns it from here on.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}

/// The most connections sent with one system call (the descriptors one message can carry).
const BATCH: usize = graceful_core::handoff::MAX_STATE_FDS;

/// The writer task of a channel to a successor: sends the queued connections in batches, and
/// answers each job.
///
/// A batch waits for room on the channel until its oldest job has waited [`HAND_OFF_TIMEOUT`],
/// and is then given back whole. Once a batch has begun to go out, its descriptors are all in
/// the kernel's hands: if the channel fails before the batch is finished, the frames that went
/// out whole are the successor's (or are lost with it), the others are given back, and the
/// channel carries nothing more (the successor cannot read past half a frame).
async fn write(socket: AsyncFd<OwnedFd>, mut queue: mpsc::UnboundedReceiver<Job>, pid: u32) {
    let mut jobs = Vec::with_capacity(BATCH);
    let mut broken: Option<String> = None;
    while queue.recv_many(&mut jobs, BATCH).await > 0 {
        if let Some(reason) = &broken {
            for job in jobs.drain(..) {
                let _ = job.answer.send(Err(reason.clone()));
            }
            continue;
        }
        let mut ends = Vec::with_capacity(jobs.len());
        let mut frames = Vec::with_capacity(jobs.len());
        for job in &jobs {
            // Checked by `hand_off` already.
            let frame = OutFrame::connection(&job.tag, &job.record, job.fd.as_fd())
                .expect("a frame checked before it was queued");
            ends.push(ends.last().copied().unwrap_or(0) + frame.len());
            frames.push(frame);
        }
        let mut batch = OutFrame::batch(frames).expect("at most one message's descriptors");
        let deadline = jobs[0].queued + HAND_OFF_TIMEOUT;
        let written = write_batch(&socket, &mut batch, deadline, pid).await;
        let sent = batch.sent();
        drop(batch);
        for (job, end) in jobs.drain(..).zip(ends) {
            let answer = match &written {
                Ok(()) => Ok(()),
                Err(_) if end <= sent => Ok(()),
                Err(reason) => Err(reason.clone()),
            };
            let _ = job.answer.send(answer);
        }
        if let Err(reason) = written {
            if sent > 0 {
                broken = Some(reason);
            }
        }
    }
}

/// Writes a batch: waits for room until `deadline` before the first byte, then until it is all
/// out.
async fn write_batch(
    socket: &AsyncFd<OwnedFd>,
    batch: &mut OutFrame<'_>,
    deadline: tokio::time::Instant,
    pid: u32,
) -> std::result::Result<(), String> {
    loop {
        let ready = if batch.started() {
            socket.writable().await
        } else {
            match tokio::time::timeout_at(deadline, socket.writable()).await {
                Ok(ready) => ready,
                Err(_) => {
                    return Err(format!(
                        "the successor (pid {pid}) took nothing for {HAND_OFF_TIMEOUT:?}"
                    ));
                }
            }
        };
        let mut ready = ready.map_err(|err| err.to_string())?;
        match ready.try_io(|socket| batch.try_send(socket.get_ref().as_fd())) {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => {
                return Err(format!(
                    "the channel to the successor (pid {pid}) failed: {err}"
                ));
            }
            Err(_would_block) => {}
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    received: usize,
    refused: usize,
}

/// Receives connections until the previous generation closes the channel.
async fn receive(
    graceful: &Graceful,
    socket: OwnedFd,
    routes: HashMap<String, mpsc::Sender<Handed>>,
) -> std::result::Result<Counts, (Counts, io::Error)> {
    let mut counts = Counts::default();
    let socket = match watch(socket, Interest::READABLE) {
        Ok(socket) => socket,
        Err(err) => return Err((counts, err)),
    };
    let mut reader = FrameReader::new();
    loop {
        let frame = socket
            .async_io(Interest::READABLE, |socket| reader.try_next(socket.as_fd()))
            .await;
        let (tag, record, fd) = match frame {
            Ok(None) => return Ok(counts),
            Ok(Some(Frame::Connection { tag, record, fd })) => (tag, record, fd),
            Ok(Some(Frame::LostConnection { tag })) => {
                counts.refused += 1;
                tracing::warn!(
                    tag,
                    "a handed-over connection was lost on the way: this process is at its \
                     descriptor limit"
                );
                continue;
            }
            Ok(Some(other)) => {
                let err = io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected frame {other:?}"),
                );
                return Err((counts, err));
            }
            Err(err) => return Err((counts, err)),
        };
        let refuse = |fd: OwnedFd, why: &str, counts: &mut Counts| {
            counts.refused += 1;
            tracing::warn!(
                tag,
                why,
                "closing a handed-over connection this process cannot take"
            );
            close_cleanly(fd);
        };
        let Some(route) = routes.get(&tag) else {
            refuse(fd, "nothing here takes its tag", &mut counts);
            continue;
        };
        let stream = match tcp_stream(fd) {
            Ok(stream) => stream,
            Err((fd, err)) => {
                match fd {
                    Some(fd) => refuse(fd, &err.to_string(), &mut counts),
                    None => {
                        counts.refused += 1;
                        tracing::warn!(tag, %err, "a handed-over connection is not usable");
                    }
                }
                continue;
            }
        };
        let guard = ConnectionGuard::new(graceful.inner.tracker.token());
        let handed = Handed {
            stream: TrackedStream::new(stream, guard),
            record,
        };
        match route.send(handed).await {
            Ok(()) => counts.received += 1,
            Err(mpsc::error::SendError(handed)) => {
                counts.refused += 1;
                let (stream, _) = handed.into_parts();
                let (stream, _guard) = stream.into_parts();
                tracing::warn!(
                    tag,
                    "the application stopped taking handed-over connections"
                );
                if let Ok(stream) = stream.into_std() {
                    close_cleanly(stream.into());
                }
            }
        }
    }
}

/// `fd` as a Tokio TCP stream, if it is a connected TCP socket; otherwise it is given back.
fn tcp_stream(fd: OwnedFd) -> std::result::Result<TcpStream, (Option<OwnedFd>, io::Error)> {
    let stream = std::net::TcpStream::from(fd);
    if let Err(err) = stream.peer_addr() {
        let err = io::Error::new(err.kind(), format!("not a connected TCP socket: {err}"));
        return Err((Some(stream.into()), err));
    }
    if let Err(err) = stream.set_nonblocking(true) {
        return Err((Some(stream.into()), err));
    }
    TcpStream::from_std(stream).map_err(|err| (None, err))
}

/// Closes a connection this process cannot serve so that its client sees an end of stream.
fn close_cleanly(fd: OwnedFd) {
    let stream = std::net::TcpStream::from(fd);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
