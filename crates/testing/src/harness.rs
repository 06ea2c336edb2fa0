//! The harness: the parent of the server under test.
//!
//! It plays the generation before the first one. It binds the listening socket itself, so the
//! test knows the address before the server starts, and starts the server with that socket
//! handed over exactly as an upgrade hands it over (`graceful_core::harness::Handover`): the server's
//! `graceful::listen` adopts it, its `ready()` answers over the readiness link. Once the server
//! is ready the harness closes the link, so the server sees its parent exit and is, from then
//! on, what a server started by hand is: the oldest generation, which counts its successors for
//! `max_generations` and whose drain never waits for a parent.
//!
//! Upgrades are what a deploy does: `SIGHUP` to the generation that serves. Their outcomes, and
//! each drain's end, come back on the report channel (`graceful_core::harness::Report`), which every
//! generation inherits; each generation's end is seen through a pidfd and its exit status
//! collected by the harness, which is the child subreaper of the process.
//!
//! The server and all its generations share a process group of their own, killed and reaped
//! when the harness is dropped, even if the test panics.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graceful_core::harness::Handover;
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::load::{Load, LoadReport};
use crate::monitor::{Generation, Lineage, Monitor};
use crate::output::{Output, TAIL_LINES};
use crate::process;
use crate::sys;

/// The variable that tells a re-executed test binary that it is the server.
const SERVER_VAR: &str = "GRACEFUL_TESTING_SERVER";
/// How long a failed start waits for the server's last lines.
const LAST_WORDS: Duration = Duration::from_secs(2);
/// How long the harness waits, when dropped, for the killed server to be reaped.
const REAP: Duration = Duration::from_secs(5);

/// Whether this process is a test binary re-executed as the server by [`Harness::this_test`].
pub fn is_server() -> bool {
    std::env::var_os(SERVER_VAR).is_some()
}

/// Configures the server to start; see [`Harness::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    executable: PathBuf,
    args: Vec<Arg>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    listen: SocketAddr,
    ready_timeout: Duration,
    timeout: Duration,
    load: Load,
}

#[derive(Debug, Clone)]
enum Arg {
    Text(OsString),
    /// The harness's listening address, known once it is bound.
    Addr,
}

