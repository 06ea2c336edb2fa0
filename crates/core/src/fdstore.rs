//! systemd's file descriptor store: the service manager keeps a copy of each listening socket
//! this service binds, so that a restart (`systemctl restart`, or `Restart=` after a crash)
//! keeps the socket and its accept queue. Connections that arrive while no process runs wait
//! in the queue and are served by the next process, which gets the socket back through
//! `LISTEN_FDS`/`LISTEN_FDNAMES` under the name it was stored with, and adopts it like any
//! inherited socket.
//!
//! The protocol (`sd_pid_notify_with_fds`): one datagram to `NOTIFY_SOCKET` with `FDSTORE=1`
//! and `FDNAME=<name>`, the descriptor attached as `SCM_RIGHTS`; `FDSTOREREMOVE=1` with
//! `FDNAME=` closes the manager's copies of that name. The manager accepts them only when the
//! unit sets `FileDescriptorStoreMax=` above zero, and only from the main process under the
//! default `NotifyAccess=main`. It answers nothing: a refusal shows in its journal alone.
//!
//! Invariants:
//! - The store is used only when a manager offers one: `$FDSTORE` above zero (systemd 254 and
//!   newer set it to the unit's `FileDescriptorStoreMax=`), or, where `$FDSTORE` is not set
//!   (older systemd), [`Builder::fd_store_max`](crate::Builder::fd_store_max) above zero; and
//!   `NOTIFY_SOCKET` is set. `fd_store_max(0)` turns it off whatever `$FDSTORE` says.
//! - Only what this process binds itself is stored: an inherited socket came from the previous
//!   generation (which stored it) or from the manager (the store itself, or a socket unit,
//!   which holds it already).
//! - Stored: TCP listeners, Unix listeners in the abstract namespace, UDP sockets. Not stored:
//!   Unix listeners on a path (a restart may remove the socket file, with `RuntimeDirectory=`
//!   for one, and a stored socket whose file is gone would be adopted unreachable: binding
//!   anew makes the file again), and `file()` descriptors (they may not be pollable).
//! - Removed (`FDSTOREREMOVE=1`): a socket closed for good
//!   ([`Upgrader::close_for_good`](crate::Upgrader::close_for_good)), and an inherited socket
//!   of ours that this generation did not ask for (closed at `ready()`), so that an address the
//!   service no longer serves refuses connections instead of queueing them for nobody.
//! - Nothing is sent at an upgrade or a stop: the successor inherits the sockets, and a stop
//!   leaves the store to the manager, which keeps it through a restart and closes it when the
//!   unit is stopped for good (unless `FileDescriptorStorePreserve=yes`).
//! - A generation started by an upgrade is the main process only once its parent has told the
//!   manager so (`MAINPID=`); until its parent has exited, what it would send is held back, so
//!   that `NotifyAccess=main` does not drop it.
//! - Messages leave in the order they were made (one lock, held while sending), so a removal
//!   never overtakes the store it undoes; sends never block (`MSG_DONTWAIT`), so the lock is
//!   brief, and the parent watcher thread may send the held-back ones.
//! - Sending is best effort, like `notify.rs`: errors, and a store that would be over its size,
//!   are logged, never returned. Serving never depends on the store.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::name::FdName;
use crate::notify::Notifier;
use crate::sys;

/// Set by systemd 254 and newer to the unit's `FileDescriptorStoreMax=`.
pub(crate) const FDSTORE: &str = "FDSTORE";

