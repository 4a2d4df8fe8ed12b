//! The seam between the [`Store`](super::Store) API and a database: a connection pool that opens
//! transactions, and a transaction type that runs the store's queries in typed terms.
//!
//! Everything the store does is written once, in `ops.rs`, as transactions composed of these
//! queries; the rules inside them (what an attempt does to its unit, which of two stations wins
//! a MAC, whether a batch has room, what each audit entry says, how the chain is hashed) live
//! beside the API ([`super::attempt`], [`super::audit`], [`super::session`]). A backend only
//! speaks its SQL dialect and takes its locks, so two backends cannot drift apart on a rule.
//!
//! Locks: a write transaction calls [`Tx::lock_unit`], [`Tx::lock_batch`] and
//! [`Tx::lock_chain`] before it reads what it will decide on, always in that order (unit, batch,
//! chain), and holds them to the end. SQLite takes the file's one write lock when the
//! transaction begins (`BEGIN IMMEDIATE`), so its locks add nothing; PostgreSQL takes one
//! advisory lock per MAC, per batch and per station chain, so stations serialize only where
//! they meet (the same unit, a batch's last slots) and each station appends to its own chain
//! without waiting for the others.
//!
//! To add a backend: implement both traits, add a variant to `Db` in `store/mod.rs` and a
//! branch to its `on_backend!` dispatch, and open it in [`super::Store::connect`].

use std::collections::BTreeMap;

use super::attempt::AttemptStart;
use super::audit::{ChainWalker, NewEntry};
use super::{ManifestQuery, StoreError};
use crate::identity::{Mac, RegistrationId};
use crate::keys::KeyId;
use crate::process::ProcessStamp;
use crate::record::{
    Attempt, AttemptOutcome, Attestation, AuditEntry, Batch, CertificateRow, ErrorCode,
    FailureCount, IssuedCertificate, ManifestRow, MinuteCount, PortActivity, Stage, StationCount,
    Unit, UnitDps, UnitState,
};

/// A database: a pool that opens transactions.
pub(super) trait Backend: Sync {
    /// A transaction on this database.
    type Tx: Tx;

    /// Closes the pool (SQLite: checkpoints the WAL).
    async fn close(&self);
    /// Begins a transaction that writes.
    async fn write(&self) -> Result<Self::Tx, StoreError>;
    /// Begins a read-only transaction: every query in it sees one snapshot.
    async fn read(&self) -> Result<Self::Tx, StoreError>;
    /// The backend's name (`sqlite`, `postgresql`).
    const NAME: &'static str;
    /// Its migrations.
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// What the database is: backend, server version, migrations.
    async fn describe(&self) -> Result<super::DatabaseInfo, StoreError> {
        let mut tx = self.read().await?;
        let version = tx.server_version().await?;
        let applied = if tx.has_migrations_table().await? {
            tx.applied_migrations().await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(super::DatabaseInfo {
            backend: Self::NAME,
            version,
            migrations: super::migration::state(Self::migrator(), &applied),
        })
    }
}

/// A unit's row as an attempt writes it.
#[derive(Debug, Clone)]
pub(super) struct UnitWrite<'a> {
    /// The MAC (the row's key).
    pub(super) mac: Mac,
    /// Its registration ID.
    pub(super) registration_id: &'a RegistrationId,
    /// The batch.
    pub(super) batch_id: i64,
    /// The station writing it.
    pub(super) station_id: &'a str,
    /// Chip.
    pub(super) chip: &'a str,
    /// Chip revision.
    pub(super) revision: &'a str,
    /// Flash size.
    pub(super) flash_size: i64,
    /// How it proves its identity to DPS.
    pub(super) attestation: Attestation,
    /// The fingerprint of the station secret behind its credential.
    pub(super) key_id: &'a KeyId,
    /// Secondary group key fingerprint.
    pub(super) secondary_key_id: Option<&'a KeyId>,
    /// SHA-256 of the image.
    pub(super) image_sha256: Option<&'a str>,
    /// X.509: the certificate this write put on it.
    pub(super) certificate: Option<&'a IssuedCertificate>,
    /// The state it takes.
    pub(super) state: UnitState,
    /// The failed stage, when failed.
    pub(super) failed_stage: Option<Stage>,
    /// When provisioned, when provisioned now (an existing time is kept otherwise).
    pub(super) provisioned_at: Option<&'a str>,
    /// The time of the change.
    pub(super) at: &'a str,
    /// Group or individual enrollment.
    pub(super) enrollment: crate::record::EnrollmentKind,
    /// The test message's outcome.
    pub(super) hub_status: crate::record::HubStatus,
    /// The hub's error, when it refused.
    pub(super) hub_error: Option<&'a str>,
}

