//! One unit through the pipeline of DESIGN.md section 1 (with section 7's boot check), over a
//! [`Device`]: connect, identify, derive (X.509: issue the unit's certificate; individual
//! enrollment: make its key), enroll (individual enrollment), build, flash, verify, the reset
//! into the application and its boot check (when `[boot] enabled`), DPS pre-verification (when
//! `[dps] pre_verify`), the test message to the assigned hub (when `[hub] test_message`), record,
//! and the final reset (unless the boot check already reset the unit).
//!
//! Each stage lives in the file of its name:
//!
//! | stages | file |
//! |---|---|
//! | connect, identify (chip, flash size, already provisioned?) | `identify.rs` |
//! | derive, build ([`DeviceImage`]) | `build.rs` |
//! | flash, verify | `flash.rs` |
//! | boot (reset into the application, its boot log judged) | `boot.rs` |
//! | dps (and the later retries: [`verify_registration`], [`retry_pending`]) | `dps.rs` |
//! | hub: the test message to the assigned hub | `hub.rs` |
//! | revocation and restoration of a recorded unit ([`revoke`], [`restore`]) | `revoke.rs` |
//! | record, reset, the [`UnitReport`] | `record.rs` |
//!
//! [`provision`] opens the attempt's row before anything touches the device, runs the stages,
//! and records the attempt whatever happened, so a failed unit is recorded with the stage that
//! failed and its stable error code. A unit is marked provisioned only after its flash was
//! verified. Everything it does is reported as [`Event`]s and traced in one span per unit that
//! carries the port, and the MAC and registration ID once known; each stage's time is traced as
//! an event (`stage finished`, with `stage` and `seconds`).

mod boot;
mod build;
mod dps;
mod error;
mod flash;
mod hub;
mod identify;
mod record;
mod report;
mod revoke;

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{field, instrument};

pub use build::{DeviceCredential, DeviceImage, DeviceKeys, SecureCertImage};
pub use dps::{PendingSummary, VerifyReport, retry_pending, verify_registration};
pub use error::{ProvisionError, UnitError};
pub use report::{Event, Outcome, Timings, UnitReport};
pub use revoke::{DpsAction, RevocationReport, restore, revoke};

use crate::device::{Device, DeviceIdentity};
use crate::identity::{Mac, RegistrationId};
use crate::record::{Batch, EnrollmentKind, Stage, UnitDps, UnitHub};
use crate::station::Station;
use crate::store::{AttemptStart, StoreError};

/// One attempt's request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The batch to provision into.
    pub batch: Batch,
    /// Who is responsible.
    pub operator: String,
    /// Re-provision a unit of another batch.
    pub reprovision: bool,
    /// Leave alone a unit already provisioned in this batch (the line daemon: a unit plugged in
    /// again is not flashed twice). Off for `station provision`, which re-flashes on request.
    pub skip_provisioned: bool,
    /// Claim one of the batch's slots when the attempt begins (the line daemon: a full batch
    /// then refuses the unit before anything touches it, with `station::store::batch_full`);
    /// otherwise a unit new to the batch claims one once identified.
    pub claim_at_start: bool,
    /// When the database is unreachable as the unit finishes, hold its record and retry
    /// (every second, announcing [`Event::RecordHeld`]) until the database answers: the unit
    /// is shown PASS only once recorded (the line daemon). Off for `station provision`, which
    /// then fails with `station::store::unreachable`.
    pub hold_records: bool,
}

impl Request {
    /// One unit as `station provision` asks for it: re-flashed if already in the batch, a slot
    /// claimed once it is identified, a record failing at once when the database is away; no
    /// re-provisioning from another batch unless `reprovision`.
    pub fn one_unit(batch: Batch, operator: String, reprovision: bool) -> Self {
        Request {
            batch,
            operator,
            reprovision,
            skip_provisioned: false,
            claim_at_start: false,
            hold_records: false,
        }
    }
}

