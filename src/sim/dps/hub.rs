//! The emulator's IoT hub: where a device DPS assigned sends its device-to-cloud messages,
//! over HTTPS (`POST /devices/{deviceId}/messages/events?api-version=…`, answered `204`) or MQTT
//! (CONNECT as the device, PUBLISH at QoS 1 on `devices/{deviceId}/messages/events/…`,
//! answered PUBACK). It accepts a message only from a device this emulator assigned, with a SAS
//! token signed by that device's key (resource `{hub}/devices/{deviceId}`, no key name; the key
//! its individual enrollment holds, or the one the group key derives) or, in an X.509 group, a
//! client certificate the group trusts whose CN is the device ID. Otherwise: HTTP 401 with IoT
//! Hub's `IotHubUnauthorizedAccess`, or CONNACK 5 over MQTT. Accepted messages are kept, for
//! [`super::DpsEmulator::hub_messages`] and `GET /messages` (JSON, oldest first).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rumqttc::ConnectReturnCode;
use rumqttc::mqttbytes::v4::{Connect, Publish};
use rustls_pki_types::CertificateDer;

use super::super::mqtt::{Broker, BrokerSession};
use super::{EmulatorAttestation, Peer, Shared};
use crate::dps::sas::SasToken;
use crate::identity::RegistrationId;
use crate::support::lock;

/// A device-to-cloud message the hub accepted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HubMessage {
    /// The device that sent it.
    pub device_id: String,
    /// `https` or `mqtt`.
    pub transport: String,
    /// When it arrived (RFC 3339).
    pub received_at: String,
    /// Its body, parsed as JSON (`null` if it is not JSON).
    pub body: serde_json::Value,
}

/// The hub's HTTP(S) routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/devices/{id}/messages/events", post(message))
        .route("/messages", get(messages))
        .with_state(shared)
}

impl Shared {
    /// Whether `device_id` may send to the hub: DPS assigned it, and its token (or certificate)
    /// is its own. The refusal's reason otherwise.
    fn authorize_device(
        &self,
        device_id: &str,
        token: Option<&str>,
        certificates: &[CertificateDer<'static>],
    ) -> Result<(), String> {
        let Some(state) = self.assigned(device_id) else {
            return Err(format!("no device `{device_id}` was assigned to this hub"));
        };
        let hub = state.assigned_hub.unwrap_or_default();
        let group_key = match &self.options.attestation {
            EmulatorAttestation::X509 { .. } => {
                return self.check_certificate(device_id, certificates);
            }
            EmulatorAttestation::SymmetricKey(group_key) => group_key,
        };
        let token = SasToken::parse(token.ok_or("no SAS token")?)?;
        if !token
            .resource
            .eq_ignore_ascii_case(&format!("{hub}/devices/{device_id}"))
        {
            return Err("the token was issued for another resource".to_owned());
        }
        if token.key_name.is_some() {
            return Err("a device token has no key name (skn)".to_owned());
        }
        if token.expiry <= super::unix_now() {
            return Err("the SAS token has expired".to_owned());
        }
        let id = RegistrationId::new(device_id).map_err(|e| e.to_string())?;
        let signed = match lock(&self.enrollments).get(device_id) {
            Some(enrollment) => enrollment.verifies(&token),
            None => token.verify(group_key.derive(&id).expose()),
        };
        if signed {
            Ok(())
        } else {
            Err("the signature does not match".to_owned())
        }
    }

    fn keep(&self, device_id: &str, transport: &str, body: &[u8]) {
        lock(&self.hub_messages).push(HubMessage {
            device_id: device_id.to_owned(),
            transport: transport.to_owned(),
            received_at: crate::clock::now(),
            body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        });
    }
}

async fn message(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(shared.options.latency).await;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match shared.authorize_device(&device_id, token, &peer.certificates) {
        Ok(()) => {
            shared.keep(&device_id, "https", &body);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => {
            tracing::debug!(device_id, why, "emulated hub refused a message");
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({
                    "Message": format!("ErrorCode:IotHubUnauthorizedAccess;Unauthorized: {why}"),
                    "ExceptionMessage": format!("Tracking ID:sim-{:08x}-TimeStamp:{}", shared.next(), crate::clock::now()),
                })),
            )
                .into_response()
        }
    }
}

async fn messages(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.hub_messages).clone()).into_response()
}

/// The hub's MQTT side.
pub(super) struct HubBroker(pub(super) Arc<Shared>);

struct HubSession {
    shared: Arc<Shared>,
    device_id: String,
}

impl Broker for HubBroker {
    fn connect(
        &self,
        connect: &Connect,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Box<dyn BrokerSession>, ConnectReturnCode> {
        let device_id = connect.client_id.clone();
        // {hub}/{deviceId}/?api-version=...
        let named = connect.login.as_ref().is_some_and(|login| {
            login
                .username
                .split('/')
                .nth(1)
                .is_some_and(|id| id == device_id)
        });
        if !named {
            return Err(ConnectReturnCode::BadUserNamePassword);
        }
        let token = connect
            .login
            .as_ref()
            .map(|l| l.password.as_str())
            .filter(|p| !p.is_empty());
        if let Err(why) = self.0.authorize_device(&device_id, token, certificates) {
            tracing::debug!(device_id, why, "emulated hub refused an MQTT connection");
            return Err(ConnectReturnCode::NotAuthorized);
        }
        Ok(Box::new(HubSession {
            shared: Arc::clone(&self.0),
            device_id,
        }))
    }
}

impl BrokerSession for HubSession {
    fn subscribe(&mut self, filter: &str) -> bool {
        filter.starts_with(&format!("devices/{}/", self.device_id))
    }

    fn publish(&mut self, message: &Publish) -> Option<Vec<(String, Vec<u8>)>> {
        let events = format!("devices/{}/messages/events/", self.device_id);
        if !message.topic.starts_with(&events) {
            return None;
        }
        self.shared.keep(&self.device_id, "mqtt", &message.payload);
        Some(Vec::new())
    }
}
