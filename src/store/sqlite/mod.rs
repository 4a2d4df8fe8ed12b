//! The SQLite backend: one file, WAL (readers never block the line), foreign keys, a busy
//! timeout, `sqlx::migrate!` on open. Writes that append to the audit chain start with `BEGIN
//! IMMEDIATE`, taking SQLite's write lock before reading the chain's head, so concurrent writers
//! (several ports, several processes) can never fork it.

mod dashboard;
mod verify;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite as Db, SqliteExecutor, SqlitePool, Transaction};

use super::attempt::{
    AttemptRecord, AttemptStart, Interruption, Recorded, UnitChange, UnitFacts, dps_verified_entry,
};
use super::audit::{ChainReport, NewEntry};
use super::backend::Backend;
use super::session::{CONFIG_CHANGED, KEY_LOADED, StationOpen};
use super::{ManifestQuery, StoreError};
use crate::clock::now;
use crate::identity::{Mac, RegistrationId};
use crate::process::ProcessStamp;
use crate::record::{
    Attempt, AttemptOutcome, AuditEntry, Batch, BatchStatus, CertificateRow, ErrorCode,
    ManifestRow, Stage, Unit, UnitDps, UnitState,
};

/// How long a writer waits for another to release SQLite's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

type Tx = Transaction<'static, Db>;

/// A station database in one SQLite file.
#[derive(Debug, Clone)]
pub(super) struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    /// Opens (creating if missing, mode 0600) and migrates the database file.
    pub(super) async fn open(path: &Path) -> Result<Sqlite, StoreError> {
        create_private(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
        Sqlite::connect(path).await
    }

    /// Opens and migrates an existing database file; never creates one.
    pub(super) async fn open_existing(path: &Path) -> Result<Sqlite, StoreError> {
        Sqlite::connect(path).await
    }

    async fn connect(path: &Path) -> Result<Sqlite, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Sqlite { pool })
    }

    /// The pool.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
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

/// Whether the process that opened an attempt still runs ([`ProcessStamp::is_running`]).
fn process_alive(attempt: &Attempt) -> bool {
    attempt.pid.is_some_and(|pid| {
        ProcessStamp {
            pid,
            boot_id: attempt.pid_boot_id.clone(),
            started: attempt.pid_started,
        }
        .is_running()
    })
}

