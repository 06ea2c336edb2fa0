//! `cargo xtask demo`: live upgrades under load, with a verdict.
//!
//! Builds the examples in release mode and runs two phases. In the first, `http-server` serves
//! the HTTP loads (one request per connection, keep-alive HTTP/1.1 and HTTP/2) and long-lived
//! WebSockets (`GET /ws`, text messages echoed with the pid) all at once; in the second,
//! `echo-server` serves long-lived line sessions. In each phase the server starts on
//! a free loopback port, the load runs, and the demo sends SIGHUP at a fixed interval, waiting
//! for each upgrade to complete: the new generation ready, the old one stopped accepting. Once
//! the loads have reached the last generation they stop, and every replaced generation must have
//! drained and exited.
//!
//! `echo-server` hands its sessions, and `http-server` its WebSockets, over to each new
//! generation on their own connections at a message boundary (live hand-off), so those clients
//! must see no reconnect at all; the HTTP clients reconnect cleanly (keep-alive connections are
//! closed between requests, HTTP/2 gets GOAWAY).
//!
//! A live line shows progress. At the end a table gives each mode's requests, reconnects and
//! failures by kind, and the demo exits non-zero if any request failed, any upgrade did not
//! complete, any old generation abandoned a connection, or a WebSocket or echo session
//! reconnected.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use graceful_testing::load::{Live, percentile};
use graceful_testing::process::{self, Signal};
use tokio::runtime::Runtime;

use crate::load::{Load, Mode, Report};
use crate::procs::{self, STEP, Server};

pub(crate) struct Options {
    pub(crate) modes: Vec<Mode>,
    pub(crate) upgrades: u32,
    pub(crate) interval: Duration,
}

/// Connections per mode: enough to keep both cores busy without drowning the server.
pub(crate) fn connections(mode: Mode) -> usize {
    match mode {
        Mode::Short => 8,
        Mode::KeepAlive => 16,
        Mode::H2 => 8,
        Mode::Ws => 16,
        Mode::Echo => 16,
    }
}

pub(crate) fn run(options: &Options) -> Result<bool, String> {
    let bin = procs::build_release(&["graceful-examples"])?;
    let scratch = procs::scratch_dir("demo")?;
    process::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    let runtime = crate::runtime()?;

    let http: Vec<Mode> = options
        .modes
        .iter()
        .copied()
        .filter(|m| m.is_http())
        .collect();
    let echo: Vec<Mode> = options
        .modes
        .iter()
        .copied()
        .filter(|m| !m.is_http())
        .collect();
    let mut phases = Vec::new();
    for (server, modes) in [("http-server", http), ("echo-server", echo)] {
        if modes.is_empty() {
            continue;
        }
        println!(
            "\n{server}: {} upgrades, one every {:?}, under {} load",
            options.upgrades,
            options.interval,
            modes
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(" + ")
        );
        phases.push(phase(&runtime, &bin, server, &modes, options, &scratch)?);
    }

    let passed = summarize(&phases, options);
    if passed {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        println!("logs: {}", scratch.display());
    }
    Ok(passed)
}

/// One upgrade as the demo saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Upgrade {
    pub(crate) signalled: Instant,
    /// The new generation printed `ready`.
    pub(crate) ready: Instant,
    /// The old generation printed `stopped`: it no longer accepts.
    pub(crate) stopped: Instant,
}

impl Upgrade {
    /// SIGHUP sent → new generation ready.
    pub(crate) fn handover(&self) -> Duration {
        self.ready.duration_since(self.signalled)
    }

    /// New generation ready → old generation stopped accepting.
    pub(crate) fn stop_delay(&self) -> Duration {
        self.stopped.saturating_duration_since(self.ready)
    }
}

/// How a replaced generation ended.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) abandoned: u64,
    pub(crate) outcome: String,
    /// Connections it handed over to its successor.
    pub(crate) handed_off: u64,
}

/// What one server and its loads went through.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) reports: Vec<Report>,
    pub(crate) upgrades: Vec<Upgrade>,
    pub(crate) exits: Vec<Exit>,
    pub(crate) elapsed: Duration,
}

#[derive(Debug)]
struct Phase {
    server: &'static str,
    run: Run,
}

fn phase(
    runtime: &Runtime,
    bin: &Path,
    server: &'static str,
    modes: &[Mode],
    options: &Options,
    scratch: &Path,
) -> Result<Phase, String> {
    let pid_file = scratch.join(format!("{server}.pid"));
    let args = [
        "--addr",
        "127.0.0.1:0",
        "--drain-timeout",
        "10s",
        "--pid-file",
        pid_file.to_str().ok_or("the scratch path is not UTF-8")?,
    ];
    let process = Server::start(
        &bin.join(server),
        &args,
        &scratch.join(format!("{server}.log")),
    )?;
    let loads: Vec<(Mode, usize)> = modes.iter().map(|m| (*m, connections(*m))).collect();
    let run = under_upgrades(
        runtime,
        &process,
        &loads,
        options.upgrades,
        options.interval,
        true,
    );
    process.stop();
    Ok(Phase { server, run: run? })
}

