//! `station run`, the line daemon, end to end (issue 5): the binary over simulated ESP32s that take
//! turns on pseudo-terminal ports, the real espflash code path, a real SQLite file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use station::sim::{Fault, SimLine, SimOptions};

use crate::util::daemon::{DEADLINE, Daemon, wait_until};
use crate::util::{Workspace, sim_config};

/// A workspace whose line watches `ports/ttySIM*`, with a batch `WO-1` of `target` units.
fn workspace(target: usize, probe_interval: f64) -> Workspace {
    workspace_with(target, probe_interval, sim_config(true))
}

/// The same, flashing through the ROM loader at 115200 baud: a unit spends about two seconds in
/// its flash stage, long enough to be caught there.
fn slow_workspace(target: usize) -> Workspace {
    let config = sim_config(false).replace("baud = 921600", "baud = 115200");
    workspace_with(target, 2.0, config)
}

fn workspace_with(target: usize, probe_interval: f64, config: String) -> Workspace {
    let config = config
        .replace(
            "ports = [\"auto\"]",
            "ports = [\"ports/ttySIM*\", \"ports/ttyABSENT\"]",
        )
        .replace(
            "probe_interval = 2.0",
            &format!("probe_interval = {probe_interval:?}"),
        );
    let ws = Workspace::with_config(&config);
    ws.station(&["batch", "open", "WO-1", "--target", &target.to_string()])
        .expect(0);
    ws
}

/// Devices taking turns on `ports` ports; with `operator`, each is taken off once the station
/// leaves it idle and the next one plugged in.
fn sim(ws: &Workspace, count: usize, ports: usize, operator: bool, wire_time: bool) -> SimLine {
    sim_with(ws, count, ports, operator, wire_time, &[])
}

fn sim_with(
    ws: &Workspace,
    count: usize,
    ports: usize,
    operator: bool,
    wire_time: bool,
    faults: &[&str],
) -> SimLine {
    SimLine::start(SimOptions {
        count,
        ports: Some(ports),
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        // Generous, so that a loaded CI machine's pause inside a session is not taken for the
        // end of the unit.
        leave_after_idle: operator.then_some(Duration::from_millis(1000)),
        swap_gap: Duration::from_millis(250),
        wire_time,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        ..SimOptions::default()
    })
    .unwrap()
}

fn status(ws: &Workspace) -> Value {
    ws.station(&["--json", "batch", "status", "WO-1"])
        .expect(0)
        .json()
}

/// The rows `sql` selects from the workspace's database.
fn query<T>(ws: &Workspace, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let db = ws.path("station.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = station::store::Store::open(&db).await.unwrap();
        let rows = sqlx::query_as(sql)
            .fetch_all(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        store.close().await;
        rows
    })
}

fn attempts(ws: &Workspace) -> Vec<(Option<String>, String)> {
    query(ws, "SELECT mac, outcome FROM attempts ORDER BY id")
}

/// The stages the open (in-progress) attempts have reached, as recorded.
fn open_attempt_stages(ws: &Workspace) -> Vec<String> {
    query::<(String,)>(
        ws,
        "SELECT stage FROM attempts WHERE outcome = 'in-progress' ORDER BY id",
    )
    .into_iter()
    .map(|(stage,)| stage)
    .collect()
}

