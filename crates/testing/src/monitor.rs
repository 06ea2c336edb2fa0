//! What the harness knows about each generation, kept by one task.
//!
//! Two sources, read by that one task so that they never disagree: the report channel, on
//! which every generation says what became of its upgrades and drains (see
//! `graceful_core::harness::Report`), and the end of each process, seen through a pidfd. When a process
//! ends, everything it reported is already queued on the channel, so the task reads the channel
//! dry before it records the exit: a generation is never seen exited without its drain.

use std::fmt;
use std::os::unix::net::UnixDatagram;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use graceful_core::DrainReport;
use graceful_core::harness::Report;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sys::{self, Reaped};

/// How long an ended process may take to become ours to reap (its parent exiting) before its
/// status is given up as unknown.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// How often a process is polled where the kernel has no pidfd.
const POLL: Duration = Duration::from_millis(10);

/// One generation of the server, as the harness saw it.
#[derive(Debug, Clone)]
pub struct Generation {
    pid: u32,
    number: u64,
    successor: Option<u32>,
    replaced_at: Option<Instant>,
    drain: Option<DrainReport>,
    exited_at: Option<Instant>,
    status: Option<ExitStatus>,
}

impl Generation {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// 1 for the process the harness started, 2 for its first successor, and so on.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The generation that replaced it, once one is ready.
    pub fn successor(&self) -> Option<u32> {
        self.successor
    }

    /// How its drain ended, as the server reported it; `None` until it has drained, or if it
    /// never called `graceful::drain` (or `serve`, which drains).
    pub fn drain(&self) -> Option<&DrainReport> {
        self.drain.as_ref()
    }

    /// Whether it has ended.
    pub fn exited(&self) -> bool {
        self.exited_at.is_some()
    }

    /// How it ended, once it has; `None` while it runs, or if its parent reaped it (a
    /// generation that ended while the generation before it still ran).
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// How long it took from being replaced (its successor ready) to ending; `None` unless
    /// both happened.
    pub fn drain_time(&self) -> Option<Duration> {
        Some(self.exited_at?.saturating_duration_since(self.replaced_at?))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {} (pid {})", self.number, self.pid)?;
        if let Some(successor) = self.successor {
            write!(f, ", replaced by pid {successor}")?;
        }
        if let Some(drain) = &self.drain {
            write!(f, ", {drain}")?;
        }
        match (self.exited_at, self.status) {
            (None, _) => f.write_str(", running"),
            (Some(_), Some(status)) => write!(f, ", ended with {status}"),
            (Some(_), None) => f.write_str(", ended (reaped by its parent)"),
        }?;
        if let Some(took) = self.drain_time() {
            write!(f, " {took:?} after it was replaced")?;
        }
        Ok(())
    }
}

/// Everything known so far.
#[derive(Debug)]
pub(crate) struct Lineage {
    pub(crate) generations: Vec<Generation>,
    /// The generation that serves: the newest one that is ready.
    pub(crate) current: u32,
    /// Failed upgrades, by the pid that tried, in order.
    pub(crate) failures: Vec<(u32, String)>,
    /// Inherited descriptors a generation did not adopt, by its pid.
    pub(crate) unclaimed: Vec<(u32, String)>,
    /// Rollbacks, in order.
    pub(crate) rollbacks: Vec<Rollback>,
}

/// A generation that took the service back from its successor during the probation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rollback {
    /// The generation that serves again.
    pub pid: u32,
    /// The successor that was rolled back.
    pub from: u32,
    /// How the successor ended, or that a rollback was asked for.
    pub reason: String,
}

impl Lineage {
    pub(crate) fn get(&self, pid: u32) -> Option<&Generation> {
        self.generations.iter().find(|g| g.pid == pid)
    }

    fn get_mut(&mut self, pid: u32) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.pid == pid)
    }

    pub(crate) fn all_exited(&self) -> bool {
        self.generations.iter().all(Generation::exited)
    }
}

#[derive(Debug)]
pub(crate) struct Monitor {
    lineage: Mutex<Lineage>,
    /// Bumped on every change, for waiters.
    changed: watch::Sender<u64>,
}

/// A process that ended: its pid, when it was seen to end, and its status if we reaped it.
type Exit = (u32, Instant, Option<ExitStatus>);

