//! Configuring and building the process's one [`Upgrader`].
//!
//! Invariants kept here:
//! - One upgrader per process ([`CREATED`]): it owns the inherited descriptors, the link to the
//!   parent and the harness's report channel. A failed build clears the flag, so a build with
//!   corrected settings may follow; the settings are checked before anything is taken.
//! - The inheritance environment is read, and its descriptors taken, once per process
//!   (`env::take_once`); a build that fails after the take is remembered there.
//! - The report channel, when a harness passed one, is claimed here, before the application
//!   asks for anything: it is handed over to every later generation and never closed as
//!   unclaimed.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::env;
use crate::error::{Error, Result};
use crate::fdstore::FdStore;
use crate::identity::{self, BuildIdentity};
use crate::name::FdName;
use crate::registry::Registry;
use crate::report;
use crate::spawn;
use crate::sys;
use crate::takeover;
use crate::upgrader::{Config, Parts, Upgrader};

/// Set once an upgrader exists in this process: one upgrader per process, because it owns the
/// process's inherited descriptors and its link to the parent.
static CREATED: AtomicBool = AtomicBool::new(false);

const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_GENERATIONS: usize = 3;
/// The same default as tokio's `TcpListener::bind`; the kernel caps it at `somaxconn`.
const DEFAULT_BACKLOG: u32 = 1024;

/// Configures an [`Upgrader`].
///
/// ```no_run
/// use std::time::Duration;
///
/// let upgrader = graceful_core::Upgrader::builder()
///     .upgrade_timeout(Duration::from_secs(30))
///     .pid_file("/run/my-server.pid")
///     .build()?;
/// # Ok::<(), graceful_core::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    upgrade_timeout: Duration,
    pid_file: Option<PathBuf>,
    executable: Option<PathBuf>,
    max_generations: usize,
    listen_backlog: u32,
    probation: Duration,
    version: Option<String>,
    build_id: Option<String>,
    fd_store_max: Option<usize>,
    takeover: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            pid_file: None,
            executable: None,
            max_generations: DEFAULT_MAX_GENERATIONS,
            listen_backlog: DEFAULT_BACKLOG,
            probation: Duration::ZERO,
            version: None,
            build_id: None,
            fd_store_max: None,
            takeover: None,
        }
    }
}

impl Builder {
    /// How long a new generation may take to call [`Upgrader::ready`] before it is killed and
    /// the upgrade fails. Default: 60 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// A file that [`Upgrader::ready`] fills with this process's pid, atomically and with mode
    /// 0644. Default: none.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The executable to start on upgrade. Default: the path this process was started from
    /// (`argv[0]`, resolved against the start-up directory or `PATH` when the upgrader is
    /// built), so that the binary a deploy put at that path is the one that runs next.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// How many generations may be alive at once. When an upgrade makes one more, the oldest
    /// is told to finish now through [`Upgrader::finish_requested`]. Default: 3.
    pub fn max_generations(mut self, max: usize) -> Self {
        self.max_generations = max;
        self
    }

    /// How long a replaced generation stays able to take the service back if its successor
    /// dies. Default: zero, none: the runtime adapters, which can resume accepting, set their
    /// own (the tokio adapter's is 5 s).
    ///
    /// During the window this process keeps its sockets but does not accept; if the successor
    /// exits for any reason but a graceful stop, or asks for a rollback, this process serves
    /// again: it rewrites the PID file, tells the service manager it is the main pid again,
    /// reports [`Transition::RolledBack`](crate::Transition::RolledBack), and may be upgraded
    /// again. The window costs a replaced process at least this long a life. It ends early when
    /// the successor stops for good, is replaced itself, or when this process stops.
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// The application's version, which this generation tells its parent when it is ready, so
    /// that an upgrade reports what runs now ([`Upgrader::upgrade_identified`], the tokio
    /// adapter's control socket). Usually `env!("CARGO_PKG_VERSION")` in the application's
    /// crate. Default: `unknown`, since a library cannot know its application's version.
    ///
    /// At most 100 bytes once escaped (each byte that is not printable ASCII, a space or `%`
    /// counts three); see [`BuildIdentity`](crate::BuildIdentity).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The build id reported with the [`version`](Self::version): a commit, a CI build number,
    /// anything that tells two builds of one version apart. Default: the fingerprint of the
    /// executable file this process runs, `SIZE@SECONDS.NANOSECONDS` of its size and
    /// modification time (what `stat -c '%s@%.9Y' FILE` prints), which changes whenever a
    /// deploy replaces the binary and costs one `stat` at build.
    ///
    /// At most 100 bytes once escaped, as the version.
    pub fn build_id(mut self, id: impl Into<String>) -> Self {
        self.build_id = Some(id.into());
        self
    }

