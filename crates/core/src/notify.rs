//! Telling the service manager what this process is doing: systemd's `sd_notify` protocol.
//!
//! When `NOTIFY_SOCKET` names a Unix datagram socket (a path, or `@name` in the abstract
//! namespace), each change of state is one datagram of newline-separated `KEY=value` lines.
//! What the generations send, in order:
//!
//! - First start, once ready: `READY=1`.
//! - An upgrade begins, in the running process: `RELOADING=1` with `MONOTONIC_USEC=`, which
//!   `Type=notify-reload` requires to tell this reload from an older one, and
//!   `EXTEND_TIMEOUT_USEC=` ([`EXTEND_BY`]).
//! - While the upgrade waits for the new generation: `EXTEND_TIMEOUT_USEC=` again every 5 s
//!   (`successor::HEARTBEAT`), with a `STATUS=` that says how long it has waited. systemd moves
//!   the reload's timeout (the `ExecReload=` command's, or `Type=notify-reload`'s wait for
//!   `READY=1`, both `TimeoutStartSec=`) to at least that long from the message, never earlier
//!   than it was; so a reload never times out before the upgrade's own timeout, however long
//!   that is, and a process that hangs is still given up on 15 s after its last message.
//! - The new generation is ready: the old process, which is still the main process, sends
//!   `MAINPID=<new pid>` and `READY=1`, before its `upgrade()` returns and so before it may stop
//!   accepting or exit. Sending it from the old process is what makes it heard under the default
//!   `NotifyAccess=main`, where systemd drops every message from any other pid. If the new process
//!   sent it, a service left at the default would keep the old pid as its main process, and
//!   systemd would take the old process's exit for the service's end. (The new main process
//!   is not the manager's own child; the README's systemd section says what that means for
//!   `systemctl stop`.)
//! - An upgrade fails: `READY=1` with a `STATUS=` line that says why; the old process serves on.
//! - A graceful stop without successor: `STOPPING=1`. A replaced process, draining, never sends
//!   it: the service is its successor now, and `STOPPING=1` would stop the service.
//!
//! `NOTIFY_SOCKET` stays in the environment, so the next generation reports to the same
//! manager. Sending is best effort: an error is logged, never returned, because a server must not
//! stop serving when its supervisor cannot hear it.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::sys;

pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where state changes are reported; nowhere when the process runs outside a service manager.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<(SocketAddr, String)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`. A value that is not a socket address is logged and ignored.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Notifier {
        let Some(value) = var(NOTIFY_SOCKET).filter(|v| !v.is_empty()) else {
            return Notifier { target: None };
        };
        let shown = value.to_string_lossy().into_owned();
        match address(value.as_bytes()) {
            Ok(addr) => Notifier {
                target: Some((addr, shown)),
            },
            Err(err) => {
                tracing::warn!(
                    notify_socket = shown,
                    %err,
                    "NOTIFY_SOCKET is not a usable socket address; the service manager will not \
                     hear from this process"
                );
                Notifier { target: None }
            }
        }
    }

    /// Whether a service manager listens.
    pub(crate) fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The manager's socket address, and the value of `NOTIFY_SOCKET` it was read from; for
    /// `fdstore.rs`, which sends descriptors along.
    pub(crate) fn target(&self) -> Option<&(SocketAddr, String)> {
        self.target.as_ref()
    }

    /// Sends one message; logs, never returns, a failure.
    pub(crate) fn send(&self, message: &str) {
        let Some((addr, shown)) = &self.target else {
            return;
        };
        match UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(message.as_bytes(), addr))
        {
            Ok(_) => tracing::debug!(
                notify_socket = shown,
                message,
                "notified the service manager"
            ),
            Err(err) => tracing::warn!(
                notify_socket = shown,
                message,
                %err,
                "cannot notify the service manager"
            ),
        }
    }
}

/// How far each `EXTEND_TIMEOUT_USEC=` moves the service manager's timeout: three heartbeats
/// (`successor::HEARTBEAT`, 5 s), so that two lost or late messages do not let it fire, while a
/// process that hangs is given up on soon after the manager's own timeout.
pub(crate) const EXTEND_BY: Duration = Duration::from_secs(15);

/// `RELOADING=1` with the time it began, as `Type=notify-reload` requires, and a first
/// `EXTEND_TIMEOUT_USEC=`. systemd reads the state first, then the extension, so the extension
/// applies to the reload this message begins.
pub(crate) fn reloading(status: &str) -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={}\n{}\nSTATUS={}",
        monotonic_usec(),
        extend_timeout(),
        one_line(status)
    )
}

/// `EXTEND_TIMEOUT_USEC=` and what is being waited for, while an upgrade waits.
pub(crate) fn still_upgrading(status: &str) -> String {
    format!("{}\nSTATUS={}", extend_timeout(), one_line(status))
}

fn extend_timeout() -> String {
    format!("EXTEND_TIMEOUT_USEC={}", EXTEND_BY.as_micros())
}

/// A `STATUS=` value on one line, as the protocol needs: a newline would start another field.
pub(crate) fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
fn monotonic_usec() -> u64 {
    // Cannot fail for CLOCK_MONOTONIC on Linux; 0 would only make systemd ignore the time.
    sys::monotonic_usec().unwrap_or(0)
}

/// `/path` or `@abstract`, as systemd writes it.
fn address(value: &[u8]) -> io::Result<SocketAddr> {
    match value.split_first() {
        Some((b'@', name)) => abstract_address(name),
        Some((b'/', _)) => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it must be an absolute path or @ followed by an abstract socket name",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(value: &str) -> Notifier {
        let value = OsString::from(value);
        Notifier::from_env(move |key| (key == NOTIFY_SOCKET).then(|| value.clone()))
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram within 10 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_socket_at_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = notifier(path.to_str().unwrap());
        assert!(notifier.is_enabled());
        notifier.send("READY=1");
        assert_eq!(receive(&socket), "READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("graceful-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        notifier(&format!("@{name}")).send("STOPPING=1");
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn no_socket_or_a_bad_one_disables_notifications() {
        assert!(!Notifier::from_env(|_| None).is_enabled());
        assert!(!notifier("").is_enabled());
        assert!(!notifier("relative/path").is_enabled());
        // Nobody listens there: logged, not an error, not a panic.
        notifier("/nonexistent/graceful/notify").send("READY=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_time_and_a_one_line_status() {
        let before = monotonic_usec();
        let message = reloading("upgrading:\nstep 1");
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before, "{usec} < {before}");
        assert_eq!(lines[2], "EXTEND_TIMEOUT_USEC=15000000");
        assert_eq!(lines[3], "STATUS=upgrading: step 1");
        assert_eq!(lines.len(), 4);
        assert_eq!(
            still_upgrading("waiting\nfor 5 s"),
            "EXTEND_TIMEOUT_USEC=15000000\nSTATUS=waiting for 5 s"
        );
    }
}
