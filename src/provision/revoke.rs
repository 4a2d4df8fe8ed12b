//! Revocation: a unit scrapped or returned after provisioning is shut out of the cloud and kept
//! off the line (`station unit revoke MAC --reason TEXT`), and let back in by `station unit
//! restore MAC`.
//!
//! The ledger records every act (`units.revoked_at`/`revoked_reason`, audit entries
//! `unit.revoked` and `unit.restored` whose details say what was done in DPS). With `[dps.service]`
//! the station also acts in DPS through the service API ([`crate::dps::service`]): revoking puts
//! a *disabled individual enrollment* for the unit's registration ID (DPS then refuses the
//! device whatever its group says; a unit with an individual enrollment has that enrollment
//! disabled), and restoring deletes that denial (or re-enables the unit's own enrollment).
//! Without `[dps.service]` the revocation is recorded and the report says what to do in the
//! portal. An X.509 unit's denial would need its certificate, which the station does not keep:
//! the report says so and gives the portal steps with the certificate's thumbprint.

use serde::Serialize;

use super::UnitError;
use crate::dps::service::{DISABLED, ENABLED, IndividualEnrollment, ServiceClient};
use crate::identity::{Mac, RegistrationId};
use crate::record::{Attestation, EnrollmentKind, ErrorCode, Unit, UnitRevocation};
use crate::station::Station;
use crate::store::StoreError;

/// What was done in DPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum DpsAction {
    /// A disabled individual enrollment was created for the registration ID.
    DenialCreated {
        /// Its entity tag.
        etag: Option<String>,
    },
    /// The unit's existing individual enrollment was set to `provisioningStatus`.
    EnrollmentSet {
        /// `enabled` or `disabled`.
        provisioning_status: String,
        /// Its entity tag.
        etag: Option<String>,
    },
    /// The disabled individual enrollment was deleted: the enrollment group applies again.
    DenialDeleted,
    /// DPS had nothing to undo.
    Nothing,
    /// `[dps.service]` is not configured: someone must do it in the portal.
    NotConfigured {
        /// What to do.
        instructions: String,
    },
    /// The station cannot do it for this unit (X.509: the certificate is needed).
    NotPossible {
        /// Why, and what to do.
        instructions: String,
    },
    /// The service API refused or could not be reached; the ledger records the decision.
    Failed {
        /// The stable error code.
        code: ErrorCode,
        /// The error.
        message: String,
        /// What to do.
        hint: Option<String>,
    },
}

impl DpsAction {
    /// Whether DPS is as it should be now (or cannot be made so by the station).
    pub fn settled(&self) -> bool {
        !matches!(self, DpsAction::Failed { .. })
    }
}

/// What `station unit revoke` or `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RevocationReport {
    /// The unit.
    pub mac: Mac,
    /// Its registration ID.
    pub registration_id: RegistrationId,
    /// Revoked now (`true`) or restored (`false`).
    pub revoked: bool,
    /// When it was revoked (none once restored).
    pub revoked_at: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// What was done in DPS.
    pub dps: DpsAction,
}

/// Revokes the unit with `mac`: denies it in DPS (with `[dps.service]`) and records it, with
/// its audit entry. A service failure is recorded too (the decision stands; running the command
/// again retries DPS).
pub async fn revoke(
    station: &Station,
    mac: &Mac,
    reason: &str,
    operator: &str,
) -> Result<RevocationReport, UnitError> {
    let unit = unit(station, mac).await?;
    let dps = match (&station.service, unit.attestation) {
        (_, Attestation::X509) => DpsAction::NotPossible {
            instructions: format!(
                "DPS denies an X.509 device by its certificate, which the station does not keep. In the portal: DPS > Manage enrollments > Add individual enrollment, mechanism X.509, the device's certificate (thumbprint {}; read it from the device), registration ID {}, Enable entry: Disable, Save.",
                unit.cert_thumbprint.as_deref().unwrap_or("unknown"),
                unit.registration_id
            ),
        },
        (None, _) => DpsAction::NotConfigured {
            instructions: format!(
                "[dps.service] is not configured, so DPS still accepts this unit. In the portal: DPS > Manage enrollments > {} > Enable entry: Disable, Save; or configure [dps.service] and run this command again.",
                if unit.enrollment == EnrollmentKind::Individual {
                    format!("Individual enrollments > {}", unit.registration_id)
                } else {
                    format!(
                        "Add individual enrollment, mechanism Symmetric key, registration ID {}",
                        unit.registration_id
                    )
                }
            ),
        },
        (Some(service), _) => deny(service, &unit.registration_id)
            .await
            .unwrap_or_else(failed),
    };
    let revocation = UnitRevocation {
        revoked_at: Some(crate::clock::now()),
        reason: Some(reason.to_owned()),
    };
    record(station, &unit, revocation, &dps, operator, true).await
}