impl Backend for Sqlite {
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn open_batch(
        &self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
    ) -> Result<Batch, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(open) = open_batch_in(&mut *tx, station_id).await? {
            return Err(StoreError::BatchStillOpen {
                name: open.name,
                station_id: station_id.to_owned(),
            });
        }
        if batch_by_name_in(&mut *tx, name).await?.is_some() {
            return Err(StoreError::BatchExists {
                name: name.to_owned(),
            });
        }
        let at = now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO batches (name, target, operator, station_id, opened_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(target)
        .bind(operator)
        .bind(station_id)
        .bind(&at)
        .fetch_one(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &NewEntry::at(
                &at,
                station_id,
                operator,
                "batch.open",
                name,
                serde_json::json!({ "target": target }),
            ),
        )
        .await?;
        let batch = batch_by_id_in(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(batch)
    }

    async fn close_batch(
        &self,
        name: Option<&str>,
        operator: &str,
        station_id: &str,
    ) -> Result<BatchStatus, StoreError> {
        let mut tx = self.begin_write().await?;
        let batch =
            match name {
                Some(name) => batch_by_name_in(&mut *tx, name).await?.ok_or_else(|| {
                    StoreError::NoSuchBatch {
                        name: name.to_owned(),
                    }
                })?,
                None => open_batch_in(&mut *tx, station_id).await?.ok_or_else(|| {
                    StoreError::NoOpenBatch {
                        station_id: station_id.to_owned(),
                    }
                })?,
            };
        if let Some(closed_at) = batch.closed_at {
            return Err(StoreError::BatchClosed {
                name: batch.name,
                closed_at,
            });
        }
        let at = now();
        sqlx::query("UPDATE batches SET closed_at = ?, closed_by = ? WHERE id = ?")
            .bind(&at)
            .bind(operator)
            .bind(batch.id)
            .execute(&mut *tx)
            .await?;
        let closed = batch_by_id_in(&mut *tx, batch.id).await?;
        let status = status_tx(&mut tx, closed).await?;
        append_audit_tx(
            &mut tx,
            &NewEntry::at(
                &at,
                station_id,
                operator,
                "batch.close",
                &batch.name,
                serde_json::json!({
                    "target": status.batch.target,
                    "provisioned": status.provisioned,
                    "failed": status.failed,
                    "attempts": status.attempts,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(status)
    }

    async fn open_batch_of(&self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        open_batch_in(&self.pool, station_id).await
    }

    async fn batch_named(&self, name: &str) -> Result<Option<Batch>, StoreError> {
        batch_by_name_in(&self.pool, name).await
    }

    async fn batch_by_id(&self, id: i64) -> Result<Batch, StoreError> {
        batch_by_id_in(&self.pool, id).await
    }

    async fn batch_status(&self, batch: Batch) -> Result<BatchStatus, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status = status_tx(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(status)
    }

    async fn batches(&self) -> Result<Vec<BatchStatus>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let batches: Vec<Batch> = sqlx::query_as("SELECT * FROM batches ORDER BY id DESC")
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            out.push(status_tx(&mut tx, batch).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn unit_by_mac(&self, mac: &Mac) -> Result<Option<Unit>, StoreError> {
        unit_by_mac_in(&self.pool, *mac).await
    }

    async fn unit_by_registration_id(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE registration_id = ?")
                .bind(registration_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn units_of(&self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE batch_id = ? ORDER BY mac")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn pending_dps_units(&self) -> Result<Vec<Unit>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM units WHERE dps_status = 'pending' AND state = 'provisioned' ORDER BY updated_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn attempts_of(&self, batch_id: i64) -> Result<Vec<Attempt>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM attempts WHERE batch_id = ? ORDER BY id")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn begin_attempt(&self, start: &AttemptStart) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = insert_open_attempt_tx(&mut tx, start).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn attempt_reached(
        &self,
        attempt_id: i64,
        stage: Stage,
        mac: Option<Mac>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attempts SET stage = ?, mac = COALESCE(?, mac) WHERE id = ? AND outcome = 'in-progress'",
        )
        .bind(stage)
        .bind(mac)
        .bind(attempt_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn discard_attempt(&self, attempt_id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM attempts WHERE id = ? AND outcome = 'in-progress'")
            .bind(attempt_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_attempt(&self, record: &AttemptRecord) -> Result<Recorded, StoreError> {
        let mut tx = self.begin_write().await?;
        let unit = match &record.unit {
            Some(facts) => Some(upsert_unit_tx(&mut tx, record, facts).await?),
            None => None,
        };
        let dps = record.unit.as_ref().and_then(|u| u.dps.as_ref());
        let unit = match (unit, dps) {
            (Some(unit), Some(dps)) => {
                Some(set_dps_tx(&mut tx, unit.id, dps, &record.finished_at).await?)
            }
            (unit, _) => unit,
        };
        let audit_seq = append_audit_tx(&mut tx, &record.audit_entry()).await?;
        // The attempt's open row is closed; without one (or if it was closed as interrupted
        // meanwhile) the attempt gets a row of its own: a finished attempt is never dropped.
        let open = match record.attempt_id {
            Some(id) => {
                sqlx::query_scalar(
                    "SELECT id FROM attempts WHERE id = ? AND outcome = 'in-progress'",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        let attempt_id = match open {
            Some(id) => id,
            None => insert_open_attempt_tx(&mut tx, &record.start()).await?,
        };
        if let (Some(unit), Some(facts)) = (&unit, &record.unit) {
            insert_certificate_tx(&mut tx, record, facts, unit.id, attempt_id).await?;
        }
        let failure = record.failure.as_ref();
        sqlx::query(
            "UPDATE attempts SET unit_id = ?, mac = ?, finished_at = ?, outcome = ?, stage = ?, \
             error_code = ?, message = ?, reprovision = ?, timings = ?, audit_seq = ?, pid = NULL, \
             pid_boot_id = NULL, pid_started = NULL WHERE id = ?",
        )
        .bind(unit.as_ref().map(|u| u.id))
        .bind(record.unit.as_ref().map(|u| u.mac))
        .bind(&record.finished_at)
        .bind(record.outcome())
        .bind(failure.map(|f| f.stage))
        .bind(failure.map(|f| &f.code))
        .bind(failure.map(|f| &f.message))
        .bind(record.reprovision)
        .bind(record.timings.to_string())
        .bind(audit_seq)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Recorded {
            attempt_id,
            unit,
            audit_seq,
        })
    }

    async fn recover_interrupted(
        &self,
        station_id: &str,
        operator: &str,
    ) -> Result<Vec<Attempt>, StoreError> {
        let mut tx = self.begin_write().await?;
        let open: Vec<Attempt> = sqlx::query_as(
            "SELECT * FROM attempts WHERE station_id = ? AND outcome = 'in-progress' ORDER BY id",
        )
        .bind(station_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut closed = Vec::new();
        for attempt in open.into_iter().filter(|a| !process_alive(a)) {
            let at = now();
            let batch = batch_by_id_in(&mut *tx, attempt.batch_id).await?;
            let interruption = Interruption::of(&attempt, &batch, &at, station_id, operator);
            let mut unit_id: Option<i64> = None;
            if let Some(mac) = attempt.mac {
                if interruption.wrote {
                    sqlx::query(
                        "UPDATE units SET state = ?, failed_stage = ?, updated_at = ? WHERE mac = ?",
                    )
                    .bind(UnitState::Failed)
                    .bind(interruption.stage)
                    .bind(&at)
                    .bind(mac)
                    .execute(&mut *tx)
                    .await?;
                }
                unit_id = sqlx::query_scalar("SELECT id FROM units WHERE mac = ?")
                    .bind(mac)
                    .fetch_optional(&mut *tx)
                    .await?;
            }
            let seq = append_audit_tx(&mut tx, &interruption.entry).await?;
            let row: Attempt = sqlx::query_as(
                "UPDATE attempts SET outcome = ?, finished_at = ?, error_code = ?, message = ?, \
                 unit_id = ?, audit_seq = ?, pid = NULL, pid_boot_id = NULL, pid_started = NULL WHERE id = ? RETURNING *",
            )
            .bind(AttemptOutcome::Interrupted)
            .bind(&at)
            .bind(ErrorCode::interrupted())
            .bind(&interruption.message)
            .bind(unit_id)
            .bind(seq)
            .bind(attempt.id)
            .fetch_one(&mut *tx)
            .await?;
            closed.push(row);
        }
        tx.commit().await?;
        Ok(closed)
    }

    async fn record_dps(
        &self,
        unit_id: i64,
        dps: &UnitDps,
        station_id: &str,
        operator: &str,
    ) -> Result<Unit, StoreError> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let unit = set_dps_tx(&mut tx, unit_id, dps, &at).await?;
        append_audit_tx(
            &mut tx,
            &dps_verified_entry(&unit, dps, &at, station_id, operator),
        )
        .await?;
        tx.commit().await?;
        Ok(unit)
    }

    async fn append_audit(&self, entry: &NewEntry) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let seq = append_audit_tx(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn record_station_open(&self, open: &StationOpen) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let last_config = last_details_tx(&mut tx, CONFIG_CHANGED, &open.station_id).await?;
        let last_keys = last_details_tx(&mut tx, KEY_LOADED, &open.station_id).await?;
        let entries = open.entries(&at, last_config.as_deref(), last_keys.as_deref());
        for entry in &entries {
            append_audit_tx(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok(entries.len())
    }

    async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM audit_log ORDER BY seq")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn audit_entries_of(
        &self,
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
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit_hash_prefix(&self, prefix: &str) -> Result<Vec<i64>, StoreError> {
        // Hashes are lowercase hex: every hash starting with `prefix` sorts between it and
        // `prefix` followed by `g`, a range the hash column's unique index answers.
        Ok(sqlx::query_scalar(
            "SELECT seq FROM audit_log WHERE hash >= ?1 AND hash < ?1 || 'g' ORDER BY seq LIMIT 2",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?)
    }

    // One SQLite file holds one chain, whichever stations write to it.
    async fn audit_head(&self, _station_id: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn audit_hash_at(
        &self,
        _station_id: &str,
        seq: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        verify::verify_audit(&self.pool).await
    }

    async fn certificates_of(&self, mac: &Mac) -> Result<Vec<CertificateRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM certificates WHERE mac = ? ORDER BY id")
                .bind(mac)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn manifest(&self, query: &ManifestQuery) -> Result<Vec<ManifestRow>, StoreError> {
        Ok(sqlx::query_as(MANIFEST_SQL)
            .bind(query.batch_id)
            .bind(&query.since)
            .bind(&query.until)
            .fetch_all(&self.pool)
            .await?)
    }
}

/// Operator and port come from the unit's last successful attempt; attempts are counted per MAC
/// without looking at outcomes, so attempts still running or interrupted count too.
const MANIFEST_SQL: &str = "\
SELECT b.name AS batch, u.mac, u.registration_id, u.chip, u.revision AS chip_revision, \
       u.flash_size, u.image_sha256 AS nvs_sha256, u.key_id AS group_key_id, u.provisioned_at, \
       a.operator, u.station_id, a.port, \
       (SELECT COUNT(*) FROM attempts c WHERE c.mac = u.mac) AS attempts, \
       u.dps_status, u.assigned_hub, u.device_id, \
       u.attestation, u.cert_serial, u.cert_thumbprint, u.cert_not_after \
FROM units u \
JOIN batches b ON b.id = u.batch_id \
LEFT JOIN attempts a ON a.id = (SELECT MAX(s.id) FROM attempts s \
                                WHERE s.unit_id = u.id AND s.outcome = 'provisioned') \
WHERE u.state = 'provisioned' \
  AND (?1 IS NULL OR u.batch_id = ?1) \
  AND (?2 IS NULL OR u.provisioned_at >= ?2) \
  AND (?3 IS NULL OR u.provisioned_at < ?3) \
ORDER BY u.provisioned_at, u.mac";

// ---- transaction helpers ---------------------------------------------------------------------

// Each helper runs on the pool or inside a transaction (`&mut **tx`).

async fn open_batch_in<'c>(
    db: impl SqliteExecutor<'c>,
    station_id: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM batches WHERE station_id = ? AND closed_at IS NULL")
            .bind(station_id)
            .fetch_optional(db)
            .await?,
    )
}

async fn batch_by_name_in<'c>(
    db: impl SqliteExecutor<'c>,
    name: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM batches WHERE name = ?")
        .bind(name)
        .fetch_optional(db)
        .await?)
}

async fn batch_by_id_in<'c>(db: impl SqliteExecutor<'c>, id: i64) -> Result<Batch, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM batches WHERE id = ?")
        .bind(id)
        .fetch_one(db)
        .await?)
}

async fn unit_by_mac_in<'c>(
    db: impl SqliteExecutor<'c>,
    mac: Mac,
) -> Result<Option<Unit>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM units WHERE mac = ?")
        .bind(mac)
        .fetch_optional(db)
        .await?)
}

async fn status_tx(tx: &mut Tx, batch: Batch) -> Result<BatchStatus, StoreError> {
    let (provisioned, failed): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'provisioned'), 0), COALESCE(SUM(state = 'failed'), 0) FROM units WHERE batch_id = ?",
    )
    .bind(batch.id)
    .fetch_one(&mut **tx)
    .await?;
    let (attempts, failed_attempts, in_progress, interrupted): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(outcome = 'failed'), 0), \
             COALESCE(SUM(outcome = 'in-progress'), 0), COALESCE(SUM(outcome = 'interrupted'), 0) \
             FROM attempts WHERE batch_id = ?",
        )
        .bind(batch.id)
        .fetch_one(&mut **tx)
        .await?;
    let failures = sqlx::query_as(
        "SELECT error_code, MAX(stage) AS stage, COUNT(*) AS count FROM attempts \
         WHERE batch_id = ? AND outcome IN ('failed', 'interrupted') AND error_code IS NOT NULL \
         GROUP BY error_code ORDER BY count DESC, error_code",
    )
    .bind(batch.id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(BatchStatus {
        batch,
        provisioned,
        failed,
        attempts,
        failed_attempts,
        in_progress,
        interrupted,
        failures,
    })
}

async fn insert_open_attempt_tx(tx: &mut Tx, start: &AttemptStart) -> Result<i64, StoreError> {
    let process = ProcessStamp::current();
    Ok(sqlx::query_scalar(
        "INSERT INTO attempts (batch_id, station_id, operator, port, started_at, outcome, stage, timings, pid, \
         pid_boot_id, pid_started) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?, ?) RETURNING id",
    )
    .bind(start.batch_id)
    .bind(&start.station_id)
    .bind(&start.operator)
    .bind(&start.port)
    .bind(&start.started_at)
    .bind(AttemptOutcome::InProgress)
    .bind(Stage::Connect)
    .bind(process.pid)
    .bind(&process.boot_id)
    .bind(process.started)
    .fetch_one(&mut **tx)
    .await?)
}

async fn upsert_unit_tx(
    tx: &mut Tx,
    record: &AttemptRecord,
    facts: &UnitFacts,
) -> Result<Unit, StoreError> {
    let existing = unit_by_mac_in(&mut **tx, facts.mac).await?;
    let (state, failed_stage, provisioned_at) = match record.unit_change(existing) {
        UnitChange::Keep(unit) => return Ok(*unit),
        UnitChange::Write {
            state,
            failed_stage,
            provisioned_at,
        } => (state, failed_stage, provisioned_at),
    };
    // A re-flash keeps the unit's DPS outcome only if the identity it was registered with
    // (registration ID and group key, or for X.509 the signing CA) is unchanged. The
    // certificate columns describe what the last write put on the device, as image_sha256.
    let certificate = facts.certificate.as_ref();
    sqlx::query(
        "INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, \
         secondary_key_id, image_sha256, state, failed_stage, provisioned_at, updated_at, \
         attestation, cert_serial, cert_thumbprint, cert_not_after) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
         updated_at = excluded.updated_at, attestation = excluded.attestation, \
         cert_serial = excluded.cert_serial, cert_thumbprint = excluded.cert_thumbprint, \
         cert_not_after = excluded.cert_not_after",
    )
    .bind(facts.mac)
    .bind(&facts.registration_id)
    .bind(record.batch.id)
    .bind(&record.station_id)
    .bind(&facts.chip)
    .bind(&facts.revision)
    .bind(facts.flash_size)
    .bind(&facts.key_id)
    .bind(&facts.secondary_key_id)
    .bind(&facts.image_sha256)
    .bind(state)
    .bind(failed_stage)
    .bind(&provisioned_at)
    .bind(&record.finished_at)
    .bind(facts.attestation)
    .bind(certificate.map(|c| &c.serial))
    .bind(certificate.map(|c| &c.thumbprint))
    .bind(certificate.map(|c| &c.not_after))
    .execute(&mut **tx)
    .await?;
    unit_by_mac_in(&mut **tx, facts.mac)
        .await?
        .ok_or(StoreError::Sql(sqlx::Error::RowNotFound))
}

/// Keeps the certificate an attempt issued, if it issued one, in the unit's history.
async fn insert_certificate_tx(
    tx: &mut Tx,
    record: &AttemptRecord,
    facts: &UnitFacts,
    unit_id: i64,
    attempt_id: i64,
) -> Result<(), StoreError> {
    let Some(certificate) = &facts.certificate else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO certificates (unit_id, attempt_id, mac, registration_id, serial, thumbprint, \
         not_before, not_after, key_type, ca_thumbprint, station_id, issued_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(unit_id)
    .bind(attempt_id)
    .bind(facts.mac)
    .bind(&facts.registration_id)
    .bind(&certificate.serial)
    .bind(&certificate.thumbprint)
    .bind(&certificate.not_before)
    .bind(&certificate.not_after)
    .bind(&certificate.key_type)
    .bind(&certificate.ca_thumbprint)
    .bind(&record.station_id)
    .bind(&record.finished_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a unit's DPS outcome inside `tx` and returns the updated row.
async fn set_dps_tx(
    tx: &mut Tx,
    unit_id: i64,
    dps: &UnitDps,
    at: &str,
) -> Result<Unit, StoreError> {
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
    .fetch_one(&mut **tx)
    .await?)
}

/// The details of the station's last entry with this action.
async fn last_details_tx(
    tx: &mut Tx,
    action: &str,
    station_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = ? AND station_id = ? ORDER BY seq DESC LIMIT 1",
    )
    .bind(action)
    .bind(station_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Appends an entry to the audit chain inside `tx` (which must hold the write lock) and
/// returns its seq.
async fn append_audit_tx(tx: &mut Tx, entry: &NewEntry) -> Result<i64, StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
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
    .execute(&mut **tx)
    .await?;
    Ok(entry.seq)
}
