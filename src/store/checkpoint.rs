//! Signed checkpoints of the chain ([`crate::checkpoint`]), as the store writes and checks them.
//!
//! A store given an [`Anchor`] writes a checkpoint of its chain's head at every batch close,
//! before every manifest export, and whenever an append leaves the head at least
//! `[audit] checkpoint_every` entries past the last checkpoint. A checkpoint the store was asked
//! for (batch close, export) that cannot be written is an error; one that fell due after an
//! append that already committed is traced and tried again after the next append.
//!
//! [`Store::verify_checkpoints`] holds a chain against checkpoints: each must be signed by the
//! trusted key, and the entry it names must still be in the chain with the hash it names. A log
//! cut short ends before a checkpoint's entry; a tail rewritten after a checkpoint has another
//! hash there. Both are named with the checkpoint that shows them.

use std::sync::Arc;

use super::ops;
use super::{ChainReport, Store, StoreError};
use crate::checkpoint::{Anchor, BadLine, Checkpoint, PublicKey};

/// One checkpoint that does not hold, or a line that is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointFinding {
    /// Where it was read: `file:line`.
    pub source: String,
    /// The entry it vouches for, when it is a checkpoint.
    pub seq: Option<i64>,
    /// What is wrong, in words.
    pub problem: String,
}

/// The chain held against checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointReport {
    /// Checkpoints of this station read.
    pub checked: usize,
    /// Of those, the ones the chain agrees with.
    pub matched: usize,
    /// Checkpoints of other stations, not this chain's to answer for.
    pub other_stations: usize,
    /// The latest checkpoint the chain agrees with.
    pub latest: Option<Checkpoint>,
    /// Everything that does not hold, in the order read.
    pub problems: Vec<CheckpointFinding>,
}

/// Where a `--head` hash recorded at an earlier review is in the chain now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadCheck {
    /// At this seq.
    Found(i64),
    /// Nowhere: the log was rewritten or cut short.
    Missing,
    /// The prefix matches more than one entry: more digits are needed.
    Ambiguous,
}

/// The fewest hex digits a `--head` prefix may have (the short head `station demo` prints).
pub const HEAD_PREFIX_MIN: usize = 16;

/// Checks a `--head` argument: 16 to 64 hex digits, any case; returns it in lowercase.
pub fn head_prefix(text: &str) -> Result<String, String> {
    let text = text.trim();
    if !(HEAD_PREFIX_MIN..=64).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!(
            "a head hash is {HEAD_PREFIX_MIN} to 64 hex digits (the start of an entry's SHA-256); `{}` is not",
            crate::support::shown(text)
        ));
    }
    Ok(text.to_ascii_lowercase())
}

impl Store {
    /// The store, writing checkpoints of its chain through `anchor` from now on.
    pub fn with_anchor(mut self, anchor: Arc<Anchor>) -> Store {
        self.anchor = Some(anchor);
        self
    }

    /// The anchor, when the store writes checkpoints.
    pub fn anchor(&self) -> Option<&Anchor> {
        self.anchor.as_deref()
    }

    /// Writes a checkpoint of the chain's head now, for `reason`; `None` when the store has no
    /// anchor or the chain is empty.
    pub async fn checkpoint(&self, reason: &str) -> Result<Option<Checkpoint>, StoreError> {
        let Some(anchor) = &self.anchor else {
            return Ok(None);
        };
        let head = on_backend!(self, db => ops::audit_head(db, &anchor.station_id).await)?;
        let Some((seq, hash)) = head else {
            return Ok(None);
        };
        Ok(Some(anchor.write(seq, &hash, reason)?))
    }

