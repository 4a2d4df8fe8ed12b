//! The station's records: batches, units, attempts and the audit chain (DESIGN.md sections 5 and
//! 7), behind one [`Store`] API whatever database holds them: a SQLite file (one station, the
//! default) or a PostgreSQL server that every station of a factory shares.
//!
//! The API speaks typed rows ([`crate::record`]): a MAC, a registration ID, a unit state, a stage
//! and an error code go in and come out as types. Every method that writes is one transaction, so
//! a unit's row, its attempt and its audit entry commit or roll back together. The transactions
//! are written once (`ops.rs`) over the queries a backend provides (`backend.rs`), and the rules
//! inside them live in [`attempt`], [`audit`] and `session.rs`; the SQL lives in the backends.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Store`], its API and [`StoreError`] |
//! | `ops.rs` | the transactions: locks, reads, rules, writes, audit entries |
//! | `attempt.rs` | what an attempt records and the rules for its unit, its slot and its audit entry |
//! | `audit.rs` | the chain's canonical encoding, hashing and verification walk |
//! | `manifest.rs` | the manifest's filter and its audited export |
//! | `checkpoint.rs` | signed checkpoints of the chain: when they are written, how the chain is checked against them |
//! | `session.rs` | what a station records when it starts |
//! | `dashboard.rs` | what the supervisor dashboard reads |
//! | `migration.rs` | whether a schema is current |
//! | `backend.rs` | the traits a database backend implements |
//! | `sql.rs` | the queries both backends run as they are |
//! | `sqlite/` | the SQLite backend: one file, `BEGIN IMMEDIATE`, one audit chain, the packed verify |
//! | `postgres/` | the PostgreSQL backend: a shared server, advisory locks, one audit chain per station |

/// Calls the same function on whichever database the store holds.
macro_rules! on_backend {
    ($store:expr, $db:ident => $call:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($db) => $call,
            $crate::store::Db::Postgres($db) => $call,
        }
    };
}

pub mod attempt;
pub mod audit;
mod backend;
mod checkpoint;
mod dashboard;
mod manifest;
mod migration;
mod ops;
mod postgres;
mod session;
mod sql;
mod sqlite;

use std::path::{Path, PathBuf};

use backend::Backend as _;

pub use attempt::{
    AttemptRecord, AttemptStart, Conflict, Failure, Recorded, UnitFacts, UnitSighting,
};
pub use audit::ChainReport;
pub use checkpoint::{
    CheckpointFinding, CheckpointReport, HEAD_PREFIX_MIN, HeadCheck, head_prefix,
};
pub(crate) use manifest::ManifestQuery;
pub use manifest::{ManifestExport, ManifestFilter};
pub use migration::MigrationState;
pub use session::{CaOpen, StationOpen};

use crate::config::Database;
use crate::identity::{Mac, RegistrationId};
use crate::record::{Attempt, AuditEntry, Batch, BatchStatus, Stage, Unit, UnitDps};

