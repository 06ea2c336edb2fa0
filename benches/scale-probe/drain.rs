//! `scale-probe drain --connections N [--samples K]`: how long the old generation takes to close
//! N idle connections at their boundary and exit, and whether every client saw a clean end.
//!
//! The server is this binary in the role `serve-echo`: a graceful line echo server that, like
//! `examples/echo-server`, closes each connection at its next boundary once
//! `upgrade_requested()` completes: it half-closes (the client reads end of file), then reads
//! until the client closes too, so the client never sees a reset. The clients are the role
//! `hold`, in a process of their own: N connections, each sends one line, reads its answer, and
//! then waits idle, counting how its connection ended.
//!
//! - `drain_ms`: measured by the old generation, from the moment its listener ends (the new
//!   generation is ready, so `upgrade_requested()` has completed) until `drain()` returns with
//!   every tracked connection closed.
//! - `upgrade_ms`: from SIGHUP to the new generation's `ready` line, with N connections open.
//! - `clean_eof`, `reset`, `other_errors`, `still_open`: how the clients' connections ended,
//!   summed over the samples (`clients` = N × K). `abandoned`: connections the old generation
//!   still held when its drain gave up, summed too.

use std::time::Duration;

use futures::StreamExt;
use graceful::{Graceful, TrackedStream};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::args::Flags;
use crate::json::{self, Object};
use crate::procs::{self, Process, Report};
use crate::{Failure, LOOPBACK, STEP};

/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(10);

/// Descriptors each of the server and the clients needs for `connections`.
fn descriptors(connections: usize) -> u64 {
    connections as u64 + 64
}

/// What one upgrade with N idle connections showed.
#[derive(Debug, Default)]
struct Sample {
    drain: Duration,
    upgrade: Duration,
    abandoned: u64,
    clean: u64,
    reset: u64,
    other: u64,
    open: u64,
}

/// Measures and returns the probe's JSON object.
pub(crate) fn probe(connections: usize, samples: usize) -> Result<Object, Failure> {
    procs::allow_descriptors(descriptors(connections)).map_err(Failure::Skipped)?;
    let mut all = Vec::with_capacity(samples);
    for sample in 1..=samples {
        eprintln!("scale-probe: drain, {connections} connections: sample {sample} of {samples}");
        all.push(one(connections)?);
    }
    let sum = |field: fn(&Sample) -> u64| all.iter().map(field).sum::<u64>();
    let drains: Vec<Duration> = all.iter().map(|s| s.drain).collect();
    let upgrades: Vec<Duration> = all.iter().map(|s| s.upgrade).collect();
    Ok(Object::new("drain")
        .int("connections", connections as u64)
        .int("samples", samples as u64)
        .object("drain_ms", json::timings(&drains))
        .object("upgrade_ms", json::timings(&upgrades))
        .int("clients", (connections * samples) as u64)
        .int("clean_eof", sum(|s| s.clean))
        .int("reset", sum(|s| s.reset))
        .int("other_errors", sum(|s| s.other))
        .int("still_open", sum(|s| s.open))
        .int("abandoned", sum(|s| s.abandoned)))
}

/// A `serve-echo` server holding N idle clients, upgraded once: what the probes measure.
pub(crate) struct Upgraded {
    pub(crate) server: Process,
    pub(crate) clients: Process,
    /// The new generation's `ready` line.
    pub(crate) new: Report,
    /// The old generation's `exited` line.
    pub(crate) exited: Report,
    /// SIGHUP → the new generation's `ready` line.
    pub(crate) upgrade: Duration,
}

impl Upgraded {
    /// Starts the server (`--handoff handoff`), runs `at_start` with its pid before any client
    /// connects, connects N clients that are each answered once, and upgrades it; returns once
    /// the old generation has exited, with what `at_start` returned.
    pub(crate) fn start<T>(
        connections: usize,
        handoff: bool,
        at_start: impl FnOnce(u32) -> Result<T, String>,
    ) -> Result<(Upgraded, T), String> {
        let mut server = Process::start(
            "server",
            &["serve-echo".into(), "--handoff".into(), handoff.to_string()],
        )?;
        let ready = server.wait_for("ready", "its ready line", STEP, |r| r.is("generation", 1))?;
        let old: u32 = ready.get("pid")?;
        let addr: String = ready.get("addr")?;
        let started = at_start(old)?;
        let mut clients = Process::start(
            "clients",
            &[
                "hold".into(),
                "--addr".into(),
                addr,
                "--connections".into(),
                connections.to_string(),
                "--hello".into(),
                "true".into(),
            ],
        )?;
        let held = clients.wait_for("held", "its held line", STEP, |_| true)?;
        let failed: u64 = held.get("failed")?;
        if failed > 0 {
            return Err(format!(
                "{failed} of {connections} clients could not connect and be answered"
            ));
        }

        let sent = std::time::Instant::now();
        server.signal(old, Signal::SIGHUP)?;
        let new = server.wait_for("ready", "the ready line of generation 2", STEP, |r| {
            r.is("generation", 2)
        })?;
        let exited = server.wait_for("exited", "the old generation's exit", STEP, |r| {
            r.is("pid", old)
        })?;
        let upgrade = new.at - sent;
        let upgraded = Upgraded {
            server,
            clients,
            new,
            exited,
            upgrade,
        };
        Ok((upgraded, started))
    }

