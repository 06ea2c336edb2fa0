//! Runs the example binaries as real processes for the integration tests.
//!
//! Servers run under `graceful::testing`'s harness, which starts them with its own listener,
//! upgrades them and sees each generation end. On top of it, [`Server`] gives each a PID file
//! and checks what the examples promise scripts: each generation prints `ready pid=…
//! generation=… addr=…` when it serves and `exited pid=… open_at_start=… abandoned=…
//! outcome=…` when it has drained. [`Client`] runs the `echo-client` example (killed on drop by
//! tokio; it is a direct child and starts nothing, so it needs no process group).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use graceful::testing::{Generation, Harness, process};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long any one step may take before the test fails, saying what it waited for.
pub const STEP: Duration = Duration::from_secs(30);

/// A server and every generation it upgrades into.
pub struct Server {
    harness: Harness,
    dir: tempfile::TempDir,
}

impl Deref for Server {
    type Target = Harness;

    fn deref(&self) -> &Harness {
        &self.harness
    }
}

impl Server {
    /// Starts `binary` on the harness's free loopback port with a PID file, plus `args`, and
    /// waits until it serves.
    pub async fn start(binary: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let harness = Harness::builder(binary)
            .arg("--addr")
            .arg_addr()
            .arg("--pid-file")
            .arg(dir.path().join("server.pid"))
            .args(args)
            .env("RUST_LOG", "info,graceful_core=debug")
            .env("NO_COLOR", "1")
            .timeout(STEP)
            .ready_timeout(STEP)
            .start()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let server = Server { harness, dir };
        server.printed_ready().await;
        server
    }

    /// Sends SIGHUP to the serving generation and waits until the next one serves; checks that
    /// the PID file names it. Returns the old pid.
    pub async fn upgrade(&self) -> u32 {
        let upgraded = self
            .harness
            .upgrade()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert_ne!(upgraded.pid, upgraded.from);
        let pid_file = std::fs::read_to_string(self.pid_file()).unwrap();
        assert_eq!(
            pid_file,
            format!("{}\n", upgraded.pid),
            "the PID file names the new generation"
        );
        self.printed_ready().await;
        upgraded.from
    }

    /// Waits until the serving generation has printed its `ready` line, with the harness's
    /// address: it adopted the listener.
    async fn printed_ready(&self) {
        let line = format!(
            "ready pid={} generation={} addr={}",
            self.pid(),
            self.generation(),
            self.addr()
        );
        self.wait_output(&line)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
    }

    /// Waits until generation `pid` has ended, checks that it printed its `exited` line as it
    /// reported its drain, and returns what the harness saw.
    pub async fn wait_exited(&self, pid: u32) -> Generation {
        let generation = self
            .harness
            .wait_exited(pid)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let drain = generation
            .drain()
            .unwrap_or_else(|| panic!("pid {pid} ended without draining: {generation}"));
        let line = format!(
            "exited pid={pid} open_at_start={} abandoned={} outcome={:?}",
            drain.open_at_start, drain.abandoned, drain.outcome
        );
        self.wait_output(&line)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(
            generation.status().is_some_and(|s| s.success()),
            "{generation}"
        );
        generation
    }

    /// Waits until the servers' output contains `text`.
    pub async fn wait_log(&self, text: &str) {
        self.wait_output(text)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
    }

    /// The harness itself, for its own `upgrade`, which reports failures instead of
    /// panicking.
    pub fn harness(&self) -> &Harness {
        &self.harness
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("server.pid")
    }
}

/// The `echo-client` example, running in the background.
pub struct Client {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
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
    pub async fn start(binary: &str, addr: SocketAddr, args: &[&str]) -> Client {
        let mut child = Command::new(binary)
            .arg("--addr")
            .arg(addr.to_string())
            .args(["--duration", "60s", "--max-lines", "1000000000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the client");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut client = Client { child, lines };
        client.wait_line("started").await;
        client
    }

    /// Waits until the client has been answered by `pid`.
    pub async fn wait_answered_by(&mut self, pid: u32) {
        self.wait_line(&format!("pid {pid}")).await;
    }

    async fn wait_line(&mut self, expected: &str) -> String {
        let found = tokio::time::timeout(STEP, async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) if line == expected => return line,
                    // The summary: what `finish` waits for, or a client that ended too early.
                    Ok(Some(line)) if line.starts_with("lines=") => {
                        if expected == "lines=" {
                            return line;
                        }
                        panic!("the client ended before printing {expected:?}: {line}")
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => panic!("the client ended before printing {expected:?}"),
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("waited {STEP:?} for the client to print {expected:?}"))
    }

    /// Stops the client (SIGINT: each connection finishes its line) and returns its summary.
    pub async fn finish(mut self) -> Summary {
        let pid = self.child.id().expect("the client runs");
        process::signal(pid, process::Signal::SIGINT).expect("SIGINT the client");
        let line = self.wait_line("lines=").await;
        let status = self.child.wait().await.expect("wait for the client");
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
