//! The PostgreSQL backend: one database that every station of a factory shares, with the
//! migrations of `migrations/postgres/`.
//!
//! Transactions run at READ COMMITTED and take transaction-scoped advisory locks, so stations
//! wait for each other only where they meet: one lock per MAC (two stations recording one unit),
//! one per batch (the claims on its last slots, its closing), one per station's audit chain
//! (each station appends to its own chain, so stations never wait for each other's audit
//! entries). Each statement after a lock sees what the lock's previous holder committed.
//! Read-only transactions run at REPEATABLE READ: one snapshot for a status, a manifest or a
//! verify, while the line keeps recording.
//!
//! The password comes from `[station] database_password_file` (mode 0600, like a key file), or
//! from `PGPASSWORD` or `~/.pgpass` as libpq reads them; never from the URL.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres as Db, Transaction};
use zeroize::Zeroizing;

use super::attempt::AttemptStart;
use super::audit::{ChainWalker, NewEntry};
use super::backend::{
    AttemptEnd, Backend, BatchCounts, ChainBounds, StationRow, Tx, UnitWrite, station_count,
};
use super::migration::{self, Applied};
use super::{DatabaseInfo, ManifestQuery, StoreError};
use crate::identity::{Mac, RegistrationId};
use crate::record::{
    Attempt, AttemptOutcome, AuditEntry, Batch, ErrorCode, ManifestRow, Stage, Unit, UnitDps,
    UnitState,
};

/// The migrations of a PostgreSQL database.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per station process: one per port in a typical line, a few to spare.
const MAX_CONNECTIONS: u32 = 8;
/// How long a query waits for a connection (or for the server to accept one) before the store
/// reports the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest password file read.
const PASSWORD_FILE_LIMIT: u64 = 4096;

/// Advisory lock classes (the first key of `pg_advisory_xact_lock(int, int)`).
const LOCK_UNIT: i32 = 0x5354_0001;
const LOCK_BATCH: i32 = 0x5354_0002;
const LOCK_CHAIN: i32 = 0x5354_0003;

/// A factory database on a PostgreSQL server.
#[derive(Debug, Clone)]
pub(super) struct Postgres {
    pool: PgPool,
}

