//! Which descriptors this process inherited, which it asked for, and which it will hand over.
//!
//! Invariants:
//! - An inherited descriptor is adopted only if it is what was asked for: a socket of the right
//!   family and type, listening if it should, bound to the asked address. Anything else is an
//!   error; a wrong socket is never adopted silently.
//! - A descriptor is found by its name first. One whose name is not ours (systemd's `unknown`,
//!   a socket unit's `FileDescriptorName=`) was passed by the service manager at first start;
//!   asked for by address, it is found by what it is (`getsockname` and socket type), and from
//!   then on it is handed over under our name for that address. Asked for by its own name, it
//!   keeps that name.
//! - The registry keeps its own duplicate of every registered descriptor. The caller gets
//!   another duplicate, so dropping a listener in the application never closes the socket that
//!   the next generation is about to inherit.
//! - Inherited descriptors nobody asked for are closed when this process becomes ready.
//! - Under a service manager that offers a file descriptor store, a descriptor this process
//!   creates is stored there, one it closes for good or leaves unclaimed is removed
//!   (`fdstore.rs` says which kinds and when).
//! - Registering N descriptors costs O(N): inherited entries are indexed once, by their
//!   encoded name and, for a request on port 0, by protocol and IP; the registered names are
//!   a set. A server handing over thousands of listeners upgrades in linear time.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fdstore::FdStore;
use crate::name::{FdName, Listening};
use crate::sys::{self, FdKind, Local, SockType};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    inherited: Vec<Inherited>,
    /// Indices into `inherited` by encoded name, in order.
    by_name: HashMap<String, Vec<usize>>,
    /// Indices into `inherited` of our TCP and UDP names, by protocol and IP, for requests on
    /// port 0, with how many at the front have been claimed already.
    by_ip: HashMap<(Protocol, IpAddr), (Vec<usize>, usize)>,
    /// Indices into `inherited` of names that are not ours (passed by a service manager).
    foreign: Vec<usize>,
    handover: Vec<(FdName, OwnedFd)>,
    /// The names in `handover`.
    registered: HashSet<FdName>,
    /// The service manager's store of our sockets; inert unless one is offered.
    store: Arc<FdStore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug)]
struct Inherited {
    name: String,
    decoded: Option<FdName>,
    fd: Option<OwnedFd>,
}

impl Registry {
    pub(crate) fn new(inherited: Vec<(String, OwnedFd)>) -> Registry {
        let mut registry = Registry::default();
        for (index, (name, fd)) in inherited.into_iter().enumerate() {
            let decoded = FdName::decode(&name);
            match &decoded {
                Some(FdName::Tcp(addr)) => registry.index_ip(Protocol::Tcp, addr, index),
                Some(FdName::Udp(addr)) => registry.index_ip(Protocol::Udp, addr, index),
                Some(_) => {}
                None => registry.foreign.push(index),
            }
            registry
                .by_name
                .entry(name.clone())
                .or_default()
                .push(index);
            registry.inherited.push(Inherited {
                decoded,
                name,
                fd: Some(fd),
            });
        }
        registry
    }

    /// Keeps what this process creates in the service manager's `store` from now on.
    pub(crate) fn use_store(&mut self, store: Arc<FdStore>) {
        self.store = store;
    }

    fn index_ip(&mut self, protocol: Protocol, addr: &SocketAddr, index: usize) {
        self.by_ip
            .entry((protocol, addr.ip()))
            .or_default()
            .0
            .push(index);
    }

