//! Malformed or foreign inheritance environments, in real processes: clear errors, or ignored
//! as systemd specifies, never a panic and never a wrong socket adopted.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use graceful_core::{Error, Upgrader};
use support::{Setup, scenario};

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

#[test]
fn a_listen_fds_that_is_not_a_number_is_a_clear_error() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "abc".into())]),
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario("a_listen_fds_that_is_not_a_number_is_a_clear_error", setup).is_none() {
        return;
    }
    let err = Upgrader::new().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Environment {
                var: "LISTEN_FDS",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"LISTEN_FDS="abc" is not a number of descriptors"#
    );
}

#[test]
fn more_listen_fds_than_descriptors_names_the_missing_one() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "5".into())]),
        fds: vec![dev_null(), dev_null()],
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario(
        "more_listen_fds_than_descriptors_names_the_missing_one",
        setup,
    )
    .is_none()
    {
        return;
    }
    let err = Upgrader::new().unwrap_err();
    assert!(
        matches!(err, Error::InheritedFdMissing { fd: 5, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "LISTEN_FDS announces fd 5, but fd 5 is not open in this process"
    );
}

#[test]
fn descriptors_meant_for_another_process_are_ignored() {
    let listener = (!support::in_scenario()).then(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let setup = match &listener {
        None => Setup::default(),
        Some(l) => Setup {
            env: vars(&[
                ("LISTEN_PID", "1".into()),
                ("LISTEN_FDS", "1".into()),
                (
                    "LISTEN_FDNAMES",
                    format!("tcp/127.0.0.1%3A{}", l.local_addr().unwrap().port()),
                ),
                ("FOREIGN_ADDR", l.local_addr().unwrap().to_string()),
            ]),
            fds: vec![l.try_clone().unwrap().into()],
            ..Setup::default()
        },
    };
    if scenario("descriptors_meant_for_another_process_are_ignored", setup).is_none() {
        return;
    }
    let upgrader = Upgrader::new().unwrap();
    assert_eq!(upgrader.parent_pid(), None);
    assert_eq!(upgrader.generation(), 1);
    // fd 3 was not taken: it is still inheritable, as it came.
    // SAFETY: fd 3 was placed by the orchestrator; only borrowed for F_GETFD.
    let fd3 = unsafe { BorrowedFd::borrow_raw(3) };
    let flags = nix::fcntl::fcntl(fd3, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(flags & nix::libc::FD_CLOEXEC, 0);
    // Asking for its address binds anew, which the kernel refuses: the port is taken.
    let foreign: SocketAddr = std::env::var("FOREIGN_ADDR").unwrap().parse().unwrap();
    let err = upgrader.tcp_listener(foreign).unwrap_err();
    let Error::Create { source, .. } = &err else {
        panic!("expected Create, got {err:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot create a TCP listener on {foreign}")),
        "{err}"
    );
}

/// Each inherited descriptor carries a name that asks for one thing and is another.
#[test]
fn a_name_on_the_wrong_kind_of_descriptor_is_refused() {
    let sockets = (!support::in_scenario()).then(|| {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let unlistening = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&unlistening),
            &nix::sys::socket::SockaddrStorage::from(any),
        )
        .unwrap();
        let unlistening_addr: nix::sys::socket::SockaddrIn =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&unlistening)).unwrap();
        (udp, listener, unlistening, unlistening_addr.port())
    });
    let setup = match sockets {
        None => Setup::default(),
        Some((udp, listener, unlistening, unlistening_port)) => {
            let udp_port = udp.local_addr().unwrap().port();
            let listener_port = listener.local_addr().unwrap().port();
            Setup {
                env: vars(&[
                    ("LISTEN_FDS", "4".into()),
                    (
                        "LISTEN_FDNAMES",
                        format!(
                            "tcp/127.0.0.1%3A1:tcp/127.0.0.1%3A{udp_port}:tcp/127.0.0.1%3A2:\
                             tcp/127.0.0.1%3A{unlistening_port}"
                        ),
                    ),
                    ("UDP_PORT", udp_port.to_string()),
                    ("LISTENER_PORT", listener_port.to_string()),
                    ("UNLISTENING_PORT", unlistening_port.to_string()),
                ]),
                fds: vec![dev_null(), udp.into(), listener.into(), unlistening],
                listen_pid_self: true,
                ..Setup::default()
            }
        }
    };
    if scenario("a_name_on_the_wrong_kind_of_descriptor_is_refused", setup).is_none() {
        return;
    }
    let port = |var| std::env::var(var).unwrap();
    let upgrader = Upgrader::new().unwrap();
    let cases = [
        ("127.0.0.1:1".to_owned(), 3, "a character device".to_owned()),
        (
            format!("127.0.0.1:{}", port("UDP_PORT")),
            4,
            format!(
                "an IPv4 datagram socket bound to 127.0.0.1:{}",
                port("UDP_PORT")
            ),
        ),
        (
            "127.0.0.1:2".to_owned(),
            5,
            format!(
                "a listening IPv4 stream socket bound to 127.0.0.1:{}",
                port("LISTENER_PORT")
            ),
        ),
        (
            format!("127.0.0.1:{}", port("UNLISTENING_PORT")),
            6,
            format!(
                "an IPv4 stream socket bound to 127.0.0.1:{}",
                port("UNLISTENING_PORT")
            ),
        ),
    ];
    for (addr, fd, found) in cases {
        let err = upgrader.tcp_listener(addr.parse().unwrap()).unwrap_err();
        assert!(
            matches!(&err, Error::Mismatch { fd: f, .. } if *f == fd),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "inherited fd {fd} named {:?} was expected to be a TCP listener on {addr}, \
                 but it is {found}",
                format!("tcp/{}", addr.replace(':', "%3A"))
            )
        );
    }
}

