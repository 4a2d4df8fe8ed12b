//! The station's records in SQLite: batches, units, attempts and the audit chain
//! (DESIGN.md section 5; schema in `migrations/`).
//!
//! One [`Store`] owns the connection pool. Opening sets WAL (readers never block the line),
//! foreign keys and a busy timeout, then runs the migrations. Every public method that writes is
//! one transaction composed of private `*_tx` helpers, so a unit's row, its attempt and its audit
//! entry commit or roll back together. Transactions that append to the audit chain start with
//! `BEGIN IMMEDIATE`, taking SQLite's write lock before reading the chain's head, so that
//! concurrent writers (several ports, several processes) can never fork the chain.

pub mod audit;
mod manifest;
mod session;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub use audit::{AuditEntry, ChainReport};
pub use manifest::{ManifestExport, ManifestFilter, ManifestRow};
pub use session::operator_from_env;

/// How long a writer waits for another to release SQLite's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from the store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be opened or migrated.
    #[error("cannot open database {path}: {source}")]
    #[diagnostic(
        code(station::store::open),
        help(
            "Check [station] database in station.toml, that its directory exists and that the station's user may write there."
        )
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("cannot migrate database {path}: {source}")]
    #[diagnostic(
        code(station::store::migrate),
        help(
            "The database may have been made by a newer station, or edited by hand; keep a copy and contact the maintainers."
        )
    )]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database error: {0}")]
    #[diagnostic(
        code(station::store::sql),
        help(
            "Retry; if it persists, run `station check` and keep the database file for inspection."
        )
    )]
    Sql(#[from] sqlx::Error),
    /// A batch with that name exists already.
    #[error("batch `{name}` already exists")]
    #[diagnostic(
        code(station::store::batch_exists),
        help(
            "Batch names are unique work orders; choose a new name, or see it with `station batch status {name}`."
        )
    )]
    BatchExists {
        /// The name.
        name: String,
    },
    /// Another batch is open on this station.
    #[error("batch `{name}` is still open on station {station_id}")]
    #[diagnostic(
        code(station::store::batch_open),
        help("A station works one batch at a time: run `station batch close` first.")
    )]
    BatchStillOpen {
        /// The open batch.
        name: String,
        /// The station.
        station_id: String,
    },
    /// No batch of that name.
    #[error("no batch named `{name}`")]
    #[diagnostic(
        code(station::store::no_such_batch),
        help("List batches with `station batch status`; names are case-sensitive.")
    )]
    NoSuchBatch {
        /// The name.
        name: String,
    },
    /// No batch is open.
    #[error("no batch is open on station {station_id}")]
    #[diagnostic(
        code(station::store::no_open_batch),
        help("Open a work order first: `station batch open NAME --target 100 --operator YOU`.")
    )]
    NoOpenBatch {
        /// The station.
        station_id: String,
    },
    /// The batch is closed.
    #[error("batch `{name}` was closed at {closed_at}")]
    #[diagnostic(
        code(station::store::batch_closed),
        help("Open a new batch for more units.")
    )]
    BatchClosed {
        /// The name.
        name: String,
        /// When.
        closed_at: String,
    },
}

impl StoreError {
    /// True when the error is the operator's request (a batch name, a closed batch) rather
    /// than a database failure; the CLI maps it to exit code 2.
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            StoreError::BatchExists { .. }
                | StoreError::BatchStillOpen { .. }
                | StoreError::NoSuchBatch { .. }
                | StoreError::NoOpenBatch { .. }
                | StoreError::BatchClosed { .. }
        )
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

/// The current time as stored: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// Formats a time as stored.
pub fn format_time(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// A work order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Batch {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Units to provision.
    pub target: i64,
    /// Who opened it.
    pub operator: String,
    /// Which station.
    pub station_id: String,
    /// When opened.
    pub opened_at: String,
    /// When closed, if closed.
    pub closed_at: Option<String>,
    /// Who closed it.
    pub closed_by: Option<String>,
}

