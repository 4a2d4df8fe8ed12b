//! What the pipeline hands the store for one attempt, and the rules that turn it into rows and an
//! audit entry. The rules are pure and shared by every backend: which state the unit takes, how
//! the attempt ends, which of two stations recording one MAC wins, whether a batch has room
//! for one more unit, and what the audit entry says.

use serde_json::json;

use crate::identity::{Mac, RegistrationId};
use crate::keys::KeyId;
use crate::record::{
    Attempt, AttemptOutcome, Attestation, Batch, ErrorCode, IssuedCertificate, Stage, Unit,
    UnitDps, UnitState,
};

use super::audit::NewEntry;

/// What [`super::Store::begin_attempt`] writes.
#[derive(Debug, Clone)]
pub struct AttemptStart {
    /// The batch.
    pub batch_id: i64,
    /// The station.
    pub station_id: String,
    /// Who is responsible.
    pub operator: String,
    /// The serial port.
    pub port: String,
    /// Start (RFC 3339).
    pub started_at: String,
}

/// What identify, derive and build established about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFacts {
    /// Its MAC.
    pub mac: Mac,
    /// DPS registration ID.
    pub registration_id: RegistrationId,
    /// Chip.
    pub chip: String,
    /// Chip revision.
    pub revision: String,
    /// Flash size in bytes.
    pub flash_size: i64,
    /// How it proves its identity to DPS.
    pub attestation: Attestation,
    /// The fingerprint of the station secret behind its credential: the group key, or for
    /// X.509 the signing CA ([`crate::x509::SigningCa::key_id`]).
    pub key_id: KeyId,
    /// Secondary group key fingerprint.
    pub secondary_key_id: Option<KeyId>,
    /// SHA-256 of the image, once built.
    pub image_sha256: Option<String>,
    /// X.509: the certificate issued for it, once issued.
    pub certificate: Option<IssuedCertificate>,
    /// The DPS pre-verification outcome, when it ran.
    pub dps: Option<UnitDps>,
    /// The attempt that had last recorded this MAC provisioned when the pipeline identified
    /// the device ([`super::Store::unit_sighting`]); `None` if none had. If another attempt
    /// records the MAC provisioned meanwhile (the same MAC on another station, or on another
    /// port), this attempt loses: it cannot pass, and it leaves the unit's row to the winner.
    pub seen_provisioning: Option<i64>,
}

/// What the database holds of a MAC when the pipeline identifies a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSighting {
    /// The unit's row, if the MAC was ever recorded.
    pub unit: Option<Unit>,
    /// The attempt that last recorded it provisioned (hand it on in
    /// [`UnitFacts::seen_provisioning`]).
    pub last_provisioning: Option<i64>,
}

/// Why an attempt that passed on its device is recorded failed at stage `record`: the database
/// changed under it while it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Another attempt recorded the same MAC provisioned after this one identified it.
    DuplicateUnit {
        /// The MAC.
        mac: Mac,
        /// The station whose record stands.
        station_id: String,
        /// The batch it recorded the unit in.
        batch: String,
        /// When.
        provisioned_at: String,
    },
    /// The batch reached its target (units provisioned by every station) first.
    BatchFull {
        /// The batch.
        batch: String,
        /// Its target.
        target: i64,
    },
}

impl Conflict {
    /// The error the conflict is recorded and reported as.
    pub fn error(&self) -> super::StoreError {
        match self.clone() {
            Conflict::DuplicateUnit {
                mac,
                station_id,
                batch,
                provisioned_at,
            } => super::StoreError::DuplicateUnit {
                mac,
                station_id,
                batch,
                provisioned_at,
            },
            Conflict::BatchFull { batch, target } => super::StoreError::BatchFull {
                name: batch,
                target,
            },
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The pipeline stage that failed.
    pub stage: Stage,
    /// The stable error code.
    pub code: ErrorCode,
    /// The message shown to the operator (never holds a secret).
    pub message: String,
    /// Whether the device's flash may have been changed (the unit is then marked failed).
    pub wrote: bool,
}

/// A finished attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The row [`super::Store::begin_attempt`] opened for it; `None` records a new row.
    pub attempt_id: Option<i64>,
    /// The batch it ran in.
    pub batch: Batch,
    /// The station.
    pub station_id: String,
    /// Who was responsible.
    pub operator: String,
    /// The serial port.
    pub port: String,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// What is known of the device; `None` when it failed before the MAC was read.
    pub unit: Option<UnitFacts>,
    /// `None` when provisioned; the failure otherwise.
    pub failure: Option<Failure>,
    /// Whether this moved a unit provisioned in another batch (`--reprovision`).
    pub reprovision: bool,
    /// Seconds per stage, as JSON.
    pub timings: serde_json::Value,
}

/// What recording an attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The attempt's row id.
    pub attempt_id: i64,
    /// The unit's row, if the MAC was known.
    pub unit: Option<Unit>,
    /// The audit entry written with it.
    pub audit_seq: i64,
    /// Why an attempt that passed was recorded failed instead, if it was.
    pub conflict: Option<Conflict>,
}

