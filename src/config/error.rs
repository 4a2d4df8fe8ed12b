//! Errors loading `station.toml`: each names the file and line ([`Location`]) and the fix.

use std::fmt;
use std::path::PathBuf;

use crate::identity::IdentityError;
use crate::nvs::MAX_KEY_LEN as NVS_KEY_MAX;

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
            "Entry values may use {{id_scope}}, {{registration_id}}, {{device_key}}, {{secondary_device_key}}, {{dps_host}}, {{mac}} and {{station_id}}; [boot] patterns the same but no key; write a literal brace nowhere."
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
    /// An X.509 unit's certificate, key and CA chain, as the loaded CA issues them, cannot fit
    /// where the configuration stores them.
    #[error("{path}: the X.509 credentials do not fit {place}: {detail}")]
    #[diagnostic(
        code(station::config::credentials_do_not_fit),
        help(
            "An NVS string holds at most 3967 bytes: a long {{ca_chain}} (several certificates, RSA keys) does not fit one; store fewer certificates (the device needs the chain only up to the CA registered with DPS), or use an esp_secure_cert partition ([secure_cert]) of a larger size. Otherwise raise [nvs] size or [secure_cert] size, with the firmware's partition table."
        )
    )]
    CredentialsDoNotFit {
        /// The configuration file.
        path: PathBuf,
        /// Which partition.
        place: String,
        /// Which value fails and by how much.
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
    /// A certificate file (an `[nvs.entries]` root CA) that no device could use.
    #[error("{at}: {key}: {path}: {problem}")]
    #[diagnostic(
        code(station::config::bad_certificate),
        help(
            "Give the PEM of the root CA the device's TLS connections chain to: for Azure IoT Hub and DPS that is DigiCert Global Root G2 (DigiCertGlobalRootG2.crt.pem from DigiCert), current and unexpired."
        )
    )]
    BadCertificate {
        /// Where.
        at: Location,
        /// The key naming the file.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// What is wrong.
        problem: Box<crate::certificate::CertificateProblem>,
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
