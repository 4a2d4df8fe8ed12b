//! A `station run` process, its JSON (or plain) output read line by line as it comes.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Workspace;

/// Far longer than any of these batches takes; a hang fails the test instead of blocking CI.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// What a daemon has printed so far, and whether its stdout has closed (it exited).
#[derive(Default)]
pub struct Output {
    /// The lines.
    pub lines: Vec<String>,
    /// Whether stdout closed.
    pub closed: bool,
}

/// Output shared with the thread reading it, which signals every line and the end.
pub type Shared = Arc<(Mutex<Output>, Condvar)>;

/// A running `station run`, its stdout collected line by line.
pub struct Daemon {
    /// The process.
    pub child: Child,
    output: Shared,
}

impl Daemon {
    /// `station [--json] run --drain 30` in the workspace.
    pub fn start(ws: &Workspace, json: bool) -> Daemon {
        Daemon::start_with(ws, json, &[])
    }

    /// The same with more `run` arguments (`--batch NAME`).
    pub fn start_with(ws: &Workspace, json: bool, args: &[&str]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_station"));
        command.arg("--config").arg(ws.path("station.toml"));
        if json {
            command.arg("--json");
        }
        let mut child = command
            .args(["run", "--drain", "30"])
            .args(args)
            .env("STATION_OPERATOR", "tester")
            .env("STATION_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = Shared::default();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let (lock, changed) = &*sink;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lock.lock().unwrap().lines.push(line);
                changed.notify_all();
            }
            lock.lock().unwrap().closed = true;
            changed.notify_all();
        });
        Daemon { child, output }
    }

    /// What it printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.0.lock().unwrap().lines.clone()
    }

    /// Blocks until `done` holds for the output, woken by every new line; panics past the
    /// deadline, or when the daemon exits first and `done` still does not hold.
    pub fn wait_until(&self, what: &str, done: impl Fn(&Output) -> bool) {
        let (lock, changed) = &*self.output;
        let deadline = Instant::now() + DEADLINE;
        let mut output = lock.lock().unwrap();
        while !done(&output) {
            assert!(
                !output.closed,
                "the daemon exited before {what}; output: {:#?}",
                output.lines
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; output: {:#?}",
                output.lines
            );
            output = changed.wait_timeout(output, left).unwrap().0;
        }
    }

    /// Every stdout line as a JSON event (each must parse).
    pub fn events(&self) -> Vec<Value> {
        parse_events(&self.lines())
    }

    pub fn units(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "unit")
            .map(|e| e["report"].clone())
            .collect()
    }

    /// Waits until `done` holds for the events so far.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        self.wait_until(what, |output| done(&parse_events(&output.lines)));
    }

    /// Waits for the daemon to exit, with every line it printed read; its exit code.
    pub fn wait(&mut self) -> i32 {
        let (lock, changed) = &*self.output;
        let deadline = Instant::now() + DEADLINE;
        let mut output = lock.lock().unwrap();
        while !output.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.child.kill();
                panic!("the daemon did not exit; output: {:#?}", output.lines);
            }
            output = changed.wait_timeout(output, left).unwrap().0;
        }
        drop(output);
        // Its stdout is closed: it has exited (or is exiting).
        self.child.wait().unwrap().code().unwrap_or(-1)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every line as a JSON event (each must parse).
pub fn parse_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Polls `done` (a simulator's counters, which signal nothing) until it holds; panics past the
/// deadline.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
