//! The DPS service API's individual enrollments
//! (<https://learn.microsoft.com/rest/api/iot-dps/service/individual-enrollment>), as the station
//! uses them: a *disabled* individual enrollment for one registration ID denies that device even
//! when its enrollment group would accept it (Azure's documented way to shut one device of a
//! group out, <https://learn.microsoft.com/azure/iot-dps/how-to-revoke-device-access-portal>),
//! and an *enabled* one with a random key per unit is `[dps] enrollment = "individual"`.
//!
//! Calls: `GET`, `PUT` (with `If-Match` when the enrollment exists) and `DELETE`
//! `{endpoint}/enrollments/{registration_id}?api-version=…`, each authorized by a service SAS
//! token signed with the shared access policy's key (`sr` = the service host, `skn` = the
//! policy's name: [`super::sas::SasToken::for_policy`]). The policy must grant Enrollment write.

use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::DpsError;
use super::client::{REQUEST_TIMEOUT, expiry, http_client};
use super::retry::{RetryPolicy, jitter};
use super::sas::{self, SasToken};
use super::wire::ServiceError;
use crate::config::DpsServiceConfig;
use crate::identity::RegistrationId;
use crate::keys::{DeviceKey, KeyError, ServiceKey};

/// How long the service API may take for one enrollment, retries of 429 and 5xx included.
const SERVICE_BUDGET: Duration = Duration::from_secs(20);

/// An individual enrollment as the service API reads and writes it (the fields the station
/// uses; DPS keeps the rest).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The registration ID it is for.
    pub registration_id: String,
    /// How the device attests.
    pub attestation: AttestationMechanism,
    /// `enabled` or `disabled`.
    pub provisioning_status: String,
    /// The entity tag DPS returns; sent back as `If-Match` when changing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// When DPS created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// When it last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
}

impl std::fmt::Debug for IndividualEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndividualEnrollment")
            .field("registration_id", &self.registration_id)
            .field("attestation", &self.attestation.kind)
            .field("provisioning_status", &self.provisioning_status)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// `AttestationMechanism`: `symmetricKey` with its keys (the station's), or another kind DPS
/// keeps as it is.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    /// `symmetricKey`, `x509` or `tpm`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The symmetric keys (absent to let DPS make them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeys>,
    /// Whatever else the mechanism holds (an X.509 or TPM enrollment's material), unchanged.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `SymmetricKeyAttestation`: an individual enrollment's two keys, base64. Secrets: the
/// station never prints, logs or stores them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeys {
    /// The primary key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// The secondary key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

impl Drop for SymmetricKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.primary_key.zeroize();
        self.secondary_key.zeroize();
    }
}

impl IndividualEnrollment {
    /// A symmetric-key enrollment for `registration_id` with the device's two keys, enabled.
    pub fn symmetric(
        registration_id: &RegistrationId,
        primary: &DeviceKey,
        secondary: &DeviceKey,
    ) -> IndividualEnrollment {
        IndividualEnrollment {
            registration_id: registration_id.to_string(),
            attestation: AttestationMechanism {
                kind: "symmetricKey".to_owned(),
                symmetric_key: Some(SymmetricKeys {
                    primary_key: Some(primary.expose().to_owned()),
                    secondary_key: Some(secondary.expose().to_owned()),
                }),
                other: serde_json::Map::new(),
            },
            provisioning_status: ENABLED.to_owned(),
            ..IndividualEnrollment::default()
        }
    }

    /// A disabled symmetric-key enrollment for `registration_id`, whose keys DPS makes (nobody
    /// needs them: it exists to deny the device).
    pub fn denial(registration_id: &RegistrationId) -> IndividualEnrollment {
        IndividualEnrollment {
            registration_id: registration_id.to_string(),
            attestation: AttestationMechanism {
                kind: "symmetricKey".to_owned(),
                symmetric_key: None,
                other: serde_json::Map::new(),
            },
            provisioning_status: DISABLED.to_owned(),
            ..IndividualEnrollment::default()
        }
    }

