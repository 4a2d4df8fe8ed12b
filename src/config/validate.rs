//! From [`super::raw`] to [`super::Config`]: every value checked, every path resolved against
//! the file's directory, and the image proven to fit for every device. Errors name the line.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{ConfigError, Location};
use super::raw::{
    RawAudit, RawBoot, RawConfig, RawDps, RawDpsService, RawEntryValue, RawFirmware, RawHub,
    RawNvs, RawSecureCert, RawSerial, RawStation,
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

/// `[boot] timeout` bounds.
const MIN_BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// `[boot] keep_log` bounds, in bytes.
const MIN_BOOT_KEEP_LOG: usize = 256;
const MAX_BOOT_KEEP_LOG: usize = 1 << 20;
/// At most this many `[boot] expect` or `fail` patterns, each at most this many characters.
const MAX_BOOT_PATTERNS: usize = 32;
const MAX_BOOT_PATTERN_LEN: usize = 256;

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
        let dps_span = raw.dps.span();
        let secure_cert_span = raw.secure_cert.as_ref().map(Spanned::span);
        let attestation_span = raw
            .dps
            .get_ref()
            .attestation
            .as_ref()
            .map_or(dps_span.clone(), Spanned::span);
        let dps = self.dps(raw.dps.into_inner(), dps_span.clone(), raw.secure_cert)?;
        let serial = self.serial(raw.serial)?;
        let nvs_span = raw.nvs.span();
        let raw_nvs = raw.nvs.into_inner();
        let size_span = raw_nvs
            .size
            .as_ref()
            .map_or(nvs_span.clone(), Spanned::span);
        let nvs = self.nvs(raw_nvs, &dps)?;
        self.check_credential_storage(&dps, &nvs, attestation_span)?;
        if let (Some(span), Some(CredentialStorage::SecureCert(partition))) =
            (secure_cert_span, dps.attestation.x509().map(|x| x.storage))
        {
            let end = u64::from(partition.offset) + u64::from(partition.size);
            if u64::from(partition.offset) < u64::from(nvs.offset) + u64::from(nvs.size)
                && u64::from(nvs.offset) < end
            {
                return Err(self.bad_value(
                    span,
                    "[secure_cert]",
                    format!(
                        "the partition at {:#x}..{end:#x} overlaps the NVS partition at {:#x}..{:#x}",
                        partition.offset,
                        nvs.offset,
                        nvs.offset + nvs.size
                    ),
                    "Copy both partitions' offsets and sizes from the firmware's partition table; they are separate partitions.",
                ));
            }
        }
        let firmware = self.firmware(raw.firmware, &nvs, &dps)?;
        let hub = self.hub(raw.hub, &dps)?;
        let boot = self.boot(raw.boot, &serial)?;
        let audit = self.audit(raw.audit, &dps)?;
        let mut warnings = self.certificate_warnings(&nvs);
        // A shared server's files are not on the station: only a SQLite file's directory counts.
        if let crate::config::Database::Sqlite(database) = &station.database
            && audit.checkpoint_file.parent() == database.parent()
        {
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
            hub,
            audit,
            http: HttpConfig {
                token_file: raw
                    .http
                    .and_then(|http| http.into_inner().token_file)
                    .map(|f| self.resolve(f.get_ref())),
            },
            warnings,
            boot,
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
        Ok(StationConfig {
            id: id.clone(),
            database: self.database(raw.database, raw.database_password_file)?,
        })
    }

    /// `[station] database`: a SQLite path, or a `postgres://` URL that holds no password.
    fn database(
        &self,
        database: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
    ) -> Result<Database, ConfigError> {
        let Some(database) = database else {
            return match password_file {
                Some(file) => Err(self.password_file_without_server(file.span())),
                None => Ok(Database::Sqlite(self.resolve("station.db"))),
            };
        };
        let text = database.get_ref();
        let lower = text.to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            if lower.contains("://") {
                return Err(self.bad_value(
                    database.span(),
                    "[station] database",
                    format!("{:?} is neither a file nor a postgres:// URL", redact_url(text)),
                    "Write a SQLite file (\"station.db\") or a PostgreSQL URL (\"postgres://line1_st1@db.factory.local/station\").",
                ));
            }
            if let Some(file) = password_file {
                return Err(self.password_file_without_server(file.span()));
            }
            return Ok(Database::Sqlite(self.resolve(text)));
        }
        let redacted = redact_url(text);
        if redacted != *text {
            return Err(self.bad_value(
                database.span(),
                "[station] database",
                format!("the URL {redacted} holds a password, and station.toml is no place for one"),
                "Remove the password from the URL and put it alone in a file of mode 0600 named by [station] database_password_file, or in PGPASSWORD or ~/.pgpass.",
            ));
        }
        Ok(Database::Postgres {
            url: text.clone(),
            password_file: password_file.map(|file| self.resolve(file.get_ref())),
        })
    }

    fn password_file_without_server(&self, span: Range<usize>) -> ConfigError {
        self.bad_value(
            span,
            "[station] database_password_file",
            "a password file is set but [station] database is a SQLite file",
            "Remove database_password_file, or set [station] database to the postgres:// URL it belongs to.",
        )
    }

    fn dps(
        &self,
        raw: RawDps,
        span: Range<usize>,
        secure_cert: Option<Spanned<RawSecureCert>>,
    ) -> Result<DpsConfig, ConfigError> {
        let transport = match &raw.transport {
            None => DpsTransport::default(),
            Some(name) => match name.get_ref().as_str() {
                "https" => DpsTransport::Https,
                "mqtt" => DpsTransport::Mqtt,
                other => {
                    return Err(self.bad_value(
                        name.span(),
                        "[dps] transport",
                        format!("`{other}` is not a DPS transport"),
                        "Use \"https\" (the DPS device REST API) or \"mqtt\" (MQTT over TLS on port 8883), whichever the firmware uses.",
                    ));
                }
            },
        };
        let enrollment = match &raw.enrollment {
            None => Enrollment::default(),
            Some(name) => match name.get_ref().as_str() {
                "group" => Enrollment::Group,
                "individual" => Enrollment::Individual,
                other => {
                    return Err(self.bad_value(
                        name.span(),
                        "[dps] enrollment",
                        format!("`{other}` is not an enrollment kind"),
                        "Use \"group\" (units belong to the enrollment group) or \"individual\" (the station creates an individual enrollment with a random key for each unit, through [dps.service]).",
                    ));
                }
            },
        };
        let enrollment_span = raw.enrollment.as_ref().map_or(span.clone(), Spanned::span);
        let attestation = self.attestation(&raw, span, secure_cert, enrollment)?;
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
        let verify_url = match (&raw.verify_url, transport) {
            (None, DpsTransport::Https) => format!("https://{endpoint}"),
            (None, DpsTransport::Mqtt) => {
                format!("mqtts://{endpoint}:{}", crate::mqtt::DEFAULT_PORT)
            }
            (Some(url), DpsTransport::Https) => {
                let text = url.get_ref();
                if !(text.starts_with("https://") || text.starts_with("http://"))
                    || text.len() > 2048
                    || text.contains(char::is_whitespace)
                {
                    return Err(self.bad_value(
                        url.span(),
                        "[dps] verify_url",
                        format!(
                            "{:?} is not an http(s) URL, and [dps] transport is \"https\"",
                            shown(text)
                        ),
                        "Write a URL such as \"http://127.0.0.1:8443\" (a local DPS emulator) or leave it out to use https://{endpoint}.",
                    ));
                }
                text.trim_end_matches('/').to_owned()
            }
            (Some(url), DpsTransport::Mqtt) => {
                let text = url.get_ref();
                crate::mqtt::Endpoint::parse(text)
                    .map_err(|problem| {
                        self.bad_value(
                            url.span(),
                            "[dps] verify_url",
                            format!("{problem}, and [dps] transport is \"mqtt\""),
                            "Write mqtts://HOST:PORT (a local emulator's MQTT URL, which `station sim dps` prints) or leave it out to use mqtts://{endpoint}:8883; DPS takes MQTT over TLS only.",
                        )
                    })?
                    .url()
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
        if let Attestation::X509(_) = attestation {
            // DPS takes the certificate's subject CN as the registration ID, and X.509 caps a
            // CN at 64 characters (RFC 5280 ub-common-name).
            let longest = registration_id.rendered_len();
            if longest > MAX_CN_LEN {
                return Err(self.bad_value(
                    raw.registration_id.span(),
                    "[dps] registration_id",
                    format!(
                        "it gives registration IDs of {longest} characters, but with attestation = \"x509\" the registration ID is the certificate's common name, which X.509 limits to {MAX_CN_LEN}"
                    ),
                    "Shorten the template's fixed text so that it stays within 64 characters with the 12 digits of {mac}.",
                ));
            }
            // Over MQTT the URL is mqtts:// (checked above): TLS, so the certificate goes.
            if raw.pre_verify
                && transport == DpsTransport::Https
                && !verify_url.starts_with("https://")
            {
                return Err(self.bad_value(
                    raw.verify_url.as_ref().map_or(raw.registration_id.span(), Spanned::span),
                    "[dps] verify_url",
                    format!("{verify_url:?} is not https, and with attestation = \"x509\" a device proves its identity in the TLS handshake"),
                    "Use an https:// URL (a local DPS emulator: `station sim dps --attestation x509 --tls-dir DIR` serves one, trusted through [dps] ca_file).",
                ));
            }
        }
        let service = raw.service.map(|s| self.service(s)).transpose()?;
        if enrollment == Enrollment::Individual && service.is_none() {
            return Err(self.bad_value(
                enrollment_span,
                "[dps] enrollment",
                "with enrollment = \"individual\" the station creates each unit's enrollment through the DPS service API, and there is no [dps.service] section",
                "Add [dps.service] with endpoint = \"https://<your-dps>.azure-devices-provisioning.net\" and policy_key_file (a shared access policy with Enrollment write), or use enrollment = \"group\".",
            ));
        }
        Ok(DpsConfig {
            id_scope: id_scope.clone(),
            endpoint,
            verify_url,
            attestation,
            registration_id,
            pre_verify: raw.pre_verify,
            api_version,
            ca_file: raw.ca_file.map(|f| self.resolve(f.get_ref())),
            verify_timeout: std::time::Duration::from_secs(verify_timeout),
            payload,
            transport,
            enrollment,
            service,
        })
    }

    /// `[dps.service]`: an http(s) endpoint without a path, a policy name, the key file.
    fn service(&self, raw: Spanned<RawDpsService>) -> Result<DpsServiceConfig, ConfigError> {
        let raw = raw.into_inner();
        let text = raw.endpoint.get_ref().trim_end_matches('/');
        let host = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains('/') || h.contains(char::is_whitespace)) {
            return Err(self.bad_value(
                raw.endpoint.span(),
                "[dps.service] endpoint",
                format!("{text:?} is not the URL of a DPS service endpoint"),
                "Write https://<your-dps>.azure-devices-provisioning.net (Azure portal: DPS > Overview > Service endpoint), without a path; a local emulator's http://127.0.0.1:PORT for tests.",
            ));
        }
        let policy = match raw.policy {
            None => DEFAULT_SERVICE_POLICY.to_owned(),
            Some(name) => {
                let text = name.get_ref();
                if text.is_empty()
                    || text.len() > 64
                    || !text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(self.bad_value(
                        name.span(),
                        "[dps.service] policy",
                        format!("{text:?} is not a shared access policy name"),
                        "Give the policy's name as the portal lists it (DPS > Shared access policies), e.g. \"provisioningserviceowner\".",
                    ));
                }
                text.clone()
            }
        };
        Ok(DpsServiceConfig {
            endpoint: text.to_owned(),
            policy,
            policy_key_file: self.resolve(raw.policy_key_file.get_ref()),
            api_version: raw
                .api_version
                .map_or_else(|| DEFAULT_API_VERSION.to_owned(), Spanned::into_inner),
        })
    }

    /// `[hub]`: a test message needs DPS's assignment, and its URL follows the transport.
    fn hub(&self, raw: Option<Spanned<RawHub>>, dps: &DpsConfig) -> Result<HubConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(HubConfig::default());
        };
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.test_message && !dps.pre_verify {
            return Err(self.bad_value(
                span,
                "[hub] test_message",
                "the test message goes to the hub DPS assigns the unit, and [dps] pre_verify is false",
                "Set [dps] pre_verify = true, or test_message = false.",
            ));
        }
        let hub_url = match raw.hub_url {
            None => None,
            Some(url) => {
                let text = url.get_ref().trim_end_matches('/');
                let fits = match dps.transport {
                    DpsTransport::Https => text
                        .strip_prefix("https://")
                        .or_else(|| text.strip_prefix("http://"))
                        .is_some_and(|h| !h.is_empty() && !h.contains('/')),
                    DpsTransport::Mqtt => crate::mqtt::Endpoint::parse(text).is_ok(),
                };
                if !fits {
                    return Err(self.bad_value(
                        url.span(),
                        "[hub] hub_url",
                        format!(
                            "{text:?} is not a {} URL without a path, and [dps] transport is \"{}\"",
                            match dps.transport {
                                DpsTransport::Https => "http(s)://",
                                DpsTransport::Mqtt => "mqtts://",
                            },
                            dps.transport.as_str()
                        ),
                        "Leave it out to send to the hub DPS assigns; for a local emulator give the hub URL `station sim dps` prints for the transport (https://127.0.0.1:PORT or mqtts://127.0.0.1:PORT).",
                    ));
                }
                Some(text.to_owned())
            }
        };
        Ok(HubConfig {
            test_message: raw.test_message,
            hub_url,
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
        // Beside the station's secret (the group key, the CA key for X.509, the service policy
        // key for individual enrollments): the directory its secrets live in, and not the
        // database's.
        let secret = match &dps.attestation {
            Attestation::SymmetricKey(keys) => Some(&keys.group_key_file),
            Attestation::X509(x509) => Some(&x509.ca_key_file),
            Attestation::IndividualKey => dps.service.as_ref().map(|s| &s.policy_key_file),
        };
        let secrets = secret
            .and_then(|path| path.parent())
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

    /// `[dps] attestation` and its keys: the group key files for `symmetric-key`, the CA files
    /// and issuing policy for `x509` (with `[secure_cert]`, when present, as its storage). A
    /// key that belongs to the other kind is refused rather than ignored.
    fn attestation(
        &self,
        raw: &RawDps,
        dps_span: Range<usize>,
        secure_cert: Option<Spanned<RawSecureCert>>,
        enrollment: Enrollment,
    ) -> Result<Attestation, ConfigError> {
        let kind = raw
            .attestation
            .as_ref()
            .map_or(ATTESTATION_SYMMETRIC_KEY, |a| a.get_ref().as_str());
        let attestation_span = raw.attestation.as_ref().map_or(dps_span, Spanned::span);
        let symmetric_keys = [
            ("group_key_file", raw.group_key_file.as_ref()),
            (
                "secondary_group_key_file",
                raw.secondary_group_key_file.as_ref(),
            ),
        ];
        let x509_files = [
            ("ca_cert_file", raw.ca_cert_file.as_ref()),
            ("ca_chain_file", raw.ca_chain_file.as_ref()),
            ("ca_key_file", raw.ca_key_file.as_ref()),
            (
                "ca_key_passphrase_file",
                raw.ca_key_passphrase_file.as_ref(),
            ),
            ("key_type", raw.key_type.as_ref()),
        ];
        let wrong_kind = |key: &str, span: Range<usize>, belongs: &str| {
            self.bad_value(
                span,
                &format!("[dps] {key}"),
                format!("it belongs to attestation = \"{belongs}\", and this station uses attestation = \"{kind}\""),
                format!("Remove {key}, or set [dps] attestation = \"{belongs}\" if the enrollment group uses it."),
            )
        };
        match kind {
            ATTESTATION_SYMMETRIC_KEY => {
                for (key, value) in x509_files {
                    if let Some(value) = value {
                        return Err(wrong_kind(key, value.span(), ATTESTATION_X509));
                    }
                }
                if let Some(days) = &raw.cert_days {
                    return Err(wrong_kind("cert_days", days.span(), ATTESTATION_X509));
                }
                if let Some(section) = &secure_cert {
                    return Err(self.bad_value(
                        section.span(),
                        "[secure_cert]",
                        "the esp_secure_cert partition holds X.509 credentials, and this station uses attestation = \"symmetric-key\"",
                        "Remove [secure_cert], or set [dps] attestation = \"x509\" with the CA files.",
                    ));
                }
                if enrollment == Enrollment::Individual {
                    // Each unit gets a random key of its own: a group key would be unused, and
                    // an unused secret on the station is one too many.
                    for (key, value) in symmetric_keys {
                        if let Some(value) = value {
                            return Err(self.bad_value(
                                value.span(),
                                &format!("[dps] {key}"),
                                "with enrollment = \"individual\" every unit gets a random key of its own, and no group key is used",
                                format!("Remove {key}, or set [dps] enrollment = \"group\" if the units belong to the enrollment group."),
                            ));
                        }
                    }
                    return Ok(Attestation::IndividualKey);
                }
                let Some(group_key_file) = &raw.group_key_file else {
                    return Err(ConfigError::MissingKey {
                        at: self.at(attestation_span),
                        message: "missing field `group_key_file` in [dps] (required with attestation = \"symmetric-key\", the default)".to_owned(),
                    });
                };
                Ok(Attestation::SymmetricKey(SymmetricKeyConfig {
                    group_key_file: self.resolve(group_key_file.get_ref()),
                    secondary_group_key_file: raw
                        .secondary_group_key_file
                        .as_ref()
                        .map(|f| self.resolve(f.get_ref())),
                }))
            }
            ATTESTATION_X509 => {
                if enrollment == Enrollment::Individual {
                    return Err(self.bad_value(
                        raw.enrollment.as_ref().map_or(attestation_span.clone(), Spanned::span),
                        "[dps] enrollment",
                        "individual enrollments are made for symmetric-key units only, and [dps] attestation is \"x509\"",
                        "Use enrollment = \"group\" with attestation = \"x509\" (the group trusts the signing CA), or attestation = \"symmetric-key\" for individual enrollments.",
                    ));
                }
                for (key, value) in symmetric_keys {
                    if let Some(value) = value {
                        return Err(wrong_kind(key, value.span(), ATTESTATION_SYMMETRIC_KEY));
                    }
                }
                let required = |key: &str, value: Option<&Spanned<String>>| {
                    value.map(|v| self.resolve(v.get_ref())).ok_or_else(|| {
                        ConfigError::MissingKey {
                            at: self.at(attestation_span.clone()),
                            message: format!(
                                "missing field `{key}` in [dps] (required with attestation = \"x509\")"
                            ),
                        }
                    })
                };
                let ca_cert_file = required("ca_cert_file", raw.ca_cert_file.as_ref())?;
                let ca_key_file = required("ca_key_file", raw.ca_key_file.as_ref())?;
                let cert_days = match &raw.cert_days {
                    None => DEFAULT_CERT_DAYS,
                    Some(days) => u32::try_from(*days.get_ref())
                        .ok()
                        .filter(|d| (1..=MAX_CERT_DAYS).contains(d))
                        .ok_or_else(|| {
                            self.bad_value(
                                days.span(),
                                "[dps] cert_days",
                                format!("{} is outside 1 to {MAX_CERT_DAYS} days", days.get_ref()),
                                format!("Give how many days each device certificate stays valid, e.g. {DEFAULT_CERT_DAYS} (ten years); it ends with the signing CA in any case."),
                            )
                        })?,
                };
                let key_type = match &raw.key_type {
                    None => DeviceKeyType::default(),
                    Some(name) => match name.get_ref().as_str() {
                        "ecdsa-p256" => DeviceKeyType::EcdsaP256,
                        "rsa-2048" => DeviceKeyType::Rsa2048,
                        other => {
                            return Err(self.bad_value(
                                name.span(),
                                "[dps] key_type",
                                format!("`{other}` is not a device key type"),
                                "Use \"ecdsa-p256\" (the default: small, fast, what the ESP32's mbedTLS handles best) or \"rsa-2048\".",
                            ));
                        }
                    },
                };
                let storage = match secure_cert {
                    None => CredentialStorage::Nvs,
                    Some(section) => CredentialStorage::SecureCert(self.secure_cert(section)?),
                };
                Ok(Attestation::X509(X509Config {
                    ca_cert_file,
                    ca_chain_file: raw.ca_chain_file.as_ref().map(|f| self.resolve(f.get_ref())),
                    ca_key_file,
                    ca_key_passphrase_file: raw
                        .ca_key_passphrase_file
                        .as_ref()
                        .map(|f| self.resolve(f.get_ref())),
                    cert_days,
                    key_type,
                    storage,
                }))
            }
            other => Err(self.bad_value(
                attestation_span,
                "[dps] attestation",
                format!("`{other}` is not an attestation kind"),
                "Use \"symmetric-key\" (devices hold keys derived from the enrollment group's key) or \"x509\" (devices hold certificates the station issues with the group's CA), as the enrollment group in DPS is set up.",
            )),
        }
    }

    /// `[secure_cert]`: offset and size 4 KiB-aligned, at least one sector.
    fn secure_cert(&self, raw: Spanned<RawSecureCert>) -> Result<SecureCertConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let offset = self.aligned(&raw.offset, "[secure_cert] offset")?;
        let size = match &raw.size {
            None => DEFAULT_SECURE_CERT_SIZE,
            Some(size) => self.aligned(size, "[secure_cert] size")?,
        };
        if size == 0 {
            return Err(self.bad_value(
                raw.size.as_ref().map_or(span, Spanned::span),
                "[secure_cert] size",
                "the partition is empty",
                "Give the esp_secure_cert partition's size from the firmware's partition table (usually 0x2000).",
            ));
        }
        Ok(SecureCertConfig { offset, size })
    }

    /// Which attestation kind fills `field`, and where X.509 credentials go: the other kind's
    /// placeholders are refused, and so are the X.509 ones when `[secure_cert]` holds the
    /// credentials (they would be stored twice).
    fn check_placeholder(&self, dps: &DpsConfig, field: Field) -> Result<(), String> {
        match &dps.attestation {
            Attestation::SymmetricKey(_) | Attestation::IndividualKey
                if Field::X509.contains(&field) =>
            {
                Err(format!(
                    "{{{}}} holds X.509 credentials, and [dps] attestation is \"symmetric-key\"",
                    field.name()
                ))
            }
            Attestation::X509(_) if Field::SYMMETRIC_KEY.contains(&field) => Err(format!(
                "{{{}}} holds a key derived from a group key, and [dps] attestation is \"x509\"",
                field.name()
            )),
            Attestation::X509(X509Config {
                storage: CredentialStorage::SecureCert(_),
                ..
            }) if Field::X509.contains(&field) => Err(format!(
                "{{{}}}: with [secure_cert] the device's certificate, key and CA chain go to the esp_secure_cert partition, and would be stored twice",
                field.name()
            )),
            _ => Ok(()),
        }
    }

    /// An X.509 device that keeps its credentials in NVS must receive its certificate and key
    /// there.
    fn check_credential_storage(
        &self,
        dps: &DpsConfig,
        nvs: &NvsConfig,
        attestation_span: Range<usize>,
    ) -> Result<(), ConfigError> {
        let Some(X509Config {
            storage: CredentialStorage::Nvs,
            ..
        }) = dps.attestation.x509()
        else {
            return Ok(());
        };
        for field in [Field::DeviceCert, Field::DevicePrivateKey] {
            if !nvs.uses(field) {
                return Err(self.bad_value(
                    attestation_span,
                    "[dps] attestation",
                    format!("with attestation = \"x509\" the device needs its certificate and key, and no [nvs.entries] value uses {{{}}} and there is no [secure_cert] section", field.name()),
                    "Store them in NVS (e.g. cert = \"{device_cert}\", priv_key = \"{device_private_key}\", ca_chain = \"{ca_chain}\" in [nvs.entries]) or in an esp_secure_cert partition ([secure_cert] offset = 0xD000, as in the firmware's partition table).",
                ));
            }
        }
        Ok(())
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
                    for field in template.fields() {
                        self.check_placeholder(dps, field).map_err(|problem| {
                            ConfigError::BadTemplate {
                                at: self.at(value.span()),
                                key: format!("[nvs.entries] {name}"),
                                problem,
                            }
                        })?;
                    }
                    if template.uses(Field::SecondaryDeviceKey)
                        && dps
                            .attestation
                            .symmetric_key()
                            .is_some_and(|keys| keys.secondary_group_key_file.is_none())
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
        dps: &DpsConfig,
    ) -> Result<Vec<FirmwareImage>, ConfigError> {
        let secure_cert = match dps.attestation.x509().map(|x| x.storage) {
            Some(CredentialStorage::SecureCert(partition)) => Some(partition),
            _ => None,
        };
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
            if let Some(partition) = secure_cert.filter(|p| overlaps(p.offset, u64::from(p.size))) {
                return Err(self.bad_value(
                    span,
                    "[[firmware]]",
                    format!(
                        "{} at {offset:#x}..{end:#x} overlaps the esp_secure_cert partition at {:#x}..{:#x}",
                        file.display(),
                        partition.offset,
                        partition.offset + partition.size
                    ),
                    "Check the offsets against the firmware's partition table; [secure_cert] must name the esp_secure_cert partition.",
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

    fn boot(
        &self,
        raw: Option<Spanned<RawBoot>>,
        serial: &SerialConfig,
    ) -> Result<BootConfig, ConfigError> {
        let defaults = BootConfig::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let section = raw.span();
        let raw = raw.into_inner();
        let enabled = raw.enabled.as_ref().is_some_and(|e| *e.get_ref());
        if enabled && !serial.after.boots_application() {
            let span = raw.enabled.as_ref().map_or(section.clone(), Spanned::span);
            return Err(self.bad_value(
                span,
                "[boot] enabled",
                "the boot check needs the unit reset into its application, but [serial] after = \"no-reset\" leaves it in the loader",
                "Set [serial] after = \"hard-reset\" (RTS resets the chip), or \"watchdog-reset\" on ports without DTR/RTS (pseudo-terminals, some jigs).",
            ));
        }
        let baud = match raw.baud {
            None => defaults.baud,
            Some(baud) if !(9_600..=3_000_000).contains(baud.get_ref()) => {
                return Err(self.bad_value(
                    baud.span(),
                    "[boot] baud",
                    format!("{} is outside 9600..=3000000", baud.get_ref()),
                    "Give the application's console rate, CONFIG_ESP_CONSOLE_UART_BAUDRATE in its sdkconfig (ESP-IDF's default is 115200).",
                ));
            }
            Some(baud) => baud.into_inner(),
        };
        let timeout = match raw.timeout {
            None => defaults.timeout,
            Some(seconds) => std::time::Duration::try_from_secs_f64(*seconds.get_ref())
                .ok()
                .filter(|d| (MIN_BOOT_TIMEOUT..=MAX_BOOT_TIMEOUT).contains(d))
                .ok_or_else(|| {
                    self.bad_value(
                        seconds.span(),
                        "[boot] timeout",
                        format!(
                            "{} seconds is outside {} to {}",
                            seconds.get_ref(),
                            MIN_BOOT_TIMEOUT.as_secs_f64(),
                            MAX_BOOT_TIMEOUT.as_secs()
                        ),
                        "Give the seconds from the reset until the firmware has printed every expected line, with room to spare: 10 suits most ESP-IDF applications.",
                    )
                })?,
        };
        let expect = match raw.expect {
            None => defaults.expect,
            Some(list) => self.boot_patterns(list, "[boot] expect")?,
        };
        if enabled && expect.is_empty() {
            return Err(self.bad_value(
                section,
                "[boot] expect",
                "no pattern to wait for: every unit would pass without proving anything",
                "List what the firmware prints once it has read its configuration, e.g. expect = [\"dps: registration id {registration_id}\"].",
            ));
        }
        let fail = match raw.fail {
            None => defaults.fail,
            Some(list) => self.boot_patterns(list, "[boot] fail")?,
        };
        let keep_log = match raw.keep_log {
            None => defaults.keep_log,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (MIN_BOOT_KEEP_LOG..=MAX_BOOT_KEEP_LOG).contains(n))
                .ok_or_else(|| {
                    self.bad_value(
                        n.span(),
                        "[boot] keep_log",
                        format!(
                            "{} bytes is outside {MIN_BOOT_KEEP_LOG} to {MAX_BOOT_KEEP_LOG}",
                            n.get_ref()
                        ),
                        "Give how many bytes of each unit's boot log to keep with its attempt; 4096 holds a whole ESP-IDF boot.",
                    )
                })?,
        };
        Ok(BootConfig {
            enabled,
            baud,
            timeout,
            expect,
            fail,
            keep_log,
        })
    }

    fn boot_patterns(
        &self,
        list: Spanned<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<BootPattern>, ConfigError> {
        if list.get_ref().len() > MAX_BOOT_PATTERNS {
            return Err(self.bad_value(
                list.span(),
                key,
                format!("{} patterns; at most {MAX_BOOT_PATTERNS} are checked", list.get_ref().len()),
                "Keep the few lines that prove the point; each is looked for in every line of every boot.",
            ));
        }
        list.into_inner()
            .into_iter()
            .map(|text| {
                let len = text.get_ref().chars().count();
                if len == 0 || len > MAX_BOOT_PATTERN_LEN {
                    return Err(self.bad_value(
                        text.span(),
                        key,
                        format!("a pattern of {len} characters"),
                        format!("Give 1 to {MAX_BOOT_PATTERN_LEN} characters of one log line, without the timestamp, e.g. \"dps: registration id {{registration_id}}\"."),
                    ));
                }
                BootPattern::parse(text.get_ref()).map_err(|problem| ConfigError::BadTemplate {
                    at: self.at(text.span()),
                    key: key.to_owned(),
                    problem,
                })
            })
            .collect()
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
        // X.509 credentials are left empty here: their lengths depend on the CA, and are
        // checked with a certificate issued by it when the station loads it
        // (Config::check_x509_fit).
        config
            .worst_case_nvs(&X509Lengths::default())
            .map_err(|e| ConfigError::DoesNotFit {
                at: self.at(size_span),
                size: config.nvs.size,
                detail: e.to_string(),
            })
    }
}

/// Stand-ins for one X.509 unit's credentials, of the lengths a certificate issued by the
/// configured CA has: what [`Config::check_x509_fit`] checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct X509Lengths {
    /// `{device_cert}`: PEM text of the longest certificate the CA issues.
    pub device_cert: usize,
    /// `{device_private_key}`: PEM text of the longest device key.
    pub device_private_key: usize,
    /// `{ca_chain}`: PEM text of the chain.
    pub ca_chain: usize,
    /// The esp_secure_cert image holding all three.
    pub secure_cert_image: usize,
}

impl Config {
    /// Builds the NVS image a device would get with values of the longest lengths every
    /// device's values have (X.509 credentials of the given lengths).
    fn worst_case_nvs(&self, x509: &X509Lengths) -> Result<(), nvs::NvsError> {
        let registration_id = "r".repeat(self.dps.registration_id.rendered_len());
        let device_key = "k".repeat(DEVICE_KEY_LEN);
        let [cert, key, chain] =
            [x509.device_cert, x509.device_private_key, x509.ca_chain].map(|n| "c".repeat(n));
        let values = TemplateValues {
            id_scope: &self.dps.id_scope,
            registration_id: &registration_id,
            device_key: &device_key,
            secondary_device_key: &device_key,
            dps_host: &self.dps.endpoint,
            mac: "000000000000",
            station_id: &self.station.id,
            device_cert: &cert,
            device_private_key: &key,
            ca_chain: &chain,
        };
        nvs::check_fits(&self.nvs.render(&values), self.nvs.size as usize)
    }

    /// Checks that an X.509 unit's credentials fit where `[dps]` stores them, given their
    /// lengths with the loaded CA: the NVS strings (at most 3,967 bytes each, a long
    /// `{ca_chain}` being the usual culprit) and partition, or the `[secure_cert]` partition.
    /// A configuration without X.509 attestation passes.
    pub fn check_x509_fit(&self, lengths: &X509Lengths) -> Result<(), ConfigError> {
        let Some(x509) = self.dps.attestation.x509() else {
            return Ok(());
        };
        match x509.storage {
            CredentialStorage::Nvs => {
                self.worst_case_nvs(lengths)
                    .map_err(|e| ConfigError::CredentialsDoNotFit {
                        path: self.path.clone(),
                        place: format!("the NVS partition ([nvs] size = {:#x})", self.nvs.size),
                        detail: e.to_string(),
                    })
            }
            CredentialStorage::SecureCert(partition) => {
                if lengths.secure_cert_image > partition.size as usize {
                    return Err(ConfigError::CredentialsDoNotFit {
                        path: self.path.clone(),
                        place: format!(
                            "the esp_secure_cert partition ([secure_cert] size = {:#x})",
                            partition.size
                        ),
                        detail: format!(
                            "the image takes up to {} bytes",
                            lengths.secure_cert_image
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}
