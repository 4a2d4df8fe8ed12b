//! One unit through the pipeline of DESIGN.md section 1: connect, identify, derive, build,
//! flash, verify, DPS pre-verification (when `[dps] pre_verify`), record, reset.
//!
//! [`DeviceImage`] is the pure heart (derive + build): the same MAC and configuration always give
//! the same registration ID, device key and image bytes, which is what makes re-provisioning
//! idempotent and lets `station nvs build --mac` reproduce exactly what a unit received.

use std::fmt;
use std::time::Instant;

use md5::Md5;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::UnboundedSender;
use tracing::instrument;

use crate::config::{Config, TemplateValues};
use crate::device::{Device, DeviceError, DeviceIdentity, FlashProgress, ProgressSender, Region};
use crate::error::Error;
use crate::identity::{Mac, RegistrationId};
use crate::keys::{DeviceKey, GroupKeys, KeyId};
use crate::nvs;
use crate::store::{AttemptRecord, AttemptStart, Batch, Failure, Store, UnitFacts};

/// A stage of the pipeline; stored with failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Open the port, reset into the ROM loader, sync, detect the chip, start the stub.
    Connect,
    /// Read MAC, chip, revision and flash size; check the chip.
    Identify,
    /// Form the registration ID and derive the device key.
    Derive,
    /// Build the NVS image.
    Build,
    /// Write firmware and NVS images.
    Flash,
    /// Compare the MD5 of the written regions.
    Verify,
    /// Pre-verify against DPS.
    Dps,
    /// Record the unit, attempt and audit entry.
    Record,
}

impl Stage {
    /// The stable name stored in attempts (`flash`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Identify => "identify",
            Stage::Derive => "derive",
            Stage::Build => "build",
            Stage::Flash => "flash",
            Stage::Verify => "verify",
            Stage::Dps => "dps",
            Stage::Record => "record",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the station writes to one device, derived from its MAC.
#[derive(Debug, Clone)]
pub struct DeviceImage {
    /// The device.
    pub mac: Mac,
    /// Its registration ID.
    pub registration_id: RegistrationId,
    /// Its device key (primary group key).
    pub device_key: DeviceKey,
    /// Fingerprint of the primary group key.
    pub key_id: KeyId,
    /// Fingerprint of the secondary group key, when one is configured.
    pub secondary_key_id: Option<KeyId>,
    /// The NVS partition image, `[nvs].size` bytes.
    pub bytes: Vec<u8>,
}

impl DeviceImage {
    /// Derives the device's identity and key and builds its NVS image.
    pub fn build(
        config: &Config,
        keys: &GroupKeys,
        mac: Mac,
    ) -> Result<DeviceImage, nvs::NvsError> {
        let registration_id = config.dps.registration_id.render(&mac);
        let device_key = keys.primary.derive(&registration_id);
        let secondary_device_key = keys.secondary.as_ref().map(|k| k.derive(&registration_id));
        let mac_hex = mac.hex();
        let values = TemplateValues {
            id_scope: &config.dps.id_scope,
            registration_id: registration_id.as_str(),
            device_key: device_key.expose(),
            secondary_device_key: secondary_device_key.as_ref().map_or("", DeviceKey::expose),
            dps_host: &config.dps.endpoint,
            mac: &mac_hex,
            station_id: &config.station.id,
        };
        let entries = config.nvs.render(&values);
        let bytes = nvs::build(&entries, config.nvs.size as usize)?;
        Ok(DeviceImage {
            mac,
            registration_id,
            device_key,
            key_id: keys.primary.id().clone(),
            secondary_key_id: keys.secondary.as_ref().map(|k| k.id().clone()),
            bytes,
        })
    }

