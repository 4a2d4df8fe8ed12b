//! Side by side with Espressif's esptool (issue 12): the same 24 KiB NVS image written to the
//! same simulated ESP32 (the ROM-faithful simulator, realistic time: wire time at the current
//! rate, the USB bridge's latency on every reply, 45 ms per 4 KiB sector erased, 0.7 ms per page
//! programmed), by
//!
//! - `esptool write-flash` with its stub (compressed), `--no-stub` (uncompressed) and
//!   `--no-stub --compress`;
//! - `station provision` with the stub and in ROM mode (both compressed);
//!
//! at 115200 and 921600 baud, with 1 ms (CP210x, CH34x) and 16 ms (FTDI's default) of USB
//! latency. Every tool runs as its own process, as an operator would start it (station's time
//! includes its configuration, key and SQLite record; esptool's its Python start-up and its
//! MD5 check), each run on a freshly reset device with erased flash. It prints the median
//! wall time of each and the ratio station / esptool for the same write in the same mode.
//!
//! Run: `cargo bench --bench esptool` (`-- --runs N`, default 3). esptool comes from
//! `STATION_ESPTOOL` (a command line, e.g. `.tools/venv/bin/esptool`), else `esptool` on the
//! PATH; without it the bench says so and stops.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use station::identity::Mac;
use station::sim::{SimLine, SimOptions, SimTiming};

mod common;

/// Every run's device has this MAC, so every tool writes the very same image.
const MAC: Mac = Mac([0x24, 0x0a, 0xc4, 0x5e, 0x00, 0x01]);

/// One way of writing the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Tool {
    EsptoolStub,
    EsptoolRom,
    EsptoolRomCompressed,
    StationStub,
    StationRom,
}

impl Tool {
    const ALL: [Tool; 5] = [
        Tool::EsptoolStub,
        Tool::EsptoolRom,
        Tool::EsptoolRomCompressed,
        Tool::StationStub,
        Tool::StationRom,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::EsptoolStub => "esptool (stub)",
            Tool::EsptoolRom => "esptool --no-stub",
            Tool::EsptoolRomCompressed => "esptool --no-stub --compress",
            Tool::StationStub => "station provision (stub)",
            Tool::StationRom => "station provision (ROM)",
        }
    }
}

/// A station workspace for one baud rate and mode: configuration, key, database, open batch.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(baud: u32, stub: bool) -> Workspace {
        let dir = tempfile::tempdir().expect("a temporary directory");
        common::workspace(dir.path(), &common::config(r#"["/dev/null"]"#, baud, stub));
        let workspace = Workspace { dir };
        let opened = workspace
            .station()
            .args(["batch", "open", "bench", "--target", "1000"])
            .output()
            .expect("batch open");
        assert!(opened.status.success(), "{opened:?}");
        workspace
    }

    fn station(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_station"));
        command
            .arg("--config")
            .arg(self.dir.path().join("station.toml"))
            .env("STATION_LOG", "error");
        command
    }

    /// The image the station flashes for [`MAC`], as a file for esptool.
    fn image(&self) -> PathBuf {
        let path = self.dir.path().join("nvs.bin");
        let built = self
            .station()
            .args(["nvs", "build", "--mac", &MAC.to_string(), "--out"])
            .arg(&path)
            .output()
            .expect("nvs build");
        assert!(built.status.success(), "{built:?}");
        path
    }
}

/// esptool's command line, from `STATION_ESPTOOL` or the PATH.
fn esptool() -> Option<Vec<String>> {
    let line = std::env::var("STATION_ESPTOOL").unwrap_or_else(|_| "esptool".to_owned());
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let (program, args) = words.split_first()?;
    let ok = Command::new(program)
        .args(args)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(words)
}

/// Runs `tool` once on a fresh device; the wall time of its process.
fn run(
    tool: Tool,
    baud: u32,
    latency: Duration,
    esptool: &[String],
    station: &Workspace,
    image: &Path,
) -> f64 {
    let line = SimLine::start(SimOptions {
        base_mac: Some(MAC),
        timing: SimTiming {
            usb_latency: latency,
            ..SimTiming::default()
        },
        ..SimOptions::default()
    })
    .expect("the simulated device");
    let port = line.ports()[0].clone();
    let mut command = match tool {
        Tool::StationStub | Tool::StationRom => {
            let mut command = station.station();
            command.arg("provision").arg("--port").arg(&port);
            command
        }
        _ => {
            let mut command = Command::new(&esptool[0]);
            command.args(&esptool[1..]).arg("--port").arg(&port);
            command.args(["--baud", &baud.to_string()]);
            command.args(["--before", "no-reset", "--after", "no-reset"]);
            if tool != Tool::EsptoolStub {
                command.arg("--no-stub");
            }
            command.arg("write-flash");
            if tool == Tool::EsptoolRomCompressed {
                command.arg("--compress");
            }
            command.arg("0x9000").arg(image);
            command
        }
    };
    let started = Instant::now();
    let output = command.output().expect("the tool runs");
    let took = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{} failed:\n{}\n{}",
        tool.name(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let written = &line.devices()[0].flash()[0x9000..0xF000];
    assert_eq!(
        written,
        &std::fs::read(image).expect("the image")[..],
        "{} left the image incomplete",
        tool.name()
    );
    took
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let Some(esptool) = esptool() else {
        println!(
            "esptool not found: set STATION_ESPTOOL (e.g. .tools/venv/bin/esptool) or put esptool on the PATH"
        );
        return;
    };
    let version = Command::new(&esptool[0])
        .args(&esptool[1..])
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', " "))
        .unwrap_or_default();
    println!(
        "esptool vs station: one 24 KiB NVS image at 0x9000, ROM-faithful simulator, erased flash, median of {runs} runs"
    );
    println!(
        "model: wire time at the current rate, 45 ms per 4 KiB sector erase, 0.7 ms per 256 B page, USB latency as given; {version}"
    );
    println!(
        "{:>7} {:>8} {:>30} {:>9} {:>26}",
        "latency", "baud", "tool", "seconds", "station / esptool"
    );
    for latency_ms in [1u64, 16] {
        let latency = Duration::from_millis(latency_ms);
        for baud in [115_200u32, 921_600] {
            let stub_ws = Workspace::new(baud, true);
            let rom_ws = Workspace::new(baud, false);
            let image = stub_ws.image();
            let mut times = std::collections::HashMap::new();
            for tool in Tool::ALL {
                let workspace = if tool == Tool::StationRom {
                    &rom_ws
                } else {
                    &stub_ws
                };
                let samples = (0..runs)
                    .map(|_| run(tool, baud, latency, &esptool, workspace, &image))
                    .collect();
                times.insert(tool, median(samples));
            }
            for tool in Tool::ALL {
                let ratio = match tool {
                    Tool::StationStub => format!(
                        "{:.2} (vs esptool stub)",
                        times[&tool] / times[&Tool::EsptoolStub]
                    ),
                    Tool::StationRom => format!(
                        "{:.2} (vs --no-stub --compress), {:.2} (vs --no-stub)",
                        times[&tool] / times[&Tool::EsptoolRomCompressed],
                        times[&tool] / times[&Tool::EsptoolRom]
                    ),
                    _ => String::new(),
                };
                println!(
                    "{:>5}ms {:>8} {:>30} {:>9.3} {}",
                    latency_ms,
                    baud,
                    tool.name(),
                    times[&tool],
                    ratio
                );
            }
        }
    }
}
