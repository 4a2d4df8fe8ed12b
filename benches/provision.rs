//! Seconds per unit through the whole pipeline (connect, identify, build, flash, verify, record)
//! against simulated ESP32s with wire time on at 921600 baud, through the real espflash code path
//! and a real SQLite file, next to the wire-time floor of the bytes actually moved.
//!
//! Run: `cargo bench --bench provision` (`-- --units N` to change the sample, default 15).
//!
//! Then the same in stub mode with X.509 attestation (issue 17), a P-256 issuing CA made for
//! the run, the credentials in an esp_secure_cert partition flashed in the same session: once
//! with ECDSA P-256 device keys, once with RSA-2048, showing what issuing (stage `derive`, on a
//! blocking thread) costs a unit on the line.
//!
//! Two floors are printed. The naive one charges every byte at 921600 baud (92,160 bytes/s), as
//! if the link ran at full speed from the first SYNC. The link-rate floor charges the connect
//! stage at 115200 baud, the rate the ROM loader listens at until espflash's CHANGE_BAUDRATE at
//! the end of connect (the stub upload happens before it), and the other stages at 921600.

use std::path::Path;
use std::time::Instant;

use station::config::Config;
use station::device::{
    Device, DeviceIdentity, EspflashDevice, ProgressSender, Region, SerialSettings,
};
use station::error::Error;
use station::provision::{self, Outcome, Request};
use station::sim::{SimLine, SimOptions, SimStats};
use station::station::Station;

const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// Wraps a device to count the bytes each stage moves over the simulated link.
struct Measured<'a, D> {
    inner: D,
    sim: &'a station::sim::SimDevice,
    bytes: [u64; 5],
}

impl<D: Device> Measured<'_, D> {
    fn moved(stats: SimStats) -> u64 {
        stats.bytes_received + stats.bytes_sent
    }

    async fn count<T>(&mut self, slot: usize, f: impl AsyncFnOnce(&mut D) -> T) -> T {
        let before = Self::moved(self.sim.stats());
        let out = f(&mut self.inner).await;
        self.bytes[slot] += Self::moved(self.sim.stats()) - before;
        out
    }
}

impl<D: Device> Device for Measured<'_, D> {
    fn port(&self) -> &Path {
        self.inner.port()
    }
    async fn connect(&mut self) -> Result<(), station::device::DeviceError> {
        self.count(0, async |d| d.connect().await).await
    }
    async fn identify(&mut self) -> Result<DeviceIdentity, station::device::DeviceError> {
        self.count(1, async |d| d.identify().await).await
    }
    async fn write(
        &mut self,
        regions: Vec<Region>,
        progress: Option<ProgressSender>,
    ) -> Result<(), station::device::DeviceError> {
        self.count(2, async |d| d.write(regions, progress).await)
            .await
    }
    async fn md5(
        &mut self,
        offset: u32,
        len: u32,
    ) -> Result<[u8; 16], station::device::DeviceError> {
        self.count(3, async |d| d.md5(offset, len).await).await
    }
    async fn reset(&mut self) -> Result<(), station::device::DeviceError> {
        self.count(4, async |d| d.reset().await).await
    }
}

/// One unit: total seconds, per-stage seconds, bytes per device call.
type Row = (f64, provision::Timings, [u64; 5]);

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

/// An issuing CA for the run (ECDSA P-256, self-signed), and the `[dps]` keys that use it with
/// device keys of `key_type`, the credentials in an esp_secure_cert partition at 0xD000.
fn x509_setup(dir: &Path, key_type: &str) -> Result<(String, String), Error> {
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
    let dps = format!(
        "attestation = \"x509\"\nca_cert_file = \"ca.pem\"\nca_key_file = \"ca.key\"\nkey_type = \"{key_type}\""
    );
    Ok((
        dps,
        "\n[secure_cert]\noffset = 0xD000\nsize = 0x2000\n".to_owned(),
    ))
}

