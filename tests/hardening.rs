//! What hostile testing found, as real processes: a successor that dies after it reported ready
//! is rolled back under load; a deploy can roll back through the control socket; a stop during
//! an upgrade cancels it and kills what the new binary started; a generation whose readiness
//! fails has accepted nothing that it then drops.
#![cfg(target_os = "linux")]

mod support;

use std::path::Path;
use std::time::Duration;

use graceful::DrainOutcome;
use graceful::testing::{Error, Failure, Load};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{STEP, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTP_SERVER: &str = env!("CARGO_BIN_EXE_http-server");
const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
/// The clients of the harness's default load: two short-lived, two keep-alive.
const CLIENTS: u64 = 4;

/// `GET /` on a new connection; returns the pid in `hello from <pid>`.
async fn answered_by(server: &Server) -> u32 {
    let exchange = async {
        let mut conn = TcpStream::connect(server.addr()).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to GET / within {STEP:?}"));
    response
        .rsplit("hello from ")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("not an answer of the server: {response:?}"))
}

/// Waits, for [`STEP`] at most, until `check` holds; `what` says what for when it does not.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {STEP:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` runs: a killed process whose parent has gone is reparented to this test
/// process (the harness makes it a subreaper) and stays a zombie until reaped, which is dead.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|state| state.starts_with('Z'))
    })
}

/// A successor killed right after it reported ready: the old generation, on probation, takes
/// the service back, and the clients under load see no refused or failed request. Without the
/// probation (`--probation 0s`) the old generation has closed its listeners by then, and the
/// clients' connections fail until someone acts.
#[tokio::test]
async fn a_successor_that_dies_after_ready_is_rolled_back_and_nothing_is_refused() {
    let server = Server::start(HTTP_SERVER, &["--probation", "30s"]).await;
    let old = server.pid();
    let report = server
        .under_load(|| async {
            let upgraded = server.harness().upgrade().await?;
            kill(Pid::from_raw(upgraded.pid as i32), Signal::SIGKILL).unwrap();
            eventually("the rollback report", || !server.rollbacks().is_empty()).await;
            // Served again by the old generation, while the clients keep going.
            assert_eq!(answered_by(&server).await, old);
            Ok::<_, Error>(upgraded.pid)
        })
        .await;
    // Nothing is refused and nothing waits in vain. A request that the killed process itself
    // had accepted dies with it: at most one per client.
    assert_eq!(
        report.failures_of(Failure::Refused) + report.failures_of(Failure::Timeout),
        0,
        "{report}"
    );
    assert!(report.failures() <= CLIENTS, "{report}");
    let killed = report.outcome.unwrap_or_else(|err| panic!("{err}"));

    let rollbacks = server.rollbacks();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert_eq!((rollbacks[0].pid, rollbacks[0].from), (old, killed));
    assert!(
        rollbacks[0].reason.contains("SIGKILL"),
        "the reason says how the successor ended: {:?}",
        rollbacks[0].reason
    );
    assert_eq!(server.pid(), old);
    let pid_file = std::fs::read_to_string(server.pid_file()).unwrap();
    assert_eq!(
        pid_file,
        format!("{old}\n"),
        "the PID file names the old pid again"
    );
    server.wait_log("rolled back").await;

    // Serving as before: it can be upgraded again, and the new generation serves.
    assert_eq!(server.upgrade().await, old);
    let new = server.pid();
    let deadline = tokio::time::Instant::now() + STEP;
    while answered_by(&server).await != new {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {STEP:?} for pid {new} to answer"
        );
    }
}