    /// Keep the listening sockets this process binds in systemd's file descriptor store, for a
    /// unit with `FileDescriptorStoreMax=max`: a restart (`systemctl restart`, or `Restart=`
    /// after a crash) then keeps each socket and its queue, and the next process adopts it.
    ///
    /// systemd 254 and newer tell the service itself (`$FDSTORE`), and graceful uses the store
    /// whenever it is offered, without this setting; where `$FDSTORE` is set, its value wins.
    /// Older systemd (Debian 12 ships 252) does not tell: set this to the unit's
    /// `FileDescriptorStoreMax=`. `fd_store_max(0)` turns the store off even where `$FDSTORE`
    /// offers one. Nothing is stored without `NOTIFY_SOCKET`. Default: what `$FDSTORE` says.
    ///
    /// Stored: TCP listeners, Unix listeners in the abstract namespace and UDP sockets that
    /// this process binds itself (inherited ones are stored already). Not stored: Unix
    /// listeners on a path (a restart may remove their socket file) and
    /// [`Upgrader::file`] descriptors. Errors, and more sockets than `max`, are logged, never
    /// fatal. See the README's "Running under systemd".
    pub fn fd_store_max(mut self, max: usize) -> Self {
        self.fd_store_max = Some(max);
        self
    }

    /// Takes over from the server whose control socket is at `path`, if one serves there: a
    /// process that no running server started (a second instance of a systemd template unit,
    /// a container entrypoint sharing a volume with the running one, a supervisor) gets its
    /// sockets, adopts them as a new generation started by an upgrade would, and serves once
    /// [`Upgrader::ready`] returns; only then does the running server stop accepting and
    /// drain, with its probation. Default: none.
    ///
    /// At build, the upgrader connects to `path`, asks `takeover`, and receives the running
    /// server's descriptors over SCM_RIGHTS, with their names (see `takeover.rs` for the
    /// conversation); sockets asked for later are found among them exactly as inherited ones
    /// are, with the same checks. [`Upgrader::ready`] then tells the running server, and
    /// returns once it has stopped accepting; if it gave up meanwhile (its upgrade timeout),
    /// `ready` fails with [`Error::Takeover`] and this process must exit.
    ///
    /// Nothing at `path` (no socket file, or nobody listening on it) is a first start: the
    /// build goes on with nothing inherited, and sockets are bound. A process started by an
    /// upgrade (it has a link to its parent) ignores the setting, so the same command line
    /// serves for every generation. The running server must be of the same user, or root,
    /// and answer `takeover` (the tokio adapter's control socket does, through
    /// [`Upgrader::yield_to`]).
    ///
    /// The build waits for the running server's answer for the upgrade timeout at most.
    pub fn takeover(mut self, path: impl Into<PathBuf>) -> Self {
        self.takeover = Some(path.into());
        self
    }

    /// The `listen(2)` backlog of listeners this process creates. Default: 1024.
    pub fn listen_backlog(mut self, backlog: u32) -> Self {
        self.listen_backlog = backlog;
        self
    }

