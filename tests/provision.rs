//! `station provision` end to end: the binary, the real espflash code path, simulated ESP32s on
//! pseudo-terminals, a real SQLite file.

use std::time::{Duration, Instant};

use station::sim::{Fault, SimChip, SimLine, SimOptions};

use crate::util::{Run, Workspace, sim_config};

/// Longer than any failing unit may take before it counts as a hang (espflash's per-command
/// timeouts are 3 s, flash data 10 s); generous for a loaded CI machine.
const HANG: Duration = Duration::from_secs(60);

/// A simulated line inside the workspace: links in `ports/`, flash dumps in `flash/`.
fn line(ws: &Workspace, count: usize, chip: SimChip, faults: &[&str]) -> SimLine {
    SimLine::start(SimOptions {
        count,
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        chip,
        faults: faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect(),
        wire_time: false,
        ..SimOptions::default()
    })
    .unwrap()
}

fn provision(ws: &Workspace, sim: &SimLine, device: usize, extra: &[&str]) -> Run {
    let port = sim.devices()[device].port().to_str().unwrap().to_owned();
    let mut args = vec!["--json", "provision", "--port", port.as_str()];
    args.extend_from_slice(extra);
    ws.station(&args)
}

fn dump(sim: &SimLine, device: usize) -> Vec<u8> {
    std::fs::read(sim.devices()[device].flash_file().unwrap()).unwrap()
}

/// Asserts that device `device`'s NVS partition holds exactly the image `nvs build` makes
/// for `mac`.
fn assert_nvs_built_for(ws: &Workspace, sim: &SimLine, device: usize, mac: &str) {
    let expected = ws.path("expected.bin");
    ws.station(&[
        "nvs",
        "build",
        "--mac",
        mac,
        "--out",
        expected.to_str().unwrap(),
    ])
    .expect(0);
    assert_eq!(
        nvs_region(&dump(sim, device)),
        std::fs::read(&expected).unwrap().as_slice()
    );
}

fn nvs_region(flash: &[u8]) -> &[u8] {
    &flash[0x9000..0x9000 + 0x6000]
}

fn workspace(stub: bool) -> Workspace {
    let ws = Workspace::with_config(&sim_config(stub));
    ws.station(&[
        "batch",
        "open",
        "WO-1",
        "--target",
        "3",
        "--operator",
        "ana",
    ])
    .expect(0);
    ws
}

