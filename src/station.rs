//! The station context: what every unit's attempt needs besides its device, loaded once per
//! run of `station run`, `provision`, `dps verify` or `demo`.
//!
//! [`Station::open`] loads the group keys, reads the `[[firmware]]` images, builds the DPS
//! client when `[dps] pre_verify` is on, opens the database and records in the audit log the
//! configuration and keys the station runs with (only when they changed since it last did).

use crate::checkpoint::{Anchor, CheckpointError, CheckpointLog};
use crate::config::Config;
use crate::device::Region;
use crate::dps::{DpsClient, DpsError};
use crate::file::FileError;
use crate::keys::{GroupKeys, KeyError};
use crate::store::{StationOpen, Store, StoreError};

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

/// What a unit's attempt needs besides the device.
#[derive(Debug)]
pub struct Station {
    /// The configuration.
    pub config: Config,
    /// The group keys.
    pub keys: GroupKeys,
    /// The database.
    pub store: Store,
    /// The `[[firmware]]` images, read once.
    pub firmware: Vec<Region>,
    /// The DPS client, when `[dps] pre_verify` is on.
    pub dps: Option<DpsClient>,
}

impl Station {
    /// Loads the keys, opens the database (recording the station's configuration and keys in
    /// the audit log when they changed) and reads the firmware images.
    pub async fn open(config: Config) -> Result<Station, StationError> {
        let keys = GroupKeys::load(
            &config.dps.group_key_file,
            config.dps.secondary_group_key_file.as_deref(),
        )?;
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
        let store = Store::open(&config.station.database)
            .await?
            .with_anchor(std::sync::Arc::new(
                anchor_for(&config).map_err(StoreError::from)?,
            ));
        let operator = crate::operator::resolve(None, None);
        store
            .record_station_open(&station_open(&config, &keys, &operator))
            .await?;
        Ok(Station {
            config,
            keys,
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
/// and `keys`. A configuration that was not read from a file (tests build one from text)
/// records no `config.changed`.
fn station_open(config: &Config, keys: &GroupKeys, operator: &str) -> StationOpen {
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
        key_id: keys.primary.id().clone(),
        secondary_key_id: keys.secondary.as_ref().map(|k| k.id().clone()),
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
            let keys = GroupKeys::load(&config.dps.group_key_file, None).unwrap();
            (config, keys)
        };
        let (config, keys) = load();
        let store = Store::open(&config.station.database).await.unwrap();
        let open = |config: &Config, keys: &GroupKeys| station_open(config, keys, "ops");
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
