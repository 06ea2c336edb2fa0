//! The server with a bug: it asks for explicit readiness (`Builder::explicit_ready`), then never
//! calls `graceful::ready()`. Its listener accepts nothing, an upgrade would wait for it in
//! vain, and the harness reports a readiness timeout.

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
            eprintln!("testing-axum-never-ready: {problem}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = graceful::Builder::new().explicit_ready().install() {
        eprintln!("testing-axum-never-ready: {err}");
        return ExitCode::FAILURE;
    }
    let listener = match graceful::listen(addr.as_str()).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("testing-axum-never-ready: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("serving, but never ready");
    match axum::serve(listener, app()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testing-axum-never-ready: {err}");
            ExitCode::FAILURE
        }
    }
}
