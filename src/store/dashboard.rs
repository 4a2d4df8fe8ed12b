//! What the supervisor dashboard reads (issue 16): the ports' latest activity, the open
//! batches, a unit's attempts and audit entries, a batch's output minute by minute. Reads
//! only, each one statement over indexed columns in one snapshot, so a page stays fast with
//! 100,000 units on either backend. The SQL is in `sql.rs` (shared) except the audit lookup,
//! whose lists each backend binds its own way.

use super::{Store, StoreError, ops};
use crate::record::{AuditEntry, Batch, MinuteCount, PortActivity};

impl Store {
    /// Every attempt still in progress and the latest `recent` attempts, newest first, each
    /// with its unit's registration ID: what each port of each station is doing or did last.
    pub async fn port_activity(&self, recent: u32) -> Result<Vec<PortActivity>, StoreError> {
        on_backend!(self, db => ops::port_activity(db, recent).await)
    }

    /// The batches open on any station, oldest first.
    pub async fn open_batches(&self) -> Result<Vec<Batch>, StoreError> {
        on_backend!(self, db => ops::open_batches(db).await)
    }

    /// Every batch, newest first, without counts.
    pub async fn batch_list(&self) -> Result<Vec<Batch>, StoreError> {
        on_backend!(self, db => ops::batch_list(db).await)
    }

    /// The audit entries about one unit: those whose subject is its MAC or registration ID,
    /// and those its attempts wrote (`written`: each attempt's station and its entry's
    /// position in that station's chain); in chain order, the last `limit`.
    pub async fn audit_entries_about(
        &self,
        subjects: &[&str],
        written: &[(&str, i64)],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, db => ops::audit_about(db, subjects, written, limit).await)
    }

    /// A batch's attempts that ended, counted per minute, oldest first.
    pub async fn batch_minutes(&self, batch_id: i64) -> Result<Vec<MinuteCount>, StoreError> {
        on_backend!(self, db => ops::batch_minutes(db, batch_id).await)
    }
}
