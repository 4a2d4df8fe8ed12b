//! `audit verify` over a SQLite file: each range of the chain fetched in one query.
//!
//! Fetching a million rows one by one through the driver costs several times more than hashing
//! them, so each range comes back as one row that SQLite aggregates itself: the seqs, and per
//! field all the range's values back to back with the list of their lengths in bytes
//! (unambiguous whatever the fields hold). The station's own canonical encoding and hash then
//! run over the sliced fields on every core. If anything in a range is off (a break, counts that
//! do not agree, text that is not UTF-8), the range is walked again row by row, which alone
//! words the verdict.

use sqlx::Row as _;

use super::super::StoreError;
use super::super::audit::{self, ChainWalker};
use crate::record::AuditEntry;

/// A transaction on the file.
type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// The hashed fields after `seq`, in canonical order, then `hash`.
// The audit export's columns are the same fields: one list, so they cannot drift apart.
const FIELDS: &[&str] = crate::report::AUDIT_COLUMNS.split_at(1).1;

/// `count`, the seqs, then per field its values concatenated and their byte lengths. Rows are
/// scanned in seq (rowid) order; should SQLite ever aggregate in another order, the walk sees
/// seqs out of order and falls back to the row-by-row path.
fn fast_range_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let mut sql = String::from("SELECT count(*), group_concat(seq, ',')");
        for field in FIELDS {
            sql.push_str(&format!(
                ", CAST(group_concat({field}, '') AS BLOB), group_concat(octet_length({field}), ',')"
            ));
        }
        sql.push_str(" FROM audit_log WHERE seq BETWEEN ?1 AND ?2");
        sql
    })
}

/// One range as SQLite packed it.
#[derive(Debug, Default)]
struct Packed {
    count: i64,
    seqs: String,
    /// Per field: the values back to back, and their lengths.
    fields: Vec<(Vec<u8>, String)>,
}

/// Walks the entries `low..=high` of the chain. Memory stays bounded by the range, not by the
/// length of the log.
pub(super) async fn walk_range(
    tx: &mut Tx,
    walker: &mut ChainWalker,
    low: i64,
    high: i64,
) -> Result<(), StoreError> {
    let before = walker.clone();
    let packed = fetch_packed(tx, low, high).await?;
    if !walk_fast(walker, &packed) {
        *walker = before;
        let entries: Vec<AuditEntry> =
            sqlx::query_as("SELECT * FROM audit_log WHERE seq BETWEEN ? AND ? ORDER BY seq")
                .bind(low)
                .bind(high)
                .fetch_all(&mut **tx)
                .await?;
        walker.walk(&entries);
    }
    Ok(())
}

/// One range, packed by SQLite.
async fn fetch_packed(tx: &mut Tx, low: i64, high: i64) -> Result<Packed, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(fast_range_sql()))
        .bind(low)
        .bind(high)
        .fetch_one(&mut **tx)
        .await?;
    let mut packed = Packed {
        count: row.try_get(0)?,
        seqs: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        fields: Vec::with_capacity(FIELDS.len()),
    };
    for i in 0..FIELDS.len() {
        let values: Option<Vec<u8>> = row.try_get(2 + 2 * i)?;
        let lengths: Option<String> = row.try_get(3 + 2 * i)?;
        packed
            .fields
            .push((values.unwrap_or_default(), lengths.unwrap_or_default()));
    }
    Ok(packed)
}

/// Walks one packed range; false when anything is off (the caller then walks the range again
/// from the rows).
fn walk_fast(walker: &mut ChainWalker, packed: &Packed) -> bool {
    let Some(entries) = unpack(packed) else {
        return false;
    };
    let intact = audit::entries_intact(&entries);
    entries.iter().zip(intact).all(|(entry, intact)| {
        intact && walker.step(entry.seq, entry.prev_hash, entry.hash, true, String::new)
    })
}

