//! `cargo xtask demo`: a live upgrade under load, with a verdict.
//!
//! Builds the examples in release mode, starts `echo-server` on a free loopback port, drives it
//! with two `echo-client`s (long-lived connections exchanging lines back to back, and
//! one-line-per-connection traffic), and sends SIGHUP at a fixed interval. Every upgrade is
//! awaited: the new generation's `ready` line must appear. At the end the clients report what
//! they saw; any failed line, or any upgrade that did not complete, makes the demo exit non-zero.
//!
//! Everything it starts is in one process group that is killed and reaped at the end; the
//! demo is a child subreaper so that old generations orphaned by their parents are reaped too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const LONG_CONNECTIONS: usize = 16;
const SHORT_CONNECTIONS: usize = 4;
/// The longest any single step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(30);

pub(crate) struct Options {
    pub(crate) upgrades: u32,
    pub(crate) interval: Duration,
}

pub(crate) fn run(options: &Options) -> Result<bool, String> {
    let root = workspace_root();
    println!("building the examples (release)…");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "graceful-examples",
            "--bins",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the examples failed".into());
    }
    let bin = root.join("target/release");
    let scratch = std::env::temp_dir().join(format!("graceful-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    become_subreaper();

    let mut server = Group::start(&bin.join("echo-server"), &scratch)?;
    let result = drive(&bin, &mut server, options);
    server.stop();
    if result.is_err() {
        eprintln!("server log: {}", scratch.join("server.log").display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

fn drive(bin: &Path, server: &mut Group, options: &Options) -> Result<bool, String> {
    let first = server.wait_ready(1)?;
    println!("echo-server ready: pid {} on {}", first.pid, first.addr);
    let duration = STEP + options.interval * options.upgrades * 2;
    let mut long = Load::start(bin, &first.addr, "long", LONG_CONNECTIONS, duration)?;
    let mut short = Load::start(bin, &first.addr, "short", SHORT_CONNECTIONS, duration)?;
    long.wait_for("started")?;
    short.wait_for("started")?;

    let live = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut handovers = Vec::new();
    let mut pid = first.pid;
    for n in 1..=options.upgrades {
        std::thread::sleep(options.interval);
        let signalled = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).map_err(|e| format!("SIGHUP: {e}"))?;
        let ready = server.wait_ready(u64::from(n) + 1)?;
        let handover = signalled.elapsed();
        handovers.push(handover);
        let progress = format!(
            "  {:>5.1}s  upgrades {n}/{}  pid {} -> {}  handover {:>6.1} ms",
            started.elapsed().as_secs_f64(),
            options.upgrades,
            pid,
            ready.pid,
            handover.as_secs_f64() * 1e3,
        );
        // A live line on a terminal, a line per upgrade in a log.
        if live {
            print!("\r{progress}   ");
            let _ = std::io::stdout().flush();
        } else {
            println!("{progress}");
        }
        pid = ready.pid;
    }
    if live {
        println!();
    }
    // Let both loads reach the last generation before stopping them.
    long.wait_for(&format!("pid {pid}"))?;
    short.wait_for(&format!("pid {pid}"))?;
    let long = long.finish()?;
    let short = short.finish()?;
    let elapsed = started.elapsed();

    handovers.sort();
    let median = handovers[handovers.len() / 2];
    let max = handovers[handovers.len() - 1];
    println!();
    println!("| load | connections | lines answered | clean reconnects | failed |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, connections, summary) in [
        ("long-lived", LONG_CONNECTIONS, &long),
        ("one line per connection", SHORT_CONNECTIONS, &short),
    ] {
        println!(
            "| {name} | {connections} | {} | {} | {} |",
            summary.get("lines"),
            summary.get("reconnects"),
            summary.get("errors"),
        );
    }
    println!();
    let failed = long.get("errors") + short.get("errors");
    println!(
        "{} upgrades in {:.1} s; handover (SIGHUP sent -> new generation ready): median {:.1} ms, max {:.1} ms",
        options.upgrades,
        elapsed.as_secs_f64(),
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
    if failed == 0 {
        println!(
            "PASS: 0 failed lines out of {} across {} upgrades",
            long.get("lines") + short.get("lines"),
            options.upgrades
        );
    } else {
        println!("FAIL: {failed} failed lines; by kind:");
        for summary in [&long, &short] {
            println!("  {}", summary.line);
        }
    }
    Ok(failed == 0)
}

struct Ready {
    pid: u32,
    addr: String,
}

/// The server and every generation it upgrades into, in one process group.
struct Group {
    leader: Child,
    lines: Receiver<String>,
}

impl Group {
    fn start(binary: &Path, scratch: &Path) -> Result<Group, String> {
        let log = std::fs::File::create(scratch.join("server.log")).map_err(|e| e.to_string())?;
        let mut leader = Command::new(binary)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--drain-timeout",
                "10s",
                "--pid-file",
            ])
            .arg(scratch.join("server.pid"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let lines = read_lines(leader.stdout.take().expect("piped"));
        Ok(Group { leader, lines })
    }

    fn wait_ready(&mut self, generation: u64) -> Result<Ready, String> {
        let line = wait_line(
            &self.lines,
            &format!("generation {generation} ready"),
            |l| l.starts_with("ready ") && l.contains(&format!(" generation={generation} ")),
        )?;
        let fields = fields(&line);
        Ok(Ready {
            pid: fields["pid"]
                .parse()
                .map_err(|_| format!("bad line {line:?}"))?,
            addr: fields["addr"].clone(),
        })
    }

    /// SIGTERM to the whole group, then SIGKILL to whatever is left, and reap everything.
    fn stop(&mut self) {
        let group = Pid::from_raw(self.leader.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && reap_one(group.as_raw()) {}
        let _ = killpg(group, Signal::SIGKILL);
        while reap_one(group.as_raw()) {}
        let _ = self.leader.try_wait();
    }
}

/// One `echo-client` run.
struct Load {
    child: Child,
    lines: Receiver<String>,
}

struct Summary {
    line: String,
    fields: HashMap<String, String>,
}

impl Summary {
    fn get(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Load {
    fn start(
        bin: &Path,
        addr: &str,
        mode: &str,
        connections: usize,
        duration: Duration,
    ) -> Result<Load, String> {
        let mut child = Command::new(bin.join("echo-client"))
            .args(["--addr", addr, "--mode", mode])
            .arg("--connections")
            .arg(connections.to_string())
            .arg("--duration")
            .arg(format!("{}ms", duration.as_millis()))
            // Bounded by the duration; the line budget must not end the load first.
            .args(["--max-lines", "1000000000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start echo-client: {e}"))?;
        let lines = read_lines(child.stdout.take().expect("piped"));
        Ok(Load { child, lines })
    }

    fn wait_for(&mut self, expected: &str) -> Result<(), String> {
        let line = wait_line(
            &self.lines,
            &format!("the client to print {expected:?}"),
            |l| l == expected || l.starts_with("lines="),
        )?;
        if line == expected {
            Ok(())
        } else {
            Err(format!(
                "the client ended before printing {expected:?}: {line}"
            ))
        }
    }

    fn finish(mut self) -> Result<Summary, String> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let line = wait_line(&self.lines, "the client's summary", |l| {
            l.starts_with("lines=")
        })?;
        let _ = self.child.wait();
        Ok(Summary {
            fields: fields(&line),
            line,
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    lines: &Receiver<String>,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if matches(&line) => return Ok(line),
            Ok(_) => {}
            Err(_) => return Err(format!("gave up waiting {STEP:?} for {what}")),
        }
    }
}

fn fields(line: &str) -> HashMap<String, String> {
    line.split(' ')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Reaps one process of the group if one has ended; false when none is left.
fn reap_one(pgid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes into a local.
    let pid = unsafe { nix::libc::waitpid(-pgid, &mut status, nix::libc::WNOHANG) };
    if pid == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    pid >= 0
}

fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}
