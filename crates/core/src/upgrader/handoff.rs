//! What a generation hands its successor besides the sockets: the application's state, and the
//! channel its live connections travel on (`handoff.rs` has the wire).
//!
//! Invariants kept here:
//! - State is sent only when the new generation asks for it, before it is ready: the
//!   application's writer runs then, on a thread of the upgrade's own, and the new generation
//!   waits for the answer. A writer that fails (or panics) is answered as such, so the new
//!   generation fails to start (unless its application chooses to start fresh) and the upgrade
//!   fails with this generation still serving.
//! - Once the writer has run, the state belongs to the successor, unless the upgrade fails or
//!   is rolled back: then the undo hook runs, once, and this generation's application keeps
//!   its own. After the probation it never runs.
//! - Connections go only to a successor that announced their tag (`takes …` on the link,
//!   before `ready`); a successor without hand-off support (an older build, or one that asked
//!   for nothing) announces nothing and gets none.

use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Inner, State, Upgrader};
use crate::error::{Error, Result};
use crate::handoff::{self, Frame, FrameReader, OutFrame, SavedState, ToSuccessor};
use crate::link::{self, Message};
use crate::sys;

type Writer = Arc<dyn Fn() -> io::Result<SavedState> + Send + Sync>;
type Undo = Arc<dyn Fn() + Send + Sync>;