/// The entries of a packed range, or `None` if its parts do not agree.
fn unpack(packed: &Packed) -> Option<Vec<audit::EntryRef<'_>>> {
    let count = usize::try_from(packed.count).ok()?;
    if count == 0 {
        return Some(Vec::new());
    }
    let seqs: Vec<i64> = packed
        .seqs
        .split(',')
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    if seqs.len() != count || packed.fields.len() != FIELDS.len() {
        return None;
    }
    // Per field, the count values sliced out of its concatenation.
    let mut columns: Vec<Vec<&str>> = Vec::with_capacity(FIELDS.len());
    for (values, lengths) in &packed.fields {
        let values = std::str::from_utf8(values).ok()?;
        let mut column = Vec::with_capacity(count);
        let mut offset = 0usize;
        for length in lengths.split(',') {
            let end = offset.checked_add(length.parse().ok()?)?;
            column.push(values.get(offset..end)?);
            offset = end;
        }
        if column.len() != count || offset != values.len() {
            return None;
        }
        columns.push(column);
    }
    Some(
        (0..count)
            .map(|i| audit::EntryRef {
                seq: seqs[i],
                at: columns[0][i],
                station_id: columns[1][i],
                operator: columns[2][i],
                action: columns[3][i],
                subject: columns[4][i],
                details: columns[5][i],
                prev_hash: columns[6][i],
                hash: columns[7][i],
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packed_ranges_carry_any_text_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("station.db"))
            .await
            .unwrap();
        let odd = [
            "plain",
            "quote \" backslash \\ slash / comma , colon : 12:34",
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
        let mut tx = store.sqlite_pool().unwrap().begin().await.unwrap();
        let mut packed = fetch_packed(&mut tx, 1, 100).await.unwrap();
        tx.commit().await.unwrap();
        let entries = store.audit_entries().await.unwrap();
        let unpacked = unpack(&packed).unwrap();
        assert_eq!(packed.count, 5);
        assert_eq!(unpacked.len(), 5);
        for (e, u) in entries.iter().zip(&unpacked) {
            assert_eq!(
                (
                    u.seq,
                    u.at,
                    u.operator,
                    u.subject,
                    u.details,
                    u.prev_hash,
                    u.hash
                ),
                (
                    e.seq,
                    e.at.as_str(),
                    e.operator.as_str(),
                    e.subject.as_str(),
                    e.details.as_str(),
                    e.prev_hash.as_str(),
                    e.hash.as_str()
                )
            );
        }
        let mut walker = ChainWalker::new();
        assert!(walk_fast(&mut walker, &packed));
        assert_eq!(walker.report().first_break, None);
        assert!(store.verify_audit().await.unwrap().first_break.is_none());

        // Parts that do not agree send the range to the row-by-row path.
        packed.count += 1;
        assert!(unpack(&packed).is_none());
        packed.count -= 1;
        packed.fields[4].1.push_str(",1");
        assert!(unpack(&packed).is_none());
        let restored = packed.fields[4].1.len() - 2;
        packed.fields[4].1.truncate(restored);
        assert!(unpack(&packed).is_some());
        packed.fields[3].0.push(b'x');
        assert!(unpack(&packed).is_none());
        packed.fields[3].0.pop();
        // A length that would split a character.
        let (values, lengths) = &mut packed.fields[2];
        let at = values.iter().position(|&b| b == 0xc3).unwrap();
        let mut cut: Vec<usize> = lengths.split(',').map(|l| l.parse().unwrap()).collect();
        // Move bytes from the value holding the 0xc3 to the next: same total, a split character.
        let mut offset = 0;
        for i in 0..cut.len() {
            if offset + cut[i] > at {
                let moved = offset + cut[i] - (at + 1);
                cut[i] -= moved;
                cut[i + 1] += moved;
                break;
            }
            offset += cut[i];
        }
        *lengths = cut
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        assert!(unpack(&packed).is_none());
    }
}
