//! The test message: one device-to-cloud message to the IoT hub DPS assigned a unit, sent as
//! the device would send it, so a unit that passes the station has been accepted by its hub.
//!
//! It follows `[dps] transport`:
//!
//! - HTTPS: `POST https://{hub}/devices/{device_id}/messages/events?api-version=2020-03-13`
//!   with a JSON body (<https://learn.microsoft.com/rest/api/iothub/device/send-device-event>);
//!   the hub answers `204 No Content`.
//! - MQTT: CONNECT to `{hub}:8883` with client ID = device ID and user name
//!   `{hub}/{device_id}/?api-version=2021-04-12`, then PUBLISH at QoS 1 on
//!   `devices/{device_id}/messages/events/` with the content type and encoding in the topic's
//!   property bag; the hub answers PUBACK
//!   (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub#sending-device-to-cloud-messages>).
//!
//! A symmetric-key device authenticates with a SAS token signed by its device key, resource
//! `{hub}/devices/{device_id}`, no key name (MQTT: the password); an X.509 device with its
//! certificate in the TLS handshake. `[hub] hub_url` sends to another host and port (a local
//! emulator) while the token still names the assigned hub, as the hub checks it. HTTP 429 and
//! 5xx are retried within the unit's DPS budget ([`crate::dps::RetryPolicy`]).

mod error;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

pub use error::HubError;

use crate::config::{Config, DpsTransport};
use crate::dps::sas::{self, SasToken};
use crate::dps::{RetryPolicy, expiry, http_client, jitter};
use crate::keys::DeviceKey;
use crate::mqtt::{Endpoint, Login, MqttError, Session};
use crate::tls::ClientIdentity;

/// The IoT Hub device REST API version of the HTTPS message.
pub const HTTPS_API_VERSION: &str = "2020-03-13";
/// The IoT Hub MQTT API version in the user name.
pub const MQTT_API_VERSION: &str = "2021-04-12";
/// The longest one message may take over the wire.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the device proves who it is to the hub.
pub enum HubCredential<'a> {
    /// A SAS token made from its device key.
    Key(&'a DeviceKey),
    /// Its certificate chain and key, in the TLS handshake.
    Certificate(ClientIdentity),
}

/// The station's client of the assigned hubs.
#[derive(Debug, Clone)]
pub struct HubClient {
    transport: DpsTransport,
    hub_url: Option<String>,
    roots: Arc<[CertificateDer<'static>]>,
    policy: RetryPolicy,
}

impl HubClient {
    /// The client for `[hub]` and `[dps] transport`, trusting the platform's roots plus
    /// `roots` (`[dps] ca_file`), retrying within `policy`.
    pub fn new(
        config: &Config,
        roots: &[CertificateDer<'static>],
        policy: RetryPolicy,
    ) -> HubClient {
        HubClient {
            transport: config.dps.transport,
            hub_url: config.hub.hub_url.clone(),
            roots: roots.into(),
            policy,
        }
    }

    /// The same client with another retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> HubClient {
        self.policy = policy;
        self
    }

    /// Sends `body` (JSON) to `hub` as `device_id`; `Ok` once the hub accepted it.
    #[tracing::instrument(skip_all, fields(hub, device_id, transport = self.transport.as_str()))]
    pub async fn send(
        &self,
        hub: &str,
        device_id: &str,
        credential: HubCredential<'_>,
        body: &serde_json::Value,
    ) -> Result<(), HubError> {
        let token = match &credential {
            HubCredential::Key(key) => Some(
                SasToken::for_device(format!("{hub}/devices/{device_id}"), key, expiry(), None)
                    .header(),
            ),
            HubCredential::Certificate(_) => None,
        };
        let identity = match credential {
            HubCredential::Key(_) => None,
            HubCredential::Certificate(identity) => Some(identity),
        };
        let started = Instant::now();
        let result = match self.transport {
            DpsTransport::Https => self.send_https(hub, device_id, token, identity, body).await,
            DpsTransport::Mqtt => {
                let limit = self.policy.budget;
                match tokio::time::timeout(
                    limit,
                    self.send_mqtt(hub, device_id, token, identity, body),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(HubError::Timeout {
                        hub: hub.to_owned(),
                        seconds: limit.as_secs_f64(),
                    }),
                }
            }
        };
        if result.is_ok() {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "hub accepted the test message"
            );
        }
        result
    }

