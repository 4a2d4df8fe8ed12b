//! Stages `derive` and `build`: the registration ID and the device's credential from the MAC,
//! and the flash images from them.
//!
//! With symmetric-key attestation, [`DeviceImage::build`] is the pure heart of the pipeline: the
//! same MAC and configuration always give the same registration ID, device key and image
//! bytes, which is what makes re-provisioning idempotent and lets `station nvs build --mac`
//! reproduce exactly what a unit received. Derivation takes microseconds and is part of stage
//! `build`.
//!
//! With X.509 attestation, stage `derive` issues the unit a fresh key pair and certificate
//! (CPU work, on a blocking thread: [`crate::station::Issuer::issue`]), and
//! [`DeviceImage::with_certificate`] writes them where `[dps]` stores them: the NVS
//! placeholders `{device_cert}`, `{device_private_key}` and `{ca_chain}`, or an
//! `esp_secure_cert` partition flashed in the same session. Each attempt issues anew: the
//! private key exists only in memory (zeroized when the image is dropped) and in the device's
//! flash, so a unit provisioned again gets a new certificate.

use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize as _, Zeroizing};

use super::UnitError;
use crate::config::{Config, CredentialStorage, TemplateValues};
use crate::device::Region;
use crate::identity::{Mac, RegistrationId};
use crate::keys::{DeviceKey, GroupKeys, KeyId};
use crate::nvs;
use crate::record::IssuedCertificate;
use crate::station::{Attestor, Issuer};
use crate::x509::DeviceCredentials;

/// The credential a unit receives.
#[derive(Debug, Clone)]
pub enum DeviceCredential {
    /// Symmetric key: its device key, derived from the primary group key.
    SymmetricKey(DeviceKey),
    /// X.509: its key pair, certificate and CA chain.
    X509(Box<DeviceCredentials>),
}

/// Everything the station writes to one device. `Debug` shows the images' sizes, never their
/// bytes (they hold the device's key).
#[derive(Clone)]
pub struct DeviceImage {
    /// The device.
    pub mac: Mac,
    /// Its registration ID.
    pub registration_id: RegistrationId,
    /// Its credential.
    pub credential: DeviceCredential,
    /// Fingerprint of the primary group key, or of the signing CA.
    pub key_id: KeyId,
    /// Fingerprint of the secondary group key, when one is configured.
    pub secondary_key_id: Option<KeyId>,
    /// The NVS partition image, `[nvs].size` bytes (it may hold a device key or private key:
    /// zeroized when dropped).
    pub bytes: Zeroizing<Vec<u8>>,
    /// X.509 with `[secure_cert]`: the `esp_secure_cert` partition image at its offset,
    /// padded to the partition's size.
    pub secure_cert: Option<SecureCertImage>,
}

/// An `esp_secure_cert` partition image and where it goes. `Debug` shows its size only.
#[derive(Clone)]
pub struct SecureCertImage {
    /// The partition's flash offset.
    pub offset: u32,
    /// The image, padded with `0xFF` to the partition's size (it holds the private key:
    /// zeroized when dropped).
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DeviceImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceImage")
            .field("mac", &self.mac)
            .field("registration_id", &self.registration_id)
            .field("credential", &self.credential)
            .field("key_id", &self.key_id)
            .field("secondary_key_id", &self.secondary_key_id)
            .field("bytes", &self.bytes.len())
            .field("secure_cert", &self.secure_cert)
            .finish()
    }
}

