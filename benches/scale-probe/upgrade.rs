//! `scale-probe upgrade --sockets N [--samples K]`: how the upgrade time grows with the number
//! of inherited listeners, next to the time a fresh start takes with as many.
//!
//! The server is this binary in the role `serve-sockets`: it installs graceful (SIGHUP upgrades,
//! SIGTERM stops; see `install_server`), creates N TCP listeners on 127.0.0.1:0, calls
//! `ready()`, prints `ready pid=… generation=… sockets=N`, and waits. The listeners are not
//! polled: what is measured is handing them over, not accepting from them.
//!
//! - `start_ms`: from spawning the binary to its `ready` line, K times, each a fresh process
//!   that binds N sockets. What the server costs without any upgrade.
//! - `upgrade_ms`: from SIGHUP sent to the serving generation to the next generation's `ready`
//!   line, K upgrades in a row of one server. The new generation inherits the N listeners
//!   instead of binding them. Each old generation is waited for (its `exited` line) before the
//!   next SIGHUP, so the samples do not overlap.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::args::Flags;
use crate::json::{self, Object};
use crate::procs::{self, Process};
use crate::{Failure, STEP};

/// Descriptors a server with `sockets` listeners needs to upgrade: graceful keeps its own
/// duplicate of each listener for the next handover, and the forked child duplicates each once
/// more above the target range before placing them at fd 3 onward; plus the runtime's and the
/// process's own.
fn descriptors(sockets: usize) -> u64 {
    3 * sockets as u64 + 64
}

/// Measures and returns the probe's JSON object.
pub(crate) fn probe(sockets: usize, samples: usize) -> Result<Object, Failure> {
    procs::allow_descriptors(descriptors(sockets)).map_err(Failure::Skipped)?;
    eprintln!("scale-probe: upgrade, {sockets} sockets: {samples} fresh starts");
    let mut start = Vec::with_capacity(samples);
    for _ in 0..samples {
        start.push(fresh_start(sockets)?);
    }
    eprintln!("scale-probe: upgrade, {sockets} sockets: {samples} upgrades");
    let upgrade = upgrades(sockets, samples)?;
    Ok(Object::new("upgrade")
        .int("sockets", sockets as u64)
        .int("samples", samples as u64)
        .object("upgrade_ms", json::timings(&upgrade))
        .object("start_ms", json::timings(&start)))
}

fn server_args(sockets: usize) -> Vec<String> {
    vec![
        "serve-sockets".into(),
        "--sockets".into(),
        sockets.to_string(),
    ]
}

/// Starts a server, times it until ready, and stops it.
fn fresh_start(sockets: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let mut server = Process::start("server", &server_args(sockets))?;
    let ready = server.wait_for("ready", "its ready line", STEP, |_| true)?;
    let pid = ready.get("pid")?;
    stop(&mut server, pid)?;
    Ok(ready.at - started)
}

/// Upgrades one server `samples` times and times each upgrade.
fn upgrades(sockets: usize, samples: usize) -> Result<Vec<Duration>, String> {
    let mut server = Process::start("server", &server_args(sockets))?;
    let ready = server.wait_for("ready", "its ready line", STEP, |r| r.is("generation", 1))?;
    let mut pid: u32 = ready.get("pid")?;
    let mut times = Vec::with_capacity(samples);
    for generation in 2..=samples as u64 + 1 {
        let sent = Instant::now();
        server.signal(pid, Signal::SIGHUP)?;
        let ready = server.wait_for(
            "ready",
            &format!("the ready line of generation {generation}"),
            STEP,
            |r| r.is("generation", generation),
        )?;
        times.push(ready.at - sent);
        server.wait_for(
            "exited",
            &format!("the exit of generation {}", generation - 1),
            STEP,
            |r| r.is("pid", pid),
        )?;
        server.reap_ended();
        pid = ready.get("pid")?;
    }
    stop(&mut server, pid)?;
    Ok(times)
}

/// Stops the serving generation with SIGTERM and waits for its `exited` line.
fn stop(server: &mut Process, pid: u32) -> Result<(), String> {
    server.signal(pid, Signal::SIGTERM)?;
    server.wait_for("exited", "its exit line after SIGTERM", STEP, |r| {
        r.is("pid", pid)
    })?;
    Ok(())
}

/// The role `serve-sockets --sockets N`: a graceful server holding N listeners.
pub(crate) fn serve(flags: &Flags) -> Result<(), String> {
    let sockets = flags.count("sockets", 1)?;
    procs::allow_descriptors(descriptors(sockets))?;
    crate::runtime()?.block_on(async {
        let graceful = crate::install_server()?;
        let mut listeners = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            let listener = graceful
                .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .map_err(|e| format!("cannot create listener {}: {e}", listeners.len() + 1))?;
            listeners.push(listener);
        }
        graceful
            .ready()
            .map_err(|e| format!("graceful ready failed: {e}"))?;
        crate::stop_when_stdin_closes(&graceful);
        println!(
            "ready pid={} generation={} sockets={sockets}",
            std::process::id(),
            graceful.upgrader().generation()
        );
        graceful.upgrade_requested().await;
        drop(listeners);
        let report = graceful.drain(STEP).await;
        println!(
            "exited pid={} abandoned={} outcome={:?}",
            std::process::id(),
            report.abandoned,
            report.outcome
        );
        Ok(())
    })
}
