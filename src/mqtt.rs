//! MQTT 3.1.1 as a device speaks it to Azure: one TLS session per device identity, to DPS
//! (<https://learn.microsoft.com/azure/iot-dps/iot-dps-mqtt-support>) or to the IoT hub DPS
//! assigned (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>).
//!
//! The wire is `rumqttc`'s (its event loop, its packet codec) over the station's one TLS client
//! configuration ([`crate::tls::client_config`]), so a device with X.509 attestation presents its
//! certificate in the handshake exactly as over HTTPS. A [`Session`] drives the event loop
//! itself, one request at a time: connect (CONNACK), subscribe (SUBACK), publish at QoS 1
//! (PUBACK), and wait for the next message the server publishes. Azure's brokers are not
//! general-purpose: they keep no session, so `CleanSession` is set and nothing is retained.
//!
//! The password (a SAS token) lives in `rumqttc`'s options while the session lasts; `rumqttc`
//! neither prints nor logs it, and nothing here does.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet,
    Publish, QoS, TlsConfiguration, Transport,
};

/// The MQTT port of Azure DPS and IoT Hub.
pub const DEFAULT_PORT: u16 = 8883;

/// The longest MQTT packet a session accepts (DPS and hub answers are a few kilobytes).
const MAX_PACKET: usize = 64 << 10;

/// Where a session connects: `mqtts://HOST[:PORT]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (also the TLS server name).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `mqtts://HOST[:PORT]` (no path); the error says what is wrong.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("mqtts://")
            .ok_or_else(|| format!("{url:?} is not an mqtts:// URL"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
            return Err(format!("{url:?} must be mqtts://HOST or mqtts://HOST:PORT"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{url:?} has no valid port"))?,
            ),
            None => (rest, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    /// `mqtts://host:port`.
    pub fn url(&self) -> String {
        format!("mqtts://{}:{}", self.host, self.port)
    }
}

/// What a device presents in CONNECT.
pub struct Login {
    /// The client ID (the registration ID for DPS, the device ID for a hub).
    pub client_id: String,
    /// The user name Azure expects.
    pub username: String,
    /// A SAS token, or `None` for a device that authenticates with its certificate.
    pub password: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Why a session failed. Messages never hold the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// No connection: refused, reset, DNS.
    #[error("{0}")]
    Unreachable(String),
    /// The TLS handshake failed: the server is not trusted, or speaks no acceptable TLS.
    #[error("{0}")]
    Tls(String),
    /// The server answered CONNECT with a refusal.
    #[error("the server refused the connection (CONNACK {})", connack_text(*.0))]
    Refused(ConnectReturnCode),
    /// The server closed the session or broke the protocol after connecting.
    #[error("{0}")]
    Closed(String),
}

/// CONNACK's return code as the MQTT 3.1.1 specification names it.
pub fn connack_text(code: ConnectReturnCode) -> String {
    let (number, text) = match code {
        ConnectReturnCode::Success => (0, "accepted"),
        ConnectReturnCode::RefusedProtocolVersion => (1, "unacceptable protocol version"),
        ConnectReturnCode::BadClientId => (2, "identifier rejected"),
        ConnectReturnCode::ServiceUnavailable => (3, "server unavailable"),
        ConnectReturnCode::BadUserNamePassword => (4, "bad user name or password"),
        ConnectReturnCode::NotAuthorized => (5, "not authorized"),
    };
    format!("{number}: {text}")
}

/// One device's MQTT session.
pub struct Session {
    client: AsyncClient,
    events: EventLoop,
    endpoint: Endpoint,
    /// Messages the server published while the session waited for something else.
    pending: Vec<Publish>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects over TLS (`tls`: [`crate::tls::client_config`]) and sends CONNECT; returns once
    /// the server accepted it. The caller bounds the time (`tokio::time::timeout`).
    pub async fn connect(
        endpoint: &Endpoint,
        login: Login,
        tls: rustls::ClientConfig,
    ) -> Result<Session, MqttError> {
        let mut options = MqttOptions::new(login.client_id, endpoint.host.clone(), endpoint.port);
        options
            .set_credentials(login.username, login.password.unwrap_or_default())
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(60))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let (client, events) = AsyncClient::new(options, 8);
        let mut session = Session {
            client,
            events,
            endpoint: endpoint.clone(),
            pending: Vec::new(),
        };
        match session.events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(session),
            Ok(other) => Err(MqttError::Closed(format!(
                "expected CONNACK, got {other:?}"
            ))),
            Err(e) => Err(session.failure(e, true)),
        }
    }

    /// The server this session talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Subscribes to `filter` at QoS 1 and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), MqttError> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| MqttError::Closed(e.to_string()))?;
        loop {
            match self.next_event().await? {
                Packet::SubAck(ack) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    return if refused {
                        Err(MqttError::Closed(format!(
                            "the server refused the subscription to {filter}"
                        )))
                    } else {
                        Ok(())
                    };
                }
                other => self.ignore(other),
            }
        }
    }

    /// Publishes `payload` on `topic` at QoS 1 and waits for the server's PUBACK. Messages the
    /// server publishes meanwhile are kept for [`Session::next_message`].
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), MqttError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| MqttError::Closed(e.to_string()))?;
        loop {
            match self.next_event().await? {
                Packet::PubAck(_) => return Ok(()),
                Packet::Publish(message) => self.pending.push(message),
                other => self.ignore(other),
            }
        }
    }

    /// The next message the server publishes to this session.
    pub async fn next_message(&mut self) -> Result<Publish, MqttError> {
        if !self.pending.is_empty() {
            return Ok(self.pending.remove(0));
        }
        loop {
            match self.next_event().await? {
                Packet::Publish(message) => return Ok(message),
                other => self.ignore(other),
            }
        }
    }

    /// Sends DISCONNECT and lets the event loop flush it (best effort: the session is over
    /// either way).
    pub async fn disconnect(mut self) {
        if self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while self.events.poll().await.is_ok() {}
            })
            .await;
        }
    }

    /// The next packet the server sent (outgoing notifications are skipped).
    async fn next_event(&mut self) -> Result<Packet, MqttError> {
        loop {
            match self.events.poll().await {
                Ok(Event::Incoming(packet)) => return Ok(packet),
                Ok(Event::Outgoing(_)) => {}
                Err(e) => return Err(self.failure(e, false)),
            }
        }
    }

    fn ignore(&self, packet: Packet) {
        tracing::trace!(packet = ?packet_kind(&packet), "MQTT packet not waited for");
    }

    fn failure(&self, error: ConnectionError, connecting: bool) -> MqttError {
        match error {
            ConnectionError::ConnectionRefused(code) => MqttError::Refused(code),
            ConnectionError::Io(e) if connecting => MqttError::Unreachable(format!(
                "cannot connect to {}: {}",
                self.endpoint.url(),
                crate::support::error_chain_text(&e)
            )),
            ConnectionError::Tls(e) => match crate::support::tls_failure(&e) {
                Some(tls) => MqttError::Tls(tls.to_string()),
                None => MqttError::Unreachable(format!(
                    "TLS with {} failed: {}",
                    self.endpoint.url(),
                    crate::support::error_chain_text(&e)
                )),
            },
            ConnectionError::NetworkTimeout if connecting => {
                MqttError::Unreachable(format!("no answer from {} to CONNECT", self.endpoint.url()))
            }
            other => MqttError::Closed(format!(
                "the session with {} ended: {}",
                self.endpoint.url(),
                crate::support::error_chain_text(&other)
            )),
        }
    }
}

