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

use crate::Failure;
use crate::drain::Upgraded;
use crate::json::{self, Object};
use crate::memory::resident_bytes_of;
use crate::procs;

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
    let (upgraded, baseline) = Upgraded::start(connections, true, resident_bytes_of)?;
    let new_pid: u32 = upgraded.new.get("pid")?;
    let handed_off: u64 = upgraded.exited.get("handed_off")?;
    let handoff_ms: f64 = upgraded.exited.get("drain_ms")?;
    let holding = resident_bytes_of(new_pid)?;
    let upgrade = upgraded.upgrade;
    let closed = upgraded.stop()?;
    Ok(Sample {
        handoff: Duration::from_secs_f64(handoff_ms / 1e3),
        upgrade,
        bytes_per_connection: holding.saturating_sub(baseline) as f64 / connections as f64,
        handed_off,
        clean: closed.get("clean")?,
        reset: closed.get("reset")?,
        other: closed.get("other")?,
    })
}
