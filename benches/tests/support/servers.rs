#![allow(dead_code)] // each test file uses a part of it

//! Runs the bench's servers as real processes: each in its own process group, under this test
//! process as child subreaper, so that a generation orphaned by its parent's exit is reaped
//! here; on drop, the whole group is killed and every member reaped. The supervision is
//! graceful-testing's (`graceful_testing::process`), as the harness's, xtask's and scale-probe's. The lines the servers
//! print are read on a thread and waited for with a bound.
//!
//! The subreaper flag is process-global: a test file that uses this runs its tests in its own
//! process, as every test file does.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use graceful_testing::process::{self, Signal};

/// A bound for every wait; generous, because it only matters when something is wrong.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// A server's process group, its stdout read line by line; killed and reaped when dropped.
pub(crate) struct Group {
    group: process::Group,
    lines: mpsc::Receiver<String>,
    /// Lines read but not yet asked for.
    pending: VecDeque<String>,
}

/// A generation's `ready pid=… generation=… addr=…` line.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    pub(crate) addr: String,
}

impl Group {
    /// Starts `program` with `args` in a new process group.
    pub(crate) fn start(program: impl AsRef<Path>, args: &[&str]) -> Group {
        process::become_subreaper().expect("become a child subreaper");
        let mut group = process::Group::spawn(
            Command::new(program.as_ref())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        )
        .unwrap_or_else(|e| panic!("start {}: {e}", program.as_ref().display()));
        let stdout = group.leader().stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Group {
            group,
            lines,
            pending: VecDeque::new(),
        }
    }

    /// The pid of the process this test started (generation 1).
    pub(crate) fn leader_pid(&self) -> u32 {
        self.group.pgid()
    }

    /// Waits for the first line, read or still to come, that `matches`; takes it out and
    /// returns it. `what` names it when the wait fails.
    pub(crate) fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(index) = self.pending.iter().position(|line| matches(line)) {
            return self.pending.remove(index).expect("present");
        }
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => self.pending.push_back(line),
                Err(_) => panic!(
                    "no {what} line within {STEP:?}; lines so far: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Waits for the `ready` line of `generation`.
    pub(crate) fn ready(&mut self, generation: u64) -> Ready {
        let marker = format!(" generation={generation} ");
        let line = self.line(&format!("ready (generation {generation})"), |line| {
            line.starts_with("ready ") && line.contains(&marker)
        });
        parse_ready(&line)
    }

    /// Waits for the line that starts with `prefix`; returns what follows it.
    pub(crate) fn line_after(&mut self, prefix: &str) -> String {
        let line = self.line(prefix, |line| line.starts_with(prefix));
        line[prefix.len()..].to_owned()
    }

    /// Waits, bounded, for generation 1 to exit.
    pub(crate) fn leader_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.group.leader().try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "generation 1 still runs after {STEP:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn parse_ready(line: &str) -> Ready {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|part| part.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_owned()
    };
    Ready {
        pid: field("pid=").parse().expect("a pid"),
        generation: field("generation=").parse().expect("a generation"),
        addr: field("addr="),
    }
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: u32, signal: Signal) {
    process::signal(pid, signal).unwrap_or_else(|e| panic!("send {signal} to {pid}: {e}"));
}

/// `GET path` on a new connection; returns the status line and the body.
pub(crate) fn get(addr: &str, path: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(STEP)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read the response to GET {path} from {addr}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Starts an upgradable server with a PID file, upgrades it once with SIGHUP and stops the
/// new generation with SIGTERM, checking each generation's lines, answers and PID file.
/// `names_successor`: whether the `stopped` line gives the successor's pid (graceful) or
/// `unknown` (ecdysis).
pub(crate) fn upgrade_once(program: &str, names_successor: bool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pid_file = dir.path().join("server.pid");
    let pid_file_arg = pid_file.to_str().expect("a UTF-8 path");
    let mut group = Group::start(
        program,
        &["--addr", "127.0.0.1:0", "--pid-file", pid_file_arg],
    );
    let first = group.ready(1);
    assert_eq!(first.pid, group.leader_pid(), "{first:?}");
    assert_eq!(
        get(&first.addr, "/"),
        (
            "HTTP/1.1 200 OK".to_owned(),
            format!("hello from {}", first.pid)
        )
    );
    assert_eq!(get(&first.addr, "/nowhere").0, "HTTP/1.1 404 Not Found");
    let recorded = std::fs::read_to_string(&pid_file).expect("read the PID file");
    assert_eq!(recorded.trim(), first.pid.to_string());

    signal(first.pid, Signal::SIGHUP);
    let second = group.ready(2);
    assert_ne!(second.pid, first.pid);
    assert_eq!(
        second.addr, first.addr,
        "the successor serves the same socket"
    );
    let successor = group.line_after(&format!("stopped pid={} successor=", first.pid));
    let expected = if names_successor {
        second.pid.to_string()
    } else {
        "unknown".to_owned()
    };
    assert_eq!(successor, expected);
    let exited = group.line_after(&format!("exited pid={} ", first.pid));
    assert!(exited.ends_with(" outcome=Drained"), "{exited}");
    assert!(
        group.leader_exit().success(),
        "generation 1 failed after its drain"
    );
    assert_eq!(
        get(&second.addr, "/"),
        (
            "HTTP/1.1 200 OK".to_owned(),
            format!("hello from {}", second.pid)
        )
    );
    let recorded = std::fs::read_to_string(&pid_file).expect("read the PID file");
    assert_eq!(recorded.trim(), second.pid.to_string());

    signal(second.pid, Signal::SIGTERM);
    let successor = group.line_after(&format!("stopped pid={} successor=", second.pid));
    assert_eq!(successor, "none");
    let exited = group.line_after(&format!("exited pid={} ", second.pid));
    assert!(exited.ends_with(" outcome=Drained"), "{exited}");
}
