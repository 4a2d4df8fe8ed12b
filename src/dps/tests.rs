//! The DPS client against the emulator on loopback, and the retry policy.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use super::retry::jitter;
use super::*;
use crate::config::Config;
use crate::keys::GroupKey;
use crate::sim::dps::{DpsEmulator, EmulatorOptions};

const GROUP_KEY: &str =
    "IPqyrydADngU4vWjT+oEIm80S8CoXkpEvDM85GB0fYWGc4H7tGK8KOmswJEwP2ePs+ydTBSkPM4lgZwZKs/YQw==";
const OTHER_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const SCOPE: &str = "0ne00ABCDEF";

fn group_key(text: &str) -> GroupKey {
    GroupKey::from_text(text.as_bytes(), Path::new("test.key")).unwrap()
}

fn config(url: &str, dps_extra: &str, tables: &str) -> Config {
    let text = format!(
        r#"[station]
id = "t"
[dps]
id_scope = "{SCOPE}"
group_key_file = "group.key"
registration_id = "sensor-{{mac}}"
verify_url = "{url}"
{dps_extra}
{tables}
[nvs]
namespace = "dps"
[nvs.entries]
device_key = "{{device_key}}"
"#
    );
    Config::parse(&text, Path::new("/tmp/station.toml")).unwrap()
}

fn client(url: &str) -> DpsClient {
    DpsClient::new(&config(url, "verify_timeout = 10", "").dps).unwrap()
}

fn id() -> RegistrationId {
    RegistrationId::new("sensor-240ac4123456").unwrap()
}

fn key_for(group: &str) -> DeviceKey {
    group_key(group).derive(&id())
}

async fn emulator(adjust: impl FnOnce(&mut EmulatorOptions)) -> DpsEmulator {
    let mut options = EmulatorOptions::new(SCOPE, group_key(GROUP_KEY));
    options.assign_delay = Duration::from_millis(50);
    options.retry_after = 0;
    adjust(&mut options);
    DpsEmulator::start(options).await.unwrap()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn backoff_doubles_is_capped_and_never_undercuts_retry_after() {
    let policy = RetryPolicy::new(Duration::from_secs(30));
    assert_eq!(policy.backoff(0, None, 0.0), Duration::from_millis(250));
    assert_eq!(policy.backoff(0, None, 0.999_999).as_millis(), 499);
    assert_eq!(policy.backoff(2, None, 0.0), Duration::from_secs(1));
    assert_eq!(policy.backoff(30, None, 1.0), Duration::from_secs(8));
    assert_eq!(
        policy.backoff(0, Some(Duration::from_secs(3)), 0.5),
        Duration::from_secs(3)
    );
    assert_eq!(policy.poll(None), Duration::from_secs(2));
    assert_eq!(
        policy.poll(Some(Duration::ZERO)),
        Duration::from_millis(250)
    );
    assert_eq!(
        policy.poll(Some(Duration::from_secs(3))),
        Duration::from_secs(3)
    );
    let j = jitter();
    assert!((0.0..1.0).contains(&j), "{j}");
}

#[tokio::test]
async fn assigned_then_reprovisioned_to_the_same_hub() {
    let sim = emulator(|_| {}).await;
    let client = client(sim.url());
    let state = client.register(&id(), &key_for(GROUP_KEY)).await.unwrap();
    assert_eq!(state.status, "assigned");
    assert_eq!(
        state.assigned_hub.as_deref(),
        Some("station-sim-hub.azure-devices.net")
    );
    assert_eq!(state.device_id.as_deref(), Some("sensor-240ac4123456"));
    assert_eq!(state.substatus.as_deref(), Some("initialAssignment"));
    assert!(state.etag.is_some() && state.created_date_time_utc.is_some());
    let again = client.register(&id(), &key_for(GROUP_KEY)).await.unwrap();
    assert_eq!(
        again.substatus.as_deref(),
        Some("reprovisionedToInitialAssignment")
    );
    assert_eq!(again.assigned_hub, state.assigned_hub);
    assert_eq!(again.created_date_time_utc, state.created_date_time_utc);
    let calls = sim.requests();
    assert_eq!(calls[0].method, "PUT");
    assert_eq!(calls[0].status, 202, "assigning first");
    assert!(calls.iter().any(|c| c.method == "GET" && c.status == 200));
}

#[tokio::test]
async fn wrong_group_key_is_unauthorized_and_not_transient() {
    let sim = emulator(|_| {}).await;
    let error = client(sim.url())
        .register(&id(), &key_for(OTHER_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Unauthorized { .. }), "{error:?}");
    assert_eq!(error.dps_error_code(), Some(401002));
    assert!(!error.is_transient());
    assert_eq!(
        crate::Error::from(error).code(),
        "station::dps::unauthorized"
    );
    assert!(sim.registration("sensor-240ac4123456").is_none());
}

#[tokio::test]
async fn wrong_id_scope_is_unauthorized() {
    let sim = emulator(|o| o.id_scope = "0ne00FFFFFF".into()).await;
    let error = client(sim.url())
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Unauthorized { .. }), "{error:?}");
}

