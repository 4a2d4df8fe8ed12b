//! The DPS client: the station registers a freshly flashed unit with Azure DPS exactly as the
//! device will, proving before the unit leaves the line that the enrollment group accepts its
//! derived key, and learns the hub DPS assigned it to.
//!
//! This module is the client only: SAS tokens ([`sas`]), register, poll, and the meaning of
//! each answer for the unit ([`Verification`]). What the station does with it (fail the unit,
//! record it pending, settle it later) is the pipeline's stage `dps`, in
//! [`crate::provision`].
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

pub mod sas;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::config::DpsConfig;
use crate::identity::RegistrationId;
use crate::keys::DeviceKey;
use crate::record::{DpsStatus, UnitDps};
use crate::support::error_chain_text;

pub use sas::SasToken;

/// How long a registration token the station makes stays valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a single HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the station waits to open a connection to DPS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of DPS pre-verification. Messages carry DPS's own error code and text, never a key or
/// a token.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DpsError {
    /// DPS refused the registration's SAS token (HTTP 401).
    #[error("DPS refused the credentials of {registration_id} (HTTP 401{}): {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::unauthorized),
        help(
            "The group key or ID scope in station.toml does not match the enrollment group: compare [dps] id_scope with the DPS overview page and group_key_file with the group's Primary Key (DPS > Manage enrollments), and check the station's clock (tokens carry an expiry)."
        )
    )]
    Unauthorized {
        /// The unit.
        registration_id: String,
        /// DPS's numeric error code (401002: unauthorized).
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// The enrollment (group) is disabled.
    #[error("DPS reports the enrollment of {registration_id} as disabled{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::disabled),
        help(
            "The enrollment group (or this device's registration) is disabled in DPS. Ask whoever owns the DPS instance to enable it (DPS > Manage enrollments), then run `station dps verify --registration-id ID` for the unit."
        )
    )]
    Disabled {
        /// The unit.
        registration_id: String,
        /// DPS's error code, if any.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS accepted the credentials but could not assign the device.
    #[error("DPS could not assign {registration_id}{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::registration_failed),
        help(
            "The credentials are good but DPS found no hub for the device: check the enrollment group's allocation policy and linked hubs, and [dps.payload] if a custom allocation function reads it."
        )
    )]
    RegistrationFailed {
        /// The unit.
        registration_id: String,
        /// DPS's error code.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS rejected the request for another reason (HTTP 400, 404, ...).
    #[error("DPS rejected the registration of {registration_id} with HTTP {status}{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::rejected),
        help(
            "Check [dps] verify_url, id_scope and api_version in station.toml; `station check` contacts DPS and shows its answer."
        )
    )]
    Rejected {
        /// The unit.
        registration_id: String,
        /// The HTTP status.
        status: u16,
        /// DPS's error code.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS kept throttling (HTTP 429) until the time allowed ran out.
    #[error("DPS throttled the registration of {registration_id} for {seconds:.1} s (HTTP 429)")]
    #[diagnostic(
        code(station::dps::throttled),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. If this persists, the DPS instance is over its registration rate: spread the line's load or raise the DPS tier."
        )
    )]
    Throttled {
        /// The unit.
        registration_id: String,
        /// How long the station tried.
        seconds: f64,
    },
    /// DPS kept failing with 5xx until the time allowed ran out.
    #[error("DPS answered HTTP {status} for {registration_id} until the time allowed ran out")]
    #[diagnostic(
        code(station::dps::server_error),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. Check the Azure status page if it persists."
        )
    )]
    ServerError {
        /// The unit.
        registration_id: String,
        /// The last HTTP status.
        status: u16,
    },
    /// DPS could not be reached.
    #[error("cannot reach DPS at {url}: {detail}")]
    #[diagnostic(
        code(station::dps::unreachable),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it once the network is back. Check the station's network, proxy and [dps] verify_url."
        )
    )]
    Unreachable {
        /// The base URL.
        url: String,
        /// What failed (DNS, connection refused, TLS).
        detail: String,
    },
    /// No final answer within `[dps] verify_timeout`.
    #[error("DPS gave no final answer for {registration_id} within {seconds:.1} s")]
    #[diagnostic(
        code(station::dps::timeout),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. Raise [dps] verify_timeout if DPS is merely slow from this site."
        )
    )]
    Timeout {
        /// The unit.
        registration_id: String,
        /// The time allowed.
        seconds: f64,
    },
    /// DPS answered something that is not the device REST API.
    #[error("unexpected answer from DPS at {url}: {problem}")]
    #[diagnostic(
        code(station::dps::protocol),
        help(
            "[dps] verify_url must point at DPS (or `station sim dps`), not a proxy page or another service; `station check` shows what answers there."
        )
    )]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong.
        problem: String,
    },
    /// The HTTP client cannot be set up (a bad `[dps] ca_file`).
    #[error("cannot set up the DPS client: {problem}")]
    #[diagnostic(
        code(station::dps::client),
        help(
            "[dps] ca_file must name a readable PEM certificate (relative paths resolve next to station.toml); leave it out for Azure's public endpoint."
        )
    )]
    Client {
        /// What is wrong.
        problem: String,
    },
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(", DPS error {c}")).unwrap_or_default()
}

