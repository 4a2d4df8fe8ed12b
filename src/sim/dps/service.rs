//! The emulator's DPS service API: `GET`, `PUT` and `DELETE /enrollments/{id}`, authorized as
//! DPS does by a service SAS token (resource: the service's host, key name: the shared access
//! policy, signed with its key; [`super::EmulatorOptions::service`]). Individual enrollments
//! it holds take effect on the device API at once: an enabled one's keys replace the group's for
//! that registration ID, a disabled one makes its registration end `disabled`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::Shared;
use crate::dps::sas::SasToken;
use crate::keys::{DeviceKey, ServiceKey};
use crate::support::lock;

/// The shared access policy the emulator's service API accepts.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    /// Its name (`skn`).
    pub name: String,
    /// Its key.
    pub key: ServiceKey,
}

/// An individual enrollment as the emulator holds it.
#[derive(Clone)]
pub(super) struct Enrollment {
    registration_id: String,
    /// The primary and secondary keys (base64) of a symmetric-key enrollment.
    keys: [String; 2],
    /// Whatever attestation the client sent, echoed back (keys included, as DPS does).
    attestation: serde_json::Value,
    enabled: bool,
    etag: String,
    created: String,
    updated: String,
}

/// What tests see of an enrollment the emulator holds (never its keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentView {
    /// The registration ID.
    pub registration_id: String,
    /// `enabled` or `disabled`.
    pub provisioning_status: String,
    /// The attestation type (`symmetricKey`).
    pub attestation: String,
    /// Its entity tag.
    pub etag: String,
}

impl Enrollment {
    pub(super) fn is_disabled(&self) -> bool {
        !self.enabled
    }

    /// Whether a device token was signed with one of the enrollment's keys.
    pub(super) fn verifies(&self, token: &SasToken) -> bool {
        self.keys
            .iter()
            .any(|key| !key.is_empty() && token.verify(key))
    }

    pub(super) fn view(&self) -> EnrollmentView {
        EnrollmentView {
            registration_id: self.registration_id.clone(),
            provisioning_status: status(self.enabled).to_owned(),
            attestation: self
                .attestation
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_owned(),
            etag: self.etag.clone(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "registrationId": self.registration_id,
            "attestation": self.attestation,
            "provisioningStatus": status(self.enabled),
            "etag": self.etag,
            "createdDateTimeUtc": self.created,
            "lastUpdatedDateTimeUtc": self.updated,
        })
    }
}

fn status(enabled: bool) -> &'static str {
    if enabled { "enabled" } else { "disabled" }
}

impl Shared {
    /// Checks a service token: the policy's name and key, the service host as resource, not
    /// expired. The refusal otherwise (boxed: a response is large beside `Ok(())`).
    fn authorize_service(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let refuse = |why: &str| {
            tracing::debug!(why, "emulator refused a service token");
            Box::new(
                self.error(401, 401002, &format!("Unauthorized: {why}"))
                    .into_response(),
            )
        };
        let Some(policy) = &self.options.service else {
            return Err(refuse(
                "the emulator has no shared access policy (--service-key-file)",
            ));
        };
        let Some(header) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(refuse("no Authorization header"));
        };
        let token = SasToken::parse(header).map_err(|why| refuse(&why))?;
        if token.key_name.as_deref() != Some(policy.name.as_str()) {
            return Err(refuse("unknown shared access policy"));
        }
        if !token.resource.eq_ignore_ascii_case(&self.service_host) {
            return Err(refuse("the token was issued for another resource"));
        }
        if token.expiry <= super::unix_now() {
            return Err(refuse("the SAS token has expired"));
        }
        if !token.verify_bytes(policy.key.expose()) {
            return Err(refuse("the signature does not match"));
        }
        Ok(())
    }
}

pub(super) async fn get_enrollment(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    if let Err(refused) = shared.authorize_service(&headers) {
        return *refused;
    }
    match lock(&shared.enrollments).get(&id) {
        Some(enrollment) => axum::Json(enrollment.json()).into_response(),
        None => shared
            .error(404, 404201, "Enrollment not found.")
            .into_response(),
    }
}

pub(super) async fn delete_enrollment(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    if let Err(refused) = shared.authorize_service(&headers) {
        return *refused;
    }
    match lock(&shared.enrollments).remove(&id) {
        Some(_) => axum::http::StatusCode::NO_CONTENT.into_response(),
        None => shared
            .error(404, 404201, "Enrollment not found.")
            .into_response(),
    }
}

pub(super) async fn put_enrollment(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    if let Err(refused) = shared.authorize_service(&headers) {
        return *refused;
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return shared
            .error(400, 400004, "The api-version query parameter is required.")
            .into_response();
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return shared
            .error(400, 400001, "The body is not JSON.")
            .into_response();
    };
    if body.get("registrationId").and_then(|v| v.as_str()) != Some(id.as_str()) {
        return shared
            .error(
                400,
                400000,
                "registrationId in the body does not match the path.",
            )
            .into_response();
    }
    let mut attestation = body.get("attestation").cloned().unwrap_or_default();
    if attestation.get("type").and_then(|t| t.as_str()) != Some("symmetricKey") {
        return shared
            .error(
                400,
                400000,
                "The emulator holds symmetric-key individual enrollments only.",
            )
            .into_response();
    }
    let enabled = match body.get("provisioningStatus").and_then(|v| v.as_str()) {
        None | Some("enabled") => true,
        Some("disabled") => false,
        Some(_) => {
            return shared
                .error(
                    400,
                    400000,
                    "provisioningStatus must be enabled or disabled.",
                )
                .into_response();
        }
    };
    let mut enrollments = lock(&shared.enrollments);
    let existing = enrollments.get(&id);
    if let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && existing.is_none_or(|e| e.etag != if_match && if_match != "*")
    {
        return shared
            .error(412, 412002, "The ETag does not match the enrollment's.")
            .into_response();
    }
    // Keys left out are made by DPS, as the service API does.
    let mut keys = [String::new(), String::new()];
    for (slot, name) in keys.iter_mut().zip(["primaryKey", "secondaryKey"]) {
        let given = attestation
            .pointer(&format!("/symmetricKey/{name}"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        *slot = match given {
            Some(key) if BASE64.decode(&key).is_ok_and(|k| k.len() >= 16) => key,
            Some(_) => {
                return shared
                    .error(
                        400,
                        400000,
                        "A symmetric key must be base64 of 16 to 64 bytes.",
                    )
                    .into_response();
            }
            None => match DeviceKey::generate() {
                Ok(key) => key.expose().to_owned(),
                Err(_) => {
                    return shared
                        .error(500, 500000, "No randomness for a key.")
                        .into_response();
                }
            },
        };
    }
    attestation["symmetricKey"] = serde_json::json!({
        "primaryKey": keys[0],
        "secondaryKey": keys[1],
    });
    let now = crate::clock::now();
    let created = existing.map_or_else(|| now.clone(), |e| e.created.clone());
    let enrollment = Enrollment {
        registration_id: id.clone(),
        keys,
        attestation,
        enabled,
        etag: format!("\"{:08x}\"", shared.next()),
        created,
        updated: now,
    };
    let json = enrollment.json();
    enrollments.insert(id, enrollment);
    axum::Json(json).into_response()
}
