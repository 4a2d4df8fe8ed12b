//! Stages `derive` and `build`: the registration ID and device key from the MAC, and the NVS
//! image from them.
//!
//! [`DeviceImage`] is the pure heart of the pipeline: the same MAC and configuration always give
//! the same registration ID, device key and image bytes, which is what makes re-provisioning
//! idempotent and lets `station nvs build --mac` reproduce exactly what a unit received.

use sha2::{Digest as _, Sha256};

use crate::config::{Config, TemplateValues};
use crate::identity::{Mac, RegistrationId};
use crate::keys::{DeviceKey, GroupKeys, KeyId};
use crate::nvs;

/// Everything the station writes to one device, derived from its MAC.
#[derive(Debug, Clone)]
pub struct DeviceImage {
    /// The device.
    pub mac: Mac,
    /// Its registration ID.
    pub registration_id: RegistrationId,
    /// Its device key (primary group key).
    pub device_key: DeviceKey,
    /// Fingerprint of the primary group key.
    pub key_id: KeyId,
    /// Fingerprint of the secondary group key, when one is configured.
    pub secondary_key_id: Option<KeyId>,
    /// The NVS partition image, `[nvs].size` bytes.
    pub bytes: Vec<u8>,
}

impl DeviceImage {
    /// Derives the device's identity and key and builds its NVS image.
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
        };
        let entries = config.nvs.render(&values);
        let bytes = nvs::build(&entries, config.nvs.size as usize)?;
        Ok(DeviceImage {
            mac,
            registration_id,
            device_key,
            key_id: keys.primary.id().clone(),
            secondary_key_id: keys.secondary.as_ref().map(|k| k.id().clone()),
            bytes,
        })
    }

    /// SHA-256 of the image, lowercase hex: recorded with the unit so an auditor can match a
    /// device's flash dump to its record without seeing the key inside.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
}

impl<D: crate::device::Device> super::Run<'_, D> {
    /// Derives the device's identity and key and builds its image.
    pub(super) async fn build(&mut self, mac: Mac) -> Result<DeviceImage, super::Failed> {
        use crate::record::Stage;
        self.reached(Stage::Build, Some(mac)).await?;
        let t = std::time::Instant::now();
        let image = DeviceImage::build(&self.station.config, &self.station.keys, mac)
            .map_err(super::fail(Stage::Build, false))?;
        self.facts.image_sha256 = Some(image.sha256());
        self.timings.build = self.finished(Stage::Build.as_str(), t);
        Ok(image)
    }
}
