//! The server: graceful's listener, served with `graceful::axum::serve`, which calls
//! `graceful::ready()` once it serves and drains the old generation after an upgrade.

use std::process::ExitCode;

use graceful_example_testing_axum::{addr, app};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // graceful reports through tracing: upgrades, failures and drains, here on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let addr = match addr() {
        Ok(addr) => addr,
        Err(problem) => {
            eprintln!("testing-axum: {problem}");
            return ExitCode::from(2);
        }
    };
    let served = async {
        let listener = graceful::listen(addr.as_str()).await?;
        graceful::axum::serve(listener, app()).await
    };
    match served.await {
        Ok(report) => {
            println!("exited pid={} {report}", std::process::id());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("testing-axum: {err}");
            ExitCode::FAILURE
        }
    }
}