    /// Returns the inherited descriptor for `want`, checked, or `create`s a new one; registers
    /// it for the next handover and returns the caller's own duplicate.
    pub(crate) fn inherit_or_create(
        &mut self,
        want: FdName,
        create: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<(OwnedFd, Origin)> {
        self.refuse_registered(&want)?;
        let (name, fd, origin) = match self.claim(&want)? {
            Some((name, fd)) => (name, fd, Origin::Inherited),
            None => {
                let fd = create().map_err(|source| Error::Create {
                    what: want.to_string(),
                    source,
                })?;
                (registered_name(want, &fd)?, fd, Origin::Created)
            }
        };
        let fd = self.register(name.clone(), fd)?;
        match origin {
            Origin::Inherited => self.store.inherited(&name),
            Origin::Created => self.store.store(&name, fd.as_fd()),
        }
        Ok((fd, origin))
    }

    /// Stops handing over the registered descriptor that `fd` is a duplicate of, closes this
    /// registry's copy and removes it from the service manager's store; returns its name, or
    /// `None` if `fd` is not registered.
    pub(crate) fn remove(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<Option<FdName>> {
        let wanted = sys::identity(fd)?;
        let mut found = None;
        for (index, (_, mine)) in self.handover.iter().enumerate() {
            if sys::identity(mine.as_fd())? == wanted {
                found = Some(index);
                break;
            }
        }
        let Some(index) = found else {
            return Ok(None);
        };
        let (name, mine) = self.handover.remove(index);
        drop(mine);
        self.registered.remove(&name);
        self.store.remove(&name);
        Ok(Some(name))
    }

    /// Returns the inherited descriptor passed under `want`'s name, checked; there is nothing
    /// to create when none was passed.
    pub(crate) fn inherit_passed(&mut self, want: FdName) -> Result<OwnedFd> {
        self.refuse_registered(&want)?;
        match self.claim(&want)? {
            Some((name, fd)) => self.register(name, fd),
            None => Err(Error::Create {
                what: want.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no socket was passed under that name (unclaimed passed names: {})",
                        self.unclaimed_names()
                    ),
                ),
            }),
        }
    }

    fn refuse_registered(&self, want: &FdName) -> Result<()> {
        if self.registered.contains(want) {
            return Err(Error::AlreadyRegistered {
                what: want.to_string(),
            });
        }
        Ok(())
    }

    fn register(&mut self, name: FdName, fd: OwnedFd) -> Result<OwnedFd> {
        self.refuse_registered(&name)?;
        let mine = sys::dup_cloexec(fd.as_fd()).map_err(|e| Error::io("duplicating fd", e))?;
        self.registered.insert(name.clone());
        self.handover.push((name, mine));
        Ok(fd)
    }

    /// Finds and checks the inherited descriptor for `want`, taking it out of the inherited set;
    /// returns it with the name it will be handed over under.
    fn claim(&mut self, want: &FdName) -> Result<Option<(FdName, OwnedFd)>> {
        let by_name = self
            .by_name
            .get(&want.encode())
            .and_then(|indices| {
                indices
                    .iter()
                    .copied()
                    .find(|&i| self.inherited[i].fd.is_some())
            })
            .or_else(|| self.port_zero_match(want));
        let Some(index) = by_name else {
            return self.claim_foreign(want);
        };
        let entry = &mut self.inherited[index];
        let Some(fd) = entry.fd.take() else {
            return Ok(None);
        };
        let found = match sys::describe(fd.as_fd()) {
            Ok(found) => found,
            Err(e) => {
                entry.fd = Some(fd);
                return Err(Error::io("inspecting inherited fd", e));
            }
        };
        if !matches(want, &found) {
            let mismatch = Error::Mismatch {
                name: entry.name.clone(),
                fd: fd.as_raw_fd(),
                expected: want.to_string(),
                found: found.to_string(),
            };
            entry.fd = Some(fd);
            return Err(mismatch);
        }
        let name = entry.decoded.clone().unwrap_or_else(|| want.clone());
        Ok(Some((name, fd)))
    }

