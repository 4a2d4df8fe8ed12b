//! The audit chain: canonical encoding, hashing and verification of `audit_log` entries.
//!
//! Each entry's `hash` is the SHA-256, in lowercase hex, of its canonical encoding: the JSON
//! array `[seq, at, station_id, operator, action, subject, details, prev_hash]` as serde_json
//! writes it (no whitespace; `details` is the stored text, itself JSON with sorted keys).
//! `prev_hash` is the previous entry's hash in the same chain, or 64 zeros for the first entry.
//! A chain is the whole log of a SQLite database (one writer at a time), or one station's
//! entries in a PostgreSQL database (`seq` counts within the station, so stations append in
//! parallel). Changing any field of any entry, removing an entry or reordering entries breaks
//! the chain at that point; SQL triggers refuse UPDATE and DELETE (and PostgreSQL's `station`
//! role has no right to either), and verification catches changes made by other means
//! (another client with the triggers dropped, a hex editor).

use sha2::{Digest as _, Sha256};

use crate::record::AuditEntry;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry to append, before the chain gives it a place.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Which station writes it.
    pub station_id: String,
    /// Who is responsible.
    pub operator: String,
    /// What happened.
    pub action: String,
    /// To what.
    pub subject: String,
    /// The particulars.
    pub details: serde_json::Value,
}

impl NewEntry {
    /// An entry stamped `at` (the time of the transaction it belongs to).
    pub fn at(
        at: &str,
        station_id: &str,
        operator: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) -> NewEntry {
        NewEntry {
            at: at.to_owned(),
            station_id: station_id.to_owned(),
            operator: operator.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            details,
        }
    }

    /// The entry as it follows `head` (the last entry's seq and hash, `None` for an empty log):
    /// the next seq, linked to the head's hash, with its own hash. Every backend appends what
    /// this returns, so the encoding is the same whatever stores it.
    pub fn chained_after(&self, head: Option<(i64, String)>) -> AuditEntry {
        let (seq, prev_hash) = head.map_or((1, GENESIS.to_owned()), |(seq, hash)| (seq + 1, hash));
        // serde_json's default map is ordered by key, which makes `details` canonical.
        let details = self.details.to_string();
        let hash = entry_hash(
            seq,
            &self.at,
            &self.station_id,
            &self.operator,
            &self.action,
            &self.subject,
            &details,
            &prev_hash,
        );
        AuditEntry {
            seq,
            at: self.at.clone(),
            station_id: self.station_id.clone(),
            operator: self.operator.clone(),
            action: self.action.clone(),
            subject: self.subject.clone(),
            details,
            prev_hash,
            hash,
        }
    }
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
    let mut canonical = Vec::with_capacity(256);
    write_canonical(
        &mut canonical,
        seq,
        [
            at, station_id, operator, action, subject, details, prev_hash,
        ],
    );
    hex::encode(Sha256::digest(&canonical))
}

/// The canonical encoding: serde_json's compact array of the fields. A tuple serializes exactly
/// as the `serde_json::Value` array would, without building one (this is `audit verify`'s inner
/// loop).
fn write_canonical(out: &mut Vec<u8>, seq: i64, fields: [&str; 7]) {
    let [
        at,
        station_id,
        operator,
        action,
        subject,
        details,
        prev_hash,
    ] = fields;
    let tuple = (
        seq, at, station_id, operator, action, subject, details, prev_hash,
    );
    // Writing into a Vec cannot fail, and strings and integers always serialize.
    let _ = serde_json::to_writer(out, &tuple);
}

/// The hashed text fields of an entry after its seq, in canonical order.
fn hashed_fields(entry: &AuditEntry) -> [&str; 7] {
    [
        &entry.at,
        &entry.station_id,
        &entry.operator,
        &entry.action,
        &entry.subject,
        &entry.details,
        &entry.prev_hash,
    ]
}

