//! `scale-probe` with tiny sizes: its JSON lines parse, keep their documented shape, and say
//! what happened (every connection closed cleanly, nothing abandoned). Behaviour, never speed:
//! no figure is compared with a bound, only with its own kind (min ≤ median ≤ max).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A bound for a whole probe run; generous, because it only matters when something hangs.
const RUN: Duration = Duration::from_secs(180);

/// The probe, killed and reaped if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` with `args`; returns its exit status, its
/// stdout and its stderr.
fn run_with(args: &[&str], command: &mut Command) -> (ExitStatus, String, String) {
    let mut child = Running(
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start scale-probe"),
    );
    let (tx, rx) = mpsc::channel();
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.0.stdout.take().expect("piped")),
        Box::new(child.0.stderr.take().expect("piped")),
    ];
    for (index, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((index, text));
        });
    }
    // Both pipes reach end of file when the probe exits: its own processes never inherit them.
    let mut output = [String::new(), String::new()];
    for _ in 0..2 {
        let (index, text) = rx
            .recv_timeout(RUN)
            .unwrap_or_else(|_| panic!("scale-probe {args:?} still runs after {RUN:?}"));
        output[index] = text;
    }
    let status = child.0.wait().expect("wait for scale-probe");
    let [stdout, stderr] = output;
    (status, stdout, stderr)
}

fn scale_probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scale-probe"))
}

/// Runs a probe that must succeed and print exactly one JSON line; returns it.
fn measure(args: &[&str]) -> Value {
    let (status, stdout, stderr) = run_with(args, &mut scale_probe());
    assert!(
        status.success(),
        "scale-probe {args:?} failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got:\n{stdout}");
    let value: Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]));
    assert!(value.get("error").is_none(), "{value}");
    assert!(value.get("skipped").is_none(), "{value}");
    value
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(value, |v, key| &v[key])
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {value}"))
}

/// A `{"min","median","p95","max"}` of times: positive and ordered.
fn assert_timings(value: &Value, key: &str) {
    let [min, median, p95, max] =
        ["min", "median", "p95", "max"].map(|stat| number(value, &[key, stat]));
    assert!(min > 0.0, "{key}: {value}");
    assert!(
        min <= median && median <= p95 && p95 <= max,
        "{key}: {value}"
    );
}

#[test]
fn upgrade_reports_upgrade_and_start_times() {
    let value = measure(&["upgrade", "--sockets", "3", "--samples", "2"]);
    assert_eq!(value["probe"], "upgrade");
    assert_eq!(value["sockets"], 3);
    assert_eq!(value["samples"], 2);
    assert_timings(&value, "upgrade_ms");
    assert_timings(&value, "start_ms");
}

#[test]
fn drain_closes_every_idle_connection_cleanly() {
    let value = measure(&["drain", "--connections", "20", "--samples", "1"]);
    assert_eq!(value["probe"], "drain");
    assert_eq!(value["connections"], 20);
    assert_eq!(value["clients"], 20);
    assert_eq!(value["clean_eof"], 20, "{value}");
    for zero in ["reset", "other_errors", "still_open", "abandoned"] {
        assert_eq!(value[zero], 0, "{zero}: {value}");
    }
    assert_timings(&value, "drain_ms");
    assert_timings(&value, "upgrade_ms");
}

#[test]
fn memory_reports_bytes_per_connection_for_both_kinds() {
    let value = measure(&["memory", "--connections", "100", "--samples", "1"]);
    assert_eq!(value["probe"], "memory");
    assert_eq!(value["connections"], 100);
    for kind in ["raw_bytes_per_connection", "tracked_bytes_per_connection"] {
        let [min, median, max] = ["min", "median", "max"].map(|stat| number(&value, &[kind, stat]));
        assert!(min <= median && median <= max, "{kind}: {value}");
    }
    let difference = number(&value, &["tracking_bytes_per_connection"]);
    assert!(difference.is_finite(), "{value}");
    // A tracked stream is the raw stream plus its guard.
    assert!(number(&value, &["size_of_tracked"]) > number(&value, &["size_of_raw"]));
}

#[test]
fn a_descriptor_limit_too_low_is_reported_not_measured() {
    let mut command = scale_probe();
    // SAFETY: setrlimit is a plain system call, safe between fork and exec; nothing allocates.
    unsafe {
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                .map_err(std::io::Error::from)
        });
    }
    let (status, stdout, stderr) = run_with(&["drain", "--connections", "1000"], &mut command);
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let value: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(value["probe"], "drain");
    assert_eq!(value["connections"], 1000);
    let why = value["skipped"].as_str().expect("a reason to skip");
    assert!(why.contains("RLIMIT_NOFILE hard limit is 256"), "{why}");
    assert!(
        value.get("drain_ms").is_none(),
        "no figure when skipped: {value}"
    );
}

#[test]
fn a_bad_command_line_names_the_problem() {
    let (status, stdout, stderr) = run_with(&["drain"], &mut scale_probe());
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("--connections is required"), "{stderr}");
    assert!(stdout.is_empty());
}
