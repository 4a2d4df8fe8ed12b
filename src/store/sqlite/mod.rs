//! The SQLite backend: one file, WAL (readers never block the line), foreign keys, a busy
//! timeout, the migrations of `migrations/sqlite/` run on open. Every write transaction starts
//! with `BEGIN IMMEDIATE`, taking the file's one write lock before it reads anything, so
//! concurrent writers (several ports, several processes) can never fork the audit chain or
//! count a batch twice; the store's per-unit, per-batch and per-chain locks are then already
//! held. The file keeps one audit chain for every station that writes to it.

mod verify;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite as Db, SqlitePool, Transaction};

use super::attempt::AttemptStart;
use super::audit::{ChainWalker, NewEntry};
use super::backend::{
    AttemptEnd, Backend, BatchCounts, ChainBounds, StationRow, Tx, UnitWrite, station_count,
};
use super::{DatabaseInfo, ManifestQuery, StoreError, migration};
use crate::identity::{Mac, RegistrationId};
use crate::record::{
    Attempt, AttemptOutcome, AuditEntry, Batch, ErrorCode, ManifestRow, Stage, Unit, UnitDps,
    UnitState,
};

/// How long a writer waits for another to release SQLite's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The migrations of a SQLite database.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A station database in one SQLite file.
#[derive(Debug, Clone)]
pub(super) struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    /// Opens (creating if missing, mode 0600) and migrates the database file.
    pub(super) async fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let open_error = |source| StoreError::Open {
            database: path.display().to_string(),
            source,
        };
        create_private(path).map_err(|e| open_error(sqlx::Error::Io(e)))?;
        let pool = Sqlite::pool_for(path, false).await.map_err(open_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                database: path.display().to_string(),
                source,
            })?;
        Ok(Sqlite { pool })
    }

    /// Opens an existing file read-only, without migrating it; `None` if there is no file.
    pub(super) async fn inspect(path: &Path) -> Result<Option<Sqlite>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let pool = Sqlite::pool_for(path, true)
            .await
            .map_err(|source| StoreError::Open {
                database: path.display().to_string(),
                source,
            })?;
        Ok(Some(Sqlite { pool }))
    }

    async fn pool_for(path: &Path, read_only: bool) -> Result<SqlitePool, sqlx::Error> {
        let mut options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .read_only(read_only)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Switching to WAL writes to the file: a reader takes the file as it is.
        if !read_only {
            options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
        }
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
    }

    /// The pool.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Creates an empty database file with mode 0600 unless one exists: the records hold no key,
