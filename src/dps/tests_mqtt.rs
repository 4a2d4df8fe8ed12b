//! DPS over MQTT, the hub's test message and the service API against the emulator on
//! loopback (issue 18), in process. The line end to end is `tests/mqtt.rs`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::hub::{HubClient, HubCredential, HubError};
use crate::keys::{GroupKey, ServiceKey};
use crate::sim::dps::{DpsEmulator, EmulatorOptions, ServicePolicy};
use crate::sim::tls::ServerIdentity;

const GROUP_KEY: &str =
    "IPqyrydADngU4vWjT+oEIm80S8CoXkpEvDM85GB0fYWGc4H7tGK8KOmswJEwP2ePs+ydTBSkPM4lgZwZKs/YQw==";
const OTHER_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const POLICY_KEY: &str = "c2VydmljZS1wb2xpY3kta2V5LWZvci10aGUtZW11bGF0b3ItMDEyMzQ1Njc4OQ==";
const SCOPE: &str = "0ne00ABCDEF";

fn group_key(text: &str) -> GroupKey {
    GroupKey::from_text(text.as_bytes(), Path::new("test.key")).unwrap()
}

fn id() -> RegistrationId {
    RegistrationId::new("sensor-240ac4123456").unwrap()
}

fn key_for(group: &str) -> DeviceKey {
    group_key(group).derive(&id())
}

/// A symmetric-key emulator with a TLS identity (so it serves MQTT), with `adjust` applied;
/// and a directory holding its CA for `[dps] ca_file`, plus a policy key file.
struct Setup {
    sim: DpsEmulator,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(adjust: impl FnOnce(&mut EmulatorOptions)) -> Setup {
        let tls = Arc::new(ServerIdentity::generate().unwrap());
        let mut options = EmulatorOptions::new(SCOPE, group_key(GROUP_KEY));
        options.tls = Some(tls.clone());
        options.assign_delay = Duration::from_millis(50);
        options.retry_after = 0;
        options.service = Some(ServicePolicy {
            name: "provisioningserviceowner".to_owned(),
            key: ServiceKey::from_text(POLICY_KEY.as_bytes(), Path::new("policy.key")).unwrap(),
        });
        adjust(&mut options);
        let sim = DpsEmulator::start(options).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), tls.ca_pem()).unwrap();
        for (name, key) in [("policy.key", POLICY_KEY), ("wrong.key", OTHER_KEY)] {
            let path = dir.path().join(name);
            std::fs::write(&path, key).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        Setup { sim, dir }
    }

    /// The configuration for `transport`, with `extra` lines in `[dps]`.
    fn config(&self, transport: &str, extra: &str) -> Config {
        let (url, hub) = match transport {
            "mqtt" => (
                self.sim.mqtt_url().unwrap(),
                self.sim.hub_mqtt_url().unwrap(),
            ),
            _ => (self.sim.url(), self.sim.hub_url()),
        };
        let text = format!(
            r#"[station]
id = "t"
[dps]
id_scope = "{SCOPE}"
group_key_file = "group.key"
registration_id = "sensor-{{mac}}"
transport = "{transport}"
verify_url = "{url}"
ca_file = "ca.pem"
pre_verify = true
verify_timeout = 10
{extra}
[dps.service]
endpoint = "{service}"
policy_key_file = "policy.key"
[hub]
test_message = true
hub_url = "{hub}"
[nvs]
namespace = "dps"
[nvs.entries]
device_key = "{{device_key}}"
"#,
            service = self.sim.url(),
        );
        Config::parse(&text, &self.dir.path().join("station.toml")).unwrap()
    }

    fn client(&self, transport: &str) -> DpsClient {
        DpsClient::new(&self.config(transport, "").dps).unwrap()
    }

    fn hub(&self, transport: &str) -> HubClient {
        let config = self.config(transport, "");
        let client = DpsClient::new(&config.dps).unwrap();
        HubClient::new(&config, client.roots(), client.policy())
    }

    fn service(&self, key_file: &str) -> service::ServiceClient {
        let mut config = self.config("https", "").dps.service.unwrap();
        config.policy_key_file = self.dir.path().join(key_file);
        let roots = crate::tls::read_roots(&self.dir.path().join("ca.pem")).unwrap();
        service::ServiceClient::new(&config, &roots).unwrap()
    }
}

