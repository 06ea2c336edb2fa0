//! What a generation runs: its build identity, a version and a build id, so that a deploy can
//! check that the binary it shipped is the one serving.
//!
//! Each generation sends its own identity to its parent on the link, just before `ready`
//! (`link.rs`); the parent reports it as its successor's from the upgrade
//! ([`Upgrader::upgrade_identified`](crate::Upgrader::upgrade_identified)), and the tokio
//! adapter's control socket answers with it.
//!
//! The choice of defaults:
//! - The version cannot be known by a library: `env!("CARGO_PKG_VERSION")` in this crate would
//!   name graceful's own version. It is `unknown` until the application sets it
//!   ([`Builder::version`](crate::Builder::version)), usually to its own
//!   `env!("CARGO_PKG_VERSION")`.
//! - The build id defaults to a fingerprint of the executable file this process runs: its size
//!   and modification time, `SIZE@SECONDS.NANOSECONDS`, what `stat -c '%s@%.9Y' FILE` prints
//!   for the file a deploy installed. It changes when a deploy replaces the binary, costs one
//!   `stat` at build, and reads `/proc/self/exe` on Linux, the very file this process runs even
//!   after the path has been replaced. An application with a better id (a commit, a CI build
//!   number) sets it ([`Builder::build_id`](crate::Builder::build_id)).
//!
//! Invariants: both values travel escaped (`escape`): a byte that is not printable ASCII, a
//! space or a `%` is written `%XX`, so each value is one word on one line; escaped, each is at
//! most [`MAX_ESCAPED`] bytes, so the link's `build VERSION ID` line stays within its limit.

use std::fmt;
use std::path::Path;

/// The longest escaped version or build id: two of them and the message's words stay under the
/// link's 256-byte line.
pub(crate) const MAX_ESCAPED: usize = 100;

/// The version of a process whose application did not set one.
pub(crate) const UNKNOWN_VERSION: &str = "unknown";

/// What a generation runs: the application's version and a build id.
///
/// Shown as `version=VERSION build=ID`, each value escaped (a byte that is not printable
/// ASCII, a space or `%` is written `%XX`), so that the pair is two words a script can split.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildIdentity {
    version: String,
    id: String,
}

impl BuildIdentity {
    /// An identity from its values; `None` if either is longer than 100 bytes once escaped.
    pub fn new(version: impl Into<String>, id: impl Into<String>) -> Option<BuildIdentity> {
        let identity = BuildIdentity {
            version: version.into(),
            id: id.into(),
        };
        (escape(&identity.version).len() <= MAX_ESCAPED
            && escape(&identity.id).len() <= MAX_ESCAPED)
            .then_some(identity)
    }

    /// An identity from its escaped values, as they are shown; `None` if either is not a valid
    /// escaped value.
    pub fn from_escaped(version: &str, id: &str) -> Option<BuildIdentity> {
        BuildIdentity::new(unescape(version)?, unescape(id)?)
    }

    /// The application's version, `unknown` if it did not set one.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The build id: the application's, or by default the fingerprint of the executable file
    /// (`SIZE@SECONDS.NANOSECONDS` of its modification time, as `stat -c '%s@%.9Y'` prints it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The version, escaped.
    pub fn escaped_version(&self) -> String {
        escape(&self.version)
    }

    /// The build id, escaped.
    pub fn escaped_id(&self) -> String {
        escape(&self.id)
    }
}

impl fmt::Display for BuildIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version={} build={}",
            self.escaped_version(),
            self.escaped_id()
        )
    }
}

/// The generation an upgrade started, which serves now; see
/// [`Upgrader::upgrade_identified`](crate::Upgrader::upgrade_identified).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Successor {
    /// Its pid.
    pub pid: u32,
    /// Its generation number, one more than the upgraded process's.
    pub generation: u64,
    /// What it runs, as it said before it was ready; `None` from a build of a graceful version
    /// that does not send it.
    pub build: Option<BuildIdentity>,
}

/// The fingerprint of the executable file this process runs, `SIZE@SECONDS.NANOSECONDS`;
/// `unknown` if it cannot be read (logged).
pub(crate) fn executable_fingerprint(resolved: &Path) -> String {
    // /proc/self/exe is the file that runs, even when a deploy has replaced the path since.
    let proc_exe = Path::new("/proc/self/exe");
    let metadata = std::fs::metadata(proc_exe).or_else(|_| std::fs::metadata(resolved));
    match metadata {
        Ok(metadata) => fingerprint(&metadata),
        Err(err) => {
            tracing::debug!(
                executable = %resolved.display(),
                %err,
                "cannot read the executable's size and time for the default build id"
            );
            "unknown".to_owned()
        }
    }
}

fn fingerprint(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}@{}.{:09}",
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )
}

/// `%XX` for every byte that is not printable ASCII, a space or `%`.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for a malformed `%` sequence, a byte that should have been
/// escaped, or a result that is not UTF-8.
pub(crate) fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte if byte.is_ascii_graphic() => {
                out.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_escape_to_one_word_and_back() {
        for value in ["0.1.0", "1.2.3-beta+sha.abc", "a b%c\n\u{e9}", ""] {
            let escaped = escape(value);
            assert!(
                !escaped.contains([' ', '\n']) && escaped.is_ascii(),
                "{escaped:?}"
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(value));
        }
        assert_eq!(escape("a b%"), "a%20b%25");
        for bad in ["%", "%4", "%zz", "a b", "%FF"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn identities_are_bounded_and_shown_escaped() {
        let identity = BuildIdentity::new("1.0 rc", "abc").unwrap();
        assert_eq!(identity.to_string(), "version=1.0%20rc build=abc");
        assert_eq!(
            BuildIdentity::from_escaped("1.0%20rc", "abc"),
            Some(identity)
        );
        assert!(BuildIdentity::new("x".repeat(MAX_ESCAPED), "").is_some());
        assert!(BuildIdentity::new("x".repeat(MAX_ESCAPED + 1), "").is_none());
        assert!(
            BuildIdentity::new("1", " ".repeat(34)).is_none(),
            "102 bytes escaped"
        );
    }

    #[test]
    fn the_default_build_id_is_the_running_file_as_stat_shows_it() {
        let id = executable_fingerprint(Path::new("/nonexistent"));
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(id, fingerprint(&exe));
        let (size, time) = id.split_once('@').unwrap();
        assert_eq!(size.parse::<u64>().unwrap(), exe.len());
        let (_, nanos) = time.split_once('.').unwrap();
        assert_eq!(nanos.len(), 9);
    }
}
