//! The station context: what every unit's attempt needs besides its device, loaded once per
//! run of `station run`, `provision`, `dps verify` or `demo`.
//!
//! [`Station::open`] loads the station's secret ([`Attestor`]: the group keys, or for X.509
//! attestation the signing CA, checked and proven to fit where the credentials are stored),
//! reads the `[[firmware]]` images, builds the DPS client when `[dps] pre_verify` is on, opens
//! the database and records in the audit log the configuration and the key or CA the station
//! runs with (only when they changed since it last did).

use crate::checkpoint::{Anchor, CheckpointError, CheckpointLog};
use std::sync::Arc;

use crate::config::ConfigError;
use crate::config::{
    Attestation as AttestationConfig, Config, CredentialStorage, DeviceKeyType, X509Config,
    X509Lengths,
};
use crate::device::Region;
use crate::dps::{DpsClient, DpsError};
use crate::file::FileError;
use crate::identity::RegistrationId;
use crate::keys::{GroupKeys, KeyError, KeyId};
use crate::record::Attestation;
use crate::store::{CaOpen, StationOpen, Store, StoreError};
use crate::x509::{CaFiles, DeviceCredentials, IssuePolicy, KeyType, SigningCa, X509Error};

/// The largest `[[firmware]]` image the station reads: the largest flash an ESP32 module has.
const FIRMWARE_LIMIT: u64 = crate::flash::MAX_FLASH_SIZE as u64;
/// The largest `station.toml` hashed for the audit log (as large as the station reads).
const CONFIG_LIMIT: u64 = 1 << 20;

/// Why a station could not start: every error is the one of the part that failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StationError {
    /// A group key file is missing, exposed or malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Key(#[from] KeyError),
    /// The signing CA is unusable.
    #[error(transparent)]
    #[diagnostic(transparent)]
    X509(#[from] X509Error),
    /// The credentials the CA issues do not fit where the configuration stores them.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] ConfigError),
    /// The database cannot be opened or recorded to.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    /// The DPS client cannot be set up (`[dps] ca_file`).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dps(#[from] DpsError),
    /// A firmware image cannot be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    File(#[from] FileError),
}

/// The station's secret, by attestation kind: what gives each unit its identity with DPS.
#[derive(Debug)]
pub enum Attestor {
    /// Symmetric-key attestation: the enrollment group's keys, from which each unit's device
    /// key is derived.
    SymmetricKey(GroupKeys),
    /// X.509 attestation: the signing CA, which issues each unit a certificate.
    X509(Issuer),
}

impl Attestor {
    /// Loads the secret `[dps] attestation` names: the group key files, or the CA files (the
    /// CA checked at `now`, and a certificate issued by it proven to fit the configured
    /// storage).
    pub fn load(config: &Config, now: time::OffsetDateTime) -> Result<Attestor, StationError> {
        Ok(match &config.dps.attestation {
            AttestationConfig::SymmetricKey(keys) => Attestor::SymmetricKey(GroupKeys::load(
                &keys.group_key_file,
                keys.secondary_group_key_file.as_deref(),
            )?),
            AttestationConfig::X509(x509) => {
                let issuer = Issuer::load(x509, now)?;
                config.check_x509_fit(&issuer.lengths(config, now)?)?;
                Attestor::X509(issuer)
            }
        })
    }

    /// Which kind it is.
    pub fn kind(&self) -> Attestation {
        match self {
            Attestor::SymmetricKey(_) => Attestation::SymmetricKey,
            Attestor::X509(_) => Attestation::X509,
        }
    }

    /// The fingerprint records carry for it: the primary group key's, or the signing CA's
    /// ([`SigningCa::key_id`]).
    pub fn key_id(&self) -> KeyId {
        match self {
            Attestor::SymmetricKey(keys) => keys.primary.id().clone(),
            Attestor::X509(issuer) => issuer.key_id.clone(),
        }
    }

