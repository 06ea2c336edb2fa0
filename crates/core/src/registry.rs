//! Which descriptors this process inherited, which it asked for, and which it will hand over.
//!
//! Invariants:
//! - An inherited descriptor is adopted only if it is what was asked for: a socket of the right
//!   family and type, listening if it should, bound to the asked address. Anything else is an
//!   error; a wrong socket is never adopted silently.
//! - The registry keeps its own duplicate of every registered descriptor. The caller gets
//!   another duplicate, so dropping a listener in the application never closes the socket that
//!   the next generation is about to inherit.
//! - Inherited descriptors nobody asked for are closed when this process becomes ready.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::SockType;

use crate::error::{Error, Result};
use crate::name::FdName;
use crate::sys::{self, FdKind, Local};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    inherited: Vec<Inherited>,
    handover: Vec<(FdName, OwnedFd)>,
}

#[derive(Debug)]
struct Inherited {
    name: String,
    decoded: Option<FdName>,
    fd: Option<OwnedFd>,
}

impl Registry {
    pub(crate) fn new(inherited: Vec<(String, OwnedFd)>) -> Registry {
        let inherited = inherited
            .into_iter()
            .map(|(name, fd)| Inherited {
                decoded: FdName::decode(&name),
                name,
                fd: Some(fd),
            })
            .collect();
        Registry {
            inherited,
            handover: Vec::new(),
        }
    }

    /// Returns the inherited descriptor for `want`, checked, or `create`s a new one; registers
    /// it for the next handover and returns the caller's own duplicate.
    pub(crate) fn inherit_or_create(
        &mut self,
        want: FdName,
        create: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<(OwnedFd, Origin)> {
        if self.handover.iter().any(|(name, _)| *name == want) {
            return Err(Error::AlreadyRegistered {
                what: want.to_string(),
            });
        }
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
        if self.handover.iter().any(|(n, _)| *n == name) {
            return Err(Error::AlreadyRegistered {
                what: name.to_string(),
            });
        }
        let mine = sys::dup_cloexec(fd.as_fd()).map_err(|e| Error::io("duplicating fd", e))?;
        self.handover.push((name, mine));
        Ok((fd, origin))
    }

    /// Finds and checks the inherited descriptor for `want`, taking it out of the inherited set.
    fn claim(&mut self, want: &FdName) -> Result<Option<(FdName, OwnedFd)>> {
        let wanted = want.encode();
        let index = self
            .inherited
            .iter()
            .position(|i| i.fd.is_some() && i.name == wanted)
            .or_else(|| self.port_zero_match(want));
        let Some(index) = index else {
            return Ok(None);
        };
        let entry = &mut self.inherited[index];
        let fd = entry.fd.as_ref().expect("claimed entries are skipped");
        let found =
            sys::describe(fd.as_fd()).map_err(|e| Error::io("inspecting inherited fd", e))?;
        if !matches(want, &found) {
            return Err(Error::Mismatch {
                name: entry.name.clone(),
                fd: fd.as_raw_fd(),
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
        let name = entry.decoded.clone().unwrap_or_else(|| want.clone());
        Ok(entry.fd.take().map(|fd| (name, fd)))
    }

    /// A listener asked for on port 0 was recorded under the port the kernel chose; the next
    /// generation, asking for port 0 again, gets the first unclaimed one on the same IP.
    fn port_zero_match(&self, want: &FdName) -> Option<usize> {
        let (FdName::Tcp(addr) | FdName::Udp(addr)) = want else {
            return None;
        };
        if addr.port() != 0 {
            return None;
        }
        self.inherited.iter().position(|i| {
            i.fd.is_some()
                && match (&i.decoded, want) {
                    (Some(FdName::Tcp(got)), FdName::Tcp(_))
                    | (Some(FdName::Udp(got)), FdName::Udp(_)) => got.ip() == addr.ip(),
                    _ => false,
                }
        })
    }

    /// Closes the inherited descriptors that were never asked for; returns their names.
    pub(crate) fn close_unclaimed(&mut self) -> Vec<(String, RawFd)> {
        self.inherited
            .drain(..)
            .filter_map(|i| i.fd.map(|fd| (i.name, fd.as_raw_fd())))
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
