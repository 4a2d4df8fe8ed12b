//! The store's behaviour, written once and run against both backends: a real SQLite file and a
//! real PostgreSQL server (a throwaway cluster, `tests/util/postgres.rs`; skipped, saying so,
//! when none is installed, unless `STATION_REQUIRE_POSTGRES=1`). Tests of one backend's own
//! traits (SQLite's WAL and file mode, PostgreSQL's per-station chains) say so in their name.

use serde_json::json;

use super::*;
use crate::clock::now;
use crate::record::{AttemptOutcome, DpsStatus, ErrorCode, INTERRUPTED, UnitState};

#[path = "../../tests/util/postgres.rs"]
pub(super) mod postgres_cluster;

/// A store on a fresh database of one backend, and how to reach that database again.
pub(super) struct TestDb {
    /// The store.
    pub(super) store: Store,
    /// Where it is.
    database: Database,
    /// The SQLite file's directory, kept while the test runs.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database's name.
    postgres: Option<String>,
}

impl std::ops::Deref for TestDb {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl TestDb {
    /// A new SQLite file.
    pub(super) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::Sqlite(dir.path().join("station.db"));
        TestDb {
            store: Store::connect(&database).await.unwrap(),
            database,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A new database on the test binary's PostgreSQL cluster; `None` (the test is skipped)
    /// without a server.
    pub(super) async fn postgres(test: &str) -> Option<TestDb> {
        let Some(cluster) = postgres_cluster::Cluster::shared() else {
            postgres_cluster::skip(test);
            return None;
        };
        let name = cluster.database().await;
        let database = Database::Postgres {
            url: cluster.url_of(&name),
            password_file: Some(cluster.password_file.clone()),
        };
        Some(TestDb {
            store: Store::connect(&database).await.unwrap(),
            database,
            _dir: None,
            postgres: Some(name),
        })
    }

    /// Whether this is the PostgreSQL backend.
    pub(super) fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Another store on the same database (another station process).
    pub(super) async fn reopen(&self) -> Store {
        Store::connect(&self.database).await.unwrap()
    }

    /// Runs SQL directly, as the database's owner: `sqlite` on SQLite, `postgres` on
    /// PostgreSQL (what someone with the file, or the server's superuser, could do).
    pub(super) async fn exec(&self, sqlite: &str, postgres: &str) -> Result<(), sqlx::Error> {
        match (&self.postgres, self.store.sqlite_pool()) {
            (None, Some(pool)) => sqlx::raw_sql(sqlx::AssertSqlSafe(sqlite.to_owned()))
                .execute(pool)
                .await
                .map(drop),
            (Some(_), _) => sqlx::raw_sql(sqlx::AssertSqlSafe(postgres.to_owned()))
                .execute(self.store.postgres_pool().unwrap())
                .await
                .map(drop),
            (None, None) => unreachable!("a SQLite store has a SQLite pool"),
        }
    }
}

/// Generates, for each async test function `name(db: TestDb)`, a test of that name in module
/// `sqlite` and one in module `postgres`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::TestDb::sqlite().await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(db) = super::TestDb::postgres(stringify!($name)).await {
                        super::$name(db).await;
                    }
                }
            )+
        }
    };
}
pub(super) use on_both_backends;

on_both_backends!(
    migrates_to_current_and_says_so,
    batch_lifecycle_is_audited,
    a_batch_name_is_taken_once_across_stations,
    attempts_set_unit_state_and_counts,
    audit_log_refuses_update_and_delete,
    verify_names_the_first_entry_edited_behind_the_triggers_back,
    verify_notices_a_log_cut_short,
    concurrent_writers_keep_every_chain,
    reflash_with_another_registration_id_clears_dps_results,
    an_open_attempt_is_closed_by_its_record,
    attempts_left_open_by_a_dead_process_become_interrupted,
    an_attempt_records_its_dps_outcome_and_a_later_verification_is_audited,
    the_same_mac_recorded_twice_at_once_passes_once,
    a_failure_recorded_after_another_stations_pass_leaves_its_unit_alone,
    a_batch_never_records_more_than_its_target,
    claims_hold_slots_until_their_attempt_ends_or_lapses,
    batch_status_counts_each_station,
    every_stations_chain_is_verified_or_one,
    a_unit_keeps_the_history_of_its_certificates,
    each_station_checkpoints_its_own_chain,
    an_attempt_keeps_its_boot_log_and_its_hash_is_audited,
    the_dashboard_reads_ports_batches_units_and_minutes,
    a_revocation_is_audited_shown_in_the_manifest_and_lifted_by_a_restore,
);

/// Sets up the unit facts of `record` as the pipeline's identify would: the attempt that last
/// provisioned its MAC, as the store says now.
pub(super) async fn identified(store: &Store, mut record: AttemptRecord) -> AttemptRecord {
    if let Some(unit) = record.unit.as_mut() {
        unit.seen_provisioning = store
            .unit_sighting(&unit.mac)
            .await
            .unwrap()
            .last_provisioning;
    }
    record
}

/// Records `record` as the pipeline would, identified just before.
pub(super) async fn record(store: &Store, record: AttemptRecord) -> Recorded {
    store
        .record_attempt(&identified(store, record).await)
        .await
        .unwrap()
}

pub(super) fn facts(mac: &str) -> UnitFacts {
    UnitFacts {
        mac: mac.parse().unwrap(),
        registration_id: format!("sensor-{}", mac.replace(':', "")).parse().unwrap(),
        chip: "esp32".into(),
        revision: "v3.0".into(),
        flash_size: 4 << 20,
        attestation: crate::record::Attestation::SymmetricKey,
        key_id: "sha256:0011223344556677".parse().unwrap(),
        secondary_key_id: None,
        image_sha256: Some("ab".repeat(32)),
        certificate: None,
        dps: None,
        enrollment: crate::record::EnrollmentKind::Group,
        hub: None,
        seen_provisioning: None,
    }
}

fn attempt(batch: &Batch, mac: Option<&str>, failure: Option<Failure>) -> AttemptRecord {
    AttemptRecord {
        attempt_id: None,
        batch: batch.clone(),
        station_id: "st1".into(),
        operator: "ana".into(),
        port: "/dev/ttyUSB0".into(),
        started_at: now(),
        finished_at: now(),
        unit: mac.map(facts),
        failure,
        reprovision: false,
        timings: json!({ "flash": 0.5 }),
        boot_log: None,
    }
}

fn failure(stage: &str, wrote: bool) -> Failure {
    Failure {
        stage: stage.parse().unwrap(),
        code: format!("station::device::{stage}").parse().unwrap(),
        message: "it broke".into(),
        wrote,
    }
}

// ---- SQLite's own ------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_open_sets_wal_and_foreign_keys_and_migrates() {
    let db = TestDb::sqlite().await;
    let pool = db.sqlite_pool().unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        tables,
        ["attempts", "audit_log", "batches", "certificates", "units"]
    );
}