impl Postgres {
    /// Connects to `url` with the password from `password_file` (else `PGPASSWORD` or
    /// `~/.pgpass`). With `migrate`, applies the migrations the database lacks (which only its
    /// owner may); without, leaves it as it is.
    pub(super) async fn connect(
        url: &str,
        password_file: Option<&Path>,
        migrate: bool,
    ) -> Result<Postgres, StoreError> {
        let open_error = |source| StoreError::Open {
            database: url.to_owned(),
            source,
        };
        let mut options = PgConnectOptions::from_str(url)
            .map_err(open_error)?
            .application_name("station");
        if let Some(path) = password_file {
            options = options.password(&read_password(path)?);
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let db = Postgres { pool };
        if migrate && !db.describe().await?.migrations.current() {
            // sqlx serializes concurrent migrators with an advisory lock and skips what another
            // station applied meanwhile.
            MIGRATOR
                .run(&db.pool)
                .await
                .map_err(|source| StoreError::Migrate {
                    database: url.to_owned(),
                    source,
                })?;
        }
        Ok(db)
    }

    /// The pool.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Reads the database password: the file's first line, from a regular file of mode 0600 or
/// stricter (the rule for key files). Nothing of its contents reaches an error.
fn read_password(path: &Path) -> Result<Zeroizing<String>, StoreError> {
    let refused = |problem: String| StoreError::PasswordFile {
        path: path.to_owned(),
        problem,
    };
    let opened = crate::file::open_regular(path, PASSWORD_FILE_LIMIT)
        .map_err(|e| refused(format!("cannot read it: {e}")))?;
    if let Some((who, mode)) = opened.readable_by() {
        return Err(refused(format!(
            "it is readable by {who} (mode {mode:04o})"
        )));
    }
    let bytes = Zeroizing::new(
        opened
            .read()
            .map_err(|e| refused(format!("cannot read it: {e}")))?,
    );
    let text = std::str::from_utf8(&bytes).map_err(|_| refused("it is not text".to_owned()))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(refused("it is empty".to_owned()));
    }
    Ok(Zeroizing::new(password.to_owned()))
}

/// A lock key for a text: the first four bytes of its SHA-256. Two texts sharing a key only
/// serialize each other.
fn text_key(text: &str) -> i32 {
    let digest = Sha256::digest(text.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Backend for Postgres {
    type Tx = PgTx;

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self) -> Result<PgTx, StoreError> {
        Ok(PgTx(self.pool.begin().await?))
    }

    async fn read(&self) -> Result<PgTx, StoreError> {
        Ok(PgTx(
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?,
        ))
    }

    async fn describe(&self) -> Result<DatabaseInfo, StoreError> {
        let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&self.pool)
            .await?;
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<Applied> = match table {
            Some(_) => {
                sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                    .fetch_all(&self.pool)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(DatabaseInfo {
            backend: "postgresql",
            version: format!("PostgreSQL {version}"),
            migrations: migration::state(&MIGRATOR, &applied),
        })
    }
}

/// A transaction on the server.
pub(super) struct PgTx(Transaction<'static, Db>);

impl PgTx {
    async fn advisory_lock(&mut self, class: i32, key: i32) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(class)
            .bind(key)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}

impl Tx for PgTx {
    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }

    async fn lock_unit(&mut self, mac: Mac) -> Result<(), StoreError> {
        self.advisory_lock(LOCK_UNIT, text_key(&mac.to_string()))
            .await
    }

    async fn lock_batch(&mut self, batch_id: i64) -> Result<(), StoreError> {
        // Ids past 2^31 share keys with smaller ones: they only serialize each other.
        self.advisory_lock(LOCK_BATCH, batch_id as i32).await
    }

    async fn lock_chain(&mut self, station_id: &str) -> Result<(), StoreError> {
        self.advisory_lock(LOCK_CHAIN, text_key(station_id)).await
    }

    async fn batch_by_id(&mut self, id: i64) -> Result<Batch, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *self.0)
            .await?)
    }

