//! `cargo xtask bench --peers`: graceful against ecdysis, and both against plain hyper, in one
//! run, with the project's load engine.
//!
//! The servers are the bench's hyper servers from `benches/`, one plain hyper service served
//! four ways: `plain-hyper-server` (no upgrades: the ceiling), `graceful-hyper-server` with its
//! default probation (a replaced generation keeps its listeners paused for 5 s before it
//! drains) and with `--probation 0s`, and `peer-ecdysis` (ecdysis 1.1.1 and hyper-util's
//! `GracefulShutdown`).
//!
//! - **Rounds.** Each round runs, for each load (keep-alive, one request per connection), every
//!   server for `--duration` without upgrades, then every upgrading server for `--duration` with
//!   an upgrade every second and every 300 ms; the order of the servers rotates from round to
//!   round, so that drift in the machine hits all alike. Ratios are taken within a round
//!   (server with upgrades / the same server without; server / ceiling, both without) and their
//!   median over the rounds is shown with their range. The probation matters only once a server
//!   is upgraded, so both graceful variants share graceful's run without upgrades.
//! - **Upgrades.** SIGHUP goes to the newest generation once the previous upgrade's generation
//!   is ready and `interval` has passed. Handover is SIGHUP → the new generation's `ready` line;
//!   "old gone" is that line → the replaced process has ended, seen through a pidfd opened when
//!   it printed its own `ready` (whoever reaps it). A generation not ready within
//!   [`READY_WITHIN`] ends the upgrades of that run, and the table says so; the run goes on.
//! - **Idle.** A few upgrades of each upgrading server with no load at all: "old gone" when
//!   nothing is in flight, the figure the 50 ms target is about.
//!
//! Every server runs in a process group of its own and is killed and reaped after its run; all
//! listen on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use graceful_testing::Failure;
use graceful_testing::load::percentile;
use graceful_testing::process::{self, Signal, Watched};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::bench::{Options, median, ratio_spread};
use crate::demo::{self, micros};
use crate::load::{Load, Mode, Report};
use crate::procs::{self, Line, Server};

/// The loads compared.
const MODES: [Mode; 2] = [Mode::KeepAlive, Mode::Short];
/// The upgrade intervals compared, as the issue asks.
const INTERVALS: [Duration; 2] = [Duration::from_secs(1), Duration::from_millis(300)];
/// Upgrades of each server with nothing in flight, and the pause before each.
const IDLE_UPGRADES: u32 = 5;
const IDLE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a new generation may take to print `ready` before its upgrade counts as failed:
/// more than the 5 s after which ecdysis kills a child that is not ready.
const READY_WITHIN: Duration = Duration::from_secs(8);
/// After a loaded run, how long replaced generations without a probation get to end.
const GONE_WITHIN: Duration = Duration::from_secs(2);
/// After the idle upgrades, how long replaced generations get to end: graceful's default
/// probation (5 s) and a drain.
const IDLE_GONE_WITHIN: Duration = Duration::from_secs(10);
/// Bounds any drain, so that a stop never waits long (ecdysis ignores signals while draining).
const DRAIN_TIMEOUT: &str = "5s";
/// Linux's "no such process".
const ESRCH: i32 = 3;
/// The targets, as the issue states them.
const CEILING_TARGET: f64 = 0.97;
const GONE_TARGET: Duration = Duration::from_millis(50);

/// One server as the bench runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Ceiling,
    Graceful,
    GracefulNoProbation,
    Ecdysis,
}

impl Peer {
    const STEADY: [Peer; 3] = [Peer::Ceiling, Peer::Graceful, Peer::Ecdysis];
    const UPGRADING: [Peer; 3] = [Peer::Graceful, Peer::GracefulNoProbation, Peer::Ecdysis];

