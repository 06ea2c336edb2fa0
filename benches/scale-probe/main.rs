//! Measures how graceful's costs grow, with real processes and real sockets on loopback.
//!
//! ```text
//! scale-probe upgrade --sockets N [--samples 10]
//! scale-probe drain --connections N [--samples 3]
//! scale-probe handoff --connections N [--samples 3]
//! scale-probe memory --connections N [--samples 3]
//! scale-probe all
//! ```
//!
//! Each measurement prints ONE JSON object on one line of stdout; progress goes to stderr.
//! `all` runs upgrade with 1, 100 and 1000 sockets, drain and handoff with 1000 and 10 000
//! connections and memory with 10 000 connections, in a few minutes. Times are in milliseconds with three
//! decimals; a spread is `{"min":…,"median":…,"p95":…,"max":…}` (p95 nearest-rank, so the
//! maximum below 20 samples).
//!
//! ```text
//! {"probe":"upgrade","sockets":1000,"samples":10,"upgrade_ms":{spread},"start_ms":{spread}}
//! {"probe":"drain","connections":10000,"samples":3,"drain_ms":{spread},"upgrade_ms":{spread},
//!  "clients":30000,"clean_eof":30000,"reset":0,"other_errors":0,"still_open":0,"abandoned":0}
//! {"probe":"handoff","connections":10000,"samples":3,"handoff_ms":{spread},
//!  "upgrade_ms":{spread},"successor_bytes_per_connection":{"min":…,"median":…,"max":…},
//!  "clients":30000,"handed_off":30000,"clean_eof":30000,"reset":0,"other_errors":0}
//! {"probe":"memory","connections":10000,"samples":3,
//!  "raw_bytes_per_connection":{"min":…,"median":…,"max":…},
//!  "tracked_bytes_per_connection":{"min":…,"median":…,"max":…},
//!  "tracking_bytes_per_connection":…,"size_of_raw":…,"size_of_tracked":…}
//! ```
//!
//! (Each object is on one line; they are wrapped here.) What each figure measures is in the
//! docs of the modules `upgrade`, `drain` and `memory`. A measurement that cannot be made
//! prints, instead of its figures, `"skipped":"<why>"` (the RLIMIT_NOFILE hard limit is too low
//! for N) or `"error":"<what failed>"`, with its `probe` and its N. The exit status is 1 if any
//! measurement failed, 2 for a bad command line, 0 otherwise (skips included).
//!
//! The probe raises its soft RLIMIT_NOFILE to the hard limit when N needs it, and starts this
//! same binary in internal roles (`serve-sockets`, `serve-echo`, `serve-memory`, `hold`) as the
//! servers and the clients; every process it starts is killed and reaped before it exits.

mod args;
mod drain;
mod handoff;
mod hold;
mod json;
mod memory;
mod procs;
mod upgrade;

use std::process::ExitCode;
use std::time::Duration;

use args::Flags;
use json::Object;

/// A bound for every wait: generous, because it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(60);

/// Where every server listens.
const LOOPBACK: &str = "127.0.0.1:0";

const USAGE: &str = "usage: scale-probe upgrade --sockets N [--samples 10]
       scale-probe drain --connections N [--samples 3]
       scale-probe handoff --connections N [--samples 3]
       scale-probe memory --connections N [--samples 3]
       scale-probe all";

/// Why a probe has no figures.
#[derive(Debug)]
enum Failure {
    /// It cannot be measured here, for a reason that is not a fault.
    Skipped(String),
    /// Something failed.
    Error(String),
}

impl From<String> for Failure {
    fn from(error: String) -> Failure {
        Failure::Error(error)
    }
}

/// One measurement to make: the probe, its size parameter, its samples.
#[derive(Debug, Clone, Copy)]
enum Probe {
    Upgrade { sockets: usize, samples: usize },
    Drain { connections: usize, samples: usize },
    Handoff { connections: usize, samples: usize },
    Memory { connections: usize, samples: usize },
}

/// What `all` runs.
const ALL: [Probe; 8] = [
    Probe::Upgrade {
        sockets: 1,
        samples: 10,
    },
    Probe::Upgrade {
        sockets: 100,
        samples: 10,
    },
    Probe::Upgrade {
        sockets: 1000,
        samples: 10,
    },
    Probe::Drain {
        connections: 1000,
        samples: 3,
    },
    Probe::Drain {
        connections: 10_000,
        samples: 3,
    },
    Probe::Handoff {
        connections: 1000,
        samples: 3,
    },
    Probe::Handoff {
        connections: 10_000,
        samples: 3,
    },
    Probe::Memory {
        connections: 10_000,
        samples: 3,
    },
];

