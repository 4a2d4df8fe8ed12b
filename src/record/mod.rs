//! The records the station keeps, as typed values: what crosses the database boundary.
//!
//! [`row`] holds the rows the store returns (batches, units, attempts, audit entries, manifest
//! rows); this module holds the domain values inside them: the pipeline [`Stage`], a unit's
//! [`UnitState`], an attempt's [`AttemptOutcome`], a unit's [`DpsStatus`] and the stable
//! [`ErrorCode`] of a failure, next to [`crate::identity::Mac`],
//! [`crate::identity::RegistrationId`] and [`crate::keys::KeyId`] from
//! the pure cores. Each is stored as its text form in a `TEXT` column and checked when read
//! back, through `sqlx::Type`/`Encode`/`Decode` impls written for any sqlx database whose
//! `String` is text (SQLite today, PostgreSQL next), so no caller re-parses a string the store
//! returns.
//!
//! The store reads and writes these types; [`crate::report`] renders them. This module depends
//! only on the pure cores.

pub mod row;
pub mod view;

use std::fmt;
use std::str::FromStr;

use crate::identity::{Mac, RegistrationId};
use crate::keys::KeyId;

pub use row::{
    Attempt, AuditEntry, Batch, BatchStatus, CertificateRow, FailureCount, IssuedCertificate,
    ManifestRow, StationCount, Unit, UnitDps, UnitHub, UnitRevocation,
};
pub use view::{MinuteCount, PortActivity};

/// A stored value that is not one the station writes (a hand-edited row, a newer station's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}")]
pub struct UnknownValue {
    /// What was expected (`pipeline stage`, ...).
    pub what: &'static str,
    /// What was found.
    pub value: String,
}

/// Declares a fieldless enum stored by name: `as_str`, `Display`, `FromStr` and `Serialize`
/// all use the stored names.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_owned(),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// A stage of the pipeline (DESIGN.md section 1); stored with failed attempts and with the
    /// attempt a crash interrupted.
    pub enum Stage ("pipeline stage") {
        /// Open the port, reset into the ROM loader, sync, detect the chip, start the stub.
        Connect = "connect",
        /// Read MAC, chip, revision and flash size; check the chip.
        Identify = "identify",
        /// Form the registration ID and derive the device key (X.509: issue the certificate;
        /// individual enrollment: make a random key).
        Derive = "derive",
        /// Individual enrollment: create the unit's enrollment through the DPS service API.
        Enroll = "enroll",
        /// Build the NVS image.
        Build = "build",
        /// Write firmware and NVS images.
        Flash = "flash",
        /// Compare the MD5 of the written regions.
        Verify = "verify",
        /// Reset into the application and read its boot log until it confirms its
        /// configuration (`[boot]`).
        Boot = "boot",
        /// Pre-verify against DPS.
        Dps = "dps",
        /// Send a test message to the assigned IoT hub as the device.
        Hub = "hub",
        /// Record the unit, attempt and audit entry.
        Record = "record",
    }
}

impl Stage {
    /// Whether a unit whose attempt stopped during this stage may have had its flash changed:
    /// from `flash` on, the device may hold a partly written image.
    pub fn may_have_written(self) -> bool {
        matches!(
            self,
            Stage::Flash | Stage::Verify | Stage::Boot | Stage::Dps | Stage::Hub | Stage::Record
        )
    }
}

named_enum! {
    /// A unit's state: `provisioned` only after its flash was verified and recorded.
    pub enum UnitState ("unit state") {
        /// Flashed, verified and recorded.
        Provisioned = "provisioned",
        /// The last attempt that may have touched its flash failed.
        Failed = "failed",
    }
}

named_enum! {
    /// How an attempt ended (or that it has not yet).
    pub enum AttemptOutcome ("attempt outcome") {
        /// Running now, or left open by a process that died.
        InProgress = "in-progress",
        /// The unit was verified and recorded provisioned.
        Provisioned = "provisioned",
        /// The attempt failed at its stage.
        Failed = "failed",
        /// The station stopped during the attempt (crash, power loss, kill, drain timeout).
        Interrupted = "interrupted",
    }
}

named_enum! {
    /// A unit's DPS pre-verification status, as stored in `units.dps_status`.
    pub enum DpsStatus ("DPS status") {
        /// Pre-verification is off, or the unit was not verified.
        NotRequested = "not-requested",
        /// DPS could not be asked yet; `station dps verify --pending` retries.
        Pending = "pending",
        /// DPS assigned the device to a hub.
        Assigned = "assigned",
        /// DPS refused or could not assign the device.
        Failed = "failed",
    }
}

named_enum! {
    /// How a unit proves its identity to DPS (`[dps] attestation` when it was written), as
    /// stored in `units.attestation`.
    pub enum Attestation ("attestation kind") {
        /// A device key derived from the enrollment group's key.
        SymmetricKey = "symmetric-key",
        /// A key pair and a certificate issued by the station's signing CA.
        X509 = "x509",
    }
}