    fn name(self) -> &'static str {
        match self {
            Peer::Ceiling => "plain hyper (ceiling)",
            Peer::Graceful => "graceful",
            Peer::GracefulNoProbation => "graceful --probation 0s",
            Peer::Ecdysis => "ecdysis 1.1.1",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Peer::Ceiling => "plain_hyper",
            Peer::Graceful => "graceful",
            Peer::GracefulNoProbation => "graceful_probation_0s",
            Peer::Ecdysis => "ecdysis",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Peer::Ceiling => "plain-hyper-server",
            Peer::Graceful | Peer::GracefulNoProbation => "graceful-hyper-server",
            Peer::Ecdysis => "peer-ecdysis",
        }
    }

    fn args(self) -> Vec<&'static str> {
        let mut args = vec!["--addr", "127.0.0.1:0"];
        if self != Peer::Ceiling {
            args.extend(["--drain-timeout", DRAIN_TIMEOUT]);
        }
        if self == Peer::GracefulNoProbation {
            args.extend(["--probation", "0s"]);
        }
        args
    }

    /// The server whose runs without upgrades are this one's baseline.
    fn steady(self) -> Peer {
        match self {
            Peer::GracefulNoProbation => Peer::Graceful,
            other => other,
        }
    }

    /// Whether a replaced generation waits out a probation before it drains: then it is not
    /// waited for at the end of a loaded run.
    fn has_probation(self) -> bool {
        self == Peer::Graceful
    }

    fn is_graceful(self) -> bool {
        matches!(self, Peer::Graceful | Peer::GracefulNoProbation)
    }
}

/// `items` rotated left by `by`: each round starts with another server.
fn rotated<T: Copy>(items: &[T], by: usize) -> Vec<T> {
    let mut out = items.to_vec();
    if !out.is_empty() {
        out.rotate_left(by % items.len());
    }
    out
}

/// What one server went through in one kind of run, summed over the rounds.
#[derive(Debug, Default)]
struct Tally {
    /// Requests per second, one per round.
    throughput: Vec<f64>,
    /// Per round: with upgrades / without (upgrading runs), or server / ceiling (runs without
    /// upgrades).
    ratios: Vec<f64>,
    requests: u64,
    failures: BTreeMap<Failure, u64>,
    samples: Vec<String>,
    /// SIGHUP → new generation ready, µs.
    handovers: Vec<u64>,
    /// New generation ready → the replaced one ended, µs.
    gone: Vec<u64>,
    /// Replaced generations still there when the run ended.
    not_gone: usize,
    /// Upgrades that did not complete, or runs that broke, described.
    problems: Vec<String>,
}

impl Tally {
    fn add_report(&mut self, report: &Report) {
        self.throughput.push(report.load.throughput());
        self.requests += report.load.succeeded();
        for kind in Failure::ALL {
            let n = report.load.failures_of(kind);
            if n > 0 {
                *self.failures.entry(kind).or_default() += n;
            }
        }
        for sample in report.load.failure_samples() {
            if self.samples.len() < 5 {
                self.samples.push(sample.to_owned());
            }
        }
    }

