//! Real-process scenarios for graceful-core.
//!
//! A test calls [`scenario`]: in the test process (the orchestrator) that runs the same test
//! again as a fresh process of this test binary, in its own process group; in that process it
//! returns the scenario's context. The scenario builds the process's one `Upgrader`, whose
//! upgrade re-executes the binary with the same arguments, so the new generation runs the same
//! test function and takes the `has_parent()` branch.
//!
//! The orchestrator is a child subreaper: generations orphaned by their parents' exit become its
//! children, so it reaps every process of the group, checks that each exited with status 0, and
//! kills the group if it outlives the deadline. Output of all generations goes to one log that
//! is printed when the test fails.

#![allow(dead_code, unreachable_pub)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const ROLE: &str = "GRACEFUL_TEST_SCENARIO";
const DIR: &str = "GRACEFUL_TEST_DIR";

/// How long a whole scenario (all its generations) may take before it is killed.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a scenario step waits for an event before it fails the test.
pub const STEP: Duration = Duration::from_secs(20);

/// How to start the scenario process.
#[derive(Default)]
pub struct Setup {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Descriptors to place at fd 3, 4, … in the scenario process.
    pub fds: Vec<OwnedFd>,
    /// Start through `sh` so that `LISTEN_PID` can be set to the scenario's own pid.
    pub listen_pid_self: bool,
    /// Run this file instead of the test binary (a copy of it).
    pub executable: Option<PathBuf>,
}

/// What the orchestrator saw.
pub struct Finished {
    pub dir: tempfile::TempDir,
    pub log: String,
}

impl Finished {
    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.dir.path().join(name)).ok()
    }
}

/// The scenario's side: its scratch directory, shared by every generation.
pub struct Ctx {
    pub dir: PathBuf,
}

/// Whether this process is a scenario (one of the generations), not the orchestrator.
pub fn in_scenario() -> bool {
    std::env::var_os(ROLE).is_some() && std::env::var_os(DIR).is_some()
}

/// `None` in the orchestrator (after the scenario ran and passed); `Some` inside the scenario.
pub fn scenario(test: &str, setup: Setup) -> Option<Ctx> {
    if let Some(dir) = std::env::var_os(DIR).filter(|_| std::env::var_os(ROLE).is_some()) {
        init_tracing();
        return Some(Ctx { dir: dir.into() });
    }
    orchestrate(test, setup);
    None
}

