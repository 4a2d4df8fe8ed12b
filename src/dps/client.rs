//! The client: register, then poll the operation until DPS answers for good, over HTTPS or
//! MQTT. One loop decides what each answer means ([`DpsClient::register_over`]); the two
//! transports only carry a request and bring back DPS's status, `Retry-After` and body
//! ([`Reply`]), so both give the same outcomes, codes and pending handling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use tracing::instrument;

use super::DpsError;
use super::retry::{RetryPolicy, jitter};
use super::sas::{self, SasToken};
use super::wire::{OperationStatus, RegistrationState, ServiceError};
use crate::config::{DpsConfig, DpsTransport};
use crate::identity::RegistrationId;
use crate::keys::DeviceKey;
use crate::mqtt::{self, Endpoint, Login, MqttError, Session};
use crate::support::{error_chain_text, tls_failure};
use crate::tls::{self, ClientIdentity};

/// How long a registration token the station makes stays valid.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a single request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the station waits to open a connection to DPS.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The topic DPS answers a device's MQTT requests on.
pub const MQTT_RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// The prefix of every MQTT answer's topic: `$dps/registrations/res/{status}/?$rid=...`.
pub const MQTT_RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// The station's DPS client, built once per station run: an HTTP connection pool for
/// symmetric-key registrations over HTTPS; an MQTT session per registration; and for a device
/// with X.509 attestation a TLS configuration of its own, made with its client certificate.
#[derive(Debug, Clone)]
pub struct DpsClient {
    http: reqwest::Client,
    roots: Arc<[CertificateDer<'static>]>,
    base: String,
    transport: DpsTransport,
    id_scope: String,
    api_version: String,
    payload: Option<serde_json::Value>,
    policy: RetryPolicy,
}

/// One answer of DPS, whatever carried it: the HTTP status (over MQTT the status in the answer's
/// topic), `Retry-After` (MQTT: the topic's `retry-after`) and the JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// Why a request got no answer.
enum Failure {
    /// Not within the time left.
    Timeout,
    /// No connection (refused, reset, DNS).
    Unreachable(String),
    /// The TLS handshake failed: a server the station does not trust (see [`DpsError::Tls`]).
    Tls(String),
    /// MQTT: the server refused CONNECT (DPS does so for a certificate it does not trust).
    Refused(String),
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

/// A request of the registration flow.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// Register (`PUT .../register`, MQTT `iotdps-register`) with this body.
    Register(&'a serde_json::Value),
    /// Look up an operation (`GET .../operations/{id}`, MQTT `iotdps-get-operationstatus`).
    Operation(&'a str),
}

/// How one registration's requests reach DPS.
enum Link {
    /// HTTPS: each request on `http`, with the SAS token (none for X.509).
    Http {
        http: reqwest::Client,
        token: Option<String>,
    },
    /// MQTT: one session, connected at the first request.
    Mqtt(Box<MqttLink>),
}

/// One device's MQTT session with DPS, opened at its first request.
struct MqttLink {
    endpoint: Endpoint,
    login: Option<Login>,
    tls: Option<rustls::ClientConfig>,
    session: Option<Session>,
    request_id: u32,
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
            transport: config.transport,
            id_scope: config.id_scope.clone(),
            api_version: config.api_version.clone(),
            payload: config.payload.clone(),
            policy: RetryPolicy::new(config.verify_timeout),
        })
    }

    /// The base URL the station calls (`https://…`, or `mqtts://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The transport it speaks.
    pub fn transport(&self) -> DpsTransport {
        self.transport
    }

