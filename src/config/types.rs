//! The validated configuration: what the rest of the station reads. Plain data: no type here
//! belongs to another layer (the device layer maps [`Chip`], [`BeforeReset`] and
//! [`AfterReset`] to espflash's own types).

use std::path::PathBuf;

use crate::identity::{RegistrationIdTemplate, Token, tokenize};
use crate::nvs;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `[station]`.
    pub station: StationConfig,
    /// `[dps]`.
    pub dps: DpsConfig,
    /// `[nvs]`.
    pub nvs: NvsConfig,
    /// `[serial]`.
    pub serial: SerialConfig,
    /// `[[firmware]]`: images flashed in the same session, before the NVS image.
    pub firmware: Vec<FirmwareImage>,
    /// `[boot]`: the boot check after flashing.
    pub boot: BootConfig,
}

/// `[station]`.
#[derive(Debug, Clone)]
pub struct StationConfig {
    /// Stamped on every record and audit entry.
    pub id: String,
    /// The SQLite file (resolved).
    pub database: PathBuf,
}

/// `[dps]`.
#[derive(Debug, Clone)]
pub struct DpsConfig {
    /// The DPS ID scope.
    pub id_scope: String,
    /// The DPS host written into every device.
    pub endpoint: String,
    /// Where the station calls DPS itself; `https://{endpoint}` unless set.
    pub verify_url: String,
    /// The primary group key file (resolved).
    pub group_key_file: PathBuf,
    /// The secondary group key file (resolved), if any.
    pub secondary_group_key_file: Option<PathBuf>,
    /// The registration-ID template.
    pub registration_id: RegistrationIdTemplate,
    /// Whether to pre-verify each unit against DPS.
    pub pre_verify: bool,
    /// The DPS device REST API version.
    pub api_version: String,
    /// An extra trust root for the station's own DPS calls (resolved).
    pub ca_file: Option<PathBuf>,
    /// The longest one unit's DPS pre-verification may take, retries and polling included.
    pub verify_timeout: std::time::Duration,
    /// `[dps.payload]`: JSON sent with every registration, for custom allocation policies.
    pub payload: Option<serde_json::Value>,
}

/// `[nvs]`.
#[derive(Debug, Clone)]
pub struct NvsConfig {
    /// Flash offset of the NVS partition.
    pub offset: u32,
    /// Size of the NVS partition.
    pub size: u32,
    /// The namespace holding the entries.
    pub namespace: String,
    /// The entries, in file order (which is image order).
    pub entries: Vec<NvsEntry>,
}

/// One `[nvs.entries]` line.
#[derive(Debug, Clone)]
pub struct NvsEntry {
    /// The NVS key (at most 15 bytes).
    pub key: String,
    /// What it holds.
    pub value: EntryValue,
}

/// The value of an NVS entry.
#[derive(Debug, Clone)]
pub enum EntryValue {
    /// A string with placeholders, rendered per device.
    Template(ValueTemplate),
    /// A file's contents (e.g. a root CA PEM), the same for every device.
    File {
        /// The resolved path.
        path: PathBuf,
        /// Its contents, read at load time.
        contents: String,
    },
}

/// A placeholder of an entry template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{id_scope}`.
    IdScope,
    /// `{registration_id}`.
    RegistrationId,
    /// `{device_key}`: derived from the primary group key.
    DeviceKey,
    /// `{secondary_device_key}`: derived from the secondary group key.
    SecondaryDeviceKey,
    /// `{dps_host}`: `[dps].endpoint`.
    DpsHost,
    /// `{mac}`: 12 lowercase hex digits.
    Mac,
    /// `{station_id}`.
    StationId,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "id_scope" => Field::IdScope,
            "registration_id" => Field::RegistrationId,
            "device_key" => Field::DeviceKey,
            "secondary_device_key" => Field::SecondaryDeviceKey,
            "dps_host" => Field::DpsHost,
            "mac" => Field::Mac,
            "station_id" => Field::StationId,
            _ => return None,
        })
    }
}

/// A parsed entry template such as `{registration_id}` or `HostName={dps_host}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    pieces: Vec<ValuePiece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ValuePiece {
    Text(String),
    Field(Field),
}

/// The per-device values an entry template draws on.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    /// `{id_scope}`.
    pub id_scope: &'a str,
    /// `{registration_id}`.
    pub registration_id: &'a str,
    /// `{device_key}`.
    pub device_key: &'a str,
    /// `{secondary_device_key}` (empty when no secondary key is configured; load-time
    /// validation refuses templates that use it then).
    pub secondary_device_key: &'a str,
    /// `{dps_host}`.
    pub dps_host: &'a str,
    /// `{mac}`.
    pub mac: &'a str,
    /// `{station_id}`.
    pub station_id: &'a str,
}