/// Errors from the store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be opened or connected to.
    #[error("cannot open database {database}: {source}")]
    #[diagnostic(
        code(station::store::open),
        help(
            "Check [station] database in station.toml. A file: that its directory exists and that the station's user may write there. A server: that it runs and is reachable, and that its user and password (database_password_file, PGPASSWORD or ~/.pgpass) are right."
        )
    )]
    Open {
        /// The database file or URL (which never holds a password).
        database: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("cannot migrate database {database}: {source}")]
    #[diagnostic(
        code(station::store::migrate),
        help(
            "The database may have been made by a newer station, or edited by hand; keep a copy and contact the maintainers. On a shared server whose station users may not change the schema, run `station db migrate` once with the owner's credentials."
        )
    )]
    Migrate {
        /// The database file or URL.
        database: String,
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
    Sql(sqlx::Error),
    /// The database server cannot be reached (or went away mid-transaction): nothing of the
    /// transaction was recorded.
    #[error("the database is unreachable: {0}")]
    #[diagnostic(
        code(station::store::unreachable),
        help(
            "Check the network and the database server. The line starts no new unit meanwhile; a unit that finished is recorded (and only then shown PASS) as soon as the server answers again."
        )
    )]
    Unreachable(sqlx::Error),
    /// The schema is not the one this station's migrations make.
    #[error("database {database} is not ready: {state}")]
    #[diagnostic(
        code(station::store::schema),
        help(
            "Run `station db migrate` with the database owner's credentials (station users may not change the schema), or update this station if another one is newer."
        )
    )]
    Schema {
        /// The database.
        database: String,
        /// Its migrations.
        state: MigrationState,
    },
    /// The database password file cannot be used.
    #[error("database password file {path}: {problem}")]
    #[diagnostic(
        code(station::store::password_file),
        help(
            "Put the database user's password alone in the file named by [station] database_password_file, owned by the station's user, and `chmod 600` it."
        )
    )]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never any of its contents).
        problem: String,
    },
    /// Another attempt recorded the same MAC provisioned while this one ran.
    #[error(
        "{mac} was recorded provisioned by station {station_id} in batch `{batch}` at {provisioned_at} while this attempt ran; this unit is NOT recorded provisioned"
    )]
    #[diagnostic(
        code(station::store::duplicate_unit),
        help(
            "Two devices answer with one MAC, or one device went to two stations: set this unit aside and have its MAC checked. The first record stands."
        )
    )]
    DuplicateUnit {
        /// The MAC.
        mac: Mac,
        /// The station whose record stands.
        station_id: String,
        /// Its batch.
        batch: String,
        /// When it recorded it.
        provisioned_at: String,
    },
    /// No audit entry names this station.
    #[error("station {station_id} has written no audit entry to this database")]
    #[diagnostic(
        code(station::store::no_such_station),
        help(
            "Station IDs are case-sensitive; `station audit verify` without --station lists every station's chain."
        )
    )]
    NoSuchStation {
        /// The station asked for.
        station_id: String,
    },
    /// The batch's target is covered by units provisioned and in flight on every station.
    #[error("batch `{name}` is full: its {target} units are provisioned or being provisioned")]
    #[diagnostic(
        code(station::store::batch_full),
        help(
            "Set the unit aside for the next batch; nothing was recorded against this one. `station batch status` shows each station's share."
        )
    )]
    BatchFull {
        /// The batch.
        name: String,
        /// Its target.
        target: i64,
    },
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
    /// No unit with that MAC is recorded.
    #[error("no unit with MAC {mac} is recorded")]
    #[diagnostic(
        code(station::store::no_such_unit),
        help(
            "Check the MAC (the chip's, as `batch status` and the manifest show it); a unit is recorded once the station has read its MAC."
        )
    )]
    NoSuchUnit {
        /// The MAC asked for.
        mac: Mac,
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
    /// True when the error is the operator's request (a batch name, a closed batch) or the
    /// station's setup (a password file) rather than a database failure; the CLI maps it to
    /// exit code 2.
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            StoreError::BatchExists { .. }
                | StoreError::BatchStillOpen { .. }
                | StoreError::NoSuchBatch { .. }
                | StoreError::NoOpenBatch { .. }
                | StoreError::BatchClosed { .. }
                | StoreError::NoSuchUnit { .. }
                | StoreError::PasswordFile { .. }
                | StoreError::NoSuchStation { .. }
        ) || matches!(self, StoreError::Checkpoint(e) if e.is_usage_error())
    }

    /// True when the database could not be reached: nothing was recorded, and the same
    /// request may succeed once it is back.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable(_) => true,
            StoreError::Open { source, .. } => connection_lost(source),
            _ => false,
        }
    }
}

/// Whether an error means the connection to the database is gone (refused, reset, timed
/// out, the server shutting down) rather than a query that failed.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08: connection exception; 57P01-57P03: the server shutting down or
        // not yet accepting connections.
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if connection_lost(&error) {
            StoreError::Unreachable(error)
        } else {
            StoreError::Sql(error)
        }
    }
}

/// What a database is: its backend, the server's version and the state of its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseInfo {
    /// `sqlite` or `postgresql`.
    pub backend: &'static str,
    /// The library's or server's version.
    pub version: String,
    /// The schema against this station's migrations.
    pub migrations: MigrationState,
}

/// How full a batch is, as a station about to start a unit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRoom {
    /// Its target.
    pub target: i64,
    /// Whether it was closed.
    pub closed: bool,
    /// Units provisioned in it, by every station.
    pub provisioned: i64,
    /// Slots other stations' attempts hold now.
    pub claimed_elsewhere: i64,
}

/// The database a [`Store`] works on.
#[derive(Debug, Clone)]
enum Db {
    /// One SQLite file.
    Sqlite(sqlite::Sqlite),
    /// A PostgreSQL server.
    Postgres(postgres::Postgres),
}

