//! Many stations on one PostgreSQL database (issue 15), against a real server
//! (`tests/util/postgres.rs`: a throwaway cluster on loopback; skipped, saying so, without one
//! unless `STATION_REQUIRE_POSTGRES=1`): stations sharing a batch through `station run`, the
//! `station` and `auditor` roles, passwords, and a server that goes away mid-batch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use station::sim::{SimLine, SimOptions};

use crate::util::daemon::Daemon;
use crate::util::postgres::{Cluster, skip};
use crate::util::{Workspace, attempt_record, sim_config};

/// A station's workspace on database `db`, as `user` (password in a 0600 file), its line
/// watching `ports/ttySIM*`.
fn station_workspace(
    cluster: &Cluster,
    db: &str,
    station_id: &str,
    user: &str,
    password: &str,
) -> Workspace {
    let config = sim_config(true)
        .replace("id = \"line1-st1\"", &format!("id = \"{station_id}\""))
        .replace(
            "database = \"station.db\"",
            &format!(
                "database = \"{}\"\ndatabase_password_file = \"secrets/db.password\"",
                cluster.url_as(user, db)
            ),
        )
        .replace("ports = [\"auto\"]", "ports = [\"ports/ttySIM*\"]");
    let ws = Workspace::with_config(&config);
    ws.write_key("secrets/db.password", password);
    ws
}

/// A new database, migrated by its owner, with the repository's roles and one station login
/// per `stations` entry (`<station>` with password `pw-<station>`).
async fn factory(cluster: &Cluster, stations: &[&str]) -> String {
    let db = cluster.database().await;
    let admin = station::config::Database::Postgres {
        url: cluster.url_of(&db),
        password_file: Some(cluster.password_file.clone()),
    };
    station::store::Store::migrate(&admin).await.unwrap();
    for station in stations {
        cluster
            .login(&db, &login(station), &format!("pw-{station}"), "station")
            .await;
    }
    db
}

/// The PostgreSQL login of a station: its ID with `-` as `_`, and the process ID (roles are
/// the cluster's, shared by every test database of this run).
fn login(station: &str) -> String {
    format!("{}_{}", station.replace('-', "_"), std::process::id())
}

fn station_ws(cluster: &Cluster, db: &str, station: &str) -> Workspace {
    station_workspace(
        cluster,
        db,
        station,
        &login(station),
        &format!("pw-{station}"),
    )
}

/// Devices taking turns on two ports of `ws`, MACs from `base`, with a simulated operator.
fn sim(ws: &Workspace, count: usize, base: &str) -> SimLine {
    SimLine::start(SimOptions {
        count,
        ports: Some(2),
        link_dir: Some(ws.path("ports")),
        base_mac: Some(base.parse().unwrap()),
        leave_after_idle: Some(Duration::from_millis(800)),
        swap_gap: Duration::from_millis(200),
        wire_time: false,
        ..SimOptions::default()
    })
    .unwrap()
}