impl ValueTemplate {
    /// Parses an entry template; the error says what is malformed.
    pub(super) fn parse(template: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        for token in tokenize(template)? {
            pieces.push(match token {
                Token::Text(text) => ValuePiece::Text(text.to_owned()),
                Token::Placeholder(name) => ValuePiece::Field(
                    Field::parse(name)
                        .ok_or_else(|| format!("unknown placeholder `{{{name}}}`"))?,
                ),
            });
        }
        Ok(ValueTemplate { pieces })
    }

    /// Whether the template uses `field`.
    pub fn uses(&self, field: Field) -> bool {
        self.pieces.contains(&ValuePiece::Field(field))
    }

    /// The value for one device.
    pub fn render(&self, values: &TemplateValues<'_>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            out.push_str(match piece {
                ValuePiece::Text(text) => text,
                ValuePiece::Field(Field::IdScope) => values.id_scope,
                ValuePiece::Field(Field::RegistrationId) => values.registration_id,
                ValuePiece::Field(Field::DeviceKey) => values.device_key,
                ValuePiece::Field(Field::SecondaryDeviceKey) => values.secondary_device_key,
                ValuePiece::Field(Field::DpsHost) => values.dps_host,
                ValuePiece::Field(Field::Mac) => values.mac,
                ValuePiece::Field(Field::StationId) => values.station_id,
            });
        }
        out
    }
}

/// `[serial]`.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// `auto` or paths/globs.
    pub ports: Vec<String>,
    /// The baud rate after connecting.
    pub baud: u32,
    /// The reset before connecting.
    pub before: BeforeReset,
    /// The reset after the unit.
    pub after: AfterReset,
    /// The chip the line expects.
    pub chip: Chip,
    /// Whether to run the flasher stub.
    pub stub: bool,
    /// The USB bridges `auto` takes, as (vendor ID, product ID).
    pub usb_ids: Vec<(u16, u16)>,
    /// How many units the line daemon works on at once.
    pub max_parallel: usize,
    /// How often the daemon asks a finished unit still on its port for its MAC, to notice a
    /// different device on a port that never goes away (a test jig); `None`: never.
    pub probe_interval: Option<std::time::Duration>,
}

/// The USB-serial bridges found on ESP32 boards and programming jigs, as (vendor, product):
/// Silicon Labs CP210x, WCH CH340/CH9102/CH343, FTDI FT232R/FT2232/FT232H/FT-X, and Espressif's
/// own USB-Serial/JTAG and USB-OTG CDC.
pub const DEFAULT_USB_IDS: [(u16, u16); 10] = [
    (0x10c4, 0xea60),
    (0x1a86, 0x7523),
    (0x1a86, 0x55d4),
    (0x1a86, 0x55d3),
    (0x0403, 0x6001),
    (0x0403, 0x6010),
    (0x0403, 0x6014),
    (0x0403, 0x6015),
    (0x303a, 0x1001),
    (0x303a, 0x0002),
];

/// The default of `[serial] max_parallel`.
pub const DEFAULT_MAX_PARALLEL: usize = 16;

/// The default of `[serial] probe_interval`, in seconds.
pub const DEFAULT_PROBE_INTERVAL: f64 = 2.0;

/// How to get the chip into the ROM loader before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BeforeReset {
    /// Pulse DTR/RTS through the board's auto-reset circuit (most dev boards).
    #[default]
    DefaultReset,
    /// The USB-Serial-JTAG sequence of chips with native USB.
    UsbReset,
    /// Touch no line: the chip is already in download mode (and pseudo-terminals).
    NoReset,
}

/// What to do with the chip once the unit is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterReset {
    /// Pulse RTS so the chip reboots into its new configuration.
    #[default]
    HardReset,
    /// Reset the chip with its RTC watchdog, armed over the serial loader: a chip reset that
    /// samples the strapping pins again, so the chip boots its application without DTR/RTS
    /// (ports without modem lines: pseudo-terminals, some jigs; esptool's `watchdog-reset`).
    WatchdogReset,
    /// Touch no line and leave the chip in the ROM loader (the stub, if running, is left with
    /// a soft reset).
    NoReset,
}

impl AfterReset {
    /// Whether the chip ends up running its application.
    pub fn boots_application(self) -> bool {
        matches!(self, AfterReset::HardReset | AfterReset::WatchdogReset)
    }
}

/// The chip model the line expects (`[serial] chip`), as espflash 4.7 names the models it
/// supports; the device layer maps it to espflash's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    /// ESP32.
    #[default]
    Esp32,
    /// ESP32-C2 (ESP8684).
    Esp32c2,
    /// ESP32-C3 (ESP8685).
    Esp32c3,
    /// ESP32-C5.
    Esp32c5,
    /// ESP32-C6.
    Esp32c6,
    /// ESP32-C61.
    Esp32c61,
    /// ESP32-H2.
    Esp32h2,
    /// ESP32-H4.
    Esp32h4,
    /// ESP32-P4.
    Esp32p4,
    /// ESP32-S2.
    Esp32s2,
    /// ESP32-S3.
    Esp32s3,
    /// ESP32-S31.
    Esp32s31,
}

