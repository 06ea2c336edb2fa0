//! The inheritance protocol as it appears in a new process's environment.
//!
//! It is systemd's socket-activation protocol, so a child that reads its sockets the systemd way
//! (`sd_listen_fds`, the `listenfd` crate) works too:
//!
//! - `LISTEN_PID`: the pid the descriptors are meant for; any other process ignores them.
//! - `LISTEN_FDS`: how many descriptors start at fd 3.
//! - `LISTEN_FDNAMES`: their names, separated by `:`.
//!
//! plus two variables of our own for the readiness channel:
//!
//! - `GRACEFUL_LINK_FD`: the child's end of a Unix stream socket to its parent, placed right
//!   after the `LISTEN_FDS` range. The child writes `ready` on it; each side sees end of file
//!   when the other exits.
//! - `GRACEFUL_HANDOFF_FD`: the child's end of the hand-off channel to its parent (state and
//!   live connections, `handoff.rs`), right after the link.
//! - `GRACEFUL_GENERATION`: 1 for a process started by hand, 2 for its first successor, …
//! - `GRACEFUL_PGID`: the process group the new generation moves into once it is ready (its
//!   parent's); it runs in a group of its own until then (see `spawn.rs`).
//!
//! # Taking the descriptors
//!
//! An environment can lie: `LISTEN_FDS` may announce descriptors that were never passed, for
//! instance when a variable leaks into a process started another way. If anything opened
//! descriptors before the upgrader was built (a runtime's epoll, eventfd and signal
//! descriptors land at 3, 4, …), trusting the announcement would adopt them, close them as
//! unclaimed at `ready()`, and the runtime would then fail with EBADF. So:
//!
//! - A descriptor that survived exec cannot be close-on-exec (exec closed every such one),
//!   while std and the runtimes open theirs close-on-exec. An announced descriptor that is
//!   close-on-exec was opened by this process: it is refused ([`Error::NotInherited`]) and
//!   left alone, not adopted, closed or re-flagged.
//! - Every announced descriptor is checked (open, not close-on-exec, the link a socket) before
//!   any of them is owned; only then are they all marked close-on-exec and owned. A bad
//!   announcement therefore closes nothing.
//! - The environment is read and its descriptors taken once per process ([`take_once`]). A
//!   failure is remembered and returned again to every later build, never retried: a retry
//!   could claim numbers that have been reused by then.
//!
//! Building the upgrader first thing in `main` is still the best defence: then nothing else
//! can sit at the announced numbers, and nothing spawned can inherit them by accident.

use std::ffi::OsString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::spawn::FIRST_FD;
use crate::sys;

pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub(crate) const LINK_FD: &str = "GRACEFUL_LINK_FD";
pub(crate) const HANDOFF_FD: &str = "GRACEFUL_HANDOFF_FD";
pub(crate) const GENERATION: &str = "GRACEFUL_GENERATION";
pub(crate) const PGID: &str = "GRACEFUL_PGID";

/// Every variable of the protocol; a new generation gets fresh values for all of them.
pub(crate) const ALL: [&str; 7] = [
    LISTEN_PID,
    LISTEN_FDS,
    LISTEN_FDNAMES,
    LINK_FD,
    HANDOFF_FD,
    GENERATION,
    PGID,
];

/// The name systemd gives a descriptor when none was set.
const UNKNOWN: &str = "unknown";

/// What the environment announces, before any descriptor is looked at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Announced {
    pub(crate) names: Vec<String>,
    pub(crate) link_fd: Option<RawFd>,
    pub(crate) handoff_fd: Option<RawFd>,
    pub(crate) generation: u64,
    /// The process group to join once ready.
    pub(crate) pgid: Option<i32>,
}

/// Descriptors taken over from the environment, owned by this process from now on.
#[derive(Debug)]
pub(crate) struct Inherited {
    /// `(name, fd)` in descriptor order, starting at fd 3.
    pub(crate) fds: Vec<(String, OwnedFd)>,
    pub(crate) link: Option<OwnedFd>,
    pub(crate) handoff: Option<OwnedFd>,
    pub(crate) generation: u64,
    pub(crate) pgid: Option<i32>,
}

