//! The error type of graceful-core.
//!
//! Every message names what was asked and what was found, so that an operator reading a log line
//! can act on it without reading the source.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::stage::SpawnStage;

/// A specialised `Result` for graceful-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while inheriting sockets, handing them over or upgrading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A second [`Upgrader`](crate::Upgrader) was built in a process that already has one.
    ///
    /// The inherited sockets and the link to the parent belong to the process; only one upgrader
    /// can own them.
    #[error("an Upgrader already exists in this process (pid {pid}); build it once and clone it")]
    AlreadyCreated {
        /// This process.
        pid: u32,
    },

    /// A builder setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A variable of the inheritance protocol (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`,
    /// `GRACEFUL_*`) could not be understood.
    #[error("{var}={value:?} {problem}")]
    Environment {
        /// The variable's name.
        var: &'static str,
        /// Its value as found.
        value: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The previous generation handed over a state of a version this build does not read.
    ///
    /// Returned by [`Upgrader::inherited_state`](crate::Upgrader::inherited_state); a new
    /// generation that returns it before `ready()` fails to start, and the previous one serves
    /// on with its state.
    #[error(
        "the previous generation handed over state version {found}; pid {pid} reads versions \
         {accepted:?}"
    )]
    StateVersion {
        /// This process.
        pid: u32,
        /// The version that came.
        found: u32,
        /// The versions this build reads.
        accepted: std::ops::RangeInclusive<u32>,
    },

    /// The hand-off of state or connections between generations failed, or was asked for at
    /// the wrong time.
    #[error("hand-off in pid {pid}: {problem}")]
    HandOff {
        /// This process.
        pid: u32,
        /// What went wrong.
        problem: String,
    },

    /// A descriptor announced by the environment is not open in this process.
    #[error("{var} announces fd {fd}, but fd {fd} is not open in this process")]
    InheritedFdMissing {
        /// The variable that announced the descriptor.
        var: &'static str,
        /// The missing descriptor.
        fd: i32,
    },

    /// A descriptor announced by the environment is close-on-exec, so it did not survive an
    /// exec: this process opened it itself (a runtime started before the upgrader opens its
    /// epoll, eventfd and signal descriptors at 3, 4, …), and the environment is wrong.
    ///
    /// The descriptor is left alone: not adopted, closed or re-flagged.
    #[error(
        "{var}={value} announces fd {fd}, but fd {fd} is close-on-exec: this process opened it \
         itself, it was not inherited"
    )]
    NotInherited {
        /// The variable that announced the descriptor.
        var: &'static str,
        /// Its value.
        value: String,
        /// The descriptor.
        fd: i32,
    },

    /// An inherited descriptor exists under the asked name but is not what was asked for.
    ///
    /// It is never adopted: using it could mean serving on the wrong socket.
    #[error("inherited fd {fd} named {name:?} was expected to be {expected}, but it is {found}")]
    Mismatch {
        /// The name the descriptor was inherited under.
        name: String,
        /// The descriptor.
        fd: i32,
        /// What was asked for.
        expected: String,
        /// What the descriptor turned out to be.
        found: String,
    },

    /// The same socket or file was asked for twice.
    #[error(
        "{what} is already registered with this upgrader; ask for it once and clone the handle"
    )]
    AlreadyRegistered {
        /// The socket or file asked for.
        what: String,
    },

    /// Creating, binding or listening on a new socket failed.
    #[error("cannot create {what}: {source}")]
    Create {
        /// The socket or file that was being created.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `upgrade()` was called before this process called `ready()`.
    #[error("this process (pid {pid}) has not called ready() yet, so it cannot be upgraded")]
    NotReady {
        /// This process.
        pid: u32,
    },

    /// `upgrade()` was called while another upgrade is in flight.
    #[error("an upgrade is already in progress in this process (pid {pid})")]
    UpgradeInProgress {
        /// This process.
        pid: u32,
    },

    /// `upgrade()` was called in a process that has already been replaced.
    #[error("this process (pid {pid}) has already been replaced by pid {successor}")]
    AlreadyReplaced {
        /// This process.
        pid: u32,
        /// The generation that replaced it.
        successor: u32,
    },

    /// `upgrade()` was called in a process that is stopping for good.
    #[error("this process (pid {pid}) is stopping, so it does not start a new generation")]
    Stopping {
        /// This process.
        pid: u32,
    },

    /// The process was asked to stop while its upgrade was in flight. The stop wins: the new
    /// process and everything it started were killed and reaped, and this process stops.
    #[error(
        "the upgrade of pid {pid} was cancelled because it is stopping; the new process and \
         everything it started were killed"
    )]
    UpgradeCancelled {
        /// This process.
        pid: u32,
    },

    /// A rollback was asked for, but no previous generation can take the service back.
    #[error("cannot roll back from pid {pid}: {reason}")]
    RollbackUnavailable {
        /// The process that asked.
        pid: u32,
        /// Why not: no previous generation, it has exited, its probation is over…
        reason: String,
    },

    /// Taking over from the server at a control socket failed, in the process that asked
    /// (see [`Builder::takeover`](crate::Builder::takeover)): it refused, it went away, or it
    /// gave up waiting. That server serves on; this process must not.
    #[error("cannot take over from the server at {}: {problem}", path.display())]
    Takeover {
        /// The control socket asked.
        path: PathBuf,
        /// What happened.
        problem: String,
    },

    /// A process of another user asked this one to hand its sockets over; only the same user
    /// or root may. Nothing was sent.
    #[error(
        "pid {peer_pid} (uid {peer_uid}) may not take over from pid {pid}: only uid {uid} or \
         root may"
    )]
    TakeoverForbidden {
        /// This process.
        pid: u32,
        /// The process that asked.
        peer_pid: u32,
        /// Its user.
        peer_uid: u32,
        /// This process's user.
        uid: u32,
    },

    /// A process that took this one's sockets over did not report ready: it exited, closed
    /// the connection, or was not ready within the upgrade timeout. This process serves on;
    /// the other one was not started by it and is not killed (see
    /// [`Upgrader::yield_to`](crate::Upgrader::yield_to)).
    #[error("the takeover of pid {pid} by pid {successor} failed: {problem}; pid {pid} serves on")]
    TakeoverFailed {
        /// This process.
        pid: u32,
        /// The process that asked to take over.
        successor: u32,
        /// What happened.
        problem: String,
    },

    /// The new binary could not be started (missing, not executable, bad working directory…).
    #[error("cannot start {}: {stage} failed: {source}", executable.display())]
    Spawn {
        /// The executable that was to be started.
        executable: PathBuf,
        /// The step that failed (`fork`, `chdir`, `execve`, …).
        stage: SpawnStage,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The new process exited before it reported ready.
    #[error("new process (pid {pid}) exited before it was ready: {status}")]
    ChildExited {
        /// The new process.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },

    /// The new process did not report ready in time; it was killed and reaped.
    #[error("new process (pid {pid}) was not ready after {timeout:?}; it was killed")]
    Timeout {
        /// The new process.
        pid: u32,
        /// The upgrade timeout that ran out.
        timeout: Duration,
    },

    /// The PID file could not be written.
    #[error("cannot write PID file {}: {source}", path.display())]
    PidFile {
        /// The PID file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The runtime adapter's handle is not there: nothing installed it, or installing it
    /// failed (the first error, remembered: an installation is never retried).
    #[error("graceful is unavailable in this process: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },

    /// A system call that the upgrade machinery needs failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether the caller asked for something the upgrader cannot do in its state or with
    /// these settings, rather than something failing: [`NotReady`](Error::NotReady),
    /// [`UpgradeInProgress`](Error::UpgradeInProgress),
    /// [`AlreadyReplaced`](Error::AlreadyReplaced), [`Stopping`](Error::Stopping),
    /// [`AlreadyCreated`](Error::AlreadyCreated),
    /// [`AlreadyRegistered`](Error::AlreadyRegistered) and
    /// [`InvalidConfig`](Error::InvalidConfig).
    ///
    /// Such an error changed nothing and will happen again if the call is repeated as it is: fix
    /// the call (or its timing), do not alert on a failed upgrade. Every other error is a
    /// failure of the upgrade or of the system (the new process did not start or was not
    /// ready, a system call failed, the environment was malformed), after which this process
    /// keeps serving.
    pub fn is_caller_mistake(&self) -> bool {
        matches!(
            self,
            Error::NotReady { .. }
                | Error::UpgradeInProgress { .. }
                | Error::AlreadyReplaced { .. }
                | Error::Stopping { .. }
                | Error::AlreadyCreated { .. }
                | Error::AlreadyRegistered { .. }
                | Error::InvalidConfig(_)
        )
    }

    /// An [`Error::Io`]: `context` says what was being done when `source` happened. For
    /// adapters that report their own system errors as graceful errors.
    pub fn io(context: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_mistakes_are_told_apart_from_failures() {
        let mistakes = [
            Error::NotReady { pid: 1 },
            Error::UpgradeInProgress { pid: 1 },
            Error::AlreadyReplaced {
                pid: 1,
                successor: 2,
            },
            Error::Stopping { pid: 1 },
            Error::AlreadyCreated { pid: 1 },
            Error::AlreadyRegistered { what: "x".into() },
            Error::InvalidConfig("x".into()),
        ];
        for err in mistakes {
            assert!(err.is_caller_mistake(), "{err:?}");
        }
        let failures = [
            Error::Timeout {
                pid: 2,
                timeout: Duration::from_secs(1),
            },
            Error::UpgradeCancelled { pid: 1 },
            Error::Spawn {
                executable: "/x".into(),
                stage: SpawnStage::Execve,
                source: io::ErrorKind::NotFound.into(),
            },
            Error::io("x", io::ErrorKind::Other),
        ];
        for err in failures {
            assert!(!err.is_caller_mistake(), "{err:?}");
        }
    }

    #[test]
    fn a_spawn_error_names_the_step_as_before() {
        let err = Error::Spawn {
            executable: "/srv/app".into(),
            stage: SpawnStage::Execve,
            source: io::Error::from_raw_os_error(2),
        };
        assert!(
            err.to_string()
                .starts_with("cannot start /srv/app: execve failed: No such file"),
            "{err}"
        );
    }
}