#[test]
fn eight_ports_provision_a_batch_of_24_each_unit_once_and_honour_the_target() {
    let ws = workspace(24, 2.0);
    // 28 devices for a batch of 24: the last ones must never be started.
    let line = sim(&ws, 28, 8, true, false);
    let mut daemon = Daemon::start(&ws, true);
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());

    let units = daemon.units();
    let passed: Vec<&Value> = units
        .iter()
        .filter(|u| u["outcome"] == "provisioned")
        .collect();
    assert_eq!(passed.len(), 24, "{units:#?}");
    let mut macs: Vec<&str> = passed.iter().map(|u| u["mac"].as_str().unwrap()).collect();
    macs.sort_unstable();
    macs.dedup();
    assert_eq!(macs.len(), 24, "every unit exactly once");
    let ports: std::collections::HashSet<&str> =
        passed.iter().map(|u| u["port"].as_str().unwrap()).collect();
    assert_eq!(ports.len(), 8, "all eight ports worked");

    let status = status(&ws);
    assert_eq!(status["provisioned"], 24);
    assert_eq!(status["attempts"], 24);
    assert_eq!(status["in_progress"], 0);
    let written = line
        .devices()
        .iter()
        .filter(|d| d.stats().flash_blocks > 0)
        .count();
    assert_eq!(written, 24, "no device beyond the target was written");

    let events = daemon.events();
    assert_eq!(events.first().unwrap()["event"], "started");
    assert_eq!(events.last().unwrap()["event"], "stopped");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "stopping" && e["reason"] == "batch_complete")
    );
    assert!(
        events.iter().any(|e| e["event"] == "port_gone"),
        "units were unplugged"
    );
    assert!(
        events.iter().any(|e| e["event"] == "flash"),
        "flash progress is reported"
    );
    for mac in &macs {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "identified" && e["mac"] == *mac),
            "{mac} was shown once identified"
        );
    }
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn a_unit_left_plugged_in_is_not_reflashed_but_another_on_the_same_port_is() {
    let ws = workspace(5, 0.3);
    // No simulated operator: the first unit stays on the port until the test replaces it.
    let line = sim(&ws, 2, 1, false, false);
    let mut daemon = Daemon::start(&ws, true);
    daemon.wait_for("the first unit", |e| e.iter().any(|e| e["event"] == "unit"));
    let first = line.devices()[0].stats();
    assert!(first.flash_blocks > 0);
    // The unit's session (and its final reset) is over once its report is out: from here on,
    // only probes talk to it. Wait for them over several probe intervals (0.3 s) with the unit
    // still plugged in.
    let plugged = Instant::now();
    wait_until("the daemon probing the unit left plugged in", || {
        line.devices()[0].stats().frames_received > first.frames_received
            && plugged.elapsed() >= Duration::from_millis(1200)
    });
    assert_eq!(daemon.units().len(), 1, "{:#?}", daemon.lines());
    assert_eq!(
        line.devices()[0].stats().flash_blocks,
        first.flash_blocks,
        "probes read the MAC and write nothing"
    );

    assert!(line.replace(0));
    daemon.wait_for("the second unit", |e| {
        e.iter().filter(|e| e["event"] == "unit").count() == 2
    });
    let units = daemon.units();
    assert_eq!(units[0]["mac"], line.devices()[0].mac().to_string());
    assert_eq!(units[1]["mac"], line.devices()[1].mac().to_string());
    assert!(units.iter().all(|u| u["outcome"] == "provisioned"));

    daemon.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(daemon.wait(), 0);
    assert_eq!(status(&ws)["attempts"], 2);
}

#[test]
fn sigterm_mid_batch_lets_units_in_flight_finish_and_records_them() {
    let ws = slow_workspace(40);
    let _line = sim(&ws, 40, 4, true, true);
    let mut daemon = Daemon::start(&ws, true);
    daemon.wait_for("a unit flashing", |e| {
        e.iter()
            .any(|e| e["event"] == "stage" && e["stage"] == "flash")
    });
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());

    let events = daemon.events();
    let stopping = events
        .iter()
        .position(|e| e["event"] == "stopping")
        .expect("a stopping event");
    assert_eq!(events[stopping]["reason"], "signal");
    let in_flight = events[stopping]["in_flight"].as_u64().unwrap();
    assert!(in_flight >= 1, "{:#?}", events[stopping]);
    let finished_after = events[stopping..]
        .iter()
        .filter(|e| e["event"] == "unit")
        .count() as u64;
    assert_eq!(finished_after, in_flight, "every unit in flight finished");
    assert_eq!(
        events.last().unwrap()["tally"]["in_flight"],
        0,
        "{:#?}",
        events.last()
    );
    assert!(
        events[stopping..]
            .iter()
            .all(|e| e["event"] != "stage" || e["stage"] != "connect"),
        "no unit started after the signal"
    );

    let status = status(&ws);
    assert_eq!(status["in_progress"], 0);
    assert_eq!(status["interrupted"], 0);
    assert!(status["provisioned"].as_i64().unwrap() >= in_flight as i64);
    assert!(
        attempts(&ws)
            .iter()
            .all(|(_, outcome)| outcome == "provisioned"),
        "{:?}",
        attempts(&ws)
    );
}

