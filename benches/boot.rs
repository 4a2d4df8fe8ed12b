//! What the boot check (issue 14) costs a unit, against the ROM-faithful simulator with
//! realistic time, through the real device code path (espflash's connection, the RTC watchdog
//! armed over the loader, the same port handed to `tokio-serial`) and a real SQLite file.
//!
//! Each unit is provisioned in stub mode at 921600 baud (1 ms USB latency, 45 ms per sector
//! erase, 0.7 ms per page program, erased flash), once without the boot check (`after =
//! "no-reset"`, as `cargo bench --bench provision` measures) and once with it (`after =
//! "watchdog-reset"`, `[boot] enabled`, the application's console at 115200). The simulated
//! chip resets 4000 RTC slow-clock cycles (26.7 ms at 150 kHz) after the watchdog is armed and
//! prints the ROM's banner, ESP-IDF's bootloader and application log (about 3.9 KB at 115200,
//! each byte charged its 87 us of wire time, the start-up work between lines as an ESP32 at
//! 160 MHz spends it), up to the line `dps: registration id ...`.
//!
//! Per unit (medians) it prints: the whole unit with and without the check and the difference;
//! stage `boot` (from the reset request to the verdict) and its reset part; the device's own
//! boot, from the moment the watchdog was armed to the last console byte reaching the host
//! (the simulator's clock, the same process's); and the station's own overhead for the stage,
//! stage `boot` minus the device's boot: the arming writes over the loader, handing the port
//! over, reading, judging and redacting the log, and noticing the last line.
//!
//! Run: `cargo bench --bench boot` (`-- --units N`, default 15). The line's throughput with and
//! without the check: `cargo bench --bench line -- --ports 4,8 [--boot]`.

use std::time::Instant;

use station::config::Config;
use station::device::{EspflashDevice, SerialSettings};
use station::error::Error;
use station::provision::{self, Outcome, Request};
use station::sim::{SimLine, SimOptions, SimTiming};
use station::station::Station;

mod common;

/// One unit, in seconds.
struct Row {
    total: f64,
    boot: f64,
    boot_reset: f64,
    /// From the watchdog armed to the last console byte at the host.
    device: f64,
    console_bytes: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn max(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max)
}

async fn run(units: usize, boot: bool) -> Result<Vec<Row>, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "temp dir", e))?;
    let mut text = common::config(r#"["/dev/null"]"#, 921_600, true);
    if boot {
        text = text.replace("after = \"no-reset\"", "after = \"watchdog-reset\"")
            + "\n[boot]\nenabled = true\n";
    }
    let path = common::workspace(dir.path(), &text);
    let config = Config::parse(&text, &path)?;
    let station = Station::open(config).await?;
    let batch = station
        .store
        .open_batch("bench", units as i64, "bench", "line1-st1")
        .await?;
    let request = Request::one_unit(batch, "bench".into(), false);
    let line = SimLine::start(SimOptions {
        count: units,
        timing: SimTiming::default(),
        ..SimOptions::default()
    })?;
    let mut rows = Vec::new();
    for sim in line.devices() {
        let mut device =
            EspflashDevice::new(sim.port(), SerialSettings::from(&station.config.serial));
        let start = Instant::now();
        let report = provision::provision(&mut device, &station, &request, None).await?;
        let total = start.elapsed().as_secs_f64();
        assert_eq!(report.outcome, Outcome::Provisioned, "{report:?}");
        drop(device);
        let stats = sim.stats();
        let device = match (stats.watchdog_armed_at, stats.console_last_at) {
            (Some(armed), Some(last)) if boot => last.duration_since(armed).as_secs_f64(),
            _ => 0.0,
        };
        rows.push(Row {
            total,
            boot: report.timings.boot,
            boot_reset: report.timings.boot_reset,
            device,
            console_bytes: stats.console_bytes,
        });
    }
    drop(line);
    station.store.close().await;
    Ok(rows)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), miette::Report> {
    let args: Vec<String> = std::env::args().collect();
    let units = args
        .iter()
        .position(|a| a == "--units")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(15);
    println!(
        "boot check per unit, median of {units} units: stub, 921600 baud, erased flash; ROM-faithful simulator: wire time, USB latency {:?}, sector erase 45 ms, page program 0.7 ms; application console at 115200 with wire time, RTC watchdog reset 4000 cycles at 150 kHz",
        SimTiming::default().usb_latency
    );
    let without = run(units, false).await?;
    let with = run(units, true).await?;
    let med = |rows: &[Row], f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
    let total_without = med(&without, &|r| r.total);
    let total_with = med(&with, &|r| r.total);
    let overhead: Vec<f64> = with.iter().map(|r| r.boot - r.device).collect();
    println!(
        "unit without the check {total_without:.3} s, with it {total_with:.3} s: {:+.3} s per unit",
        total_with - total_without
    );
    println!(
        "stage boot {:.3} s (its reset part {:.4} s); the device's boot, armed to last byte, {:.3} s over {:.0} console bytes",
        med(&with, &|r| r.boot),
        med(&with, &|r| r.boot_reset),
        med(&with, &|r| r.device),
        med(&with, &|r| r.console_bytes as f64),
    );
    println!(
        "station's own overhead for the stage (stage boot - device's boot): median {:.4} s, max {:.4} s (goal < 0.020 s)",
        median(overhead.clone()),
        max(overhead.into_iter()),
    );
    Ok(())
}
