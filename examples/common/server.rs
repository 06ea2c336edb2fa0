//! What the example servers share: their command line, their logging, and the lines each
//! generation prints on stdout for scripts: `ready pid=… generation=… addr=…` once it serves,
//! `stopped pid=… successor=…` once it stops accepting, and `exited pid=… …` once it has drained.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Flags;

pub(crate) struct Config {
    pub(crate) addr: String,
    pub(crate) drain_timeout: Duration,
    pid_file: Option<String>,
    upgrade_timeout: Duration,
}

impl Config {
    /// Installs the process's graceful handle as the command line asks.
    pub(crate) fn install(&self) -> Result<graceful::Graceful, graceful::Error> {
        let mut builder = graceful::Builder::new().upgrade_timeout(self.upgrade_timeout);
        if let Some(pid_file) = &self.pid_file {
            builder = builder.pid_file(pid_file);
        }
        builder.install()
    }
}

/// Parses `--addr`, `--pid-file`, `--upgrade-timeout` and `--drain-timeout`, logs to stderr,
/// runs `serve`, and turns its outcome into the exit code (2 for a bad command line).
pub(crate) async fn main<F>(
    name: &str,
    default_addr: &str,
    serve: impl FnOnce(Config) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), graceful::Error>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match config(default_addr) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!(
                "{name}: {problem}\nusage: {name} [--addr {default_addr}] [--pid-file PATH] \
                 [--upgrade-timeout 60s] [--drain-timeout 30s]"
            );
            return ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config(default_addr: &str) -> Result<Config, String> {
    let flags = Flags::parse(&["addr", "pid-file", "upgrade-timeout", "drain-timeout"])?;
    Ok(Config {
        addr: flags.text("addr").unwrap_or_else(|| default_addr.into()),
        pid_file: flags.text("pid-file"),
        upgrade_timeout: flags.duration("upgrade-timeout", Duration::from_secs(60))?,
        drain_timeout: flags.duration("drain-timeout", Duration::from_secs(30))?,
    })
}

/// `ready pid=… generation=… addr=…`, once this generation serves.
pub(crate) fn print_ready(graceful: &graceful::Graceful, addr: impl Display) {
    println!(
        "ready pid={} generation={} addr={addr}",
        std::process::id(),
        graceful.upgrader().generation()
    );
}

/// `stopped pid=… successor=…`, once this generation has stopped accepting: it was replaced by
/// the successor's pid, or told to stop (`successor=none`).
pub(crate) fn print_stopped(graceful: &graceful::Graceful) {
    let successor = graceful.upgrader().successor();
    println!(
        "stopped pid={} successor={}",
        std::process::id(),
        successor.map_or_else(|| "none".to_owned(), |pid| pid.to_string())
    );
}

/// `exited pid=… open_at_start=… abandoned=… outcome=…`, once this generation has drained.
pub(crate) fn print_exited(report: &graceful::DrainReport) {
    println!(
        "exited pid={} open_at_start={} abandoned={} outcome={:?}",
        std::process::id(),
        report.open_at_start,
        report.abandoned,
        report.outcome
    );
}
