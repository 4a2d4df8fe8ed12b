//! What the supervisor dashboard reads (issue 16): the ports' latest activity, the open
//! batches, a unit's attempts and audit entries, a batch's output minute by minute. Reads
//! only; each is one statement over indexed columns, so a page stays fast with 100,000 units.

use super::{Store, StoreError};
use crate::identity::Mac;
use crate::record::{Attempt, AuditEntry, Batch, MinuteCount, PortActivity};

impl Store {
    /// Every attempt still in progress and the latest `recent` attempts, newest first, each
    /// with its unit's registration ID: what each port of each station is doing or did last.
    pub async fn port_activity(&self, recent: u32) -> Result<Vec<PortActivity>, StoreError> {
        on_backend!(self, db => db.port_activity(recent).await)
    }

    /// The batches open on any station, oldest first.
    pub async fn open_batches(&self) -> Result<Vec<Batch>, StoreError> {
        on_backend!(self, db => db.open_batches().await)
    }

    /// Every batch, newest first, without counts.
    pub async fn batch_list(&self) -> Result<Vec<Batch>, StoreError> {
        on_backend!(self, db => db.batch_list().await)
    }

    /// Every attempt on the unit with this MAC, oldest first, in any batch.
    pub async fn attempts_of_unit(&self, mac: &Mac) -> Result<Vec<Attempt>, StoreError> {
        on_backend!(self, db => db.attempts_of_unit(mac).await)
    }

    /// The audit entries about one unit: those whose subject is its MAC or registration ID,
    /// and those its attempts wrote; in chain order, the last `limit`.
    pub async fn audit_entries_about(
        &self,
        subjects: &[&str],
        seqs: &[i64],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, db => db.audit_entries_about(subjects, seqs, limit).await)
    }

    /// A batch's attempts that ended, counted per minute, oldest first.
    pub async fn batch_minutes(&self, batch_id: i64) -> Result<Vec<MinuteCount>, StoreError> {
        on_backend!(self, db => db.batch_minutes(batch_id).await)
    }
}