    /// SHA-256 of the image, lowercase hex: recorded with the unit so an auditor can match a
    /// device's flash dump to its record without seeing the key inside.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
}

/// Errors the pipeline itself raises (the device, store and NVS layers have their own).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The MAC was provisioned in another batch and `--reprovision` was not given.
    #[error("{mac} was already provisioned in batch `{batch}` at {at}; nothing was written")]
    #[diagnostic(
        code(station::provision::already_provisioned),
        help(
            "If this unit really must be provisioned again (a rework, a returned unit), run `station provision --reprovision`; it is audited."
        )
    )]
    AlreadyProvisioned {
        /// The device.
        mac: Mac,
        /// The batch it was provisioned in.
        batch: String,
        /// When.
        at: String,
    },
    /// The chip's flash is too small for the configured regions.
    #[error(
        "{mac} has {flash_size} bytes of flash but the images end at {needed:#x}; nothing was written"
    )]
    #[diagnostic(
        code(station::provision::flash_too_small),
        help(
            "Check that this unit's module matches the batch, and [nvs] offset/size and [[firmware]] against its flash size."
        )
    )]
    FlashTooSmall {
        /// The device.
        mac: Mac,
        /// Its flash size in bytes.
        flash_size: u32,
        /// Where the last region ends.
        needed: u32,
    },
    /// The flash read back differs from what was written.
    #[error(
        "verify failed on {mac}: MD5 of {len} bytes at {offset:#x} is {found}, expected {expected}"
    )]
    #[diagnostic(
        code(station::provision::verify_mismatch),
        help(
            "The unit is NOT provisioned. Provision it again; if it fails again, the flash chip or its power may be faulty: set the unit aside."
        )
    )]
    VerifyMismatch {
        /// The device.
        mac: Mac,
        /// The region's offset.
        offset: u32,
        /// The region's length.
        len: usize,
        /// MD5 of the image.
        expected: String,
        /// MD5 the chip computed.
        found: String,
    },
}

/// What a unit's attempt needs besides the device: loaded once per station run.
#[derive(Debug)]
pub struct Station {
    /// The configuration.
    pub config: Config,
    /// The group keys.
    pub keys: GroupKeys,
    /// The database.
    pub store: Store,
    /// The `[[firmware]]` images, read once.
    pub firmware: Vec<Region>,
    /// The DPS client, when `[dps] pre_verify` is on.
    pub dps: Option<crate::dps::DpsClient>,
}

impl Station {
    /// Loads the keys, opens the database (recording the station's configuration and keys in
    /// the audit log when they changed) and reads the firmware images.
    pub async fn open(config: Config) -> Result<Station, Error> {
        let keys = GroupKeys::load(
            &config.dps.group_key_file,
            config.dps.secondary_group_key_file.as_deref(),
        )?;
        let mut firmware = Vec::new();
        for image in &config.firmware {
            let data =
                std::fs::read(&image.file).map_err(|e| Error::io("reading", &image.file, e))?;
            firmware.push(Region::new(image.offset, data));
        }
        let dps = if config.dps.pre_verify {
            Some(crate::dps::DpsClient::new(&config.dps)?)
        } else {
            None
        };
        let store = Store::open(&config.station.database).await?;
        store.record_station_open(&config, &keys).await?;
        Ok(Station {
            config,
            keys,
            store,
            firmware,
            dps,
        })
    }
}

/// Seconds spent in each stage of one attempt, and what the flash stage had to do again.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Reset, sync, chip detection, stub upload, flash detection, baud change.
    pub connect: f64,
    /// MAC, revision, flash size.
    pub identify: f64,
    /// Registration ID, key derivation and NVS image.
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
    /// Fingerprint of the group key used.
    pub key_id: Option<KeyId>,
    /// Whether this was an audited re-provision of a unit from another batch.
    pub reprovision: bool,
    /// The attempt's row.
    pub attempt_id: i64,
    /// DPS pre-verification status.
    pub dps_status: crate::dps::DpsStatus,
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

