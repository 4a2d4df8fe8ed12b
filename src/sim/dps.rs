//! A local emulator of the Azure DPS device REST API, on loopback, for tests and demos.
//!
//! It serves the two calls a device (and the station's pre-verification) makes
//! (<https://learn.microsoft.com/rest/api/iot-dps/device/runtime-registration>):
//! `PUT /{idScope}/registrations/{registrationId}/register` and
//! `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`, both with
//! `?api-version=`. It checks SAS tokens as DPS does for a symmetric-key enrollment group: it
//! derives the device key from the group key and the registration ID, recomputes the signature
//! over the token's resource and expiry, refuses an expired token, a key name other than
//! `registration`, and a resource or ID scope that is not the one called (HTTP 401,
//! error code 401002). A registration is `assigning` for [`EmulatorOptions::assign_delay`] and
//! then `assigned` to [`EmulatorOptions::hub`] with the registration ID as device ID; the
//! device's `payload` comes back in `registrationState.payload`, as a custom allocation function
//! that echoes it would return it. Registering the same ID again keeps its creation time and
//! hub and reports substatus `reprovisionedToInitialAssignment`.
//!
//! For an X.509 enrollment group ([`EmulatorAttestation::X509`]) it serves HTTPS with its own
//! server certificate ([`super::tls::ServerIdentity`]), asks each client for a certificate, and
//! authorizes a request as DPS does
//! (<https://learn.microsoft.com/azure/iot-dps/concepts-x509-attestation>): the client's chain
//! must lead to one of the group's CA certificates (signatures, validity now, the client-auth
//! purpose, checked by webpki), and the certificate's subject CN must be the registration ID
//! called; otherwise HTTP 401 with DPS's error code 401002. A SAS token is not accepted then.
//!
//! Faults: the first `throttle` requests get HTTP 429 with `Retry-After`, the next `fail_5xx`
//! get HTTP 503, `latency` delays every answer, `disabled` makes every registration `disabled`
//! and `stall` leaves them `assigning` for ever. What it does not model: TPM attestation,
//! individual enrollments, certificate revocation (disabled enrollments per certificate),
//! allocation policies, and the service-side APIs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::serve::{IncomingStream, Listener};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use super::SimError;
use super::tls::ServerIdentity;
use crate::dps::sas::{self, SasToken};
use crate::identity::RegistrationId;
use crate::keys::GroupKey;
use crate::support::lock;

/// DPS's error code for a refused SAS token.
pub const UNAUTHORIZED: i64 = 401002;
/// DPS's error code for throttling.
pub const THROTTLED: i64 = 429001;

/// The enrollment group the emulator plays, by attestation kind.
#[derive(Debug, Clone)]
pub enum EmulatorAttestation {
    /// A symmetric-key group: device SAS tokens are checked against keys derived from this
    /// group key.
    SymmetricKey(GroupKey),
    /// An X.509 group: device client certificates must chain to one of these CA certificates
    /// (DER), the CA registered (and verified) with DPS.
    X509 {
        /// The group's CA certificates.
        trusted: Vec<CertificateDer<'static>>,
    },
}

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The ID scope it answers for.
    pub id_scope: String,
    /// The enrollment group: its key, or the CA it trusts.
    pub attestation: EmulatorAttestation,
    /// Serve HTTPS with this identity (required for X.509); plain HTTP without.
    pub tls: Option<Arc<ServerIdentity>>,
    /// The loopback TCP port; 0 takes any free one.
    pub port: u16,
    /// Answer this many requests with HTTP 429 first.
    pub throttle: u32,
    /// Then answer this many with HTTP 503.
    pub fail_5xx: u32,
    /// The `Retry-After` seconds sent with a 429.
    pub retry_after: u64,
    /// Delay before every answer (network plus service time).
    pub latency: Duration,
    /// How long a registration stays `assigning`.
    pub assign_delay: Duration,
    /// The IoT hub every device is assigned to.
    pub hub: String,
    /// Every registration ends `disabled` (a disabled enrollment group).
    pub disabled: bool,
    /// Registrations never leave `assigning`.
    pub stall: bool,
}

impl EmulatorOptions {
    /// Options for a symmetric-key group, plain HTTP, with the defaults: any port, no faults, no
    /// latency, assignment after 200 ms.
    pub fn new(id_scope: impl Into<String>, group_key: GroupKey) -> EmulatorOptions {
        EmulatorOptions::with(id_scope, EmulatorAttestation::SymmetricKey(group_key), None)
    }

