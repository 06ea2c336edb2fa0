//! systemd's file descriptor store, with a real systemd: `examples/systemd/http-server-fdstore.service`
//! runs under a systemd user manager (`systemd --user`) while clients keep connecting, and is
//! restarted (`systemctl --user restart`) and then crashed (SIGKILL to its main process,
//! `Restart=on-failure`). The socket waits in the manager's store meanwhile, so no connection
//! is refused: those that arrive while no process runs wait in its queue and are answered by
//! the next process. Then `systemctl --user stop` empties the store and the address refuses.
//!
//! The manager runs as it would on a machine without systemd as PID 1 (a CI runner, a
//! container): in its own pid, mount and cgroup namespaces, under a cgroup of its own, with a
//! private `/run/systemd/system` so that it believes the system was booted with systemd. That
//! needs root, `unshare`, `nsenter`, a cgroup2 hierarchy and systemd (Debian package `systemd`;
//! `.ci/run` installs it); without them the test says `SKIPPED:` and why, and passes.
//!
//! What it prints (`--nocapture`): how many exchanges started while each restart ran, the
//! longest wait among them, and the refused count.
#![cfg(target_os = "linux")]

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use graceful::testing::{Failure, Load, LoadReport};

/// How long any one step may take before the test fails, saying what it waited for.
const STEP: Duration = Duration::from_secs(30);
const SERVER: &str = env!("CARGO_BIN_EXE_http-server");
const UNIT: &str = "http-server-fdstore.service";
const UNIT_FILE: &str = include_str!("../examples/systemd/http-server-fdstore.service");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_crashes_under_systemd_refuse_no_connection() {
    let manager = match UserManager::start() {
        Ok(manager) => manager,
        Err(why) => {
            // Straight to stderr, past the test harness's capture, so that the skip shows in
            // `cargo test`'s output although the test passes.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: restarts_and_crashes_under_systemd_refuse_no_connection: no systemd \
                 user manager can run here: {why}"
            );
            return;
        }
    };
    let addr = free_port();
    manager.install_unit(addr);
    manager
        .systemctl(&["start", UNIT])
        .await
        .expect("the unit starts");
    let first = manager.main_pid().await;
    assert_eq!(
        manager.property("NFileDescriptorStore").await,
        "1",
        "the listener is in the store"
    );

    // A restart: the old process drains and exits, then the new one starts and gets the stored
    // socket back. Nothing may fail: the old process finishes what it accepted.
    let (restart, second) = through(addr, async {
        manager
            .systemctl(&["restart", UNIT])
            .await
            .expect("the restart succeeds");
        manager.main_pid().await
    })
    .await;
    assert_ne!(second, first, "a new main process");
    eprintln!(
        "{}",
        restart.summary("systemctl --user restart", &manager.version)
    );
    assert_eq!(
        restart.report.failures(),
        0,
        "failures: {}; samples: {:?}\n{}",
        restart.report.failures_by_kind(),
        restart.report.failure_samples().collect::<Vec<_>>(),
        manager.journal().await
    );

    // A crash: SIGKILL, and Restart=on-failure starts a new process. What the killed process
    // had accepted dies with it; nothing is refused, and what arrives meanwhile waits in the
    // stored queue.
    let (crash, third) = manager.crash(addr, second).await;
    assert_eq!(manager.property("NRestarts").await, "1");
    assert_eq!(
        manager.property("NFileDescriptorStore").await,
        "1",
        "the crash kept the socket in the store"
    );

    // An upgrade (`systemctl reload`), then a crash of the new generation, which is the main
    // process now but not systemd's own child: the store still brings the socket back.
    let (reload, fourth) = through(addr, async {
        manager
            .systemctl(&["reload", UNIT])
            .await
            .expect("the reload succeeds");
        manager.main_pid().await
    })
    .await;
    assert_ne!(fourth, third, "the upgrade made a new main process");
    eprintln!(
        "{}",
        reload.summary("systemctl --user reload", &manager.version)
    );
    assert_eq!(
        reload.report.failures(),
        0,
        "failures: {}; samples: {:?}",
        reload.report.failures_by_kind(),
        reload.report.failure_samples().collect::<Vec<_>>(),
    );
    // The replaced generation, on probation and then draining, would take the service back if
    // its successor died now: wait until it has gone.
    manager.wait_alone().await;
    let (upgraded_crash, fifth) = manager.crash(addr, fourth).await;
    assert_eq!(manager.property("NRestarts").await, "2");
    assert_eq!(manager.property("NFileDescriptorStore").await, "1");

    for (phase, pid) in [
        (&restart, first),
        (&restart, second),
        (&crash, third),
        (&reload, fourth),
        (&upgraded_crash, fifth),
    ] {
        assert!(
            phase.report.pids().contains(&pid),
            "pid {pid} answered nobody"
        );
    }

    // A stop is not a restart: the manager closes the store, and the address refuses.
    manager.systemctl(&["stop", UNIT]).await.expect("the stop");
    assert_eq!(manager.property("NFileDescriptorStore").await, "0");
    let refused = TcpStream::connect(addr).expect_err("nothing listens after a stop");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// What the clients saw while something happened to the service.