// Issue 15: the SQLite migrations moved to migrations/sqlite/; a file made before (this dump of
// a `station demo` database, made by commit a6924c5) still opens, migrates and verifies; so does
// that file as main's station left it after issue 13 (migrated up to 20261130000000 from main's
// files, which are byte for byte the ones in migrations/sqlite/, so sqlx's checksums agree).
#[tokio::test]
async fn sqlite_file_made_before_the_migrations_moved_still_opens() {
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    for upto in [None, Some(20261130000000_i64)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let dump = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/sqlite/station-before-issue-15.sql"
            ))
            .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
                .execute(&pool)
                .await
                .unwrap();
            if let Some(upto) = upto {
                // The migrations main had then, from their files, as main's station ran them.
                let older = dir.path().join("older");
                std::fs::create_dir(&older).unwrap();
                for entry in std::fs::read_dir(migrations).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name().into_string().unwrap();
                    let version: i64 = name[..14].parse().unwrap();
                    if version <= upto {
                        std::fs::copy(entry.path(), older.join(&name)).unwrap();
                    }
                }
                sqlx::migrate::Migrator::new(older.as_path())
                    .await
                    .unwrap()
                    .run(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        let database = Database::Sqlite(path.clone());
        let before = Store::inspect(&database).await.unwrap().unwrap();
        let info = before.describe().await.unwrap();
        let (applied, pending): (usize, &[i64]) = match upto {
            None => (
                4,
                &[
                    20261126000000,
                    20261130000000,
                    20261201000000,
                    20261202000000,
                    20261203000000,
                    20261204000000,
                    20261205000000,
                ],
            ),
            Some(_) => (
                6,
                &[
                    20261201000000,
                    20261202000000,
                    20261203000000,
                    20261204000000,
                    20261205000000,
                ],
            ),
        };
        assert_eq!((info.backend, info.migrations.applied), ("sqlite", applied));
        assert_eq!(info.migrations.pending, pending);
        assert!(info.migrations.unknown.is_empty() && info.migrations.damaged.is_empty());
        before.close().await;

        let store = Store::connect(&database).await.unwrap();
        assert!(store.describe().await.unwrap().migrations.current());
        let report = store.verify_audit().await.unwrap();
        assert_eq!((report.entries, report.first_break), (8, None));
        let batch = store.batches().await.unwrap().remove(0);
        assert_eq!((batch.provisioned, batch.batch.target), (3, 3));
        let units = store.units_of(batch.batch.id).await.unwrap();
        assert_eq!(units.len(), 3);
        assert_eq!(units[0].dps_status, DpsStatus::Assigned);
        // It keeps working: its chain goes on from the old head.
        store
            .append_audit("demo-st1", "ana", "test.after", "x", json!({}))
            .await
            .unwrap();
        let report = store.verify_audit().await.unwrap();
        assert_eq!((report.entries, report.first_break), (9, None));
        store.close().await;
    }
}

// ---- Both backends --------------------------------------------------------------------------

async fn migrates_to_current_and_says_so(db: TestDb) {
    let info = db.describe().await.unwrap();
    assert!(info.migrations.current(), "{}", info.migrations);
    assert!(info.migrations.known >= 1);
    assert_eq!(info.migrations.applied, info.migrations.known);
    let (backend, version) = if db.is_postgres() {
        ("postgresql", "PostgreSQL ")
    } else {
        ("sqlite", "SQLite 3.")
    };
    assert_eq!(info.backend, backend);
    assert!(info.version.starts_with(version), "{}", info.version);
    assert!(
        info.migrations
            .to_string()
            .starts_with("migrations current")
    );
}

async fn batch_lifecycle_is_audited(db: TestDb) {
    let store = &db.store;
    let batch = store.open_batch("WO-1", 100, "ana", "st1").await.unwrap();
    assert_eq!(
        (
            batch.name.as_str(),
            batch.target,
            batch.closed_at.as_deref()
        ),
        ("WO-1", 100, None)
    );
    assert_eq!(
        store.open_batch_of("st1").await.unwrap().unwrap().id,
        batch.id
    );

    let err = store
        .open_batch("WO-2", 10, "ana", "st1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BatchStillOpen { ref name, .. } if name == "WO-1"),
        "{err}"
    );
    // Another station may open its own batch at the same time.
    store.open_batch("WO-B", 10, "bo", "st2").await.unwrap();

    let status = store.close_batch(None, "ana", "st1").await.unwrap();
    assert!(status.batch.closed_at.is_some());
    assert_eq!(status.batch.closed_by.as_deref(), Some("ana"));
    let err = store
        .close_batch(Some("WO-1"), "ana", "st1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BatchClosed { .. }));
    let err = store.close_batch(None, "ana", "st1").await.unwrap_err();
    assert!(matches!(err, StoreError::NoOpenBatch { .. }));
    let err = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap_err();
    assert!(matches!(err, StoreError::BatchExists { .. }));
    assert!(err.is_usage_error());

    let actions: Vec<(String, String)> = store
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.subject))
        .collect();
    assert_eq!(
        actions,
        [
            ("batch.open".to_owned(), "WO-1".to_owned()),
            ("batch.open".to_owned(), "WO-B".to_owned()),
            ("batch.close".to_owned(), "WO-1".to_owned())
        ]
    );
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
}

async fn a_batch_name_is_taken_once_across_stations(db: TestDb) {
    // Eight stations open the same work order at once: one gets it, the others are told it
    // exists; each may then run it.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = db.reopen().await;
        tasks.push(tokio::spawn(async move {
            let opened = store
                .open_batch("WO-1234", 100, "ana", &format!("st{i}"))
                .await;
            store.close().await;
            opened
        }));
    }
    let mut opened = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(batch) => {
                opened += 1;
                assert_eq!(batch.name, "WO-1234");
            }
            Err(e) => assert!(matches!(e, StoreError::BatchExists { .. }), "{e}"),
        }
    }
    assert_eq!(opened, 1);
    let batch = db.batch("WO-1234").await.unwrap();
    let by_other = AttemptRecord {
        station_id: "st-other".into(),
        ..attempt(&batch, Some("24:0a:c4:00:00:01"), None)
    };
    record(&db, by_other).await;
    let status = db.batch_status(batch).await.unwrap();
    assert_eq!(status.provisioned, 1);
    assert_eq!(status.stations[0].station_id, "st-other");
}

