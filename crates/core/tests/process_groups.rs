//! Process groups: a successor starts in a group of its own, so that a failed one is killed
//! with everything it started (a wrapper script's children hold the inherited listening
//! sockets), and a ready one moves back into its parent's group.
//!
//! In a file of its own: the scenario process makes itself a child subreaper, so that the
//! grandchildren a killed wrapper leaves become its children and can be reaped by pid.
#![cfg(target_os = "linux")]

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::Duration;

use graceful_core::{Error, Upgrader};
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

fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let ret = unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        ret,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits for `pid`, a child of this subreaper, to end and reaps it. Kills and reaps it (and
/// fails the test) if it is still alive after `STEP`.
fn reaped_within_step(pid: i32, what: &str) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let ret = unsafe { nix::libc::waitpid(pid, &mut status, 0) };
        let _ = tx.send(if ret == pid {
            Ok(ExitStatus::from_raw(status))
        } else {
            Err(std::io::Error::last_os_error())
        });
    });
    match rx.recv_timeout(STEP) {
        Ok(Ok(status)) => {
            waiter.join().unwrap();
            status
        }
        Ok(Err(err)) => panic!("cannot reap {what} (pid {pid}): {err}"),
        Err(_) => {
            // SAFETY: kill with a pid this test started (through the wrapper) and not reaped.
            unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) };
            waiter.join().unwrap();
            panic!(
                "{what} (pid {pid}) was still alive {STEP:?} after the upgrade failed, holding \
                 the inherited listening socket"
            );
        }
    }
}

/// After the failed upgrade: nothing the wrapper started is left, the parent still serves,
/// and once the parent closes its listener (and the upgrader its duplicate) the port is free
/// again.
fn nothing_left_behind(ctx: &support::Ctx, upgrader: Upgrader, listener: TcpListener) {
    let grandchild: i32 = ctx
        .read("grandchild-pid")
        .trim()
        .parse()
        .expect("the wrapper wrote its child's pid");
    let status = reaped_within_step(grandchild, "the wrapper's background child");
    assert_eq!(status.signal(), Some(nix::libc::SIGKILL), "{status}");
    still_serving(&listener);
    let addr = listener.local_addr().unwrap();
    drop(listener);
    drop(upgrader);
    TcpListener::bind(addr).unwrap_or_else(|e| {
        panic!("{addr} cannot be bound again once the parent closed its listener: {e}")
    });
}

/// A deploy installed a wrapper that starts a helper in the background and then hangs.
#[test]
fn a_wrapper_that_hangs_is_killed_with_everything_it_started() {
    let Some(ctx) = scenario(
        "a_wrapper_that_hangs_is_killed_with_everything_it_started",
        Setup::default(),
    ) else {
        return;
    };
    become_subreaper();
    let wrapper = ctx.path("wrapper");
    let pid_file = ctx.path("grandchild-pid");
    script(
        &wrapper,
        &format!(
            "sleep 1000 &\necho $! > '{0}.tmp' && mv '{0}.tmp' '{0}'\nwait\n",
            pid_file.display()
        ),
    );
    let timeout = Duration::from_secs(3);
    let upgrader = Upgrader::builder()
        .executable(&wrapper)
        .upgrade_timeout(timeout)
        .build()
        .unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();

    let err = upgrader.upgrade().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    nothing_left_behind(&ctx, upgrader, listener);
}

/// A wrapper that starts a helper in the background (without the link) and exits non-zero.
#[test]
fn a_wrapper_that_exits_early_leaves_nothing_behind() {
    let Some(ctx) = scenario(
        "a_wrapper_that_exits_early_leaves_nothing_behind",
        Setup::default(),
    ) else {
        return;
    };
    become_subreaper();
    let wrapper = ctx.path("wrapper");
    let pid_file = ctx.path("grandchild-pid");
    script(
        &wrapper,
        &format!(
            "eval \"sleep 1000 $GRACEFUL_LINK_FD>&- &\"\n\
             echo $! > '{0}.tmp' && mv '{0}.tmp' '{0}'\nexit 7\n",
            pid_file.display()
        ),
    );
    let upgrader = Upgrader::builder()
        .executable(&wrapper)
        .upgrade_timeout(STEP)
        .build()
        .unwrap();
    let listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    upgrader.ready().unwrap();

    let err = upgrader.upgrade().unwrap_err();
    let Error::ChildExited { status, .. } = &err else {
        panic!("expected ChildExited, got {err:?}");
    };
    assert_eq!(status.code(), Some(7), "{err}");
    nothing_left_behind(&ctx, upgrader, listener);
}

/// A new generation runs in a group of its own until it is ready, then in its parent's.
#[test]
fn a_ready_generation_is_back_in_its_parents_process_group() {
    let Some(ctx) = scenario(
        "a_ready_generation_is_back_in_its_parents_process_group",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let pgid = nix::unistd::getpgrp().as_raw();

    if upgrader.parent_pid().is_some() {
        assert_eq!(
            pgid,
            nix::unistd::getpid().as_raw(),
            "before ready, the new generation leads a process group of its own"
        );
        upgrader.ready().unwrap();
        assert_eq!(
            nix::unistd::getpgrp().as_raw().to_string(),
            ctx.read("parent-pgid"),
            "once ready, the new generation is in its parent's process group"
        );
        ctx.write("child-checked", "");
        child_finishes(&upgrader);
    } else {
        ctx.write("parent-pgid", pgid.to_string());
        upgrader.ready().unwrap();
        upgrader.upgrade().unwrap();
    }
}
