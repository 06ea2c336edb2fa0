//! The README's plain-axum line, as written: `axum::serve` on graceful's listener, with axum's
//! own graceful shutdown, and no call to `graceful::ready()`. The listener reports readiness
//! when axum first waits on it for a connection, so SIGHUP upgrades it.

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
            eprintln!("testing-axum-plain: {problem}");
            return ExitCode::from(2);
        }
    };
    let served = async {
        axum::serve(graceful::listen(addr.as_str()).await?, app())
            .with_graceful_shutdown(graceful::upgrade_requested())
            .await
            .map_err(|e| graceful::Error::io("serving", e))
    };
    match served.await {
        Ok(()) => {
            println!("exited pid={}", std::process::id());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("testing-axum-plain: {err}");
            ExitCode::FAILURE
        }
    }
}