    /// The trust roots added to the platform's (`[dps] ca_file`).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The retry policy (the hub's test message shares it).
    pub fn policy(&self) -> RetryPolicy {
        self.policy
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
    #[instrument(skip_all, fields(registration_id = %registration_id, transport = self.transport.as_str()))]
    pub async fn register(
        &self,
        registration_id: &RegistrationId,
        device_key: &DeviceKey,
    ) -> Result<RegistrationState, DpsError> {
        let token = SasToken::new(&self.id_scope, registration_id, device_key, expiry()).header();
        let link = match self.transport {
            DpsTransport::Https => Link::Http {
                http: self.http.clone(),
                token: Some(token),
            },
            DpsTransport::Mqtt => self.mqtt_link(registration_id, Some(token), None)?,
        };
        self.register_over(link, registration_id, false).await
    }

    /// Registers `registration_id` with DPS as an X.509 device: the device's certificate chain
    /// and key authenticate it in the TLS handshake, on a connection made for it alone (no
    /// token). DPS takes the certificate's subject CN as the registration ID.
    #[instrument(skip_all, fields(registration_id = %registration_id, transport = self.transport.as_str()))]
    pub async fn register_x509(
        &self,
        registration_id: &RegistrationId,
        identity: ClientIdentity,
    ) -> Result<RegistrationState, DpsError> {
        let link = match self.transport {
            DpsTransport::Https => Link::Http {
                http: http_client(&self.roots, Some(identity))?,
                token: None,
            },
            DpsTransport::Mqtt => self.mqtt_link(registration_id, None, Some(identity))?,
        };
        self.register_over(link, registration_id, true).await
    }

    /// The MQTT link of one registration: client ID = registration ID, user name
    /// `{id_scope}/registrations/{registration_id}/api-version=…`, password = the SAS token
    /// (none for X.509, whose certificate goes in the handshake).
    fn mqtt_link(
        &self,
        registration_id: &RegistrationId,
        token: Option<String>,
        identity: Option<ClientIdentity>,
    ) -> Result<Link, DpsError> {
        let endpoint = Endpoint::parse(&self.base).map_err(|problem| DpsError::Client {
            problem: format!("[dps] verify_url: {problem}"),
        })?;
        let tls = tls::client_config(&self.roots, identity, &[]).map_err(|e| DpsError::Client {
            problem: e.to_string(),
        })?;
        Ok(Link::Mqtt(Box::new(MqttLink {
            endpoint,
            login: Some(Login {
                client_id: registration_id.to_string(),
                username: format!(
                    "{}/registrations/{}/api-version={}",
                    self.id_scope, registration_id, self.api_version
                ),
                password: token,
            }),
            tls: Some(tls),
            session: None,
            request_id: 0,
        })))
    }

    /// The registration flow over `link`: register, then poll until DPS answers for good,
    /// backing off on 429 and 5xx, all within the policy's budget.
    async fn register_over(
        &self,
        mut link: Link,
        registration_id: &RegistrationId,
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
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break Err(timeout());
            }
            let request = match &operation {
                None => Request::Register(&body),
                Some(id) => Request::Operation(id),
            };
            let reply = match self
                .send(&mut link, registration_id, request, remaining)
                .await
            {
                Ok(reply) => reply,
                Err(Failure::Timeout) => break Err(timeout()),
                Err(Failure::Unreachable(detail)) => {
                    break Err(DpsError::Unreachable {
                        url: self.base.clone(),
                        detail,
                    });
                }
                Err(Failure::Tls(detail)) => {
                    break Err(DpsError::Tls {
                        url: self.base.clone(),
                        detail,
                    });
                }
                Err(Failure::Refused(message)) => {
                    break Err(refused(registration_id, x509, None, message));
                }
            };
            let answer = match self.answer(registration_id, reply, x509) {
                Ok(answer) => answer,
                Err(e) => break Err(e),
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
                        break Err(if status == 429 {
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
                    if let Some(done) = self.settle(registration_id, &status) {
                        break done;
                    }
                    if status.operation_id.is_empty() {
                        break Err(DpsError::Protocol {
                            url: self.base.clone(),
                            problem: "an operation without operationId".to_owned(),
                        });
                    }
                    operation = Some(status.operation_id.clone());
                    self.policy.poll(retry_after)
                }
            };
            if Instant::now() + wait >= deadline {
                break Err(timeout());
            }
            tokio::time::sleep(wait).await;
        };
        if let Link::Mqtt(link) = link
            && let Some(session) = link.session
        {
            session.disconnect().await;
        }
        result
    }

