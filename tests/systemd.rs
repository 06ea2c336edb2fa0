//! `http-server` under systemd's protocols, as real processes.
//!
//! - Socket activation with the real `systemd-socket-activate`: the passed socket is adopted by
//!   its address or by its name, the first connection (the one that made the tool start the
//!   server) is served, and upgrades hand the very same socket on.
//! - `sd_notify`: a datagram socket stands in for systemd's `NOTIFY_SOCKET`; `SO_PASSCRED` tells
//!   which process sent each message, so the tests check who said what, and in which order.
//! - The control socket: `http-server upgrade` exits 0 with the new pid once it serves, or 1
//!   with the reason; the socket is inherited, so each generation answers on it.
//!
//! What these tests do not show is systemd itself acting on the messages; the README section
//! "Running under systemd" says how that was checked.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, sockopt};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long any one step may take before the test fails, saying what it waited for.
const STEP: Duration = Duration::from_secs(30);
const SERVER: &str = env!("CARGO_BIN_EXE_http-server");
const SOCKET_ACTIVATE: &str = "systemd-socket-activate";
/// The examples' version, which the server reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------------------------------
// Socket activation

#[test]
fn a_socket_activated_server_adopts_the_socket_by_address_and_hands_it_on() {
    let Some(activate) = socket_activate_tool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let (server, addr, first) = Group::socket_activated(&activate, None, |addr| {
        vec![
            SERVER.into(),
            "--addr".into(),
            addr.to_string(),
            "--control-socket".into(),
            control.display().to_string(),
        ]
    });
    // The connection that made the tool start the server waited in the passed socket's backlog.
    let first = http_get_on(first, "/");
    let gen1 = server.wait_ready(1);
    assert_eq!(
        gen1.pid, server.pgid as u32,
        "the tool execs the server in place"
    );
    assert_eq!(first, format!("hello from {}", gen1.pid));
    assert_eq!(gen1.addr, addr);
    let passed = socket_inode(gen1.pid, 3);

    let new_pid = upgrade_command(&control).expect("the upgrade succeeds");
    let gen2 = server.wait_ready(2);
    assert_eq!(new_pid, gen2.pid);
    let names = environ(gen2.pid, "LISTEN_FDNAMES");
    assert!(
        names
            .split(':')
            .any(|n| n == format!("tcp/127.0.0.1%3A{}", addr.port())),
        "the adopted socket is handed on under graceful's name: {names}"
    );
    assert!(
        socket_inodes(gen2.pid).contains(&passed),
        "the new generation holds the socket systemd-socket-activate created"
    );
    server.wait_exited(gen1.pid);
    assert_eq!(http_get(addr, "/"), format!("hello from {}", gen2.pid));
}

#[test]
fn a_socket_activated_server_adopts_the_socket_by_name_and_keeps_the_name() {
    let Some(activate) = socket_activate_tool() else {
        return;
    };
    let (server, addr, first) = Group::socket_activated(&activate, Some("web"), |_| {
        vec![SERVER.into(), "--fd-name".into(), "web".into()]
    });
    let first = http_get_on(first, "/");
    let gen1 = server.wait_ready(1);
    assert_eq!(first, format!("hello from {}", gen1.pid));
    assert_eq!(environ(gen1.pid, "LISTEN_FDNAMES"), "web");
    let passed = socket_inode(gen1.pid, 3);

    signal(gen1.pid, Signal::SIGHUP);
    let gen2 = server.wait_ready(2);
    assert_eq!(environ(gen2.pid, "LISTEN_FDNAMES"), "web");
    assert_eq!(socket_inode(gen2.pid, 3), passed);
    server.wait_exited(gen1.pid);
    assert_eq!(http_get(addr, "/"), format!("hello from {}", gen2.pid));

    // And once more, from a generation that inherited it from graceful.
    signal(gen2.pid, Signal::SIGHUP);
    let gen3 = server.wait_ready(3);
    assert_eq!(socket_inode(gen3.pid, 3), passed);
    server.wait_exited(gen2.pid);
    assert_eq!(http_get(addr, "/"), format!("hello from {}", gen3.pid));
}

// ---------------------------------------------------------------------------------------------
// sd_notify