#[tokio::test]
async fn throttled_then_assigned() {
    let sim = emulator(|o| o.throttle = 2).await;
    let state = client(sim.url())
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], &[429, 429, 202], "{statuses:?}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let sim = emulator(|o| {
        o.throttle = 1;
        o.retry_after = 1;
    })
    .await;
    client(sim.url())
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    let calls = sim.requests();
    assert_eq!(calls[0].status, 429);
    assert!(
        calls[1].at - calls[0].at >= Duration::from_secs(1),
        "retried after {:?}",
        calls[1].at - calls[0].at
    );
}

#[tokio::test]
async fn server_errors_then_assigned() {
    let sim = emulator(|o| o.fail_5xx = 2).await;
    let state = client(sim.url())
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..2], &[503, 503], "{statuses:?}");
}

#[tokio::test]
async fn throttling_beyond_the_budget_is_transient() {
    let sim = emulator(|o| o.throttle = 1000).await;
    let client = client(sim.url()).with_policy(RetryPolicy::new(Duration::from_secs(1)));
    let error = client
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Throttled { .. }), "{error:?}");
    assert!(error.is_transient());
    let verification = Verification::from_result(Err(error));
    assert_eq!(verification.status, DpsStatus::Pending);
    assert!(
        verification
            .record()
            .error
            .unwrap()
            .starts_with("station::dps::throttled: ")
    );
}

#[tokio::test]
async fn disabled_enrollment_fails_with_its_own_code() {
    let sim = emulator(|o| o.disabled = true).await;
    let error = client(sim.url())
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Disabled { .. }), "{error:?}");
    assert_eq!(
        Verification::from_result(Err(error)).status,
        DpsStatus::Failed
    );
}

#[tokio::test]
async fn a_stalled_registration_times_out_as_pending() {
    let sim = emulator(|o| o.stall = true).await;
    let client = client(sim.url()).with_policy(RetryPolicy::new(Duration::from_secs(1)));
    let error = client
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let error = client(&url)
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Unreachable { .. }), "{error:?}");
    assert_eq!(
        Verification::from_result(Err(error)).status,
        DpsStatus::Pending
    );
}

/// Sends a register request with a hand-made token.
async fn raw_register(url: &str, token: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!(
            "{url}/{SCOPE}/registrations/sensor-240ac4123456/register?api-version=2021-10-01"
        ))
        .header("authorization", token)
        .json(&serde_json::json!({ "registrationId": "sensor-240ac4123456" }))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn expired_tokens_and_other_key_names_are_rejected() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = emulator(|_| {}).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = SasToken::new(SCOPE, &id(), &key_for(GROUP_KEY), now - 60);
    let (status, body) = raw_register(sim.url(), &expired.header()).await;
    assert_eq!(status, 401);
    assert_eq!(body["errorCode"], 401002);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string());

    let mut other_name = SasToken::new(SCOPE, &id(), &key_for(GROUP_KEY), now + 600);
    other_name.key_name = Some("owner".into());
    let (status, body) = raw_register(sim.url(), &other_name.header()).await;
    assert_eq!((status, body["errorCode"].as_i64()), (401, Some(401002)));

    let valid = SasToken::new(SCOPE, &id(), &key_for(GROUP_KEY), now + 600);
    let (status, body) = raw_register(sim.url(), &valid.header()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "assigning");
}