    /// Builds the process's upgrader: reads the inheritance environment and takes ownership of
    /// the descriptors it announces.
    ///
    /// Build it early, first thing in `main`, before a runtime starts or the process starts
    /// other programs: until then the inherited descriptors are not yet close-on-exec, and
    /// nothing of the process's own can sit at the announced numbers.
    ///
    /// An announced descriptor that this process opened itself (it is close-on-exec, so it did
    /// not survive an exec) is never adopted, closed or re-flagged: the build fails with
    /// [`Error::NotInherited`]. Every announced descriptor is checked before any is taken, so a
    /// failed build leaves them all as they were. The environment is read once per process: if
    /// the build fails from then on, every later build returns the same error and takes nothing
    /// (a failure in the settings, checked first, may be corrected and built again).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyCreated`] if this process has an upgrader already; [`Error::Environment`],
    /// [`Error::InheritedFdMissing`] or [`Error::NotInherited`] if the inheritance environment
    /// is malformed or announces descriptors that were not inherited;
    /// [`Error::InvalidConfig`] for out-of-range settings (a version or build id too long
    /// among them); [`Error::Takeover`] if a [`takeover`](Self::takeover) was asked for and the
    /// running server could not be taken over from.
    pub fn build(self) -> Result<Upgrader> {
        let backlog = sys::backlog(self.listen_backlog).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "listen_backlog({}) is outside 1..=SOMAXCONN ({})",
                self.listen_backlog,
                sys::SOMAXCONN
            ))
        })?;
        if self.max_generations == 0 {
            return Err(Error::InvalidConfig(
                "max_generations(0): at least the running generation must be allowed".into(),
            ));
        }
        if self.upgrade_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "upgrade_timeout must not be zero".into(),
            ));
        }
        for (what, value) in [("version", &self.version), ("build_id", &self.build_id)] {
            let escaped = value.as_deref().map_or(0, |v| identity::escape(v).len());
            if escaped > identity::MAX_ESCAPED {
                return Err(Error::InvalidConfig(format!(
                    "{what} is {escaped} bytes once escaped; at most {} are sent",
                    identity::MAX_ESCAPED
                )));
            }
        }
        let pid = sys::pid();
        if CREATED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyCreated { pid });
        }
        let upgrader = self.build_inner(pid, backlog);
        if let Err(err) = &upgrader {
            env::build_failed(err);
            CREATED.store(false, Ordering::SeqCst);
        }
        upgrader
    }

    fn build_inner(self, pid: u32, backlog: sys::Backlog) -> Result<Upgrader> {
        let mut pending_takeover = None;
        let cwd = std::env::current_dir().ok();
        let executable = match self.executable {
            Some(path) => match &cwd {
                Some(cwd) if path.is_relative() => cwd.join(path),
                _ => path,
            },
            None => spawn::resolve_executable(cwd.as_deref())
                .map_err(|e| Error::io("resolving this process's executable", e))?,
        };
        let build = BuildIdentity::new(
            self.version
                .unwrap_or_else(|| identity::UNKNOWN_VERSION.to_owned()),
            self.build_id
                .unwrap_or_else(|| identity::executable_fingerprint(&executable)),
        )
        .ok_or_else(|| Error::InvalidConfig("the build identity is too long".into()))?;
        let inherited = env::take_once(pid)?;
        let taken = match (&inherited, &self.takeover) {
            (_, None) => None,
            (Some(i), Some(path)) if i.link.is_some() => {
                tracing::debug!(
                    path = %path.display(),
                    "started by an upgrade: not taking over from the control socket"
                );
                None
            }
            (Some(i), Some(path)) if !i.fds.is_empty() => {
                return Err(Error::InvalidConfig(format!(
                    "takeover({}) and the {} descriptors passed by the service manager \
                     (LISTEN_FDS) exclude each other",
                    path.display(),
                    i.fds.len()
                )));
            }
            (_, Some(path)) => takeover::request(path, self.upgrade_timeout)?,
        };
        let (fds, link, handoff, generation, join_pgid) = match (inherited, taken) {
            (_, Some(taken)) => {
                let pending = crate::upgrader::takeover::Pending::new(&taken)
                    .map_err(|e| Error::io("duplicating the takeover's link", e))?;
                pending_takeover = Some((pending, taken.previous));
                (
                    taken.fds,
                    Some(taken.link),
                    taken.handoff,
                    taken.generation,
                    None,
                )
            }
            (Some(i), None) => (i.fds, i.link, i.handoff, i.generation, i.pgid),
            (None, None) => (Vec::new(), None, None, 1, None),
        };
        // After a takeover, the parent watcher starts once the previous generation yields.
        let parent_reader = link
            .as_ref()
            .filter(|_| pending_takeover.is_none())
            .map(|l| sys::dup_cloexec(l.as_fd()))
            .transpose()
            .map_err(|e| Error::io("duplicating the parent link", e))?;
        // The link's creator, as the kernel recorded it: getppid() would name a subreaper if
        // the parent had exited already. A takeover's link was created by whoever listened on
        // the control socket first, maybe an older generation: the server names itself.
        let took_over = pending_takeover.is_some();
        let parent_pid = match &pending_takeover {
            Some((_, previous)) => Some(*previous),
            None => link
                .as_ref()
                .map(|l| sys::peer_pid(l.as_fd()))
                .transpose()
                .map_err(|e| Error::io("reading the parent's pid from the link", e))?,
        };

        let store = Arc::new(FdStore::from_env(
            |key| std::env::var_os(key),
            self.fd_store_max,
        ));
        // A generation started by an upgrade becomes the main process when its parent tells
        // the service manager; until its parent has gone, the manager may not be listening.
        let started_by_upgrade = link.is_some();
        if started_by_upgrade {
            store.defer_until_main_process();
        }
        let mut registry = Registry::new(fds);
        registry.use_store(store.clone());
        let report = claim_report_channel(&mut registry);
        let upgrader = Upgrader::from_parts(
            Parts {
                pid,
                parent_pid,
                generation,
                join_pgid,
                config: Config {
                    upgrade_timeout: self.upgrade_timeout,
                    pid_file: self.pid_file,
                    executable,
                    args: std::env::args_os().collect(),
                    cwd,
                    max_generations: self.max_generations,
                    backlog,
                    probation: self.probation,
                    build,
                },
                registry,
                report,
                parent_link: link,
                parent_handoff: handoff,
                takeover: pending_takeover.map(|(pending, _)| pending),
            },
            parent_reader,
        )?;
        if started_by_upgrade {
            upgrader
                .parent_exited()
                .on_set(move || store.main_process());
        }
        if parent_pid.is_some() && !took_over {
            tracing::info!(
                pid,
                parent_pid,
                generation,
                "started by an upgrade; inherited descriptors are waiting to be adopted"
            );
        }
        Ok(upgrader)
    }
}