#[test]
fn after_kill_9_the_next_start_marks_open_attempts_interrupted() {
    let ws = slow_workspace(3);
    let line = sim(&ws, 6, 1, true, true);
    let mut daemon = Daemon::start(&ws, true);
    daemon.wait_for("a unit flashing", |e| {
        e.iter()
            .any(|e| e["event"] == "stage" && e["stage"] == "flash")
    });
    // The stage is announced, then noted in the open attempt: kill once the record has it.
    wait_until("the open attempt noted at stage flash", || {
        open_attempt_stages(&ws) == ["flash"]
    });
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait();
    let killed_mac = line.devices()[0].mac().to_string();
    let before = status(&ws);
    assert_eq!(before["in_progress"], 1, "{before:#}");
    assert_eq!(
        before["provisioned"], 0,
        "nothing unverified shows as provisioned"
    );

    // The next start closes the open attempt and completes the batch with the next units.
    let mut again = Daemon::start(&ws, true);
    assert_eq!(again.wait(), 0, "{:#?}", again.lines());
    let started = again
        .events()
        .into_iter()
        .find(|e| e["event"] == "started")
        .unwrap();
    assert_eq!(started["interrupted"].as_array().unwrap().len(), 1);

    let after = status(&ws);
    assert_eq!(after["in_progress"], 0);
    assert_eq!(after["interrupted"], 1);
    assert_eq!(after["provisioned"], 3);
    assert_eq!(
        after["failures"][0]["error_code"],
        "station::line::interrupted"
    );
    assert_eq!(after["failures"][0]["stage"], "flash");
    let rows = attempts(&ws);
    assert_eq!(
        rows[0],
        (Some(killed_mac.clone()), "interrupted".to_owned()),
        "{rows:?}"
    );
    // The killed unit may still be on its port when the daemon restarts: then it is flashed
    // again from scratch, in a new attempt, and only that verified attempt provisions it.
    if let Some(unit) = again
        .units()
        .into_iter()
        .find(|u| u["mac"] == killed_mac.as_str())
    {
        assert_eq!(unit["outcome"], "provisioned");
        assert_ne!(unit["attempt_id"], 1);
    }
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "unit.interrupted" && e["subject"] == killed_mac.as_str()),
        "{audit:#}"
    );
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn one_failing_port_does_not_disturb_the_others() {
    let ws = workspace(7, 2.0);
    // Device 1 (on port 1) is pulled out at its first flash block; the rest must all pass.
    let line = sim_with(&ws, 8, 4, true, false, &["1:unplug@block=1"]);
    let mut daemon = Daemon::start(&ws, true);
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());
    let units = daemon.units();
    let failed: Vec<&Value> = units.iter().filter(|u| u["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{units:#?}");
    assert_eq!(failed[0]["mac"], line.devices()[1].mac().to_string());
    assert_eq!(failed[0]["stage"], "flash");
    assert_eq!(
        units
            .iter()
            .filter(|u| u["outcome"] == "provisioned")
            .count(),
        7
    );
    let status = status(&ws);
    assert_eq!(status["provisioned"], 7);
    assert_eq!(status["failures"].as_array().unwrap().len(), 1);
}

