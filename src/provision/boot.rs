//! Stage `boot` (`[boot] enabled`): after the verified flash, reset the unit into its
//! application and read its console until its firmware says it read this unit's configuration
//! ([`crate::boot`]). The redacted excerpt of the log goes with the attempt, pass or fail.

use std::time::Instant;

use zeroize::Zeroizing;

use super::{DeviceImage, Failed, Run, fail};
use crate::boot::{BootCheck, watch};
use crate::config::TemplateValues;
use crate::device::Device;
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
            device_cert: "",
            device_private_key: "",
            ca_chain: "",
        };
        let secrets = unit_secrets(self.station, image);
        let secrets: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
        let check = BootCheck::new(&config.boot, &values, &secrets);
        let report = watch(console, &check).await;
        self.timings.boot = self.finished(Stage::Boot.as_str(), t);
        self.facts.boot_log = Some(report.log);
        report.verdict.map_err(fail(Stage::Boot, true))
    }
}

/// What of the unit's own credential must never be kept from its boot log: its device keys
/// (primary and secondary), or the lines of its private key's PEM.
fn unit_secrets(station: &crate::station::Station, image: &DeviceImage) -> Vec<Zeroizing<String>> {
    let mut secrets = Vec::new();
    if let Some(key) = image.device_key() {
        secrets.push(Zeroizing::new(key.expose().to_owned()));
    }
    if let Some(secondary) = station
        .attestor
        .group_keys()
        .and_then(|keys| keys.secondary.as_ref())
    {
        let key = secondary.derive(&image.registration_id);
        secrets.push(Zeroizing::new(key.expose().to_owned()));
    }
    if let Some(credentials) = image.certificate() {
        secrets.extend(
            credentials
                .private_key()
                .expose_pem()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with("-----"))
                .map(|line| Zeroizing::new(line.to_owned())),
        );
    }
    secrets
}
