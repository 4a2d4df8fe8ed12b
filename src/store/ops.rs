//! The store's transactions, written once over the [`Tx`] queries of any backend: which locks a
//! write takes, what it reads under them, which rule decides, what it writes, and the audit
//! entry that commits with it.

use std::time::Duration;

use super::attempt::{
    AttemptRecord, AttemptStart, Conflict, Interruption, Recorded, UnitChange, UnitSighting,
    dps_verified_entry,
};
use super::audit::{self, ChainReport, ChainWalker, NewEntry};
use super::backend::{AttemptEnd, Backend, BatchCounts, NewCertificate, Tx, UnitWrite};
use super::session::{CONFIG_CHANGED, KEY_LOADED, StationOpen};
use super::{ManifestQuery, StoreError};
use crate::clock::{format_time, now, parse_time};
use crate::identity::Mac;
use crate::process::ProcessStamp;
use crate::record::{
    Attempt, AuditEntry, Batch, BatchStatus, ManifestRow, MinuteCount, PortActivity, Stage, Unit,
    UnitDps,
};

/// How long an attempt's claim on a batch slot lasts without news of it: every stage it
/// reaches renews it. A station that dies mid-unit on another machine frees its slots after
/// this long; the record's own count keeps the target exact whatever happens to a claim.
pub(crate) const CLAIM_LEASE: Duration = Duration::from_secs(15 * 60);

/// Audit entries per range `audit verify` reads at once.
const VERIFY_RANGE: i64 = 16_384;

/// The end of a claim renewed now.
fn lease_end() -> String {
    format_time(time::OffsetDateTime::now_utc() + CLAIM_LEASE)
}

/// Runs `f` in a read-only snapshot.
macro_rules! read {
    ($db:expr, |$tx:ident| $body:expr) => {{
        let mut $tx = $db.read().await?;
        let out = $body;
        $tx.commit().await?;
        Ok::<_, StoreError>(out)
    }};
}

pub(super) async fn open_batch<B: Backend>(
    db: &B,
    name: &str,
    target: i64,
    operator: &str,
    station_id: &str,
) -> Result<Batch, StoreError> {
    let mut tx = db.write().await?;
    tx.lock_chain(station_id).await?;
    let at = now();
    let inserted =
        if tx.open_batch_of(station_id).await?.is_some() || tx.batch_named(name).await?.is_some() {
            None
        } else {
            // Another station may take the name between the check and the insert: the insert
            // then refuses it too.
            tx.insert_batch(name, target, operator, station_id, &at)
                .await?
        };
    let Some(id) = inserted else {
        drop(tx);
        let mut tx = db.read().await?;
        return Err(match tx.open_batch_of(station_id).await? {
            Some(open) => StoreError::BatchStillOpen {
                name: open.name,
                station_id: station_id.to_owned(),
            },
            None => StoreError::BatchExists {
                name: name.to_owned(),
            },
        });
    };
    tx.append_audit(&NewEntry::at(
        &at,
        station_id,
        operator,
        "batch.open",
        name,
        serde_json::json!({ "target": target }),
    ))
    .await?;
    let batch = tx.batch_by_id(id).await?;
    tx.commit().await?;
    Ok(batch)
}

pub(super) async fn close_batch<B: Backend>(
    db: &B,
    name: Option<&str>,
    operator: &str,
    station_id: &str,
) -> Result<BatchStatus, StoreError> {
    let mut tx = db.write().await?;
    let batch = match name {
        Some(name) => tx
            .batch_named(name)
            .await?
            .ok_or_else(|| StoreError::NoSuchBatch {
                name: name.to_owned(),
            })?,
        None => tx
            .open_batch_of(station_id)
            .await?
            .ok_or_else(|| StoreError::NoOpenBatch {
                station_id: station_id.to_owned(),
            })?,
    };
    tx.lock_batch(batch.id).await?;
    tx.lock_chain(station_id).await?;
    let batch = tx.batch_by_id(batch.id).await?;
    if let Some(closed_at) = batch.closed_at {
        return Err(StoreError::BatchClosed {
            name: batch.name,
            closed_at,
        });
    }
    let at = now();
    tx.close_batch(batch.id, &at, operator).await?;
    let closed = tx.batch_by_id(batch.id).await?;
    let status = status_in(&mut tx, closed).await?;
    tx.append_audit(&NewEntry::at(
        &at,
        station_id,
        operator,
        "batch.close",
        &batch.name,
        serde_json::json!({
            "target": status.batch.target,
            "provisioned": status.provisioned,
            "failed": status.failed,
            "attempts": status.attempts,
        }),
    ))
    .await?;
    tx.commit().await?;
    Ok(status)
}

