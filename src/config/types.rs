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
    /// `[hub]`: the test message to the hub DPS assigns.
    pub hub: HubConfig,
    /// `[boot]`: the boot check after flashing.
    pub boot: BootConfig,
    /// `[audit]`: where the chain's signed checkpoints go.
    pub audit: AuditConfig,
    /// `[http]`: the supervisor dashboard (`station serve`, `station run --http`).
    pub http: HttpConfig,
    /// What is allowed but deserves attention (a root CA that expires within 90 days):
    /// `station check` and `station run` show these.
    pub warnings: Vec<String>,
}

/// `[audit]`: the station's signing key and where its checkpoints go.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The station's Ed25519 signing key (resolved); made on first use.
    pub signing_key_file: PathBuf,
    /// The append-only checkpoint file (resolved).
    pub checkpoint_file: PathBuf,
    /// At least one checkpoint every this many audit entries.
    pub checkpoint_every: i64,
    /// The system log socket checkpoints also go to, when it exists; `None`: not sent.
    pub syslog: Option<PathBuf>,
}

/// `[http]`: who may open the supervisor dashboard.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// The file holding the dashboard's access token (resolved; mode 0600 like a key file).
    /// Required to listen on an address other than loopback.
    pub token_file: Option<PathBuf>,
}

/// The default of `[audit] checkpoint_every`.
pub const DEFAULT_CHECKPOINT_EVERY: i64 = 100;

/// `[station]`.
#[derive(Debug, Clone)]
pub struct StationConfig {
    /// Stamped on every record and audit entry.
    pub id: String,
    /// Where the records are kept.
    pub database: Database,
}

/// Where a station keeps its records: `[station] database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (resolved), created on first use: one station.
    Sqlite(PathBuf),
    /// A PostgreSQL server that several stations share.
    Postgres {
        /// `postgres://USER@HOST:PORT/DBNAME?sslmode=...`, never with a password in it.
        url: String,
        /// `[station] database_password_file` (resolved): the password alone in a file of
        /// mode 0600. Without it the password comes from `PGPASSWORD` or `~/.pgpass`.
        password_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for Database {
    /// The file, or the URL (which holds no password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres { url, .. } => f.write_str(url),
        }
    }
}

/// A database URL with any password in it replaced by `***`, for messages about a URL the
/// station refuses.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@').map(|i| rest + i)
            && let Some(colon) = out[rest..at].find(':').map(|i| rest + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    // A `password=` query parameter.
    if let Some(query) = out.find('?') {
        let (head, tail) = out.split_at(query + 1);
        let tail: Vec<String> = tail
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", tail.join("&"));
    }
    out
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
    /// How devices prove their identity to DPS, and the station secret behind it.
    pub attestation: Attestation,
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
    /// How the station speaks to DPS (and to the hub): HTTPS or MQTT, as the device does.
    pub transport: DpsTransport,
    /// Whether units belong to the enrollment group or get individual enrollments.
    pub enrollment: Enrollment,
    /// `[dps.service]`: the DPS service API, for revocation and individual enrollments.
    pub service: Option<DpsServiceConfig>,
}

/// `[dps] transport`: the protocol the station speaks to DPS and to the assigned hub, as the
/// firmware does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpsTransport {
    /// `https` (the default): the device REST API; the hub's HTTPS messaging endpoint.
    #[default]
    Https,
    /// `mqtt`: MQTT 3.1.1 over TLS, port 8883, to DPS and to the hub.
    Mqtt,
}

impl DpsTransport {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DpsTransport::Https => "https",
            DpsTransport::Mqtt => "mqtt",
        }
    }
}

/// `[dps] enrollment`: how DPS knows a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enrollment {
    /// `group` (the default): the enrollment group of `[dps] attestation`.
    #[default]
    Group,
    /// `individual`: the station makes a random key per unit and creates the unit's individual
    /// enrollment through the DPS service API (`[dps.service]`) before flashing it.
    Individual,
}

impl Enrollment {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Enrollment::Group => "group",
            Enrollment::Individual => "individual",
        }
    }
}

/// `[dps.service]`: the DPS service API (enrollments), authorized by a shared access policy.
#[derive(Debug, Clone)]
pub struct DpsServiceConfig {
    /// The service endpoint, `https://{dps-name}.azure-devices-provisioning.net` (or a local
    /// emulator's URL).
    pub endpoint: String,
    /// The shared access policy's name (`provisioningserviceowner` unless set).
    pub policy: String,
    /// The file holding the policy's key (resolved): base64, mode 0600 or stricter.
    pub policy_key_file: PathBuf,
    /// The service API version.
    pub api_version: String,
}

/// The default `[dps.service] policy`: the policy every DPS instance is created with.
pub const DEFAULT_SERVICE_POLICY: &str = "provisioningserviceowner";

