//! Stage `boot` (`[boot] enabled`): after the verified flash, reset the unit into its
//! application and read its console until its firmware says it read this unit's configuration
//! ([`crate::boot`]). The redacted excerpt of the log goes with the attempt, pass or fail.

use std::time::Instant;

use super::{DeviceImage, Failed, Run, fail};
use crate::boot::{BootCheck, watch};
use crate::config::TemplateValues;
use crate::device::Device;
use crate::keys::DeviceKey;
use crate::record::Stage;

impl<D: Device> Run<'_, D> {
    /// Resets the unit into its application and judges its boot log, when `[boot]` is on.
    pub(super) async fn boot(&mut self, image: &DeviceImage) -> Result<(), Failed> {
        let config = &self.station.config;
        if !config.boot.enabled {
            return Ok(());
        }
        self.reached(Stage::Boot, None).await?;
        let t = Instant::now();
        let console = self
            .device
            .boot(config.boot.baud)
            .await
            .map_err(fail(Stage::Boot, true))?;
        self.facts.booted = true;
        self.timings.boot_reset = t.elapsed().as_secs_f64();
        let mac = image.mac.hex();
        let values = TemplateValues {
            id_scope: &config.dps.id_scope,
            registration_id: image.registration_id.as_str(),
            device_key: "",
            secondary_device_key: "",
            dps_host: &config.dps.endpoint,
            mac: &mac,
            station_id: &config.station.id,
        };
        // Both device keys are redacted wherever the firmware prints them.
        let secondary = self
            .station
            .keys
            .secondary
            .as_ref()
            .map(|k| k.derive(&image.registration_id));
        let keys: Vec<&DeviceKey> = std::iter::once(&image.device_key)
            .chain(secondary.as_ref())
            .collect();
        let check = BootCheck::new(&config.boot, &values, &keys);
        let report = watch(console, &check).await;
        self.timings.boot = self.finished(Stage::Boot.as_str(), t);
        self.facts.boot_log = Some(report.log);
        report.verdict.map_err(fail(Stage::Boot, true))
    }
}