#[test]
fn without_a_terminal_the_daemon_logs_plain_lines() {
    let ws = workspace(2, 2.0);
    let _line = sim(&ws, 2, 2, true, false);
    let mut daemon = Daemon::start(&ws, false);
    assert_eq!(daemon.wait(), 0);
    let lines = daemon.lines();
    assert!(
        lines[0].starts_with("line: batch WO-1: 0/2 provisioned"),
        "{lines:#?}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("PASS  ")).count(), 2);
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no terminal escapes in a log: {lines:#?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("line: stopped: 2/2 provisioned")
    );
}

#[test]
fn run_without_an_open_batch_says_how_to_open_one() {
    let ws = Workspace::with_config(&sim_config(true));
    let run = ws.station(&["--json", "run"]).expect(2);
    assert_eq!(
        run.json()["error"]["code"].as_str().unwrap(),
        "station::store::no_open_batch"
    );
}

#[test]
fn demo_runs_a_batch_through_the_daemon_with_dps_and_leaves_the_working_directory_alone() {
    let cwd = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_station"))
        .args(["--json", "demo", "--count", "4", "--ports", "2"])
        .current_dir(cwd.path())
        .env("STATION_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    // JSON lines of the daemon's events, then the summary document.
    let summary_start = stdout.find("\n{\n").expect("a summary document") + 1;
    for line in stdout[..summary_start].lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        assert!(event["event"].is_string(), "{line}");
    }
    let summary: Value = serde_json::from_str(&stdout[summary_start..]).unwrap();
    assert_eq!(summary["batch"]["provisioned"], 4);
    assert_eq!(summary["tally"]["passed"], 4);
    assert!(summary["audit"]["first_break"].is_null());
    let workspace = std::path::PathBuf::from(summary["workspace"].as_str().unwrap());
    assert!(workspace.starts_with(std::env::temp_dir()));
    let manifest = std::fs::read_to_string(summary["manifest"].as_str().unwrap()).unwrap();
    assert_eq!(
        manifest.lines().count(),
        5,
        "a header and 4 units: {manifest}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing written to the working directory"
    );
    // Every unit was pre-verified against the demo's DPS emulator.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<String> = runtime.block_on(async {
        let store = station::store::Store::open(&workspace.join("station.db"))
            .await
            .unwrap();
        let rows = sqlx::query_scalar("SELECT dps_status FROM units")
            .fetch_all(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        store.close().await;
        rows
    });
    assert_eq!(statuses, vec!["assigned"; 4]);
    let _ = std::fs::remove_dir_all(&workspace);
}

// Issue 7: QA and auditors read while the line writes (WAL readers), without blocking it or
// seeing a half-recorded unit.
#[test]
fn exports_and_audit_verify_run_while_the_daemon_provisions() {
    let ws = workspace(12, 2.0);
    let _line = sim(&ws, 12, 4, true, true);
    let mut daemon = Daemon::start(&ws, true);
    let deadline = Instant::now() + DEADLINE;
    let mut reads = 0;
    while daemon.child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = daemon.child.kill();
            panic!(
                "the daemon did not finish its 12 units within {DEADLINE:?} ({reads} exports ran); output: {:#?}",
                daemon.lines()
            );
        }
        let manifest = ws
            .station(&[
                "--json", "export", "manifest", "--batch", "WO-1", "--format", "json",
            ])
            .expect(0)
            .json();
        ws.station(&["audit", "verify"]).expect(0);
        for row in manifest.as_array().unwrap() {
            // A unit in the manifest is complete: verified image, key fingerprint, its attempt.
            assert_eq!(row["nvs_sha256"].as_str().unwrap().len(), 64, "{row}");
            assert!(row["group_key_id"].as_str().unwrap().starts_with("sha256:"));
            assert!(row["attempts"].as_i64().unwrap() >= 1, "{row}");
            assert!(!row["port"].as_str().unwrap().is_empty(), "{row}");
        }
        reads += 1;
    }
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());
    assert!(reads >= 2, "exports ran during the batch ({reads})");
    // The writer was never turned away: every unit passed and was recorded.
    let units = daemon.units();
    assert_eq!(units.len(), 12);
    assert!(
        units.iter().all(|u| u["outcome"] == "provisioned"),
        "{units:#?}"
    );
    assert_eq!(status(&ws)["provisioned"], 12);
}

#[test]
fn on_a_terminal_the_daemon_draws_the_live_view() {
    use std::io::Read as _;
    let ws = workspace(2, 2.0);
    let _line = sim(&ws, 2, 2, true, false);
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_station"))
        .arg("--config")
        .arg(ws.path("station.toml"))
        .arg("run")
        .env("STATION_LOG", "warn")
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        // Reading ends with EIO once the daemon, the terminal's last user, has exited.
        let _ = master.read_to_end(&mut screen);
        String::from_utf8_lossy(&screen).into_owned()
    });
    // The reader ends when the daemon exits; a watchdog ends a daemon that hangs.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (finished, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = watched.recv_timeout(DEADLINE).is_err();
        if hung {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        hung
    });
    let screen = reader.join().unwrap();
    let code = child.wait().unwrap().code();
    let _ = finished.send(());
    assert!(
        !watchdog.join().unwrap(),
        "the daemon did not finish: {screen}"
    );
    assert_eq!(code, Some(0));
    assert!(screen.contains("batch WO-1"), "{screen}");
    assert!(
        screen.contains("\u{1b}[32mPASS"),
        "a green PASS per unit: {screen}"
    );
    assert!(screen.contains("2/2 provisioned"), "{screen}");
    assert!(
        screen.contains("ttySIM0") && screen.contains("ttySIM1"),
        "{screen}"
    );
    assert!(
        !screen.contains("line: stopped"),
        "the live view, not the plain log: {screen}"
    );
}

