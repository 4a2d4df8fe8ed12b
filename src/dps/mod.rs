//! The DPS client: the station registers a freshly flashed unit with Azure DPS exactly as the
//! device will, proving before the unit leaves the line that the enrollment group accepts its
//! derived key, and learns the hub DPS assigned it to.
//!
//! This module is the client only: SAS tokens ([`sas`]), register, poll, and the meaning of
//! each answer for the unit ([`Verification`]). What the station does with it (fail the unit,
//! record it pending, settle it later) is the pipeline's stage `dps`, in
//! [`crate::provision`].
//!
//! A unit with X.509 attestation registers the same way, except that it authenticates with
//! its certificate in the TLS handshake instead of a token ([`DpsClient::register_x509`],
//! <https://learn.microsoft.com/azure/iot-dps/iot-dps-https-x509-support>); DPS answers HTTP
//! 401 when it does not trust the certificate ([`DpsError::CertificateRefused`]).
//!
//! It speaks the DPS device REST API
//! (<https://learn.microsoft.com/rest/api/iot-dps/device/runtime-registration>):
//! `PUT {base}/{idScope}/registrations/{registrationId}/register?api-version=…` with a
//! [`sas`] token, then `GET …/operations/{operationId}?api-version=…` until the operation's
//! `status` is `assigned`, `failed` or `disabled`. `{base}` is `[dps] verify_url`
//! (default `https://{endpoint}`). HTTP 429 and 5xx answers are retried with exponential backoff
//! and jitter, never sooner than the server's `Retry-After`, all within `[dps] verify_timeout`
//! ([`RetryPolicy`]). Rejections (HTTP 401, a `failed` or `disabled` registration) fail the unit
//! at stage `dps`; an unreachable or unanswering service leaves it provisioned with DPS status
//! `pending`, which [`crate::provision::retry_pending`] (`station dps verify --pending`, and the
//! line daemon periodically) settles later.
//!
//! DPS has no dry run: a successful pre-verification creates the device's identity in the
//! assigned hub. When the device later registers itself it gets the same assignment.

mod client;
mod error;
mod retry;
pub mod sas;
mod wire;

pub use client::DpsClient;
pub use error::DpsError;
pub use retry::RetryPolicy;
pub use sas::SasToken;
pub use wire::{OperationStatus, RegistrationState, ServiceError};

use crate::identity::RegistrationId;
use crate::keys::DeviceKey;
use crate::record::{DpsStatus, UnitDps};
use crate::tls::ClientIdentity;

/// The outcome of one unit's pre-verification, as the pipeline and the store see it.
#[derive(Debug)]
pub struct Verification {
    /// Assigned, pending or failed.
    pub status: DpsStatus,
    /// The registration state DPS returned, when assigned.
    pub state: Option<RegistrationState>,
    /// Why it is not assigned.
    pub error: Option<DpsError>,
}

impl Verification {
    /// Classifies a registration result: transient errors make the unit pending.
    pub fn from_result(result: Result<RegistrationState, DpsError>) -> Verification {
        match result {
            Ok(state) => Verification {
                status: DpsStatus::Assigned,
                state: Some(state),
                error: None,
            },
            Err(error) => Verification {
                status: if error.is_transient() {
                    DpsStatus::Pending
                } else {
                    DpsStatus::Failed
                },
                state: None,
                error: Some(error),
            },
        }
    }

    /// What the store records on the unit.
    pub fn record(&self) -> UnitDps {
        let state = self.state.as_ref();
        UnitDps {
            status: self.status,
            assigned_hub: state.and_then(|s| s.assigned_hub.clone()),
            device_id: state.and_then(|s| s.device_id.clone()),
            substatus: state.and_then(|s| s.substatus.clone()),
            error: self.error.as_ref().map(|e| {
                format!(
                    "{}: {e}",
                    miette::Diagnostic::code(e).map_or_else(String::new, |c| c.to_string())
                )
            }),
        }
    }
}

/// Pre-verifies one symmetric-key unit in the pipeline.
pub async fn pre_verify(
    client: &DpsClient,
    registration_id: &RegistrationId,
    device_key: &DeviceKey,
) -> Verification {
    Verification::from_result(client.register(registration_id, device_key).await)
}

/// Pre-verifies one X.509 unit in the pipeline, authenticating with its certificate chain
/// and key.
pub async fn pre_verify_x509(
    client: &DpsClient,
    registration_id: &RegistrationId,
    identity: ClientIdentity,
) -> Verification {
    Verification::from_result(client.register_x509(registration_id, identity).await)
}

#[cfg(test)]
mod tests;