    /// The secondary group key's fingerprint, when one is configured.
    pub fn secondary_key_id(&self) -> Option<KeyId> {
        match self {
            Attestor::SymmetricKey(keys) => keys.secondary.as_ref().map(|k| k.id().clone()),
            Attestor::X509(_) => None,
        }
    }

    /// The group keys, for symmetric-key attestation.
    pub fn group_keys(&self) -> Option<&GroupKeys> {
        match self {
            Attestor::SymmetricKey(keys) => Some(keys),
            Attestor::X509(_) => None,
        }
    }

    /// The signing CA, for X.509 attestation.
    pub fn issuer(&self) -> Option<&Issuer> {
        match self {
            Attestor::SymmetricKey(_) => None,
            Attestor::X509(issuer) => Some(issuer),
        }
    }
}

/// X.509 attestation's issuer: the signing CA, the issuing policy and where the credentials go.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The signing CA, shared with the blocking tasks that issue.
    pub ca: Arc<SigningCa>,
    /// Key type and validity of what it issues.
    pub policy: IssuePolicy,
    /// Where each unit's credentials are written.
    pub storage: CredentialStorage,
    key_id: KeyId,
}

/// Stand-in lengths a certificate or key may exceed the probe's by: an ECDSA signature varies
/// by a few bytes from one certificate to the next, as do an RSA key's integers.
const CERT_PEM_MARGIN: usize = 16;
/// See [`CERT_PEM_MARGIN`].
const KEY_PEM_MARGIN: usize = 32;
/// See [`CERT_PEM_MARGIN`]; the TLV entries round each up to 16 bytes.
const SECURE_CERT_MARGIN: usize = CERT_PEM_MARGIN + KEY_PEM_MARGIN + 32;

impl Issuer {
    /// Loads and checks the signing CA at `now` ([`SigningCa::load`]).
    pub fn load(config: &X509Config, now: time::OffsetDateTime) -> Result<Issuer, X509Error> {
        let ca = SigningCa::load(
            &CaFiles {
                cert: &config.ca_cert_file,
                chain: config.ca_chain_file.as_deref(),
                key: &config.ca_key_file,
                key_passphrase: config.ca_key_passphrase_file.as_deref(),
            },
            now,
        )?;
        Ok(Issuer {
            key_id: ca.key_id(),
            ca: Arc::new(ca),
            policy: IssuePolicy {
                key_type: key_type(config.key_type),
                validity_days: config.cert_days,
            },
            storage: config.storage,
        })
    }

    /// Issues one unit's credentials at `now` on a blocking thread: key generation (RSA's
    /// especially) is CPU work that must not stall the line's other ports.
    pub async fn issue(
        &self,
        registration_id: &RegistrationId,
        now: time::OffsetDateTime,
    ) -> Result<DeviceCredentials, X509Error> {
        let ca = Arc::clone(&self.ca);
        let policy = self.policy;
        let id = registration_id.clone();
        tokio::task::spawn_blocking(move || ca.issue(&id, &policy, now))
            .await
            .unwrap_or_else(|e| {
                Err(X509Error::IssueFailed {
                    registration_id: registration_id.as_str().to_owned(),
                    problem: format!("the issuing task ended abnormally: {e}"),
                })
            })
    }

    /// The lengths of the credentials this CA issues, measured on a certificate issued for
    /// the longest registration ID the template gives, with a margin for what varies between
    /// certificates.
    pub fn lengths(
        &self,
        config: &Config,
        now: time::OffsetDateTime,
    ) -> Result<X509Lengths, X509Error> {
        let longest = RegistrationId::new("r".repeat(config.dps.registration_id.rendered_len()))
            .map_err(|e| X509Error::IssueFailed {
                registration_id: String::new(),
                problem: e.to_string(),
            })?;
        let probe = self.ca.issue(&longest, &self.policy, now)?;
        let image = probe
            .esp_secure_cert()
            .map_err(|e| X509Error::IssueFailed {
                registration_id: longest.as_str().to_owned(),
                problem: e.to_string(),
            })?;
        Ok(X509Lengths {
            device_cert: probe.certificate_pem().len() + CERT_PEM_MARGIN,
            device_private_key: probe.private_key().expose_pem().len() + KEY_PEM_MARGIN,
            ca_chain: probe.chain_pem().len(),
            secure_cert_image: image.len() + SECURE_CERT_MARGIN,
        })
    }

