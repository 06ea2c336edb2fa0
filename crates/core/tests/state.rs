//! State handed to the next generation, as real processes: bytes and a descriptor move; a new
//! generation that fails after reading the state (or reads another version) fails the upgrade,
//! and the old one's undo hook runs; a writer that fails or panics fails the upgrade with its
//! reason; a process of an older build (here: one that never asks) gets nothing.
#![cfg(target_os = "linux")]

mod support;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use graceful_core::{Error, SavedState, Upgrader};
use support::{Setup, child_finishes, scenario};

/// A file descriptor that says where it came from: a temp file holding `text`.
fn fd_with(ctx: &support::Ctx, text: &str) -> OwnedFd {
    let mut file = tempfile::tempfile_in(&ctx.dir).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.into()
}

fn text_of(fd: OwnedFd) -> String {
    let mut file = File::from(fd);
    file.rewind().unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text
}

/// Generation 1 saves `counter=5` and a file. Its first upgrade starts a process that reads the
/// state and then exits before ready: the upgrade fails, and the undo hook runs, once. The
/// second upgrade's process reads the state again (the writer runs again) and serves.
#[test]
fn state_and_a_descriptor_move_and_a_failed_upgrade_undoes() {
    let Some(ctx) = scenario(
        "state_and_a_descriptor_move_and_a_failed_upgrade_undoes",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        let state = upgrader
            .inherited_state(1..=1)
            .unwrap()
            .expect("the parent has a writer");
        let [fd] = <[OwnedFd; 1]>::try_from(state.fds).expect("one descriptor");
        let seen = format!(
            "{} {}",
            String::from_utf8(state.bytes).unwrap(),
            text_of(fd)
        );
        if ctx.next_attempt() == 0 {
            // Read it, then fail: the state must come back to the parent.
            ctx.write("first-child-saw", &seen);
            std::process::exit(1);
        }
        ctx.write("second-child-saw", &seen);
        let again = upgrader.inherited_state(1..=1).unwrap_err();
        ctx.write("read-twice", again.to_string());
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
        return;
    }

    let saves = Arc::new(AtomicUsize::new(0));
    let undos = Arc::new(AtomicUsize::new(0));
    let (s, u) = (saves.clone(), undos.clone());
    let dir = ctx.dir.clone();
    upgrader.set_state_writer(move || {
        s.fetch_add(1, Ordering::SeqCst);
        let mut file = tempfile::tempfile_in(&dir)?;
        file.write_all(b"from generation 1")?;
        Ok(SavedState::new(1, "counter=5").with_fd(file.into()))
    });
    upgrader.set_state_undo(move || {
        u.fetch_add(1, Ordering::SeqCst);
    });
    upgrader.ready().unwrap();

    let err = upgrader.upgrade().unwrap_err();
    assert!(matches!(err, Error::ChildExited { .. }), "{err}");
    assert_eq!(
        ctx.read("first-child-saw"),
        "counter=5 from generation 1",
        "the child read the bytes and the file through the descriptor"
    );
    assert_eq!(undos.load(Ordering::SeqCst), 1, "the undo hook ran once");

    upgrader.upgrade().unwrap();
    assert_eq!(ctx.read("second-child-saw"), "counter=5 from generation 1");
    assert_eq!(saves.load(Ordering::SeqCst), 2, "saved once per upgrade");
    assert_eq!(
        undos.load(Ordering::SeqCst),
        1,
        "a successful upgrade undoes nothing"
    );
    assert!(
        ctx.read("read-twice").contains("read already"),
        "{}",
        ctx.read("read-twice")
    );
}