    /// Whether DPS refuses the device.
    pub fn is_disabled(&self) -> bool {
        self.provisioning_status.eq_ignore_ascii_case(DISABLED)
    }
}

/// `provisioningStatus` of an enrollment that admits its device.
pub const ENABLED: &str = "enabled";
/// `provisioningStatus` of an enrollment that refuses its device.
pub const DISABLED: &str = "disabled";

/// The station's client of the DPS service API.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    endpoint: String,
    resource: String,
    policy: String,
    key: ServiceKey,
    api_version: String,
    retry: RetryPolicy,
}

impl ServiceClient {
    /// Loads the policy key (the group key's file rules) and builds the client, trusting the
    /// platform's roots plus `roots` (`[dps] ca_file`).
    pub fn new(
        config: &DpsServiceConfig,
        roots: &[CertificateDer<'static>],
    ) -> Result<ServiceClient, ServiceSetupError> {
        let key = ServiceKey::load(&config.policy_key_file)?;
        let host = config
            .endpoint
            .split_once("://")
            .map_or(config.endpoint.as_str(), |(_, host)| host);
        Ok(ServiceClient {
            http: http_client(roots, None)?,
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            // The token's resource is the service's host name, lowercase.
            resource: host.to_ascii_lowercase(),
            policy: config.policy.clone(),
            key,
            api_version: config.api_version.clone(),
            retry: RetryPolicy::new(SERVICE_BUDGET),
        })
    }

    /// The policy key's fingerprint, for records.
    pub fn key_id(&self) -> &crate::keys::KeyId {
        self.key.id()
    }

    /// The service endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn url(&self, registration_id: &RegistrationId) -> String {
        format!(
            "{}/enrollments/{}?api-version={}",
            self.endpoint,
            sas::encode(registration_id.as_str()),
            sas::encode(&self.api_version)
        )
    }

    fn token(&self) -> String {
        SasToken::for_policy(
            self.resource.clone(),
            self.key.expose(),
            expiry(),
            &self.policy,
        )
        .header()
    }

    /// The individual enrollment of `registration_id`, if DPS has one.
    pub async fn enrollment(
        &self,
        registration_id: &RegistrationId,
    ) -> Result<Option<IndividualEnrollment>, DpsError> {
        let (status, body) = self
            .call(registration_id, reqwest::Method::GET, None, None)
            .await?;
        match status {
            200 => Ok(Some(self.parse(&body)?)),
            404 => Ok(None),
            _ => Err(self.refusal(registration_id, status, &body)),
        }
    }

    /// Creates or replaces the individual enrollment (`If-Match: etag` when replacing one the
    /// station read); DPS's copy as it now stands.
    pub async fn put(
        &self,
        enrollment: &IndividualEnrollment,
        etag: Option<&str>,
    ) -> Result<IndividualEnrollment, DpsError> {
        let registration_id =
            RegistrationId::new(&enrollment.registration_id).map_err(|e| DpsError::Client {
                problem: e.to_string(),
            })?;
        let body = serde_json::to_value(enrollment).map_err(|e| DpsError::Client {
            problem: e.to_string(),
        })?;
        let (status, text) = self
            .call(&registration_id, reqwest::Method::PUT, Some(&body), etag)
            .await?;
        match status {
            200 | 201 => self.parse(&text),
            _ => Err(self.refusal(&registration_id, status, &text)),
        }
    }

