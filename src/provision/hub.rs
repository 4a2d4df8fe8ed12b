//! Stage `hub`: with `[hub] test_message`, one device-to-cloud message to the hub DPS assigned
//! the unit, sent as the device ([`crate::hub`]). A unit DPS did not assign (pending, refused)
//! sends none. The hub's refusal, or a hub that cannot be reached, fails the unit at stage
//! `hub`: the unit has not shown that its hub accepts it.

use std::time::Instant;

use miette::Diagnostic as _;

use super::{DeviceImage, Failed, Run, fail};
use crate::device::Device;
use crate::hub::{HubCredential, test_message};
use crate::record::{DpsStatus, HubStatus, Stage, UnitHub};

impl<D: Device> Run<'_, D> {
    /// Sends the test message, when asked for and DPS assigned the unit.
    pub(super) async fn hub_test(&mut self, image: &DeviceImage) -> Result<(), Failed> {
        let Some(client) = &self.station.hub else {
            return Ok(());
        };
        let Some(dps) = self
            .facts
            .dps
            .as_ref()
            .filter(|d| d.status == DpsStatus::Assigned)
        else {
            return Ok(());
        };
        let (Some(hub), Some(device_id)) = (dps.assigned_hub.clone(), dps.device_id.clone()) else {
            return Ok(());
        };
        self.reached(Stage::Hub, None).await?;
        let t = Instant::now();
        let credential = match (image.device_key(), image.certificate()) {
            (Some(key), _) => HubCredential::Key(key),
            (None, Some(credentials)) => HubCredential::Certificate(credentials.tls_identity()),
            (None, None) => return Ok(()),
        };
        let body = test_message(
            &self.station.config.station.id,
            &self.request.batch.name,
            image.registration_id.as_str(),
            &image.mac.to_string(),
        );
        let result = client.send(&hub, &device_id, credential, &body).await;
        self.timings.hub = self.finished(Stage::Hub.as_str(), t);
        match result {
            Ok(()) => {
                self.facts.hub = Some(UnitHub {
                    status: HubStatus::Accepted,
                    error: None,
                });
                Ok(())
            }
            Err(error) => {
                self.facts.hub = Some(UnitHub {
                    status: HubStatus::Failed,
                    error: Some(format!(
                        "{}: {error}",
                        error.code().map_or_else(String::new, |c| c.to_string())
                    )),
                });
                Err(fail(Stage::Hub, true)(error))
            }
        }
    }
}
