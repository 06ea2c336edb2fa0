//! Sockets passed by a service manager at first start, in real processes: systemd names them
//! `unknown` or after the socket unit (`FileDescriptorName=`), never the way graceful does. They
//! are adopted by their address or by their own name, handed over from then on like any other,
//! and one that nobody asks for is closed. `tests/systemd.rs` of the examples does the same
//! with the real `systemd-socket-activate`.
#![cfg(target_os = "linux")]

mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::BorrowedFd;

use graceful_core::{Error, Upgrader};
use support::{Setup, child_finishes, inode, scenario};

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Places a TCP listener at fd 3 and a UDP socket at fd 4, named as a service manager would.
fn passed(names: &str) -> Setup {
    if support::in_scenario() {
        return Setup::default();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    Setup {
        env: vars(&[
            ("LISTEN_FDS", "2".into()),
            ("LISTEN_FDNAMES", names.into()),
            ("PASSED_TCP", listener.local_addr().unwrap().to_string()),
            ("PASSED_UDP", udp.local_addr().unwrap().to_string()),
        ]),
        fds: vec![listener.into(), udp.into()],
        listen_pid_self: true,
        ..Setup::default()
    }
}

fn passed_addr(var: &str) -> SocketAddr {
    std::env::var(var).unwrap().parse().unwrap()
}

fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table; a closed number gives EBADF.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

#[test]
fn a_socket_passed_under_a_foreign_name_is_adopted_by_its_address() {
    let setup = passed("unknown:metrics");
    let Some(ctx) = scenario(
        "a_socket_passed_under_a_foreign_name_is_adopted_by_its_address",
        setup,
    ) else {
        return;
    };
    let addr = passed_addr("PASSED_TCP");
    let upgrader = Upgrader::new().unwrap();
    // Binding anew would fail: the passed socket holds the address.
    let listener = upgrader.tcp_listener(addr).unwrap();

    if upgrader.parent_pid().is_some() {
        // From now on it travels under graceful's name, alone: the UDP socket was not asked for.
        assert_eq!(std::env::var("LISTEN_FDS").unwrap(), "1");
        assert_eq!(
            std::env::var("LISTEN_FDNAMES").unwrap(),
            format!("tcp/127.0.0.1%3A{}", addr.port())
        );
        assert_eq!(ctx.read("inode"), format!("{:?}", inode(&listener)));
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        // SAFETY: fd 3 was placed by the orchestrator; only borrowed for fstat.
        let fd3 = unsafe { BorrowedFd::borrow_raw(3) };
        assert_eq!(inode(&fd3), inode(&listener), "fd 3 itself is adopted");
        ctx.write("inode", format!("{:?}", inode(&listener)));
        assert!(is_open(4), "the unclaimed socket is kept until ready");
        upgrader.ready().unwrap();
        assert!(!is_open(4), "the unclaimed socket is closed once ready");
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn a_socket_passed_under_its_own_name_is_adopted_by_that_name_and_keeps_it() {
    let setup = passed("web:metrics");
    let Some(ctx) = scenario(
        "a_socket_passed_under_its_own_name_is_adopted_by_that_name_and_keeps_it",
        setup,
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let listener = upgrader.tcp_listener_named("web").unwrap();
    assert_eq!(listener.local_addr().unwrap(), passed_addr("PASSED_TCP"));
    let err = upgrader.tcp_listener_named("web").unwrap_err();
    assert!(matches!(err, Error::AlreadyRegistered { .. }), "{err:?}");

    if upgrader.parent_pid().is_some() {
        assert_eq!(std::env::var("LISTEN_FDNAMES").unwrap(), "web");
        assert_eq!(ctx.read("inode"), format!("{:?}", inode(&listener)));
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        ctx.write("inode", format!("{:?}", inode(&listener)));
        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn asking_by_name_for_what_was_not_passed_says_what_was() {
    let setup = passed("web:metrics");
    if scenario(
        "asking_by_name_for_what_was_not_passed_says_what_was",
        setup,
    )
    .is_none()
    {
        return;
    }
    let udp = passed_addr("PASSED_UDP");
    let upgrader = Upgrader::new().unwrap();

    let err = upgrader.tcp_listener_named("metrics").unwrap_err();
    assert!(matches!(err, Error::Mismatch { fd: 4, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "inherited fd 4 named \"metrics\" was expected to be a TCP listener named \
             \"metrics\", but it is an IPv4 datagram socket bound to {udp}"
        )
    );
    let err = upgrader.unix_listener_named("web").unwrap_err();
    assert!(matches!(err, Error::Mismatch { fd: 3, .. }), "{err:?}");

    let err = upgrader.tcp_listener_named("api").unwrap_err();
    let Error::Create { source, .. } = &err else {
        panic!("expected Create, got {err:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        "cannot create a TCP listener named \"api\": no socket was passed under that name \
         (unclaimed passed names: \"web\", \"metrics\")"
    );
    upgrader.ready().unwrap();
}
