//! The processes a probe starts, and the limits they need.
//!
//! A probe starts this same binary again in a role (a server, or the clients) and talks to it
//! through lines on its stdout, `kind key=value …`, each stamped with the instant the probe
//! read it. Invariants:
//! - Each [`Process`] is a process group of its own, with every server generation it upgrades
//!   into. Dropping it (a finished probe, an error, a panic) kills the group and reaps it. The
//!   probe is a child subreaper, so generations orphaned by their parent's exit become its
//!   children and are reaped too, not left as zombies. Both are graceful-testing's process
//!   supervision (`graceful_testing::process`), as the tests' and xtask's.
//! - A role's stdin is a pipe whose write end only the probe holds. A role that reads end of
//!   file there (the probe is done with it, or has gone, even by SIGKILL) stops, so nothing
//!   outlives the probe.
//! - Every wait has a deadline and says what it waited for when it fails. A line `failed …` ends
//!   the wait at once with that reason: a role reports a failure it survives that way.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use graceful_testing::process::{self, Group, Signal};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// This binary, resolved once: the probe starts itself in its roles.
static SELF_EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Makes this process the reaper of the generations its servers leave behind, and resolves
/// the path of this binary before anything could replace it.
pub(crate) fn prepare() -> Result<(), String> {
    process::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    self_exe().map(|_| ())
}

fn self_exe() -> Result<&'static PathBuf, String> {
    SELF_EXE
        .get_or_init(|| {
            std::env::current_exe().map_err(|e| format!("cannot find this binary's path: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Raises this process's soft RLIMIT_NOFILE so that `needed` descriptors fit; the processes it
/// starts inherit the limit. Returns why not when the hard limit is too low.
pub(crate) fn allow_descriptors(needed: u64) -> Result<(), String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "RLIMIT_NOFILE hard limit is {hard}, below the {needed} descriptors needed; \
             raise it (ulimit -Hn, or LimitNOFILE= under systemd) to run this measurement"
        ));
    }
    let raised = if hard == RLIM_INFINITY { needed } else { hard };
    setrlimit(Resource::RLIMIT_NOFILE, raised, hard)
        .map_err(|e| format!("cannot raise RLIMIT_NOFILE from {soft} to {raised}: {e}"))
}

/// A line a role printed: its first word, its `key=value` fields, and when the probe read it.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) at: Instant,
    pub(crate) kind: String,
    fields: HashMap<String, String>,
    line: String,
}

impl Report {
    fn parse(at: Instant, line: String) -> Report {
        let mut words = line.split(' ');
        let kind = words.next().unwrap_or_default().to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Report {
            at,
            kind,
            fields,
            line,
        }
    }

    /// Field `key`, parsed.
    pub(crate) fn get<T: FromStr>(&self, key: &str) -> Result<T, String> {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no valid {key}= in {:?}", self.line))
    }

    /// Whether field `key` is `value`.
    pub(crate) fn is(&self, key: &str, value: impl ToString) -> bool {
        self.fields.get(key) == Some(&value.to_string())
    }
}

/// A role of this binary running as a process group of its own; killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<Report>,
    /// Lines read while waiting for another one.
    unclaimed: Vec<Report>,
    /// Last, so that it is dropped after `stdin` is closed.
    group: Group,
}

impl Process {
    /// Starts this binary with `args` (a role and its flags); `name` is for error messages.
    pub(crate) fn start(name: &str, args: &[String]) -> Result<Process, String> {
        let mut group = Group::spawn(
            Command::new(self_exe()?)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .map_err(|e| format!("cannot start the {name}: {e}"))?;
        let stdin = group.leader().stdin.take();
        let stdout = group.leader().stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(Report::parse(Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            name: name.to_owned(),
            stdin,
            lines,
            unclaimed: Vec::new(),
            group,
        })
    }

    /// Waits up to `timeout` for a line of `kind` that `matches`; `what` says what it is.
    pub(crate) fn wait_for(
        &mut self,
        kind: &str,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Report) -> bool,
    ) -> Result<Report, String> {
        let wanted = |r: &Report| r.kind == kind && matches(r);
        if let Some(index) = self.unclaimed.iter().position(wanted) {
            return Ok(self.unclaimed.remove(index));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(report) if wanted(&report) => return Ok(report),
                Ok(report) if report.kind == "failed" => {
                    return Err(format!(
                        "while waiting for {what}, the {} reported: {}",
                        self.name, report.line
                    ));
                }
                Ok(report) => self.unclaimed.push(report),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the {} printed no {what} in {timeout:?}",
                        self.name
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("the {} exited before printing {what}", self.name));
                }
            }
        }
    }

    /// Sends `signal` to `pid`, one process of this group.
    pub(crate) fn signal(&self, pid: u32, signal: Signal) -> Result<(), String> {
        process::signal(pid, signal)
            .map_err(|e| format!("cannot send {signal} to the {} (pid {pid}): {e}", self.name))
    }

    /// Reaps the processes of this group that have ended, without waiting.
    pub(crate) fn reap_ended(&mut self) {
        self.group.reap_ended();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The role sees end of file and stops; the group, dropped next, is killed and reaped.
        self.stdin.take();
    }
}

/// Calls `stop` once this process's stdin reaches end of file: the probe that started it has
/// gone, or is done with it.
pub(crate) fn on_stdin_closed(stop: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
        stop();
    });
}
