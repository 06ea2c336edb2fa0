//! What the example servers share: their command line, their logging, the lines each
//! generation prints on stdout for scripts (`ready pid=… generation=… addr=…` once it serves,
//! `stopped pid=… successor=…` once it stops accepting, `exited pid=… …` once it has drained),
//! and the `upgrade`, `rollback` and `status` subcommands, which upgrade a running server
//! through its control socket, or take it back to the previous generation during that one's
//! probation, and report whether it worked (`upgraded pid=… generation=… version=… build=…` /
//! `rolled back pid=…`, or the reason and exit status 1), or say what serves now (`serving
//! pid=… generation=… version=… build=…`).
//!
//! Each generation's build identity is the package version and, as build id, what
//! `GRACEFUL_EXAMPLE_BUILD_ID` held at compile time, or else graceful's default: the executable
//! file's `SIZE@MTIME`, which changes when a deploy replaces the binary.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Flags;

/// How long `upgrade` waits for the answer by default: systemd's default reload timeout, longer
/// than the servers' default upgrade timeout, which bounds the answer.
const UPGRADE_COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) struct Config {
    pub(crate) addr: String,
    pub(crate) drain_timeout: Duration,
    /// Whether long-lived connections and state are handed to the next generation
    /// (`--handoff on`, the default) or closed at a boundary for their clients to reconnect.
    pub(crate) handoff: bool,
    /// How long to wait, sockets adopted, before reporting ready (`--ready-delay`): a slow
    /// start, such as a cache warm-up, during which the previous generation serves on.
    pub(crate) ready_delay: Duration,
    fd_name: Option<String>,
    pid_file: Option<String>,
    control_socket: Option<String>,
    /// A running server's control socket to take over from (`--takeover PATH`).
    takeover: Option<String>,
    upgrade_timeout: Duration,
    probation: Option<Duration>,
    /// The values of the binary's own options, by name.
    #[allow(dead_code)] // http-server has none
    extra: HashMap<String, String>,
    fd_store_max: Option<usize>,
}

impl Config {
    /// Installs the process's graceful handle as the command line asks.
    pub(crate) fn install(&self) -> Result<graceful::Graceful, graceful::Error> {
        let mut builder = graceful::Builder::new()
            .upgrade_timeout(self.upgrade_timeout)
            .version(env!("CARGO_PKG_VERSION"));
        if let Some(id) = option_env!("GRACEFUL_EXAMPLE_BUILD_ID") {
            builder = builder.build_id(id);
        }
        if let Some(probation) = self.probation {
            builder = builder.probation(probation);
        }
        if let Some(pid_file) = &self.pid_file {
            builder = builder.pid_file(pid_file);
        }
        if let Some(max) = self.fd_store_max {
            builder = builder.fd_store_max(max);
        }
        // A process that took over answers on the control socket it took over, unless told
        // otherwise: the next one can take over from it the same way.
        if let Some(control_socket) = self.control_socket.as_ref().or(self.takeover.as_ref()) {
            builder = builder.control_socket(control_socket);
        }
        if let Some(path) = &self.takeover {
            builder = builder.takeover(path);
        }
        builder.install()
    }

    /// The value of the binary's own option `--name`, if given.
    #[allow(dead_code)] // http-server has none
    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        self.extra.get(name).map(String::as_str)
    }

    /// The server's listener: the socket the service manager passed under `--fd-name`, or the
    /// one for `--addr` (a passed socket bound to that address is adopted too).
    pub(crate) async fn listen(
        &self,
        graceful: &graceful::Graceful,
    ) -> Result<graceful::TcpListener, graceful::Error> {
        match &self.fd_name {
            Some(name) => graceful.listen_named(name).await,
            None => graceful.listen(self.addr.as_str()).await,
        }
    }
}

/// Parses the command line, logs to stderr, runs `serve` (or the `upgrade` subcommand), and
/// turns its outcome into the exit code (2 for a bad command line). `extra` are the binary's own
/// options, `--name VALUE`, each with an example value for the usage line; `serve` reads them
/// with [`Config::option`].
pub(crate) async fn main<F>(
    name: &str,
    default_addr: &str,
    extra: &[(&str, &str)],
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
    let extra_usage: String = extra
        .iter()
        .map(|(option, example)| format!(" [--{option} {example}]"))
        .collect();
    let usage = format!(
        "usage: {name} [--addr {default_addr} | --fd-name NAME] [--pid-file PATH] \
         [--control-socket PATH] [--takeover PATH] [--upgrade-timeout 60s] \
         [--drain-timeout 30s] [--probation 5s] [--handoff on|off] [--ready-delay 0s] \
         [--fd-store-max N]{extra_usage}\n       \
         {name} upgrade --control-socket PATH [--timeout 90s]\n       \
         {name} rollback --control-socket PATH [--timeout 90s]\n       \
         {name} status --control-socket PATH [--timeout 90s]"
    );
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("upgrade") => return request(name, Request::Upgrade, args.skip(1), &usage).await,
        Some("rollback") => return request(name, Request::Rollback, args.skip(1), &usage).await,
        Some("status") => return request(name, Request::Status, args.skip(1), &usage).await,
        _ => {}
    }
    let extra: Vec<&str> = extra.iter().map(|(option, _)| *option).collect();
    let config = match config(args, default_addr, &extra) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("{name}: {problem}\n{usage}");
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