/// A state of a version the new build does not read: its `inherited_state` says so, the new
/// process (returning the error, the default) fails to start, the upgrade fails, and the old
/// generation's undo hook runs.
#[test]
fn a_state_of_another_version_fails_the_upgrade_and_comes_back() {
    let Some(ctx) = scenario(
        "a_state_of_another_version_fails_the_upgrade_and_comes_back",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        let err = upgrader.inherited_state(1..=2).unwrap_err();
        ctx.write("child-error", err.to_string());
        assert!(matches!(err, Error::StateVersion { found: 3, .. }), "{err}");
        std::process::exit(1);
    }

    let undos = Arc::new(AtomicUsize::new(0));
    let u = undos.clone();
    let file = fd_with(&ctx, "unused");
    let fd = Arc::new(file);
    upgrader.set_state_writer(move || Ok(SavedState::new(3, "v3 format").with_fd(fd.try_clone()?)));
    upgrader.set_state_undo(move || {
        u.fetch_add(1, Ordering::SeqCst);
    });
    upgrader.ready().unwrap();
    let err = upgrader.upgrade().unwrap_err();
    assert!(matches!(err, Error::ChildExited { .. }), "{err}");
    assert_eq!(
        ctx.read("child-error"),
        format!(
            "the previous generation handed over state version 3; pid {} reads versions 1..=2",
            err_pid(&err)
        )
    );
    assert_eq!(undos.load(Ordering::SeqCst), 1);
}

fn err_pid(err: &Error) -> u32 {
    match err {
        Error::ChildExited { pid, .. } => *pid,
        other => panic!("expected ChildExited, got {other}"),
    }
}

/// A writer that fails, then one that panics: the new process learns why and (by default)
/// fails to start; the old one serves on and a later upgrade, with a writer that works,
/// succeeds.
#[test]
fn a_writer_that_fails_or_panics_fails_the_upgrade_with_its_reason() {
    let Some(ctx) = scenario(
        "a_writer_that_fails_or_panics_fails_the_upgrade_with_its_reason",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();

    if upgrader.parent_pid().is_some() {
        let attempt = ctx.next_attempt();
        match upgrader.inherited_state(1..=1) {
            Err(err) => {
                ctx.write(&format!("child-error-{attempt}"), err.to_string());
                std::process::exit(1);
            }
            Ok(state) => {
                let bytes = state.map(|s| s.bytes).unwrap_or_default();
                ctx.write("served-with", String::from_utf8(bytes).unwrap());
                upgrader.ready().unwrap();
                child_finishes(&upgrader);
            }
        }
        return;
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    upgrader.set_state_writer(move || match c.fetch_add(1, Ordering::SeqCst) {
        0 => Err(std::io::Error::other("the cache is being rebuilt")),
        1 => panic!("a bug in the writer"),
        _ => Ok(SavedState::new(1, "fine")),
    });
    upgrader.ready().unwrap();
    for _ in 0..2 {
        assert!(matches!(
            upgrader.upgrade().unwrap_err(),
            Error::ChildExited { .. }
        ));
    }
    assert!(
        ctx.read("child-error-0")
            .ends_with("could not save its state: the cache is being rebuilt"),
        "{}",
        ctx.read("child-error-0")
    );
    assert!(
        ctx.read("child-error-1")
            .ends_with("could not save its state: the state writer panicked"),
        "{}",
        ctx.read("child-error-1")
    );
    upgrader.upgrade().unwrap();
    assert_eq!(ctx.read("served-with"), "fine");
}

/// A new process that never asks for the state (an older build, or one without state) gets
/// none, and the writer never runs; one started by hand has none to ask for.
#[test]
fn a_process_that_does_not_ask_gets_nothing_and_the_writer_does_not_run() {
    let Some(ctx) = scenario(
        "a_process_that_does_not_ask_gets_nothing_and_the_writer_does_not_run",
        Setup::default(),
    ) else {
        return;
    };
    let upgrader = Upgrader::new().unwrap();
    let _listener = upgrader
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    if upgrader.parent_pid().is_some() {
        upgrader.ready().unwrap();
        child_finishes(&upgrader);
        return;
    }
    assert!(
        upgrader.inherited_state(0..=9).unwrap().is_none(),
        "a first generation inherits no state"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    upgrader.set_state_writer(move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(SavedState::new(1, "never asked for"))
    });
    upgrader.ready().unwrap();
    upgrader.upgrade().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let _ = ctx;
}
