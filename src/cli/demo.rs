//! `station demo`: a whole simulated line with no hardware and no configuration to write.
//!
//! It makes a workspace (a new temporary directory, or `--dir`) holding an embedded
//! `station.toml`, a fresh random group key (mode 0600) or, with `--attestation x509`, a demo
//! PKI (a root CA and an issuing CA whose key is mode 0600), and the SQLite file, starts simulated
//! ESP32s that take turns on a few pseudo-terminal ports (a simulated operator unplugs each
//! finished unit and plugs in the next), opens a batch of that many units and runs the line
//! daemon on it until the batch is complete, then closes the batch, verifies the audit chain and
//! writes the QA manifest. With `--dir` an existing workspace is reused, keys and database
//! included; simulated MACs differ per run.
//!
//! With `--attestation x509` the line issues each unit a certificate with the demo's issuing
//! CA, flashes it in an `esp_secure_cert` partition (with NVS moved to 0x10000, as in
//! Espressif's partition tables for it), and the DPS emulator serves HTTPS (its server
//! identity kept in `dps-tls/`) and checks each unit's client certificate against the root.

use std::path::Path;

use base64::Engine as _;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;

use super::image::{commit_private, create_private};
use super::line::View;
use super::serve::{Server, announce};
use super::unit::wait_for_shutdown;
use super::{AttestationKind, DemoArgs, OK, operator, print_json};
use crate::config::Config;
use crate::error::{Error, Result, exit};
use crate::keys::GroupKey;
use crate::line::{self, LineOptions};
use crate::report::ManifestFormat;
use crate::sim::dps::{DpsEmulator, EmulatorOptions};
use crate::sim::tls::ServerIdentity;
use crate::sim::{SimApp, SimLine, SimOptions};
use crate::station::Station;
use crate::store::ManifestFilter;
use crate::web::live::LiveLine;

/// The ID scope of the demo's enrollment group.
const DEMO_ID_SCOPE: &str = "0ne00DEMO00";

/// The demo's configuration: the repository's defaults, pointed at the simulated line.
const DEMO_CONFIG: &str = r#"# Written by `station demo`: a simulated line on pseudo-terminals.
[station]
id = "demo-st1"
database = "station.db"

[dps]
id_scope = "{demo_id_scope}"
endpoint = "global.azure-devices-provisioning.net"
group_key_file = "secrets/group.key"
registration_id = "sensor-{mac}"
# The demo's own DPS emulator on loopback, started for each run (`station sim dps`).
pre_verify = true
verify_url = "{verify_url}"

[nvs]
offset = 0x9000
size = 0x6000
namespace = "dps"

[nvs.entries]
id_scope = "{id_scope}"
reg_id = "{registration_id}"
device_key = "{device_key}"
dps_host = "{dps_host}"
"#;

/// The demo's configuration with X.509 attestation: the demo PKI, the credentials in an
/// esp_secure_cert partition, pre-verification over TLS against this run's emulator.
const DEMO_X509_CONFIG: &str = r#"# Written by `station demo --attestation x509`: a simulated line on pseudo-terminals.
[station]
id = "demo-st1"
database = "station.db"

[dps]
id_scope = "{demo_id_scope}"
endpoint = "global.azure-devices-provisioning.net"
# A demo PKI made for this workspace: the station signs with the issuing CA; the DPS
# emulator's enrollment group trusts the root.
attestation = "x509"
ca_cert_file = "pki/issuing-ca.pem"
ca_chain_file = "pki/root-ca.pem"
ca_key_file = "secrets/issuing-ca.key"
cert_days = 365
key_type = "ecdsa-p256"
registration_id = "sensor-{mac}"
# The demo's own DPS emulator on loopback over HTTPS, started for each run
# (`station sim dps --attestation x509 --tls-dir dps-tls`), trusted through ca_file.
pre_verify = true
verify_url = "{verify_url}"
ca_file = "dps-tls/ca.pem"