#[test]
fn notify_reports_ready_reloads_the_new_main_pid_failures_and_stops_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_server(dir.path());
    let pid_file = dir.path().join("server.pid");
    let notify = NotifySocket::bind(&dir.path().join("notify"));
    // Without hand-off: the slow request below is sent from a thread just before the SIGHUP,
    // and may reach the connection only once the new generation is ready; with hand-off the
    // then idle connection would move to the new generation, which would answer it, and the
    // first one would not be kept draining.
    let server = Group::spawn(
        Command::new(&exe)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--drain-timeout",
                "20s",
                "--handoff",
                "off",
                "--pid-file",
            ])
            .arg(&pid_file)
            .env("NOTIFY_SOCKET", &notify.path),
    );
    let gen1 = server.wait_ready(1);
    let mut log = vec![notify.expect(gen1.pid, "READY=1", "first start")];

    // Keep the first generation draining: a slow request on a connection it accepted.
    let mut conn = KeepAlive::open(gen1.addr);
    assert_eq!(conn.get("/"), format!("hello from {}", gen1.pid));
    let slow = std::thread::spawn(move || conn.get("/slow?ms=3000"));

    let sighup_at = monotonic_usec();
    signal(gen1.pid, Signal::SIGHUP);
    let reloading = notify.expect(gen1.pid, "RELOADING=1", "the upgrade beginning");
    let began: u64 = field(&reloading.1, "MONOTONIC_USEC")
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        began >= sighup_at,
        "MONOTONIC_USEC={began} predates the SIGHUP at {sighup_at}: Type=notify-reload would \
         take it for an older reload"
    );
    log.push(reloading);
    let handover = notify.expect(gen1.pid, "MAINPID=", "the new main pid");
    let gen2 = server.wait_ready(2);
    assert_eq!(field(&handover.1, "MAINPID"), gen2.pid.to_string());
    assert!(handover.1.contains(&"READY=1".to_owned()), "{handover:?}");
    // The new generation was ready, PID file written, before the old one said so; the old one
    // said so itself, so it had not exited.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", gen2.pid)
    );
    log.push(handover);

    // systemd's default KillMode sends SIGTERM to every process of the service: the draining
    // one must not announce a stop, the service goes on in its successor.
    signal(gen1.pid, Signal::SIGTERM);
    assert_eq!(
        slow.join().unwrap(),
        format!("slow 3000 from {}", gen1.pid),
        "the request in flight is finished by the old generation"
    );
    server.wait_exited(gen1.pid);

    // A failed upgrade ends the reload with READY=1 and says why.
    break_binary(&exe);
    signal(gen2.pid, Signal::SIGHUP);
    log.push(notify.expect(gen2.pid, "RELOADING=1", "the failing upgrade beginning"));
    let failed = notify.expect(gen2.pid, "READY=1", "the end of the failed upgrade");
    let status = field(&failed.1, "STATUS");
    assert!(
        status.starts_with(&format!(
            "Upgrade failed; pid {} (generation 2) still serving: new process (pid",
            gen2.pid
        )) && status.ends_with("exited before it was ready: exit status: 1"),
        "{status}"
    );
    assert!(!failed.1.iter().any(|l| l.starts_with("MAINPID=")));
    log.push(failed);
    assert_eq!(http_get(gen2.addr, "/"), format!("hello from {}", gen2.pid));

    signal(gen2.pid, Signal::SIGTERM);
    log.push(notify.expect(gen2.pid, "STOPPING=1", "the graceful stop"));
    server.wait_exited(gen2.pid);
    notify.expect_nothing_more();

    let order: Vec<(u32, &str)> = log.iter().map(|(pid, l)| (*pid, l[0].as_str())).collect();
    assert_eq!(
        order,
        [
            (gen1.pid, "READY=1"),
            (gen1.pid, "RELOADING=1"),
            (gen1.pid, &*format!("MAINPID={}", gen2.pid)),
            (gen2.pid, "RELOADING=1"),
            (gen2.pid, "READY=1"),
            (gen2.pid, "STOPPING=1"),
        ]
    );
    assert_eq!(server.statuses(), [(gen1.pid, 0), (gen2.pid, 0)]);
}

