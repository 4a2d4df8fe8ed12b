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
//! Faults: the first `throttle` requests get HTTP 429 with `Retry-After`, the next `fail_5xx`
//! get HTTP 503, `latency` delays every answer, `disabled` makes every registration `disabled`
//! and `stall` leaves them `assigning` for ever. What it does not model: TLS, X.509 and TPM
//! attestation, allocation policies, individual enrollments, and the service-side APIs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::SimError;
use crate::dps::sas::{self, SasToken};
use crate::identity::RegistrationId;
use crate::keys::GroupKey;
use crate::support::lock;

/// DPS's error code for a refused SAS token.
pub const UNAUTHORIZED: i64 = 401002;
/// DPS's error code for throttling.
pub const THROTTLED: i64 = 429001;

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The ID scope it answers for.
    pub id_scope: String,
    /// The enrollment group's key, which device tokens are checked against.
    pub group_key: GroupKey,
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
    /// Options with the defaults: any port, no faults, no latency, assignment after 200 ms.
    pub fn new(id_scope: impl Into<String>, group_key: GroupKey) -> EmulatorOptions {
        EmulatorOptions {
            id_scope: id_scope.into(),
            group_key,
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

    /// Checks the api-version and the SAS token as DPS does; the registration ID on success.
    fn authorize(
        &self,
        scope: &str,
        registration_id: &str,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
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
        let device_key = self.options.group_key.derive(&id);
        if !token.verify(device_key.expose()) {
            return Err(unauthorized("the signature does not match"));
        }
        Ok(id)
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
    Path((scope, registration_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    let path = format!("/{scope}/registrations/{registration_id}/register");
    let body: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let payload = body.as_ref().and_then(|b| b.get("payload")).cloned();
    let response = register_inner(&shared, &scope, &registration_id, &query, &headers, body);
    shared.record("PUT", &path, response.status(), payload);
    response
}

fn register_inner(
    shared: &Shared,
    scope: &str,
    registration_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Option<serde_json::Value>,
) -> Response {
    if let Some(fault) = shared.fault() {
        return fault;
    }
    let id = match shared.authorize(scope, registration_id, query, headers) {
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
    Path((scope, registration_id, operation_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    let path = format!("/{scope}/registrations/{registration_id}/operations/{operation_id}");
    let response = operation_inner(
        &shared,
        &scope,
        &registration_id,
        &operation_id,
        &query,
        &headers,
    );
    shared.record("GET", &path, response.status(), None);
    response
}

fn operation_inner(
    shared: &Shared,
    scope: &str,
    registration_id: &str,
    operation_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if let Some(fault) = shared.fault() {
        return fault;
    }
    let id = match shared.authorize(scope, registration_id, query, headers) {
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
        let shared = Arc::new(Shared {
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
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "DPS emulator stopped");
            }
        });
        tracing::info!(url = %format!("http://{local}"), "DPS emulator listening");
        Ok(DpsEmulator {
            url: format!("http://{local}"),
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The base URL, for `[dps] verify_url` (`http://127.0.0.1:PORT`).
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
