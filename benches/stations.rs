//! Many stations on one PostgreSQL database (issue 15): S `station run` processes (S station
//! IDs), each with P simulated ports of its own, provisioning one shared batch of N on a local
//! PostgreSQL server (a throwaway cluster, `tools/pg-cluster`, fsync on); the same line on one
//! station for comparison, on PostgreSQL and on a SQLite file.
//!
//! Every station is two processes, as on a line: `station sim devices` (its own MACs, taking
//! turns on its ports; a simulated operator takes each unit off 0.2 s after the station leaves it
//! idle and plugs the next in 0.1 s later) and `station --json run --batch NAME`, at 921600 baud
//! with the flasher stub, wire time charged. It prints wall time (first daemon start to last
//! exit), units per minute, the record step's p50 and p99 (the unit's transaction: unit, attempt
//! and audit entry, from each unit's `timings.record`), and checks the batch: units provisioned
//! against its target (overshoot), MACs provisioned twice (duplicates), every station's audit
//! chain verified.
//!
//! It also prints the median unit's duration (the sum of its stages) and the CPU the run's
//! `station` processes used and the CPU the PostgreSQL server used, each as a share of the
//! machine's (every core over the wall time): with many stations on few cores, units take
//! longer because the simulated devices and daemons share the CPU, not because of the database.
//!
//! The control run puts S one-station lines on the machine at once, each on a SQLite file of
//! its own: they share the CPU and nothing else, so what they lose against S x one station is
//! the machine's share, not the database's.
//!
//! Run: `cargo bench --bench stations` (`-- --units 400 --stations 8 --ports 4`; `--single N`
//! is the batch of the one-station runs, by default one station's share of `--units`).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

mod common;
#[path = "common/pg.rs"]
mod pg;

use pg::{Cluster, proc_cpu_seconds};

fn station() -> Command {
    Command::new(env!("CARGO_BIN_EXE_station"))
}

