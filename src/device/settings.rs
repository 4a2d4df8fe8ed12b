//! How to talk to the device on a port, and `station.toml`'s `[serial]` section (plain data in
//! `config`) as the espflash types the session needs.

use std::time::Duration;

use super::{AfterReset, BeforeReset, Chip};

/// How to talk to the device on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The baud rate after connecting (the ROM loader is always reached at 115200).
    pub baud: u32,
    /// How to enter the ROM loader.
    pub before: BeforeReset,
    /// What to do after the unit.
    pub after: AfterReset,
    /// The chip the line expects; any other is refused before anything is written.
    pub chip: Chip,
    /// Whether to upload and use the flasher stub (compressed writes, faster MD5).
    pub stub: bool,
    /// An upper bound on any one stage; `None` relies on espflash's per-command timeouts.
    /// When it fires the session is abandoned ([`DeviceError::Stalled`]).
    pub stage_timeout: Option<Duration>,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 921_600,
            before: BeforeReset::DefaultReset,
            after: AfterReset::HardReset,
            chip: Chip::Esp32,
            stub: true,
            stage_timeout: None,
        }
    }
}

// ---- from the configuration -----------------------------------------------------------------

impl From<&crate::config::SerialConfig> for SerialSettings {
    /// The settings for one port of the line, as `[serial]` says (no stage timeout).
    fn from(serial: &crate::config::SerialConfig) -> Self {
        SerialSettings {
            baud: serial.baud,
            before: serial.before,
            after: serial.after,
            chip: serial.chip.into(),
            stub: serial.stub,
            stage_timeout: None,
        }
    }
}

impl From<crate::config::Chip> for Chip {
    fn from(chip: crate::config::Chip) -> Self {
        use crate::config::Chip as Model;
        match chip {
            Model::Esp32 => Chip::Esp32,
            Model::Esp32c2 => Chip::Esp32c2,
            Model::Esp32c3 => Chip::Esp32c3,
            Model::Esp32c5 => Chip::Esp32c5,
            Model::Esp32c6 => Chip::Esp32c6,
            Model::Esp32c61 => Chip::Esp32c61,
            Model::Esp32h2 => Chip::Esp32h2,
            Model::Esp32h4 => Chip::Esp32h4,
            Model::Esp32p4 => Chip::Esp32p4,
            Model::Esp32s2 => Chip::Esp32s2,
            Model::Esp32s3 => Chip::Esp32s3,
            Model::Esp32s31 => Chip::Esp32s31,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chip_the_configuration_names_is_the_espflash_chip_of_that_name() {
        for name in [
            "esp32", "esp32c2", "esp32c3", "esp32c5", "esp32c6", "esp32c61", "esp32h2", "esp32h4",
            "esp32p4", "esp32s2", "esp32s3", "esp32s31",
        ] {
            let model: crate::config::Chip =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(name))
                .unwrap();
            assert_eq!(Chip::from(model).to_string(), name);
        }
    }
}
