//! Upgrading a server at a cadence, and seeing each replaced generation end.
//!
//! SIGHUP goes to the newest generation once the previous upgrade's generation is ready and
//! the interval has passed. Each generation is watched through a pidfd opened when it printed
//! `ready` (so while it is alive), by a thread of its own: the end is seen whoever reaps it.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use graceful_testing::process::{self, Signal, Watched};

use crate::procs::{Line, Server};

/// How long a new generation may take to print `ready` before its upgrade counts as failed:
/// more than the 5 s after which ecdysis kills a child that is not ready.
const READY_WITHIN: Duration = Duration::from_secs(8);
/// Linux's "no such process".
const ESRCH: i32 = 3;

/// The upgrades of one run.
#[derive(Debug, Default)]
pub(super) struct Upgrades {
    pub(super) handovers: Vec<u64>,
    pub(super) gone: Vec<u64>,
    pub(super) not_gone: usize,
    pub(super) refused: Option<String>,
}

/// One completed upgrade: when SIGHUP was sent, when the new generation was ready, and the pid
/// it replaced.
#[derive(Clone, Copy, Debug)]
pub(super) struct Handover {
    signalled: Instant,
    ready: Instant,
    old: u32,
}

/// Upgrades `server`, whose first generation printed `first`, while `go(n, when)` allows the
/// `n`th upgrade at `when`, one `interval` after the previous generation was ready. Stops at
/// the first upgrade that does not complete and says why.
pub(super) fn upgrade(
    server: &Server,
    first: &Line,
    watch: &mut Watch,
    interval: Duration,
    go: impl Fn(u32, Instant) -> bool,
) -> (Vec<Handover>, Option<String>) {
    let mut pid = first.pid();
    watch.open(pid);
    let mut done = Vec::new();
    for n in 1.. {
        let next = Instant::now() + interval;
        if !go(n, next) {
            break;
        }
        std::thread::sleep(interval);
        let signalled = Instant::now();
        if let Err(e) = process::signal(pid, Signal::SIGHUP) {
            return (done, Some(format!("upgrade {n}: SIGHUP to {pid}: {e}")));
        }
        let ready = match server.wait_ready_within(u64::from(n) + 1, READY_WITHIN) {
            Ok(ready) => ready,
            Err(problem) => return (done, Some(format!("upgrade {n}: {problem}"))),
        };
        watch.open(ready.pid());
        done.push(Handover {
            signalled,
            ready: ready.at,
            old: pid,
        });
        pid = ready.pid();
    }
    (done, None)
}

/// The end of every generation, each seen by a thread of its own blocked on the process's
/// pidfd. The threads end when their process does: at the latest when its group is stopped.
#[derive(Debug, Default)]
pub(super) struct Watch {
    threads: BTreeMap<u32, JoinHandle<Option<Instant>>>,
}

impl Watch {
    /// Starts watching `pid`, which has just printed `ready` and so is alive.
    pub(super) fn open(&mut self, pid: u32) {
        let watched = Watched::open(pid);
        let thread = std::thread::spawn(move || match watched {
            Ok(watched) => loop {
                match watched.wait_ended(Duration::from_secs(3600)) {
                    Ok(true) => return Some(Instant::now()),
                    Ok(false) => continue,
                    Err(_) => return None,
                }
            },
            // ESRCH: it has ended and been reaped already.
            Err(e) if e.raw_os_error() == Some(ESRCH) => Some(Instant::now()),
            Err(_) => None,
        });
        self.threads.insert(pid, thread);
    }

    /// Waits up to `limit` for every replaced generation to end, then records when each did
    /// (after its successor was ready), and how many had not.
    pub(super) fn settle(
        self,
        handovers: Vec<Handover>,
        refused: Option<String>,
        limit: Duration,
    ) -> Upgrades {
        let deadline = Instant::now() + limit;
        let replaced = |h: &Handover| self.threads.get(&h.old);
        while Instant::now() < deadline
            && !handovers
                .iter()
                .all(|h| replaced(h).is_none_or(JoinHandle::is_finished))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut upgrades = Upgrades {
            handovers: handovers
                .iter()
                .map(|h| h.ready.duration_since(h.signalled).as_micros() as u64)
                .collect(),
            refused,
            ..Upgrades::default()
        };
        let mut threads = self.threads;
        for h in &handovers {
            let finished = threads.get(&h.old).is_some_and(JoinHandle::is_finished);
            let ended = match threads.remove(&h.old) {
                Some(thread) if finished => thread.join().ok().flatten(),
                _ => None,
            };
            match ended {
                Some(at) => upgrades
                    .gone
                    .push(at.saturating_duration_since(h.ready).as_micros() as u64),
                None => upgrades.not_gone += 1,
            }
        }
        // The threads still blocked end with their processes, when the group is stopped.
        upgrades
    }
}