#[test]
fn provisioned_flash_equals_nvs_build_for_the_mac() {
    let ws = workspace(true);
    let sim = line(&ws, 1, SimChip::Esp32, &[]);
    let mac = sim.devices()[0].mac();
    let report = provision(&ws, &sim, 0, &[]).expect(0).json();
    assert_eq!(report["outcome"], "provisioned");
    assert_eq!(report["stage"], serde_json::Value::Null);
    assert_eq!(report["mac"], mac.to_string());
    assert_eq!(report["registration_id"], format!("sensor-{}", mac.hex()));
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(report["dps_status"], "not-requested");

    let expected = ws.path("expected.bin");
    ws.station(&[
        "nvs",
        "build",
        "--mac",
        &mac.to_string(),
        "--out",
        expected.to_str().unwrap(),
    ])
    .expect(0);
    let flash = dump(&sim, 0);
    assert_eq!(
        nvs_region(&flash),
        std::fs::read(&expected).unwrap().as_slice()
    );
    assert!(
        flash[..0x9000].iter().all(|&b| b == 0xFF),
        "nothing else was written"
    );
    assert!(
        flash[0xF000..].iter().all(|&b| b == 0xFF),
        "nothing else was written"
    );

    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (status["provisioned"].as_i64(), status["attempts"].as_i64()),
        (Some(1), Some(1))
    );
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let last = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "unit.provisioned")
        .unwrap()
        .clone();
    assert_eq!(last["action"], "unit.provisioned");
    assert_eq!(last["subject"], mac.to_string());
    assert_eq!(last["operator"], "tester");
    let details: serde_json::Value =
        serde_json::from_str(last["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["image_sha256"], report["image_sha256"]);
    assert_eq!(details["key_id"], report["key_id"]);
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn three_devices_one_after_another_in_one_batch() {
    let ws = workspace(true);
    let sim = line(&ws, 3, SimChip::Esp32, &[]);
    let mut macs = std::collections::BTreeSet::new();
    for device in 0..3 {
        let report = provision(&ws, &sim, device, &[]).expect(0).json();
        assert_eq!(report["outcome"], "provisioned");
        macs.insert(report["mac"].as_str().unwrap().to_owned());
    }
    assert_eq!(macs.len(), 3, "three distinct units");
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (status["provisioned"].as_i64(), status["failed"].as_i64()),
        (Some(3), Some(0))
    );
    let text = ws.station(&["batch", "status"]).expect(0).stdout;
    assert!(text.contains("3/3"), "{text}");
}

#[test]
fn rom_only_mode_provisions_and_verifies_too() {
    let ws = workspace(false);
    let sim = line(&ws, 1, SimChip::Esp32, &[]);
    let mac = sim.devices()[0].mac();
    provision(&ws, &sim, 0, &[]).expect(0);
    assert_nvs_built_for(&ws, &sim, 0, &mac.hex());
}

#[test]
fn unplug_mid_write_fails_at_flash_and_a_retry_on_a_healthy_device_succeeds() {
    let ws = workspace(true);
    let sim = line(&ws, 2, SimChip::Esp32, &["0:unplug@block=1"]);
    let started = Instant::now();
    let report = provision(&ws, &sim, 0, &[]).expect(1).json();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["stage"], "flash");
    assert_eq!(report["error_code"], "station::device::unplugged");
    let mac = report["mac"].as_str().unwrap().to_owned();

    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (
            status["provisioned"].as_i64(),
            status["failed"].as_i64(),
            status["failed_attempts"].as_i64()
        ),
        (Some(0), Some(1), Some(1))
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (unit, attempts) = rt.block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        let unit = store
            .unit_by_mac(&mac.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let attempts = store.attempts_of(unit.batch_id).await.unwrap();
        store.close().await;
        (unit, attempts)
    });
    assert_eq!(
        (
            unit.state.as_str(),
            unit.failed_stage.map(|s| s.as_str()),
            unit.provisioned_at.as_deref()
        ),
        ("failed", Some("flash"), None)
    );
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].stage.map(|s| s.as_str()),
            attempts[0].error_code.as_ref().map(|c| c.as_str())
        ),
        (Some("flash"), Some("station::device::unplugged"))
    );
    assert!(attempts[0].port.ends_with("ttySIM0"));

    let retry = provision(&ws, &sim, 1, &[]).expect(0).json();
    assert_eq!(retry["outcome"], "provisioned");
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (status["provisioned"].as_i64(), status["attempts"].as_i64()),
        (Some(1), Some(2))
    );
}

#[test]
fn wrong_chip_is_refused_at_identify_and_nothing_is_written() {
    let ws = workspace(true);
    let sim = line(&ws, 1, SimChip::Esp32s3, &[]);
    let report = provision(&ws, &sim, 0, &[]).expect(1).json();
    assert_eq!(report["stage"], "identify");
    assert_eq!(report["error_code"], "station::device::wrong_chip");
    assert!(
        report["message"].as_str().unwrap().contains("esp32s3"),
        "{report}"
    );
    assert!(
        dump(&sim, 0).iter().all(|&b| b == 0xFF),
        "flash must still be erased"
    );
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (
            status["attempts"].as_i64(),
            status["failed_attempts"].as_i64()
        ),
        (Some(1), Some(1))
    );
}

#[test]
fn corrupt_reply_and_silence_fail_in_bounded_time_and_are_recorded() {
    for (fault, stage) in [
        ("corrupt@block=1", "flash"),
        ("silent@block=1", "flash"),
        ("silent@frame=1", "connect"),
    ] {
        let ws = workspace(true);
        let sim = line(&ws, 1, SimChip::Esp32, &[fault]);
        let started = Instant::now();
        let report = provision(&ws, &sim, 0, &[]).expect(1).json();
        assert!(
            started.elapsed() < HANG,
            "{fault} took {:?}",
            started.elapsed()
        );
        assert_eq!(report["outcome"], "failed", "{fault}");
        assert_eq!(report["stage"], stage, "{fault}: {report}");
        let code = report["error_code"].as_str().unwrap();
        assert!(code.starts_with("station::device::"), "{fault}: {code}");
        assert!(report["hint"].is_string(), "{fault} has no hint");
        let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
        assert_eq!(status["failed_attempts"].as_i64(), Some(1), "{fault}");
    }
}