/// but they are the factory's production data, and the WAL inherits the file's mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Backend for Sqlite {
    type Tx = SqliteTx;

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self) -> Result<SqliteTx, StoreError> {
        Ok(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    async fn read(&self) -> Result<SqliteTx, StoreError> {
        Ok(SqliteTx(self.pool.begin().await?))
    }

    async fn describe(&self) -> Result<DatabaseInfo, StoreError> {
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&self.pool)
            .await?;
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        let applied: Vec<migration::Applied> = match table {
            Some(_) => {
                sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                    .fetch_all(&self.pool)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(DatabaseInfo {
            backend: "sqlite",
            version: format!("SQLite {version}"),
            migrations: migration::state(&MIGRATOR, &applied),
        })
    }
}

/// A transaction on the file.
pub(super) struct SqliteTx(Transaction<'static, Db>);

impl Tx for SqliteTx {
    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }

    // `BEGIN IMMEDIATE` holds the file's write lock already.
    async fn lock_unit(&mut self, _mac: Mac) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_batch(&mut self, _batch_id: i64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_chain(&mut self, _station_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn batch_by_id(&mut self, id: i64) -> Result<Batch, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *self.0)
            .await?)
    }

    async fn batch_named(&mut self, name: &str) -> Result<Option<Batch>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn open_batch_of(&mut self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM batches WHERE station_id = ? AND closed_at IS NULL")
                .bind(station_id)
                .fetch_optional(&mut *self.0)
                .await?,
        )
    }

    async fn batches(&mut self) -> Result<Vec<Batch>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches ORDER BY id DESC")
            .fetch_all(&mut *self.0)
            .await?)
    }

    async fn insert_batch(
        &mut self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
        at: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO batches (name, target, operator, station_id, opened_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(target)
        .bind(operator)
        .bind(station_id)
        .bind(at)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn close_batch(&mut self, id: i64, at: &str, operator: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET closed_at = ?, closed_by = ? WHERE id = ?")
            .bind(at)
            .bind(operator)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn batch_counts(&mut self, batch_id: i64) -> Result<BatchCounts, StoreError> {
        let (provisioned, failed): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(state = 'provisioned'), 0), COALESCE(SUM(state = 'failed'), 0) \
             FROM units WHERE batch_id = ?",
        )
        .bind(batch_id)
        .fetch_one(&mut *self.0)
        .await?;
        let (attempts, failed_attempts, in_progress, interrupted): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(outcome = 'failed'), 0), \
                 COALESCE(SUM(outcome = 'in-progress'), 0), COALESCE(SUM(outcome = 'interrupted'), 0) \
                 FROM attempts WHERE batch_id = ?",
            )
            .bind(batch_id)
            .fetch_one(&mut *self.0)
            .await?;
        let failures = sqlx::query_as(
            "SELECT error_code, MAX(stage) AS stage, COUNT(*) AS count FROM attempts \
             WHERE batch_id = ? AND outcome IN ('failed', 'interrupted') AND error_code IS NOT NULL \
             GROUP BY error_code ORDER BY count DESC, error_code",
        )
        .bind(batch_id)
        .fetch_all(&mut *self.0)
        .await?;
        let stations: Vec<StationRow> = sqlx::query_as(
            "SELECT station_id, SUM(provisioned), SUM(attempts), SUM(failed_attempts), \
             SUM(in_progress), MIN(first_at), MAX(last_at) FROM ( \
               SELECT station_id, COUNT(*) AS provisioned, 0 AS attempts, 0 AS failed_attempts, \
                      0 AS in_progress, MIN(provisioned_at) AS first_at, MAX(provisioned_at) AS last_at \
               FROM units WHERE batch_id = ?1 AND state = 'provisioned' GROUP BY station_id \
               UNION ALL \
               SELECT station_id, 0, COUNT(*), SUM(outcome = 'failed'), SUM(outcome = 'in-progress'), \
                      NULL, NULL \
               FROM attempts WHERE batch_id = ?1 GROUP BY station_id \
             ) GROUP BY station_id ORDER BY station_id",
        )
        .bind(batch_id)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(BatchCounts {
            provisioned,
            failed,
            attempts,
            failed_attempts,
            in_progress,
            interrupted,
            failures,
            stations: stations.into_iter().map(station_count).collect(),
        })
    }

    async fn provisioned_in(&mut self, batch_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM units WHERE batch_id = ? AND state = 'provisioned'",
        )
        .bind(batch_id)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn live_claims(
        &mut self,
        batch_id: i64,
        now: &str,
        except: i64,
        except_station: Option<&str>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM attempts WHERE batch_id = ? AND outcome = 'in-progress' \
             AND claim_until > ? AND id <> ? AND (?4 IS NULL OR station_id <> ?4)",
        )
        .bind(batch_id)
        .bind(now)
        .bind(except)
        .bind(except_station)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn unit_by_mac(&mut self, mac: Mac) -> Result<Option<Unit>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM units WHERE mac = ?")
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn unit_by_registration_id(
        &mut self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE registration_id = ?")
                .bind(registration_id)
                .fetch_optional(&mut *self.0)
                .await?,
        )
    }

    async fn units_of(&mut self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE batch_id = ? ORDER BY mac")
                .bind(batch_id)
                .fetch_all(&mut *self.0)
                .await?,
        )
    }

    async fn pending_dps_units(&mut self) -> Result<Vec<Unit>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM units WHERE dps_status = 'pending' AND state = 'provisioned' ORDER BY updated_at, id",
        )
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn last_provisioned_attempt(&mut self, mac: Mac) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(id) FROM attempts WHERE mac = ? AND outcome = 'provisioned'",
        )
        .bind(mac)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn write_unit(&mut self, unit: &UnitWrite<'_>) -> Result<Unit, StoreError> {
        Ok(sqlx::query_as(UPSERT_UNIT)
            .bind(unit.mac)
            .bind(unit.registration_id)
            .bind(unit.batch_id)
            .bind(unit.station_id)
            .bind(unit.chip)
            .bind(unit.revision)
            .bind(unit.flash_size)
            .bind(unit.key_id)
            .bind(unit.secondary_key_id)
            .bind(unit.image_sha256)
            .bind(unit.state)
            .bind(unit.failed_stage)
            .bind(unit.provisioned_at)
            .bind(unit.at)
            .fetch_one(&mut *self.0)
            .await?)
    }

    async fn mark_unit_failed(
        &mut self,
        mac: Mac,
        stage: Stage,
        at: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE units SET state = ?, failed_stage = ?, updated_at = ? WHERE mac = ? RETURNING id",
        )
        .bind(UnitState::Failed)
        .bind(stage)
        .bind(at)
        .bind(mac)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn unit_id(&mut self, mac: Mac) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM units WHERE mac = ?")
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn set_dps(&mut self, unit_id: i64, dps: &UnitDps, at: &str) -> Result<Unit, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE units SET dps_status = ?, assigned_hub = ?, device_id = ?, dps_substatus = ?, \
             dps_error = ?, updated_at = ? WHERE id = ? RETURNING *",
        )
        .bind(dps.status)
        .bind(&dps.assigned_hub)
        .bind(&dps.device_id)
        .bind(&dps.substatus)
        .bind(&dps.error)
        .bind(at)
        .bind(unit_id)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn attempts_of(&mut self, batch_id: i64) -> Result<Vec<Attempt>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM attempts WHERE batch_id = ? ORDER BY id")
                .bind(batch_id)
                .fetch_all(&mut *self.0)
                .await?,
        )
    }

    async fn open_attempts(&mut self, station_id: &str) -> Result<Vec<Attempt>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM attempts WHERE station_id = ? AND outcome = 'in-progress' ORDER BY id",
        )
        .bind(station_id)
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn attempt_is_open(&mut self, id: i64) -> Result<bool, StoreError> {
        let open: Option<i64> =
            sqlx::query_scalar("SELECT id FROM attempts WHERE id = ? AND outcome = 'in-progress'")
                .bind(id)
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(open.is_some())
    }

    async fn insert_attempt(&mut self, start: &AttemptStart, pid: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO attempts (batch_id, station_id, operator, port, started_at, outcome, stage, timings, pid) \
             VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?) RETURNING id",
        )
        .bind(start.batch_id)
        .bind(&start.station_id)
        .bind(&start.operator)
        .bind(&start.port)
        .bind(&start.started_at)
        .bind(AttemptOutcome::InProgress)
        .bind(Stage::Connect)
        .bind(pid)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn note_stage(
        &mut self,
        id: i64,
        stage: Stage,
        mac: Option<Mac>,
        claim_until: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attempts SET stage = ?, mac = COALESCE(?, mac), \
             claim_until = CASE WHEN claim_until IS NULL THEN NULL ELSE ? END \
             WHERE id = ? AND outcome = 'in-progress'",
        )
        .bind(stage)
        .bind(mac)
        .bind(claim_until)
        .bind(id)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn claim(&mut self, id: i64, until: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE attempts SET claim_until = ? WHERE id = ? AND outcome = 'in-progress'")
            .bind(until)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn delete_open_attempt(&mut self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM attempts WHERE id = ? AND outcome = 'in-progress'")
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn finish_attempt(&mut self, id: i64, end: &AttemptEnd<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attempts SET unit_id = ?, mac = ?, finished_at = ?, outcome = ?, stage = ?, \
             error_code = ?, message = ?, reprovision = ?, timings = ?, audit_seq = ?, pid = NULL, \
             claim_until = NULL WHERE id = ?",
        )
        .bind(end.unit_id)
        .bind(end.mac)
        .bind(end.finished_at)
        .bind(end.outcome)
        .bind(end.stage)
        .bind(end.error_code)
        .bind(end.message)
        .bind(end.reprovision)
        .bind(end.timings)
        .bind(end.audit_seq)
        .bind(id)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn interrupt_attempt(
        &mut self,
        id: i64,
        at: &str,
        message: &str,
        unit_id: Option<i64>,
        audit_seq: i64,
    ) -> Result<Attempt, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE attempts SET outcome = ?, finished_at = ?, error_code = ?, message = ?, \
             unit_id = ?, audit_seq = ?, pid = NULL, claim_until = NULL WHERE id = ? RETURNING *",
        )
        .bind(AttemptOutcome::Interrupted)
        .bind(at)
        .bind(ErrorCode::interrupted())
        .bind(message)
        .bind(unit_id)
        .bind(audit_seq)
        .bind(id)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn append_audit(&mut self, entry: &NewEntry) -> Result<i64, StoreError> {
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *self.0)
                .await?;
        let entry = entry.chained_after(head);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(entry.seq)
        .bind(&entry.at)
        .bind(&entry.station_id)
        .bind(&entry.operator)
        .bind(&entry.action)
        .bind(&entry.subject)
        .bind(&entry.details)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut *self.0)
        .await?;
        Ok(entry.seq)
    }

    async fn last_details(
        &mut self,
        action: &str,
        station_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT details FROM audit_log WHERE action = ? AND station_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(action)
        .bind(station_id)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn audit_entries(
        &mut self,
        batch: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM (SELECT * FROM audit_log WHERE ?1 IS NULL OR subject = ?1 \
             OR json_extract(CASE WHEN json_valid(details) THEN details END, '$.batch') = ?1 \
             ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
        )
        .bind(batch)
        .bind(limit.map_or(-1, i64::from))
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn audit_position(
        &mut self,
        hash: &str,
    ) -> Result<Option<(Option<String>, i64)>, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_log WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(seq.map(|seq| (None, seq)))
    }

    async fn audit_chains(
        &mut self,
        station_id: Option<&str>,
    ) -> Result<Vec<ChainBounds>, StoreError> {
        // One chain holds every station's entries: a station's part of it is verified by
        // verifying the whole.
        if let Some(station_id) = station_id {
            let wrote: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM audit_log WHERE station_id = ? LIMIT 1")
                    .bind(station_id)
                    .fetch_optional(&mut *self.0)
                    .await?;
            if wrote.is_none() {
                return Ok(Vec::new());
            }
        }
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM audit_log")
                .fetch_one(&mut *self.0)
                .await?;
        Ok(vec![ChainBounds {
            station_id: None,
            first: first.unwrap_or(1),
            last: last.unwrap_or(0),
        }])
    }

    async fn walk_chain(
        &mut self,
        walker: &mut ChainWalker,
        _chain: &ChainBounds,
        low: i64,
        high: i64,
    ) -> Result<(), StoreError> {
        verify::walk_range(&mut self.0, walker, low, high).await
    }

    async fn orphaned_attempt(
        &mut self,
        _chain: &ChainBounds,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.id, a.audit_seq FROM attempts a LEFT JOIN audit_log l ON l.seq = a.audit_seq \
             WHERE a.audit_seq IS NOT NULL AND l.seq IS NULL ORDER BY a.audit_seq LIMIT 1",
        )
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn manifest(&mut self, query: &ManifestQuery) -> Result<Vec<ManifestRow>, StoreError> {
        Ok(sqlx::query_as(MANIFEST_SQL)
            .bind(query.batch_id)
            .bind(&query.since)
            .bind(&query.until)
            .fetch_all(&mut *self.0)
            .await?)
    }
}