async fn attempts_set_unit_state_and_counts(db: TestDb) {
    let store = &db.store;
    let batch = store.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    // Failed before the MAC was known: an attempt without a unit.
    let r = record(
        store,
        attempt(&batch, None, Some(failure("connect", false))),
    )
    .await;
    assert!(r.unit.is_none());
    // Failed mid-write: the unit is failed at flash.
    let r = record(
        store,
        attempt(
            &batch,
            Some("24:0a:c4:00:00:01"),
            Some(failure("flash", true)),
        ),
    )
    .await;
    let unit = r.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("failed", Some("flash"))
    );
    assert_eq!(unit.provisioned_at, None);
    // Retried and verified: provisioned.
    let r = record(store, attempt(&batch, Some("24:0a:c4:00:00:01"), None)).await;
    let unit = r.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("provisioned", None)
    );
    assert!(unit.provisioned_at.is_some());
    assert_eq!(r.conflict, None);
    // A refusal that wrote nothing leaves a provisioned unit provisioned.
    let r = record(
        store,
        attempt(
            &batch,
            Some("24:0a:c4:00:00:01"),
            Some(failure("identify", false)),
        ),
    )
    .await;
    assert_eq!(r.unit.unwrap().state, UnitState::Provisioned);
    record(store, attempt(&batch, Some("24:0a:c4:00:00:02"), None)).await;

    let status = store.batch_status(batch.clone()).await.unwrap();
    assert_eq!(
        (
            status.provisioned,
            status.failed,
            status.attempts,
            status.failed_attempts
        ),
        (2, 0, 5, 3)
    );
    let attempts = store.attempts_of(batch.id).await.unwrap();
    assert_eq!(attempts[1].stage, Some(Stage::Flash));
    assert_eq!(
        attempts[1].error_code.as_ref().map(ErrorCode::as_str),
        Some("station::device::flash")
    );
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.audit_seq).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(4), Some(5), Some(6)]
    );
    assert_eq!(entries[2].action, "unit.failed");
    assert!(
        entries[2].details.contains("\"stage\":\"flash\""),
        "{}",
        entries[2].details
    );
    assert!(
        entries[2]
            .details
            .contains("\"key_id\":\"sha256:0011223344556677\"")
    );
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
}

async fn audit_log_refuses_update_and_delete(db: TestDb) {
    db.open_batch("WO-1", 1, "ana", "st1").await.unwrap();
    for statement in [
        "UPDATE audit_log SET operator = 'mallory'",
        "DELETE FROM audit_log",
    ] {
        let err = db.exec(statement, statement).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    if db.is_postgres() {
        let err = db.exec("", "TRUNCATE audit_log").await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(db.audit_entries().await.unwrap()[0].operator, "ana");
}

async fn verify_names_the_first_entry_edited_behind_the_triggers_back(db: TestDb) {
    let batch = db.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    for i in 1..=3 {
        record(
            &db,
            attempt(&batch, Some(&format!("24:0a:c4:00:00:0{i}")), None),
        )
        .await;
    }
    let edit = "UPDATE audit_log SET details = replace(details, 'sha256:0011223344556677', 'sha256:ffffffffffffffff') WHERE seq = 3";
    db.exec(
        &format!("DROP TRIGGER audit_log_refuses_update; {edit}"),
        &format!("ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuses_update; {edit}"),
    )
    .await
    .unwrap();
    let report = db.verify_audit().await.unwrap();
    let broken = report.first_break.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("edited"), "{}", broken.problem);
}

async fn verify_notices_a_log_cut_short(db: TestDb) {
    let batch = db.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    record(&db, attempt(&batch, Some("24:0a:c4:00:00:01"), None)).await;
    record(&db, attempt(&batch, Some("24:0a:c4:00:00:02"), None)).await;
    let cut = "DELETE FROM audit_log WHERE seq = 3";
    db.exec(
        &format!("DROP TRIGGER audit_log_refuses_delete; {cut}"),
        &format!("ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuses_delete; {cut}"),
    )
    .await
    .unwrap();
    let broken = db.verify_audit().await.unwrap().first_break.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("cut short"), "{}", broken.problem);
}

async fn concurrent_writers_keep_every_chain(db: TestDb) {
    let other = db.reopen().await;
    let batch = db.open_batch("WO-1", 80, "ana", "st1").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..80u32 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        // Two stations, each with two processes' worth of writers.
        let station = if i % 4 < 2 { "st1" } else { "st2" };
        let record = AttemptRecord {
            station_id: station.into(),
            ..attempt(&batch, Some(&format!("24:0a:c4:00:01:{i:02x}")), None)
        };
        tasks.push(tokio::spawn(async move {
            store.record_attempt(&record).await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().conflict, None);
    }
    let reports = db.verify_audit_chains(None).await.unwrap();
    assert!(
        reports.iter().all(|r| r.first_break.is_none()),
        "{reports:?}"
    );
    assert_eq!(reports.iter().map(|r| r.entries).sum::<i64>(), 81);
    assert_eq!(db.batch_status(batch).await.unwrap().provisioned, 80);
}

async fn reflash_with_another_registration_id_clears_dps_results(db: TestDb) {
    let batch = db.open_batch("WO-1", 1, "ana", "st1").await.unwrap();
    record(&db, attempt(&batch, Some("24:0a:c4:00:00:01"), None)).await;
    let assign =
        "UPDATE units SET dps_status = 'assigned', assigned_hub = 'hub1', device_id = 'd1'";
    db.exec(assign, assign).await.unwrap();
    // Same identity: DPS results stay.
    let unit = record(&db, attempt(&batch, Some("24:0a:c4:00:00:01"), None))
        .await
        .unit
        .unwrap();
    assert_eq!(
        (unit.dps_status.as_str(), unit.assigned_hub.as_deref()),
        ("assigned", Some("hub1"))
    );
    // New registration ID: they no longer describe this device.
    let mut again = attempt(&batch, Some("24:0a:c4:00:00:01"), None);
    if let Some(unit) = again.unit.as_mut() {
        unit.registration_id = "other-240ac4000001".parse().unwrap();
    }
    let unit = record(&db, again).await.unit.unwrap();
    assert_eq!(
        (unit.dps_status.as_str(), unit.assigned_hub.as_deref()),
        ("not-requested", None)
    );
}

fn start_of(batch: &Batch) -> AttemptStart {
    AttemptStart {
        batch_id: batch.id,
        station_id: "st1".into(),
        operator: "ana".into(),
        port: "/dev/ttyUSB3".into(),
        started_at: now(),
    }
}

async fn an_open_attempt_is_closed_by_its_record(db: TestDb) {
    let batch = db.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    let id = db.begin_attempt(&start_of(&batch)).await.unwrap();
    assert_eq!(db.batch_status(batch.clone()).await.unwrap().in_progress, 1);
    let mut open = attempt(&batch, Some("24:0a:c4:00:00:01"), None);
    open.attempt_id = Some(id);
    let recorded = record(&db, open).await;
    assert_eq!(recorded.attempt_id, id, "the open row is the attempt's row");
    let status = db.batch_status(batch.clone()).await.unwrap();
    assert_eq!((status.attempts, status.in_progress), (1, 0));
    assert!(
        db.recover_interrupted("st1", "ana")
            .await
            .unwrap()
            .is_empty()
    );
}

// Issue 5: after a crash, nothing unverified shows as provisioned.
async fn attempts_left_open_by_a_dead_process_become_interrupted(db: TestDb) {
    let batch = db.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    record(&db, attempt(&batch, Some("24:0a:c4:00:00:02"), None)).await;
    // A re-flash of that unit dies mid-write; another attempt dies while connecting.
    let flashing = db.begin_attempt(&start_of(&batch)).await.unwrap();
    db.attempt_reached(flashing, Stage::Flash, "24:0a:c4:00:00:02".parse().ok())
        .await
        .unwrap();
    let connecting = db.begin_attempt(&start_of(&batch)).await.unwrap();
    // A row of a process that still runs (pid 1, written before stamps were kept) is left
    // alone.
    let alive = db.begin_attempt(&start_of(&batch)).await.unwrap();
    let pid1 = format!(
        "UPDATE attempts SET pid = 1, pid_boot_id = NULL, pid_started = NULL WHERE id = {alive}"
    );
    db.exec(&pid1, &pid1).await.unwrap();
    // Issue 13: pid 1 runs, but not the process that opened this row (it started at another
    // tick): a reused pid does not keep the attempt open.
    let reused = db.begin_attempt(&start_of(&batch)).await.unwrap();
    let other_tick = format!("UPDATE attempts SET pid = 1, pid_started = -1 WHERE id = {reused}");
    db.exec(&other_tick, &other_tick).await.unwrap();

    // This process's own ID stands for a dead process that had it before.
    let closed = db.recover_interrupted("st1", "ops").await.unwrap();
    let ids: Vec<i64> = closed.iter().map(|a| a.id).collect();
    assert_eq!(ids, [flashing, connecting, reused]);
    assert!(
        closed
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Interrupted
                && a.error_code.as_ref().map(ErrorCode::as_str) == Some(INTERRUPTED)
                && a.audit_seq.is_some())
    );
    let unit = db
        .unit_by_mac(&"24:0a:c4:00:00:02".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        unit.state,
        UnitState::Failed,
        "its flash may be half written"
    );
    assert_eq!(unit.failed_stage, Some(Stage::Flash));
    let status = db.batch_status(batch).await.unwrap();
    assert_eq!(
        (status.provisioned, status.interrupted, status.in_progress),
        (0, 3, 1)
    );
    assert_eq!(status.failures[0].error_code.as_str(), INTERRUPTED);
    assert_eq!(status.failures[0].count, 3);
    let report = db.verify_audit().await.unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
    let actions: Vec<String> = db
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "unit.interrupted").count(),
        3
    );
}