    /// What an operation status means: `Some` final outcome, or `None` to keep polling.
    fn settle(
        &self,
        registration_id: &RegistrationId,
        status: &OperationStatus,
    ) -> Option<Result<RegistrationState, DpsError>> {
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
                Some(Ok(state))
            }
            "failed" => Some(Err(DpsError::RegistrationFailed {
                registration_id: registration_id.to_string(),
                error_code: state.error_code,
                message: message(),
            })),
            "disabled" => Some(Err(DpsError::Disabled {
                registration_id: registration_id.to_string(),
                error_code: state.error_code,
                message: message(),
            })),
            "assigning" | "unassigned" => None,
            other => Some(Err(DpsError::Protocol {
                url: self.base.clone(),
                problem: format!("unknown operation status `{other}`"),
            })),
        }
    }

    /// Sends one request over `link` within `remaining`.
    async fn send(
        &self,
        link: &mut Link,
        registration_id: &RegistrationId,
        request: Request<'_>,
        remaining: Duration,
    ) -> Result<Reply, Failure> {
        let limit = remaining.min(REQUEST_TIMEOUT);
        match link {
            Link::Http { http, token } => {
                let builder = match request {
                    Request::Register(body) => {
                        http.put(self.url(registration_id, "register")).json(body)
                    }
                    Request::Operation(id) => http
                        .get(self.url(registration_id, &format!("operations/{}", sas::encode(id)))),
                };
                let builder = match token {
                    Some(token) => builder.header(reqwest::header::AUTHORIZATION, token.as_str()),
                    None => builder,
                };
                let response = builder
                    .header(reqwest::header::ACCEPT, "application/json")
                    .timeout(limit)
                    .send()
                    .await
                    .map_err(|e| http_failure(&e))?;
                let status = response.status().as_u16();
                let retry_after = retry_after(
                    response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                );
                let body = response.text().await.map_err(|e| http_failure(&e))?;
                Ok(Reply {
                    status,
                    retry_after,
                    body,
                })
            }
            Link::Mqtt(link) => {
                let exchange = link.exchange(request);
                match tokio::time::timeout(limit, exchange).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::Timeout),
                }
            }
        }
    }

    /// Classifies one answer.
    fn answer(
        &self,
        registration_id: &RegistrationId,
        reply: Reply,
        x509: bool,
    ) -> Result<Answer, DpsError> {
        let Reply {
            status,
            retry_after,
            body,
        } = reply;
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
        if status == 200 || status == 202 {
            let parsed: OperationStatus =
                serde_json::from_str(&body).map_err(|e| DpsError::Protocol {
                    url: self.base.clone(),
                    problem: format!(
                        "status {status} with a body that is not an operation status: {e}"
                    ),
                })?;
            return Ok(Answer::Status(Box::new(parsed), retry_after));
        }
        let details: ServiceError = serde_json::from_str(&body).unwrap_or_else(|_| ServiceError {
            message: body.chars().take(200).collect(),
            ..ServiceError::default()
        });
        if status == 401 {
            return Err(refused(
                registration_id,
                x509,
                details.error_code,
                details.message,
            ));
        }
        Err(DpsError::Rejected {
            registration_id: registration_id.to_string(),
            status,
            error_code: details.error_code,
            message: details.message,
        })
    }

    /// Whether DPS answers at the base URL (`station check`): over HTTPS any HTTP answer
    /// counts; over MQTT a TLS session accepted on the port (no CONNECT is sent: that would
    /// need a device's credentials).
    pub async fn reachable(&self) -> Result<String, DpsError> {
        match self.transport {
            DpsTransport::Https => match self
                .http
                .get(format!("{}/", self.base))
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
            {
                Ok(response) => Ok(format!("answers (HTTP {})", response.status().as_u16())),
                Err(e) => Err(DpsError::no_answer(&self.base, &e)),
            },
            DpsTransport::Mqtt => {
                let endpoint = Endpoint::parse(&self.base).map_err(|problem| DpsError::Client {
                    problem: format!("[dps] verify_url: {problem}"),
                })?;
                let tls =
                    tls::client_config(&self.roots, None, &[]).map_err(|e| DpsError::Client {
                        problem: e.to_string(),
                    })?;
                tokio::time::timeout(CONNECT_TIMEOUT, tls_handshake(&self.base, &endpoint, tls))
                    .await
                    .map_err(|_| DpsError::Unreachable {
                        url: self.base.clone(),
                        detail: "no TLS handshake within 5 s".to_owned(),
                    })??;
                Ok("accepts MQTT over TLS".to_owned())
            }
        }
    }
}

