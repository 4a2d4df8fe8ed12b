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

use crate::clock::now;
pub use audit::{AuditEntry, ChainReport};
pub use manifest::{ManifestExport, ManifestFilter, ManifestRow};

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
    /// Attempts running now (on any process of this database).
    pub in_progress: i64,
    /// Attempts cut short by a crash or a kill, found and closed at the next start.
    pub interrupted: i64,
    /// Failed and interrupted attempts by error code, most frequent first.
    pub failures: Vec<FailureCount>,
}

/// How often one error code ended an attempt of a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct FailureCount {
    /// The stable error code.
    pub error_code: String,
    /// The stage it happened in (the most frequent one, if several).
    pub stage: String,
    /// How many attempts.
    pub count: i64,
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
    /// The substatus DPS returned with the assignment (`initialAssignment`, ...).
    pub dps_substatus: Option<String>,
}

/// A unit's DPS pre-verification outcome, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDps {
    /// `pending`, `assigned` or `failed`.
    pub status: String,
    /// The IoT hub DPS assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned.
    pub device_id: Option<String>,
    /// DPS's substatus.
    pub substatus: Option<String>,
    /// `code: message` of the last DPS error.
    pub error: Option<String>,
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
    /// The DPS pre-verification outcome, when it ran.
    pub dps: Option<UnitDps>,
}

/// A finished attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The row [`Store::begin_attempt`] opened for it; `None` records a new row.
    pub attempt_id: Option<i64>,
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

/// The error code of an attempt closed by [`Store::recover_interrupted`].
pub const INTERRUPTED_CODE: &str = "station::line::interrupted";

/// What [`Store::begin_attempt`] writes.
#[derive(Debug, Clone)]
pub struct AttemptStart {
    /// The batch.
    pub batch_id: i64,
    /// The station.
    pub station_id: String,
    /// Who is responsible.
    pub operator: String,
    /// The serial port.
    pub port: String,
    /// Start (RFC 3339).
    pub started_at: String,
}

