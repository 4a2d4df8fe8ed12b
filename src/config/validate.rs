//! From [`super::raw`] to [`super::Config`]: every value checked, every path resolved against
//! the file's directory, and the image proven to fit for every device. Errors name the line.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{ConfigError, Location};
use super::raw::{
    RawAudit, RawConfig, RawDps, RawEntryValue, RawFirmware, RawNvs, RawSerial, RawStation,
};
use super::types::*;
use super::{
    DEFAULT_API_VERSION, DEFAULT_DPS_ENDPOINT, DEFAULT_VERIFY_TIMEOUT, MAX_VERIFY_TIMEOUT,
};
use crate::flash::{MAX_FLASH_SIZE, SECTOR_SIZE, region_end};
use crate::identity::RegistrationIdTemplate;
use crate::keys::DEVICE_KEY_LEN;
use crate::nvs::{self, MAX_KEY_LEN as NVS_KEY_MAX, MIN_PARTITION_SIZE};
use crate::support::shown;

/// The smallest NVS partition, as `[nvs] size` is written.
const NVS_MIN_SIZE: u32 = MIN_PARTITION_SIZE as u32;

/// The longest `[serial] probe_interval`: a unit left on its port is noticed within the hour.
const MAX_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest `[audit] checkpoint_every`.
const MAX_CHECKPOINT_EVERY: i64 = 100_000;

/// How close to its expiry a device's root CA gets a warning, in days.
const EXPIRY_WARNING_DAYS: i64 = 90;