fn dps(status: &str, hub: Option<&str>, error: Option<&str>) -> UnitDps {
    UnitDps {
        status: status.parse::<DpsStatus>().unwrap(),
        assigned_hub: hub.map(Into::into),
        device_id: hub.map(|_| "sensor-240ac4000002".into()),
        substatus: hub.map(|_| "initialAssignment".into()),
        error: error.map(Into::into),
    }
}

async fn an_attempt_records_its_dps_outcome_and_a_later_verification_is_audited(db: TestDb) {
    let batch = db.open_batch("WO-1", 2, "ana", "st1").await.unwrap();
    let mut pending = attempt(&batch, Some("24:0a:c4:00:00:02"), None);
    pending.unit.as_mut().unwrap().dps = Some(dps(
        "pending",
        None,
        Some("station::dps::unreachable: cannot reach DPS"),
    ));
    let recorded = record(&db, pending).await;
    let unit = recorded.unit.unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.dps_status.as_str()),
        ("provisioned", "pending")
    );
    let entry = db.audit_entries().await.unwrap().pop().unwrap();
    let details: serde_json::Value = serde_json::from_str(&entry.details).unwrap();
    assert_eq!(details["dps"]["status"], "pending");

    // A failed unit is never retried; only provisioned pending ones are.
    let mut failed = attempt(
        &batch,
        Some("24:0a:c4:00:00:03"),
        Some(failure("dps", true)),
    );
    failed.unit.as_mut().unwrap().dps = Some(dps("pending", None, None));
    record(&db, failed).await;
    let pending = db.pending_dps_units().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, unit.id);

    let assigned = db
        .record_dps(unit.id, &dps("assigned", Some("hub1"), None), "st1", "bob")
        .await
        .unwrap();
    assert_eq!(
        (
            assigned.dps_status.as_str(),
            assigned.assigned_hub.as_deref(),
            assigned.dps_substatus.as_deref(),
            assigned.dps_error.as_deref()
        ),
        ("assigned", Some("hub1"), Some("initialAssignment"), None)
    );
    assert!(db.pending_dps_units().await.unwrap().is_empty());
    let entry = db.audit_entries().await.unwrap().pop().unwrap();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.subject.as_str(),
            entry.operator.as_str()
        ),
        ("unit.dps_verified", "24:0a:c4:00:00:02", "bob")
    );
    assert_eq!(db.verify_audit().await.unwrap().first_break, None);
    assert_eq!(
        db.unit_by_registration_id(&unit.registration_id)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(unit.id)
    );
}