/// Whether the process that opened an attempt still runs. A row without a process, or with
/// this process's own ID (left by an earlier process that had the same ID), counts as dead.
fn process_alive(pid: Option<i64>) -> bool {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
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
        let dps = record.unit.as_ref().and_then(|u| u.dps.as_ref());
        let unit = match (unit, dps) {
            (Some(unit), Some(dps)) => {
                Some(set_dps_tx(&mut tx, unit.id, dps, &record.finished_at).await?)
            }
            (unit, _) => unit,
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
        let details = match dps {
            Some(dps) => with_dps(details, dps),
            None => details,
        };
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
            None => {
                insert_open_attempt_tx(
                    &mut tx,
                    &AttemptStart {
                        batch_id: record.batch.id,
                        station_id: record.station_id.clone(),
                        operator: record.operator.clone(),
                        port: record.port.clone(),
                        started_at: record.started_at.clone(),
                    },
                )
                .await?
            }
        };
        sqlx::query(
            "UPDATE attempts SET unit_id = ?, mac = ?, finished_at = ?, outcome = ?, stage = ?, \
             error_code = ?, message = ?, reprovision = ?, timings = ?, audit_seq = ?, pid = NULL \
             WHERE id = ?",
        )
        .bind(unit.as_ref().map(|u| u.id))
        .bind(record.unit.as_ref().map(|u| &u.mac))
        .bind(&record.finished_at)
        .bind(outcome)
        .bind(record.failure.as_ref().map(|f| &f.stage))
        .bind(record.failure.as_ref().map(|f| &f.code))
        .bind(record.failure.as_ref().map(|f| &f.message))
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

    /// Opens an attempt's row as `in-progress` before anything touches the device, so that a
    /// station killed mid-unit leaves a trace for [`Store::recover_interrupted`].
    pub async fn begin_attempt(&self, start: &AttemptStart) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = insert_open_attempt_tx(&mut tx, start).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Notes the stage an open attempt has reached and, once read, the device's MAC.
    pub async fn attempt_reached(
        &self,
        attempt_id: i64,
        stage: &str,
        mac: Option<&str>,
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

    /// Drops an open attempt that turned out to be no attempt at all: a unit already
    /// provisioned in this batch, seen again and left alone.
    pub async fn discard_attempt(&self, attempt_id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM attempts WHERE id = ? AND outcome = 'in-progress'")
            .bind(attempt_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the attempts of `station_id` left `in-progress` by a process that no longer runs
    /// (a crash, a power cut, kill -9): each becomes `interrupted` with an audit entry, and a
    /// unit whose flash it may have been writing is marked failed, so that nothing unverified
    /// is ever shown as provisioned. Returns the attempts closed.
    pub async fn recover_interrupted(
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
        for attempt in open.into_iter().filter(|a| !process_alive(a.pid)) {
            let at = now();
            let stage = attempt
                .stage
                .clone()
                .unwrap_or_else(|| "connect".to_owned());
            let wrote = matches!(stage.as_str(), "flash" | "verify" | "dps" | "record");
            let message = format!(
                "the station stopped during stage {stage} on {} (crash, power loss or kill) and the attempt never finished{}",
                attempt.port,
                if wrote {
                    "; the unit's flash may be incomplete"
                } else {
                    ""
                }
            );
            let batch = batch_by_id_tx(&mut tx, attempt.batch_id).await?;
            let mut unit_id: Option<i64> = None;
            if let Some(mac) = &attempt.mac {
                if wrote {
                    sqlx::query(
                        "UPDATE units SET state = 'failed', failed_stage = ?, updated_at = ? WHERE mac = ?",
                    )
                    .bind(&stage)
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
            let subject = attempt
                .mac
                .clone()
                .unwrap_or_else(|| format!("port {}", attempt.port));
            let seq = append_audit_tx(
                &mut tx,
                &at,
                station_id,
                operator,
                "unit.interrupted",
                &subject,
                json!({
                    "batch": batch.name,
                    "port": attempt.port,
                    "attempt": attempt.id,
                    "stage": stage,
                    "error_code": INTERRUPTED_CODE,
                    "started_at": attempt.started_at,
                    "pid": attempt.pid,
                }),
            )
            .await?;
            let row: Attempt = sqlx::query_as(
                "UPDATE attempts SET outcome = 'interrupted', finished_at = ?, error_code = ?, message = ?, \
                 unit_id = ?, audit_seq = ?, pid = NULL WHERE id = ? RETURNING *",
            )
            .bind(&at)
            .bind(INTERRUPTED_CODE)
            .bind(&message)
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

    /// Records a later DPS outcome for a unit (`station dps verify`), with a `unit.dps_verified`
    /// audit entry, in one transaction; returns the updated unit.
    pub async fn record_dps(
        &self,
        unit_id: i64,
        dps: &UnitDps,
        station_id: &str,
        operator: &str,
    ) -> Result<Unit, StoreError> {
        let mut tx = self.begin_write().await?;
        let at = now();
        let unit = set_dps_tx(&mut tx, unit_id, dps, &at).await?;
        let details = with_dps(
            json!({ "registration_id": unit.registration_id, "key_id": unit.key_id }),
            dps,
        );
        append_audit_tx(
            &mut tx,
            &at,
            station_id,
            operator,
            "unit.dps_verified",
            &unit.mac,
            details,
        )
        .await?;
        tx.commit().await?;
        Ok(unit)
    }

    /// Provisioned units whose DPS status is `pending`, oldest change first.
    pub async fn pending_dps_units(&self) -> Result<Vec<Unit>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM units WHERE dps_status = 'pending' AND state = 'provisioned' ORDER BY updated_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The unit with this registration ID, if recorded.
    pub async fn unit_by_registration_id(
        &self,
        registration_id: &str,
    ) -> Result<Option<Unit>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM units WHERE registration_id = ?")
                .bind(registration_id)
                .fetch_optional(&self.pool)
                .await?,
        )
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
    /// End; `None` while in progress.
    pub finished_at: Option<String>,
    /// `in-progress`, `provisioned`, `failed` or `interrupted`.
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
    /// The audit entry written when it ended; `None` while in progress.
    pub audit_seq: Option<i64>,
    /// The process running it, while in progress.
    pub pid: Option<i64>,
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

async fn insert_open_attempt_tx(
    tx: &mut Transaction<'_, Sqlite>,
    start: &AttemptStart,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO attempts (batch_id, station_id, operator, port, started_at, outcome, stage, timings, pid) \
         VALUES (?, ?, ?, ?, ?, 'in-progress', 'connect', '{}', ?) RETURNING id",
    )
    .bind(start.batch_id)
    .bind(&start.station_id)
    .bind(&start.operator)
    .bind(&start.port)
    .bind(&start.started_at)
    .bind(i64::from(std::process::id()))
    .fetch_one(&mut **tx)
    .await?)
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
         dps_substatus = CASE WHEN units.registration_id = excluded.registration_id AND units.key_id = excluded.key_id THEN units.dps_substatus END, \
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

/// Writes a unit's DPS outcome inside `tx` and returns the updated row.
async fn set_dps_tx(
    tx: &mut Transaction<'_, Sqlite>,
    unit_id: i64,
    dps: &UnitDps,
    at: &str,
) -> Result<Unit, StoreError> {
    Ok(sqlx::query_as(
        "UPDATE units SET dps_status = ?, assigned_hub = ?, device_id = ?, dps_substatus = ?, \
         dps_error = ?, updated_at = ? WHERE id = ? RETURNING *",
    )
    .bind(&dps.status)
    .bind(&dps.assigned_hub)
    .bind(&dps.device_id)
    .bind(&dps.substatus)
    .bind(&dps.error)
    .bind(at)
    .bind(unit_id)
    .fetch_one(&mut **tx)
    .await?)
}

/// Adds a unit's DPS outcome to audit details.
fn with_dps(mut details: serde_json::Value, dps: &UnitDps) -> serde_json::Value {
    details["dps"] = json!({
        "status": dps.status,
        "assigned_hub": dps.assigned_hub,
        "device_id": dps.device_id,
        "substatus": dps.substatus,
        "error": dps.error,
    });
    details
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
