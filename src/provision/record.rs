//! Stage `record` and the end of an attempt: the unit, the attempt and its audit entry in one
//! transaction, then the final reset of a provisioned unit (a failed one is released), and the
//! [`UnitReport`].

use std::time::Instant;

use super::{Event, Failed, Outcome, Run, UnitReport};
use crate::device::Device;
use crate::record::{DpsStatus, ErrorCode, Stage};
use crate::store::{AttemptRecord, Failure, Recorded, StoreError, UnitFacts};

impl<D: Device> Run<'_, D> {
    /// Records the attempt, pass or fail; resets a provisioned unit; reports.
    pub(super) async fn record(
        mut self,
        result: Result<(), Failed>,
    ) -> Result<UnitReport, StoreError> {
        self.emit(Stage::Record);
        let t = Instant::now();
        let station = self.station;
        let failure = result.as_ref().err().map(|failed| Failure {
            stage: failed.stage,
            code: ErrorCode::of(&failed.error),
            message: failed.error.to_string(),
            wrote: failed.wrote,
        });
        let unit = self
            .facts
            .identified
            .as_ref()
            .map(|(identity, registration_id)| UnitFacts {
                mac: identity.mac,
                registration_id: registration_id.clone(),
                chip: identity.chip.clone(),
                revision: identity.revision.clone(),
                flash_size: i64::from(identity.flash_size),
                attestation: station.attestor.kind(),
                key_id: station.attestor.key_id(),
                secondary_key_id: station.attestor.secondary_key_id(),
                image_sha256: self.facts.image_sha256.clone(),
                certificate: self.facts.certificate.clone(),
                dps: self.facts.dps.clone(),
                seen_provisioning: self.facts.seen_provisioning,
            });
        let record = AttemptRecord {
            attempt_id: Some(self.attempt_id),
            batch: self.request.batch.clone(),
            station_id: station.config.station.id.clone(),
            operator: self.request.operator.clone(),
            port: self.port.clone(),
            started_at: self.started_at.clone(),
            finished_at: crate::clock::now(),
            unit,
            failure,
            reprovision: self.facts.reprovision,
            timings: serde_json::to_value(&self.timings).unwrap_or_default(),
        };
        let recorded = self.record_holding(&record).await?;
        self.timings.record = self.finished(Stage::Record.as_str(), t);

        // The unit is recorded: a failed reset no longer changes its outcome.
        let mut warning = None;
        if result.is_ok() && recorded.conflict.is_none() {
            let t = Instant::now();
            if let Err(e) = self.device.reset().await {
                warning = Some(format!("provisioned, but the final reset failed: {e}"));
                tracing::warn!(error = %e, "reset after provisioning failed");
            }
            self.timings.reset = self.finished("reset", t);
        } else {
            // A failed unit stays in the loader for a retry, but where the next session (or
            // the line's probe) finds it: the ROM loader at 115200.
            self.device.release().await;
        }

        let mut report = self.report(recorded.attempt_id);
        report.warning = warning;
        if let Err(failed) = &result {
            report.fail(failed.stage, &failed.error);
        } else if let Some(conflict) = &recorded.conflict {
            report.fail(Stage::Record, &conflict.error());
        }
        match &report.stage {
            None => tracing::info!(seconds = report.seconds, "unit provisioned"),
            Some(stage) => {
                tracing::warn!(
                    stage = stage.as_str(),
                    error.code = report.error_code.as_deref(),
                    "unit failed"
                );
            }
        }
        Ok(report)
    }

    /// Records the attempt; while the database is unreachable and the request says to hold
    /// records, announces it and tries again every second.
    async fn record_holding(&self, record: &AttemptRecord) -> Result<Recorded, StoreError> {
        let mut held = false;
        loop {
            match self.station.store.record_attempt(record).await {
                Err(error) if error.is_unreachable() && self.request.hold_records => {
                    if !std::mem::replace(&mut held, true) {
                        tracing::warn!(error = %error, "database unreachable: holding the unit's record");
                        self.send(Event::RecordHeld {
                            port: self.port.clone(),
                            mac: record.unit.as_ref().map(|u| u.mac),
                            error_code: ErrorCode::of(&error).to_string(),
                            message: error.to_string(),
                        });
                    }
                    tokio::time::sleep(super::RECORD_RETRY).await;
                }
                result => return result,
            }
        }
    }

    /// Leaves alone a unit already provisioned in this batch: its attempt row is dropped (it was
    /// no attempt) and nothing was written.
    pub(super) async fn skip(self, provisioned_at: &str) -> Result<UnitReport, StoreError> {
        self.station.store.discard_attempt(self.attempt_id).await?;
        let _ = self.device.reset().await;
        let mut report = self.report(self.attempt_id);
        report.outcome = Outcome::Skipped;
        report.message = Some(format!(
            "already provisioned in this batch at {provisioned_at}; not flashed again"
        ));
        report.hint = Some(
            "Unplug it and put it with the finished units. To flash it again anyway, run `station provision --port`.".to_owned(),
        );
        Ok(report)
    }

    /// What the stages established, as the report of a provisioned unit; the callers set the
    /// outcome and, for a failure, what failed.
    fn report(&self, attempt_id: i64) -> UnitReport {
        let identified = self.facts.identified.as_ref();
        let dps = self.facts.dps.as_ref();
        UnitReport {
            port: self.port.clone(),
            batch: self.request.batch.name.clone(),
            mac: identified.map(|(identity, _)| identity.mac),
            registration_id: identified.map(|(_, id)| id.clone()),
            outcome: Outcome::Provisioned,
            stage: None,
            error_code: None,
            message: None,
            hint: None,
            seconds: self.start.elapsed().as_secs_f64(),
            timings: self.timings.clone(),
            chip: identified.map(|(identity, _)| identity.chip.clone()),
            image_sha256: self.facts.image_sha256.clone(),
            key_id: Some(self.station.attestor.key_id()),
            certificate: self.facts.certificate.clone(),
            reprovision: self.facts.reprovision,
            attempt_id,
            dps_status: dps.map_or(DpsStatus::NotRequested, |d| d.status),
            assigned_hub: dps.and_then(|d| d.assigned_hub.clone()),
            device_id: dps.and_then(|d| d.device_id.clone()),
            dps_substatus: dps.and_then(|d| d.substatus.clone()),
            dps_error: dps.and_then(|d| d.error.clone()),
            warning: None,
        }
    }
}
