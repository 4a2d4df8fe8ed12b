//! The boot check end to end (issue 14): `station provision` through the binary, the real
//! espflash code path resetting simulated ESP32s into their application over pseudo-terminals
//! (the RTC watchdog armed over the loader), the console read through tokio-serial, the
//! simulated firmware reading the NVS partition the station wrote, a real SQLite file.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use station::sim::{FaultSpec, SimLine, SimOptions};

use crate::util::{Workspace, assert_absent, secret_forms, sim_config};

/// The example configuration for pseudo-terminals with the boot check on: the reset into the
/// application by the chip's watchdog, `timeout` seconds for the firmware to confirm.
pub fn boot_config(timeout: f64, extra: &str) -> String {
    sim_config(true).replace("after = \"no-reset\"", "after = \"watchdog-reset\"")
        + &format!("\n[boot]\nenabled = true\ntimeout = {timeout:?}\n{extra}")
}

fn workspace(timeout: f64, extra: &str) -> Workspace {
    let ws = Workspace::with_config(&boot_config(timeout, extra));
    ws.station(&[
        "batch",
        "open",
        "WO-1",
        "--target",
        "10",
        "--operator",
        "ana",
    ])
    .expect(0);
    ws
}

/// Simulated ESP32s in the workspace, their time charged as on hardware (the boot log takes
/// its time at 115200), with `faults` (`"2:boot-panic"`, ...).
fn line(ws: &Workspace, count: usize, faults: &[&str]) -> SimLine {
    let (faults, app_faults) =
        FaultSpec::split(faults.iter().map(|f| f.parse::<FaultSpec>().unwrap()));
    SimLine::start(SimOptions {
        count,
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        faults,
        app_faults,
        ..SimOptions::default()
    })
    .unwrap()
}

fn unit_show(ws: &Workspace, mac: &str) -> Value {
    ws.station(&["--json", "unit", "show", mac])
        .expect(0)
        .json()
}