pub(super) async fn open_batch_of<B: Backend>(
    db: &B,
    station_id: &str,
) -> Result<Option<Batch>, StoreError> {
    read!(db, |tx| tx.open_batch_of(station_id).await?)
}

pub(super) async fn batch_named<B: Backend>(
    db: &B,
    name: &str,
) -> Result<Option<Batch>, StoreError> {
    read!(db, |tx| tx.batch_named(name).await?)
}

pub(super) async fn batch_by_id<B: Backend>(db: &B, id: i64) -> Result<Batch, StoreError> {
    read!(db, |tx| tx.batch_by_id(id).await?)
}

pub(super) async fn batch_status<B: Backend>(
    db: &B,
    batch: Batch,
) -> Result<BatchStatus, StoreError> {
    read!(db, |tx| status_in(&mut tx, batch).await?)
}

pub(super) async fn batches<B: Backend>(db: &B) -> Result<Vec<BatchStatus>, StoreError> {
    read!(db, |tx| {
        let mut out = Vec::new();
        for batch in tx.batches().await? {
            out.push(status_in(&mut tx, batch).await?);
        }
        out
    })
}

/// Units per minute between the first and the last of `units` provisioned between `first`
/// and `last`: `None` before the second unit.
fn rate(units: i64, first: Option<&str>, last: Option<&str>) -> Option<f64> {
    let span = parse_time(last?)? - parse_time(first?)?;
    let minutes = span.as_seconds_f64() / 60.0;
    (units >= 2 && minutes > 0.0).then(|| (units - 1) as f64 / minutes)
}

async fn status_in<T: Tx>(tx: &mut T, batch: Batch) -> Result<BatchStatus, StoreError> {
    let BatchCounts {
        provisioned,
        failed,
        attempts,
        failed_attempts,
        in_progress,
        interrupted,
        failures,
        mut stations,
    } = tx.batch_counts(batch.id).await?;
    for station in &mut stations {
        station.units_per_minute = rate(
            station.provisioned,
            station.first_provisioned_at.as_deref(),
            station.last_provisioned_at.as_deref(),
        );
    }
    let first = stations
        .iter()
        .filter_map(|s| s.first_provisioned_at.as_deref())
        .min();
    let last = stations
        .iter()
        .filter_map(|s| s.last_provisioned_at.as_deref())
        .max();
    Ok(BatchStatus {
        units_per_minute: rate(provisioned, first, last),
        batch,
        provisioned,
        failed,
        attempts,
        failed_attempts,
        in_progress,
        interrupted,
        failures,
        stations,
    })
}

pub(super) async fn unit_sighting<B: Backend>(
    db: &B,
    mac: Mac,
) -> Result<UnitSighting, StoreError> {
    // The last provisioning first: a record landing between the two reads then looks like a
    // conflict (and is one) rather than slipping through unseen.
    read!(db, |tx| {
        let last_provisioning = tx.last_provisioned_attempt(mac).await?;
        let unit = tx.unit_by_mac(mac).await?;
        UnitSighting {
            unit,
            last_provisioning,
        }
    })
}