impl Upgrader {
    /// A builder with the default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This process's upgrader with the default settings; see [`Builder::build`].
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn new() -> Result<Upgrader> {
        Builder::default().build()
    }
}

/// Takes the harness's report channel if this process inherited one, and registers it so
/// that the next generation inherits it too.
fn claim_report_channel(registry: &mut Registry) -> report::Channel {
    let not_inherited = || Err(std::io::ErrorKind::NotFound.into());
    match registry.inherit_or_create(FdName::File(report::NAME.to_owned()), not_inherited) {
        Ok((fd, _)) => {
            tracing::debug!("reporting upgrade outcomes to the harness that started this server");
            report::Channel::new(Some(fd))
        }
        // Not started by a harness: the normal case.
        Err(Error::Create { .. }) => report::Channel::default(),
        Err(err) => {
            tracing::warn!(%err, "cannot take the harness's report channel");
            report::Channel::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_before_anything_is_taken() {
        let err = Upgrader::builder().max_generations(0).build().unwrap_err();
        assert!(err.to_string().contains("max_generations(0)"), "{err}");
        let err = Upgrader::builder()
            .upgrade_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("upgrade_timeout"), "{err}");
        let err = Upgrader::builder().listen_backlog(0).build().unwrap_err();
        assert!(err.to_string().contains("listen_backlog(0)"), "{err}");
        let err = Upgrader::builder()
            .build_id(" ".repeat(40))
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("build_id is 120 bytes once escaped"),
            "{err}"
        );
        assert!(!CREATED.load(Ordering::SeqCst));
    }
}
