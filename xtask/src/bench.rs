//! `cargo xtask bench`: the figures behind every promise, measured in one run.
//!
//! - **Throughput.** For each HTTP load (keep-alive, one request per connection), rounds of the
//!   same fixed-length load against three servers, interleaved so that drift in the machine
//!   hits all three alike: `plain-http-server` (the same axum app on a plain tokio listener, no
//!   graceful at all), `http-server` left alone, and `http-server` upgraded every `--interval`.
//!   Each round's ratios are taken within the round, and their median is compared with the
//!   targets.
//! - **Handover.** Every upgrade of those runs, timed from SIGHUP to the new generation's
//!   `ready` line and on to the old generation's `stopped` line, next to the time the same
//!   binary takes merely to start, bind and print `ready`: under the same keep-alive load, as
//!   the upgrades are, and on an idle machine.
//! - **Upgrade windows.** Requests that overlap an upgrade (SIGHUP → old generation stopped
//!   accepting) against the others: latency percentiles, and the longest gap between two
//!   completed requests. With one request per connection, a completion is an accepted
//!   connection, so that gap bounds any pause in accepting.
//! - **HTTP/2 tail.** Each round also runs the HTTP/2 load against `http-server` left alone, for
//!   its latency p50 / p99 / max: the tail that Nagle's algorithm on accepted sockets adds.
//! - **Cost growth.** `scale-probe all` (from `benches/`): upgrade time with 1, 100 and 1000
//!   inherited sockets, drain time with 1k and 10k idle connections, live hand-off of 1k and
//!   10k idle sessions (time, and the successor's memory per session), memory per tracked
//!   connection. Its JSON lines are shown and passed through; the hand-off has a target
//!   (≤ 10 ms per 1,000 sessions) and must keep every session.
//!
//! The targets are checked and each is reported met or missed; the task fails only if a request
//! failed or a step did not complete. `--json` prints one JSON document on stdout instead of
//! the tables (progress goes to stderr).
//!
//! `--peers` runs the comparison with ecdysis and plain hyper instead (`peers.rs`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::runtime::Runtime;

use graceful_testing::load::{Timing, percentile};
use graceful_testing::process;

use crate::demo::{self, Run, micros};
use crate::load::{Load, Mode, Report};
use crate::procs::{self, Server};

pub(crate) struct Options {
    pub(crate) duration: Duration,
    pub(crate) rounds: u32,
    pub(crate) interval: Duration,
    pub(crate) starts: u32,
    pub(crate) scale: bool,
    pub(crate) json: bool,
    /// Run the peers' comparison (`peers.rs`) instead.
    pub(crate) peers: bool,
}

/// The loads whose throughput is compared.
const MODES: [Mode; 2] = [Mode::KeepAlive, Mode::Short];
/// The targets, as the README states them.
/// Live hand-off: the old generation hands 1,000 idle sessions over within this (issue 14).
const HANDOFF_MS_PER_THOUSAND_TARGET: f64 = 10.0;
const UPGRADING_RATIO_TARGET: f64 = 0.99;
const ACCEPT_OVERHEAD_TARGET: f64 = 0.02;
const HANDOVER_OVERHEAD_TARGET: Duration = Duration::from_millis(5);
/// Linux's minimum delayed-ACK timeout, in µs: the stall a small write behind unacknowledged
/// data waits for under Nagle's algorithm.
const DELAYED_ACK_US: u64 = 40_000;

pub(crate) fn run(options: &Options) -> Result<bool, String> {
    if options.peers {
        return crate::peers::run(options);
    }
    let bin = procs::build_release(&["graceful-examples", "graceful-benches"])?;
    let scratch = procs::scratch_dir("bench")?;
    process::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    let runtime = crate::runtime()?;
    let bench = Bench {
        runtime,
        bin: &bin,
        scratch: &scratch,
        options,
    };
    let figures = bench.measure()?;
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures.to_json(options)).expect("serializable")
        );
    } else {
        figures.print(options);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(figures.failed() == 0)
}

