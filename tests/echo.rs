//! The echo pair as real processes, upgraded with SIGHUP while clients talk to it.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use support::{Client, Event, STEP, Server};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

#[test]
fn short_lived_connections_see_no_failure_across_upgrades() {
    let mut server = Server::start(SERVER, &[]);
    let first = server.pid;
    let mut client = Client::start(
        CLIENT,
        server.addr,
        &["--mode", "short", "--connections", "4"],
    );
    for _ in 0..3 {
        server.upgrade();
        client.wait_answered_by(server.pid);
    }
    let summary = client.finish();
    assert_eq!(summary.count("errors"), 0, "{summary:?}");
    let answered_by = summary.answered_by();
    assert!(answered_by.contains(&first) && answered_by.contains(&server.pid));
    assert_eq!(
        answered_by.len(),
        4,
        "all four generations answered: {summary:?}"
    );
}

#[test]
fn long_lived_connections_see_only_clean_closes_at_line_boundaries() {
    let mut server = Server::start(SERVER, &[]);
    let mut client = Client::start(
        CLIENT,
        server.addr,
        &["--mode", "long", "--connections", "8"],
    );
    for _ in 0..3 {
        let old = server.upgrade();
        client.wait_answered_by(server.pid);
        let Event::Exited { abandoned, .. } = server.wait_exited(old) else {
            unreachable!()
        };
        assert_eq!(
            abandoned, 0,
            "the old generation closed every connection itself"
        );
    }
    let summary = client.finish();
    assert_eq!(summary.count("errors"), 0, "{summary:?}");
    // Every connection was on the first generation and had to move at least once.
    assert!(summary.count("reconnects") >= 8, "{summary:?}");
}

#[test]
fn a_slow_line_in_flight_at_the_upgrade_completes_on_the_old_process() {
    let mut server = Server::start(SERVER, &[]);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(STEP)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut answer = String::new();

    conn.write_all(b"hello\n").unwrap();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("hello {}\n", server.pid));

    // Long enough that the answer can only come after the upgrade has completed.
    conn.write_all(b"sleep 1500\n").unwrap();
    let old = server.upgrade();
    answer.clear();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("sleep 1500 {old}\n"));
    // Then the old process closes the connection at that boundary: a clean end of stream.
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
    drop((conn, reader));
    let Event::Exited { abandoned, .. } = server.wait_exited(old) else {
        unreachable!()
    };
    assert_eq!(abandoned, 0);
}

#[test]
fn the_old_process_exits_once_drained() {
    let mut server = Server::start(SERVER, &[]);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(STEP)).unwrap();
    conn.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();

    let old = server.upgrade();
    // The idle connection is closed at its boundary; closing ours ends the drain.
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).unwrap(),
        0,
        "clean end of stream"
    );
    drop(conn);
    match server.wait_exited(old) {
        // Whether the connection was still open when the drain began is a race; that the
        // drain ended with nothing abandoned is not.
        Event::Exited {
            abandoned, outcome, ..
        } => {
            assert_eq!(abandoned, 0);
            assert_eq!(outcome, "Drained");
        }
        other => panic!("{other:?}"),
    }
    // The new generation serves.
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"again\n").unwrap();
    answer.clear();
    BufReader::new(conn).read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("again {}\n", server.pid));
}

#[test]
fn the_old_process_exits_at_the_deadline_when_a_connection_never_finishes() {
    let mut server = Server::start(SERVER, &["--drain-timeout", "1s"]);
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    stuck.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    let mut reader = BufReader::new(stuck.try_clone().unwrap());
    reader.read_line(&mut answer).unwrap();
    // Half a line, never finished: the old process is stuck in the middle of it.
    stuck.write_all(b"never fini").unwrap();

    let old = server.upgrade();
    match server.wait_exited(old) {
        Event::Exited {
            abandoned, outcome, ..
        } => {
            assert_eq!(abandoned, 1);
            assert_eq!(outcome, "Deadline");
        }
        other => panic!("{other:?}"),
    }
    drop((stuck, reader));
}

/// The first generation is stuck on a connection that never finishes its line, while the
/// server is upgraded three times. Drained generations wait for their parent before they exit,
/// so the generations alive stay counted: once a fourth is ready, the stuck first one is told
/// to finish at once (well before its 60 s drain deadline), and the others follow it out.
#[test]
fn the_oldest_of_too_many_generations_is_told_to_finish() {
    let mut server = Server::start(SERVER, &["--drain-timeout", "60s"]);
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    stuck.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    BufReader::new(stuck.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    stuck.write_all(b"never fini").unwrap();

    let first = server.upgrade();
    let second = server.upgrade();
    let third = server.upgrade();
    match server.wait_exited(first) {
        Event::Exited {
            abandoned, outcome, ..
        } => {
            assert_eq!(abandoned, 1);
            assert_eq!(outcome, "CutShort", "told to finish, not at its deadline");
        }
        other => panic!("{other:?}"),
    }
    for retired in [second, third] {
        match server.wait_exited(retired) {
            Event::Exited {
                abandoned, outcome, ..
            } => assert_eq!((abandoned, outcome.as_str()), (0, "Drained")),
            other => panic!("{other:?}"),
        }
    }
    drop(stuck);
}

#[test]
fn a_stop_signal_drains_and_exits_without_a_successor() {
    let mut server = Server::start(SERVER, &[]);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(STEP)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let pid = server.pid;
    // Served already: a stop leaves connections still in the backlog unaccepted (there is no
    // successor to take them), so the test must not race the accept.
    let mut answer = String::new();
    conn.write_all(b"hello\n").unwrap();
    reader.read_line(&mut answer).unwrap();
    conn.write_all(b"sleep 500\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The line in progress is answered, then the connection ends cleanly.
    answer.clear();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("sleep 500 {pid}\n"));
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
    drop((conn, reader));
    match server.wait_exited(pid) {
        Event::Exited {
            abandoned, outcome, ..
        } => assert_eq!((abandoned, outcome.as_str()), (0, "Drained")),
        other => panic!("{other:?}"),
    }
    assert!(
        !server.dir().join("server.pid").exists(),
        "a graceful stop removes its PID file"
    );
    assert!(
        server.log().contains("stopping gracefully"),
        "{}",
        server.log()
    );
}

/// A deploy that puts a broken binary in place: SIGHUP fails, the failure is logged with its
/// reason, and the running server answers as before. Once a good binary is back, SIGHUP works.
#[test]
fn a_failed_upgrade_is_logged_and_the_server_keeps_serving() {
    let bin = tempfile::tempdir().unwrap();
    let path = bin.path().join("echo-server");
    std::fs::copy(SERVER, &path).unwrap();
    let mut server = Server::start(path.to_str().unwrap(), &["--upgrade-timeout", "10s"]);
    let pid = server.pid;

    std::fs::write(bin.path().join("broken"), b"#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(
        bin.path().join("broken"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(bin.path().join("broken"), &path).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    server.wait_log("upgrade failed; this generation keeps serving");
    assert!(
        server
            .log()
            .contains(&format!("cannot start {}", path.display())),
        "the reason names the binary:\n{}",
        server.log()
    );
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.write_all(b"still there?\n").unwrap();
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("still there? {pid}\n"));

    std::fs::copy(SERVER, bin.path().join("good")).unwrap();
    std::fs::rename(bin.path().join("good"), &path).unwrap();
    assert_eq!(server.upgrade(), pid);
}
