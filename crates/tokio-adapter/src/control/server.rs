//! The server side: answers `upgrade`, `rollback`, `status` and `takeover` on the control
//! socket while this generation serves, through the handle's own methods.
//!
//! Invariants:
//! - The socket file has mode 0600 from the moment it exists (see
//!   [`Upgrader::private_unix_listener`]): only the server's user may upgrade it.
//! - A socket file left by a process that has gone is replaced only under an exclusive lock on
//!   its directory, so two graceful processes never both decide it is stale and remove the
//!   other's live socket.
//! - It accepts through the gate like the application's listeners: not before readiness, not
//!   during a successor's probation (the successor answers then), again after a rollback.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use graceful_core::{Error, Result, Upgrader};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::MAX_LINE;
use crate::handle::{Graceful, run_blocking};
use crate::tracked::TrackedStream;

/// How long the previous generation may take to answer a rollback request.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for its client to close too.
const LINGER: Duration = Duration::from_secs(2);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Inherits or binds the control socket and answers on it while this generation serves.
pub(crate) fn serve(graceful: &Graceful, path: &Path) -> Result<()> {
    let listener = inherit_or_bind(graceful.upgrader(), path)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("making the control socket non-blocking", e))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| Error::io("registering the control socket with tokio", e))?;
    tracing::debug!(path = %path.display(), "answering upgrade requests on the control socket");
    tokio::spawn(accept(graceful.clone(), graceful.wrap_control(listener)));
    Ok(())
}

/// The inherited control socket, or a new one. A socket file that nobody listens on is left by
/// a process that has gone; it is replaced, as anything else at the path is not, and only
/// under the directory's lock.
fn inherit_or_bind(upgrader: &Upgrader, path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match upgrader.private_unix_listener(path) {
        Err(Error::Create { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
            let _locked = lock_directory_of(path)?;
            if is_stale(path) {
                tracing::info!(path = %path.display(), "replacing a stale control socket");
                std::fs::remove_file(path)
                    .map_err(|e| Error::io("removing a stale control socket", e))?;
            }
            upgrader.private_unix_listener(path)
        }
        other => other,
    }
}

/// An exclusive lock on the directory that holds `path`, released when dropped. Every graceful
/// process takes it before it removes a stale socket there and binds its own.
fn lock_directory_of(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::fs::File::open(dir)
        .map_err(|e| Error::io("opening the control socket's directory", e))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        Error::io(
            "locking the control socket's directory",
            io::Error::from(errno),
        )
    })
}

fn is_stale(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Accepts while this generation serves, like the application's listeners: from readiness
/// until it is replaced or stopping, paused during a successor's probation.
async fn accept(graceful: Graceful, mut listener: crate::UnixListener) {
    while let Some((stream, _)) = listener.accept().await {
        tokio::spawn(answer(graceful.clone(), stream));
    }
}

async fn answer(graceful: Graceful, stream: TrackedStream<tokio::net::UnixStream>) {
    let mut stream = BufReader::new(stream);
    let mut request = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream).take(MAX_LINE).read_line(&mut request),
    )
    .await;
    let reply = match read {
        Ok(Ok(_))
            if request.trim() == graceful_core::TAKEOVER_REQUEST && stream.buffer().is_empty() =>
        {
            return take_over(&graceful, stream.into_inner()).await;
        }
        Ok(Ok(_)) if request.ends_with('\n') => respond(&graceful, request.trim()).await,
        Ok(Ok(n)) if n as u64 >= MAX_LINE => {
            vec![format!("error the request is longer than {MAX_LINE} bytes")]
        }
        Ok(Ok(_)) => vec!["error the request must be one line, ending with a newline".to_owned()],
        Ok(Err(err)) => vec![format!("error cannot read the request: {err}")],
        Err(_) => vec![format!("error no request within {REQUEST_TIMEOUT:?}")],
    };
    // Each line one line, whatever a reason contained.
    let reply: String = reply
        .iter()
        .map(|line| format!("{}\n", line.replace(['\n', '\r'], " ")))
        .collect();
    let stream = stream.get_mut();
    if let Err(err) = stream.write_all(reply.as_bytes()).await {
        tracing::warn!(%err, "cannot answer on the control socket; the client has gone");
    }
    // Half-close, then read what the client still sends until it closes: closing with unread
    // input would reset the connection and could destroy the answer before it is read.
    if stream.shutdown().await.is_ok() {
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Hands this generation's sockets to the process that asked for them on `stream`; the
/// upgrader answers on the connection itself, which from then on is the link between the two.
async fn take_over(graceful: &Graceful, stream: TrackedStream<tokio::net::UnixStream>) {
    // Counted by the drain while the takeover is under way, as any request being answered;
    // from then on it is the link, which lives as long as the two generations do.
    let (stream, guard) = stream.into_parts();
    let connection = stream.into_std().and_then(|stream| {
        // The upgrader reads it blocking; only this process holds this end.
        stream.set_nonblocking(false)?;
        Ok(std::os::fd::OwnedFd::from(stream))
    });
    let connection = match connection {
        Ok(connection) => connection,
        Err(err) => {
            tracing::warn!(%err, "cannot take the takeover connection from tokio");
            return;
        }
    };
    let upgrader = graceful.upgrader().clone();
    let outcome = run_blocking("graceful-takeover", move || upgrader.yield_to(connection)).await;
    drop(guard);
    match outcome {
        Ok(pid) => tracing::info!(successor_pid = pid, "taken over on the control socket"),
        // Logged by the upgrader, with the reason.
        Err(err) => tracing::debug!(%err, "takeover on the control socket did not happen"),
    }
}

/// The answer's second line: who serves, and what it runs when it said so.
fn serving(pid: u32, generation: u64, build: Option<&graceful_core::BuildIdentity>) -> String {
    match build {
        Some(build) => format!("serving pid={pid} generation={generation} {build}"),
        None => format!("serving pid={pid} generation={generation}"),
    }
}

/// The answer's lines: `ok PID` or `error REASON`, and after `ok` to `upgrade` or `status`, a
/// second line that says what serves (see the module's protocol).
async fn respond(graceful: &Graceful, request: &str) -> Vec<String> {
    if request == "status" {
        let upgrader = graceful.upgrader();
        return vec![
            format!("ok {}", upgrader.pid()),
            serving(
                upgrader.pid(),
                upgrader.generation(),
                Some(upgrader.build_identity()),
            ),
        ];
    }
    if request == "rollback" {
        tracing::warn!(
            pid = std::process::id(),
            "rollback requested on the control socket"
        );
        return vec![match graceful.rollback(ROLLBACK_TIMEOUT).await {
            Ok(pid) => format!("ok {pid}"),
            Err(err) => format!("error {err}"),
        }];
    }
    if request == graceful_core::TAKEOVER_REQUEST {
        return vec![
            "error a takeover request comes alone: nothing may follow its line".to_owned(),
        ];
    }
    if request != "upgrade" {
        return vec![format!(
            "error unknown request {request:?}; the requests are \"upgrade\", \"rollback\", \
             \"status\" and \"takeover\""
        )];
    }
    if graceful.is_upgrade_requested() {
        return vec![format!(
            "error this process (pid {}) is stopping or already replaced",
            std::process::id()
        )];
    }
    tracing::info!(
        pid = std::process::id(),
        "upgrade requested on the control socket"
    );
    // `ok PID` alone on the first line, as clients from before the second line parse it.
    match graceful.upgrade_identified().await {
        Ok(new) => vec![
            format!("ok {}", new.pid),
            serving(new.pid, new.generation, new.build.as_ref()),
        ],
        Err(err) => vec![format!("error {err}")],
    }
}