struct Bench<'a> {
    runtime: Runtime,
    bin: &'a Path,
    scratch: &'a Path,
    options: &'a Options,
}

/// One load's throughput rounds against the three servers, in requests per second.
struct Throughput {
    mode: Mode,
    plain: Vec<f64>,
    graceful: Vec<f64>,
    upgrading: Vec<f64>,
    /// The upgrading rounds themselves, for the handover and window figures.
    runs: Vec<Run>,
    failed: u64,
    requests: u64,
}

struct Figures {
    throughput: Vec<Throughput>,
    /// Spawn → `ready` line of a fresh `http-server`, in µs, on an idle machine.
    idle_starts: Vec<u64>,
    /// The same while another `http-server` serves the keep-alive load, as during upgrades.
    loaded_starts: Vec<u64>,
    /// That load's requests, and those that failed.
    loaded_requests: u64,
    loaded_failed: u64,
    /// HTTP/2 against `http-server` left alone, one run per round: the tail that
    /// `TCP_NODELAY` on accepted sockets removes.
    h2: Vec<Report>,
    scale: Vec<Value>,
}

impl Bench<'_> {
    fn say(&self, text: &str) {
        if self.options.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn measure(&self) -> Result<Figures, String> {
        let upgrades =
            (self.options.duration.as_millis() / self.options.interval.as_millis()).max(1) as u32;
        let mut throughput = Vec::new();
        for mode in MODES {
            let mut t = Throughput {
                mode,
                plain: Vec::new(),
                graceful: Vec::new(),
                upgrading: Vec::new(),
                runs: Vec::new(),
                failed: 0,
                requests: 0,
            };
            for round in 1..=self.options.rounds {
                let plain = self.steady("plain-http-server", mode)?;
                let graceful = self.steady("http-server", mode)?;
                let upgrading = self.upgrading(mode, upgrades)?;
                let moving = &upgrading.reports[0];
                self.say(&format!(
                    "  {} round {round}/{}: plain {:.0} req/s, graceful {:.0}, upgrading {:.0} ({} upgrades)",
                    mode.name(),
                    self.options.rounds,
                    plain.load.throughput(),
                    graceful.load.throughput(),
                    moving.load.throughput(),
                    upgrading.upgrades.len(),
                ));
                for report in [&plain, &graceful, moving] {
                    t.failed += report.load.failures();
                    t.requests += report.load.succeeded();
                    for example in report.load.failure_samples() {
                        self.say(&format!("    failure: {example}"));
                    }
                }
                t.plain.push(plain.load.throughput());
                t.graceful.push(graceful.load.throughput());
                t.upgrading.push(moving.load.throughput());
                t.runs.push(upgrading);
            }
            throughput.push(t);
        }

        let mut h2 = Vec::new();
        for round in 1..=self.options.rounds {
            let report = self.steady("http-server", Mode::H2)?;
            self.say(&format!(
                "  h2 round {round}/{}: {:.0} req/s",
                self.options.rounds,
                report.load.throughput()
            ));
            for example in report.load.failure_samples() {
                self.say(&format!("    failure: {example}"));
            }
            h2.push(report);
        }

        self.say(&format!(
            "  timing {} bare starts of http-server, idle and under keep-alive load",
            self.options.starts
        ));
        let idle_starts = self.bare_starts()?;
        let load_server = Server::start(
            &self.bin.join("http-server"),
            &["--addr", "127.0.0.1:0"],
            &self.scratch.join("loaded.log"),
        )?;
        let loaded = (|| {
            let ready = load_server.wait_ready(1)?;
            let mode = Mode::KeepAlive;
            let load = Load::start(
                &self.runtime,
                mode,
                ready.get("addr"),
                demo::connections(mode),
            )?;
            let starts = self.bare_starts();
            let report = load.finish(&self.runtime);
            Ok::<_, String>((starts?, report))
        })();
        load_server.stop();
        let (loaded_starts, report) = loaded?;

        let scale = if self.options.scale {
            self.scale()?
        } else {
            Vec::new()
        };
        Ok(Figures {
            throughput,
            idle_starts,
            loaded_starts,
            loaded_requests: report.load.succeeded(),
            loaded_failed: report.load.failures(),
            h2,
            scale,
        })
    }

    /// Spawn → `ready` line of a fresh `http-server`, `--starts` times, one every `--interval`.
    fn bare_starts(&self) -> Result<Vec<u64>, String> {
        let mut starts = Vec::new();
        for n in 0..self.options.starts {
            std::thread::sleep(self.options.interval);
            let log = self.scratch.join(format!("start-{n}.log"));
            let spawned = Instant::now();
            let server = Server::start(
                &self.bin.join("http-server"),
                &["--addr", "127.0.0.1:0"],
                &log,
            )?;
            let ready = server.wait_ready(1);
            server.stop();
            starts.push(ready?.at.duration_since(spawned).as_micros() as u64);
        }
        starts.sort_unstable();
        Ok(starts)
    }

    /// `connections(mode)` workers against a server left alone for `--duration`.
    fn steady(&self, server: &str, mode: Mode) -> Result<Report, String> {
        let process = Server::start(
            &self.bin.join(server),
            &["--addr", "127.0.0.1:0"],
            &self.scratch.join(format!("{server}.log")),
        )?;
        let result = steady_load(&self.runtime, &process, mode, self.options.duration);
        process.stop();
        result
    }

    /// The same load against `http-server` upgraded `upgrades` times, one every `--interval`.
    fn upgrading(&self, mode: Mode, upgrades: u32) -> Result<Run, String> {
        let process = Server::start(
            &self.bin.join("http-server"),
            &["--addr", "127.0.0.1:0", "--drain-timeout", "10s"],
            &self.scratch.join("upgrading.log"),
        )?;
        let run = demo::under_upgrades(
            &self.runtime,
            &process,
            &[(mode, demo::connections(mode))],
            upgrades,
            self.options.interval,
            false,
        );
        process.stop();
        run
    }

    /// Runs `scale-probe all` and keeps its JSON lines.
    fn scale(&self) -> Result<Vec<Value>, String> {
        self.say("  scale-probe all (upgrade with 1/100/1000 sockets, drain 1k/10k idle connections, hand-off of 1k/10k idle sessions, memory per connection)");
        let output = Command::new(self.bin.join("scale-probe"))
            .arg("all")
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scale-probe: {e}"))?;
        if !output.status.success() {
            return Err(format!("scale-probe all failed: {}", output.status));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("scale-probe printed {l:?}: {e}")))
            .collect()
    }
}

