//! The upgrader's sockets and files: each one inherited from the previous generation (or
//! passed by the service manager), checked, or created now; and registered for the next
//! handover. `registry.rs` keeps the rules for what may be adopted.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::error::{Error, Result};
use crate::name::{self, FdName, Listening};
use crate::registry::Origin;
use crate::sys;
use crate::upgrader::Upgrader;

impl Upgrader {
    /// A TCP listener on `addr`: the one inherited from the previous generation under that
    /// address, or passed by the service manager bound to it (socket activation, whatever name
    /// it was passed under), or a new one bound now (close-on-exec, `SO_REUSEADDR`, the
    /// configured backlog). The other methods for sockets find passed sockets the same way.
    ///
    /// Port 0 binds a free port; the listener is handed over under the port the kernel chose,
    /// and a next generation asking for port 0 on the same IP again gets it back.
    ///
    /// The socket's O_NONBLOCK flag is left as it is: it is shared with the other generations.
    ///
    /// # Errors
    ///
    /// [`Error::Mismatch`] if the inherited descriptor is not a listening TCP socket bound to
    /// `addr`; [`Error::Create`] if binding fails (address in use, permission denied…);
    /// [`Error::AlreadyRegistered`] if it was asked for before.
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<std::net::TcpListener> {
        let backlog = self.inner().config().backlog;
        self.inherit_or_create(FdName::Tcp(addr), || sys::bind_tcp(addr, backlog))
            .map(std::net::TcpListener::from)
    }

    /// A Unix stream listener on the filesystem path `path`, inherited or bound now.
    ///
    /// A stale socket file from a process that crashed makes binding fail with "address in
    /// use"; remove it first if that is safe for your deployment. The file is never removed by
    /// graceful, because the next generation is listening on it.
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn unix_listener(&self, path: impl AsRef<Path>) -> Result<UnixListener> {
        let path = path.as_ref();
        let backlog = self.inner().config().backlog;
        self.inherit_or_create(FdName::Unix(path.to_owned()), || {
            sys::bind_unix_path(path, backlog)
        })
        .map(UnixListener::from)
    }

