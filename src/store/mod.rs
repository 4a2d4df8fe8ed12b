//! The station's records: batches, units, attempts and the audit chain (DESIGN.md section 5;
//! schema in `migrations/`), behind one [`Store`] API whatever database holds them.
//!
//! The API speaks typed rows ([`crate::record`]): a MAC, a registration ID, a unit state, a stage
//! and an error code go in and come out as types. Every method that writes is one transaction, so
//! a unit's row, its attempt and its audit entry commit or roll back together. The rules every
//! database follows live here and in [`attempt`], [`audit`] and `session.rs`; the SQL lives in
//! the backend (`backend.rs` is the seam; SQLite is the one backend today).
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Store`], its API and [`StoreError`] |
//! | `attempt.rs` | what an attempt records and the rules for its unit and audit entry |
//! | `audit.rs` | the chain's canonical encoding, hashing and verification walk |
//! | `manifest.rs` | the manifest's filter and its audited export |
//! | `checkpoint.rs` | signed checkpoints of the chain: when they are written, how the chain is checked against them |
//! | `session.rs` | what a station records when it starts |
//! | `dashboard.rs` | what the supervisor dashboard reads |
//! | `backend.rs` | the trait a database backend implements |
//! | `sqlite/` | the SQLite backend: pool, queries, transaction helpers, the packed verify |

/// Calls the same [`backend::Backend`] method on whichever database the store holds.
macro_rules! on_backend {
    ($store:expr, $db:ident => $call:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($db) => $call,
        }
    };
}

pub mod attempt;
pub mod audit;
mod backend;
mod checkpoint;
mod dashboard;
mod manifest;
mod session;
mod sqlite;

use std::path::{Path, PathBuf};

use backend::Backend as _;
use sqlx::SqlitePool;

pub use attempt::{AttemptRecord, AttemptStart, Failure, Recorded, UnitFacts};
pub use audit::ChainReport;
pub use checkpoint::{
    CheckpointFinding, CheckpointReport, HEAD_PREFIX_MIN, HeadCheck, head_prefix,
};
pub(crate) use manifest::ManifestQuery;
pub use manifest::{ManifestExport, ManifestFilter};
pub use session::{CaOpen, StationOpen};

use crate::identity::{Mac, RegistrationId};
use crate::record::{
    Attempt, AuditEntry, Batch, BatchStatus, CertificateRow, Stage, Unit, UnitDps,
};

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
    /// An export could not be written where it was going.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Output(#[from] crate::file::FileError),
    /// A checkpoint could not be written or read, or the station key is unusable.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
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
        ) || matches!(self, StoreError::Checkpoint(e) if e.is_usage_error())
    }
}

/// The database a [`Store`] works on.
#[derive(Debug, Clone)]
enum Db {
    /// One SQLite file.
    Sqlite(sqlite::Sqlite),
}

/// The records of one station (or, with a shared database, of several).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    path: PathBuf,
    /// Where checkpoints of the chain go, when the station signs them.
    anchor: Option<std::sync::Arc<crate::checkpoint::Anchor>>,
}

impl Store {
    /// Opens (creating if missing) and migrates the SQLite database file.
    ///
    /// A new database file is created readable by its owner only (0600); SQLite gives its
    /// `-wal` and `-shm` files the same mode. An existing file's mode is left as it is.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            db: Db::Sqlite(sqlite::Sqlite::open(path).await?),
            path: path.to_owned(),
            anchor: None,
        })
    }

    /// Opens and migrates the database file if it exists; `None` when it does not (nothing is
    /// created: `station check` looks without touching).
    pub async fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        match std::fs::metadata(path) {
            Ok(_) => Ok(Some(Store {
                db: Db::Sqlite(sqlite::Sqlite::open_existing(path).await?),
                path: path.to_owned(),
                anchor: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Open {
                path: path.to_owned(),
                source: sqlx::Error::Io(e),
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(self) {
        on_backend!(self, db => db.close().await)
    }

    /// The SQLite pool underneath, for tests and tools that read or tamper with the file
    /// directly.
    pub fn pool(&self) -> &SqlitePool {
        on_backend!(self, db => db.pool())
    }

    /// Opens a batch; refused if its name is taken or another batch is open on this station.
    pub async fn open_batch(
        &self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
    ) -> Result<Batch, StoreError> {
        let batch =
            on_backend!(self, db => db.open_batch(name, target, operator, station_id).await)?;
        self.checkpoint_if_due().await;
        Ok(batch)
    }

    /// Closes the named batch, or the station's open batch when `name` is `None`.
    pub async fn close_batch(
        &self,
        name: Option<&str>,
        operator: &str,
        station_id: &str,
    ) -> Result<BatchStatus, StoreError> {
        let status = on_backend!(self, db => db.close_batch(name, operator, station_id).await)?;
        self.checkpoint("batch.close").await?;
        Ok(status)
    }

    /// The open batch of a station, if any.
    pub async fn open_batch_of(&self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        on_backend!(self, db => db.open_batch_of(station_id).await)
    }

    /// A batch by name.
    pub async fn batch(&self, name: &str) -> Result<Batch, StoreError> {
        on_backend!(self, db => db.batch_named(name).await)?.ok_or_else(|| {
            StoreError::NoSuchBatch {
                name: name.to_owned(),
            }
        })
    }

    /// A batch by row id.
    pub async fn batch_by_id(&self, id: i64) -> Result<Batch, StoreError> {
        on_backend!(self, db => db.batch_by_id(id).await)
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
        on_backend!(self, db => db.batch_status(batch).await)
    }

    /// Every batch, newest first, with counts.
    pub async fn batches(&self) -> Result<Vec<BatchStatus>, StoreError> {
        on_backend!(self, db => db.batches().await)
    }

    /// The unit with this MAC, if recorded.
    pub async fn unit_by_mac(&self, mac: &Mac) -> Result<Option<Unit>, StoreError> {
        on_backend!(self, db => db.unit_by_mac(mac).await)
    }

    /// The unit with this registration ID, if recorded.
    pub async fn unit_by_registration_id(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError> {
        on_backend!(self, db => db.unit_by_registration_id(registration_id).await)
    }

    /// The units of a batch, in MAC order.
    pub async fn units_of(&self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        on_backend!(self, db => db.units_of(batch_id).await)
    }

    /// Provisioned units whose DPS status is pending, oldest change first.
    pub async fn pending_dps_units(&self) -> Result<Vec<Unit>, StoreError> {
        on_backend!(self, db => db.pending_dps_units().await)
    }

    /// Every X.509 certificate issued for the unit with this MAC, oldest first: the history a
    /// unit provisioned again keeps.
    pub async fn certificates_of(&self, mac: &Mac) -> Result<Vec<CertificateRow>, StoreError> {
        on_backend!(self, db => db.certificates_of(mac).await)
    }

    /// Attempts of a batch, oldest first.
    pub async fn attempts_of(&self, batch_id: i64) -> Result<Vec<Attempt>, StoreError> {
        on_backend!(self, db => db.attempts_of(batch_id).await)
    }

    /// Records a finished attempt: the unit's row (when the MAC is known), the attempt and its
    /// audit entry, in one transaction.
    ///
    /// The unit becomes provisioned only for an attempt without failure (the caller records
    /// success only after verification). A failure that may have touched the flash marks it
    /// failed; a failure before any write (a refused re-provision, a wrong chip) leaves an
    /// existing unit's state alone.
    pub async fn record_attempt(&self, record: &AttemptRecord) -> Result<Recorded, StoreError> {
        let recorded = on_backend!(self, db => db.record_attempt(record).await)?;
        self.checkpoint_if_due().await;
        Ok(recorded)
    }

    /// Opens an attempt's row as in progress before anything touches the device, so that a
    /// station killed mid-unit leaves a trace for [`Store::recover_interrupted`].
    pub async fn begin_attempt(&self, start: &AttemptStart) -> Result<i64, StoreError> {
        on_backend!(self, db => db.begin_attempt(start).await)
    }

    /// Notes the stage an open attempt has reached and, once read, the device's MAC.
    pub async fn attempt_reached(
        &self,
        attempt_id: i64,
        stage: Stage,
        mac: Option<Mac>,
    ) -> Result<(), StoreError> {
        on_backend!(self, db => db.attempt_reached(attempt_id, stage, mac).await)
    }

    /// Drops an open attempt that turned out to be no attempt at all: a unit already
    /// provisioned in this batch, seen again and left alone.
    pub async fn discard_attempt(&self, attempt_id: i64) -> Result<(), StoreError> {
        on_backend!(self, db => db.discard_attempt(attempt_id).await)
    }

    /// Closes the attempts of `station_id` left in progress by a process that no longer runs
    /// (a crash, a power cut, kill -9): each becomes interrupted with an audit entry, and a
    /// unit whose flash it may have been writing is marked failed, so that nothing unverified
    /// is ever shown as provisioned. Returns the attempts closed.
    pub async fn recover_interrupted(
        &self,
        station_id: &str,
        operator: &str,
    ) -> Result<Vec<Attempt>, StoreError> {
        let closed = on_backend!(self, db => db.recover_interrupted(station_id, operator).await)?;
        self.checkpoint_if_due().await;
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
        let unit =
            on_backend!(self, db => db.record_dps(unit_id, dps, station_id, operator).await)?;
        self.checkpoint_if_due().await;
        Ok(unit)
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
        let entry = audit::NewEntry::at(
            &crate::clock::now(),
            station_id,
            operator,
            action,
            subject,
            details,
        );
        let seq = on_backend!(self, db => db.append_audit(&entry).await)?;
        self.checkpoint_if_due().await;
        Ok(seq)
    }

    /// Records that a station opened with a configuration and keys: `config.changed` (subject:
    /// the file, details: its SHA-256) when the file's SHA-256 differs from the last one
    /// recorded for the station, and `key.loaded` (subject: the primary key id) when the key ids
    /// differ from the last ones recorded, in one transaction. Returns how many entries it
    /// appended.
    pub async fn record_station_open(&self, open: &StationOpen) -> Result<usize, StoreError> {
        let appended = on_backend!(self, db => db.record_station_open(open).await)?;
        self.checkpoint_if_due().await;
        Ok(appended)
    }

    /// The whole audit log in chain order.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, db => db.audit_entries().await)
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
        on_backend!(self, db => db.audit_entries_of(batch, limit).await)
    }

    /// The seqs of the entries whose hash starts with `prefix` (lowercase hex), at most two.
    pub async fn audit_hash_prefix(&self, prefix: &str) -> Result<Vec<i64>, StoreError> {
        on_backend!(self, db => db.audit_hash_prefix(prefix).await)
    }

    /// Re-walks the audit chain, and checks that every attempt's audit entry is still there (a
    /// chain cut short at its end is otherwise consistent). Reads one snapshot: the line keeps
    /// recording meanwhile, and entries it appends are left for the next verify.
    pub async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        on_backend!(self, db => db.verify_audit().await)
    }
}

#[cfg(test)]
mod tests;
