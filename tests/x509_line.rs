//! Issue 17 end to end: a line provisioning X.509 units on simulated ESP32s through the real
//! espflash path, pre-verified with `station sim dps --attestation x509` over real TLS on
//! loopback. The flashed credentials are read back from each simulated device's flash and
//! checked by `openssl`; a certificate from another CA fails at stage `dps`; a bad CA is
//! refused at load with its code; and neither the device private keys nor the CA key appear
//! anywhere but where they belong.

use std::path::{Path, PathBuf};

use station::identity::Mac;
use station::sim::{SimLine, SimOptions};

use crate::util::dps::DpsSim;
use crate::util::{Run, Workspace, assert_absent, sim_config};
use crate::x509::{Pki, assert_openssl_accepts, openssl, run};

/// Where the credentials go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// NVS entries `{device_cert}`, `{device_private_key}`, `{ca_chain}`.
    Nvs,
    /// An esp_secure_cert partition at 0xD000, with NVS moved to 0x10000.
    SecureCert,
}

const SECURE_CERT_OFFSET: usize = 0xD000;
const SECURE_CERT_SIZE: usize = 0x2000;

/// The simulated-line configuration switched to X.509 attestation with `pki` (the issuing CA
/// signs, the root is the chain) and `layout`; pre-verification against `dps` when given.
fn x509_config(pki: &Pki, layout: Layout, dps: Option<(&str, &Path)>) -> String {
    let mut config = sim_config(true).replace(
        "group_key_file = \"secrets/group.key\"",
        &format!(
            "attestation = \"x509\"\nca_cert_file = \"{}\"\nca_chain_file = \"{}\"\nca_key_file = \"{}\"\ncert_days = 365",
            pki.cert.display(),
            pki.root.display(),
            pki.key.display()
        ),
    );
    config = match layout {
        Layout::Nvs => config.replace(
            "device_key = \"{device_key}\"",
            "cert = \"{device_cert}\"\npriv_key = \"{device_private_key}\"\nca_chain = \"{ca_chain}\"",
        ),
        Layout::SecureCert => {
            config
                .replace("device_key = \"{device_key}\"\n", "")
                .replace("offset = 0x9000", "offset = 0x10000")
                + "\n[secure_cert]\noffset = 0xD000\nsize = 0x2000\n"
        }
    };
    if let Some((url, ca_file)) = dps {
        config = config
            .replace("pre_verify = false", "pre_verify = true")
            .replace(
                "# verify_url = \"http://127.0.0.1:8443\"",
                &format!("verify_url = \"{url}\""),
            )
            .replace(
                "# ca_file = \"certs/local-dps-ca.pem\"",
                &format!("ca_file = \"{}\"", ca_file.display()),
            )
            .replace("verify_timeout = 30", "verify_timeout = 5");
        assert!(config.contains(url) && config.contains("ca_file = \""));
    }
    assert!(config.contains("attestation = \"x509\""), "{config}");
    config
}

/// `station sim dps --attestation x509` trusting `trusted`, with its TLS identity in the
/// workspace's `dps-tls/`.
fn x509_dps(ws: &Workspace, trusted: &Path) -> (DpsSim, PathBuf) {
    let tls_dir = ws.path("dps-tls");
    let sim = DpsSim::spawn(
        ws,
        &[
            "--attestation",
            "x509",
            "--ca-file",
            trusted.to_str().unwrap(),
            "--tls-dir",
            tls_dir.to_str().unwrap(),
            "--hub",
            "x509-hub.azure-devices.net",
        ],
    );
    assert!(sim.url.starts_with("https://127.0.0.1:"), "{}", sim.url);
    (sim, tls_dir.join("ca.pem"))
}

/// A workspace whose station signs with `pki`'s issuing CA, pre-verifying against an emulator
/// that trusts `trusted` (the emulator is returned to keep it running), with an open batch.
fn x509_workspace(pki: &Pki, trusted: &Path, layout: Layout) -> (Workspace, DpsSim) {
    let ws = Workspace::with_config("");
    let (dps, dps_ca) = x509_dps(&ws, trusted);
    std::fs::write(
        ws.path("station.toml"),
        x509_config(pki, layout, Some((&dps.url, &dps_ca))),
    )
    .unwrap();
    ws.station(&["batch", "open", "WO-X509", "--target", "5"])
        .expect(0);
    (ws, dps)
}