/// A deploy that sees the new build misbehave asks for a rollback on the control socket: the
/// previous generation serves again, and the new one stops gracefully.
#[tokio::test]
async fn a_rollback_on_the_control_socket_brings_the_previous_generation_back() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let control_arg = control.to_str().unwrap();
    let server = Server::start(
        HTTP_SERVER,
        &["--probation", "60s", "--control-socket", control_arg],
    )
    .await;
    let old = server.pid();
    server.upgrade().await;
    let new = server.pid();
    assert_eq!(answered_by(&server).await, new);

    let output = rollback_command(control_arg).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("rolled back pid={old}\n")
    );
    assert_eq!(answered_by(&server).await, old);
    assert_eq!(server.pid(), old);
    // The rolled-back generation drains and exits by itself (reaped by its parent, which
    // watched it, so the harness sees no status).
    let stopped = server
        .harness()
        .wait_exited(new)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let drain = stopped.drain().unwrap();
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
    server.wait_log(&format!("exited pid={new}")).await;

    // Nothing to roll back to from the first generation: its parent (the harness) has gone.
    let output = rollback_command(control_arg).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("rollback failed: cannot roll back from pid {old}")),
        "{stderr}"
    );
    assert_eq!(answered_by(&server).await, old);
}

async fn rollback_command(control: &str) -> std::process::Output {
    let command = tokio::process::Command::new(HTTP_SERVER)
        .args(["rollback", "--control-socket", control, "--timeout", "20s"])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(STEP, command)
        .await
        .expect("the rollback command answers in time")
        .expect("run the rollback command")
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// SIGTERM while the new binary (a wrapper that started a child and hangs) is starting: the
/// stop wins at once, not after the upgrade timeout: the wrapper and its child are killed, the
/// old generation finishes the line it is on and stops. A second SIGTERM ends a drain that a
/// stuck connection would make last.
#[tokio::test]
async fn a_stop_during_an_upgrade_cancels_it_and_a_second_stop_ends_the_drain() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("echo-server");
    std::fs::copy(ECHO_SERVER, &path).unwrap();
    // An upgrade or a drain that the stop waited for would outlast every bound of this test.
    let server = Server::start(
        path.to_str().unwrap(),
        &["--upgrade-timeout", "600s", "--drain-timeout", "600s"],
    )
    .await;
    let old = server.pid();
    let mut stuck = TcpStream::connect(server.addr()).await.unwrap();
    stuck.write_all(b"hello\n").await.unwrap();
    let mut answer = [0u8; 6];
    tokio::time::timeout(STEP, stuck.read_exact(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    stuck.write_all(b"never fini").await.unwrap();

    let pids = bin.path().join("pids");
    let wrapper = bin.path().join("wrapper");
    script(
        &wrapper,
        &format!(
            "sleep 600 &\necho \"$$ $!\" > {0}.tmp\nmv {0}.tmp {0}\nwait\n",
            pids.display()
        ),
    );
    std::fs::rename(&wrapper, &path).unwrap();
    let upgrading = server.harness().upgrade();
    tokio::pin!(upgrading);
    let started = tokio::select! {
        result = &mut upgrading => panic!("the upgrade ended before the wrapper ran: {result:?}"),
        () = eventually("the wrapper to start its child", || pids.exists()) => {
            std::fs::read_to_string(&pids).unwrap()
        }
    };
    let started: Vec<u32> = started
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert!(started.iter().all(|&pid| alive(pid)), "{started:?}");

    kill(Pid::from_raw(old as i32), Signal::SIGTERM).unwrap();
    let err = tokio::time::timeout(STEP, upgrading)
        .await
        .expect("the stop ended the upgrade at once")
        .unwrap_err();
    assert!(
        err.to_string().contains("cancelled"),
        "the upgrade is reported cancelled: {err}"
    );
    eventually("the wrapper and its child to be gone", || {
        started.iter().all(|&pid| !alive(pid))
    })
    .await;
    server
        .wait_log("stopping during an upgrade: cancelling it")
        .await;
    assert!(
        !server
            .output()
            .contains("upgrade failed; this generation keeps serving"),
        "a stopping process does not claim to keep serving"
    );

    // Stopping, but the stuck connection holds the drain; a second stop ends it.
    assert!(alive(old));
    kill(Pid::from_raw(old as i32), Signal::SIGTERM).unwrap();
    let stopped = server.wait_exited(old).await;
    let drain = stopped.drain().unwrap();
    assert_eq!(
        (drain.abandoned, drain.outcome),
        (1, DrainOutcome::CutShort)
    );
    drop(stuck);
}

/// A new generation whose `ready()` fails (its PID file cannot be written: the path is a
/// directory now) exits with the error. It accepted nothing before, so the clients under load,
/// which connect all the while, lose nothing; the old generation serves on.
#[tokio::test]
async fn a_generation_whose_readiness_fails_drops_no_connection() {
    let server = Server::start(HTTP_SERVER, &["--upgrade-timeout", "20s"]).await;
    let old = server.pid();
    std::fs::remove_file(server.pid_file()).unwrap();
    std::fs::create_dir(server.pid_file()).unwrap();
    let load = Load::none().short_http(4).keep_alive_http(2);
    let report = server
        .under_load_with(&load, || async {
            for _ in 0..100 {
                match server.harness().upgrade().await {
                    Err(Error::UpgradeFailed { reason, .. }) => {
                        assert!(reason.contains("exited before it was ready"), "{reason}");
                    }
                    other => panic!("expected a failed upgrade, got {other:?}"),
                }
            }
        })
        .await;
    assert_eq!(report.failures(), 0, "{report}");
    assert!(report.succeeded() > 0, "{report}");
    assert_eq!(server.pid(), old);
    assert_eq!(answered_by(&server).await, old);
}

/// The previous generation dies while the new binary (a wrapper script) is still starting: the
/// new generation then has the test process as its parent (a subreaper), but it still names its
/// real predecessor, read from the link's peer credentials rather than from getppid().
#[tokio::test]
async fn a_new_generation_names_its_real_parent_even_after_it_died() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("echo-server");
    let real = bin.path().join("echo-server.real");
    std::fs::copy(ECHO_SERVER, &path).unwrap();
    std::fs::copy(ECHO_SERVER, &real).unwrap();
    let server = Server::start(path.to_str().unwrap(), &["--upgrade-timeout", "60s"]).await;
    let old = server.pid();

    let waiting = bin.path().join("waiting");
    let wrapper = bin.path().join("wrapper");
    // Waits until its parent has gone, then becomes the real server.
    script(
        &wrapper,
        &format!(
            "touch {waiting}\nwhile kill -0 {old} 2>/dev/null; do sleep 0.02; done\nexec {real} \"$@\"\n",
            waiting = waiting.display(),
            real = real.display(),
        ),
    );
    std::fs::rename(&wrapper, &path).unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGHUP).unwrap();
    eventually("the wrapper to start", || waiting.exists()).await;
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    server
        .wait_log(&format!("parent_pid={old} generation=2"))
        .await;
}

