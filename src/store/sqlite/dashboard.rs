//! The dashboard's reads on SQLite (`super::super::dashboard`).

use super::Sqlite;
use crate::identity::Mac;
use crate::record::{Attempt, AuditEntry, Batch, MinuteCount, PortActivity};
use crate::store::StoreError;

impl Sqlite {
    pub(in crate::store) async fn port_activity(
        &self,
        recent: u32,
    ) -> Result<Vec<PortActivity>, StoreError> {
        // The open attempts come from their partial index, the recent ones from the rowid:
        // neither reads the whole table.
        Ok(sqlx::query_as(
            "SELECT a.id, a.station_id, a.batch_id, a.port, a.mac, u.registration_id, a.started_at, \
             a.finished_at, a.outcome, a.stage, a.error_code, a.message \
             FROM attempts a LEFT JOIN units u ON u.id = a.unit_id \
             WHERE a.id IN (SELECT id FROM attempts WHERE outcome = 'in-progress' \
                            UNION SELECT id FROM (SELECT id FROM attempts ORDER BY id DESC LIMIT ?)) \
             ORDER BY a.id DESC",
        )
        .bind(i64::from(recent))
        .fetch_all(self.pool())
        .await?)
    }

    pub(in crate::store) async fn open_batches(&self) -> Result<Vec<Batch>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM batches WHERE closed_at IS NULL ORDER BY id")
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub(in crate::store) async fn batch_list(&self) -> Result<Vec<Batch>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM batches ORDER BY id DESC")
            .fetch_all(self.pool())
            .await?)
    }

    pub(in crate::store) async fn attempts_of_unit(
        &self,
        mac: &Mac,
    ) -> Result<Vec<Attempt>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM attempts WHERE mac = ? ORDER BY id")
                .bind(mac)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub(in crate::store) async fn audit_entries_about(
        &self,
        subjects: &[&str],
        seqs: &[i64],
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let subjects = serde_json::to_string(subjects).unwrap_or_else(|_| "[]".to_owned());
        let seqs = serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned());
        Ok(sqlx::query_as(
            "SELECT * FROM (SELECT * FROM audit_log \
             WHERE subject IN (SELECT value FROM json_each(?1)) \
                OR seq IN (SELECT value FROM json_each(?2)) \
             ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
        )
        .bind(subjects)
        .bind(seqs)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?)
    }

    pub(in crate::store) async fn batch_minutes(
        &self,
        batch_id: i64,
    ) -> Result<Vec<MinuteCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT substr(finished_at, 1, 16) AS minute, \
             COALESCE(SUM(outcome = 'provisioned'), 0) AS provisioned, \
             COALESCE(SUM(outcome IN ('failed', 'interrupted')), 0) AS failed \
             FROM attempts WHERE batch_id = ? AND finished_at IS NOT NULL \
             GROUP BY minute ORDER BY minute",
        )
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?)
    }
}
