//! DPS pre-verification end to end (issue 6): `station provision` with `pre_verify = true`,
//! `station dps verify` and `station check` against `station sim dps` spawned as a process on
//! 127.0.0.1. Nothing here reaches beyond loopback.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use station::sim::{SimLine, SimOptions};

use crate::util::daemon::DEADLINE;
use crate::util::dps::DpsSim;
use crate::util::{GROUP_KEY, Workspace, assert_absent, esp32_line, secret_forms, sim_config};

const OTHER_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The simulated-line configuration with pre-verification against `url`.
fn write_config(ws: &Workspace, url: &str) {
    let config = sim_config(true)
        .replace("pre_verify = false", "pre_verify = true")
        .replace(
            "# verify_url = \"http://127.0.0.1:8443\"",
            &format!("verify_url = \"{url}\""),
        )
        .replace("verify_timeout = 30", "verify_timeout = 5");
    assert!(config.contains(url) && config.contains("verify_timeout = 5"));
    std::fs::write(ws.path("station.toml"), config).unwrap();
}

/// A workspace with an open batch (its config is written once the emulator's URL is known).
fn workspace() -> Workspace {
    let ws = Workspace::with_config(&sim_config(true));
    ws.write_key("secrets/other.key", OTHER_KEY);
    ws.station(&[
        "batch",
        "open",
        "WO-DPS",
        "--target",
        "5",
        "--operator",
        "ana",
    ])
    .expect(0);
    ws
}

