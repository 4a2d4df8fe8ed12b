//! The QA manifest's selection and its audited export. The rows are read in one statement, so
//! that a manifest taken while the line is recording is a consistent snapshot (a unit appears
//! with its attempt and audit entry or not at all).

use std::io::Write;

use serde_json::json;

use super::audit::NewEntry;
use super::{Store, StoreError};
use crate::clock::{format_time, now};
use crate::file::FileError;
use crate::record::ManifestRow;
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

/// A filter resolved for a backend: the batch by row id, the times as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManifestQuery {
    /// The batch's row id.
    pub(crate) batch_id: Option<i64>,
    /// Provisioned at or after (stored form).
    pub(crate) since: Option<String>,
    /// Provisioned before (stored form).
    pub(crate) until: Option<String>,
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
    /// The signed checkpoint of the chain written just before the export, when the station
    /// signs checkpoints: QA keeps it with the manifest, an anchor outside the station.
    pub checkpoint: Option<crate::checkpoint::Checkpoint>,
}

impl Store {
    /// The manifest rows the filter selects, oldest provisioning first. A named batch that does
    /// not exist is an error ([`StoreError::NoSuchBatch`]); an empty selection is not.
    pub async fn manifest(&self, filter: &ManifestFilter) -> Result<Vec<ManifestRow>, StoreError> {
        let batch_id = match &filter.batch {
            Some(name) => Some(self.batch(name).await?.id),
            None => None,
        };
        let query = ManifestQuery {
            batch_id,
            since: filter.since.map(format_time),
            until: filter.until.map(format_time),
        };
        on_backend!(self, db => super::ops::manifest(db, &query).await)
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
    ) -> Result<ManifestExport, StoreError> {
        let rows = self.manifest(filter).await?;
        let checkpoint = self.checkpoint("manifest.export").await?;
        let mut hashing = report::HashingWriter::new(out);
        report::write_manifest(&rows, format, &mut hashing)
            .map_err(|e| FileError::new("writing", "the manifest", e))?;
        let (bytes, sha256) = hashing.finish();
        let mut details = filter.to_json();
        details["format"] = json!(format.as_str());
        details["rows"] = json!(rows.len());
        details["bytes"] = json!(bytes);
        details["sha256"] = json!(sha256);
        if let Some(checkpoint) = &checkpoint {
            details["checkpoint_seq"] = json!(checkpoint.seq);
        }
        let subject = filter.batch.as_deref().unwrap_or("all batches");
        let entry = NewEntry::at(
            &now(),
            station_id,
            operator,
            "manifest.exported",
            subject,
            details,
        );
        let audit_seq = on_backend!(self, db => super::ops::append_audit(db, &entry).await)?;
        self.checkpoint_if_due().await;
        Ok(ManifestExport {
            rows: rows.len(),
            bytes,
            sha256,
            audit_seq,
            checkpoint,
        })
    }
}

#[cfg(test)]
mod tests;
