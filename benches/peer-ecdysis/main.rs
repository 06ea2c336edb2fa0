//! A bench peer: the bench's hyper service (`GET /` answers `hello from <pid>`) on Cloudflare's
//! [ecdysis](https://github.com/cloudflare/ecdysis) 1.1.1, used the way its `tokio_echo` example
//! uses it, with hyper-util's `GracefulShutdown` for the drain, as hyper-util's documentation
//! shows: the usual way an ecdysis user serves HTTP. It exists to be measured against
//! `graceful-hyper-server` in the same run; no library crate uses ecdysis.
//!
//! ```text
//! peer-ecdysis [--addr 127.0.0.1:8080] [--pid-file PATH] [--drain-timeout 30s]
//! ```
//!
//! SIGHUP upgrades (ecdysis re-executes `argv[0]` with the same arguments and hands over the
//! listener), SIGTERM or SIGINT stop. Each generation prints the example servers' lines:
//! `ready pid=… generation=… addr=…` once it serves, `stopped pid=… successor=…` once it stops
//! accepting, `exited pid=… open_at_start=… abandoned=… outcome=…` once it has drained.
//! ecdysis does not tell the old process its successor's pid, so after an upgrade the line says
//! `successor=unknown` (after SIGTERM, `successor=none`).
//!
//! What ecdysis itself does, and a driver must expect:
//! - It reports an upgrade as done, and stops the old listener, only when a thread that polls
//!   the child every 500 ms wakes up: the old process keeps accepting for up to 500 ms after
//!   the new one is ready.
//! - It finds an inherited listener by the address it was bound to, and the child gets the
//!   same arguments, so `--addr 127.0.0.1:0` would bind a new port in every generation. The
//!   first generation therefore binds before anything else runs and records the address it got
//!   in `PEER_ECDYSIS_ADDR`, which the successors inherit and use instead of `--addr`; the
//!   generation travels the same way, in `PEER_ECDYSIS_GENERATION`.
//! - After an upgrade or a stop it no longer watches any signal, so a second SIGTERM during the
//!   drain does nothing; `--drain-timeout` bounds the drain.
//! - It kills a child that is not ready within 5 s.