/// `[hub]`: a device-to-cloud test message to the hub DPS assigned.
#[derive(Debug, Clone, Default)]
pub struct HubConfig {
    /// Send one message as the device after DPS assigns it.
    pub test_message: bool,
    /// Where to send it instead of the assigned hub's host (`https://127.0.0.1:PORT` or
    /// `mqtts://127.0.0.1:PORT` for a local emulator); the scheme follows `[dps] transport`.
    pub hub_url: Option<String>,
}

/// `[dps] attestation` and the keys that go with it.
#[derive(Debug, Clone)]
pub enum Attestation {
    /// `symmetric-key` (the default): each device holds a key derived from the enrollment
    /// group's key.
    SymmetricKey(SymmetricKeyConfig),
    /// `x509`: each device holds its own key pair and a certificate the station issues with
    /// the CA the enrollment group trusts.
    X509(X509Config),
    /// `symmetric-key` with `enrollment = "individual"`: each device holds a random key of its
    /// own, registered in its individual enrollment; there is no group key.
    IndividualKey,
}

impl Attestation {
    /// The configuration spelling (`symmetric-key`, `x509`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Attestation::SymmetricKey(_) | Attestation::IndividualKey => ATTESTATION_SYMMETRIC_KEY,
            Attestation::X509(_) => ATTESTATION_X509,
        }
    }

    /// The group key files, for symmetric-key attestation.
    pub fn symmetric_key(&self) -> Option<&SymmetricKeyConfig> {
        match self {
            Attestation::SymmetricKey(keys) => Some(keys),
            Attestation::X509(_) | Attestation::IndividualKey => None,
        }
    }

    /// The signing CA and issuing policy, for X.509 attestation.
    pub fn x509(&self) -> Option<&X509Config> {
        match self {
            Attestation::SymmetricKey(_) | Attestation::IndividualKey => None,
            Attestation::X509(x509) => Some(x509),
        }
    }
}

/// `[dps] attestation = "symmetric-key"`.
pub const ATTESTATION_SYMMETRIC_KEY: &str = "symmetric-key";
/// `[dps] attestation = "x509"`.
pub const ATTESTATION_X509: &str = "x509";

/// The group key files of symmetric-key attestation.
#[derive(Debug, Clone)]
pub struct SymmetricKeyConfig {
    /// The primary group key file (resolved).
    pub group_key_file: PathBuf,
    /// The secondary group key file (resolved), if any.
    pub secondary_group_key_file: Option<PathBuf>,
}

/// The signing CA and issuing policy of X.509 attestation.
#[derive(Debug, Clone)]
pub struct X509Config {
    /// `ca_cert_file`: the signing CA's certificate (resolved).
    pub ca_cert_file: PathBuf,
    /// `ca_chain_file`: the certificates above it, up to the root registered with DPS.
    pub ca_chain_file: Option<PathBuf>,
    /// `ca_key_file`: the signing CA's private key (resolved).
    pub ca_key_file: PathBuf,
    /// `ca_key_passphrase_file`: the passphrase of an encrypted `ca_key_file`.
    pub ca_key_passphrase_file: Option<PathBuf>,
    /// `cert_days`: how long each device certificate is valid.
    pub cert_days: u32,
    /// `key_type`: the device key pair's type.
    pub key_type: DeviceKeyType,
    /// Where the device's certificate and key go.
    pub storage: CredentialStorage,
}

/// The default of `[dps] cert_days`: ten years, a device's service life. Certificates end
/// with the signing CA anyway (`station check` warns when they would).
pub const DEFAULT_CERT_DAYS: u32 = 3650;

/// The longest registration ID X.509 attestation allows: the certificate's subject common name
/// holds at most 64 characters (RFC 5280, `ub-common-name`).
pub const MAX_CN_LEN: usize = 64;

/// The longest `[dps] cert_days` accepted: 100 years.
pub const MAX_CERT_DAYS: u32 = 36_500;

/// `[dps] key_type`: the key pair each X.509 device gets. Plain data; the station maps it to
/// the issuer's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceKeyType {
    /// `ecdsa-p256` (the default).
    #[default]
    EcdsaP256,
    /// `rsa-2048`.
    Rsa2048,
}

impl DeviceKeyType {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKeyType::EcdsaP256 => "ecdsa-p256",
            DeviceKeyType::Rsa2048 => "rsa-2048",
        }
    }
}

/// Where an X.509 device's certificate and private key are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialStorage {
    /// In the NVS partition, through the `{device_cert}`, `{device_private_key}` and
    /// `{ca_chain}` placeholders of `[nvs.entries]`.
    Nvs,
    /// In an `esp_secure_cert` partition (`[secure_cert]`), flashed in the same session.
    SecureCert(SecureCertConfig),
}

/// `[secure_cert]`: the `esp_secure_cert` partition of the firmware's partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureCertConfig {
    /// Its flash offset.
    pub offset: u32,
    /// Its size; the image is padded to it with `0xFF`.
    pub size: u32,
}