/// Now, in Unix seconds (certificates are checked against the station's clock).
fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether an `[nvs.entries]` file is a certificate to check: its key names one (`root_ca`,
/// `ca_cert`, `server_cert`) or its text holds a PEM block.
fn is_certificate(key: &str, contents: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("cert")
        || key.split(['_', '-', '.']).any(|part| part == "ca")
        || contents.contains("-----BEGIN")
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

/// Parses and validates configuration text read from `path`.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, path };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
    ctx.validate(raw)
}

/// The text being validated and its file, for locations and relative paths.
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
        let audit = self.audit(raw.audit, &dps)?;
        let mut warnings = self.certificate_warnings(&nvs);
        if audit.checkpoint_file.parent() == station.database.parent() {
            warnings.push(format!(
                "[audit] checkpoint_file {} is in the database's directory: whoever can rewrite the database there can also remove its checkpoints; keep them elsewhere (the default is beside the group key)",
                audit.checkpoint_file.display()
            ));
        }
        let config = Config {
            path: self.path.to_owned(),
            station,
            dps,
            nvs,
            serial,
            firmware,
            audit,
            warnings,
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
                format!("{:?} is not a usable station id", shown(id)),
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
        if id_scope.is_empty()
            || id_scope.len() > 64
            || !id_scope.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(self.bad_value(
                raw.id_scope.span(),
                "[dps] id_scope",
                format!("{:?} is not a DPS ID scope", shown(id_scope)),
                "Copy the ID Scope from the DPS overview page in the Azure portal (it looks like 0ne00ABCDEF).",
            ));
        }
        let endpoint = match raw.endpoint {
            None => DEFAULT_DPS_ENDPOINT.to_owned(),
            Some(endpoint) => {
                let host = endpoint.get_ref();
                if host.is_empty()
                    || host.len() > 253
                    || host.contains("://")
                    || host.contains('/')
                    || host.contains(char::is_whitespace)
                {
                    return Err(self.bad_value(
                        endpoint.span(),
                        "[dps] endpoint",
                        format!("{:?} is not a host name", shown(host)),
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
                if !(text.starts_with("https://") || text.starts_with("http://"))
                    || text.len() > 2048
                    || text.contains(char::is_whitespace)
                {
                    return Err(self.bad_value(
                        url.span(),
                        "[dps] verify_url",
                        format!("{:?} is not an http(s) URL", shown(text)),
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
        let api_version = match raw.api_version {
            None => DEFAULT_API_VERSION.to_owned(),
            Some(version) => {
                let text = version.get_ref();
                if text.is_empty()
                    || text.len() > 32
                    || !text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Err(self.bad_value(
                        version.span(),
                        "[dps] api_version",
                        format!("{:?} is not an API version", shown(text)),
                        "Leave it out for 2021-10-01, or give a DPS device API version such as \"2021-10-01\".",
                    ));
                }
                version.into_inner()
            }
        };
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

    fn audit(
        &self,
        raw: Option<Spanned<RawAudit>>,
        dps: &DpsConfig,
    ) -> Result<AuditConfig, ConfigError> {
        let raw = raw.map(Spanned::into_inner);
        let (key_file, checkpoint_file, every, syslog) = match raw {
            None => (None, None, None, None),
            Some(raw) => (
                raw.signing_key_file,
                raw.checkpoint_file,
                raw.checkpoint_every,
                raw.syslog,
            ),
        };
        // Beside the group key: the directory the station's secrets live in, and not the
        // database's.
        let secrets = dps
            .group_key_file
            .parent()
            .unwrap_or(Path::new(""))
            .to_owned();
        let checkpoint_every = match every {
            None => DEFAULT_CHECKPOINT_EVERY,
            Some(n) if (1..=MAX_CHECKPOINT_EVERY).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(self.bad_value(
                    n.span(),
                    "[audit] checkpoint_every",
                    format!("{} is outside 1 to {MAX_CHECKPOINT_EVERY}", n.get_ref()),
                    "Give how many audit entries may pass between two checkpoints; 100 is usual (a checkpoint is also written at every batch close and export).",
                ));
            }
        };
        Ok(AuditConfig {
            signing_key_file: key_file.map_or_else(
                || secrets.join("station-signing.key"),
                |f| self.resolve(f.get_ref()),
            ),
            checkpoint_file: checkpoint_file.map_or_else(
                || secrets.join("checkpoints.jsonl"),
                |f| self.resolve(f.get_ref()),
            ),
            checkpoint_every,
            syslog: match syslog {
                None => Some(PathBuf::from("/dev/log")),
                Some(s) if s.get_ref().is_empty() => None,
                Some(s) => Some(self.resolve(s.get_ref())),
            },
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
        if region_end(offset, u64::from(size)).is_none() {
            // Name the key that is out of range: the size alone, or the offset it starts at.
            let (span, key) = match (&raw.size, &raw.offset) {
                (Some(s), _) if *s.get_ref() > MAX_FLASH_SIZE => (s.span(), "[nvs] size"),
                (_, Some(o)) => (o.span(), "[nvs] offset"),
                (Some(s), None) => (s.span(), "[nvs] size"),
                (None, None) => (raw.namespace.span(), "[nvs]"),
            };
            return Err(self.bad_value(
                span,
                key,
                format!(
                    "the partition at offset {offset:#x} of size {size:#x} ends beyond the {} MiB flash an ESP32 module has at most",
                    MAX_FLASH_SIZE >> 20
                ),
                "Copy offset and size of the nvs partition from the firmware's partition table (e.g. offset = 0x9000, size = 0x6000); both are far below 16 MiB.",
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
                    let bytes = crate::file::read_regular(&path, super::ENTRY_FILE_LIMIT).map_err(
                        |source| ConfigError::FileUnreadable {
                            at: self.at(value.span()),
                            key: format!("[nvs.entries] {name}"),
                            path: path.clone(),
                            source,
                        },
                    )?;
                    let key = format!("[nvs.entries] {name}");
                    let contents = String::from_utf8(bytes).map_err(|_| {
                        self.bad_value(
                            value.span(),
                            &key,
                            format!("{} is not UTF-8 text", path.display()),
                            "Entries are stored as strings; give a PEM (text) file, not DER.",
                        )
                    })?;
                    if is_certificate(&name, &contents) {
                        crate::certificate::check_bundle(&contents, now()).map_err(|problem| {
                            ConfigError::BadCertificate {
                                at: self.at(value.span()),
                                key: key.clone(),
                                path: path.clone(),
                                problem: Box::new(problem),
                            }
                        })?;
                    } else if contents.trim().is_empty() {
                        return Err(self.bad_value(
                            value.span(),
                            &key,
                            format!("{} is empty", path.display()),
                            "Name the file whose contents the firmware expects under this key; an empty value is surely a mistake.",
                        ));
                    }
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
                            format!("`{}` is not a USB vendor:product pair", shown(id)),
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
                    .filter(|d| {
                        (std::time::Duration::from_millis(100)..=MAX_PROBE_INTERVAL).contains(d)
                    })
                    .ok_or_else(|| {
                        self.bad_value(
                            s.span(),
                            "[serial] probe_interval",
                            format!(
                                "{} is not 0 or 0.1 to {} seconds",
                                s.get_ref(),
                                MAX_PROBE_INTERVAL.as_secs()
                            ),
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
            // Opened and checked here (a regular file no larger than any flash), read when a
            // station opens.
            let size = crate::file::open_regular(&file, u64::from(MAX_FLASH_SIZE))
                .map_err(|source| ConfigError::FileUnreadable {
                    at: self.at(item.file.span()),
                    key: "[[firmware]] file".to_owned(),
                    path: file.clone(),
                    source,
                })?
                .metadata
                .len();
            if size == 0 {
                return Err(self.bad_value(
                    item.file.span(),
                    "[[firmware]] file",
                    format!("{} is empty", file.display()),
                    "Name the built image (e.g. build/app.bin); an empty file would erase the region and write nothing.",
                ));
            }
            let Some(end) = region_end(offset, size).map(u64::from) else {
                return Err(self.bad_value(
                    item.offset.span(),
                    "[[firmware]] offset",
                    format!(
                        "{} ({size} bytes) at {offset:#x} ends beyond the {} MiB flash an ESP32 module has at most",
                        file.display(),
                        MAX_FLASH_SIZE >> 20
                    ),
                    "Copy the offset from the firmware's partition table (e.g. 0x10000 for the app).",
                ));
            };
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

    /// A warning for each certificate of an `[nvs.entries]` file that expires within
    /// [`EXPIRY_WARNING_DAYS`] (already checked valid at load).
    fn certificate_warnings(&self, nvs: &NvsConfig) -> Vec<String> {
        let now = now();
        let mut warnings = Vec::new();
        for entry in &nvs.entries {
            let EntryValue::File { path, contents } = &entry.value else {
                continue;
            };
            if !is_certificate(&entry.key, contents) {
                continue;
            }
            let Ok(bundle) = crate::certificate::check_bundle(contents, now) else {
                continue;
            };
            for certificate in bundle.expiring_within(now, EXPIRY_WARNING_DAYS * 86_400) {
                warnings.push(format!(
                    "[nvs.entries] {}: {}: the certificate {} expires on {}, within {EXPIRY_WARNING_DAYS} days: devices flashed with it will stop trusting their servers then; replace it with its successor",
                    entry.key,
                    path.display(),
                    certificate.subject,
                    certificate.expiry_date()
                ));
            }
        }
        warnings
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
