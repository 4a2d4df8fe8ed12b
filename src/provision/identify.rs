//! Stages `connect` and `identify`: reach the ROM loader, read the chip's identity, and refuse
//! before anything is written a chip of the wrong model, a flash too small for the regions, a
//! unit provisioned in another batch (unless re-provisioning was asked for), or a unit new to a
//! batch that has no slot left for it (units provisioned and in flight on every station cover
//! its target).

use std::time::Instant;

use super::{Event, Failed, ProvisionError, Run, fail};
use crate::device::{Device, DeviceError};
use crate::identity::Mac;
use crate::record::{Stage, UnitState};

impl<D: Device> Run<'_, D> {
    /// Connects and identifies the device; its MAC, or `None` when the unit is already
    /// provisioned in this batch and is to be left alone.
    pub(super) async fn identify(&mut self) -> Result<Option<Mac>, Failed> {
        self.emit(Stage::Connect);
        let t = Instant::now();
        let connected = self.device.connect().await;
        self.timings.connect = self.finished(Stage::Connect.as_str(), t);
        // A chip of the wrong model is refused by the chip check, which belongs to identify.
        connected.map_err(|e| {
            let stage = if matches!(e, DeviceError::WrongChip { .. }) {
                Stage::Identify
            } else {
                Stage::Connect
            };
            fail(stage, false)(e)
        })?;

        self.emit(Stage::Identify);
        let t = Instant::now();
        let identity = self
            .device
            .identify()
            .await
            .map_err(fail(Stage::Identify, false))?;
        // A blank or damaged eFuse reads as all zeros, all ones or a multicast address: such a
        // unit would share its registration ID with every other like it.
        let mac = identity
            .mac
            .usable()
            .map_err(fail(Stage::Identify, false))?;
        let registration_id = self.station.config.dps.registration_id.render(&mac);
        let span = tracing::Span::current();
        span.record("mac", tracing::field::display(mac));
        span.record("registration_id", tracing::field::display(&registration_id));
        self.timings.identify = self.finished(Stage::Identify.as_str(), t);
        self.send(Event::Identified {
            port: self.port.clone(),
            mac,
            registration_id: registration_id.clone(),
        });
        let flash_size = identity.flash_size;
        self.facts.identified = Some((identity, registration_id));

        let config = &self.station.config;
        // Offsets and sizes were bounded at load time; the sums are still taken in u64, so no
        // value can wrap past the check.
        let regions_end = self
            .station
            .firmware
            .iter()
            .map(|r| u64::from(r.offset) + r.data.len() as u64)
            .chain(std::iter::once(
                u64::from(config.nvs.offset) + u64::from(config.nvs.size),
            ))
            .max()
            .unwrap_or(0);
        if regions_end > u64::from(flash_size) {
            let needed = u32::try_from(regions_end).unwrap_or(u32::MAX);
            return Err(fail(Stage::Identify, false)(
                ProvisionError::FlashTooSmall {
                    mac,
                    flash_size,
                    needed,
                },
            ));
        }
        let sighting = self
            .station
            .store
            .unit_sighting(&mac)
            .await
            .map_err(fail(Stage::Identify, false))?;
        self.facts.seen_provisioning = sighting.last_provisioning;
        let batch_id = self.request.batch.id;
        let provisioned = sighting.unit.filter(|u| u.state == UnitState::Provisioned);
        let in_batch = provisioned.as_ref().is_some_and(|u| u.batch_id == batch_id);
        match provisioned {
            Some(unit) if unit.batch_id == batch_id && self.request.skip_provisioned => {
                self.facts.skipped = Some(unit.provisioned_at.unwrap_or_default());
                return Ok(None);
            }
            Some(unit) if unit.batch_id != batch_id && !self.request.reprovision => {
                let batch = self
                    .station
                    .store
                    .batch_by_id(unit.batch_id)
                    .await
                    .map_or_else(|_| format!("#{}", unit.batch_id), |b| b.name);
                return Err(fail(Stage::Identify, false)(
                    ProvisionError::AlreadyProvisioned {
                        mac,
                        batch,
                        at: unit.provisioned_at.unwrap_or_default(),
                    },
                ));
            }
            // Only moving a provisioned unit out of another batch counts as a re-provision.
            Some(unit) if unit.batch_id != batch_id => self.facts.reprovision = true,
            _ => {}
        }
        // A unit the batch already counts needs no slot; any other takes one (unless its attempt
        // began with one) before anything is written, or waits for the next batch.
        if !in_batch && !self.request.claim_at_start {
            self.station
                .store
                .claim_slot(self.attempt_id, batch_id)
                .await
                .map_err(fail(Stage::Identify, false))?;
        }
        Ok(Some(mac))
    }
}
