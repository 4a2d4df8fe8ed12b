//! The hardware seam: one ESP32 on a serial port, driven stage by stage.
//!
//! [`Device`] is what the pipeline sees: `connect` (reset into the ROM loader, sync, detect and
//! check the chip, switch to the working baud rate, start the flasher stub, detect the flash),
//! `identify` (MAC, chip, revision, flash size), `write` (every region in one flashing
//! session), `md5` (the verify step), `reset`, and `boot` (reset into the application and hand
//! over its console). Keeping them separate lets the pipeline record which stage failed.
//!
//! [`EspflashDevice`] implements it over the serial-loader protocol
//! (<https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html>),
//! with the espflash library (<https://docs.rs/espflash/4.7.0>) for the wire: its `Connection`
//! (reset strategies, SLIP framing, commands and their replies) and, to start the flasher stub,
//! its `Flasher`. Real hardware and the simulator of [`crate::sim`] go through this same
//! implementation. The module is split along its seams:
//!
//! - [`error`]: [`DeviceError`] and its stable codes;
//! - `settings`: [`SerialSettings`], and `station.toml`'s plain types as espflash's;
//! - `session`: the blocking protocol session (connect, identify, write, MD5, reset);
//! - `stub`: starting espflash's flasher stub without its connect timeouts;
//! - `plan`: what each region needs on the wire (pure);
//! - `classify`: espflash's errors as [`DeviceError`]s;
//! - `espflash`: [`EspflashDevice`], the async shell that runs the session in blocking tasks,
//!   and hands the port over to `tokio-serial` for the application's console.

mod classify;
pub mod error;
mod espflash;
mod plan;
mod session;
mod settings;
mod stub;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

pub use ::espflash::target::Chip;

pub use self::error::{DeviceError, Operation};
pub use self::espflash::EspflashDevice;
pub use self::settings::SerialSettings;
pub use crate::config::{AfterReset, BeforeReset};
use crate::identity::Mac;

/// What [`Device::identify`] reads from the chip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The factory MAC from eFuse.
    pub mac: Mac,
    /// The chip model, as espflash names it (`esp32`).
    pub chip: String,
    /// The silicon revision (`v3.0`), or `unknown`.
    pub revision: String,
    /// The flash size in bytes, from the flash chip's JEDEC ID.
    pub flash_size: u32,
}

/// Bytes to place in flash at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Flash offset; a multiple of 4 KiB.
    pub offset: u32,
    /// The image; shared so the caller keeps it for verification without a copy.
    pub data: Arc<[u8]>,
}

impl Region {
    /// A region of `data` at `offset`.
    pub fn new(offset: u32, data: impl Into<Arc<[u8]>>) -> Self {
        Region {
            offset,
            data: data.into(),
        }
    }
}

/// Progress of a [`Device::write`], one event per flash block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlashProgress {
    /// A region starts; it is sent in `blocks` blocks.
    Started {
        /// The region's offset.
        offset: u32,
        /// How many blocks it takes on the wire.
        blocks: usize,
    },
    /// A block of the region was acknowledged.
    Block {
        /// The region's offset.
        offset: u32,
        /// Blocks done so far.
        done: usize,
        /// Blocks in the region.
        blocks: usize,
    },
    /// The region is written.
    Finished {
        /// The region's offset.
        offset: u32,
    },
}

/// Where [`Device::write`] reports progress.
pub type ProgressSender = UnboundedSender<FlashProgress>;

/// One ESP32 on a serial port, driven stage by stage.
pub trait Device: Send {
    /// The running application's console, as [`Device::boot`] hands it over.
    type Console: tokio::io::AsyncRead + Unpin + Send + 'static;

    /// The port the device is on.
    fn port(&self) -> &Path;

    /// Opens the port and connects: resets per `before`, syncs with the ROM loader, detects the
    /// chip (refusing a chip other than the expected one before anything is written), switches
    /// to the working baud rate, loads the stub if configured and detects the flash.
    fn connect(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Reads the chip's identity: MAC, model, revision and flash size.
    fn identify(&mut self) -> impl Future<Output = Result<DeviceIdentity, DeviceError>> + Send;

    /// Writes every region in one flashing session, compressed. Regions start on 4 KiB
    /// sectors, do not overlap and are padded with `0xFF` to a multiple of 4 bytes; afterwards
    /// every sector they touch holds the region's bytes or `0xFF`. A region refused as corrupted
    /// is written again from its start (a bounded number of times, reported).
    fn write(
        &mut self,
        regions: Vec<Region>,
        progress: Option<ProgressSender>,
    ) -> impl Future<Output = Result<WriteReport, DeviceError>> + Send;

    /// The MD5 of `len` bytes of flash at `offset`, computed by the chip.
    fn md5(
        &mut self,
        offset: u32,
        len: u32,
    ) -> impl Future<Output = Result<[u8; 16], DeviceError>> + Send;

    /// Ends the session per `after` and closes the port.
    fn reset(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Ends the session by resetting the chip into its application (per `after`, which must
    /// be a reset) and hands over the port as the application's console at `baud`, switched
    /// before the reset takes effect so that nothing the chip prints is lost.
    fn boot(
        &mut self,
        baud: u32,
    ) -> impl Future<Output = Result<Self::Console, DeviceError>> + Send;

    /// Ends the session without resetting the chip, as far as it still answers: leaves it in
    /// the ROM loader at the rate the loader listens at after reset (the stub is left with a
    /// soft reset, a ROM moved to the working rate is moved back), so that a retry or a probe
    /// finds it without DTR/RTS. For a failed unit, which stays in download mode. Does nothing
    /// by default.
    fn release(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// What a [`Device::write`] did besides writing, for the attempt's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    /// Every time a region was written again from its start because the loader refused one
    /// of its blocks, in order.
    pub restarts: Vec<Restart>,
    /// Regions that already held their image (checked by MD5) and were not written.
    pub unchanged: u32,
    /// Bytes that had to read `0xFF` and already did (checked by MD5), so were not erased.
    pub already_erased: u32,
}

/// A region written again from its start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restart {
    /// The region's offset.
    pub offset: u32,
    /// The refused data block (0-based).
    pub block: u32,
    /// What the loader said.
    pub reason: String,
}