/// Reads the protocol's variables for process `pid`.
///
/// Follows `sd_listen_fds`: without `LISTEN_PID`, or with one naming another process, nothing
/// is inherited; a variable that is present but malformed is an error.
pub(crate) fn announced(
    var: impl Fn(&str) -> Option<OsString>,
    pid: u32,
) -> Result<Option<Announced>> {
    let Some(listen_pid) = text(&var, LISTEN_PID)? else {
        return Ok(None);
    };
    let for_pid: u32 = parse(LISTEN_PID, &listen_pid, "is not a process id")?;
    if for_pid != pid {
        if var(LINK_FD).is_some() {
            tracing::warn!(
                pid,
                listen_pid = for_pid,
                "the upgrade environment is meant for pid {for_pid}, not this process: a wrapper \
                 between the old and the new generation forked instead of exec'ing; ignoring it"
            );
        }
        return Ok(None);
    }

    let count = match text(&var, LISTEN_FDS)? {
        None => 0,
        Some(value) => {
            let count: usize = parse(LISTEN_FDS, &value, "is not a number of descriptors")?;
            if count > (RawFd::MAX - FIRST_FD) as usize {
                return Err(bad(
                    LISTEN_FDS,
                    &value,
                    "is more descriptors than can exist",
                ));
            }
            count
        }
    };

    let names = match text(&var, LISTEN_FDNAMES)? {
        None => vec![UNKNOWN.to_owned(); count],
        Some(value) if value.is_empty() && count == 0 => Vec::new(),
        Some(value) => {
            let names: Vec<String> = value.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(bad(
                    LISTEN_FDNAMES,
                    &value,
                    &format!("has {} names, but LISTEN_FDS={count}", names.len()),
                ));
            }
            names
        }
    };

    let link_fd = match text(&var, LINK_FD)? {
        None => None,
        Some(value) => {
            let fd: RawFd = parse(LINK_FD, &value, "is not a descriptor number")?;
            let listed = FIRST_FD..FIRST_FD + count as RawFd;
            if fd < FIRST_FD || listed.contains(&fd) {
                return Err(bad(
                    LINK_FD,
                    &value,
                    "must be a descriptor above 2 outside the LISTEN_FDS range",
                ));
            }
            Some(fd)
        }
    };

    let handoff_fd = match text(&var, HANDOFF_FD)? {
        None => None,
        Some(value) => {
            let fd: RawFd = parse(HANDOFF_FD, &value, "is not a descriptor number")?;
            let listed = FIRST_FD..FIRST_FD + count as RawFd;
            if link_fd.is_none() || fd < FIRST_FD || listed.contains(&fd) || Some(fd) == link_fd {
                return Err(bad(
                    HANDOFF_FD,
                    &value,
                    "must come with GRACEFUL_LINK_FD and name a descriptor above 2, outside the \
                     LISTEN_FDS range, other than the link",
                ));
            }
            Some(fd)
        }
    };

    let generation = match text(&var, GENERATION)? {
        None if link_fd.is_some() => 2,
        None => 1,
        Some(value) => {
            let generation: u64 = parse(GENERATION, &value, "is not a generation number")?;
            // 0 is no generation, and the last number would leave none for the next one.
            if generation == 0 || generation == u64::MAX {
                return Err(bad(
                    GENERATION,
                    &value,
                    "is not a generation number from 1 to 18446744073709551614",
                ));
            }
            generation
        }
    };

    let pgid = match text(&var, PGID)? {
        None => None,
        Some(value) => Some(
            parse::<i32>(PGID, &value, "is not a process group id").and_then(|pgid| {
                (pgid > 0)
                    .then_some(pgid)
                    .ok_or_else(|| bad(PGID, &value, "is not a process group id"))
            })?,
        ),
    };

    Ok(Some(Announced {
        names,
        link_fd,
        handoff_fd,
        generation,
        pgid,
    }))
}

/// What became of this process's inheritance environment.
enum Once {
    /// Not read yet.
    Unread,
    /// Read, and its descriptors (if any) handed to the upgrader being built.
    Taken,
    /// Reading it, taking its descriptors or building the upgrader with them failed.
    Failed(Error),
}

static ONCE: Mutex<Once> = Mutex::new(Once::Unread);

/// Reads this process's inheritance environment and takes the descriptors it announces, once
/// per process (see the module docs). A later call gets the first one's error again, or, if
/// the first succeeded, an error saying so.
pub(crate) fn take_once(pid: u32) -> Result<Option<Inherited>> {
    let mut once = ONCE.lock().unwrap_or_else(PoisonError::into_inner);
    match &*once {
        Once::Unread => {}
        Once::Taken => {
            return Err(Error::io(
                "taking the inherited descriptors",
                io::Error::other(format!(
                    "they were taken already by an earlier Upgrader build in this process                      (pid {pid})"
                )),
            ));
        }
        Once::Failed(err) => return Err(replay(err)),
    }
    let result = announced(|key| std::env::var_os(key), pid)
        .and_then(|announced| announced.map(take).transpose());
    *once = match &result {
        Ok(_) => Once::Taken,
        Err(err) => Once::Failed(replay(err)),
    };
    result
}