struct Phase {
    report: LoadReport<()>,
    /// From the load's start: when the event began, and when the new process first answered.
    began: Duration,
    ended: Duration,
}

/// Runs clients against `addr` while `event` runs, until the pid it returns has answered one
/// of them; then stops them.
async fn through(addr: SocketAddr, event: impl Future<Output = u32>) -> (Phase, u32) {
    // The load's own clock starts within `start`; this one a moment before, close enough to
    // tell which exchanges started during the event.
    let epoch = Instant::now();
    let running = Load::none()
        .short_http(4)
        .keep_alive_http(2)
        .answers_name_pid()
        .record_timings()
        .request_timeout(STEP)
        .start(addr);
    running.warmed_up().await;
    let began = epoch.elapsed();
    let pid = event.await;
    let live = running.live().clone();
    tokio::time::timeout(STEP, async {
        while !live.pids().contains(&pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer from pid {pid} within {STEP:?}"));
    let ended = epoch.elapsed();
    let report = running.stop().await;
    (
        Phase {
            report,
            began,
            ended,
        },
        pid,
    )
}

impl Phase {
    /// How many exchanges started between the event's start and the new process's first
    /// answer, and the longest of them.
    fn during(&self) -> (usize, Duration) {
        let (from, to) = (self.began.as_micros() as u64, self.ended.as_micros() as u64);
        let inside: Vec<u64> = self
            .report
            .timings()
            .iter()
            .filter(|t| (from..=to).contains(&t.start_us))
            .map(|t| t.latency_us)
            .collect();
        let longest = inside.iter().copied().max().unwrap_or(0);
        (inside.len(), Duration::from_micros(longest))
    }

    fn summary(&self, event: &str, version: &str) -> String {
        let (n, longest) = self.during();
        format!(
            "fd store, {event} ({version}): {n} exchanges started between the event and the new \
             process's first answer (longest {longest:.0?}); in all {} answered, {} failed \
             ({}), {} refused",
            self.report.succeeded(),
            self.report.failures(),
            self.report.failures_by_kind(),
            self.report.failures_of(Failure::Refused),
        )
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `systemd --user` in its own pid, mount and cgroup namespaces. Dropping it kills the
/// namespace's first process, which ends every process in it, and removes its cgroup.
struct UserManager {
    dir: tempfile::TempDir,
    /// `unshare`, in the host's pid namespace.
    unshare: Child,
    /// The namespace's first process (a shell waiting for the manager), as the host sees it.
    init: u32,
    cgroup: PathBuf,
    version: String,
}

impl UserManager {
    /// Starts the manager; `Err` says why it cannot run here.
    fn start() -> Result<UserManager, String> {
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { nix::libc::geteuid() } != 0 {
            return Err("the namespaces need root".into());
        }
        for tool in ["unshare", "nsenter", "systemctl", "findmnt", "mount"] {
            if find_tool(tool).is_none() {
                return Err(format!("{tool} is not installed"));
            }
        }
        let systemd = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("systemd is not installed (Debian package `systemd`; .ci/run installs it)")?;
        let version = Command::new("systemctl")
            .arg("--version")
            .output()
            .map_err(|e| format!("systemctl --version: {e}"))?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let found = Command::new("findmnt")
            .args(["-t", "cgroup2", "-n", "-o", "TARGET"])
            .output()
            .map_err(|e| format!("findmnt: {e}"))?;
        let hierarchy = String::from_utf8_lossy(&found.stdout)
            .lines()
            .next()
            .map(PathBuf::from)
            .ok_or("no cgroup2 hierarchy is mounted")?;

        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cgroup = hierarchy.join(format!(
            "graceful-fdstore-test-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let runtime = dir.path().join("run");
        std::fs::create_dir_all(dir.path().join("config/systemd/user"))
            .and_then(|()| std::fs::create_dir(&runtime))
            .map_err(|e| e.to_string())?;
        // In the namespaces: a cgroup2 hierarchy whose root is `cgroup` (made below), and
        // /run/systemd/system, by which systemd tells it was booted with systemd. The manager
        // runs as a child: as a pid namespace's first process, `systemd --user` exits.
        let inner = format!(
            "set -e\n\
             mount -t cgroup2 none /sys/fs/cgroup\n\
             mkdir -p /run/systemd\n\
             mount -t tmpfs tmpfs /run/systemd\n\
             mkdir /run/systemd/system\n\
             {} --user </dev/null &\n\
             wait\n",
            systemd.display()
        );
        let log =
            std::fs::File::create(dir.path().join("manager.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --mount --cgroup --mount-proc --propagation private /bin/sh -c "$2""#)
            .arg("sh")
            .arg(&cgroup)
            .arg(inner)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("SYSTEMD_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        std::fs::create_dir(&cgroup).map_err(|e| format!("creating {}: {e}", cgroup.display()))?;
        let unshare = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(format!("spawning unshare: {err}"));
            }
        };
        let mut manager = UserManager {
            init: 0,
            unshare,
            cgroup,
            version,
            dir,
        };
        manager.init = manager.wait_init()?;
        manager.wait_running()?;
        Ok(manager)
    }

    /// The host pid of the namespace's first process: `unshare`'s only child.
    fn wait_init(&mut self) -> Result<u32, String> {
        let pid = self.unshare.id();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Err(format!("unshare exited ({status}): {}", self.log()));
            }
            let found = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(init) = found.split_whitespace().next() {
                return init.parse().map_err(|e| format!("{children}: {e}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("unshare started no process within {STEP:?}"))
    }

    fn wait_running(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STEP;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Err(format!(
                    "the namespaces or the manager ended ({status}): {}",
                    self.log()
                ));
            }
            let out = self.systemctl_command(&["is-system-running"]).output();
            if let Ok(out) = out {
                last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if last == "running" || last == "degraded" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the manager was not running within {STEP:?} (last state {last:?}): {}",
            self.log()
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// The example unit, with the test's binary and port, and without `DynamicUser=` (a user
    /// manager cannot switch users).
    fn install_unit(&self, addr: SocketAddr) {
        let mut unit = UNIT_FILE.to_owned();
        for (from, to) in [
            ("/usr/local/bin/http-server", SERVER.to_owned()),
            ("127.0.0.1:8080", addr.to_string()),
            ("DynamicUser=yes\n", String::new()),
        ] {
            assert!(unit.contains(from), "the example unit has no {from:?}");
            unit = unit.replace(from, &to);
        }
        let path = self.dir.path().join("config/systemd/user").join(UNIT);
        std::fs::write(path, unit).unwrap();
    }

    fn systemctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args([
                "-t",
                &self.init.to_string(),
                "-m",
                "-p",
                "systemctl",
                "--user",
            ])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .stdin(Stdio::null());
        command
    }

    /// Runs `systemctl --user ARGS` in the namespaces; `Err` with its output if it fails.
    async fn systemctl(&self, args: &[&str]) -> Result<Output, String> {
        let command = tokio::process::Command::from(self.systemctl_command(args));
        let out = run_bounded(command, args).await;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "systemctl --user {}: {}\n{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.journal().await
            ))
        }
    }

    async fn property(&self, name: &str) -> String {
        let out = self
            .systemctl(&["show", "--value", "-p", name, UNIT])
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    async fn main_pid(&self) -> u32 {
        let pid = self.property("MainPID").await;
        pid.parse()
            .ok()
            .filter(|&pid| pid != 0)
            .unwrap_or_else(|| panic!("MainPID={pid:?}"))
    }

    /// SIGKILL to the main process `old`, under load, until the process `Restart=` starts
    /// answers. At most one exchange per client is in flight in the killed process, each reset
    /// or cut; no other failure is allowed.
    async fn crash(&self, addr: SocketAddr, old: u32) -> (Phase, u32) {
        let (crash, new) = through(addr, async {
            self.systemctl(&["kill", "--signal=KILL", "--kill-who=main", UNIT])
                .await
                .expect("the kill is sent");
            self.wait_restarted(old).await
        })
        .await;
        eprintln!(
            "{}",
            crash.summary(&format!("SIGKILL to main process {old}"), &self.version)
        );
        let report = &crash.report;
        let lost_in_flight = report.failures_of(Failure::Reset)
            + report.failures_of(Failure::Empty)
            + report.failures_of(Failure::Torn);
        assert!(
            report.failures_of(Failure::Refused) == 0
                && report.failures() == lost_in_flight
                && lost_in_flight <= report.clients() as u64,
            "failures: {}; samples: {:?}\n{}",
            report.failures_by_kind(),
            report.failure_samples().collect::<Vec<_>>(),
            self.journal().await
        );
        (crash, new)
    }

    /// Waits until the unit's cgroup holds one process: generations replaced by an upgrade
    /// have exited.
    async fn wait_alone(&self) {
        let procs = self
            .cgroup
            .join("app.slice")
            .join(UNIT)
            .join("cgroup.procs");
        let deadline = Instant::now() + STEP;
        loop {
            let listed = std::fs::read_to_string(&procs).unwrap_or_default();
            if listed.lines().count() == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still lists {listed:?} after {STEP:?}",
                procs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the unit is active again with a main process other than `old`.
    async fn wait_restarted(&self, old: u32) -> u32 {
        let deadline = Instant::now() + STEP;
        loop {
            let pid: u32 = self.property("MainPID").await.parse().unwrap_or(0);
            if pid != 0 && pid != old && self.property("ActiveState").await == "active" {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "not restarted within {STEP:?}\n{}",
                self.journal().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the manager said about the unit: `systemctl status` (there is no journal here).
    async fn journal(&self) -> String {
        let command =
            tokio::process::Command::from(self.systemctl_command(&["status", "--no-pager", UNIT]));
        let out = run_bounded(command, &["status"]).await;
        format!(
            "----- systemctl status -----\n{}\n----- manager log -----\n{}",
            String::from_utf8_lossy(&out.stdout),
            self.log()
        )
    }
}

async fn run_bounded(mut command: tokio::process::Command, args: &[&str]) -> Output {
    command.kill_on_drop(true);
    tokio::time::timeout(STEP * 3, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "systemctl --user {} took over {:?}",
                args.join(" "),
                STEP * 3
            )
        })
        .expect("running systemctl")
}

impl Drop for UserManager {
    fn drop(&mut self) {
        // The namespace's first process: its end kills every process in the namespace.
        if self.init != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        remove_cgroup(&self.cgroup);
    }
}

/// Removes a cgroup and the ones under it, deepest first, once their processes have gone.
fn remove_cgroup(cgroup: &Path) {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        if remove_tree(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove the cgroup {}", cgroup.display());
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