impl Builder {
    fn new(executable: PathBuf) -> Builder {
        Builder {
            executable,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            listen: ([127, 0, 0, 1], 0).into(),
            ready_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            load: Load::default(),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(Arg::Text(arg.into()));
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args
            .extend(args.into_iter().map(|arg| Arg::Text(arg.into())));
        self
    }

    /// Adds the harness's listening address as an argument: `.arg("--addr").arg_addr()`. A
    /// server may also simply ask for port 0 on the same IP (`127.0.0.1:0`), which adopts the
    /// harness's listener too.
    pub fn arg_addr(mut self) -> Self {
        self.args.push(Arg::Addr);
        self
    }

    /// Sets an environment variable of the server.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The server's working directory. Default: the test's.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The address the harness binds and hands over. Default: `127.0.0.1:0`, a free port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How long the server may take to call `graceful::ready()` before [`start`](Self::start)
    /// kills it and fails with [`Error::NotReady`]. Default: 30 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long every other wait may take (an upgrade's outcome, a generation's exit, a line
    /// of output) before it fails with [`Error::Timeout`]. Default: 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clients [`Harness::under_load`] runs. Default: [`Load::http`].
    pub fn load(mut self, load: Load) -> Self {
        self.load = load;
        self
    }

    /// Starts the server and waits until it has called `graceful::ready()`.
    ///
    /// # Errors
    ///
    /// [`Error::Start`] if it cannot be started; [`Error::NotReady`] if it is not ready in
    /// time (it is killed); [`Error::ExitedBeforeReady`]; [`Error::ListenerNotAdopted`] if it
    /// became ready without taking the harness's listener; [`Error::Io`] if the harness cannot
    /// set itself up.
    pub async fn start(self) -> Result<Harness> {
        process::become_subreaper().map_err(|e| Error::io("becoming the child subreaper", e))?;
        let listener = std::net::TcpListener::bind(self.listen)
            .map_err(|e| Error::io(format!("binding the listener on {}", self.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listener's address", e))?;
        let (report, their_report) =
            UnixDatagram::pair().map_err(|e| Error::io("creating the report channel", e))?;
        let (output_pipe, output_end) =
            sys::pipe().map_err(|e| Error::io("creating the output pipe", e))?;
        let stderr = output_end
            .try_clone()
            .map_err(|e| Error::io("duplicating the output pipe", e))?;
        let stdin = File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;

        let output = Arc::new(Output::default());
        let reader = tokio::spawn({
            let output = output.clone();
            async move { output.read(output_pipe).await }
        });
        let mut handover = Handover::new(&self.executable)
            .args(self.args.iter().map(|arg| match arg {
                Arg::Text(text) => text.clone(),
                Arg::Addr => addr.to_string().into(),
            }))
            .listener(listener)
            .report(their_report)
            .stdin(stdin)
            .stdout(output_end)
            .stderr(stderr)
            .process_group();
        for (key, value) in self.env {
            handover = handover.env(key, value);
        }
        if let Some(cwd) = self.cwd {
            handover = handover.current_dir(cwd);
        }
        let started = blocking(move || handover.spawn())
            .await?
            .map_err(|source| Error::Start {
                executable: self.executable.clone(),
                source,
            })?;
        let pid = started.pid();

        // From here on, dropping the harness kills the server, whatever happens.
        let mut harness = Harness {
            addr,
            pgid: pid,
            executable: self.executable,
            monitor: Arc::new(Monitor::new(pid)),
            output,
            tasks: vec![reader],
            timeout: self.timeout,
            load: self.load,
        };
        let ready_timeout = self.ready_timeout;
        match blocking(move || started.wait_ready(ready_timeout)).await? {
            Ok(_) => {}
            Err(graceful_core::Error::Timeout { pid, timeout }) => {
                let output = harness.last_words().await;
                return Err(Error::NotReady {
                    pid,
                    timeout,
                    output,
                });
            }
            Err(graceful_core::Error::ChildExited { pid, status }) => {
                let output = harness.last_words().await;
                return Err(Error::ExitedBeforeReady {
                    pid,
                    status,
                    output,
                });
            }
            Err(source) => {
                return Err(Error::Start {
                    executable: harness.executable.clone(),
                    source,
                });
            }
        }

        // What the server reported before it was ready is queued already.
        report
            .set_nonblocking(true)
            .map_err(|e| Error::io("reading the report channel", e))?;
        let mut watch = vec![pid];
        watch.extend(harness.monitor.absorb_queued(&report));
        let unclaimed = harness
            .monitor
            .lineage()
            .unclaimed
            .iter()
            .find(|(from, _)| *from == pid)
            .map(|(_, what)| what.clone());
        if let Some(what) = unclaimed {
            return Err(Error::ListenerNotAdopted {
                pid,
                addr,
                what,
                output: harness.output.tail(TAIL_LINES),
            });
        }
        let monitor = harness.monitor.clone();
        harness.tasks.push(tokio::spawn(
            async move { monitor.run(report, watch).await },
        ));
        Ok(harness)
    }
}

/// A server under test, started as a real process, with every generation it upgrades into.
///
/// Dropping it kills and reaps every generation; if the test is panicking, it prints what they
/// wrote on their standard output and error.
///
/// Its methods wait on background tasks, so it needs a Tokio runtime (`#[tokio::test]`
/// is enough) that the test does not block.
pub struct Harness {
    addr: SocketAddr,
    pgid: u32,
    executable: PathBuf,
    monitor: Arc<Monitor>,
    output: Arc<Output>,
    tasks: Vec<JoinHandle<()>>,
    timeout: Duration,
    load: Load,
}

/// A successful upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The generation that was replaced; it is draining now.
    pub from: u32,
    /// The new generation, ready and serving.
    pub pid: u32,
    /// Its generation number.
    pub generation: u64,
    /// From the signal to the new generation's readiness, for information.
    pub took: Duration,
}

impl Harness {
    /// A server to start from `executable`, typically `env!("CARGO_BIN_EXE_<name>")`.
    pub fn builder(executable: impl Into<PathBuf>) -> Builder {
        Builder::new(executable.into())
    }

    /// A server that is this test binary again, running only the test named `test` (its full
    /// path, as `cargo test` prints it), in which [`is_server`] is true:
    ///
    /// ```no_run
    /// # async fn serve() {}
    /// // #[tokio::test]
    /// async fn upgrades() {
    ///     if graceful_testing::is_server() {
    ///         return serve().await; // graceful::listen("127.0.0.1:0"), ready(), serve, drain
    ///     }
    ///     let harness = graceful_testing::Harness::this_test("upgrades")
    ///         .start()
    ///         .await
    ///         .unwrap();
    ///     harness.upgrade().await.unwrap();
    /// }
    /// ```
    ///
    /// Each generation of the server re-executes the binary the same way.
    pub fn this_test(test: &str) -> Builder {
        // /proc/self/exe names the very binary that runs, in the process that executes it.
        let executable = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        Builder::new(executable)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(SERVER_VAR, test)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pid of the generation that serves: the newest that is ready.
    pub fn pid(&self) -> u32 {
        self.monitor.lineage().current
    }

    /// The generation number of the one that serves.
    pub fn generation(&self) -> u64 {
        let lineage = self.monitor.lineage();
        lineage.get(lineage.current).map_or(1, Generation::number)
    }

    /// Every generation so far, oldest first.
    pub fn generations(&self) -> Vec<Generation> {
        self.monitor.lineage().generations.clone()
    }

    /// The rollbacks so far: generations that took the service back from a successor that
    /// failed during their probation. [`pid`](Self::pid) names the one that serves then.
    pub fn rollbacks(&self) -> Vec<crate::Rollback> {
        self.monitor.lineage().rollbacks.clone()
    }

    /// Everything the server's generations wrote on their standard output and error so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Upgrades the server as a deploy does, with `SIGHUP` to the generation that serves, and
    /// waits for the outcome. Upgrade once at a time.
    ///
    /// # Errors
    ///
    /// [`Error::UpgradeFailed`] with the reason the server reported (it keeps serving);
    /// [`Error::Exited`] if the generation ended instead (for instance because it does not
    /// handle `SIGHUP`); [`Error::Timeout`] if neither happened within the timeout, which is
    /// also what a signal the server ignores gives (it is stopping, or upgrading already).
    pub async fn upgrade(&self) -> Result<Upgraded> {
        let (from, failures_before) = {
            let lineage = self.monitor.lineage();
            (lineage.current, lineage.failures.len())
        };
        let began = Instant::now();
        process::signal(from, Signal::SIGHUP)
            .map_err(|e| Error::io(format!("sending SIGHUP to pid {from}"), e))?;
        let waited = format!("pid {from} to report the outcome of its upgrade");
        self.wait_for(&waited, |lineage| {
            let generation = lineage.get(from)?;
            if let Some(pid) = generation.successor() {
                let number = lineage.get(pid).map_or(0, Generation::number);
                return Some(Ok(Upgraded {
                    from,
                    pid,
                    generation: number,
                    took: began.elapsed(),
                }));
            }
            let failed = lineage.failures[failures_before..]
                .iter()
                .find(|(pid, _)| *pid == from);
            if let Some((_, reason)) = failed {
                return Some(Err(Error::UpgradeFailed {
                    pid: from,
                    reason: reason.clone(),
                    output: self.output.tail(TAIL_LINES),
                }));
            }
            generation
                .exited()
                .then(|| Err(self.ended(generation, &waited)))
        })
        .await?
    }

    /// Stops the server gracefully, as a service manager does, with `SIGTERM` to the
    /// generation that serves, and waits until every generation has ended; returns them all.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if a generation is still alive after the timeout.
    pub async fn stop(&self) -> Result<Vec<Generation>> {
        let pid = self.pid();
        match process::signal(pid, Signal::SIGTERM) {
            Ok(()) => {}
            // Ended already: there is nothing to stop, only to wait for.
            Err(err) if err.raw_os_error() == Some(nix::libc::ESRCH) => {}
            Err(err) => return Err(Error::io(format!("sending SIGTERM to pid {pid}"), err)),
        }
        self.wait_for("every generation to end after SIGTERM", |lineage| {
            lineage.all_exited().then(|| lineage.generations.clone())
        })
        .await
    }

    /// Waits until generation `pid` has ended; returns what the harness saw of it.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if it is still alive after the timeout; [`Error::Io`] if `pid` is
    /// not a generation of this server.
    pub async fn wait_exited(&self, pid: u32) -> Result<Generation> {
        if self.monitor.lineage().get(pid).is_none() {
            return Err(Error::io(
                format!("waiting for pid {pid} to end"),
                io::Error::new(io::ErrorKind::NotFound, "not a generation of this server"),
            ));
        }
        self.wait_for(&format!("pid {pid} to end"), |lineage| {
            lineage.get(pid).filter(|g| g.exited()).cloned()
        })
        .await
    }

    /// Waits until a line the server wrote contains `text`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if none does within the timeout.
    pub async fn wait_output(&self, text: &str) -> Result<()> {
        let mut changes = self.output.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            changes.borrow_and_update();
            if self.output.contains(text) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    waited: format!("the server to write {text:?}"),
                    timeout: self.timeout,
                    output: self.output.tail(TAIL_LINES),
                });
            }
        }
    }