/// The hand-off side of an upgrader.
#[derive(Default)]
pub(crate) struct HandOffs {
    /// Our end of the channel to the parent, if it opened one.
    parent: Mutex<Option<OwnedFd>>,
    /// Whether the state has been asked for already.
    state_read: AtomicBool,
    /// The tags of the connections this generation takes, announced at `ready`.
    takes: Mutex<Vec<String>>,
    writer: Mutex<Option<Writer>>,
    undo: Mutex<Option<Undo>>,
    /// The writer has run for the successor now starting or on probation: undo is owed if it
    /// fails.
    given: Arc<AtomicBool>,
    /// The channel to a successor that is ready, until an adapter takes it.
    successor: Mutex<Option<ToSuccessor>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HandOffs {
    pub(crate) fn new(parent: Option<OwnedFd>) -> HandOffs {
        HandOffs {
            parent: Mutex::new(parent),
            ..HandOffs::default()
        }
    }

    /// Whether the parent opened a hand-off channel (it is of a build that has one).
    pub(crate) fn has_parent(&self) -> bool {
        lock(&self.parent).is_some()
    }

    /// The `takes …` message for the parent, if there is a channel and anything to take.
    pub(crate) fn announcement(&self) -> Option<Message> {
        let takes = lock(&self.takes);
        (lock(&self.parent).is_some() && !takes.is_empty()).then(|| Message::Takes(takes.clone()))
    }

    /// Runs the undo hook if the state was given to a successor that has now failed.
    pub(crate) fn undo_if_given(&self, pid: u32) {
        if !self.given.swap(false, Ordering::SeqCst) {
            return;
        }
        let undo = lock(&self.undo).clone();
        match undo {
            Some(undo) => {
                tracing::info!(
                    pid,
                    "the state handed over is this generation's again: undoing"
                );
                undo();
            }
            None => tracing::debug!(pid, "the state handed over came back; no undo hook is set"),
        }
    }

    /// The successor keeps the state for good.
    pub(crate) fn settle(&self) {
        self.given.store(false, Ordering::SeqCst);
    }

    pub(crate) fn set_successor(&self, successor: Option<ToSuccessor>) {
        *lock(&self.successor) = successor;
    }
}

/// Answers the new generation's request for the state, on a thread of its own, while the
/// upgrade waits for `ready`.
pub(crate) struct StateServer {
    /// Its end closes to stop the thread.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl StateServer {
    /// Starts answering on `socket` (a duplicate of our end) until `deadline`.
    pub(crate) fn start(
        inner: &Inner,
        socket: OwnedFd,
        deadline: Instant,
    ) -> io::Result<StateServer> {
        let (stop_read, stop) = sys::pipe_cloexec()?;
        let writer = lock(&inner.handoffs.writer).clone();
        let given = inner.handoffs.given.clone();
        let pid = inner.pid;
        let thread = std::thread::Builder::new()
            .name("graceful-state".into())
            .spawn(move || serve_state(pid, &socket, &stop_read, writer, &given, deadline))?;
        Ok(StateServer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops answering (the new generation is ready, or has failed) and waits for the thread.
    pub(crate) fn finish(mut self) {
        self.join();
    }

    fn join(&mut self) {
        // Closing the write end makes the read end readable: the thread's wait ends.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StateServer {
    fn drop(&mut self) {
        self.join();
    }
}

fn serve_state(
    pid: u32,
    socket: &OwnedFd,
    stop: &OwnedFd,
    writer: Option<Writer>,
    given: &AtomicBool,
    deadline: Instant,
) {
    let mut reader = FrameReader::new();
    loop {
        match reader.try_next(socket.as_fd()) {
            Ok(Some(Frame::StateRequest)) => break,
            Ok(None) => return,
            Ok(Some(other)) => {
                tracing::warn!(
                    pid,
                    ?other,
                    "the new generation sent an unexpected hand-off frame"
                );
                return;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                match sys::wait_readable_either(socket.as_fd(), Some(stop.as_fd()), Some(left)) {
                    Ok(Some(sys::Readable::First)) => {}
                    Ok(_) | Err(_) => return,
                }
            }
            Err(err) => {
                tracing::warn!(pid, %err, "cannot read the new generation's hand-off request");
                return;
            }
        }
    }
    let Some(writer) = writer else {
        if let Err(err) = OutFrame::no_state().send_until(socket.as_fd(), deadline) {
            tracing::warn!(pid, %err, "cannot tell the new generation there is no state");
        }
        return;
    };
    // From here on the state is the successor's, unless the upgrade fails.
    given.store(true, Ordering::SeqCst);
    // A writer that panics fails the save like one that returns an error.
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer()))
        .unwrap_or_else(|_| Err(io::Error::other("the state writer panicked")));
    let state = match saved {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(
                pid,
                %err,
                "cannot save the state for the new generation; it gets none, and fails to start \
                 unless it chooses to start fresh"
            );
            let reason = err.to_string();
            if let Err(err) = OutFrame::state_failed(&reason).send_until(socket.as_fd(), deadline) {
                tracing::warn!(pid, %err, "cannot tell the new generation the state failed");
            }
            return;
        }
    };
    let fds = state.fds.iter().map(AsFd::as_fd).collect();
    let sent = OutFrame::state(state.version, &state.bytes, fds)
        .and_then(|mut frame| frame.send_until(socket.as_fd(), deadline));
    match sent {
        Ok(()) => tracing::info!(
            pid,
            version = state.version,
            bytes = state.bytes.len(),
            fds = state.fds.len(),
            "state handed to the new generation"
        ),
        Err(err) => tracing::error!(pid, %err, "cannot hand the state to the new generation"),
    }
}

impl Upgrader {
    /// Sets what saves this generation's state for its successor: called once per upgrade, on
    /// the upgrade's thread, when the new generation asks for the state (it does so with
    /// [`inherited_state`](Self::inherited_state), before it is ready). The bytes (at most
    /// [`handoff::MAX_STATE_BYTES`]) and descriptors (at most [`handoff::MAX_STATE_FDS`]) it
    /// returns are sent as they are; a successor that reads another version fails to start,
    /// or starts fresh if its application decides so.
    ///
    /// Should it fail, the new generation gets no state and (by default) fails to start: the
    /// upgrade fails and this generation serves on. The state it returned belongs to the new
    /// generation from then on, unless the upgrade fails or is rolled back: see
    /// [`set_state_undo`](Self::set_state_undo). Writes the application makes after the call
    /// are not in it: the new generation serves on from the state as saved.
    pub fn set_state_writer(
        &self,
        writer: impl Fn() -> io::Result<SavedState> + Send + Sync + 'static,
    ) {
        *lock(&self.inner.handoffs.writer) = Some(Arc::new(writer));
    }

    /// Sets what runs when state saved by the writer comes back (or the writer failed): the
    /// upgrade failed after the new generation asked for it (it died, was not ready in time, or the upgrade was
    /// cancelled), or the new generation was rolled back during its probation. Runs once per
    /// such upgrade, on the thread that saw the failure; must not block.
    pub fn set_state_undo(&self, undo: impl Fn() + Send + Sync + 'static) {
        *lock(&self.inner.handoffs.undo) = Some(Arc::new(undo));
    }

