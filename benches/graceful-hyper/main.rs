//! The bench's hyper service (`GET /` answers `hello from <pid>`) through `graceful::serve`,
//! with no axum, so that its throughput compares like with like against `plain-hyper-server`
//! (no upgrades) and `peer-ecdysis` (ecdysis with hyper-util's `GracefulShutdown`).
//!
//! ```text
//! graceful-hyper-server [--addr 127.0.0.1:8080] [--pid-file PATH] [--probation 5s]
//!                       [--drain-timeout 30s]
//! ```
//!
//! `kill -HUP` upgrades it; SIGTERM stops it. Like `examples/http-server`, each generation
//! prints `ready pid=… generation=… addr=…` when it serves, `stopped pid=… successor=…` when
//! it stops accepting and `exited pid=… open_at_start=… abandoned=… outcome=…` when it has
//! drained.

#[path = "../../examples/common/args.rs"]
mod args;
#[path = "../common/peer.rs"]
mod peer;

use std::process::ExitCode;
use std::time::Duration;

use hyper::service::service_fn;

const USAGE: &str = "usage: graceful-hyper-server [--addr 127.0.0.1:8080] [--pid-file PATH] \
                     [--probation 5s] [--drain-timeout 30s]";

struct Config {
    addr: String,
    pid_file: Option<String>,
    probation: Option<Duration>,
    drain_timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config() {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("graceful-hyper-server: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("graceful-hyper-server: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> Result<Config, String> {
    let flags = args::Flags::parse(&["addr", "pid-file", "probation", "drain-timeout"])?;
    Ok(Config {
        addr: flags
            .text("addr")
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
        pid_file: flags.text("pid-file"),
        probation: flags
            .text("probation")
            .map(|_| flags.duration("probation", Duration::ZERO))
            .transpose()?,
        drain_timeout: flags.duration("drain-timeout", Duration::from_secs(30))?,
    })
}

async fn serve(config: Config) -> Result<(), graceful::Error> {
    let mut builder = graceful::Builder::new();
    if let Some(probation) = config.probation {
        builder = builder.probation(probation);
    }
    if let Some(pid_file) = &config.pid_file {
        builder = builder.pid_file(pid_file);
    }
    let graceful = builder.install()?;
    let listener = graceful.listen(config.addr.as_str()).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| graceful::Error::io("reading the listener's address", e))?;

    let running = tokio::spawn(
        graceful::serve(listener, service_fn(peer::hello))
            .drain_timeout(config.drain_timeout)
            .without_ready()
            .into_future(),
    );
    // Serving has started; the previous generation may stop now.
    graceful.ready()?;
    peer::print_ready(graceful.upgrader().generation(), addr);
    // The accept task stops on the same signal.
    let stopping = graceful.clone();
    let stopped = tokio::spawn(async move {
        stopping.upgrade_requested().await;
        let successor = match stopping.upgrader().successor() {
            Some(pid) => peer::Successor::Pid(pid),
            None => peer::Successor::None,
        };
        peer::print_stopped(successor);
    });
    let report = running
        .await
        .map_err(|e| graceful::Error::io("the server task failed", std::io::Error::other(e)))??;
    // Let the line out before this process exits, however short the drain was.
    if graceful.is_upgrade_requested() {
        let _ = stopped.await;
    }
    peer::print_exited(
        report.open_at_start,
        report.abandoned,
        format_args!("{:?}", report.outcome),
    );
    Ok(())
}