impl UnitReport {
    /// What the stages established, as a report of a provisioned unit; the caller sets the
    /// outcome and, for a failure, what failed.
    fn of(
        port: String,
        station: &Station,
        request: &Request,
        facts: Facts,
        start: Instant,
        timings: Timings,
        attempt_id: i64,
    ) -> UnitReport {
        let dps = facts.dps;
        UnitReport {
            port,
            batch: request.batch.name.clone(),
            mac: facts.identity.as_ref().map(|i| i.mac),
            registration_id: facts.registration_id,
            outcome: Outcome::Provisioned,
            stage: None,
            error_code: None,
            message: None,
            hint: None,
            seconds: start.elapsed().as_secs_f64(),
            timings,
            chip: facts.identity.map(|i| i.chip),
            image_sha256: facts.image_sha256,
            key_id: Some(station.keys.primary.id().clone()),
            reprovision: facts.reprovision,
            attempt_id,
            dps_status: dps_status(dps.as_ref()),
            assigned_hub: dps.as_ref().and_then(|d| d.assigned_hub.clone()),
            device_id: dps.as_ref().and_then(|d| d.device_id.clone()),
            dps_substatus: dps.as_ref().and_then(|d| d.substatus.clone()),
            dps_error: dps.and_then(|d| d.error),
            warning: None,
        }
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
}

/// A failure on its way to the record.
struct Failed {
    stage: Stage,
    error: Error,
    wrote: bool,
}

fn fail(stage: Stage, wrote: bool) -> impl FnOnce(Error) -> Failed {
    move |error| Failed {
        stage,
        error,
        wrote,
    }
}

/// What the stages established, for the record.
#[derive(Default)]
struct Facts {
    identity: Option<DeviceIdentity>,
    registration_id: Option<RegistrationId>,
    image_sha256: Option<String>,
    reprovision: bool,
    /// When the unit, found already provisioned in this batch, was provisioned.
    skipped: Option<String>,
    dps: Option<crate::store::UnitDps>,
}

/// Runs one unit through the pipeline and records the attempt, pass or fail.
///
/// Returns `Ok` with the report whenever the attempt was recorded (a failed unit included);
/// `Err` only when recording itself failed, in which case the unit is not marked provisioned
/// and re-running the unit re-flashes the same image.
#[instrument(skip_all, fields(port = %device.port().display(), batch = %request.batch.name))]
pub async fn provision<D: Device>(
    device: &mut D,
    station: &Station,
    request: &Request,
    events: Option<&UnboundedSender<Event>>,
) -> Result<UnitReport, Error> {
    let port = device.port().display().to_string();
    let started_at = crate::store::now();
    let start = Instant::now();
    let mut timings = Timings::default();
    let mut facts = Facts::default();
    let attempt_id = station
        .store
        .begin_attempt(&AttemptStart {
            batch_id: request.batch.id,
            station_id: station.config.station.id.clone(),
            operator: request.operator.clone(),
            port: port.clone(),
            started_at: started_at.clone(),
        })
        .await?;
    let emit = |stage: Stage| {
        if let Some(events) = events {
            let _ = events.send(Event::Stage {
                port: port.clone(),
                stage,
            });
        }
    };

    let result = run_stages(
        device,
        station,
        request,
        Opened {
            attempt_id,
            events,
            emit: &emit,
        },
        &mut timings,
        &mut facts,
    )
    .await;

    if let (Ok(()), Some(at)) = (&result, facts.skipped.take()) {
        station.store.discard_attempt(attempt_id).await?;
        let _ = device.reset().await;
        return Ok(UnitReport {
            outcome: Outcome::Skipped,
            message: Some(format!(
                "already provisioned in this batch at {at}; not flashed again"
            )),
            hint: Some(
                "Unplug it and put it with the finished units. To flash it again anyway, run `station provision --port`.".to_owned(),
            ),
            ..UnitReport::of(port, station, request, facts, start, timings, attempt_id)
        });
    }

    emit(Stage::Record);
    let record_start = Instant::now();
    let failure = result.as_ref().err().map(|failed| Failure {
        stage: failed.stage.as_str().to_owned(),
        code: failed.error.code(),
        message: failed.error.to_string(),
        wrote: failed.wrote,
    });
    let unit = facts.identity.as_ref().map(|identity| UnitFacts {
        mac: identity.mac.to_string(),
        registration_id: facts
            .registration_id
            .as_ref()
            .map_or_else(String::new, |id| id.to_string()),
        chip: identity.chip.clone(),
        revision: identity.revision.clone(),
        flash_size: i64::from(identity.flash_size),
        key_id: station.keys.primary.id().to_string(),
        secondary_key_id: station.keys.secondary.as_ref().map(|k| k.id().to_string()),
        image_sha256: facts.image_sha256.clone(),
        dps: facts.dps.clone(),
    });
    let record = AttemptRecord {
        attempt_id: Some(attempt_id),
        batch: request.batch.clone(),
        station_id: station.config.station.id.clone(),
        operator: request.operator.clone(),
        port: port.clone(),
        started_at,
        finished_at: crate::store::now(),
        unit,
        failure,
        reprovision: facts.reprovision,
        timings: serde_json::to_value(&timings).unwrap_or_default(),
    };
    let recorded = station.store.record_attempt(&record).await?;
    timings.record = record_start.elapsed().as_secs_f64();

    // The unit is recorded: a failed reset no longer changes its outcome.
    let mut warning = None;
    if result.is_ok() {
        let reset_start = Instant::now();
        if let Err(e) = device.reset().await {
            warning = Some(format!("provisioned, but the final reset failed: {e}"));
            tracing::warn!(error = %e, "reset after provisioning failed");
        }
        timings.reset = reset_start.elapsed().as_secs_f64();
    } else {
        // A failed unit stays in the loader for a retry, but where the next session (or the
        // line's probe) finds it: the ROM loader at 115200.
        device.release().await;
    }

    let (stage, error_code, message, hint) = match &result {
        Ok(()) => (None, None, None, None),
        Err(failed) => (
            Some(failed.stage),
            Some(failed.error.code()),
            Some(failed.error.to_string()),
            failed.error.hint(),
        ),
    };
    let report = UnitReport {
        outcome: if result.is_ok() {
            Outcome::Provisioned
        } else {
            Outcome::Failed
        },
        stage,
        error_code,
        message,
        hint,
        warning,
        ..UnitReport::of(
            port,
            station,
            request,
            facts,
            start,
            timings,
            recorded.attempt_id,
        )
    };
    match &report.stage {
        None => tracing::info!(mac = ?report.mac, seconds = report.seconds, "unit provisioned"),
        Some(stage) => tracing::warn!(%stage, error.code = ?report.error_code, "unit failed"),
    }
    Ok(report)
}

/// The attempt's open row and where its progress goes.
struct Opened<'a, E: Fn(Stage)> {
    attempt_id: i64,
    events: Option<&'a UnboundedSender<Event>>,
    emit: &'a E,
}

