//! The server: graceful's listener, served with `graceful::axum::serve`, which calls
//! `graceful::ready()` once it serves and drains the old generation after an upgrade.

use std::process::ExitCode;

use graceful_example_testing_axum::{addr, app};

#[tokio::main]
async fn main() -> ExitCode {
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
