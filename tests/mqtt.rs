//! Issue 18 end to end: `station provision` over the real espflash path to simulated ESP32s,
//! pre-verifying with `station sim dps` (spawned as a process, TLS on loopback) over MQTT and
//! over REST, the hub test message, `station unit revoke`/`restore` through the emulator's
//! service API, and individual enrollments. Nothing here reaches beyond loopback.

use station::identity::Mac;

use crate::util::dps::DpsSim;
use crate::util::{Workspace, assert_absent, esp32_line, secret_forms, sim_config};

/// A shared access policy key for the emulator's service API (random, no real DPS).
const POLICY_KEY: &str = "u7yQd9BZ3s0Pq1cKxJm0m9p2n8WfG4l6r5t3v1w0yXk=";
/// Another group key: an emulator holding it assigned none of the line's units.
const OTHER_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// The emulator with TLS (so it serves MQTT), the service API and its URLs by name.
struct Emulator {
    sim: DpsSim,
    rest: String,
    mqtt: String,
    hub: String,
    hub_mqtt: String,
}

impl Emulator {
    fn start(ws: &Workspace, key: &str, tls_dir: &str) -> Emulator {
        let key = ws.path(key);
        let policy = ws.path("secrets/policy.key");
        let tls = ws.path(tls_dir);
        let mut sim = DpsSim::spawn(
            ws,
            &[
                "--group-key-file",
                key.to_str().unwrap(),
                "--tls-dir",
                tls.to_str().unwrap(),
                "--service-key-file",
                policy.to_str().unwrap(),
                "--assign-delay",
                "0.05",
            ],
        );
        let mut urls = sim.named_urls();
        assert!(sim.url.starts_with("https://127.0.0.1:"), "{}", sim.url);
        Emulator {
            rest: sim.url.clone(),
            mqtt: urls.remove("mqtt").unwrap(),
            hub: urls.remove("hub").unwrap(),
            hub_mqtt: urls.remove("hub-mqtt").unwrap(),
            sim,
        }
    }
}

/// A workspace with the group and policy keys and an open batch.
fn workspace() -> Workspace {
    let ws = Workspace::with_config(&sim_config(true));
    ws.write_key("secrets/policy.key", POLICY_KEY);
    ws.write_key("secrets/other.key", OTHER_KEY);
    ws.station(&["batch", "open", "WO-MQTT", "--target", "8"])
        .expect(0);
    ws
}

/// Pre-verification over `transport` against `dps` (trusting `ca`), the hub test message to
/// `hub_url`, and `[dps.service]` at the emulator's REST side; `extra` goes into `[dps]`.
fn configure(
    ws: &Workspace,
    dps: &Emulator,
    transport: &str,
    ca: &str,
    hub_url: &str,
    extra: &str,
) {
    let url = if transport == "mqtt" {
        &dps.mqtt
    } else {
        &dps.rest
    };
    let config = sim_config(true)
        .replace(
            "pre_verify = false",
            &format!("pre_verify = true\ntransport = \"{transport}\"\nca_file = \"{ca}\"\n{extra}"),
        )
        .replace(
            "# verify_url = \"http://127.0.0.1:8443\"",
            &format!("verify_url = \"{url}\""),
        )
        .replace("verify_timeout = 30", "verify_timeout = 10");
    let config = format!(
        "{config}\n[dps.service]\nendpoint = \"{}\"\npolicy_key_file = \"secrets/policy.key\"\n\n[hub]\ntest_message = true\nhub_url = \"{hub_url}\"\n",
        dps.rest
    );
    std::fs::write(ws.path("station.toml"), config).unwrap();
}

/// What a unit's record says, without what differs between two runs (times, ids).
fn outcome(unit: &station::record::Unit) -> serde_json::Value {
    serde_json::json!({
        "mac": unit.mac.to_string(),
        "registration_id": unit.registration_id.as_str(),
        "state": unit.state.as_str(),
        "failed_stage": unit.failed_stage.map(|s| s.as_str().to_owned()),
        "dps_status": unit.dps_status.as_str(),
        "assigned_hub": unit.assigned_hub,
        "device_id": unit.device_id,
        "dps_substatus": unit.dps_substatus,
        "dps_error": unit.dps_error,
        "key_id": unit.key_id.as_str(),
        "enrollment": unit.enrollment.as_str(),
        "hub_status": unit.hub_status.as_str(),
        "hub_error": unit.hub_error,
    })
}

