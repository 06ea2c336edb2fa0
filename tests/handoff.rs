//! Live hand-off when things go wrong, as real processes under load: the successor dies while
//! it receives sessions, the old generation is killed in the middle of handing them over, and
//! a storm of upgrade signals hands sessions along a chain of generations. Each time, every
//! session is either served on by a generation or closed, and nothing is refused.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use graceful::testing::{Error, Failure, Load};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{STEP, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
/// Long-lived line sessions of the load in these tests.
const SESSIONS: usize = 32;

fn sessions() -> Load {
    Load::none()
        .long_lines(SESSIONS)
        .answers_name_pid()
        .max_duration(Duration::from_secs(120))
}

/// One line on a new connection; returns the pid that answered it.
async fn answered_by(server: &Server) -> u32 {
    let exchange = async {
        let mut conn = BufReader::new(TcpStream::connect(server.addr()).await.unwrap());
        conn.get_mut().write_all(b"who\n").await.unwrap();
        let mut answer = String::new();
        conn.read_line(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer within {STEP:?}"));
    answer
        .trim()
        .strip_prefix("who ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not an answer of the server: {answer:?}"))
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

/// The successor is killed right after it reported ready, while the sessions are being handed
/// to it. The old generation, on probation, takes the service back. Clients whose session had
/// reached the killed process see that connection end, at a boundary or with a line in flight:
/// at most one failure per session; nothing is refused, and new connections are served.
#[tokio::test]
async fn the_successor_dies_while_it_receives_sessions() {
    let server = Server::start(ECHO_SERVER, &["--probation", "30s"]).await;
    let old = server.pid();
    let report = server
        .under_load_with(&sessions(), || async {
            let upgraded = server.harness().upgrade().await?;
            kill(Pid::from_raw(upgraded.pid as i32), Signal::SIGKILL).unwrap();
            eventually("the rollback report", || !server.rollbacks().is_empty()).await;
            assert_eq!(answered_by(&server).await, old);
            Ok::<_, Error>(())
        })
        .await;
    report
        .outcome
        .as_ref()
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(report.failures_of(Failure::Refused), 0, "{report}");
    assert_eq!(report.failures_of(Failure::Timeout), 0, "{report}");
    assert!(
        report.failures() + report.reconnects() <= SESSIONS as u64,
        "{report}"
    );
    assert_eq!(server.pid(), old);
    // Serving as before, hand-off included.
    server.upgrade().await;
    assert_eq!(answered_by(&server).await, server.pid());
}

/// The old generation is killed the moment its successor is ready, in the middle of handing
/// the sessions over. Those already sent are served on by the successor; the others die with
/// the killed process (their clients see the connection end). The successor's hand-off channel
/// ends with the old process, and it serves on: nothing is refused, and it can be upgraded.
#[tokio::test]
async fn the_old_generation_is_killed_in_the_middle_of_the_hand_off() {
    let server = Server::start(ECHO_SERVER, &["--probation", "0s"]).await;
    let report = server
        .under_load_with(&sessions(), || async {
            let upgraded = server.harness().upgrade().await?;
            kill(Pid::from_raw(upgraded.from as i32), Signal::SIGKILL).unwrap();
            assert_eq!(answered_by(&server).await, upgraded.pid);
            Ok::<_, Error>(upgraded)
        })
        .await;
    let upgraded = report
        .outcome
        .as_ref()
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(report.failures_of(Failure::Refused), 0, "{report}");
    assert_eq!(report.failures_of(Failure::Timeout), 0, "{report}");
    assert!(
        report.failures() + report.reconnects() <= SESSIONS as u64,
        "{report}"
    );
    server
        .wait_log(&format!(
            "the previous generation has no more connections to hand over pid={}",
            upgraded.pid
        ))
        .await;
    server.upgrade().await;
    assert_eq!(answered_by(&server).await, server.pid());
}

/// Thirty upgrade signals in a burst, twice, under load: one upgrade at a time, each new
/// generation receiving sessions from its parent while it hands them on to its own successor.
/// Not one session fails or reconnects.
#[tokio::test]
async fn sessions_follow_a_storm_of_upgrades_without_a_reconnect() {
    let server = Server::start(ECHO_SERVER, &["--probation", "0s"]).await;
    let first = server.pid();
    let report = server
        .under_load_with(&sessions(), || async {
            for _ in 0..2 {
                let before = server.pid();
                for _ in 0..30 {
                    let _ = kill(Pid::from_raw(server.pid() as i32), Signal::SIGHUP);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                eventually("an upgrade after the storm", || server.pid() != before).await;
                // Let the chain settle: every generation but the newest has exited (signals of
                // the storm may still start upgrades, so the newest is read each time).
                eventually("every generation but the newest to exit", || {
                    let newest = server.pid();
                    let generations = server.generations();
                    generations
                        .iter()
                        .filter(|g| g.pid() != newest)
                        .all(|g| g.exited())
                })
                .await;
            }
        })
        .await;
    assert!(report.succeeded() > 0, "{report}");
    assert_eq!(report.failures(), 0, "{report}");
    assert_eq!(
        report.reconnects(),
        0,
        "every session stayed on its connection: {report}"
    );
    assert!(server.pid() != first);
    assert!(
        server.generations().len() >= 3,
        "two storms, an upgrade each at least"
    );
}
