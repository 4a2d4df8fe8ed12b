//! Stages `flash` and `verify`: every `[[firmware]]` image, the `esp_secure_cert` image (X.509
//! with `[secure_cert]`) and the NVS image in one flashing session, then the chip's MD5 of each
//! written region against the image's.

use std::time::Instant;

use md5::{Digest as _, Md5};
use tokio::sync::mpsc::UnboundedSender;

use super::{DeviceImage, Event, Failed, ProvisionError, Run, fail};
use crate::device::{Device, ProgressSender};
use crate::record::Stage;

impl<D: Device> Run<'_, D> {
    /// Writes the regions and verifies each by MD5.
    pub(super) async fn flash(&mut self, image: &DeviceImage) -> Result<(), Failed> {
        self.reached(Stage::Flash, None).await?;
        let t = Instant::now();
        let mut regions = self.station.firmware.clone();
        regions.extend(image.regions(self.station.config.nvs.offset));
        let progress = self
            .events
            .map(|events| forward_progress(events.clone(), self.port.clone()));
        let written = self
            .device
            .write(regions.clone(), progress)
            .await
            .map_err(fail(Stage::Flash, true))?;
        self.timings.flash = self.finished(Stage::Flash.as_str(), t);
        self.timings.flash_restarts = written.restarts;

        self.emit(Stage::Verify);
        let t = Instant::now();
        for region in &regions {
            let expected: [u8; 16] = Md5::digest(&region.data).into();
            let found = self
                .device
                .md5(region.offset, region.data.len() as u32)
                .await
                .map_err(fail(Stage::Verify, true))?;
            if found != expected {
                return Err(fail(Stage::Verify, true)(ProvisionError::VerifyMismatch {
                    mac: image.mac,
                    offset: region.offset,
                    len: region.data.len(),
                    expected: hex::encode(expected),
                    found: hex::encode(found),
                }));
            }
        }
        self.timings.verify = self.finished(Stage::Verify.as_str(), t);
        Ok(())
    }
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
