//! An opt-in report of what happens to each generation, for a test harness that started the
//! server (the `graceful-testing` crate) and has to learn the outcome of every upgrade without
//! reading the server's output.
//!
//! Inert unless the process inherited a descriptor named [`NAME`], which
//! [`Handover::report`](crate::harness::Handover::report) hands over: nothing in production
//! passes one, and a process without it sends nothing. The descriptor is claimed when the
//! upgrader is built, so it is handed over to every later generation with the listeners and
//! never closed as unclaimed; the upgrader owns this process's end ([`Channel`]).
//!
//! The channel is a Unix datagram socket shared by every generation; each message is one
//! datagram of text, so messages from several processes never interleave:
//!
//! - `unclaimed <pid> <what>`: an inherited descriptor that this process did not ask for,
//!   closed when it became ready (`what` describes it: `a TCP listener on 127.0.0.1:8080`).
//! - `upgraded <pid> <successor>`: the successor is ready; this process winds down now.
//! - `upgrade-failed <pid> <reason>`: the upgrade failed; this process keeps serving.
//! - `rolled-back <pid> <successor> <reason>`: the successor failed during its probation (or
//!   asked for a rollback); this process serves again.
//! - `drained <pid> <open_at_start> <abandoned> <outcome> <elapsed_us>`: the drain ended (sent
//!   by runtime adapters through [`report_drained`](crate::harness::report_drained)); `outcome`
//!   is the [`DrainOutcome`]'s wire name. A sender that predates `elapsed_us` leaves it out; it
//!   reads as zero.
//!
//! Messages are sent without blocking: if the harness does not read, they are dropped, and the
//! server is never slowed down.
//!
//! This module is a leaf: it knows the messages and the channel, not the upgrader.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::drain::{DrainOutcome, DrainReport};
use crate::error::Error;
use crate::name::FdName;
use crate::sys;

/// The name under which the report channel is handed over, as a named file.
pub(crate) const NAME: &str = "graceful-report";

/// The longest reason sent; a datagram must stay well below the socket's buffer.
const MAX_REASON: usize = 4096;

/// What a generation tells the harness that started the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// An inherited descriptor that process `pid` did not ask for; it was closed when the
    /// process became ready.
    Unclaimed {
        /// The process that did not adopt it.
        pid: u32,
        /// What it was: `a TCP listener on 127.0.0.1:8080`.
        what: String,
    },
    /// Process `pid` was replaced: `successor` is ready and serves.
    Upgraded {
        /// The replaced process.
        pid: u32,
        /// The new generation.
        successor: u32,
    },
    /// An upgrade of process `pid` failed; it keeps serving.
    UpgradeFailed {
        /// The process that tried to upgrade.
        pid: u32,
        /// The error, as the process logged it.
        reason: String,
    },
    /// The successor of process `pid` failed during its probation, or asked to be rolled back;
    /// `pid` serves again.
    RolledBack {
        /// The process that serves again.
        pid: u32,
        /// The generation that was rolled back.
        successor: u32,
        /// Why: how the successor ended, or that a rollback was asked for.
        reason: String,
    },
    /// Process `pid` finished draining its connections.
    Drained {
        /// The drained process.
        pid: u32,
        /// How the drain ended, as the process's runtime adapter saw it.
        drain: DrainReport,
    },
}

impl Report {
    /// Reads a message as sent on the channel; `None` for anything else, such as a message of
    /// a newer version.
    pub fn decode(datagram: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(datagram).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        let (pid, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let pid = pid.parse().ok()?;
        Some(match kind {
            "unclaimed" => Report::Unclaimed {
                pid,
                what: rest.to_owned(),
            },
            "upgraded" => Report::Upgraded {
                pid,
                successor: rest.parse().ok()?,
            },
            "upgrade-failed" => Report::UpgradeFailed {
                pid,
                reason: rest.to_owned(),
            },
            "rolled-back" => {
                let (successor, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                Report::RolledBack {
                    pid,
                    successor: successor.parse().ok()?,
                    reason: reason.to_owned(),
                }
            }
            "drained" => {
                let mut fields = rest.split(' ');
                let open_at_start = fields.next()?.parse().ok()?;
                let abandoned = fields.next()?.parse().ok()?;
                let outcome = DrainOutcome::from_wire_name(fields.next()?)?;
                let elapsed = match fields.next() {
                    Some(micros) => Duration::from_micros(micros.parse().ok()?),
                    None => Duration::ZERO,
                };
                Report::Drained {
                    pid,
                    drain: DrainReport::new(open_at_start, abandoned, outcome, elapsed),
                }
            }
            _ => return None,
        })
    }

    fn encode(&self) -> String {
        match self {
            Report::Unclaimed { pid, what } => format!("unclaimed {pid} {what}"),
            Report::Upgraded { pid, successor } => format!("upgraded {pid} {successor}"),
            Report::UpgradeFailed { pid, reason } => format!("upgrade-failed {pid} {reason}"),
            Report::RolledBack {
                pid,
                successor,
                reason,
            } => format!("rolled-back {pid} {successor} {}", one_line(reason)),
            Report::Drained { pid, drain } => format!(
                "drained {pid} {} {} {} {}",
                drain.open_at_start,
                drain.abandoned,
                drain.outcome.wire_name(),
                u64::try_from(drain.elapsed.as_micros()).unwrap_or(u64::MAX)
            ),
        }
    }
}

/// This process's end of the report channel, owned by its upgrader: inert unless a harness
/// passed one.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    fd: Option<OwnedFd>,
}

impl Channel {
    /// A channel that sends on `fd`, the descriptor inherited under [`NAME`]; `None` sends
    /// nothing.
    pub(crate) fn new(fd: Option<OwnedFd>) -> Channel {
        Channel { fd }
    }