pub(super) async fn begin_attempt<B: Backend>(
    db: &B,
    start: &AttemptStart,
    claim: bool,
) -> Result<i64, StoreError> {
    let mut tx = db.write().await?;
    if claim {
        tx.lock_batch(start.batch_id).await?;
        check_room(&mut tx, start.batch_id, 0).await?;
    }
    let id = tx.insert_attempt(start, ProcessStamp::current()).await?;
    if claim {
        tx.claim(id, &lease_end()).await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Refuses when the batch is closed, or when its units provisioned and the slots attempts
/// besides `attempt_id` hold cover its target. The caller holds the batch's lock.
async fn check_room<T: Tx>(tx: &mut T, batch_id: i64, attempt_id: i64) -> Result<(), StoreError> {
    let batch = tx.batch_by_id(batch_id).await?;
    if let Some(closed_at) = batch.closed_at {
        return Err(StoreError::BatchClosed {
            name: batch.name,
            closed_at,
        });
    }
    let taken = tx.provisioned_in(batch_id).await?
        + tx.live_claims(batch_id, &now(), attempt_id, None).await?;
    if taken >= batch.target {
        return Err(StoreError::BatchFull {
            name: batch.name,
            target: batch.target,
        });
    }
    Ok(())
}

pub(super) async fn attempt_reached<B: Backend>(
    db: &B,
    attempt_id: i64,
    stage: Stage,
    mac: Option<Mac>,
) -> Result<(), StoreError> {
    let mut tx = db.write().await?;
    tx.note_stage(attempt_id, stage, mac, &now(), &lease_end())
        .await?;
    tx.commit().await
}

pub(super) async fn claim_slot<B: Backend>(
    db: &B,
    attempt_id: i64,
    batch_id: i64,
) -> Result<(), StoreError> {
    let mut tx = db.write().await?;
    tx.lock_batch(batch_id).await?;
    check_room(&mut tx, batch_id, attempt_id).await?;
    tx.claim(attempt_id, &lease_end()).await?;
    tx.commit().await
}

pub(super) async fn batch_room<B: Backend>(
    db: &B,
    batch_id: i64,
    station_id: &str,
) -> Result<super::BatchRoom, StoreError> {
    read!(db, |tx| {
        let batch = tx.batch_by_id(batch_id).await?;
        super::BatchRoom {
            target: batch.target,
            closed: batch.closed_at.is_some(),
            provisioned: tx.provisioned_in(batch_id).await?,
            claimed_elsewhere: tx
                .live_claims(batch_id, &now(), 0, Some(station_id))
                .await?,
        }
    })
}

pub(super) async fn ping<B: Backend>(db: &B) -> Result<(), StoreError> {
    db.read().await?.commit().await
}

pub(super) async fn discard_attempt<B: Backend>(db: &B, attempt_id: i64) -> Result<(), StoreError> {
    let mut tx = db.write().await?;
    tx.delete_open_attempt(attempt_id).await?;
    tx.commit().await
}

pub(super) async fn record_attempt<B: Backend>(
    db: &B,
    record: &AttemptRecord,
) -> Result<Recorded, StoreError> {
    let mut tx = db.write().await?;
    let mut conflict = None;
    let mut overtaken = false;
    let mut existing = None;
    if let Some(facts) = &record.unit {
        tx.lock_unit(facts.mac).await?;
        let last = tx.last_provisioned_attempt(facts.mac).await?;
        existing = tx.unit_by_mac(facts.mac).await?;
        overtaken = record.overtaken(last);
        if overtaken && record.failure.is_none() {
            conflict = match &existing {
                Some(unit) => Some(Conflict::DuplicateUnit {
                    mac: unit.mac,
                    station_id: unit.station_id.clone(),
                    batch: tx.batch_by_id(unit.batch_id).await?.name,
                    provisioned_at: unit.provisioned_at.clone().unwrap_or_default(),
                }),
                None => None,
            };
        } else if record.takes_slot(existing.as_ref()) && !holds_claim(&mut tx, record).await? {
            // Without a claim of its own (a lapsed one, or none asked for), the unit is counted
            // against the batch here; an attempt holding a live claim has its slot already.
            tx.lock_batch(record.batch.id).await?;
            if tx.provisioned_in(record.batch.id).await? >= record.batch.target {
                conflict = Some(Conflict::BatchFull {
                    batch: record.batch.name.clone(),
                    target: record.batch.target,
                });
            }
        }
    }
    let conflicted;
    let record = match &conflict {
        Some(c) => {
            conflicted = record.conflicted(c);
            &conflicted
        }
        None => record,
    };
    let unit = match &record.unit {
        Some(facts) => Some(match record.unit_change(existing, overtaken) {
            UnitChange::Keep(unit) => *unit,
            UnitChange::Write {
                state,
                failed_stage,
                provisioned_at,
            } => {
                let unit = tx
                    .write_unit(&UnitWrite {
                        mac: facts.mac,
                        registration_id: &facts.registration_id,
                        batch_id: record.batch.id,
                        station_id: &record.station_id,
                        chip: &facts.chip,
                        revision: &facts.revision,
                        flash_size: facts.flash_size,
                        attestation: facts.attestation,
                        key_id: &facts.key_id,
                        secondary_key_id: facts.secondary_key_id.as_ref(),
                        image_sha256: facts.image_sha256.as_deref(),
                        certificate: facts.certificate.as_ref(),
                        state,
                        failed_stage,
                        provisioned_at: provisioned_at.as_deref(),
                        at: &record.finished_at,
                        enrollment: facts.enrollment,
                        hub_status: facts
                            .hub
                            .as_ref()
                            .map_or(crate::record::HubStatus::NotRequested, |h| h.status),
                        hub_error: facts.hub.as_ref().and_then(|h| h.error.as_deref()),
                    })
                    .await?;
                match &facts.dps {
                    Some(dps) => tx.set_dps(unit.id, dps, &record.finished_at).await?,
                    None => unit,
                }
            }
        }),
        None => None,
    };
    let audit_seq = tx.append_audit(&record.audit_entry()).await?;
    // The attempt's open row is closed; without one (or if it was closed as interrupted
    // meanwhile) the attempt gets a row of its own: a finished attempt is never dropped.
    let open = match record.attempt_id {
        Some(id) if tx.attempt_is_open(id).await? => Some(id),
        _ => None,
    };
    let attempt_id = match open {
        Some(id) => id,
        None => {
            tx.insert_attempt(&record.start(), ProcessStamp::current())
                .await?
        }
    };
    // The certificate an attempt issued joins its unit's history, whatever became of the
    // attempt: it was issued (and may sit on a device).
    if let (Some(unit), Some(facts)) = (&unit, &record.unit)
        && let Some(certificate) = &facts.certificate
    {
        tx.insert_certificate(&NewCertificate {
            unit_id: unit.id,
            attempt_id,
            mac: facts.mac,
            registration_id: &facts.registration_id,
            certificate,
            station_id: &record.station_id,
            issued_at: &record.finished_at,
        })
        .await?;
    }
    let failure = record.failure.as_ref();
    let timings = record.timings.to_string();
    tx.finish_attempt(
        attempt_id,
        &AttemptEnd {
            unit_id: unit.as_ref().map(|u| u.id),
            mac: record.unit.as_ref().map(|u| u.mac),
            finished_at: &record.finished_at,
            outcome: record.outcome(),
            stage: failure.map(|f| f.stage),
            error_code: failure.map(|f| &f.code),
            message: failure.map(|f| f.message.as_str()),
            reprovision: record.reprovision,
            timings: &timings,
            audit_seq,
            boot_log: record.boot_log.as_deref(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Recorded {
        attempt_id,
        unit,
        audit_seq,
        conflict,
    })
}

/// Whether the attempt being recorded holds a live claim on a slot of its batch.
async fn holds_claim<T: Tx>(tx: &mut T, record: &AttemptRecord) -> Result<bool, StoreError> {
    match record.attempt_id {
        Some(id) => tx.holds_claim(id, &now()).await,
        None => Ok(false),
    }
}

/// Whether the process that opened an attempt still runs ([`ProcessStamp::is_running`]).
fn process_alive(attempt: &Attempt) -> bool {
    attempt.pid.is_some_and(|pid| {
        ProcessStamp {
            pid,
            boot_id: attempt.pid_boot_id.clone(),
            started: attempt.pid_started,
        }
        .is_running()
    })
}

pub(super) async fn recover_interrupted<B: Backend>(
    db: &B,
    station_id: &str,
    operator: &str,
) -> Result<Vec<Attempt>, StoreError> {
    let open = read!(db, |tx| tx.open_attempts(station_id).await?)?;
    let mut closed = Vec::new();
    // One transaction per attempt, each taking its unit's lock before the chain's.
    for attempt in open.into_iter().filter(|a| !process_alive(a)) {
        let mut tx = db.write().await?;
        if let Some(mac) = attempt.mac {
            tx.lock_unit(mac).await?;
        }
        tx.lock_chain(station_id).await?;
        if !tx.attempt_is_open(attempt.id).await? {
            continue;
        }
        let at = now();
        let batch = tx.batch_by_id(attempt.batch_id).await?;
        let interruption = Interruption::of(&attempt, &batch, &at, station_id, operator);
        let unit_id = match attempt.mac {
            Some(mac) if interruption.wrote => {
                tx.mark_unit_failed(mac, interruption.stage, &at).await?
            }
            Some(mac) => tx.unit_id(mac).await?,
            None => None,
        };
        let seq = tx.append_audit(&interruption.entry).await?;
        let row = tx
            .interrupt_attempt(attempt.id, &at, &interruption.message, unit_id, seq)
            .await?;
        tx.commit().await?;
        closed.push(row);
    }
    Ok(closed)
}

pub(super) async fn record_dps<B: Backend>(
    db: &B,
    unit_id: i64,
    dps: &UnitDps,
    station_id: &str,
    operator: &str,
) -> Result<Unit, StoreError> {
    let mut tx = db.write().await?;
    tx.lock_chain(station_id).await?;
    let at = now();
    let unit = tx.set_dps(unit_id, dps, &at).await?;
    tx.append_audit(&dps_verified_entry(&unit, dps, &at, station_id, operator))
        .await?;
    tx.commit().await?;
    Ok(unit)
}

pub(super) async fn record_revocation<B: Backend>(
    db: &B,
    mac: &crate::identity::Mac,
    revocation: &crate::record::UnitRevocation,
    details: serde_json::Value,
    station_id: &str,
    operator: &str,
) -> Result<Unit, StoreError> {
    let mut tx = db.write().await?;
    tx.lock_unit(*mac).await?;
    tx.lock_chain(station_id).await?;
    let at = now();
    let unit = tx
        .set_revocation(*mac, revocation, &at)
        .await?
        .ok_or(StoreError::NoSuchUnit { mac: *mac })?;
    tx.append_audit(&super::attempt::revocation_entry(
        &unit,
        revocation.revoked_at.is_some(),
        details,
        &at,
        station_id,
        operator,
    ))
    .await?;
    tx.commit().await?;
    Ok(unit)
}

pub(super) async fn append_audit<B: Backend>(db: &B, entry: &NewEntry) -> Result<i64, StoreError> {
    let mut tx = db.write().await?;
    let seq = tx.append_audit(entry).await?;
    tx.commit().await?;
    Ok(seq)
}

pub(super) async fn record_station_open<B: Backend>(
    db: &B,
    open: &StationOpen,
) -> Result<usize, StoreError> {
    let mut tx = db.write().await?;
    // Under the chain's lock, so that two processes of one station starting at once do not
    // both record the same change.
    tx.lock_chain(&open.station_id).await?;
    let at = now();
    let last_config = tx.last_details(CONFIG_CHANGED, &open.station_id).await?;
    let last_keys = tx.last_details(KEY_LOADED, &open.station_id).await?;
    let entries = open.entries(&at, last_config.as_deref(), last_keys.as_deref());
    for entry in &entries {
        tx.append_audit(entry).await?;
    }
    tx.commit().await?;
    Ok(entries.len())
}

pub(super) async fn audit_entries<B: Backend>(
    db: &B,
    batch: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<AuditEntry>, StoreError> {
    read!(db, |tx| {
        if let Some(name) = batch
            && tx.batch_named(name).await?.is_none()
        {
            return Err(StoreError::NoSuchBatch {
                name: name.to_owned(),
            });
        }
        tx.audit_entries(batch, limit).await?
    })
}

pub(super) async fn audit_hash_prefix<B: Backend>(
    db: &B,
    prefix: &str,
) -> Result<Vec<(Option<String>, i64)>, StoreError> {
    read!(db, |tx| tx.audit_hash_prefix(prefix).await?)
}

/// The head of the chain `station_id` appends to, as committed now.
pub(super) async fn audit_head<B: Backend>(
    db: &B,
    station_id: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    read!(db, |tx| tx.audit_head(station_id).await?)
}

pub(super) async fn audit_hash_at<B: Backend>(
    db: &B,
    station_id: &str,
    seq: i64,
) -> Result<Option<String>, StoreError> {
    read!(db, |tx| tx.audit_hash_at(station_id, seq).await?)
}

/// Re-walks every chain (or one station's), each in ranges, all in one snapshot; then checks
/// that every attempt's audit entry is still there (a chain cut short at its end is otherwise
/// consistent).
pub(super) async fn verify_audit<B: Backend>(
    db: &B,
    station_id: Option<&str>,
) -> Result<Vec<ChainReport>, StoreError> {
    read!(db, |tx| {
        let chains = tx.audit_chains(station_id).await?;
        if let (Some(station_id), true) = (station_id, chains.is_empty()) {
            return Err(StoreError::NoSuchStation {
                station_id: station_id.to_owned(),
            });
        }
        let mut reports = Vec::new();
        for chain in chains {
            let mut walker = ChainWalker::new();
            let mut low = chain.first;
            while low <= chain.last && !walker.is_broken() {
                let high = low.saturating_add(VERIFY_RANGE - 1).min(chain.last);
                tx.walk_chain(&mut walker, &chain, low, high).await?;
                low = high.saturating_add(1);
            }
            let mut report = walker.report();
            report.station_id = chain.station_id.clone();
            if report.first_break.is_none()
                && let Some((attempt, seq)) = tx.orphaned_attempt(&chain).await?
            {
                report.first_break = Some(audit::Break {
                    seq,
                    problem: format!(
                        "attempt {attempt} refers to audit entry {seq}, which is missing (the log was cut short)"
                    ),
                });
            }
            reports.push(report);
        }
        reports
    })
}

pub(super) async fn manifest<B: Backend>(
    db: &B,
    query: &ManifestQuery,
) -> Result<Vec<ManifestRow>, StoreError> {
    read!(db, |tx| tx.manifest(query).await?)
}

pub(super) async fn unit_by_registration_id<B: Backend>(
    db: &B,
    registration_id: &crate::identity::RegistrationId,
) -> Result<Option<Unit>, StoreError> {
    read!(db, |tx| tx.unit_by_registration_id(registration_id).await?)
}

pub(super) async fn pending_dps_units<B: Backend>(db: &B) -> Result<Vec<Unit>, StoreError> {
    read!(db, |tx| tx.pending_dps_units().await?)
}

pub(super) async fn certificates_of<B: Backend>(
    db: &B,
    mac: Mac,
) -> Result<Vec<crate::record::CertificateRow>, StoreError> {
    read!(db, |tx| tx.certificates_of(mac).await?)
}

pub(super) async fn units_of<B: Backend>(db: &B, batch_id: i64) -> Result<Vec<Unit>, StoreError> {
    read!(db, |tx| tx.units_of(batch_id).await?)
}

pub(super) async fn attempts_of<B: Backend>(
    db: &B,
    batch_id: i64,
) -> Result<Vec<Attempt>, StoreError> {
    read!(db, |tx| tx.attempts_of(batch_id).await?)
}

/// Attempts on the device with this MAC, in any batch, oldest first.
pub(super) async fn attempts_of_mac<B: Backend>(
    db: &B,
    mac: &Mac,
) -> Result<Vec<Attempt>, StoreError> {
    read!(db, |tx| tx.attempts_of_mac(*mac).await?)
}

pub(super) async fn port_activity<B: Backend>(
    db: &B,
    recent: u32,
) -> Result<Vec<PortActivity>, StoreError> {
    read!(db, |tx| tx.port_activity(recent).await?)
}

pub(super) async fn open_batches<B: Backend>(db: &B) -> Result<Vec<Batch>, StoreError> {
    read!(db, |tx| tx.open_batches().await?)
}

pub(super) async fn batch_list<B: Backend>(db: &B) -> Result<Vec<Batch>, StoreError> {
    read!(db, |tx| tx.batches().await?)
}

pub(super) async fn audit_about<B: Backend>(
    db: &B,
    subjects: &[&str],
    written: &[(&str, i64)],
    limit: u32,
) -> Result<Vec<AuditEntry>, StoreError> {
    read!(db, |tx| tx.audit_about(subjects, written, limit).await?)
}

pub(super) async fn batch_minutes<B: Backend>(
    db: &B,
    batch_id: i64,
) -> Result<Vec<MinuteCount>, StoreError> {
    read!(db, |tx| tx.batch_minutes(batch_id).await?)
}
