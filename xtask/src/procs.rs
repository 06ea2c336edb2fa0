//! The processes a task starts: building the binaries, a server and every generation it
//! upgrades into, and the lines they print.
//!
//! A server runs in its own process group, so that stopping it stops every generation; xtask is
//! a child subreaper, so that old generations orphaned by their parents are reaped by it. Both
//! are graceful-testing's process supervision (`graceful_testing::process`), as the tests'. Each
//! line a server prints on stdout is kept with the instant it was read, which is what handover
//! times are measured from.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use graceful_testing::process::Group;

/// The longest any single step (a build aside) may take before a task gives up.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Builds the given packages' binaries in release mode; returns the directory holding them.
pub(crate) fn build_release(packages: &[&str]) -> Result<PathBuf, String> {
    let root = workspace_root();
    eprintln!("building {} (release)…", packages.join(", "));
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "--bins"]);
    for package in packages {
        cargo.args(["-p", package]);
    }
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed", packages.join(", ")));
    }
    Ok(root.join("target/release"))
}

/// A line a server printed, such as `ready pid=4242 generation=1 addr=127.0.0.1:7000`, and when
/// it was read.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub(crate) at: Instant,
    pub(crate) kind: String,
    pub(crate) fields: HashMap<String, String>,
}

impl Line {
    fn parse(at: Instant, text: &str) -> Line {
        let mut words = text.split(' ');
        let kind = words.next().unwrap_or_default().to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Line { at, kind, fields }
    }

    pub(crate) fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.get("pid").parse().unwrap_or(0)
    }
}

/// A server and every generation it upgrades into, in one process group; killed and reaped when
/// dropped.
#[derive(Debug)]
pub(crate) struct Server {
    group: Group,
    lines: Arc<(Mutex<Vec<Line>>, Condvar)>,
    log: PathBuf,
}

impl Server {
    /// Starts `binary` with `args`, its stderr going to `log`.
    pub(crate) fn start(binary: &Path, args: &[&str], log: &Path) -> Result<Server, String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut group = Group::spawn(
            Command::new(binary)
                .args(args)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file),
        )
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = group.leader().stdout.take().expect("stdout is piped");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let shared = lines.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = Line::parse(Instant::now(), &text);
                let (list, changed) = &*shared;
                list.lock().unwrap().push(line);
                changed.notify_all();
            }
        });
        Ok(Server {
            group,
            lines,
            log: log.to_owned(),
        })
    }

    /// The first line that matches, waiting up to [`STEP`] for it.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&Line) -> bool,
    ) -> Result<Line, String> {
        self.wait_for_within(what, STEP, matches)
    }

    /// The first line that matches, waiting up to `limit` for it.
    pub(crate) fn wait_for_within(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Line) -> bool,
    ) -> Result<Line, String> {
        let deadline = Instant::now() + limit;
        let (list, changed) = &*self.lines;
        let mut lines = list.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return Ok(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "gave up waiting {limit:?} for {what}; the server's log is {}",
                    self.log.display()
                ));
            }
            lines = changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// The `ready` line of a generation.
    pub(crate) fn wait_ready(&self, generation: u64) -> Result<Line, String> {
        self.wait_ready_within(generation, STEP)
    }

    /// The `ready` line of a generation, waiting up to `limit` for it.
    pub(crate) fn wait_ready_within(
        &self,
        generation: u64,
        limit: Duration,
    ) -> Result<Line, String> {
        let wanted = generation.to_string();
        self.wait_for_within(
            &format!("generation {generation} to be ready"),
            limit,
            |l| l.kind == "ready" && l.get("generation") == wanted,
        )
    }

    /// A line of `kind` (`stopped`, `exited`) from the process `pid`.
    pub(crate) fn wait_line_of(&self, kind: &str, pid: u32) -> Result<Line, String> {
        self.wait_for(&format!("pid {pid} to print {kind:?}"), |l| {
            l.kind == kind && l.pid() == pid
        })
    }

    /// SIGTERM to the whole group, then SIGKILL to whatever is left after 10 s, and reaps
    /// everything.
    pub(crate) fn stop(self) {
        self.group.stop(Duration::from_secs(10));
    }
}

/// A directory for logs and PID files, removed by the caller once the task succeeds.
pub(crate) fn scratch_dir(task: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("graceful-{task}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}
