//! Stage `dps`: pre-verification of a freshly flashed unit with DPS, and the later settling of
//! units it left pending (`station dps verify`, and the line daemon periodically).
//!
//! An X.509 unit is pre-verified with the certificate and key it was just issued, while the key
//! is still in memory. Afterwards only the device holds its key, so a later verification of an
//! X.509 unit is not possible from the station: `dps verify --registration-id` refuses it
//! ([`ProvisionError::X509NotVerifiable`]) and `--pending` counts such units as skipped (the
//! device registers itself when it first connects, or a re-provision pre-verifies anew).
//!
//! [`crate::dps`] is the client (token, register, poll) and classifies each answer
//! ([`Verification`]); this module decides what the station does with it: a refusal fails the
//! unit at stage `dps`, an unreachable or unanswering DPS leaves it provisioned and pending,
//! and a later verification is recorded with a `unit.dps_verified` audit entry.

use std::time::Instant;

use miette::Diagnostic as _;
use serde::Serialize;
use tracing::Instrument as _;

use super::{DeviceImage, Failed, ProvisionError, Run, UnitError, fail};
use crate::device::Device;
use crate::dps::{
    DpsClient, DpsError, RegistrationState, Verification, pre_verify, pre_verify_x509,
};
use crate::identity::{Mac, RegistrationId};
use crate::keys::GroupKey;
use crate::record::{Attestation, DpsStatus, ErrorCode, Stage, Unit};
use crate::station::Station;

impl<D: Device> Run<'_, D> {
    /// Registers the unit with DPS, when pre-verification is on. Pending (DPS unreachable)
    /// still provisions the unit; a refusal fails it.
    pub(super) async fn pre_verify(&mut self, image: &DeviceImage) -> Result<(), Failed> {
        let Some(client) = &self.station.dps else {
            return Ok(());
        };
        self.reached(Stage::Dps, None).await?;
        let t = Instant::now();
        let verification = match (image.device_key(), image.certificate()) {
            (Some(device_key), _) => pre_verify(client, &image.registration_id, device_key).await,
            (None, Some(credentials)) => {
                pre_verify_x509(client, &image.registration_id, credentials.tls_identity()).await
            }
            (None, None) => return Ok(()),
        };
        self.timings.dps = self.finished(Stage::Dps.as_str(), t);
        self.facts.dps = Some(verification.record());
        match (verification.status, verification.error) {
            (DpsStatus::Failed, Some(error)) => Err(fail(Stage::Dps, true)(error)),
            _ => Ok(()),
        }
    }
}

/// One unit of a `dps verify` run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The registration ID.
    pub registration_id: RegistrationId,
    /// The unit's MAC, when the unit is recorded.
    pub mac: Option<Mac>,
    /// The new DPS status.
    pub dps_status: DpsStatus,
    /// What DPS returned.
    pub registration_state: Option<RegistrationState>,
    /// The stable error code, when not assigned.
    pub error_code: Option<ErrorCode>,
    /// The error, when not assigned.
    pub error: Option<String>,
    /// What the operator should do.
    pub hint: Option<String>,
    /// Whether the unit's record was updated.
    pub recorded: bool,
}

/// What `station dps verify --pending` (and the line daemon) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PendingSummary {
    /// Units that were pending.
    pub pending: usize,
    /// Now assigned.
    pub assigned: usize,
    /// Now failed.
    pub failed: usize,
    /// Still pending (DPS still unreachable, or not tried because it was).
    pub still_pending: usize,
    /// Units whose key can no longer be derived (their group key is not configured any more).
    pub skipped: usize,
    /// Per unit tried.
    pub units: Vec<VerifyReport>,
}

/// Verifies one registration ID now (`station dps verify --registration-id`): derives its key
/// from the group key, registers it, and when a unit with that registration ID is recorded,
/// updates its DPS state with an audit entry (`unit.dps_verified`).
#[tracing::instrument(skip_all, fields(registration_id = %registration_id))]
pub async fn verify_registration(
    station: &Station,
    registration_id: &RegistrationId,
    operator: &str,
) -> Result<VerifyReport, UnitError> {
    let unit = station
        .store
        .unit_by_registration_id(registration_id)
        .await?;
    let x509_unit = unit
        .as_ref()
        .is_some_and(|u| u.attestation == Attestation::X509);
    let key = match station.attestor.group_keys() {
        Some(keys) if !x509_unit => unit
            .as_ref()
            .and_then(|u| group_key_of(station, u))
            .unwrap_or(&keys.primary),
        _ => {
            return Err(ProvisionError::X509NotVerifiable {
                registration_id: registration_id.to_string(),
            }
            .into());
        }
    };
    let client = station.dps_client()?;
    let (report, _) = verify_unit(
        station,
        &client,
        registration_id,
        key,
        unit.as_ref(),
        operator,
        true,
    )
    .await?;
    Ok(report)
}