    /// A socket asked for by address that no name of ours announces may have been passed by the
    /// service manager under a name of its own: the first such socket that is what was asked
    /// for is adopted, and handed over under our name from now on.
    fn claim_foreign(&mut self, want: &FdName) -> Result<Option<(FdName, OwnedFd)>> {
        if matches!(want, FdName::File(_) | FdName::Passed(..)) {
            return Ok(None);
        }
        let found = self.foreign.iter().copied().find(|&index| {
            self.inherited[index]
                .fd
                .as_ref()
                .and_then(|fd| sys::describe(fd.as_fd()).ok())
                .is_some_and(|found| matches(want, &found))
        });
        let Some(fd) = found.and_then(|index| self.inherited[index].fd.take()) else {
            return Ok(None);
        };
        Ok(Some((registered_name(want.clone(), &fd)?, fd)))
    }

    /// The names of inherited descriptors nobody has asked for yet, for error messages.
    fn unclaimed_names(&self) -> String {
        let names: Vec<String> = self
            .inherited
            .iter()
            .filter(|i| i.fd.is_some())
            .map(|i| format!("{:?}", i.name))
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// A listener asked for on port 0 was recorded under the port the kernel chose; the next
    /// generation, asking for port 0 again, gets the first unclaimed one on the same IP.
    ///
    /// The claimed entries at the front of the IP's list are skipped once and for all: a
    /// claimed descriptor never comes back (a mismatch puts it back before it counts as
    /// claimed).
    fn port_zero_match(&mut self, want: &FdName) -> Option<usize> {
        let (protocol, addr) = match want {
            FdName::Tcp(addr) => (Protocol::Tcp, addr),
            FdName::Udp(addr) => (Protocol::Udp, addr),
            _ => return None,
        };
        if addr.port() != 0 {
            return None;
        }
        let (indices, claimed) = self.by_ip.get_mut(&(protocol, addr.ip()))?;
        while let Some(&index) = indices.get(*claimed) {
            if self.inherited[index].fd.is_some() {
                return Some(index);
            }
            *claimed += 1;
        }
        None
    }

    /// Closes the inherited descriptors that were never asked for, and removes those of ours
    /// from the service manager's store; returns their names.
    pub(crate) fn close_unclaimed(&mut self) -> Vec<(String, RawFd)> {
        self.by_name.clear();
        self.by_ip.clear();
        self.foreign.clear();
        let store = &self.store;
        self.inherited
            .drain(..)
            .filter_map(|i| {
                let fd = i.fd?;
                if let Some(name) = &i.decoded {
                    store.remove(name);
                }
                Some((i.name, fd.as_raw_fd()))
            })
            .collect()
    }

    /// The names and descriptors to hand to the next generation, in order.
    pub(crate) fn handover(&self) -> (Vec<String>, Vec<RawFd>) {
        self.handover
            .iter()
            .map(|(name, fd)| (name.encode(), fd.as_raw_fd()))
            .unzip()
    }

    /// Closes this process's copies once the next generation holds the descriptors.
    pub(crate) fn release(&mut self) {
        self.handover.clear();
        self.registered.clear();
    }
}

/// Where a descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Handed over by the previous generation (or by systemd).
    Inherited,
    /// Created by this process.
    Created,
}

/// The name a newly created descriptor is registered under: a listener bound to port 0 is
/// recorded under the port the kernel chose.
fn registered_name(want: FdName, fd: &OwnedFd) -> Result<FdName> {
    let real = |addr: SocketAddr| -> Result<SocketAddr> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        match sys::describe(fd.as_fd()) {
            Ok(FdKind::Socket(info)) => match info.local {
                Local::Inet(real) => Ok(real),
                _ => Ok(addr),
            },
            Ok(_) => Ok(addr),
            Err(e) => Err(Error::io("reading the bound address", e)),
        }
    };
    Ok(match want {
        FdName::Tcp(addr) => FdName::Tcp(real(addr)?),
        FdName::Udp(addr) => FdName::Udp(real(addr)?),
        other => other,
    })
}

