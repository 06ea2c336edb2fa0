//! Upgrades that fail: the new process exits early, never becomes ready, cannot be started, or
//! the upgrade is asked for at the wrong time. Each time the parent keeps serving on the same
//! socket and a later upgrade works.
#![cfg(target_os = "linux")]

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use graceful_core::{Error, SpawnStage, Upgrader};
use support::{STEP, Setup, child_finishes, scenario};

/// The listener still accepts and serves a connection.
fn still_serving(listener: &TcpListener) {
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"still here").unwrap();
    drop(server);
    let mut reply = String::new();
    client.set_read_timeout(Some(STEP)).unwrap();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "still here");
}

#[test]
fn a_child_that_exits_before_ready_is_reported_with_its_status() {
    let Some(ctx) = scenario(
        "a_child_that_exits_before_ready_is_reported_with_its_status",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        match ctx.next_attempt() {
            0 => std::process::exit(3),
            1 => std::process::abort(),
            _ => {
                upgrader.ready().unwrap();
                child_finishes(&upgrader);
            }
        }
    } else {
        upgrader.ready().unwrap();

        let err = upgrader.upgrade().unwrap_err();
        let Error::ChildExited { pid, status } = &err else {
            panic!("expected ChildExited, got {err:?}");
        };
        assert_eq!(status.code(), Some(3), "{err}");
        assert!(
            !support::process_exists(*pid),
            "the failed child was reaped"
        );
        let message = err.to_string();
        assert!(
            message.contains("exited before it was ready") && message.contains("exit status: 3"),
            "{message}"
        );
        still_serving(&listener);

        let err = upgrader.upgrade().unwrap_err();
        let Error::ChildExited { status, .. } = &err else {
            panic!("expected ChildExited, got {err:?}");
        };
        assert_eq!(status.signal(), Some(nix::libc::SIGABRT), "{err}");
        still_serving(&listener);

        upgrader.upgrade().unwrap();
    }
}

#[test]
fn a_child_that_is_never_ready_is_killed_and_reaped_at_the_timeout() {
    let Some(ctx) = scenario(
        "a_child_that_is_never_ready_is_killed_and_reaped_at_the_timeout",
        Setup::default(),
    ) else {
        return;
    };
    // Long enough for a loaded CI machine to start the well-behaved second child.
    let timeout = Duration::from_secs(3);
    let upgrader = Upgrader::builder()
        .upgrade_timeout(timeout)
        .build()
        .unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        if ctx.next_attempt() == 0 {
            ctx.write("stuck-pid", std::process::id().to_string());
            loop {
                std::thread::park();
            }
        }
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        upgrader.ready().unwrap();
        let err = upgrader.upgrade().unwrap_err();
        let Error::Timeout { pid, timeout: t } = err else {
            panic!("expected Timeout, got {err:?}");
        };
        assert_eq!(t, timeout);
        assert_eq!(ctx.read("stuck-pid"), pid.to_string());
        assert!(
            !support::process_exists(pid),
            "the stuck child was killed and reaped"
        );
        still_serving(&listener);
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn a_missing_executable_fails_the_upgrade_and_a_later_deploy_succeeds() {
    let Some(ctx) = scenario(
        "a_missing_executable_fails_the_upgrade_and_a_later_deploy_succeeds",
        Setup::default(),
    ) else {
        return;
    };
    let next = ctx.path("next-server");
    let upgrader = Upgrader::builder().executable(&next).build().unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();

    if upgrader.parent_pid().is_some() {
        child_finishes(&upgrader);
    } else {
        let err = upgrader.upgrade().unwrap_err();
        let Error::Spawn { stage, source, .. } = &err else {
            panic!("expected Spawn, got {err:?}");
        };
        assert_eq!(*stage, SpawnStage::Execve);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&next.display().to_string()),
            "the message names the executable: {err}"
        );
        still_serving(&listener);

        fs::copy(std::env::current_exe().unwrap(), &next).unwrap();
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn a_file_that_cannot_be_executed_fails_the_upgrade_and_a_later_deploy_succeeds() {
    let Some(ctx) = scenario(
        "a_file_that_cannot_be_executed_fails_the_upgrade_and_a_later_deploy_succeeds",
        Setup::default(),
    ) else {
        return;
    };
    let next = ctx.path("next-server");
    let upgrader = Upgrader::builder().executable(&next).build().unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();

    if upgrader.parent_pid().is_some() {
        child_finishes(&upgrader);
    } else {
        // Not executable: a half-finished deploy.
        fs::copy(std::env::current_exe().unwrap(), &next).unwrap();
        fs::set_permissions(&next, fs::Permissions::from_mode(0o644)).unwrap();
        let err = upgrader.upgrade().unwrap_err();
        assert!(
            matches!(&err, Error::Spawn { stage: SpawnStage::Execve, source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{err:?}"
        );
        still_serving(&listener);

        // Executable, but not a program: a truncated or wrong-architecture binary.
        let garbage = ctx.path("garbage");
        fs::write(&garbage, b"\x7fELF but not really").unwrap();
        fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&garbage, &next).unwrap();
        let err = upgrader.upgrade().unwrap_err();
        assert!(
            matches!(&err, Error::Spawn { stage: SpawnStage::Execve, source, .. }
                if source.raw_os_error() == Some(nix::libc::ENOEXEC)),
            "{err:?}"
        );
        still_serving(&listener);

        fs::copy(std::env::current_exe().unwrap(), &next).unwrap();
        upgrader.upgrade().unwrap();
    }
}

#[test]
fn upgrades_at_the_wrong_time_are_refused() {
    let Some(ctx) = scenario("upgrades_at_the_wrong_time_are_refused", Setup::default()) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    // Not ready yet, in either generation.
    let err = upgrader.upgrade().unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("has not called ready()"), "{err}");

    if upgrader.parent_pid().is_some() {
        ctx.signal("child-started", "started");
        assert_eq!(ctx.wait_signal("go"), "go");
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
    } else {
        ctx.fifo("child-started");
        ctx.fifo("go");
        upgrader.ready().unwrap();
        let first = {
            let upgrader = upgrader.clone();
            std::thread::spawn(move || upgrader.upgrade())
        };
        assert_eq!(ctx.wait_signal("child-started"), "started");
        let err = upgrader.upgrade().unwrap_err();
        assert!(matches!(err, Error::UpgradeInProgress { .. }), "{err:?}");
        assert!(err.to_string().contains("already in progress"), "{err}");
        ctx.signal("go", "go");
        let child = first.join().unwrap().unwrap();

        let err = upgrader.upgrade().unwrap_err();
        assert!(
            matches!(err, Error::AlreadyReplaced { successor, .. } if successor == child),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("replaced by pid {child}"))
        );
        // One upgrader per process.
        let err = Upgrader::new().unwrap_err();
        assert!(matches!(err, Error::AlreadyCreated { .. }), "{err:?}");
    }
}
