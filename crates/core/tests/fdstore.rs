//! systemd's file descriptor store, as real processes: a datagram socket with `SO_PASSCRED`
//! stands in for the manager's `NOTIFY_SOCKET`, with `FDSTORE=4` set as systemd 254 and newer
//! set it. What arrives there is checked after every generation has exited: which process sent
//! which message, the descriptor attached (`SCM_RIGHTS`), and its name.
//!
//! Generation 1 binds a TCP listener, a UDP socket and a Unix listener on a path, and upgrades.
//! Generation 2 adopts the TCP listener, leaves the UDP socket unclaimed, binds a second TCP
//! listener and then closes it for good.
#![cfg(target_os = "linux")]

mod support;

use std::io::IoSliceMut;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use graceful_core::Upgrader;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, sockopt};
use support::{Setup, child_finishes};

struct Message {
    pid: u32,
    lines: Vec<String>,
    fds: Vec<OwnedFd>,
}

/// Every datagram waiting on `socket`, with its sender and descriptors.
fn drain(socket: &UnixDatagram) -> Vec<Message> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut messages = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; 4]);
        let msg = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return messages,
            Err(err) => panic!("receiving a notification: {err}"),
        };
        assert!(
            !msg.flags.contains(MsgFlags::MSG_CTRUNC),
            "descriptors were dropped"
        );
        let mut pid = None;
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            match c {
                ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid() as u32),
                ControlMessageOwned::ScmRights(raw) => {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
                _ => {}
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8(buf[..len].to_vec()).unwrap();
        messages.push(Message {
            pid: pid.expect("SO_PASSCRED gives the sender's pid"),
            lines: text.lines().map(str::to_owned).collect(),
            fds,
        });
    }
}

fn tcp_name(addr: SocketAddr) -> String {
    format!("tcp/127.0.0.1%3A{}", addr.port())
}

#[test]
fn bound_sockets_are_stored_by_name_and_removed_when_unclaimed_or_closed_for_good() {
    const TEST: &str =
        "bound_sockets_are_stored_by_name_and_removed_when_unclaimed_or_closed_for_good";
    if !support::in_scenario() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        nix::sys::socket::setsockopt(&manager, sockopt::PassCred, &true).unwrap();
        let finished = support::scenario_with_result(
            TEST,
            Setup {
                env: vec![
                    ("NOTIFY_SOCKET".into(), path.display().to_string()),
                    ("FDSTORE".into(), "4".into()),
                ],
                ..Setup::default()
            },
        )
        .ok()
        .expect("the orchestrator");
        check_store_messages(&manager, &finished);
        return;
    }
    let ctx = support::scenario(TEST, Setup::default()).expect("in the scenario");

    let upgrader = Upgrader::new().unwrap();
    if upgrader.parent_pid().is_none() {
        ctx.write("gen1", upgrader.pid().to_string());
        let tcp = upgrader
            .tcp_listener("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let udp = upgrader.udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let _path = upgrader.unix_listener(ctx.path("path.sock")).unwrap();
        ctx.write("tcp", tcp.local_addr().unwrap().to_string());
        ctx.write("udp", udp.local_addr().unwrap().to_string());
        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
        return;
    }
    ctx.write("gen2", upgrader.pid().to_string());
    let addr: SocketAddr = ctx.read("tcp").parse().unwrap();
    let _tcp = upgrader.tcp_listener(addr).unwrap();
    let _path = upgrader.unix_listener(ctx.path("path.sock")).unwrap();
    let extra = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    ctx.write("extra", extra.local_addr().unwrap().to_string());
    // The UDP socket is not asked for: closed here, and removed from the store.
    upgrader.ready().unwrap();
    child_finishes(&upgrader);
    assert!(upgrader.close_for_good(extra).unwrap());
    let unknown = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(!upgrader.close_for_good(unknown).unwrap());
}

fn check_store_messages(manager: &UnixDatagram, finished: &support::Finished) {
    let read = |name: &str| {
        finished
            .read(name)
            .unwrap_or_else(|| panic!("{name} was not written\n{}", finished.log))
    };
    let gen1: u32 = read("gen1").parse().unwrap();
    let gen2: u32 = read("gen2").parse().unwrap();
    let tcp: SocketAddr = read("tcp").parse().unwrap();
    let udp: SocketAddr = read("udp").parse().unwrap();
    let extra: SocketAddr = read("extra").parse().unwrap();

    let store: Vec<Message> = drain(manager)
        .into_iter()
        .filter(|m| m.lines[0].starts_with("FDSTORE"))
        .collect();
    let seen: Vec<(u32, Vec<String>, usize)> = store
        .iter()
        .map(|m| (m.pid, m.lines.clone(), m.fds.len()))
        .collect();
    let expected = vec![
        (
            gen1,
            vec!["FDSTORE=1".to_owned(), format!("FDNAME={}", tcp_name(tcp))],
            1,
        ),
        (
            gen1,
            vec![
                "FDSTORE=1".to_owned(),
                format!("FDNAME=udp/127.0.0.1%3A{}", udp.port()),
            ],
            1,
        ),
        // Generation 2 adopted the first listener: stored already, not sent again. What it
        // sends waits until generation 1, the main process until then, has exited.
        (
            gen2,
            vec![
                "FDSTORE=1".to_owned(),
                format!("FDNAME={}", tcp_name(extra)),
            ],
            1,
        ),
        (
            gen2,
            vec![
                "FDSTOREREMOVE=1".to_owned(),
                format!("FDNAME=udp/127.0.0.1%3A{}", udp.port()),
            ],
            0,
        ),
        (
            gen2,
            vec![
                "FDSTOREREMOVE=1".to_owned(),
                format!("FDNAME={}", tcp_name(extra)),
            ],
            0,
        ),
    ];
    assert_eq!(seen, expected, "\n----- log -----\n{}", finished.log);

    // The descriptor that travelled is the listening socket itself: every process has exited,
    // and it still queues a connection, as the manager's copy does during a restart.
    let mut first = store.into_iter().next().unwrap();
    let stored = TcpListener::from(first.fds.remove(0));
    assert_eq!(stored.local_addr().unwrap(), tcp);
    let client = TcpStream::connect(tcp).expect("the stored socket still listens");
    let (accepted, _) = stored.accept().unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
}
