//! The `station` binary end to end: exit codes, error codes, batches, the audit chain, key
//! derivation, NVS images, and the group key appearing nowhere it must not.

use crate::util::{GROUP_KEY, Workspace, assert_absent, secret_forms};

/// Azure's documented group-key derivation example.
const AZURE_GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn error_code(run: &crate::util::Run) -> String {
    run.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn batch_open_status_close_round_trip() {
    let ws = Workspace::new();
    let opened = ws
        .station(&[
            "--json",
            "batch",
            "open",
            "WO-1",
            "--target",
            "100",
            "--operator",
            "ana",
        ])
        .expect(0)
        .json();
    assert_eq!(opened["name"], "WO-1");
    assert_eq!(opened["operator"], "ana");
    assert_eq!(opened["station_id"], "line1-st1");

    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(
        (
            status["name"].as_str(),
            status["target"].as_i64(),
            status["provisioned"].as_i64()
        ),
        (Some("WO-1"), Some(100), Some(0))
    );

    let refused = ws
        .station(&["--json", "batch", "open", "WO-2", "--target", "5"])
        .expect(2);
    assert_eq!(error_code(&refused), "station::store::batch_open");
    assert!(
        refused
            .stderr
            .contains("hint: A station works one batch at a time"),
        "{}",
        refused.stderr
    );

    let closed = ws.station(&["--json", "batch", "close"]).expect(0).json();
    assert!(closed["closed_at"].is_string());
    assert_eq!(closed["closed_by"], "tester");
    let again = ws.station(&["--json", "batch", "close", "WO-1"]).expect(2);
    assert_eq!(error_code(&again), "station::store::batch_closed");
    ws.station(&["batch", "open", "WO-2", "--target", "5"])
        .expect(0);
    let all = ws.station(&["batch", "status", "WO-1"]).expect(0);
    assert!(
        all.stdout.contains("WO-1") && all.stdout.contains("closed"),
        "{}",
        all.stdout
    );

    let zero = ws.station(&["batch", "open", "WO-3", "--target", "0"]);
    assert_eq!(zero.code, 2, "clap refuses a zero target: {}", zero.stderr);

    // The database lives next to station.toml, not in the working directory.
    assert!(ws.path("station.db").exists());
}

#[test]
fn audit_verify_passes_then_names_the_first_tampered_entry() {
    let ws = Workspace::new();
    ws.station(&["batch", "open", "WO-1", "--target", "2"])
        .expect(0);
    ws.station(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
        .expect(0);
    ws.station(&["batch", "close"]).expect(0);
    let ok = ws.station(&["--json", "audit", "verify"]).expect(0).json();
    assert_eq!(ok["intact"], true);
    assert_eq!(ok["entries"], 3);
    let head = ok["head_hash"].as_str().unwrap().to_owned();
    ws.station(&["audit", "verify", "--head", &head]).expect(0);

    // Someone edits entry 2 behind the triggers' back.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = station::store::Store::open(&ws.path("station.db"))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER audit_log_refuses_update")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET operator = 'mallory' WHERE seq = 2")
            .execute(store.sqlite_pool().unwrap())
            .await
            .unwrap();
        store.close().await;
    });
    let broken = ws.station(&["audit", "verify"]).expect(1);
    assert!(
        broken.stdout.contains("BROKEN at entry 2"),
        "{}",
        broken.stdout
    );
    let json = ws.station(&["--json", "audit", "verify"]).expect(1).json();
    assert_eq!(json["first_break"]["seq"], 2);

    // An unknown head (a rewritten log) also fails.
    let fresh = Workspace::new();
    fresh
        .station(&["batch", "open", "WO-1", "--target", "2"])
        .expect(0);
    fresh
        .station(&["audit", "verify", "--head", &head])
        .expect(1);
}