impl MqttLink {
    /// Sends one request over the session (connecting and subscribing first, at the first
    /// request) and waits for DPS's answer with the same `$rid`.
    async fn exchange(&mut self, request: Request<'_>) -> Result<Reply, Failure> {
        if self.session.is_none() {
            let (Some(login), Some(tls)) = (self.login.take(), self.tls.take()) else {
                return Err(Failure::Unreachable(
                    "the MQTT session with DPS was lost".to_owned(),
                ));
            };
            let mut session = Session::connect(&self.endpoint, login, tls)
                .await
                .map_err(mqtt_failure)?;
            session
                .subscribe(MQTT_RESPONSE_FILTER)
                .await
                .map_err(mqtt_failure)?;
            self.session = Some(session);
        }
        self.request_id = self.request_id.wrapping_add(1);
        let request_id = self.request_id.to_string();
        let (topic, payload) = match request {
            Request::Register(body) => (
                format!("$dps/registrations/PUT/iotdps-register/?$rid={request_id}"),
                body.to_string().into_bytes(),
            ),
            Request::Operation(id) => (
                format!(
                    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={request_id}&operationId={}",
                    sas::encode(id)
                ),
                Vec::new(),
            ),
        };
        let result = self.round_trip(&topic, payload, &request_id).await;
        if result.is_err() {
            // A broken session is not reused: the next request reports it lost.
            self.session = None;
        }
        result
    }

    async fn round_trip(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        request_id: &str,
    ) -> Result<Reply, Failure> {
        let Some(session) = self.session.as_mut() else {
            return Err(Failure::Unreachable(
                "the MQTT session with DPS was lost".to_owned(),
            ));
        };
        session
            .publish(topic, payload)
            .await
            .map_err(mqtt_failure)?;
        loop {
            let message = session.next_message().await.map_err(mqtt_failure)?;
            let Some(rest) = message.topic.strip_prefix(MQTT_RESPONSE_PREFIX) else {
                tracing::debug!(topic = %message.topic, "MQTT message that is no DPS answer");
                continue;
            };
            if mqtt::topic_property(&message.topic, "$rid").as_deref() != Some(request_id) {
                continue;
            }
            let status = rest
                .split('/')
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| {
                    Failure::Unreachable(format!(
                        "DPS answered on a topic without a status: {}",
                        message.topic
                    ))
                })?;
            return Ok(Reply {
                status,
                retry_after: retry_after(
                    mqtt::topic_property(&message.topic, "retry-after").as_deref(),
                ),
                body: String::from_utf8_lossy(&message.payload).into_owned(),
            });
        }
    }
}

/// A registration that DPS (or its MQTT gateway) refused for its credentials.
fn refused(
    registration_id: &RegistrationId,
    x509: bool,
    error_code: Option<i64>,
    message: String,
) -> DpsError {
    let registration_id = registration_id.to_string();
    if x509 {
        DpsError::CertificateRefused {
            registration_id,
            error_code,
            message,
        }
    } else {
        DpsError::Unauthorized {
            registration_id,
            error_code,
            message,
        }
    }
}

fn mqtt_failure(error: MqttError) -> Failure {
    match error {
        MqttError::Refused(code) => Failure::Refused(format!(
            "DPS refused the MQTT connection (CONNACK {})",
            mqtt::connack_text(code)
        )),
        MqttError::Tls(detail) => Failure::Tls(detail),
        MqttError::Unreachable(detail) | MqttError::Closed(detail) => Failure::Unreachable(detail),
    }
}

fn http_failure(error: &reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else if let Some(tls) = tls_failure(error) {
        Failure::Tls(tls.to_string())
    } else {
        Failure::Unreachable(error_chain_text(error))
    }
}

/// `Retry-After` in whole seconds.
fn retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The expiry of a token made now: Unix seconds, [`TOKEN_LIFETIME`] ahead.
pub(crate) fn expiry() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(TOKEN_LIFETIME)
        .as_secs()
}

/// Opens a TLS session with `endpoint` and closes it: whether something there speaks TLS with a
/// certificate the station trusts.
async fn tls_handshake(
    base: &str,
    endpoint: &Endpoint,
    tls: rustls::ClientConfig,
) -> Result<(), DpsError> {
    let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| DpsError::no_answer(base, &e))?;
    let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
        DpsError::Client {
            problem: format!("[dps] verify_url: {}: {e}", endpoint.host),
        }
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map(drop)
        .map_err(|e| DpsError::no_answer(base, &e))
}

/// An HTTP client over the station's TLS configuration ([`crate::tls::client_config`]): the
/// platform's trust store plus `roots`, HTTP/1.1, and `identity` as the client certificate.
pub(crate) fn http_client(
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