#[test]
fn same_batch_reflash_is_idempotent_and_another_batch_needs_reprovision() {
    let ws = workspace(true);
    let sim = line(&ws, 1, SimChip::Esp32, &[]);
    let first = provision(&ws, &sim, 0, &[]).expect(0).json();
    let image = nvs_region(&dump(&sim, 0)).to_vec();
    let again = provision(&ws, &sim, 0, &[]).expect(0).json();
    assert_eq!(again["registration_id"], first["registration_id"]);
    assert_eq!(again["image_sha256"], first["image_sha256"]);
    assert_eq!(nvs_region(&dump(&sim, 0)), image.as_slice());

    ws.station(&["batch", "close"]).expect(0);
    ws.station(&["batch", "open", "WO-2", "--target", "1"])
        .expect(0);
    let refused = provision(&ws, &sim, 0, &[]).expect(1).json();
    assert_eq!(refused["stage"], "identify");
    assert_eq!(
        refused["error_code"],
        "station::provision::already_provisioned"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("WO-1"),
        "{refused}"
    );
    let reprovisioned = provision(&ws, &sim, 0, &["--reprovision"]).expect(0).json();
    assert_eq!(reprovisioned["reprovision"], true);
    assert_eq!(reprovisioned["image_sha256"], first["image_sha256"]);

    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // The first provisioning also records the configuration and group key the station runs
    // with; later runs with the same ones add nothing.
    assert_eq!(
        actions,
        [
            "batch.open",
            "config.changed",
            "key.loaded",
            "unit.provisioned",
            "unit.provisioned",
            "batch.close",
            "batch.open",
            "unit.failed",
            "unit.reprovisioned"
        ]
    );
    let wo2 = ws
        .station(&["--json", "batch", "status", "WO-2"])
        .expect(0)
        .json();
    assert_eq!(
        wo2["provisioned"].as_i64(),
        Some(1),
        "the unit moved to WO-2"
    );
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn busy_and_missing_ports_are_clear_errors() {
    let ws = workspace(true);
    let missing = ws
        .station(&[
            "--json",
            "provision",
            "--port",
            ws.path("ports/nope").to_str().unwrap(),
        ])
        .expect(1)
        .json();
    assert_eq!(
        (missing["stage"].as_str(), missing["error_code"].as_str()),
        (Some("connect"), Some("station::device::port_not_found"))
    );

    let sim = line(&ws, 1, SimChip::Esp32, &[]);
    let port = sim.devices()[0].port().to_owned();
    let _held = serialport::new(port.to_str().unwrap(), 115_200)
        .open_native()
        .unwrap();
    let started = Instant::now();
    let busy = provision(&ws, &sim, 0, &[]).expect(1).json();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a held port must not hang"
    );
    assert_eq!(busy["error_code"], "station::device::port_busy");
}

#[test]
fn sim_devices_command_prints_ports_and_keeps_flash_dumps() {
    use std::io::BufRead as _;
    let ws = workspace(true);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_station"))
        .args([
            "sim",
            "devices",
            "--count",
            "2",
            "--base-mac",
            "24:0a:c4:aa:00:00",
        ])
        .arg("--link-dir")
        .arg(ws.path("ports"))
        .arg("--flash-dir")
        .arg(ws.path("flash"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ports: Vec<String> = (0..2).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(ports[0], ws.path("ports/ttySIM0").display().to_string());
    let run = ws
        .station(&["--json", "provision", "--port", &ports[1]])
        .expect(0)
        .json();
    assert_eq!(run["mac"], "24:0a:c4:aa:00:01");
    let flash = std::fs::read(ws.path("flash/240ac4aa0001.bin")).unwrap();
    assert_eq!(flash.len(), 4 << 20);
    assert!(nvs_region(&flash).iter().any(|&b| b != 0xFF));
    // SIGTERM ends it cleanly and removes the links.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !ws.path("ports/ttySIM0").exists(),
        "links are removed on exit"
    );
}

#[test]
fn keys_reach_only_the_device_even_with_trace_logs() {
    let ws = workspace(true);
    let sim = line(&ws, 2, SimChip::Esp32, &["1:unplug@block=1"]);
    // Workspace::station runs with STATION_LOG=trace.
    let ok = provision(&ws, &sim, 0, &[]).expect(0);
    let failed = provision(&ws, &sim, 1, &[]).expect(1);
    let mac = sim.devices()[0].mac();
    let device_key = ws
        .station(&[
            "--json",
            "key",
            "derive",
            "--registration-id",
            &format!("sensor-{}", mac.hex()),
        ])
        .expect(0)
        .json()["primary"]["device_key"]
        .as_str()
        .unwrap()
        .to_owned();
    // The device holds its derived key, and never the group key.
    let flash = dump(&sim, 0);
    assert!(
        flash
            .windows(device_key.len())
            .any(|w| w == device_key.as_bytes())
    );
    let group_forms = crate::util::secret_forms(crate::util::GROUP_KEY);
    crate::util::assert_absent(&flash, &group_forms, "the device's flash");
    let device_forms = crate::util::secret_forms(&device_key);
    for (run, name) in [
        (&ok, "a provisioned unit's output"),
        (&failed, "a failed unit's output"),
    ] {
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(!run.stderr.is_empty(), "trace logs were written");
        crate::util::assert_absent(text.as_bytes(), &group_forms, name);
        crate::util::assert_absent(text.as_bytes(), &device_forms, name);
    }
    for file in ["station.db", "station.db-wal"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            crate::util::assert_absent(&bytes, &group_forms, file);
            crate::util::assert_absent(&bytes, &device_forms, file);
        }
    }
}