[nvs]
offset = 0x10000
size = 0x6000
namespace = "dps"

[nvs.entries]
id_scope = "{id_scope}"
reg_id = "{registration_id}"
dps_host = "{dps_host}"

# The device's certificate, key and CA chain, as esp_secure_cert_mgr reads them.
[secure_cert]
offset = 0xD000
size = 0x2000
"#;

/// The `[serial]` section of both demo configurations: the simulated line's ports.
const DEMO_SERIAL: &str = r#"
[serial]
ports = ["ports/ttySIM*"]
baud = 921600
# Pseudo-terminals have no DTR/RTS lines: the simulated chips wait in download mode, and the
# reset into the application is the chip's RTC watchdog, armed over the loader.
before = "no-reset"
after = "watchdog-reset"
chip = "esp32"
stub = true

[boot]
# Each unit passes only once its firmware logs the registration ID it read from NVS.
enabled = true
baud = 115200
timeout = 10
expect = ["dps: registration id {registration_id}"]
"#;

/// The most devices a demo runs (a batch of 10,000 takes about an hour on 4 ports).
const DEMO_MAX_DEVICES: usize = 10_000;
/// The most ports a demo opens.
const DEMO_MAX_PORTS: usize = 64;
/// The demo PKI's files in the workspace.
const ROOT_CA: &str = "pki/root-ca.pem";
const ISSUING_CA: &str = "pki/issuing-ca.pem";
const ISSUING_KEY: &str = "secrets/issuing-ca.key";
/// The DPS emulator's TLS identity in the workspace.
const DPS_TLS: &str = "dps-tls";

