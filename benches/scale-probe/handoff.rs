//! `scale-probe handoff --connections N [--samples K]`: how long the old generation takes to
//! hand N idle sessions over to its successor (live hand-off), what the successor's memory
//! grows by for them, and whether every session survived.
//!
//! The server is the role `serve-echo --handoff true`: the line echo server of the drain probe,
//! which hands each session over at its next boundary instead of closing it. The clients are
//! the role `hold` (N connections, each answered once, then idle).
//!
//! - `handoff_ms`: measured by the old generation, from the moment its listener ends (the new
//!   generation is ready) until `drain()` returns: every session has been handed over (a
//!   handed-over session leaves the old generation's count at once).
//! - `upgrade_ms`: from SIGHUP to the new generation's `ready` line, with N sessions open.
//! - `successor_bytes_per_connection`: the new generation's resident set once it holds the N
//!   sessions, less the old generation's at its start (same binary, no connection yet), over N.
//! - `handed_off`: what the old generations said they handed over, summed over the samples
//!   (`clients` = N × K). Then the new generation is stopped, which closes each session at its
//!   boundary: `clean_eof` counts the clients that saw that clean end (a session lost on the
//!   way would have ended earlier, or with a reset), `reset` and `other_errors` the others.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::json::{self, Object};
use crate::memory::resident_bytes_of;
use crate::procs::{self, Process};
use crate::{Failure, STEP};

/// What one upgrade with N idle sessions showed.
#[derive(Debug, Default)]
struct Sample {
    handoff: Duration,
    upgrade: Duration,
    bytes_per_connection: f64,
    handed_off: u64,
    clean: u64,
    reset: u64,
    other: u64,
}

/// Measures and returns the probe's JSON object.
pub(crate) fn probe(connections: usize, samples: usize) -> Result<Object, Failure> {
    procs::allow_descriptors(connections as u64 + 64).map_err(Failure::Skipped)?;
    let mut all = Vec::with_capacity(samples);
    for sample in 1..=samples {
        eprintln!("scale-probe: handoff, {connections} connections: sample {sample} of {samples}");
        all.push(one(connections)?);
    }
    let sum = |field: fn(&Sample) -> u64| all.iter().map(field).sum::<u64>();
    let handoffs: Vec<Duration> = all.iter().map(|s| s.handoff).collect();
    let upgrades: Vec<Duration> = all.iter().map(|s| s.upgrade).collect();
    let bytes: Vec<f64> = all.iter().map(|s| s.bytes_per_connection).collect();
    Ok(Object::new("handoff")
        .int("connections", connections as u64)
        .int("samples", samples as u64)
        .object("handoff_ms", json::timings(&handoffs))
        .object("upgrade_ms", json::timings(&upgrades))
        .object("successor_bytes_per_connection", json::spread(&bytes))
        .int("clients", (connections * samples) as u64)
        .int("handed_off", sum(|s| s.handed_off))
        .int("clean_eof", sum(|s| s.clean))
        .int("reset", sum(|s| s.reset))
        .int("other_errors", sum(|s| s.other)))
}

/// One server, N clients, one upgrade with hand-off, then a stop.
fn one(connections: usize) -> Result<Sample, String> {
    let mut server = Process::start(
        "server",
        &["serve-echo".into(), "--handoff".into(), "true".into()],
    )?;
    let ready = server.wait_for("ready", "its ready line", STEP, |r| r.is("generation", 1))?;
    let old: u32 = ready.get("pid")?;
    let addr: String = ready.get("addr")?;
    let baseline = resident_bytes_of(old)?;
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
    let new_pid: u32 = new.get("pid")?;
    let handed_off: u64 = exited.get("handed_off")?;
    let holding = resident_bytes_of(new_pid)?;
    server.signal(new_pid, Signal::SIGTERM)?;
    server.wait_for("exited", "the new generation's exit", STEP, |r| {
        r.is("pid", new_pid)
    })?;
    let closed = clients.wait_for("closed", "how the connections ended", STEP, |_| true)?;
    let handoff_ms: f64 = exited.get("drain_ms")?;
    Ok(Sample {
        handoff: Duration::from_secs_f64(handoff_ms / 1e3),
        upgrade: new.at - sent,
        bytes_per_connection: holding.saturating_sub(baseline) as f64 / connections as f64,
        handed_off,
        clean: closed.get("clean")?,
        reset: closed.get("reset")?,
        other: closed.get("other")?,
    })
}