/// The service manager's store of this service's sockets, or nothing.
#[derive(Debug, Default)]
pub(crate) struct FdStore {
    /// `None`: no store is offered; nothing is ever sent.
    offered: Option<Offered>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct Offered {
    notifier: Notifier,
    /// How many descriptors the store holds at most.
    max: usize,
    /// Where `max` came from, for messages.
    source: &'static str,
}

#[derive(Debug, Default)]
struct State {
    /// The names of our descriptors that the store holds, as far as this process knows.
    held: HashSet<String>,
    /// What is held back until this process is the service's main process; `None` once it is.
    deferred: Option<Vec<Op>>,
}

#[derive(Debug)]
enum Op {
    Store(String, OwnedFd),
    Remove(String),
}

impl FdStore {
    /// Reads `NOTIFY_SOCKET` and `FDSTORE`; `configured` is
    /// [`Builder::fd_store_max`](crate::Builder::fd_store_max).
    pub(crate) fn from_env(
        var: impl Fn(&str) -> Option<OsString>,
        configured: Option<usize>,
    ) -> FdStore {
        let announced = offered_max(&var);
        let offered = match (announced, configured) {
            (_, Some(0)) => None,
            (Some(max), _) => Some((max, "FDSTORE")),
            (None, Some(max)) => Some((max, "fd_store_max")),
            (None, None) => None,
        };
        let Some((max, source)) = offered.filter(|(max, _)| *max > 0) else {
            return FdStore::default();
        };
        let notifier = Notifier::from_env(&var);
        if !notifier.is_enabled() {
            tracing::debug!(
                max,
                source,
                "a file descriptor store is configured, but NOTIFY_SOCKET names no service \
                 manager; sockets are not stored"
            );
            return FdStore::default();
        }
        if let (Some(configured), Some(found)) = (configured, announced) {
            if configured != found {
                tracing::debug!(
                    configured,
                    FDSTORE = found,
                    "fd_store_max differs from $FDSTORE; the manager's $FDSTORE wins"
                );
            }
        }
        tracing::debug!(
            max,
            source,
            "the service manager keeps this service's sockets in its file descriptor store"
        );
        FdStore {
            offered: Some(Offered {
                notifier,
                max,
                source,
            }),
            state: Mutex::default(),
        }
    }

    /// Whether a store is offered.
    pub(crate) fn is_offered(&self) -> bool {
        self.offered.is_some()
    }

    /// Holds back what would be sent until [`main_process`](Self::main_process): this process
    /// is not yet the one the manager listens to.
    pub(crate) fn defer_until_main_process(&self) {
        if self.is_offered() {
            self.state().deferred.get_or_insert_with(Vec::new);
        }
    }

    /// This process is the service's main process now: sends what was held back.
    pub(crate) fn main_process(&self) {
        let Some(offered) = &self.offered else {
            return;
        };
        // Sent under the lock, as everything is: a message from another thread waits, so the
        // manager hears them in the order they were made. The sends never block.
        let mut state = self.state();
        let deferred = state.deferred.take().unwrap_or_default();
        if !deferred.is_empty() {
            tracing::debug!(
                count = deferred.len(),
                "the main process now: sending the held-back fd store messages"
            );
        }
        for op in deferred {
            match op {
                Op::Store(name, fd) => offered.store(&name, fd.as_fd()),
                Op::Remove(name) => offered.remove(&name),
            }
        }
    }

    /// An inherited descriptor was adopted under `name`: if it is one the store keeps, it is
    /// there already (stored by an earlier generation, or passed from the store itself).
    pub(crate) fn inherited(&self, name: &FdName) {
        if self.is_offered() && storable(name) {
            self.state().held.insert(name.encode());
        }
    }

    /// Stores a descriptor this process created, if it is one the store keeps and there is
    /// room.
    pub(crate) fn store(&self, name: &FdName, fd: BorrowedFd<'_>) {
        let Some(offered) = &self.offered else {
            return;
        };
        if !storable(name) {
            tracing::debug!(
                "not storing {name} in the service manager's fd store: a restart binds it anew"
            );
            return;
        }
        let encoded = name.encode();
        let mut state = self.state();
        if state.held.contains(&encoded) {
            return;
        }
        if state.held.len() >= offered.max {
            tracing::warn!(
                max = offered.max,
                from = offered.source,
                held = state.held.len(),
                "the service manager's fd store is full; {name} is not stored, so a restart \
                 closes its queue and binds it anew. Raise FileDescriptorStoreMax= (and \
                 fd_store_max, under systemd before 254)"
            );
            return;
        }
        state.held.insert(encoded.clone());
        if let Some(deferred) = &mut state.deferred {
            match sys::dup_cloexec(fd) {
                Ok(copy) => deferred.push(Op::Store(encoded, copy)),
                Err(err) => {
                    state.held.remove(&encoded);
                    tracing::warn!(%err, "cannot keep {name} until it can be stored");
                }
            }
            return;
        }
        offered.store(&encoded, fd);
    }

