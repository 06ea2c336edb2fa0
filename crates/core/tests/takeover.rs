//! Takeover with the core API alone, no runtime: the running generation answers a `takeover`
//! on its own control socket with `Upgrader::yield_to`, and a process it did not start through
//! an upgrade (a plain `Command`) takes over more listeners than one message can carry.
#![cfg(target_os = "linux")]

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::Command;

use graceful_core::{TAKEOVER_REQUEST, Upgrader};
use support::{STEP, Setup};

/// More than the 253 descriptors one SCM_RIGHTS message carries: two frames.
const LISTENERS: usize = 260;
/// Set in the process that takes over.
const NEW: &str = "GRACEFUL_TEST_TAKEOVER_NEW";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn a_process_started_by_someone_else_takes_over_every_listener() {
    let ctx = match support::scenario_with_result(
        "a_process_started_by_someone_else_takes_over_every_listener",
        Setup::default(),
    ) {
        Ok(finished) => {
            let new = finished.read("new-ports");
            assert!(
                new.is_some(),
                "the new process did not serve\n{}",
                finished.log
            );
            assert_eq!(
                finished.read("old-ports"),
                new,
                "the same listeners, in the same order\n{}",
                finished.log
            );
            assert!(finished.read("yielded").is_some(), "{}", finished.log);
            return;
        }
        Err(ctx) => ctx,
    };
    let control = ctx.path("control.sock");
    let ports = |listeners: &[std::net::TcpListener]| {
        let ports: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port().to_string())
            .collect();
        ports.join(" ")
    };

    if std::env::var_os(NEW).is_some() {
        let upgrader = Upgrader::builder().takeover(&control).build().unwrap();
        assert_eq!(upgrader.generation(), 2);
        assert_eq!(
            upgrader.parent_pid(),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
        let listeners: Vec<_> = (0..LISTENERS)
            .map(|_| upgrader.tcp_listener(any_port()).unwrap())
            .collect();
        let _control = upgrader.private_unix_listener(&control).unwrap();
        upgrader.ready().unwrap();
        ctx.write("new-ports", ports(&listeners));
        return;
    }

    let upgrader = Upgrader::new().unwrap();
    let listeners: Vec<_> = (0..LISTENERS)
        .map(|_| upgrader.tcp_listener(any_port()).unwrap())
        .collect();
    ctx.write("old-ports", ports(&listeners));
    let socket = upgrader.private_unix_listener(&control).unwrap();
    upgrader.ready().unwrap();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut new = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .env(NEW, "1")
        .spawn()
        .unwrap();
    let (mut connection, _) = socket.accept().unwrap();
    connection.set_read_timeout(Some(STEP)).unwrap();
    let mut request = [0u8; TAKEOVER_REQUEST.len() + 1];
    connection.read_exact(&mut request).unwrap();
    assert_eq!(request, format!("{TAKEOVER_REQUEST}\n").as_bytes());
    connection.set_read_timeout(None).unwrap();
    let pid = upgrader.yield_to(OwnedFd::from(connection)).unwrap();
    assert_eq!(pid, new.id());
    // No probation in the core's defaults: replaced for good at once.
    assert!(upgrader.replaced().wait_timeout(STEP));
    assert_eq!(upgrader.successor(), Some(pid));
    ctx.write("yielded", "");
    assert!(new.wait().unwrap().success());
}
