//! The HTTP client: register, then poll the operation until DPS answers for good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use tracing::instrument;

use super::DpsError;
use super::retry::{RetryPolicy, jitter};
use super::sas::{self, SasToken};
use super::wire::{OperationStatus, RegistrationState, ServiceError};
use crate::config::DpsConfig;
use crate::identity::RegistrationId;
use crate::keys::DeviceKey;
use crate::support::error_chain_text;
use crate::tls::{self, ClientIdentity};

/// How long a registration token the station makes stays valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a single HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the station waits to open a connection to DPS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The station's DPS client: one HTTP connection pool, built once per station run, for
/// symmetric-key registrations; a device with X.509 attestation gets a connection of its own,
/// made with its client certificate ([`DpsClient::register_x509`]).
#[derive(Debug, Clone)]
pub struct DpsClient {
    http: reqwest::Client,
    roots: Arc<[CertificateDer<'static>]>,
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
    /// Builds the client for `[dps]`: rustls with the platform's roots plus `ca_file`
    /// ([`crate::tls::client_config`]).
    pub fn new(config: &DpsConfig) -> Result<DpsClient, DpsError> {
        let roots: Arc<[CertificateDer<'static>]> = match &config.ca_file {
            Some(path) => tls::read_roots(path)
                .map_err(|e| DpsError::Client {
                    problem: format!("[dps] ca_file: {e}"),
                })?
                .into(),
            None => Arc::new([]),
        };
        Ok(DpsClient {
            http: http_client(&roots, None)?,
            roots,
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

    /// Registers `registration_id` with DPS as a symmetric-key device, with a SAS token made
    /// from its device key, and polls the operation until DPS assigns it, refuses it or the
    /// time allowed runs out.
    #[instrument(skip_all, fields(registration_id = %registration_id))]
    pub async fn register(
        &self,
        registration_id: &RegistrationId,
        device_key: &DeviceKey,
    ) -> Result<RegistrationState, DpsError> {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(TOKEN_LIFETIME)
            .as_secs();
        let token = SasToken::new(&self.id_scope, registration_id, device_key, expiry).header();
        self.register_with(&self.http, registration_id, Some(&token), false)
            .await
    }

    /// Registers `registration_id` with DPS as an X.509 device: the device's certificate chain
    /// and key authenticate it in the TLS handshake, on a connection made for it alone (no
    /// token). DPS takes the certificate's subject CN as the registration ID.
    #[instrument(skip_all, fields(registration_id = %registration_id))]
    pub async fn register_x509(
        &self,
        registration_id: &RegistrationId,
        identity: ClientIdentity,
    ) -> Result<RegistrationState, DpsError> {
        let http = http_client(&self.roots, Some(identity))?;
        self.register_with(&http, registration_id, None, true).await
    }

    /// The registration flow over `http`, with a SAS `token` or (X.509) none.
    async fn register_with(
        &self,
        http: &reqwest::Client,
        registration_id: &RegistrationId,
        token: Option<&str>,
        x509: bool,
    ) -> Result<RegistrationState, DpsError> {
        let start = Instant::now();
        let deadline = start + self.policy.budget;
        let timeout = || DpsError::Timeout {
            registration_id: registration_id.to_string(),
            seconds: self.policy.budget.as_secs_f64(),
        };
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
                None => http.put(self.url(registration_id, "register")).json(&body),
                Some(id) => {
                    http.get(self.url(registration_id, &format!("operations/{}", sas::encode(id))))
                }
            };
            let request = match token {
                Some(token) => request.header(reqwest::header::AUTHORIZATION, token),
                None => request,
            };
            let request = request
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(remaining.min(REQUEST_TIMEOUT));
            let answer = match request.send().await {
                Ok(response) => self.answer(registration_id, response, x509).await?,
                Err(e) if e.is_timeout() => return Err(timeout()),
                Err(e) => return Err(DpsError::no_answer(&self.base, &e)),
            };
            let wait = match answer {
                Answer::Retry {
                    status,
                    retry_after,
                } => {
                    let wait = self.policy.backoff(retries, retry_after, jitter());
                    retries += 1;
                    tracing::debug!(
                        http.status = status,
                        retry = retries,
                        wait_seconds = wait.as_secs_f64(),
                        "DPS asks to retry"
                    );
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
                            tracing::info!(
                                hub = state.assigned_hub.as_deref(),
                                substatus = state.substatus.as_deref(),
                                "DPS assigned the device"
                            );
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
        x509: bool,
    ) -> Result<Answer, DpsError> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        tracing::debug!(
            http.status = status,
            retry_after_seconds = retry_after.map(|d| d.as_secs()),
            "DPS answered"
        );
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
        Err(if status == 401 && x509 {
            DpsError::CertificateRefused {
                registration_id,
                error_code: details.error_code,
                message: details.message,
            }
        } else if status == 401 {
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
            Err(e) => Err(DpsError::no_answer(&self.base, &e)),
        }
    }
}

/// An HTTP client over the station's TLS configuration ([`crate::tls::client_config`]): the
/// platform's trust store plus `roots`, HTTP/1.1, and `identity` as the client certificate.
fn http_client(
    roots: &[CertificateDer<'static>],
    identity: Option<ClientIdentity>,
) -> Result<reqwest::Client, DpsError> {
    let tls =
        tls::client_config(roots, identity, &[b"http/1.1"]).map_err(|e| DpsError::Client {
            problem: e.to_string(),
        })?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("station/", env!("CARGO_PKG_VERSION")))
        // DPS answers directly; a redirect would carry the token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| DpsError::Client {
            problem: e.to_string(),
        })
}