/// A new generation that dies during the old one's probation: the old one takes the service
/// back and tells the service manager it is the main pid again, with the reason.
#[test]
fn a_rollback_makes_the_old_generation_the_main_pid_again() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_server(dir.path());
    let pid_file = dir.path().join("server.pid");
    let notify = NotifySocket::bind(&dir.path().join("notify"));
    let server = Group::spawn(
        Command::new(&exe)
            .args(["--addr", "127.0.0.1:0", "--probation", "60s", "--pid-file"])
            .arg(&pid_file)
            .env("NOTIFY_SOCKET", &notify.path),
    );
    let gen1 = server.wait_ready(1);
    notify.expect(gen1.pid, "READY=1", "first start");
    signal(gen1.pid, Signal::SIGHUP);
    notify.expect(gen1.pid, "RELOADING=1", "the upgrade beginning");
    let handover = notify.expect(gen1.pid, "MAINPID=", "the new main pid");
    let gen2 = server.wait_ready(2);
    assert_eq!(field(&handover.1, "MAINPID"), gen2.pid.to_string());

    signal(gen2.pid, Signal::SIGKILL);
    let back = notify.expect(gen1.pid, "MAINPID=", "the old pid, main again");
    assert_eq!(field(&back.1, "MAINPID"), gen1.pid.to_string());
    assert!(back.1.contains(&"READY=1".to_owned()), "{back:?}");
    let status = field(&back.1, "STATUS");
    assert!(
        status.starts_with(&format!("Rolled back: pid {} (generation 1)", gen1.pid))
            && status.contains("SIGKILL"),
        "{status}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", gen1.pid)
    );
    assert_eq!(http_get(gen1.addr, "/"), format!("hello from {}", gen1.pid));

    signal(gen1.pid, Signal::SIGTERM);
    notify.expect(gen1.pid, "STOPPING=1", "the graceful stop");
    server.wait_exited(gen1.pid);
    notify.expect_nothing_more();
}

/// An upgrade that waits long for its new generation keeps telling the service manager to
/// extend the reload's timeout: with `RELOADING=1`, and again while it waits.
#[test]
fn a_slow_upgrade_extends_the_service_managers_timeout_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_server(dir.path());
    let real = dir.path().join("http-server.real");
    std::fs::copy(SERVER, &real).unwrap();
    let notify = NotifySocket::bind(&dir.path().join("notify"));
    let server = Group::spawn(
        Command::new(&exe)
            .args(["--addr", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &notify.path),
    );
    let gen1 = server.wait_ready(1);
    notify.expect(gen1.pid, "READY=1", "first start");

    // Longer than the 5 s between two extensions: a slow start, as a deploy's wrapper may make.
    install_script(
        &exe,
        &format!("sleep 8\nexec '{}' \"$@\"\n", real.display()),
    );
    signal(gen1.pid, Signal::SIGHUP);
    let reloading = notify.expect(gen1.pid, "RELOADING=1", "the upgrade beginning");
    assert_eq!(field(&reloading.1, "EXTEND_TIMEOUT_USEC"), "15000000");
    let mut extensions = Vec::new();
    let handover = loop {
        let message = notify
            .receive(STEP)
            .expect("a notification within the step while the upgrade waits");
        assert_eq!(
            message.0, gen1.pid,
            "sent by the old generation: {message:?}"
        );
        if message.1[0].starts_with("MAINPID=") {
            break message;
        }
        extensions.push(message);
    };
    assert!(
        !extensions.is_empty(),
        "no EXTEND_TIMEOUT_USEC while the upgrade waited"
    );
    for (_, lines) in &extensions {
        assert_eq!(field(lines, "EXTEND_TIMEOUT_USEC"), "15000000");
        let status = field(lines, "STATUS");
        assert!(
            status.starts_with(&format!(
                "Upgrading: pid {} (generation 1) has waited",
                gen1.pid
            )) && status.ends_with("(generation 2) to be ready"),
            "{status}"
        );
    }
    let gen2 = server.wait_ready(2);
    assert_eq!(field(&handover.1, "MAINPID"), gen2.pid.to_string());
    server.wait_exited(gen1.pid);
}

// ---------------------------------------------------------------------------------------------
// The control socket

