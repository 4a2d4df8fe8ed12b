//! `station.toml`: the station's configuration (DESIGN.md section 4, README "station.toml reference").
//!
//! The file is parsed into raw serde types with `deny_unknown_fields` and `toml::Spanned` positions,
//! then validated into [`Config`], whose fields downstream code can trust: a parsed
//! registration-ID template, NVS keys of at most 15 bytes, 4 KiB-aligned offsets, entry templates
//! with known placeholders, and an NVS image that fits `[nvs].size` for every device. Every error
//! names the file, the line and the fix. Relative paths resolve against the directory holding
//! the file, so a station can be started from any working directory.
//!
//! Which file: `--config PATH` beats the `STATION_CONFIG` environment variable, which beats
//! `./station.toml`.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Config::load`] and [`Config::parse`], the defaults |
//! | `error.rs` | [`ConfigError`] and the [`Location`] every error names |
//! | `types.rs` | the validated types the rest of the station reads (plain data) |
//! | `raw.rs` | the file as written: serde types |
//! | `validate.rs` | from raw to validated: checks, path resolution, the fit check |

mod error;
mod raw;
mod types;
mod validate;

use std::path::Path;

pub use error::{ConfigError, Location};
pub use types::*;
pub use validate::X509Lengths;

/// The largest `station.toml` the station reads.
const CONFIG_LIMIT: u64 = 1 << 20;
/// The largest file an `[nvs.entries]` value names (a value is stored as one NVS string, of at
/// most 3967 bytes; the fit check says so for anything in between).
pub(crate) const ENTRY_FILE_LIMIT: u64 = 1 << 20;

/// The DPS global device endpoint.
pub const DEFAULT_DPS_ENDPOINT: &str = "global.azure-devices-provisioning.net";
/// The DPS device REST API version used unless configured.
pub const DEFAULT_API_VERSION: &str = "2021-10-01";
/// `[dps] verify_timeout` unless configured, in seconds.
pub const DEFAULT_VERIFY_TIMEOUT: u64 = 30;
/// The largest `[dps] verify_timeout` accepted, in seconds.
pub const MAX_VERIFY_TIMEOUT: u64 = 600;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let unreadable = |source| ConfigError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let bytes = crate::file::read_regular(path, CONFIG_LIMIT).map_err(unreadable)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Config::parse(&text, path)
    }

    /// Validates configuration text as if read from `path` (used for errors and for resolving
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, path)
    }
}

#[cfg(test)]
mod tests;
