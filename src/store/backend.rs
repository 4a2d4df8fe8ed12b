//! The seam between the [`Store`](super::Store) API and a database: everything a backend must
//! do, in the store's own typed terms.
//!
//! A backend owns its connection pool and its SQL dialect; the rules shared by every backend
//! (what an attempt does to its unit, what each audit entry says, how an entry is chained and
//! hashed) live beside the API ([`super::attempt`], [`super::audit`], [`super::session`]) and are
//! called from here, so two backends cannot drift apart on them. Each write that touches the
//! audit chain is one transaction that holds the backend's write lock (SQLite: `BEGIN
//! IMMEDIATE`) from reading the chain's head to committing, so concurrent writers never fork
//! the chain.
//!
//! To add a backend: implement this trait, add a variant to `Db` in `store/mod.rs` and a
//! branch to its `on_backend!` dispatch, and choose the backend in [`super::Store::open`].

use super::attempt::{AttemptRecord, AttemptStart, Recorded};
use super::audit::{ChainReport, NewEntry};
use super::session::StationOpen;
use super::{ManifestQuery, StoreError};
use crate::identity::{Mac, RegistrationId};
use crate::record::{
    Attempt, AuditEntry, Batch, BatchStatus, CertificateRow, ManifestRow, Stage, Unit, UnitDps,
};

/// What a database backend provides. Methods are async and return the store's typed rows.
pub(super) trait Backend {
    /// Closes the pool (SQLite: checkpoints the WAL).
    async fn close(&self);

    /// Opens a batch with its `batch.open` entry; refused if its name is taken or the station
    /// has an open batch.
    async fn open_batch(
        &self,
        name: &str,
        target: i64,
        operator: &str,
        station_id: &str,
    ) -> Result<Batch, StoreError>;
    /// Closes the named batch (or the station's open one) with its `batch.close` entry.
    async fn close_batch(
        &self,
        name: Option<&str>,
        operator: &str,
        station_id: &str,
    ) -> Result<BatchStatus, StoreError>;
    /// The station's open batch.
    async fn open_batch_of(&self, station_id: &str) -> Result<Option<Batch>, StoreError>;
    /// A batch by name.
    async fn batch_named(&self, name: &str) -> Result<Option<Batch>, StoreError>;
    /// A batch by row id.
    async fn batch_by_id(&self, id: i64) -> Result<Batch, StoreError>;
    /// A batch's counts, read in one snapshot.
    async fn batch_status(&self, batch: Batch) -> Result<BatchStatus, StoreError>;
    /// Every batch with its counts, newest first.
    async fn batches(&self) -> Result<Vec<BatchStatus>, StoreError>;

    /// The unit with this MAC.
    async fn unit_by_mac(&self, mac: &Mac) -> Result<Option<Unit>, StoreError>;
    /// The unit with this registration ID.
    async fn unit_by_registration_id(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<Option<Unit>, StoreError>;
    /// The units of a batch, in MAC order.
    async fn units_of(&self, batch_id: i64) -> Result<Vec<Unit>, StoreError>;
    /// Provisioned units whose DPS status is pending, oldest change first.
    async fn pending_dps_units(&self) -> Result<Vec<Unit>, StoreError>;
    /// Attempts of a batch, oldest first.
    async fn attempts_of(&self, batch_id: i64) -> Result<Vec<Attempt>, StoreError>;
    /// Attempts on the device with this MAC, in any batch, oldest first.
    async fn attempts_of_mac(&self, mac: &Mac) -> Result<Vec<Attempt>, StoreError>;

    /// Opens an attempt's row as in progress, stamped with this process.
    async fn begin_attempt(&self, start: &AttemptStart) -> Result<i64, StoreError>;
    /// Notes the stage an open attempt reached and, once read, the device's MAC.
    async fn attempt_reached(
        &self,
        attempt_id: i64,
        stage: Stage,
        mac: Option<Mac>,
    ) -> Result<(), StoreError>;
    /// Drops an open attempt that was no attempt at all.
    async fn discard_attempt(&self, attempt_id: i64) -> Result<(), StoreError>;
    /// Records a finished attempt: unit, attempt and audit entry in one transaction.
    async fn record_attempt(&self, record: &AttemptRecord) -> Result<Recorded, StoreError>;
    /// Closes the station's open attempts whose process is gone, as interrupted.
    async fn recover_interrupted(
        &self,
        station_id: &str,
        operator: &str,
    ) -> Result<Vec<Attempt>, StoreError>;
    /// Records a later DPS outcome for a unit with its `unit.dps_verified` entry.
    async fn record_dps(
        &self,
        unit_id: i64,
        dps: &UnitDps,
        station_id: &str,
        operator: &str,
    ) -> Result<Unit, StoreError>;

    /// Appends one entry on its own; its seq.
    async fn append_audit(&self, entry: &NewEntry) -> Result<i64, StoreError>;
    /// Appends what [`StationOpen::entries`] says after reading the station's last entries,
    /// in one transaction; how many it appended.
    async fn record_station_open(&self, open: &StationOpen) -> Result<usize, StoreError>;
    /// The whole log in chain order.
    async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// The entries of one batch (or all), the last `limit` of them, in chain order.
    async fn audit_entries_of(
        &self,
        batch: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// The seqs of the entries whose hash starts with `prefix` (lowercase hex), at most two:
    /// one names the entry, two say the prefix is ambiguous.
    async fn audit_hash_prefix(&self, prefix: &str) -> Result<Vec<i64>, StoreError>;
    /// The head of the chain holding `station_id`'s entries: its last seq and hash.
    async fn audit_head(&self, station_id: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// The hash of entry `seq` of the chain holding `station_id`'s entries.
    async fn audit_hash_at(&self, station_id: &str, seq: i64)
    -> Result<Option<String>, StoreError>;
    /// Re-walks the chain in one snapshot, and checks that every attempt's entry exists.
    async fn verify_audit(&self) -> Result<ChainReport, StoreError>;

    /// Every certificate issued for the unit with this MAC, oldest first.
    async fn certificates_of(&self, mac: &Mac) -> Result<Vec<CertificateRow>, StoreError>;

    /// The manifest rows a query selects, in one statement (one snapshot).
    async fn manifest(&self, query: &ManifestQuery) -> Result<Vec<ManifestRow>, StoreError>;
}