#[tokio::test]
async fn payload_is_passed_through() {
    let sim = emulator(|_| {}).await;
    let config = config(sim.url(), "", "[dps.payload]\nmodel = \"th-1\"\nline = 3\n");
    let client = DpsClient::new(&config.dps).unwrap();
    let state = client.register(&id(), &key_for(GROUP_KEY)).await.unwrap();
    let expected = serde_json::json!({ "model": "th-1", "line": 3 });
    assert_eq!(state.payload.as_ref(), Some(&expected));
    assert_eq!(sim.requests()[0].payload.as_ref(), Some(&expected));
}

#[tokio::test]
async fn reachable_reports_any_http_answer() {
    let sim = emulator(|_| {}).await;
    assert_eq!(
        client(sim.url()).reachable().await.unwrap(),
        "answers (HTTP 404)"
    );
    let url = format!("http://127.0.0.1:{}", closed_port());
    assert!(client(&url).reachable().await.is_err());
}

#[test]
fn a_missing_ca_file_is_a_usage_error() {
    let config = config(
        "https://127.0.0.1:1",
        "ca_file = \"/nonexistent/ca.pem\"",
        "",
    );
    let error = DpsClient::new(&config.dps).unwrap_err();
    assert!(error.is_usage_error());
    assert_eq!(
        crate::Error::from(error).exit_code(),
        crate::error::exit::USAGE
    );
}

/// A response recorded from Azure's documentation (`fixtures/README.md`).
fn recorded(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/dps")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The JSON with every leaf replaced by null: the field names and their nesting.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        _ => serde_json::Value::Null,
    }
}

#[test]
fn answers_recorded_from_azure_fill_every_field_of_the_client_types() {
    let assigning = recorded("register-202-assigning.json");
    let parsed: OperationStatus = serde_json::from_value(assigning.clone()).unwrap();
    assert_eq!(parsed.status, "assigning");
    assert!(parsed.operation_id.starts_with("5.316aac5bdc130deb."));
    assert!(parsed.registration_state.is_none());
    // Serde drops fields it does not know: what comes back out is only what was understood.
    assert_eq!(serde_json::to_value(&parsed).unwrap(), assigning);

    let assigned = recorded("operation-200-assigned.json");
    let parsed: OperationStatus = serde_json::from_value(assigned.clone()).unwrap();
    let state = parsed.registration_state.clone().unwrap();
    assert_eq!(
        (
            state.registration_id.as_str(),
            state.status.as_str(),
            state.assigned_hub.as_deref(),
            state.device_id.as_deref(),
            state.substatus.as_deref(),
        ),
        (
            "my-symkey-device",
            "assigned",
            Some("MyExampleHub.azure-devices.net"),
            Some("my-symkey-device"),
            Some("initialAssignment"),
        )
    );
    assert!(state.created_date_time_utc.is_some() && state.last_updated_date_time_utc.is_some());
    assert!(state.etag.is_some());
    assert_eq!(serde_json::to_value(&parsed).unwrap(), assigned);

    let error = recorded("error-401-unauthorized.json");
    let parsed: ServiceError = serde_json::from_value(error.clone()).unwrap();
    assert_eq!(
        (parsed.error_code, parsed.message.as_str()),
        (Some(401002), "Unauthorized")
    );
    assert!(parsed.tracking_id.is_some() && parsed.timestamp_utc.is_some());
    assert_eq!(serde_json::to_value(&parsed).unwrap(), error);

    // A misnamed field is an error, not an empty value.
    let misnamed = serde_json::json!({ "operationID": "x", "status": "assigning" });
    assert!(serde_json::from_value::<OperationStatus>(misnamed).is_err());
}