#[test]
fn audit_export_carries_hashes_in_jsonl_and_csv() {
    let ws = Workspace::new();
    ws.station(&["batch", "open", "WO-1", "--target", "2"])
        .expect(0);
    ws.station(&["batch", "close"]).expect(0);
    let jsonl = ws.station(&["audit", "export"]).expect(0).stdout;
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    ws.station(&[
        "audit",
        "export",
        "--format",
        "csv",
        "--out",
        ws.path("audit.csv").to_str().unwrap(),
    ])
    .expect(0);
    let csv = std::fs::read_to_string(ws.path("audit.csv")).unwrap();
    assert!(
        csv.starts_with("seq,at,station_id,operator,action,subject,details,prev_hash,hash\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3);
}

#[test]
fn key_derive_reproduces_azure_documented_example() {
    let ws = Workspace::new();
    ws.write_key("secrets/group.key", AZURE_GROUP_KEY);
    let run = ws
        .station(&[
            "--json",
            "key",
            "derive",
            "--registration-id",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        ])
        .expect(0)
        .json();
    assert_eq!(
        run["primary"]["device_key"],
        "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
    );
    assert!(run["secondary"].is_null());
    let entries = ws.station(&["--json", "audit", "show"]).expect(0).json();
    assert_eq!(entries[0]["action"], "key.derive");
    assert_eq!(
        entries[0]["subject"],
        "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
    );

    let bad = ws
        .station(&["--json", "key", "derive", "--registration-id", "Sensor 1"])
        .expect(2);
    assert_eq!(error_code(&bad), "station::identity::bad_registration_id");
}

#[test]
fn key_derive_prints_the_secondary_key_when_configured() {
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"),
    )
    .unwrap()
    .replace(
        "# secondary_group_key_file = \"secrets/group2.key\"",
        "secondary_group_key_file = \"secrets/group2.key\"",
    );
    let ws = Workspace::with_config(&config);
    ws.write_key("secrets/group2.key", AZURE_GROUP_KEY);
    let run = ws
        .station(&[
            "--json",
            "key",
            "derive",
            "--registration-id",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        ])
        .expect(0)
        .json();
    assert_eq!(
        run["secondary"]["device_key"],
        "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
    );
    assert_ne!(run["primary"]["device_key"], run["secondary"]["device_key"]);
    assert_ne!(run["primary"]["key_id"], run["secondary"]["key_id"]);
}

#[test]
fn bad_group_key_files_exit_2_with_a_code_and_hint() {
    use std::os::unix::fs::PermissionsExt as _;
    let cases = [
        ("", "station::keys::empty"),
        (
            "SharedAccessSignature sr=0ne00055505%2Fregistrations%2Fdev01&skn=registration&sig=abc%3D&se=1",
            "station::keys::sas_token",
        ),
        (
            "HostName=hub.azure-devices.net;DeviceId=d;SharedAccessKey=Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=",
            "station::keys::connection_string",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
            "station::keys::pem_block",
        ),
        ("this is not base64!", "station::keys::not_base64"),
        ("c2hvcnQ=", "station::keys::too_short"),
    ];
    let ws = Workspace::new();
    for (text, code) in cases {
        ws.write_key("secrets/group.key", text);
        let run = ws
            .station(&["--json", "key", "derive", "--registration-id", "sensor-1"])
            .expect(2);
        assert_eq!(error_code(&run), code, "{text:?}");
        assert!(run.stderr.contains("hint: "), "{}", run.stderr);
    }
    ws.write_key("secrets/group.key", GROUP_KEY);
    std::fs::set_permissions(
        ws.path("secrets/group.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let run = ws
        .station(&["--json", "key", "derive", "--registration-id", "sensor-1"])
        .expect(2);
    assert_eq!(error_code(&run), "station::keys::world_readable");
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    let check = ws.station(&["check"]).expect(2);
    assert!(check.stdout.contains("FAIL group key"), "{}", check.stdout);
}

#[test]
fn bad_configuration_exits_2_naming_file_and_line() {
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"),
    )
    .unwrap()
    .replace("offset = 0x9000", "offset = 0x9100");
    let ws = Workspace::with_config(&config);
    let run = ws.station(&["--json", "batch", "status"]).expect(2);
    assert_eq!(error_code(&run), "station::config::misaligned");
    let line = config
        .lines()
        .position(|l| l.starts_with("offset = 0x9100"))
        .unwrap()
        + 1;
    assert!(
        run.stderr
            .contains(&format!("station.toml:{line}: [nvs] offset = 0x9100")),
        "{}",
        run.stderr
    );

    let missing = Workspace::new();
    std::fs::remove_file(missing.path("station.toml")).unwrap();
    let run = missing.station(&["--json", "batch", "status"]).expect(2);
    assert_eq!(error_code(&run), "station::config::unreadable");
}

#[test]
fn nvs_build_by_mac_matches_the_library_and_inspect_redacts_the_key() {
    let ws = Workspace::new();
    let out = ws.path("unit.bin");
    let built = ws
        .station(&[
            "--json",
            "nvs",
            "build",
            "--mac",
            "24:0A:C4:12:34:56",
            "--out",
            out.to_str().unwrap(),
        ])
        .expect(0)
        .json();
    assert_eq!(built[0]["registration_id"], "sensor-240ac4123456");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 0x6000);
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The same image the pipeline would build, byte for byte.
    let config = station::config::Config::load(&ws.path("station.toml")).unwrap();
    let keys = station::keys::GroupKeys::load(
        &config
            .dps
            .attestation
            .symmetric_key()
            .unwrap()
            .group_key_file,
        None,
    )
    .unwrap();
    let image =
        station::provision::DeviceImage::build(&config, &keys, "240ac4123456".parse().unwrap())
            .unwrap();
    assert_eq!(bytes, *image.bytes);
    assert_eq!(built[0]["image_sha256"], image.sha256());

    let derived = ws
        .station(&[
            "--json",
            "key",
            "derive",
            "--registration-id",
            "sensor-240ac4123456",
        ])
        .expect(0)
        .json();
    let device_key = derived["primary"]["device_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect = ws
        .station(&["--json", "nvs", "inspect", out.to_str().unwrap()])
        .expect(0);
    assert!(
        !inspect.stdout.contains(&device_key),
        "device key shown without --show-secrets"
    );
    let entries = inspect.json()["entries"].as_array().unwrap().clone();
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["id_scope", "reg_id", "device_key", "dps_host"]);
    assert_eq!(entries[1]["value"], "sensor-240ac4123456");
    assert_eq!(entries[2]["redacted"], true);
    let shown = ws
        .station(&[
            "--json",
            "nvs",
            "inspect",
            "--show-secrets",
            out.to_str().unwrap(),
        ])
        .expect(0)
        .json();
    assert_eq!(shown["entries"][2]["value"], device_key.as_str());
    assert_eq!(
        shown["entries"][3]["value"],
        "global.azure-devices-provisioning.net"
    );
}

#[test]
fn nvs_build_from_csv_is_all_or_nothing() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("macs.csv"),
        "mac,batch\n24:0a:c4:00:00:01,WO-1\n24-0A-C4-00-00-02,WO-1\n240ac4000003,WO-1\n",
    )
    .unwrap();
    let out_dir = ws.path("images");
    let run = ws
        .station(&[
            "--json",
            "nvs",
            "build",
            "--csv",
            ws.path("macs.csv").to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .expect(0);
    assert!(
        run.stderr.contains("columns ignored: batch"),
        "{}",
        run.stderr
    );
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["240ac4000001.bin", "240ac4000002.bin", "240ac4000003.bin"]
    );

    std::fs::write(
        ws.path("bad.csv"),
        "mac\n24:0a:c4:00:00:04\n24:0a:c4:00:00:zz\n",
    )
    .unwrap();
    let bad_dir = ws.path("bad-images");
    let run = ws
        .station(&[
            "--json",
            "nvs",
            "build",
            "--csv",
            ws.path("bad.csv").to_str().unwrap(),
            "--out-dir",
            bad_dir.to_str().unwrap(),
        ])
        .expect(2);
    assert_eq!(error_code(&run), "station::identity::bad_mac");
    assert!(
        run.stderr
            .contains("bad.csv:3: `24:0a:c4:00:00:zz` is not a usable MAC address"),
        "{}",
        run.stderr
    );
    assert!(
        !bad_dir.join("240ac4000004.bin").exists(),
        "a bad row must leave nothing written"
    );

    std::fs::write(
        ws.path("mismatch.csv"),
        "mac,registration_id\n24:0a:c4:00:00:05,other-240ac4000005\n",
    )
    .unwrap();
    let run = ws
        .station(&[
            "nvs",
            "build",
            "--csv",
            ws.path("mismatch.csv").to_str().unwrap(),
            "--out-dir",
            bad_dir.to_str().unwrap(),
        ])
        .expect(2);
    assert!(
        run.stderr.contains("mismatch.csv:2")
            && run.stderr.contains("differs from `sensor-240ac4000005`"),
        "{}",
        run.stderr
    );
}

