//! Starting the next generation: fork, put the handed-over descriptors in place, exec.
//!
//! Invariants kept here:
//! - Everything the child needs (paths, argv, envp, the descriptor plan, scratch space) is
//!   prepared in a [`Plan`] before `fork`. The process is multi-threaded, so between `fork` and
//!   `execve` the child calls only async-signal-safe functions: no allocation, no lock, no
//!   logging, no panic path taken.
//! - The child's own pid goes into `LISTEN_PID`, so its digits are written by plain integer
//!   arithmetic into a slot reserved in the prepared environment.
//! - The handed-over descriptors are placed with `dup2` in the child only. The parent's
//!   descriptors keep their close-on-exec flag and their file status flags (O_NONBLOCK is never
//!   touched), so no other thread's spawn can leak them.
//! - Everything else above the handed-over range is closed before exec, whatever its flags.
//!   Standard input, output and error are inherited, unless the caller gives replacements.
//! - A failure before exec is reported over a close-on-exec pipe: the parent reads end of file
//!   when exec succeeded, or the failed step and its errno when it did not.
//! - The new process leads a process group of its own, which everything it starts shares, so
//!   that a failed successor is killed with all it started (`sys::kill_successor`): a deploy
//!   may install a wrapper script whose background children would otherwise keep the inherited
//!   listening sockets forever. Both sides call `setpgid` (the child before exec, the parent
//!   right after fork), the classic race-free pair: the group exists before the parent waits
//!   or kills, and before the child execs. A ready generation moves back into its parent's
//!   group (`GRACEFUL_PGID`, see `Upgrader::ready`), so Ctrl-C, `tini -g` and a supervisor's
//!   `killpg` reach the service again.
//!
//!   Why at `ready()` and not as soon as the upgrader is built: until it is ready, everything
//!   the new generation starts must go with it if it fails, including workers it forks without
//!   exec, which keep the listening sockets. The price: until then, signals sent to the
//!   parent's group miss it (it is a background group for a terminal), and if the parent is
//!   killed that way during an upgrade, the new generation sees its parent exit, carries on,
//!   and once ready serves outside the group (the group it would join has gone). A supervisor
//!   that stops a service by killing its group should also kill the group of an upgrade in
//!   flight (the new pid), or use a cgroup.
//!
//!   A descendant that calls `setsid` (or `setpgid`) leaves the group and escapes the kill; a
//!   service manager's cgroup (systemd's `KillMode=control-group`) covers that.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc::{self, c_char};

use crate::error::{Error, Result};
use crate::stage::SpawnStage;
use crate::sys;

/// The first descriptor number of the handover, as in systemd's protocol.
pub(crate) const FIRST_FD: RawFd = 3;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the decimal digits of any pid and the terminating NUL.
const PID_DIGITS: usize = 20;

/// Signals whose disposition the child gets back at their default. Exec already resets caught
/// signals; these are reset too in case the parent ignores them.
const RESET_SIGNALS: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGCHLD,
];

/// What the next generation gets.
pub(crate) struct Command<'a> {
    pub(crate) executable: &'a Path,
    /// The whole argument vector, `argv[0]` included.
    pub(crate) args: &'a [OsString],
    pub(crate) cwd: Option<&'a Path>,
    /// Extra variables; they replace any inherited variable of the same name.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// Variables dropped from the inherited environment.
    pub(crate) env_remove: &'a [&'a str],
    /// Descriptors to appear at fd 3, 4, … in this order.
    pub(crate) fds: Vec<RawFd>,
}

/// How the new process is set up beyond its command, for a caller that starts a first
/// generation itself (see `handover.rs`). An upgrade uses the defaults: the new generation
/// shares the old one's standard streams.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    /// Descriptors to become the child's stdin, stdout and stderr; `None` inherits ours.
    pub(crate) stdio: [Option<RawFd>; 3],
}

/// A command turned into C data, ready to survive `fork` untouched.
struct Plan {
    path: CString,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    /// `LISTEN_PID=` plus room for the digits; `envp` points into it.
    listen_pid: Box<[u8]>,
    cwd: Option<CString>,
    /// `(source, target)`: the handed-over descriptors at 3, 4, …, then any standard streams.
    moves: Vec<(RawFd, RawFd)>,
    scratch: Vec<RawFd>,
    /// The first descriptor number above the handed-over range.
    base: RawFd,
    /// The highest descriptor number to close when `close_range` is not available.
    max_fd: RawFd,
}