#[test]
fn a_good_unit_passes_with_its_boot_log_stored_and_its_hash_audited() {
    let ws = workspace(10.0, "");
    let sim = line(&ws, 1, &[]);
    let report = ws.provision(&sim, 0).expect(0).json();
    let mac = sim.devices()[0].mac();
    let id = format!("sensor-{}", mac.hex());
    assert_eq!(report["outcome"], "provisioned");
    let log = report["boot_log"].as_str().unwrap();
    assert!(
        log.contains("rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
        "{log}"
    );
    assert!(log.contains(&format!("dps: registration id {id}")), "{log}");
    assert!(!log.contains('\x1b'), "colour codes are not kept");
    // The stage is in the timings: the simulated boot at 115200 takes about half a second.
    let boot = report["timings"]["boot"].as_f64().unwrap();
    assert!((0.3..10.0).contains(&boot), "{boot}");
    assert!(report["timings"]["boot_reset"].as_f64().unwrap() < boot);

    let shown = unit_show(&ws, &mac.to_string());
    assert_eq!(shown["unit"]["state"], "provisioned");
    let attempt = &shown["attempts"][0];
    assert_eq!(attempt["boot_log"], report["boot_log"]);
    // The attempt's audit entry holds the excerpt's SHA-256: an edited excerpt is caught.
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "unit.provisioned")
        .unwrap();
    let details: Value = serde_json::from_str(entry["details"].as_str().unwrap()).unwrap();
    assert_eq!(
        details["boot_log_sha256"],
        hex::encode(Sha256::digest(log.as_bytes()))
    );
    let text = ws.station(&["unit", "show", &mac.to_string()]).expect(0);
    assert!(
        text.stdout.contains("boot log of attempt"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("  | I (")
            && text.stdout.contains(&format!("dps: registration id {id}")),
        "{}",
        text.stdout
    );
}

#[test]
fn each_firmware_fault_fails_the_unit_at_boot_with_its_code_and_keeps_the_log() {
    let ws = workspace(2.0, "");
    let faults = [
        (
            "boot-panic",
            "station::boot::panic",
            "Guru Meditation Error",
        ),
        ("psram", "station::boot::psram", "PSRAM ID read error"),
        (
            "no-config",
            "station::boot::pattern_missing",
            "nvs_open(\"azure\") failed",
        ),
        ("silent", "station::boot::timeout", ""),
        (
            "bootloop",
            "station::boot::reset_loop",
            "rst:0x8 (TG1WDT_SYS_RESET)",
        ),
    ];
    let specs: Vec<String> = faults
        .iter()
        .enumerate()
        .map(|(i, (fault, _, _))| format!("{i}:{fault}"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let sim = line(&ws, faults.len(), &specs);
    for (i, (fault, code, seen)) in faults.iter().enumerate() {
        let report = ws.provision(&sim, i).expect(1).json();
        assert_eq!(
            (report["stage"].as_str(), report["error_code"].as_str()),
            (Some("boot"), Some(*code)),
            "{fault}: {report:#}"
        );
        assert!(report["hint"].as_str().is_some_and(|h| !h.is_empty()));
        let log = report["boot_log"].as_str().unwrap();
        assert!(log.contains(seen), "{fault}: {log}");
        let mac = sim.devices()[i].mac().to_string();
        let shown = unit_show(&ws, &mac);
        assert_eq!(shown["unit"]["state"], "failed", "{fault}");
        assert_eq!(shown["unit"]["failed_stage"], "boot", "{fault}");
        assert_eq!(shown["attempts"][0]["error_code"], *code);
        assert_eq!(shown["attempts"][0]["boot_log"].as_str(), Some(log));
        if *fault == "boot-panic" {
            // The crash report after the failing line is kept for the firmware team, up to
            // the reset it ends in.
            assert!(
                log.contains("Backtrace: 0x400d5e37:0x3ffb4f30")
                    && log.contains("Rebooting...")
                    && log
                        .trim_end()
                        .ends_with("rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
                "{log}"
            );
            // The hint quotes the panic's first line.
            assert!(
                report["hint"].as_str().unwrap().contains(
                    "\"Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\""
                ),
                "{report:#}"
            );
        }
        if *fault == "silent" {
            // The timeout fires within timeout + 1 s.
            let boot = report["timings"]["boot"].as_f64().unwrap();
            assert!(
                (2.0..3.0).contains(&boot),
                "silent unit judged after {boot} s"
            );
            assert_eq!(log, "");
        }
    }
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(status["failed"], faults.len());
    ws.station(&["audit", "verify"]).expect(0);
}

/// A `fail` line fails the unit even when an expected line follows it at once (the two may
/// come in one read).
#[test]
fn a_fail_pattern_beats_a_later_expected_line() {
    let ws = workspace(10.0, "fail = [\"dps: ID scope\"]\n");
    let sim = line(&ws, 1, &[]);
    let report = ws.provision(&sim, 0).expect(1).json();
    assert_eq!(report["error_code"], "station::boot::fail_pattern");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("dps: ID scope 0ne00ABCDEF"),
        "{report:#}"
    );
}

#[test]
fn the_device_key_never_reaches_the_stored_excerpt_even_when_the_firmware_prints_it() {
    let ws = workspace(10.0, "");
    let sim = line(&ws, 1, &["0:print-key"]);
    let run = ws.provision(&sim, 0).expect(0);
    let report = run.json();
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
    // The firmware did print it: the device holds it and logged it.
    let log = report["boot_log"].as_str().unwrap();
    assert!(
        log.contains("dps: device key [redacted: device key]"),
        "{log}"
    );
    assert!(log.contains("[redacted: PEM private key]"), "{log}");
    assert!(!log.contains("-----END EC PRIVATE KEY-----"), "{log}");
    // It is the key the unit holds: in its flash, where it belongs.
    let flash = sim.devices()[0].flash();
    assert!(
        flash
            .windows(device_key.len())
            .any(|w| w == device_key.as_bytes())
    );
    // The key in base64, raw and hex, and slices of each.
    let forms = secret_forms(&device_key);
    // Nothing key-like is left either: no run of 43 base64 characters (32 bytes).
    let longest_base64_run = log
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_base64_run < 43, "{log}");
    assert_absent(run.stdout.as_bytes(), &forms, "provision --json");
    assert_absent(run.stderr.as_bytes(), &forms, "the trace log");
    let shown = ws
        .station(&["--json", "unit", "show", &mac.to_string()])
        .expect(0);
    assert_absent(shown.stdout.as_bytes(), &forms, "unit show");
    let shown = ws.station(&["unit", "show", &mac.to_string()]).expect(0);
    assert_absent(shown.stdout.as_bytes(), &forms, "unit show");
    for file in ["station.db", "station.db-wal"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            assert_absent(&bytes, &forms, file);
        }
    }
    let audit = ws.station(&["audit", "export"]).expect(0);
    assert_absent(audit.stdout.as_bytes(), &forms, "the audit export");
}

#[test]
fn the_boot_check_needs_a_reset_into_the_application() {
    let config = sim_config(true) + "\n[boot]\nenabled = true\n";
    let ws = Workspace::with_config(&config);
    let run = ws.station(&["--json", "check"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("station::config::bad_value") && run.stdout.contains("watchdog-reset"),
        "{}",
        run.stdout
    );
}

#[test]
fn unit_show_names_an_unknown_mac() {
    let ws = workspace(10.0, "");
    let run = ws.station(&["--json", "unit", "show", "24:0a:c4:00:00:99"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("station::store::no_such_unit"),
        "{}",
        run.stdout
    );
    let run = ws.station(&["unit", "show", "not-a-mac"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("station::identity::bad_mac"),
        "{}",
        run.stderr
    );
}

/// Keeps the timing budget of these tests honest: the simulated application's boot at
/// 115200 is the realistic one, about half a second to the registration ID.
#[test]
fn the_simulated_boot_takes_its_realistic_time() {
    let ws = workspace(10.0, "");
    let sim = line(&ws, 1, &[]);
    let started = std::time::Instant::now();
    ws.provision(&sim, 0).expect(0);
    assert!(started.elapsed() > Duration::from_millis(400));
    assert_eq!(sim.devices()[0].stats().boots, 1);
}

/// The stored excerpt is bounded by `[boot] keep_log`: the last whole lines (a crash's
/// backtrace), led by a note of what was dropped; `unit show` shows the same.
#[test]
fn the_stored_excerpt_keeps_the_last_lines_within_keep_log() {
    let ws = workspace(10.0, "keep_log = 512\n");
    let sim = line(&ws, 1, &["0:boot-panic"]);
    let report = ws.provision(&sim, 0).expect(1).json();
    let log = report["boot_log"].as_str().unwrap();
    assert!(log.len() <= 512, "{} bytes: {log}", log.len());
    let note = log.lines().next().unwrap();
    assert!(
        note.starts_with('[') && note.ends_with(" earlier bytes of the boot log not kept]"),
        "{log}"
    );
    assert!(!log.contains("2nd stage bootloader"), "{log}");
    assert!(log.contains("Backtrace: 0x400d5e37"), "{log}");
    let mac = sim.devices()[0].mac().to_string();
    assert_eq!(
        unit_show(&ws, &mac)["attempts"][0]["boot_log"].as_str(),
        Some(log)
    );
    let text = ws.station(&["unit", "show", &mac]).expect(0).stdout;
    assert!(text.contains(&format!("  | {note}")), "{text}");
}
