//! The rows of a QA manifest, read in one statement so that a manifest taken while the line is
//! recording is a consistent snapshot (SQLite WAL readers see whole transactions only).

use std::io::Write;

use serde_json::json;

use super::{Store, StoreError, append_audit_tx};
use crate::clock::{format_time, now};
use crate::error::Error;
use crate::report::{self, ManifestFormat};

/// Which units a manifest lists: the provisioned units, optionally of one batch and provisioned
/// within `[since, until)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestFilter {
    /// Only units whose last provisioning was in this batch.
    pub batch: Option<String>,
    /// Only units provisioned at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Only units provisioned before this time.
    pub until: Option<time::OffsetDateTime>,
}

impl ManifestFilter {
    /// Every provisioned unit of one batch.
    pub fn batch(name: &str) -> ManifestFilter {
        ManifestFilter {
            batch: Some(name.to_owned()),
            ..ManifestFilter::default()
        }
    }

    /// The filter as recorded in the audit entry of an export.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "batch": self.batch,
            "since": self.since.map(format_time),
            "until": self.until.map(format_time),
        })
    }
}

/// One row of a QA manifest: one provisioned unit. The fields, in this order, are the manifest's
/// columns (README "QA manifests and audit"); they are stable across releases. No key is here:
/// only the group key's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ManifestRow {
    /// The batch the unit was last provisioned in.
    pub batch: String,
    /// `24:0a:c4:12:34:56`.
    pub mac: String,
    /// The DPS registration ID flashed into the unit.
    pub registration_id: String,
    /// Chip (`esp32`).
    pub chip: String,
    /// Chip revision (`v3.0`).
    pub chip_revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// SHA-256 of the NVS image written, lowercase hex.
    pub nvs_sha256: Option<String>,
    /// Fingerprint of the group key the device key was derived from.
    pub group_key_id: String,
    /// When the unit was verified and recorded provisioned (RFC 3339, UTC).
    pub provisioned_at: Option<String>,
    /// Who answered for the unit's last successful attempt.
    pub operator: Option<String>,
    /// The station that wrote it.
    pub station_id: String,
    /// The port of the last successful attempt.
    pub port: Option<String>,
    /// Attempts recorded for this MAC, whatever their outcome, in any batch.
    pub attempts: i64,
    /// `not-requested` | `pending` | `assigned` | `failed`.
    pub dps_status: String,
    /// The IoT hub DPS assigned, once assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned, once assigned.
    pub device_id: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestExport {
    /// Rows written (units).
    pub rows: usize,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the bytes written, lowercase hex (also in the audit entry).
    pub sha256: String,
    /// The audit entry that records the export.
    pub audit_seq: i64,
}

/// Operator and port come from the unit's last successful attempt; attempts are counted per MAC
/// without looking at outcomes, so attempts still running or interrupted count too.
const MANIFEST_SQL: &str = "\
SELECT b.name AS batch, u.mac, u.registration_id, u.chip, u.revision AS chip_revision, \
       u.flash_size, u.image_sha256 AS nvs_sha256, u.key_id AS group_key_id, u.provisioned_at, \
       a.operator, u.station_id, a.port, \
       (SELECT COUNT(*) FROM attempts c WHERE c.mac = u.mac) AS attempts, \
       u.dps_status, u.assigned_hub, u.device_id \
FROM units u \
JOIN batches b ON b.id = u.batch_id \
LEFT JOIN attempts a ON a.id = (SELECT MAX(s.id) FROM attempts s \
                                WHERE s.unit_id = u.id AND s.outcome = 'provisioned') \
WHERE u.state = 'provisioned' \
  AND (?1 IS NULL OR u.batch_id = ?1) \
  AND (?2 IS NULL OR u.provisioned_at >= ?2) \
  AND (?3 IS NULL OR u.provisioned_at < ?3) \
ORDER BY u.provisioned_at, u.mac";

impl Store {
    /// The manifest rows the filter selects, oldest provisioning first. A named batch that does
    /// not exist is an error ([`StoreError::NoSuchBatch`]); an empty selection is not.
    pub async fn manifest(&self, filter: &ManifestFilter) -> Result<Vec<ManifestRow>, StoreError> {
        let batch_id = match &filter.batch {
            Some(name) => Some(self.batch(name).await?.id),
            None => None,
        };
        Ok(sqlx::query_as(MANIFEST_SQL)
            .bind(batch_id)
            .bind(filter.since.map(format_time))
            .bind(filter.until.map(format_time))
            .fetch_all(self.pool())
            .await?)
    }

    /// Writes the manifest the filter selects to `out` and records the export in the audit log
    /// (`manifest.exported`: filter, format, row count and the SHA-256 of the bytes written).
    ///
    /// This is the whole of `station export manifest`; `station demo` calls it too.
    pub async fn export_manifest<W: Write>(
        &self,
        filter: &ManifestFilter,
        format: ManifestFormat,
        station_id: &str,
        operator: &str,
        out: &mut W,
    ) -> Result<ManifestExport, Error> {
        let rows = self.manifest(filter).await?;
        let mut hashing = report::HashingWriter::new(out);
        report::write_manifest(&rows, format, &mut hashing)
            .map_err(|e| Error::io("writing", "the manifest", e))?;
        let (bytes, sha256) = hashing.finish();
        let mut details = filter.to_json();
        details["format"] = json!(format.as_str());
        details["rows"] = json!(rows.len());
        details["bytes"] = json!(bytes);
        details["sha256"] = json!(sha256);
        let subject = filter.batch.as_deref().unwrap_or("all batches");
        let mut tx = self.begin_write().await?;
        let audit_seq = append_audit_tx(
            &mut tx,
            &now(),
            station_id,
            operator,
            "manifest.exported",
            subject,
            details,
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ManifestExport {
            rows: rows.len(),
            bytes,
            sha256,
            audit_seq,
        })
    }
}

#[cfg(test)]
mod tests;