// Issue 15: two stations recording the same MAC at the same moment: exactly one wins, the
// other records a failed attempt with a coded error, and the winner's row stands.
async fn the_same_mac_recorded_twice_at_once_passes_once(db: TestDb) {
    let batch = db.open_batch("WO-1", 10, "ana", "st1").await.unwrap();
    let mac = "24:0a:c4:00:00:07";
    for round in 0..5 {
        // Both identified the unit before either recorded it.
        let seen = identified(&db, attempt(&batch, Some(mac), None)).await;
        let mut tasks = Vec::new();
        for station in ["st1", "st2"] {
            let store = db.reopen().await;
            let record = AttemptRecord {
                station_id: station.into(),
                port: format!("/dev/tty{station}"),
                ..seen.clone()
            };
            tasks.push(tokio::spawn(async move {
                let recorded = store.record_attempt(&record).await.unwrap();
                store.close().await;
                (record.station_id, recorded)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let winners: Vec<&(String, Recorded)> = results
            .iter()
            .filter(|(_, r)| r.conflict.is_none())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (winner, _) = winners[0];
        let (loser, lost) = results.iter().find(|(_, r)| r.conflict.is_some()).unwrap();
        let Some(Conflict::DuplicateUnit { station_id, .. }) = &lost.conflict else {
            panic!("round {round}: {lost:?}");
        };
        assert_eq!(station_id, winner);
        let unit = db
            .unit_by_mac(&mac.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (unit.state, unit.station_id.as_str()),
            (UnitState::Provisioned, winner.as_str())
        );
        let attempts = db.attempts_of(batch.id).await.unwrap();
        let lost_row = attempts.iter().find(|a| a.id == lost.attempt_id).unwrap();
        assert_eq!(
            (
                lost_row.outcome,
                lost_row.stage,
                lost_row.error_code.as_ref().map(ErrorCode::as_str),
                lost_row.station_id.as_str()
            ),
            (
                AttemptOutcome::Failed,
                Some(Stage::Record),
                Some("station::store::duplicate_unit"),
                loser.as_str()
            )
        );
    }
    let status = db.batch_status(batch).await.unwrap();
    assert_eq!(
        (status.provisioned, status.attempts, status.failed_attempts),
        (1, 10, 5)
    );
    let failed: Vec<AuditEntry> = db
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "unit.failed")
        .collect();
    assert_eq!(failed.len(), 5);
    assert!(failed[0].details.contains("station::store::duplicate_unit"));
    assert!(db.verify_audit().await.unwrap().first_break.is_none());
}

async fn a_failure_recorded_after_another_stations_pass_leaves_its_unit_alone(db: TestDb) {
    let batch = db.open_batch("WO-1", 10, "ana", "st1").await.unwrap();
    let mac = "24:0a:c4:00:00:08";
    let seen = identified(&db, attempt(&batch, Some(mac), None)).await;
    let pass = AttemptRecord {
        station_id: "st2".into(),
        ..seen.clone()
    };
    assert_eq!(db.record_attempt(&pass).await.unwrap().conflict, None);
    // st1's attempt on the same MAC then fails mid-write: its failure is recorded, but the
    // unit's row is st2's verified record.
    let fail = AttemptRecord {
        failure: Some(failure("flash", true)),
        ..seen
    };
    let recorded = db.record_attempt(&fail).await.unwrap();
    assert_eq!(recorded.conflict, None);
    let unit = recorded.unit.unwrap();
    assert_eq!(
        (unit.state, unit.station_id.as_str()),
        (UnitState::Provisioned, "st2")
    );
}

// Issue 15: however the stations race, a batch never ends with more than its target.
async fn a_batch_never_records_more_than_its_target(db: TestDb) {
    let batch = db.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..12u32 {
        let store = db.reopen().await;
        let record = AttemptRecord {
            station_id: format!("st{}", i % 4),
            ..attempt(&batch, Some(&format!("24:0a:c4:00:02:{i:02x}")), None)
        };
        tasks.push(tokio::spawn(async move {
            let recorded = store.record_attempt(&record).await.unwrap();
            store.close().await;
            recorded
        }));
    }
    let mut full = 0;
    for task in tasks {
        let recorded = task.await.unwrap();
        match &recorded.conflict {
            None => assert_eq!(recorded.unit.unwrap().state, UnitState::Provisioned),
            Some(Conflict::BatchFull { target, .. }) => {
                full += 1;
                assert_eq!(*target, 3);
                assert_eq!(recorded.unit.unwrap().state, UnitState::Failed);
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(full, 9);
    let status = db.batch_status(batch.clone()).await.unwrap();
    assert_eq!((status.provisioned, status.failed), (3, 9));
    assert_eq!(
        status.failures[0].error_code.as_str(),
        "station::store::batch_full"
    );
    // A unit already counted is re-flashed in a full batch without taking a slot.
    let counted = db.units_of(batch.id).await.unwrap();
    let counted = counted
        .iter()
        .find(|u| u.state == UnitState::Provisioned)
        .unwrap();
    let again = record(&db, attempt(&batch, Some(&counted.mac.to_string()), None)).await;
    assert_eq!(again.conflict, None);
}

async fn claims_hold_slots_until_their_attempt_ends_or_lapses(db: TestDb) {
    let batch = db.open_batch("WO-1", 2, "ana", "st1").await.unwrap();
    let first = db.begin_attempt(&start_of(&batch)).await.unwrap();
    let second = db.begin_attempt(&start_of(&batch)).await.unwrap();
    let third = db.begin_attempt(&start_of(&batch)).await.unwrap();
    db.claim_slot(first, batch.id).await.unwrap();
    db.claim_slot(second, batch.id).await.unwrap();
    let err = db.claim_slot(third, batch.id).await.unwrap_err();
    assert!(
        matches!(err, StoreError::BatchFull { target: 2, .. }),
        "{err}"
    );
    assert_eq!(
        crate::record::ErrorCode::of(&err).as_str(),
        "station::store::batch_full"
    );
    // Another station sees both slots taken.
    let room = db.batch_room(batch.id, "st2").await.unwrap();
    assert_eq!((room.provisioned, room.claimed_elsewhere), (0, 2));
    assert_eq!(
        db.batch_room(batch.id, "st1")
            .await
            .unwrap()
            .claimed_elsewhere,
        0
    );

    // The first fails: its slot is free again.
    let mut failed = attempt(
        &batch,
        Some("24:0a:c4:00:03:01"),
        Some(failure("flash", true)),
    );
    failed.attempt_id = Some(first);
    record(&db, failed).await;
    db.claim_slot(third, batch.id).await.unwrap();
    // The second passes: its slot becomes a unit; the batch is full.
    let mut passed = attempt(&batch, Some("24:0a:c4:00:03:02"), None);
    passed.attempt_id = Some(second);
    record(&db, passed).await;
    let fourth = db.begin_attempt(&start_of(&batch)).await.unwrap();
    assert!(db.claim_slot(fourth, batch.id).await.is_err());
    // A claim its station stopped renewing (a machine that died) lapses.
    let lapse =
        format!("UPDATE attempts SET claim_until = '2020-01-01T00:00:00.000Z' WHERE id = {third}");
    db.exec(&lapse, &lapse).await.unwrap();
    db.claim_slot(fourth, batch.id).await.unwrap();
    // A closed batch gives no slot.
    db.close_batch(Some("WO-1"), "ana", "st1").await.unwrap();
    let fifth = db.begin_attempt(&start_of(&batch)).await.unwrap();
    let err = db.claim_slot(fifth, batch.id).await.unwrap_err();
    assert!(matches!(err, StoreError::BatchClosed { .. }), "{err}");
}

async fn batch_status_counts_each_station(db: TestDb) {
    let batch = db.open_batch("WO-1", 10, "ana", "st1").await.unwrap();
    let at = |minute: u32| format!("2026-11-25T08:{minute:02}:00.000Z");
    for (i, (station, minute)) in [("st1", 0), ("st2", 1), ("st1", 2), ("st2", 3), ("st1", 4)]
        .into_iter()
        .enumerate()
    {
        let mut one = attempt(&batch, Some(&format!("24:0a:c4:00:04:{i:02x}")), None);
        one.station_id = station.into();
        one.finished_at = at(minute);
        record(&db, one).await;
    }
    let mut failed = attempt(&batch, None, Some(failure("connect", false)));
    failed.station_id = "st2".into();
    record(&db, failed).await;
    db.begin_attempt(&AttemptStart {
        station_id: "st3".into(),
        ..start_of(&batch)
    })
    .await
    .unwrap();

    let status = db.batch_status(batch).await.unwrap();
    let shares: Vec<(&str, i64, i64, i64, i64)> = status
        .stations
        .iter()
        .map(|s| {
            (
                s.station_id.as_str(),
                s.provisioned,
                s.attempts,
                s.failed_attempts,
                s.in_progress,
            )
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("st1", 3, 3, 0, 0),
            ("st2", 2, 3, 1, 0),
            ("st3", 0, 1, 0, 1)
        ]
    );
    let st1 = &status.stations[0];
    assert_eq!(st1.first_provisioned_at.as_deref(), Some(at(0).as_str()));
    assert_eq!(st1.last_provisioned_at.as_deref(), Some(at(4).as_str()));
    // 3 units, 2 intervals in 4 minutes.
    assert_eq!(st1.units_per_minute, Some(0.5));
    // 2 units, 1 interval in 2 minutes; the batch: 5 units, 4 intervals in 4 minutes.
    assert_eq!(status.stations[1].units_per_minute, Some(0.5));
    assert_eq!(status.stations[2].units_per_minute, None);
    assert_eq!(status.units_per_minute, Some(1.0));
}

// Issue 15: on PostgreSQL each station appends to its own chain; SQLite keeps one for the file.
async fn every_stations_chain_is_verified_or_one(db: TestDb) {
    for (i, station) in ["st1", "st2", "st1", "st3", "st2", "st1"]
        .iter()
        .enumerate()
    {
        db.append_audit(station, "ana", "test.entry", &i.to_string(), json!({}))
            .await
            .unwrap();
    }
    let reports = db.verify_audit_chains(None).await.unwrap();
    let shape: Vec<(Option<&str>, i64)> = reports
        .iter()
        .map(|r| (r.station_id.as_deref(), r.entries))
        .collect();
    let entries = db.audit_entries().await.unwrap();
    if db.is_postgres() {
        assert_eq!(
            shape,
            [(Some("st1"), 3), (Some("st2"), 2), (Some("st3"), 1)]
        );
        // Seqs count within each station, and the log still lists entries as written.
        let seqs: Vec<(&str, i64)> = entries
            .iter()
            .map(|e| (e.station_id.as_str(), e.seq))
            .collect();
        assert_eq!(
            seqs,
            [
                ("st1", 1),
                ("st2", 1),
                ("st1", 2),
                ("st3", 1),
                ("st2", 2),
                ("st1", 3)
            ]
        );
        let one = db.verify_audit_chains(Some("st2")).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].head_hash, entries[4].hash);
        assert_eq!(
            db.audit_hash_prefix(&entries[4].hash[..16]).await.unwrap(),
            [(Some("st2".to_owned()), 2)]
        );
    } else {
        assert_eq!(shape, [(None, 6)]);
        assert_eq!(
            db.verify_audit_chains(Some("st2")).await.unwrap()[0].entries,
            6
        );
        assert_eq!(
            db.audit_hash_prefix(&entries[4].hash[..16]).await.unwrap(),
            [(None, 5)]
        );
    }
    let err = db.verify_audit_chains(Some("st9")).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchStation { .. }), "{err}");
    assert!(err.is_usage_error());
    let combined = db.verify_audit().await.unwrap();
    assert_eq!((combined.entries, combined.first_break), (6, None));
}

fn certificate(serial: &str) -> crate::record::IssuedCertificate {
    crate::record::IssuedCertificate {
        serial: serial.into(),
        thumbprint: format!("{serial:0>64}"),
        not_before: "2026-11-25T00:00:00.000Z".into(),
        not_after: "2027-11-25T00:00:00.000Z".into(),
        key_type: "ecdsa-p256".into(),
        ca_thumbprint: "C".repeat(64),
    }
}

// Issue 17 on both backends: the certificates a unit held, and the columns of its last.
async fn a_unit_keeps_the_history_of_its_certificates(db: TestDb) {
    let batch = db.open_batch("WO-X", 5, "ana", "st1").await.unwrap();
    let mac = "24:0a:c4:00:17:01";
    for serial in ["0A01", "0A02"] {
        let mut x509 = attempt(&batch, Some(mac), None);
        let unit = x509.unit.as_mut().unwrap();
        unit.attestation = crate::record::Attestation::X509;
        unit.certificate = Some(certificate(serial));
        record(&db, x509).await;
    }
    let history = db.certificates_of(&mac.parse().unwrap()).await.unwrap();
    let serials: Vec<&str> = history.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials, ["0A01", "0A02"]);
    assert_eq!(history[1].station_id, "st1");
    let rows = db.manifest(&ManifestFilter::batch("WO-X")).await.unwrap();
    assert_eq!(
        (
            rows[0].attestation,
            rows[0].cert_serial.as_deref(),
            rows[0].cert_not_after.as_deref()
        ),
        (
            crate::record::Attestation::X509,
            Some("0A02"),
            Some("2027-11-25T00:00:00.000Z")
        )
    );
}

// Issue 13 on a shared ledger: a station's signed checkpoints name the head of the chain its
// entries are in (SQLite: the file's one chain; PostgreSQL: its own), another station's
// appends do not move them, and a rewrite or cut after one is named by it.
async fn each_station_checkpoints_its_own_chain(db: TestDb) {
    use crate::checkpoint::{Anchor, CheckpointLog};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints.jsonl");
    let anchor = |station: &str| {
        std::sync::Arc::new(
            Anchor::open(
                &dir.path().join(format!("{station}.key")),
                station,
                CheckpointLog::new(&file),
                None,
                3,
            )
            .unwrap(),
        )
    };
    let (a1, a2) = (anchor("st1"), anchor("st2"));
    let st1 = db.reopen().await.with_anchor(a1.clone());
    let st2 = db.reopen().await.with_anchor(a2.clone());
    let b1 = st1.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    let b2 = st2.open_batch("WO-2", 5, "bo", "st2").await.unwrap();
    for i in 1..=2 {
        record(
            &st1,
            attempt(&b1, Some(&format!("24:0a:c4:00:01:0{i}")), None),
        )
        .await;
        let other = AttemptRecord {
            station_id: "st2".into(),
            ..attempt(&b2, Some(&format!("24:0a:c4:00:02:0{i}")), None)
        };
        record(&st2, other).await;
    }
    st1.close_batch(None, "ana", "st1").await.unwrap();
    let chain = |station: &'static str| {
        let db = &db;
        async move { db.verify_audit_chains(Some(station)).await.unwrap()[0].clone() }
    };
    let at_close = chain("st1").await;
    let log = CheckpointLog::new(&file);
    let last = log.last_of("st1").unwrap().unwrap();
    assert_eq!(last.reason, "batch.close");
    assert_eq!(
        (last.seq, &last.head_hash),
        (at_close.entries, &at_close.head_hash)
    );
    if db.is_postgres() {
        // st1's own chain: its batch.open, two units, its batch.close.
        assert_eq!(last.seq, 4);
    } else {
        // One chain: st2's entries are in it too.
        assert_eq!(last.seq, 7);
    }

    // st2 goes on appending: st1's checkpoints still hold.
    record(
        &st2,
        AttemptRecord {
            station_id: "st2".into(),
            ..attempt(&b2, Some("24:0a:c4:00:02:03"), None)
        },
    )
    .await;
    st2.close_batch(None, "bo", "st2").await.unwrap();
    assert!(log.last_of("st2").unwrap().is_some());
    let check = |chain: ChainReport| {
        let (db, log, key) = (&db, &log, a1.key.public());
        async move {
            let lines = log.read().unwrap().unwrap();
            let mut report = CheckpointReport::default();
            db.verify_checkpoints("st1", &chain, "checkpoints", &lines, &key, &mut report)
                .await
                .unwrap();
            report
        }
    };
    let report = check(chain("st1").await).await;
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(
        report.matched >= 1 && report.matched == report.checked,
        "{report:?}"
    );
    assert!(
        report.other_stations >= 1,
        "st2's checkpoints are not st1's to answer for"
    );

    // The owner rewrites the checkpointed entry, hash and all: the checkpoint names it.
    let station = if db.is_postgres() {
        "station_id = 'st1' AND "
    } else {
        ""
    };
    let rewrite = format!(
        "UPDATE audit_log SET hash = '{}' WHERE {station}seq = {}",
        "f".repeat(64),
        last.seq
    );
    db.exec(
        &format!("DROP TRIGGER audit_log_refuses_update; {rewrite}"),
        &format!("ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuses_update; {rewrite}"),
    )
    .await
    .unwrap();
    let report = check(chain("st1").await).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.seq == Some(last.seq) && p.problem.contains("rewritten")),
        "{report:?}"
    );

    // And cuts the chain short before it: the checkpoint says entries are missing.
    let cut = format!("DELETE FROM audit_log WHERE {station}seq >= {}", last.seq);
    db.exec(
        &format!("DROP TRIGGER audit_log_refuses_delete; {cut}"),
        &format!("ALTER TABLE audit_log DISABLE TRIGGER audit_log_refuses_delete; {cut}"),
    )
    .await
    .unwrap();
    let report = check(chain("st1").await).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.seq == Some(last.seq) && p.problem.contains("cut short")),
        "{report:?}"
    );
}