impl Monitor {
    /// A monitor of the server whose first generation, `pid`, is ready now.
    pub(crate) fn new(pid: u32) -> Monitor {
        let first = Generation {
            pid,
            number: 1,
            successor: None,
            replaced_at: None,
            drain: None,
            exited_at: None,
            status: None,
        };
        Monitor {
            lineage: Mutex::new(Lineage {
                generations: vec![first],
                current: pid,
                failures: Vec::new(),
                unclaimed: Vec::new(),
                rollbacks: Vec::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn lineage(&self) -> MutexGuard<'_, Lineage> {
        self.lineage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Takes the reports already queued on `socket` without waiting; returns the pids of new
    /// generations, which the caller must watch.
    pub(crate) fn absorb_queued(&self, socket: &UnixDatagram) -> Vec<u32> {
        let mut buf = [0u8; 8192];
        let mut born = Vec::new();
        while let Ok(n) = socket.recv(&mut buf) {
            born.extend(self.absorb(&buf[..n]));
        }
        born
    }

    /// Records one report; returns the pid of a new generation, if it announces one.
    fn absorb(&self, datagram: &[u8]) -> Option<u32> {
        let Some(report) = Report::decode(datagram) else {
            tracing::debug!(?datagram, "ignoring a report that is not understood");
            return None;
        };
        tracing::debug!(?report, "the server reported");
        let mut lineage = self.lineage();
        let mut born = None;
        match report {
            Report::Unclaimed { pid, what } => lineage.unclaimed.push((pid, what)),
            Report::Upgraded { pid, successor } => {
                let number = lineage.get(pid).map_or(0, |g| g.number) + 1;
                if let Some(replaced) = lineage.get_mut(pid) {
                    replaced.successor = Some(successor);
                    replaced.replaced_at = Some(Instant::now());
                }
                if lineage.current == pid {
                    lineage.current = successor;
                }
                lineage.generations.push(Generation {
                    pid: successor,
                    number,
                    successor: None,
                    replaced_at: None,
                    drain: None,
                    exited_at: None,
                    status: None,
                });
                born = Some(successor);
            }
            Report::UpgradeFailed { pid, reason } => lineage.failures.push((pid, reason)),
            Report::RolledBack {
                pid,
                successor,
                reason,
            } => {
                if let Some(generation) = lineage.get_mut(pid) {
                    generation.successor = None;
                    generation.replaced_at = None;
                }
                lineage.current = pid;
                lineage.rollbacks.push(Rollback {
                    pid,
                    from: successor,
                    reason,
                });
            }
            Report::Drained { pid, drain } => {
                if let Some(generation) = lineage.get_mut(pid) {
                    generation.drain = Some(drain);
                }
            }
            other => tracing::debug!(?other, "ignoring a report of a newer kind"),
        }
        drop(lineage);
        self.changed.send_modify(|n| *n += 1);
        born
    }

    fn record_exit(&self, (pid, at, status): Exit) {
        if let Some(generation) = self.lineage().get_mut(pid) {
            generation.exited_at = Some(at);
            generation.status = status;
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Reads reports and watches every generation until aborted. `watch` are the generations
    /// already known.
    pub(crate) async fn run(&self, socket: UnixDatagram, watch: Vec<u32>) {
        let socket = match socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixDatagram::from_std(socket))
        {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!(%err, "cannot read the server's reports");
                return;
            }
        };
        let mut exits = JoinSet::new();
        for pid in watch {
            exits.spawn(ended(pid));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            tokio::select! {
                received = socket.recv(&mut buf) => match received {
                    Ok(n) => {
                        if let Some(pid) = self.absorb(&buf[..n]) {
                            exits.spawn(ended(pid));
                        }
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot read the server's reports");
                        return;
                    }
                },
                Some(Ok(exit)) = exits.join_next() => {
                    // What the process reported before it ended is queued already.
                    while let Ok(n) = socket.try_recv(&mut buf) {
                        if let Some(pid) = self.absorb(&buf[..n]) {
                            exits.spawn(ended(pid));
                        }
                    }
                    self.record_exit(exit);
                }
            }
        }
    }
}

/// Completes when process `pid` has ended, and reaps it if it is ours.
async fn ended(pid: u32) -> Exit {
    // `with_interest` is deprecated because an owner's `as_raw_fd` could change while it is
    // registered; an `OwnedFd`'s cannot. Its replacement needs a newer tokio than the
    // workspace requires.
    #[allow(deprecated)]
    let pidfd = sys::pidfd(pid).and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE));
    match pidfd {
        Ok(pidfd) => {
            // Readable means ended; an error here means the same wait by polling instead.
            if pidfd.readable().await.is_err() {
                poll_until_ended(pid).await;
            }
        }
        // Gone and reaped already.
        Err(err) if err.raw_os_error() == Some(nix::libc::ESRCH) => {}
        // No pidfd (before Linux 5.3): poll.
        Err(_) => poll_until_ended(pid).await,
    }
    let at = Instant::now();
    let reaped = tokio::task::spawn_blocking(move || sys::reap_ended(pid, REAP_WAIT)).await;
    let status = match reaped {
        Ok(Reaped::Status(status)) => Some(status),
        Ok(Reaped::Elsewhere) | Err(_) => None,
    };
    (pid, at, status)
}

async fn poll_until_ended(pid: u32) {
    while sys::is_running(pid) {
        tokio::time::sleep(POLL).await;
    }
}