impl Probe {
    /// Measures, and prints the JSON line; false if the measurement failed.
    fn run(self) -> bool {
        let (name, size_key, size) = match self {
            Probe::Upgrade { sockets, .. } => ("upgrade", "sockets", sockets),
            Probe::Drain { connections, .. } => ("drain", "connections", connections),
            Probe::Handoff { connections, .. } => ("handoff", "connections", connections),
            Probe::Memory { connections, .. } => ("memory", "connections", connections),
        };
        let outcome = match self {
            Probe::Upgrade { sockets, samples } => upgrade::probe(sockets, samples),
            Probe::Drain {
                connections,
                samples,
            } => drain::probe(connections, samples),
            Probe::Handoff {
                connections,
                samples,
            } => handoff::probe(connections, samples),
            Probe::Memory {
                connections,
                samples,
            } => memory::probe(connections, samples),
        };
        let (line, ok) = match outcome {
            Ok(object) => (object, true),
            Err(Failure::Skipped(why)) => (
                Object::new(name)
                    .int(size_key, size as u64)
                    .text_field("skipped", &why),
                true,
            ),
            Err(Failure::Error(error)) => {
                eprintln!("scale-probe: {name} with {size} {size_key} failed: {error}");
                (
                    Object::new(name)
                        .int(size_key, size as u64)
                        .text_field("error", &error),
                    false,
                )
            }
        };
        println!("{}", line.finish());
        ok
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("scale-probe: a subcommand is needed\n{USAGE}");
        return ExitCode::from(2);
    };
    let outcome = match command.as_str() {
        "upgrade" | "drain" | "handoff" | "memory" | "all" => measure(command, rest),
        // Roles: this binary, started by a probe.
        "serve-sockets" => role(command, rest, &["sockets"], upgrade::serve),
        "serve-echo" => role(command, rest, &["handoff"], drain::serve),
        "serve-memory" => role(command, rest, &["kind", "connections"], memory::serve),
        "hold" => role(
            command,
            rest,
            &["addr", "connections", "hello", "hold-seconds"],
            hold::run,
        ),
        other => Err(Usage(format!("unknown subcommand {other:?}"))),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Usage(problem)) => {
            eprintln!("scale-probe: {problem}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A bad command line.
#[derive(Debug)]
struct Usage(String);

/// Runs the measurements `command` asks for; whether all of them succeeded.
fn measure(command: &str, args: &[String]) -> Result<bool, Usage> {
    let probes = match command {
        "all" => {
            Flags::parse(args, &[]).map_err(Usage)?;
            ALL.to_vec()
        }
        "upgrade" => {
            let flags = Flags::parse(args, &["sockets", "samples"]).map_err(Usage)?;
            vec![Probe::Upgrade {
                sockets: flags.required_count("sockets").map_err(Usage)?,
                samples: flags.count("samples", 10).map_err(Usage)?,
            }]
        }
        _ => {
            let flags = Flags::parse(args, &["connections", "samples"]).map_err(Usage)?;
            let connections = flags.required_count("connections").map_err(Usage)?;
            let samples = flags.count("samples", 3).map_err(Usage)?;
            if command == "drain" {
                vec![Probe::Drain {
                    connections,
                    samples,
                }]
            } else if command == "handoff" {
                vec![Probe::Handoff {
                    connections,
                    samples,
                }]
            } else {
                vec![Probe::Memory {
                    connections,
                    samples,
                }]
            }
        }
    };
    if let Err(problem) = procs::prepare() {
        eprintln!("scale-probe: {problem}");
        return Ok(false);
    }
    // Every probe runs, even after one failed; the status says whether any did.
    let mut all_ok = true;
    for probe in probes {
        all_ok &= probe.run();
    }
    Ok(all_ok)
}

/// Runs a role with its flags; a failure is printed on stderr and fails the exit status.
fn role(
    name: &str,
    args: &[String],
    known: &[&str],
    run: fn(&Flags) -> Result<(), String>,
) -> Result<bool, Usage> {
    let flags = Flags::parse(args, known).map_err(Usage)?;
    match run(&flags) {
        Ok(()) => Ok(true),
        Err(problem) => {
            eprintln!("scale-probe {name} (pid {}): {problem}", std::process::id());
            Ok(false)
        }
    }
}

/// The runtime of the server and client roles: the examples' (multi-threaded, all drivers).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}

/// Installs the process's graceful handle for a server role: SIGTERM and SIGINT stop, as in the
/// examples, and SIGHUP calls [`graceful::Graceful::upgrade`], which is what the library's own
/// SIGHUP handler does, except that a failed upgrade is printed on stdout
/// (`failed upgrade: <why>`) for the probe, which otherwise would only see no new generation.
/// Must run inside the runtime.
fn install_server() -> Result<graceful::Graceful, String> {
    // No probation: the drain probe times the drain from the moment the listener ends, which a
    // probation would put after the connections had already closed.
    let graceful = graceful::Builder::new()
        .upgrade_timeout(STEP)
        .upgrade_signal(None)
        .probation(Duration::ZERO)
        .install()
        .map_err(|e| format!("cannot install graceful: {e}"))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    let upgrader = graceful.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if let Err(err) = upgrader.upgrade().await {
                println!("failed upgrade: {err}");
            }
        }
    });
    Ok(graceful)
}

/// Stops `graceful` (no successor; its listeners end) when the probe that started this process
/// closes its stdin, or has gone.
fn stop_when_stdin_closes(graceful: &graceful::Graceful) {
    let graceful = graceful.clone();
    procs::on_stdin_closed(move || graceful.stop());
}