/// Whether an inherited descriptor is what was asked for.
fn matches(want: &FdName, found: &FdKind) -> bool {
    let info = match (want, found) {
        (FdName::File(_), _) => return true,
        (_, FdKind::Socket(info)) => info,
        _ => return false,
    };
    let same_inet = |asked: &SocketAddr| match &info.local {
        Local::Inet(bound) if asked.port() == 0 => bound.ip() == asked.ip(),
        Local::Inet(bound) => bound == asked,
        _ => false,
    };
    let stream_listener = info.ty == Some(SockType::Stream) && info.listening;
    match want {
        FdName::Passed(_, Listening::Tcp) => {
            stream_listener && matches!(info.local, Local::Inet(_))
        }
        FdName::Passed(_, Listening::Unix) => {
            stream_listener && matches!(info.local, Local::UnixPath(_) | Local::UnixAbstract(_))
        }
        FdName::Tcp(addr) => stream_listener && same_inet(addr),
        FdName::Udp(addr) => info.ty == Some(SockType::Datagram) && same_inet(addr),
        FdName::Unix(path) => {
            stream_listener && matches!(&info.local, Local::UnixPath(p) if p == path)
        }
        FdName::UnixAbstract(name) => {
            stream_listener && matches!(&info.local, Local::UnixAbstract(n) if n == name)
        }
        FdName::File(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use super::*;

    fn tcp() -> (SocketAddr, OwnedFd) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        (listener.local_addr().unwrap(), listener.into())
    }

    fn port_zero() -> FdName {
        FdName::Tcp("127.0.0.1:0".parse().unwrap())
    }

    fn not_created() -> std::io::Result<OwnedFd> {
        Err(std::io::ErrorKind::NotFound.into())
    }

    #[test]
    fn port_zero_requests_take_each_inherited_listener_once_in_order() {
        let listeners: Vec<_> = (0..3).map(|_| tcp()).collect();
        let inherited = listeners
            .iter()
            .map(|(addr, fd)| {
                let fd = sys::dup_cloexec(fd.as_fd()).unwrap();
                (FdName::Tcp(*addr).encode(), fd)
            })
            .collect();
        let mut registry = Registry::new(inherited);
        // The second one asked for by its address first: port 0 then skips it.
        let (_, origin) = registry
            .inherit_or_create(FdName::Tcp(listeners[1].0), not_created)
            .unwrap();
        assert_eq!(origin, Origin::Inherited);
        for expected in [listeners[0].0, listeners[2].0] {
            let (fd, origin) = registry
                .inherit_or_create(port_zero(), not_created)
                .unwrap();
            assert_eq!(origin, Origin::Inherited);
            let FdKind::Socket(info) = sys::describe(fd.as_fd()).unwrap() else {
                panic!("not a socket");
            };
            assert_eq!(info.local, Local::Inet(expected));
        }
        assert!(matches!(
            registry.inherit_or_create(port_zero(), not_created),
            Err(Error::Create { .. })
        ));
        let (names, _) = registry.handover();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn a_mismatch_is_put_back_and_found_again() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let lie = FdName::Tcp(SocketAddr::new(addr.ip(), addr.port())).encode();
        let mut registry = Registry::new(vec![(lie, udp.into())]);
        for _ in 0..2 {
            assert!(matches!(
                registry.inherit_or_create(port_zero(), not_created),
                Err(Error::Mismatch { .. })
            ));
        }
        assert_eq!(registry.close_unclaimed().len(), 1);
    }

    #[test]
    fn a_name_is_registered_once() {
        let (addr, fd) = tcp();
        let mut registry = Registry::new(vec![(FdName::Tcp(addr).encode(), fd)]);
        registry
            .inherit_or_create(FdName::Tcp(addr), not_created)
            .unwrap();
        assert!(matches!(
            registry.inherit_or_create(FdName::Tcp(addr), not_created),
            Err(Error::AlreadyRegistered { .. })
        ));
    }
}