/// The answer to an upgrade, and the `upgrade` and `status` subcommands, name what the serving
/// generation runs: the examples' version and, by default, the executable file's size and
/// time, which change when a deploy replaces the binary.
#[test]
fn the_control_socket_names_the_version_and_build_of_what_serves() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_server(dir.path());
    let control = dir.path().join("control.sock");
    let server = Group::spawn(
        Command::new(&exe)
            .args(["--addr", "127.0.0.1:0", "--control-socket"])
            .arg(&control),
    );
    let gen1 = server.wait_ready(1);
    let first = build_id(&exe);
    assert_eq!(
        control_command("status", &control),
        format!(
            "serving pid={} generation=1 version={VERSION} build={first}\n",
            gen1.pid
        )
    );

    // A deploy replaces the binary: the next generation runs another file.
    deploy_copy(&exe, 1);
    let second = build_id(&exe);
    if option_env!("GRACEFUL_EXAMPLE_BUILD_ID").is_none() {
        assert_ne!(first, second, "the build id follows the file");
    }
    // The raw answer: `ok PID` alone first, as older clients read it, then what serves.
    let answer = raw_request(&control, "upgrade");
    let gen2 = server.wait_ready(2);
    assert_eq!(
        answer,
        format!(
            "ok {pid}\nserving pid={pid} generation=2 version={VERSION} build={second}\n",
            pid = gen2.pid
        )
    );
    server.wait_exited(gen1.pid);

    deploy_copy(&exe, 2);
    let third = build_id(&exe);
    let output = control_command("upgrade", &control);
    let gen3 = server.wait_ready(3);
    assert_eq!(
        output,
        format!(
            "upgraded pid={} generation=3 version={VERSION} build={third}\n",
            gen3.pid
        )
    );
    server.wait_exited(gen2.pid);
    assert_eq!(
        control_command("status", &control),
        format!(
            "serving pid={} generation=3 version={VERSION} build={third}\n",
            gen3.pid
        )
    );
}

#[test]
fn the_upgrade_command_reports_the_new_pid_or_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_server(dir.path());
    let control = dir.path().join("control.sock");
    let server = Group::spawn(
        Command::new(&exe)
            .args(["--addr", "127.0.0.1:0", "--control-socket"])
            .arg(&control),
    );
    let gen1 = server.wait_ready(1);
    assert_eq!(
        std::fs::metadata(&control).unwrap().permissions().mode() & 0o777,
        0o600,
        "only the server's user may upgrade it"
    );

    let pid = upgrade_command(&control).expect("the first upgrade succeeds");
    let gen2 = server.wait_ready(2);
    assert_eq!(pid, gen2.pid);
    server.wait_exited(gen1.pid);
    // The first generation has gone: the second answers on the socket it inherited.
    let pid = upgrade_command(&control).expect("the second upgrade succeeds");
    let gen3 = server.wait_ready(3);
    assert_eq!(pid, gen3.pid);

    // A second request while an upgrade is in progress is refused, and says why.
    let gate = dir.path().join("go");
    let started = dir.path().join("started");
    let real = dir.path().join("http-server.real");
    std::fs::copy(SERVER, &real).unwrap();
    install_script(
        &exe,
        &format!(
            "touch '{}'\nfor i in $(seq 600); do [ -e '{}' ] && exec '{}' \"$@\"; sleep 0.05; done\nexit 9\n",
            started.display(),
            gate.display(),
            real.display()
        ),
    );
    let first = Command::new(SERVER)
        .args(["upgrade", "--timeout", "60s", "--control-socket"])
        .arg(&control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = Reaped(Some(first));
    wait_until("the new generation's start script to run", || {
        started.exists()
    });
    let refused = run_upgrade_command(&control);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "http-server upgrade: upgrade failed: an upgrade is already in progress in this \
             process (pid {})\n",
            gen3.pid
        )
    );
    std::fs::write(&gate, "").unwrap();
    let accepted = first.output();
    assert!(accepted.status.success(), "{accepted:?}");
    let gen4 = server.wait_ready(4);
    assert_eq!(
        String::from_utf8_lossy(&accepted.stdout),
        format!(
            "upgraded pid={} generation=4 version={VERSION} build={}\n",
            gen4.pid,
            build_id(&real)
        )
    );

    // A broken binary: non-zero, the reason, and the serving generation serves on.
    // The fourth generation was started as `http-server.real`, so that is what it starts next.
    break_binary(&real);
    let failed = run_upgrade_command(&control);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(failed.stdout.is_empty(), "{failed:?}");
    let reason = String::from_utf8_lossy(&failed.stderr);
    assert!(
        reason.starts_with("http-server upgrade: upgrade failed: new process (pid ")
            && reason.ends_with("exited before it was ready: exit status: 1\n"),
        "{reason}"
    );
    assert_eq!(http_get(gen1.addr, "/"), format!("hello from {}", gen4.pid));

    // A request far longer than a line: a clear answer, read whole, not a reset.
    let mut abuse = std::os::unix::net::UnixStream::connect(&control).unwrap();
    abuse
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    abuse.write_all(&[b'x'; 10_000]).unwrap();
    abuse.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    abuse.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "error the request is longer than 4096 bytes\n");

    // Nothing listening there: a clear error, not a hang.
    let nowhere = run_upgrade_command(&dir.path().join("nowhere.sock"));
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("cannot reach the control socket"),
        "{nowhere:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A server and its generations, in their own process group: killed and reaped when dropped,