#[test]
fn a_link_fd_that_is_not_a_socket_is_refused() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "1".into()), ("GRACEFUL_LINK_FD", "4".into())]),
        fds: vec![dev_null(), dev_null()],
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario("a_link_fd_that_is_not_a_socket_is_refused", setup).is_none() {
        return;
    }
    let err = Upgrader::new().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"GRACEFUL_LINK_FD="4" names fd 4, which is a character device, not a socket"#
    );
}

#[test]
fn names_that_do_not_match_the_count_are_refused() {
    let setup = Setup {
        env: vars(&[
            ("LISTEN_FDS", "2".into()),
            ("LISTEN_FDNAMES", "only-one".into()),
        ]),
        fds: vec![dev_null(), dev_null()],
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario("names_that_do_not_match_the_count_are_refused", setup).is_none() {
        return;
    }
    let err = Upgrader::new().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"LISTEN_FDNAMES="only-one" has 1 names, but LISTEN_FDS=2"#
    );
}

/// Puts a close-on-exec socket of this process's own at `fd`, where a runtime started before
/// the upgrader puts its epoll, eventfd or signal descriptors; returns it with its peer.
fn own_socket_at(fd: RawFd) -> (OwnedFd, UnixStream) {
    assert!(
        !is_open(fd),
        "fd {fd} is already open in the scenario process; the test cannot place its own there"
    );
    // std opens it close-on-exec, as runtimes do; the lowest free number may be fd itself.
    let (mine, peer) = UnixStream::pair().unwrap();
    if mine.as_raw_fd() == fd {
        return (mine.into(), peer);
    }
    // SAFETY: dup3 onto a number that is free (checked above); the result is owned below.
    let placed = unsafe { nix::libc::dup3(mine.as_raw_fd(), fd, nix::libc::O_CLOEXEC) };
    assert_eq!(placed, fd, "dup3: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created by dup3 and nothing else owns it.
    (unsafe { OwnedFd::from_raw_fd(fd) }, peer)
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: only borrowed for F_GETFD, which answers EBADF for a free number.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

fn is_cloexec(fd: RawFd) -> bool {
    // SAFETY: only borrowed for F_GETFD.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD)
        .unwrap_or_else(|e| panic!("fd {fd} is no longer open: {e}"));
    flags & nix::libc::FD_CLOEXEC != 0
}

/// The socket at fd 3 is still this process's own: open, close-on-exec, the same socket, and
/// it still carries data.
fn still_mine(mine: &OwnedFd, peer: &mut UnixStream, inode: (u64, u64)) {
    assert!(is_cloexec(3), "fd 3 lost its FD_CLOEXEC flag");
    assert_eq!(support::inode(mine), inode, "fd 3 is another file now");
    peer.write_all(b"x").unwrap();
    let mut byte = [0u8];
    let mut mine = std::fs::File::from(mine.try_clone().unwrap());
    mine.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x");
}

/// A runtime started before the upgrader opened fd 3 itself, and the environment announces
/// a descriptor there: refused, and fd 3 is left alone, now and when asked again.
#[test]
fn a_listen_fds_naming_a_descriptor_this_process_opened_is_refused() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "1".into())]),
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario(
        "a_listen_fds_naming_a_descriptor_this_process_opened_is_refused",
        setup,
    )
    .is_none()
    {
        return;
    }
    let (mine, mut peer) = own_socket_at(3);
    let inode = support::inode(&mine);
    let err = Upgrader::new().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotInherited {
                var: "LISTEN_FDS",
                fd: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "LISTEN_FDS=1 announces fd 3, but fd 3 is close-on-exec: this process opened it \
         itself, it was not inherited"
    );
    still_mine(&mine, &mut peer, inode);

    // Taken once per process: the same answer, and still nothing taken.
    let again = Upgrader::new().unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    still_mine(&mine, &mut peer, inode);
}