named_enum! {
    /// How DPS knows a unit (`[dps] enrollment` when it was written), as stored in
    /// `units.enrollment`.
    pub enum EnrollmentKind ("enrollment kind") {
        /// Through the enrollment group.
        Group = "group",
        /// Through an individual enrollment the station created, with a random key.
        Individual = "individual",
    }
}

named_enum! {
    /// The outcome of a unit's test message to its hub (`[hub] test_message`), as stored in
    /// `units.hub_status`.
    pub enum HubStatus ("hub status") {
        /// No test message was asked for (or DPS did not assign the unit).
        NotRequested = "not-requested",
        /// The hub accepted the message.
        Accepted = "accepted",
        /// The hub refused the message, or could not be reached.
        Failed = "failed",
    }
}

// `named_enum!` derives no `Default`, so the default is written out.
#[allow(clippy::derivable_impls)]
impl Default for EnrollmentKind {
    fn default() -> Self {
        EnrollmentKind::Group
    }
}

/// The code of an attempt the station never finished (crash, power loss, kill, drain timeout).
pub const INTERRUPTED: &str = "station::line::interrupted";

/// A stable error code, `station::<module>::<code>`: stored with failed attempts and in the
/// audit log, never changing meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(String);

impl ErrorCode {
    /// The code of a diagnostic (every station error has one); `station::internal` otherwise.
    pub fn of(diagnostic: &dyn miette::Diagnostic) -> ErrorCode {
        ErrorCode(
            diagnostic
                .code()
                .map_or_else(|| "station::internal".to_owned(), |c| c.to_string()),
        )
    }

    /// [`INTERRUPTED`].
    pub fn interrupted() -> ErrorCode {
        ErrorCode(INTERRUPTED.to_owned())
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ErrorCode {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = s.starts_with("station::")
            && s.split("::").all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if well_formed {
            Ok(ErrorCode(s.to_owned()))
        } else {
            Err(UnknownValue {
                what: "station error code",
                value: s.to_owned(),
            })
        }
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Stores a type as its `Display` text in a `TEXT` column and reads it back through `FromStr`,
/// on any sqlx database whose `String` is text: a value that does not parse is a decode error,
/// never a string handed on.
macro_rules! text_column {
    ($($ty:ty),+ $(,)?) => {$(
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            String: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<'q, DB>>::encode(self.to_string(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<String as sqlx::Decode<'r, DB>>::decode(value)?.parse::<$ty>()?)
            }
        }
    )+};
}

text_column!(
    Mac,
    RegistrationId,
    KeyId,
    ErrorCode,
    Stage,
    UnitState,
    AttemptOutcome,
    DpsStatus,
    Attestation,
    EnrollmentKind,
    HubStatus,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(*stage));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.to_string().parse::<AttemptOutcome>(), Ok(*outcome));
        }
        assert_eq!("not-requested".parse(), Ok(DpsStatus::NotRequested));
        let err = "flashing".parse::<Stage>().unwrap_err();
        assert_eq!(err.to_string(), "`flashing` is not a pipeline stage");
        assert_eq!(
            serde_json::to_string(&UnitState::Provisioned).unwrap(),
            "\"provisioned\""
        );
    }

    #[test]
    fn only_stages_from_flash_on_may_have_touched_the_flash() {
        let wrote: Vec<&str> = Stage::ALL
            .iter()
            .filter(|s| s.may_have_written())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(wrote, ["flash", "verify", "boot", "dps", "hub", "record"]);
    }

    #[test]
    fn error_codes_are_station_paths() {
        assert_eq!(
            "station::device::port_busy"
                .parse::<ErrorCode>()
                .unwrap()
                .as_str(),
            "station::device::port_busy"
        );
        for bad in [
            "",
            "device::port_busy",
            "station::",
            "station::Device::x",
            "station::a b",
        ] {
            assert!(bad.parse::<ErrorCode>().is_err(), "{bad}");
        }
        assert_eq!(ErrorCode::interrupted().as_str(), INTERRUPTED);
    }

    #[tokio::test]
    async fn typed_values_are_text_in_the_database_and_checked_when_read() {
        use sqlx::Connection as _;
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let mac: Mac = "24:0a:c4:12:34:56".parse().unwrap();
        let (text, back): (String, Mac) = sqlx::query_as("SELECT ?1, ?1")
            .bind(mac)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!((text.as_str(), back), ("24:0a:c4:12:34:56", mac));
        let (stage,): (Stage,) = sqlx::query_as("SELECT ?")
            .bind(Stage::Verify)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(stage, Stage::Verify);
        let err = sqlx::query_as::<_, (Stage,)>("SELECT 'flashing'")
            .fetch_one(&mut db)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a pipeline stage"), "{err}");
        let err = sqlx::query_as::<_, (RegistrationId,)>("SELECT 'Sensor 1'")
            .fetch_one(&mut db)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("registration ID"), "{err}");
    }
}