/// A wrapper script that starts a background process and then execs the server: the
/// background process holds the new generation's end of the link too, so the link's end of
/// file does not come when the server dies. The old generation sees the death itself and rolls
/// back; the background process, left in the new generation's process group, is killed.
#[tokio::test]
async fn a_successor_behind_a_wrapper_with_a_background_child_is_rolled_back_too() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("http-server");
    let real = bin.path().join("http-server.real");
    std::fs::copy(HTTP_SERVER, &path).unwrap();
    std::fs::copy(HTTP_SERVER, &real).unwrap();
    let server = Server::start(path.to_str().unwrap(), &["--probation", "60s"]).await;
    let old = server.pid();

    let background = bin.path().join("background");
    let wrapper = bin.path().join("wrapper");
    script(
        &wrapper,
        &format!(
            "sleep 600 &\necho $! > {background}\nexec {real} \"$@\"\n",
            background = background.display(),
            real = real.display(),
        ),
    );
    std::fs::rename(&wrapper, &path).unwrap();
    let upgraded = server
        .harness()
        .upgrade()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sleeper: u32 = std::fs::read_to_string(&background)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(sleeper));
    kill(Pid::from_raw(upgraded.pid as i32), Signal::SIGKILL).unwrap();
    eventually("the rollback report", || !server.rollbacks().is_empty()).await;
    assert_eq!(answered_by(&server).await, old);
    eventually("the wrapper's background process to be killed", || {
        !alive(sleeper)
    })
    .await;
}