/// The same for the readiness link: a socket of this process's own is not its parent.
#[test]
fn a_link_fd_naming_a_socket_this_process_opened_is_refused() {
    let setup = Setup {
        env: vars(&[("GRACEFUL_LINK_FD", "3".into())]),
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario(
        "a_link_fd_naming_a_socket_this_process_opened_is_refused",
        setup,
    )
    .is_none()
    {
        return;
    }
    let (mine, mut peer) = own_socket_at(3);
    let inode = support::inode(&mine);
    let err = Upgrader::new().unwrap_err();
    assert_eq!(
        err.to_string(),
        "GRACEFUL_LINK_FD=3 announces fd 3, but fd 3 is close-on-exec: this process opened it \
         itself, it was not inherited"
    );
    still_mine(&mine, &mut peer, inode);
    let again = Upgrader::new().unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    still_mine(&mine, &mut peer, inode);
}

/// Two descriptors really inherited, 99999 announced: the error names the first missing one,
/// and the two inherited ones are neither closed nor flagged, now or when asked again.
#[test]
fn a_huge_listen_fds_names_the_first_missing_fd_and_closes_nothing() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "99999".into())]),
        fds: vec![dev_null(), dev_null()],
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario(
        "a_huge_listen_fds_names_the_first_missing_fd_and_closes_nothing",
        setup,
    )
    .is_none()
    {
        return;
    }
    let expected = "LISTEN_FDS announces fd 5, but fd 5 is not open in this process";
    let err = Upgrader::new().unwrap_err();
    assert_eq!(err.to_string(), expected);
    for fd in [3, 4] {
        assert!(is_open(fd), "fd {fd} was closed by the failed take");
        assert!(
            !is_cloexec(fd),
            "fd {fd} was flagged close-on-exec by the failed take"
        );
    }
    let err = Upgrader::new().unwrap_err();
    assert_eq!(err.to_string(), expected);
    for fd in [3, 4] {
        assert!(is_open(fd), "fd {fd} was closed by the second build");
        assert!(
            !is_cloexec(fd),
            "fd {fd} was flagged close-on-exec by the second build"
        );
    }
}

/// A loopback round trip through the runtime's reactor, bounded.
fn round_trip(rt: &tokio::runtime::Runtime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt.block_on(async {
        tokio::time::timeout(support::STEP, async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            server.write_all(b"ping").await.unwrap();
            let mut reply = [0u8; 4];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"ping");
        })
        .await
        .expect("a loopback round trip through the runtime's reactor within STEP");
    });
}

/// The case from the field: a runtime started before the upgrader has its epoll descriptor at
/// fd 3, and a leaked `LISTEN_FDS=1` announces fd 3. The build is refused, and the runtime,
/// whose descriptor was neither adopted nor closed, keeps working even for a server that
/// would carry on to `ready()`.
#[test]
fn a_runtime_started_before_the_upgrader_keeps_its_descriptors() {
    let setup = Setup {
        env: vars(&[("LISTEN_FDS", "1".into())]),
        listen_pid_self: true,
        ..Setup::default()
    };
    if scenario(
        "a_runtime_started_before_the_upgrader_keeps_its_descriptors",
        setup,
    )
    .is_none()
    {
        return;
    }
    assert!(!is_open(3), "fd 3 is taken before the runtime starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(is_cloexec(3), "the runtime opened fd 3, close-on-exec");
    round_trip(&rt);

    let built = Upgrader::new();
    if let Ok(upgrader) = &built {
        // What a server does next: it closes the inherited descriptors it did not ask for.
        upgrader.ready().unwrap();
    }
    round_trip(&rt);
    let err = built.unwrap_err();
    assert_eq!(
        err.to_string(),
        "LISTEN_FDS=1 announces fd 3, but fd 3 is close-on-exec: this process opened it \
         itself, it was not inherited"
    );
    assert!(is_cloexec(3), "fd 3 lost its FD_CLOEXEC flag");
}