// Issue 14 on both backends: the boot log excerpt stored with its attempt, found by MAC in any
// batch, and its SHA-256 in the attempt's audit entry.
async fn an_attempt_keeps_its_boot_log_and_its_hash_is_audited(db: TestDb) {
    use sha2::{Digest as _, Sha256};
    let store = &db.store;
    let batch = store.open_batch("WO-1", 3, "ana", "st1").await.unwrap();
    let mac = "24:0a:c4:00:00:0b";
    let log = "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\nI (339) dps: registration id sensor-240ac400000b\n";
    let mut failed = attempt(&batch, Some(mac), Some(failure("boot", false)));
    failed.boot_log = Some("Guru Meditation Error: Core  0 panic'ed\n".into());
    record(store, failed).await;
    let mut passed = attempt(&batch, Some(mac), None);
    passed.boot_log = Some(log.into());
    record(store, passed).await;
    record(store, attempt(&batch, Some("24:0a:c4:00:00:0c"), None)).await;

    let attempts = store.attempts_of_mac(&mac.parse().unwrap()).await.unwrap();
    let logs: Vec<Option<&str>> = attempts.iter().map(|a| a.boot_log.as_deref()).collect();
    assert_eq!(
        logs,
        [Some("Guru Meditation Error: Core  0 panic'ed\n"), Some(log)]
    );
    let entries = store.audit_entries().await.unwrap();
    let entry = entries
        .iter()
        .rev()
        .find(|e| {
            e.action == "unit.provisioned"
                && (e.subject == mac || e.subject.contains("240ac400000b"))
        })
        .unwrap();
    let details: serde_json::Value = serde_json::from_str(&entry.details).unwrap();
    assert_eq!(
        details["boot_log_sha256"],
        hex::encode(Sha256::digest(log.as_bytes()))
    );
}

