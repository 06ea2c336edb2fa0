//! A failed upgrade is visible on stderr when the server installed no tracing subscriber, and
//! only through the subscriber when it did.
//!
//! Each test runs itself again as a fresh process (no subscriber is ever installed in the test
//! process itself, and this file installs none globally), whose upgrade starts a binary that does
//! not exist; the test reads that process's stdout and stderr.
#![cfg(target_os = "linux")]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use graceful_core::{Error, Upgrader};

const ROLE: &str = "GRACEFUL_ALERT_TEST_ROLE";
const MISSING: &str = "/nonexistent/graceful-alert-test/server";
/// How long the server process may take to fail its upgrade and exit.
const DEADLINE: Duration = Duration::from_secs(20);

/// In the server process: one upgrade, to a binary that does not exist.
fn fail_one_upgrade() {
    let upgrader = Upgrader::builder().executable(MISSING).build().unwrap();
    upgrader.ready().unwrap();
    let err = upgrader.upgrade().unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    println!("upgrade returned: {err}");
}

/// In the test process: runs `test` as the server process; returns its stdout and stderr.
fn run_server(test: &str, role: &str) -> (String, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let pipes: [OwnedFd; 2] = [
        child.stdout.take().unwrap().into(),
        child.stderr.take().unwrap().into(),
    ];
    let (tx, rx) = mpsc::channel();
    for (i, mut pipe) in pipes.into_iter().map(std::fs::File::from).enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((i, text));
        });
    }
    let mut out = [String::new(), String::new()];
    for _ in 0..2 {
        let Ok((i, text)) = rx.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server process did not exit within {DEADLINE:?} of starting");
        };
        out[i] = text;
    }
    let status = child.wait().unwrap();
    let [stdout, stderr] = out;
    assert!(
        status.success(),
        "server process: {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn without_a_subscriber_a_failed_upgrade_is_written_to_stderr() {
    const TEST: &str = "without_a_subscriber_a_failed_upgrade_is_written_to_stderr";
    if std::env::var_os(ROLE).is_some() {
        return fail_one_upgrade();
    }
    let (stdout, stderr) = run_server(TEST, "bare");
    let returned = stdout
        .lines()
        // libtest's own output may precede it on the line.
        .find_map(|l| l.split_once("upgrade returned: ").map(|(_, reason)| reason))
        .unwrap_or_else(|| panic!("no upgrade error on stdout:\n{stdout}"));
    let line = stderr
        .lines()
        .find(|l| l.starts_with("graceful: upgrade failed"))
        .unwrap_or_else(|| panic!("no `graceful: upgrade failed` line on stderr:\n{stderr}"));
    // The reason, exactly as the upgrade returned it, so it names the missing binary.
    assert!(line.ends_with(returned), "{line:?} lacks {returned:?}");
    assert!(line.contains(MISSING), "{line}");
    assert!(
        stderr.contains("no tracing subscriber is installed"),
        "{stderr}"
    );
}

#[test]
fn with_a_subscriber_a_failed_upgrade_goes_to_it_alone() {
    const TEST: &str = "with_a_subscriber_a_failed_upgrade_goes_to_it_alone";
    if std::env::var_os(ROLE).is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stdout)
            .with_ansi(false)
            .init();
        return fail_one_upgrade();
    }
    let (stdout, stderr) = run_server(TEST, "subscribed");
    assert!(
        stdout.contains("upgrade failed; this generation keeps serving")
            && stdout.contains(MISSING),
        "the subscriber did not get the failure:\n{stdout}"
    );
    assert!(
        !stderr.contains("graceful:"),
        "a subscriber is installed, yet graceful wrote to stderr:\n{stderr}"
    );
}
