//! The crate-wide error: every failure carries a stable code, an operator hint and an exit code.
//!
//! Each module has its own `thiserror` enum whose variants carry a `miette` diagnostic code
//! (`station::keys::world_readable`, `station::nvs::does_not_fit`, ...) and a `help` sentence for
//! the operator. Codes are stable: they are stored in attempts and the audit log, and tests assert
//! on them rather than on wording.

use miette::Diagnostic;

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any failure of the station.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum Error {
    /// `station.toml` could not be read or is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The group key file is missing, exposed or malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A MAC or registration ID is malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// An NVS image could not be built or decoded.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Nvs(#[from] crate::nvs::NvsError),
    /// The X.509 signing CA is unusable, or issuing a device certificate failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    X509(#[from] crate::x509::X509Error),
    /// An esp_secure_cert image could not be built or decoded.
    #[error(transparent)]
    #[diagnostic(transparent)]
    SecureCert(#[from] crate::secure_cert::SecureCertError),
    /// The database refused or failed an operation.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A device on a serial port failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// The pipeline refused or failed a unit.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    /// DPS pre-verification failed or refused a unit.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dps(#[from] crate::dps::DpsError),
    /// The test message to the assigned hub failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// The simulator failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sim(#[from] crate::sim::SimError),
    /// A unit's application did not confirm its configuration.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Boot(#[from] crate::boot::BootError),
    /// The dashboard's access token or listening socket.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A file the station needs could not be read or written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Io(#[from] crate::file::FileError),
    /// A MAC in an input file that is not a device's own: the same code as every bad MAC,
    /// with the place it was read.
    #[error("{at}: {source}")]
    #[diagnostic(
        code(station::identity::bad_mac),
        help(
            "Write each device's own MAC as six hex bytes (24:0A:C4:12:34:56, 24-0a-c4-12-34-56 or 240ac4123456); all zeros, ff:ff:ff:ff:ff:ff and multicast addresses are no device's."
        )
    )]
    BadMacAt {
        /// Where (file:line).
        at: String,
        /// The MAC's problem.
        source: crate::identity::IdentityError,
    },
    /// An input file or argument the station cannot use (a CSV row, a path).
    #[error("{what}: {problem}")]
    #[diagnostic(code(station::input::invalid), help("{fix}"))]
    BadInput {
        /// Where (file:line, argument).
        what: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

/// Process exit codes (README "Exit codes").
pub mod exit {
    /// The command did what was asked.
    pub const SUCCESS: u8 = 0;
    /// The operation ran and failed: a unit failed, an audit chain is broken.
    pub const FAILED: u8 = 1;
    /// Bad usage, configuration or key: nothing was attempted.
    pub const USAGE: u8 = 2;
}

impl From<crate::station::StationError> for Error {
    /// The error of the part that failed.
    fn from(error: crate::station::StationError) -> Self {
        use crate::station::StationError;
        match error {
            StationError::Key(e) => Error::Key(e),
            StationError::X509(e) => Error::X509(e),
            StationError::Config(e) => Error::Config(e),
            StationError::Store(e) => Error::Store(e),
            StationError::Dps(e) => Error::Dps(e),
            StationError::File(e) => Error::Io(e),
        }
    }
}

impl From<crate::provision::UnitError> for Error {
    /// The error of the part that failed.
    fn from(error: crate::provision::UnitError) -> Self {
        use crate::provision::UnitError;
        match error {
            UnitError::Device(e) => Error::Device(e),
            UnitError::Nvs(e) => Error::Nvs(e),
            UnitError::X509(e) => Error::X509(e),
            UnitError::SecureCert(e) => Error::SecureCert(e),
            UnitError::Store(e) => Error::Store(e),
            UnitError::Dps(e) => Error::Dps(e),
            UnitError::Provision(e) => Error::Provision(e),
            UnitError::Hub(e) => Error::Hub(e),
            UnitError::Boot(e) => Error::Boot(e),
            UnitError::Identity(e) => Error::Identity(e),
        }
    }
}

impl Error {
    /// Wraps an I/O error with the action and path it concerns.
    pub fn io(
        action: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        Error::Io(crate::file::FileError::new(action, path, source))
    }

    /// The stable code, e.g. `station::keys::world_readable`.
    pub fn code(&self) -> String {
        Diagnostic::code(self).map_or_else(|| "station::internal".to_owned(), |c| c.to_string())
    }

    /// The operator hint: what to do about it.
    pub fn hint(&self) -> Option<String> {
        Diagnostic::help(self).map(|h| h.to_string())
    }

    /// The process exit code this error maps to (README "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Key(_)
            | Error::Identity(_)
            | Error::BadMacAt { .. }
            | Error::BadInput { .. } => exit::USAGE,
            Error::Nvs(e) if e.is_input_error() => exit::USAGE,
            Error::X509(e) if e.is_usage_error() => exit::USAGE,
            Error::SecureCert(e) if e.is_input_error() => exit::USAGE,
            Error::Store(e) if e.is_usage_error() => exit::USAGE,
            Error::Provision(e) if e.is_usage_error() => exit::USAGE,
            Error::Sim(e) if e.is_usage_error() => exit::USAGE,
            Error::Dps(e) if e.is_usage_error() => exit::USAGE,
            Error::Http(e) if e.is_usage_error() => exit::USAGE,
            _ => exit::FAILED,
        }
    }
}
