//! `plain-hyper-server`, the throughput ceiling: it prints the example servers' ready line,
//! answers `GET /` with `hello from <pid>` (anything else with 404), and exits on SIGTERM.

#[path = "support/servers.rs"]
mod servers;

use nix::sys::signal::Signal;

#[test]
fn serves_hello_and_exits_on_sigterm() {
    let mut group = servers::Group::start(
        env!("CARGO_BIN_EXE_plain-hyper-server"),
        &["--addr", "127.0.0.1:0"],
    );
    let ready = group.ready(1);
    assert_eq!(ready.pid, group.leader_pid(), "{ready:?}");
    assert_eq!(
        servers::get(&ready.addr, "/"),
        (
            "HTTP/1.1 200 OK".to_owned(),
            format!("hello from {}", ready.pid)
        )
    );
    assert_eq!(
        servers::get(&ready.addr, "/nowhere").0,
        "HTTP/1.1 404 Not Found"
    );
    servers::signal(ready.pid, Signal::SIGTERM);
    assert!(group.leader_exit().success());
}