/// Line noise corrupts the NVS region's data block: the ROM refuses it and has used up its
/// sequence number, so the region is written again from a new FLASH_DEFL_BEGIN; the unit is
/// provisioned only because its MD5 then matched, and the restart is kept in the attempt's
/// timings (issue 12, item 4).
#[test]
fn a_refused_block_is_written_again_and_recorded_with_the_attempt() {
    let ws = workspace(false);
    let sim = line(&ws, 1, SimChip::Esp32, &["noise@block=1"]);
    let report = provision(&ws, &sim, 0, &[]).expect(0).json();
    assert_eq!(report["outcome"], "provisioned", "{report}");
    let restarts = report["timings"]["flash_restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{report}");
    assert_eq!(restarts[0]["offset"], 0x9000);
    assert_eq!(restarts[0]["block"], 0);
    assert!(
        restarts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("FlashDeflData"),
        "{report}"
    );
    assert_nvs_built_for(&ws, &sim, 0, report["mac"].as_str().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let attempts = rt.block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        let unit = store
            .unit_by_mac(&report["mac"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        let attempts = store.attempts_of(unit.batch_id).await.unwrap();
        store.close().await;
        attempts
    });
    let timings: serde_json::Value = serde_json::from_str(&attempts[0].timings).unwrap();
    assert_eq!(
        timings["flash_restarts"],
        report["timings"]["flash_restarts"]
    );
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// Issue 11: one grep of the logs follows a unit; stage timings are tracing events.
#[test]
fn a_units_log_lines_carry_its_port_mac_and_registration_id_and_each_stage_time() {
    let ws = workspace(true);
    let sim = line(&ws, 1, SimChip::Esp32, &[]);
    let port = sim.devices()[0].port().to_str().unwrap().to_owned();
    let run = ws
        .station_logging("info", &["--json", "provision", "--port", &port])
        .expect(0);
    let mac = sim.devices()[0].mac();
    let registration_id = format!("sensor-{}", mac.hex());
    let logs = without_colours(&run.stderr);
    let unit: Vec<&str> = logs.lines().filter(|l| l.contains("provision{")).collect();
    for stage in [
        "connect", "identify", "build", "flash", "verify", "record", "reset",
    ] {
        let line = unit
            .iter()
            .find(|l| l.contains("stage finished") && l.contains(&format!("stage=\"{stage}\"")))
            .unwrap_or_else(|| panic!("no timing of {stage}:\n{logs}"));
        assert!(line.contains("seconds="), "{line}");
        assert!(line.contains(&format!("port={port}")), "{line}");
    }
    // From the identify stage's timing on, every line of the unit names it.
    let named: Vec<&&str> = unit
        .iter()
        .skip_while(|l| !l.contains("stage=\"identify\""))
        .collect();
    assert!(named.len() >= 6, "{logs}");
    for line in named {
        assert!(
            line.contains(&format!("mac={mac}"))
                && line.contains(&format!("registration_id={registration_id}")),
            "{line}"
        );
    }
}