#[path = "../../examples/common/args.rs"]
mod args;
#[path = "../common/peer.rs"]
mod peer;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ecdysis::tokio_ecdysis::{ExitMode, SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use futures::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

const USAGE: &str =
    "usage: peer-ecdysis [--addr 127.0.0.1:8080] [--pid-file PATH] [--drain-timeout 30s]";

/// The `listen(2)` backlog, as tokio's `TcpListener::bind` and graceful set it.
const BACKLOG: i32 = 1024;
/// The generation of the process that set it; its successor adds one.
const GENERATION_VAR: &str = "PEER_ECDYSIS_GENERATION";
/// The address the first generation's listener got; every successor asks ecdysis for it.
const ADDR_VAR: &str = "PEER_ECDYSIS_ADDR";

struct Config {
    pid_file: Option<String>,
    drain_timeout: Duration,
}

/// Where this generation's listener comes from.
struct Start {
    generation: u64,
    addr: SocketAddr,
    /// The first generation's listener, bound before the runtime started; `None` in a
    /// successor, which inherits it through ecdysis.
    bound: Option<std::net::TcpListener>,
}

fn main() -> ExitCode {
    let (config, addr) = match config() {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("peer-ecdysis: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Still single-threaded: the environment may be changed here, and nowhere later.
    let start = match start(&addr) {
        Ok(start) => start,
        Err(problem) => {
            eprintln!("peer-ecdysis: {problem}");
            return ExitCode::FAILURE;
        }
    };
    // What `#[tokio::main]` builds, as in the other servers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peer-ecdysis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, start)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("peer-ecdysis: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> Result<(Config, String), String> {
    let flags = args::Flags::parse(&["addr", "pid-file", "drain-timeout"])?;
    let addr = flags
        .text("addr")
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let config = Config {
        pid_file: flags.text("pid-file"),
        drain_timeout: flags.duration("drain-timeout", Duration::from_secs(30))?,
    };
    Ok((config, addr))
}

/// Reads this generation's number and address from the environment its predecessor left, or
/// binds `addr` in the first generation; records both for the successor.
///
/// Must run before any other thread exists: it changes the environment.
fn start(addr: &str) -> Result<Start, String> {
    let generation = match std::env::var(GENERATION_VAR) {
        Ok(previous) => previous
            .parse::<u64>()
            .map_err(|_| format!("{GENERATION_VAR}={previous:?} is not a number"))?
            .checked_add(1)
            .ok_or_else(|| format!("{GENERATION_VAR}={previous:?} is too large"))?,
        Err(_) => 1,
    };
    let (addr, bound) = match std::env::var(ADDR_VAR) {
        Ok(inherited) => {
            let addr = inherited
                .parse()
                .map_err(|_| format!("{ADDR_VAR}={inherited:?} is not a socket address"))?;
            (addr, None)
        }
        Err(_) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            // The backlog of tokio's and graceful's listeners (std's is smaller); on Linux a
            // second listen() sets it on a listening socket.
            let backlog = nix::sys::socket::Backlog::new(BACKLOG).expect("a valid backlog");
            nix::sys::socket::listen(&listener, backlog)
                .map_err(|e| format!("cannot set the backlog of {addr} to {BACKLOG}: {e}"))?;
            let local = listener
                .local_addr()
                .map_err(|e| format!("cannot read the listener's address: {e}"))?;
            (local, Some(listener))
        }
    };
    // SAFETY: called from `main` before the runtime starts, so no other thread exists to read
    // the environment concurrently. ecdysis passes the environment on to the successor.
    unsafe {
        std::env::set_var(GENERATION_VAR, generation.to_string());
        std::env::set_var(ADDR_VAR, addr.to_string());
    }
    Ok(Start {
        generation,
        addr,
        bound,
    })
}

async fn serve(config: Config, start: Start) -> Result<(), String> {
    // The tokio_echo example's set-up: upgrade on SIGHUP, stop on another signal, a PID file;
    // every handler is installed before ready.
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    builder
        .stop_on_signal(SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    builder
        .stop_on_signal(SignalKind::interrupt())
        .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
    if let Some(pid_file) = &config.pid_file {
        builder.set_pid_file(pid_file);
    }
    let mut bound = start.bound;
    // ecdysis calls the closure only when it has no inherited listener for this address: in
    // the first generation, which hands over the listener it bound already.
    let mut incoming = builder
        .build_listen_tcp(
            StopOnShutdown::Yes,
            start.addr,
            move |socket, addr| match bound.take() {
                Some(listener) => Ok(listener),
                None => {
                    socket.bind(&addr.into())?;
                    socket.listen(BACKLOG)?;
                    Ok(socket.into())
                }
            },
        )
        .map_err(|e| format!("cannot listen on {}: {e}", start.addr))?;

    // hyper-util's graceful shutdown, as its documentation shows it: every connection watched,
    // `shutdown()` once the listener is closed. The accept task owns it while it accepts (a
    // `Watcher` cannot be cloned) and hands it back when the stream ends. The tracker only
    // counts what a drain that ran out of time left behind.
    let tracker = TaskTracker::new();
    let serving = tracker.clone();
    // The stream ends when ecdysis stops it, after an upgrade or on SIGTERM.
    let accepting = AbortOnDropHandle::new(tokio::spawn(async move {
        let connections = GracefulShutdown::new();
        let http = auto::Builder::new(TokioExecutor::new());
        while let Some(accepted) = incoming.next().await {
            // Accept errors (EMFILE, a connection reset while queued) end no server.
            let Ok(stream) = accepted else { continue };
            // As graceful::serve does, so that the peers are served like for like.
            let _ = stream.set_nodelay(true);
            let connection = http
                .serve_connection(TokioIo::new(stream), service_fn(peer::hello))
                .into_owned();
            serving.spawn(connections.watch(connection));
        }
        // Dropping the stream closes this process's copy of the listener.
        drop(incoming);
        connections
    }));

    let (_ecdysis, exit) = builder
        .ready()
        .map_err(|e| format!("cannot tell the previous generation that this one is ready: {e}"))?;
    peer::print_ready(start.generation, start.addr);

    let (mode, _reason) = exit.await.map_err(|e| format!("ecdysis failed: {e}"))?;
    let connections = accepting
        .await
        .map_err(|e| format!("the accept task failed: {e}"))?;
    peer::print_stopped(match mode {
        ExitMode::Upgrade => peer::Successor::Unknown,
        _ => peer::Successor::None,
    });

    tracker.close();
    let open_at_start = connections.count();
    let drained = tokio::time::timeout(config.drain_timeout, connections.shutdown()).await;
    match drained {
        Ok(()) => peer::print_exited(open_at_start, 0, "Drained"),
        Err(_) => peer::print_exited(open_at_start, tracker.len(), "Deadline"),
    }
    Ok(())
}
