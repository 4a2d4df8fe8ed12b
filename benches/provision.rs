//! Seconds per unit through the whole pipeline (connect, identify, build, flash, verify, record,
//! reset) against the ROM-faithful simulator with realistic time (wire time at the current
//! rate, the USB bridge's latency on every reply, 45 ms per 4 KiB sector erase, 0.7 ms per
//! 256-byte page program), through the real device code path and a real SQLite file.
//!
//! Run: `cargo bench --bench provision` (`-- --units N`, default 15; `-- --latency MS`,
//! default 1).
//!
//! Each case runs on fresh units twice: with erased flash (a factory-fresh module) and with
//! the NVS partition full of old data (a unit that already ran firmware, so every sector has to
//! be erased). Next to the median it prints where the time goes on the simulated link, summed
//! over the unit: the wire time of every byte at the rate it went (the floor the link's speed
//! sets), the chip's own work (erase, program, hash), one USB latency per reply, and what
//! remains: the host's own time (espflash's and the station's waits, SQLite, scheduling).
//! The stub overlaps its flash work with the wire, so for it the parts add up to more than
//! the whole.
//!
//! Then stub mode at 921600 baud with X.509 attestation (issue 17): a P-256 issuing CA made
//! for the run, the credentials in an 8 KiB esp_secure_cert partition flashed in the same
//! session, with ECDSA P-256 and with RSA-2048 device keys; column `derive` is issuing (on a
//! blocking thread), what it costs a unit on the line.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use station::config::Config;
use station::device::{EspflashDevice, SerialSettings};
use station::error::Error;
use station::provision::{self, Outcome, Request, Timings};
use station::sim::{SimLine, SimOptions, SimStats, SimTiming};
use station::station::Station;

const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// One unit: total seconds, per-stage seconds, the link's accounting.
struct Row {
    total: f64,
    timings: Timings,
    stats: SimStats,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Writes a secret file, owner-only.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io("writing", path, e))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::io("chmod", path, e))
}

/// An issuing CA for the run (ECDSA P-256, self-signed) and `text` switched to X.509
/// attestation with it, device keys of `key_type`, the credentials in an esp_secure_cert
/// partition at 0xD000 and NVS moved to 0x10000.
fn x509_config(dir: &Path, text: &str, key_type: &str) -> Result<String, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(DnType::CommonName, "Bench Issuing CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).expect("a CA certificate");
    let cert_path = dir.join("ca.pem");
    std::fs::write(&cert_path, cert.pem()).map_err(|e| Error::io("writing", &cert_path, e))?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    Ok(text
        .replace(
            "group_key_file = \"group.key\"",
            &format!(
                "attestation = \"x509\"\nca_cert_file = \"ca.pem\"\nca_key_file = \"ca.key\"\nkey_type = \"{key_type}\""
            ),
        )
        .replace("device_key = \"{device_key}\"\n", "")
        .replace("offset = 0x9000", "offset = 0x10000")
        + "\n[secure_cert]\noffset = 0xD000\nsize = 0x2000\n")
}

async fn run(
    units: usize,
    stub: bool,
    baud: u32,
    latency: Duration,
    old_data: bool,
    x509: Option<&str>,
) -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "temp dir", e))?;
    write_private(&dir.path().join("group.key"), GROUP_KEY)?;
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
        .map_err(|e| Error::io("reading", "station.toml", e))?
        .replace("secrets/group.key", "group.key")
        .replace("before = \"default-reset\"", "before = \"no-reset\"")
        .replace("after = \"hard-reset\"", "after = \"no-reset\"")
        .replace("baud = 921600", &format!("baud = {baud}"))
        .replace(
            "stub = true",
            if stub { "stub = true" } else { "stub = false" },
        );
    let text = match x509 {
        Some(key_type) => x509_config(dir.path(), &text, key_type)?,
        None => text,
    };
    let config = Config::parse(&text, &dir.path().join("station.toml"))?;
    let (offset, size) = (config.nvs.offset, config.nvs.size);
    let station = Station::open(config).await?;
    let batch = station
        .store
        .open_batch("bench", units as i64, "bench", "line1-st1")
        .await?;
    let request = Request::one_unit(batch, "bench".into(), false);
    // Old data: an NVS partition a firmware filled with entries, no sector erased.
    let preload = if old_data {
        let old: Vec<u8> = (0..size)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        vec![(offset, Arc::<[u8]>::from(old))]
    } else {
        Vec::new()
    };
    let line = SimLine::start(SimOptions {
        count: units,
        timing: SimTiming {
            usb_latency: latency,
            ..SimTiming::default()
        },
        preload,
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
        rows.push(Row {
            total,
            timings: report.timings,
            stats: sim.stats(),
        });
    }

    let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
    let total = med(&|r| r.total);
    let wire = med(&|r| r.stats.wire_time.as_secs_f64());
    let work = med(&|r| r.stats.work_time.as_secs_f64());
    let waits = med(&|r| r.stats.turnarounds as f64 * latency.as_secs_f64());
    let bytes = med(&|r| (r.stats.bytes_received + r.stats.bytes_sent) as f64);
    let replies = med(&|r| r.stats.turnarounds as f64);
    println!(
        "{:>4} {:>7} {:>8} {:>10} {:>7.3} | {:>6.3} {:>6.3} {:>6.4} {:>6.4} {:>6.3} {:>6.3} {:>6.3} {:>6.3} | {:>6.0} {:>4.0} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
        if stub { "stub" } else { "ROM" },
        baud,
        if old_data { "old data" } else { "erased" },
        x509.map_or("sym. key".to_owned(), |k| format!(
            "x509 {}",
            k.trim_start_matches("ecdsa-")
        )),
        total,
        med(&|r| r.timings.connect),
        med(&|r| r.timings.identify),
        med(&|r| r.timings.derive),
        med(&|r| r.timings.build),
        med(&|r| r.timings.flash),
        med(&|r| r.timings.verify),
        med(&|r| r.timings.record),
        med(&|r| r.timings.reset),
        bytes,
        replies,
        wire,
        work,
        waits,
        total - wire - work - waits,
    );
    drop(line);
    station.store.close().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), miette::Report> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let units = value("--units").map_or(15, |u| u as usize);
    let latency = Duration::from_secs_f64(value("--latency").unwrap_or(1.0) / 1000.0);
    println!(
        "provision per unit, median of {units} units; 24 KiB NVS image; ROM-faithful simulator: wire time, USB latency {:?}, sector erase 45 ms, page program 0.7 ms",
        latency
    );
    println!(
        "{:>4} {:>7} {:>8} {:>10} {:>7} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>4} {:>6} {:>6} {:>6} {:>6}",
        "mode",
        "baud",
        "flash",
        "attest.",
        "total s",
        "conn",
        "ident",
        "derive",
        "build",
        "flash",
        "verify",
        "record",
        "reset",
        "bytes",
        "reps",
        "wire",
        "work",
        "usb",
        "host"
    );
    for (stub, baud) in [
        (false, 115_200),
        (true, 921_600),
        (false, 921_600),
        (true, 115_200),
    ] {
        for old_data in [false, true] {
            run(units, stub, baud, latency, old_data, None).await?;
        }
    }
    for key_type in ["ecdsa-p256", "rsa-2048"] {
        run(units, true, 921_600, latency, false, Some(key_type)).await?;
    }
    Ok(())
}