/// The manifest's row for `mac` without its time columns.
fn manifest_row(ws: &Workspace, mac: &str) -> serde_json::Value {
    let manifest = ws
        .station(&[
            "export", "manifest", "--batch", "WO-MQTT", "--format", "json",
        ])
        .expect(0)
        .json();
    let mut row = manifest["units"]
        .as_array()
        .unwrap_or_else(|| manifest.as_array().unwrap())
        .iter()
        .find(|u| u["mac"] == mac)
        .unwrap_or_else(|| panic!("{mac} in {manifest}"))
        .clone();
    // The pseudo-terminal's name and the times differ from run to run.
    for time in [
        "provisioned_at",
        "updated_at",
        "attempted_at",
        "time",
        "port",
    ] {
        row.as_object_mut().unwrap().remove(time);
    }
    row
}

/// A key's fingerprint as the records keep it: `sha256:` and the first 8 bytes of the SHA-256
/// of its decoded bytes, in hex.
fn fingerprint(key: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    format!("sha256:{}", hex::encode(&sha2::Sha256::digest(&bytes)[..8]))
}

#[test]
fn both_transports_give_the_same_record_for_the_same_unit_and_the_hub_takes_its_message() {
    let mac: Mac = "24:0a:c4:18:00:01".parse().unwrap();
    let mut seen = Vec::new();
    for transport in ["https", "mqtt"] {
        let ws = workspace();
        let dps = Emulator::start(&ws, "secrets/group.key", "tls");
        let hub = if transport == "mqtt" {
            &dps.hub_mqtt
        } else {
            &dps.hub
        };
        configure(&ws, &dps, transport, "tls/ca.pem", hub, "");
        let sim = esp32_line(1, Some(mac));
        let report = ws.provision(&sim, 0).expect(0).json();
        assert_eq!(report["outcome"], "provisioned", "{transport}: {report}");
        assert_eq!(report["dps_status"], "assigned", "{transport}");
        let unit = ws.unit(&mac.to_string());
        assert_eq!(unit.hub_status.as_str(), "accepted", "{transport}");
        let row = manifest_row(&ws, &mac.to_string());
        assert_eq!(row["hub_test"], "accepted", "{transport}: {row}");
        seen.push((outcome(&unit), row));
        // The emulator's log names the transport each request came over.
        let log = String::from_utf8_lossy(&dps.sim.stop()).into_owned();
        if transport == "mqtt" {
            assert!(log.contains("MQTT"), "{}", crate::util::cut(&log));
        }
    }
    assert_eq!(seen[0], seen[1], "REST and MQTT records differ");
}

#[test]
fn a_hub_that_refuses_the_message_fails_the_unit_at_stage_hub() {
    for transport in ["https", "mqtt"] {
        let ws = workspace();
        let dps = Emulator::start(&ws, "secrets/group.key", "tls");
        // A second emulator with another group key: its hub never assigned these units, so it
        // refuses their tokens.
        let stranger = Emulator::start(&ws, "secrets/other.key", "tls2");
        std::fs::write(
            ws.path("both-ca.pem"),
            format!(
                "{}{}",
                std::fs::read_to_string(ws.path("tls/ca.pem")).unwrap(),
                std::fs::read_to_string(ws.path("tls2/ca.pem")).unwrap()
            ),
        )
        .unwrap();
        let hub = if transport == "mqtt" {
            &stranger.hub_mqtt
        } else {
            &stranger.hub
        };
        configure(&ws, &dps, transport, "both-ca.pem", hub, "");
        let sim = esp32_line(1, None);
        let run = ws.provision(&sim, 0).expect(1);
        let report = run.json();
        assert_eq!(report["outcome"], "failed", "{transport}: {report}");
        assert_eq!(report["stage"], "hub", "{transport}: {report}");
        assert_eq!(
            report["error_code"], "station::hub::unauthorized",
            "{transport}: {report}"
        );
        assert_eq!(report["dps_status"], "assigned", "DPS did assign it");
        let unit = ws.unit(report["mac"].as_str().unwrap());
        assert_eq!(unit.hub_status.as_str(), "failed");
        assert!(unit.hub_error.is_some());
    }
}