/// Latency and gaps of the requests inside upgrade windows, and of the others.
#[derive(Default)]
struct Windows {
    inside: Vec<u64>,
    outside: Vec<u64>,
    gap_inside: u64,
    gap_outside: u64,
}

impl Windows {
    fn of(runs: &[Run]) -> Windows {
        let mut w = Windows::default();
        for run in runs {
            let report = &run.reports[0];
            let epoch = report.load.epoch();
            let us = |at: Instant| at.saturating_duration_since(epoch).as_micros() as u64;
            let windows: Vec<(u64, u64)> = run
                .upgrades
                .iter()
                .map(|u| (us(u.signalled), us(u.stopped)))
                .collect();
            w.add(report.load.timings(), &windows);
        }
        w.inside.sort_unstable();
        w.outside.sort_unstable();
        w
    }

    /// Sorts `samples` into those that overlap one of `windows` (disjoint `(from, to)` pairs
    /// in order, in µs like the samples) and the others, and the gaps between completions
    /// likewise.
    fn add(&mut self, samples: &[Timing], windows: &[(u64, u64)]) {
        let overlaps = |from: u64, to: u64| {
            // The last window starting at or before `to` is the only one that can overlap.
            let i = windows.partition_point(|(start, _)| *start <= to);
            i > 0 && windows[i - 1].1 >= from
        };
        for sample in samples {
            if overlaps(sample.start_us, sample.end_us()) {
                self.inside.push(sample.latency_us);
            } else {
                self.outside.push(sample.latency_us);
            }
        }
        let mut ends: Vec<u64> = samples.iter().map(|s| s.end_us()).collect();
        ends.sort_unstable();
        for pair in ends.windows(2) {
            let gap = pair[1] - pair[0];
            if overlaps(pair[0], pair[1]) {
                self.gap_inside = self.gap_inside.max(gap);
            } else {
                self.gap_outside = self.gap_outside.max(gap);
            }
        }
    }
}

