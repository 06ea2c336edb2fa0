//! `plain-http-server`, the no-library baseline: it prints the example servers' ready line,
//! answers `GET /` as `examples/http-server` does, and exits on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A bound for every wait; generous, because it only matters when something is wrong.
const STEP: Duration = Duration::from_secs(30);

/// The server, killed and reaped if the test ends early.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_hello_and_exits_on_sigterm() {
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_plain-http-server"))
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start plain-http-server"),
    );
    let stdout = server.0.stdout.take().expect("piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = lines
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("no ready line within {STEP:?}"));
    let pid = server.0.id();
    let prefix = format!("ready pid={pid} generation=1 addr=");
    let addr = ready
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{ready:?} does not start with {prefix:?}"));

    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(STEP)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with(&format!("\r\n\r\nhello from {pid}")),
        "{response}"
    );

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("send SIGTERM");
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {STEP:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}