/// A certificate an attempt issued, as its unit's history keeps it.
#[derive(Debug, Clone)]
pub(super) struct NewCertificate<'a> {
    /// The unit's row.
    pub(super) unit_id: i64,
    /// The attempt's row.
    pub(super) attempt_id: i64,
    /// The unit's MAC.
    pub(super) mac: Mac,
    /// Its registration ID (the certificate's subject CN).
    pub(super) registration_id: &'a RegistrationId,
    /// The certificate.
    pub(super) certificate: &'a IssuedCertificate,
    /// The station that issued it.
    pub(super) station_id: &'a str,
    /// When the attempt was recorded.
    pub(super) issued_at: &'a str,
}

/// How an attempt's row ends.
#[derive(Debug, Clone)]
pub(super) struct AttemptEnd<'a> {
    /// Its unit's row, if the MAC was known.
    pub(super) unit_id: Option<i64>,
    /// The MAC, if known.
    pub(super) mac: Option<Mac>,
    /// End.
    pub(super) finished_at: &'a str,
    /// How it ended.
    pub(super) outcome: AttemptOutcome,
    /// The failed stage.
    pub(super) stage: Option<Stage>,
    /// The failure's code.
    pub(super) error_code: Option<&'a ErrorCode>,
    /// The failure's message.
    pub(super) message: Option<&'a str>,
    /// A re-provision from another batch.
    pub(super) reprovision: bool,
    /// Seconds per stage, as JSON text.
    pub(super) timings: &'a str,
    /// The audit entry written with it.
    pub(super) audit_seq: i64,
    /// The redacted excerpt of the unit's boot log, when the boot check ran.
    pub(super) boot_log: Option<&'a str>,
}

/// A batch's counts, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub(super) struct BatchCounts {
    /// Units provisioned.
    pub(super) provisioned: i64,
    /// Units failed.
    pub(super) failed: i64,
    /// Attempts.
    pub(super) attempts: i64,
    /// Failed attempts.
    pub(super) failed_attempts: i64,
    /// Attempts in progress.
    pub(super) in_progress: i64,
    /// Interrupted attempts.
    pub(super) interrupted: i64,
    /// Failures by code.
    pub(super) failures: Vec<FailureCount>,
    /// Per station.
    pub(super) stations: Vec<StationCount>,
}

/// A batch's units of one station in one state, as both backends' queries return them:
/// station, state, count, first and last provisioning.
pub(super) type UnitShare = (String, String, i64, Option<String>, Option<String>);

/// A batch's attempts of one station with one outcome: station, outcome, count.
pub(super) type AttemptShare = (String, String, i64);

/// A batch's counts from its stations' shares; the stations in order of their IDs, each
/// station's rate left to the store.
pub(super) fn batch_counts(
    units: Vec<UnitShare>,
    attempts: Vec<AttemptShare>,
    failures: Vec<FailureCount>,
) -> BatchCounts {
    let mut counts = BatchCounts {
        failures,
        ..BatchCounts::default()
    };
    let mut stations: BTreeMap<String, StationCount> = BTreeMap::new();
    fn share(stations: &mut BTreeMap<String, StationCount>, id: String) -> &mut StationCount {
        stations.entry(id).or_insert_with_key(|id| StationCount {
            station_id: id.clone(),
            ..StationCount::default()
        })
    }
    for (station_id, state, count, first, last) in units {
        match state.as_str() {
            "provisioned" => {
                counts.provisioned += count;
                let station = share(&mut stations, station_id);
                station.provisioned += count;
                station.first_provisioned_at = first;
                station.last_provisioned_at = last;
            }
            "failed" => counts.failed += count,
            _ => {}
        }
    }
    for (station_id, outcome, count) in attempts {
        counts.attempts += count;
        let station = share(&mut stations, station_id);
        station.attempts += count;
        match outcome.as_str() {
            "failed" => {
                counts.failed_attempts += count;
                station.failed_attempts += count;
            }
            "in-progress" => {
                counts.in_progress += count;
                station.in_progress += count;
            }
            "interrupted" => counts.interrupted += count,
            _ => {}
        }
    }
    counts.stations = stations.into_values().collect();
    counts
}

/// One audit chain's extent: its station (`None`: the database keeps one chain for every
/// station) and its first and last seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainBounds {
    /// The station whose chain it is; `None` for a database-wide chain.
    pub(super) station_id: Option<String>,
    /// The first seq.
    pub(super) first: i64,
    /// The last seq.
    pub(super) last: i64,
}

/// A transaction: the store's queries, in typed terms. Reads see what the transaction wrote.
pub(super) trait Tx: Send {
    /// Commits.
    async fn commit(self) -> Result<(), StoreError>;