/// The records of one station (or, with a shared database, of several).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    database: String,
    /// Where checkpoints of the chain go, when the station signs them.
    anchor: Option<std::sync::Arc<crate::checkpoint::Anchor>>,
}

impl Store {
    /// Opens (creating if missing) and migrates a SQLite database file.
    ///
    /// A new database file is created readable by its owner only (0600); SQLite gives its
    /// `-wal` and `-shm` files the same mode. An existing file's mode is left as it is.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            db: Db::Sqlite(sqlite::Sqlite::open(path).await?),
            database: path.display().to_string(),
            anchor: None,
        })
    }

    /// Opens the database `[station] database` names: a SQLite file as [`Store::open`] does,
    /// or a PostgreSQL server, whose schema is migrated when it is behind and the user may.
    pub async fn connect(database: &Database) -> Result<Store, StoreError> {
        let db = match database {
            Database::Sqlite(path) => return Store::open(path).await,
            Database::Postgres { url, password_file } => Db::Postgres(
                postgres::Postgres::connect(url, password_file.as_deref(), true).await?,
            ),
        };
        Ok(Store {
            db,
            database: database.to_string(),
            anchor: None,
        })
    }

    /// Opens a database to look at it (`station check`): nothing is created or migrated, and a
    /// SQLite file is opened read-only; `None` when the SQLite file does not exist yet.
    pub async fn inspect(database: &Database) -> Result<Option<Store>, StoreError> {
        let db = match database {
            Database::Sqlite(path) => match sqlite::Sqlite::inspect(path).await? {
                Some(db) => Db::Sqlite(db),
                None => return Ok(None),
            },
            Database::Postgres { url, password_file } => Db::Postgres(
                postgres::Postgres::connect(url, password_file.as_deref(), false).await?,
            ),
        };
        Ok(Some(Store {
            db,
            database: database.to_string(),
            anchor: None,
        }))
    }

    /// Applies the migrations the database lacks (`station db migrate`) and says what it has
    /// now.
    pub async fn migrate(database: &Database) -> Result<DatabaseInfo, StoreError> {
        let store = Store::connect(database).await?;
        let info = store.describe().await;
        store.close().await;
        info
    }

    /// The database: its file, or its URL (which never holds a password).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The backend, its version and whether the schema is current.
    pub async fn describe(&self) -> Result<DatabaseInfo, StoreError> {
        on_backend!(self, db => db.describe().await)
    }

    /// Closes the pool (SQLite: checkpointing the WAL).
    pub async fn close(self) {
        on_backend!(self, db => db.close().await)
    }

    /// The SQLite pool underneath, for tests and tools that read or tamper with the file
    /// directly; `None` on PostgreSQL.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.db {
            Db::Sqlite(db) => Some(db.pool()),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool underneath, for tests and tools; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(db) => Some(db.pool()),
        }
    }

    /// Opens a batch; refused if its name is taken or another batch is open on this station.
    /// Any station may then run it.
    pub async fn open_batch(
        &self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
    ) -> Result<Batch, StoreError> {
        let batch =
            on_backend!(self, db => ops::open_batch(db, name, target, operator, station_id).await)?;
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
        let status =
            on_backend!(self, db => ops::close_batch(db, name, operator, station_id).await)?;
        self.checkpoint("batch.close").await?;
        Ok(status)
    }

    /// The batch a station opened and has not closed, if any.
    pub async fn open_batch_of(&self, station_id: &str) -> Result<Option<Batch>, StoreError> {
        on_backend!(self, db => ops::open_batch_of(db, station_id).await)
    }

    /// A batch by name.
    pub async fn batch(&self, name: &str) -> Result<Batch, StoreError> {
        on_backend!(self, db => ops::batch_named(db, name).await)?.ok_or_else(|| {
            StoreError::NoSuchBatch {
                name: name.to_owned(),
            }
        })
    }

    /// A batch by row id.
    pub async fn batch_by_id(&self, id: i64) -> Result<Batch, StoreError> {
        on_backend!(self, db => ops::batch_by_id(db, id).await)
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

    /// Counts for a batch, in total and per station, read in one snapshot.
    pub async fn batch_status(&self, batch: Batch) -> Result<BatchStatus, StoreError> {
        on_backend!(self, db => ops::batch_status(db, batch).await)
    }

    /// Every batch, newest first, with counts.
    pub async fn batches(&self) -> Result<Vec<BatchStatus>, StoreError> {
        on_backend!(self, db => ops::batches(db).await)
    }

    /// The unit with this MAC, if recorded.
    pub async fn unit_by_mac(&self, mac: &Mac) -> Result<Option<Unit>, StoreError> {
        Ok(self.unit_sighting(mac).await?.unit)
    }

    /// What the database holds of a MAC when the pipeline identifies a device: its unit and
    /// the attempt that last recorded it provisioned (see [`UnitFacts::seen_provisioning`]).
    pub async fn unit_sighting(&self, mac: &Mac) -> Result<UnitSighting, StoreError> {
        on_backend!(self, db => ops::unit_sighting(db, *mac).await)
    }

    /// The unit with this registration ID, if recorded.
    pub async fn unit_by_registration_id(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError> {
        on_backend!(self, db => ops::unit_by_registration_id(db, registration_id).await)
    }

    /// The units of a batch, in MAC order.
    pub async fn units_of(&self, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
        on_backend!(self, db => ops::units_of(db, batch_id).await)
    }

    /// Provisioned units whose DPS status is pending, oldest change first.
    pub async fn pending_dps_units(&self) -> Result<Vec<Unit>, StoreError> {
        on_backend!(self, db => ops::pending_dps_units(db).await)
    }

    /// Every X.509 certificate issued for the unit with this MAC, oldest first: the history a
    /// unit provisioned again keeps.
    pub async fn certificates_of(
        &self,
        mac: &Mac,
    ) -> Result<Vec<crate::record::CertificateRow>, StoreError> {
        on_backend!(self, db => ops::certificates_of(db, *mac).await)
    }

    /// Attempts of a batch, oldest first.
    pub async fn attempts_of(&self, batch_id: i64) -> Result<Vec<Attempt>, StoreError> {
        on_backend!(self, db => ops::attempts_of(db, batch_id).await)
    }

    /// Attempts on the device with this MAC, in any batch, oldest first (with their boot log
    /// excerpts: `station unit show`).
    pub async fn attempts_of_mac(&self, mac: &Mac) -> Result<Vec<Attempt>, StoreError> {
        on_backend!(self, db => ops::attempts_of_mac(db, mac).await)
    }

    /// Records a finished attempt: the unit's row (when the MAC is known), the attempt and its
    /// audit entry, in one transaction.
    ///
    /// The unit becomes provisioned only for an attempt without failure (the caller records
    /// success only after verification), and only if no other attempt recorded its MAC
    /// provisioned since the pipeline identified it ([`Conflict::DuplicateUnit`]) and the
    /// batch has room for it ([`Conflict::BatchFull`]); otherwise the attempt is recorded failed
    /// at stage `record` and [`Recorded::conflict`] says why. A failure that may have touched
    /// the flash marks the unit failed; a failure before any write (a refused re-provision, a
    /// wrong chip) leaves an existing unit's state alone.
    pub async fn record_attempt(&self, record: &AttemptRecord) -> Result<Recorded, StoreError> {
        let recorded = on_backend!(self, db => ops::record_attempt(db, record).await)?;
        self.checkpoint_if_due().await;
        Ok(recorded)
    }

    /// Opens an attempt's row as in progress before anything touches the device, so that a
    /// station killed mid-unit leaves a trace for [`Store::recover_interrupted`].
    pub async fn begin_attempt(&self, start: &AttemptStart) -> Result<i64, StoreError> {
        on_backend!(self, db => ops::begin_attempt(db, start, false).await)
    }

    /// [`Store::begin_attempt`] holding one of the batch's slots from the start, in one
    /// transaction: refused, with nothing written, as [`Store::claim_slot`] refuses. The line
    /// starts units so, so that stations racing for a batch's last slots wait rather than
    /// fail a unit they have begun.
    pub async fn begin_attempt_with_slot(&self, start: &AttemptStart) -> Result<i64, StoreError> {
        on_backend!(self, db => ops::begin_attempt(db, start, true).await)
    }

    /// Notes the stage an open attempt has reached and, once read, the device's MAC; renews
    /// the attempt's claim on a slot of its batch.
    pub async fn attempt_reached(
        &self,
        attempt_id: i64,
        stage: Stage,
        mac: Option<Mac>,
    ) -> Result<(), StoreError> {
        on_backend!(self, db => ops::attempt_reached(db, attempt_id, stage, mac).await)
    }

    /// Claims one of the batch's slots for an open attempt whose unit is new to the batch, in
    /// one transaction: refused with [`StoreError::BatchFull`] when the units provisioned in it
    /// plus the slots other attempts hold (on any station) reach its target, and with
    /// [`StoreError::BatchClosed`] when it was closed. The claim lasts while the attempt runs
    /// (renewed at every stage, lapsing 15 minutes after the last).
    pub async fn claim_slot(&self, attempt_id: i64, batch_id: i64) -> Result<(), StoreError> {
        on_backend!(self, db => ops::claim_slot(db, attempt_id, batch_id).await)
    }

    /// How full a batch is for `station_id`: its units provisioned (by every station) and the
    /// slots other stations hold, read in one snapshot. The line starts a unit only while
    /// these and its own units in flight leave room.
    pub async fn batch_room(
        &self,
        batch_id: i64,
        station_id: &str,
    ) -> Result<BatchRoom, StoreError> {
        on_backend!(self, db => ops::batch_room(db, batch_id, station_id).await)
    }

    /// Whether the database answers (the line polls it while it is unreachable).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, db => ops::ping(db).await)
    }

    /// Drops an open attempt that turned out to be no attempt at all: a unit already
    /// provisioned in this batch, seen again and left alone.
    pub async fn discard_attempt(&self, attempt_id: i64) -> Result<(), StoreError> {
        on_backend!(self, db => ops::discard_attempt(db, attempt_id).await)
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
        let closed =
            on_backend!(self, db => ops::recover_interrupted(db, station_id, operator).await)?;
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
            on_backend!(self, db => ops::record_dps(db, unit_id, dps, station_id, operator).await)?;
        self.checkpoint_if_due().await;
        Ok(unit)
    }

    /// Records that the unit with this MAC is revoked (`revocation.revoked_at` set) or restored
    /// (cleared), with a `unit.revoked` or `unit.restored` audit entry whose `details` say what
    /// was done in DPS, in one transaction; returns the updated unit.
    pub async fn record_revocation(
        &self,
        mac: &Mac,
        revocation: &crate::record::UnitRevocation,
        details: serde_json::Value,
        station_id: &str,
        operator: &str,
    ) -> Result<Unit, StoreError> {
        let unit = on_backend!(self, db => ops::record_revocation(db, mac, revocation, details, station_id, operator).await)?;
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
        let seq = on_backend!(self, db => ops::append_audit(db, &entry).await)?;
        self.checkpoint_if_due().await;
        Ok(seq)
    }

    /// Records that a station opened with a configuration and keys: `config.changed` (subject:
    /// the file, details: its SHA-256) when the file's SHA-256 differs from the last one
    /// recorded for the station, and `key.loaded` (subject: the primary key id) when the key ids
    /// differ from the last ones recorded, in one transaction. Returns how many entries it
    /// appended.
    pub async fn record_station_open(&self, open: &StationOpen) -> Result<usize, StoreError> {
        let appended = on_backend!(self, db => ops::record_station_open(db, open).await)?;
        self.checkpoint_if_due().await;
        Ok(appended)
    }

    /// The whole audit log, in the order it was written (SQLite: chain order).
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_entries_of(None, None).await
    }

    /// The audit entries of one batch (its `batch.open`/`batch.close`, whose subject is the
    /// batch, and every entry whose details name it: units, manifest exports), or of all when
    /// `batch` is `None`; the last `limit` of them when given; in the order they were written.
    pub async fn audit_entries_of(
        &self,
        batch: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, db => ops::audit_entries(db, batch, limit).await)
    }

    /// The entries whose hash starts with `prefix` (lowercase hex), at most two: their chain
    /// (a station, or `None` for a database with one chain) and seq.
    pub async fn audit_hash_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        on_backend!(self, db => ops::audit_hash_prefix(db, prefix).await)
    }

    /// Re-walks the audit chain of every station (SQLite: the file's one chain) or of one
    /// station, and checks that every attempt's audit entry is still there (a chain cut short
    /// at its end is otherwise consistent). Reads one snapshot: the line keeps recording
    /// meanwhile, and entries it appends are left for the next verify.
    pub async fn verify_audit_chains(
        &self,
        station_id: Option<&str>,
    ) -> Result<Vec<ChainReport>, StoreError> {
        on_backend!(self, db => ops::verify_audit(db, station_id).await)
    }

    /// [`Store::verify_audit_chains`] of every chain, summed up: the first break of any chain,
    /// the entries of all, and the head of the last.
    pub async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        let reports = self.verify_audit_chains(None).await?;
        Ok(ChainReport::combined(&reports))
    }
}

#[cfg(test)]
mod tests;
