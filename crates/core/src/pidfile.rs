//! The PID file, written atomically so that a reader never sees it empty or half-written.
//!
//! PID files live in directories that others may write to (`/tmp`, a `/run` subdirectory
//! shared with a deploy user), and `fs.protected_symlinks` may be off. So graceful never
//! follows a symlink and never truncates or chmods a file it did not just create:
//!
//! - the temporary file has an unpredictable name and is created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, so a planted file or symlink makes the creation fail
//!   (another name is tried) instead of redirecting the write;
//! - its mode is set with `fchmod` on the open descriptor, never by path;
//! - it is renamed over the PID file: `rename` replaces whatever sits at the final path,
//!   a symlink included, as a directory entry, and never writes through it;
//! - [`remove_if_ours`] reads the file with `O_NOFOLLOW|O_NONBLOCK` and only a regular file
//!   is removed, so a symlink (or a FIFO) planted there is left alone.

use std::fs::{self, File, Permissions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// Readable by everyone, as nginx does: deploy scripts often run as another user.
const MODE: u32 = 0o644;

/// How many unpredictable names are tried before giving up; each one that exists already was
/// planted (or is astronomically unlucky).
const ATTEMPTS: usize = 16;

/// The most a PID file may hold to be read as one: a pid and a newline, with room to spare.
const MAX_LEN: u64 = 64;

/// Writes `pid` to `path` through a new temporary file in the same directory and a rename.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let (mut file, tmp) = create_temporary(path, pid)?;
    let result = (|| {
        // fchmod: the umask may have taken bits away at creation.
        file.set_permissions(Permissions::from_mode(MODE))?;
        writeln!(file, "{pid}")?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Ours: created by this call with O_EXCL. unlink removes the name, never a target.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file next to `path` under an unpredictable name, never through a symlink.
fn create_temporary(path: &Path, pid: u32) -> io::Result<(File, PathBuf)> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{pid}.{:016x}.tmp", unpredictable()));
        let tmp = path.with_file_name(tmp_name);
        match sys::create_new_nofollow(&tmp, MODE) {
            Ok(file) => return Ok((file, tmp)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{ATTEMPTS} unpredictable temporary names next to the PID file all existed already              (last: {}): something is planting files in its directory",
            last.map_or_else(String::new, |e| e.to_string())
        ),
    ))
}

/// 64 bits another user cannot predict: SipHash under the keys std draws from the operating
/// system's random source for each `RandomState`, over the time.
fn unpredictable() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// Removes the PID file if it still names `pid`; a successor's PID file is left alone, and so
/// is anything at `path` that is not a regular file (a symlink is not followed).
pub(crate) fn remove_if_ours(path: &Path, pid: u32) -> io::Result<bool> {
    let file = match sys::open_nofollow(path) {
        Ok(Some(file)) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        // A symlink sits there; it is not the file graceful wrote.
        Ok(None) => {
            tracing::debug!(path = %path.display(), "the PID file is a symlink; left alone");
            return Ok(false);
        }
        Err(err) => return Err(err),
    };
    if !file.metadata()?.file_type().is_file() {
        tracing::debug!(path = %path.display(), "the PID file is not a regular file; left alone");
        return Ok(false);
    }
    let mut content = String::new();
    if file.take(MAX_LEN).read_to_string(&mut content).is_err() {
        return Ok(false);
    }
    if content.trim() == pid.to_string() {
        fs::remove_file(path).map(|()| true)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_with_mode_0644_and_removed_only_if_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        write(&path, 1234).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1234\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            MODE
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        assert!(!remove_if_ours(&path, 99).unwrap());
        assert!(path.exists());
        assert!(remove_if_ours(&path, 1234).unwrap());
        assert!(!path.exists());
    }

    /// A victim file that a planted symlink points at: its content and mode must not change.
    fn victim(dir: &Path) -> std::path::PathBuf {
        let victim = dir.join("victim");
        fs::write(&victim, "secret\n").unwrap();
        fs::set_permissions(&victim, Permissions::from_mode(0o600)).unwrap();
        victim
    }

    fn victim_unchanged(victim: &Path) {
        assert_eq!(fs::read_to_string(victim).unwrap(), "secret\n");
        assert_eq!(
            fs::metadata(victim).unwrap().permissions().mode() & 0o777,
            0o600,
            "the victim was chmod'ed"
        );
    }

    fn regular_pid_file(path: &Path, pid: u32) {
        let meta = fs::symlink_metadata(path).unwrap();
        assert!(meta.file_type().is_file(), "{path:?} is {meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, MODE);
        assert_eq!(fs::read_to_string(path).unwrap(), format!("{pid}\n"));
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("app.pid");
        // The name the temporary file used to have, predictable from the pid.
        std::os::unix::fs::symlink(&victim, dir.path().join(".app.pid.1234.tmp")).unwrap();
        write(&path, 1234).unwrap();
        victim_unchanged(&victim);
        regular_pid_file(&path, 1234);
    }

    #[test]
    fn a_symlink_planted_at_the_pid_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, 1234).unwrap();
        victim_unchanged(&victim);
        regular_pid_file(&path, 1234);
    }

    #[test]
    fn a_symlink_at_the_pid_file_is_not_read_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "1234\n").unwrap();
        let path = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(!remove_if_ours(&path, 1234).unwrap());
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "1234\n");
    }

    #[test]
    fn a_fifo_at_the_pid_file_does_not_block_its_removal_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(!remove_if_ours(&path, 1234).unwrap());
        assert!(path.exists());
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let err = write(Path::new("/nonexistent-dir/app.pid"), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