// Issue 15: three stations run one work order: the target holds across them, a MAC that two
// stations see (two devices with one MAC) is provisioned once, QA's manifest and the auditor's
// verify cover every station, and the stations' logins hold only the `station` role.
#[test]
fn stations_share_a_batch_on_one_server() {
    let Some(cluster) = Cluster::shared() else {
        return skip("stations_share_a_batch_on_one_server");
    };
    let stations = ["line1-st1", "line2-st1", "line3-st1"];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(factory(cluster, &stations));
    let workspaces: Vec<Workspace> = stations
        .iter()
        .map(|s| station_ws(cluster, &db, s))
        .collect();
    // Opened once, on one station; the others run it by name.
    workspaces[0]
        .station(&["batch", "open", "WO-1234", "--target", "10"])
        .expect(0);
    let refused = workspaces[1]
        .station(&["--json", "batch", "open", "WO-1234", "--target", "10"])
        .expect(2);
    assert_eq!(
        refused.json()["error"]["code"],
        "station::store::batch_exists"
    );

    // Lines 1 and 3 get devices with the same five MACs; line 2 five of its own: ten units.
    let lines = [
        sim(&workspaces[0], 5, "24:0a:c4:15:00:00"),
        sim(&workspaces[1], 5, "24:0a:c4:15:01:00"),
        sim(&workspaces[2], 5, "24:0a:c4:15:00:00"),
    ];
    let mut daemons: Vec<Daemon> = workspaces
        .iter()
        .map(|ws| Daemon::start_with(ws, true, &["--batch", "WO-1234"]))
        .collect();
    for daemon in &mut daemons {
        assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());
    }

    let mut passed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (daemon, station) in daemons.iter().zip(stations) {
        for unit in daemon.units() {
            match unit["outcome"].as_str() {
                Some("provisioned") => passed
                    .entry(unit["mac"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(station.to_owned()),
                // The second station to see a MAC leaves it alone or loses the record.
                Some("skipped") => {}
                Some("failed") => assert_eq!(
                    unit["error_code"], "station::store::duplicate_unit",
                    "{unit:#}"
                ),
                other => panic!("{other:?}: {unit:#}"),
            }
        }
        assert!(
            daemon
                .events()
                .iter()
                .any(|e| e["event"] == "stopping" && e["reason"] == "batch_complete"),
            "{station} saw the batch complete"
        );
    }
    assert_eq!(passed.len(), 10, "{passed:#?}");
    assert!(
        passed.values().all(|s| s.len() == 1),
        "each unit once: {passed:#?}"
    );
    let shared: Vec<&String> = passed
        .iter()
        .filter(|(mac, _)| mac.starts_with("24:0a:c4:15:00"))
        .map(|(_, s)| &s[0])
        .collect();
    assert_eq!(shared.len(), 5);
    assert!(shared.iter().all(|s| *s != "line2-st1"));
    for line in &lines {
        assert!(
            line.devices()
                .iter()
                .all(|d| d.stats().flash_blocks <= 1_000)
        );
    }

    // Every station sees the batch whole, with each station's share.
    let status = workspaces[1]
        .station(&["--json", "batch", "status", "WO-1234"])
        .expect(0)
        .json();
    assert_eq!(status["provisioned"], 10);
    assert_eq!(status["in_progress"], 0);
    let shares: HashMap<&str, i64> = status["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["station_id"].as_str().unwrap(),
                s["provisioned"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares.values().sum::<i64>(), 10);
    assert!(shares["line2-st1"] == 5, "{shares:?}");
    let text = workspaces[2]
        .station(&["batch", "status", "WO-1234"])
        .expect(0);
    assert!(
        text.stdout.contains("station line2-st1: 5 provisioned"),
        "{}",
        text.stdout
    );

    // QA's manifest lists every unit of the order, each with its station.
    let manifest = workspaces[1]
        .station(&["export", "manifest", "--batch", "WO-1234"])
        .expect(0);
    let rows: Vec<&str> = manifest.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 10);
    let mut by_station: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        *by_station
            .entry(row.split(',').nth(10).unwrap())
            .or_default() += 1;
    }
    assert_eq!(by_station["line2-st1"], 5);
    assert_eq!(by_station.values().sum::<usize>(), 10);

    // The auditor verifies every station's chain, or one.
    let verified = workspaces[0].station(&["audit", "verify"]).expect(0);
    assert!(
        verified.stdout.contains("audit chains of 3 station(s)")
            && verified.stdout.contains("all intact"),
        "{}",
        verified.stdout
    );
    let one = workspaces[0]
        .station(&["--json", "audit", "verify", "--station", "line3-st1"])
        .expect(0)
        .json();
    assert_eq!(one["chains"].as_array().unwrap().len(), 1);
    assert_eq!(one["chains"][0]["station_id"], "line3-st1");
    let check = workspaces[2].station(&["check"]).expect(0);
    assert!(
        check.stdout.contains("PostgreSQL 15") || check.stdout.contains("PostgreSQL 1"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("migrations current"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("audit chains of 3 station(s) intact"),
        "{}",
        check.stdout
    );
}

// Issue 15: a station connected with the shipped `station` role may append to the audit log but
// gets a permission error when it tries to UPDATE or DELETE an entry; an auditor only reads.
#[tokio::test]
async fn the_station_role_cannot_change_or_remove_audit_entries() {
    let Some(cluster) = Cluster::shared() else {
        return skip("the_station_role_cannot_change_or_remove_audit_entries");
    };
    let db = factory(cluster, &["role-st"]).await;
    let auditor = format!("role_auditor_{}", std::process::id());
    cluster.login(&db, &auditor, "pw-auditor", "auditor").await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = |name: &str, password: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join(name);
        std::fs::write(&path, password).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let as_station = station::config::Database::Postgres {
        url: cluster.url_as(&login("role-st"), &db),
        password_file: Some(password_file("station", "pw-role-st")),
    };

    // Everything a station does works with the role's rights alone.
    let store = station::store::Store::connect(&as_station).await.unwrap();
    let batch = store.open_batch("WO-R", 3, "ana", "role-st").await.unwrap();
    for mac in ["24:0a:c4:16:00:01", "24:0a:c4:16:00:02"] {
        let mut record = attempt_record(&batch, mac, "/dev/ttyUSB0", "ana", None);
        record.station_id = "role-st".into();
        let recorded = store.record_attempt(&record).await.unwrap();
        assert_eq!(recorded.conflict, None);
    }
    let open = store
        .begin_attempt(&station::store::AttemptStart {
            batch_id: batch.id,
            station_id: "role-st".into(),
            operator: "ana".into(),
            port: "/dev/ttyUSB1".into(),
            started_at: station::clock::now(),
        })
        .await
        .unwrap();
    store.claim_slot(open, batch.id).await.unwrap();
    store.discard_attempt(open).await.unwrap();
    store.close_batch(None, "ana", "role-st").await.unwrap();
    let mut manifest = Vec::new();
    store
        .export_manifest(
            &station::store::ManifestFilter::batch("WO-R"),
            station::report::ManifestFormat::Csv,
            "role-st",
            "qa",
            &mut manifest,
        )
        .await
        .unwrap();
    assert!(store.verify_audit().await.unwrap().first_break.is_none());

    // Changing or removing an entry is refused by the server's privileges.
    let pool = store.postgres_pool().unwrap();
    for statement in [
        "UPDATE audit_log SET operator = 'mallory' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuses_update",
        "UPDATE batches SET target = 1000",
        "CREATE TABLE shadow (x int)",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {err}");
        assert!(
            err.to_string().contains("permission denied")
                || err.to_string().contains("must be owner"),
            "{statement}: {err}"
        );
    }
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(entries[0].operator, "ana");
    store.close().await;

    // The auditor reads and verifies, and writes nothing.
    let as_auditor = station::config::Database::Postgres {
        url: cluster.url_as(&auditor, &db),
        password_file: Some(password_file("auditor", "pw-auditor")),
    };
    let store = station::store::Store::connect(&as_auditor).await.unwrap();
    let report = store.verify_audit().await.unwrap();
    assert_eq!(
        (report.entries, report.first_break),
        (entries.len() as i64, None)
    );
    assert_eq!(store.manifest(&Default::default()).await.unwrap().len(), 2);
    let err = store
        .append_audit("role-st", "mallory", "forged", "x", serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = store
        .open_batch("WO-X", 1, "mallory", "x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    store.close().await;

    // A station updated before the owner ran `station db migrate`: its role may not migrate,
    // so it refuses to start with the schema's code, naming what is pending.
    cluster
        .execute(
            &db,
            "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
        )
        .await;
    let err = station::store::Store::connect(&as_station)
        .await
        .unwrap_err();
    assert!(
        matches!(err, station::store::StoreError::Schema { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("pending"), "{err}");
}

// Issue 15: the database password comes from database_password_file (refused unless 0600),
// PGPASSWORD or ~/.pgpass, and appears in no output.
#[test]
fn the_password_comes_from_a_private_file_or_libpq_and_is_never_shown() {
    let Some(cluster) = Cluster::shared() else {
        return skip("the_password_comes_from_a_private_file_or_libpq_and_is_never_shown");
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(factory(cluster, &["pw-st"]));
    let ws = station_ws(cluster, &db, "pw-st");
    let secret = "pw-pw-st";
    let mut outputs = Vec::new();
    let ok = ws
        .station(&["batch", "open", "WO-P", "--target", "1"])
        .expect(0);
    outputs.push(ok);

    // A password file others may read is refused before anything connects.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        ws.path("secrets/db.password"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let refused = ws.station(&["--json", "batch", "status"]).expect(2);
    assert_eq!(
        refused.json()["error"]["code"],
        "station::store::password_file"
    );
    assert!(
        refused
            .stdout
            .contains("readable by group and others (mode 0644)"),
        "{}",
        refused.stdout
    );
    outputs.push(refused);
    let check = ws.station(&["check"]).expect(2);
    assert!(
        check.stdout.contains("station::store::password_file"),
        "{}",
        check.stdout
    );
    outputs.push(check);

    // A wrong password: the server refuses, the message says where, not what.
    ws.write_key("secrets/db.password", "not-the-password");
    let wrong = ws.station(&["--json", "batch", "status"]).expect(1);
    assert_eq!(wrong.json()["error"]["code"], "station::store::open");
    assert!(
        wrong.stdout.contains(&cluster.url_as(&login("pw-st"), &db)),
        "{}",
        wrong.stdout
    );
    assert!(
        !wrong.stdout.contains("not-the-password") && !wrong.stderr.contains("not-the-password")
    );
    outputs.push(wrong);

    // Without a password file: PGPASSWORD, or ~/.pgpass.
    let config = std::fs::read_to_string(ws.path("station.toml"))
        .unwrap()
        .replace("database_password_file = \"secrets/db.password\"\n", "");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    outputs.push(
        ws.station_env("trace", &["batch", "status"], &[("PGPASSWORD", secret)])
            .expect(0),
    );
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:*:*:{}:{secret}\n", login("pw-st")),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    outputs.push(
        ws.station_env(
            "trace",
            &["batch", "status"],
            &[("HOME", home.path().to_str().unwrap())],
        )
        .expect(0),
    );
    let none = ws
        .station_env(
            "off",
            &["--json", "batch", "status"],
            &[("HOME", "/nonexistent")],
        )
        .expect(1);
    assert_eq!(none.json()["error"]["code"], "station::store::open");
    outputs.push(none);

    for run in &outputs {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the password appears: {run:?}"
        );
    }
}

// Issue 15: the server stops mid-batch: no unit is reported PASS that is not recorded, the line
// starts no new unit and says why (coded), and it resumes, recording what it held, once the
// server is back.
#[test]
fn a_line_holds_its_records_while_the_server_is_down_and_resumes() {
    let Some(cluster) = Cluster::private() else {
        return skip("a_line_holds_its_records_while_the_server_is_down_and_resumes");
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(factory(&cluster, &["out-st"]));
    let ws = station_ws(&cluster, &db, "out-st");
    // Through the ROM loader at 115200 baud a unit spends about two seconds flashing: the
    // server is stopped while one is at it.
    let config = std::fs::read_to_string(ws.path("station.toml"))
        .unwrap()
        .replace("stub = true", "stub = false")
        .replace("baud = 921600", "baud = 115200");
    std::fs::write(ws.path("station.toml"), config).unwrap();
    ws.station(&["batch", "open", "WO-O", "--target", "6"])
        .expect(0);
    let _line = SimLine::start(SimOptions {
        count: 10,
        ports: Some(2),
        link_dir: Some(ws.path("ports")),
        leave_after_idle: Some(Duration::from_millis(1000)),
        swap_gap: Duration::from_millis(200),
        wire_time: true,
        ..SimOptions::default()
    })
    .unwrap();
    let mut daemon = Daemon::start(&ws, true);
    daemon.wait_for("a unit recorded, then another flashing", |events| {
        let first = events
            .iter()
            .position(|e| e["event"] == "unit" && e["report"]["outcome"] == "provisioned");
        first.is_some_and(|i| {
            events[i..]
                .iter()
                .any(|e| e["event"] == "stage" && e["stage"] == "flash")
        })
    });
    cluster.halt();
    daemon.wait_for("the outage reported and a record held", |events| {
        events.iter().any(|e| e["event"] == "database_offline")
            && events.iter().any(|e| e["event"] == "record_held")
    });
    std::thread::sleep(Duration::from_secs(2));
    cluster.resume();
    assert_eq!(daemon.wait(), 0, "{:#?}", daemon.lines());

    let events = daemon.events();
    let offline = events
        .iter()
        .position(|e| e["event"] == "database_offline")
        .unwrap();
    assert_eq!(events[offline]["error_code"], "station::store::unreachable");
    let back = events
        .iter()
        .position(|e| e["event"] == "database_back")
        .unwrap();
    assert!(back > offline);
    assert!(
        events[back]["seconds"].as_f64().unwrap() >= 2.0,
        "{:#}",
        events[back]
    );
    // A port that said it waits for the database starts nothing until it is back.
    for (i, event) in events.iter().enumerate().take(back).skip(offline) {
        if event["event"] == "waiting" && event["reason"] == "database_offline" {
            let port = &event["port"];
            assert!(
                !events[i..back].iter().any(|e| e["event"] == "stage"
                    && e["stage"] == "connect"
                    && e["port"] == *port),
                "{port} started a unit while the database was down"
            );
        }
    }
    // A held unit is reported once recorded, and not as PASS unless its record says so.
    for (i, held) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["event"] == "record_held")
    {
        let report = events[i..]
            .iter()
            .find(|e| e["event"] == "unit" && e["report"]["port"] == held["port"])
            .map(|e| &e["report"])
            .unwrap_or_else(|| panic!("no report after {held:#}"));
        assert_eq!(report["mac"], held["mac"]);
        if report["outcome"] == "failed" {
            assert_eq!(
                report["error_code"], "station::store::unreachable",
                "{report:#}"
            );
        }
    }
    // Every unit the line reported was recorded as reported; the batch reached its target.
    let units = daemon.units();
    let passed: Vec<&str> = units
        .iter()
        .filter(|u| u["outcome"] == "provisioned")
        .map(|u| u["mac"].as_str().unwrap())
        .collect();
    assert_eq!(passed.len(), 6, "{units:#?}");
    let status = ws
        .station(&["--json", "batch", "status", "WO-O"])
        .expect(0)
        .json();
    assert_eq!(
        (
            status["provisioned"].as_i64(),
            status["in_progress"].as_i64()
        ),
        (Some(6), Some(0))
    );
    assert_eq!(
        status["attempts"].as_i64().unwrap(),
        units.len() as i64,
        "every attempt reported was recorded, and no other"
    );
    let manifest = ws
        .station(&["export", "manifest", "--batch", "WO-O"])
        .expect(0);
    for mac in &passed {
        assert!(
            manifest.stdout.contains(mac),
            "{mac} missing from the manifest"
        );
    }
    ws.station(&["audit", "verify"]).expect(0);
}

// Issues 15 and 16: `station serve` on a PostgreSQL database that a line filled through the
// binary: the line page, a unit found by MAC, the security headers, and a manifest download
// byte for byte what `station export manifest` writes from the same database, a revocation
// made with `station unit revoke` included.
#[test]
fn serve_shows_a_postgres_database_and_downloads_its_manifest() {
    use crate::dashboard::{FAULT, FAULT_CODE, Served, assert_security_headers, get};
    let Some(cluster) = Cluster::shared() else {
        return skip("serve_shows_a_postgres_database_and_downloads_its_manifest");
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(factory(cluster, &["serve-st"]));
    let ws = station_ws(cluster, &db, "serve-st");
    ws.station(&["batch", "open", "WO-PG", "--target", "3"])
        .expect(0);
    // Four devices, the second pulled out mid-flash: three pass, one failed attempt.
    let line = crate::dashboard::sim(&ws, 4, 2, &[FAULT]);
    ws.station_logging("warn", &["--json", "run"]).expect(0);
    let passed = line.devices()[0].mac().to_string();
    let failed = line.devices()[1].mac().to_string();
    let revoked = line.devices()[2].mac().to_string();
    let revocation = ws
        .station(&[
            "--json",
            "unit",
            "revoke",
            &revoked,
            "--reason",
            "returned: cracked case",
        ])
        .expect(0)
        .json();
    assert_eq!(revocation["revoked"], true, "{revocation}");
    let revoked_at = revocation["revoked_at"].as_str().unwrap().to_owned();

    let served = Served::start(&ws, &["serve", "--listen", "127.0.0.1:0"]);
    let addr = served.addr;
    let page = get(addr, "/");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_security_headers(&page);
    let html = page.text();
    assert!(html.contains("Station serve-st"), "{html}");
    assert!(html.contains(r#"data-state="PASS""#), "{html}");
    assert!(html.contains("WO-PG"), "the open batch: {html}");

    let unit = get(addr, &format!("/unit?q={passed}"));
    assert_eq!(unit.status, 200, "{}", unit.text());
    let html = unit.text();
    assert!(html.contains(&passed), "{html}");
    assert!(
        html.contains(&format!("sensor-{}", passed.replace(':', ""))),
        "its registration ID: {html}"
    );
    assert!(html.contains("provisioned"), "{html}");
    assert!(html.contains("unit.provisioned"), "its audit entry: {html}");
    let unit = get(addr, &format!("/unit?q={failed}"));
    assert_eq!(unit.status, 200);
    assert!(unit.text().contains(FAULT_CODE), "{}", unit.text());
    let unit = get(addr, &format!("/unit?q={revoked}"));
    assert!(unit.text().contains("unit.revoked"), "{}", unit.text());
    assert_eq!(get(addr, "/unit?q=24:0a:c4:99:99:99").status, 404);
    let batch = get(addr, "/batch?name=WO-PG");
    assert_eq!(batch.status, 200);
    assert!(
        batch
            .text()
            .contains(&format!(r#"data-code="{FAULT_CODE}""#)),
        "{}",
        batch.text()
    );
    let audit = get(addr, "/audit");
    assert!(audit.text().contains("intact"), "{}", audit.text());

    for format in ["csv", "json"] {
        let download = get(addr, &format!("/qa/manifest?batch=WO-PG&format={format}"));
        assert_eq!(download.status, 200, "{}", download.text());
        let exported = ws
            .station(&["export", "manifest", "--batch", "WO-PG", "--format", format])
            .expect(0);
        assert_eq!(download.body, exported.stdout.as_bytes(), "{format}");
    }
    let csv = get(addr, "/qa/manifest?batch=WO-PG&format=csv").text();
    assert_eq!(csv.lines().count(), 4, "a header and 3 units: {csv}");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let revocations: BTreeMap<String, String> = reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            (
                row[column("mac")].to_owned(),
                row[column("revoked_at")].to_owned(),
            )
        })
        .collect();
    assert_eq!(revocations[&revoked], revoked_at);
    assert_eq!(revocations[&passed], "");
    assert!(!revocations.contains_key(&failed) || revocations[&failed].is_empty());
    drop(served);
    ws.station(&["audit", "verify"]).expect(0);
}
