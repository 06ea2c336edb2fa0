//! What the micro-benchmarks share: the runtime they run on, the process's graceful handle, and
//! loopback connections set up the same way for every arm.
//!
//! Every arm of a comparison runs the same loop on the same single-threaded runtime, so the
//! only difference between arms is the code under test. A current-thread runtime keeps the
//! scheduler out of the figures; on a shared 2-core machine, work-stealing between two workers
//! adds more noise than the few nanoseconds being compared.

#![allow(dead_code)] // each benchmark uses a part of it

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use graceful::{Builder, Graceful};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// Where every benchmark listens: loopback, on a port the kernel picks.
pub(crate) const LOOPBACK: &str = "127.0.0.1:0";

/// A single-threaded runtime with I/O and timers.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Installs the process's graceful handle, without signal handlers: a benchmark is never
/// upgraded, and the handle is process-global, so each benchmark binary installs it once.
pub(crate) fn graceful(runtime: &Runtime) -> Graceful {
    let _entered = runtime.enter();
    Builder::new()
        .upgrade_signal(None)
        .stop_signals([])
        .install()
        .unwrap_or_else(|err| panic!("cannot install graceful: {err}"))
}

/// Runs `routine` `iters` times on `runtime` and returns how long that took; for criterion's
/// `iter_custom`, so that a routine may borrow a listener mutably.
pub(crate) fn time(runtime: &Runtime, iters: u64, mut routine: impl AsyncFnMut()) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            routine().await;
        }
        start.elapsed()
    })
}

/// Connects to `addr` with Nagle off and a zero linger: dropping the client then resets the
/// connection instead of leaving it in TIME_WAIT, so hundreds of thousands of iterations do
/// not exhaust the ephemeral ports. Every arm connects this way.
pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    setsockopt(
        &stream,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("SO_LINGER");
    stream
}
