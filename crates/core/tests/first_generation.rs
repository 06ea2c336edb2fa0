//! `Handover`: a first generation started by a caller that plays the generation before it, as
//! a test harness does. The started process is this test binary again, running one test, in
//! which the role variable is set.
#![cfg(target_os = "linux")]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use graceful_core::harness::{Handover, Report};
use graceful_core::{Error, Upgrader};

const ROLE: &str = "GRACEFUL_TEST_FIRST_GENERATION";
const STEP: Duration = Duration::from_secs(20);

/// The started process's scratch directory, when this process is it.
fn started_in() -> Option<PathBuf> {
    std::env::var_os(ROLE).map(PathBuf::from)
}

/// This test binary, running only `test`, as a first generation writing facts into `dir`.
fn this_test(test: &str, dir: &Path) -> Handover {
    Handover::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, dir)
}

fn wait(pid: u32) -> ExitStatus {
    let mut status = 0;
    // SAFETY: waitpid writes into a local.
    let ret = unsafe { nix::libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(ret, pid as i32, "waitpid({pid})");
    ExitStatus::from_raw(status)
}

#[test]
fn the_started_process_adopts_the_listener_and_sees_its_parent_go_once_ready() {
    if let Some(dir) = started_in() {
        let upgrader = Upgrader::new().unwrap();
        let listener = upgrader
            .tcp_listener("127.0.0.1:0".parse().unwrap())
            .unwrap();
        upgrader.ready().unwrap();
        println!("ready on stdout");
        let (mut conn, _) = listener.accept().unwrap();
        write!(conn, "hello from {}", std::process::id()).unwrap();
        drop(conn);
        let facts = [
            ("listen_pid", std::env::var("LISTEN_PID").unwrap()),
            ("addr", listener.local_addr().unwrap().to_string()),
            ("generation", upgrader.generation().to_string()),
            (
                "parent_exited",
                upgrader.parent_exited().wait_timeout(STEP).to_string(),
            ),
            ("pgid", nix::unistd::getpgrp().to_string()),
        ];
        for (name, value) in facts {
            fs::write(dir.join(name), value).unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, theirs) = UnixDatagram::pair().unwrap();
    let (output, stdout) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let started = this_test(
        "the_started_process_adopts_the_listener_and_sees_its_parent_go_once_ready",
        dir.path(),
    )
    .listener(listener)
    .report(theirs)
    .stdout(stdout)
    .process_group()
    .spawn()
    .unwrap();
    let pid = started.pid();
    assert_eq!(started.wait_ready(STEP).unwrap(), pid);

    let mut answer = String::new();
    TcpStream::connect(addr)
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    assert_eq!(answer, format!("hello from {pid}"));
    assert!(wait(pid).success());
    let fact = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(fact("listen_pid"), pid.to_string());
    assert_eq!(fact("addr").parse::<SocketAddr>().unwrap(), addr);
    assert_eq!(fact("generation"), "1");
    assert_eq!(fact("parent_exited"), "true", "the link closed after ready");
    assert_eq!(fact("pgid"), pid.to_string(), "a process group of its own");

    let mut printed = String::new();
    fs::File::from(output).read_to_string(&mut printed).unwrap();
    assert!(printed.contains("ready on stdout"), "{printed:?}");
    report.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let queued = report.recv(&mut buf).map(|n| Report::decode(&buf[..n]));
    assert!(queued.is_err(), "nothing to report, got {queued:?}");
}

#[test]
fn a_listener_the_process_does_not_ask_for_is_reported_unclaimed() {
    if started_in().is_some() {
        let upgrader = Upgrader::new().unwrap();
        upgrader.ready().unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, theirs) = UnixDatagram::pair().unwrap();
    let started = this_test(
        "a_listener_the_process_does_not_ask_for_is_reported_unclaimed",
        dir.path(),
    )
    .listener(listener)
    .report(theirs)
    .stdout(fs::File::options().write(true).open("/dev/null").unwrap())
    .spawn()
    .unwrap();
    let pid = started.wait_ready(STEP).unwrap();
    assert!(wait(pid).success());
    let mut buf = [0u8; 512];
    let n = report.recv(&mut buf).unwrap();
    assert_eq!(
        Report::decode(&buf[..n]),
        Some(Report::Unclaimed {
            pid,
            what: format!("a TCP listener on {addr}"),
        })
    );
}

#[test]
fn a_descriptor_that_is_not_a_listener_is_refused_before_anything_starts() {
    let not_a_socket = fs::File::open("/dev/null").unwrap();
    let err = Handover::new("/bin/true")
        .listener(not_a_socket)
        .spawn()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig(message) if message.contains("it is a character device, not a listening")),
        "{err}"
    );
}

#[test]
fn a_process_that_exits_before_ready_is_reaped_with_its_status() {
    let started = Handover::new("/bin/sh")
        .args(["-c", "exit 3"])
        .spawn()
        .unwrap();
    match started.wait_ready(STEP) {
        Err(Error::ChildExited { status, .. }) => assert_eq!(status.code(), Some(3)),
        other => panic!("expected an early exit, got {other:?}"),
    }
}

#[test]
fn a_process_that_is_not_ready_in_time_is_killed_and_reaped() {
    let started = Handover::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = started.pid();
    match started.wait_ready(Duration::from_millis(200)) {
        Err(Error::Timeout { pid: late, .. }) => assert_eq!(late, pid),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
