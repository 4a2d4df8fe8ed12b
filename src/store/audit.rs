//! The audit chain: canonical encoding, hashing and verification of `audit_log` entries.
//!
//! Each entry's `hash` is the SHA-256, in lowercase hex, of its canonical encoding: the JSON
//! array `[seq, at, station_id, operator, action, subject, details, prev_hash]` as serde_json
//! writes it (no whitespace; `details` is the stored text, itself JSON with sorted keys).
//! `prev_hash` is the previous entry's hash, or 64 zeros for the first entry. Changing any field
//! of any entry, removing an entry or reordering entries breaks the chain at that point; SQL
//! triggers refuse UPDATE and DELETE, and verification catches changes made by other means
//! (another SQLite client with the triggers dropped, a hex editor).

use sha2::{Digest as _, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Which station wrote it.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// What happened (`batch.open`, `unit.provisioned`, ...).
    pub action: String,
    /// To what (a batch name, a MAC).
    pub subject: String,
    /// JSON object with the particulars (sorted keys).
    pub details: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The hash of an entry with these fields.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    seq: i64,
    at: &str,
    station_id: &str,
    operator: &str,
    action: &str,
    subject: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([
        seq, at, station_id, operator, action, subject, details, prev_hash
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

impl AuditEntry {
    /// The hash this entry's fields produce (compare with [`AuditEntry::hash`]).
    pub fn computed_hash(&self) -> String {
        entry_hash(
            self.seq,
            &self.at,
            &self.station_id,
            &self.operator,
            &self.action,
            &self.subject,
            &self.details,
            &self.prev_hash,
        )
    }
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Break {
    /// The first entry that does not match (or the seq expected where one is missing).
    pub seq: i64,
    /// What does not match, in words.
    pub problem: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Entries walked.
    pub entries: i64,
    /// The last entry's hash: write it down to prove later that nothing was appended or removed
    /// after this point.
    pub head_hash: String,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

/// Walks entries in `seq` order and reports the first that does not match.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> ChainReport {
    let mut prev_hash = GENESIS.to_owned();
    let mut count = 0;
    for (expected_seq, entry) in (1..).zip(entries) {
        count += 1;
        let problem = if entry.seq != expected_seq {
            Some(if entry.seq > expected_seq {
                format!(
                    "entries {expected_seq}..{} are missing (removed?); found entry {} next",
                    entry.seq - 1,
                    entry.seq
                )
            } else {
                format!("entry {} appears out of order", entry.seq)
            })
        } else if entry.prev_hash != prev_hash {
            Some(format!(
                "its prev_hash does not match the hash of entry {} (an entry was removed, inserted or rewritten)",
                expected_seq - 1
            ))
        } else if entry.computed_hash() != entry.hash {
            Some(format!(
                "its contents do not match its hash (it was edited): {} {} at {}",
                entry.action, entry.subject, entry.at
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return ChainReport {
                entries: count,
                head_hash: prev_hash,
                first_break: Some(Break {
                    seq: expected_seq,
                    problem,
                }),
            };
        }
        prev_hash.clone_from(&entry.hash);
    }
    ChainReport {
        entries: count,
        head_hash: prev_hash,
        first_break: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let prev_hash = out.last().map_or(GENESIS.to_owned(), |e| e.hash.clone());
            let mut entry = AuditEntry {
                seq,
                at: format!("2026-11-25T10:00:0{seq}.000Z"),
                station_id: "st1".into(),
                operator: "ana".into(),
                action: "unit.provisioned".into(),
                subject: format!("24:0a:c4:00:00:0{seq}"),
                details: r#"{"key_id":"sha256:0011223344556677"}"#.into(),
                prev_hash,
                hash: String::new(),
            };
            entry.hash = entry.computed_hash();
            out.push(entry);
        }
        out
    }

    #[test]
    fn intact_chain_verifies_and_reports_its_head() {
        let entries = chain(4);
        let report = verify_chain(&entries);
        assert_eq!(report.first_break, None);
        assert_eq!(report.entries, 4);
        assert_eq!(report.head_hash, entries[3].hash);
        assert_eq!(verify_chain(&[]).head_hash, GENESIS);
    }

    #[test]
    fn hash_covers_every_field() {
        let base = chain(1).remove(0);
        let edits: [fn(&mut AuditEntry); 8] = [
            |e| e.seq = 2,
            |e| e.at.push('1'),
            |e| e.station_id.push('x'),
            |e| e.operator.push('x'),
            |e| e.action.push('x'),
            |e| e.subject.push('x'),
            |e| e.details.push(' '),
            |e| e.prev_hash.replace_range(0..1, "1"),
        ];
        for edit in edits {
            let mut entry = base.clone();
            edit(&mut entry);
            assert_ne!(entry.computed_hash(), base.hash);
        }
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let base = chain(1).remove(0);
        let mut shifted = base.clone();
        shifted.station_id = "st1a".into();
        shifted.operator = "na".into();
        assert_ne!(shifted.computed_hash(), base.hash);
    }

    #[test]
    fn edited_entry_is_named() {
        let mut entries = chain(5);
        entries[2].operator = "mallory".into();
        let report = verify_chain(&entries);
        let broken = report.first_break.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.problem.contains("edited"), "{}", broken.problem);
    }

    #[test]
    fn removed_entry_is_named() {
        let mut entries = chain(5);
        entries.remove(1);
        let broken = verify_chain(&entries).first_break.unwrap();
        assert_eq!(broken.seq, 2);
        assert!(broken.problem.contains("missing"), "{}", broken.problem);
    }

    #[test]
    fn rewritten_tail_with_renumbering_is_caught_by_prev_hash() {
        let mut entries = chain(5);
        entries.remove(2);
        for (i, entry) in entries.iter_mut().enumerate() {
            entry.seq = i as i64 + 1;
            entry.hash = entry.computed_hash();
        }
        let broken = verify_chain(&entries).first_break.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.problem.contains("prev_hash"), "{}", broken.problem);
    }
}