    /// Stops the new generation (its sessions end at their boundary) and returns the clients'
    /// `closed` line: how each connection ended.
    pub(crate) fn stop(mut self) -> Result<Report, String> {
        let new_pid: u32 = self.new.get("pid")?;
        self.server.signal(new_pid, Signal::SIGTERM)?;
        self.server
            .wait_for("exited", "the new generation's exit", STEP, |r| {
                r.is("pid", new_pid)
            })?;
        self.clients
            .wait_for("closed", "how the connections ended", STEP, |_| true)
    }
}

/// One server, N clients, one upgrade.
fn one(connections: usize) -> Result<Sample, String> {
    let (mut upgraded, ()) = Upgraded::start(connections, false, |_| Ok(()))?;
    // The old generation closed every connection: the clients have seen how.
    let closed = upgraded
        .clients
        .wait_for("closed", "how the connections ended", STEP, |_| true)?;
    let exited = &upgraded.exited;
    let drain_ms: f64 = exited.get("drain_ms")?;
    let sample = Sample {
        drain: Duration::from_secs_f64(drain_ms / 1e3),
        upgrade: upgraded.upgrade,
        abandoned: exited.get("abandoned")?,
        clean: closed.get("clean")?,
        reset: closed.get("reset")?,
        other: closed.get("other")?,
        open: closed.get("open")?,
    };
    let new_pid: u32 = upgraded.new.get("pid")?;
    upgraded.server.signal(new_pid, Signal::SIGTERM)?;
    upgraded
        .server
        .wait_for("exited", "the new generation's exit", STEP, |r| {
            r.is("pid", new_pid)
        })?;
    Ok(sample)
}

/// The tag the `serve-echo` role hands its sessions over under.
const SESSION: &str = "probe-echo";

/// The role `serve-echo [--handoff true]`: a graceful line echo server on 127.0.0.1:0 that, when
/// replaced, closes its connections at a boundary (or, with `--handoff true`, hands them over to
/// the new generation there), and reports its drain.
pub(crate) fn serve(flags: &Flags) -> Result<(), String> {
    let handoff: bool = flags.value("handoff", false)?;
    crate::runtime()?.block_on(async {
        let graceful = crate::install_server()?;
        if handoff {
            let mut handed = graceful
                .handed_over(SESSION)
                .map_err(|e| format!("cannot ask for sessions: {e}"))?;
            let graceful = graceful.clone();
            tokio::spawn(async move {
                while let Some(session) = handed.next().await {
                    let (conn, _record) = session.into_parts();
                    tokio::spawn(echo(conn, graceful.clone(), true));
                }
            });
        }
        let mut listener = graceful
            .listen(LOOPBACK)
            .await
            .map_err(|e| format!("cannot create the listener: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listener's address: {e}"))?;
        graceful
            .ready()
            .map_err(|e| format!("graceful ready failed: {e}"))?;
        crate::stop_when_stdin_closes(&graceful);
        println!(
            "ready pid={} generation={} addr={addr}",
            std::process::id(),
            graceful.upgrader().generation()
        );
        while let Some(conn) = listener.next().await {
            tokio::spawn(echo(conn, graceful.clone(), handoff));
        }
        // The listener ends when the new generation is ready: the drain starts now.
        let started = std::time::Instant::now();
        let report = graceful.drain(STEP).await;
        println!(
            "exited pid={} open_at_start={} abandoned={} outcome={:?} drain_ms={:.3} \
             handed_off={}",
            std::process::id(),
            report.open_at_start,
            report.abandoned,
            report.outcome,
            started.elapsed().as_secs_f64() * 1e3,
            graceful.handed_off()
        );
        Ok(())
    })
}

/// Answers each line with itself until the client leaves or, once an upgrade is requested,
/// until the next line boundary; there it hands the session over if `handoff` (the sessions
/// here never have input buffered at a boundary: the record is empty), or closes as
/// `examples/echo-server` does.
async fn echo(conn: TrackedStream<TcpStream>, graceful: Graceful, handoff: bool) {
    let mut conn = BufReader::new(conn);
    let upgrade = graceful.upgrade_requested();
    tokio::pin!(upgrade);
    let mut line = String::new();
    loop {
        tokio::select! {
            biased;
            available = conn.fill_buf() => match available {
                Ok([]) | Err(_) => return,
                Ok(_) => {}
            },
            () = &mut upgrade => {
                if handoff && conn.buffer().is_empty() {
                    match graceful.hand_off(conn.into_inner(), SESSION, &[]).await {
                        Ok(()) => return,
                        Err(kept) => conn = BufReader::new(kept.stream),
                    }
                }
                break;
            }
        }
        line.clear();
        match conn.read_line(&mut line).await {
            Ok(_) if line.ends_with('\n') => {}
            _ => return,
        }
        if conn.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
    // Half-close, so the client reads a clean end of stream, then discard what it sends until
    // it closes too: closing with unread data would reset the connection instead.
    if conn.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0; 256];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
