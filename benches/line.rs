//! The line daemon's throughput over 1, 4 and 8 ports, and its memory with 16 ports open.
//!
//! Each run is two processes, as on a line: `station sim devices` (the devices take turns on the
//! ports; a simulated operator takes each unit off 0.2 s after the station leaves it idle and
//! plugs the next in 0.1 s later) and `station run --json` on a batch of 100 at 921600 baud with
//! the flasher stub. The simulator runs its default, realistic model: the recorded ESP32 ROM's
//! behaviour, wire time, 1 ms of USB latency per reply, 45 ms per sector erase, 0.7 ms per page
//! program. It prints wall time (daemon start to exit), units per
//! minute, parallel efficiency (P-port throughput / (P x 1-port throughput)) and the daemon's
//! peak resident memory (VmHWM).
//!
//! Run: `cargo bench --bench line` (`-- --units N` for another batch size, `-- --ports 1,4,8`;
//! `-- --dps 0,0.3` repeats the runs with DPS pre-verification at those emulator latencies;
//! `-- --mqtt 0,0.3` (issue 18) compares pre-verification over REST and over MQTT, each without
//! and with the hub test message, against `station sim dps --tls-dir` (TLS on loopback for both
//! transports) at those latencies, on 4 ports unless `--ports` says otherwise);
//! `-- --boot` runs them with the boot check on: `[serial] after = "watchdog-reset"`, each
//! simulated unit booting its application at 115200 with wire time after its flash).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

struct Sample {
    ports: usize,
    units: usize,
    wall: f64,
    passed: usize,
    peak_rss_kib: u64,
    /// Medians over the provisioned units: seconds per unit, in stage `dps`, in stage `hub`.
    unit_seconds: f64,
    dps_seconds: f64,
    hub_seconds: f64,
}

