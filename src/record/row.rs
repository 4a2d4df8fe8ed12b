//! The rows the store returns. Field names are the column names (`sqlx::FromRow`); every domain
//! value is typed ([`super`]), times are the stored RFC 3339 text ([`crate::clock`]).

use crate::identity::{Mac, RegistrationId};
use crate::keys::KeyId;

use super::{
    AttemptOutcome, Attestation, DpsStatus, EnrollmentKind, ErrorCode, HubStatus, Stage, UnitState,
};

/// A work order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Batch {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Units to provision.
    pub target: i64,
    /// Who opened it.
    pub operator: String,
    /// Which station.
    pub station_id: String,
    /// When opened.
    pub opened_at: String,
    /// When closed, if closed.
    pub closed_at: Option<String>,
    /// Who closed it.
    pub closed_by: Option<String>,
}

/// A batch with its counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchStatus {
    /// The batch.
    #[serde(flatten)]
    pub batch: Batch,
    /// Units verified and recorded provisioned.
    pub provisioned: i64,
    /// Units whose last write failed.
    pub failed: i64,
    /// Attempts, pass or fail.
    pub attempts: i64,
    /// Failed attempts.
    pub failed_attempts: i64,
    /// Attempts running now (on any process of this database).
    pub in_progress: i64,
    /// Attempts cut short by a crash or a kill, found and closed at the next start.
    pub interrupted: i64,
    /// Failed and interrupted attempts by error code, most frequent first.
    pub failures: Vec<FailureCount>,
    /// Units provisioned per minute between the batch's first and last provisioned unit (all
    /// stations); `None` before its second unit.
    pub units_per_minute: Option<f64>,
    /// Each station's share, by station ID.
    pub stations: Vec<StationCount>,
}

/// One station's share of a batch: the units it recorded provisioned and its attempts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StationCount {
    /// The station.
    pub station_id: String,
    /// Units of the batch this station recorded provisioned (and no station wrote since).
    pub provisioned: i64,
    /// Its attempts in the batch, pass or fail.
    pub attempts: i64,
    /// Its failed attempts.
    pub failed_attempts: i64,
    /// Its attempts running now.
    pub in_progress: i64,
    /// When it recorded its first unit of the batch provisioned.
    pub first_provisioned_at: Option<String>,
    /// When it recorded its last.
    pub last_provisioned_at: Option<String>,
    /// Units per minute between its first and last unit; `None` before its second.
    pub units_per_minute: Option<f64>,
}

/// How often one error code ended an attempt of a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct FailureCount {
    /// The stable error code.
    pub error_code: ErrorCode,
    /// The stage it happened in (the most frequent one, if several).
    pub stage: Stage,
    /// How many attempts.
    pub count: i64,
}

/// A device's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Unit {
    /// Row id.
    pub id: i64,
    /// Its MAC.
    pub mac: Mac,
    /// Its DPS registration ID.
    pub registration_id: RegistrationId,
    /// The batch it was last written in.
    pub batch_id: i64,
    /// The station that wrote it.
    pub station_id: String,
    /// Chip (`esp32`).
    pub chip: String,
    /// Chip revision (`v3.0`).
    pub revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// Fingerprint of the group key its device key was derived from.
    pub key_id: KeyId,
    /// Fingerprint of the secondary group key, if one was used.
    pub secondary_key_id: Option<KeyId>,
    /// SHA-256 of the NVS image written.
    pub image_sha256: Option<String>,
    /// Provisioned or failed.
    pub state: UnitState,
    /// The stage of the last failure, when failed.
    pub failed_stage: Option<Stage>,
    /// When it was last verified and recorded provisioned.
    pub provisioned_at: Option<String>,
    /// Its DPS pre-verification status.
    pub dps_status: DpsStatus,
    /// The IoT hub DPS assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned.
    pub device_id: Option<String>,
    /// The last DPS error (`code: message`).
    pub dps_error: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// The substatus DPS returned with the assignment (`initialAssignment`, ...).
    pub dps_substatus: Option<String>,
    /// How it proves its identity to DPS.
    pub attestation: Attestation,
    /// X.509: the serial number of the certificate last written to it (uppercase hex).
    pub cert_serial: Option<String>,
    /// X.509: that certificate's SHA-256 thumbprint (64 uppercase hex digits).
    pub cert_thumbprint: Option<String>,
    /// X.509: when that certificate expires (RFC 3339, UTC).
    pub cert_not_after: Option<String>,
    /// Group or individual enrollment.
    pub enrollment: EnrollmentKind,
    /// The outcome of its last test message to its hub.
    pub hub_status: HubStatus,
    /// Why the hub refused it (`code: message`).
    pub hub_error: Option<String>,
    /// When it was revoked (`station unit revoke`), while it is.
    pub revoked_at: Option<String>,
    /// Why.
    pub revoked_reason: Option<String>,
}

/// A unit's test message to its hub, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitHub {
    /// Accepted or failed.
    pub status: HubStatus,
    /// `code: message` of the hub's refusal.
    pub error: Option<String>,
}

/// A unit's revocation, as recorded on its row (`station unit revoke` / `restore`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitRevocation {
    /// When it was revoked; `None` when restored.
    pub revoked_at: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// A device certificate the station issued for an attempt: what the records keep of it (never