/// even if the test fails. The test process is a child subreaper, so generations orphaned by
/// their parent's exit are its children too.
struct Group {
    pgid: i32,
    lines: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
    /// Where the server's log goes, shown when a step fails.
    log: tempfile::TempDir,
    reaped: std::cell::RefCell<Vec<(u32, i32)>>,
}

#[derive(Debug)]
struct Ready {
    pid: u32,
    addr: SocketAddr,
}

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        become_subreaper();
        let log = tempfile::tempdir().unwrap();
        let stderr = log.path().join("stderr");
        cmd.env("RUST_LOG", "info,graceful_core=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0);
        // A binary copied just now may still be open for writing in a process that another test
        // thread forked meanwhile (until it execs): "text file busy" for a moment.
        let mut attempts = 0;
        let mut child = loop {
            cmd.stderr(std::fs::File::create(&stderr).unwrap());
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                spawned => break spawned.expect("start the server"),
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Group {
            pgid: child.id() as i32,
            lines,
            seen: Default::default(),
            log,
            reaped: Default::default(),
        }
    }

    /// Starts `systemd-socket-activate` on a free loopback port, with the command `program`
    /// makes for that address, and connects once, which makes the tool start it; returns that
    /// first connection. Ports are taken by other tests too, so a port the tool could not
    /// listen on is retried.
    fn socket_activated(
        activate: &Path,
        fdname: Option<&str>,
        program: impl Fn(SocketAddr) -> Vec<String>,
    ) -> (Group, SocketAddr, TcpStream) {
        for _ in 0..5 {
            let addr = free_port();
            let mut cmd = Command::new(activate);
            cmd.arg("--listen").arg(addr.to_string());
            if let Some(name) = fdname {
                cmd.arg(format!("--fdname={name}"));
            }
            // The tool passes on only TERM, PATH, USER, HOME and what -E names.
            cmd.args([
                "-E",
                "RUST_LOG=info,graceful_core=debug",
                "-E",
                "NO_COLOR=1",
            ])
            .arg("--")
            .args(program(addr));
            let group = Group::spawn(&mut cmd);
            if let Some(first) = group.connect(addr) {
                return (group, addr, first);
            }
        }
        panic!("{SOCKET_ACTIVATE} could not listen on a free port in 5 attempts");
    }

    /// A connection to the tool's socket; `None` if the tool gave up (the port was taken
    /// meanwhile).
    fn connect(&self, addr: SocketAddr) -> Option<TcpStream> {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(stream) = TcpStream::connect(addr) {
                return Some(stream);
            }
            match waitpid(Pid::from_raw(self.pgid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
        panic!("{SOCKET_ACTIVATE} neither listened on {addr} nor exited within {STEP:?}");
    }

    /// The first line, among those printed so far or the next ones, for which `find` gives
    /// something. Generations print concurrently, so lines come in any order between them.
    fn find_line<T>(&self, waiting_for: &str, find: impl Fn(&str) -> Option<T>) -> T {
        if let Some(found) = self.seen.borrow().iter().find_map(|line| find(line)) {
            return found;
        }
        loop {
            let line = self.lines.recv_timeout(STEP).unwrap_or_else(|_| {
                panic!(
                    "no line from the server within {STEP:?} while waiting for {waiting_for}; \
                     lines so far: {:?}\n----- stderr -----\n{}",
                    self.seen.borrow(),
                    std::fs::read_to_string(self.log.path().join("stderr")).unwrap_or_default()
                )
            });
            self.seen.borrow_mut().push(line.clone());
            if let Some(found) = find(&line) {
                return found;
            }
        }
    }

    /// Waits for `ready pid=… generation=<generation> addr=…`.
    fn wait_ready(&self, generation: u64) -> Ready {
        self.find_line(&format!("generation {generation} to be ready"), |line| {
            let rest = line.strip_prefix("ready ")?;
            let value = |key: &str| {
                rest.split(' ')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            };
            (value("generation")? == generation.to_string()).then(|| Ready {
                pid: value("pid").and_then(|p| p.parse().ok()).expect("a pid"),
                addr: value("addr")
                    .and_then(|a| a.parse().ok())
                    .expect("an address"),
            })
        })
    }

    /// Waits for `exited pid=<pid> …`, then reaps that process.
    fn wait_exited(&self, pid: u32) {
        let prefix = format!("exited pid={pid} ");
        self.find_line(&format!("pid {pid} to exit"), |line| {
            line.starts_with(&prefix).then_some(())
        });
        let deadline = Instant::now() + STEP;
        loop {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.reaped.borrow_mut().push((pid, code));
                    return;
                }
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("pid {pid} did not exit cleanly: {other:?}"),
            }
        }
    }

    /// The exit codes of the processes reaped so far, in order.
    fn statuses(&self) -> Vec<(u32, i32)> {
        self.reaped.borrow().clone()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        // Everything of the group is ours to reap: children, or orphans through the subreaper.
        while waitpid(Pid::from_raw(-self.pgid), None).is_ok() {}
    }
}