/// What an attempt does to its unit's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitChange {
    /// The existing row stays as it is.
    Keep(Box<Unit>),
    /// The row is written (inserted or updated) with this state.
    Write {
        /// The state the unit takes.
        state: UnitState,
        /// The failed stage, when failed.
        failed_stage: Option<Stage>,
        /// When it was provisioned, when provisioned.
        provisioned_at: Option<String>,
    },
}

impl AttemptRecord {
    /// How the attempt ends.
    pub(crate) fn outcome(&self) -> AttemptOutcome {
        match self.failure {
            None => AttemptOutcome::Provisioned,
            Some(_) => AttemptOutcome::Failed,
        }
    }

    /// Whether another attempt recorded this attempt's MAC provisioned since the pipeline
    /// identified it, given the attempt that last did so now.
    pub(crate) fn overtaken(&self, last_provisioning: Option<i64>) -> bool {
        self.unit
            .as_ref()
            .is_some_and(|facts| facts.seen_provisioning != last_provisioning)
    }

    /// Whether recording this attempt adds a unit to its batch: it passed, and its unit is not
    /// provisioned in the batch already.
    pub(crate) fn takes_slot(&self, existing: Option<&Unit>) -> bool {
        self.failure.is_none()
            && !existing.is_some_and(|unit| {
                unit.state == UnitState::Provisioned && unit.batch_id == self.batch.id
            })
    }

    /// The attempt as recorded after a conflict: failed at stage `record` with the conflict's
    /// code. A batch found full leaves a unit whose flash was written (it is marked failed);
    /// a duplicate leaves the row to the winner ([`AttemptRecord::unit_change`]).
    pub(crate) fn conflicted(&self, conflict: &Conflict) -> AttemptRecord {
        let error = conflict.error();
        AttemptRecord {
            failure: Some(Failure {
                stage: Stage::Record,
                code: ErrorCode::of(&error),
                message: error.to_string(),
                wrote: true,
            }),
            ..self.clone()
        }
    }

    /// What becomes of the unit's row, given the row as it is and whether another attempt
    /// recorded the MAC provisioned while this one ran (`overtaken`: the row is then left as
    /// that attempt wrote it).
    ///
    /// The unit becomes provisioned only for an attempt without failure (the pipeline records
    /// success only after verification). A failure that may have touched the flash marks it
    /// failed. A failure before any write (a refused re-provision, a wrong chip) leaves an
    /// existing unit alone; a new one is recorded failed so the attempt has a unit to point at.
    pub(crate) fn unit_change(&self, existing: Option<Unit>, overtaken: bool) -> UnitChange {
        match (&self.failure, existing) {
            (_, Some(unit)) if overtaken => UnitChange::Keep(Box::new(unit)),
            (None, _) => UnitChange::Write {
                state: UnitState::Provisioned,
                failed_stage: None,
                provisioned_at: Some(self.finished_at.clone()),
            },
            (Some(failure), Some(unit)) if !failure.wrote => UnitChange::Keep(Box::new(unit)),
            (Some(failure), _) => UnitChange::Write {
                state: UnitState::Failed,
                failed_stage: Some(failure.stage),
                provisioned_at: None,
            },
        }
    }

