//! The harness's errors. Each one about the server carries the last lines it wrote, because
//! that is where the reason usually is.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A specialised `Result` for the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting, upgrading or stopping the server.
///
/// `Debug` shows the same text as `Display`, so that `unwrap()` and tests returning `Result`
/// print a readable message with the server's output.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be started at all (missing, not executable, …).
    #[error("cannot start the server {}: {source}", executable.display())]
    Start {
        /// The program that was to be started.
        executable: PathBuf,
        /// Why it could not be.
        #[source]
        source: graceful_core::Error,
    },

    /// The server did not call `graceful::ready()` within the ready timeout; it was killed.
    #[error(
        "readiness timeout: the server (pid {pid}) did not call graceful::ready() within \
         {timeout:?}, so it was killed{}",
        shown(output)
    )]
    NotReady {
        /// The server's pid.
        pid: u32,
        /// The ready timeout that ran out.
        timeout: Duration,
        /// The last lines it wrote.
        output: String,
    },

    /// The server exited before it called `graceful::ready()`.
    #[error(
        "the server (pid {pid}) exited before it called graceful::ready(): {status}{}",
        shown(output)
    )]
    ExitedBeforeReady {
        /// The server's pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote.
        output: String,
    },

    /// The server became ready without adopting the listener the harness handed it: it asked
    /// for another address, or asked only after `ready()`. Clients would never reach it.
    #[error(
        "the server (pid {pid}) did not adopt the listener the harness handed it ({what}): have \
         it listen on {addr} or on port 0 of the same IP (Builder::arg_addr passes the address), \
         and before it calls ready(){}",
        shown(output)
    )]
    ListenerNotAdopted {
        /// The server's pid.
        pid: u32,
        /// The harness's listening address.
        addr: SocketAddr,
        /// The descriptor as the server described it when it closed it.
        what: String,
        /// The last lines it wrote.
        output: String,
    },

    /// The server reported that an upgrade failed; it keeps serving.
    #[error(
        "the upgrade of pid {pid} failed, and pid {pid} keeps serving: {reason}{}",
        shown(output)
    )]
    UpgradeFailed {
        /// The generation that tried to upgrade.
        pid: u32,
        /// The error it logged.
        reason: String,
        /// The last lines the server wrote.
        output: String,
    },

    /// A generation ended while the harness waited for something else from it.
    #[error(
        "pid {pid} ended ({status}) while the harness waited for {waited}{}",
        shown(output)
    )]
    Exited {
        /// The generation that ended.
        pid: u32,
        /// How it ended, as far as the harness knows.
        status: String,
        /// What the harness was waiting for.
        waited: String,
        /// The last lines the server wrote.
        output: String,
    },

    /// Something did not happen in time.
    #[error("waited {timeout:?} for {waited}, in vain{}", shown(output))]
    Timeout {
        /// What the harness was waiting for.
        waited: String,
        /// How long it waited.
        timeout: Duration,
        /// The last lines the server wrote.
        output: String,
    },

    /// A system call of the harness itself failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn shown(output: &str) -> String {
    if output.is_empty() {
        "; it wrote nothing".to_owned()
    } else {
        format!("\n----- the server's last lines -----\n{output}-----")
    }
}