/// A workspace with `config` and an open batch.
fn workspace(config: &str) -> Workspace {
    let ws = Workspace::with_config(config);
    ws.station(&["batch", "open", "WO-X509", "--target", "5"])
        .expect(0);
    ws
}

fn line(ws: &Workspace, count: usize) -> SimLine {
    SimLine::start(SimOptions {
        count,
        flash_dir: Some(ws.path("flash")),
        wire_time: false,
        ..SimOptions::default()
    })
    .unwrap()
}

/// The credentials a simulated device's flash holds: (certificate PEM, private key PEM, CA
/// chain PEM), read back from the NVS partition or the esp_secure_cert partition.
fn flashed_credentials(flash: &[u8], layout: Layout) -> (String, String, String) {
    match layout {
        Layout::Nvs => {
            let entries = station::nvs::parse(&flash[0x9000..0xF000]).unwrap();
            let value = |key: &str| {
                entries
                    .iter()
                    .find(|e| e.key == key)
                    .map(|e| match &e.value {
                        station::nvs::Value::Str(s) => s.clone(),
                        other => panic!("{key} is {other:?}"),
                    })
                    .unwrap_or_else(|| panic!("no {key} in NVS"))
            };
            (value("cert"), value("priv_key"), value("ca_chain"))
        }
        Layout::SecureCert => {
            let partition = station::secure_cert::parse(
                &flash[SECURE_CERT_OFFSET..SECURE_CERT_OFFSET + SECURE_CERT_SIZE],
            )
            .unwrap();
            let mut cert = String::new();
            let mut key = String::new();
            let mut chain = String::new();
            for entry in &partition.entries {
                let text = match &entry.data {
                    station::secure_cert::TlvData::Text(text) => text.clone(),
                    station::secure_cert::TlvData::Secret(secret) => {
                        String::from_utf8(secret.expose().to_vec()).unwrap()
                    }
                    // The integrity entry: a SHA-256, checked by parse.
                    station::secure_cert::TlvData::Bytes(_) => continue,
                };
                let text = text.trim_end_matches('\0').to_owned();
                match entry.tlv_type {
                    station::secure_cert::TlvType::CA_CERT => chain.push_str(&text),
                    station::secure_cert::TlvType::DEV_CERT => cert = text,
                    station::secure_cert::TlvType::PRIV_KEY => key = text,
                    _ => {}
                }
            }
            (cert, key, chain)
        }
    }
}

fn mac_of(report: &serde_json::Value) -> Mac {
    report["mac"].as_str().unwrap().parse().unwrap()
}

fn flash_of(ws: &Workspace, mac: Mac) -> Vec<u8> {
    std::fs::read(ws.path(&format!("flash/{}.bin", mac.hex()))).unwrap()
}

/// Checks with openssl that the flashed certificate verifies against the root with the
/// flashed chain, that the flashed key is the certificate's, and that its serial and subject
/// are what the station reported.
fn assert_flashed_credentials_verify(
    openssl: &str,
    pki: &Pki,
    flash: &[u8],
    layout: Layout,
    report: &serde_json::Value,
) {
    let (cert, key, chain) = flashed_credentials(flash, layout);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("device.pem"), &cert).unwrap();
    crate::x509::write_private(&dir.path().join("device.key"), &key);
    std::fs::write(dir.path().join("chain.pem"), &chain).unwrap();
    assert_eq!(
        chain,
        std::fs::read_to_string(&pki.cert).unwrap() + &std::fs::read_to_string(&pki.root).unwrap(),
        "the flashed chain is the signing CA, then the root"
    );
    assert_openssl_accepts(
        openssl,
        dir.path(),
        &pki.root,
        &[&dir.path().join("chain.pem")],
    );
    // What openssl prints of the flashed certificate, one field at a time.
    let field = |args: &[&str]| {
        let mut all = vec!["x509", "-in", "device.pem", "-noout"];
        all.extend(args);
        run(openssl, dir.path(), &all).trim().to_owned()
    };
    let reported = |name: &str| report["certificate"][name].as_str().unwrap().to_owned();
    assert_eq!(
        field(&["-serial"]),
        format!("serial={}", reported("serial"))
    );
    assert_eq!(
        field(&["-subject", "-nameopt", "RFC2253"]),
        format!("subject=CN={}", report["registration_id"].as_str().unwrap())
    );
    assert_eq!(
        field(&["-fingerprint", "-sha256"]).replace(':', ""),
        format!("sha256 Fingerprint={}", reported("thumbprint")),
        "the thumbprint is openssl's SHA-256 fingerprint without colons"
    );
}

