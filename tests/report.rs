//! Issue 7, QA manifests and the auditor's log, end to end through the `station` binary: manifest
//! exports, the audit views, tampering that `audit verify` must catch, proof that the group key
//! leaks nowhere, and exports running while the line records.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use station::record::Batch;
use station::store::audit::{GENESIS, entry_hash};
use station::store::{AttemptRecord, Store};

use crate::util::daemon::DEADLINE;
use crate::util::{
    GROUP_KEY, Run, Workspace, assert_absent, attempt_record, secret_forms, sim_config,
};

const STATION: &str = "line1-st1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn mac(n: usize) -> String {
    format!("24:0a:c4:00:{:02x}:{:02x}", n >> 8, n & 0xff)
}

fn record(batch: &Batch, mac: &str, port: &str, operator: &str, failed: bool) -> AttemptRecord {
    attempt_record(
        batch,
        mac,
        port,
        operator,
        failed.then_some(("flash", "station::device::unplugged")),
    )
}

/// A workspace whose database holds batch WO-1 with `units` provisioned units (the first one
/// after a failed attempt), recorded through the library as the line would.
fn seeded(units: usize) -> Workspace {
    let ws = Workspace::new();
    runtime().block_on(async {
        let store = Store::open(&ws.path("station.db")).await.unwrap();
        let batch = store.open_batch("WO-1", 10, "ana", STATION).await.unwrap();
        for n in 0..units {
            if n == 0 {
                let failed = record(&batch, &mac(n), "/dev/ttyUSB0", "ana", true);
                store.record_attempt(&failed).await.unwrap();
            }
            let port = format!("/dev/ttyUSB{}", n % 2);
            store
                .record_attempt(&record(&batch, &mac(n), &port, "bo", false))
                .await
                .unwrap();
        }
        store.close().await;
    });
    ws
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn error_code(run: &Run) -> String {
    run.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn manifest_lists_units_in_documented_columns_and_is_audited() {
    let ws = seeded(3);
    let csv = ws
        .station(&["export", "manifest", "--batch", "WO-1"])
        .expect(0)
        .stdout;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "batch,mac,registration_id,chip,chip_revision,flash_size,nvs_sha256,group_key_id,\
         provisioned_at,operator,station_id,port,attempts,dps_status,assigned_hub,device_id,\
         attestation,cert_serial,cert_thumbprint,cert_not_after,enrollment,hub_test,revoked_at"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        [
            "WO-1",
            "24:0a:c4:00:00:00",
            "sensor-240ac4000000",
            "esp32",
            "v3.0",
            "4194304",
            &"ab".repeat(32),
            "sha256:0011223344556677",
            rows[0][8],
            "bo",
            STATION,
            "/dev/ttyUSB0",
            "2",
            "not-requested",
            "",
            "",
            "symmetric-key",
            "",
            "",
            "",
            "group",
            "not-requested",
            ""
        ]
    );
    assert!(
        rows[0][8].ends_with('Z') && rows[0][8].contains('T'),
        "{}",
        rows[0][8]
    );
    assert_eq!(rows[1][12], "1");

    // JSON into a file: atomic, owner-only, and the audit entry holds the file's SHA-256.
    let out = ws.path("exports/manifest.json");
    std::fs::create_dir(ws.path("exports")).unwrap();
    let summary = ws
        .station(&[
            "--json",
            "export",
            "manifest",
            "--format",
            "json",
            "--out",
            out.to_str().unwrap(),
        ])
        .expect(0)
        .json();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(mode(&out), 0o600);
    assert_eq!(summary["rows"], 3);
    assert_eq!(summary["sha256"], sha256(&bytes).as_str());
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed[2]["mac"], "24:0a:c4:00:00:02");
    assert_eq!(parsed[0]["attempts"], 2);
    let mut files: Vec<String> = std::fs::read_dir(ws.path("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // The manifest and the checkpoint it embeds (issue 13); no temporary file left behind.
    assert_eq!(files, ["manifest.json", "manifest.json.checkpoint.json"]);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.path("exports/manifest.json.checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["export"]["sha256"], summary["sha256"]);
    assert_eq!(sidecar["checkpoint"], summary["checkpoint"]);
    assert!(
        sidecar["checkpoint"]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ed25519:")
    );

    let audit = ws
        .station(&["--json", "audit", "show", "--limit", "1"])
        .expect(0)
        .json();
    let entry = &audit[0];
    assert_eq!(entry["action"], "manifest.exported");
    assert_eq!(entry["subject"], "all batches");
    assert_eq!(entry["operator"], "tester");
    let details: serde_json::Value =
        serde_json::from_str(entry["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["format"], "json");
    assert_eq!(details["rows"], 3);
    assert_eq!(details["sha256"], sha256(&bytes).as_str());
    assert_eq!(details["batch"], serde_json::Value::Null);
    ws.station(&["audit", "verify"]).expect(0);
}

#[test]
fn manifest_filters_empty_results_and_bad_input() {
    let ws = seeded(2);
    // Nothing provisioned after tomorrow: the header alone, exit 0.
    let empty = ws
        .station(&["export", "manifest", "--since", "2999-01-01"])
        .expect(0)
        .stdout;
    assert_eq!(empty.lines().count(), 1);
    assert!(empty.starts_with("batch,mac,"), "{empty}");
    let json = ws
        .station(&[
            "export",
            "manifest",
            "--format",
            "json",
            "--until",
            "2000-01-01T00:00:00Z",
        ])
        .expect(0)
        .stdout;
    assert_eq!(json, "[]\n");
    let window = ws
        .station(&[
            "export",
            "manifest",
            "--since",
            "2000-01-01T00:00:00+01:00",
            "--until",
            "2999-01-01",
        ])
        .expect(0)
        .stdout;
    assert_eq!(window.lines().count(), 3);

    let bad = ws
        .station(&["--json", "export", "manifest", "--since", "yesterday"])
        .expect(2);
    assert_eq!(error_code(&bad), "station::input::invalid");
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("2026-11-25T08:00:00Z"),
        "{}",
        bad.stderr
    );
    let unknown = ws
        .station(&["--json", "export", "manifest", "--batch", "WO-9"])
        .expect(2);
    assert_eq!(error_code(&unknown), "station::store::no_such_batch");
    // Refused exports are not audited as exported.
    let audit = ws.station(&["--json", "audit", "show"]).expect(0).json();
    let exported = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "manifest.exported")
        .count();
    assert_eq!(exported, 3);
}

#[test]
fn audit_show_is_a_table_filtered_by_batch_and_limit() {
    let ws = seeded(2);
    ws.station(&["batch", "close"]).expect(0);
    ws.station(&["batch", "open", "WO-2", "--target", "1"])
        .expect(0);
    let table = ws.station(&["audit", "show"]).expect(0).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SEQ  TIME"), "{table}");
    assert_eq!(lines.len(), 1 + 6, "{table}");
    assert!(
        lines[2].contains("unit.failed") && lines[2].contains("batch=WO-1"),
        "{table}"
    );
    // Columns line up: every action starts at the same offset.
    let column = lines[0].find("ACTION").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[column..].starts_with(|c: char| c.is_ascii_lowercase())),
        "{table}"
    );

    let of_wo1 = ws
        .station(&["audit", "show", "--batch", "WO-1"])
        .expect(0)
        .stdout;
    assert_eq!(of_wo1.lines().count(), 1 + 5, "{of_wo1}");
    assert!(!of_wo1.contains("WO-2"), "{of_wo1}");
    let last = ws
        .station(&["--json", "audit", "show", "--batch", "WO-2", "--limit", "5"])
        .expect(0)
        .json();
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["action"], "batch.open");
    let unknown = ws
        .station(&["--json", "audit", "show", "--batch", "nope"])
        .expect(2);
    assert_eq!(error_code(&unknown), "station::store::no_such_batch");
}

