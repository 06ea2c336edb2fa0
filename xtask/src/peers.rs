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
//! - **Upgrades.** See `peers/upgrades.rs`: SIGHUP to the newest generation, one interval after
//!   the previous one was ready. Handover is SIGHUP → the new generation's `ready` line; "old
//!   gone" is that line → the replaced process has ended, whoever reaps it. A generation not
//!   ready within 8 s (ecdysis kills a child not ready in 5 s) ends the upgrades of that run,
//!   and the table says so; the run goes on.
//! - **Idle.** A few upgrades of each upgrading server with no load at all: "old gone" when
//!   nothing is in flight, the figure the 50 ms target is about.
//!
//! Every server runs in a process group of its own and is killed and reaped after its run; all
//! listen on 127.0.0.1 only.

mod table;
mod upgrades;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use graceful_testing::Failure;
use graceful_testing::load::percentile;
use graceful_testing::process;
use tokio::runtime::Runtime;

use crate::bench::{self, Options};
use crate::demo;
use crate::load::{Load, Mode, Report};
use crate::procs::{self, Server};

use table::gone_cell;
use upgrades::{Upgrades, Watch, upgrade};

/// The loads compared.
const MODES: [Mode; 2] = [Mode::KeepAlive, Mode::Short];
/// The upgrade intervals compared, as the issue asks.
const INTERVALS: [Duration; 2] = [Duration::from_secs(1), Duration::from_millis(300)];
/// Upgrades of each server with nothing in flight, and the pause before each.
const IDLE_UPGRADES: u32 = 5;
const IDLE_INTERVAL: Duration = Duration::from_millis(500);
/// After a loaded run, how long replaced generations without a probation get to end.
const GONE_WITHIN: Duration = Duration::from_secs(2);
/// After the idle upgrades, how long replaced generations get to end: graceful's default
/// probation (5 s) and a drain.
const IDLE_GONE_WITHIN: Duration = Duration::from_secs(10);
/// Bounds any drain, so that a stop never waits long (ecdysis ignores signals while draining).
const DRAIN_TIMEOUT: &str = "5s";
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
        let result = bench::steady_load(&self.runtime, &server, mode, self.options.duration);
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
}