fn fast(client: DpsClient, budget: Duration) -> DpsClient {
    client.with_policy(RetryPolicy {
        base: Duration::from_millis(20),
        min_poll: Duration::from_millis(20),
        ..RetryPolicy::new(budget)
    })
}

#[tokio::test]
async fn mqtt_register_is_assigned_like_rest() {
    let setup = Setup::new(|_| {}).await;
    let over_mqtt = setup
        .client("mqtt")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    assert_eq!(over_mqtt.status, "assigned");
    assert_eq!(
        over_mqtt.assigned_hub.as_deref(),
        Some("station-sim-hub.azure-devices.net")
    );
    assert_eq!(over_mqtt.device_id.as_deref(), Some(id().as_str()));
    assert_eq!(over_mqtt.substatus.as_deref(), Some("initialAssignment"));
    let requests = setup.sim.requests();
    assert_eq!(requests[0].method, "MQTT");
    assert_eq!(requests[0].path, "iotdps-register");
    assert_eq!(requests[0].status, 202, "assigning first");
    assert!(
        requests
            .iter()
            .any(|r| r.path == "iotdps-get-operationstatus" && r.status == 200),
        "{requests:?}"
    );
    let over_rest = setup
        .client("https")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    assert_eq!(over_rest.assigned_hub, over_mqtt.assigned_hub);
    assert_eq!(over_rest.device_id, over_mqtt.device_id);
    assert_eq!(
        over_rest.substatus.as_deref(),
        Some("reprovisionedToInitialAssignment")
    );
}

#[tokio::test]
async fn mqtt_wrong_key_is_unauthorized_with_dps_code() {
    let setup = Setup::new(|_| {}).await;
    let error = setup
        .client("mqtt")
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
}

#[tokio::test]
async fn mqtt_throttling_and_server_errors_are_retried() {
    let setup = Setup::new(|o| {
        o.throttle = 2;
        o.fail_5xx = 1;
    })
    .await;
    let state = fast(setup.client("mqtt"), Duration::from_secs(10))
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    assert_eq!(state.status, "assigned");
    let statuses: Vec<u16> = setup.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], &[429, 429, 503], "{statuses:?}");
}