/// The hash an entry's fields produce (compare with [`AuditEntry::hash`]).
pub fn computed_hash(entry: &AuditEntry) -> String {
    let mut canonical = Vec::with_capacity(256);
    write_canonical(&mut canonical, entry.seq, hashed_fields(entry));
    hex::encode(Sha256::digest(&canonical))
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
    /// The station whose chain this is; `None` for a database that keeps one chain for every
    /// station (SQLite).
    pub station_id: Option<String>,
    /// Entries walked.
    pub entries: i64,
    /// The last entry's hash: write it down to prove later that nothing was appended or removed
    /// after this point.
    pub head_hash: String,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

impl ChainReport {
    /// Several chains' reports as one: their entries summed, the first break found (in the
    /// order given, naming its station), and the head of a lone chain (empty for several:
    /// each chain has its own head).
    pub fn combined(reports: &[ChainReport]) -> ChainReport {
        match reports {
            [one] => one.clone(),
            _ => ChainReport {
                station_id: None,
                entries: reports.iter().map(|r| r.entries).sum(),
                head_hash: if reports.is_empty() {
                    GENESIS.to_owned()
                } else {
                    String::new()
                },
                first_break: reports.iter().find_map(|r| {
                    r.first_break.as_ref().map(|b| Break {
                        seq: b.seq,
                        problem: match &r.station_id {
                            Some(station) => format!("station {station}'s chain: {}", b.problem),
                            None => b.problem.clone(),
                        },
                    })
                }),
            },
        }
    }
}

/// Walks entries in `seq` order and reports the first that does not match.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> ChainReport {
    let entries: Vec<&AuditEntry> = entries.into_iter().collect();
    let mut walker = ChainWalker::new();
    walker.walk(&entries);
    walker.report()
}

/// Below this many entries a run is hashed on the calling thread.
const PARALLEL_FROM: usize = 2048;

/// Walks a chain run by run, so that a long log can be verified while it streams out of the
/// database; the contents hashes of a run are computed on every core, the links in order.
#[derive(Debug, Clone)]
pub struct ChainWalker {
    prev_hash: String,
    entries: i64,
    first_break: Option<Break>,
}

impl Default for ChainWalker {
    fn default() -> Self {
        ChainWalker::new()
    }
}

impl ChainWalker {
    /// A walker at the start of a chain.
    pub fn new() -> ChainWalker {
        ChainWalker {
            prev_hash: GENESIS.to_owned(),
            entries: 0,
            first_break: None,
        }
    }

    /// Whether a break was found (further runs are then ignored).
    pub fn is_broken(&self) -> bool {
        self.first_break.is_some()
    }

    /// Checks the next run of entries, continuing from the previous run.
    pub fn walk<E: std::borrow::Borrow<AuditEntry> + Sync>(&mut self, run: &[E]) {
        if self.is_broken() || run.is_empty() {
            return;
        }
        let intact = contents_intact(run);
        for (entry, intact) in run.iter().map(|e| e.borrow()).zip(intact) {
            let edited = || {
                format!(
                    "its contents do not match its hash (it was edited): {} {} at {}",
                    entry.action, entry.subject, entry.at
                )
            };
            if !self.step(entry.seq, &entry.prev_hash, &entry.hash, intact, edited) {
                return;
            }
        }
    }

    /// Checks the next entry given its seq, links and whether its contents match its hash;
    /// false once the chain is broken.
    pub(crate) fn step(
        &mut self,
        seq: i64,
        prev_hash: &str,
        hash: &str,
        intact: bool,
        edited: impl FnOnce() -> String,
    ) -> bool {
        if self.is_broken() {
            return false;
        }
        let expected_seq = self.entries + 1;
        self.entries += 1;
        let problem = if seq != expected_seq {
            Some(if seq > expected_seq {
                format!(
                    "entries {expected_seq}..{} are missing (removed?); found entry {seq} next",
                    seq - 1,
                )
            } else {
                format!("entry {seq} appears out of order")
            })
        } else if prev_hash != self.prev_hash {
            Some(format!(
                "its prev_hash does not match the hash of entry {}: this entry was inserted or moved, or an entry before it was removed or rewritten",
                expected_seq - 1
            ))
        } else if !intact {
            Some(edited())
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.first_break = Some(Break {
                    seq: expected_seq,
                    problem,
                });
                false
            }
            None => {
                self.prev_hash.clear();
                self.prev_hash.push_str(hash);
                true
            }
        }
    }

    /// The result so far.
    pub fn report(self) -> ChainReport {
        ChainReport {
            station_id: None,
            entries: self.entries,
            head_hash: self.prev_hash,
            first_break: self.first_break,
        }
    }
}