/// Runs `loads` against a started server while upgrading it `upgrades` times, one every
/// `interval`; returns once the loads have reached the last generation and every replaced
/// generation has exited. With `progress`, shows the live line on stdout.
pub(crate) fn under_upgrades(
    runtime: &Runtime,
    server: &Server,
    loads: &[(Mode, usize)],
    upgrades: u32,
    interval: Duration,
    progress: bool,
) -> Result<Run, String> {
    let first = server.wait_ready(1)?;
    let started = Instant::now();
    let loads = loads
        .iter()
        .map(|(mode, n)| Load::start(runtime, *mode, first.get("addr"), *n))
        .collect::<Result<Vec<Load>, String>>()?;
    let result = upgrade_loop(server, &loads, first.pid(), upgrades, interval, progress);
    let reports = loads.into_iter().map(|l| l.finish(runtime)).collect();
    let (upgrades, exits) = result?;
    Ok(Run {
        reports,
        upgrades,
        exits,
        elapsed: started.elapsed(),
    })
}

fn upgrade_loop(
    server: &Server,
    loads: &[Load],
    mut pid: u32,
    upgrades: u32,
    interval: Duration,
    progress: bool,
) -> Result<(Vec<Upgrade>, Vec<Exit>), String> {
    for load in loads {
        wait_until(
            &format!("the {} load's first answer", load.mode().name()),
            || load.live().answered() > 0,
        )?;
    }
    let progress = progress.then(|| Progress::start(loads, upgrades));
    let mut done = Vec::new();
    let mut replaced = Vec::new();
    for n in 1..=upgrades {
        std::thread::sleep(interval);
        let signalled = Instant::now();
        process::signal(pid, Signal::SIGHUP).map_err(|e| format!("SIGHUP to {pid}: {e}"))?;
        let ready = server.wait_ready(u64::from(n) + 1)?;
        let stopped = server.wait_line_of("stopped", pid)?;
        done.push(Upgrade {
            signalled,
            ready: ready.at,
            stopped: stopped.at,
        });
        replaced.push(pid);
        pid = ready.pid();
        if let Some(progress) = &progress {
            progress.upgraded(n, pid);
        }
    }
    // Every load must be answered by the last generation before it stops.
    for load in loads {
        wait_until(
            &format!("the {} load to reach pid {pid}", load.mode().name()),
            || load.live().pids().contains(&pid),
        )?;
    }
    drop(progress);
    let mut exits = Vec::new();
    for old in replaced {
        let exited = server.wait_line_of("exited", old)?;
        exits.push(Exit {
            abandoned: exited.get("abandoned").parse().unwrap_or(u64::MAX),
            outcome: exited.get("outcome").to_owned(),
            handed_off: exited.get("handed_off").parse().unwrap_or(0),
        });
    }
    Ok((done, exits))
}