/// Like [`scenario`], but hands the finished run back for more assertions.
pub fn scenario_with_result(test: &str, setup: Setup) -> Result<Finished, Ctx> {
    if let Some(dir) = std::env::var_os(DIR).filter(|_| std::env::var_os(ROLE).is_some()) {
        init_tracing();
        return Err(Ctx { dir: dir.into() });
    }
    Ok(orchestrate(test, setup))
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("graceful_core=debug")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn orchestrate(test: &str, setup: Setup) -> Finished {
    become_subreaper();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("log");
    let log = File::create(&log_path).expect("log file");
    let exe = setup
        .executable
        .clone()
        .unwrap_or_else(|| std::env::current_exe().expect("current_exe"));
    let harness_args = [test, "--exact", "--nocapture", "--test-threads=1"];

    let mut cmd = if setup.listen_pid_self {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(&exe)
            .args(harness_args);
        sh
    } else {
        let mut direct = Command::new(&exe);
        direct.args(harness_args);
        direct
    };
    cmd.env(ROLE, "1")
        .env(DIR, dir.path())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    let sources: Vec<RawFd> = setup.fds.iter().map(AsRawFd::as_raw_fd).collect();
    if !sources.is_empty() {
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let base = 3 + sources.len() as RawFd;
                let mut moved = [0; 16];
                for (i, fd) in sources.iter().enumerate() {
                    moved[i] = nix::libc::fcntl(*fd, nix::libc::F_DUPFD_CLOEXEC, base);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in moved[..sources.len()].iter().enumerate() {
                    if nix::libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let leader = cmd.spawn().expect("spawn scenario");
    let pgid = leader.id() as i32;
    drop(setup.fds);

    // Kill the group if it outlives the deadline.
    let (done, timed_out) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if timed_out.recv_timeout(DEADLINE).is_err() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            return true;
        }
        false
    });
    let statuses = reap_group(pgid);
    let _ = done.send(());
    let killed = killer.join().unwrap();
    drop(leader);

    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let failed: Vec<String> = statuses
        .iter()
        .filter(|(_, status)| *status != 0)
        .map(|(pid, status)| format!("pid {pid}: wait status {status:#x}"))
        .collect();
    if killed || !failed.is_empty() || statuses.is_empty() {
        panic!(
            "scenario {test} failed{}; processes: {statuses:?} ({})\n----- log -----\n{log}",
            if killed {
                " (killed at the deadline)"
            } else {
                ""
            },
            failed.join(", "),
        );
    }
    Finished { dir, log }
}

/// Reaps every process of group `pgid`, as they end; returns their wait statuses.
fn reap_group(pgid: i32) -> Vec<(i32, i32)> {
    let mut statuses = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes into a local.
        let pid = unsafe { nix::libc::waitpid(-pgid, &mut status, 0) };
        if pid > 0 {
            statuses.push((pid, status));
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: nobody of the group is left.
        return statuses;
    }
}

fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

impl Ctx {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a fact for the other generations (or the orchestrator) to read.
    pub fn write(&self, name: &str, content: impl AsRef<str>) {
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, content.as_ref()).expect("write fact");
        fs::rename(tmp, self.path(name)).expect("publish fact");
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    /// Which start of the child this is (0, 1, …), counted across generations.
    pub fn next_attempt(&self) -> usize {
        (0..)
            .find(|i| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.path(&format!("attempt-{i}")))
                    .is_ok()
            })
            .unwrap()
    }

    /// Creates a named pipe: one generation blocks reading it until another writes.
    pub fn fifo(&self, name: &str) {
        nix::unistd::mkfifo(
            &self.path(name),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
    }

    /// Writes a line into a named pipe, blocking until a reader opens it.
    pub fn signal(&self, name: &str, line: &str) {
        let mut pipe = fs::OpenOptions::new()
            .write(true)
            .open(self.path(name))
            .expect("open fifo for writing");
        writeln!(pipe, "{line}").expect("write fifo");
    }

    /// Reads a line from a named pipe, blocking until a writer sends it.
    pub fn wait_signal(&self, name: &str) -> String {
        let mut content = String::new();
        File::open(self.path(name))
            .expect("open fifo for reading")
            .read_to_string(&mut content)
            .expect("read fifo");
        content.trim().to_owned()
    }
}

/// The child of a scenario lingers until its parent has exited, as a served process would, so
/// that each test also shows that a child learns of its parent's exit.
pub fn child_finishes(upgrader: &graceful_core::Upgrader) {
    assert!(
        upgrader.parent_exited().wait_timeout(STEP),
        "the parent generation did not exit within {STEP:?}"
    );
}

/// (device, inode) of the object behind a descriptor.
pub fn inode(fd: &impl std::os::fd::AsFd) -> (u64, u64) {
    let stat = nix::sys::stat::fstat(fd.as_fd()).expect("fstat");
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    (stat.st_dev as u64, stat.st_ino as u64)
}

/// Whether O_NONBLOCK is set on the descriptor's open file description.
pub fn nonblocking(fd: &impl std::os::fd::AsFd) -> bool {
    let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
    nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
}

/// The descriptors open in this process, with what /proc says they point to.
pub fn open_fds() -> Vec<(RawFd, PathBuf)> {
    let mut fds = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.unwrap();
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if let Ok(target) = fs::read_link(entry.path()) {
            fds.push((fd, target));
        }
    }
    fds
}

/// Whether a process exists (a zombie counts as existing).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The args this process was started with.
pub fn args() -> Vec<OsString> {
    std::env::args_os().collect()
}
