//! Seconds DPS pre-verification adds per unit: whole units through the pipeline (simulated
//! ESP32s with wire time at 921600 baud, the real espflash path, a real SQLite file) with
//! `pre_verify` off, then on against the in-process DPS emulator at 0 ms and 300 ms latency per
//! answer. The emulator assigns 200 ms after the register call, so each verification is a
//! register round trip, one poll wait (at least 250 ms) and one poll round trip.
//!
//! Run: `cargo bench --bench dps` (`-- --units N` to change the sample, default 6).

use std::path::Path;
use std::time::Duration;

use station::config::Config;
use station::device::{EspflashDevice, SerialSettings};
use station::error::Error;
use station::keys::GroupKey;
use station::provision::{self, Outcome, Request};
use station::record::DpsStatus;
use station::sim::dps::{DpsEmulator, EmulatorOptions};
use station::sim::{SimLine, SimOptions};
use station::station::Station;

const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median seconds per unit (total, DPS stage) for `units` units; `dps`: the emulator's URL.
async fn run(units: usize, dps: Option<&str>) -> Result<(f64, f64), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "temp dir", e))?;
    let key = dir.path().join("group.key");
    std::fs::write(&key, GROUP_KEY).map_err(|e| Error::io("writing", &key, e))?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::io("chmod", &key, e))?;
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
            .map_err(|e| Error::io("reading", "station.toml", e))?
            .replace("secrets/group.key", "group.key")
            .replace("before = \"default-reset\"", "before = \"no-reset\"")
            .replace("after = \"hard-reset\"", "after = \"no-reset\"");
    if let Some(url) = dps {
        text = text
            .replace("pre_verify = false", "pre_verify = true")
            .replace(
                "# verify_url = \"http://127.0.0.1:8443\"",
                &format!("verify_url = \"{url}\""),
            );
    }
    let config = Config::parse(&text, &dir.path().join("station.toml"))?;
    let station = Station::open(config).await?;
    let batch = station
        .store
        .open_batch("bench", units as i64, "bench", "line1-st1")
        .await?;
    let request = Request::one_unit(batch, "bench".into(), false);
    let line = SimLine::start(SimOptions {
        count: units,
        ..SimOptions::default()
    })?;
    let (mut totals, mut stages) = (Vec::new(), Vec::new());
    for sim in line.devices() {
        let mut device =
            EspflashDevice::new(sim.port(), SerialSettings::from(&station.config.serial));
        let report = provision::provision(&mut device, &station, &request, None).await?;
        assert_eq!(report.outcome, Outcome::Provisioned, "{report:?}");
        if dps.is_some() {
            assert_eq!(report.dps_status, DpsStatus::Assigned, "{report:?}");
        }
        totals.push(report.seconds);
        stages.push(report.timings.dps);
    }
    drop(line);
    station.store.close().await;
    Ok((median(totals), median(stages)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), miette::Report> {
    let mut args = std::env::args().skip(1);
    let mut units = 6;
    while let Some(arg) = args.next() {
        if arg == "--units" {
            units = args.next().and_then(|n| n.parse().ok()).unwrap_or(units);
        }
    }
    let key =
        GroupKey::from_text(GROUP_KEY.as_bytes(), Path::new("bench.key")).map_err(Error::from)?;
    let (base, _) = run(units, None).await?;
    println!("dps pre-verification, {units} units per row (median seconds per unit)");
    println!("  pre_verify off            total {base:.3}");
    for latency_ms in [0u64, 300] {
        let mut options = EmulatorOptions::new("0ne00ABCDEF", key.clone());
        options.latency = Duration::from_millis(latency_ms);
        let emulator = DpsEmulator::start(options).await.map_err(Error::from)?;
        let (total, stage) = run(units, Some(emulator.url())).await?;
        println!(
            "  emulator latency {latency_ms:>3} ms  total {total:.3}  dps stage {stage:.3}  added {:.3}",
            total - base
        );
        emulator.shutdown().await;
    }
    Ok(())
}