/// The units of the workspace's database: (MAC, registration ID, state, image SHA-256).
fn units(ws: &Workspace) -> Vec<(String, String, String, Option<String>)> {
    query(
        ws,
        "SELECT mac, registration_id, state, image_sha256 FROM units ORDER BY mac",
    )
}

// Issue 13: kill -9 at random points across a batch, then the invariants: no unit shows as
// provisioned unless its flash holds exactly the recorded image, no unit twice, nothing left
// in progress, the audit chain (and its checkpoints) intact, and the batch completes.
#[test]
fn kill_9_at_random_points_leaves_nothing_falsely_provisioned() {
    use sha2::Digest as _;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // A small linear congruential generator: the seed is printed with any failure.
    let mut state = u64::from(seed) | 1;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    let target = 10;
    let ws = workspace(target, 2.0);
    let mut config = std::fs::read_to_string(ws.path("station.toml")).unwrap();
    config.push_str("\n[audit]\ncheckpoint_every = 5\nsyslog = \"\"\n");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    let line = sim(&ws, target + 4, 3, true, true);
    let mut kills = 0;
    for _ in 0..5 {
        let mut daemon = Daemon::start(&ws, true);
        // Somewhere between starting up and the middle of a unit's session.
        std::thread::sleep(Duration::from_millis(200 + next(1800)));
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.wait();
        kills += 1;
    }
    let mut last = Daemon::start(&ws, true);
    assert_eq!(last.wait(), 0, "seed {seed}: {:#?}", last.lines());

    let status = status(&ws);
    assert_eq!(status["in_progress"], 0, "seed {seed}: {status:#}");
    assert_eq!(status["provisioned"], target, "seed {seed}: {status:#}");
    let rows = units(&ws);
    let mut macs: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    macs.dedup();
    assert_eq!(macs.len(), rows.len(), "seed {seed}: a MAC recorded twice");
    let mut ids: Vec<&String> = rows.iter().map(|r| &r.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        rows.len(),
        "seed {seed}: a registration ID twice"
    );
    for (mac, _, state, image_sha256) in &rows {
        if state != "provisioned" {
            continue;
        }
        let device = line
            .devices()
            .iter()
            .find(|d| d.mac().to_string() == *mac)
            .unwrap();
        let flash = device.flash();
        let written = hex::encode(sha2::Sha256::digest(&flash[0x9000..0x9000 + 0x6000]));
        assert_eq!(
            Some(&written),
            image_sha256.as_ref(),
            "seed {seed}: {mac} shows as provisioned but its flash differs"
        );
    }
    let verified = ws.station(&["--json", "audit", "verify"]).expect(0).json();
    assert_eq!(
        verified["checkpoints"]["problems"],
        serde_json::json!([]),
        "seed {seed}"
    );
    assert_eq!(kills, 5);
}