pub(super) async fn run(args: DemoArgs, json: bool) -> Result<u8> {
    if !(1..=DEMO_MAX_DEVICES).contains(&args.count) || !(1..=DEMO_MAX_PORTS).contains(&args.ports)
    {
        return Err(Error::BadInput {
            what: "--count/--ports".to_owned(),
            problem: format!(
                "the demo runs 1 to {DEMO_MAX_DEVICES} devices on 1 to {DEMO_MAX_PORTS} ports"
            ),
            fix: "Give --count and --ports in that range, e.g. --count 10 --ports 4.".to_owned(),
        });
    }
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new()
            .prefix("station-demo-")
            .tempdir()
            .map_err(|e| Error::io("creating", std::env::temp_dir(), e))?
            .keep(),
    };
    prepare_workspace(&dir, args.attestation)?;
    let options = match args.attestation {
        // The DPS emulator checks every registration's SAS token against the demo's group
        // key, as DPS checks it against the enrollment group's.
        AttestationKind::SymmetricKey => EmulatorOptions::new(
            DEMO_ID_SCOPE,
            GroupKey::load(&dir.join("secrets/group.key"))?,
        ),
        // It checks every unit's client certificate against the demo's root CA, as DPS
        // checks it against the enrollment group's verified CA.
        AttestationKind::X509 => {
            let root = crate::tls::read_roots(&dir.join(ROOT_CA)).map_err(|e| Error::BadInput {
                what: dir.join(ROOT_CA).display().to_string(),
                problem: e.to_string(),
                fix: "Remove the demo workspace's pki/ and secrets/issuing-ca.key to make a new demo PKI.".to_owned(),
            })?;
            let tls = ServerIdentity::load_or_generate(&dir.join(DPS_TLS))?;
            EmulatorOptions::x509(DEMO_ID_SCOPE, root, Arc::new(tls))
        }
    };
    let emulator = DpsEmulator::start(options).await?;
    write_config(&dir, emulator.url(), args.attestation)?;
    let config = Config::load(&dir.join("station.toml"))?;
    let station = Arc::new(Station::open(config).await?);
    let station_id = station.config.station.id.clone();
    let ports = args.ports.min(args.count);
    // The simulated operator takes each unit off its port once its serial line has been quiet
    // for a while (the station done with it, its application done printing), and plugs in
    // the next one. The simulated firmware reads the NVS partition the demo writes.
    let nvs = &station.config.nvs;
    let line = SimLine::start(SimOptions {
        count: args.count,
        ports: Some(ports),
        link_dir: Some(dir.join("ports")),
        flash_dir: Some(dir.join("flash")),
        leave_after_idle: Some(Duration::from_millis(800)),
        swap_gap: Duration::from_millis(300),
        app: SimApp {
            baud: station.config.boot.baud,
            nvs_offset: nvs.offset,
            nvs_size: nvs.size,
            namespace: nvs.namespace.clone(),
            ..SimApp::default()
        },
        ..SimOptions::default()
    })?;

    // A demo interrupted earlier may have left its batch open.
    if let Some(stale) = station.store.open_batch_of(&station_id).await? {
        station
            .store
            .close_batch(Some(&stale.name), &operator(None), &station_id)
            .await?;
    }
    let name = format!("demo-{}", crate::clock::now().replace([':', '.'], "-"));
    let batch = station
        .store
        .open_batch(&name, args.count as i64, &operator(None), &station_id)
        .await?;
    if !json {
        println!(
            "demo: {} simulated ESP32s taking turns on {ports} ports in {}; batch {name}; {} attestation; config {}",
            args.count,
            dir.join("ports").display(),
            args.attestation.as_str(),
            dir.join("station.toml").display()
        );
    }

    let live = LiveLine::new(&station_id, &batch);
    let server = Server::start(
        &station.config,
        args.http,
        station.store.clone(),
        Some(Arc::clone(&live)),
    )
    .await?;
    announce(&server, json);
    let (events, receiver) = unbounded_channel();
    let receiver = crate::web::live::tee(live, receiver);
    let renderer = tokio::spawn(View::choose(json, false).render(receiver));
    let options = LineOptions::new(batch.clone(), super::unit::attempt_operator(&batch));
    let tally = line::run(Arc::clone(&station), options, events, wait_for_shutdown()).await;
    let record_failed = renderer.await.unwrap_or(true);
    drop(line);
    emulator.shutdown().await;
    let tally = tally?;

    let status = station
        .store
        .close_batch(Some(&batch.name), &operator(None), &station_id)
        .await?;
    let manifest = dir.join("manifest.csv");
    write_manifest(&station, &batch.name, &manifest).await?;
    let chain = station.store.verify_audit().await?;
    if !args.linger.is_zero() {
        let line = format!(
            "demo: the dashboard stays at {} for {:.0} s (Ctrl-C stops it)",
            server.url(),
            args.linger.as_secs_f64()
        );
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        tokio::select! {
            () = tokio::time::sleep(args.linger) => {}
            () = wait_for_shutdown() => {}
        }
    }
    server.stop().await;
    if let Ok(station) = Arc::try_unwrap(station) {
        station.store.close().await;
    }
    let complete = status.provisioned >= status.batch.target;
    if json {
        print_json(&serde_json::json!({
            "batch": status,
            "tally": tally,
            "audit": chain,
            "manifest": manifest.display().to_string(),
            "workspace": dir.display().to_string(),
        }));
    } else {
        println!(
            "demo: batch {} closed: {}/{} provisioned, {} failed attempts, {:.1} units/min; audit chain {} ({} entries, head {})",
            status.batch.name,
            status.provisioned,
            status.batch.target,
            status.failed_attempts,
            tally.units_per_minute.unwrap_or_default(),
            if chain.first_break.is_none() {
                "intact"
            } else {
                "BROKEN"
            },
            chain.entries,
            &chain.head_hash[..16]
        );
        println!("demo: QA manifest {}", manifest.display());
        println!(
            "demo: explore with `station --config {} batch status`, `... audit show`, `... audit verify`",
            dir.join("station.toml").display()
        );
    }
    Ok(
        if complete && !record_failed && chain.first_break.is_none() {
            OK
        } else {
            exit::FAILED
        },
    )
}