    /// The library's or server's name and version (`SQLite 3.46.0`, `PostgreSQL 15.8`).
    async fn server_version(&mut self) -> Result<String, StoreError>;
    /// Whether sqlx's `_sqlx_migrations` table exists.
    async fn has_migrations_table(&mut self) -> Result<bool, StoreError>;
    /// Its rows.
    async fn applied_migrations(&mut self) -> Result<Vec<super::migration::Applied>, StoreError>;

    /// Serializes writers of one unit (by MAC) until commit.
    async fn lock_unit(&mut self, mac: Mac) -> Result<(), StoreError>;
    /// Serializes writers that count one batch's slots until commit.
    async fn lock_batch(&mut self, batch_id: i64) -> Result<(), StoreError>;
    /// Serializes appends to the chain `station_id` writes to until commit.
    async fn lock_chain(&mut self, station_id: &str) -> Result<(), StoreError>;

    /// A batch by row id.
    async fn batch_by_id(&mut self, id: i64) -> Result<Batch, StoreError>;
    /// A batch by name.
    async fn batch_named(&mut self, name: &str) -> Result<Option<Batch>, StoreError>;
    /// The station's open batch.
    async fn open_batch_of(&mut self, station_id: &str) -> Result<Option<Batch>, StoreError>;
    /// Every batch, newest first.
    async fn batches(&mut self) -> Result<Vec<Batch>, StoreError>;
    /// Inserts a batch; `None` when a unique rule refused it (its name, or the station's one
    /// open batch).
    async fn insert_batch(
        &mut self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
        at: &str,
    ) -> Result<Option<i64>, StoreError>;
    /// Marks a batch closed.
    async fn close_batch(&mut self, id: i64, at: &str, operator: &str) -> Result<(), StoreError>;
    /// A batch's counts.
    async fn batch_counts(&mut self, batch_id: i64) -> Result<BatchCounts, StoreError>;
    /// Units provisioned in a batch.
    async fn provisioned_in(&mut self, batch_id: i64) -> Result<i64, StoreError>;
    /// Slots of a batch held by attempts in progress whose claim lasts past `now`, besides
    /// the attempt `except` and, if given, the attempts of the station `except_station`.
    async fn live_claims(
        &mut self,
        batch_id: i64,
        now: &str,
        except: i64,
        except_station: Option<&str>,
    ) -> Result<i64, StoreError>;