fn config(
    args: impl Iterator<Item = String>,
    default_addr: &str,
    extra: &[&str],
) -> Result<Config, String> {
    let mut known = vec![
        "addr",
        "fd-name",
        "pid-file",
        "control-socket",
        "upgrade-timeout",
        "drain-timeout",
        "probation",
        "handoff",
        "fd-store-max",
        "takeover",
        "ready-delay",
    ];
    known.extend_from_slice(extra);
    let flags = Flags::parse_from(args, &known)?;
    if flags.text("addr").is_some() && flags.text("fd-name").is_some() {
        return Err("--addr and --fd-name exclude each other".into());
    }
    Ok(Config {
        addr: flags.text("addr").unwrap_or_else(|| default_addr.into()),
        fd_name: flags.text("fd-name"),
        pid_file: flags.text("pid-file"),
        control_socket: flags.text("control-socket"),
        takeover: flags.text("takeover"),
        upgrade_timeout: flags.duration("upgrade-timeout", Duration::from_secs(60))?,
        drain_timeout: flags.duration("drain-timeout", Duration::from_secs(30))?,
        ready_delay: flags.duration("ready-delay", Duration::ZERO)?,
        handoff: match flags.text("handoff").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(format!("--handoff is on or off, not {other:?}")),
        },
        probation: flags
            .text("probation")
            .map(|_| flags.duration("probation", Duration::ZERO))
            .transpose()?,
        extra: extra
            .iter()
            .filter_map(|&option| Some((option.to_owned(), flags.text(option)?)))
            .collect(),
        fd_store_max: flags
            .text("fd-store-max")
            .map(|_| flags.value("fd-store-max", 0))
            .transpose()?,
    })
}

#[derive(Clone, Copy)]
enum Request {
    Upgrade,
    Rollback,
    Status,
}

/// `upgrade --control-socket PATH [--timeout 90s]`: upgrades the server listening there and
/// prints `upgraded pid=… generation=… version=… build=…` once the new generation serves;
/// exits 1 with the reason if it did not, and the old generation serves on. `rollback …`
/// likewise takes the server back to the previous generation, on probation, and prints
/// `rolled back pid=…`; `status …` prints `serving pid=… generation=… version=… build=…`.
async fn request(
    name: &str,
    request: Request,
    args: impl Iterator<Item = String>,
    usage: &str,
) -> ExitCode {
    let parsed = Flags::parse_from(args, &["control-socket", "timeout"]).and_then(|flags| {
        let path = flags
            .text("control-socket")
            .ok_or("this subcommand needs --control-socket PATH")?;
        Ok((path, flags.duration("timeout", UPGRADE_COMMAND_TIMEOUT)?))
    });
    let (path, timeout) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("{name}: {problem}\n{usage}");
            return ExitCode::from(2);
        }
    };
    let (verb, done) = match request {
        Request::Upgrade => ("upgrade", "upgraded"),
        Request::Rollback => ("rollback", "rolled back"),
        Request::Status => ("status", "serving"),
    };
    let asked = tokio::task::spawn_blocking(move || match request {
        Request::Upgrade => {
            graceful::control::upgrade_identified(path, timeout).map(|serving| serving.to_string())
        }
        Request::Rollback => {
            graceful::control::rollback(path, timeout).map(|pid| format!("pid={pid}"))
        }
        Request::Status => {
            graceful::control::status(path, timeout).map(|serving| serving.to_string())
        }
    });
    match asked.await {
        Ok(Ok(serving)) => {
            println!("{done} {serving}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("{name} {verb}: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{name} {verb}: the request failed: {err}");
            ExitCode::FAILURE
        }
    }
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

/// `exited pid=… open_at_start=… abandoned=… outcome=… handed_off=…`, once this generation
/// has drained; `handed_off` counts the connections handed over to successors.
pub(crate) fn print_exited(report: &graceful::DrainReport, handed_off: usize) {
    println!(
        "exited pid={} open_at_start={} abandoned={} outcome={:?} handed_off={handed_off}",
        std::process::id(),
        report.open_at_start,
        report.abandoned,
        report.outcome
    );
}
