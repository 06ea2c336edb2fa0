//! The generations alive and the links between them: the parent watcher, the child watcher
//! (which also watches the successor's probation), the count of living descendants, and the
//! rollback request and answer.
//!
//! Invariants kept here:
//! - Every process keeps a link to its parent (until the parent exits) and, once replaced, to
//!   its child. Each child tells its parent how many living descendants it has, so the oldest
//!   living generation, the one whose parent has exited, knows how many are alive and is the
//!   one told to finish when there are too many ([`check_generations`]). No generation waits
//!   for its parent to exit before it may be upgraded itself.
//! - The count relies on the chain of links staying whole: a replaced generation should not
//!   exit before its parent has (see [`Upgrader::parent_exited`](crate::Upgrader::parent_exited)).
//!   The tokio adapter's drain waits for that, within its deadline.
//! - A successor's exit during the probation is a failure, and rolls back, unless it said
//!   `stopping` first: a stop is never taken for a crash. The probation ends early when the
//!   successor is replaced itself or stops, and when its window passes.
//! - Each link is read by one thread, which owns its reader; the other side's messages are
//!   handled on that thread, in order.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::link::{self, Message, Reader};
use crate::sys;

/// The previous generation's answer to a rollback request: its pid, or why not.
type RollbackAnswer = std::result::Result<u32, String>;

/// The generation the watchers watch for: its identity and the transitions of its state
/// machine, which the upgrader keeps (`upgrader.rs`). The watchers decide when; the generation
/// decides whether.
pub(crate) trait Generation: Send + Sync + 'static {
    fn pid(&self) -> u32;
    fn parent_pid(&self) -> Option<u32>;
    fn lineage(&self) -> &Lineage;
    fn max_generations(&self) -> usize;
    /// Whether `successor` is on probation, this generation able to take the service back.
    fn on_probation_for(&self, successor: u32) -> bool;
    /// The successor on probation, if there is one.
    fn probation_successor(&self) -> Option<u32>;
    /// Ends the probation of `successor`, if it is on one: this generation will not serve again.
    fn retire(&self, successor: u32, why: &str);
    /// Takes the service back from `successor`, on probation; or says why not.
    fn roll_back(&self, successor: u32, reason: &str) -> Result<(), String>;
    /// The parent took the service back and asks this generation to stop.
    fn stop_requested(&self, by: u32);
}

/// This generation's place among the generations alive.
#[derive(Debug)]
pub(crate) struct Lineage {
    counts: Mutex<Counts>,
    /// Our end of the link to the parent, for sending; the parent watcher reads a duplicate.
    parent_link: Option<OwnedFd>,
    /// Where the parent watcher delivers the answer to a pending rollback request.
    rollback_answer: Mutex<Option<mpsc::Sender<RollbackAnswer>>>,
    parent_exited: Event,
    /// Set when the parent no longer accepts or reads (`paused`), or has exited.
    parent_paused: Event,
    finish_requested: Event,
}

#[derive(Debug)]
struct Counts {
    /// Whether the link to our parent is still open. The oldest living generation has none.
    parent_alive: bool,
    /// How many generations after us are alive, as far as our child has told us.
    descendants: usize,
}