    /// Runs `during` while the clients of the [`Load`] given to [`Builder::load`] keep the
    /// server busy; returns what `during` returned with what the clients saw.
    ///
    /// ```no_run
    /// # async fn test(harness: graceful_testing::Harness) {
    /// let report = harness.under_load(|| harness.upgrade()).await;
    /// assert_eq!(report.failures(), 0, "{report}");
    /// report.outcome.unwrap();
    /// # }
    /// ```
    pub async fn under_load<T, F>(&self, during: impl FnOnce() -> F) -> LoadReport<T>
    where
        F: Future<Output = T>,
    {
        self.load.run(self.addr, during()).await
    }

    /// [`under_load`](Self::under_load), with other clients.
    pub async fn under_load_with<T, F>(
        &self,
        load: &Load,
        during: impl FnOnce() -> F,
    ) -> LoadReport<T>
    where
        F: Future<Output = T>,
    {
        load.run(self.addr, during()).await
    }

    /// Waits until `check` finds what it looks for in what the harness knows, for the timeout
    /// at most.
    async fn wait_for<T>(
        &self,
        waited: &str,
        mut check: impl FnMut(&Lineage) -> Option<T>,
    ) -> Result<T> {
        let mut changes = self.monitor.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = check(&self.monitor.lineage()) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    waited: waited.to_owned(),
                    timeout: self.timeout,
                    output: self.output.tail(TAIL_LINES),
                });
            }
        }
    }

    /// The error for a generation that ended while the harness waited for something else.
    fn ended(&self, generation: &Generation, waited: &str) -> Error {
        use std::os::unix::process::ExitStatusExt;
        let status = match generation.status() {
            Some(status) if status.signal() == Some(Signal::SIGHUP as i32) => {
                format!("{status}: it does not handle SIGHUP; was graceful installed?")
            }
            Some(status) => status.to_string(),
            None => "reaped by its parent".to_owned(),
        };
        Error::Exited {
            pid: generation.pid(),
            status,
            waited: waited.to_owned(),
            output: self.output.tail(TAIL_LINES),
        }
    }

    /// Once the server failed to start: kills what is left of it and waits briefly for its
    /// output to end, so that the error shows its last lines.
    async fn last_words(&self) -> String {
        process::kill_group(self.pgid);
        let mut changes = self.output.subscribe();
        let _ = tokio::time::timeout(LAST_WORDS, async {
            while !self.output.is_closed() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.output.tail(TAIL_LINES)
    }
}

/// How many times a dropped harness kills its group and looks for successors still starting.
const KILL_ROUNDS: usize = 5;
/// The pause between two of those rounds.
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(20);

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // A successor still starting leads a group of its own, with whatever it started. One
        // that was starting as the group was killed may still join the dying group when it
        // gets ready, or be missed by a scan made while it execs: so kill and scan again, at
        // least twice, until a round finds nothing new.
        let mut starting = Vec::new();
        for round in 0..KILL_ROUNDS {
            process::kill_group(self.pgid);
            let found: Vec<u32> = sys::starting_successors(self.pgid)
                .into_iter()
                .filter(|pgid| !starting.contains(pgid))
                .collect();
            for &pgid in &found {
                process::kill_group(pgid);
            }
            if round > 0 && found.is_empty() {
                break;
            }
            starting.extend(found);
            std::thread::sleep(KILL_ROUND_PAUSE);
        }
        process::reap_group(self.pgid, REAP);
        for pgid in starting {
            process::reap_group(pgid, REAP);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- what {} wrote (all generations) -----\n{}-----",
                self.executable.display(),
                self.output.text()
            );
        }
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lineage = self.monitor.lineage();
        f.debug_struct("Harness")
            .field("executable", &self.executable)
            .field("addr", &self.addr)
            .field("pid", &lineage.current)
            .field("generations", &lineage.generations.len())
            .finish_non_exhaustive()
    }
}

/// Runs blocking work (fork, waiting on the link) off the runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::io("a blocking task of the harness failed", io::Error::other(e)))
}