#[test]
fn a_revoked_unit_is_refused_by_dps_until_restored_and_the_policy_key_never_shows() {
    let ws = workspace();
    let dps = Emulator::start(&ws, "secrets/group.key", "tls");
    configure(&ws, &dps, "mqtt", "tls/ca.pem", &dps.hub_mqtt, "");
    let sim = esp32_line(1, None);
    let provisioned = ws.provision(&sim, 0).expect(0).json();
    let mac = provisioned["mac"].as_str().unwrap().to_owned();
    let id = provisioned["registration_id"].as_str().unwrap().to_owned();

    let revoked = ws
        .station(&[
            "--json",
            "unit",
            "revoke",
            &mac,
            "--reason",
            "returned: cracked case",
        ])
        .expect(0);
    let report = revoked.json();
    assert_eq!(report["revoked"], true);
    assert_eq!(report["dps"]["action"], "denial-created", "{report}");
    let unit_now = ws.unit(&mac);
    assert!(unit_now.revoked_at.is_some());
    assert_eq!(
        unit_now.revoked_reason.as_deref(),
        Some("returned: cracked case")
    );
    assert!(
        manifest_row(&ws, &mac)["revoked_at"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // DPS now refuses the unit, over MQTT as over REST.
    let refused = ws
        .station(&["--json", "dps", "verify", "--registration-id", &id])
        .expect(1);
    assert!(
        refused.stdout.contains("station::dps::disabled")
            || refused.stderr.contains("station::dps::disabled"),
        "{}",
        crate::util::cut(&refused.stdout)
    );

    let restored = ws.station(&["--json", "unit", "restore", &mac]).expect(0);
    assert_eq!(restored.json()["revoked"], false);
    assert_eq!(restored.json()["dps"]["action"], "denial-deleted");
    assert!(ws.unit(&mac).revoked_at.is_none());
    ws.station(&["--json", "dps", "verify", "--registration-id", &id])
        .expect(0);

    let audit = ws.station(&["--json", "audit", "show"]).expect(0);
    assert!(audit.stdout.contains("unit.revoked") && audit.stdout.contains("unit.restored"));
    ws.station(&["audit", "verify"]).expect(0);

    // The policy key in none of its forms: not in the station's output (traced at every
    // level), the emulator's arguments and output, or the database.
    let forms = secret_forms(POLICY_KEY);
    for (run, name) in [
        (&revoked, "revoke"),
        (&restored, "restore"),
        (&audit, "audit"),
    ] {
        assert_absent(run.stdout.as_bytes(), &forms, &format!("{name} stdout"));
        assert_absent(run.stderr.as_bytes(), &forms, &format!("{name} stderr"));
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", dps.sim.child.id())).unwrap();
    assert_absent(&cmdline, &forms, "the emulator's arguments");
    assert_absent(&dps.sim.stop(), &forms, "the emulator's output");
    for file in ["station.db", "station.db-wal"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            assert_absent(&bytes, &forms, file);
        }
    }
}

#[test]
fn a_line_of_four_individual_enrollments_keeps_every_key_out_of_the_database() {
    let ws = workspace();
    let dps = Emulator::start(&ws, "secrets/group.key", "tls");
    configure(
        &ws,
        &dps,
        "mqtt",
        "tls/ca.pem",
        &dps.hub_mqtt,
        "enrollment = \"individual\"",
    );
    // Individual enrollments need no group key on the station.
    let config = std::fs::read_to_string(ws.path("station.toml"))
        .unwrap()
        .replace("group_key_file = \"secrets/group.key\"\n", "");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    let sim = esp32_line(4, None);
    let mut keys = Vec::new();
    for device in 0..4 {
        let report = ws.provision(&sim, device).expect(0).json();
        assert_eq!(report["outcome"], "provisioned", "{report}");
        assert_eq!(report["dps_status"], "assigned", "{report}");
        let mac = report["mac"].as_str().unwrap();
        let unit = ws.unit(mac);
        assert_eq!(unit.enrollment.as_str(), "individual");
        assert_eq!(unit.hub_status.as_str(), "accepted");
        // The flashed key: read back from the device's NVS partition.
        let flash = sim.devices()[device].flash();
        let entries = station::nvs::parse(&flash[0x9000..0xF000]).unwrap();
        let key = entries
            .iter()
            .find(|e| e.key == "device_key")
            .map(|e| match &e.value {
                station::nvs::Value::Str(text) => text.clone(),
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(unit.key_id.as_str(), fingerprint(&key));
        keys.push(key);
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "a random key per unit");
    for key in &keys {
        let forms = secret_forms(key);
        for file in ["station.db", "station.db-wal"] {
            if let Ok(bytes) = std::fs::read(ws.path(file)) {
                assert_absent(&bytes, &forms, file);
            }
        }
    }
}
