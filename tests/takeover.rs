//! Takeover without a parent, with real processes: a second `http-server --takeover PATH`,
//! which the running one did not start, takes its sockets over the control socket and serves;
//! the first one drains and exits. A second process that dies or hangs before it is ready, or
//! during the probation, leaves (or gives back) the service to the first; one transition at a
//! time; only the same user.
//!
//! Each server runs in a process group of its own (`graceful::testing::process::Group`),
//! killed and reaped when the test ends, however it ends. The peers that play a failing new
//! process are this test binary, running the same test again (`playing_peer`).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use graceful::testing::Load;
use graceful::testing::process::{self, Group, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const SERVER: &str = env!("CARGO_BIN_EXE_http-server");
const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
/// How long any one step may take before the test fails, saying what it waited for.
const STEP: Duration = Duration::from_secs(30);
/// Set in a run of this binary that plays a new process (see [`playing_peer`]).
const PEER: &str = "GRACEFUL_TEST_TAKEOVER_PEER";
const PEER_SOCKET: &str = "GRACEFUL_TEST_TAKEOVER_SOCKET";

/// A process under test: its group, its stdout lines as they come, its stderr in a file.
struct Proc {
    name: String,
    group: Group,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, command: &mut Command) -> Proc {
        let stderr = dir.join(format!("{name}.err"));
        let mut group = Group::spawn(
            command
                .env("RUST_LOG", "info,graceful_core=debug")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        )
        .unwrap_or_else(|err| panic!("start {name}: {err}"));
        let stdout = group.leader().stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            group,
            lines,
            stderr,
        }
    }

    /// An `http-server` with `args`.
    fn server(dir: &Path, name: &str, args: &[&str]) -> Proc {
        Proc::spawn(dir, name, Command::new(SERVER).args(args))
    }

    fn pid(&self) -> u32 {
        self.group.pgid()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for a line on stdout that starts with `prefix`; returns it.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "waited {STEP:?} for {} (pid {}) to print {prefix:?}; its stderr:\n{}",
                    self.name,
                    self.pid(),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits until its stderr contains `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + STEP;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "waited {STEP:?} for {} (pid {}) to log {text:?}; its stderr:\n{}",
                self.name,
                self.pid(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until it has exited; reaps it.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.group.leader().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "waited {STEP:?} for {} (pid {}) to exit; its stderr:\n{}",
                self.name,
                self.pid(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's address, from its `ready … addr=…` line.
    fn wait_ready(&self, generation: u64) -> SocketAddr {
        let line = self.wait_line("ready ");
        assert!(
            line.starts_with(&format!(
                "ready pid={} generation={generation} ",
                self.pid()
            )),
            "{line}"
        );
        line.rsplit("addr=").next().unwrap().parse().unwrap()
    }
}

/// `GET /` on a new connection; the pid that answered.
async fn hello(addr: SocketAddr) -> u32 {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer from {addr} within {STEP:?}"))
        .unwrap_or_else(|err| panic!("GET / on {addr}: {err}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .rsplit("hello from ")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a hello: {answer}"))
}

/// Asks for a takeover on `socket` from this process; returns the connection and the answer
/// line. Reading the line alone leaves the descriptors that follow it unread.
fn ask(socket: &Path) -> (UnixStream, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.write_all(b"takeover\n").unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    (stream, String::from_utf8(line).unwrap())
}

/// This binary, running `test` again as a new process that asks for a takeover and then hangs
/// (until it is killed): `peer: <answer line>` on stdout once answered.
fn peer_command(test: &str, socket: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(PEER, "1")
        .env(PEER_SOCKET, socket);
    command
}

/// In a run of this binary started by [`peer_command`]: plays the new process (asks for a
/// takeover, prints the answer, hangs until killed) and returns true. False in a test run.
fn playing_peer() -> bool {
    let Some(socket) = std::env::var_os(PEER_SOCKET).filter(|_| std::env::var_os(PEER).is_some())
    else {
        return false;
    };
    let (_stream, line) = ask(Path::new(&socket));
    // On a line of its own: the test harness's own output has no newline yet.
    println!("\npeer: {line}");
    std::thread::sleep(STEP * 4);
    true
}

/// Says that `test` was skipped and why, on stderr itself, so that the test runner's output
/// shows it without `--nocapture`.
fn skipped(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

fn control_socket(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("control.sock");
    let text = path.to_str().unwrap().to_owned();
    (path, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_without_a_refused_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_, socket) = control_socket(dir.path());
    // One command line for every process: the first finds nothing at the control socket and
    // binds (`--takeover` implies `--control-socket`); each later one takes over.
    let common = [
        "--addr",
        "127.0.0.1:0",
        "--probation",
        "1s",
        "--drain-timeout",
        "5s",
        "--takeover",
        &socket,
    ];
    let mut a = Proc::server(dir.path(), "a", &common);
    let addr = a.wait_ready(1);
    let load = Load::none()
        .short_http(2)
        .keep_alive_http(2)
        .answers_name_pid()
        .start(addr);
    load.warmed_up().await;

    let b = Proc::server(dir.path(), "b", &common);
    assert_eq!(b.wait_ready(2), addr, "the same listener, taken over");
    a.wait_line(&format!("stopped pid={} successor={}", a.pid(), b.pid()));
    a.wait_line(&format!("exited pid={}", a.pid()));
    assert!(a.wait_exit().success(), "{}", a.stderr());
    let answered_by_b = tokio::time::timeout(
        STEP,
        load.live()
            .wait_until(|live| live.pids().contains(&b.pid())),
    )
    .await;
    assert!(
        answered_by_b.is_ok(),
        "the load never reached pid {}",
        b.pid()
    );
    let report = load.stop().await;
    assert_eq!(
        report.failures(),
        0,
        "{}: {:?}",
        report.failures_by_kind(),
        report.failure_samples().collect::<Vec<_>>()
    );
    assert!(report.pids().contains(&a.pid()) && report.pids().contains(&b.pid()));
    assert_eq!(hello(addr).await, b.pid());

    // It answers on the control socket it took over: the next one takes over from it.
    let c = Proc::server(dir.path(), "c", &common);
    assert_eq!(c.wait_ready(3), addr);
    assert_eq!(hello(addr).await, c.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_killed_during_its_probation_gives_the_service_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_, socket) = control_socket(dir.path());
    let a = Proc::server(
        dir.path(),
        "a",
        &[
            "--addr",
            "127.0.0.1:0",
            "--control-socket",
            &socket,
            "--probation",
            "60s",
        ],
    );
    let addr = a.wait_ready(1);
    let mut b = Proc::server(
        dir.path(),
        "b",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    b.wait_ready(2);
    assert_eq!(hello(addr).await, b.pid());

    process::signal(b.pid(), Signal::SIGKILL).unwrap();
    b.wait_exit();
    // Connections wait in the shared queue until the old process accepts again.
    assert_eq!(hello(addr).await, a.pid(), "the old process serves again");
    a.wait_log("rolled back");

    // Back to ready: another process may take over.
    let c = Proc::server(
        dir.path(),
        "c",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    c.wait_ready(2);
    assert_eq!(hello(addr).await, c.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_fails_before_ready_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_, socket) = control_socket(dir.path());
    let a = Proc::server(
        dir.path(),
        "a",
        &["--addr", "127.0.0.1:0", "--control-socket", &socket],
    );
    let addr = a.wait_ready(1);

    // It takes the sockets over, then fails on its own command line: it asks for a socket
    // that was not handed over, and exits before ready.
    let mut b = Proc::server(
        dir.path(),
        "b",
        &["--fd-name", "nosuch", "--takeover", &socket],
    );
    let status = b.wait_exit();
    assert!(!status.success(), "{}", b.stderr());
    assert!(
        b.stderr().contains("no socket was passed under that name"),
        "{}",
        b.stderr()
    );
    a.wait_log(&format!(
        "the takeover of pid {} by pid {} failed",
        a.pid(),
        b.pid()
    ));
    assert_eq!(hello(addr).await, a.pid());

    // Killed with SIGKILL after it got the sockets, while it warms up.
    let mut slow = Proc::server(
        dir.path(),
        "slow",
        &[
            "--addr",
            "127.0.0.1:0",
            "--takeover",
            &socket,
            "--ready-delay",
            "60s",
        ],
    );
    slow.wait_log("took over the sockets of the running server");
    assert_eq!(
        hello(addr).await,
        a.pid(),
        "the old process serves meanwhile"
    );
    process::signal(slow.pid(), Signal::SIGKILL).unwrap();
    slow.wait_exit();
    a.wait_log(&format!("by pid {} failed: it exited", slow.pid()));
    assert_eq!(hello(addr).await, a.pid());

    // Afterwards a takeover works: nothing was left in flight.
    let c = Proc::server(
        dir.path(),
        "c",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    c.wait_ready(2);
    assert_eq!(hello(addr).await, c.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_too_slow_to_be_ready_is_given_up_on_and_must_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (path, socket) = control_socket(dir.path());
    let a = Proc::server(
        dir.path(),
        "a",
        &[
            "--addr",
            "127.0.0.1:0",
            "--control-socket",
            &socket,
            "--upgrade-timeout",
            "1s",
        ],
    );
    let addr = a.wait_ready(1);
    // Ready after 3 s; the old one gives up after 1 s and serves on. The slow one's `ready`
    // then finds nobody to yield, and it exits instead of serving beside the old one.
    let mut slow = Proc::server(
        dir.path(),
        "slow",
        &[
            "--addr",
            "127.0.0.1:0",
            "--takeover",
            &socket,
            "--ready-delay",
            "3s",
        ],
    );
    a.wait_log(&format!(
        "by pid {} failed: it was not ready within 1s",
        slow.pid()
    ));
    assert_eq!(hello(addr).await, a.pid());
    assert!(!slow.wait_exit().success(), "{}", slow.stderr());
    assert!(
        slow.stderr()
            .contains(&format!("the server (pid {}) did not yield", a.pid())),
        "{}",
        slow.stderr()
    );
    assert_eq!(hello(addr).await, a.pid());

    // The same with a bare connection: it is closed, and a late `ready` gets no answer.
    let (mut stream, line) = ask(&path);
    assert!(line.starts_with(&format!("ok {} 1 2", a.pid())), "{line}");
    // The old process accepts meanwhile.
    assert_eq!(hello(addr).await, a.pid());
    // It gives up and closes the connection: a late `ready` is answered by nothing.
    let mut rest = Vec::new();
    let closed = tokio::task::spawn_blocking(move || {
        let _ = stream.read_to_end(&mut rest);
        stream.write_all(b"ready\n").ok();
        let mut more = [0u8; 64];
        stream.read(&mut more).unwrap_or(0)
    })
    .await
    .unwrap();
    assert_eq!(closed, 0, "no `yielded` after the timeout");
    a.wait_log(&format!(
        "by pid {} failed: it was not ready",
        std::process::id()
    ));
    assert_eq!(hello(addr).await, a.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_or_a_second_takeover_during_a_takeover_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, socket) = control_socket(dir.path());
    let a = Proc::server(
        dir.path(),
        "a",
        &["--addr", "127.0.0.1:0", "--control-socket", &socket],
    );
    let addr = a.wait_ready(1);
    let (stream, line) = ask(&path);
    assert!(line.starts_with("ok "), "{line}");
    let in_progress = format!(
        "an upgrade is already in progress in this process (pid {})",
        a.pid()
    );

    let upgrade = Command::new(SERVER)
        .args(["upgrade", "--control-socket", &socket, "--timeout", "30s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&upgrade.stderr);
    assert_eq!(upgrade.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&in_progress), "{stderr}");

    let mut b = Proc::server(
        dir.path(),
        "b",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    assert!(!b.wait_exit().success());
    assert!(
        b.stderr().contains(&format!("it refused: {in_progress}")),
        "{}",
        b.stderr()
    );
    assert_eq!(hello(addr).await, a.pid());

    // The first one gives up: the next takeover goes through.
    drop(stream);
    a.wait_log("before it was ready");
    let c = Proc::server(
        dir.path(),
        "c",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    c.wait_ready(2);
    assert_eq!(hello(addr).await, c.pid());
}

#[test]
fn another_user_may_not_take_over_nor_be_taken_over_from() {
    const TEST: &str = "another_user_may_not_take_over_nor_be_taken_over_from";
    if playing_peer() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        skipped(TEST, "needs root to run a process as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, socket) = control_socket(dir.path());
    let a = Proc::server(
        dir.path(),
        "a",
        &["--addr", "127.0.0.1:0", "--control-socket", &socket],
    );
    a.wait_ready(1);
    // Loosened by hand: only the uid check stands between another user and the sockets.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut command = peer_command(TEST, &path);
    command.uid(65534).gid(65534);
    let mut peer = Proc::spawn(dir.path(), "nobody", &mut command);
    let line = peer.wait_line("peer: ");
    assert!(
        line.contains(&format!(
            "peer: error pid {} (uid 65534) may not take over from pid {}",
            peer.pid(),
            a.pid()
        )),
        "{line}"
    );
    process::signal(peer.pid(), Signal::SIGKILL).unwrap();
    peer.wait_exit();

    // The other way round: a new process does not adopt the sockets of another user's server.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (path, socket) = control_socket(dir.path());
    let args = ["--addr", "127.0.0.1:0", "--control-socket", &socket];
    let nobody = Proc::spawn(
        dir.path(),
        "nobody",
        Command::new(SERVER).args(args).uid(65534).gid(65534),
    );
    nobody.wait_ready(1);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut other = Proc::spawn(
        dir.path(),
        "other",
        Command::new(SERVER)
            .args(["--addr", "127.0.0.1:0", "--takeover", &socket])
            .uid(65533)
            .gid(65533),
    );
    assert!(!other.wait_exit().success());
    assert!(
        other.stderr().contains(
            "it runs as uid 65534; only a server of uid 65533 or root is taken over from"
        ),
        "{}",
        other.stderr()
    );
}

/// Plays the old server by hand, on a socket of this test's: it hands a listener over, hears
/// `ready`, and then yields, or closes the connection instead (as an old server that gave up
/// at that very moment would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_process_serves_only_once_the_old_one_has_yielded() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;

    for yields in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (path, socket) = control_socket(dir.path());
        let control = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut b = Proc::server(
            dir.path(),
            "b",
            &["--addr", &addr.to_string(), "--takeover", &socket],
        );
        let (mut conn, _) = tokio::task::spawn_blocking(move || control.accept())
            .await
            .unwrap()
            .unwrap();
        conn.set_read_timeout(Some(STEP)).unwrap();
        let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "takeover");
        let us = std::process::id();
        conn.write_all(format!("ok {us} 7 1\n").as_bytes()).unwrap();
        let name = format!("tcp/127.0.0.1%3A{}", addr.port());
        let mut frame = vec![5, 0, 0, 1];
        frame.extend_from_slice(&(name.len() as u32 + 1).to_be_bytes());
        frame.push(name.len() as u8);
        frame.extend_from_slice(name.as_bytes());
        let fds = [tcp.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        // What it runs (`build …`) may come first: an old server of this build ignores it.
        let ready = lines
            .by_ref()
            .map(|line| line.unwrap())
            .find(|line| !line.starts_with("build "));
        assert_eq!(ready.as_deref(), Some("ready"));
        // The listener is its own now; ours must not accept.
        drop(tcp);
        if yields {
            conn.write_all(format!("yielded {us}\n").as_bytes())
                .unwrap();
            assert_eq!(b.wait_ready(8), addr);
            assert_eq!(hello(addr).await, b.pid());
        } else {
            drop((lines, conn));
            assert!(!b.wait_exit().success(), "{}", b.stderr());
            assert!(
                b.stderr().contains(&format!(
                    "the server (pid {us}) did not yield: it closed the connection without \
                     yielding"
                )),
                "{}",
                b.stderr()
            );
        }
    }
}

#[test]
fn a_process_in_another_pid_namespace_is_refused() {
    const TEST: &str = "a_process_in_another_pid_namespace_is_refused";
    if playing_peer() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { nix::libc::geteuid() } == 0;
    if !root || Command::new("unshare").arg("--version").output().is_err() {
        skipped(TEST, "needs root and unshare(1) for a pid namespace");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, socket) = control_socket(dir.path());
    // The server in a pid namespace of its own, where the asking process's pid is not seen.
    let a = Proc::spawn(
        dir.path(),
        "a",
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--", SERVER])
            .args(["--addr", "127.0.0.1:0", "--control-socket", &socket]),
    );
    a.wait_line("ready ");
    let mut peer = Proc::spawn(dir.path(), "peer", &mut peer_command(TEST, &path));
    let line = peer.wait_line("peer: ");
    assert!(
        line.contains("error the takeover of pid") && line.contains("another pid namespace"),
        "{line}"
    );
    process::signal(peer.pid(), Signal::SIGKILL).unwrap();
    peer.wait_exit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_during_an_upgrade_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, socket) = control_socket(dir.path());
    // Every generation takes 2 s to be ready: the upgrade's new process too.
    let a = Proc::server(
        dir.path(),
        "a",
        &[
            "--addr",
            "127.0.0.1:0",
            "--control-socket",
            &socket,
            "--ready-delay",
            "2s",
        ],
    );
    let addr = a.wait_ready(1);
    let upgrade = Command::new(SERVER)
        .args(["upgrade", "--control-socket", &socket, "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_log("new generation started; waiting until it is ready");
    let mut b = Proc::server(
        dir.path(),
        "b",
        &["--addr", "127.0.0.1:0", "--takeover", &socket],
    );
    assert!(!b.wait_exit().success());
    let in_progress = format!(
        "it refused: an upgrade is already in progress in this process (pid {})",
        a.pid()
    );
    assert!(b.stderr().contains(&in_progress), "{}", b.stderr());
    let upgraded = tokio::task::spawn_blocking(move || upgrade.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        upgraded.status.success(),
        "{}",
        String::from_utf8_lossy(&upgraded.stderr)
    );
    let new = String::from_utf8_lossy(&upgraded.stdout);
    // `upgraded pid=… generation=… version=… build=…`
    let new: u32 = new
        .trim()
        .strip_prefix("upgraded pid=")
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(hello(addr).await, new);
    // The upgrade's new process joined the old one's group at ready: the group's end ends it.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_takeover_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (_, socket) = control_socket(dir.path());
    let mut a = Proc::server(
        dir.path(),
        "a",
        &["--addr", "127.0.0.1:0", "--control-socket", &socket],
    );
    a.wait_ready(1);
    let mut slow = Proc::server(
        dir.path(),
        "slow",
        &[
            "--addr",
            "127.0.0.1:0",
            "--takeover",
            &socket,
            "--ready-delay",
            "60s",
        ],
    );
    a.wait_log(&format!("successor_pid={}", slow.pid()));
    process::signal(a.pid(), Signal::SIGTERM).unwrap();
    // At once: neither at the upgrade timeout (60 s) nor when the new process is ready.
    assert!(a.wait_exit().success(), "{}", a.stderr());
    a.wait_log("takeover cancelled by the stop");
    // It got nothing to yield to; warm in 60 s, it would exit then ("did not yield").
    process::signal(slow.pid(), Signal::SIGKILL).unwrap();
    slow.wait_exit();
}

/// A takeover hands over more than the sockets, as an upgrade does: `echo-server`'s line
/// sessions move to the process that took over, on their own connections, and its line count
/// (state) goes on; a long-lived load sees no failure and no reconnect. With `--handoff off`
/// the sessions are closed at a line boundary instead, and reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_hands_over_sessions_and_state() {
    for handoff in ["on", "off"] {
        let dir = tempfile::tempdir().unwrap();
        let (_, socket) = control_socket(dir.path());
        let common = [
            "--addr",
            "127.0.0.1:0",
            "--probation",
            "0s",
            "--handoff",
            handoff,
            "--takeover",
            &socket,
        ];
        let echo =
            |name: &str| Proc::spawn(dir.path(), name, Command::new(ECHO_SERVER).args(common));
        let mut a = echo("a");
        let addr = a.wait_ready(1);
        let load = Load::none().long_lines(8).answers_name_pid().start(addr);
        load.warmed_up().await;
        // One session of our own, to see the count and the pid on one connection.
        let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = tokio::io::BufReader::new(conn);
        let mut ask = async |line: &str| {
            conn.get_mut()
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            tokio::time::timeout(STEP, conn.read_line(&mut answer))
                .await
                .expect("an answer in time")
                .unwrap();
            answer
        };
        let before = ask("count").await;
        assert!(before.ends_with(&format!(" {}\n", a.pid())), "{before}");

        let b = echo("b");
        assert_eq!(b.wait_ready(2), addr);
        a.wait_line(&format!("exited pid={}", a.pid()));
        assert!(a.wait_exit().success(), "{}", a.stderr());
        let report = load.stop().await;
        assert_eq!(report.failures(), 0, "{report}");
        if handoff == "on" {
            assert_eq!(
                report.reconnects(),
                0,
                "sessions moved with the takeover: {report}"
            );
            let after = ask("count").await;
            let counted: u64 = before.split(' ').nth(1).unwrap().parse().unwrap();
            let now: Vec<&str> = after.trim().split(' ').collect();
            assert_eq!(
                now[2],
                b.pid().to_string(),
                "answered by the new process: {after}"
            );
            assert!(
                now[1].parse::<u64>().unwrap() > counted,
                "the count went on from {counted}: {after}"
            );
        } else {
            assert!(report.reconnects() >= 8, "{report}");
        }
    }
}