/// min / median / p95 / max of sorted µs values.
fn spread(sorted: &[u64]) -> [u64; 4] {
    [
        sorted.first().copied().unwrap_or(0),
        percentile(sorted, 50.0),
        percentile(sorted, 95.0),
        sorted.last().copied().unwrap_or(0),
    ]
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl Throughput {
    /// upgrading / graceful in each round: the cost of the upgrades themselves. Each ratio
    /// compares runs of the same round, so drift in the machine between rounds cancels out.
    fn upgrading_ratios(&self) -> Vec<f64> {
        ratios(&self.upgrading, &self.graceful)
    }

    /// graceful / plain in each round: the cost of the library's accept and serve path.
    fn graceful_ratios(&self) -> Vec<f64> {
        ratios(&self.graceful, &self.plain)
    }

    fn upgrading_ratio(&self) -> f64 {
        median(&self.upgrading_ratios())
    }

    /// 1 - the median graceful / plain ratio.
    fn overhead(&self) -> f64 {
        1.0 - median(&self.graceful_ratios())
    }
}

fn ratios(over: &[f64], under: &[f64]) -> Vec<f64> {
    over.iter().zip(under).map(|(a, b)| a / b).collect()
}

/// `93.1% (89.2–107.9)`: the median of per-round ratios, and their range.
pub(crate) fn ratio_spread(values: &[f64]) -> String {
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    format!(
        "{:.1}% ({:.1}–{:.1})",
        median(values) * 100.0,
        min * 100.0,
        max * 100.0
    )
}

impl Figures {
    fn failed(&self) -> u64 {
        self.throughput.iter().map(|t| t.failed).sum::<u64>()
            + self.loaded_failed
            + self.h2.iter().map(|r| r.load.failures()).sum::<u64>()
    }

    /// Every HTTP/2 request's latency, in µs, sorted.
    fn h2_latencies(&self) -> Vec<u64> {
        let mut latencies: Vec<u64> = self
            .h2
            .iter()
            .flat_map(|r| r.load.timings())
            .map(|s| s.latency_us)
            .collect();
        latencies.sort_unstable();
        latencies
    }

    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.throughput.iter().flat_map(|t| &t.runs)
    }

    fn handovers(&self) -> (Vec<u64>, Vec<u64>) {
        let mut ready: Vec<u64> = self
            .runs()
            .flat_map(|r| &r.upgrades)
            .map(|u| u.handover().as_micros() as u64)
            .collect();
        let mut stopped: Vec<u64> = self
            .runs()
            .flat_map(|r| &r.upgrades)
            .map(|u| u.stop_delay().as_micros() as u64)
            .collect();
        ready.sort_unstable();
        stopped.sort_unstable();
        (ready, stopped)
    }

    /// Median handover minus median bare start, both under load.
    fn handover_overhead(&self) -> i64 {
        let (ready, _) = self.handovers();
        percentile(&ready, 50.0) as i64 - percentile(&self.loaded_starts, 50.0) as i64
    }

    fn print(&self, options: &Options) {
        let upgrades = self.runs().map(|r| r.upgrades.len()).sum::<usize>();
        println!();
        println!(
            "Throughput, requests/s (median of {} rounds of {:?}; upgrading: one upgrade every {:?}; ratios: median of the rounds' own ratios)",
            options.rounds, options.duration, options.interval
        );
        println!();
        println!(
            "| load | plain axum, no graceful | graceful | graceful, upgrading | upgrading / graceful, per round (range) | graceful / plain, per round (range) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for t in &self.throughput {
            println!(
                "| {} ({} connections) | {:.0} | {:.0} | {:.0} | {} | {} |",
                t.mode.describe(),
                demo::connections(t.mode),
                median(&t.plain),
                median(&t.graceful),
                median(&t.upgrading),
                ratio_spread(&t.upgrading_ratios()),
                ratio_spread(&t.graceful_ratios()),
            );
        }

        let (ready, stopped) = self.handovers();
        println!();
        println!(
            "Handover ({upgrades} upgrades, under load) and bare start ({} starts each)",
            self.idle_starts.len()
        );
        println!();
        println!("| | min | median | p95 | max |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (what, values) in [
            ("SIGHUP → new generation ready", &ready),
            ("new generation ready → old one stopped accepting", &stopped),
            (
                "bare start of http-server, under keep-alive load: spawn → ready",
                &self.loaded_starts,
            ),
            (
                "bare start of http-server, idle: spawn → ready",
                &self.idle_starts,
            ),
        ] {
            let [min, med, p95, max] = spread(values);
            println!(
                "| {what} | {} | {} | {} | {} |",
                micros(min),
                micros(med),
                micros(p95),
                micros(max)
            );
        }

        println!();
        println!(
            "Requests overlapping an upgrade window (SIGHUP → old generation stopped accepting) vs. the others"
        );
        println!();
        println!(
            "| load | requests in / out | p50 in / out | p99 in / out | max in / out | longest gap between completions in / out |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for t in &self.throughput {
            let w = Windows::of(&t.runs);
            println!(
                "| {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} |",
                t.mode.name(),
                w.inside.len(),
                w.outside.len(),
                micros(percentile(&w.inside, 50.0)),
                micros(percentile(&w.outside, 50.0)),
                micros(percentile(&w.inside, 99.0)),
                micros(percentile(&w.outside, 99.0)),
                micros(w.inside.last().copied().unwrap_or(0)),
                micros(w.outside.last().copied().unwrap_or(0)),
                micros(w.gap_inside),
                micros(w.gap_outside),
            );
        }

        let h2 = self.h2_latencies();
        println!();
        println!(
            "HTTP/2 latency against http-server left alone ({} connections, {} rounds of {:?})",
            demo::connections(Mode::H2),
            options.rounds,
            options.duration
        );
        println!();
        println!(
            "| load | requests | req/s (median of rounds) | p50 | p99 | p99.9 | max | requests ≥ 40 ms |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            Mode::H2.describe(),
            h2.len(),
            median(
                &self
                    .h2
                    .iter()
                    .map(|r| r.load.throughput())
                    .collect::<Vec<_>>()
            ),
            micros(percentile(&h2, 50.0)),
            micros(percentile(&h2, 99.0)),
            micros(percentile(&h2, 99.9)),
            micros(h2.last().copied().unwrap_or(0)),
            h2.len() - h2.partition_point(|&us| us < DELAYED_ACK_US),
        );

        if !self.scale.is_empty() {
            println!();
            println!("Cost growth (scale-probe all)");
            println!();
            for line in &self.scale {
                println!("  {}", flatten(line));
            }
        }

        println!();
        println!("Targets");
        let requests: u64 = self.throughput.iter().map(|t| t.requests).sum::<u64>()
            + self.loaded_requests
            + self.h2.iter().map(|r| r.load.succeeded()).sum::<u64>();
        verdict(
            self.failed() == 0,
            &format!("0 failed requests: {} of {requests}", self.failed()),
        );
        for t in &self.throughput {
            verdict(
                t.upgrading_ratio() >= UPGRADING_RATIO_TARGET,
                &format!(
                    "{}: throughput while upgrading ≥ 99% of without: {:.1}%",
                    t.mode.name(),
                    t.upgrading_ratio() * 100.0
                ),
            );
        }
        for t in &self.throughput {
            verdict(
                t.overhead() <= ACCEPT_OVERHEAD_TARGET,
                &format!(
                    "{}: accept and serve path ≤ 2% slower than plain axum: {:+.1}%",
                    t.mode.name(),
                    t.overhead() * 100.0
                ),
            );
        }
        for probe in self.scale.iter().filter(|p| p["probe"] == "handoff") {
            let sessions = probe["connections"].as_u64().unwrap_or(0);
            let median = probe["handoff_ms"]["median"].as_f64().unwrap_or(f64::NAN);
            let per_thousand = median / (sessions as f64 / 1000.0);
            verdict(
                per_thousand <= HANDOFF_MS_PER_THOUSAND_TARGET,
                &format!(
                    "hand-off of {sessions} idle sessions ≤ {HANDOFF_MS_PER_THOUSAND_TARGET} ms \
                     per 1,000: {per_thousand:.1} ms per 1,000 (median {median:.1} ms)"
                ),
            );
            let clients = probe["clients"].as_u64();
            verdict(
                clients.is_some()
                    && probe["handed_off"].as_u64() == clients
                    && probe["clean_eof"].as_u64() == clients,
                &format!(
                    "every one of {sessions} sessions handed over and served on: handed_off={} \
                     clean_eof={} of {}",
                    probe["handed_off"], probe["clean_eof"], probe["clients"]
                ),
            );
        }
        let overhead = self.handover_overhead();
        verdict(
            overhead <= HANDOVER_OVERHEAD_TARGET.as_micros() as i64,
            &format!(
                "handover beyond a bare start under the same load ≤ 5 ms (medians): {:+.1} ms",
                overhead as f64 / 1e3
            ),
        );
    }

    fn to_json(&self, options: &Options) -> Value {
        let (ready, stopped) = self.handovers();
        let ms = |values: &[u64]| {
            let [min, med, p95, max] = spread(values);
            json!({"min": min as f64 / 1e3, "median": med as f64 / 1e3, "p95": p95 as f64 / 1e3, "max": max as f64 / 1e3})
        };
        let throughput: Vec<Value> = self
            .throughput
            .iter()
            .map(|t| {
                let w = Windows::of(&t.runs);
                json!({
                    "mode": t.mode.name(),
                    "connections": demo::connections(t.mode),
                    "requests_per_s": {
                        "plain": median(&t.plain),
                        "graceful": median(&t.graceful),
                        "upgrading": median(&t.upgrading),
                        "rounds": {"plain": t.plain, "graceful": t.graceful, "upgrading": t.upgrading},
                    },
                    "upgrading_over_graceful": t.upgrading_ratio(),
                    "graceful_overhead_vs_plain": t.overhead(),
                    "failed": t.failed,
                    "requests": t.requests,
                    "upgrade_windows": {
                        "requests_in": w.inside.len(),
                        "requests_out": w.outside.len(),
                        "latency_ms_in": ms(&w.inside),
                        "latency_ms_out": ms(&w.outside),
                        "p99_ms_in": percentile(&w.inside, 99.0) as f64 / 1e3,
                        "p99_ms_out": percentile(&w.outside, 99.0) as f64 / 1e3,
                        "longest_gap_ms_in": w.gap_inside as f64 / 1e3,
                        "longest_gap_ms_out": w.gap_outside as f64 / 1e3,
                    },
                })
            })
            .collect();
        let h2 = self.h2_latencies();
        json!({
            "options": {
                "duration_s": options.duration.as_secs_f64(),
                "rounds": options.rounds,
                "interval_ms": options.interval.as_secs_f64() * 1e3,
            },
            "throughput": throughput,
            "handover_ms": {
                "sighup_to_ready": ms(&ready),
                "ready_to_old_stopped": ms(&stopped),
                "bare_start_under_load": ms(&self.loaded_starts),
                "bare_start_idle": ms(&self.idle_starts),
                "overhead_median": self.handover_overhead() as f64 / 1e3,
            },
            "h2_latency_ms": {
                "connections": demo::connections(Mode::H2),
                "requests": h2.len(),
                "p50": percentile(&h2, 50.0) as f64 / 1e3,
                "p99": percentile(&h2, 99.0) as f64 / 1e3,
                "p99_9": percentile(&h2, 99.9) as f64 / 1e3,
                "max": h2.last().copied().unwrap_or(0) as f64 / 1e3,
                "requests_40ms_or_more": h2.len() - h2.partition_point(|&us| us < DELAYED_ACK_US),
            },
            "scale": self.scale,
            "failed": self.failed(),
        })
    }
}