    fn add_upgrades(&mut self, upgrades: &Upgrades) {
        self.handovers.extend(&upgrades.handovers);
        self.gone.extend(&upgrades.gone);
        self.not_gone += upgrades.not_gone;
        self.problems.extend(upgrades.refused.clone());
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn upgrades(&self) -> usize {
        self.handovers.len()
    }

    fn handover_median(&self) -> Option<u64> {
        median_us(&self.handovers)
    }

    fn gone_median(&self) -> Option<u64> {
        median_us(&self.gone)
    }
}

fn median_us(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    (!sorted.is_empty()).then(|| percentile(&sorted, 50.0))
}

/// `0`, or the kinds seen: `reset=12 empty=3`.
fn kinds(failures: &BTreeMap<Failure, u64>) -> String {
    let seen: Vec<String> = failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    if seen.is_empty() {
        "0".to_owned()
    } else {
        seen.join(" ")
    }
}

/// `12.3 ms (9/9)`: the median of the replaced generations that ended, and how many of all
/// did; `— (0/9)` when none did.
fn gone_cell(gone: &[u64], not_gone: usize) -> String {
    let all = gone.len() + not_gone;
    match median_us(gone) {
        Some(us) => format!("{} ({}/{all})", micros(us), gone.len()),
        None => format!("— (0/{all})"),
    }
}

/// Half the range of `values` relative to their median: how much rounds of the same thing
/// moved, as `±x`.
fn half_range(values: &[f64]) -> f64 {
    let mid = median(values);
    if values.is_empty() || mid == 0.0 {
        return 0.0;
    }
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    (max - min) / 2.0 / mid
}

/// What the bench measured.
#[derive(Debug, Default)]
struct Figures {
    /// (mode, server) → runs without upgrades.
    steady: BTreeMap<(usize, Peer), Tally>,
    /// (mode, interval, server) → runs with upgrades.
    upgrading: BTreeMap<(usize, usize, Peer), Tally>,
    /// server → upgrades with nothing in flight.
    idle: BTreeMap<Peer, Tally>,
}

/// The upgrades of one run.
#[derive(Debug, Default)]
struct Upgrades {
    handovers: Vec<u64>,
    gone: Vec<u64>,
    not_gone: usize,
    refused: Option<String>,
}

pub(crate) fn run(options: &Options) -> Result<bool, String> {
    let bin = procs::build_release(&["graceful-benches"])?;
    let scratch = procs::scratch_dir("bench-peers")?;
    process::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    let bench = Peers {
        runtime: crate::runtime()?,
        bin: &bin,
        scratch: &scratch,
        options,
    };
    let started = Instant::now();
    let figures = bench.measure()?;
    let elapsed = started.elapsed();
    if options.json {
        let document = figures.to_json(options, elapsed);
        println!(
            "{}",
            serde_json::to_string_pretty(&document).expect("serializable")
        );
    } else {
        for line in figures.report(options, elapsed) {
            println!("{line}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(true)
}

struct Peers<'a> {
    runtime: Runtime,
    bin: &'a Path,
    scratch: &'a Path,
    options: &'a Options,
}

impl Peers<'_> {
    fn say(&self, text: &str) {
        if self.options.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn measure(&self) -> Result<Figures, String> {
        let mut figures = Figures::default();
        let rounds = self.options.rounds as usize;
        for round in 0..rounds {
            for (m, mode) in MODES.into_iter().enumerate() {
                let mut base = BTreeMap::new();
                for peer in rotated(&Peer::STEADY, round) {
                    let report = self.steady(peer, mode)?;
                    base.insert(peer, report.load.throughput());
                    figures
                        .steady
                        .entry((m, peer))
                        .or_default()
                        .add_report(&report);
                }
                for peer in [Peer::Graceful, Peer::Ecdysis] {
                    let tally = figures.steady.entry((m, peer)).or_default();
                    tally.ratios.push(base[&peer] / base[&Peer::Ceiling]);
                }
                let mut line = format!(
                    "  round {}/{rounds} {}: without upgrades {}",
                    round + 1,
                    mode.name(),
                    Peer::STEADY
                        .iter()
                        .map(|p| format!("{} {:.0}", p.key(), base[p]))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                for (i, interval) in INTERVALS.into_iter().enumerate() {
                    line.push_str(&format!("; every {interval:?}:"));
                    for peer in rotated(&Peer::UPGRADING, round) {
                        let tally = figures.upgrading.entry((m, i, peer)).or_default();
                        match self.upgrading(peer, mode, interval) {
                            Ok((report, upgrades)) => {
                                tally
                                    .ratios
                                    .push(report.load.throughput() / base[&peer.steady()]);
                                tally.add_report(&report);
                                tally.add_upgrades(&upgrades);
                                line.push_str(&format!(
                                    " {} {:.0} ({} upgrades{}, {} failed)",
                                    peer.key(),
                                    report.load.throughput(),
                                    upgrades.handovers.len(),
                                    if upgrades.refused.is_some() {
                                        ", then one failed"
                                    } else {
                                        ""
                                    },
                                    report.load.failures()
                                ));
                            }
                            Err(problem) => {
                                line.push_str(&format!(" {} broke", peer.key()));
                                tally.problems.push(problem);
                            }
                        }
                    }
                }
                self.say(&line);
            }
        }
        for peer in Peer::UPGRADING {
            let tally = figures.idle.entry(peer).or_default();
            match self.idle(peer) {
                Ok(upgrades) => tally.add_upgrades(&upgrades),
                Err(problem) => tally.problems.push(problem),
            }
            self.say(&format!(
                "  idle {}: {} upgrades, old gone {}",
                peer.key(),
                tally.upgrades(),
                gone_cell(&tally.gone, tally.not_gone)
            ));
        }
        Ok(figures)
    }

    fn start(&self, peer: Peer) -> Result<Server, String> {
        Server::start(
            &self.bin.join(peer.binary()),
            &peer.args(),
            &self.scratch.join(format!("{}.log", peer.key())),
        )
    }

    /// The load against `peer` left alone for `--duration`.
    fn steady(&self, peer: Peer, mode: Mode) -> Result<Report, String> {
        let server = self.start(peer)?;
        let result = (|| {
            let ready = server.wait_ready(1)?;
            let load = Load::start(
                &self.runtime,
                mode,
                ready.get("addr"),
                demo::connections(mode),
            )?;
            std::thread::sleep(self.options.duration);
            Ok(load.finish(&self.runtime))
        })();
        server.stop();
        result
    }

    /// The load against `peer` for `--duration`, upgrading it every `interval`.
    fn upgrading(
        &self,
        peer: Peer,
        mode: Mode,
        interval: Duration,
    ) -> Result<(Report, Upgrades), String> {
        let server = self.start(peer)?;
        let result = (|| {
            let first = server.wait_ready(1)?;
            let load = Load::start(
                &self.runtime,
                mode,
                first.get("addr"),
                demo::connections(mode),
            )?;
            let end = Instant::now() + self.options.duration;
            let answered =
                demo::wait_until(&format!("the {} load's first answer", mode.name()), || {
                    load.live().answered() > 0
                });
            let mut watch = Watch::default();
            let upgraded = answered
                .map(|()| upgrade(&server, &first, &mut watch, interval, |_, next| next < end));
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            let report = load.finish(&self.runtime);
            let (handovers, refused) = upgraded?;
            let limit = if peer.has_probation() {
                Duration::ZERO
            } else {
                GONE_WITHIN
            };
            Ok((report, watch.settle(handovers, refused, limit)))
        })();
        server.stop();
        result
    }

    /// [`IDLE_UPGRADES`] upgrades of `peer` with no load.
    fn idle(&self, peer: Peer) -> Result<Upgrades, String> {
        let server = self.start(peer)?;
        let result = (|| {
            let first = server.wait_ready(1)?;
            let mut watch = Watch::default();
            let (handovers, refused) =
                upgrade(&server, &first, &mut watch, IDLE_INTERVAL, |n, _| {
                    n <= IDLE_UPGRADES
                });
            Ok(watch.settle(handovers, refused, IDLE_GONE_WITHIN))
        })();
        server.stop();
        result
    }
}

/// One completed upgrade: when SIGHUP was sent, when the new generation was ready, and the pid
/// it replaced.
#[derive(Clone, Copy, Debug)]
struct Handover {
    signalled: Instant,
    ready: Instant,
    old: u32,
}

/// Upgrades `server`, whose first generation printed `first`, while `go(n, when)` allows the
/// `n`th upgrade at `when`, one `interval` after the previous generation was ready. Stops at
/// the first upgrade that does not complete and says why.
fn upgrade(
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
struct Watch {
    threads: BTreeMap<u32, JoinHandle<Option<Instant>>>,
}

impl Watch {
    /// Starts watching `pid`, which has just printed `ready` and so is alive.
    fn open(&mut self, pid: u32) {
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
    fn settle(
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

impl Figures {
    /// The noise between rounds: the largest half-range, relative to the median, of any
    /// server's throughput without upgrades.
    fn noise(&self) -> f64 {
        self.steady
            .values()
            .map(|t| half_range(&t.throughput))
            .fold(0.0, f64::max)
    }

    fn graceful_failed(&self, m: usize) -> (u64, u64) {
        let steady = self
            .steady
            .iter()
            .filter(|((mode, peer), _)| *mode == m && peer.is_graceful());
        let upgrading = self
            .upgrading
            .iter()
            .filter(|((mode, _, peer), _)| *mode == m && peer.is_graceful());
        steady
            .map(|(_, t)| t)
            .chain(upgrading.map(|(_, t)| t))
            .fold((0, 0), |(failed, all), t| {
                (failed + t.failed(), all + t.requests + t.failed())
            })
    }

    fn report(&self, options: &Options, elapsed: Duration) -> Vec<String> {
        let mut out = vec![
            String::new(),
            format!(
                "Peers: {} rounds of {:?} per run, servers interleaved within each round ({:.0} s in all). \
                 Requests and failed: the runs with upgrades (the ceiling: its own runs). \
                 Ratios: median of the rounds' own ratios (range). \
                 Old gone: new generation ready → the replaced process ended (ended / replaced).",
                options.rounds,
                options.duration,
                elapsed.as_secs_f64()
            ),
        ];
        for (m, mode) in MODES.into_iter().enumerate() {
            for (i, interval) in INTERVALS.into_iter().enumerate() {
                out.push(String::new());
                out.push(format!(
                    "{} ({} connections), an upgrade every {interval:?}",
                    mode.describe(),
                    demo::connections(mode)
                ));
                out.push(String::new());
                out.extend(self.table(m, i));
            }
            let (steady_failed, steady_all) = self
                .steady
                .iter()
                .filter(|((mode, _), _)| *mode == m)
                .fold((0, 0), |(f, a), (_, t)| {
                    (f + t.failed(), a + t.requests + t.failed())
                });
            out.push(String::new());
            out.push(format!(
                "{}, runs without upgrades: {steady_failed} failed of {steady_all} requests.",
                mode.name()
            ));
        }

        out.push(String::new());
        out.push(format!(
            "Nothing in flight: {IDLE_UPGRADES} upgrades of each server, one {IDLE_INTERVAL:?} after the previous generation was ready, no load"
        ));
        out.push(String::new());
        out.push("| server | upgrades | handover, median | old gone, median (ended / replaced) | old gone, max |".to_owned());
        out.push("| --- | ---: | ---: | ---: | ---: |".to_owned());
        for (peer, t) in &self.idle {
            out.push(format!(
                "| {} | {} | {} | {} | {} |",
                peer.name(),
                t.upgrades(),
                t.handover_median().map_or("—".to_owned(), micros),
                gone_cell(&t.gone, t.not_gone),
                t.gone.iter().max().map_or("—".to_owned(), |us| micros(*us)),
            ));
        }

        let problems: Vec<String> = self
            .upgrading
            .iter()
            .flat_map(|((m, i, peer), t)| {
                t.problems.iter().map(move |p| {
                    format!(
                        "  {} {} every {:?}: {p}",
                        peer.name(),
                        MODES[*m].name(),
                        INTERVALS[*i]
                    )
                })
            })
            .chain(self.idle.iter().flat_map(|(peer, t)| {
                t.problems
                    .iter()
                    .map(move |p| format!("  {} idle: {p}", peer.name()))
            }))
            .collect();
        if !problems.is_empty() {
            out.push(String::new());
            out.push("Upgrades that did not complete (each ended its run's upgrades):".to_owned());
            out.extend(problems);
        }
        let samples: Vec<String> = self
            .upgrading
            .iter()
            .filter(|((_, _, peer), t)| peer.is_graceful() && !t.samples.is_empty())
            .flat_map(|((m, _, peer), t)| {
                t.samples
                    .iter()
                    .map(move |s| format!("  {} {}: {s}", peer.name(), MODES[*m].name()))
            })
            .collect();
        if !samples.is_empty() {
            out.push(String::new());
            out.push("graceful's failures, first few:".to_owned());
            out.extend(samples);
        }

        out.push(String::new());
        out.push("Targets".to_owned());
        let noise = self.noise();
        for (line, _) in self.targets(noise) {
            out.push(line);
        }
        out.push(self.probation_note());
        out.push(String::new());
        out.push(resolution(noise));
        out
    }

    /// One table: a row per server for a mode and an interval.
    fn table(&self, m: usize, i: usize) -> Vec<String> {
        let mut out = vec![
            "| server | requests | failed, by kind | req/s without upgrades | without / ceiling | req/s with upgrades | with / without | upgrades | handover, median | old gone, median |".to_owned(),
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        ];
        let none = Tally::default();
        let ceiling = self.steady.get(&(m, Peer::Ceiling)).unwrap_or(&none);
        out.push(row(Peer::Ceiling, ceiling, None));
        for peer in Peer::UPGRADING {
            let steady = self.steady.get(&(m, peer.steady())).unwrap_or(&none);
            let upgrading = self.upgrading.get(&(m, i, peer)).unwrap_or(&none);
            out.push(row(peer, steady, Some(upgrading)));
        }
        out
    }

    /// Each target's line, and whether it was met.
    fn targets(&self, noise: f64) -> Vec<(String, bool)> {
        let line = |met: bool, what: String| {
            (
                format!("  {} {what}", if met { "MET   " } else { "MISSED" }),
                met,
            )
        };
        let mut out = Vec::new();
        for (m, mode) in MODES.into_iter().enumerate() {
            let (failed, all) = self.graceful_failed(m);
            out.push(line(
                failed == 0,
                format!(
                    "{}: 0 failed requests for graceful (both probations, with and without upgrades): {failed} of {all}",
                    mode.name()
                ),
            ));
        }
        for (m, mode) in MODES.into_iter().enumerate() {
            let ratios = self
                .steady
                .get(&(m, Peer::Graceful))
                .map(|t| t.ratios.clone())
                .unwrap_or_default();
            let ratio = median(&ratios);
            let unresolved = if noise > 1.0 - CEILING_TARGET {
                format!(
                    " (rounds vary by ±{:.1}% here: not resolvable)",
                    noise * 100.0
                )
            } else {
                String::new()
            };
            out.push(line(
                ratio >= CEILING_TARGET,
                format!(
                    "{}: graceful without upgrades within 3% of plain hyper: {}{unresolved}",
                    mode.name(),
                    ratio_spread(&ratios)
                ),
            ));
        }
        let idle = self.idle.get(&Peer::GracefulNoProbation);
        let gone = idle.and_then(Tally::gone_median);
        let not_gone = idle.map_or(0, |t| t.not_gone);
        out.push(line(
            gone.is_some_and(|us| us <= GONE_TARGET.as_micros() as u64) && not_gone == 0,
            format!(
                "old process gone within 50 ms of the new one's readiness, nothing in flight (graceful --probation 0s, median): {}",
                idle.map_or("not measured".to_owned(), |t| gone_cell(&t.gone, t.not_gone))
            ),
        ));
        out
    }

    /// Why the default probation is not held to the 50 ms target.
    fn probation_note(&self) -> String {
        let probation = self.idle.get(&Peer::Graceful);
        format!(
            "         with the default 5 s probation the old process stays by design (listeners paused, able to take over if the new one fails): {}",
            probation.map_or("not measured".to_owned(), |t| gone_cell(
                &t.gone, t.not_gone
            ))
        )
    }

    fn to_json(&self, options: &Options, elapsed: Duration) -> Value {
        let ms = |us: Option<u64>| us.map(|us| us as f64 / 1e3);
        let tally = |t: &Tally| {
            json!({
                "requests": t.requests,
                "failed": t.failed(),
                "failed_by_kind": t.failures.iter().map(|(k, n)| (k.name().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "requests_per_s": {"median": median(&t.throughput), "rounds": t.throughput},
                "ratio": {"median": median(&t.ratios), "rounds": t.ratios},
                "upgrades": t.upgrades(),
                "handover_ms_median": ms(t.handover_median()),
                "old_gone_ms_median": ms(t.gone_median()),
                "old_gone": t.gone.len(),
                "old_not_gone": t.not_gone,
                "problems": t.problems,
            })
        };
        let mut runs = Vec::new();
        for (m, mode) in MODES.into_iter().enumerate() {
            for (i, interval) in INTERVALS.into_iter().enumerate() {
                let mut servers = serde_json::Map::new();
                for peer in Peer::STEADY {
                    if let Some(t) = self.steady.get(&(m, peer)) {
                        servers.insert(format!("{}_without_upgrades", peer.key()), tally(t));
                    }
                }
                for peer in Peer::UPGRADING {
                    if let Some(t) = self.upgrading.get(&(m, i, peer)) {
                        servers.insert(format!("{}_with_upgrades", peer.key()), tally(t));
                    }
                }
                runs.push(json!({
                    "mode": mode.name(),
                    "connections": demo::connections(mode),
                    "interval_ms": interval.as_secs_f64() * 1e3,
                    "servers": servers,
                }));
            }
        }
        let idle: serde_json::Map<_, _> = self
            .idle
            .iter()
            .map(|(peer, t)| (peer.key().to_owned(), tally(t)))
            .collect();
        let noise = self.noise();
        let targets: Vec<Value> = self
            .targets(noise)
            .into_iter()
            .map(|(line, met)| json!({"target": line.trim(), "met": met}))
            .collect();
        json!({
            "options": {
                "duration_s": options.duration.as_secs_f64(),
                "rounds": options.rounds,
            },
            "elapsed_s": elapsed.as_secs_f64(),
            "runs": runs,
            "idle": idle,
            "noise_between_rounds": noise,
            "targets": targets,
            "resolution": resolution(noise),
        })
    }
}

/// A table row: `steady` is the server's runs without upgrades, `upgrading` its runs with
/// (none for the ceiling).
fn row(peer: Peer, steady: &Tally, upgrading: Option<&Tally>) -> String {
    let dash = || "—".to_owned();
    let counted = upgrading.unwrap_or(steady);
    let vs_ceiling = if peer == Peer::Ceiling {
        "100%".to_owned()
    } else if steady.ratios.is_empty() {
        dash()
    } else {
        ratio_spread(&steady.ratios)
    };
    let (with, ratio, upgrades, handover, gone) = match upgrading {
        None => (dash(), dash(), dash(), dash(), dash()),
        Some(t) => (
            if t.throughput.is_empty() {
                dash()
            } else {
                format!("{:.0}", median(&t.throughput))
            },
            if t.ratios.is_empty() {
                dash()
            } else {
                ratio_spread(&t.ratios)
            },
            if t.problems.is_empty() {
                t.upgrades().to_string()
            } else {
                format!("{} + {} failed", t.upgrades(), t.problems.len())
            },
            t.handover_median().map_or_else(dash, micros),
            gone_cell(&t.gone, t.not_gone),
        ),
    };
    format!(
        "| {} | {} | {} | {:.0} | {vs_ceiling} | {with} | {ratio} | {upgrades} | {handover} | {gone} |",
        peer.name(),
        counted.requests,
        kinds(&counted.failures),
        median(&steady.throughput),
    )
}

/// The sentence on what this machine cannot resolve.
fn resolution(noise: f64) -> String {
    format!(
        "Resolution: between rounds, the same server without upgrades moved by up to ±{:.1}% \
         (half the range of its rounds, against their median), so throughput differences and \
         ratios closer than that to 100% or to a target (the 3% ceiling target included{}) \
         cannot be told apart from noise on this machine; failed requests are counts, and \
         handover and old-gone times (milliseconds against a 50 ms target) resolve.",
        noise * 100.0,
        if noise > 1.0 - CEILING_TARGET {
            ""
        } else {
            ", though this run's noise is below it"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_starts_each_round_with_another_server() {
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 1), vec![2, 3, 1]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
        assert!(rotated::<u8>(&[], 2).is_empty());
    }

    #[test]
    fn failure_kinds_show_only_what_was_seen() {
        let mut failures = BTreeMap::new();
        assert_eq!(kinds(&failures), "0");
        failures.insert(Failure::Empty, 3);
        failures.insert(Failure::Reset, 12);
        failures.insert(Failure::Timeout, 0);
        assert_eq!(kinds(&failures), "reset=12 empty=3");
    }

    #[test]
    fn old_gone_cells_count_what_ended() {
        assert_eq!(gone_cell(&[3_000, 1_000, 2_000], 0), "2.0 ms (3/3)");
        assert_eq!(gone_cell(&[], 4), "— (0/4)");
        assert_eq!(gone_cell(&[5_100_000], 1), "5.10 s (1/2)");
    }

    #[test]
    fn noise_is_half_the_range_against_the_median() {
        assert_eq!(half_range(&[]), 0.0);
        assert_eq!(half_range(&[100.0]), 0.0);
        assert!((half_range(&[90.0, 100.0, 110.0]) - 0.1).abs() < 1e-12);
        let figures = Figures {
            steady: [
                (
                    (0, Peer::Ceiling),
                    Tally {
                        throughput: vec![95.0, 100.0, 105.0],
                        ..Tally::default()
                    },
                ),
                (
                    (1, Peer::Graceful),
                    Tally {
                        throughput: vec![80.0, 100.0, 120.0],
                        ..Tally::default()
                    },
                ),
            ]
            .into_iter()
            .collect(),
            ..Figures::default()
        };
        assert!((figures.noise() - 0.2).abs() < 1e-12);
        assert!(resolution(0.2).contains("±20.0%"));
        assert!(resolution(0.01).contains("this run's noise is below it"));
    }

    fn tally(throughput: &[f64], ratios: &[f64]) -> Tally {
        Tally {
            throughput: throughput.to_vec(),
            ratios: ratios.to_vec(),
            ..Tally::default()
        }
    }

    #[test]
    fn rows_show_ratios_of_rounds_and_what_failed() {
        let mut ceiling = tally(&[100.0, 110.0, 90.0], &[]);
        ceiling.requests = 900;
        assert_eq!(
            row(Peer::Ceiling, &ceiling, None),
            "| plain hyper (ceiling) | 900 | 0 | 100 | 100% | — | — | — | — | — |"
        );
        let steady = tally(&[98.0, 99.0, 97.0], &[0.98, 0.9, 1.08]);
        let mut upgrading = tally(&[90.0, 80.0, 85.0], &[0.9, 0.8, 0.88]);
        upgrading.requests = 765;
        upgrading.failures.insert(Failure::Reset, 7);
        upgrading.handovers = vec![7_000, 5_000, 6_000];
        upgrading.gone = vec![600_000, 500_000];
        upgrading.not_gone = 1;
        upgrading.problems.push("upgrade 4: gave up".to_owned());
        assert_eq!(
            row(Peer::Ecdysis, &steady, Some(&upgrading)),
            "| ecdysis 1.1.1 | 765 | reset=7 | 98 | 98.0% (90.0–108.0) | 85 | 88.0% (80.0–90.0) \
             | 3 + 1 failed | 6.0 ms | 600.0 ms (2/3) |"
        );
    }

    #[test]
    fn targets_are_met_or_missed_from_the_figures() {
        let mut figures = Figures::default();
        for m in 0..MODES.len() {
            figures
                .steady
                .insert((m, Peer::Graceful), tally(&[100.0], &[0.99, 0.96, 1.0]));
        }
        let idle = Tally {
            gone: vec![2_000, 4_000, 60_000],
            ..Tally::default()
        };
        figures.idle.insert(Peer::GracefulNoProbation, idle);
        let mut failing = tally(&[1.0], &[1.0]);
        failing.failures.insert(Failure::Reset, 1);
        failing.requests = 9;
        figures
            .upgrading
            .insert((1, 0, Peer::GracefulNoProbation), failing);
        let met: Vec<bool> = figures.targets(0.01).iter().map(|(_, met)| *met).collect();
        // keep-alive: 0 failed; short: 1 of 10; ceiling 99% twice; old gone median 4 ms.
        assert_eq!(met, vec![true, false, true, true, true]);
        let lines = figures.targets(0.05);
        assert!(lines[1].0.contains("1 of 10"), "{}", lines[1].0);
        assert!(lines[2].0.contains("not resolvable"), "{}", lines[2].0);
        assert!(lines[4].0.contains("4.0 ms (3/3)"), "{}", lines[4].0);
    }
}
