//! The station context: what every unit's attempt needs besides its device, loaded once per
//! run of `station run`, `provision`, `dps verify` or `demo`.
//!
//! [`Station::open`] loads the group keys, reads the `[[firmware]]` images, builds the DPS
//! client when `[dps] pre_verify` is on, opens the database and records in the audit log the
//! configuration and keys the station runs with (only when they changed since it last did).

use crate::config::Config;
use crate::device::Region;
use crate::dps::{DpsClient, DpsError};
use crate::file::FileError;
use crate::keys::{GroupKeys, KeyError};
use crate::store::{Store, StoreError};

/// The largest `[[firmware]]` image the station reads: the largest flash an ESP32 module has.
const FIRMWARE_LIMIT: u64 = 16 << 20;

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
            firmware.push(Region::new(image.offset, data.bytes));
        }
        let dps = if config.dps.pre_verify {
            Some(DpsClient::new(&config.dps)?)
        } else {
            None
        };
        let store = Store::open(&config.station.database).await?;
        store.record_station_open(&config, &keys).await?;
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
