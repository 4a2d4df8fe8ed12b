//! DPS's MQTT side in the emulator: CONNECT with client ID = registration ID and user name
//! `{idScope}/registrations/{registrationId}/api-version=…`, the subscription to
//! `$dps/registrations/res/#`, and the two requests, `$dps/registrations/PUT/iotdps-register/?$rid=N`
//! and `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=N&operationId=ID`, answered on
//! `$dps/registrations/res/{status}/?$rid=N[&retry-after=S]` with the same checks and bodies as
//! the REST side (<https://learn.microsoft.com/azure/iot-dps/iot-dps-mqtt-support>).
//!
//! As DPS does, a symmetric-key device's token is checked with its request (a bad token is
//! answered with status 401), while an X.509 device whose certificate the group does not trust is
//! refused at CONNECT (CONNACK 5).

use std::sync::Arc;

use rumqttc::ConnectReturnCode;
use rumqttc::mqttbytes::v4::{Connect, Publish};
use rustls_pki_types::CertificateDer;

use super::super::mqtt::{Broker, BrokerSession};
use super::{Credentials, DeviceRequest, EmulatorAttestation, Shared};
use crate::dps::{MQTT_RESPONSE_FILTER, MQTT_RESPONSE_PREFIX};
use crate::mqtt::topic_property;

/// The DPS broker.
pub(super) struct DpsBroker(pub(super) Arc<Shared>);

struct DpsSession {
    shared: Arc<Shared>,
    scope: String,
    registration_id: String,
    api_version: bool,
    token: Option<String>,
    certificates: Vec<CertificateDer<'static>>,
}

impl Broker for DpsBroker {
    fn connect(
        &self,
        connect: &Connect,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Box<dyn BrokerSession>, ConnectReturnCode> {
        let Some(login) = &connect.login else {
            return Err(ConnectReturnCode::BadUserNamePassword);
        };
        // {idScope}/registrations/{registrationId}/api-version=...
        let mut parts = login.username.splitn(3, '/');
        let (Some(scope), Some("registrations"), Some(rest)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(ConnectReturnCode::BadUserNamePassword);
        };
        let (registration_id, api_version) = rest.split_once('/').unwrap_or((rest, ""));
        if registration_id != connect.client_id {
            return Err(ConnectReturnCode::BadClientId);
        }
        if let EmulatorAttestation::X509 { .. } = self.0.options.attestation
            && let Err(why) = self
                .0
                .authorize_certificate(scope, registration_id, certificates)
        {
            tracing::debug!(
                registration_id,
                why,
                "emulator refused an MQTT client certificate"
            );
            return Err(ConnectReturnCode::NotAuthorized);
        }
        Ok(Box::new(DpsSession {
            shared: Arc::clone(&self.0),
            scope: scope.to_owned(),
            registration_id: registration_id.to_owned(),
            api_version: api_version
                .strip_prefix("api-version=")
                .is_some_and(|v| !v.is_empty()),
            token: (!login.password.is_empty()).then(|| login.password.clone()),
            certificates: certificates.to_vec(),
        }))
    }
}

impl BrokerSession for DpsSession {
    fn subscribe(&mut self, filter: &str) -> bool {
        filter == MQTT_RESPONSE_FILTER
    }

    fn publish(&mut self, message: &Publish) -> Option<Vec<(String, Vec<u8>)>> {
        let topic = message.topic.as_str();
        let request_id = topic_property(topic, "$rid")?.into_owned();
        let request = DeviceRequest {
            scope: &self.scope,
            registration_id: &self.registration_id,
            api_version: self.api_version,
            credentials: Credentials {
                token: self.token.as_deref(),
                certificates: &self.certificates,
            },
        };
        let shared = &self.shared;
        let answer = if topic.starts_with("$dps/registrations/PUT/iotdps-register/") {
            let body: Option<serde_json::Value> = serde_json::from_slice(&message.payload).ok();
            let payload = body.as_ref().and_then(|b| b.get("payload")).cloned();
            let answer = shared.register(&request, body);
            shared.record(
                "MQTT",
                "iotdps-register",
                answer.status,
                payload,
                &self.certificates,
            );
            answer
        } else if topic.starts_with("$dps/registrations/GET/iotdps-get-operationstatus/") {
            let operation_id = topic_property(topic, "operationId")?.into_owned();
            let answer = shared.operation(&request, &operation_id);
            shared.record(
                "MQTT",
                "iotdps-get-operationstatus",
                answer.status,
                None,
                &self.certificates,
            );
            answer
        } else {
            return None;
        };
        let mut reply = format!("{MQTT_RESPONSE_PREFIX}{}/?$rid={request_id}", answer.status);
        if let Some(seconds) = answer.retry_after {
            reply.push_str(&format!("&retry-after={seconds}"));
        }
        Some(vec![(reply, answer.body.to_string().into_bytes())])
    }
}