/// How units are pre-verified: the emulator's latency per answer (seconds), the transport,
/// whether the hub test message is sent, and whether the emulator serves TLS.
#[derive(Clone, Copy)]
struct Dps {
    latency: f64,
    transport: &'static str,
    hub: bool,
    tls: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn station() -> Command {
    Command::new(env!("CARGO_BIN_EXE_station"))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn run(ports: usize, units: usize, dps: Option<Dps>, boot: bool) -> Sample {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path();
    let mut config_text = common::config(r#"["ports/ttySIM*"]"#, 921_600, true);
    if boot {
        config_text = config_text.replace("after = \"no-reset\"", "after = \"watchdog-reset\"")
            + "\n[boot]\nenabled = true\n";
    }
    let config = common::workspace(root, &config_text);
    let key = root.join("group.key");
    // With a DPS latency, every unit is pre-verified against `station sim dps` on loopback.
    let mut emulator = None;
    if let Some(dps) = dps {
        let mut command = station();
        command
            .args([
                "sim",
                "dps",
                "--id-scope",
                "0ne00BENCH0",
                "--group-key-file",
            ])
            .arg(&key)
            .args(["--latency", &dps.latency.to_string()]);
        if dps.tls {
            command.arg("--tls-dir").arg(root.join("tls"));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sim dps");
        // The REST URL first, then `mqtt URL`, `hub URL`, `hub-mqtt URL`.
        let mut urls = BufReader::new(child.stdout.take().expect("sim dps stdout"))
            .lines()
            .map_while(Result::ok)
            .take(4)
            .collect::<Vec<_>>()
            .into_iter();
        let rest = urls.next().expect("the emulator's URL");
        let named: std::collections::HashMap<String, String> = urls
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let (verify_url, hub_url) = if dps.transport == "mqtt" {
            (named["mqtt"].clone(), named["hub-mqtt"].clone())
        } else {
            (rest.trim().to_owned(), named["hub"].clone())
        };
        let mut dps_lines = format!(
            "pre_verify = true\nverify_url = \"{verify_url}\"\ntransport = \"{}\"",
            dps.transport
        );
        if dps.tls {
            dps_lines.push_str("\nca_file = \"tls/ca.pem\"");
        }
        config_text = config_text.replace(
            "registration_id = \"sensor-{mac}\"",
            &format!("registration_id = \"sensor-{{mac}}\"\n{dps_lines}"),
        );
        if dps.hub {
            config_text.push_str(&format!(
                "\n[hub]\ntest_message = true\nhub_url = \"{hub_url}\"\n"
            ));
        }
        emulator = Some(child);
        std::fs::write(&config, &config_text).expect("config");
    }
    let opened = station()
        .arg("--config")
        .arg(&config)
        .args(["batch", "open", "bench", "--target", &units.to_string()])
        .output()
        .expect("batch open");
    assert!(opened.status.success(), "{opened:?}");

    let mut sim = common::simulated_line(root, units, ports, None);

    let start = Instant::now();
    let mut daemon = station()
        .arg("--config")
        .arg(&config)
        .args(["--json", "run"])
        .env("STATION_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("station run");
    let pid = daemon.id();
    let stdout = daemon.stdout.take().expect("daemon stdout");
    let reader = std::thread::spawn(move || {
        let (mut units, mut dps, mut hub) = (Vec::new(), Vec::new(), Vec::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(r#""event":"unit""#) && line.contains(r#""outcome":"provisioned""#) {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let report = event.get("report").unwrap_or(&event);
                units.push(report["seconds"].as_f64().unwrap_or(f64::NAN));
                dps.push(report["timings"]["dps"].as_f64().unwrap_or(0.0));
                hub.push(report["timings"]["hub"].as_f64().unwrap_or(0.0));
            }
        }
        (units, dps, hub)
    });
    let mut peak = 0;
    loop {
        if let Some(rss) = peak_rss_kib(pid) {
            peak = peak.max(rss);
        }
        if daemon.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let (unit_seconds, dps_seconds, hub_seconds) = reader.join().unwrap_or_default();
    let passed = unit_seconds.len();
    let _ = sim.kill();
    let _ = sim.wait();
    if let Some(mut emulator) = emulator {
        let _ = emulator.kill();
        let _ = emulator.wait();
    }
    Sample {
        ports,
        units,
        wall,
        passed,
        peak_rss_kib: peak,
        unit_seconds: median(unit_seconds),
        dps_seconds: median(dps_seconds),
        hub_seconds: median(hub_seconds),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let units: usize = value("--units").and_then(|v| v.parse().ok()).unwrap_or(100);
    let port_counts: Vec<usize> = value("--ports")
        .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 8]);
    // `--dps 0,0.3`: repeat the runs with pre-verification at these emulator latencies (s).
    let boot = args.iter().any(|a| a == "--boot");
    let dps: Vec<f64> = value("--dps")
        .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    // `--mqtt 0,0.3`: REST vs MQTT, without and with the hub test message (issue 18).
    let mqtt: Vec<f64> = value("--mqtt")
        .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    if !mqtt.is_empty() {
        let ports = value("--ports").and_then(|v| v.parse().ok()).unwrap_or(4);
        println!(
            "line, {ports} ports, batch of {units}, DPS pre-verification against `station sim dps --tls-dir` (TLS on loopback; assigns 0.2 s after the register request; the latency is added to every answer, DPS and hub alike); medians per unit"
        );
        println!(
            "{:>10} {:>9} {:>4} {:>8} {:>8} {:>10} {:>8} {:>8} {:>10}",
            "latency s",
            "transport",
            "hub",
            "passed",
            "wall s",
            "units/min",
            "unit s",
            "dps s",
            "hub s"
        );
        for &latency in &mqtt {
            for (transport, hub) in [
                ("https", false),
                ("mqtt", false),
                ("https", true),
                ("mqtt", true),
            ] {
                let sample = run(
                    ports,
                    units,
                    Some(Dps {
                        latency,
                        transport,
                        hub,
                        tls: true,
                    }),
                    boot,
                );
                println!(
                    "{:>10.1} {:>9} {:>4} {:>4}/{:<3} {:>8.1} {:>10.1} {:>8.3} {:>8.3} {:>10.3}",
                    latency,
                    transport,
                    if hub { "yes" } else { "no" },
                    sample.passed,
                    sample.units,
                    sample.wall,
                    sample.passed as f64 / sample.wall * 60.0,
                    sample.unit_seconds,
                    sample.dps_seconds,
                    sample.hub_seconds
                );
            }
        }
        return;
    }
    if !dps.is_empty() {
        println!("line with DPS pre-verification: batch of {units}, emulator latency per request");
        println!(
            "{:>5} {:>10} {:>10} {:>11}",
            "ports", "latency s", "wall s", "units/min"
        );
        for &ports in &port_counts {
            for &latency in &dps {
                let sample = run(
                    ports,
                    units,
                    Some(Dps {
                        latency,
                        transport: "https",
                        hub: false,
                        tls: false,
                    }),
                    boot,
                );
                println!(
                    "{:>5} {:>10.1} {:>10.1} {:>11.1}",
                    ports,
                    latency,
                    sample.wall,
                    sample.passed as f64 / sample.wall * 60.0
                );
            }
        }
        return;
    }

    println!(
        "line: batch of {units} at 921600 baud, stub, ROM-faithful simulator (wire time, 1 ms USB latency, flash erase/program time), simulated operator swapping units{}",
        if boot {
            "; boot check on (watchdog reset, the application's boot log at 115200 with wire time)"
        } else {
            ""
        }
    );
    println!(
        "{:>5} {:>9} {:>10} {:>11} {:>10} {:>13}",
        "ports", "passed", "wall s", "units/min", "efficiency", "peak RSS MiB"
    );
    let mut single: Option<f64> = None;
    for &ports in &port_counts {
        let sample = run(ports, units, None, boot);
        let per_minute = sample.passed as f64 / sample.wall * 60.0;
        if ports == 1 {
            single = Some(per_minute);
        }
        let efficiency = single
            .map(|one| format!("{:.2}", per_minute / (ports as f64 * one)))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{:>5} {:>5}/{:<3} {:>10.1} {:>11.1} {:>10} {:>13.1}",
            sample.ports,
            sample.passed,
            sample.units,
            sample.wall,
            per_minute,
            efficiency,
            sample.peak_rss_kib as f64 / 1024.0
        );
    }
    // Memory with 16 ports open: the daemon's peak over a batch of 32 on 16 ports.
    if boot {
        return;
    }
    let sample = run(16, 32, None, false);
    println!(
        "memory: 16 ports open, {}/{} units in {:.1} s: daemon peak RSS {:.1} MiB",
        sample.passed,
        sample.units,
        sample.wall,
        sample.peak_rss_kib as f64 / 1024.0
    );
}