    async fn batch_named(&mut self, name: &str) -> Result<Option<Batch>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn open_batch_of(&mut self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM batches WHERE station_id = $1 AND closed_at IS NULL")
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
            "INSERT INTO batches (name, target, operator, station_id, opened_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
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
        sqlx::query("UPDATE batches SET closed_at = $1, closed_by = $2 WHERE id = $3")
            .bind(at)
            .bind(operator)
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn batch_counts(&mut self, batch_id: i64) -> Result<BatchCounts, StoreError> {
        let (provisioned, failed): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE state = 'provisioned'), \
                    COUNT(*) FILTER (WHERE state = 'failed') \
             FROM units WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&mut *self.0)
        .await?;
        let (attempts, failed_attempts, in_progress, interrupted): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE outcome = 'failed'), \
                        COUNT(*) FILTER (WHERE outcome = 'in-progress'), \
                        COUNT(*) FILTER (WHERE outcome = 'interrupted') \
                 FROM attempts WHERE batch_id = $1",
            )
            .bind(batch_id)
            .fetch_one(&mut *self.0)
            .await?;
        let failures = sqlx::query_as(
            "SELECT error_code, MAX(stage) AS stage, COUNT(*) AS count FROM attempts \
             WHERE batch_id = $1 AND outcome IN ('failed', 'interrupted') AND error_code IS NOT NULL \
             GROUP BY error_code ORDER BY count DESC, error_code",
        )
        .bind(batch_id)
        .fetch_all(&mut *self.0)
        .await?;
        let stations: Vec<StationRow> = sqlx::query_as(
            "SELECT station_id, SUM(provisioned)::bigint, SUM(attempts)::bigint, \
                    SUM(failed_attempts)::bigint, SUM(in_progress)::bigint, MIN(first_at), MAX(last_at) \
             FROM ( \
               SELECT station_id, COUNT(*) AS provisioned, 0::bigint AS attempts, \
                      0::bigint AS failed_attempts, 0::bigint AS in_progress, \
                      MIN(provisioned_at) AS first_at, MAX(provisioned_at) AS last_at \
               FROM units WHERE batch_id = $1 AND state = 'provisioned' GROUP BY station_id \
               UNION ALL \
               SELECT station_id, 0, COUNT(*), COUNT(*) FILTER (WHERE outcome = 'failed'), \
                      COUNT(*) FILTER (WHERE outcome = 'in-progress'), NULL, NULL \
               FROM attempts WHERE batch_id = $1 GROUP BY station_id \
             ) shares GROUP BY station_id ORDER BY station_id",
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
            "SELECT COUNT(*) FROM units WHERE batch_id = $1 AND state = 'provisioned'",
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
            "SELECT COUNT(*) FROM attempts WHERE batch_id = $1 AND outcome = 'in-progress' \
             AND claim_until > $2 AND id <> $3 AND ($4::text IS NULL OR station_id <> $4)",
        )
        .bind(batch_id)
        .bind(now)
        .bind(except)
        .bind(except_station)
        .fetch_one(&mut *self.0)
        .await?)
    }

    async fn unit_by_mac(&mut self, mac: Mac) -> Result<Option<Unit>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM units WHERE mac = $1")
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn unit_by_registration_id(
        &mut self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE registration_id = $1")
                .bind(registration_id)
                .fetch_optional(&mut *self.0)
                .await?,
        )
    }

    async fn units_of(&mut self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE batch_id = $1 ORDER BY mac")
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
            "SELECT MAX(id) FROM attempts WHERE mac = $1 AND outcome = 'provisioned'",
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
            "UPDATE units SET state = $1, failed_stage = $2, updated_at = $3 WHERE mac = $4 RETURNING id",
        )
        .bind(UnitState::Failed)
        .bind(stage)
        .bind(at)
        .bind(mac)
        .fetch_optional(&mut *self.0)
        .await?)
    }

    async fn unit_id(&mut self, mac: Mac) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM units WHERE mac = $1")
            .bind(mac)
            .fetch_optional(&mut *self.0)
            .await?)
    }

    async fn set_dps(&mut self, unit_id: i64, dps: &UnitDps, at: &str) -> Result<Unit, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE units SET dps_status = $1, assigned_hub = $2, device_id = $3, dps_substatus = $4, \
             dps_error = $5, updated_at = $6 WHERE id = $7 RETURNING *",
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
            sqlx::query_as("SELECT * FROM attempts WHERE batch_id = $1 ORDER BY id")
                .bind(batch_id)
                .fetch_all(&mut *self.0)
                .await?,
        )
    }

    async fn open_attempts(&mut self, station_id: &str) -> Result<Vec<Attempt>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM attempts WHERE station_id = $1 AND outcome = 'in-progress' ORDER BY id",
        )
        .bind(station_id)
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn attempt_is_open(&mut self, id: i64) -> Result<bool, StoreError> {
        let open: Option<i64> =
            sqlx::query_scalar("SELECT id FROM attempts WHERE id = $1 AND outcome = 'in-progress'")
                .bind(id)
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(open.is_some())
    }

    async fn insert_attempt(&mut self, start: &AttemptStart, pid: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO attempts (batch_id, station_id, operator, port, started_at, outcome, stage, timings, pid) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', $8) RETURNING id",
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
            "UPDATE attempts SET stage = $1, mac = COALESCE($2, mac), \
             claim_until = CASE WHEN claim_until IS NULL THEN NULL ELSE $3 END \
             WHERE id = $4 AND outcome = 'in-progress'",
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
        sqlx::query(
            "UPDATE attempts SET claim_until = $1 WHERE id = $2 AND outcome = 'in-progress'",
        )
        .bind(until)
        .bind(id)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn delete_open_attempt(&mut self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM attempts WHERE id = $1 AND outcome = 'in-progress'")
            .bind(id)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn finish_attempt(&mut self, id: i64, end: &AttemptEnd<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attempts SET unit_id = $1, mac = $2, finished_at = $3, outcome = $4, stage = $5, \
             error_code = $6, message = $7, reprovision = $8, timings = $9, audit_seq = $10, \
             pid = NULL, claim_until = NULL WHERE id = $11",
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
            "UPDATE attempts SET outcome = $1, finished_at = $2, error_code = $3, message = $4, \
             unit_id = $5, audit_seq = $6, pid = NULL, claim_until = NULL WHERE id = $7 RETURNING *",
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
        self.lock_chain(&entry.station_id).await?;
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM audit_log WHERE station_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(&entry.station_id)
        .fetch_optional(&mut *self.0)
        .await?;
        let entry = entry.chained_after(head);
        sqlx::query(
            "INSERT INTO audit_log (station_id, seq, at, operator, action, subject, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&entry.station_id)
        .bind(entry.seq)
        .bind(&entry.at)
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
            "SELECT details FROM audit_log WHERE action = $1 AND station_id = $2 ORDER BY seq DESC LIMIT 1",
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
            "SELECT * FROM (SELECT * FROM audit_log WHERE $1::text IS NULL OR subject = $1 \
             OR audit_details_batch(details) = $1 ORDER BY id DESC LIMIT $2) newest ORDER BY id",
        )
        .bind(batch)
        .bind(limit.map(i64::from))
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn audit_position(
        &mut self,
        hash: &str,
    ) -> Result<Option<(Option<String>, i64)>, StoreError> {
        let found: Option<(String, i64)> =
            sqlx::query_as("SELECT station_id, seq FROM audit_log WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(found.map(|(station, seq)| (Some(station), seq)))
    }

    async fn audit_chains(
        &mut self,
        station_id: Option<&str>,
    ) -> Result<Vec<ChainBounds>, StoreError> {
        let chains: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT station_id, MIN(seq), MAX(seq) FROM audit_log \
             WHERE $1::text IS NULL OR station_id = $1 GROUP BY station_id ORDER BY station_id",
        )
        .bind(station_id)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(chains
            .into_iter()
            .map(|(station_id, first, last)| ChainBounds {
                station_id: Some(station_id),
                first,
                last,
            })
            .collect())
    }

    async fn walk_chain(
        &mut self,
        walker: &mut ChainWalker,
        chain: &ChainBounds,
        low: i64,
        high: i64,
    ) -> Result<(), StoreError> {
        let entries: Vec<AuditEntry> = sqlx::query_as(
            "SELECT * FROM audit_log WHERE station_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
        )
        .bind(&chain.station_id)
        .bind(low)
        .bind(high)
        .fetch_all(&mut *self.0)
        .await?;
        walker.walk(&entries);
        Ok(())
    }

    async fn orphaned_attempt(
        &mut self,
        chain: &ChainBounds,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.id, a.audit_seq FROM attempts a \
             LEFT JOIN audit_log l ON l.station_id = a.station_id AND l.seq = a.audit_seq \
             WHERE a.station_id = $1 AND a.audit_seq IS NOT NULL AND l.seq IS NULL \
             ORDER BY a.audit_seq LIMIT 1",
        )
        .bind(&chain.station_id)
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

/// As on SQLite: a re-flash keeps the unit's DPS outcome only if the identity it was
/// registered with (registration ID and group key) is unchanged.
const UPSERT_UNIT: &str = "\
INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, \
                   secondary_key_id, image_sha256, state, failed_stage, provisioned_at, updated_at) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
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

/// As on SQLite: operator and port from the unit's last successful attempt, attempts counted
/// per MAC whatever their outcome.
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
  AND ($1::bigint IS NULL OR u.batch_id = $1) \
  AND ($2::text IS NULL OR u.provisioned_at >= $2) \
  AND ($3::text IS NULL OR u.provisioned_at < $3) \
ORDER BY u.provisioned_at, u.mac";
