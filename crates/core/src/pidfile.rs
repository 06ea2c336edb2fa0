//! The PID file, written atomically so that a reader never sees it empty or half-written.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Readable by everyone, as nginx does: deploy scripts often run as another user.
const MODE: u32 = 0o644;

/// Writes `pid` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{pid}.tmp"));
    let tmp = path.with_file_name(tmp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .open(&tmp)?;
        // The umask may have taken bits away at creation.
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
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the PID file if it still names `pid`; a successor's PID file is left alone.
pub(crate) fn remove_if_ours(path: &Path, pid: u32) -> io::Result<bool> {
    match fs::read_to_string(path) {
        Ok(content) if content.trim() == pid.to_string() => fs::remove_file(path).map(|()| true),
        Ok(_) => Ok(false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
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

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let err = write(Path::new("/nonexistent-dir/app.pid"), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