    /// A Unix stream listener on `path` that only this user may connect to: when it is bound
    /// now, its socket file has mode 0600 from the moment it exists (never wider, not even
    /// briefly). For control sockets. Otherwise as [`unix_listener`](Self::unix_listener).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn private_unix_listener(&self, path: impl AsRef<Path>) -> Result<UnixListener> {
        let path = path.as_ref();
        let backlog = self.inner().config().backlog;
        self.inherit_or_create(FdName::Unix(path.to_owned()), || {
            sys::bind_private_unix(path, backlog)
        })
        .map(UnixListener::from)
    }

    /// A Unix stream listener in the abstract namespace (Linux), named `name` without the
    /// leading NUL, inherited or bound now.
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn abstract_unix_listener(&self, name: impl AsRef<[u8]>) -> Result<UnixListener> {
        let name = name.as_ref();
        let backlog = self.inner().config().backlog;
        self.inherit_or_create(FdName::UnixAbstract(name.to_owned()), || {
            sys::bind_unix_abstract(name, backlog)
        })
        .map(UnixListener::from)
    }

    /// The TCP listener that the service manager passed under `name`: a socket unit's
    /// `FileDescriptorName=` (systemd's default is the socket unit's name), or
    /// `systemd-socket-activate --fdname`. It is handed over under that name, so the next
    /// generation asks for it the same way.
    ///
    /// Nothing is bound when no socket was passed under `name`: the address belongs to the
    /// socket unit. To run with or without socket activation, ask by address instead
    /// ([`tcp_listener`](Self::tcp_listener)); a passed socket bound to that address is adopted
    /// whatever its name.
    ///
    /// # Errors
    ///
    /// [`Error::Create`] (not found) when nothing was passed under `name`; [`Error::Mismatch`]
    /// when what was passed is not a listening TCP socket; [`Error::AlreadyRegistered`] if it was
    /// asked for before.
    pub fn tcp_listener_named(&self, name: &str) -> Result<std::net::TcpListener> {
        self.inherit_passed(FdName::Passed(name.to_owned(), Listening::Tcp))
            .map(std::net::TcpListener::from)
    }

    /// The Unix stream listener that the service manager passed under `name`; see
    /// [`tcp_listener_named`](Self::tcp_listener_named).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener_named`](Self::tcp_listener_named).
    pub fn unix_listener_named(&self, name: &str) -> Result<UnixListener> {
        self.inherit_passed(FdName::Passed(name.to_owned(), Listening::Unix))
            .map(UnixListener::from)
    }

    /// A UDP socket bound to `addr`, inherited or bound now. Port 0 works as for
    /// [`tcp_listener`](Self::tcp_listener).
    ///
    /// # Errors
    ///
    /// As [`tcp_listener`](Self::tcp_listener).
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<std::net::UdpSocket> {
        self.inherit_or_create(FdName::Udp(addr), || sys::bind_udp(addr))
            .map(std::net::UdpSocket::from)
    }

    /// Any descriptor, handed over under `name`: the inherited one if the previous generation
    /// registered `name`, or the one `open` returns.
    ///
    /// # Errors
    ///
    /// [`Error::Create`] with the error of `open`; [`Error::AlreadyRegistered`] if `name` was
    /// registered before.
    pub fn file(
        &self,
        name: &str,
        open: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<OwnedFd> {
        self.inherit_or_create(FdName::File(name.to_owned()), open)
    }

    /// Closes `socket` for good: the next generation will not inherit it, and the service
    /// manager's file descriptor store (see [`Builder::fd_store_max`](crate::Builder::fd_store_max))
    /// drops its copy (`FDSTOREREMOVE=1`), so that its address refuses connections from now
    /// on instead of queueing them for nobody. Returns whether `socket` was one of this
    /// upgrader's (any duplicate of a socket it handed out counts); `socket` is closed either
    /// way.
    ///
    /// Only for a listener the application ends for good while it keeps running. At an
    /// upgrade or a stop, simply drop the listener: the successor needs it, and a restart
    /// should find it in the store.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if `socket` cannot be inspected (`fstat`).
    pub fn close_for_good(&self, socket: impl Into<OwnedFd>) -> Result<bool> {
        let socket = socket.into();
        let removed = self
            .inner()
            .registry()
            .remove(socket.as_fd())
            .map_err(|e| Error::io("inspecting the socket to close", e))?;
        match &removed {
            Some(name) => tracing::info!(
                pid = self.pid(),
                "closed {name} for good; it is no longer handed over"
            ),
            None => tracing::debug!(
                pid = self.pid(),
                fd = socket.as_raw_fd(),
                "close_for_good: not a descriptor of the upgrader; closed it alone"
            ),
        }
        Ok(removed.is_some())
    }

    fn inherit_or_create(
        &self,
        want: FdName,
        create: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<OwnedFd> {
        if want.encode().len() > name::MAX_LEN {
            return Err(Error::Create {
                what: want.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "its name would be longer than the 255 bytes LISTEN_FDNAMES allows",
                ),
            });
        }
        let (fd, origin) = self
            .inner()
            .registry()
            .inherit_or_create(want.clone(), create)?;
        self.log_origin(&want, &fd, origin);
        Ok(fd)
    }

    fn inherit_passed(&self, want: FdName) -> Result<OwnedFd> {
        let fd = self.inner().registry().inherit_passed(want.clone())?;
        self.log_origin(&want, &fd, Origin::Inherited);
        Ok(fd)
    }

    fn log_origin(&self, want: &FdName, fd: &OwnedFd, origin: Origin) {
        match origin {
            Origin::Inherited => tracing::info!(
                pid = self.pid(),
                fd = fd.as_raw_fd(),
                "adopted the inherited descriptor: {want}"
            ),
            Origin::Created => {
                tracing::debug!(pid = self.pid(), fd = fd.as_raw_fd(), "created {want}")
            }
        }
    }
}