    /// Options for an X.509 group trusting `trusted` (CA certificates, DER), over HTTPS with
    /// `tls`, with the same defaults.
    pub fn x509(
        id_scope: impl Into<String>,
        trusted: Vec<CertificateDer<'static>>,
        tls: Arc<ServerIdentity>,
    ) -> EmulatorOptions {
        EmulatorOptions::with(id_scope, EmulatorAttestation::X509 { trusted }, Some(tls))
    }

    fn with(
        id_scope: impl Into<String>,
        attestation: EmulatorAttestation,
        tls: Option<Arc<ServerIdentity>>,
    ) -> EmulatorOptions {
        EmulatorOptions {
            id_scope: id_scope.into(),
            attestation,
            tls,
            port: 0,
            throttle: 0,
            fail_5xx: 0,
            retry_after: 1,
            latency: Duration::ZERO,
            assign_delay: Duration::from_millis(200),
            hub: "station-sim-hub.azure-devices.net".to_owned(),
            disabled: false,
            stall: false,
        }
    }
}

/// One request the emulator answered.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestLog {
    /// `PUT` or `GET`.
    pub method: String,
    /// The path called.
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// When, since the emulator started.
    pub at: Duration,
    /// The `payload` of a register request.
    pub payload: Option<serde_json::Value>,
    /// The subject CN of the client certificate presented, if any.
    pub client_certificate: Option<String>,
}

/// The emulator's own wire types: what it sends, field by field as DPS names them. They are
/// not the client's ([`crate::dps::OperationStatus`] and friends), so a name misspelt on either
/// side shows up against the other and against the answers recorded from Azure's
/// documentation (`fixtures/dps/`).
mod wire {
    use serde::Serialize;

    /// `RegistrationOperationStatus`.
    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct OperationStatus {
        pub(super) operation_id: String,
        pub(super) status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) registration_state: Option<super::RegistrationState>,
    }

    /// `ProvisioningServiceErrorDetails`.
    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct ServiceError {
        pub(super) error_code: i64,
        pub(super) tracking_id: String,
        pub(super) message: String,
        pub(super) timestamp_utc: String,
    }
}

/// A registration as the emulator holds it: DPS's `DeviceRegistrationResult`, serialized as DPS
/// sends it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    /// The registration ID.
    pub registration_id: String,
    /// When the registration was first created.
    pub created_date_time_utc: String,
    /// The IoT hub the device is assigned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device ID in that hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `assigned` or `disabled`.
    pub status: String,
    /// `initialAssignment` or `reprovisionedToInitialAssignment`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// When the registration last changed.
    pub last_updated_date_time_utc: String,
    /// The registration's entity tag.
    pub etag: String,
    /// DPS's error code, when not assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// DPS's error message, when not assigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The device's `payload`, echoed as a custom allocation function that returns it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

struct Registration {
    operation_id: String,
    assign_at: Instant,
    state: RegistrationState,
}

struct Shared {
    options: EmulatorOptions,
    /// X.509: checks a client's chain against the group's CA certificates.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    started: Instant,
    throttle_left: AtomicU32,
    fail_left: AtomicU32,
    counter: AtomicU64,
    registrations: Mutex<HashMap<String, Registration>>,
    log: Mutex<Vec<RequestLog>>,
}

impl Shared {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(
        &self,
        method: &str,
        path: &str,
        status: StatusCode,
        payload: Option<serde_json::Value>,
        peer: &Peer,
    ) {
        tracing::debug!(
            method,
            path,
            status = status.as_u16(),
            "DPS emulator answered"
        );
        lock(&self.log).push(RequestLog {
            method: method.to_owned(),
            path: path.to_owned(),
            status: status.as_u16(),
            at: self.started.elapsed(),
            payload,
            client_certificate: peer
                .certificates
                .first()
                .and_then(|der| crate::x509::subject_common_name(der)),
        });
    }

    /// DPS's error body.
    fn error(&self, status: StatusCode, code: i64, message: &str) -> Response {
        let body = wire::ServiceError {
            error_code: code,
            tracking_id: format!("sim-{:08x}", self.next()),
            message: message.to_owned(),
            timestamp_utc: crate::clock::now(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(self.options.retry_after),
            );
        }
        response
    }