    /// Closes the store's copies of `name`: this service is done with it.
    pub(crate) fn remove(&self, name: &FdName) {
        let Some(offered) = &self.offered else {
            return;
        };
        if !storable(name) {
            return;
        }
        let encoded = name.encode();
        let mut state = self.state();
        state.held.remove(&encoded);
        if let Some(deferred) = &mut state.deferred {
            deferred.push(Op::Remove(encoded));
            return;
        }
        offered.remove(&encoded);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Offered {
    fn store(&self, name: &str, fd: BorrowedFd<'_>) {
        match self.send(&store_message(name), Some(fd)) {
            Ok(()) => tracing::debug!(name, "stored in the service manager's fd store"),
            Err(err) => tracing::warn!(
                name,
                %err,
                "cannot store the socket in the service manager's fd store; a restart closes \
                 its queue and binds it anew"
            ),
        }
    }

    fn remove(&self, name: &str) {
        match self.send(&remove_message(name), None) {
            Ok(()) => tracing::debug!(name, "removed from the service manager's fd store"),
            Err(err) => tracing::warn!(
                name,
                %err,
                "cannot remove the socket from the service manager's fd store; it stays open \
                 there until the service stops"
            ),
        }
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let Some((addr, _)) = self.notifier.target() else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(addr)?;
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        sys::send_with_fds(socket.as_fd(), message.as_bytes(), &fds).map(|_| ())
    }
}

/// `$FDSTORE`, the store's size as the manager announces it (systemd 254 and newer).
fn offered_max(var: &impl Fn(&str) -> Option<OsString>) -> Option<usize> {
    let value = var(FDSTORE)?;
    match value.to_str().and_then(|v| v.parse::<usize>().ok()) {
        Some(max) => Some(max),
        None => {
            tracing::warn!(
                value = %value.to_string_lossy(),
                "FDSTORE is not a number; ignoring it"
            );
            None
        }
    }
}

/// Whether the store keeps descriptors of this kind; see the module's invariants.
fn storable(name: &FdName) -> bool {
    matches!(
        name,
        FdName::Tcp(_) | FdName::Udp(_) | FdName::UnixAbstract(_)
    )
}

fn store_message(name: &str) -> String {
    format!("FDSTORE=1\nFDNAME={name}")
}

fn remove_message(name: &str) -> String {
    format!("FDSTOREREMOVE=1\nFDNAME={name}")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

    use super::*;
    use crate::notify::NOTIFY_SOCKET;

    struct Manager {
        socket: UnixDatagram,
        _dir: tempfile::TempDir,
        path: String,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Manager {
                socket,
                path: path.to_str().unwrap().to_owned(),
                _dir: dir,
            }
        }

        fn store(&self, fdstore: Option<&str>, configured: Option<usize>) -> FdStore {
            let path = OsString::from(&self.path);
            let fdstore = fdstore.map(OsString::from);
            FdStore::from_env(
                move |key| match key {
                    NOTIFY_SOCKET => Some(path.clone()),
                    FDSTORE => fdstore.clone(),
                    _ => None,
                },
                configured,
            )
        }

        /// The next datagram and the descriptors it carried; `None` if none came in 200 ms.
        fn receive(&self) -> Option<(String, Vec<OwnedFd>)> {
            let mut buf = [0u8; 512];
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return None,
                Err(err) => panic!("recvmsg: {err}"),
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let len = msg.bytes;
            Some((String::from_utf8(buf[..len].to_vec()).unwrap(), fds))
        }
    }

    fn tcp() -> (FdName, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        (FdName::Tcp(listener.local_addr().unwrap()), listener)
    }

    #[test]
    fn a_created_listener_is_sent_with_its_name() {
        let manager = Manager::new();
        let store = manager.store(Some("4"), None);
        let (name, listener) = tcp();
        store.store(&name, listener.as_fd());
        let (message, fds) = manager.receive().expect("an FDSTORE message");
        assert_eq!(message, format!("FDSTORE=1\nFDNAME={}", name.encode()));
        assert_eq!(fds.len(), 1);
        assert_eq!(
            sys::identity(fds[0].as_fd()).unwrap(),
            sys::identity(listener.as_fd()).unwrap(),
            "the very listening socket travels"
        );
        // Stored once: asking again sends nothing.
        store.store(&name, listener.as_fd());
        assert!(manager.receive().is_none());
        store.remove(&name);
        let (message, fds) = manager.receive().expect("an FDSTOREREMOVE message");
        assert_eq!(
            message,
            format!("FDSTOREREMOVE=1\nFDNAME={}", name.encode())
        );
        assert!(fds.is_empty());
    }

    #[test]
    fn nothing_is_sent_without_an_offered_store() {
        let manager = Manager::new();
        let (name, listener) = tcp();
        for (fdstore, configured) in [(None, None), (Some("0"), None), (Some("8"), Some(0))] {
            let store = manager.store(fdstore, configured);
            assert!(!store.is_offered(), "{fdstore:?} {configured:?}");
            store.store(&name, listener.as_fd());
            store.remove(&name);
        }
        assert!(manager.receive().is_none());
        // Without NOTIFY_SOCKET, nobody could hear it.
        assert!(!FdStore::from_env(|k| (k == FDSTORE).then(|| "4".into()), None).is_offered());
    }

    #[test]
    fn the_builder_setting_stands_in_for_an_unset_fdstore() {
        let manager = Manager::new();
        let store = manager.store(None, Some(2));
        assert!(store.is_offered());
        let (name, listener) = tcp();
        store.store(&name, listener.as_fd());
        assert!(manager.receive().is_some());
    }

    #[test]
    fn a_full_store_is_not_sent_to_and_path_sockets_are_not_stored() {
        let manager = Manager::new();
        let store = manager.store(Some("1"), None);
        let (first, a) = tcp();
        let (second, b) = tcp();
        store.store(&first, a.as_fd());
        assert!(manager.receive().is_some());
        store.store(&second, b.as_fd());
        assert!(
            manager.receive().is_none(),
            "over FDSTORE=1: logged, not sent"
        );
        store.store(&FdName::Unix("/run/x.sock".into()), a.as_fd());
        assert!(manager.receive().is_none());
        // Removing the first makes room.
        store.remove(&first);
        assert!(manager.receive().is_some());
        store.store(&second, b.as_fd());
        assert!(manager.receive().is_some());
    }

    #[test]
    fn held_back_messages_go_out_in_order_once_this_is_the_main_process() {
        let manager = Manager::new();
        let store = manager.store(Some("4"), None);
        store.defer_until_main_process();
        let (name, listener) = tcp();
        let (gone, _) = tcp();
        store.store(&name, listener.as_fd());
        store.remove(&gone);
        assert!(manager.receive().is_none(), "held back");
        drop(listener);
        store.main_process();
        let (message, fds) = manager.receive().expect("the held-back FDSTORE");
        assert!(message.starts_with("FDSTORE=1\n"), "{message}");
        assert_eq!(fds.len(), 1, "the descriptor was kept while held back");
        let (message, _) = manager.receive().expect("the held-back FDSTOREREMOVE");
        assert_eq!(
            message,
            format!("FDSTOREREMOVE=1\nFDNAME={}", gone.encode())
        );
        // From now on, at once.
        store.remove(&name);
        assert!(manager.receive().is_some());
    }

    #[test]
    fn a_store_that_cannot_be_reached_is_logged_not_fatal() {
        let store = FdStore::from_env(
            |k| match k {
                NOTIFY_SOCKET => Some("/nonexistent/graceful/notify".into()),
                FDSTORE => Some("4".into()),
                _ => None,
            },
            None,
        );
        let (name, listener) = tcp();
        store.store(&name, listener.as_fd());
        store.remove(&name);
    }
}
