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

use super::StoreError;
use super::audit::ChainWalker;
use super::backend::{Backend, ChainBounds, Tx};
use crate::identity::Mac;
use crate::record::AuditEntry;

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

    const NAME: &'static str = "sqlite";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
}

/// A transaction on the file.
pub(super) struct SqliteTx(Transaction<'static, Db>);

impl Tx for SqliteTx {
    super::sql::common_queries!();

    async fn server_version(&mut self) -> Result<String, StoreError> {
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut *self.0)
            .await?;
        Ok(format!("SQLite {version}"))
    }

    async fn has_migrations_table(&mut self) -> Result<bool, StoreError> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut *self.0)
        .await?;
        Ok(table.is_some())
    }

    async fn lock_unit(&mut self, _mac: Mac) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_batch(&mut self, _batch_id: i64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_chain(&mut self, _station_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn audit_head(&mut self, _station_id: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *self.0)
                .await?,
        )
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

    async fn audit_about(
        &mut self,
        subjects: &[&str],
        written: &[(&str, i64)],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // One chain for the file: a position names one entry whichever station wrote it.
        // Lists of strings and integers always serialize.
        let subjects = serde_json::to_string(subjects).unwrap_or_else(|_| "[]".to_owned());
        let seqs = serde_json::to_string(&written.iter().map(|w| w.1).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".to_owned());
        Ok(sqlx::query_as(
            "SELECT * FROM (SELECT * FROM audit_log \
             WHERE subject IN (SELECT value FROM json_each(?1)) \
                OR seq IN (SELECT value FROM json_each(?2)) \
             ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
        )
        .bind(subjects)
        .bind(seqs)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn audit_hash_prefix(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        // Hashes are lowercase hex: every hash starting with `prefix` sorts between it and
        // `prefix` followed by `g`, a range the hash column's unique index answers.
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM audit_log WHERE hash >= ?1 AND hash < ?1 || 'g' ORDER BY seq LIMIT 2",
        )
        .bind(prefix)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(seqs.into_iter().map(|seq| (None, seq)).collect())
    }

    // One SQLite file holds one chain, whichever stations write to it.
    async fn audit_hash_at(
        &mut self,
        _station_id: &str,
        seq: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
                .bind(seq)
                .fetch_optional(&mut *self.0)
                .await?,
        )
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
}