#[tokio::test]
async fn the_emulator_answers_with_the_field_names_azure_uses() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = emulator(|o| o.assign_delay = Duration::from_millis(300)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = SasToken::new(SCOPE, &id(), &key_for(GROUP_KEY), now + 600).header();
    let (status, body) = raw_register(sim.url(), &token).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        shape(&body),
        shape(&recorded("register-202-assigning.json"))
    );

    let operation = body["operationId"].as_str().unwrap().to_owned();
    let url = format!(
        "{}/{SCOPE}/registrations/sensor-240ac4123456/operations/{}?api-version=2021-10-01",
        sim.url(),
        sas::encode(&operation)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let assigned = loop {
        let response = reqwest::Client::new()
            .get(&url)
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        if status == 200 {
            break body;
        }
        assert_eq!(status, 202, "{body}");
        assert!(std::time::Instant::now() < deadline, "never assigned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(assigned["status"], "assigned");
    assert_eq!(
        shape(&assigned),
        shape(&recorded("operation-200-assigned.json"))
    );

    let wrong = SasToken::new(SCOPE, &id(), &key_for(OTHER_KEY), now + 600).header();
    let (status, body) = raw_register(sim.url(), &wrong).await;
    assert_eq!(status, 401);
    assert_eq!(
        shape(&body),
        shape(&recorded("error-401-unauthorized.json"))
    );
}

/// An X.509 enrollment group for the tests: a CA made with rcgen, loaded as the station loads
/// its signing CA, and its certificate as the emulator's trust anchor.
struct X509Group {
    _dir: tempfile::TempDir,
    ca: crate::x509::SigningCa,
}

impl X509Group {
    fn new(name: &str) -> X509Group {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("ca.pem");
        let key_path = dir.path().join("ca.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let ca = crate::x509::SigningCa::load(
            &crate::x509::CaFiles {
                cert: &cert_path,
                chain: None,
                key: &key_path,
                key_passphrase: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        X509Group { _dir: dir, ca }
    }

    fn trusted(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        vec![self.ca.certificate_der().to_vec().into()]
    }

    /// Credentials for `registration_id`, valid from `at` for `days`.
    fn issue(
        &self,
        registration_id: &str,
        at: time::OffsetDateTime,
        days: u32,
    ) -> crate::x509::DeviceCredentials {
        self.ca
            .issue(
                &RegistrationId::new(registration_id).unwrap(),
                &crate::x509::IssuePolicy {
                    key_type: crate::x509::KeyType::EcdsaP256,
                    validity_days: days,
                },
                at,
            )
            .unwrap()
    }
}

/// The emulator for `group` over HTTPS, and a station client that trusts the emulator's
/// server certificate (and nothing else of its own) through `[dps] ca_file`.
async fn x509_emulator(group: &X509Group) -> (DpsEmulator, DpsClient, tempfile::TempDir) {
    let tls = std::sync::Arc::new(crate::sim::tls::ServerIdentity::generate().unwrap());
    let mut options = EmulatorOptions::x509(SCOPE, group.trusted(), tls.clone());
    options.assign_delay = Duration::from_millis(50);
    options.retry_after = 0;
    let sim = DpsEmulator::start(options).await.unwrap();
    assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("dps-ca.pem");
    std::fs::write(&ca_file, tls.ca_pem()).unwrap();
    let client = DpsClient::new(
        &config(
            sim.url(),
            &format!("verify_timeout = 10\nca_file = \"{}\"", ca_file.display()),
            "",
        )
        .dps,
    )
    .unwrap();
    (sim, client, dir)
}

#[tokio::test]
async fn an_x509_device_registers_with_its_certificate_over_tls() {
    let group = X509Group::new("Group CA");
    let (sim, client, _dir) = x509_emulator(&group).await;
    let credentials = group.issue(id().as_str(), time::OffsetDateTime::now_utc(), 30);
    let state = client
        .register_x509(&id(), credentials.tls_identity())
        .await
        .unwrap();
    assert_eq!(
        state.assigned_hub.as_deref(),
        Some("station-sim-hub.azure-devices.net")
    );
    assert_eq!(state.device_id.as_deref(), Some(id().as_str()));
    let requests = sim.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.client_certificate.as_deref() == Some(id().as_str())),
        "every request carried the device's certificate: {requests:?}"
    );
}

/// Issue 18: over MQTT an X.509 device authenticates in the TLS handshake too (no password),
/// and a certificate of another CA is refused at CONNECT, as DPS does.
#[tokio::test]
async fn an_x509_device_registers_over_mqtt_with_its_certificate() {
    let group = X509Group::new("Group CA");
    let other = X509Group::new("Another CA");
    let (sim, _, dir) = x509_emulator(&group).await;
    let client = DpsClient::new(
        &config(
            sim.mqtt_url().unwrap(),
            &format!(
                "verify_timeout = 10\ntransport = \"mqtt\"\nca_file = \"{}\"",
                dir.path().join("dps-ca.pem").display()
            ),
            "",
        )
        .dps,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let state = client
        .register_x509(&id(), group.issue(id().as_str(), now, 30).tls_identity())
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    assert_eq!(state.device_id.as_deref(), Some(id().as_str()));
    let requests = sim.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths.first(),
        Some(&"iotdps-register"),
        "registered over MQTT, then polled: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.method == "MQTT" && r.client_certificate.as_deref() == Some(id().as_str())),
        "every request came over the session the certificate opened: {requests:?}"
    );
    let error = client
        .register_x509(&id(), other.issue(id().as_str(), now, 30).tls_identity())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DpsError::CertificateRefused { .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(
        miette::Diagnostic::code(&error)
            .map(|c| c.to_string())
            .as_deref(),
        Some("station::dps::certificate_refused")
    );
    assert_eq!(
        sim.requests().len(),
        requests.len(),
        "refused at CONNECT: the emulator answered no request of the other CA's device"
    );
}

#[tokio::test]
async fn the_x509_emulator_refuses_what_dps_refuses_with_401002() {
    let group = X509Group::new("Group CA");
    let other = X509Group::new("Another CA");
    let (sim, client, _dir) = x509_emulator(&group).await;
    let now = time::OffsetDateTime::now_utc();
    let refused = |result: Result<RegistrationState, DpsError>| match result {
        Err(DpsError::CertificateRefused {
            error_code,
            message,
            ..
        }) => {
            assert_eq!(error_code, Some(crate::sim::dps::UNAUTHORIZED));
            message
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Another CA's certificate.
    let message = refused(
        client
            .register_x509(&id(), other.issue(id().as_str(), now, 30).tls_identity())
            .await,
    );
    assert!(message.contains("does not chain"), "{message}");
    // The group's CA, but issued for another registration ID.
    let message = refused(
        client
            .register_x509(
                &id(),
                group.issue("sensor-240ac4999999", now, 30).tls_identity(),
            )
            .await,
    );
    assert!(message.contains("CN `sensor-240ac4999999`"), "{message}");
    // Expired: issued 40 days ago for 30 days (it starts an hour before issuing).
    let message = refused(
        client
            .register_x509(
                &id(),
                group
                    .issue(id().as_str(), now - time::Duration::days(40), 30)
                    .tls_identity(),
            )
            .await,
    );
    assert!(message.to_lowercase().contains("expired"), "{message}");
    // A SAS token, without a certificate: an X.509 group does not take tokens.
    match client.register(&id(), &key_for(GROUP_KEY)).await {
        Err(DpsError::Unauthorized { message, .. }) => {
            assert!(message.contains("no client certificate"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(sim.registration(id().as_str()).is_none());
    assert!(sim.requests().iter().all(|r| r.status == 401));
}

#[tokio::test]
async fn a_station_that_does_not_trust_the_emulator_cannot_reach_it() {
    let group = X509Group::new("Group CA");
    let (sim, _client, _dir) = x509_emulator(&group).await;
    // No [dps] ca_file: the emulator's server certificate is not in the platform's store.
    let untrusting = client(sim.url());
    let credentials = group.issue(id().as_str(), time::OffsetDateTime::now_utc(), 30);
    let error = untrusting
        .register_x509(&id(), credentials.tls_identity())
        .await
        .unwrap_err();
    // Issue 13: an untrusted server is a configuration or security fault, not an outage.
    assert!(matches!(error, DpsError::Tls { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    assert!(sim.requests().is_empty());
}