#[tokio::test]
async fn mqtt_throttling_beyond_the_budget_and_a_stall_leave_the_unit_pending() {
    let setup = Setup::new(|o| {
        o.throttle = 1000;
        o.retry_after = 1;
    })
    .await;
    let error = fast(setup.client("mqtt"), Duration::from_millis(1500))
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Throttled { .. }), "{error:?}");
    assert!(error.is_transient());
    assert_eq!(
        Verification::from_result(Err(error)).status,
        DpsStatus::Pending
    );

    let stalled = Setup::new(|o| o.stall = true).await;
    let error = fast(stalled.client("mqtt"), Duration::from_millis(600))
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());

    let five = Setup::new(|o| o.fail_5xx = 1000).await;
    let error = fast(five.client("mqtt"), Duration::from_millis(600))
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DpsError::ServerError { status: 503, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn mqtt_to_nothing_listening_is_unreachable_and_pending() {
    let setup = Setup::new(|_| {}).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = setup.config("mqtt", "").dps;
    config.verify_url = format!("mqtts://127.0.0.1:{port}");
    let error = DpsClient::new(&config)
        .unwrap()
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn the_hub_takes_a_message_from_an_assigned_device_over_both_transports() {
    let setup = Setup::new(|_| {}).await;
    setup
        .client("https")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    let body = crate::hub::test_message("t", "WO-1", id().as_str(), "24:0a:c4:12:34:56");
    for transport in ["https", "mqtt"] {
        setup
            .hub(transport)
            .send(
                "station-sim-hub.azure-devices.net",
                id().as_str(),
                HubCredential::Key(&key_for(GROUP_KEY)),
                &body,
            )
            .await
            .unwrap();
    }
    let messages = setup.sim.hub_messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].transport, "https");
    assert_eq!(messages[1].transport, "mqtt");
    for message in &messages {
        assert_eq!(message.device_id, id().as_str());
        assert_eq!(message.body["station"], "t");
        assert_eq!(message.body["batch"], "WO-1");
        assert!(message.body["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn the_hub_refuses_a_wrong_token_and_an_unassigned_device() {
    let setup = Setup::new(|_| {}).await;
    setup
        .client("https")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
    let body = serde_json::json!({});
    for transport in ["https", "mqtt"] {
        let error = setup
            .hub(transport)
            .send(
                "station-sim-hub.azure-devices.net",
                id().as_str(),
                HubCredential::Key(&key_for(OTHER_KEY)),
                &body,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, HubError::Unauthorized { .. }),
            "{transport}: {error:?}"
        );
        assert_eq!(
            crate::Error::from(error).code(),
            "station::hub::unauthorized"
        );
        let other = RegistrationId::new("sensor-240ac4999999").unwrap();
        let error = setup
            .hub(transport)
            .send(
                "station-sim-hub.azure-devices.net",
                other.as_str(),
                HubCredential::Key(&group_key(GROUP_KEY).derive(&other)),
                &body,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, HubError::Unauthorized { .. }),
            "{transport}: {error:?}"
        );
    }
    assert!(setup.sim.hub_messages().is_empty());
}

#[tokio::test]
async fn a_disabled_individual_enrollment_denies_the_device_until_deleted() {
    let setup = Setup::new(|_| {}).await;
    let service = setup.service("policy.key");
    assert!(service.enrollment(&id()).await.unwrap().is_none());
    let created = service
        .put(&service::IndividualEnrollment::denial(&id()), None)
        .await
        .unwrap();
    assert!(created.is_disabled() && created.etag.is_some());
    for transport in ["https", "mqtt"] {
        let error = setup
            .client(transport)
            .register(&id(), &key_for(GROUP_KEY))
            .await
            .unwrap_err();
        assert!(
            matches!(error, DpsError::Disabled { .. }),
            "{transport}: {error:?}"
        );
    }
    assert!(service.delete(&id()).await.unwrap());
    assert!(!service.delete(&id()).await.unwrap(), "gone");
    setup
        .client("mqtt")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_individual_enrollments_key_replaces_the_groups() {
    let setup = Setup::new(|_| {}).await;
    let service = setup.service("policy.key");
    let primary = DeviceKey::generate().unwrap();
    let secondary = DeviceKey::generate().unwrap();
    service
        .put(
            &service::IndividualEnrollment::symmetric(&id(), &primary, &secondary),
            None,
        )
        .await
        .unwrap();
    let read = service.enrollment(&id()).await.unwrap().unwrap();
    assert_eq!(read.provisioning_status, "enabled");
    let stale = read.etag.clone();
    for key in [&primary, &secondary] {
        setup.client("mqtt").register(&id(), key).await.unwrap();
    }
    let error = setup
        .client("https")
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Unauthorized { .. }), "{error:?}");
    // The hub checks the enrollment's key too.
    setup
        .hub("https")
        .send(
            "station-sim-hub.azure-devices.net",
            id().as_str(),
            HubCredential::Key(&primary),
            &serde_json::json!({"n": 1}),
        )
        .await
        .unwrap();
    // Replacing it needs its current etag.
    let mut again = service::IndividualEnrollment::symmetric(&id(), &secondary, &primary);
    again.provisioning_status = service::DISABLED.to_owned();
    let updated = service.put(&again, stale.as_deref()).await.unwrap();
    let error = service.put(&again, stale.as_deref()).await.unwrap_err();
    assert!(
        matches!(error, DpsError::ServiceRejected { status: 412, .. }),
        "{error:?}"
    );
    assert!(updated.is_disabled());
}

#[tokio::test]
async fn the_service_api_refuses_another_policy_key() {
    let setup = Setup::new(|_| {}).await;
    let error = setup
        .service("wrong.key")
        .enrollment(&id())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DpsError::ServiceUnauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert_eq!(
        crate::Error::from(error).code(),
        "station::dps::service_unauthorized"
    );
}

/// Issue 13 carried over to MQTT: a server the station does not trust is a configuration or
/// security fault (`station::dps::tls`), not an outage that leaves the unit pending.
#[tokio::test]
async fn mqtt_to_an_untrusted_server_is_a_tls_fault_not_pending() {
    let setup = Setup::new(|_| {}).await;
    let mut config = setup.config("mqtt", "").dps;
    config.ca_file = None;
    let error = DpsClient::new(&config)
        .unwrap()
        .register(&id(), &key_for(GROUP_KEY))
        .await
        .unwrap_err();
    assert!(matches!(error, DpsError::Tls { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.is_usage_error());
    assert!(setup.sim.requests().is_empty(), "no credentials were sent");
}