    /// The audit entry recording the attempt.
    pub(crate) fn audit_entry(&self) -> NewEntry {
        let action = match &self.failure {
            None if self.reprovision => "unit.reprovisioned",
            None => "unit.provisioned",
            Some(_) => "unit.failed",
        };
        let unit = self.unit.as_ref();
        let subject = unit.map_or_else(|| format!("port {}", self.port), |u| u.mac.to_string());
        let details = json!({
            "batch": self.batch.name,
            "port": self.port,
            "registration_id": unit.map(|u| &u.registration_id),
            "key_id": unit.map(|u| &u.key_id),
            "secondary_key_id": unit.and_then(|u| u.secondary_key_id.as_ref()),
            "image_sha256": unit.and_then(|u| u.image_sha256.as_ref()),
            "chip": unit.map(|u| &u.chip),
            "stage": self.failure.as_ref().map(|f| f.stage),
            "error_code": self.failure.as_ref().map(|f| &f.code),
            "reprovision": self.reprovision,
            "started_at": self.started_at,
        });
        let details = match unit.and_then(|u| u.certificate.as_ref()) {
            Some(certificate) => with_certificate(details, certificate),
            None => details,
        };
        let details = match unit.and_then(|u| u.dps.as_ref()) {
            Some(dps) => with_dps(details, dps),
            None => details,
        };
        NewEntry::at(
            &self.finished_at,
            &self.station_id,
            &self.operator,
            action,
            &subject,
            details,
        )
    }

    /// The start of the attempt, for a row opened only when it is recorded.
    pub(crate) fn start(&self) -> AttemptStart {
        AttemptStart {
            batch_id: self.batch.id,
            station_id: self.station_id.clone(),
            operator: self.operator.clone(),
            port: self.port.clone(),
            started_at: self.started_at.clone(),
        }
    }
}

/// Adds the certificate an attempt issued to its audit details, naming the CA that signed it
/// by its SHA-256 thumbprint (the unit's `key_id` is the short form of the same).
pub(crate) fn with_certificate(
    mut details: serde_json::Value,
    certificate: &IssuedCertificate,
) -> serde_json::Value {
    details["attestation"] = json!(Attestation::X509);
    details["certificate"] = json!({
        "serial": certificate.serial,
        "thumbprint": certificate.thumbprint,
        "not_before": certificate.not_before,
        "not_after": certificate.not_after,
        "key_type": certificate.key_type,
        "ca_thumbprint": certificate.ca_thumbprint,
    });
    details
}

/// Adds a unit's DPS outcome to audit details.
pub(crate) fn with_dps(mut details: serde_json::Value, dps: &UnitDps) -> serde_json::Value {
    details["dps"] = json!({
        "status": dps.status,
        "assigned_hub": dps.assigned_hub,
        "device_id": dps.device_id,
        "substatus": dps.substatus,
        "error": dps.error,
    });
    details
}

/// The audit entry of a later DPS outcome for a unit (`unit.dps_verified`).
pub(crate) fn dps_verified_entry(
    unit: &Unit,
    dps: &UnitDps,
    at: &str,
    station_id: &str,
    operator: &str,
) -> NewEntry {
    let details = with_dps(
        json!({ "registration_id": unit.registration_id, "key_id": unit.key_id }),
        dps,
    );
    NewEntry::at(
        at,
        station_id,
        operator,
        "unit.dps_verified",
        &unit.mac.to_string(),
        details,
    )
}

/// How an attempt left open by a dead process is closed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Interruption {
    /// The stage it had reached.
    pub(crate) stage: Stage,
    /// Whether the unit's flash may be half written (it is then marked failed).
    pub(crate) wrote: bool,
    /// The attempt's message.
    pub(crate) message: String,
    /// Its audit entry (`unit.interrupted`).
    pub(crate) entry: NewEntry,
}

impl Interruption {
    /// The interruption of `attempt`, which ran in `batch`, found at `at`.
    pub(crate) fn of(
        attempt: &Attempt,
        batch: &Batch,
        at: &str,
        station_id: &str,
        operator: &str,
    ) -> Interruption {
        let stage = attempt.stage.unwrap_or(Stage::Connect);
        let wrote = stage.may_have_written();
        let message = format!(
            "the station stopped during stage {stage} on {} (crash, power loss or kill) and the attempt never finished{}",
            attempt.port,
            if wrote {
                "; the unit's flash may be incomplete"
            } else {
                ""
            }
        );
        let subject = attempt
            .mac
            .map_or_else(|| format!("port {}", attempt.port), |mac| mac.to_string());
        let entry = NewEntry::at(
            at,
            station_id,
            operator,
            "unit.interrupted",
            &subject,
            json!({
                "batch": batch.name,
                "port": attempt.port,
                "attempt": attempt.id,
                "stage": stage,
                "error_code": ErrorCode::interrupted(),
                "started_at": attempt.started_at,
                "pid": attempt.pid,
            }),
        );
        Interruption {
            stage,
            wrote,
            message,
            entry,
        }
    }
}
