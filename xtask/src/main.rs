//! Project tasks: `cargo xtask <task>`.
//!
//! - `demo [--mode all|short|keep-alive|h2|ws|echo] [--upgrades 50] [--interval 300ms]`: live
//!   upgrades of the example servers under load; exits non-zero if any request failed, any
//!   upgrade did not complete, or a WebSocket or echo session reconnected.
//! - `bench [--duration 5s] [--rounds 3] [--interval 300ms] [--starts 20] [--no-scale] [--json]`:
//!   throughput with and without upgrades and without graceful, handover latency against a bare
//!   start, latency inside upgrade windows, and how costs grow; see `bench.rs`.
//! - `bench --peers [--duration 3s] [--rounds 3] [--json]`: graceful against ecdysis and plain
//!   hyper, with and without upgrades every second and every 300 ms; see `peers.rs`.

mod bench;
mod demo;
mod load;
mod peers;
mod procs;

use std::process::ExitCode;
use std::time::Duration;

use load::Mode;

const USAGE: &str = "usage: cargo xtask demo [--mode all|short|keep-alive|h2|ws|echo] \
                     [--upgrades 50] [--interval 300ms]\n       \
                     cargo xtask bench [--duration 5s] [--rounds 3] [--interval 300ms] \
                     [--starts 20] [--no-scale] [--json]\n       \
                     cargo xtask bench --peers [--duration 3s] [--rounds 3] [--json]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let outcome = match args.next().as_deref() {
        Some("demo") => demo_options(args).map(|options| demo::run(&options)),
        Some("bench") => bench_options(args).map(|options| bench::run(&options)),
        _ => Err(String::new()),
    };
    match outcome {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(problem)) => {
            eprintln!("xtask: {problem}");
            ExitCode::FAILURE
        }
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("{problem}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The load generator's runtime: one worker thread per core, as a real client would have.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the load generator's runtime: {e}"))
}

fn demo_options(mut args: impl Iterator<Item = String>) -> Result<demo::Options, String> {
    let mut options = demo::Options {
        modes: Mode::ALL.to_vec(),
        upgrades: 50,
        interval: Duration::from_millis(300),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => options.modes = modes(&value)?,
            "--upgrades" => options.upgrades = positive(&flag, &value)?,
            "--interval" => options.interval = duration(&flag, &value)?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(options)
}

fn bench_options(mut args: impl Iterator<Item = String>) -> Result<bench::Options, String> {
    let mut options = bench::Options {
        duration: Duration::from_secs(5),
        rounds: 3,
        interval: Duration::from_millis(300),
        starts: 20,
        scale: true,
        json: false,
        peers: false,
    };
    let mut round_length = None;
    // Flags of the default bench that `--peers` has no use for.
    let mut not_for_peers = None;
    while let Some(flag) = args.next() {
        if matches!(flag.as_str(), "--no-scale" | "--interval" | "--starts") {
            not_for_peers = Some(flag.clone());
        }
        match flag.as_str() {
            "--json" => options.json = true,
            "--no-scale" => options.scale = false,
            "--peers" => options.peers = true,
            _ => {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--duration" => round_length = Some(duration(&flag, &value)?),
                    "--rounds" => options.rounds = positive(&flag, &value)?,
                    "--interval" => options.interval = duration(&flag, &value)?,
                    "--starts" => options.starts = positive(&flag, &value)?,
                    _ => return Err(format!("unknown argument {flag:?}")),
                }
            }
        }
    }
    // The peers' runs are more (18 a round), so each is shorter: about 4 minutes in all.
    options.duration = round_length.unwrap_or(if options.peers {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(5)
    });
    if let (true, Some(flag)) = (options.peers, not_for_peers) {
        return Err(format!(
            "--peers upgrades every 1s and every 300ms and runs no scale probe or bare starts: \
             {flag} does not apply"
        ));
    }
    if options.peers && options.duration < Duration::from_secs(1) {
        return Err("--peers upgrades once a second: --duration must be at least 1s".into());
    }
    if options.interval.is_zero() || options.interval > options.duration {
        return Err("--interval must be above zero and at most --duration".into());
    }
    Ok(options)
}

/// `all`, or modes separated by commas.
fn modes(value: &str) -> Result<Vec<Mode>, String> {
    if value == "all" {
        return Ok(Mode::ALL.to_vec());
    }
    value
        .split(',')
        .map(|name| {
            Mode::parse(name).ok_or_else(|| {
                format!("--mode {name:?} is not one of all, short, keep-alive, h2, ws, echo")
            })
        })
        .collect()
}

fn positive(flag: &str, value: &str) -> Result<u32, String> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} {value:?} is not a positive number"))
}

fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{flag} {value:?}: {e}"))
}