async fn run(units: usize, stub: bool, x509: Option<&str>) -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "temp dir", e))?;
    write_private(&dir.path().join("group.key"), GROUP_KEY)?;
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
            .map_err(|e| Error::io("reading", "station.toml", e))?
            .replace("secrets/group.key", "group.key")
            .replace("before = \"default-reset\"", "before = \"no-reset\"")
            .replace("after = \"hard-reset\"", "after = \"no-reset\"")
            .replace(
                "stub = true",
                if stub { "stub = true" } else { "stub = false" },
            );
    if let Some(key_type) = x509 {
        let (dps, section) = x509_setup(dir.path(), key_type)?;
        text = text
            .replace("group_key_file = \"group.key\"", &dps)
            .replace("device_key = \"{device_key}\"\n", "")
            .replace("offset = 0x9000", "offset = 0x10000")
            + &section;
    }
    let config = Config::parse(&text, &dir.path().join("station.toml"))?;
    let baud = config.serial.baud;
    let station = Station::open(config).await?;
    let batch = station
        .store
        .open_batch("bench", units as i64, "bench", "line1-st1")
        .await?;
    let request = Request {
        batch,
        operator: "bench".into(),
        reprovision: false,
        skip_provisioned: false,
    };
    let line = SimLine::start(SimOptions {
        count: units,
        ..SimOptions::default()
    })?;

    let mut rows: Vec<Row> = Vec::new();
    for sim in line.devices() {
        let mut device = Measured {
            inner: EspflashDevice::new(sim.port(), SerialSettings::from(&station.config.serial)),
            sim,
            bytes: [0; 5],
        };
        let start = Instant::now();
        let report = provision::provision(&mut device, &station, &request, None).await?;
        let total = start.elapsed().as_secs_f64();
        assert_eq!(report.outcome, Outcome::Provisioned, "{report:?}");
        rows.push((total, report.timings, device.bytes));
    }

    let fast = f64::from(baud) / 10.0;
    let slow = 115_200.0 / 10.0;
    let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
    let bytes = rows[0].2;
    let all: u64 = bytes.iter().sum();
    let naive_floor = all as f64 / fast;
    let link_floor = bytes[0] as f64 / slow + bytes[1..].iter().sum::<u64>() as f64 / fast;
    let total = med(&|r| r.0);
    println!(
        "provision ({} mode, {baud} baud, {}-byte NVS image{}, wire time on): {units} units",
        if stub { "stub" } else { "ROM" },
        station.config.nvs.size,
        x509.map(|key_type| format!(
            ", X.509 {key_type} device keys with an 8192-byte esp_secure_cert partition"
        ))
        .unwrap_or_default()
    );
    println!("  median per unit  {total:.3} s");
    println!(
        "    connect {:.3}  identify {:.3}  derive {:.4} (max {:.4})  build {:.4}  flash {:.3}  verify {:.3}  record {:.3}  reset {:.3}",
        med(&|r| r.1.connect),
        med(&|r| r.1.identify),
        med(&|r| r.1.derive),
        rows.iter().map(|r| r.1.derive).fold(0.0, f64::max),
        med(&|r| r.1.build),
        med(&|r| r.1.flash),
        med(&|r| r.1.verify),
        med(&|r| r.1.record),
        med(&|r| r.1.reset)
    );
    println!(
        "  bytes on the wire per unit  {all} (connect {}, identify {}, flash {}, verify {}, reset {})",
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]
    );
    println!(
        "  floor: naive {naive_floor:.3} s (all bytes at {baud}); link-rate {link_floor:.3} s (connect at 115200); total / link-rate floor = {:.2}",
        total / link_floor
    );
    drop(line);
    station.store.close().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), miette::Report> {
    let mut args = std::env::args().skip(1);
    let mut units = 15;
    while let Some(arg) = args.next() {
        if arg == "--units" {
            units = args.next().and_then(|n| n.parse().ok()).unwrap_or(units);
        }
    }
    run(units, true, None).await?;
    run(units, false, None).await?;
    run(units, true, Some("ecdsa-p256")).await?;
    run(units, true, Some("rsa-2048")).await?;
    Ok(())
}