/// A batch with its counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchStatus {
    /// The batch.
    #[serde(flatten)]
    pub batch: Batch,
    /// Units verified and recorded provisioned.
    pub provisioned: i64,
    /// Units whose last write failed.
    pub failed: i64,
    /// Attempts, pass or fail.
    pub attempts: i64,
    /// Failed attempts.
    pub failed_attempts: i64,
}

/// A device's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Unit {
    /// Row id.
    pub id: i64,
    /// `24:0a:c4:12:34:56`.
    pub mac: String,
    /// Its DPS registration ID.
    pub registration_id: String,
    /// The batch it was last written in.
    pub batch_id: i64,
    /// The station that wrote it.
    pub station_id: String,
    /// Chip (`esp32`).
    pub chip: String,
    /// Chip revision (`v3.0`).
    pub revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// Fingerprint of the group key its device key was derived from.
    pub key_id: String,
    /// Fingerprint of the secondary group key, if one was used.
    pub secondary_key_id: Option<String>,
    /// SHA-256 of the NVS image written.
    pub image_sha256: Option<String>,
    /// `provisioned` or `failed`.
    pub state: String,
    /// The stage of the last failure, when failed.
    pub failed_stage: Option<String>,
    /// When it was last verified and recorded provisioned.
    pub provisioned_at: Option<String>,
    /// `not-requested` | `pending` | `assigned` | `failed`.
    pub dps_status: String,
    /// The IoT hub DPS assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned.
    pub device_id: Option<String>,
    /// The last DPS error.
    pub dps_error: Option<String>,
    /// Last change.
    pub updated_at: String,
}

/// What identify, derive and build established about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFacts {
    /// `24:0a:c4:12:34:56`.
    pub mac: String,
    /// DPS registration ID.
    pub registration_id: String,
    /// Chip.
    pub chip: String,
    /// Chip revision.
    pub revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// Group key fingerprint.
    pub key_id: String,
    /// Secondary group key fingerprint.
    pub secondary_key_id: Option<String>,
    /// SHA-256 of the image, once built.
    pub image_sha256: Option<String>,
}

/// A finished attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The batch it ran in.
    pub batch: Batch,
    /// The station.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// The serial port.
    pub port: String,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// What is known of the device; `None` when it failed before the MAC was read.
    pub unit: Option<UnitFacts>,
    /// `None` when provisioned; the failure otherwise.
    pub failure: Option<Failure>,
    /// Whether this moved a unit provisioned in another batch (`--reprovision`).
    pub reprovision: bool,
    /// Seconds per stage, as JSON.
    pub timings: serde_json::Value,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The pipeline stage (`connect`, `identify`, `flash`, ...).
    pub stage: String,
    /// The stable error code.
    pub code: String,
    /// The message shown to the operator (never holds a secret).
    pub message: String,
    /// Whether the device's flash may have been changed (the unit is then marked failed).
    pub wrote: bool,
}

/// What recording an attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The attempt's row id.
    pub attempt_id: i64,
    /// The unit's row, if the MAC was known.
    pub unit: Option<Unit>,
    /// The audit entry written with it.
    pub audit_seq: i64,
}

