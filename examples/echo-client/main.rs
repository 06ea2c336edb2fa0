//! Load for the echo server: connections that exchange lines continuously, and that count real
//! failures separately from clean reconnects. The clients are graceful-testing's load engine
//! (`graceful_testing::load`), so they count exactly as the tests and `cargo xtask demo` do.
//!
//! ```text
//! echo-client [--addr 127.0.0.1:7000] [--connections 8] [--mode long|short]
//!             [--duration 10s] [--max-lines 100000000]
//! ```
//!
//! `long`: each connection sends a line, waits for its answer, sends the next, and so on. When
//! the server closes the connection at a line boundary (after an answer, before it read the
//! next line), the client reconnects and sends that line again: a clean reconnect, not an
//! error. `short`: one line per connection.
//!
//! Errors are the engine's failures, each counted by kind: `refused` (connect refused), `reset`
//! (reset or broken pipe), `timeout` (no answer within 5 s), `torn` (an answer cut short, or
//! not `<line> <pid>`), `empty` (closed before answering a connection's first line), `status`
//! (HTTP only: always 0 here), `other`.
//!
//! It stops by itself after `--duration` or `--max-lines` (split evenly among the
//! connections), or at SIGINT/SIGTERM, letting each connection finish the line it is on. On
//! stdout it prints `started` once every connection got an answer, `pid <pid>` the first time a
//! server process answers, and at the end one summary line; it exits 1 if any error was
//! counted.
//!
//! ```text
//! lines=52311 reconnects=24 errors=0 refused=0 reset=0 timeout=0 torn=0 empty=0 status=0 other=0 answered_by=4242,4250
//! ```

#[path = "../common/args.rs"]
mod args;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use graceful_testing::load::{Client, Live, Load};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: echo-client [--addr 127.0.0.1:7000] [--connections 8] \
                     [--mode long|short] [--duration 10s] [--max-lines 100000000]";
/// How long a connect, or a line's answer, may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

struct Config {
    addr: SocketAddr,
    connections: usize,
    client: Client,
    duration: Duration,
    max_lines: u64,
}

fn config() -> Result<Config, String> {
    let flags = args::Flags::parse(&["addr", "connections", "mode", "duration", "max-lines"])?;
    let client = match flags.text("mode").as_deref() {
        None | Some("long") => Client::LongLines,
        Some("short") => Client::ShortLines,
        Some(other) => return Err(format!("--mode {other:?} is neither long nor short")),
    };
    let connections = flags.value("connections", 8)?;
    if connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(Config {
        addr: flags.value("addr", "127.0.0.1:7000".parse().expect("valid"))?,
        connections,
        client,
        duration: flags.duration("duration", Duration::from_secs(10))?,
        max_lines: flags.value("max-lines", 100_000_000)?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config() {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("echo-client: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("echo-client: cannot install a signal handler");
        return ExitCode::FAILURE;
    };

    let running = Load::none()
        .clients(config.client, config.connections)
        .answers_name_pid()
        .request_timeout(ANSWER_TIMEOUT)
        .max_duration(config.duration)
        .max_exchanges(config.max_lines.div_ceil(config.connections as u64))
        .start(config.addr);
    let live = running.live().clone();
    let announcing = tokio::spawn(announce(live.clone(), config.connections));
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
        () = live.wait_until(|l| l.finished() == config.connections) => {}
    }
    let report = running.stop().await;
    announcing.abort();

    let pids: Vec<String> = report.pids().iter().map(u32::to_string).collect();
    println!(
        "lines={} reconnects={} errors={} {} answered_by={}",
        report.succeeded(),
        report.reconnects(),
        report.failures(),
        report.failures_by_kind(),
        pids.join(",")
    );
    for sample in report.failure_samples() {
        eprintln!("echo-client: {sample}");
    }
    if report.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints `started` once every connection got an answer, and `pid <pid>` the first time a
/// process answers.
async fn announce(live: std::sync::Arc<Live>, connections: usize) {
    let mut started = false;
    let mut printed = BTreeSet::new();
    loop {
        live.wait_until(|l| {
            (!started && l.answering() >= connections) || l.pids().len() > printed.len()
        })
        .await;
        for pid in live.pids() {
            if printed.insert(pid) {
                println!("pid {pid}");
            }
        }
        if !started && live.answering() >= connections {
            started = true;
            println!("started");
        }
    }
}