/// its private key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssuedCertificate {
    /// Serial number, uppercase hex (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// SHA-256 thumbprint of its DER, 64 uppercase hex digits (as the Azure portal shows it).
    pub thumbprint: String,
    /// Start of validity (RFC 3339, UTC).
    pub not_before: String,
    /// End of validity (RFC 3339, UTC).
    pub not_after: String,
    /// The device key's type (`ecdsa-p256`, `rsa-2048`).
    pub key_type: String,
    /// SHA-256 thumbprint of the CA certificate that signed it.
    pub ca_thumbprint: String,
}

/// A certificate as the store keeps it: every certificate issued for a unit, in order, so a
/// unit provisioned again keeps the history of what it held.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct CertificateRow {
    /// Row id.
    pub id: i64,
    /// The unit.
    pub unit_id: i64,
    /// The attempt that issued it.
    pub attempt_id: i64,
    /// The unit's MAC.
    pub mac: Mac,
    /// Its subject CN.
    pub registration_id: RegistrationId,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// SHA-256 thumbprint, uppercase hex.
    pub thumbprint: String,
    /// Start of validity.
    pub not_before: String,
    /// End of validity.
    pub not_after: String,
    /// The device key's type.
    pub key_type: String,
    /// The signing CA's thumbprint.
    pub ca_thumbprint: String,
    /// The station that issued it.
    pub station_id: String,
    /// When the attempt that issued it was recorded.
    pub issued_at: String,
}

/// A unit's DPS pre-verification outcome, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDps {
    /// Pending, assigned or failed.
    pub status: DpsStatus,
    /// The IoT hub DPS assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned.
    pub device_id: Option<String>,
    /// DPS's substatus.
    pub substatus: Option<String>,
    /// `code: message` of the last DPS error.
    pub error: Option<String>,
}

/// An attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// Row id.
    pub id: i64,
    /// The unit, if the MAC was read.
    pub unit_id: Option<i64>,
    /// The MAC, if read.
    pub mac: Option<Mac>,
    /// The batch.
    pub batch_id: i64,
    /// The station.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// The port.
    pub port: String,
    /// Start.
    pub started_at: String,
    /// End; `None` while in progress.
    pub finished_at: Option<String>,
    /// How it ended, or in progress.
    pub outcome: AttemptOutcome,
    /// The failed stage; while in progress, the stage reached.
    pub stage: Option<Stage>,
    /// Stable error code.
    pub error_code: Option<ErrorCode>,
    /// Message.
    pub message: Option<String>,
    /// Re-provisioning a unit of another batch.
    pub reprovision: bool,
    /// Seconds per stage (JSON).
    pub timings: String,
    /// The audit entry written when it ended; `None` while in progress.
    pub audit_seq: Option<i64>,
    /// The process running it, while in progress.
    pub pid: Option<i64>,
    /// The redacted excerpt of the unit's boot log, when the boot check ran.
    pub boot_log: Option<String>,
    /// The boot that process ran in, while in progress.
    #[serde(skip)]
    pub pid_boot_id: Option<String>,
    /// When that process started (clock ticks since boot), while in progress.
    #[serde(skip)]
    pub pid_started: Option<i64>,
}

/// One audit entry as stored. Its fields are text on purpose: the hash covers exactly the
/// stored bytes ([`crate::store::audit`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Which station wrote it.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// What happened (`batch.open`, `unit.provisioned`, ...).
    pub action: String,
    /// To what (a batch name, a MAC).
    pub subject: String,
    /// JSON object with the particulars (sorted keys).
    pub details: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// One row of a QA manifest: one provisioned unit. The fields, in this order, are the manifest's
/// columns (README "QA manifests and audit"); they are stable across releases. No key is here:
/// only the group key's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ManifestRow {
    /// The batch the unit was last provisioned in.
    pub batch: String,
    /// The unit's MAC.
    pub mac: Mac,
    /// The DPS registration ID flashed into the unit.
    pub registration_id: RegistrationId,
    /// Chip (`esp32`).
    pub chip: String,
    /// Chip revision (`v3.0`).
    pub chip_revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// SHA-256 of the NVS image written, lowercase hex.
    pub nvs_sha256: Option<String>,
    /// Fingerprint of the group key the device key was derived from.
    pub group_key_id: KeyId,
    /// When the unit was verified and recorded provisioned (RFC 3339, UTC).
    pub provisioned_at: Option<String>,
    /// Who answered for the unit's last successful attempt.
    pub operator: Option<String>,
    /// The station that wrote it.
    pub station_id: String,
    /// The port of the last successful attempt.
    pub port: Option<String>,
    /// Attempts recorded for this MAC, whatever their outcome, in any batch.
    pub attempts: i64,
    /// Its DPS status.
    pub dps_status: DpsStatus,
    /// The IoT hub DPS assigned, once assigned.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned, once assigned.
    pub device_id: Option<String>,
    /// How the unit proves its identity to DPS (`symmetric-key`, `x509`).
    pub attestation: Attestation,
    /// X.509: the serial number of its certificate (uppercase hex).
    pub cert_serial: Option<String>,
    /// X.509: its certificate's SHA-256 thumbprint (uppercase hex).
    pub cert_thumbprint: Option<String>,
    /// X.509: when its certificate expires (RFC 3339, UTC).
    pub cert_not_after: Option<String>,
    /// `group` or `individual` (issue 18).
    pub enrollment: EnrollmentKind,
    /// The test message to its hub: `not-requested`, `accepted` or `failed` (issue 18).
    pub hub_test: HubStatus,
    /// When it was revoked, while it is (issue 18).
    pub revoked_at: Option<String>,
}