/// For each entry, whether its stored hash matches its contents; on all cores for long runs.
fn contents_intact<E: std::borrow::Borrow<AuditEntry> + Sync>(run: &[E]) -> Vec<bool> {
    parallel_check(run, |e, buffer| {
        let e = e.borrow();
        write_canonical(buffer, e.seq, hashed_fields(e));
        hex_eq(&Sha256::digest(&*buffer), &e.hash)
    })
}

/// An entry's fields borrowed from elsewhere (a packed range read from the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRef<'a> {
    pub(crate) seq: i64,
    pub(crate) at: &'a str,
    pub(crate) station_id: &'a str,
    pub(crate) operator: &'a str,
    pub(crate) action: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) details: &'a str,
    pub(crate) prev_hash: &'a str,
    pub(crate) hash: &'a str,
}

/// For each borrowed entry, whether its stored hash matches its contents; on all cores for long
/// runs.
pub(crate) fn entries_intact(entries: &[EntryRef<'_>]) -> Vec<bool> {
    parallel_check(entries, |e, buffer| {
        write_canonical(
            buffer,
            e.seq,
            [
                e.at,
                e.station_id,
                e.operator,
                e.action,
                e.subject,
                e.details,
                e.prev_hash,
            ],
        );
        hex_eq(&Sha256::digest(&*buffer), e.hash)
    })
}

/// Runs `check` over `items` (with a scratch buffer, cleared before each item), split across
/// the machine's cores when there are enough items to pay for the threads.
fn parallel_check<T: Sync>(
    items: &[T],
    check: impl Fn(&T, &mut Vec<u8>) -> bool + Sync,
) -> Vec<bool> {
    let run = |part: &[T]| -> Vec<bool> {
        let mut buffer = Vec::with_capacity(512);
        part.iter()
            .map(|item| {
                buffer.clear();
                check(item, &mut buffer)
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < PARALLEL_FROM || threads < 2 {
        return run(items);
    }
    let part = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(part)
            .map(|chunk| scope.spawn(|| run(chunk)))
            .collect();
        // A worker that panicked has no verdict for its entries: its panic is the caller's,
        // never an empty (and so shorter, silently passing) list.
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Whether `digest` written as lowercase hex is `text`, without allocating.
fn hex_eq(digest: &[u8], text: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let text = text.as_bytes();
    text.len() == digest.len() * 2
        && digest.iter().zip(text.chunks_exact(2)).all(|(byte, pair)| {
            pair[0] == HEX[usize::from(byte >> 4)] && pair[1] == HEX[usize::from(byte & 0x0f)]
        })
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
            entry.hash = computed_hash(&entry);
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
            assert_ne!(computed_hash(&entry), base.hash);
        }
    }

    // Issue 11: golden hashes, computed outside the station (Python's hashlib over the canonical
    // text written out by hand below), so a change to the encoding cannot go unnoticed.
    #[test]
    fn canonical_encoding_and_hashes_are_pinned() {
        let cases: [(AuditEntry, &str, &str); 3] = [
            (
                chain(1).remove(0),
                r#"[1,"2026-11-25T10:00:01.000Z","st1","ana","unit.provisioned","24:0a:c4:00:00:01","{\"key_id\":\"sha256:0011223344556677\"}","0000000000000000000000000000000000000000000000000000000000000000"]"#,
                "e630c3c993570008f9cfc5fb83a9f7511c72a7e20c552084c3acf1123c45b23b",
            ),
            (
                entry(7, "st\\1", "Zoë \"Z\"", "s\n"),
                r#"[7,"t","st\\1","Zoë \"Z\"","a","s\n","{}","0000000000000000000000000000000000000000000000000000000000000000"]"#,
                "adf9947ee48229a9701fd7a0ea906890f187bf7c1130b2258654a973845150f7",
            ),
            (
                entry(8, "a/b", "esc\u{1b} tab\t cr\r", "\u{2028}"),
                "[8,\"t\",\"a/b\",\"esc\\u001b tab\\t cr\\r\",\"a\",\"\u{2028}\",\"{}\",\"0000000000000000000000000000000000000000000000000000000000000000\"]",
                "3095e5c18e2fdd2c14dc347c0d65a4b0bf0c88d2484450aff893ecc2025aed6f",
            ),
        ];
        for (entry, canonical, hash) in cases {
            let mut written = Vec::new();
            write_canonical(&mut written, entry.seq, hashed_fields(&entry));
            assert_eq!(String::from_utf8(written).unwrap(), canonical);
            assert_eq!(computed_hash(&entry), hash, "{canonical}");
        }
    }

    /// An entry with odd text in its station, operator and subject.
    fn entry(seq: i64, station_id: &str, operator: &str, subject: &str) -> AuditEntry {
        AuditEntry {
            seq,
            at: "t".into(),
            station_id: station_id.into(),
            operator: operator.into(),
            action: "a".into(),
            subject: subject.into(),
            details: "{}".into(),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn long_chains_are_hashed_in_parallel_and_walked_in_runs() {
        let mut entries = chain(5);
        // Grow a chain past the parallel threshold from the 5-entry base.
        while entries.len() < PARALLEL_FROM * 2 + 3 {
            let last = entries.last().unwrap().clone();
            let mut next = last.clone();
            next.seq += 1;
            next.prev_hash = last.hash.clone();
            next.hash = computed_hash(&next);
            entries.push(next);
        }
        let whole = verify_chain(&entries);
        assert_eq!(whole.first_break, None);
        let mut walker = ChainWalker::new();
        for run in entries.chunks(1000) {
            walker.walk(run);
        }
        assert_eq!(walker.report(), whole);

        let edited = entries.len() - 7;
        entries[edited].subject.push('x');
        let broken = verify_chain(&entries).first_break.unwrap();
        assert_eq!(broken.seq, edited as i64 + 1);
        assert!(broken.problem.contains("edited"), "{}", broken.problem);
    }

    // Issue 13: a worker's panic reaches the caller instead of cutting the verdicts short.
    #[test]
    fn a_panicking_worker_is_not_taken_for_no_result() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return;
        }
        let items: Vec<usize> = (0..PARALLEL_FROM * 2).collect();
        let last = items.len() - 1;
        let outcome = std::panic::catch_unwind(|| {
            parallel_check(&items, |&item, _| {
                assert!(item != last, "worker fails on the last item");
                true
            })
        });
        assert!(outcome.is_err(), "the panic must reach the caller");
        let all = parallel_check(&items, |_, _| true);
        assert_eq!(all.len(), items.len());
    }

    #[test]
    fn hex_comparison_is_exact() {
        let digest = Sha256::digest(b"x");
        let text = hex::encode(digest);
        assert!(hex_eq(&digest, &text));
        assert!(!hex_eq(&digest, &text.to_uppercase()));
        assert!(!hex_eq(&digest, &text[..62]));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let base = chain(1).remove(0);
        let mut shifted = base.clone();
        shifted.station_id = "st1a".into();
        shifted.operator = "na".into();
        assert_ne!(computed_hash(&shifted), base.hash);
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
            entry.hash = computed_hash(entry);
        }
        let broken = verify_chain(&entries).first_break.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(broken.problem.contains("prev_hash"), "{}", broken.problem);
    }
}
