//! `scale-probe memory --connections N [--samples K]`: what holding a tracked connection costs
//! in memory, against a raw one.
//!
//! The server is this binary in the role `serve-memory --kind raw|tracked`: a single-threaded
//! runtime (fewer allocator arenas, less noise) that reads its resident set size (VmRSS in
//! /proc/self/status), accepts N connections into a vector reserved beforehand, and reads it
//! again. `raw` accepts with a plain tokio listener and holds `TcpStream`s; `tracked` accepts
//! with the graceful listener and holds `TrackedStream<TcpStream>`s. The clients are the role
//! `hold`, in a process of their own.
//!
//! - `raw_bytes_per_connection`, `tracked_bytes_per_connection`: (RSS after − RSS before) / N,
//!   over K samples of each kind, alternated: `{"min":…,"median":…,"max":…}`. They include
//!   tokio's registration of each socket and the vector's slot, not the kernel's socket
//!   buffers, which are not in the RSS.
//! - `tracking_bytes_per_connection`: the difference of the two medians, what tracking adds.
//!   RSS moves by pages, and the allocator's growth is lumpy, so with N = 10 000 the
//!   difference is good to a few bytes; `size_of_raw` and `size_of_tracked` are the exact
//!   sizes of the two types held.

use std::fmt;
use std::io;
use std::str::FromStr;

use graceful::TrackedStream;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::args::Flags;
use crate::json::{self, Object};
use crate::procs::{self, Process};
use crate::{Failure, LOOPBACK, STEP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Tracked,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Raw => "raw",
            Kind::Tracked => "tracked",
        })
    }
}

impl FromStr for Kind {
    type Err = ();

    fn from_str(s: &str) -> Result<Kind, ()> {
        match s {
            "raw" => Ok(Kind::Raw),
            "tracked" => Ok(Kind::Tracked),
            _ => Err(()),
        }
    }
}

/// Measures and returns the probe's JSON object.
pub(crate) fn probe(connections: usize, samples: usize) -> Result<Object, Failure> {
    procs::allow_descriptors(connections as u64 + 64).map_err(Failure::Skipped)?;
    let mut raw = Vec::with_capacity(samples);
    let mut tracked = Vec::with_capacity(samples);
    for sample in 1..=samples {
        eprintln!("scale-probe: memory, {connections} connections: sample {sample} of {samples}");
        raw.push(bytes_per_connection(Kind::Raw, connections)?);
        tracked.push(bytes_per_connection(Kind::Tracked, connections)?);
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        json::median(&sorted)
    };
    Ok(Object::new("memory")
        .int("connections", connections as u64)
        .int("samples", samples as u64)
        .object("raw_bytes_per_connection", json::spread(&raw))
        .object("tracked_bytes_per_connection", json::spread(&tracked))
        .float(
            "tracking_bytes_per_connection",
            median(&tracked) - median(&raw),
        )
        .int("size_of_raw", size_of::<TcpStream>() as u64)
        .int(
            "size_of_tracked",
            size_of::<TrackedStream<TcpStream>>() as u64,
        ))
}

/// One server of `kind` holding `connections` from a client process: its RSS growth per
/// connection.
fn bytes_per_connection(kind: Kind, connections: usize) -> Result<f64, String> {
    let mut server = Process::start(
        &format!("{kind} server"),
        &[
            "serve-memory".into(),
            "--kind".into(),
            kind.to_string(),
            "--connections".into(),
            connections.to_string(),
        ],
    )?;
    let listening = server.wait_for("listening", "its address", STEP, |_| true)?;
    let addr: String = listening.get("addr")?;
    let _clients = Process::start(
        "clients",
        &[
            "hold".into(),
            "--addr".into(),
            addr,
            "--connections".into(),
            connections.to_string(),
        ],
    )?;
    let rss = server.wait_for("rss", "its memory figures", STEP, |_| true)?;
    let before: u64 = rss.get("before")?;
    let after: u64 = rss.get("after")?;
    Ok((after as f64 - before as f64) / connections as f64)
}

/// The role `serve-memory --kind raw|tracked --connections N`.
pub(crate) fn serve(flags: &Flags) -> Result<(), String> {
    let kind: Kind = flags.required("kind")?;
    let connections = flags.count("connections", 1)?;
    procs::allow_descriptors(connections as u64 + 64)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    runtime.block_on(async {
        match kind {
            Kind::Raw => {
                let listener = tokio::net::TcpListener::bind(LOOPBACK)
                    .await
                    .map_err(|e| format!("cannot listen on {LOOPBACK}: {e}"))?;
                announce(kind, listener.local_addr())?;
                hold(connections, async || {
                    listener.accept().await.map(|(conn, _)| conn)
                })
                .await
            }
            Kind::Tracked => {
                let graceful = graceful::Builder::new()
                    .upgrade_signal(None)
                    .stop_signals([])
                    .install()
                    .map_err(|e| format!("cannot install graceful: {e}"))?;
                let mut listener = graceful
                    .listen(LOOPBACK)
                    .await
                    .map_err(|e| format!("cannot create the listener: {e}"))?;
                graceful
                    .ready()
                    .map_err(|e| format!("graceful ready failed: {e}"))?;
                announce(kind, listener.local_addr())?;
                hold(connections, async || match listener.accept().await {
                    Some((conn, _)) => Ok(conn),
                    None => Err(io::Error::other("the graceful listener ended")),
                })
                .await
            }
        }
    })
}

/// `listening kind=… addr=…`, for the probe to start the clients.
fn announce(kind: Kind, addr: io::Result<std::net::SocketAddr>) -> Result<(), String> {
    let addr = addr.map_err(|e| format!("cannot read the listener's address: {e}"))?;
    println!("listening kind={kind} addr={addr}");
    Ok(())
}

/// Accepts `connections` into a vector reserved beforehand and prints the RSS before and after;
/// then holds them until stdin closes.
async fn hold<T>(
    connections: usize,
    mut accept: impl AsyncFnMut() -> io::Result<T>,
) -> Result<(), String> {
    let mut held = Vec::with_capacity(connections);
    let before = resident_bytes()?;
    let deadline = tokio::time::Instant::now() + STEP;
    while held.len() < connections {
        match tokio::time::timeout_at(deadline, accept()).await {
            Ok(Ok(conn)) => held.push(conn),
            Ok(Err(err)) => return Err(format!("accept failed: {err}")),
            Err(_) => {
                return Err(format!(
                    "accepted {} of {connections} connections in {STEP:?}",
                    held.len()
                ));
            }
        }
    }
    let after = resident_bytes()?;
    println!("rss before={before} after={after} connections={connections}");
    let (closed_tx, closed) = oneshot::channel();
    procs::on_stdin_closed(move || {
        let _ = closed_tx.send(());
    });
    let _ = tokio::time::timeout(2 * STEP, closed).await;
    drop(held);
    Ok(())
}

/// This process's resident set size, from VmRSS in /proc/self/status.
fn resident_bytes() -> Result<u64, String> {
    resident_bytes_in("/proc/self/status")
}

/// Process `pid`'s resident set size, from VmRSS in /proc/PID/status.
pub(crate) fn resident_bytes_of(pid: u32) -> Result<u64, String> {
    resident_bytes_in(&format!("/proc/{pid}/status"))
}

fn resident_bytes_in(path: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}