impl Plan {
    fn new(cmd: Command<'_>, setup: Setup) -> io::Result<Plan> {
        let path = cstring(cmd.executable.as_os_str())?;
        let mut argv_owned = cmd
            .args
            .iter()
            .map(|arg| cstring(arg))
            .collect::<io::Result<Vec<_>>>()?;
        if argv_owned.is_empty() {
            argv_owned.push(path.clone());
        }

        let overridden = |key: &OsStr| {
            cmd.env_remove.iter().any(|r| key == OsStr::new(r))
                || cmd.env.iter().any(|(k, _)| k == key)
                || key == OsStr::new("LISTEN_PID")
        };
        let mut envp_owned = Vec::new();
        for (key, value) in std::env::vars_os().filter(|(k, _)| !overridden(k)) {
            envp_owned.push(env_entry(&key, &value)?);
        }
        for (key, value) in &cmd.env {
            envp_owned.push(env_entry(key, value)?);
        }

        let mut listen_pid = Vec::with_capacity(LISTEN_PID_PREFIX.len() + PID_DIGITS + 1);
        listen_pid.extend_from_slice(LISTEN_PID_PREFIX);
        listen_pid.resize(LISTEN_PID_PREFIX.len() + PID_DIGITS + 1, 0);
        let listen_pid = listen_pid.into_boxed_slice();

        let argv = argv_owned
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp = envp_owned
            .iter()
            .map(|s| s.as_ptr())
            .chain([listen_pid.as_ptr().cast(), std::ptr::null()])
            .collect();
        let cwd = cmd.cwd.map(|p| cstring(p.as_os_str())).transpose()?;
        let base = FIRST_FD + cmd.fds.len() as RawFd;
        let moves: Vec<(RawFd, RawFd)> = (FIRST_FD..)
            .zip(cmd.fds)
            .map(|(target, source)| (source, target))
            .chain(
                (0..)
                    .zip(setup.stdio)
                    .filter_map(|(target, source)| Some((source?, target))),
            )
            .collect();
        let scratch = vec![-1; moves.len()];
        Ok(Plan {
            path,
            _argv: argv_owned,
            argv,
            _envp: envp_owned,
            envp,
            listen_pid,
            cwd,
            moves,
            scratch,
            base,
            max_fd: sys::max_fd(),
        })
    }
}

/// Starts the next generation, leading a process group of its own, with the standard streams
/// set up as `setup` says, and waits until it has exec'd.
///
/// Returns the child's pid once `execve` succeeded. If a step before exec failed, the child has
/// been reaped and the error names the step. `timeout` bounds the wait for exec.
pub(crate) fn spawn(cmd: Command<'_>, setup: Setup, timeout: Duration) -> Result<u32> {
    let executable = cmd.executable.to_owned();
    let spawn_error = |stage: SpawnStage, source| Error::Spawn {
        executable: executable.clone(),
        stage,
        source,
    };
    let mut plan = Plan::new(cmd, setup).map_err(|e| spawn_error(SpawnStage::Prepare, e))?;
    let (err_read, err_write) =
        sys::pipe_cloexec().map_err(|e| spawn_error(SpawnStage::ErrorPipe, e))?;

    // SAFETY: the child runs only `exec_child`, which calls async-signal-safe functions and
    // never returns. The plan outlives the fork in both processes.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see above.
        unsafe { exec_child(&mut plan, err_write.as_raw_fd()) }
    }
    if pid < 0 {
        return Err(spawn_error(SpawnStage::Fork, io::Error::last_os_error()));
    }
    let pid = pid as u32;
    sys::lead_own_group(pid);
    drop(err_write);

    match read_exec_result(&err_read, timeout) {
        Ok(ExecResult::Exec) => Ok(pid),
        Ok(ExecResult::Failed { stage, errno }) => {
            reap(pid);
            let mut source = io::Error::from_raw_os_error(errno);
            if errno == libc::ENOENT && stage == SpawnStage::Execve && executable.exists() {
                // ENOENT for a file that exists: what is missing is its interpreter (#!) or
                // its dynamic loader, and "No such file" alone would send the operator astray.
                source = io::Error::new(
                    source.kind(),
                    format!("{source}: the file exists, so its interpreter or loader is missing"),
                );
            }
            Err(spawn_error(stage, source))
        }
        Ok(ExecResult::Stuck) => {
            sys::kill_successor(pid);
            reap(pid);
            Err(Error::Timeout { pid, timeout })
        }
        Err(err) => {
            sys::kill_successor(pid);
            reap(pid);
            Err(spawn_error(SpawnStage::ReadErrorPipe, err))
        }
    }
}

enum ExecResult {
    Exec,
    Failed { stage: SpawnStage, errno: i32 },
    Stuck,
}

fn read_exec_result(pipe: &OwnedFd, timeout: Duration) -> io::Result<ExecResult> {
    if !sys::wait_readable(pipe.as_fd(), timeout)? {
        return Ok(ExecResult::Stuck);
    }
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match sys::read(pipe.as_fd(), &mut report[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got == 0 {
        return Ok(ExecResult::Exec);
    }
    let code = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
    let stage = SpawnStage::from_code(code).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the new process reported step {code}, which none is, with errno {errno}"),
        )
    })?;
    Ok(ExecResult::Failed { stage, errno })
}

