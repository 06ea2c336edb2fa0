//! Load for the echo server: connections that exchange lines continuously, and that count real
//! errors separately from clean closes.
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
//! Real errors, each counted by kind: `refused` (connect refused), `reset` (reset or broken
//! pipe), `torn` (an answer cut short or garbled), `unanswered` (closed before answering the
//! first line of a connection), `timeout` (no answer within 5 s), `other`.
//!
//! It stops by itself after `--duration` or `--max-lines`, or at SIGINT/SIGTERM, letting each
//! connection finish the line it is on. On stdout it prints `started` once every connection got
//! an answer, `pid <pid>` the first time a server process answers, and at the end one summary
//! line; it exits 1 if any error was counted.
//!
//! ```text
//! lines=52311 reconnects=24 errors=0 refused=0 reset=0 torn=0 unanswered=0 timeout=0 other=0 answered_by=4242,4250
//! ```

#[path = "../common/args.rs"]
mod args;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: echo-client [--addr 127.0.0.1:7000] [--connections 8] \
                     [--mode long|short] [--duration 10s] [--max-lines 100000000]";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after an error, so a dead server is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Long,
    Short,
}

struct Config {
    addr: SocketAddr,
    connections: usize,
    mode: Mode,
    duration: Duration,
    max_lines: u64,
}

fn config() -> Result<Config, String> {
    let flags = args::Flags::parse(&["addr", "connections", "mode", "duration", "max-lines"])?;
    let mode = match flags.text("mode").as_deref() {
        None | Some("long") => Mode::Long,
        Some("short") => Mode::Short,
        Some(other) => return Err(format!("--mode {other:?} is neither long nor short")),
    };
    let connections = flags.value("connections", 8)?;
    if connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(Config {
        addr: flags.value("addr", "127.0.0.1:7000".parse().expect("valid"))?,
        connections,
        mode,
        duration: flags.duration("duration", Duration::from_secs(10))?,
        max_lines: flags.value("max-lines", 100_000_000)?,
    })
}

/// What one connection worker saw.
#[derive(Default)]
struct Counts {
    lines: u64,
    reconnects: u64,
    refused: u64,
    reset: u64,
    torn: u64,
    unanswered: u64,
    timeout: u64,
    other: u64,
    answered_by: BTreeSet<u32>,
}

impl Counts {
    fn errors(&self) -> u64 {
        self.refused + self.reset + self.torn + self.unanswered + self.timeout + self.other
    }

    fn add(&mut self, other: Counts) {
        self.lines += other.lines;
        self.reconnects += other.reconnects;
        self.refused += other.refused;
        self.reset += other.reset;
        self.torn += other.torn;
        self.unanswered += other.unanswered;
        self.timeout += other.timeout;
        self.other += other.other;
        self.answered_by.extend(other.answered_by);
    }

    fn failed(&mut self, failure: Failure) {
        match failure {
            Failure::Refused => self.refused += 1,
            Failure::Reset => self.reset += 1,
            Failure::Torn => self.torn += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Other => self.other += 1,
            Failure::Closed => self.unanswered += 1,
        }
    }
}

/// How an exchange can fail. `Closed` is a clean close, which is an error only before the
/// connection's first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Refused,
    Reset,
    Torn,
    Timeout,
    Closed,
    Other,
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Failure {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Other,
        }
    }
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
    let stop = CancellationToken::new();
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let Ok(mut signal) = signal(kind) else {
            eprintln!("echo-client: cannot install a signal handler");
            return ExitCode::FAILURE;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.recv().await;
            stop.cancel();
        });
    }
    {
        let (stop, duration) = (stop.clone(), config.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }

    let budget = Arc::new(AtomicU64::new(config.max_lines));
    let started = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let workers: Vec<_> = (0..config.connections)
        .map(|id| {
            let worker = Worker {
                id,
                addr: config.addr,
                mode: config.mode,
                connections: config.connections,
                stop: stop.clone(),
                budget: budget.clone(),
                started: started.clone(),
                seen: seen.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    let mut total = Counts::default();
    for worker in workers {
        match worker.await {
            Ok(counts) => total.add(counts),
            Err(_) => total.other += 1,
        }
    }
    let pids: Vec<String> = total.answered_by.iter().map(u32::to_string).collect();
    println!(
        "lines={} reconnects={} errors={} refused={} reset={} torn={} unanswered={} timeout={} \
         other={} answered_by={}",
        total.lines,
        total.reconnects,
        total.errors(),
        total.refused,
        total.reset,
        total.torn,
        total.unanswered,
        total.timeout,
        total.other,
        pids.join(",")
    );
    if total.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Worker {
    id: usize,
    addr: SocketAddr,
    mode: Mode,
    connections: usize,
    stop: CancellationToken,
    budget: Arc<AtomicU64>,
    started: Arc<AtomicUsize>,
    seen: Arc<Mutex<BTreeSet<u32>>>,
}

impl Worker {
    async fn run(self) -> Counts {
        let mut counts = Counts::default();
        let mut seq = 0u64;
        'connections: while !self.stop.is_cancelled() {
            let mut conn = match connect(self.addr).await {
                Ok(conn) => BufReader::new(conn),
                Err(failure) => {
                    counts.failed(failure);
                    self.pause().await;
                    continue;
                }
            };
            let mut answered_here = 0u64;
            loop {
                if self.stop.is_cancelled() || !self.take_line() {
                    break 'connections;
                }
                let line = format!("c{} {seq}", self.id);
                match exchange(&mut conn, &line).await {
                    Ok(pid) => {
                        if counts.lines == 0
                            && self.started.fetch_add(1, Ordering::SeqCst) + 1 == self.connections
                        {
                            println!("started");
                        }
                        counts.lines += 1;
                        if counts.answered_by.insert(pid) && self.seen.lock().unwrap().insert(pid) {
                            println!("pid {pid}");
                        }
                        answered_here += 1;
                        seq += 1;
                        if self.mode == Mode::Short {
                            continue 'connections;
                        }
                    }
                    // Closed at a boundary: reconnect and send the same line again.
                    Err(Failure::Closed) if answered_here > 0 => {
                        counts.reconnects += 1;
                        continue 'connections;
                    }
                    Err(failure) => {
                        counts.failed(failure);
                        self.pause().await;
                        continue 'connections;
                    }
                }
            }
        }
        counts
    }

    fn take_line(&self) -> bool {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    async fn pause(&self) {
        tokio::select! {
            () = tokio::time::sleep(ERROR_PAUSE) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(err)) => Err(err.into()),
        Ok(Ok(conn)) => {
            conn.set_nodelay(true).map_err(Failure::from)?;
            Ok(conn)
        }
    }
}

/// Sends one line and reads its answer, `<line> <pid>`; returns the pid.
async fn exchange(conn: &mut BufReader<TcpStream>, line: &str) -> Result<u32, Failure> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    let mut answer = String::new();
    match tokio::time::timeout(ANSWER_TIMEOUT, conn.read_line(&mut answer)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(err)) => Err(err.into()),
        Ok(Ok(0)) => Err(Failure::Closed),
        Ok(Ok(_)) => answer
            .strip_suffix('\n')
            .and_then(|a| a.strip_prefix(line))
            .and_then(|a| a.strip_prefix(' '))
            .and_then(|pid| pid.parse().ok())
            .ok_or(Failure::Torn),
    }
}