// Issue 16: what the supervisor dashboard reads, from any station's rows.
async fn the_dashboard_reads_ports_batches_units_and_minutes(db: TestDb) {
    let at = |minute: u32| format!("2026-11-25T08:{minute:02}:30.000Z");
    let wo1 = db.open_batch("WO-1", 10, "ana", "st1").await.unwrap();
    let wo2 = db.open_batch("WO-2", 10, "bo", "st2").await.unwrap();
    db.open_batch("WO-3", 10, "cy", "st3").await.unwrap();
    db.close_batch(None, "cy", "st3").await.unwrap();
    let open = db.begin_attempt(&start_of(&wo1)).await.unwrap();

    let a = "24:0a:c4:00:05:01";
    let mut passed = attempt(&wo1, Some(a), None);
    passed.finished_at = at(0);
    record(&db, passed).await;
    let a_id = facts(a).registration_id;
    db.append_audit("st2", "bo", "test.about", a_id.as_str(), json!({}))
        .await
        .unwrap();
    let mut b = attempt(&wo2, Some("24:0a:c4:00:05:02"), None);
    b.station_id = "st2".into();
    b.finished_at = at(0);
    let b = record(&db, b).await;
    let mut reflash = attempt(&wo1, Some(a), Some(failure("flash", true)));
    reflash.finished_at = at(1);
    record(&db, reflash).await;

    let names = |batches: Vec<Batch>| batches.into_iter().map(|b| b.name).collect::<Vec<_>>();
    assert_eq!(names(db.open_batches().await.unwrap()), ["WO-1", "WO-2"]);
    assert_eq!(
        names(db.batch_list().await.unwrap()),
        ["WO-3", "WO-2", "WO-1"]
    );

    // The latest two and, older than those, the attempt still open.
    let ports: Vec<(AttemptOutcome, Option<String>, Option<String>)> = db
        .port_activity(2)
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.outcome,
                p.mac.map(|m| m.to_string()),
                p.registration_id.map(|r| r.as_str().to_owned()),
            )
        })
        .collect();
    let a_seen = (Some(a.to_owned()), Some(a_id.as_str().to_owned()));
    assert_eq!(
        ports,
        [
            (AttemptOutcome::Failed, a_seen.0.clone(), a_seen.1.clone()),
            (
                AttemptOutcome::Provisioned,
                Some("24:0a:c4:00:05:02".to_owned()),
                Some("sensor-240ac4000502".to_owned())
            ),
            (AttemptOutcome::InProgress, None, None),
        ]
    );
    assert_eq!(db.port_activity(10).await.unwrap().len(), 4);
    assert!(
        db.port_activity(0)
            .await
            .unwrap()
            .iter()
            .all(|p| p.id == open)
    );

    let attempts = db.attempts_of_mac(&a.parse().unwrap()).await.unwrap();
    let outcomes: Vec<AttemptOutcome> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Provisioned, AttemptOutcome::Failed]
    );
    assert!(attempts[0].id < attempts[1].id);

    let minutes: Vec<(String, i64, i64)> = db
        .batch_minutes(wo1.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.minute, m.provisioned, m.failed))
        .collect();
    assert_eq!(
        minutes,
        [
            ("2026-11-25T08:00".to_owned(), 1, 0),
            ("2026-11-25T08:01".to_owned(), 0, 1)
        ]
    );
    assert!(db.batch_minutes(wo2.id + 100).await.unwrap().is_empty());

    // By subject (its MAC, its registration ID) from any station, in chain order.
    let about: Vec<(String, String)> = db
        .audit_entries_about(&[a, a_id.as_str()], &[], 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.station_id, e.subject))
        .collect();
    assert_eq!(
        about,
        [
            ("st1".to_owned(), a.to_owned()),
            ("st2".to_owned(), a_id.as_str().to_owned()),
            ("st1".to_owned(), a.to_owned())
        ]
    );
    let last = db
        .audit_entries_about(&[a, a_id.as_str()], &[], 1)
        .await
        .unwrap();
    assert_eq!(
        (last.len(), last[0].station_id.as_str()),
        (1, "st1"),
        "the last one only"
    );
    // By the entry an attempt wrote: that station's, never another chain's entry at the same
    // position (PostgreSQL numbers each station's chain from 1).
    let written = db
        .audit_entries_about(&[], &[("st2", b.audit_seq)], 10)
        .await
        .unwrap();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(
        (written[0].station_id.as_str(), written[0].seq),
        ("st2", b.audit_seq)
    );
    assert_eq!(written[0].subject, "24:0a:c4:00:05:02");
    assert!(
        db.audit_entries_about(&[], &[], 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The manifest's `revoked_at` cell (CSV, by the header's name) for each row, in order.
async fn manifest_revocations(store: &Store) -> Vec<(String, String)> {
    let mut out = Vec::new();
    store
        .export_manifest(
            &ManifestFilter::batch("WO-1"),
            crate::report::ManifestFormat::Csv,
            "st1",
            "qa-eve",
            &mut out,
        )
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (mac, revoked_at) = (column("mac"), column("revoked_at"));
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            (row[mac].to_owned(), row[revoked_at].to_owned())
        })
        .collect()
}

