//! `station.toml`: the station's configuration (DESIGN.md section 4, README "station.toml reference").
//!
//! The file is parsed into raw serde types with `deny_unknown_fields` and [`Spanned`] positions,
//! then validated into [`Config`], whose fields downstream code can trust: a parsed
//! registration-ID template, NVS keys of at most 15 bytes, 4 KiB-aligned offsets, entry templates
//! with known placeholders, and an NVS image that fits `[nvs].size` for every device. Every error
//! names the file, the line and the fix. Relative paths resolve against the directory holding
//! the file, so a station can be started from any working directory.
//!
//! Which file: `--config PATH` beats the `STATION_CONFIG` environment variable, which beats
//! `./station.toml`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use crate::identity::{IdentityError, RegistrationIdTemplate, Token, tokenize};
use crate::keys::DEVICE_KEY_LEN;
use crate::nvs;

use crate::flash::SECTOR_SIZE;
use crate::nvs::{MAX_KEY_LEN as NVS_KEY_MAX, MIN_PARTITION_SIZE};

/// The smallest NVS partition, as `[nvs] size` is written.
const NVS_MIN_SIZE: u32 = MIN_PARTITION_SIZE as u32;

/// Where in which file something was written: `station.toml:12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// Errors loading `station.toml`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration {path}: {source}")]
    #[diagnostic(
        code(station::config::unreadable),
        help(
            "Pass --config PATH or set STATION_CONFIG; the default is ./station.toml. The repository's station.toml is a commented example, and `station demo` runs without one."
        )
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A key the station does not know.
    #[error("{at}: {message}")]
    #[diagnostic(
        code(station::config::unknown_key),
        help(
            "Remove the key or correct its spelling; README.md's station.toml reference lists the keys of every section."
        )
    )]
    UnknownKey {
        /// Where.
        at: Location,
        /// The parser's message, naming the key and the ones expected.
        message: String,
    },
    /// A required key is missing.
    #[error("{at}: {message}")]
    #[diagnostic(
        code(station::config::missing_key),
        help(
            "Add the key; README.md's station.toml reference shows each section with its required keys."
        )
    )]
    MissingKey {
        /// Where (the table that lacks it).
        at: Location,
        /// The parser's message, naming the key.
        message: String,
    },
    /// Not valid TOML, or a value of the wrong type.
    #[error("{at}: {message}")]
    #[diagnostic(
        code(station::config::syntax),
        help("Fix the TOML at that line; strings need quotes, numbers may be written as 0x9000.")
    )]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A template with a placeholder the station does not know or a malformed brace.
    #[error("{at}: {key}: {problem}")]
    #[diagnostic(
        code(station::config::bad_template),
        help(
            "Entry values may use {{id_scope}}, {{registration_id}}, {{device_key}}, {{secondary_device_key}}, {{dps_host}}, {{mac}} and {{station_id}}; write a literal brace nowhere."
        )
    )]
    BadTemplate {
        /// Where.
        at: Location,
        /// The key holding the template.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The registration-ID template can yield an invalid DPS registration ID.
    #[error("{at}: [dps] registration_id: {source}")]
    #[diagnostic(
        code(station::config::bad_registration_id),
        help(
            "Use {{mac}} and only lowercase letters, digits and - . _ : around it, at most 128 characters in all, ending in a letter, digit or -; e.g. \"sensor-{{mac}}\"."
        )
    )]
    BadRegistrationId {
        /// Where.
        at: Location,
        /// The rule broken.
        #[source]
        source: IdentityError,
    },
    /// An NVS key or namespace longer than 15 bytes.
    #[error("{at}: NVS {what} `{name}` is {len} bytes long; ESP-IDF allows at most {NVS_KEY_MAX}")]
    #[diagnostic(
        code(station::config::nvs_key_too_long),
        help(
            "Shorten it to 15 bytes or fewer, and change the firmware's nvs_get_str() call to the same name."
        )
    )]
    NvsKeyTooLong {
        /// Where.
        at: Location,
        /// `key` or `namespace`.
        what: &'static str,
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// An offset or size that is not a multiple of the 4 KiB flash sector.
    #[error("{at}: {key} = {value:#x} is not a multiple of 4 KiB (0x1000)")]
    #[diagnostic(
        code(station::config::misaligned),
        help(
            "Flash is erased in 4 KiB sectors; use the offset and size of the partition in your partition table (e.g. offset = 0x9000, size = 0x6000)."
        )
    )]
    Misaligned {
        /// Where.
        at: Location,
        /// The key.
        key: String,
        /// The value found.
        value: u32,
    },
    /// The device's NVS image cannot fit `[nvs].size`.
    #[error("{at}: the NVS image does not fit [nvs] size = {size:#x}: {detail}")]
    #[diagnostic(
        code(station::config::does_not_fit),
        help(
            "Raise [nvs] size (and the partition in the firmware's partition table) or store fewer or shorter values."
        )
    )]
    DoesNotFit {
        /// Where `[nvs].size` is set.
        at: Location,
        /// The partition size.
        size: u32,
        /// Which entry fails and by how many bytes.
        detail: String,
    },
    /// A value outside what the station accepts.
    #[error("{at}: {key}: {problem}")]
    #[diagnostic(code(station::config::bad_value), help("{fix}"))]
    BadValue {
        /// Where.
        at: Location,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A file named by the configuration cannot be read.
    #[error("{at}: {key}: cannot read {path}: {source}")]
    #[diagnostic(
        code(station::config::file_unreadable),
        help(
            "Relative paths resolve against the directory holding station.toml; check the path and its permissions."
        )
    )]
    FileUnreadable {
        /// Where.
        at: Location,
        /// The key naming the file.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

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
    fn parse(template: &str) -> Result<Self, String> {
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
    /// Touch no line and leave the chip in the ROM loader (the stub, if running, is left with
    /// a soft reset).
    NoReset,
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

// ---- raw, as written ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    station: Spanned<RawStation>,
    dps: Spanned<RawDps>,
    nvs: Spanned<RawNvs>,
    serial: Option<Spanned<RawSerial>>,
    #[serde(default)]
    firmware: Vec<Spanned<RawFirmware>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    id: Spanned<String>,
    database: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDps {
    id_scope: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    verify_url: Option<Spanned<String>>,
    group_key_file: Spanned<String>,
    secondary_group_key_file: Option<Spanned<String>>,
    registration_id: Spanned<String>,
    #[serde(default)]
    pre_verify: bool,
    api_version: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    verify_timeout: Option<Spanned<u64>>,
    payload: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNvs {
    offset: Option<Spanned<u32>>,
    size: Option<Spanned<u32>>,
    namespace: Spanned<String>,
    entries: Spanned<IndexMap<Spanned<String>, Spanned<RawEntryValue>>>,
}

enum RawEntryValue {
    Template(String),
    File(String),
}

impl<'de> Deserialize<'de> for RawEntryValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEntryValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string template or { file = "path" }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEntryValue, E> {
                Ok(RawEntryValue::Template(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawEntryValue, A::Error> {
                let mut file = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "file" {
                        return Err(serde::de::Error::unknown_field(&key, &["file"]));
                    }
                    file = Some(map.next_value::<String>()?);
                }
                file.map(RawEntryValue::File)
                    .ok_or_else(|| serde::de::Error::missing_field("file"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    ports: Option<Spanned<Vec<String>>>,
    baud: Option<Spanned<u32>>,
    #[serde(default)]
    before: BeforeReset,
    #[serde(default)]
    after: AfterReset,
    chip: Option<Chip>,
    stub: Option<bool>,
    usb_ids: Option<Spanned<Vec<String>>>,
    max_parallel: Option<Spanned<i64>>,
    probe_interval: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirmware {
    offset: Spanned<u32>,
    file: Spanned<String>,
}

/// Parses `10c4:ea60`.
fn parse_usb_id(text: &str) -> Option<(u16, u16)> {
    let (vendor, product) = text.trim().split_once(':')?;
    let hex = |s: &str| {
        (s.len() == 4)
            .then(|| u16::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(vendor)?, hex(product)?))
}

// ---- loading --------------------------------------------------------------------------------

/// Converts `[dps.payload]` to the JSON DPS receives; TOML dates have no JSON form.
fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => return Err(format!("the date {d} has no JSON form")),
        toml::Value::Array(items) => Json::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Json::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates configuration text as if read from `path` (used for errors and for resolving
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        ctx.validate(raw)
    }
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        Location {
            path: self.path.to_owned(),
            line: self.text[..start].matches('\n').count() + 1,
        }
    }

    fn resolve(&self, file: &str) -> PathBuf {
        let file = Path::new(file);
        if file.is_absolute() {
            file.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new("")).join(file)
        }
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let at = self.at(error.span().unwrap_or(0..0));
        let message = error.message().trim().to_owned();
        if message.starts_with("unknown field") {
            ConfigError::UnknownKey { at, message }
        } else if message.starts_with("missing field") {
            ConfigError::MissingKey { at, message }
        } else {
            ConfigError::Syntax { at, message }
        }
    }

    fn bad_value(
        &self,
        span: Range<usize>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::BadValue {
            at: self.at(span),
            key: key.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let station = self.station(raw.station.into_inner())?;
        let dps = self.dps(raw.dps.into_inner())?;
        let serial = self.serial(raw.serial)?;
        let nvs_span = raw.nvs.span();
        let raw_nvs = raw.nvs.into_inner();
        let size_span = raw_nvs.size.as_ref().map_or(nvs_span, Spanned::span);
        let nvs = self.nvs(raw_nvs, &dps)?;
        let firmware = self.firmware(raw.firmware, &nvs)?;
        let config = Config {
            path: self.path.to_owned(),
            station,
            dps,
            nvs,
            serial,
            firmware,
        };
        self.check_fit(&config, size_span)?;
        Ok(config)
    }

    fn station(&self, raw: RawStation) -> Result<StationConfig, ConfigError> {
        let id = raw.id.get_ref();
        if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.bad_value(
                raw.id.span(),
                "[station] id",
                format!("{id:?} is not a usable station id"),
                "Use 1 to 64 characters without spaces, e.g. \"line1-st1\"; it is stamped on every record.",
            ));
        }
        let database = raw
            .database
            .map_or_else(|| "station.db".to_owned(), Spanned::into_inner);
        Ok(StationConfig {
            id: id.clone(),
            database: self.resolve(&database),
        })
    }

    fn dps(&self, raw: RawDps) -> Result<DpsConfig, ConfigError> {
        let id_scope = raw.id_scope.get_ref();
        if id_scope.is_empty() || !id_scope.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(self.bad_value(
                raw.id_scope.span(),
                "[dps] id_scope",
                format!("{id_scope:?} is not a DPS ID scope"),
                "Copy the ID Scope from the DPS overview page in the Azure portal (it looks like 0ne00ABCDEF).",
            ));
        }
        let endpoint = match raw.endpoint {
            None => DEFAULT_DPS_ENDPOINT.to_owned(),
            Some(endpoint) => {
                let host = endpoint.get_ref();
                if host.is_empty()
                    || host.contains("://")
                    || host.contains('/')
                    || host.contains(char::is_whitespace)
                {
                    return Err(self.bad_value(
                        endpoint.span(),
                        "[dps] endpoint",
                        format!("{host:?} is not a host name"),
                        "Write the DPS host alone, without https:// or a path, e.g. \"global.azure-devices-provisioning.net\".",
                    ));
                }
                host.clone()
            }
        };
        let verify_url = match raw.verify_url {
            None => format!("https://{endpoint}"),
            Some(url) => {
                let text = url.get_ref();
                if !(text.starts_with("https://") || text.starts_with("http://")) {
                    return Err(self.bad_value(
                        url.span(),
                        "[dps] verify_url",
                        format!("{text:?} is not an http(s) URL"),
                        "Write a URL such as \"http://127.0.0.1:8443\" (a local DPS emulator) or leave it out to use https://{endpoint}.",
                    ));
                }
                text.trim_end_matches('/').to_owned()
            }
        };
        let registration_id = RegistrationIdTemplate::parse(raw.registration_id.get_ref())
            .map_err(|source| ConfigError::BadRegistrationId {
                at: self.at(raw.registration_id.span()),
                source,
            })?;
        let api_version = raw
            .api_version
            .map_or_else(|| DEFAULT_API_VERSION.to_owned(), Spanned::into_inner);
        let verify_timeout = match raw.verify_timeout {
            None => DEFAULT_VERIFY_TIMEOUT,
            Some(seconds) => {
                let value = *seconds.get_ref();
                if !(1..=MAX_VERIFY_TIMEOUT).contains(&value) {
                    return Err(self.bad_value(
                        seconds.span(),
                        "[dps] verify_timeout",
                        format!("{value} seconds is outside 1 to {MAX_VERIFY_TIMEOUT}"),
                        "Give the seconds one unit's DPS check may take, retries included, e.g. 30; a unit still unanswered then is recorded pending.",
                    ));
                }
                value
            }
        };
        let payload = match raw.payload {
            None => None,
            Some(table) => {
                let span = table.span();
                Some(
                    toml_to_json(toml::Value::Table(table.into_inner())).map_err(|problem| {
                        self.bad_value(
                            span,
                            "[dps.payload]",
                            problem,
                            "Use strings, numbers, booleans, arrays and tables only; quote a date to send it as text.",
                        )
                    })?,
                )
            }
        };
        Ok(DpsConfig {
            id_scope: id_scope.clone(),
            endpoint,
            verify_url,
            group_key_file: self.resolve(raw.group_key_file.get_ref()),
            secondary_group_key_file: raw
                .secondary_group_key_file
                .map(|f| self.resolve(f.get_ref())),
            registration_id,
            pre_verify: raw.pre_verify,
            api_version,
            ca_file: raw.ca_file.map(|f| self.resolve(f.get_ref())),
            verify_timeout: std::time::Duration::from_secs(verify_timeout),
            payload,
        })
    }

    fn aligned(&self, value: &Spanned<u32>, key: &str) -> Result<u32, ConfigError> {
        let v = *value.get_ref();
        if !v.is_multiple_of(SECTOR_SIZE) {
            return Err(ConfigError::Misaligned {
                at: self.at(value.span()),
                key: key.to_owned(),
                value: v,
            });
        }
        Ok(v)
    }

    fn nvs_name(&self, name: &Spanned<String>, what: &'static str) -> Result<String, ConfigError> {
        let text = name.get_ref();
        if text.is_empty() {
            return Err(self.bad_value(
                name.span(),
                &format!("[nvs] {what}"),
                format!("the NVS {what} is empty"),
                "Give it a name of 1 to 15 bytes that the firmware reads.",
            ));
        }
        if text.len() > NVS_KEY_MAX {
            return Err(ConfigError::NvsKeyTooLong {
                at: self.at(name.span()),
                what,
                name: text.clone(),
                len: text.len(),
            });
        }
        Ok(text.clone())
    }

    fn nvs(&self, raw: RawNvs, dps: &DpsConfig) -> Result<NvsConfig, ConfigError> {
        let offset = raw
            .offset
            .as_ref()
            .map_or(Ok(0x9000), |o| self.aligned(o, "[nvs] offset"))?;
        let size = raw
            .size
            .as_ref()
            .map_or(Ok(0x6000), |s| self.aligned(s, "[nvs] size"))?;
        if let Some(s) = raw.size.as_ref().filter(|s| *s.get_ref() < NVS_MIN_SIZE) {
            return Err(self.bad_value(
                s.span(),
                "[nvs] size",
                format!("{size:#x} is below ESP-IDF's minimum NVS partition of 3 pages ({NVS_MIN_SIZE:#x})"),
                "Use at least 0x3000, matching the NVS partition in the firmware's partition table.",
            ));
        }
        let namespace = self.nvs_name(&raw.namespace, "namespace")?;
        let entries_span = raw.entries.span();
        let mut entries = Vec::new();
        for (key, value) in raw.entries.into_inner() {
            let name = self.nvs_name(&key, "key")?;
            let value = match value.get_ref() {
                RawEntryValue::Template(text) => {
                    let template =
                        ValueTemplate::parse(text).map_err(|problem| ConfigError::BadTemplate {
                            at: self.at(value.span()),
                            key: format!("[nvs.entries] {name}"),
                            problem,
                        })?;
                    if template.uses(Field::SecondaryDeviceKey)
                        && dps.secondary_group_key_file.is_none()
                    {
                        return Err(ConfigError::BadTemplate {
                            at: self.at(value.span()),
                            key: format!("[nvs.entries] {name}"),
                            problem: "{secondary_device_key} needs [dps] secondary_group_key_file"
                                .to_owned(),
                        });
                    }
                    EntryValue::Template(template)
                }
                RawEntryValue::File(file) => {
                    let path = self.resolve(file);
                    let bytes =
                        std::fs::read(&path).map_err(|source| ConfigError::FileUnreadable {
                            at: self.at(value.span()),
                            key: format!("[nvs.entries] {name}"),
                            path: path.clone(),
                            source,
                        })?;
                    let contents = String::from_utf8(bytes).map_err(|_| {
                        self.bad_value(
                            value.span(),
                            &format!("[nvs.entries] {name}"),
                            format!("{} is not UTF-8 text", path.display()),
                            "Entries are stored as strings; give a PEM (text) file, not DER.",
                        )
                    })?;
                    EntryValue::File { path, contents }
                }
            };
            entries.push(NvsEntry { key: name, value });
        }
        if entries.is_empty() {
            return Err(self.bad_value(
                entries_span,
                "[nvs.entries]",
                "no entries: the image would hold nothing",
                "List the keys the firmware reads, e.g. reg_id = \"{registration_id}\" and device_key = \"{device_key}\".",
            ));
        }
        Ok(NvsConfig {
            offset,
            size,
            namespace,
            entries,
        })
    }

    fn serial(&self, raw: Option<Spanned<RawSerial>>) -> Result<SerialConfig, ConfigError> {
        let Some(raw) = raw.map(Spanned::into_inner) else {
            return Ok(SerialConfig {
                ports: vec!["auto".to_owned()],
                baud: 921_600,
                before: BeforeReset::default(),
                after: AfterReset::default(),
                chip: Chip::Esp32,
                stub: true,
                usb_ids: DEFAULT_USB_IDS.to_vec(),
                max_parallel: DEFAULT_MAX_PARALLEL,
                probe_interval: std::time::Duration::try_from_secs_f64(DEFAULT_PROBE_INTERVAL).ok(),
            });
        };
        let ports = match raw.ports {
            None => vec!["auto".to_owned()],
            Some(ports) if ports.get_ref().is_empty() => {
                return Err(self.bad_value(
                    ports.span(),
                    "[serial] ports",
                    "the list is empty",
                    "Use [\"auto\"] to take every USB serial adapter, or list paths or globs such as \"/dev/ttyUSB*\".",
                ));
            }
            Some(ports) => ports
                .into_inner()
                .into_iter()
                .map(|p| {
                    if p == "auto" {
                        p
                    } else {
                        self.resolve(&p).display().to_string()
                    }
                })
                .collect(),
        };
        let baud = match raw.baud {
            None => 921_600,
            Some(baud) if !(9_600..=3_000_000).contains(baud.get_ref()) => {
                return Err(self.bad_value(
                    baud.span(),
                    "[serial] baud",
                    format!("{} is outside 9600..=3000000", baud.get_ref()),
                    "Use a rate the USB-UART bridge supports; 921600 is the usual fast choice, 115200 the safe one.",
                ));
            }
            Some(baud) => baud.into_inner(),
        };
        let usb_ids = match raw.usb_ids {
            None => DEFAULT_USB_IDS.to_vec(),
            Some(ids) => {
                let span = ids.span();
                ids.into_inner()
                    .iter()
                    .map(|id| parse_usb_id(id).ok_or(id))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|id| {
                        self.bad_value(
                            span.clone(),
                            "[serial] usb_ids",
                            format!("`{id}` is not a USB vendor:product pair"),
                            "Write each as four hex digits, a colon and four hex digits, e.g. \"10c4:ea60\" (lsusb shows them).",
                        )
                    })?
            }
        };
        let max_parallel = match raw.max_parallel {
            None => DEFAULT_MAX_PARALLEL,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=256).contains(n))
                .ok_or_else(|| {
                    self.bad_value(
                        n.span(),
                        "[serial] max_parallel",
                        format!("{} is outside 1..=256", n.get_ref()),
                        "Give how many ports may flash at once; the number of ports on the line is the usual choice.",
                    )
                })?,
        };
        let probe_interval = match raw.probe_interval {
            None => std::time::Duration::try_from_secs_f64(DEFAULT_PROBE_INTERVAL).ok(),
            Some(s) if *s.get_ref() == 0.0 => None,
            Some(s) => Some(
                std::time::Duration::try_from_secs_f64(*s.get_ref())
                    .ok()
                    .filter(|d| *d >= std::time::Duration::from_millis(100))
                    .ok_or_else(|| {
                        self.bad_value(
                            s.span(),
                            "[serial] probe_interval",
                            format!("{} is not 0 or at least 0.1 seconds", s.get_ref()),
                            "Give seconds between MAC probes of a finished unit left on its port (2 is usual), or 0 to rely on the port disappearing.",
                        )
                    })?,
            ),
        };
        Ok(SerialConfig {
            ports,
            baud,
            before: raw.before,
            after: raw.after,
            chip: raw.chip.unwrap_or(Chip::Esp32),
            stub: raw.stub.unwrap_or(true),
            usb_ids,
            max_parallel,
            probe_interval,
        })
    }

    fn firmware(
        &self,
        raw: Vec<Spanned<RawFirmware>>,
        nvs: &NvsConfig,
    ) -> Result<Vec<FirmwareImage>, ConfigError> {
        let mut images: Vec<FirmwareImage> = Vec::new();
        for item in raw {
            let span = item.span();
            let item = item.into_inner();
            let offset = self.aligned(&item.offset, "[[firmware]] offset")?;
            let file = self.resolve(item.file.get_ref());
            let size = std::fs::metadata(&file)
                .map_err(|source| ConfigError::FileUnreadable {
                    at: self.at(item.file.span()),
                    key: "[[firmware]] file".to_owned(),
                    path: file.clone(),
                    source,
                })?
                .len();
            let end = u64::from(offset) + size;
            let overlaps = |start: u32, len: u64| {
                u64::from(offset) < u64::from(start) + len && u64::from(start) < end
            };
            if overlaps(nvs.offset, u64::from(nvs.size)) {
                return Err(self.bad_value(
                    span,
                    "[[firmware]]",
                    format!(
                        "{} at {offset:#x}..{end:#x} overlaps the NVS partition at {:#x}..{:#x}",
                        file.display(),
                        nvs.offset,
                        nvs.offset + nvs.size
                    ),
                    "Check the offsets against the firmware's partition table; the NVS image is written last and would be overwritten or overwrite the firmware.",
                ));
            }
            if let Some(other) = images.iter().find(|i| overlaps(i.offset, i.size)) {
                return Err(self.bad_value(
                    span,
                    "[[firmware]]",
                    format!(
                        "{} at {offset:#x} overlaps {} at {:#x}",
                        file.display(),
                        other.file.display(),
                        other.offset
                    ),
                    "Give each image its own region, as in the firmware's partition table.",
                ));
            }
            images.push(FirmwareImage { offset, file, size });
        }
        Ok(images)
    }

    /// Builds the image a device would get, with values of the exact lengths every device's
    /// values have, to prove at load time that every image fits.
    fn check_fit(&self, config: &Config, size_span: Range<usize>) -> Result<(), ConfigError> {
        let registration_id = "r".repeat(config.dps.registration_id.rendered_len());
        let device_key = "k".repeat(DEVICE_KEY_LEN);
        let values = TemplateValues {
            id_scope: &config.dps.id_scope,
            registration_id: &registration_id,
            device_key: &device_key,
            secondary_device_key: &device_key,
            dps_host: &config.dps.endpoint,
            mac: "000000000000",
            station_id: &config.station.id,
        };
        let entries = config.nvs.render(&values);
        nvs::check_fits(&entries, config.nvs.size as usize).map_err(|e| ConfigError::DoesNotFit {
            at: self.at(size_span),
            size: config.nvs.size,
            detail: e.to_string(),
        })
    }
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

#[cfg(test)]
mod tests;