    /// After an append: a checkpoint when the head is `checkpoint_every` entries past the last.
    /// The entries are committed whatever happens here, so a failure is traced, not returned;
    /// the next append tries again.
    pub(super) async fn checkpoint_if_due(&self) {
        let Some(anchor) = &self.anchor else {
            return;
        };
        let head = on_backend!(self, db => ops::audit_head(db, &anchor.station_id).await);
        match head {
            Ok(Some((seq, hash))) if anchor.due(seq) => {
                if let Err(error) = anchor.write(seq, &hash, "interval") {
                    tracing::error!(error = %error, "audit checkpoint not written");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "audit checkpoint not written"),
        }
    }

    /// Where a `--head` prefix ([`head_prefix`]) is in the chains now, as far as `verified`
    /// walked them: an entry past a chain's verified end (appended since) does not count.
    pub async fn find_head(
        &self,
        prefix: &str,
        verified: &[ChainReport],
    ) -> Result<HeadCheck, StoreError> {
        let found = on_backend!(self, db => ops::audit_hash_prefix(db, prefix).await)?;
        Ok(match found.as_slice() {
            [] => HeadCheck::Missing,
            [(chain, seq)] => {
                if verified
                    .iter()
                    .any(|r| &r.station_id == chain && *seq <= r.entries)
                {
                    HeadCheck::Found(*seq)
                } else {
                    HeadCheck::Missing
                }
            }
            _ => HeadCheck::Ambiguous,
        })
    }

    /// Holds `station_id`'s chain (walked into `chain`) against checkpoints read from
    /// `source`, trusting only `key`.
    pub async fn verify_checkpoints(
        &self,
        station_id: &str,
        chain: &ChainReport,
        source: &str,
        lines: &[Result<Checkpoint, BadLine>],
        key: &PublicKey,
        report: &mut CheckpointReport,
    ) -> Result<(), StoreError> {
        for (index, line) in lines.iter().enumerate() {
            let checkpoint = match line {
                Ok(checkpoint) => checkpoint,
                Err(bad) => {
                    report.problems.push(CheckpointFinding {
                        source: format!("{source}:{}", bad.line),
                        seq: None,
                        problem: bad.problem.clone(),
                    });
                    continue;
                }
            };
            if checkpoint.station_id != station_id {
                report.other_stations += 1;
                continue;
            }
            report.checked += 1;
            let finding = |problem: String| CheckpointFinding {
                source: format!("{source}:{}", index + 1),
                seq: Some(checkpoint.seq),
                problem,
            };
            if let Err(bad) = checkpoint.verify(key) {
                report.problems.push(finding(format!(
                    "the checkpoint of entry {} at {} is not the station's: {bad}",
                    checkpoint.seq, checkpoint.at
                )));
                continue;
            }
            let hash =
                on_backend!(self, db => ops::audit_hash_at(db, station_id, checkpoint.seq).await)?;
            let problem = match hash {
                Some(hash) if hash == checkpoint.head_hash => None,
                Some(hash) => Some(format!(
                    "entry {} was rewritten after the checkpoint of {} ({}): its hash is now {hash}, the checkpoint says {}",
                    checkpoint.seq, checkpoint.at, checkpoint.reason, checkpoint.head_hash
                )),
                None if checkpoint.seq > chain.entries => Some(format!(
                    "the log was cut short: the checkpoint of {} ({}) vouches for entry {}, but the log ends at entry {}; entries {}..{} are missing",
                    checkpoint.at,
                    checkpoint.reason,
                    checkpoint.seq,
                    chain.entries,
                    chain.entries + 1,
                    checkpoint.seq
                )),
                None => Some(format!(
                    "entry {} named by the checkpoint of {} ({}) is missing from the log",
                    checkpoint.seq, checkpoint.at, checkpoint.reason
                )),
            };
            match problem {
                Some(problem) => report.problems.push(finding(problem)),
                None => {
                    report.matched += 1;
                    if report
                        .latest
                        .as_ref()
                        .is_none_or(|l| l.seq <= checkpoint.seq)
                    {
                        report.latest = Some(checkpoint.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_prefixes_are_hex_of_16_to_64_digits_in_any_case() {
        let hash = "5a6d216cf845b2ab0000000000000000000000000000000000000000000000ff";
        assert_eq!(head_prefix(hash).unwrap(), hash);
        assert_eq!(head_prefix("5A6D216CF845B2AB").unwrap(), "5a6d216cf845b2ab");
        for bad in [
            "",
            "5a6d",
            "5a6d216cf845b2a",
            "zz6d216cf845b2ab",
            &"a".repeat(65),
        ] {
            assert!(head_prefix(bad).is_err(), "{bad}");
        }
        let message = head_prefix(&"x".repeat(100_000)).unwrap_err();
        assert!(message.len() < 300, "{message}");
    }
}