    /// The CA as records name it (the short fingerprint of its certificate).
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
}

/// The issuer's key type for `[dps] key_type`.
fn key_type(configured: DeviceKeyType) -> KeyType {
    match configured {
        DeviceKeyType::EcdsaP256 => KeyType::EcdsaP256,
        DeviceKeyType::Rsa2048 => KeyType::Rsa2048,
    }
}

/// What a unit's attempt needs besides the device.
#[derive(Debug)]
pub struct Station {
    /// The configuration.
    pub config: Config,
    /// The group keys or the signing CA.
    pub attestor: Attestor,
    /// The database.
    pub store: Store,
    /// The `[[firmware]]` images, read once.
    pub firmware: Vec<Region>,
    /// The DPS client, when `[dps] pre_verify` is on.
    pub dps: Option<DpsClient>,
}

impl Station {
    /// Loads the keys or the CA, opens the database (recording the station's configuration
    /// and keys in the audit log when they changed) and reads the firmware images.
    pub async fn open(config: Config) -> Result<Station, StationError> {
        let now = time::OffsetDateTime::now_utc();
        let attestor = match &config.dps.attestation {
            // Loading a CA issues a probe certificate (an RSA key takes a while): off the
            // runtime's threads.
            AttestationConfig::X509(_) => {
                let loading = config.clone();
                tokio::task::spawn_blocking(move || Attestor::load(&loading, now))
                    .await
                    .map_err(|e| {
                        StationError::X509(X509Error::IssueFailed {
                            registration_id: String::new(),
                            problem: format!("loading the CA ended abnormally: {e}"),
                        })
                    })??
            }
            AttestationConfig::SymmetricKey(_) => Attestor::load(&config, now)?,
        };
        let mut firmware = Vec::new();
        for image in &config.firmware {
            let data = crate::file::read_regular(&image.file, FIRMWARE_LIMIT)
                .map_err(|e| FileError::new("reading", &image.file, e))?;
            firmware.push(Region::new(image.offset, data));
        }
        let dps = if config.dps.pre_verify {
            Some(DpsClient::new(&config.dps)?)
        } else {
            None
        };
        let store =
            Store::connect(&config.station.database)
                .await?
                .with_anchor(std::sync::Arc::new(
                    anchor_for(&config).map_err(StoreError::from)?,
                ));
        let operator = crate::operator::resolve(None, None);
        store
            .record_station_open(&station_open(&config, &attestor, &operator))
            .await?;
        Ok(Station {
            config,
            attestor,
            store,
            firmware,
            dps,
        })
    }

    /// The station's DPS client: its own when pre-verification is on, else a new one (for
    /// `station dps verify` on a line that does not pre-verify).
    pub fn dps_client(&self) -> Result<DpsClient, DpsError> {
        match &self.dps {
            Some(client) => Ok(client.clone()),
            None => DpsClient::new(&self.config.dps),
        }
    }
}

/// What anchors this station's audit chain ([`crate::checkpoint`]): its signing key (made on
/// first use), its checkpoint file and the system log, as `[audit]` says.
pub fn anchor_for(config: &Config) -> Result<Anchor, CheckpointError> {
    Anchor::open(
        &config.audit.signing_key_file,
        &config.station.id,
        CheckpointLog::new(&config.audit.checkpoint_file),
        config.audit.syslog.clone(),
        config.audit.checkpoint_every,
    )
}