    async fn send_https(
        &self,
        hub: &str,
        device_id: &str,
        token: Option<String>,
        identity: Option<ClientIdentity>,
        body: &serde_json::Value,
    ) -> Result<(), HubError> {
        let base = self
            .hub_url
            .clone()
            .unwrap_or_else(|| format!("https://{hub}"));
        let url = format!(
            "{base}/devices/{}/messages/events?api-version={HTTPS_API_VERSION}",
            sas::encode(device_id)
        );
        let http = http_client(&self.roots, identity).map_err(|e| HubError::Client {
            problem: e.to_string(),
        })?;
        let deadline = Instant::now() + self.policy.budget;
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut request = http
                .post(&url)
                .json(body)
                .timeout(remaining.min(REQUEST_TIMEOUT));
            if let Some(token) = &token {
                request = request.header(reqwest::header::AUTHORIZATION, token.as_str());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if e.is_timeout() => {
                    return Err(HubError::Timeout {
                        hub: hub.to_owned(),
                        seconds: self.policy.budget.as_secs_f64(),
                    });
                }
                Err(e) => {
                    return Err(HubError::Unreachable {
                        url: base,
                        detail: crate::support::error_chain_text(&e),
                    });
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            match status {
                200..=299 => return Ok(()),
                429 | 500..=599 => {
                    let wait = self.policy.backoff(retries, retry_after, jitter());
                    retries += 1;
                    if Instant::now() + wait >= deadline {
                        return Err(HubError::ServerError {
                            hub: hub.to_owned(),
                            status,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
                401 | 403 => {
                    return Err(HubError::Unauthorized {
                        hub: hub.to_owned(),
                        device_id: device_id.to_owned(),
                        message: hub_message(&text),
                    });
                }
                _ => {
                    return Err(HubError::Rejected {
                        hub: hub.to_owned(),
                        device_id: device_id.to_owned(),
                        status,
                        message: hub_message(&text),
                    });
                }
            }
        }
    }

    async fn send_mqtt(
        &self,
        hub: &str,
        device_id: &str,
        token: Option<String>,
        identity: Option<ClientIdentity>,
        body: &serde_json::Value,
    ) -> Result<(), HubError> {
        let url = self
            .hub_url
            .clone()
            .unwrap_or_else(|| format!("mqtts://{hub}:{}", crate::mqtt::DEFAULT_PORT));
        let endpoint = Endpoint::parse(&url).map_err(|problem| HubError::Client { problem })?;
        let tls = crate::tls::client_config(&self.roots, identity, &[]).map_err(|e| {
            HubError::Client {
                problem: e.to_string(),
            }
        })?;
        let login = Login {
            client_id: device_id.to_owned(),
            username: format!("{hub}/{device_id}/?api-version={MQTT_API_VERSION}"),
            password: token,
        };
        let failed = |error: MqttError| match error {
            MqttError::Refused(code) => HubError::Unauthorized {
                hub: hub.to_owned(),
                device_id: device_id.to_owned(),
                message: format!(
                    "the hub refused the MQTT connection (CONNACK {})",
                    crate::mqtt::connack_text(code)
                ),
            },
            MqttError::Unreachable(detail) => HubError::Unreachable {
                url: endpoint.url(),
                detail,
            },
            MqttError::Tls(detail) => HubError::Unreachable {
                url: endpoint.url(),
                detail: format!("TLS failed: {detail}"),
            },
            MqttError::Closed(detail) => HubError::Rejected {
                hub: hub.to_owned(),
                device_id: device_id.to_owned(),
                status: 0,
                message: format!("no PUBACK: {detail}"),
            },
        };
        let mut session = Session::connect(&endpoint, login, tls)
            .await
            .map_err(&failed)?;
        let topic = format!(
            "devices/{device_id}/messages/events/$.ct={}&$.ce=utf-8",
            sas::encode("application/json")
        );
        session
            .publish(&topic, body.to_string().into_bytes())
            .await
            .map_err(&failed)?;
        session.disconnect().await;
        Ok(())
    }
}

/// The hub's error text: `Message` of its JSON error body, or the body's start.
fn hub_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("Message")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// The test message's body: the station, the batch, the time and the unit, as JSON.
pub fn test_message(
    station_id: &str,
    batch: &str,
    registration_id: &str,
    mac: &str,
) -> serde_json::Value {
    serde_json::json!({
        "kind": "station.test",
        "station": station_id,
        "batch": batch,
        "time": crate::clock::now(),
        "registrationId": registration_id,
        "mac": mac,
    })
}