/// Runs the whole X.509 line for `layout`: two units provisioned and pre-verified, their
/// flashed credentials verified by openssl, the records, and a re-provisioned unit's history.
fn x509_line(layout: Layout) {
    let Some(openssl) = openssl() else { return };
    let pki = Pki::new();
    let (ws, dps) = x509_workspace(&pki, &pki.root, layout);
    let sim = line(&ws, 2);
    let mut reports = Vec::new();
    for device in 0..2 {
        let run = ws.provision(&sim, device).expect(0);
        reports.push(run.json());
    }
    for report in &reports {
        assert_eq!(report["outcome"], "provisioned", "{report}");
        assert_eq!(report["dps_status"], "assigned", "{report}");
        assert_eq!(report["assigned_hub"], "x509-hub.azure-devices.net");
        assert!(
            report["timings"]["derive"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let flash = flash_of(&ws, mac_of(report));
        assert_flashed_credentials_verify(&openssl, &pki, &flash, layout, report);
    }
    assert_ne!(
        reports[0]["certificate"]["serial"], reports[1]["certificate"]["serial"],
        "each unit gets its own certificate"
    );
    if layout == Layout::SecureCert {
        assert_inspect_redacts_the_key(&ws, &flash_of(&ws, mac_of(&reports[0])), &reports[0]);
    }
    // Only the device holds its key: the station cannot register an X.509 unit afterwards.
    let id = reports[0]["registration_id"].as_str().unwrap();
    let refused = ws
        .station(&["--json", "dps", "verify", "--registration-id", id])
        .expect(2)
        .json();
    assert_eq!(
        refused["error"]["code"],
        "station::provision::x509_not_verifiable"
    );
    // The emulator saw each unit's certificate, CN = registration ID.
    let log = String::from_utf8_lossy(&dps.stop()).into_owned();
    for report in &reports {
        assert!(
            log.contains(report["registration_id"].as_str().unwrap()),
            "the emulator logged the registration"
        );
    }

    // Records: the unit row, the manifest's appended columns, the audit entry naming the CA.
    let manifest = ws
        .station(&[
            "export", "manifest", "--batch", "WO-X509", "--format", "json",
        ])
        .expect(0)
        .json();
    let rows = manifest.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let report = reports.iter().find(|r| r["mac"] == row["mac"]).unwrap();
        assert_eq!(row["attestation"], "x509");
        assert_eq!(row["cert_serial"], report["certificate"]["serial"]);
        assert_eq!(row["cert_thumbprint"], report["certificate"]["thumbprint"]);
        assert_eq!(row["cert_not_after"], report["certificate"]["not_after"]);
        assert_eq!(row["dps_status"], "assigned");
    }
    let ca_thumbprint = reports[0]["certificate"]["ca_thumbprint"].as_str().unwrap();
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let entries = audit.as_array().unwrap();
    let loaded = entries
        .iter()
        .find(|e| e["action"] == "key.loaded")
        .unwrap();
    let details: serde_json::Value =
        serde_json::from_str(loaded["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["ca_thumbprint"], ca_thumbprint);
    let provisioned: Vec<serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "unit.provisioned")
        .map(|e| serde_json::from_str(e["details"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(provisioned.len(), 2);
    for details in &provisioned {
        assert_eq!(details["certificate"]["ca_thumbprint"], ca_thumbprint);
        assert_eq!(details["attestation"], "x509");
    }

    // Provisioned again (a rework): a new key pair and certificate, the old one kept in the
    // history; the DPS registration is repeated with the new certificate.
    let (dps, _) = x509_dps(&ws, &pki.root);
    let config = std::fs::read_to_string(ws.path("station.toml")).unwrap();
    let old_url = config
        .lines()
        .find_map(|l| l.strip_prefix("verify_url = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    std::fs::write(ws.path("station.toml"), config.replace(&old_url, &dps.url)).unwrap();
    let again = ws.provision(&sim, 0).expect(0).json();
    assert_eq!(again["mac"], reports[0]["mac"]);
    assert_ne!(
        again["certificate"]["serial"],
        reports[0]["certificate"]["serial"]
    );
    assert_eq!(again["dps_status"], "assigned");
    let flash = flash_of(&ws, mac_of(&again));
    assert_flashed_credentials_verify(&openssl, &pki, &flash, layout, &again);
    let history = runtime().block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        let history = store.certificates_of(&mac_of(&again)).await.unwrap();
        let unit = store.unit_by_mac(&mac_of(&again)).await.unwrap().unwrap();
        store.close().await;
        (history, unit)
    });
    let (history, unit) = history;
    let serials: Vec<&str> = history.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(
        serials,
        [
            reports[0]["certificate"]["serial"].as_str().unwrap(),
            again["certificate"]["serial"].as_str().unwrap()
        ]
    );
    assert_eq!(unit.cert_serial.as_deref(), serials.last().copied());
    assert_eq!(unit.attestation, station::record::Attestation::X509);
    ws.station(&["audit", "verify"]).expect(0);
}

/// `station nvs inspect` of the flashed esp_secure_cert partition: the entries and the
/// certificate's facts, the private key redacted unless `--show-secrets`.
fn assert_inspect_redacts_the_key(ws: &Workspace, flash: &[u8], report: &serde_json::Value) {
    let image = ws.path("secure_cert.bin");
    std::fs::write(
        &image,
        &flash[SECURE_CERT_OFFSET..SECURE_CERT_OFFSET + SECURE_CERT_SIZE],
    )
    .unwrap();
    let (_, key, _) = flashed_credentials(flash, Layout::SecureCert);
    let key_line = key.lines().nth(1).unwrap();
    let text = ws
        .station(&["nvs", "inspect", image.to_str().unwrap()])
        .expect(0)
        .stdout;
    assert!(text.contains("esp_secure_cert image"), "{text}");
    assert!(text.contains("integrity verified"), "{text}");
    assert!(
        text.contains(report["certificate"]["thumbprint"].as_str().unwrap()),
        "{text}"
    );
    assert!(text.contains("[redacted: "), "{text}");
    assert!(!text.contains(key_line), "{text}");
    let json = ws
        .station(&["--json", "nvs", "inspect", image.to_str().unwrap()])
        .expect(0)
        .json();
    let types: Vec<&str> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["CA_CERT", "CA_CERT", "DEV_CERT", "PRIV_KEY", "INTEGRITY"]
    );
    assert_eq!(
        json["entries"][2]["certificate"]["serial"],
        report["certificate"]["serial"]
    );
    assert_eq!(json["entries"][3]["redacted"], true);
    let shown = ws
        .station(&["nvs", "inspect", image.to_str().unwrap(), "--show-secrets"])
        .expect(0)
        .stdout;
    assert!(shown.contains(key_line), "{shown}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn an_x509_line_flashes_certificates_in_nvs_that_openssl_verifies_and_dps_accepts() {
    x509_line(Layout::Nvs);
}

#[test]
fn an_x509_line_flashes_esp_secure_cert_partitions_that_openssl_verifies_and_dps_accepts() {
    x509_line(Layout::SecureCert);
}

#[test]
fn a_certificate_from_another_ca_fails_the_unit_at_stage_dps() {
    let pki = Pki::new();
    let other = Pki::new();
    let (ws, _dps) = x509_workspace(&pki, &other.root, Layout::Nvs);
    let sim = line(&ws, 1);
    let report = ws.provision(&sim, 0).expect(1).json();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["stage"], "dps");
    assert_eq!(report["error_code"], "station::dps::certificate_refused");
    assert_eq!(report["dps_status"], "failed");
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("401002"), "{message}");
    assert!(message.contains("does not chain"), "{message}");
    assert!(report["hint"].as_str().unwrap().contains("ca_cert_file"));
    // The certificate was flashed and is kept in the records with the failed attempt.
    assert!(report["certificate"]["serial"].is_string());
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(status["failed"], 1);
}

#[test]
fn bad_signing_cas_are_refused_at_load_with_their_codes() {
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        crate::x509::write_private(&path, text);
        path
    };
    // Another CA's key with this CA's certificate.
    let other_key = write(
        "other.key",
        &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
    );
    // An expired CA.
    let expired_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut expired = crate::x509::ca_params("Expired Issuing CA");
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired_cert = write(
        "expired.pem",
        &expired.self_signed(&expired_key).unwrap().pem(),
    );
    let expired_key = write("expired.key", &expired_key.serialize_pem());
    // A leaf certificate: no CA:TRUE.
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "Not A CA");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf_cert = write("leaf.pem", &leaf.self_signed(&leaf_key).unwrap().pem());
    let leaf_key = write("leaf.key", &leaf_key.serialize_pem());

    let cases = [
        (&pki.cert, &other_key, "station::x509::key_mismatch"),
        (&expired_cert, &expired_key, "station::x509::ca_expired"),
        (&leaf_cert, &leaf_key, "station::x509::not_a_ca"),
    ];
    for (cert, key, code) in cases {
        let config = x509_config(&pki, Layout::Nvs, None)
            .replace(&pki.cert.display().to_string(), &cert.display().to_string())
            .replace(&pki.key.display().to_string(), &key.display().to_string())
            .replace(&format!("ca_chain_file = \"{}\"\n", pki.root.display()), "");
        let ws = workspace(&config);
        let sim = line(&ws, 1);
        let run = ws.provision(&sim, 0).expect(2);
        assert_eq!(run.json()["error"]["code"], code, "{}", run.stdout);
        // Nothing was written to the device, and no attempt was recorded.
        let flash = std::fs::read(ws.path(&format!("flash/{}.bin", sim.devices()[0].mac().hex())));
        assert!(flash.is_err() || flash.unwrap().iter().all(|b| *b == 0xFF));
        let check = ws.station(&["--json", "check"]).expect(2).json();
        let ca = check["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["what"] == "signing CA")
            .unwrap();
        assert_eq!(ca["ok"], false);
        assert!(ca["detail"].as_str().unwrap().contains(code), "{ca}");
    }
}

#[test]
fn check_reports_the_signing_ca_and_warns_of_its_expiry() {
    use rcgen::KeyPair;
    let pki = Pki::new();
    let ws = workspace(&x509_config(&pki, Layout::Nvs, None));
    let run = ws.station(&["check"]).expect(0);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("signing CA"))
        .unwrap()
        .to_owned();
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains("CN=Line Test Issuing CA"), "{line}");
    assert!(
        line.contains("may sign certificates (CA:TRUE, keyCertSign"),
        "{line}"
    );
    assert!(line.contains("chain of 1 up to"), "{line}");
    assert!(!run.stdout.contains("warn"), "{}", run.stdout);

    // A CA expiring in 30 days: still usable, with a warning (and device certificates cut
    // short at its expiry).
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = crate::x509::ca_params("Short Lived Issuing CA");
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.path().join("short.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let key_path = dir.path().join("short.key");
    crate::x509::write_private(&key_path, &key.serialize_pem());
    let config = x509_config(&pki, Layout::Nvs, None)
        .replace(
            &pki.cert.display().to_string(),
            &cert_path.display().to_string(),
        )
        .replace(
            &pki.key.display().to_string(),
            &key_path.display().to_string(),
        )
        .replace(&format!("ca_chain_file = \"{}\"\n", pki.root.display()), "");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    let run = ws.station(&["check"]).expect(0);
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("warn"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Short Lived Issuing CA") && w.contains("(in 29 days)")),
        "{}",
        run.stdout
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cert_days = 365 outlasts the signing CA")),
        "{}",
        run.stdout
    );
    let json = ws.station(&["--json", "check"]).expect(0).json();
    let ca = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "signing CA")
        .unwrap();
    assert_eq!(ca["warnings"].as_array().unwrap().len(), 2, "{ca}");
}

