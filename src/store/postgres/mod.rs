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

use super::StoreError;
use super::audit::ChainWalker;
use super::backend::{Backend, ChainBounds, Tx};
use crate::identity::Mac;
use crate::record::AuditEntry;

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
        let state = db.describe().await?.migrations;
        if migrate && !state.current() {
            let not_ready = |state| StoreError::Schema {
                database: url.to_owned(),
                state,
            };
            // Migrations this station does not know, or that changed, are a newer station's or
            // a damaged schema: not this station's to touch.
            if !state.unknown.is_empty() || !state.damaged.is_empty() {
                return Err(not_ready(state));
            }
            // sqlx serializes concurrent migrators with an advisory lock and skips what another
            // station applied meanwhile. A station role may not change the schema: its
            // permission error says the owner must migrate.
            MIGRATOR
                .run(&db.pool)
                .await
                .map_err(|source| match &source {
                    sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some("42501") =>
                    {
                        not_ready(state)
                    }
                    _ => StoreError::Migrate {
                        database: url.to_owned(),
                        source,
                    },
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
    if let Some((who, mode)) = crate::file::readable_by(&opened.metadata) {
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

    const NAME: &'static str = "postgresql";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
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
    super::sql::common_queries!();

    async fn server_version(&mut self) -> Result<String, StoreError> {
        let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&mut *self.0)
            .await?;
        Ok(format!("PostgreSQL {version}"))
    }

    async fn has_migrations_table(&mut self) -> Result<bool, StoreError> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&mut *self.0)
                .await?;
        Ok(table.is_some())
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

    async fn audit_head(&mut self, station_id: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, hash FROM audit_log WHERE station_id = $1 ORDER BY seq DESC LIMIT 1",
        )
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

    async fn audit_about(
        &mut self,
        subjects: &[&str],
        written: &[(&str, i64)],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // A chain per station: an entry is named by its station and its position in it. The
        // two lookups are joined by UNION, each on its index: with OR between them the planner
        // walks the whole log newest first (23 ms with 100,000 entries, against 0.3 ms).
        let stations: Vec<&str> = written.iter().map(|w| w.0).collect();
        let seqs: Vec<i64> = written.iter().map(|w| w.1).collect();
        Ok(sqlx::query_as(
            "SELECT * FROM (SELECT * FROM audit_log WHERE id IN ( \
                 SELECT id FROM audit_log WHERE subject = ANY($1) \
                 UNION \
                 SELECT a.id FROM audit_log a \
                 JOIN UNNEST($2::text[], $3::bigint[]) AS w (station_id, seq) \
                   ON a.station_id = w.station_id AND a.seq = w.seq) \
             ORDER BY id DESC LIMIT $4) newest ORDER BY id",
        )
        .bind(subjects)
        .bind(stations)
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
        // `prefix` followed by `g` in the column's byte order (`COLLATE "C"`), a range its unique
        // index answers.
        let found: Vec<(String, i64)> = sqlx::query_as(
            "SELECT station_id, seq FROM audit_log WHERE hash >= $1 AND hash < $1 || 'g' \
             ORDER BY station_id, seq LIMIT 2",
        )
        .bind(prefix)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(found
            .into_iter()
            .map(|(station, seq)| (Some(station), seq))
            .collect())
    }

    async fn audit_hash_at(
        &mut self,
        station_id: &str,
        seq: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE station_id = $1 AND seq = $2")
                .bind(station_id)
                .bind(seq)
                .fetch_optional(&mut *self.0)
                .await?,
        )
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
}
