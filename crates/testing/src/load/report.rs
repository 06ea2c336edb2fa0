//! What the clients count: the failure taxonomy, live counters, and the final report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Client;
use super::client::Record;

/// How many failure messages are kept per kind of client, to show what went wrong.
const SAMPLES: usize = 5;

/// What went wrong in one exchange: the one failure taxonomy of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// The connection was refused: nobody was accepting.
    Refused,
    /// The connection was reset, or broke while the client wrote.
    Reset,
    /// No complete answer within the request timeout.
    Timeout,
    /// The answer was cut short (part of it arrived) or garbled.
    Torn,
    /// The connection was closed before any answer (for HTTP: before a response's head).
    Empty,
    /// An HTTP response whose status is not 2xx.
    Status,
    /// Anything else.
    Other,
}

impl Failure {
    /// Every kind, in order.
    pub const ALL: [Failure; 7] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::Torn,
        Failure::Empty,
        Failure::Status,
        Failure::Other,
    ];

    /// The kind of failure an I/O error on a connection is.
    pub fn from_io(err: &io::Error) -> Failure {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::UnexpectedEof => Failure::Torn,
            _ => Failure::Other,
        }
    }

    /// The lower-case name, as in `refused=0 reset=2 …`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Torn => "torn",
            Failure::Empty => "empty",
            Failure::Status => "status",
            Failure::Other => "other",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one kind of client saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Exchanges answered in full (and, for HTTP, with a 2xx status).
    pub ok: u64,
    /// Times a connection was closed cleanly by the server between two exchanges and the
    /// client moved to a new one.
    pub reconnects: u64,
    /// Failed exchanges, by kind.
    pub failures: BTreeMap<Failure, u64>,
    /// The first few failures, described.
    pub samples: Vec<String>,
}

impl Tally {
    pub(super) fn fail(&mut self, failure: Failure, what: impl fmt::Display) {
        *self.failures.entry(failure).or_default() += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(format!("{failure}: {what}"));
        }
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.reconnects += other.reconnects;
        for (failure, n) in other.failures {
            *self.failures.entry(failure).or_default() += n;
        }
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    /// Failed exchanges, of every kind.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// One answered exchange: when it started, relative to the load's start, and how long it took
/// (for a short-lived client, connecting included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// Start, in µs after the load started.
    pub start_us: u64,
    /// Latency, in µs.
    pub latency_us: u64,
}

impl Timing {
    /// A timing; for tests of what consumes them.
    pub fn new(start_us: u64, latency_us: u64) -> Timing {
        Timing {
            start_us,
            latency_us,
        }
    }

    /// End, in µs after the load started.
    pub fn end_us(self) -> u64 {
        self.start_us + self.latency_us
    }
}

/// The `p`-th percentile (0–100) of sorted values (nearest rank), or 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Counters the clients update as they go, for a progress line or to wait for a milestone.
#[derive(Debug, Default)]
pub struct Live {
    answered: AtomicU64,
    reconnects: AtomicU64,
    failures: AtomicU64,
    latest_pid: AtomicU32,
    answering: AtomicUsize,
    settled: AtomicUsize,
    finished: AtomicUsize,
    pids: Mutex<BTreeSet<u32>>,
    /// Woken at each milestone: a client's first exchange, its first answer, a new pid, its end.
    milestone: Notify,
}