/// Remembers that building the upgrader failed after [`take_once`] succeeded: the descriptors
/// have gone with the failed build, so later builds get this error rather than a fresh take.
/// Does nothing if nothing was taken yet, or a failure is remembered already.
pub(crate) fn build_failed(err: &Error) {
    let mut once = ONCE.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*once, Once::Taken) {
        *once = Once::Failed(replay(err));
    }
}

/// The same error once more (io errors keep their kind and message).
fn replay(err: &Error) -> Error {
    match err {
        Error::Environment {
            var,
            value,
            problem,
        } => Error::Environment {
            var,
            value: value.clone(),
            problem: problem.clone(),
        },
        Error::InheritedFdMissing { var, fd } => Error::InheritedFdMissing { var, fd: *fd },
        Error::NotInherited { var, value, fd } => Error::NotInherited {
            var,
            value: value.clone(),
            fd: *fd,
        },
        Error::Io { context, source } => Error::Io {
            context,
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::io(
            "building the Upgrader failed earlier in this process",
            io::Error::other(other.to_string()),
        ),
    }
}

/// Takes ownership of the announced descriptors, marking each close-on-exec so that nothing
/// this process spawns inherits them by accident.
///
/// Every one is checked before any is owned, so that an error leaves every descriptor as it
/// was: none is closed or flagged.
pub(crate) fn take(announced: Announced) -> Result<Inherited> {
    let count = announced.names.len();
    let listed = FIRST_FD..FIRST_FD + count as RawFd;
    let count_text = count.to_string();
    for fd in listed.clone() {
        check_inherited(LISTEN_FDS, &count_text, fd)?;
    }
    for (var, fd) in [
        (LINK_FD, announced.link_fd),
        (HANDOFF_FD, announced.handoff_fd),
    ] {
        let Some(fd) = fd else { continue };
        check_inherited(var, &fd.to_string(), fd)?;
        // Inspected by number: it is not ours until every announced descriptor is checked.
        match sys::file_type(fd) {
            Ok(sys::FileType::Socket) => {}
            Ok(found) => {
                return Err(Error::Environment {
                    var,
                    value: fd.to_string(),
                    problem: format!("names fd {fd}, which is {found}, not a socket"),
                });
            }
            Err(source) => {
                let context = if var == LINK_FD {
                    "inspecting GRACEFUL_LINK_FD"
                } else {
                    "inspecting GRACEFUL_HANDOFF_FD"
                };
                return Err(Error::io(context, source));
            }
        }
    }
    for fd in listed
        .clone()
        .chain(announced.link_fd)
        .chain(announced.handoff_fd)
    {
        sys::set_cloexec_raw(fd).map_err(|e| Error::io("setting FD_CLOEXEC", e))?;
    }
    // Each fd is open, was inherited (it survived exec: FD_CLOEXEC was clear), the environment
    // hands it to this very process (LISTEN_PID matched), and `take_once` lets nothing else in
    // the process claim the announced numbers.
    let own = |fd| {
        // SAFETY: see above.
        unsafe { sys::own(fd) }
    };
    let fds = announced
        .names
        .into_iter()
        .zip(listed)
        .map(|(name, fd)| (name, own(fd)))
        .collect();
    let link = announced.link_fd.map(own);
    let handoff = announced.handoff_fd.map(own);
    Ok(Inherited {
        fds,
        link,
        handoff,
        generation: announced.generation,
        pgid: announced.pgid,
    })
}

/// Checks that `fd`, announced by `var=value`, is open and was inherited: a descriptor that
/// survived exec has FD_CLOEXEC clear.
fn check_inherited(var: &'static str, value: &str, fd: RawFd) -> Result<()> {
    match sys::fd_cloexec(fd) {
        None => Err(Error::InheritedFdMissing { var, fd }),
        Some(true) => Err(Error::NotInherited {
            var,
            value: value.to_owned(),
            fd,
        }),
        Some(false) => Ok(()),
    }
}

fn text(var: &impl Fn(&str) -> Option<OsString>, name: &'static str) -> Result<Option<String>> {
    match var(name) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|raw| bad(name, &raw.to_string_lossy(), "is not valid UTF-8")),
    }
}

fn parse<T: std::str::FromStr>(var: &'static str, value: &str, problem: &str) -> Result<T> {
    value.trim().parse().map_err(|_| bad(var, value, problem))
}