    /// Sends `report` if a harness listens; never blocks, never fails.
    pub(crate) fn send(&self, report: &Report) {
        let Some(fd) = &self.fd else {
            return;
        };
        if let Err(err) = sys::send_datagram(fd.as_fd(), report.encode().as_bytes()) {
            tracing::debug!(%err, ?report, "cannot report to the harness");
        }
    }

    /// `unclaimed`, for an inherited descriptor closed at `ready()`; names it for humans.
    pub(crate) fn unclaimed(&self, pid: u32, name: &str) {
        let what = FdName::decode(name).map_or_else(|| format!("{name:?}"), |n| n.to_string());
        self.send(&Report::Unclaimed { pid, what });
    }

    /// `upgrade-failed`, with the error's message.
    pub(crate) fn upgrade_failed(&self, pid: u32, err: &Error) {
        let reason = one_line(&err.to_string());
        self.send(&Report::UpgradeFailed { pid, reason });
    }
}

/// A message on one line, cut at a character boundary to at most [`MAX_REASON`] bytes.
fn one_line(message: &str) -> String {
    let mut line = message.replace('\n', " ");
    if line.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let reports = [
            Report::Unclaimed {
                pid: 7,
                what: "a TCP listener on 127.0.0.1:80".into(),
            },
            Report::Upgraded {
                pid: 7,
                successor: 8,
            },
            Report::UpgradeFailed {
                pid: 7,
                reason: "cannot start /x: execve failed: No such file".into(),
            },
            Report::RolledBack {
                pid: 7,
                successor: 8,
                reason: "pid 8 ended during its probation: signal: 9 (SIGKILL)".into(),
            },
            Report::Drained {
                pid: 7,
                drain: DrainReport::new(3, 1, DrainOutcome::Deadline, Duration::from_micros(1500)),
            },
        ];
        for report in reports {
            assert_eq!(
                Report::decode(report.encode().as_bytes()),
                Some(report.clone())
            );
        }
    }

    #[test]
    fn foreign_messages_are_not_reports() {
        for foreign in [
            &b"hello"[..],
            b"upgraded x 8",
            b"upgraded 7 eight",
            b"drained 7 1",
            b"drained 7 1 0 Finished",
            b"drained 7 1 0 Drained soon",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(Report::decode(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn every_drain_outcome_crosses_the_channel() {
        for outcome in DrainOutcome::ALL {
            let report = Report::Drained {
                pid: 7,
                drain: DrainReport::new(2, 0, outcome, Duration::ZERO),
            };
            assert_eq!(Report::decode(report.encode().as_bytes()), Some(report));
        }
    }

    #[test]
    fn a_drain_from_before_elapsed_was_sent_reads_as_zero() {
        let drain = DrainReport::new(3, 0, DrainOutcome::Drained, Duration::ZERO);
        assert_eq!(
            Report::decode(b"drained 7 3 0 Drained"),
            Some(Report::Drained { pid: 7, drain })
        );
    }

    #[test]
    fn a_reason_is_one_bounded_line() {
        assert_eq!(one_line("a\nb"), "a b");
        let long = one_line(&"\u{e9}".repeat(MAX_REASON));
        assert!(long.len() <= MAX_REASON && long.len() > MAX_REASON - 2);
        assert!(long.chars().all(|c| c == '\u{e9}'));
    }
}