/// The default `[secure_cert] size`: 8 KiB, as in Espressif's partition tables.
pub const DEFAULT_SECURE_CERT_SIZE: u32 = 0x2000;

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
    /// `{device_cert}`: the device's X.509 certificate, PEM.
    DeviceCert,
    /// `{device_private_key}`: the device's private key, PEM (a secret).
    DevicePrivateKey,
    /// `{ca_chain}`: the signing CA and the certificates above it, PEM.
    CaChain,
}

impl Field {
    /// The placeholder's name, without braces.
    pub fn name(self) -> &'static str {
        match self {
            Field::IdScope => "id_scope",
            Field::RegistrationId => "registration_id",
            Field::DeviceKey => "device_key",
            Field::SecondaryDeviceKey => "secondary_device_key",
            Field::DpsHost => "dps_host",
            Field::Mac => "mac",
            Field::StationId => "station_id",
            Field::DeviceCert => "device_cert",
            Field::DevicePrivateKey => "device_private_key",
            Field::CaChain => "ca_chain",
        }
    }

    /// The placeholders only symmetric-key attestation fills.
    pub const SYMMETRIC_KEY: [Field; 2] = [Field::DeviceKey, Field::SecondaryDeviceKey];

    /// The placeholders only X.509 attestation fills.
    pub const X509: [Field; 3] = [Field::DeviceCert, Field::DevicePrivateKey, Field::CaChain];

    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "id_scope" => Field::IdScope,
            "registration_id" => Field::RegistrationId,
            "device_key" => Field::DeviceKey,
            "secondary_device_key" => Field::SecondaryDeviceKey,
            "dps_host" => Field::DpsHost,
            "mac" => Field::Mac,
            "station_id" => Field::StationId,
            "device_cert" => Field::DeviceCert,
            "device_private_key" => Field::DevicePrivateKey,
            "ca_chain" => Field::CaChain,
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

/// The per-device values an entry template draws on; those an attestation kind does not fill
/// are empty (load-time validation refuses templates that use them).
#[derive(Clone, Copy, Default)]
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
    /// `{device_cert}`.
    pub device_cert: &'a str,
    /// `{device_private_key}`.
    pub device_private_key: &'a str,
    /// `{ca_chain}`.
    pub ca_chain: &'a str,
}

impl std::fmt::Debug for TemplateValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateValues")
            .field("registration_id", &self.registration_id)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

impl<'a> TemplateValues<'a> {
    /// The value of one placeholder.
    fn get(&self, field: Field) -> &'a str {
        match field {
            Field::IdScope => self.id_scope,
            Field::RegistrationId => self.registration_id,
            Field::DeviceKey => self.device_key,
            Field::SecondaryDeviceKey => self.secondary_device_key,
            Field::DpsHost => self.dps_host,
            Field::Mac => self.mac,
            Field::StationId => self.station_id,
            Field::DeviceCert => self.device_cert,
            Field::DevicePrivateKey => self.device_private_key,
            Field::CaChain => self.ca_chain,
        }
    }
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
    ///
    /// The string is allocated at its final size, so that a secret placed in it (a device key,
    /// a private key) leaves no copy behind in a buffer outgrown on the way.
    pub fn render(&self, values: &TemplateValues<'_>) -> String {
        let piece = |piece: &ValuePiece| -> usize {
            match piece {
                ValuePiece::Text(text) => text.len(),
                ValuePiece::Field(field) => values.get(*field).len(),
            }
        };
        let mut out = String::with_capacity(self.pieces.iter().map(piece).sum());
        for piece in &self.pieces {
            out.push_str(match piece {
                ValuePiece::Text(text) => text,
                ValuePiece::Field(field) => values.get(*field),
            });
        }
        out
    }

    /// The placeholders the template uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.pieces.iter().filter_map(|piece| match piece {
            ValuePiece::Field(field) => Some(*field),
            ValuePiece::Text(_) => None,
        })
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
    /// Whether any template entry uses `field`.
    pub fn uses(&self, field: Field) -> bool {
        self.entries
            .iter()
            .any(|entry| matches!(&entry.value, EntryValue::Template(t) if t.uses(field)))
    }

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
        let key = [
            Field::DeviceKey,
            Field::SecondaryDeviceKey,
            Field::DevicePrivateKey,
        ];
        if key.into_iter().any(|f| template.uses(f)) {
            return Err(
                "a pattern may not name a device key: the firmware must never print its key"
                    .to_owned(),
            );
        }
        if let Some(field) = [Field::DeviceCert, Field::CaChain]
            .into_iter()
            .find(|&f| template.uses(f))
        {
            return Err(format!(
                "{{{}}} is a PEM of many lines; a pattern is looked for in one line",
                field.name()
            ));
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