impl std::fmt::Debug for SecureCertImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureCertImage")
            .field("offset", &self.offset)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl DeviceImage {
    /// Symmetric key: derives the device's identity and key and builds its NVS image.
    pub fn build(
        config: &Config,
        keys: &GroupKeys,
        mac: Mac,
    ) -> Result<DeviceImage, nvs::NvsError> {
        let registration_id = config.dps.registration_id.render(&mac);
        let device_key = keys.primary.derive(&registration_id);
        let secondary_device_key = keys.secondary.as_ref().map(|k| k.derive(&registration_id));
        let mac_hex = mac.hex();
        let values = TemplateValues {
            id_scope: &config.dps.id_scope,
            registration_id: registration_id.as_str(),
            device_key: device_key.expose(),
            secondary_device_key: secondary_device_key.as_ref().map_or("", DeviceKey::expose),
            dps_host: &config.dps.endpoint,
            mac: &mac_hex,
            station_id: &config.station.id,
            ..TemplateValues::default()
        };
        let bytes = nvs_image(config, &values)?;
        Ok(DeviceImage {
            mac,
            registration_id,
            credential: DeviceCredential::SymmetricKey(device_key),
            key_id: keys.primary.id().clone(),
            secondary_key_id: keys.secondary.as_ref().map(|k| k.id().clone()),
            bytes,
            secure_cert: None,
        })
    }

    /// X.509: builds the images holding `credentials` (issued for `mac`'s registration ID by
    /// the CA whose fingerprint is `key_id`) where the configuration stores them.
    pub fn with_certificate(
        config: &Config,
        credentials: DeviceCredentials,
        key_id: KeyId,
        mac: Mac,
    ) -> Result<DeviceImage, UnitError> {
        let registration_id = credentials.registration_id().clone();
        let storage = config
            .dps
            .attestation
            .x509()
            .map_or(CredentialStorage::Nvs, |x509| x509.storage);
        let mac_hex = mac.hex();
        let nvs_values = credentials.nvs_values();
        let mut values = TemplateValues {
            id_scope: &config.dps.id_scope,
            registration_id: registration_id.as_str(),
            dps_host: &config.dps.endpoint,
            mac: &mac_hex,
            station_id: &config.station.id,
            ..TemplateValues::default()
        };
        let secure_cert = match storage {
            CredentialStorage::Nvs => {
                values.device_cert = nvs_values.device_cert;
                values.device_private_key = nvs_values.device_private_key;
                values.ca_chain = nvs_values.ca_chain;
                None
            }
            CredentialStorage::SecureCert(partition) => {
                let image = credentials.esp_secure_cert()?;
                Some(SecureCertImage {
                    offset: partition.offset,
                    bytes: crate::secure_cert::padded(&image, partition.size as usize)?,
                })
            }
        };
        let bytes = nvs_image(config, &values)?;
        Ok(DeviceImage {
            mac,
            registration_id,
            credential: DeviceCredential::X509(Box::new(credentials)),
            key_id,
            secondary_key_id: None,
            bytes,
            secure_cert,
        })
    }

    /// SHA-256 of the NVS image, lowercase hex: recorded with the unit so an auditor can match
    /// a device's flash dump to its record without seeing the key inside.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.bytes.as_slice()))
    }

    /// The device key, for symmetric-key attestation.
    pub fn device_key(&self) -> Option<&DeviceKey> {
        match &self.credential {
            DeviceCredential::SymmetricKey(key) => Some(key),
            DeviceCredential::X509(_) => None,
        }
    }

    /// The issued credentials, for X.509 attestation.
    pub fn certificate(&self) -> Option<&DeviceCredentials> {
        match &self.credential {
            DeviceCredential::SymmetricKey(_) => None,
            DeviceCredential::X509(credentials) => Some(credentials),
        }
    }

    /// The regions to flash after the firmware: the `esp_secure_cert` partition (when
    /// configured) and the NVS partition at `nvs_offset`, in flash order.
    pub fn regions(&self, nvs_offset: u32) -> Vec<Region> {
        let mut regions: Vec<Region> = self
            .secure_cert
            .iter()
            .map(|image| Region::new(image.offset, image.bytes.as_slice()))
            .collect();
        regions.push(Region::new(nvs_offset, self.bytes.as_slice()));
        regions.sort_by_key(|region| region.offset);
        regions
    }
}

/// What the records keep of a certificate `issuer` issued.
pub(super) fn issued(credentials: &DeviceCredentials, issuer: &Issuer) -> IssuedCertificate {
    IssuedCertificate {
        serial: credentials.serial().to_owned(),
        thumbprint: credentials.thumbprint().to_string(),
        not_before: crate::clock::format_time(credentials.not_before()),
        not_after: crate::clock::format_time(credentials.not_after()),
        key_type: credentials.key_type().to_string(),
        ca_thumbprint: issuer.ca.thumbprint().to_string(),
    }
}

/// Renders the NVS entries for `values` and builds the image; the rendered strings (which may
/// hold a device key or a private key) are cleared once the image is built.
fn nvs_image(
    config: &Config,
    values: &TemplateValues<'_>,
) -> Result<Zeroizing<Vec<u8>>, nvs::NvsError> {
    let mut entries = config.nvs.render(values);
    let built = nvs::build(&entries, config.nvs.size as usize);
    for entry in &mut entries {
        if let nvs::Value::Str(text) = &mut entry.value {
            text.zeroize();
        }
    }
    built.map(Zeroizing::new)
}

impl<D: crate::device::Device> super::Run<'_, D> {
    /// Derives (symmetric key) or issues (X.509, stage `derive`) the device's credential and
    /// builds its images.
    pub(super) async fn build(&mut self, mac: Mac) -> Result<DeviceImage, super::Failed> {
        use crate::record::Stage;
        let config = &self.station.config;
        let image = match &self.station.attestor {
            Attestor::SymmetricKey(keys) => {
                self.reached(Stage::Build, Some(mac)).await?;
                let t = std::time::Instant::now();
                let image = DeviceImage::build(config, keys, mac)
                    .map_err(super::fail(Stage::Build, false))?;
                self.timings.build = self.finished(Stage::Build.as_str(), t);
                image
            }
            Attestor::X509(issuer) => {
                self.reached(Stage::Derive, Some(mac)).await?;
                let t = std::time::Instant::now();
                let registration_id = config.dps.registration_id.render(&mac);
                let credentials = issuer
                    .issue(&registration_id, time::OffsetDateTime::now_utc())
                    .await
                    .map_err(super::fail(Stage::Derive, false))?;
                self.facts.certificate = Some(issued(&credentials, issuer));
                self.timings.derive = self.finished(Stage::Derive.as_str(), t);
                tracing::info!(
                    serial = credentials.serial(),
                    thumbprint = %credentials.thumbprint(),
                    "certificate issued"
                );

                self.reached(Stage::Build, None).await?;
                let t = std::time::Instant::now();
                let image = DeviceImage::with_certificate(
                    config,
                    credentials,
                    issuer.key_id().clone(),
                    mac,
                )
                .map_err(super::fail(Stage::Build, false))?;
                self.timings.build = self.finished(Stage::Build.as_str(), t);
                image
            }
        };
        self.facts.image_sha256 = Some(image.sha256());
        Ok(image)
    }
}
