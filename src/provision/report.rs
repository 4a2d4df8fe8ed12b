//! What the pipeline reports: the events while a unit runs and the report of a finished unit
//! (what the operator sees, what `provision --json` prints and the line's `unit` event carries).

use crate::device::FlashProgress;
use crate::identity::{Mac, RegistrationId};
use crate::keys::KeyId;
use crate::record::{DpsStatus, IssuedCertificate, Stage};

/// Seconds spent in each stage of one attempt, and what the flash stage had to do again.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Reset, sync, chip detection, stub upload, flash detection, baud change.
    pub connect: f64,
    /// MAC, revision, flash size.
    pub identify: f64,
    /// X.509: issuing the key pair and certificate (symmetric-key derivation takes
    /// microseconds and is counted in `build`); left out when zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub derive: f64,
    /// Registration ID, key derivation and the images.
    pub build: f64,
    /// Writing every region.
    pub flash: f64,
    /// MD5 of every region.
    pub verify: f64,
    /// DPS pre-verification.
    pub dps: f64,
    /// The database transaction.
    pub record: f64,
    /// The final reset.
    pub reset: f64,
    /// Every region written again from its start because the loader refused one of its
    /// blocks as corrupted (empty on a clean write). A write that ran out of restarts fails
    /// with `station::device::write_refused` instead.
    pub flash_restarts: Vec<crate::device::Restart>,
}

/// The result of one unit, as shown to the operator and printed by `provision --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitReport {
    /// The port.
    pub port: String,
    /// The batch.
    pub batch: String,
    /// The MAC, once read.
    pub mac: Option<Mac>,
    /// The registration ID, once formed.
    pub registration_id: Option<RegistrationId>,
    /// `provisioned` or `failed`.
    pub outcome: Outcome,
    /// The stage that failed.
    pub stage: Option<Stage>,
    /// The stable error code of the failure.
    pub error_code: Option<String>,
    /// The failure in words.
    pub message: Option<String>,
    /// What the operator should do.
    pub hint: Option<String>,
    /// Wall time of the attempt.
    pub seconds: f64,
    /// Per stage.
    pub timings: Timings,
    /// Chip, once identified.
    pub chip: Option<String>,
    /// SHA-256 of the NVS image, once built.
    pub image_sha256: Option<String>,
    /// Fingerprint of the group key used, or of the signing CA.
    pub key_id: Option<KeyId>,
    /// X.509: the certificate issued (serial, thumbprint, validity, CA); left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<IssuedCertificate>,
    /// Whether this was an audited re-provision of a unit from another batch.
    pub reprovision: bool,
    /// The attempt's row.
    pub attempt_id: i64,
    /// DPS pre-verification status.
    pub dps_status: DpsStatus,
    /// The IoT hub DPS assigned the unit to.
    pub assigned_hub: Option<String>,
    /// The device ID DPS assigned.
    pub device_id: Option<String>,
    /// DPS's substatus (`initialAssignment`, `reprovisionedToInitialAssignment`, ...).
    pub dps_substatus: Option<String>,
    /// Why DPS did not assign the unit (`code: message`).
    pub dps_error: Option<String>,
    /// A problem after the unit was recorded (a failed final reset).
    pub warning: Option<String>,
}

fn is_zero(seconds: &f64) -> bool {
    *seconds == 0.0
}

impl UnitReport {
    /// Marks the report failed at `stage` with `error`'s code, message and hint.
    pub(crate) fn fail(&mut self, stage: Stage, error: &dyn miette::Diagnostic) {
        self.outcome = Outcome::Failed;
        self.stage = Some(stage);
        self.error_code = Some(crate::record::ErrorCode::of(error).to_string());
        self.message = Some(error.to_string());
        self.hint = error.help().map(|h| h.to_string());
    }
}

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Flashed, verified and recorded.
    Provisioned,
    /// Failed at `stage`; recorded as such.
    Failed,
    /// Already provisioned in this batch and left alone (the line daemon only); nothing was
    /// written and no attempt recorded.
    Skipped,
}

/// What the pipeline reports while it runs; the terminal view and logs render these.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage starts on a port.
    Stage {
        /// The port.
        port: String,
        /// The stage.
        stage: Stage,
    },
    /// Flash progress on a port.
    Flash {
        /// The port.
        port: String,
        /// The progress.
        progress: FlashProgress,
    },
    /// The database could not be reached to record a finished unit: its record is held and
    /// retried, and the unit is shown neither PASS nor FAIL until it is recorded.
    RecordHeld {
        /// The port.
        port: String,
        /// The unit.
        mac: Option<Mac>,
        /// The store's error code (`station::store::unreachable`).
        error_code: String,
        /// The error.
        message: String,
    },
    /// The device on a port was identified.
    Identified {
        /// The port.
        port: String,
        /// Its MAC.
        mac: Mac,
        /// Its registration ID.
        registration_id: RegistrationId,
    },
}