impl<E: Fn(Stage)> Opened<'_, E> {
    /// Announces a stage and notes it in the open attempt, so that a crash during it is
    /// recorded against the right stage (and, once known, the right MAC).
    async fn reached(
        &self,
        station: &Station,
        stage: Stage,
        mac: Option<Mac>,
    ) -> Result<(), Failed> {
        (self.emit)(stage);
        let mac = mac.map(|m| m.to_string());
        station
            .store
            .attempt_reached(self.attempt_id, stage.as_str(), mac.as_deref())
            .await
            .map_err(|e| fail(stage, false)(e.into()))
    }
}

async fn run_stages<D: Device, E: Fn(Stage)>(
    device: &mut D,
    station: &Station,
    request: &Request,
    opened: Opened<'_, E>,
    timings: &mut Timings,
    facts: &mut Facts,
) -> Result<(), Failed> {
    let config = &station.config;
    let (events, emit) = (opened.events, opened.emit);

    emit(Stage::Connect);
    let t = Instant::now();
    let connected = device.connect().await;
    timings.connect = t.elapsed().as_secs_f64();
    // A chip of the wrong model is refused by the chip check, which belongs to identify.
    connected.map_err(|e| {
        let stage = if matches!(e, DeviceError::WrongChip { .. }) {
            Stage::Identify
        } else {
            Stage::Connect
        };
        Failed {
            stage,
            error: e.into(),
            wrote: false,
        }
    })?;

    emit(Stage::Identify);
    let t = Instant::now();
    let identity = device
        .identify()
        .await
        .map_err(|e| fail(Stage::Identify, false)(e.into()))?;
    timings.identify = t.elapsed().as_secs_f64();
    let mac = identity.mac;
    let registration_id = config.dps.registration_id.render(&mac);
    if let Some(events) = events {
        let _ = events.send(Event::Identified {
            port: device.port().display().to_string(),
            mac,
            registration_id: registration_id.clone(),
        });
    }
    facts.registration_id = Some(registration_id);
    facts.identity = Some(identity.clone());
    let regions_end = station
        .firmware
        .iter()
        .map(|r| r.offset + r.data.len() as u32)
        .chain(std::iter::once(config.nvs.offset + config.nvs.size))
        .max()
        .unwrap_or(0);
    if regions_end > identity.flash_size {
        return Err(fail(Stage::Identify, false)(
            ProvisionError::FlashTooSmall {
                mac,
                flash_size: identity.flash_size,
                needed: regions_end,
            }
            .into(),
        ));
    }
    let existing = station
        .store
        .unit_by_mac(&mac.to_string())
        .await
        .map_err(|e| fail(Stage::Identify, false)(e.into()))?;
    if let Some(unit) = existing.as_ref().filter(|u| {
        request.skip_provisioned && u.state == "provisioned" && u.batch_id == request.batch.id
    }) {
        facts.skipped = Some(unit.provisioned_at.clone().unwrap_or_default());
        return Ok(());
    }
    let elsewhere = existing.filter(|u| u.state == "provisioned" && u.batch_id != request.batch.id);
    match elsewhere {
        Some(unit) if !request.reprovision => {
            let batch = batch_name(station, unit.batch_id).await;
            return Err(fail(Stage::Identify, false)(
                ProvisionError::AlreadyProvisioned {
                    mac,
                    batch,
                    at: unit.provisioned_at.unwrap_or_default(),
                }
                .into(),
            ));
        }
        // Only moving a provisioned unit out of another batch counts as a re-provision.
        Some(_) => facts.reprovision = true,
        None => {}
    }

    opened.reached(station, Stage::Build, Some(mac)).await?;
    let t = Instant::now();
    let image = DeviceImage::build(config, &station.keys, mac)
        .map_err(|e| fail(Stage::Build, false)(e.into()))?;
    facts.image_sha256 = Some(image.sha256());
    let nvs_region = Region::new(config.nvs.offset, image.bytes);
    timings.build = t.elapsed().as_secs_f64();

    opened.reached(station, Stage::Flash, None).await?;
    let t = Instant::now();
    let mut regions = station.firmware.clone();
    regions.push(nvs_region);
    let progress =
        events.map(|events| forward_progress(events.clone(), device.port().display().to_string()));
    let written = device
        .write(regions.clone(), progress)
        .await
        .map_err(|e| fail(Stage::Flash, true)(e.into()))?;
    timings.flash = t.elapsed().as_secs_f64();
    timings.flash_restarts = written.restarts;

    emit(Stage::Verify);
    let t = Instant::now();
    for region in &regions {
        let expected: [u8; 16] = Md5::digest(&region.data).into();
        let found = device
            .md5(region.offset, region.data.len() as u32)
            .await
            .map_err(|e| fail(Stage::Verify, true)(e.into()))?;
        if found != expected {
            return Err(fail(Stage::Verify, true)(
                ProvisionError::VerifyMismatch {
                    mac,
                    offset: region.offset,
                    len: region.data.len(),
                    expected: hex::encode(expected),
                    found: hex::encode(found),
                }
                .into(),
            ));
        }
    }
    timings.verify = t.elapsed().as_secs_f64();

    if let Some(client) = &station.dps {
        opened.reached(station, Stage::Dps, None).await?;
        let t = Instant::now();
        let verification =
            crate::dps::pre_verify(client, &image.registration_id, &image.device_key).await;
        timings.dps = t.elapsed().as_secs_f64();
        facts.dps = Some(verification.record());
        // Pending (DPS unreachable) still provisions the unit; a refusal fails it.
        if let (crate::dps::DpsStatus::Failed, Some(error)) =
            (verification.status, verification.error)
        {
            return Err(fail(Stage::Dps, true)(error.into()));
        }
    }
    Ok(())
}

fn dps_status(dps: Option<&crate::store::UnitDps>) -> crate::dps::DpsStatus {
    use crate::dps::DpsStatus;
    match dps.map(|d| d.status.as_str()) {
        Some("assigned") => DpsStatus::Assigned,
        Some("pending") => DpsStatus::Pending,
        Some("failed") => DpsStatus::Failed,
        _ => DpsStatus::NotRequested,
    }
}

async fn batch_name(station: &Station, batch_id: i64) -> String {
    station
        .store
        .batch_by_id(batch_id)
        .await
        .map_or_else(|_| format!("#{batch_id}"), |b| b.name)
}

/// Relays the device layer's flash progress as pipeline events.
fn forward_progress(events: UnboundedSender<Event>, port: String) -> ProgressSender {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(progress) = receiver.recv().await {
            if events
                .send(Event::Flash {
                    port: port.clone(),
                    progress,
                })
                .is_err()
            {
                break;
            }
        }
    });
    sender
}

#[cfg(test)]
mod tests;