impl DpsError {
    /// True when the outcome is unknown rather than negative (unreachable, timed out,
    /// throttled, server errors): the unit is recorded `pending` and retried later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DpsError::Throttled { .. }
                | DpsError::ServerError { .. }
                | DpsError::Unreachable { .. }
                | DpsError::Timeout { .. }
        )
    }

    /// True for a bad configuration rather than a DPS answer (exit code 2).
    pub fn is_usage_error(&self) -> bool {
        matches!(self, DpsError::Client { .. })
    }

    /// DPS's own numeric error code, when it gave one.
    pub fn dps_error_code(&self) -> Option<i64> {
        match self {
            DpsError::Unauthorized { error_code, .. }
            | DpsError::Disabled { error_code, .. }
            | DpsError::RegistrationFailed { error_code, .. }
            | DpsError::Rejected { error_code, .. } => *error_code,
            _ => None,
        }
    }
}

/// DPS's `DeviceRegistrationResult` (the `registrationState` of an operation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    /// The registration ID.
    #[serde(default)]
    pub registration_id: String,
    /// When the registration was first created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The IoT hub the device is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device ID in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `unassigned`, `assigning`, `assigned`, `failed` or `disabled`.
    #[serde(default)]
    pub status: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset` or
    /// `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// When the registration last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The registration's entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// DPS's error code, when the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// DPS's error message, when the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// What a custom allocation policy returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// DPS's `RegistrationOperationStatus`: the answer to register and to an operation lookup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// The operation to poll.
    pub operation_id: String,
    /// `unassigned`, `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// The registration, once DPS has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<RegistrationState>,
}

/// DPS's `ProvisioningServiceErrorDetails`: the body of an error answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceError {
    /// DPS's numeric error code (e.g. 401002).
    #[serde(default)]
    pub error_code: Option<i64>,
    /// A correlation ID for Azure support.
    #[serde(default)]
    pub tracking_id: Option<String>,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// When.
    #[serde(default)]
    pub timestamp_utc: Option<String>,
}

/// Backoff for throttled (429) and failing (5xx) answers and the polling interval (pure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The whole budget of one unit's verification.
    pub budget: Duration,
    /// The first backoff; doubled per retry.
    pub base: Duration,
    /// The largest backoff.
    pub cap: Duration,
    /// The shortest wait between operation polls, whatever `Retry-After` says.
    pub min_poll: Duration,
    /// The poll interval when DPS sends no `Retry-After`.
    pub default_poll: Duration,
}

impl RetryPolicy {
    /// The policy for a budget: backoff 0.5 s doubling to 8 s, polls at least 250 ms apart.
    pub fn new(budget: Duration) -> RetryPolicy {
        RetryPolicy {
            budget,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            min_poll: Duration::from_millis(250),
            default_poll: Duration::from_secs(2),
        }
    }

    /// The wait before retry number `retry` (0-based) of a throttled or failed request:
    /// exponential backoff with "equal jitter" (half fixed, half random, `jitter` in [0, 1)),
    /// never shorter than the server's `Retry-After`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.cap);
        let jittered = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }

    /// The wait before the next operation poll.
    pub fn poll(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or(self.default_poll)
            .clamp(self.min_poll, self.cap)
    }
}