// Issue 18 on both backends: `station unit revoke`/`restore` as the store records them: the
// unit's revoked_at and reason, the manifest's column, an audit entry in an intact chain; an
// unknown MAC is a coded error that writes nothing.
async fn a_revocation_is_audited_shown_in_the_manifest_and_lifted_by_a_restore(db: TestDb) {
    use crate::record::UnitRevocation;
    let store = &db.store;
    let batch = store.open_batch("WO-1", 5, "ana", "st1").await.unwrap();
    let (a, b) = ("24:0a:c4:00:07:01", "24:0a:c4:00:07:02");
    record(store, attempt(&batch, Some(a), None)).await;
    record(store, attempt(&batch, Some(b), None)).await;
    let mac: Mac = a.parse().unwrap();

    let revoked_at = now();
    let unit = store
        .record_revocation(
            &mac,
            &UnitRevocation {
                revoked_at: Some(revoked_at.clone()),
                reason: Some("returned: water damage".into()),
            },
            json!({ "dps": { "action": "not-configured" }, "reason": "returned: water damage" }),
            "st1",
            "qa-eve",
        )
        .await
        .unwrap();
    assert_eq!(unit.mac, mac);
    assert_eq!(unit.revoked_at.as_deref(), Some(revoked_at.as_str()));
    assert_eq!(
        unit.revoked_reason.as_deref(),
        Some("returned: water damage")
    );
    let stored = store.unit_by_mac(&mac).await.unwrap().unwrap();
    assert_eq!(
        (stored.revoked_at, stored.revoked_reason),
        (unit.revoked_at.clone(), unit.revoked_reason.clone())
    );
    let other = store
        .unit_by_mac(&b.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.revoked_at, None, "only the unit named is revoked");
    let rows = store
        .manifest(&ManifestFilter::batch("WO-1"))
        .await
        .unwrap();
    let by_row: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| (r.mac.to_string(), r.revoked_at.clone()))
        .collect();
    assert_eq!(
        by_row,
        [
            (a.to_owned(), Some(revoked_at.clone())),
            (b.to_owned(), None)
        ]
    );
    assert_eq!(
        manifest_revocations(store).await,
        [
            (a.to_owned(), revoked_at.clone()),
            (b.to_owned(), String::new())
        ]
    );

    let entries = store.audit_entries().await.unwrap();
    let entry = entries.iter().rev().find(|e| e.subject == a).unwrap();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.subject.as_str(),
            entry.operator.as_str(),
            entry.station_id.as_str()
        ),
        ("unit.revoked", a, "qa-eve", "st1")
    );
    let details: serde_json::Value = serde_json::from_str(&entry.details).unwrap();
    assert_eq!(details["reason"], "returned: water damage");
    assert_eq!(details["registration_id"], "sensor-240ac4000701");
    assert_eq!(details["batch_id"], batch.id);
    assert_eq!(details["dps"]["action"], "not-configured");
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);

    let restored = store
        .record_revocation(
            &mac,
            &UnitRevocation {
                revoked_at: None,
                reason: None,
            },
            json!({ "dps": { "action": "not-configured" } }),
            "st1",
            "qa-eve",
        )
        .await
        .unwrap();
    assert_eq!((restored.revoked_at, restored.revoked_reason), (None, None));
    assert_eq!(
        manifest_revocations(store).await,
        [(a.to_owned(), String::new()), (b.to_owned(), String::new())]
    );
    let entries = store.audit_entries().await.unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e.subject == a && e.action.starts_with("unit.re"))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(actions, ["unit.revoked", "unit.restored"]);
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);

    let before = entries.len();
    let unknown: Mac = "24:0a:c4:00:07:ff".parse().unwrap();
    let error = store
        .record_revocation(
            &unknown,
            &UnitRevocation {
                revoked_at: Some(now()),
                reason: Some("scrapped".into()),
            },
            json!({}),
            "st1",
            "qa-eve",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::NoSuchUnit { mac } if mac == unknown),
        "{error:?}"
    );
    assert_eq!(
        miette::Diagnostic::code(&error)
            .map(|c| c.to_string())
            .as_deref(),
        Some("station::store::no_such_unit")
    );
    assert!(error.is_usage_error(), "exit code 2: {error:?}");
    assert_eq!(
        store.audit_entries().await.unwrap().len(),
        before,
        "nothing audited for a unit that does not exist"
    );
    assert!(store.unit_by_mac(&unknown).await.unwrap().is_none());
}