fn bad(var: &'static str, value: &str, problem: &str) -> Error {
    Error::Environment {
        var,
        value: value.to_owned(),
        problem: problem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.into())
    }

    fn message(result: Result<Option<Announced>>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn nothing_without_listen_pid() {
        assert_eq!(announced(env(&[("LISTEN_FDS", "2")]), 42).unwrap(), None);
    }

    #[test]
    fn another_process_pid_is_ignored() {
        let vars = env(&[("LISTEN_PID", "41"), ("LISTEN_FDS", "2")]);
        assert_eq!(announced(vars, 42).unwrap(), None);
    }

    #[test]
    fn systemd_style_without_names() {
        let vars = env(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "2")]);
        let got = announced(vars, 42).unwrap().unwrap();
        assert_eq!(got.names, ["unknown", "unknown"]);
        assert_eq!(got.link_fd, None);
        assert_eq!(got.generation, 1);
    }

    #[test]
    fn full_upgrade_environment() {
        let vars = env(&[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "tcp/127.0.0.1%3A80:file/x"),
            ("GRACEFUL_LINK_FD", "5"),
            ("GRACEFUL_HANDOFF_FD", "6"),
            ("GRACEFUL_GENERATION", "7"),
            ("GRACEFUL_PGID", "40"),
        ]);
        let got = announced(vars, 42).unwrap().unwrap();
        assert_eq!(got.names, ["tcp/127.0.0.1%3A80", "file/x"]);
        assert_eq!(got.link_fd, Some(5));
        assert_eq!(got.handoff_fd, Some(6));
        assert_eq!(got.generation, 7);
        assert_eq!(got.pgid, Some(40));
    }

    #[test]
    fn a_generation_leaves_room_for_the_next_one() {
        for value in ["0", "18446744073709551615"] {
            let pairs = [("LISTEN_PID", "42"), ("GRACEFUL_GENERATION", value)];
            let vars = env(&pairs);
            assert_eq!(
                message(announced(vars, 42)),
                format!(
                    "GRACEFUL_GENERATION={value:?} is not a generation number from 1 to \
                     18446744073709551614"
                )
            );
        }
        let vars = env(&[
            ("LISTEN_PID", "42"),
            ("GRACEFUL_GENERATION", "18446744073709551614"),
        ]);
        assert_eq!(
            announced(vars, 42).unwrap().unwrap().generation,
            u64::MAX - 1
        );
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_value() {
        let cases: [(&[(&str, &str)], &str); 12] = [
            (
                &[("LISTEN_PID", "42"), ("GRACEFUL_HANDOFF_FD", "5")],
                "must come with GRACEFUL_LINK_FD",
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("GRACEFUL_LINK_FD", "5"),
                    ("GRACEFUL_HANDOFF_FD", "5"),
                ],
                "other than the link",
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDS", "2"),
                    ("GRACEFUL_LINK_FD", "5"),
                    ("GRACEFUL_HANDOFF_FD", "3"),
                ],
                "outside the LISTEN_FDS range",
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("GRACEFUL_LINK_FD", "5"),
                    ("GRACEFUL_HANDOFF_FD", "six"),
                ],
                r#"GRACEFUL_HANDOFF_FD="six" is not a descriptor number"#,
            ),
            (
                &[("LISTEN_PID", "42"), ("GRACEFUL_PGID", "x")],
                r#"GRACEFUL_PGID="x" is not a process group id"#,
            ),
            (
                &[("LISTEN_PID", "42"), ("GRACEFUL_PGID", "0")],
                r#"GRACEFUL_PGID="0" is not a process group id"#,
            ),
            (
                &[("LISTEN_PID", "me")],
                r#"LISTEN_PID="me" is not a process id"#,
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "abc")],
                r#"LISTEN_FDS="abc" is not a number of descriptors"#,
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "-1")],
                r#"LISTEN_FDS="-1" is not a number of descriptors"#,
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDS", "2"),
                    ("LISTEN_FDNAMES", "a"),
                ],
                r#"LISTEN_FDNAMES="a" has 1 names, but LISTEN_FDS=2"#,
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDS", "2"),
                    ("GRACEFUL_LINK_FD", "4"),
                ],
                "outside the LISTEN_FDS range",
            ),
            (
                &[("LISTEN_PID", "42"), ("GRACEFUL_GENERATION", "x")],
                r#"GRACEFUL_GENERATION="x" is not a generation number"#,
            ),
        ];
        for (vars, expected) in cases {
            let got = message(announced(env(vars), 42));
            assert!(
                got.contains(expected),
                "{got:?} should contain {expected:?}"
            );
        }
    }
}
