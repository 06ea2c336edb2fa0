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
//! - `GRACEFUL_GENERATION`: 1 for a process started by hand, 2 for its first successor, …

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::spawn::FIRST_FD;
use crate::sys;

pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub(crate) const LINK_FD: &str = "GRACEFUL_LINK_FD";
pub(crate) const GENERATION: &str = "GRACEFUL_GENERATION";

/// Every variable of the protocol; a new generation gets fresh values for all of them.
pub(crate) const ALL: [&str; 5] = [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, LINK_FD, GENERATION];

/// The name systemd gives a descriptor when none was set.
const UNKNOWN: &str = "unknown";

/// What the environment announces, before any descriptor is looked at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Announced {
    pub(crate) names: Vec<String>,
    pub(crate) link_fd: Option<RawFd>,
    pub(crate) generation: u64,
}

/// Descriptors taken over from the environment, owned by this process from now on.
#[derive(Debug)]
pub(crate) struct Inherited {
    /// `(name, fd)` in descriptor order, starting at fd 3.
    pub(crate) fds: Vec<(String, OwnedFd)>,
    pub(crate) link: Option<OwnedFd>,
    pub(crate) generation: u64,
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

    let generation = match text(&var, GENERATION)? {
        None if link_fd.is_some() => 2,
        None => 1,
        Some(value) => parse(GENERATION, &value, "is not a generation number")?,
    };

    Ok(Some(Announced {
        names,
        link_fd,
        generation,
    }))
}

/// Takes ownership of the announced descriptors, marking each close-on-exec so that nothing
/// this process spawns inherits them by accident.
pub(crate) fn take(announced: Announced) -> Result<Inherited> {
    let mut fds = Vec::with_capacity(announced.names.len());
    for (fd, name) in (FIRST_FD..).zip(announced.names) {
        fds.push((name, own_announced(LISTEN_FDS, fd)?));
    }
    let link = match announced.link_fd {
        Some(fd) => {
            let link = own_announced(LINK_FD, fd)?;
            match sys::describe(link.as_fd()) {
                Ok(sys::FdKind::Socket(_)) => {}
                Ok(found) => {
                    return Err(Error::Environment {
                        var: LINK_FD,
                        value: fd.to_string(),
                        problem: format!("names fd {fd}, which is {found}, not a socket"),
                    });
                }
                Err(source) => return Err(Error::io("inspecting GRACEFUL_LINK_FD", source)),
            }
            Some(link)
        }
        None => None,
    };
    Ok(Inherited {
        fds,
        link,
        generation: announced.generation,
    })
}

fn own_announced(var: &'static str, fd: RawFd) -> Result<OwnedFd> {
    if !sys::is_open(fd) {
        return Err(Error::InheritedFdMissing { var, fd });
    }
    // SAFETY: the environment hands this open descriptor to this very process (LISTEN_PID
    // matched), and nothing else in the process claims descriptors announced by it.
    let owned = unsafe { sys::own(fd) };
    sys::set_cloexec(owned.as_fd()).map_err(|e| Error::io("setting FD_CLOEXEC", e))?;
    Ok(owned)
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
            ("GRACEFUL_GENERATION", "7"),
        ]);
        let got = announced(vars, 42).unwrap().unwrap();
        assert_eq!(got.names, ["tcp/127.0.0.1%3A80", "file/x"]);
        assert_eq!(got.link_fd, Some(5));
        assert_eq!(got.generation, 7);
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_value() {
        let cases: [(&[(&str, &str)], &str); 6] = [
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
