//! QA manifests and audit exports: rendering only, over [`std::io::Write`].
//!
//! The store selects the rows (typed, [`crate::record`]); this module turns them into the formats people
//! and tools read: manifest CSV (RFC 4180, header row always present) and JSON (an array of
//! objects, one per line), audit JSON lines, CSV and a terminal table. The manifest's columns are
//! [`MANIFEST_COLUMNS`], in that order, stable across releases (README "QA manifests and
//! audit"). Nothing here touches the database, a file or the network.

use std::fmt::Write as _;
use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

use crate::record::{AuditEntry, ManifestRow};

/// The manifest's columns, in order: the CSV header and the JSON keys.
pub const MANIFEST_COLUMNS: [&str; 20] = [
    "batch",
    "mac",
    "registration_id",
    "chip",
    "chip_revision",
    "flash_size",
    "nvs_sha256",
    "group_key_id",
    "provisioned_at",
    "operator",
    "station_id",
    "port",
    "attempts",
    "dps_status",
    "assigned_hub",
    "device_id",
    "attestation",
    "cert_serial",
    "cert_thumbprint",
    "cert_not_after",
];

/// The audit export's columns, in order.
pub const AUDIT_COLUMNS: [&str; 9] = [
    "seq",
    "at",
    "station_id",
    "operator",
    "action",
    "subject",
    "details",
    "prev_hash",
    "hash",
];

/// Manifest formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array of objects, one object per line.
    Json,
}

impl ManifestFormat {
    /// The name used on the command line and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestFormat::Csv => "csv",
            ManifestFormat::Json => "json",
        }
    }
}

/// Audit export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// Writes manifest rows. An empty manifest is the header alone (CSV) or `[]` (JSON).
pub fn write_manifest(
    rows: &[ManifestRow],
    format: ManifestFormat,
    out: &mut impl Write,
) -> io::Result<()> {
    match format {
        ManifestFormat::Csv => {
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            writer.write_record(MANIFEST_COLUMNS)?;
            for row in rows {
                writer.serialize(row)?;
            }
            writer.flush()?;
        }
        ManifestFormat::Json => write_json_lines_array(rows, out)?,
    }
    Ok(())
}

/// `[`, one compact object per line separated by commas, `]`: valid JSON that diffs line by line.
fn write_json_lines_array<T: serde::Serialize>(
    items: &[T],
    out: &mut impl Write,
) -> io::Result<()> {
    if items.is_empty() {
        return out.write_all(b"[]\n");
    }
    out.write_all(b"[\n")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut *out, item)?;
    }
    out.write_all(b"\n]\n")
}

/// Writes audit entries with their hashes, for an auditor's own tools: one JSON object per line,
/// or CSV with a header row (present even when there are no entries).
pub fn write_audit(
    entries: &[AuditEntry],
    format: AuditFormat,
    out: &mut impl Write,
) -> io::Result<()> {
    match format {
        AuditFormat::Jsonl => {
            for entry in entries {
                serde_json::to_writer(&mut *out, entry)?;
                out.write_all(b"\n")?;
            }
        }
        AuditFormat::Csv => {
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            writer.write_record(AUDIT_COLUMNS)?;
            for entry in entries {
                writer.serialize(entry)?;
            }
            writer.flush()?;
        }
    }
    Ok(())
}

/// Writes audit entries as a table for the terminal: seq, time, station, operator, action,
/// subject and the details as `name=value` pairs (empty values left out). Hashes are left to
/// `audit export` and `audit verify`.
pub fn write_audit_table(entries: &[AuditEntry], out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                e.at.clone(),
                e.station_id.clone(),
                e.operator.clone(),
                e.action.clone(),
                e.subject.clone(),
                details_pairs(&e.details),
            ]
        })
        .collect();
    let header = [
        "SEQ", "TIME", "STATION", "OPERATOR", "ACTION", "SUBJECT", "DETAILS",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            match i {
                0 => {
                    let _ = write!(line, "{cell:>width$}");
                }
                6 => line.push_str(cell),
                _ => {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            if i < 6 {
                line.push_str("  ");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `{"a":1,"b":null,"c":"x"}` as `a=1 c=x`; text that is not a JSON object is shown as is.
fn details_pairs(details: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(details) else {
        return details.to_owned();
    };
    let mut out = String::new();
    for (name, value) in map {
        let value = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) if s.is_empty() => continue,
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{name}={value}");
    }
    out
}

/// A writer that passes bytes through while counting them and hashing them with SHA-256, so an
/// export's digest is taken over exactly what was written.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The byte count and SHA-256 (lowercase hex) of everything written.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