impl Lineage {
    /// The lineage of a generation whose link to its parent is `parent_link` (none for a
    /// process started by hand).
    pub(crate) fn new(parent_link: Option<OwnedFd>) -> Lineage {
        Lineage {
            counts: Mutex::new(Counts {
                parent_alive: parent_link.is_some(),
                descendants: 0,
            }),
            parent_link,
            rollback_answer: Mutex::new(None),
            parent_exited: Event::new(),
            parent_paused: Event::new(),
            finish_requested: Event::new(),
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Set when the parent has exited.
    pub(crate) fn parent_exited(&self) -> &Event {
        &self.parent_exited
    }

    /// Set when the parent no longer accepts or reads, or has exited; set at once for a process
    /// without a parent, or whose parent does not say (see `Upgrader::predecessor_paused`).
    pub(crate) fn parent_paused(&self) -> &Event {
        &self.parent_paused
    }

    /// Set when this is the oldest of too many generations.
    pub(crate) fn finish_requested(&self) -> &Event {
        &self.finish_requested
    }

    /// Sends `message` to the parent; `None` if this process was not started by an upgrade.
    pub(crate) fn tell_parent(&self, message: &Message) -> Option<io::Result<()>> {
        self.parent_link
            .as_ref()
            .map(|link| link::send(link, message))
    }

    /// Records that `n` generations after this one are alive, and tells the parent.
    pub(crate) fn set_descendants(&self, n: usize) {
        self.counts().descendants = n;
        self.report_descendants();
    }

    fn report_descendants(&self) {
        let counts = self.counts();
        if counts.parent_alive {
            // A parent that has just gone cannot be told; its exit is noticed separately.
            let _ = self.tell_parent(&Message::Descendants(counts.descendants));
        }
    }

    /// Asks the parent, on probation, to take the service back; waits for its answer for
    /// `timeout` at most. `parent_pid` names it in the reasons.
    pub(crate) fn ask_rollback(&self, parent_pid: u32, timeout: Duration) -> RollbackAnswer {
        if self.parent_link.is_none() {
            return Err("this generation was not started by an upgrade".into());
        }
        if self.parent_exited.is_set() {
            return Err(format!(
                "the previous generation (pid {parent_pid}) has exited"
            ));
        }
        let (tx, rx) = mpsc::channel();
        {
            let mut pending = self.pending_rollback();
            if pending.is_some() {
                return Err("a rollback is already being asked for".into());
            }
            *pending = Some(tx);
        }
        let answer = match self.tell_parent(&Message::Rollback) {
            Some(Err(err)) => Err(format!("cannot ask the previous generation: {err}")),
            None | Some(Ok(())) => match rx.recv_timeout(timeout) {
                Ok(answer) => answer,
                Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                    "no answer from the previous generation within {timeout:?}"
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
                    "the previous generation (pid {parent_pid}) exited without answering"
                )),
            },
        };
        self.pending_rollback().take();
        answer
    }

    fn pending_rollback(&self) -> MutexGuard<'_, Option<mpsc::Sender<RollbackAnswer>>> {
        self.rollback_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn answer_rollback(&self, answer: RollbackAnswer) {
        if let Some(pending) = self.pending_rollback().as_ref() {
            let _ = pending.send(answer);
        }
    }
}

/// Starts the thread that watches the parent through `reader`, a duplicate of the link.
pub(crate) fn start_parent_watcher(
    generation: Arc<impl Generation>,
    reader: OwnedFd,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("graceful-parent".into())
        .spawn(move || watch_parent(&*generation, Reader::new(reader)))
        .map(drop)
}

/// How the successor is related to this process, which decides how its end is seen.
#[derive(Debug)]
pub(crate) enum Kin {
    /// Started by this process: reaped, and its process group killed if it dies on probation.
    Child,
    /// Started by someone else, and took over (`upgrader/takeover.rs`): it cannot be reaped,
    /// its group is none of ours; its end is seen through this pidfd (none where there are no
    /// pidfds: the end of the link counts as its end).
    Stranger(Option<OwnedFd>),
}

impl Kin {
    /// Waits until the successor `pid` has ended; how, as far as this process can know.
    fn wait_ended(self, pid: u32) -> io::Result<String> {
        match self {
            Kin::Child => sys::wait_child(pid).map(|status| status.to_string()),
            Kin::Stranger(Some(pidfd)) => {
                while !sys::wait_readable(pidfd.as_fd(), Duration::from_secs(3600))? {}
                Ok("its exit status is unknown: it is not a child of this process".into())
            }
            Kin::Stranger(None) => Ok("it closed the link; not a child of this process".into()),
        }
    }
}

/// Starts the thread that watches the successor `child` through its probation (until
/// `probation_ends`), then counts the living descendants.
pub(crate) fn start_child_watcher(
    generation: Arc<impl Generation>,
    child: u32,
    kin: Kin,
    reader: Reader,
    probation_ends: Instant,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("graceful-child".into())
        .spawn(move || watch_child(&*generation, child, kin, reader, probation_ends))
        .map(drop)
}

/// Runs on its own thread while the parent lives: end of file on the link means it exited.
/// The parent also answers rollback requests and, after taking the service back, asks this
/// generation to stop.
fn watch_parent(inner: &impl Generation, mut reader: Reader) {
    let lineage = inner.lineage();
    while let Ok(Some(message)) = reader.next() {
        match message {
            Message::Paused => {
                lineage.parent_paused.set();
            }
            Message::Resumed(pid) => lineage.answer_rollback(Ok(pid)),
            Message::Refused(reason) => lineage.answer_rollback(Err(reason)),
            Message::Stop => {
                let by = inner.parent_pid().unwrap_or_default();
                tracing::warn!(
                    pid = inner.pid(),
                    parent_pid = by,
                    "the previous generation took the service back; stopping"
                );
                inner.stop_requested(by);
            }
            _ => {}
        }
    }
    tracing::info!(
        pid = inner.pid(),
        parent_pid = inner.parent_pid(),
        "the previous generation has exited"
    );
    // A pending rollback learns that nobody will answer.
    lineage.pending_rollback().take();
    lineage.counts().parent_alive = false;
    lineage.parent_paused.set();
    lineage.parent_exited.set();
    check_generations(inner);
}