fn audit_actions(ws: &Workspace) -> Vec<String> {
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn provision_with_pre_verify_records_the_assigned_hub_and_never_shows_the_group_key() {
    let ws = workspace();
    let dps = DpsSim::start(
        &ws,
        "secrets/group.key",
        &["--hub", "line-hub.azure-devices.net"],
    );
    write_config(&ws, &dps.url);
    let sim = esp32_line(1, None);
    let run = ws.provision(&sim, 0).expect(0);
    let report = run.json();
    assert_eq!(report["outcome"], "provisioned");
    assert_eq!(report["dps_status"], "assigned");
    assert_eq!(report["assigned_hub"], "line-hub.azure-devices.net");
    assert_eq!(report["device_id"], report["registration_id"]);
    assert_eq!(report["dps_substatus"], "initialAssignment");
    assert_eq!(report["dps_error"], serde_json::Value::Null);
    assert!(report["timings"]["dps"].as_f64().unwrap() > 0.0);

    let mac = report["mac"].as_str().unwrap();
    let unit = ws.unit(mac);
    assert_eq!(
        (
            unit.state.as_str(),
            unit.dps_status.as_str(),
            unit.assigned_hub.as_deref(),
            unit.dps_substatus.as_deref()
        ),
        (
            "provisioned",
            "assigned",
            Some("line-hub.azure-devices.net"),
            Some("initialAssignment")
        )
    );
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "unit.provisioned")
        .unwrap();
    let details: serde_json::Value =
        serde_json::from_str(entry["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["dps"]["status"], "assigned");
    ws.station(&["audit", "verify"]).expect(0);

    // The same unit verified again on demand: DPS reports the same hub, as a re-registration.
    let id = report["registration_id"].as_str().unwrap();
    let again = ws
        .station(&["--json", "dps", "verify", "--registration-id", id])
        .expect(0)
        .json();
    assert_eq!(again["recorded"], true);
    assert_eq!(
        again["registration_state"]["substatus"],
        "reprovisionedToInitialAssignment"
    );
    assert_eq!(
        again["registration_state"]["assignedHub"],
        "line-hub.azure-devices.net"
    );

    // The group key in none of its forms: not in the station's output, the emulator's output,
    // the emulator's arguments or the database.
    let forms = secret_forms(GROUP_KEY);
    assert_absent(run.stdout.as_bytes(), &forms, "provision stdout");
    assert_absent(
        run.stderr.as_bytes(),
        &forms,
        "provision stderr (trace log)",
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", dps.child.id())).unwrap();
    assert_absent(&cmdline, &forms, "the emulator's arguments");
    let emulator_output = dps.stop();
    assert!(
        !emulator_output.is_empty(),
        "the emulator logged at trace level"
    );
    assert_absent(&emulator_output, &forms, "the emulator's output");
    for file in ["station.db", "station.db-wal"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            assert_absent(&bytes, &forms, file);
        }
    }
}

#[test]
fn wrong_group_key_fails_the_unit_at_stage_dps() {
    let ws = workspace();
    let dps = DpsSim::start(&ws, "secrets/other.key", &[]);
    write_config(&ws, &dps.url);
    let sim = esp32_line(1, None);
    let run = ws.provision(&sim, 0).expect(1);
    let report = run.json();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["stage"], "dps");
    assert_eq!(report["error_code"], "station::dps::unauthorized");
    assert_eq!(report["dps_status"], "failed");
    assert!(
        report["message"].as_str().unwrap().contains("401002"),
        "{report}"
    );
    assert!(report["hint"].as_str().unwrap().contains("group key"));
    let unit = ws.unit(report["mac"].as_str().unwrap());
    assert_eq!(
        (
            unit.state.as_str(),
            unit.failed_stage.map(|s| s.as_str()),
            unit.dps_status.as_str()
        ),
        ("failed", Some("dps"), "failed")
    );
    assert!(
        unit.dps_error
            .unwrap()
            .starts_with("station::dps::unauthorized")
    );
    assert_absent(run.stderr.as_bytes(), &secret_forms(GROUP_KEY), "stderr");
    assert_absent(
        &dps.stop(),
        &secret_forms(OTHER_KEY),
        "the emulator's output",
    );
}

#[test]
fn disabled_enrollment_fails_with_its_own_code() {
    let ws = workspace();
    let dps = DpsSim::start(&ws, "secrets/group.key", &["--disabled"]);
    write_config(&ws, &dps.url);
    let sim = esp32_line(1, None);
    let report = ws.provision(&sim, 0).expect(1).json();
    assert_eq!(report["stage"], "dps");
    assert_eq!(report["error_code"], "station::dps::disabled");
}

#[test]
fn emulator_down_leaves_the_unit_pending_until_dps_verify_pending_assigns_it() {
    let ws = workspace();
    let port = closed_port();
    write_config(&ws, &format!("http://127.0.0.1:{port}"));
    let sim = esp32_line(1, None);
    let report = ws.provision(&sim, 0).expect(0).json();
    assert_eq!(report["outcome"], "provisioned");
    assert_eq!(report["dps_status"], "pending");
    assert!(
        report["dps_error"]
            .as_str()
            .unwrap()
            .starts_with("station::dps::unreachable"),
        "{report}"
    );
    let mac = report["mac"].as_str().unwrap().to_owned();
    assert_eq!(ws.unit(&mac).dps_status.as_str(), "pending");

    // Still down: the unit stays pending and nothing is recorded.
    let still = ws
        .station(&["--json", "dps", "verify", "--pending"])
        .expect(1)
        .json();
    assert_eq!(
        (still["pending"].as_i64(), still["still_pending"].as_i64()),
        (Some(1), Some(1))
    );
    assert!(!audit_actions(&ws).contains(&"unit.dps_verified".to_owned()));

    // Up again on the same port: the retry assigns it and records that in the audit log.
    let dps = DpsSim::start(&ws, "secrets/group.key", &["--port", &port.to_string()]);
    assert!(dps.url.ends_with(&format!(":{port}")));
    let summary = ws
        .station(&["--json", "dps", "verify", "--pending"])
        .expect(0)
        .json();
    assert_eq!(
        (summary["pending"].as_i64(), summary["assigned"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(summary["units"][0]["mac"], mac.as_str());
    let unit = ws.unit(&mac);
    assert_eq!(
        (unit.dps_status.as_str(), unit.dps_error.as_deref()),
        ("assigned", None)
    );
    assert!(unit.assigned_hub.is_some());
    assert!(audit_actions(&ws).contains(&"unit.dps_verified".to_owned()));
    ws.station(&["audit", "verify"]).expect(0);
    let none = ws
        .station(&["--json", "dps", "verify", "--pending"])
        .expect(0)
        .json();
    assert_eq!(none["pending"], 0);
}

#[test]
fn dps_verify_rides_out_throttling_and_server_errors_and_prints_the_registration() {
    let ws = workspace();
    let dps = DpsSim::start(
        &ws,
        "secrets/group.key",
        &["--throttle", "1", "--fail-5xx", "1", "--retry-after", "0"],
    );
    write_config(&ws, &dps.url);
    let json = ws
        .station(&[
            "--json",
            "dps",
            "verify",
            "--registration-id",
            "sensor-0000aabbccdd",
        ])
        .expect(0)
        .json();
    assert_eq!(json["dps_status"], "assigned");
    assert_eq!(json["recorded"], false, "no unit has that registration ID");
    let state = &json["registration_state"];
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["deviceId"], "sensor-0000aabbccdd");
    assert!(state["etag"].is_string() && state["createdDateTimeUtc"].is_string());
    let text = ws
        .station(&["dps", "verify", "--registration-id", "sensor-0000aabbccdd"])
        .expect(0)
        .stdout;
    for field in [
        "assigned hub",
        "device ID",
        "substatus",
        "created",
        "updated",
        "etag",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
    let output = String::from_utf8_lossy(&dps.stop()).into_owned();
    assert!(
        output.contains("429") || output.contains("Too Many"),
        "throttled first"
    );
}

#[test]
fn check_contacts_dps_when_pre_verify_is_on() {
    let ws = workspace();
    let dps = DpsSim::start(&ws, "secrets/group.key", &[]);
    write_config(&ws, &dps.url);
    let ok = ws.station(&["--json", "check"]).json();
    let check = ok["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "dps")
        .unwrap()
        .clone();
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["detail"].as_str().unwrap().contains("answers"));
    drop(dps);
    write_config(&ws, &format!("http://127.0.0.1:{}", closed_port()));
    let failed = ws.station(&["check"]).expect(1);
    assert!(failed.stdout.contains("FAIL dps"), "{}", failed.stdout);
    assert!(
        failed.stdout.contains("station::dps::unreachable"),
        "{}",
        failed.stdout
    );
}

#[test]
fn sim_dps_refuses_a_world_readable_key_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let ws = Workspace::new();
    std::fs::set_permissions(
        ws.path("secrets/group.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = ws
        .station(&[
            "--json",
            "sim",
            "dps",
            "--id-scope",
            "0ne00ABCDEF",
            "--group-key-file",
            ws.path("secrets/group.key").to_str().unwrap(),
        ])
        .expect(2);
    assert!(
        run.stdout.contains("station::keys::world_readable"),
        "{}",
        run.stdout
    );
}

// Issue 6 (store-and-forward): the line daemon retries units left pending while it runs.
#[test]
fn the_daemon_assigns_pending_units_once_dps_is_back() {
    let ws = workspace();
    let port = closed_port();
    write_config(&ws, &format!("http://127.0.0.1:{port}"));
    let config = std::fs::read_to_string(ws.path("station.toml"))
        .unwrap()
        .replace("ports = [\"auto\"]", "ports = [\"ports/ttySIM*\"]");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    let _sim = SimLine::start(SimOptions {
        count: 2,
        link_dir: Some(ws.path("ports")),
        wire_time: false,
        ..SimOptions::default()
    })
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_station"))
        .arg("--config")
        .arg(ws.path("station.toml"))
        .args(["--json", "run", "--dps-retry", "0.5"])
        .env("STATION_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (sender, events) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = daemon.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(serde_json::from_str(&line).unwrap());
        }
    });
    let next = |what: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} event within {DEADLINE:?}"));
            if event["event"] == what {
                return event;
            }
        }
    };
    for _ in 0..2 {
        let unit = next("unit");
        assert_eq!(unit["report"]["outcome"], "provisioned");
        assert_eq!(unit["report"]["dps_status"], "pending", "{unit}");
    }

    // DPS comes back on the same address; the daemon's next retry assigns both units.
    let _dps = DpsSim::start(&ws, "secrets/group.key", &["--port", &port.to_string()]);
    let retried = next("dps_retried");
    assert_eq!(
        (
            retried["assigned"].as_u64(),
            retried["still_pending"].as_u64()
        ),
        (Some(2), Some(0)),
        "{retried}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = daemon.kill();
            panic!("the daemon did not exit within {DEADLINE:?} of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        audit_actions(&ws)
            .iter()
            .filter(|a| *a == "unit.dps_verified")
            .count(),
        2
    );
    ws.station(&["audit", "verify"]).expect(0);
}

/// A real TLS server on loopback in front of the DPS emulator: it terminates TLS with a
/// certificate issued by its own CA (for `name`) and relays the bytes to the emulator.
struct TlsFront {
    url: String,
    ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(emulator: &str, name: &str) -> TlsFront {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "station test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = emulator.trim_start_matches("http://").to_owned();
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake here.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca.pem(),
            _runtime: runtime,
        }
    }
}