    /// The state the previous generation handed over, if it was started by an upgrade and has
    /// a state writer; `None` for a first start, a parent without a writer, or an older build
    /// that has no hand-off. Blocks until the previous generation answers, for up to the
    /// upgrade timeout. Call it once, before [`ready`](Self::ready).
    ///
    /// # Errors
    ///
    /// [`Error::StateVersion`] when the state's version is not in `versions` (the default
    /// answer is to fail: return the error, the upgrade fails and the previous generation
    /// serves on with its state; an application that prefers to start fresh matches it);
    /// [`Error::HandOff`] when it is asked for after `ready`, a second time, or the previous
    /// generation failed to save it, did not answer in time or broke the protocol.
    pub fn inherited_state(&self, versions: RangeInclusive<u32>) -> Result<Option<SavedState>> {
        let inner = &self.inner;
        let problem = |problem: String| Error::HandOff {
            pid: inner.pid,
            problem,
        };
        if *inner.state() != State::Starting {
            return Err(problem("the state can only be read before ready()".into()));
        }
        let parent = lock(&inner.handoffs.parent);
        let Some(socket) = parent.as_ref() else {
            return Ok(None);
        };
        if inner.handoffs.state_read.swap(true, Ordering::SeqCst) {
            return Err(problem("the state has been read already".into()));
        }
        let deadline = Instant::now() + inner.config.upgrade_timeout;
        OutFrame::state_request()
            .send_until(socket.as_fd(), deadline)
            .map_err(|err| problem(format!("cannot ask the previous generation for it: {err}")))?;
        let answer = FrameReader::new().next_until(socket.as_fd(), deadline);
        let parent_pid = inner.parent_pid.unwrap_or_default();
        match answer {
            Ok(Some(Frame::State {
                version,
                bytes,
                fds,
            })) => {
                if !versions.contains(&version) {
                    return Err(Error::StateVersion {
                        pid: inner.pid,
                        found: version,
                        accepted: versions,
                    });
                }
                tracing::info!(
                    pid = inner.pid,
                    parent_pid,
                    version,
                    bytes = bytes.len(),
                    fds = fds.len(),
                    "inherited the previous generation's state"
                );
                Ok(Some(SavedState {
                    version,
                    bytes,
                    fds,
                }))
            }
            Ok(Some(Frame::NoState)) => Ok(None),
            Ok(Some(Frame::StateFailed { reason })) => Err(problem(format!(
                "pid {parent_pid} could not save its state: {reason}"
            ))),
            Ok(Some(other)) => Err(problem(format!(
                "pid {parent_pid} answered the request for the state with {other:?}"
            ))),
            Ok(None) => Err(problem(format!(
                "pid {parent_pid} closed the hand-off channel without handing over its state: \
                 it could not save it (its log says why) or it exited"
            ))),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => Err(problem(format!(
                "pid {parent_pid} did not hand over its state within {:?}",
                inner.config.upgrade_timeout
            ))),
            Err(err) => Err(problem(format!(
                "cannot read the state from pid {parent_pid}: {err}"
            ))),
        }
    }

    /// Announces that this generation takes over live connections tagged `tag` from the
    /// previous one. Call it before [`ready`](Self::ready), once per tag; then take the
    /// channel they arrive on with [`parent_handoff`](Self::parent_handoff). A runtime adapter
    /// does both.
    ///
    /// # Errors
    ///
    /// [`Error::HandOff`] after `ready`, or for a tag that is not 1 to
    /// [`handoff::MAX_TAG`] printable ASCII characters, or when the tags do not fit in one
    /// line of the link.
    pub fn take_connections(&self, tag: &str) -> Result<()> {
        let inner = &self.inner;
        let problem = |problem: String| Error::HandOff {
            pid: inner.pid,
            problem,
        };
        if *inner.state() != State::Starting {
            return Err(problem(format!(
                "connections tagged {tag:?} must be asked for before ready()"
            )));
        }
        handoff::check_tag(tag).map_err(|err| problem(err.to_string()))?;
        let mut takes = lock(&inner.handoffs.takes);
        if takes.iter().any(|t| t == tag) {
            return Ok(());
        }
        let line: usize = takes.iter().map(|t| t.len() + 1).sum::<usize>() + tag.len() + 7;
        if line >= link::MAX_LINE {
            return Err(problem(format!(
                "too many hand-off tags: {takes:?} and {tag:?} do not fit in one line"
            )));
        }
        takes.push(tag.to_owned());
        Ok(())
    }

    /// The channel the previous generation's connections arrive on, once this generation is
    /// ready and announced tags: for the runtime adapter, which reads it. `None` without a
    /// channel or tags, and after it was taken.
    pub fn parent_handoff(&self) -> Option<OwnedFd> {
        let inner = &self.inner;
        if *inner.state() == State::Starting || lock(&inner.handoffs.takes).is_empty() {
            return None;
        }
        lock(&inner.handoffs.parent).take()
    }

    /// The channel to the successor that replaced this generation, with the tags it takes,
    /// once per upgrade: for the runtime adapter, which hands connections over on it. `None`
    /// when the successor takes none.
    pub fn successor_handoff(&self) -> Option<ToSuccessor> {
        lock(&self.inner.handoffs.successor).take()
    }
}