/// One station's workspace: the benches' configuration with this station ID and database.
fn workspace(root: &Path, station_id: &str, database: &str) -> PathBuf {
    let dir = root.join(station_id);
    std::fs::create_dir_all(&dir).expect("workspace");
    let config = common::config(r#"["ports/ttySIM*"]"#, 921_600, true)
        .replace("id = \"bench-st1\"", &format!("id = \"{station_id}\""))
        .replace("database = \"station.db\"", database);
    common::workspace(&dir, &config)
}

fn run_station(config: &Path, args: &[&str]) -> std::process::Output {
    let output = station()
        .arg("--config")
        .arg(config)
        .args(args)
        .env("STATION_LOG", "error")
        .output()
        .expect("station");
    assert!(output.status.success(), "{args:?}: {output:?}");
    output
}

/// The simulated devices of one station: `count` from MAC `24:0a:c4:<n>:00:00` on `ports`.
fn sim(config: &Path, n: usize, count: usize, ports: usize) -> Child {
    let dir = config.parent().expect("workspace");
    let base_mac = format!("24:0a:c4:{:02x}:00:00", 0x40 + n);
    common::simulated_line(dir, count, ports, Some(&base_mac))
}

/// What a run measured.
struct Sample {
    label: String,
    stations: usize,
    ports: usize,
    target: usize,
    wall: f64,
    passed: usize,
    failed: usize,
    record_ms: Vec<f64>,
    /// Each unit provisioned: the sum of its stages, seconds.
    unit_s: Vec<f64>,
    /// Each stage's median over the units provisioned, seconds, in the reports' order.
    stages: Vec<(String, f64)>,
    /// CPU seconds the run's processes used (user and system, every `station` process).
    cpu_s: f64,
    /// CPU seconds the PostgreSQL server used meanwhile (zero on SQLite).
    server_cpu_s: f64,
    /// Seconds the checks after the line took (status, manifest, audit verify).
    checks: f64,
    provisioned: i64,
    duplicates: usize,
    chains: usize,
    intact: bool,
}

impl Sample {
    fn per_minute(&self) -> f64 {
        self.passed as f64 / self.wall * 60.0
    }

    /// The share of the machine's CPU time (every core over the wall time) the run used.
    fn cpu_share(&self, cores: usize, seconds: f64) -> f64 {
        seconds / (self.wall * cores as f64) * 100.0
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU seconds (user and system) of this process's children that have been waited for, from
/// `/proc/self/stat` (Linux; zero elsewhere).
fn children_cpu_seconds() -> f64 {
    proc_cpu_seconds("self", &[16, 17])
}

/// S stations, P ports each, one batch of `target` on `database` (a TOML `database = ...`
/// line, with a password file when needed).
fn run(
    label: &str,
    database: &str,
    stations: usize,
    ports: usize,
    target: usize,
    server: Option<&Cluster>,
) -> Sample {
    let server_cpu = || server.map_or(0.0, Cluster::cpu_seconds);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let configs: Vec<PathBuf> = (0..stations)
        .map(|n| workspace(dir.path(), &format!("bench-st{}", n + 1), database))
        .collect();
    run_station(
        &configs[0],
        &["batch", "open", "bench", "--target", &target.to_string()],
    );
    // Each station's devices cover its share of the batch and a few more, so no station runs
    // dry while others still work.
    let per_station = target.div_ceil(stations) + ports * 3;
    let mut sims: Vec<Child> = configs
        .iter()
        .enumerate()
        .map(|(n, config)| sim(config, n, per_station, ports))
        .collect();

    let cpu_before = children_cpu_seconds();
    let server_before = server_cpu();
    let start = Instant::now();
    let daemons: Vec<Child> = configs
        .iter()
        .map(|config| {
            station()
                .arg("--config")
                .arg(config)
                .args(["--json", "run", "--batch", "bench"])
                .env("STATION_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("station run")
        })
        .collect();
    let readers: Vec<std::thread::JoinHandle<Vec<serde_json::Value>>> = daemons
        .into_iter()
        .map(|mut daemon| {
            let stdout = daemon.stdout.take().expect("daemon stdout");
            std::thread::spawn(move || {
                let units: Vec<serde_json::Value> = BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.contains(r#""event":"unit""#))
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                    .map(|e| e["report"].clone())
                    .collect();
                let _ = daemon.wait();
                units
            })
        })
        .collect();
    let units: Vec<serde_json::Value> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap_or_default())
        .collect();
    let wall = start.elapsed().as_secs_f64();
    for sim in &mut sims {
        let _ = sim.kill();
        let _ = sim.wait();
    }

    let passed: Vec<&serde_json::Value> = units
        .iter()
        .filter(|u| u["outcome"] == "provisioned")
        .collect();
    let mut per_mac: HashMap<&str, usize> = HashMap::new();
    for unit in &passed {
        *per_mac
            .entry(unit["mac"].as_str().unwrap_or(""))
            .or_default() += 1;
    }
    let cpu_s = children_cpu_seconds() - cpu_before;
    // The stations' backends end as they disconnect; the postmaster reaps them at once.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let server_cpu_s = server_cpu() - server_before;
    let record_ms = passed
        .iter()
        .filter_map(|u| u["timings"]["record"].as_f64())
        .map(|s| s * 1000.0)
        .collect();
    let mut stages: Vec<(String, f64)> = Vec::new();
    if let Some(first) = passed.first().and_then(|u| u["timings"].as_object()) {
        for (stage, value) in first {
            if value.is_f64() {
                let times: Vec<f64> = passed
                    .iter()
                    .filter_map(|u| u["timings"][stage.as_str()].as_f64())
                    .collect();
                stages.push((stage.clone(), percentile(&times, 50.0)));
            }
        }
    }
    let unit_s = passed
        .iter()
        .filter_map(|u| u["timings"].as_object())
        .map(|t| {
            // `boot_reset` is part of `boot`.
            t.iter()
                .filter(|(stage, _)| *stage != "boot_reset")
                .filter_map(|(_, seconds)| seconds.as_f64())
                .sum()
        })
        .collect();
    let checks_start = Instant::now();
    let status: serde_json::Value = serde_json::from_slice(
        &run_station(&configs[0], &["--json", "batch", "status", "bench"]).stdout,
    )
    .expect("status");
    let manifest: serde_json::Value = serde_json::from_slice(
        &run_station(
            &configs[0],
            &[
                "--json", "export", "manifest", "--batch", "bench", "--format", "json",
            ],
        )
        .stdout,
    )
    .expect("manifest");
    let rows = manifest.as_array().map_or(0, Vec::len);
    let mut manifest_macs: Vec<&str> = manifest
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["mac"].as_str())
        .collect();
    manifest_macs.sort_unstable();
    manifest_macs.dedup();
    let verify = station()
        .arg("--config")
        .arg(&configs[0])
        .args(["--json", "audit", "verify"])
        .output()
        .expect("audit verify");
    let verified: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("verify");
    let checks = checks_start.elapsed().as_secs_f64();
    Sample {
        label: label.to_owned(),
        stations,
        ports,
        target,
        wall,
        passed: passed.len(),
        failed: units.len() - passed.len(),
        record_ms,
        unit_s,
        stages,
        cpu_s,
        server_cpu_s,
        checks,
        provisioned: status["provisioned"].as_i64().unwrap_or(-1),
        duplicates: per_mac.values().filter(|&&n| n > 1).count() + (rows - manifest_macs.len()),
        chains: verified["chains"].as_array().map_or(0, Vec::len),
        intact: verify.status.success() && verified["intact"] == true,
    }
}

/// The control: `stations` one-station lines at once, each on a SQLite file of its own, so
/// they share the machine and nothing else. Their units pooled; wall time from the first
/// start to the last exit.
fn independent(stations: usize, ports: usize, target: usize) -> Sample {
    let cpu_before = children_cpu_seconds();
    let start = Instant::now();
    let samples: Vec<Sample> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..stations)
            .map(|_| {
                scope.spawn(|| {
                    run(
                        "sqlite",
                        "database = \"station.db\"",
                        1,
                        ports,
                        target,
                        None,
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a line"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64() - samples.iter().map(|s| s.checks).fold(0.0, f64::max);
    let mut pooled = Sample {
        label: "sqlite x".to_owned() + &stations.to_string(),
        stations,
        ports,
        target: target * stations,
        wall,
        passed: 0,
        failed: 0,
        record_ms: Vec::new(),
        unit_s: Vec::new(),
        stages: Vec::new(),
        cpu_s: children_cpu_seconds() - cpu_before,
        server_cpu_s: 0.0,
        provisioned: 0,
        duplicates: 0,
        chains: 0,
        intact: true,
        checks: 0.0,
    };
    for sample in samples {
        pooled.passed += sample.passed;
        pooled.failed += sample.failed;
        pooled.record_ms.extend(sample.record_ms);
        pooled.unit_s.extend(sample.unit_s);
        pooled.provisioned += sample.provisioned - sample.target as i64;
        pooled.duplicates += sample.duplicates;
        pooled.chains += sample.chains;
        pooled.intact &= sample.intact;
    }
    // `provisioned` past each target, summed, so that the overshoot column reads true.
    pooled.provisioned += pooled.target as i64;
    pooled
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let units = value("--units", 400);
    let stations = value("--stations", 8);
    let ports = value("--ports", 4);
    // The one-station runs take one station's share of the factory's batch, so that both
    // compare the same work per station (start-up and the last unit's tail included).
    let single = value("--single", units.div_ceil(stations.max(1)));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "stations: {cores} cores; every station at 921600 baud, stub, wire time on, simulated operator swapping units"
    );
    println!(
        "{:<11} {:>8} {:>5} {:>7} {:>7} {:>9} {:>9} {:>9} {:>8} {:>5} {:>7} {:>6} {:>9} {:>10} {:>6}",
        "backend",
        "stations",
        "ports",
        "batch",
        "wall s",
        "units/min",
        "rec p50",
        "rec p99",
        "unit p50",
        "CPU",
        "server",
        "FAIL",
        "overshoot",
        "duplicates",
        "chains"
    );
    let print = |s: &Sample| {
        println!(
            "{:<11} {:>8} {:>5} {:>7} {:>7.1} {:>9.1} {:>6.1} ms {:>6.1} ms {:>6.3} s {:>4.0}% {:>6.0}% {:>6} {:>9} {:>10} {:>6}",
            s.label,
            s.stations,
            s.ports,
            format!("{}/{}", s.passed, s.target),
            s.wall,
            s.per_minute(),
            percentile(&s.record_ms, 50.0),
            percentile(&s.record_ms, 99.0),
            percentile(&s.unit_s, 50.0),
            s.cpu_share(cores, s.cpu_s),
            s.cpu_share(cores, s.server_cpu_s),
            s.failed,
            s.provisioned - s.target as i64,
            s.duplicates,
            format!("{}{}", s.chains, if s.intact { " ok" } else { " BROKEN" })
        );
        let stages: Vec<String> = s
            .stages
            .iter()
            .filter(|(_, seconds)| *seconds > 0.0)
            .map(|(stage, seconds)| format!("{stage} {:.1}", seconds * 1000.0))
            .collect();
        if !stages.is_empty() {
            println!("{:<11} stage medians, ms: {}", "", stages.join(", "));
        }
    };
    let sqlite = run(
        "sqlite",
        "database = \"station.db\"",
        1,
        ports,
        single,
        None,
    );
    print(&sqlite);
    let alone = independent(stations, ports, single);
    print(&alone);
    println!(
        "{stations} stations on {stations} SQLite files (no shared database): {:.1} units/min = {:.2} x {stations} x one station's {:.1}",
        alone.per_minute(),
        alone.per_minute() / (stations as f64 * sqlite.per_minute()),
        sqlite.per_minute()
    );
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let pg_database = |name: &str| {
        format!(
            "database = \"{}\"\ndatabase_password_file = \"{}\"",
            cluster.database(name),
            cluster.password_file.display()
        )
    };
    let one = run(
        "postgresql",
        &pg_database("bench_one"),
        1,
        ports,
        single,
        Some(&cluster),
    );
    print(&one);
    let many = run(
        "postgresql",
        &pg_database("bench_many"),
        stations,
        ports,
        units,
        Some(&cluster),
    );
    print(&many);
    println!(
        "{stations} stations: {:.1} units/min = {:.2} x {stations} x one station's {:.1} (goal: within 10% of {stations} x)",
        many.per_minute(),
        many.per_minute() / (stations as f64 * one.per_minute()),
        one.per_minute()
    );
}
