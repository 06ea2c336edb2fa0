//! The echo pair as real processes, upgraded with SIGHUP while clients talk to it.
#![cfg(target_os = "linux")]

mod support;

use graceful::DrainOutcome;
use support::{Client, STEP, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

/// A connection to the echo server: lines out, answers in, each read bounded by [`STEP`].
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn open(server: &Server) -> Conn {
        let (reader, writer) = TcpStream::connect(server.addr())
            .await
            .unwrap()
            .into_split();
        Conn {
            reader: BufReader::new(reader),
            writer,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    async fn answer(&mut self) -> String {
        let mut answer = String::new();
        tokio::time::timeout(STEP, self.reader.read_line(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        answer
    }

    /// Reads until the server closes; returns how many bytes came first.
    async fn rest(&mut self) -> usize {
        let mut rest = Vec::new();
        tokio::time::timeout(STEP, self.reader.read_to_end(&mut rest))
            .await
            .expect("the end of the stream in time")
            .unwrap()
    }
}

#[tokio::test]
async fn short_lived_connections_see_no_failure_across_upgrades() {
    let server = Server::start(SERVER, &[]).await;
    let first = server.pid();
    let mut client = Client::start(
        CLIENT,
        server.addr(),
        &["--mode", "short", "--connections", "4"],
    )
    .await;
    for _ in 0..3 {
        server.upgrade().await;
        client.wait_answered_by(server.pid()).await;
    }
    let summary = client.finish().await;
    assert_eq!(summary.count("errors"), 0, "{summary:?}");
    let answered_by = summary.answered_by();
    assert!(answered_by.contains(&first) && answered_by.contains(&server.pid()));
    assert_eq!(
        answered_by.len(),
        4,
        "all four generations answered: {summary:?}"
    );
}

#[tokio::test]
async fn without_handoff_long_lived_connections_see_only_clean_closes_at_line_boundaries() {
    let server = Server::start(SERVER, &["--handoff", "off"]).await;
    let mut client = Client::start(
        CLIENT,
        server.addr(),
        &["--mode", "long", "--connections", "8"],
    )
    .await;
    for _ in 0..3 {
        let old = server.upgrade().await;
        client.wait_answered_by(server.pid()).await;
        let retired = server.wait_exited(old).await;
        assert_eq!(
            retired.drain().unwrap().abandoned,
            0,
            "the old generation closed every connection itself"
        );
    }
    let summary = client.finish().await;
    assert_eq!(summary.count("errors"), 0, "{summary:?}");
    // Every connection was on the first generation and had to move at least once.
    assert!(summary.count("reconnects") >= 8, "{summary:?}");
}

#[tokio::test]
async fn without_handoff_a_slow_line_in_flight_at_the_upgrade_completes_on_the_old_process() {
    let server = Server::start(SERVER, &["--handoff", "off"]).await;
    let mut conn = Conn::open(&server).await;
    conn.send("hello\n").await;
    assert_eq!(conn.answer().await, format!("hello {}\n", server.pid()));

    // Long enough that the answer can only come after the upgrade has completed.
    conn.send("sleep 1500\n").await;
    let old = server.upgrade().await;
    assert_eq!(conn.answer().await, format!("sleep 1500 {old}\n"));
    // Then the old process closes the connection at that boundary: a clean end of stream.
    assert_eq!(conn.rest().await, 0);
    drop(conn);
    let retired = server.wait_exited(old).await;
    assert_eq!(retired.drain().unwrap().abandoned, 0);
}

#[tokio::test]
async fn without_handoff_the_old_process_exits_once_drained() {
    let server = Server::start(SERVER, &["--handoff", "off"]).await;
    let mut conn = Conn::open(&server).await;
    conn.send("hello\n").await;
    conn.answer().await;

    let old = server.upgrade().await;
    // The idle connection is closed at its boundary; closing ours ends the drain.
    assert_eq!(conn.rest().await, 0, "clean end of stream");
    drop(conn);
    // Whether the connection was still open when the drain began is a race; that the drain
    // ended with nothing abandoned is not.
    let retired = server.wait_exited(old).await;
    let drain = retired.drain().unwrap();
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
    // The new generation serves.
    let mut conn = Conn::open(&server).await;
    conn.send("again\n").await;
    assert_eq!(conn.answer().await, format!("again {}\n", server.pid()));
}

#[tokio::test]
async fn the_old_process_exits_at_the_deadline_when_a_connection_never_finishes() {
    let server = Server::start(SERVER, &["--drain-timeout", "1s"]).await;
    let mut stuck = Conn::open(&server).await;
    stuck.send("hello\n").await;
    stuck.answer().await;
    // Half a line, never finished: the old process is stuck in the middle of it.
    stuck.send("never fini").await;

    let old = server.upgrade().await;
    let retired = server.wait_exited(old).await;
    let drain = retired.drain().unwrap();
    assert_eq!(
        (drain.abandoned, drain.outcome),
        (1, DrainOutcome::Deadline)
    );
    drop(stuck);
}

/// The first generation is stuck on a connection that never finishes its line, while the
/// server is upgraded three times. Drained generations wait for their parent before they exit,
/// so the generations alive stay counted: once a fourth is ready, the stuck first one is told
/// to finish at once (well before its 60 s drain deadline), and the others follow it out.
#[tokio::test]
async fn the_oldest_of_too_many_generations_is_told_to_finish() {
    let server = Server::start(SERVER, &["--drain-timeout", "60s"]).await;
    let mut stuck = Conn::open(&server).await;
    stuck.send("hello\n").await;
    stuck.answer().await;
    stuck.send("never fini").await;

    let first = server.upgrade().await;
    let second = server.upgrade().await;
    let third = server.upgrade().await;
    let retired = server.wait_exited(first).await;
    let drain = retired.drain().unwrap();
    assert_eq!(drain.abandoned, 1);
    assert_eq!(
        drain.outcome,
        DrainOutcome::CutShort,
        "told to finish, not at its deadline"
    );
    for pid in [second, third] {
        let retired = server.wait_exited(pid).await;
        let drain = retired.drain().unwrap();
        assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
    }
    drop(stuck);
}

#[tokio::test]
async fn a_stop_signal_drains_and_exits_without_a_successor() {
    let server = Server::start(SERVER, &[]).await;
    let mut conn = Conn::open(&server).await;
    let pid = server.pid();
    // Served already: a stop leaves connections still in the backlog unaccepted (there is no
    // successor to take them), so the test must not race the accept.
    conn.send("hello\n").await;
    conn.answer().await;
    conn.send("sleep 500\n").await;
    // SIGTERM; meanwhile the line in progress is answered, then the connection ends cleanly.
    let (generations, ()) = tokio::join!(server.stop(), async {
        assert_eq!(conn.answer().await, format!("sleep 500 {pid}\n"));
        assert_eq!(conn.rest().await, 0);
        drop(conn);
    });
    let generations = generations.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(generations.len(), 1);
    let stopped = server.wait_exited(pid).await;
    let drain = stopped.drain().unwrap();
    assert_eq!((drain.abandoned, drain.outcome), (0, DrainOutcome::Drained));
    assert!(
        !server.pid_file().exists(),
        "a graceful stop removes its PID file"
    );
    server.wait_log("stopping gracefully").await;
}

/// A deploy that puts a broken binary in place: SIGHUP fails, the failure is reported and
/// logged with its reason, and the running server answers as before. Once a good binary is
/// back, SIGHUP works.
#[tokio::test]
async fn a_failed_upgrade_is_logged_and_the_server_keeps_serving() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("echo-server");
    std::fs::copy(SERVER, &path).unwrap();
    let server = Server::start(path.to_str().unwrap(), &["--upgrade-timeout", "10s"]).await;
    let pid = server.pid();

    std::fs::write(bin.path().join("broken"), b"#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(
        bin.path().join("broken"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(bin.path().join("broken"), &path).unwrap();
    let err = server.harness().upgrade().await.unwrap_err();
    let graceful::testing::Error::UpgradeFailed { reason, .. } = &err else {
        panic!("expected a failed upgrade, got {err}");
    };
    assert!(
        reason.contains(&format!("cannot start {}", path.display())),
        "the reason names the binary: {err}"
    );
    server
        .wait_log("upgrade failed; this generation keeps serving")
        .await;
    let mut conn = Conn::open(&server).await;
    conn.send("still there?\n").await;
    assert_eq!(conn.answer().await, format!("still there? {pid}\n"));

    std::fs::copy(SERVER, bin.path().join("good")).unwrap();
    std::fs::rename(bin.path().join("good"), &path).unwrap();
    assert_eq!(server.upgrade().await, pid);
}

// ---------------------------------------------------------------------------------------------
// Live hand-off (the default): sessions move to the new generation on their own connection.

#[tokio::test]
async fn long_lived_sessions_are_handed_over_with_no_reconnect() {
    let server = Server::start(SERVER, &[]).await;
    let first = server.pid();
    let mut client = Client::start(
        CLIENT,
        server.addr(),
        &["--mode", "long", "--connections", "8"],
    )
    .await;
    for _ in 0..3 {
        let old = server.upgrade().await;
        client.wait_answered_by(server.pid()).await;
        let retired = server.wait_exited(old).await;
        assert_eq!(retired.drain().unwrap().abandoned, 0);
        let exited = exited_line(&server, old).await;
        assert!(!exited.ends_with("handed_off=0"), "{exited}");
    }
    let summary = client.finish().await;
    assert_eq!(summary.count("errors"), 0, "{summary:?}");
    assert_eq!(
        summary.count("reconnects"),
        0,
        "every session stayed on its connection: {summary:?}"
    );
    let answered_by = summary.answered_by();
    assert!(answered_by.contains(&first) && answered_by.contains(&server.pid()));
    assert_eq!(answered_by.len(), 4, "{summary:?}");
}

#[tokio::test]
async fn one_connection_is_answered_by_each_new_generation_and_the_count_goes_on() {
    let server = Server::start(SERVER, &["--probation", "0s"]).await;
    let mut conn = Conn::open(&server).await;
    conn.send("hello\n").await;
    assert_eq!(conn.answer().await, format!("hello {}\n", server.pid()));
    let mut pids = vec![server.pid()];
    for round in 0..3u64 {
        let old = server.upgrade().await;
        // The old generation hands the session over, then exits: its count says so.
        let exited = exited_line(&server, old).await;
        assert!(
            exited.ends_with("abandoned=0 outcome=Drained handed_off=1"),
            "{exited}"
        );
        conn.send("count\n").await;
        // Lines answered before this one, across generations: hello, then a count per round.
        assert_eq!(
            conn.answer().await,
            format!("count {} {}\n", round + 1, server.pid())
        );
        pids.push(server.pid());
    }
    pids.dedup();
    assert_eq!(
        pids.len(),
        4,
        "four generations answered one connection: {pids:?}"
    );
}

#[tokio::test]
async fn a_slow_line_in_flight_finishes_on_the_old_process_and_the_next_goes_to_the_new() {
    let server = Server::start(SERVER, &[]).await;
    let mut conn = Conn::open(&server).await;
    conn.send("hello\n").await;
    assert_eq!(conn.answer().await, format!("hello {}\n", server.pid()));
    conn.send("sleep 1500\n").await;
    let old = server.upgrade().await;
    assert_eq!(conn.answer().await, format!("sleep 1500 {old}\n"));
    conn.send("next\n").await;
    assert_eq!(conn.answer().await, format!("next {}\n", server.pid()));
    let retired = server.wait_exited(old).await;
    assert_eq!(retired.drain().unwrap().abandoned, 0);
}

/// Hand-off is only for a successor that asked for it: an old generation that hands over
/// upgrades into one that does not take sessions, and closes them at their boundary instead.
#[tokio::test]
async fn a_successor_without_handoff_gets_todays_clean_closes() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("echo-server");
    std::fs::copy(SERVER, &path).unwrap();
    let server = Server::start(path.to_str().unwrap(), &[]).await;
    let mut conn = Conn::open(&server).await;
    conn.send("hello\n").await;
    conn.answer().await;
    // The next binary is the same server with hand-off turned off, as an older build would be.
    let wrapper = bin.path().join("wrapper");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {SERVER} \"$@\" --handoff off\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&wrapper, &path).unwrap();
    let old = server.upgrade().await;
    assert_eq!(conn.rest().await, 0, "closed cleanly at its boundary");
    drop(conn);
    let retired = server.wait_exited(old).await;
    assert_eq!(retired.drain().unwrap().abandoned, 0);
    let exited = exited_line(&server, old).await;
    assert!(
        exited.ends_with("abandoned=0 outcome=Drained handed_off=0"),
        "{exited}"
    );
}

/// The `exited pid=…` line generation `pid` printed, once it did.
async fn exited_line(server: &Server, pid: u32) -> String {
    let start = format!("exited pid={pid} open_at_start=");
    server.wait_log(&start).await;
    let output = server.output();
    let at = output.find(&start).expect("written, as waited for");
    output[at..].lines().next().unwrap_or_default().to_owned()
}
