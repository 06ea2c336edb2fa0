//! What the new generation receives: the very same sockets and files, nothing else, and the
//! same command line, environment and directory. Every test runs real processes; see
//! `support/mod.rs` for how a test becomes a parent and its child.
#![cfg(target_os = "linux")]

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use graceful_core::Upgrader;
use support::{STEP, Setup, child_finishes, inode, nonblocking, scenario};

#[test]
fn sockets_and_files_are_the_same_objects_in_the_new_generation() {
    let setup = Setup {
        env: vec![("GRACEFUL_TEST_MARK".into(), "kept".into())],
        ..Setup::default()
    };
    let Some(ctx) = scenario(
        "sockets_and_files_are_the_same_objects_in_the_new_generation",
        setup,
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let unique = ctx.dir.file_name().unwrap().to_string_lossy().into_owned();

    let tcp4 = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let unix = upgrader.unix_listener(ctx.path("app.sock")).unwrap();
    let abstract_unix = upgrader
        .abstract_unix_listener(format!("graceful-test-{unique}"))
        .unwrap();
    let udp = upgrader.udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let file = upgrader
        .file("state", || {
            fs::File::options()
                .create(true)
                .append(true)
                .open(ctx.path("state"))
                .map(OwnedFd::from)
        })
        .unwrap();
    let tcp6 = ipv6.then(|| upgrader.tcp_listener("[::1]:0".parse().unwrap()).unwrap());

    let mut inodes = vec![
        ("tcp4", inode(&tcp4)),
        ("unix", inode(&unix)),
        ("abstract", inode(&abstract_unix)),
        ("udp", inode(&udp)),
        ("file", inode(&file)),
    ];
    if let Some(tcp6) = &tcp6 {
        inodes.push(("tcp6", inode(tcp6)));
    }
    let inodes = format!("{inodes:?}");

    if upgrader.parent_pid().is_some() {
        assert_eq!(upgrader.generation(), 2);
        // The systemd protocol, as a reader such as sd_listen_fds sees it.
        let pid = std::process::id().to_string();
        assert_eq!(std::env::var("LISTEN_PID").unwrap(), pid);
        assert_eq!(
            std::env::var("LISTEN_FDS").unwrap(),
            if ipv6 { "6" } else { "5" }
        );
        let names = std::env::var("LISTEN_FDNAMES").unwrap();
        let port = tcp4.local_addr().unwrap().port();
        assert!(
            names.starts_with(&format!("tcp/127.0.0.1%3A{port}:unix/")),
            "{names}"
        );
        // SAFETY: fd 3 is open (the first inherited descriptor); only borrowed for fstat.
        let fd3 = unsafe { BorrowedFd::borrow_raw(3) };
        assert_eq!(inode(&fd3), inode(&tcp4), "fd 3 is the first listener");
        // The command line, environment and directory are the parent's.
        assert_eq!(ctx.read("parent-args"), format!("{:?}", support::args()));
        assert_eq!(
            ctx.read("parent-cwd"),
            std::env::current_dir().unwrap().display().to_string()
        );
        assert_eq!(std::env::var("GRACEFUL_TEST_MARK").unwrap(), "kept");
        ctx.write("child-inodes", inodes);
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
        ctx.write("child-done", "");
    } else {
        assert_eq!(upgrader.generation(), 1);
        ctx.write("parent-args", format!("{:?}", support::args()));
        ctx.write(
            "parent-cwd",
            std::env::current_dir().unwrap().display().to_string(),
        );
        upgrader.ready().unwrap();
        let child = upgrader.upgrade().unwrap();
        assert_eq!(upgrader.successor(), Some(child));
        assert!(upgrader.replaced().is_set());
        assert_eq!(ctx.read("child-inodes"), inodes, "same kernel objects");
    }
}

#[test]
fn a_connection_queued_during_the_upgrade_is_accepted_by_the_new_generation() {
    let Some(_ctx) = scenario(
        "a_connection_queued_during_the_upgrade_is_accepted_by_the_new_generation",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();

    if upgrader.parent_pid().is_some() {
        let (mut conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        assert_eq!(line, "queued before the upgrade\n");
        writeln!(conn, "answered by {}", std::process::id()).unwrap();
        drop(conn);
        child_finishes(&upgrader);
    } else {
        // Connect and send while the parent does not accept: the connection waits in the
        // listener's backlog through the whole upgrade.
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"queued before the upgrade\n").unwrap();
        let child = upgrader.upgrade().unwrap();
        // The old generation closes its copy, as it does when it stops accepting.
        drop(listener);
        client.set_read_timeout(Some(STEP)).unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, format!("answered by {child}\n"));
    }
}

#[test]
fn upgrade_returns_only_once_the_child_is_ready_and_the_pid_file_names_it() {
    let Some(ctx) = scenario(
        "upgrade_returns_only_once_the_child_is_ready_and_the_pid_file_names_it",
        Setup::default(),
    ) else {
        return;
    };
    let pid_file = ctx.path("server.pid");
    let upgrader = Upgrader::builder().pid_file(&pid_file).build().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        ctx.signal("child-started", "started");
        assert_eq!(ctx.wait_signal("go"), "go");
        ctx.write("ready-called", "");
        upgrader.ready().unwrap();
        upgrader.ready().unwrap(); // a second call is a no-op
        child_finishes(&upgrader);
    } else {
        ctx.fifo("child-started");
        ctx.fifo("go");
        upgrader.ready().unwrap();
        assert_eq!(
            fs::read_to_string(&pid_file).unwrap(),
            format!("{}\n", std::process::id())
        );
        let returned = Arc::new(AtomicBool::new(false));
        let upgrading = {
            let (upgrader, returned) = (upgrader.clone(), returned.clone());
            std::thread::spawn(move || {
                let result = upgrader.upgrade();
                returned.store(true, Ordering::SeqCst);
                result
            })
        };
        assert_eq!(ctx.wait_signal("child-started"), "started");
        assert!(
            !returned.load(Ordering::SeqCst),
            "upgrade() returned before the child called ready()"
        );
        assert!(!ctx.path("ready-called").exists());
        ctx.signal("go", "go");
        let child = upgrading.join().unwrap().unwrap();
        assert!(ctx.path("ready-called").exists());
        assert_eq!(
            fs::read_to_string(&pid_file).unwrap(),
            format!("{child}\n"),
            "the PID file names the new generation once upgrade() returns"
        );
        let mode = fs::metadata(&pid_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

#[test]
fn nothing_else_leaks_and_unclaimed_descriptors_close_at_ready() {
    let Some(ctx) = scenario(
        "nothing_else_leaks_and_unclaimed_descriptors_close_at_ready",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let kept = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        let unclaimed: (u64, u64) = parse_inode(&ctx.read("unclaimed-inode"));
        let sentinels: Vec<(u64, u64)> = ctx
            .read("sentinel-inodes")
            .lines()
            .map(parse_inode)
            .collect();
        let before = open_inodes();
        assert!(
            before.contains(&unclaimed),
            "the unclaimed listener is inherited"
        );
        upgrader.ready().unwrap();
        let after = open_inodes();
        assert!(
            !after.contains(&unclaimed),
            "the unclaimed listener is closed at ready()"
        );
        assert!(after.contains(&inode(&kept)));
        for sentinel in sentinels {
            assert!(!before.contains(&sentinel), "sentinel {sentinel:?} leaked");
        }
        child_finishes(&upgrader);
    } else {
        // A second listener the next generation will not ask for: a new binary that dropped a
        // port from its configuration.
        let unclaimed = upgrader
            .tcp_listener("127.0.0.1:0".parse().unwrap())
            .unwrap();
        ctx.write("unclaimed-inode", format_inode(inode(&unclaimed)));
        // Sentinels: one opened the std way (close-on-exec), one deliberately without it.
        let cloexec = fs::File::create(ctx.path("sentinel-cloexec")).unwrap();
        let inheritable = nix::fcntl::open(
            &ctx.path("sentinel-inheritable"),
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let flags = nix::fcntl::fcntl(&inheritable, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(
            flags & nix::libc::FD_CLOEXEC,
            0,
            "the sentinel is inheritable"
        );
        ctx.write(
            "sentinel-inodes",
            format!(
                "{}\n{}",
                format_inode(inode(&cloexec)),
                format_inode(inode(&inheritable))
            ),
        );
        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn the_parents_nonblocking_flags_are_never_flipped() {
    let Some(ctx) = scenario(
        "the_parents_nonblocking_flags_are_never_flipped",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let async_style = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let blocking_style = upgrader.unix_listener(ctx.path("blocking.sock")).unwrap();

    if upgrader.parent_pid().is_some() {
        // The flags belong to the open file description, shared with the parent: the child
        // sees exactly what the parent set.
        assert!(nonblocking(&async_style));
        assert!(!nonblocking(&blocking_style));
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        async_style.set_nonblocking(true).unwrap();
        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
        assert!(nonblocking(&async_style), "O_NONBLOCK was cleared");
        assert!(!nonblocking(&blocking_style), "O_NONBLOCK was set");
    }
}

#[test]
fn the_binary_replaced_on_disk_is_the_one_that_runs_next() {
    // The orchestrator runs a copy of this test binary, so the scenario can replace it.
    let bin_dir = (!support::in_scenario()).then(|| tempfile::tempdir().unwrap());
    let setup = match &bin_dir {
        None => Setup::default(),
        Some(dir) => {
            let path = dir.path().join("server");
            fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
            Setup {
                executable: Some(path),
                ..Setup::default()
            }
        }
    };
    let Some(ctx) = scenario(
        "the_binary_replaced_on_disk_is_the_one_that_runs_next",
        setup,
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let exe_inode = fs::metadata("/proc/self/exe").unwrap().ino();

    if upgrader.parent_pid().is_some() {
        ctx.write("child-exe-inode", exe_inode.to_string());
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        // Deploy: put a new file at the path this process was started from.
        let started_from = std::path::PathBuf::from(std::env::args_os().next().unwrap());
        let staged = started_from.with_extension("new");
        fs::copy(&started_from, &staged).unwrap();
        fs::rename(&staged, &started_from).unwrap();
        let deployed_inode = fs::metadata(&started_from).unwrap().ino();
        assert_ne!(deployed_inode, exe_inode);
        assert!(
            fs::read_link("/proc/self/exe")
                .unwrap()
                .to_string_lossy()
                .ends_with(" (deleted)"),
            "the old binary is gone from disk"
        );

        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
        let child_inode: u64 = ctx.read("child-exe-inode").parse().unwrap();
        assert_eq!(
            child_inode, deployed_inode,
            "the child runs the deployed file"
        );
    }
}

fn format_inode((dev, ino): (u64, u64)) -> String {
    format!("{dev} {ino}")
}

fn parse_inode(text: &str) -> (u64, u64) {
    let (dev, ino) = text.trim().split_once(' ').unwrap();
    (dev.parse().unwrap(), ino.parse().unwrap())
}

/// (device, inode) of every descriptor open in this process.
fn open_inodes() -> Vec<(u64, u64)> {
    support::open_fds()
        .into_iter()
        .filter_map(|(fd, _): (RawFd, _)| {
            // SAFETY: borrowed only for fstat; a descriptor closed meanwhile gives EBADF.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            nix::sys::stat::fstat(fd.as_fd())
                .ok()
                .map(|s| (s.st_dev, s.st_ino))
        })
        .collect()
}