/// Creates the workspace: configuration, a group key or a PKI of its own, directories. An
/// existing workspace is reused, its keys and database included.
fn prepare_workspace(dir: &Path, attestation: AttestationKind) -> Result<()> {
    for sub in ["secrets", "ports", "flash", "pki"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
    }
    let key = dir.join("secrets/group.key");
    if !key.exists() {
        let mut bytes = zeroize::Zeroizing::new([0u8; 64]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|e| {
            Error::io(
                "reading",
                "the operating system's random source",
                std::io::Error::other(e),
            )
        })?;
        let text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
        super::image::write_private(&key, text.as_bytes())?;
    }
    if attestation == AttestationKind::X509 && !dir.join(ISSUING_KEY).exists() {
        make_demo_pki(dir)?;
    }
    Ok(())
}

/// A demo PKI: a root CA (what the DPS enrollment group would trust) and an issuing CA below
/// it (what the station signs with), both ECDSA P-256, valid five years.
fn make_demo_pki(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| Error::BadInput {
        what: "the demo PKI".to_owned(),
        problem: e.to_string(),
        fix: "Run the demo again; if it persists, report it.".to_owned(),
    };
    let ca = |name: &str, path_len: u8| -> std::result::Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Station Demo");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(5 * 365);
        Ok(params)
    };
    let root_key = KeyPair::generate().map_err(failed)?;
    let root_params = ca("Station Demo Root CA", 1).map_err(failed)?;
    let root = root_params.self_signed(&root_key).map_err(failed)?;
    let issuing_key = KeyPair::generate().map_err(failed)?;
    let mut issuing_params = ca("Station Demo Issuing CA", 0).map_err(failed)?;
    issuing_params.use_authority_key_identifier_extension = true;
    let issuing = issuing_params
        .signed_by(&issuing_key, &Issuer::from_params(&root_params, &root_key))
        .map_err(failed)?;
    // The root's key is not kept: the demo never signs with it again.
    super::image::write_private(&dir.join(ROOT_CA), root.pem().as_bytes())?;
    super::image::write_private(&dir.join(ISSUING_CA), issuing.pem().as_bytes())?;
    let key = zeroize::Zeroizing::new(issuing_key.serialize_pem());
    super::image::write_private(&dir.join(ISSUING_KEY), key.as_bytes())
}

/// Writes the demo's configuration, pointed at this run's DPS emulator.
fn write_config(dir: &Path, verify_url: &str, attestation: AttestationKind) -> Result<()> {
    let config = dir.join("station.toml");
    let template = match attestation {
        AttestationKind::SymmetricKey => DEMO_CONFIG,
        AttestationKind::X509 => DEMO_X509_CONFIG,
    };
    let text = (template.to_owned() + DEMO_SERIAL)
        .replace("{verify_url}", verify_url)
        .replace("{demo_id_scope}", DEMO_ID_SCOPE);
    std::fs::write(&config, text).map_err(|e| Error::io("writing", &config, e))
}

/// Writes the batch's QA manifest as CSV (audited as `manifest.exported`, like
/// `station export manifest --batch NAME --out FILE`).
async fn write_manifest(station: &Station, batch: &str, path: &Path) -> Result<()> {
    let mut file = create_private(path)?;
    let export = station
        .store
        .export_manifest(
            &ManifestFilter::batch(batch),
            ManifestFormat::Csv,
            &station.config.station.id,
            &operator(None),
            &mut file,
        )
        .await?;
    commit_private(file)?;
    if let Some(checkpoint) = &export.checkpoint {
        super::write_checkpoint_sidecar(
            path,
            checkpoint,
            super::records::manifest_summary(path, &export),
        )?;
    }
    Ok(())
}
