//! `audit verify` over the database: the chain walked in seq ranges inside one read transaction.
//!
//! Fetching a million rows one by one through the driver costs several times more than hashing
//! them, so each range is read as one blob that SQLite concatenates itself: per entry, its seq
//! and its eight text fields, each prefixed with its length in bytes (unambiguous whatever the
//! fields hold). The station's own canonical encoding and hash then run over the parsed fields
//! on every core. If anything in a range is off (a break, a count that does not match, text that
//! is not UTF-8), the range is walked again row by row, which alone words the verdict.

use super::audit::{self, ChainReport, ChainWalker};
use super::{AuditEntry, Store, StoreError};

/// Entries per range: a few MB per query.
const RANGE: i64 = 16_384;

const FAST_RANGE_SQL: &str = "\
SELECT count(*), CAST(group_concat( \
    seq || ':' || octet_length(at) || ':' || at || octet_length(station_id) || ':' || station_id \
    || octet_length(operator) || ':' || operator || octet_length(action) || ':' || action \
    || octet_length(subject) || ':' || subject || octet_length(details) || ':' || details \
    || octet_length(prev_hash) || ':' || prev_hash || octet_length(hash) || ':' || hash, \
    '' ORDER BY seq) AS BLOB) \
FROM audit_log WHERE seq BETWEEN ?1 AND ?2";

impl Store {
    /// Re-walks the audit chain, and checks that every attempt's audit entry is still there (a
    /// chain cut short at its end is otherwise consistent).
    ///
    /// Everything is read in one read transaction, a snapshot: the line keeps recording meanwhile
    /// (WAL), and entries it appends are left for the next verify. Memory stays bounded by the
    /// range size, not by the length of the log.
    pub async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        let mut tx = self.pool().begin().await?;
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM audit_log")
                .fetch_one(&mut *tx)
                .await?;
        let mut walker = ChainWalker::new();
        if let (Some(first), Some(last)) = (first, last) {
            let mut low = first;
            while low <= last && !walker.is_broken() {
                let high = low.saturating_add(RANGE - 1).min(last);
                let before = walker.clone();
                let (count, packed): (i64, Option<Vec<u8>>) = sqlx::query_as(FAST_RANGE_SQL)
                    .bind(low)
                    .bind(high)
                    .fetch_one(&mut *tx)
                    .await?;
                if !walk_fast(&mut walker, count, packed.as_deref().unwrap_or_default()) {
                    walker = before;
                    let entries: Vec<AuditEntry> = sqlx::query_as(
                        "SELECT * FROM audit_log WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    )
                    .bind(low)
                    .bind(high)
                    .fetch_all(&mut *tx)
                    .await?;
                    walker.walk(&entries);
                }
                low = high.saturating_add(1);
            }
        }
        let mut report = walker.report();
        if report.first_break.is_none() {
            let orphan: Option<(i64, i64)> = sqlx::query_as(
                "SELECT a.id, a.audit_seq FROM attempts a LEFT JOIN audit_log l ON l.seq = a.audit_seq \
                 WHERE a.audit_seq IS NOT NULL AND l.seq IS NULL ORDER BY a.audit_seq LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((attempt, seq)) = orphan {
                report.first_break = Some(audit::Break {
                    seq,
                    problem: format!(
                        "attempt {attempt} refers to audit entry {seq}, which is missing (the log was cut short)"
                    ),
                });
            }
        }
        tx.commit().await?;
        Ok(report)
    }
}

/// Walks one range from SQLite's packed blob; false when anything is off (the caller then
/// walks the range again from the rows).
fn walk_fast(walker: &mut ChainWalker, count: i64, packed: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(packed) else {
        return false;
    };
    let Some(entries) = unpack(text) else {
        return false;
    };
    if i64::try_from(entries.len()) != Ok(count) {
        return false;
    }
    let intact = audit::entries_intact(&entries);
    entries.iter().zip(intact).all(|(entry, intact)| {
        intact && walker.step(entry.seq, entry.prev_hash, entry.hash, true, String::new)
    })
}

/// `seq:` then eight `<bytes>:<text>` fields per entry, back to back; `None` if malformed.
fn unpack(mut text: &str) -> Option<Vec<audit::EntryRef<'_>>> {
    fn number<'a>(text: &mut &'a str) -> Option<&'a str> {
        let (digits, rest) = text.split_once(':')?;
        *text = rest;
        Some(digits)
    }
    fn field<'a>(text: &mut &'a str) -> Option<&'a str> {
        let length: usize = number(text)?.parse().ok()?;
        let value = text.get(..length)?;
        *text = text.get(length..)?;
        Some(value)
    }
    let mut entries = Vec::with_capacity(RANGE as usize);
    while !text.is_empty() {
        let seq = number(&mut text)?.parse().ok()?;
        let mut fields = [""; 8];
        for slot in &mut fields {
            *slot = field(&mut text)?;
        }
        let [
            at,
            station_id,
            operator,
            action,
            subject,
            details,
            prev_hash,
            hash,
        ] = fields;
        entries.push(audit::EntryRef {
            seq,
            at,
            station_id,
            operator,
            action,
            subject,
            details,
            prev_hash,
            hash,
        });
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packed_ranges_carry_any_text_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("station.db")).await.unwrap();
        let odd = [
            "plain",
            "quote \" backslash \\ slash / colon : 12:34",
            "tab\tnewline\ncr\rbell\u{7} esc\u{1b} del\u{7f}",
            "Zoë 東京 🙂 \u{2028}",
            "",
        ];
        for text in odd {
            store
                .append_audit(
                    "st1",
                    text,
                    "test.odd",
                    text,
                    serde_json::json!({ "v": text }),
                )
                .await
                .unwrap();
        }
        let (count, packed): (i64, Option<Vec<u8>>) = sqlx::query_as(FAST_RANGE_SQL)
            .bind(1)
            .bind(100)
            .fetch_one(store.pool())
            .await
            .unwrap();
        let entries = store.audit_entries().await.unwrap();
        let packed = packed.unwrap();
        let unpacked = unpack(std::str::from_utf8(&packed).unwrap()).unwrap();
        assert_eq!(count, 5);
        assert_eq!(unpacked.len(), 5);
        for (e, u) in entries.iter().zip(&unpacked) {
            assert_eq!(
                (u.seq, u.operator, u.subject, u.details, u.hash),
                (
                    e.seq,
                    e.operator.as_str(),
                    e.subject.as_str(),
                    e.details.as_str(),
                    e.hash.as_str()
                )
            );
        }
        let mut walker = ChainWalker::new();
        assert!(walk_fast(&mut walker, count, &packed));
        assert_eq!(walker.report().first_break, None);
        // A count that does not match what was unpacked sends the range to the slow path.
        assert!(!walk_fast(&mut ChainWalker::new(), count + 1, &packed));
        assert!(store.verify_audit().await.unwrap().first_break.is_none());
    }

    #[test]
    fn malformed_packs_are_refused() {
        assert!(unpack("").unwrap().is_empty());
        assert!(unpack("1:1:a1:b1:c1:d1:e1:f1:g1:h").is_some());
        for bad in [
            "1:1:a1:b",
            "x:1:a1:b1:c1:d1:e1:f1:g1:h",
            "1:9:a1:b1:c1:d1:e1:f1:g1:h",
            "1:1:a1:b1:c1:d1:e1:f1:g1:h2",
        ] {
            assert!(unpack(bad).is_none(), "{bad}");
        }
        // A length that would split a character.
        assert!(unpack("1:1:ë1:b1:c1:d1:e1:f1:g1:h").is_none());
    }
}