#[test]
fn device_and_ca_private_keys_appear_only_in_the_devices_flash() {
    use base64::Engine as _;
    let pki = Pki::new();
    let (ws, dps) = x509_workspace(&pki, &pki.root, Layout::Nvs);
    let mut transcript: Vec<u8> = Vec::new();
    let mut keep = |run: Run| -> Run {
        transcript.extend(run.stdout.as_bytes());
        transcript.extend(run.stderr.as_bytes());
        run
    };
    keep(ws.station(&["batch", "status"]).expect(0));
    let sim = line(&ws, 2);
    let mut macs = Vec::new();
    for device in 0..2 {
        let report = keep(ws.provision(&sim, device).expect(0)).json();
        macs.push(mac_of(&report));
    }
    keep(ws.station(&["check"]).expect(0));
    keep(ws.station(&["export", "manifest"]).expect(0));
    keep(ws.station(&["audit", "export"]).expect(0));
    keep(ws.station(&["audit", "show"]).expect(0));
    // Refused commands say why without a key.
    keep(
        ws.station(&["key", "derive", "--registration-id", "sensor-1"])
            .expect(2),
    );
    let mac = macs[0].to_string();
    keep(
        ws.station(&["nvs", "build", "--mac", &mac, "--out", "/dev/null"])
            .expect(2),
    );
    let emulator_output = dps.stop();

    // Every form of each secret: PEM body lines, the DER, its hex.
    let forms = |pem: &str| -> Vec<Vec<u8>> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .unwrap();
        let first_line = pem.lines().nth(1).unwrap().as_bytes().to_vec();
        vec![
            first_line,
            body.as_bytes()[body.len() - 40..].to_vec(),
            der[der.len() - 24..].to_vec(),
            hex::encode(&der[..24]).into_bytes(),
            hex::encode_upper(&der[..24]).into_bytes(),
        ]
    };
    let mut needles = forms(&std::fs::read_to_string(&pki.key).unwrap());
    let mut device_keys = Vec::new();
    for mac in &macs {
        let flash = flash_of(&ws, *mac);
        let (_, key, _) = flashed_credentials(&flash, Layout::Nvs);
        let key_forms = forms(&key);
        assert!(
            flash
                .windows(key_forms[0].len())
                .any(|w| w == key_forms[0].as_slice()),
            "the device key is in its own flash image (so the search below would find it)"
        );
        device_keys.push(key_forms.clone());
        needles.extend(key_forms);
    }
    // Each device's key is in its own flash only, not in the other's.
    let other_flash = flash_of(&ws, macs[1]);
    assert_absent(&other_flash, &device_keys[0], "another device's flash");

    assert!(
        transcript.len() > 5_000,
        "trace logs and exports were captured"
    );
    assert_absent(&transcript, &needles, "the station's output and trace logs");
    assert_absent(&emulator_output, &needles, "the DPS emulator's output");
    for file in ["station.db", "station.db-wal"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            assert_absent(&bytes, &needles, file);
        }
    }
    assert_absent(
        std::fs::read_to_string(ws.path("station.toml"))
            .unwrap()
            .as_bytes(),
        &needles,
        "station.toml",
    );
}

