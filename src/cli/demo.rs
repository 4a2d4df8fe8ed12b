//! `station demo`: a whole simulated line with no hardware and no configuration to write.
//!
//! It makes a workspace (default `./station-demo`) holding an embedded `station.toml`, a fresh
//! random group key (mode 0600) and the SQLite file, starts simulated ESP32s on pseudo-terminals,
//! opens a batch and provisions every device through the real espflash code path, then shows the
//! batch status and verifies the audit chain. Run it again to provision a new set of devices
//! (simulated MACs differ per run); the database and audit log carry over.

use std::path::Path;

use base64::Engine as _;

use super::unit::print_report;
use super::{DemoArgs, OK, operator, print_json};
use crate::config::Config;
use crate::device::EspflashDevice;
use crate::error::{Error, Result, exit};
use crate::provision::{self, Outcome, Request, Station};
use crate::sim::{SimLine, SimOptions};

/// The demo's configuration: the repository's defaults, pointed at the simulated line.
const DEMO_CONFIG: &str = r#"# Written by `station demo`: a simulated line on pseudo-terminals.
[station]
id = "demo-st1"
database = "station.db"

[dps]
id_scope = "0ne00DEMO00"
endpoint = "global.azure-devices-provisioning.net"
group_key_file = "secrets/group.key"
registration_id = "sensor-{mac}"

[nvs]
offset = 0x9000
size = 0x6000
namespace = "dps"

[nvs.entries]
id_scope = "{id_scope}"
reg_id = "{registration_id}"
device_key = "{device_key}"
dps_host = "{dps_host}"

[serial]
ports = ["ports/ttySIM*"]
baud = 921600
# Pseudo-terminals have no DTR/RTS lines: the simulated chips wait in download mode.
before = "no-reset"
after = "no-reset"
chip = "esp32"
stub = true
"#;

pub(super) async fn run(args: DemoArgs, json: bool) -> Result<u8> {
    let dir = &args.dir;
    prepare_workspace(dir)?;
    let config = Config::load(&dir.join("station.toml"))?;
    let station = Station::open(config).await?;
    let station_id = station.config.station.id.clone();
    let line = SimLine::start(SimOptions {
        count: args.count,
        link_dir: Some(dir.join("ports")),
        flash_dir: Some(dir.join("flash")),
        ..SimOptions::default()
    })?;

    // A demo interrupted earlier may have left its batch open.
    if let Some(stale) = station.store.open_batch_of(&station_id).await? {
        station
            .store
            .close_batch(Some(&stale.name), &operator(None), &station_id)
            .await?;
    }
    let name = format!("demo-{}", crate::store::now().replace([':', '.'], "-"));
    let batch = station
        .store
        .open_batch(&name, args.count as i64, &operator(None), &station_id)
        .await?;
    if !json {
        println!(
            "demo: {} simulated ESP32s in {}, batch {name}; config {}",
            args.count,
            dir.join("ports").display(),
            dir.join("station.toml").display()
        );
    }

    let request = Request {
        operator: super::unit::attempt_operator(&batch),
        batch,
        reprovision: false,
    };
    let mut reports = Vec::new();
    for port in line.ports() {
        let mut device = EspflashDevice::new(&port, station.config.serial.settings());
        let report = provision::provision(&mut device, &station, &request, None).await?;
        if !json {
            print_report(&report);
        }
        reports.push(report);
    }
    drop(line);

    let status = station
        .store
        .close_batch(Some(&request.batch.name), &operator(None), &station_id)
        .await?;
    let chain = station.store.verify_audit().await?;
    station.store.close().await;
    let passed = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Provisioned)
        .count();
    if json {
        print_json(&serde_json::json!({
            "batch": status,
            "units": reports,
            "audit": chain,
            "workspace": dir.display().to_string(),
        }));
    } else {
        let mut seconds: Vec<f64> = reports.iter().map(|r| r.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        println!(
            "demo: {passed}/{} provisioned, median {:.2} s per unit; batch {} closed; audit chain {} ({} entries, head {})",
            reports.len(),
            seconds.get(seconds.len() / 2).copied().unwrap_or_default(),
            status.batch.name,
            if chain.first_break.is_none() {
                "intact"
            } else {
                "BROKEN"
            },
            chain.entries,
            &chain.head_hash[..16]
        );
        println!(
            "demo: explore with `station --config {} batch status`, `... audit show`, `... audit verify`",
            dir.join("station.toml").display()
        );
    }
    Ok(if passed == reports.len() && chain.first_break.is_none() {
        OK
    } else {
        exit::FAILED
    })
}

/// Creates the workspace: configuration, a group key of its own, directories. An existing
/// workspace is reused, its key and database included.
fn prepare_workspace(dir: &Path) -> Result<()> {
    for sub in ["secrets", "ports", "flash"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
    }
    let config = dir.join("station.toml");
    if !config.exists() {
        std::fs::write(&config, DEMO_CONFIG).map_err(|e| Error::io("writing", &config, e))?;
    }
    let key = dir.join("secrets/group.key");
    if !key.exists() {
        let mut bytes = [0u8; 64];
        getrandom(&mut bytes).map_err(|e| Error::io("reading", "/dev/urandom", e))?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        super::image::write_private(&key, text.as_bytes())?;
    }
    Ok(())
}

/// Fills `bytes` from the operating system's random source.
fn getrandom(bytes: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(bytes)
}