impl Live {
    /// Exchanges answered so far, over all clients.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Failures so far, of every kind.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The pid named by the latest answer, with [`Load::answers_name_pid`](super::Load::answers_name_pid).
    pub fn latest_pid(&self) -> Option<u32> {
        Some(self.latest_pid.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// Every pid named by an answer so far.
    pub fn pids(&self) -> BTreeSet<u32> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Clients that have been answered at least once.
    pub fn answering(&self) -> usize {
        self.answering.load(Ordering::SeqCst)
    }

    /// Clients that have finished their first exchange, answered or not (or stopped before).
    pub fn settled(&self) -> usize {
        self.settled.load(Ordering::SeqCst)
    }

    /// Clients that have ended: stopped, or out of time or exchanges.
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until `done` is true of these counters; it is checked at once and at each
    /// milestone (a client's first exchange, its first answer, a pid seen for the first time,
    /// a client's end),
    /// so it should ask about those. Unbounded: wrap it in a timeout. Cancel safe.
    pub async fn wait_until(&self, mut done: impl FnMut(&Live) -> bool) {
        loop {
            // Created before the check, so that a milestone between the two is not missed.
            let notified = self.milestone.notified();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn answer(&self, first: bool, pid: Option<u32>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let mut milestone = false;
        if let Some(pid) = pid {
            self.latest_pid.store(pid, Ordering::Relaxed);
            milestone |= self
                .pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid);
        }
        if first {
            self.answering.fetch_add(1, Ordering::SeqCst);
            milestone = true;
        }
        if milestone {
            self.milestone.notify_waiters();
        }
    }

    pub(super) fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn fail(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn settle(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
        self.milestone.notify_waiters();
    }

    pub(super) fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        self.milestone.notify_waiters();
    }
}

/// What the clients saw while something ran under load, and what that returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct LoadReport<T> {
    /// What the future run under load returned.
    pub outcome: T,
    tallies: BTreeMap<Client, Tally>,
    timings: Vec<Timing>,
    pids: BTreeSet<u32>,
    epoch: Instant,
    elapsed: Duration,
    clients: usize,
}

impl LoadReport<()> {
    pub(super) fn new(epoch: Instant, elapsed: Duration, clients: usize) -> Self {
        LoadReport {
            outcome: (),
            tallies: BTreeMap::new(),
            timings: Vec::new(),
            pids: BTreeSet::new(),
            epoch,
            elapsed,
            clients,
        }
    }

    pub(super) fn add(&mut self, client: Client, record: Record) {
        self.tallies.entry(client).or_default().add(record.tally);
        self.timings.extend(record.timings);
        self.pids.extend(record.pids);
    }

    pub(super) fn client_failed(&mut self, client: Client, err: &tokio::task::JoinError) {
        let mut tally = Tally::default();
        tally.fail(Failure::Other, format_args!("a client task failed: {err}"));
        self.tallies.entry(client).or_default().add(tally);
    }

    pub(super) fn finish(&mut self) {
        self.timings.sort_by_key(|t| t.start_us);
    }

    /// The same report with `outcome`.
    pub(crate) fn with_outcome<T>(self, outcome: T) -> LoadReport<T> {
        LoadReport {
            outcome,
            tallies: self.tallies,
            timings: self.timings,
            pids: self.pids,
            epoch: self.epoch,
            elapsed: self.elapsed,
            clients: self.clients,
        }
    }
}

impl<T> LoadReport<T> {
    /// Failed exchanges, of every kind, over all clients.
    pub fn failures(&self) -> u64 {
        self.tallies.values().map(Tally::failed).sum()
    }

    /// Failed exchanges of one kind, over all clients.
    pub fn failures_of(&self, failure: Failure) -> u64 {
        self.tallies
            .values()
            .filter_map(|t| t.failures.get(&failure))
            .sum()
    }

    /// `refused=0 reset=2 timeout=0 torn=0 empty=0 status=0 other=0`: every kind.
    pub fn failures_by_kind(&self) -> String {
        Failure::ALL
            .iter()
            .map(|k| format!("{k}={}", self.failures_of(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The first few failures of each kind of client, described.
    pub fn failure_samples(&self) -> impl Iterator<Item = &str> {
        self.tallies
            .values()
            .flat_map(|t| t.samples.iter().map(String::as_str))
    }

    /// Exchanges answered in full, over all clients.
    pub fn succeeded(&self) -> u64 {
        self.tallies.values().map(|t| t.ok).sum()
    }

    /// Clean moves to a new connection, over all clients.
    pub fn reconnects(&self) -> u64 {
        self.tallies.values().map(|t| t.reconnects).sum()
    }

    /// What one kind of client saw; empty if none ran.
    pub fn tally(&self, client: Client) -> Tally {
        self.tallies.get(&client).cloned().unwrap_or_default()
    }

    /// Every answered exchange by start time, with [`Load::record_timings`](super::Load::record_timings);
    /// else none.
    pub fn timings(&self) -> &[Timing] {
        &self.timings
    }

    /// The latencies of [`timings`](Self::timings), in µs, sorted: for [`percentile`].
    pub fn latencies_us(&self) -> Vec<u64> {
        let mut latencies: Vec<u64> = self.timings.iter().map(|t| t.latency_us).collect();
        latencies.sort_unstable();
        latencies
    }

    /// Every pid named by an answer, with [`Load::answers_name_pid`](super::Load::answers_name_pid).
    pub fn pids(&self) -> &BTreeSet<u32> {
        &self.pids
    }

    /// When the load started: [`Timing`]s are relative to it.
    pub fn epoch(&self) -> std::time::Instant {
        self.epoch.into_std()
    }

    /// From the start of the load to the moment it was told to stop.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// How many clients ran.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// Answered exchanges per second over the whole run.
    pub fn throughput(&self) -> f64 {
        self.succeeded() as f64 / self.elapsed.as_secs_f64()
    }
}

impl<T: fmt::Debug> fmt::Display for LoadReport<T> {
    /// The totals and what ran under load returned, then a line per kind of client with its
    /// sampled failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exchanges answered, {} reconnects, {} failed; under load: {:?}",
            self.succeeded(),
            self.reconnects(),
            self.failures(),
            self.outcome
        )?;
        for (client, tally) in &self.tallies {
            write!(
                f,
                "\n  {client}: {} answered, {} reconnects, {} failed {:?}",
                tally.ok,
                tally.reconnects,
                tally.failed(),
                tally.failures
            )?;
            for sample in &tally.samples {
                write!(f, "\n    {sample}")?;
            }
        }
        Ok(())
    }
}