/// Fills the log with `count` valid chained entries in one transaction (enough to span more
/// than one of verify's ranges), as the benchmark does.
fn long_chain(ws: &Workspace, count: i64) {
    runtime().block_on(async {
        let store = Store::open(&ws.path("station.db")).await.unwrap();
        let mut tx = store.sqlite_pool().unwrap().begin().await.unwrap();
        let mut prev_hash = GENESIS.to_owned();
        for seq in 1..=count {
            let at = format!("2026-11-25T10:{:02}:{:02}.{:03}Z", seq / 60_000 % 60, seq / 1000 % 60, seq % 1000);
            let subject = mac(seq as usize);
            let details = format!(r#"{{"batch":"WO-1","port":"/dev/ttyUSB{}"}}"#, seq % 4);
            let hash = entry_hash(seq, &at, STATION, "ana", "unit.provisioned", &subject, &details, &prev_hash);
            sqlx::query(
                "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
                 VALUES (?, ?, ?, 'ana', 'unit.provisioned', ?, ?, ?, ?)",
            )
            .bind(seq)
            .bind(&at)
            .bind(STATION)
            .bind(&subject)
            .bind(&details)
            .bind(&prev_hash)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .unwrap();
            prev_hash = hash;
        }
        tx.commit().await.unwrap();
        store.close().await;
    });
}

/// Runs SQL against the workspace's database with the append-only triggers dropped, as someone
/// with another SQLite client would.
fn tamper(ws: &Workspace, statements: &[&str]) {
    runtime().block_on(async {
        let store = Store::open(&ws.path("station.db")).await.unwrap();
        // One connection: a TEMP table lives on the connection that made it.
        let mut conn = store.sqlite_pool().unwrap().acquire().await.unwrap();
        for sql in [
            "DROP TRIGGER IF EXISTS audit_log_refuses_update",
            "DROP TRIGGER IF EXISTS audit_log_refuses_delete",
        ]
        .iter()
        .chain(statements)
        {
            sqlx::query(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        drop(conn);
        store.close().await;
    });
}

/// `audit verify --json` must fail naming `seq`, with a problem containing `words`.
#[track_caller]
fn assert_broken_at(ws: &Workspace, seq: i64, words: &str) {
    let run = ws.station(&["--json", "audit", "verify"]).expect(1);
    let report = run.json();
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_break"]["seq"], seq, "{report}");
    let problem = report["first_break"]["problem"].as_str().unwrap();
    assert!(problem.contains(words), "{problem}");
    let text = ws.station(&["audit", "verify"]).expect(1).stdout;
    assert!(text.contains(&format!("BROKEN at entry {seq}:")), "{text}");
}

const LONG: i64 = 20_000;

#[test]
fn audit_verify_counts_an_intact_chain() {
    let ws = Workspace::new();
    long_chain(&ws, LONG);
    let report = ws.station(&["--json", "audit", "verify"]).expect(0).json();
    assert_eq!(report["entries"], LONG);
    let text = ws.station(&["audit", "verify"]).expect(0).stdout;
    assert!(text.contains(&format!("{LONG} entries verified")), "{text}");
}

#[test]
fn audit_verify_names_an_entry_edited_with_the_triggers_dropped() {
    let ws = Workspace::new();
    long_chain(&ws, LONG);
    tamper(
        &ws,
        &["UPDATE audit_log SET details = '{\"batch\":\"WO-2\"}' WHERE seq = 17000"],
    );
    assert_broken_at(&ws, 17_000, "edited");
}

#[test]
fn audit_verify_names_a_deleted_entry() {
    let ws = Workspace::new();
    long_chain(&ws, LONG);
    tamper(&ws, &["DELETE FROM audit_log WHERE seq = 16385"]);
    assert_broken_at(&ws, 16_385, "missing");
}

#[test]
fn audit_verify_names_a_reordered_pair() {
    let ws = Workspace::new();
    long_chain(&ws, LONG);
    // Swap the whole contents (hashes included) of entries 300 and 301, keeping their seqs.
    tamper(
        &ws,
        &[
            "CREATE TEMP TABLE pair AS SELECT * FROM audit_log WHERE seq IN (300, 301)",
            "UPDATE audit_log SET (at, station_id, operator, action, subject, details, prev_hash, hash) = \
         (SELECT at, station_id, operator, action, subject, details, prev_hash, hash || '.' FROM pair p \
          WHERE p.seq = 601 - audit_log.seq) WHERE seq IN (300, 301)",
            "UPDATE audit_log SET hash = substr(hash, 1, 64) WHERE seq IN (300, 301)",
        ],
    );
    assert_broken_at(&ws, 300, "prev_hash");
}

#[test]
fn audit_verify_names_an_inserted_entry() {
    let ws = Workspace::new();
    long_chain(&ws, 50);
    // Make room after entry 20 and slip in an entry that links to entry 20 correctly but whose
    // hash was not made by the station.
    tamper(
        &ws,
        &[
            "UPDATE audit_log SET seq = -seq WHERE seq > 20",
            "UPDATE audit_log SET seq = 1 - seq WHERE seq < 0",
            "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
         SELECT 21, at, station_id, 'mallory', 'unit.provisioned', '24:0a:c4:99:99:99', details, hash, \
         'f00d' || substr(hash, 5) FROM audit_log WHERE seq = 20",
        ],
    );
    assert_broken_at(&ws, 21, "edited");

    // Appended at the end, with a made-up link.
    let ws = Workspace::new();
    long_chain(&ws, 50);
    tamper(
        &ws,
        &[
            "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
         VALUES (51, 'x', 'x', 'mallory', 'batch.close', 'WO-1', '{}', 'aa', 'bb')",
        ],
    );
    assert_broken_at(&ws, 51, "prev_hash");
}

#[test]
fn group_key_leaks_nowhere_after_a_provisioned_batch() {
    let ws = Workspace::with_config(&sim_config(true));
    let mut transcript: Vec<u8> = Vec::new();
    let mut keep = |run: Run| -> Run {
        transcript.extend(run.stdout.as_bytes());
        transcript.extend(run.stderr.as_bytes());
        run
    };
    keep(
        ws.station(&[
            "batch",
            "open",
            "WO-1",
            "--target",
            "2",
            "--operator",
            "ana",
        ])
        .expect(0),
    );
    // The database is created owner-only; hold a connection so the WAL stays on disk.
    let rt = runtime();
    let held = rt.block_on(Store::open(&ws.path("station.db"))).unwrap();
    let sim = station::sim::SimLine::start(station::sim::SimOptions {
        count: 2,
        link_dir: Some(ws.path("ports")),
        flash_dir: Some(ws.path("flash")),
        wire_time: false,
        ..station::sim::SimOptions::default()
    })
    .unwrap();
    let mut registration_ids = Vec::new();
    for device in sim.devices() {
        let port = device.port().to_str().unwrap().to_owned();
        let report = keep(
            ws.station(&["--json", "provision", "--port", &port])
                .expect(0),
        )
        .json();
        registration_ids.push(report["registration_id"].as_str().unwrap().to_owned());
    }
    // Error paths: a missing port, bad export arguments, an unknown batch.
    keep(ws.station(&[
        "provision",
        "--port",
        ws.path("ports/none").to_str().unwrap(),
    ]));
    keep(
        ws.station(&["export", "manifest", "--since", "soon"])
            .expect(2),
    );
    keep(
        ws.station(&["--json", "export", "manifest", "--batch", "nope"])
            .expect(2),
    );
    keep(ws.station(&["audit", "show", "--batch", "nope"]).expect(2));

    let exports = [
        (
            "manifest.csv",
            vec!["export", "manifest", "--batch", "WO-1"],
        ),
        (
            "manifest.json",
            vec!["export", "manifest", "--format", "json"],
        ),
        ("audit.jsonl", vec!["audit", "export"]),
        ("audit.csv", vec!["audit", "export", "--format", "csv"]),
    ];
    let mut files = Vec::new();
    for (name, args) in &exports {
        let path = ws.path(name);
        let mut with_out = args.clone();
        with_out.extend(["--out", path.to_str().unwrap()]);
        keep(ws.station(&with_out).expect(0));
        assert_eq!(mode(&path), 0o600, "{name}");
        files.push(path);
        let stdout = keep(ws.station(args).expect(0));
        assert!(stdout.stdout.len() > 100, "{name}: {}", stdout.stdout);
    }
    keep(ws.station(&["audit", "show"]).expect(0));
    keep(ws.station(&["--json", "audit", "verify"]).expect(0));
    keep(ws.station(&["batch", "close"]).expect(0));
    let manifest = std::fs::read_to_string(ws.path("manifest.csv")).unwrap();
    assert_eq!(manifest.lines().count(), 3, "{manifest}");

    // Device keys: only inside the flashed images, each in its own device's.
    let keys = station::keys::GroupKeys::load(&ws.path("secrets/group.key"), None).unwrap();
    let mut needles = secret_forms(GROUP_KEY);
    for (device, id) in sim.devices().iter().zip(&registration_ids) {
        let id = station::identity::RegistrationId::new(id.as_str()).unwrap();
        let device_key = keys.primary.derive(&id).expose().as_bytes().to_vec();
        let image = std::fs::read(device.flash_file().unwrap()).unwrap();
        assert!(
            image
                .windows(device_key.len())
                .any(|w| w == device_key.as_slice()),
            "the device key is in its flashed image (so the search below would find it)"
        );
        needles.push(device_key);
    }

    assert!(
        transcript.len() > 5_000,
        "trace logs and exports were captured"
    );
    assert!(
        String::from_utf8_lossy(&transcript).contains("TRACE")
            || String::from_utf8_lossy(&transcript).contains("DEBUG"),
        "STATION_LOG=trace reached the binary"
    );
    assert_absent(
        &transcript,
        &needles,
        "command output, trace logs or error messages",
    );
    for path in &files {
        assert_absent(
            &std::fs::read(path).unwrap(),
            &needles,
            &path.display().to_string(),
        );
    }
    for file in ["station.db", "station.db-wal", "station.db-shm"] {
        let path = ws.path(file);
        assert!(path.exists(), "{file} is on disk to be searched");
        assert_eq!(mode(&path), 0o600, "{file}");
        assert_absent(&std::fs::read(&path).unwrap(), &needles, file);
    }
    rt.block_on(held.close());
}

#[test]
fn exports_and_verify_run_while_the_line_records() {
    const UNITS: usize = 120;
    let ws = Workspace::new();
    ws.station(&[
        "batch",
        "open",
        "WO-1",
        "--target",
        "200",
        "--operator",
        "ana",
    ])
    .expect(0);
    let db = ws.path("station.db");
    // The line: each unit fails once (its flash was touched), then passes; each attempt is one
    // transaction holding the unit, the attempt and the audit entry.
    let writer = std::thread::spawn(move || {
        runtime().block_on(async {
            let store = Store::open(&db).await.unwrap();
            let batch = store.batch("WO-1").await.unwrap();
            let mut slowest = Duration::ZERO;
            for n in 0..UNITS {
                for failed in [true, false] {
                    let started = Instant::now();
                    let port = format!("/dev/ttyUSB{}", n % 4);
                    store
                        .record_attempt(&record(&batch, &mac(n), &port, "bo", failed))
                        .await
                        .unwrap();
                    slowest = slowest.max(started.elapsed());
                }
            }
            store.close().await;
            slowest
        })
    });

    let deadline = Instant::now() + DEADLINE;
    let mut exports = 0;
    let mut last_rows = 0;
    loop {
        let done = writer.is_finished();
        assert!(
            Instant::now() < deadline,
            "the writer did not record its {UNITS} units within {DEADLINE:?} ({last_rows} exported so far)"
        );
        let manifest = ws
            .station(&["export", "manifest", "--batch", "WO-1", "--format", "json"])
            .expect(0);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&manifest.stdout).unwrap();
        for row in &rows {
            // A unit is in a manifest only with both its attempts and the operator and port of
            // the one that passed: never half-recorded.
            assert_eq!(row["attempts"], 2, "{row}");
            assert_eq!(row["operator"], "bo", "{row}");
            assert!(
                row["port"].as_str().unwrap().starts_with("/dev/ttyUSB"),
                "{row}"
            );
        }
        assert!(
            rows.len() >= last_rows,
            "a later manifest never loses units"
        );
        last_rows = rows.len();
        let verified = ws.station(&["--json", "audit", "verify"]).expect(0).json();
        assert_eq!(verified["intact"], true);
        exports += 1;
        if done {
            break;
        }
    }
    let slowest = writer.join().unwrap();
    assert_eq!(last_rows, UNITS);
    assert!(
        exports >= 2,
        "exports ran while the line recorded ({exports})"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "the line was held up for {slowest:?}"
    );

    // Every unit a manifest listed has its provisioning in the audit log, before the exports'.
    let audit: Vec<serde_json::Value> = ws
        .station(&["audit", "export"])
        .expect(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let provisioned = audit
        .iter()
        .filter(|e| e["action"] == "unit.provisioned")
        .count();
    let failed = audit
        .iter()
        .filter(|e| e["action"] == "unit.failed")
        .count();
    let exported = audit
        .iter()
        .filter(|e| e["action"] == "manifest.exported")
        .count();
    assert_eq!((provisioned, failed, exported), (UNITS, UNITS, exports));
    ws.station(&["audit", "verify"]).expect(0);
}