/// The database of one station.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if missing) and migrates the database.
    ///
    /// A new database file is created readable by its owner only (0600); SQLite gives its
    /// `-wal` and `-shm` files the same mode. An existing file's mode is left as it is.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        create_private(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
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
        Ok(Store {
            pool,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Opens a batch; refused if its name is taken or another batch is open on this station.
    pub async fn open_batch(
        &self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
    ) -> Result<Batch, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(open) = open_batch_tx(&mut tx, station_id).await? {
            return Err(StoreError::BatchStillOpen {
                name: open.name,
                station_id: station_id.to_owned(),
            });
        }
        if batch_by_name_tx(&mut tx, name).await?.is_some() {
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
            &at,
            station_id,
            operator,
            "batch.open",
            name,
            json!({ "target": target }),
        )
        .await?;
        let batch = batch_by_id_tx(&mut tx, id).await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// Closes the named batch, or the station's open batch when `name` is `None`.
    pub async fn close_batch(
        &self,
        name: Option<&str>,
        operator: &str,
        station_id: &str,
    ) -> Result<BatchStatus, StoreError> {
        let mut tx = self.begin_write().await?;
        let batch =
            match name {
                Some(name) => batch_by_name_tx(&mut tx, name).await?.ok_or_else(|| {
                    StoreError::NoSuchBatch {
                        name: name.to_owned(),
                    }
                })?,
                None => open_batch_tx(&mut tx, station_id).await?.ok_or_else(|| {
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
        let closed = batch_by_id_tx(&mut tx, batch.id).await?;
        let status = status_tx(&mut tx, closed).await?;
        append_audit_tx(
            &mut tx,
            &at,
            station_id,
            operator,
            "batch.close",
            &batch.name,
            json!({
                "target": status.batch.target,
                "provisioned": status.provisioned,
                "failed": status.failed,
                "attempts": status.attempts,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(status)
    }

    /// The open batch of a station, if any.
    pub async fn open_batch_of(&self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(
            sqlx::query_as("SELECT * FROM batches WHERE station_id = ? AND closed_at IS NULL")
                .bind(station_id)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    /// A batch by name.
    pub async fn batch(&self, name: &str) -> Result<Batch, StoreError> {
        sqlx::query_as("SELECT * FROM batches WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoSuchBatch {
                name: name.to_owned(),
            })
    }

    /// A batch by row id.
    pub async fn batch_by_id(&self, id: i64) -> Result<Batch, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The batch a command means: the named one, else the station's open one.
    pub async fn resolve_batch(
        &self,
        name: Option<&str>,
        station_id: &str,
    ) -> Result<Batch, StoreError> {
        match name {
            Some(name) => self.batch(name).await,
            None => self
                .open_batch_of(station_id)
                .await?
                .ok_or_else(|| StoreError::NoOpenBatch {
                    station_id: station_id.to_owned(),
                }),
        }
    }

    /// Counts for a batch.
    pub async fn batch_status(&self, batch: Batch) -> Result<BatchStatus, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status = status_tx(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(status)
    }

    /// Every batch, newest first, with counts.
    pub async fn batches(&self) -> Result<Vec<BatchStatus>, StoreError> {
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

    /// The unit with this MAC, if recorded.
    pub async fn unit_by_mac(&self, mac: &str) -> Result<Option<Unit>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM units WHERE mac = ?")
            .bind(mac)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The units of a batch, in MAC order.
    pub async fn units_of(&self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE batch_id = ? ORDER BY mac")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records a finished attempt: the unit's row (when the MAC is known), the attempt and its
    /// audit entry, in one transaction.
    ///
    /// The unit becomes `provisioned` only for an attempt without failure (the caller records
    /// success only after verification). A failure that may have touched the flash marks it
    /// `failed`; a failure before any write (a refused re-provision, a wrong chip) leaves an
    /// existing unit's state alone.
    pub async fn record_attempt(&self, record: &AttemptRecord) -> Result<Recorded, StoreError> {
        let mut tx = self.begin_write().await?;
        let unit = match &record.unit {
            Some(facts) => upsert_unit_tx(&mut tx, record, facts).await?,
            None => None,
        };
        let (outcome, action) = match &record.failure {
            None if record.reprovision => ("provisioned", "unit.reprovisioned"),
            None => ("provisioned", "unit.provisioned"),
            Some(_) => ("failed", "unit.failed"),
        };
        let subject = record
            .unit
            .as_ref()
            .map_or_else(|| format!("port {}", record.port), |u| u.mac.clone());
        let details = json!({
            "batch": record.batch.name,
            "port": record.port,
            "registration_id": record.unit.as_ref().map(|u| &u.registration_id),
            "key_id": record.unit.as_ref().map(|u| &u.key_id),
            "secondary_key_id": record.unit.as_ref().and_then(|u| u.secondary_key_id.as_ref()),
            "image_sha256": record.unit.as_ref().and_then(|u| u.image_sha256.as_ref()),
            "chip": record.unit.as_ref().map(|u| &u.chip),
            "stage": record.failure.as_ref().map(|f| &f.stage),
            "error_code": record.failure.as_ref().map(|f| &f.code),
            "reprovision": record.reprovision,
            "started_at": record.started_at,
        });
        let audit_seq = append_audit_tx(
            &mut tx,
            &record.finished_at,
            &record.station_id,
            &record.operator,
            action,
            &subject,
            details,
        )
        .await?;
        let attempt_id: i64 = sqlx::query_scalar(
            "INSERT INTO attempts (unit_id, mac, batch_id, station_id, operator, port, started_at, finished_at, \
             outcome, stage, error_code, message, reprovision, timings, audit_seq) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(unit.as_ref().map(|u| u.id))
        .bind(record.unit.as_ref().map(|u| &u.mac))
        .bind(record.batch.id)
        .bind(&record.station_id)
        .bind(&record.operator)
        .bind(&record.port)
        .bind(&record.started_at)
        .bind(&record.finished_at)
        .bind(outcome)
        .bind(record.failure.as_ref().map(|f| &f.stage))
        .bind(record.failure.as_ref().map(|f| &f.code))
        .bind(record.failure.as_ref().map(|f| &f.message))
        .bind(record.reprovision)
        .bind(record.timings.to_string())
        .bind(audit_seq)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Recorded {
            attempt_id,
            unit,
            audit_seq,
        })
    }

    /// Attempts of a batch, oldest first.
    pub async fn attempts_of(&self, batch_id: i64) -> Result<Vec<Attempt>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM attempts WHERE batch_id = ? ORDER BY id")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Appends one audit entry on its own (an act outside a unit's attempt, such as deriving a
    /// device key by hand) and returns its seq.
    pub async fn append_audit(
        &self,
        station_id: &str,
        operator: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let seq = append_audit_tx(
            &mut tx,
            &now(),
            station_id,
            operator,
            action,
            subject,
            details,
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The whole audit log in chain order.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM audit_log ORDER BY seq")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The audit entries of one batch (its `batch.open`/`batch.close`, whose subject is the
    /// batch, and every entry whose details name it: units, manifest exports), or of all when
    /// `batch` is `None`; the last `limit` of them when given; in chain order.
    pub async fn audit_entries_of(
        &self,
        batch: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        if let Some(name) = batch {
            self.batch(name).await?;
        }
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

    /// The seq of the entry with this hash, if the log holds one.
    pub async fn audit_hash_position(&self, hash: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM audit_log WHERE hash = ?")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The underlying pool, for tests and exports.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// An attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// Row id.
    pub id: i64,
    /// The unit, if the MAC was read.
    pub unit_id: Option<i64>,
    /// The MAC, if read.
    pub mac: Option<String>,
    /// The batch.
    pub batch_id: i64,
    /// The station.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// The port.
    pub port: String,
    /// Start.
    pub started_at: String,
    /// End.
    pub finished_at: String,
    /// `provisioned` or `failed`.
    pub outcome: String,
    /// Failed stage.
    pub stage: Option<String>,
    /// Stable error code.
    pub error_code: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// Re-provisioning a unit of another batch.
    pub reprovision: bool,
    /// Seconds per stage (JSON).
    pub timings: String,
    /// The audit entry written with it.
    pub audit_seq: i64,
}

async fn open_batch_tx(
    tx: &mut Transaction<'_, Sqlite>,
    station_id: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM batches WHERE station_id = ? AND closed_at IS NULL")
            .bind(station_id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

async fn batch_by_name_tx(
    tx: &mut Transaction<'_, Sqlite>,
    name: &str,
) -> Result<Option<Batch>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM batches WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?)
}

async fn batch_by_id_tx(tx: &mut Transaction<'_, Sqlite>, id: i64) -> Result<Batch, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM batches WHERE id = ?")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?)
}

async fn status_tx(
    tx: &mut Transaction<'_, Sqlite>,
    batch: Batch,
) -> Result<BatchStatus, StoreError> {
    let (provisioned, failed): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'provisioned'), 0), COALESCE(SUM(state = 'failed'), 0) FROM units WHERE batch_id = ?",
    )
    .bind(batch.id)
    .fetch_one(&mut **tx)
    .await?;
    let (attempts, failed_attempts): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(outcome = 'failed'), 0) FROM attempts WHERE batch_id = ?",
    )
    .bind(batch.id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(BatchStatus {
        batch,
        provisioned,
        failed,
        attempts,
        failed_attempts,
    })
}

async fn upsert_unit_tx(
    tx: &mut Transaction<'_, Sqlite>,
    record: &AttemptRecord,
    facts: &UnitFacts,
) -> Result<Option<Unit>, StoreError> {
    let existing: Option<Unit> = sqlx::query_as("SELECT * FROM units WHERE mac = ?")
        .bind(&facts.mac)
        .fetch_optional(&mut **tx)
        .await?;
    let at = &record.finished_at;
    let (state, failed_stage, provisioned_at) = match &record.failure {
        None => ("provisioned", None, Some(at.clone())),
        Some(failure) if failure.wrote => ("failed", Some(failure.stage.clone()), None),
        // Nothing reached the device: an existing unit keeps its state; a new one is recorded
        // failed so the attempt has a unit to point at.
        Some(failure) => match &existing {
            Some(unit) => return Ok(Some(unit.clone())),
            None => ("failed", Some(failure.stage.clone()), None),
        },
    };
    // A re-flash keeps the unit's DPS outcome only if the identity it was registered with
    // (registration ID and group key) is unchanged.
    sqlx::query(
        "INSERT INTO units (mac, registration_id, batch_id, station_id, chip, revision, flash_size, key_id, \
         secondary_key_id, image_sha256, state, failed_stage, provisioned_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (mac) DO UPDATE SET \
         dps_status = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_status ELSE 'not-requested' END, \
         assigned_hub = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.assigned_hub END, \
         device_id = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.device_id END, \
         dps_error = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_error END, \
         registration_id = excluded.registration_id, batch_id = excluded.batch_id, \
         station_id = excluded.station_id, chip = excluded.chip, revision = excluded.revision, \
         flash_size = excluded.flash_size, key_id = excluded.key_id, \
         secondary_key_id = excluded.secondary_key_id, image_sha256 = excluded.image_sha256, \
         state = excluded.state, failed_stage = excluded.failed_stage, \
         provisioned_at = COALESCE(excluded.provisioned_at, units.provisioned_at), \
         updated_at = excluded.updated_at",
    )
    .bind(&facts.mac)
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
    .bind(&failed_stage)
    .bind(&provisioned_at)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(Some(
        sqlx::query_as("SELECT * FROM units WHERE mac = ?")
            .bind(&facts.mac)
            .fetch_one(&mut **tx)
            .await?,
    ))
}

/// Appends an entry to the audit chain inside `tx` (which must hold the write lock) and
/// returns its seq.
async fn append_audit_tx(
    tx: &mut Transaction<'_, Sqlite>,
    at: &str,
    station_id: &str,
    operator: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> Result<i64, StoreError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (seq, prev_hash) = head.map_or((1, audit::GENESIS.to_owned()), |(seq, hash)| {
        (seq + 1, hash)
    });
    // serde_json's default map is ordered by key, which makes `details` canonical.
    let details = details.to_string();
    let hash = audit::entry_hash(
        seq, at, station_id, operator, action, subject, &details, &prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, station_id, operator, action, subject, details, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at)
    .bind(station_id)
    .bind(operator)
    .bind(action)
    .bind(subject)
    .bind(&details)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

#[cfg(test)]
mod tests;