fn verdict(met: bool, what: &str) {
    println!("  {} {what}", if met { "met   " } else { "MISSED" });
}

/// `probe=upgrade sockets=1000 upgrade_ms.median=12.3 …`: a JSON object on one line.
fn flatten(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, inner, out);
                }
            }
            Value::String(text) => out.push(format!("{prefix}={text}")),
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out.join(" ")
}

/// The demo's load of `mode` against `server`'s first generation for `duration`, the server
/// left alone: a bench's run without upgrades.
pub(crate) fn steady_load(
    runtime: &Runtime,
    server: &Server,
    mode: Mode,
    duration: Duration,
) -> Result<Report, String> {
    let ready = server.wait_ready(1)?;
    let load = Load::start(runtime, mode, ready.get("addr"), demo::connections(mode))?;
    std::thread::sleep(duration);
    Ok(load.finish(runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start_us: u64, latency_us: u64) -> Timing {
        Timing::new(start_us, latency_us)
    }

    #[test]
    fn requests_overlapping_a_window_are_inside_and_gaps_follow_them() {
        let windows = [(1_000, 2_000), (5_000, 6_000)];
        let samples = [
            sample(0, 100),     // ends at 100: outside
            sample(900, 200),   // 900..1100 straddles the first window's start
            sample(1_500, 10),  // within
            sample(2_000, 500), // starts as the first window ends: inside
            sample(2_600, 100), // 2600..2700: outside
            sample(4_000, 50),  // outside
            sample(6_100, 1),   // just after the second window: outside
        ];
        let mut w = Windows::default();
        w.add(&samples, &windows);
        w.inside.sort_unstable();
        w.outside.sort_unstable();
        assert_eq!(w.inside, vec![10, 200, 500]);
        assert_eq!(w.outside, vec![1, 50, 100, 100]);
        // Completions at 100, 1100, 1510, 2500, 2700, 4050, 6101: the gap 4050..6101 spans the
        // second window, 1510..2500 the first; 2700..4050 touches none.
        assert_eq!(w.gap_inside, 6_101 - 4_050);
        assert_eq!(w.gap_outside, 4_050 - 2_700);
    }

    #[test]
    fn no_windows_puts_everything_outside() {
        let mut w = Windows::default();
        w.add(&[sample(0, 5), sample(10, 5)], &[]);
        assert!(w.inside.is_empty());
        assert_eq!(w.outside.len(), 2);
        assert_eq!((w.gap_inside, w.gap_outside), (0, 10));
    }

    #[test]
    fn spread_and_median_of_small_sets() {
        assert_eq!(spread(&[]), [0, 0, 0, 0]);
        assert_eq!(spread(&[7]), [7, 7, 7, 7]);
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(spread(&values), [1, 51, 95, 100]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(ratios(&[2.0, 3.0], &[4.0, 3.0]), vec![0.5, 1.0]);
        assert_eq!(ratio_spread(&[0.9, 1.1, 1.0]), "100.0% (90.0–110.0)");
    }
}