    /// The injected faults, in order: throttling, then server errors.
    fn fault(&self) -> Option<Response> {
        let take = |counter: &AtomicU32| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        };
        if take(&self.throttle_left) {
            return Some(self.error(
                StatusCode::TOO_MANY_REQUESTS,
                THROTTLED,
                "Operations are being throttled for this tenant.",
            ));
        }
        if take(&self.fail_left) {
            return Some(self.error(
                StatusCode::SERVICE_UNAVAILABLE,
                503000,
                "The service is temporarily unavailable.",
            ));
        }
        None
    }

    /// Checks the api-version and the device's credentials as DPS does: the SAS token, or
    /// (X.509) the client certificate; the registration ID on success.
    fn authorize(
        &self,
        scope: &str,
        registration_id: &str,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        peer: &Peer,
    ) -> Result<RegistrationId, Box<Response>> {
        if query.get("api-version").is_none_or(|v| v.is_empty()) {
            return Err(Box::new(self.error(
                StatusCode::BAD_REQUEST,
                400004,
                "The api-version query parameter is required.",
            )));
        }
        let unauthorized = |why: &str| {
            tracing::debug!(registration_id, why, "emulator refused a token");
            Box::new(self.error(
                StatusCode::UNAUTHORIZED,
                UNAUTHORIZED,
                &format!("Unauthorized: {why}"),
            ))
        };
        let group_key = match &self.options.attestation {
            EmulatorAttestation::SymmetricKey(group_key) => group_key,
            EmulatorAttestation::X509 { .. } => {
                return self.authorize_certificate(scope, registration_id, peer);
            }
        };
        let Some(header) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(unauthorized("no Authorization header"));
        };
        let token = SasToken::parse(header).map_err(|why| unauthorized(&why))?;
        if !scope.eq_ignore_ascii_case(&self.options.id_scope) {
            return Err(unauthorized("unknown ID scope"));
        }
        if !token
            .resource
            .eq_ignore_ascii_case(&sas::resource(scope, registration_id))
        {
            return Err(unauthorized("the token was issued for another resource"));
        }
        if token.key_name.as_deref() != Some(sas::KEY_NAME) {
            return Err(unauthorized("the key name (skn) must be `registration`"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if token.expiry <= now {
            return Err(unauthorized("the SAS token has expired"));
        }
        let Ok(id) = RegistrationId::new(registration_id) else {
            return Err(Box::new(self.error(
                StatusCode::BAD_REQUEST,
                400000,
                "The registration ID is not valid.",
            )));
        };
        let device_key = group_key.derive(&id);
        if !token.verify(device_key.expose()) {
            return Err(unauthorized("the signature does not match"));
        }
        Ok(id)
    }

    /// Authorizes an X.509 device: a client certificate chained to the group's CA, valid now
    /// and for client authentication, whose subject CN is the registration ID called.
    fn authorize_certificate(
        &self,
        scope: &str,
        registration_id: &str,
        peer: &Peer,
    ) -> Result<RegistrationId, Box<Response>> {
        let unauthorized = |why: String| {
            tracing::debug!(registration_id, why, "emulator refused a certificate");
            Box::new(self.error(
                StatusCode::UNAUTHORIZED,
                UNAUTHORIZED,
                &format!("Unauthorized: {why}"),
            ))
        };
        if !scope.eq_ignore_ascii_case(&self.options.id_scope) {
            return Err(unauthorized("unknown ID scope".to_owned()));
        }
        let Some((end_entity, intermediates)) = peer.certificates.split_first() else {
            return Err(unauthorized(
                "no client certificate was presented in the TLS handshake".to_owned(),
            ));
        };
        let Some(verifier) = &self.verifier else {
            return Err(unauthorized("the group trusts no CA".to_owned()));
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| {
                unauthorized(format!(
                    "the certificate does not chain to the enrollment group's CA: {e}"
                ))
            })?;
        let common_name = crate::x509::subject_common_name(end_entity).unwrap_or_default();
        // DPS takes the subject CN as the registration ID, compared without regard to case.
        if !common_name.eq_ignore_ascii_case(registration_id) {
            return Err(unauthorized(format!(
                "the certificate's CN `{common_name}` is not the registration ID `{registration_id}`"
            )));
        }
        RegistrationId::new(registration_id).map_err(|_| {
            Box::new(self.error(
                StatusCode::BAD_REQUEST,
                400000,
                "The registration ID is not valid.",
            ))
        })
    }

    /// The operation status of a registration now.
    fn status(&self, registration: &Registration) -> wire::OperationStatus {
        let done = !self.options.stall && Instant::now() >= registration.assign_at;
        let status = if done {
            registration.state.status.clone()
        } else {
            "assigning".to_owned()
        };
        wire::OperationStatus {
            operation_id: registration.operation_id.clone(),
            status,
            registration_state: done.then(|| registration.state.clone()),
        }
    }

    /// `Retry-After` for an operation still assigning: whole seconds left, rounded down.
    fn poll_after(&self, registration: &Registration) -> u64 {
        registration
            .assign_at
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((scope, registration_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    let path = format!("/{scope}/registrations/{registration_id}/register");
    let body: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let payload = body.as_ref().and_then(|b| b.get("payload")).cloned();
    let request = Request::new(&scope, &registration_id, &query, &headers, &peer);
    let response = register_inner(&shared, &request, body);
    shared.record("PUT", &path, response.status(), payload, &peer);
    response
}

/// What a handler received.
struct Request<'a> {
    scope: &'a str,
    registration_id: &'a str,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
    peer: &'a Peer,
}

impl<'a> Request<'a> {
    fn new(
        scope: &'a str,
        registration_id: &'a str,
        query: &'a HashMap<String, String>,
        headers: &'a HeaderMap,
        peer: &'a Peer,
    ) -> Request<'a> {
        Request {
            scope,
            registration_id,
            query,
            headers,
            peer,
        }
    }
}

impl Shared {
    /// [`Shared::authorize`] for a request.
    fn authorize_request(&self, request: &Request<'_>) -> Result<RegistrationId, Box<Response>> {
        self.authorize(
            request.scope,
            request.registration_id,
            request.query,
            request.headers,
            request.peer,
        )
    }
}

fn register_inner(
    shared: &Shared,
    request: &Request<'_>,
    body: Option<serde_json::Value>,
) -> Response {
    if let Some(fault) = shared.fault() {
        return fault;
    }
    let id = match shared.authorize_request(request) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let Some(body) = body else {
        return shared.error(StatusCode::BAD_REQUEST, 400001, "The body is not JSON.");
    };
    if body.get("registrationId").and_then(|v| v.as_str()) != Some(id.as_str()) {
        return shared.error(
            StatusCode::BAD_REQUEST,
            400000,
            "registrationId in the body does not match the path.",
        );
    }
    let options = &shared.options;
    let now = crate::clock::now();
    let operation_id = format!("5:sim-{:012x}", shared.next());
    let etag = format!("\"{:08x}-0000-0000-0000-000000000000\"", shared.next());
    let mut registrations = lock(&shared.registrations);
    let previous = registrations.get(id.as_str()).map(|r| r.state.clone());
    let mut state = RegistrationState {
        registration_id: id.to_string(),
        created_date_time_utc: now.clone(),
        assigned_hub: Some(options.hub.clone()),
        device_id: Some(id.to_string()),
        status: "assigned".to_owned(),
        substatus: Some("initialAssignment".to_owned()),
        last_updated_date_time_utc: now,
        etag,
        error_code: None,
        error_message: None,
        payload: body.get("payload").cloned(),
    };
    if let Some(previous) = previous.filter(|p| p.status == "assigned") {
        state.created_date_time_utc = previous.created_date_time_utc;
        state.substatus = Some("reprovisionedToInitialAssignment".to_owned());
    }
    if options.disabled {
        state.status = "disabled".to_owned();
        state.assigned_hub = None;
        state.device_id = None;
        state.substatus = None;
        state.error_code = Some(401003);
        state.error_message = Some("The enrollment group is disabled.".to_owned());
    }
    let registration = Registration {
        operation_id,
        assign_at: Instant::now() + options.assign_delay,
        state,
    };
    let status = shared.status(&registration);
    let retry_after = shared.poll_after(&registration);
    registrations.insert(id.to_string(), registration);
    let code = if status.status == "assigning" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    with_retry_after(code, &status, retry_after)
}

async fn operation(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((scope, registration_id, operation_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    let path = format!("/{scope}/registrations/{registration_id}/operations/{operation_id}");
    let request = Request::new(&scope, &registration_id, &query, &headers, &peer);
    let response = operation_inner(&shared, &request, &operation_id);
    shared.record("GET", &path, response.status(), None, &peer);
    response
}

fn operation_inner(shared: &Shared, request: &Request<'_>, operation_id: &str) -> Response {
    if let Some(fault) = shared.fault() {
        return fault;
    }
    let id = match shared.authorize_request(request) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let registrations = lock(&shared.registrations);
    match registrations
        .get(id.as_str())
        .filter(|r| r.operation_id == operation_id)
    {
        None => shared.error(StatusCode::NOT_FOUND, 404002, "Operation not found."),
        Some(registration) => {
            let status = shared.status(registration);
            let code = if status.status == "assigning" {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            with_retry_after(code, &status, shared.poll_after(registration))
        }
    }
}

fn with_retry_after(
    code: StatusCode,
    status: &wire::OperationStatus,
    retry_after: u64,
) -> Response {
    let mut response = (code, axum::Json(status)).into_response();
    if status.status == "assigning" {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
    }
    response
}

async fn not_found(State(shared): State<Arc<Shared>>) -> Response {
    shared.error(StatusCode::NOT_FOUND, 404000, "Not found.")
}

/// A running emulator; dropping it stops it.
#[derive(Debug)]
pub struct DpsEmulator {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id_scope", &self.options.id_scope)
            .finish_non_exhaustive()
    }
}

impl DpsEmulator {
    /// Starts the emulator on `127.0.0.1` inside the current tokio runtime.
    pub async fn start(options: EmulatorOptions) -> Result<DpsEmulator, SimError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SimError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let verifier = match &options.attestation {
            EmulatorAttestation::SymmetricKey(_) => None,
            EmulatorAttestation::X509 { trusted } => Some(client_verifier(trusted)?),
        };
        let tls = match (&options.tls, &options.attestation) {
            (Some(identity), _) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                identity.server_config()?,
            ))),
            (None, EmulatorAttestation::X509 { .. }) => {
                return Err(SimError::Tls {
                    problem: "an X.509 enrollment group authenticates devices in the TLS handshake: the emulator needs a server identity".to_owned(),
                });
            }
            (None, EmulatorAttestation::SymmetricKey(_)) => None,
        };
        let shared = Arc::new(Shared {
            verifier,
            throttle_left: AtomicU32::new(options.throttle),
            fail_left: AtomicU32::new(options.fail_5xx),
            options,
            started: Instant::now(),
            counter: AtomicU64::new(0),
            registrations: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/{scope}/registrations/{id}/register", put(register))
            .route(
                "/{scope}/registrations/{id}/operations/{operation}",
                get(operation),
            )
            .fallback(not_found)
            .with_state(shared.clone());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = match tls {
            None => tokio::spawn(serve(listener, app, stopped)),
            Some(acceptor) => {
                tokio::spawn(serve(TlsListener::new(listener, acceptor), app, stopped))
            }
        };
        let url = format!("{scheme}://{local}");
        tracing::info!(url = %url, "DPS emulator listening");
        Ok(DpsEmulator {
            url,
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The base URL, for `[dps] verify_url` (`http://127.0.0.1:PORT`, or `https://` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.log).clone()
    }

    /// The registration state of an ID, as DPS holds it (final state, even while assigning).
    pub fn registration(&self, registration_id: &str) -> Option<RegistrationState> {
        lock(&self.shared.registrations)
            .get(registration_id)
            .map(|r| r.state.clone())
    }

    /// Stops serving and waits (briefly) for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for DpsEmulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the emulator knows of a client's connection: the certificate chain it presented in the
/// TLS handshake (none over plain HTTP).
#[derive(Debug, Clone, Default)]
struct Peer {
    certificates: Arc<[CertificateDer<'static>]>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(_stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer::default()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        let certificates = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        Peer { certificates }
    }
}

/// Serves `app` on `listener` until `stopped`.
async fn serve<L>(listener: L, app: Router, stopped: impl Future<Output = ()> + Send + 'static)
where
    L: Listener,
    L::Addr: std::fmt::Debug,
    for<'a> Peer: Connected<IncomingStream<'a, L>>,
{
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(stopped)
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "DPS emulator stopped");
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections are handed on once their TLS handshake completed. Each
/// handshake runs in a task of its own, so a client that stalls in it holds up no other.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: tokio_rustls::TlsAcceptor) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (sender, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "DPS emulator accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %addr, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            local,
            ready,
            acceptor,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (the emulator is stopping): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client-certificate verifier of an X.509 group: webpki, with the group's CA
/// certificates as trust anchors, for the client-authentication purpose.
fn client_verifier(
    trusted: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, SimError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(der.clone()).map_err(|e| SimError::Tls {
            problem: format!(
                "a CA certificate of the enrollment group cannot be a trust anchor: {e}"
            ),
        })?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .map_err(|e| SimError::Tls {
        problem: format!("the enrollment group's CA: {e}"),
    })
}