pub(crate) fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("gave up waiting {STEP:?} for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The live line: `12.3s  upgrades 23/50  pid 4242  requests 1234567  reconnects 345  failed 0`.
/// Rewritten in place on a terminal, printed once a second otherwise.
struct Progress {
    done: Arc<AtomicBool>,
    upgraded: Arc<(AtomicU32, AtomicU32)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(loads: &[Load], upgrades: u32) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let upgraded = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
        let counters: Vec<_> = loads.iter().map(|l| l.live().clone()).collect();
        let terminal = std::io::stdout().is_terminal();
        let period = if terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        let started = Instant::now();
        let thread = {
            let (done, upgraded) = (done.clone(), upgraded.clone());
            std::thread::spawn(move || {
                let mut last = false;
                while !last {
                    last = done.load(Ordering::Relaxed);
                    let sum = |f: fn(&Live) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
                    let line = format!(
                        "  {:>6.1}s  upgrades {}/{upgrades}  pid {}  requests {}  reconnects {}  failed {}",
                        started.elapsed().as_secs_f64(),
                        upgraded.0.load(Ordering::Relaxed),
                        upgraded.1.load(Ordering::Relaxed),
                        sum(Live::answered),
                        sum(Live::reconnects),
                        sum(Live::failures),
                    );
                    if terminal {
                        print!("\r{line}   ");
                        let _ = std::io::stdout().flush();
                    } else {
                        println!("{line}");
                    }
                    if !last {
                        std::thread::park_timeout(period);
                    }
                }
                if terminal {
                    println!();
                }
            })
        };
        Progress {
            done,
            upgraded,
            thread: Some(thread),
        }
    }

    fn upgraded(&self, n: u32, pid: u32) {
        self.upgraded.0.store(n, Ordering::Relaxed);
        self.upgraded.1.store(pid, Ordering::Relaxed);
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints the table and the verdict; true when nothing failed.
fn summarize(phases: &[Phase], options: &Options) -> bool {
    println!();
    println!(
        "| mode | connections | requests | reconnects | failed | generations answering | latency p50 / p99 / max |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for report in phases.iter().flat_map(|p| &p.run.reports) {
        let latencies = report.load.latencies_us();
        println!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} / {} / {} |",
            report.mode.name(),
            report.mode.describe(),
            report.load.clients(),
            report.load.succeeded(),
            report.load.reconnects(),
            report.load.failures(),
            report.load.pids().len(),
            micros(percentile(&latencies, 50.0)),
            micros(percentile(&latencies, 99.0)),
            micros(latencies.last().copied().unwrap_or(0)),
        );
    }
    println!();

    let mut passed = true;
    for Phase { server, run } in phases {
        let mut handovers: Vec<u64> = run
            .upgrades
            .iter()
            .map(|u| u.handover().as_micros() as u64)
            .collect();
        handovers.sort_unstable();
        let mut stops: Vec<u64> = run
            .upgrades
            .iter()
            .map(|u| u.stop_delay().as_micros() as u64)
            .collect();
        stops.sort_unstable();
        let drained = run
            .exits
            .iter()
            .filter(|e| e.outcome == "Drained" && e.abandoned == 0)
            .count();
        let handed_off: u64 = run.exits.iter().map(|e| e.handed_off).sum();
        println!(
            "{}: {} upgrades in {:.1} s. SIGHUP → new generation ready: median {}, max {}; \
             → old one stopped accepting: median {} later. Replaced generations drained with \
             nothing abandoned: {}/{}; connections handed over live: {handed_off}.",
            server,
            run.upgrades.len(),
            run.elapsed.as_secs_f64(),
            micros(percentile(&handovers, 50.0)),
            micros(handovers.last().copied().unwrap_or(0)),
            micros(percentile(&stops, 50.0)),
            drained,
            run.exits.len(),
        );
        if drained != run.exits.len() {
            passed = false;
            for exit in run.exits.iter().filter(|e| e.abandoned > 0) {
                println!(
                    "  a replaced generation abandoned {} connections ({})",
                    exit.abandoned, exit.outcome
                );
            }
        }
    }

    let reports: Vec<&Report> = phases.iter().flat_map(|p| &p.run.reports).collect();
    // Echo sessions and WebSockets are handed over live: a reconnect means one was closed
    // instead.
    let live: Vec<&&Report> = reports
        .iter()
        .filter(|r| r.mode.handed_over_live())
        .collect();
    for report in &live {
        if report.load.reconnects() > 0 {
            passed = false;
            println!(
                "  {}: {} reconnects; live hand-off should have kept every session on its \
                 connection",
                report.mode.name(),
                report.load.reconnects()
            );
        }
    }
    let failed: u64 = reports.iter().map(|r| r.load.failures()).sum();
    let requests: u64 = reports.iter().map(|r| r.load.succeeded()).sum();
    let modes: Vec<&str> = reports.iter().map(|r| r.mode.name()).collect();
    println!();
    if failed == 0 && passed {
        println!(
            "PASS: 0 failed requests out of {requests} across {} upgrades per mode ({}).",
            options.upgrades,
            modes.join(", ")
        );
        if !live.is_empty() {
            let names: Vec<&str> = live
                .iter()
                .map(|r| match r.mode {
                    Mode::Ws => "WebSocket",
                    mode => mode.name(),
                })
                .collect();
            let sessions: u64 = live.iter().map(|r| r.load.clients() as u64).sum();
            println!(
                "PASS: the {} loads across {} upgrades: 0 failed and 0 reconnects \
                 ({sessions} sessions, each kept on its connection: handed over live).",
                names.join(" and "),
                options.upgrades,
            );
        }
        true
    } else {
        println!("FAIL: {failed} failed requests out of {requests}.");
        for report in reports.iter().filter(|r| r.load.failures() > 0) {
            println!(
                "  {}: {}",
                report.mode.name(),
                report.load.failures_by_kind()
            );
            for example in report.load.failure_samples() {
                println!("    {example}");
            }
        }
        false
    }
}

/// `812 µs`, `13.3 ms` or `1.20 s`.
pub(crate) fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}