/// Issue 14: the boot check on every port, concurrently with flashing on the others; a unit
/// whose firmware fails to start is FAIL with its reason and stays on the line, failed.
#[test]
fn an_eight_port_line_with_the_boot_check_passes_six_units_and_fails_two_at_boot() {
    let config = crate::boot::boot_config(10.0, "");
    // Probes every 0.5 s: the units that stay on their ports are probed while the test waits.
    let ws = workspace_with(8, 0.5, config);
    let (faults, app_faults) = station::sim::FaultSpec::split(
        ["2:boot-panic", "5:psram"]
            .iter()
            .map(|f| f.parse::<station::sim::FaultSpec>().unwrap()),
    );
    let line = SimLine::start(SimOptions {
        count: 8,
        ports: Some(8),
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        faults,
        app_faults,
        ..SimOptions::default()
    })
    .unwrap();
    let daemon = Daemon::start(&ws, true);
    daemon.wait_for("eight units", |events| {
        events.iter().filter(|e| e["event"] == "unit").count() == 8
    });
    let units = daemon.units();
    let failed: Vec<(&str, &str, &str)> = units
        .iter()
        .filter(|u| u["outcome"] == "failed")
        .map(|u| {
            (
                u["mac"].as_str().unwrap(),
                u["stage"].as_str().unwrap(),
                u["error_code"].as_str().unwrap(),
            )
        })
        .collect();
    let mac = |i: usize| line.devices()[i].mac().to_string();
    let mut expected = vec![
        (mac(2), "boot", "station::boot::panic"),
        (mac(5), "boot", "station::boot::psram"),
    ];
    expected.sort();
    let mut failed: Vec<(String, &str, &str)> = failed
        .into_iter()
        .map(|(m, s, c)| (m.to_owned(), s, c))
        .collect();
    failed.sort();
    assert_eq!(failed, expected, "{units:#?}");
    assert_eq!(
        units
            .iter()
            .filter(|u| u["outcome"] == "provisioned")
            .count(),
        6
    );
    // Every unit went through stage boot, each on its own port.
    let events = daemon.events();
    let booted: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "stage" && e["stage"] == "boot")
        .map(|e| e["port"].as_str().unwrap())
        .collect();
    assert_eq!(booted.len(), 8);
    // The failed units stay on the line, failed: waiting to be taken off, not retried. The
    // daemon says so just after the unit's report, so wait for it rather than read a snapshot.
    for i in [2, 5] {
        let failed_mac = mac(i);
        daemon.wait_for(&format!("{failed_mac} waiting as failed"), |events| {
            events.iter().any(|e| {
                e["event"] == "waiting"
                    && e["reason"] == "unit_failed"
                    && e["mac"] == failed_mac.as_str()
            })
        });
    }
    // Units running their application do not answer the loader's probe: none is taken for a
    // new device and flashed again (a probe gives up on a silent port after 3 s).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(daemon.units().len(), 8, "no unit was tried again");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let mut daemon = daemon;
    assert_eq!(daemon.wait(), 0);
    let status = status(&ws);
    assert_eq!(
        (status["provisioned"].as_i64(), status["failed"].as_i64()),
        (Some(6), Some(2))
    );
    ws.station(&["audit", "verify"]).expect(0);
}

/// Issue 14, the operator's view: the plain log shows the stage `boot`, then PASS, or FAIL with
/// the firmware's reason, its code and the hint, and tells the operator to set the unit aside;
/// the unit put in its place passes and the batch completes.
#[test]
fn the_plain_log_shows_the_boot_stage_and_a_failed_boot_with_its_reason_and_hint() {
    let config = crate::boot::boot_config(10.0, "");
    let ws = workspace_with(2, 2.0, config);
    let (faults, app_faults) =
        station::sim::FaultSpec::split(["1:psram".parse::<station::sim::FaultSpec>().unwrap()]);
    let line = SimLine::start(SimOptions {
        count: 3,
        ports: Some(2),
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        leave_after_idle: Some(Duration::from_millis(1000)),
        swap_gap: Duration::from_millis(250),
        faults,
        app_faults,
        ..SimOptions::default()
    })
    .unwrap();
    let mut daemon = Daemon::start(&ws, false);
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());
    let lines = daemon.lines();
    let bad = line.devices()[1].mac().to_string();
    assert!(
        lines.iter().any(|l| l.ends_with("  boot")),
        "the stage shows: {lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("PASS  ")).count(),
        2,
        "{lines:#?}"
    );
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  ") && l.contains(&bad))
        .unwrap_or_else(|| panic!("no FAIL line for {bad}: {lines:#?}"));
    let fail = &lines[at];
    assert!(
        fail.contains("at boot: the firmware cannot start its PSRAM")
            && fail.contains("PSRAM ID read error")
            && fail.ends_with("[station::boot::psram]"),
        "{fail}"
    );
    assert!(
        lines[at + 1].trim_start().starts_with("hint: ") && lines[at + 1].contains("CONFIG_SPIRAM"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed: take it off and set it aside")),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:#?}");
    let status = status(&ws);
    assert_eq!(
        (status["provisioned"].as_i64(), status["failed"].as_i64()),
        (Some(2), Some(1))
    );
}