#[test]
fn the_demo_runs_an_x509_line_and_reuses_its_pki() {
    let dir = tempfile::tempdir().unwrap();
    let demo = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_station"))
            .args([
                "--json",
                "demo",
                "--count",
                "3",
                "--ports",
                "2",
                "--attestation",
                "x509",
            ])
            .arg("--dir")
            .arg(dir.path())
            .env("STATION_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let summary_start = stdout.find("\n{\n").expect("a summary document") + 1;
        serde_json::from_str::<serde_json::Value>(&stdout[summary_start..]).unwrap()
    };
    let summary = demo();
    assert_eq!(summary["batch"]["provisioned"], 3);
    assert!(summary["audit"]["first_break"].is_null());
    let manifest = std::fs::read_to_string(summary["manifest"].as_str().unwrap()).unwrap();
    let mut reader = csv::Reader::from_reader(manifest.as_bytes());
    let rows: Vec<std::collections::HashMap<String, String>> =
        reader.deserialize().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    let key_id = rows[0]["group_key_id"].clone();
    for row in &rows {
        assert_eq!(row["attestation"], "x509");
        assert_eq!(row["dps_status"], "assigned");
        assert_eq!(row["cert_serial"].len(), 32, "{row:?}");
        assert_eq!(row["group_key_id"], key_id, "one CA signed them all");
        // The unit's flash holds its certificate in the esp_secure_cert partition.
        let mac: Mac = row["mac"].parse().unwrap();
        let flash = std::fs::read(dir.path().join(format!("flash/{}.bin", mac.hex()))).unwrap();
        let (cert, key, chain) = flashed_credentials(&flash, Layout::SecureCert);
        let summary = station::x509::CertificateSummary::of_pem(&cert).unwrap();
        assert_eq!(summary.serial, row["cert_serial"]);
        assert_eq!(summary.thumbprint.as_str(), row["cert_thumbprint"]);
        assert_eq!(summary.subject, format!("CN={}", row["registration_id"]));
        assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    }
    let ca_key = std::fs::metadata(dir.path().join("secrets/issuing-ca.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&ca_key.permissions()) & 0o777,
        0o600
    );
    // A second run in the same workspace signs with the same CA.
    let again = demo();
    assert_eq!(again["batch"]["provisioned"], 3);
    let manifest = std::fs::read_to_string(again["manifest"].as_str().unwrap()).unwrap();
    assert!(manifest.contains(&key_id), "{manifest}");
}

#[test]
fn a_ca_chain_too_long_for_an_nvs_string_is_refused_at_load_and_fits_esp_secure_cert() {
    use rcgen::{Issuer, KeyPair};
    // Six CA certificates, root down to the signing CA: about 4,200 bytes of PEM, more than one
    // NVS string holds (3,967 bytes).
    let dir = tempfile::tempdir().unwrap();
    let mut keys = vec![KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()];
    let mut params = vec![crate::x509::ca_params(
        "Chain CA 0 with a long enough name for the test",
    )];
    let mut pems = vec![params[0].self_signed(&keys[0]).unwrap().pem()];
    for level in 1..6 {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = crate::x509::ca_params(&format!(
            "Chain CA {level} with a long enough name for the test"
        ));
        let issuer = Issuer::from_params(&params[level - 1], &keys[level - 1]);
        pems.push(p.signed_by(&key, &issuer).unwrap().pem());
        keys.push(key);
        params.push(p);
    }
    let signing = dir.path().join("signing.pem");
    std::fs::write(&signing, &pems[5]).unwrap();
    let chain = dir.path().join("chain.pem");
    let above: String = pems[..5].iter().rev().cloned().collect();
    std::fs::write(&chain, &above).unwrap();
    assert!(above.len() + pems[5].len() > 3_967, "{}", above.len());
    let key = dir.path().join("signing.key");
    crate::x509::write_private(&key, &keys[5].serialize_pem());

    let pki = Pki::new();
    let config = |layout| {
        x509_config(&pki, layout, None)
            .replace(
                &pki.cert.display().to_string(),
                &signing.display().to_string(),
            )
            .replace(
                &pki.root.display().to_string(),
                &chain.display().to_string(),
            )
            .replace(&pki.key.display().to_string(), &key.display().to_string())
    };
    let ws = workspace(&config(Layout::Nvs));
    let sim = line(&ws, 1);
    let run = ws.provision(&sim, 0).expect(2);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "station::config::credentials_do_not_fit");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("ca_chain"), "{message}");
    assert!(error["hint"].as_str().unwrap().contains("[secure_cert]"));
    let check = ws.station(&["check"]).expect(2).stdout;
    assert!(check.contains("credentials_do_not_fit"), "{check}");

    // The same chain in an esp_secure_cert partition fits, and the unit is provisioned.
    std::fs::write(ws.path("station.toml"), config(Layout::SecureCert)).unwrap();
    let report = ws.provision(&sim, 0).expect(0).json();
    let flash = flash_of(&ws, mac_of(&report));
    let (_, _, flashed_chain) = flashed_credentials(&flash, Layout::SecureCert);
    assert_eq!(flashed_chain.matches("BEGIN CERTIFICATE").count(), 6);
}