/// Runs on its own thread once replaced: watches the successor through its probation, then
/// counts the living descendants.
fn watch_child(
    inner: &impl Generation,
    child: u32,
    kin: Kin,
    mut reader: Reader,
    probation_ends: Instant,
) {
    let lineage = inner.lineage();
    // Whether the successor said it stops on purpose: its exit is then no failure.
    let mut child_stopping = false;
    loop {
        let next = if inner.on_probation_for(child) {
            reader.next_until(probation_ends)
        } else {
            reader.next()
        };
        match next {
            Ok(Some(Message::Descendants(n))) => {
                lineage.set_descendants(n + 1);
                if n > 0 {
                    inner.retire(child, "the new generation was replaced itself");
                }
                check_generations(inner);
            }
            Ok(Some(Message::Stopping)) => {
                child_stopping = true;
                inner.retire(child, "the new generation is stopping");
            }
            Ok(Some(Message::Rollback)) => {
                let answer = inner.roll_back(child, "a rollback was asked for");
                let link = reader.fd();
                match answer {
                    Ok(()) => {
                        let _ = link::send_fd(link, &Message::Resumed(inner.pid()));
                        let _ = link::send_fd(link, &Message::Stop);
                    }
                    Err(reason) => {
                        let _ = link::send_fd(link, &Message::Refused(reason));
                    }
                }
            }
            Ok(Some(_)) => {}
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                inner.retire(child, "the probation passed");
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(reader);
    // A child that had a successor of its own retired after its drain; one that had none
    // has left nobody serving after it.
    let had_successor = std::mem::take(&mut lineage.counts().descendants) > 1;
    lineage.report_descendants();
    // A rolled-back successor stops gracefully and ends here only once it has exited.
    let ours = matches!(kin, Kin::Child);
    let status = kin.wait_ended(child);
    if inner.on_probation_for(child) && !child_stopping {
        // It left its own group at ready(); what it started before (a wrapper's other
        // children) may still be there, holding the sockets. A stranger's group is not ours.
        if ours {
            sys::kill_group(child);
        }
        let reason = match &status {
            Ok(status) => format!("pid {child} ended during its probation: {status}"),
            Err(err) => format!("pid {child} ended during its probation (not reaped: {err})"),
        };
        if let Err(why_not) = inner.roll_back(child, &reason) {
            tracing::error!(
                pid = inner.pid(),
                child_pid = child,
                reason,
                why_not,
                "the new generation died during its probation, and this one cannot take \
                 the service back"
            );
            inner.retire(child, "the new generation died and no rollback is possible");
        }
        return;
    }
    inner.retire(child, "the new generation has exited");
    let pid = inner.pid();
    match (had_successor, status) {
        (true, Ok(status)) => tracing::warn!(
            pid,
            child_pid = child,
            %status,
            "the next generation, itself replaced, exited before this one: the count of \
             generations alive no longer includes its successors"
        ),
        (false, Ok(status)) if child_stopping => tracing::info!(
            pid,
            child_pid = child,
            %status,
            "the generation that replaced this one has stopped"
        ),
        (false, Ok(status)) => tracing::error!(
            pid,
            child_pid = child,
            %status,
            "the generation that replaced this one has exited while this one still runs"
        ),
        (_, Err(err)) => tracing::debug!(child_pid = child, %err, "cannot reap the successor"),
    }
}

/// The oldest living generation finishes when there are too many.
pub(crate) fn check_generations(inner: &impl Generation) {
    let lineage = inner.lineage();
    let counts = lineage.counts();
    let alive = 1 + counts.descendants;
    let max = inner.max_generations();
    if counts.parent_alive || alive <= max {
        return;
    }
    drop(counts);
    if let Some(successor) = inner.probation_successor() {
        inner.retire(successor, "too many generations are alive");
    }
    if lineage.finish_requested.set() {
        tracing::warn!(
            pid = inner.pid(),
            alive,
            max,
            "too many generations alive; the oldest, this one, must finish now"
        );
    }
}