/// A re-flash keeps the unit's DPS outcome only if the identity it was registered with
/// (registration ID and group key) is unchanged.
const UPSERT_UNIT: &str = "\
INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, \
                   secondary_key_id, image_sha256, state, failed_stage, provisioned_at, updated_at) \
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
ON CONFLICT (mac) DO UPDATE SET \
  dps_status = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_status ELSE 'not-requested' END, \
  assigned_hub = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.assigned_hub END, \
  device_id = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.device_id END, \
  dps_error = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_error END, \
  dps_substatus = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_substatus END, \
  registration_id = excluded.registration_id, batch_id = excluded.batch_id, \
  station_id = excluded.station_id, chip = excluded.chip, revision = excluded.revision, \
  flash_size = excluded.flash_size, key_id = excluded.key_id, \
  secondary_key_id = excluded.secondary_key_id, image_sha256 = excluded.image_sha256, \
  state = excluded.state, failed_stage = excluded.failed_stage, \
  provisioned_at = COALESCE(excluded.provisioned_at, units.provisioned_at), \
  updated_at = excluded.updated_at \
RETURNING *";

/// Operator and port come from the unit's last successful attempt; attempts are counted per MAC
/// without looking at outcomes, so attempts still running or interrupted count too.
const MANIFEST_SQL: &str = "\
SELECT b.name AS batch, u.mac, u.registration_id, u.chip, u.revision AS chip_revision, \
       u.flash_size, u.image_sha256 AS nvs_sha256, u.key_id AS group_key_id, u.provisioned_at, \
       a.operator, u.station_id, a.port, \
       (SELECT COUNT(*) FROM attempts c WHERE c.mac = u.mac) AS attempts, \
       u.dps_status, u.assigned_hub, u.device_id \
FROM units u \
JOIN batches b ON b.id = u.batch_id \
LEFT JOIN attempts a ON a.id = (SELECT MAX(s.id) FROM attempts s \
                                WHERE s.unit_id = u.id AND s.outcome = 'provisioned') \
WHERE u.state = 'provisioned' \
  AND (?1 IS NULL OR u.batch_id = ?1) \
  AND (?2 IS NULL OR u.provisioned_at >= ?2) \
  AND (?3 IS NULL OR u.provisioned_at < ?3) \
ORDER BY u.provisioned_at, u.mac";