/// Names `ca_pem` as the station's extra trust root ([dps] ca_file).
fn trust(ws: &Workspace, ca_pem: &str) {
    std::fs::write(ws.path("front-ca.pem"), ca_pem).unwrap();
    let config = std::fs::read_to_string(ws.path("station.toml"))
        .unwrap()
        .replace(
            "# ca_file = \"certs/local-dps-ca.pem\"",
            "ca_file = \"front-ca.pem\"",
        );
    std::fs::write(ws.path("station.toml"), config).unwrap();
}

// Issue 13: an untrusted or invalid server certificate is a configuration or security fault,
// not an outage: the unit fails at stage dps with station::dps::tls (not pending as
// unreachable), and `station check` reports it as a setup error.
#[test]
fn an_untrusted_dps_certificate_fails_the_unit_with_its_own_code() {
    let ws = workspace();
    let dps = DpsSim::start(&ws, "secrets/group.key", &[]);
    let front = TlsFront::start(&dps.url, "127.0.0.1");
    write_config(&ws, &front.url);
    let sim = esp32_line(3, None);

    // The station does not know the front's CA.
    let failed = ws.provision(&sim, 0).expect(1).json();
    assert_eq!(failed["stage"], "dps", "{failed}");
    assert_eq!(failed["error_code"], "station::dps::tls");
    assert_eq!(failed["dps_status"], "failed");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("UnknownIssuer"),
        "{failed}"
    );
    let checked = ws.station(&["check"]).expect(2);
    assert!(
        checked.stdout.contains("FAIL dps") && checked.stdout.contains("station::dps::tls"),
        "{}",
        checked.stdout
    );

    // Trusting it through [dps] ca_file, the same server assigns the next unit.
    trust(&ws, &front.ca_pem);
    let assigned = ws.provision(&sim, 1).expect(0).json();
    assert_eq!(assigned["dps_status"], "assigned", "{assigned}");

    // A trusted CA but a certificate for another host name is refused as well.
    let other = TlsFront::start(&dps.url, "dps.example.invalid");
    write_config(&ws, &other.url);
    trust(&ws, &other.ca_pem);
    let failed = ws.provision(&sim, 2).expect(1).json();
    assert_eq!(failed["error_code"], "station::dps::tls", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{failed}"
    );
}