/// A child process reaped even if the test fails before it is waited for.
struct Reaped(Option<Child>);

impl Reaped {
    fn output(mut self) -> Output {
        let child = self.0.take().expect("not waited for yet");
        child.wait_with_output().expect("wait for the command")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

fn socket_activate_tool() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(SOCKET_ACTIVATE))
        .find(|path| path.is_file());
    if found.is_none() {
        eprintln!(
            "SKIPPED: {SOCKET_ACTIVATE} is not installed (Debian package `systemd`; .ci/run \
             installs it)"
        );
    }
    found
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A copy of the server that the test may replace, as a deploy replaces a binary.
fn copy_server(dir: &Path) -> PathBuf {
    let exe = dir.join("http-server");
    std::fs::copy(SERVER, &exe).unwrap();
    exe
}

/// Replaces `path` with a shell script, the way a deploy does: a new file renamed over it.
fn install_script(path: &Path, body: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn break_binary(path: &Path) {
    install_script(path, "echo 'broken build' >&2\nexit 1\n");
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP;
    while !done() {
        assert!(Instant::now() < deadline, "waited {STEP:?} for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The build id the examples report for the executable `path`: what they were built with, or
/// else graceful's default, the file's `SIZE@SECONDS.NANOSECONDS` (`stat -c '%s@%.9Y'`).
fn build_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    if let Some(id) = option_env!("GRACEFUL_EXAMPLE_BUILD_ID") {
        return id.to_owned();
    }
    let metadata = std::fs::metadata(path).unwrap();
    format!(
        "{}@{}.{:09}",
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )
}

/// Installs a new copy of the server at `path`, as a deploy does (a new file renamed over the
/// old), with a modification time of its own: `n` days after 2023-11-14.
fn deploy_copy(path: &Path, n: u64) {
    let tmp = path.with_extension("new");
    std::fs::copy(SERVER, &tmp).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::new(1_700_000_000 + n * 86_400, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(when)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `http-server SUBCOMMAND --control-socket PATH`: what it printed, having succeeded.
fn control_command(subcommand: &str, control: &Path) -> String {
    let output = Command::new(SERVER)
        .args([subcommand, "--timeout", "60s", "--control-socket"])
        .arg(control)
        .output()
        .expect("run http-server");
    assert!(output.status.success(), "{subcommand}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// One request on the control socket, and the whole answer.
fn raw_request(control: &Path, request: &str) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(control).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("the answer to {request:?}: {e} after {answer:?}"));
    answer
}

fn run_upgrade_command(control: &Path) -> Output {
    Command::new(SERVER)
        .args(["upgrade", "--timeout", "60s", "--control-socket"])
        .arg(control)
        .output()
        .expect("run http-server upgrade")
}

/// `http-server upgrade`: the new pid it printed, or what it said on stderr.
fn upgrade_command(control: &Path) -> Result<u32, String> {
    let output = run_upgrade_command(control);
    let stdout = String::from_utf8_lossy(&output.stdout);
    match (
        output.status.success(),
        stdout.strip_prefix("upgraded pid="),
    ) {
        (true, Some(rest)) => Ok(rest
            .split(' ')
            .next()
            .and_then(|pid| pid.trim_end().parse().ok())
            .expect("a pid")),
        _ => Err(format!("{output:?}")),
    }
}

/// A variable of a process's environment.
fn environ(pid: u32, var: &str) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(format!("{var}=").as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_else(|| panic!("{var} is not in the environment of pid {pid}"))
}

/// `socket:[inode]` for a descriptor of a process.
fn socket_inode(pid: u32, fd: i32) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let link = link.display().to_string();
    assert!(
        link.starts_with("socket:"),
        "fd {fd} of pid {pid} is {link}"
    );
    link
}

fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|link| link.display().to_string())
        .filter(|link| link.starts_with("socket:"))
        .collect()
}

fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One request on its own connection; returns the body of a 200 response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    http_get_on(TcpStream::connect(addr).unwrap(), path)
}

/// One request on `stream`, which is closed after the response.
fn http_get_on(mut stream: TcpStream, path: &str) -> String {
    stream.set_read_timeout(Some(STEP)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("GET {path}: {e} after {response:?}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// A keep-alive connection, for requests the same generation must answer.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        KeepAlive {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str) -> String {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let mut length = None;
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().unwrap());
                }
            }
        }
        let mut body = vec![0; length.expect("a content-length")];
        self.reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// NOTIFY_SOCKET

/// A datagram socket standing in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        nix::sys::socket::setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        NotifySocket {
            socket,
            path: path.to_owned(),
        }
    }

    /// The next message, with the pid of the process that sent it; `None` after `timeout`.
    fn receive(&self, timeout: Duration) -> Option<(u32, Vec<String>)> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let msg = match recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(e) => panic!("receiving a notification: {e}"),
        };
        let pid = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid() as u32),
                _ => None,
            })
            .expect("SO_PASSCRED gives the sender's credentials");
        let len = msg.bytes;
        let text = String::from_utf8(buf[..len].to_vec()).expect("UTF-8");
        Some((pid, text.lines().map(str::to_owned).collect()))
    }

    /// The next message but the timeout extensions of a long upgrade: from `pid`, its first
    /// line starting with `first`.
    fn expect(&self, pid: u32, first: &str, what: &str) -> (u32, Vec<String>) {
        let message = loop {
            let message = self
                .receive(STEP)
                .unwrap_or_else(|| panic!("no notification within {STEP:?} for {what}"));
            if !message.1[0].starts_with("EXTEND_TIMEOUT_USEC=") {
                break message;
            }
        };
        assert_eq!(
            message.0, pid,
            "{what}: sent by the wrong process: {message:?}"
        );
        assert!(
            message.1[0].starts_with(first),
            "{what}: expected {first}…, got {message:?}"
        );
        message
    }

    fn expect_nothing_more(&self) {
        if let Some(message) = self.receive(Duration::from_millis(300)) {
            panic!("unexpected notification {message:?}");
        }
    }
}

/// The value of `KEY=` in a message.
fn field(lines: &[String], key: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key}= missing in {lines:?}"))
        .to_owned()
}