/// How long a held record waits between tries.
const RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs one unit through the pipeline and records the attempt, pass or fail.
///
/// Returns `Ok` with the report whenever the attempt was recorded (a failed unit included);
/// `Err` only when recording itself failed, in which case the unit is not marked provisioned
/// and re-running the unit re-flashes the same image.
#[instrument(
    skip_all,
    fields(
        port = %device.port().display(),
        batch = %request.batch.name,
        mac = field::Empty,
        registration_id = field::Empty,
    )
)]
pub async fn provision<D: Device>(
    device: &mut D,
    station: &Station,
    request: &Request,
    events: Option<&UnboundedSender<Event>>,
) -> Result<UnitReport, StoreError> {
    let port = device.port().display().to_string();
    let started_at = crate::clock::now();
    let start = Instant::now();
    let start_row = AttemptStart {
        batch_id: request.batch.id,
        station_id: station.config.station.id.clone(),
        operator: request.operator.clone(),
        port: port.clone(),
        started_at: started_at.clone(),
    };
    let attempt_id = if request.claim_at_start {
        station.store.begin_attempt_with_slot(&start_row).await?
    } else {
        station.store.begin_attempt(&start_row).await?
    };
    let mut run = Run {
        device,
        station,
        request,
        events,
        port,
        attempt_id,
        started_at,
        start,
        timings: Timings::default(),
        facts: Facts::default(),
    };
    let result = run.stages().await;
    match (result, run.facts.skipped.take()) {
        (Ok(()), Some(provisioned_at)) => run.skip(&provisioned_at).await,
        (result, _) => run.record(result).await,
    }
}

/// A failure on its way to the record.
struct Failed {
    stage: Stage,
    error: UnitError,
    wrote: bool,
}

/// Attributes an error to `stage`; `wrote`: whether the device's flash may have changed.
fn fail<E: Into<UnitError>>(stage: Stage, wrote: bool) -> impl FnOnce(E) -> Failed {
    move |error| Failed {
        stage,
        error: error.into(),
        wrote,
    }
}

/// What the stages established, for the record.
#[derive(Default)]
struct Facts {
    /// The device, once identified, with its registration ID.
    identified: Option<(DeviceIdentity, RegistrationId)>,
    image_sha256: Option<String>,
    /// X.509: the certificate issued at stage `derive`.
    certificate: Option<crate::record::IssuedCertificate>,
    reprovision: bool,
    /// When the unit, found already provisioned in this batch, was provisioned.
    skipped: Option<String>,
    dps: Option<UnitDps>,
    /// Individual enrollment: the unit's own key fingerprints (primary, secondary), recorded
    /// instead of the station's.
    key_ids: Option<(crate::keys::KeyId, Option<crate::keys::KeyId>)>,
    /// Group or individual enrollment.
    enrollment: EnrollmentKind,
    /// The test message to the hub, when sent.
    hub: Option<UnitHub>,
    /// The device was reset into its application (the session is over).
    booted: bool,
    /// The redacted excerpt of its boot log.
    boot_log: Option<String>,
    /// The attempt that last recorded the unit provisioned, when identify read it.
    seen_provisioning: Option<i64>,
}

/// One unit's attempt while it runs.
struct Run<'a, D: Device> {
    device: &'a mut D,
    station: &'a Station,
    request: &'a Request,
    events: Option<&'a UnboundedSender<Event>>,
    port: String,
    attempt_id: i64,
    started_at: String,
    start: Instant,
    timings: Timings,
    facts: Facts,
}

impl<D: Device> Run<'_, D> {
    /// The stages, in order, up to the record.
    async fn stages(&mut self) -> Result<(), Failed> {
        let Some(mac) = self.identify().await? else {
            return Ok(());
        };
        let image = self.build(mac).await?;
        self.flash(&image).await?;
        self.boot(&image).await?;
        self.pre_verify(&image).await?;
        self.hub_test(&image).await
    }

    /// Sends an event, if anyone listens.
    fn send(&self, event: Event) {
        if let Some(events) = self.events {
            // A receiver that went away only means nobody watches any more.
            let _ = events.send(event);
        }
    }

    /// Announces a stage.
    fn emit(&self, stage: Stage) {
        self.send(Event::Stage {
            port: self.port.clone(),
            stage,
        });
    }

    /// Announces a stage and notes it in the open attempt, so that a crash during it is
    /// recorded against the right stage (and, once known, the right MAC).
    async fn reached(&self, stage: Stage, mac: Option<Mac>) -> Result<(), Failed> {
        self.emit(stage);
        self.station
            .store
            .attempt_reached(self.attempt_id, stage, mac)
            .await
            // From flash on, the stages before it may have written the device.
            .map_err(fail(stage, stage.may_have_written()))
    }

    /// The seconds since `started`, traced as the time of `stage` (a [`Stage`] name, or
    /// `reset`); the timings themselves are recorded with the attempt.
    fn finished(&self, stage: &'static str, started: Instant) -> f64 {
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(stage, seconds, "stage finished");
        seconds
    }
}

#[cfg(test)]
mod tests;
