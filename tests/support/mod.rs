//! Runs the example binaries as real processes for the integration tests.
//!
//! Every generation of a server shares its stdout, where each prints `ready pid=… generation=…
//! addr=…` when it serves and `exited pid=… …` when it exits; the tests synchronise on those
//! lines. A server and all its generations form one process group, killed and reaped when the
//! [`Server`] is dropped, even if the test panics. The test process is a child subreaper, so
//! generations orphaned by their parent's exit are reaped by it, not left as zombies.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long any one step may take before the test fails, saying what it waited for.
pub const STEP: Duration = Duration::from_secs(30);

/// A line a server generation printed.
#[derive(Debug, Clone)]
pub enum Event {
    Ready {
        pid: u32,
        generation: u64,
        addr: SocketAddr,
    },
    Exited {
        pid: u32,
        open_at_start: usize,
        abandoned: usize,
        outcome: String,
    },
}

/// A server and every generation it upgrades into.
pub struct Server {
    dir: tempfile::TempDir,
    pgid: i32,
    leader: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Event>,
    pub pid: u32,
    pub generation: u64,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `binary` on a free loopback port with a PID file, plus `args`, and waits until
    /// it serves.
    pub fn start(binary: &str, args: &[&str]) -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("stderr")).expect("log");
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0", "--pid-file"])
            .arg(dir.path().join("server.pid"))
            .args(args)
            .env("RUST_LOG", "info,graceful_core=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the server");
        let lines = read_lines(child.stdout.take().expect("piped"));
        let pgid = child.id() as i32;
        let mut server = Server {
            dir,
            pgid,
            leader: child,
            lines,
            seen: Vec::new(),
            pid: 0,
            generation: 0,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let (pid, generation, addr) = server.wait_ready(1);
        server.pid = pid;
        server.generation = generation;
        server.addr = addr;
        server
    }

    /// Sends SIGHUP to the serving generation and waits until the next one serves; checks that
    /// the PID file names it. Returns the old pid.
    pub fn upgrade(&mut self) -> u32 {
        let old = self.pid;
        kill(Pid::from_raw(old as i32), Signal::SIGHUP).expect("send SIGHUP");
        let (pid, generation, _) = self.wait_ready(self.generation + 1);
        assert_ne!(pid, old);
        let pid_file = std::fs::read_to_string(self.dir.path().join("server.pid")).unwrap();
        assert_eq!(
            pid_file,
            format!("{pid}\n"),
            "the PID file names the new generation"
        );
        self.pid = pid;
        self.generation = generation;
        old
    }

    fn wait_ready(&mut self, generation: u64) -> (u32, u64, SocketAddr) {
        let event = self.wait_for(
            &format!("generation {generation} to be ready"),
            |e| matches!(e, Event::Ready { generation: g, .. } if *g == generation),
        );
        let Event::Ready {
            pid,
            generation,
            addr,
        } = event
        else {
            unreachable!()
        };
        (pid, generation, addr)
    }

    /// Waits until generation `pid` reports its exit, then until the process has ended.
    pub fn wait_exited(&mut self, pid: u32) -> Event {
        let event = self.wait_for(
            &format!("pid {pid} to exit"),
            |e| matches!(e, Event::Exited { pid: p, .. } if *p == pid),
        );
        assert!(
            wait_process_end(pid, STEP),
            "pid {pid} reported its exit but did not end\n{}",
            self.log()
        );
        event
    }

    fn wait_for(&mut self, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
        if let Some(event) = self.seen.iter().find(|e| matches(e)) {
            return event.clone();
        }
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!("waited {STEP:?} for {what}\n{}", self.log()),
            };
            let Some(event) = parse_event(&line) else {
                continue;
            };
            self.seen.push(event.clone());
            if matches(&event) {
                return event;
            }
        }
    }

    /// Waits until the servers' log contains `text`. The log is a file, so this polls it.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + STEP;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "waited {STEP:?} for the log to say {text:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server generations logged on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        reap_group(self.pgid);
        let _ = self.leader.try_wait();
        if std::thread::panicking() {
            eprintln!("----- server log -----\n{}", self.log());
        }
    }
}

/// Forwards a child's stdout, line by line, to a channel.
fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

fn parse_event(line: &str) -> Option<Event> {
    let (kind, rest) = line.split_once(' ')?;
    let fields: HashMap<&str, &str> = rest.split(' ').filter_map(|f| f.split_once('=')).collect();
    match kind {
        "ready" => Some(Event::Ready {
            pid: fields.get("pid")?.parse().ok()?,
            generation: fields.get("generation")?.parse().ok()?,
            addr: fields.get("addr")?.parse().ok()?,
        }),
        "exited" => Some(Event::Exited {
            pid: fields.get("pid")?.parse().ok()?,
            open_at_start: fields.get("open_at_start")?.parse().ok()?,
            abandoned: fields.get("abandoned")?.parse().ok()?,
            outcome: (*fields.get("outcome")?).to_owned(),
        }),
        _ => None,
    }
}

/// A load client running in the background.
pub struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// The client's closing summary, `key=value` pairs.
#[derive(Debug)]
pub struct Summary(HashMap<String, String>);

impl Summary {
    pub fn count(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
            .parse()
            .unwrap()
    }

    pub fn answered_by(&self) -> Vec<u32> {
        self.0["answered_by"]
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap())
            .collect()
    }
}

impl Client {
    /// Starts `binary` against `addr` and waits until every connection got an answer. The
    /// client stops by itself after `--duration` (60 s unless `args` say otherwise).
    pub fn start(binary: &str, addr: SocketAddr, args: &[&str]) -> Client {
        let mut child = Command::new(binary)
            .arg("--addr")
            .arg(addr.to_string())
            .args(["--duration", "60s", "--max-lines", "1000000000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client");
        let lines = read_lines(child.stdout.take().expect("piped"));
        let mut client = Client { child, lines };
        client.wait_line("started");
        client
    }

    /// Waits until the client has been answered by `pid`.
    pub fn wait_answered_by(&mut self, pid: u32) {
        self.wait_line(&format!("pid {pid}"));
    }

    fn wait_line(&mut self, expected: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return line,
                // The summary: what `finish` waits for, or a client that ended too early.
                Ok(line) if line.starts_with("lines=") => {
                    if expected == "lines=" {
                        return line;
                    }
                    panic!("the client ended before printing {expected:?}: {line}")
                }
                Ok(_) => continue,
                Err(_) => panic!("waited {STEP:?} for the client to print {expected:?}"),
            }
        }
    }

    /// Stops the client (SIGINT: each connection finishes its line) and returns its summary.
    pub fn finish(mut self) -> Summary {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT the client");
        let line = self.wait_line("lines=");
        let status = self.child.wait().expect("wait for the client");
        let summary = Summary(
            line.split(' ')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        assert_eq!(
            status.success(),
            summary.count("errors") == 0,
            "exit status {status} disagrees with {summary:?}"
        );
        summary
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until process `pid` has ended (a zombie has ended), child of ours or not.
pub fn wait_process_end(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as i32, 0) };
    if fd < 0 {
        // Already reaped: there is no such process any more.
        return nix::errno::Errno::last() == nix::errno::Errno::ESRCH;
    }
    // SAFETY: a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut fds, millis), Ok(n) if n > 0)
}

fn reap_group(pgid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes into a local.
        let pid = unsafe { nix::libc::waitpid(-pgid, &mut status, 0) };
        if pid < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            return;
        }
    }
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}
