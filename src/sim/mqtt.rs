//! The emulators' MQTT side: a TLS listener whose sessions speak MQTT 3.1.1 through `rumqttc`'s
//! packet codec (no wire parsing of our own), each handed to a [`Broker`] that decides what a
//! CONNECT, SUBSCRIBE or PUBLISH means: DPS's registration topics, or a hub's device-to-cloud
//! topic.
//!
//! Like Azure's, these brokers are not general-purpose: every session is clean (nothing is
//! kept between sessions), a client is answered only on its own session, and whatever the
//! broker does not understand ends the session. Time: each answer (CONNACK, SUBACK, a PUBLISH's
//! PUBACK together with the messages it causes) is sent `latency` after its request arrived,
//! the same per-answer latency the REST side charges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::v4::{Codec, ConnAck, Connect, Packet, PubAck, Publish, SubAck};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// The longest packet the emulators take or send.
const MAX_PACKET: usize = 64 << 10;
/// How long a client may take over its TLS handshake and CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an emulator does with MQTT sessions.
pub(super) trait Broker: Send + Sync + 'static {
    /// Answers CONNECT (with the client certificates of the TLS handshake): a session, or the
    /// CONNACK refusal.
    fn connect(
        &self,
        connect: &Connect,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Box<dyn BrokerSession>, ConnectReturnCode>;
}

/// One client's session with a [`Broker`].
pub(super) trait BrokerSession: Send {
    /// Whether the client may subscribe to `filter`.
    fn subscribe(&mut self, filter: &str) -> bool;
    /// What a PUBLISH from the client causes: the messages to send back (after its PUBACK),
    /// or `None` to end the session.
    fn publish(&mut self, message: &Publish) -> Option<Vec<(String, Vec<u8>)>>;
}

/// Serves `broker` on `listener` over TLS (`acceptor`) until `stopped`.
pub(super) async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<dyn Broker>,
    latency: Duration,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            () = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            if let Err(why) = session(tcp, addr, acceptor, broker, latency).await {
                tracing::debug!(%addr, why, "MQTT session ended");
            }
        });
    }
}

/// One client, from the TLS handshake to the end of its session.
async fn session(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<dyn Broker>,
    latency: Duration,
) -> Result<(), String> {
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let certificates: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut framed = Framed::new(
        tls,
        Codec {
            max_incoming_size: MAX_PACKET,
            max_outgoing_size: MAX_PACKET,
        },
    );
    let first = tokio::time::timeout(CONNECT_TIMEOUT, framed.next())
        .await
        .map_err(|_| "no CONNECT in time".to_owned())?;
    let connect = match first {
        Some(Ok(Packet::Connect(connect))) => connect,
        Some(Ok(other)) => return Err(format!("expected CONNECT, got {other:?}")),
        Some(Err(e)) => return Err(format!("bad packet: {e}")),
        None => return Err("closed before CONNECT".to_owned()),
    };
    tracing::debug!(%addr, client_id = %connect.client_id, "MQTT CONNECT");
    let answer = broker.connect(&connect, &certificates);
    tokio::time::sleep(latency).await;
    let mut session = match answer {
        Ok(session) => {
            send(
                &mut framed,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
            )
            .await?;
            session
        }
        Err(code) => {
            send(&mut framed, Packet::ConnAck(ConnAck::new(code, false))).await?;
            return Err(format!("CONNECT refused: {code:?}"));
        }
    };
    let mut next_id: u16 = 0;
    while let Some(packet) = framed.next().await {
        let packet = packet.map_err(|e| format!("bad packet: {e}"))?;
        match packet {
            Packet::Subscribe(subscribe) => {
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if session.subscribe(&f.path) {
                            SubscribeReasonCode::Success(QoS::AtLeastOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                tokio::time::sleep(latency).await;
                send(
                    &mut framed,
                    Packet::SubAck(SubAck::new(subscribe.pkid, codes)),
                )
                .await?;
            }
            Packet::Publish(message) => {
                let Some(replies) = session.publish(&message) else {
                    return Err(format!("PUBLISH on {} refused", message.topic));
                };
                tokio::time::sleep(latency).await;
                if message.qos != QoS::AtMostOnce {
                    send(&mut framed, Packet::PubAck(PubAck::new(message.pkid))).await?;
                }
                for (topic, payload) in replies {
                    next_id = next_id.checked_add(1).unwrap_or(1);
                    let mut reply = Publish::new(topic, QoS::AtLeastOnce, payload);
                    reply.pkid = next_id;
                    send(&mut framed, Packet::Publish(reply)).await?;
                }
            }
            Packet::PingReq => send(&mut framed, Packet::PingResp).await?,
            Packet::PubAck(_) => {}
            Packet::Disconnect => return Ok(()),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(())
}

async fn send<S>(framed: &mut Framed<S, Codec>, packet: Packet) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    framed
        .send(packet)
        .await
        .map_err(|e| format!("cannot send: {e}"))
}