/// An X.509 workspace pre-verifying over MQTT against an emulator that trusts `trusted`, with
/// the hub test message over MQTT too (the emulator is returned to keep it running).
fn x509_mqtt_workspace(pki: &Pki, trusted: &Path) -> (Workspace, DpsSim) {
    let ws = Workspace::with_config("");
    let (mut dps, dps_ca) = x509_dps(&ws, trusted);
    let urls = dps.named_urls();
    assert!(urls["mqtt"].starts_with("mqtts://127.0.0.1:"), "{urls:?}");
    let config = x509_config(pki, Layout::Nvs, Some((&urls["mqtt"], &dps_ca)));
    assert_eq!(config.matches("pre_verify = true").count(), 1, "{config}");
    let config = config.replace(
        "pre_verify = true",
        "pre_verify = true\ntransport = \"mqtt\"",
    ) + &format!(
        "\n[hub]\ntest_message = true\nhub_url = \"{}\"\n",
        urls["hub-mqtt"]
    );
    std::fs::write(ws.path("station.toml"), config).unwrap();
    ws.station(&["batch", "open", "WO-X509", "--target", "5"])
        .expect(0);
    (ws, dps)
}

// Issue 18 item 1 for X.509 units (issue 17): over MQTT the certificate the station issued and
// flashed authenticates the unit in its session's TLS handshake, to DPS and then to the hub for
// the test message; a certificate of another CA is refused at CONNECT and fails the unit at
// stage `dps` with the code it has over HTTPS.
#[test]
fn an_x509_line_registers_over_mqtt_with_each_units_certificate() {
    let pki = Pki::new();
    let (ws, dps) = x509_mqtt_workspace(&pki, &pki.root);
    let sim = line(&ws, 2);
    let mut ids = Vec::new();
    for device in 0..2 {
        let report = ws.provision(&sim, device).expect(0).json();
        assert_eq!(report["outcome"], "provisioned", "{report}");
        assert_eq!(report["dps_status"], "assigned", "{report}");
        assert_eq!(report["assigned_hub"], "x509-hub.azure-devices.net");
        assert_eq!(report["hub_status"], "accepted", "{report}");
        assert!(report["certificate"]["serial"].is_string(), "{report}");
        ids.push(report["registration_id"].as_str().unwrap().to_owned());
    }
    let manifest = ws
        .station(&[
            "export", "manifest", "--batch", "WO-X509", "--format", "json",
        ])
        .expect(0)
        .json();
    for row in manifest.as_array().unwrap() {
        assert_eq!(
            (&row["attestation"], &row["dps_status"], &row["hub_test"]),
            (
                &serde_json::json!("x509"),
                &serde_json::json!("assigned"),
                &serde_json::json!("accepted")
            ),
            "{row}"
        );
    }
    // Every request the emulator answered came over MQTT; none over REST.
    let log = String::from_utf8_lossy(&dps.stop()).into_owned();
    let answered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("DPS emulator answered"))
        .collect();
    assert!(answered.len() >= 2, "{log}");
    assert!(answered.iter().all(|l| l.contains("MQTT")), "{answered:#?}");
    for id in &ids {
        assert!(log.contains(id.as_str()), "the emulator saw {id}");
    }

    let other = Pki::new();
    let (ws, _dps) = x509_mqtt_workspace(&pki, &other.root);
    let sim = line(&ws, 1);
    let report = ws.provision(&sim, 0).expect(1).json();
    assert_eq!(report["outcome"], "failed", "{report}");
    assert_eq!(report["stage"], "dps", "{report}");
    assert_eq!(report["error_code"], "station::dps::certificate_refused");
    assert_eq!(report["dps_status"], "failed", "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("CONNACK"),
        "{report}"
    );
    assert!(report["hint"].as_str().unwrap().contains("ca_cert_file"));
    assert_eq!(report["hub_status"], "not-requested", "{report}");
}