/// A packet's kind, for traces (never its payload).
fn packet_kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// The value of `name` in a topic's property bag (`...?$rid=1&retry-after=3`), percent-decoded.
pub fn topic_property<'a>(topic: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let (_, query) = topic.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_a_port() {
        assert_eq!(
            Endpoint::parse("mqtts://global.azure-devices-provisioning.net").unwrap(),
            Endpoint {
                host: "global.azure-devices-provisioning.net".to_owned(),
                port: 8883
            }
        );
        let local = Endpoint::parse("mqtts://127.0.0.1:40001/").unwrap();
        assert_eq!((local.host.as_str(), local.port), ("127.0.0.1", 40001));
        assert_eq!(local.url(), "mqtts://127.0.0.1:40001");
        for bad in [
            "https://host",
            "mqtt://host",
            "mqtts://",
            "mqtts://host:0",
            "mqtts://host:x",
            "mqtts://host/path",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_properties_are_read_and_decoded() {
        let topic = "$dps/registrations/res/202/?$rid=7&retry-after=3";
        assert_eq!(topic_property(topic, "$rid").as_deref(), Some("7"));
        assert_eq!(topic_property(topic, "retry-after").as_deref(), Some("3"));
        assert_eq!(topic_property(topic, "operationId"), None);
        let poll = "x/?operationId=5%3Asim-1&$rid=2";
        assert_eq!(
            topic_property(poll, "operationId").as_deref(),
            Some("5:sim-1")
        );
    }

    #[test]
    fn a_login_never_prints_its_password() {
        let login = Login {
            client_id: "sensor-1".to_owned(),
            username: "scope/registrations/sensor-1/api-version=2021-10-01".to_owned(),
            password: Some("SharedAccessSignature sr=x&sig=SECRET&se=1".to_owned()),
        };
        let shown = format!("{login:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