    /// Deletes the individual enrollment, if there is one (`true` when one was deleted).
    pub async fn delete(&self, registration_id: &RegistrationId) -> Result<bool, DpsError> {
        let (status, body) = self
            .call(registration_id, reqwest::Method::DELETE, None, None)
            .await?;
        match status {
            200 | 204 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refusal(registration_id, status, &body)),
        }
    }

    /// One call, retried on 429 and 5xx within the budget; the status and body.
    async fn call(
        &self,
        registration_id: &RegistrationId,
        method: reqwest::Method,
        body: Option<&serde_json::Value>,
        etag: Option<&str>,
    ) -> Result<(u16, String), DpsError> {
        let deadline = Instant::now() + self.retry.budget;
        let mut retries = 0u32;
        loop {
            let mut request = self
                .http
                .request(method.clone(), self.url(registration_id))
                .header(reqwest::header::AUTHORIZATION, self.token())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(REQUEST_TIMEOUT);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(etag) = etag {
                request = request.header(reqwest::header::IF_MATCH, etag);
            }
            let unreachable = |detail: String| DpsError::ServiceUnreachable {
                url: self.endpoint.clone(),
                detail,
            };
            let response = request
                .send()
                .await
                .map_err(|e| unreachable(crate::support::error_chain_text(&e)))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response
                .text()
                .await
                .map_err(|e| unreachable(crate::support::error_chain_text(&e)))?;
            if status != 429 && !(500..600).contains(&status) {
                return Ok((status, text));
            }
            let wait = self.retry.backoff(retries, retry_after, jitter());
            retries += 1;
            if Instant::now() + wait >= deadline {
                return Err(unreachable(format!(
                    "HTTP {status} until the time allowed ran out"
                )));
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn parse(&self, body: &str) -> Result<IndividualEnrollment, DpsError> {
        serde_json::from_str(body).map_err(|e| DpsError::Protocol {
            url: self.endpoint.clone(),
            problem: format!("an answer that is not an individual enrollment: {e}"),
        })
    }

    fn refusal(&self, registration_id: &RegistrationId, status: u16, body: &str) -> DpsError {
        let details: ServiceError = serde_json::from_str(body).unwrap_or_else(|_| ServiceError {
            message: body.chars().take(200).collect(),
            ..ServiceError::default()
        });
        if status == 401 || status == 403 {
            DpsError::ServiceUnauthorized {
                url: self.endpoint.clone(),
                policy: self.policy.clone(),
                status,
                message: details.message,
            }
        } else {
            DpsError::ServiceRejected {
                registration_id: registration_id.to_string(),
                status,
                error_code: details.error_code,
                message: details.message,
            }
        }
    }
}

/// Why the service client cannot be built: its key file, or its TLS configuration.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ServiceSetupError {
    /// The policy key file is missing, exposed or malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Key(#[from] KeyError),
    /// The HTTP client cannot be set up.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dps(#[from] DpsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollments_serialize_as_the_service_api_names_them() {
        let id = RegistrationId::new("sensor-240ac4123456").unwrap();
        let denial = serde_json::to_value(IndividualEnrollment::denial(&id)).unwrap();
        assert_eq!(
            denial,
            serde_json::json!({
                "registrationId": "sensor-240ac4123456",
                "attestation": { "type": "symmetricKey" },
                "provisioningStatus": "disabled",
            })
        );
        let key = DeviceKey::generate().unwrap();
        let other = DeviceKey::generate().unwrap();
        let enrollment = IndividualEnrollment::symmetric(&id, &key, &other);
        let json = serde_json::to_value(&enrollment).unwrap();
        assert_eq!(
            json["attestation"]["symmetricKey"]["primaryKey"],
            key.expose()
        );
        assert_eq!(json["provisioningStatus"], "enabled");
        let shown = format!("{enrollment:?}");
        assert!(!shown.contains(key.expose()), "{shown}");
        // What DPS returns round-trips, including attestation material the station does not
        // model (an X.509 enrollment's certificates stay as they were).
        let x509 = serde_json::json!({
            "registrationId": "x", "provisioningStatus": "enabled", "etag": "\"1\"",
            "attestation": { "type": "x509", "x509": { "clientCertificates": { "primary": { "certificate": "MIIB" } } } }
        });
        let parsed: IndividualEnrollment = serde_json::from_value(x509.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), x509);
    }
}
