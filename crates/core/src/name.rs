//! Names of handed-over descriptors, as they travel in `LISTEN_FDNAMES`.
//!
//! systemd allows any printable ASCII in a name except `:`, which separates names, up to 255
//! bytes. Our names are `kind/address`, with `%`, `:` and every byte outside printable ASCII
//! percent-encoded, so IPv6 addresses and arbitrary Unix paths survive the trip:
//! `tcp/127.0.0.1%3A8080`, `tcp/[%3A%3A1]%3A8080`, `unix//run/app.sock`, `unix-abstract/app`,
//! `udp/127.0.0.1%3A5353`, `file/state`.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The longest name systemd accepts in `LISTEN_FDNAMES`.
pub(crate) const MAX_LEN: usize = 255;

/// What a handed-over descriptor is, and so what it is called.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FdName {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
    UnixAbstract(Vec<u8>),
    File(String),
    /// A listener asked for by the name the service manager passed it under (a socket unit's
    /// `FileDescriptorName=`). It keeps that name when handed over, so that the next generation
    /// finds it the same way.
    Passed(String, Listening),
}

/// What a listener asked for by name must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Listening {
    Tcp,
    Unix,
}

impl FdName {
    /// The name as written into `LISTEN_FDNAMES`.
    pub(crate) fn encode(&self) -> String {
        let (kind, raw): (&str, Cow<'_, [u8]>) = match self {
            FdName::Tcp(addr) => ("tcp", addr.to_string().into_bytes().into()),
            FdName::Udp(addr) => ("udp", addr.to_string().into_bytes().into()),
            FdName::Unix(path) => ("unix", path.as_os_str().as_bytes().into()),
            FdName::UnixAbstract(name) => ("unix-abstract", name.as_slice().into()),
            FdName::File(name) => ("file", name.as_bytes().into()),
            // Passed on as it came: it is the service manager's name, not ours.
            FdName::Passed(name, _) => return name.clone(),
        };
        format!("{kind}/{}", escape(&raw))
    }

    /// Reads a name written by [`encode`](Self::encode). Names written by anyone else (systemd's
    /// `unknown`, a socket unit's name) are not ours and give `None`.
    pub(crate) fn decode(name: &str) -> Option<FdName> {
        let (kind, escaped) = name.split_once('/')?;
        let raw = unescape(escaped)?;
        Some(match kind {
            "tcp" => FdName::Tcp(std::str::from_utf8(&raw).ok()?.parse().ok()?),
            "udp" => FdName::Udp(std::str::from_utf8(&raw).ok()?.parse().ok()?),
            "unix" => FdName::Unix(PathBuf::from(OsStr::from_bytes(&raw))),
            "unix-abstract" => FdName::UnixAbstract(raw),
            "file" => FdName::File(String::from_utf8(raw).ok()?),
            _ => return None,
        })
    }
}

impl fmt::Display for FdName {
    /// Describes the descriptor for humans: "TCP listener on 127.0.0.1:8080".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdName::Tcp(addr) => write!(f, "a TCP listener on {addr}"),
            FdName::Udp(addr) => write!(f, "a UDP socket on {addr}"),
            FdName::Unix(path) => write!(f, "a Unix listener on {}", path.display()),
            FdName::UnixAbstract(name) => {
                write!(f, "a Unix listener on @{}", String::from_utf8_lossy(name))
            }
            FdName::File(name) => write!(f, "the file {name:?}"),
            FdName::Passed(name, Listening::Tcp) => write!(f, "a TCP listener named {name:?}"),
            FdName::Passed(name, Listening::Unix) => write!(f, "a Unix listener named {name:?}"),
        }
    }
}

fn escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b == b'%' || b == b':' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names = [
            FdName::Tcp("127.0.0.1:8080".parse().unwrap()),
            FdName::Tcp("[::1]:0".parse().unwrap()),
            FdName::Udp("[fe80::1%2]:53".parse().unwrap()),
            FdName::Unix(PathBuf::from("/run/a:b%c/\u{e9}t\u{e9}.sock")),
            FdName::Unix(PathBuf::from("relative.sock")),
            FdName::UnixAbstract(b"app\0with nul".to_vec()),
            FdName::File("state: 100%".into()),
        ];
        for name in names {
            let encoded = name.encode();
            assert!(
                encoded
                    .bytes()
                    .all(|b| b != b':' && (0x20..0x7f).contains(&b)),
                "{encoded:?} is not a valid systemd fd name"
            );
            assert_eq!(FdName::decode(&encoded), Some(name), "{encoded}");
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for foreign in [
            "unknown",
            "stored",
            "http.socket",
            "tcp/not an address",
            "tcp/%zz",
            "tcp/%4",
            "",
        ] {
            assert_eq!(FdName::decode(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn display_describes_the_socket() {
        let name = FdName::Tcp("127.0.0.1:80".parse().unwrap());
        assert_eq!(name.to_string(), "a TCP listener on 127.0.0.1:80");
    }
}