fn reap(pid: u32) {
    if let Err(err) = sys::wait_child(pid) {
        tracing::warn!(pid, %err, "cannot reap child process");
    }
}

/// The child's side of the fork.
///
/// # Safety
///
/// Must be called only in a freshly forked child of a possibly multi-threaded process.
unsafe fn exec_child(plan: &mut Plan, err: RawFd) -> ! {
    // SAFETY: only async-signal-safe libc calls on memory prepared before fork; every failure
    // path ends in `_exit`.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
        for signal in RESET_SIGNALS {
            libc::signal(signal, libc::SIG_DFL);
        }

        // Move everything above the target range first, so that placing fd 3 cannot overwrite
        // a source that happens to sit at 4.
        let base = plan.base;
        let err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, base);
        if err < 0 {
            libc::_exit(126);
        }
        // EACCES cannot happen before exec; EPERM only if we lead a session (we do not).
        if libc::setpgid(0, 0) < 0 {
            fail(err, SpawnStage::Setpgid);
        }
        for ((source, _), slot) in plan.moves.iter().zip(plan.scratch.iter_mut()) {
            *slot = libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, base);
            if *slot < 0 {
                fail(err, SpawnStage::MoveDescriptors);
            }
        }
        // dup2 gives the target without FD_CLOEXEC; the sources keep theirs.
        for ((_, target), moved) in plan.moves.iter().zip(plan.scratch.iter()) {
            if libc::dup2(*moved, *target) < 0 {
                fail(err, SpawnStage::PlaceDescriptors);
            }
        }
        if close_from(base, err, plan.max_fd) < 0 {
            fail(err, SpawnStage::CloseDescriptors);
        }

        write_pid(
            &mut plan.listen_pid[LISTEN_PID_PREFIX.len()..],
            libc::getpid(),
        );

        if let Some(cwd) = &plan.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                fail(err, SpawnStage::Chdir);
            }
        }
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(err, SpawnStage::Execve)
    }
}

/// Reports the failed stage and errno to the parent, then exits.
///
/// # Safety
///
/// Child side of the fork only.
unsafe fn fail(err: RawFd, stage: SpawnStage) -> ! {
    let errno = Errno::last_raw();
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&stage.code().to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; the buffer is on our stack.
    unsafe {
        libc::write(err, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Closes every descriptor from `from` upwards except `keep`.
///
/// # Safety
///
/// Child side of the fork only.
unsafe fn close_from(from: RawFd, keep: RawFd, max_fd: RawFd) -> libc::c_int {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: close_range is a plain system call.
        let ranges = unsafe {
            let low = if keep > from {
                libc::syscall(libc::SYS_close_range, from as u32, (keep - 1) as u32, 0)
            } else {
                0
            };
            let high = libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0);
            low == 0 && high == 0
        };
        if ranges {
            return 0;
        }
        // ENOSYS before Linux 5.9: fall through to the loop.
    }
    for fd in from..=max_fd {
        if fd != keep {
            // SAFETY: closing a number that may not be open gives EBADF, which is fine.
            unsafe { libc::close(fd) };
        }
    }
    0
}

/// Writes `pid` in decimal followed by NUL into `slot`, without allocating.
fn write_pid(slot: &mut [u8], pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = pid.unsigned_abs() as u64;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 || len == PID_DIGITS {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        slot[i] = *d;
    }
    slot[len] = 0;
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

fn env_entry(key: &OsStr, value: &OsStr) -> io::Result<CString> {
    let mut entry = key.to_owned().into_vec();
    entry.push(b'=');
    entry.extend_from_slice(value.as_bytes());
    cstring(OsStr::from_bytes(&entry))
}

/// Resolves the executable to start next time from `argv[0]`, the way a shell found it: a name
/// with a slash is taken relative to the start-up directory, a bare name is looked up in PATH.
/// The path is kept, not canonicalised, so a symlink switched by a deploy is followed then.
/// Falls back to `current_exe()` (read now, before any deploy can replace the binary).
pub(crate) fn resolve_executable(cwd: Option<&Path>) -> io::Result<PathBuf> {
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    if let Some(argv0) = argv0 {
        if argv0.as_os_str().as_bytes().contains(&b'/') {
            return Ok(match cwd {
                Some(cwd) if argv0.is_relative() => cwd.join(argv0),
                _ => argv0,
            });
        }
        if let Some(found) = search_path(&argv0) {
            return Ok(found);
        }
    }
    std::env::current_exe()
}

fn search_path(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .filter(|found| found.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits_are_written_in_place() {
        let mut slot = [0xffu8; PID_DIGITS + 1];
        write_pid(&mut slot, 4_194_304);
        assert_eq!(&slot[..8], b"4194304\0");
        write_pid(&mut slot, 7);
        assert_eq!(&slot[..2], b"7\0");
        write_pid(&mut slot, i32::MAX);
        assert_eq!(&slot[..11], b"2147483647\0");
    }
}