#[test]
fn group_key_appears_in_no_output_log_database_or_image() {
    let ws = Workspace::new();
    let image = ws.path("unit.bin");
    let mut transcript: Vec<u8> = Vec::new();
    let runs = [
        vec!["batch", "open", "WO-1", "--target", "3"],
        vec!["key", "derive", "--registration-id", "sensor-240ac4000001"],
        vec![
            "--json",
            "key",
            "derive",
            "--registration-id",
            "sensor-240ac4000001",
        ],
        vec![
            "nvs",
            "build",
            "--mac",
            "24:0a:c4:00:00:01",
            "--out",
            image.to_str().unwrap(),
        ],
        vec!["nvs", "inspect", "--show-secrets", image.to_str().unwrap()],
        vec!["audit", "show"],
        vec!["audit", "export"],
        vec!["check"],
        vec!["--json", "check"],
        vec!["key", "derive", "--registration-id", "INVALID ID"],
        vec!["batch", "status"],
    ];
    for args in &runs {
        let run = ws.station(args);
        transcript.extend(run.stdout.as_bytes());
        transcript.extend(run.stderr.as_bytes());
    }
    // Error paths that read the key file must not echo it either.
    ws.write_key("secrets/group.key", &format!("{GROUP_KEY}\n{GROUP_KEY}"));
    let run = ws.station(&["key", "derive", "--registration-id", "sensor-1"]);
    assert_eq!(run.code, 2);
    transcript.extend(run.stdout.as_bytes());
    transcript.extend(run.stderr.as_bytes());
    ws.write_key(
        "secrets/group.key",
        &format!("SharedAccessSignature sr=x&sig={GROUP_KEY}"),
    );
    let run = ws.station(&["key", "derive", "--registration-id", "sensor-1"]);
    transcript.extend(run.stderr.as_bytes());

    assert!(
        transcript.len() > 1_000,
        "the runs printed something to search"
    );
    let forms = secret_forms(GROUP_KEY);
    assert_absent(&transcript, &forms, "command output or trace logs");
    for file in ["station.db", "station.db-wal", "station.db-shm", "unit.bin"] {
        if let Ok(bytes) = std::fs::read(ws.path(file)) {
            assert_absent(&bytes, &forms, file);
        }
    }
}