/// What the audit log records of a station opening with `config` (its file hashed as it is now)
/// and `attestor`. A configuration that was not read from a file (tests build one from text)
/// records no `config.changed`.
fn station_open(config: &Config, attestor: &Attestor, operator: &str) -> StationOpen {
    use sha2::{Digest as _, Sha256};
    let config_file = crate::file::read_regular(&config.path, CONFIG_LIMIT)
        .ok()
        .map(|bytes| {
            (
                config.path.display().to_string(),
                hex::encode(Sha256::digest(bytes)),
            )
        });
    StationOpen {
        station_id: config.station.id.clone(),
        operator: operator.to_owned(),
        config: config_file,
        key_id: attestor.key_id(),
        secondary_key_id: attestor.secondary_key_id(),
        ca: attestor.issuer().map(|issuer| CaOpen {
            thumbprint: issuer.ca.thumbprint().to_string(),
            subject: issuer.ca.subject().to_owned(),
            not_after: crate::clock::format_time(issuer.ca.not_after()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn station_open_records_config_and_keys_only_when_they_change() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("group.key");
        let write_key = |text: &str| {
            std::fs::write(&key, text).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        );
        let config_path = dir.path().join("station.toml");
        let text = "[station]\nid = \"st1\"\ndatabase = \"station.db\"\n[dps]\nid_scope = \"0ne00ABCDEF\"\n\
                    group_key_file = \"group.key\"\nregistration_id = \"sensor-{mac}\"\n[nvs]\nnamespace = \"dps\"\n\
                    [nvs.entries]\nreg_id = \"{registration_id}\"\n";
        std::fs::write(&config_path, text).unwrap();
        let load = || {
            let config = Config::load(&config_path).unwrap();
            let keys = GroupKeys::load(
                &config
                    .dps
                    .attestation
                    .symmetric_key()
                    .unwrap()
                    .group_key_file,
                None,
            )
            .unwrap();
            (config, keys)
        };
        let (config, keys) = load();
        let store = Store::connect(&config.station.database).await.unwrap();
        let open = |config: &Config, keys: &GroupKeys| {
            station_open(config, &Attestor::SymmetricKey(keys.clone()), "ops")
        };
        assert_eq!(
            store
                .record_station_open(&open(&config, &keys))
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .record_station_open(&open(&config, &keys))
                .await
                .unwrap(),
            0
        );

        // An edited configuration is recorded by its new SHA-256; the same keys are not again.
        std::fs::write(&config_path, format!("{text}# tuned\n")).unwrap();
        let (config, keys) = load();
        assert_eq!(
            store
                .record_station_open(&open(&config, &keys))
                .await
                .unwrap(),
            1
        );
        // A rotated group key is recorded by its key id, never by value.
        write_key(
            "IPqyrydADngU4vWjT+oEIm80S8CoXkpEvDM85GB0fYWGc4H7tGK8KOmswJEwP2ePs+ydTBSkPM4lgZwZKs/YQw==",
        );
        let (config, keys) = load();
        assert_eq!(
            store
                .record_station_open(&open(&config, &keys))
                .await
                .unwrap(),
            1
        );

        let entries = store.audit_entries().await.unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "config.changed",
                "key.loaded",
                "config.changed",
                "key.loaded"
            ]
        );
        use sha2::Digest as _;
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&config_path).unwrap()));
        let details: serde_json::Value = serde_json::from_str(&entries[2].details).unwrap();
        assert_eq!(details["sha256"], sha.as_str());
        assert_eq!(entries[3].subject, keys.primary.id().to_string());
        assert_ne!(entries[1].subject, entries[3].subject);
        assert!(
            entries
                .iter()
                .all(|e| !e.details.contains("IPqyrydADngU4vWj"))
        );
        assert!(store.verify_audit().await.unwrap().first_break.is_none());
    }
}