    /// The unit with this MAC.
    async fn unit_by_mac(&mut self, mac: Mac) -> Result<Option<Unit>, StoreError>;
    /// The unit with this registration ID.
    async fn unit_by_registration_id(
        &mut self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError>;
    /// The units of a batch, in MAC order.
    async fn units_of(&mut self, batch_id: i64) -> Result<Vec<Unit>, StoreError>;
    /// Provisioned units whose DPS status is pending, oldest change first.
    async fn pending_dps_units(&mut self) -> Result<Vec<Unit>, StoreError>;
    /// The last attempt that recorded this MAC provisioned.
    async fn last_provisioned_attempt(&mut self, mac: Mac) -> Result<Option<i64>, StoreError>;
    /// Inserts or updates a unit's row (a re-flash keeps its DPS outcome only if its
    /// registration ID and group key are unchanged) and returns it.
    async fn write_unit(&mut self, unit: &UnitWrite<'_>) -> Result<Unit, StoreError>;
    /// Sets or clears the revocation of the unit with this MAC; the updated unit, if it exists.
    async fn set_revocation(
        &mut self,
        mac: Mac,
        revocation: &crate::record::UnitRevocation,
        at: &str,
    ) -> Result<Option<Unit>, StoreError>;
    /// Marks the unit with this MAC failed at `stage`; its row id, if it has one.
    async fn mark_unit_failed(
        &mut self,
        mac: Mac,
        stage: Stage,
        at: &str,
    ) -> Result<Option<i64>, StoreError>;
    /// The row id of the unit with this MAC.
    async fn unit_id(&mut self, mac: Mac) -> Result<Option<i64>, StoreError>;
    /// Keeps a certificate an attempt issued in its unit's history.
    async fn insert_certificate(&mut self, row: &NewCertificate<'_>) -> Result<(), StoreError>;
    /// Every certificate issued for the unit with this MAC, oldest first.
    async fn certificates_of(&mut self, mac: Mac) -> Result<Vec<CertificateRow>, StoreError>;
    /// Writes a unit's DPS outcome and returns the row.
    async fn set_dps(&mut self, unit_id: i64, dps: &UnitDps, at: &str) -> Result<Unit, StoreError>;

    /// Attempts of a batch, oldest first.
    async fn attempts_of(&mut self, batch_id: i64) -> Result<Vec<Attempt>, StoreError>;
    /// Attempts on the device with this MAC, in any batch, oldest first.
    async fn attempts_of_mac(&mut self, mac: Mac) -> Result<Vec<Attempt>, StoreError>;
    /// The station's attempts in progress, oldest first.
    async fn open_attempts(&mut self, station_id: &str) -> Result<Vec<Attempt>, StoreError>;
    /// Whether the attempt is still in progress.
    async fn attempt_is_open(&mut self, id: i64) -> Result<bool, StoreError>;
    /// Opens an attempt's row, in progress, stamped with the process running it.
    async fn insert_attempt(
        &mut self,
        start: &AttemptStart,
        process: &ProcessStamp,
    ) -> Result<i64, StoreError>;
    /// Notes the stage an open attempt reached (and its MAC), and extends its claim on a slot,
    /// if it holds one that still lasts at `now`, to `claim_until` (a lapsed one is dropped).
    async fn note_stage(
        &mut self,
        id: i64,
        stage: Stage,
        mac: Option<Mac>,
        now: &str,
        claim_until: &str,
    ) -> Result<(), StoreError>;
    /// Whether the attempt is in progress and holds a claim lasting past `now`.
    async fn holds_claim(&mut self, id: i64, now: &str) -> Result<bool, StoreError>;
    /// Makes an open attempt hold a slot of its batch until `until`.
    async fn claim(&mut self, id: i64, until: &str) -> Result<(), StoreError>;
    /// Deletes an attempt still in progress.
    async fn delete_open_attempt(&mut self, id: i64) -> Result<(), StoreError>;
    /// Ends an attempt's row.
    async fn finish_attempt(&mut self, id: i64, end: &AttemptEnd<'_>) -> Result<(), StoreError>;
    /// Ends an attempt's row as interrupted and returns it.
    async fn interrupt_attempt(
        &mut self,
        id: i64,
        at: &str,
        message: &str,
        unit_id: Option<i64>,
        audit_seq: i64,
    ) -> Result<Attempt, StoreError>;

    /// The head (seq and hash) of the chain the station appends to (SQLite: the database's
    /// one chain; PostgreSQL: the station's own), `None` while empty.
    async fn audit_head(&mut self, station_id: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// Inserts an entry as chained.
    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Appends an entry after the head of its chain ([`NewEntry::chained_after`]) and returns
    /// its seq.
    async fn append_audit(&mut self, entry: &NewEntry) -> Result<i64, StoreError> {
        self.lock_chain(&entry.station_id).await?;
        let head = self.audit_head(&entry.station_id).await?;
        let entry = entry.chained_after(head);
        self.insert_audit(&entry).await?;
        Ok(entry.seq)
    }
    /// The details of the station's last entry with this action.
    async fn last_details(
        &mut self,
        action: &str,
        station_id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The entries of one batch (its `batch.open`/`batch.close` and every entry whose details
    /// name it) or all, the last `limit` of them, in the order they were written.
    async fn audit_entries(
        &mut self,
        batch: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// The entries whose hash starts with `prefix` (lowercase hex), at most two: their chain
    /// and seq. One names the entry, two say the prefix is ambiguous.
    async fn audit_hash_prefix(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError>;
    /// The hash of entry `seq` of the chain holding `station_id`'s entries.
    async fn audit_hash_at(
        &mut self,
        station_id: &str,
        seq: i64,
    ) -> Result<Option<String>, StoreError>;
    /// The chains, or the chain of one station.
    async fn audit_chains(
        &mut self,
        station_id: Option<&str>,
    ) -> Result<Vec<ChainBounds>, StoreError>;
    /// Walks the entries `low..=high` of a chain.
    async fn walk_chain(
        &mut self,
        walker: &mut ChainWalker,
        chain: &ChainBounds,
        low: i64,
        high: i64,
    ) -> Result<(), StoreError>;
    /// An attempt of the chain's station(s) whose audit entry is missing: its id and the seq
    /// it names.
    async fn orphaned_attempt(
        &mut self,
        chain: &ChainBounds,
    ) -> Result<Option<(i64, i64)>, StoreError>;

    /// The manifest rows a query selects, in one statement.
    async fn manifest(&mut self, query: &ManifestQuery) -> Result<Vec<ManifestRow>, StoreError>;

    /// The dashboard: every attempt in progress and the latest `recent`, newest first.
    async fn port_activity(&mut self, recent: u32) -> Result<Vec<PortActivity>, StoreError>;
    /// The dashboard: the batches open on any station, oldest first.
    async fn open_batches(&mut self) -> Result<Vec<Batch>, StoreError>;
    /// The dashboard: a batch's ended attempts counted per minute, oldest first.
    async fn batch_minutes(&mut self, batch_id: i64) -> Result<Vec<MinuteCount>, StoreError>;
    /// The dashboard: the last `limit` audit entries whose subject is one of `subjects` or
    /// that are one of `written` (station, position in its chain), in chain order.
    async fn audit_about(
        &mut self,
        subjects: &[&str],
        written: &[(&str, i64)],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}