/// Restores a revoked unit: lifts its denial in DPS (with `[dps.service]`) and clears the
/// revocation, with an audit entry.
pub async fn restore(
    station: &Station,
    mac: &Mac,
    operator: &str,
) -> Result<RevocationReport, UnitError> {
    let unit = unit(station, mac).await?;
    let dps = match (&station.service, unit.attestation) {
        (_, Attestation::X509) => DpsAction::NotPossible {
            instructions: format!(
                "If a disabled individual enrollment was made for this X.509 unit in the portal, delete it there (DPS > Manage enrollments > Individual enrollments > {}).",
                unit.registration_id
            ),
        },
        (None, _) => DpsAction::NotConfigured {
            instructions: format!(
                "[dps.service] is not configured. In the portal, delete the disabled individual enrollment {} (or, for a unit with its own individual enrollment, set Enable entry: Enable).",
                unit.registration_id
            ),
        },
        (Some(service), _) => readmit(service, &unit).await.unwrap_or_else(failed),
    };
    let revocation = UnitRevocation {
        revoked_at: None,
        reason: None,
    };
    record(station, &unit, revocation, &dps, operator, false).await
}

async fn unit(station: &Station, mac: &Mac) -> Result<Unit, UnitError> {
    station
        .store
        .unit_by_mac(mac)
        .await?
        .ok_or_else(|| StoreError::NoSuchUnit { mac: *mac }.into())
}

async fn record(
    station: &Station,
    unit: &Unit,
    revocation: UnitRevocation,
    dps: &DpsAction,
    operator: &str,
    revoked: bool,
) -> Result<RevocationReport, UnitError> {
    let mut details = serde_json::json!({ "dps": dps });
    if let Some(reason) = &revocation.reason {
        details["reason"] = serde_json::json!(reason);
    }
    if revoked && let Some(previous) = &unit.revoked_at {
        details["previously_revoked_at"] = serde_json::json!(previous);
    }
    let updated = station
        .store
        .record_revocation(
            &unit.mac,
            &revocation,
            details,
            &station.config.station.id,
            operator,
        )
        .await?;
    tracing::info!(mac = %unit.mac, revoked, settled = dps.settled(), "unit revocation recorded");
    Ok(RevocationReport {
        mac: updated.mac,
        registration_id: updated.registration_id,
        revoked,
        revoked_at: updated.revoked_at,
        reason: updated.revoked_reason,
        dps: dps.clone(),
    })
}

/// Puts a disabled individual enrollment for `registration_id`: a new denial, or the existing
/// enrollment disabled (its attestation kept).
async fn deny(
    service: &ServiceClient,
    registration_id: &RegistrationId,
) -> Result<DpsAction, UnitError> {
    match service.enrollment(registration_id).await? {
        None => {
            let created = service
                .put(&IndividualEnrollment::denial(registration_id), None)
                .await?;
            Ok(DpsAction::DenialCreated { etag: created.etag })
        }
        Some(mut existing) => {
            let etag = existing.etag.take();
            existing.provisioning_status = DISABLED.to_owned();
            let updated = service.put(&existing, etag.as_deref()).await?;
            Ok(DpsAction::EnrollmentSet {
                provisioning_status: updated.provisioning_status,
                etag: updated.etag,
            })
        }
    }
}

/// Lifts the denial: deletes a group unit's disabled enrollment, or re-enables an individual
/// unit's own.
async fn readmit(service: &ServiceClient, unit: &Unit) -> Result<DpsAction, UnitError> {
    let Some(mut existing) = service.enrollment(&unit.registration_id).await? else {
        return Ok(DpsAction::Nothing);
    };
    if unit.enrollment == EnrollmentKind::Individual {
        let etag = existing.etag.take();
        existing.provisioning_status = ENABLED.to_owned();
        let updated = service.put(&existing, etag.as_deref()).await?;
        return Ok(DpsAction::EnrollmentSet {
            provisioning_status: updated.provisioning_status,
            etag: updated.etag,
        });
    }
    if !existing.is_disabled() {
        return Ok(DpsAction::Nothing);
    }
    service.delete(&unit.registration_id).await?;
    Ok(DpsAction::DenialDeleted)
}

fn failed(error: UnitError) -> DpsAction {
    use miette::Diagnostic as _;
    DpsAction::Failed {
        code: ErrorCode::of(&error),
        message: error.to_string(),
        hint: error.help().map(|h| h.to_string()),
    }
}
