//! Project tasks: `cargo xtask <task>`.
//!
//! - `demo [--upgrades 50] [--interval 300ms]`: a live upgrade of the echo example under load;
//!   exits non-zero if any line failed or any upgrade did not complete.

mod demo;

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask demo [--upgrades 50] [--interval 300ms]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("demo") => match demo_options(args) {
            Ok(options) => match demo::run(&options) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(problem) => {
                    eprintln!("demo: {problem}");
                    ExitCode::FAILURE
                }
            },
            Err(problem) => {
                eprintln!("{problem}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn demo_options(mut args: impl Iterator<Item = String>) -> Result<demo::Options, String> {
    let mut options = demo::Options {
        upgrades: 50,
        interval: Duration::from_millis(300),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upgrades" => {
                options.upgrades = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--upgrades {value:?} is not a positive number"))?;
            }
            "--interval" => {
                options.interval = humantime::parse_duration(&value)
                    .map_err(|e| format!("--interval {value:?}: {e}"))?;
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(options)
}
