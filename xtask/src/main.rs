//! Project tasks: `cargo xtask <task>`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("demo") => {
            eprintln!(
                "the live upgrade demo needs the tokio adapter and the echo examples, which are \
                 not built yet; nothing was run"
            );
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("usage: cargo xtask demo");
            ExitCode::from(2)
        }
    }
}