/// A number in [0, 1) that differs per call, for jitter (no cryptographic quality needed).
fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The station's DPS client: one HTTP connection pool, built once per station run.
#[derive(Debug, Clone)]
pub struct DpsClient {
    http: reqwest::Client,
    base: String,
    id_scope: String,
    api_version: String,
    payload: Option<serde_json::Value>,
    policy: RetryPolicy,
}

/// What one answer means for the flow.
enum Answer {
    /// An operation status (200 or 202), with the server's `Retry-After`.
    Status(Box<OperationStatus>, Option<Duration>),
    /// Retry after backing off: 429 or 5xx.
    Retry {
        status: u16,
        retry_after: Option<Duration>,
    },
}

impl DpsClient {
    /// Builds the client for `[dps]`: rustls with the platform's roots plus `ca_file`.
    pub fn new(config: &DpsConfig) -> Result<DpsClient, DpsError> {
        // reqwest is built without a default crypto provider: use ring's (the first call wins;
        // a later one reports that one is installed, which is fine).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("station/", env!("CARGO_PKG_VERSION")))
            // DPS answers directly; a redirect would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| DpsError::Client {
                problem: format!("cannot read [dps] ca_file {}: {e}", path.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| DpsError::Client {
                    problem: format!("[dps] ca_file {} is not PEM: {e}", path.display()),
                })?;
            if certs.is_empty() {
                return Err(DpsError::Client {
                    problem: format!("[dps] ca_file {} holds no certificate", path.display()),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| DpsError::Client {
            problem: e.to_string(),
        })?;
        Ok(DpsClient {
            http,
            base: config.verify_url.trim_end_matches('/').to_owned(),
            id_scope: config.id_scope.clone(),
            api_version: config.api_version.clone(),
            payload: config.payload.clone(),
            policy: RetryPolicy::new(config.verify_timeout),
        })
    }

    /// The base URL the station calls.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The same client with another retry policy (tests and benches shorten the budget).
    pub fn with_policy(mut self, policy: RetryPolicy) -> DpsClient {
        self.policy = policy;
        self
    }

    fn url(&self, registration_id: &RegistrationId, tail: &str) -> String {
        format!(
            "{}/{}/registrations/{}/{tail}?api-version={}",
            self.base,
            sas::encode(&self.id_scope),
            sas::encode(registration_id.as_str()),
            sas::encode(&self.api_version)
        )
    }

    /// Registers `registration_id` with DPS and polls the operation until DPS assigns it,
    /// refuses it or the time allowed runs out.
    #[instrument(skip_all, fields(registration_id = %registration_id))]
    pub async fn register(
        &self,
        registration_id: &RegistrationId,
        device_key: &DeviceKey,
    ) -> Result<RegistrationState, DpsError> {
        let start = Instant::now();
        let deadline = start + self.policy.budget;
        let timeout = || DpsError::Timeout {
            registration_id: registration_id.to_string(),
            seconds: self.policy.budget.as_secs_f64(),
        };
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(TOKEN_LIFETIME)
            .as_secs();
        let token = SasToken::new(&self.id_scope, registration_id, device_key, expiry).header();
        let mut body = serde_json::json!({ "registrationId": registration_id.as_str() });
        if let Some(payload) = &self.payload {
            body["payload"] = payload.clone();
        }

        let mut retries = 0u32;
        let mut operation: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timeout());
            }
            let request = match &operation {
                None => self
                    .http
                    .put(self.url(registration_id, "register"))
                    .json(&body),
                Some(id) => self
                    .http
                    .get(self.url(registration_id, &format!("operations/{}", sas::encode(id)))),
            };
            let request = request
                .header(reqwest::header::AUTHORIZATION, &token)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(remaining.min(REQUEST_TIMEOUT));
            let answer = match request.send().await {
                Ok(response) => self.answer(registration_id, response).await?,
                Err(e) if e.is_timeout() => return Err(timeout()),
                Err(e) => {
                    return Err(DpsError::Unreachable {
                        url: self.base.clone(),
                        detail: error_chain_text(&e),
                    });
                }
            };
            let wait = match answer {
                Answer::Retry {
                    status,
                    retry_after,
                } => {
                    let wait = self.policy.backoff(retries, retry_after, jitter());
                    retries += 1;
                    tracing::debug!(http.status = status, retry = retries, wait = ?wait, "DPS asks to retry");
                    if Instant::now() + wait >= deadline {
                        return Err(if status == 429 {
                            DpsError::Throttled {
                                registration_id: registration_id.to_string(),
                                seconds: start.elapsed().as_secs_f64(),
                            }
                        } else {
                            DpsError::ServerError {
                                registration_id: registration_id.to_string(),
                                status,
                            }
                        });
                    }
                    wait
                }
                Answer::Status(status, retry_after) => {
                    let state = status.registration_state.clone().unwrap_or_default();
                    let message = || {
                        state
                            .error_message
                            .clone()
                            .unwrap_or_else(|| format!("registration status {}", status.status))
                    };
                    match status.status.as_str() {
                        "assigned" => {
                            tracing::info!(hub = ?state.assigned_hub, substatus = ?state.substatus, "DPS assigned the device");
                            return Ok(state);
                        }
                        "failed" => {
                            return Err(DpsError::RegistrationFailed {
                                registration_id: registration_id.to_string(),
                                error_code: state.error_code,
                                message: message(),
                            });
                        }
                        "disabled" => {
                            return Err(DpsError::Disabled {
                                registration_id: registration_id.to_string(),
                                error_code: state.error_code,
                                message: message(),
                            });
                        }
                        "assigning" | "unassigned" => {}
                        other => {
                            return Err(DpsError::Protocol {
                                url: self.base.clone(),
                                problem: format!("unknown operation status `{other}`"),
                            });
                        }
                    }
                    if status.operation_id.is_empty() {
                        return Err(DpsError::Protocol {
                            url: self.base.clone(),
                            problem: "an operation without operationId".to_owned(),
                        });
                    }
                    operation = Some(status.operation_id.clone());
                    self.policy.poll(retry_after)
                }
            };
            if Instant::now() + wait >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Classifies one HTTP answer.
    async fn answer(
        &self,
        registration_id: &RegistrationId,
        response: reqwest::Response,
    ) -> Result<Answer, DpsError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        tracing::debug!(http.status = status, retry_after = ?retry_after, "DPS answered");
        if status == 429 || (500..600).contains(&status) {
            return Ok(Answer::Retry {
                status,
                retry_after,
            });
        }
        let text = response.text().await.map_err(|e| {
            if e.is_timeout() {
                DpsError::Timeout {
                    registration_id: registration_id.to_string(),
                    seconds: self.policy.budget.as_secs_f64(),
                }
            } else {
                DpsError::Unreachable {
                    url: self.base.clone(),
                    detail: error_chain_text(&e),
                }
            }
        })?;
        if status == 200 || status == 202 {
            let parsed: OperationStatus =
                serde_json::from_str(&text).map_err(|e| DpsError::Protocol {
                    url: self.base.clone(),
                    problem: format!(
                        "HTTP {status} with a body that is not an operation status: {e}"
                    ),
                })?;
            return Ok(Answer::Status(Box::new(parsed), retry_after));
        }
        let details: ServiceError = serde_json::from_str(&text).unwrap_or_else(|_| ServiceError {
            message: text.chars().take(200).collect(),
            ..ServiceError::default()
        });
        let registration_id = registration_id.to_string();
        Err(if status == 401 {
            DpsError::Unauthorized {
                registration_id,
                error_code: details.error_code,
                message: details.message,
            }
        } else {
            DpsError::Rejected {
                registration_id,
                status,
                error_code: details.error_code,
                message: details.message,
            }
        })
    }

    /// Whether DPS answers at the base URL: any HTTP answer counts (`station check`).
    pub async fn reachable(&self) -> Result<u16, DpsError> {
        match self
            .http
            .get(format!("{}/", self.base))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
        {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(DpsError::Unreachable {
                url: self.base.clone(),
                detail: error_chain_text(&e),
            }),
        }
    }
}

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

/// Pre-verifies one unit in the pipeline.
pub async fn pre_verify(
    client: &DpsClient,
    registration_id: &RegistrationId,
    device_key: &DeviceKey,
) -> Verification {
    Verification::from_result(client.register(registration_id, device_key).await)
}

#[cfg(test)]
mod tests;