/// One `[[firmware]]` image.
#[derive(Debug, Clone)]
pub struct FirmwareImage {
    /// Flash offset.
    pub offset: u32,
    /// The resolved file.
    pub file: PathBuf,
    /// Its size in bytes (checked at load time against the NVS region).
    pub size: u64,
}

impl NvsConfig {
    /// The entries of one device's image, in order.
    pub fn render(&self, values: &TemplateValues<'_>) -> Vec<nvs::Entry> {
        self.entries
            .iter()
            .map(|entry| nvs::Entry {
                namespace: self.namespace.clone(),
                key: entry.key.clone(),
                value: nvs::Value::Str(match &entry.value {
                    EntryValue::Template(template) => template.render(values),
                    EntryValue::File { contents, .. } => contents.clone(),
                }),
            })
            .collect()
    }
}

/// `[boot]`: after the verified flash, reset the unit into its application, read its console
/// and pass it only when the firmware says it read this unit's configuration.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Whether the boot check runs. Off by default.
    pub enabled: bool,
    /// The application's console rate (`CONFIG_ESP_CONSOLE_UART_BAUDRATE`).
    pub baud: u32,
    /// How long after the reset every `expect` pattern must have appeared.
    pub timeout: std::time::Duration,
    /// Text that must all appear, each in some line of the log.
    pub expect: Vec<BootPattern>,
    /// Text that fails the unit at once.
    pub fail: Vec<BootPattern>,
    /// The most bytes of the log kept with the attempt.
    pub keep_log: usize,
}

/// The default of `[boot] baud`: ESP-IDF's default console rate.
pub const DEFAULT_BOOT_BAUD: u32 = 115_200;
/// The default of `[boot] timeout`, in seconds.
pub const DEFAULT_BOOT_TIMEOUT: f64 = 10.0;
/// The default of `[boot] keep_log`, in bytes.
pub const DEFAULT_BOOT_KEEP_LOG: usize = 4096;
/// The default of `[boot] expect`: the line of the firmware contract (README, "The boot check").
pub const DEFAULT_BOOT_EXPECT: &[&str] = &["dps: registration id {registration_id}"];
/// The default of `[boot] fail`: what ESP-IDF and the ESP32 ROM print when a unit cannot run:
/// a panic, an abort, a brownout, a watchdog firing (or the reset it causes), PSRAM that is
/// configured but not on the board, and a ROM that finds no bootable image.
pub const DEFAULT_BOOT_FAIL: &[&str] = &[
    "Guru Meditation Error",
    "abort() was called",
    "Brownout detector was triggered",
    "Task watchdog got triggered",
    "TG0WDT_SYS_RESET",
    "TG1WDT_SYS_RESET",
    "PSRAM ID read error",
    "Failed to init external RAM",
    "invalid header: 0x",
    "flash read err",
];

impl Default for BootConfig {
    /// The check off, with the documented defaults for when it is turned on.
    fn default() -> Self {
        // The defaults are valid patterns (a unit test parses each).
        let patterns = |texts: &[&str]| {
            texts
                .iter()
                .filter_map(|text| BootPattern::parse(text).ok())
                .collect()
        };
        BootConfig {
            enabled: false,
            baud: DEFAULT_BOOT_BAUD,
            timeout: std::time::Duration::from_secs_f64(DEFAULT_BOOT_TIMEOUT),
            expect: patterns(DEFAULT_BOOT_EXPECT),
            fail: patterns(DEFAULT_BOOT_FAIL),
            keep_log: DEFAULT_BOOT_KEEP_LOG,
        }
    }
}

/// One `[boot] expect` or `fail` pattern: text to find in a line of the boot log, with the
/// placeholders of entry templates except the keys (a firmware that prints its key is exactly
/// what the boot check must not ask for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPattern {
    /// As written in `station.toml`.
    pub text: String,
    template: ValueTemplate,
}

impl BootPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let template = ValueTemplate::parse(text)?;
        if template.uses(Field::DeviceKey) || template.uses(Field::SecondaryDeviceKey) {
            return Err(
                "a pattern may not name a device key: the firmware must never print its key"
                    .to_owned(),
            );
        }
        Ok(BootPattern {
            text: text.to_owned(),
            template,
        })
    }

    /// The text to look for on one unit.
    pub fn render(&self, values: &TemplateValues<'_>) -> String {
        self.template.render(values)
    }
}