/// Retries every provisioned unit whose DPS status is `pending`, oldest first, recording each
/// unit that DPS now assigns or refuses (a `unit.dps_verified` audit entry). Units that stay
/// pending are not re-recorded, so a daemon calling this periodically while offline does not
/// flood the audit log. The pass stops at the first unit DPS cannot be reached for: the rest
/// stay pending for the next pass.
pub async fn retry_pending(station: &Station, operator: &str) -> Result<PendingSummary, UnitError> {
    let units = station.store.pending_dps_units().await?;
    let mut summary = PendingSummary {
        pending: units.len(),
        ..PendingSummary::default()
    };
    if units.is_empty() {
        return Ok(summary);
    }
    let client = station.dps_client()?;
    let mut offline = false;
    for unit in &units {
        if unit.attestation == Attestation::X509 {
            tracing::warn!(mac = %unit.mac, "pending X.509 unit: only the device holds its key; skipped");
            summary.skipped += 1;
            continue;
        }
        let Some(key) = group_key_of(station, unit) else {
            tracing::warn!(mac = %unit.mac, key_id = %unit.key_id, "pending unit's group key is not configured; skipped");
            summary.skipped += 1;
            continue;
        };
        if offline {
            summary.still_pending += 1;
            continue;
        }
        let span = tracing::info_span!(
            "dps_retry",
            mac = %unit.mac,
            registration_id = %unit.registration_id
        );
        let (report, unreachable) = verify_unit(
            station,
            &client,
            &unit.registration_id,
            key,
            Some(unit),
            operator,
            false,
        )
        .instrument(span)
        .await?;
        match report.dps_status {
            DpsStatus::Assigned => summary.assigned += 1,
            DpsStatus::Failed => summary.failed += 1,
            _ => {
                summary.still_pending += 1;
                offline = unreachable;
            }
        }
        summary.units.push(report);
    }
    Ok(summary)
}

/// The configured group key a unit's device key was derived from, if it is still configured.
fn group_key_of<'a>(station: &'a Station, unit: &Unit) -> Option<&'a GroupKey> {
    let keys = station.attestor.group_keys()?;
    std::iter::once(&keys.primary)
        .chain(keys.secondary.as_ref())
        .find(|key| *key.id() == unit.key_id)
}

/// Registers one ID with the device key `key` derives and, for a recorded unit, records the
/// outcome (a pending one only when `record_pending`). The report, and whether DPS was
/// unreachable.
async fn verify_unit(
    station: &Station,
    client: &DpsClient,
    registration_id: &RegistrationId,
    key: &GroupKey,
    unit: Option<&Unit>,
    operator: &str,
    record_pending: bool,
) -> Result<(VerifyReport, bool), UnitError> {
    let device_key = key.derive(registration_id);
    let verification: Verification = pre_verify(client, registration_id, &device_key).await;
    let mut recorded = false;
    if let Some(unit) = unit
        && (record_pending || verification.status != DpsStatus::Pending)
    {
        station
            .store
            .record_dps(
                unit.id,
                &verification.record(),
                &station.config.station.id,
                operator,
            )
            .await?;
        recorded = true;
    }
    let error = verification.error.as_ref();
    let unreachable = matches!(error, Some(DpsError::Unreachable { .. }));
    let report = VerifyReport {
        registration_id: registration_id.clone(),
        mac: unit.map(|u| u.mac),
        dps_status: verification.status,
        error_code: error.map(|e| ErrorCode::of(e)),
        error: error.map(ToString::to_string),
        hint: error.and_then(|e| e.help()).map(|h| h.to_string()),
        registration_state: verification.state,
        recorded,
    };
    Ok((report, unreachable))
}
