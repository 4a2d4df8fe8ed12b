//! The hardware seam: one ESP32 on a serial port, driven stage by stage.
//!
//! [`Device`] is what the pipeline sees: `connect` (reset into the ROM loader, sync, detect and
//! check the chip, start the flasher stub, detect the flash), `identify` (MAC, chip, revision,
//! flash size), `write` (every region in one flashing session), `md5` (the verify step) and
//! `reset`. Keeping them separate lets the pipeline record which stage failed.
//!
//! [`EspflashDevice`] implements it with the espflash library (<https://docs.rs/espflash/4.7.0>)
//! speaking Espressif's serial protocol
//! (<https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html>).
//! espflash is blocking, so every call runs inside [`tokio::task::spawn_blocking`] with the
//! flasher moved into the task and back. Real hardware and the simulator of [`crate::sim`] go
//! through this same implementation.
//!
//! Facts about espflash 4.7 this module is built on:
//! - with the stub, `write_bins_to_flash` ends with FLASH_DEFL_END "stay" and then the
//!   connection's after-reset; the connection is therefore opened with "stay in the stub" and
//!   [`Device::reset`] applies [`AfterReset`] itself, after the verify step;
//! - in ROM mode (`stub = false`) `write_bins_to_flash` always ends with FLASH_END "reboot",
//!   which makes the ROM leave the loader, so no MD5 could follow. In ROM mode the regions are
//!   written with espflash's flash target directly (SPI_ATTACH, FLASH_BEGIN/FLASH_DATA per
//!   region) and FLASH_END is never sent, as esptool does: the chip stays in the loader for
//!   the MD5, and [`Device::reset`] ends the session. This path attaches the flash with the
//!   default (eFuse) SPI pins, so ESP32-PICO-D4 modules need the stub;
//! - the port is opened exclusively (TIOCEXCL and an exclusive `flock`, which also stops root
//!   and esptool's pyserial); a held port is [`DeviceError::PortBusy`] at once, not a hang;
//! - passing the expected chip to espflash's connect makes it refuse another chip right after
//!   detection, before the stub is uploaded or anything reaches flash;
//! - `no-reset` before and after never touches DTR/RTS, which pseudo-terminals lack.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use espflash::command::Command;
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{Flasher, SpiAttachParams};
use espflash::image_format::Segment;
use espflash::target::{Esp32Target, FlashTarget, ProgressCallbacks};
use serialport::{SerialPort, SerialPortType, TTYPort, UsbPortInfo};
use tokio::sync::mpsc::UnboundedSender;

pub use espflash::target::Chip;

pub use crate::config::{AfterReset, BeforeReset};
use crate::flash::SECTOR_SIZE;
use crate::identity::Mac;
use crate::support::error_chain;

/// The baud rate the ROM loader listens at after reset; the link switches to
/// [`SerialSettings::baud`] once connected.
const CONNECT_BAUD: u32 = 115_200;
/// espflash's per-read timeout outside commands that set their own.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors talking to a device. Every variant names the port; the pipeline adds the stage.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DeviceError {
    /// The port does not exist.
    #[error("serial port {port} not found")]
    #[diagnostic(
        code(station::device::port_not_found),
        help(
            "Check the cable and the path (ls /dev/ttyUSB* /dev/ttyACM* /dev/serial/by-id/); a simulated line prints its ports when it starts."
        )
    )]
    PortNotFound {
        /// The port.
        port: PathBuf,
    },
    /// Another process holds the port.
    #[error("serial port {port} is in use by another program")]
    #[diagnostic(
        code(station::device::port_busy),
        help(
            "Close the other program (a serial monitor, esptool, espflash, another station) and provision the unit again."
        )
    )]
    PortBusy {
        /// The port.
        port: PathBuf,
    },
    /// The port exists but cannot be opened as a serial port.
    #[error("cannot open serial port {port}: {source}")]
    #[diagnostic(
        code(station::device::port_open),
        help(
            "Check that the station's user may use the port (on Linux, membership of the dialout or uucp group) and that the path is a serial device."
        )
    )]
    PortOpen {
        /// The port.
        port: PathBuf,
        /// What the serial layer reported.
        #[source]
        source: serialport::Error,
    },
    /// A reset through DTR/RTS was asked for on a port without those lines.
    #[error("serial port {port} has no DTR/RTS lines to reset the chip with")]
    #[diagnostic(
        code(station::device::no_reset_lines),
        help(
            "This is a pseudo-terminal or a bare UART: set [serial] before = \"no-reset\" and after = \"no-reset\", and put the chip into download mode by holding BOOT (GPIO0) low during reset."
        )
    )]
    NoResetLines {
        /// The port.
        port: PathBuf,
    },
    /// The ROM loader never answered SYNC.
    #[error("no answer from the ROM loader on {port}")]
    #[diagnostic(
        code(station::device::no_sync),
        help(
            "Is the chip in download mode? With before = \"default-reset\" the board's auto-reset circuit must be wired to DTR/RTS; with \"no-reset\" hold BOOT (GPIO0) low while pressing RESET. Also check power, the cable and that nothing else drives the UART."
        )
    )]
    NoSync {
        /// The port.
        port: PathBuf,
    },
    /// The chip is not the model the line expects; nothing was written.
    #[error("wrong chip on {port}: expected {expected}, found {found}")]
    #[diagnostic(
        code(station::device::wrong_chip),
        help(
            "Nothing was written to this unit. Set it aside, or change [serial] chip if the whole batch really is this chip."
        )
    )]
    WrongChip {
        /// The port.
        port: PathBuf,
        /// The chip the line expects.
        expected: String,
        /// The chip found.
        found: String,
    },
    /// The chip stopped answering a command.
    #[error("timeout on {port}: no answer to {command} while {during}")]
    #[diagnostic(
        code(station::device::timeout),
        help(
            "The chip stopped answering mid-session: check the cable and the power supply, try a lower [serial] baud, and provision the unit again."
        )
    )]
    Timeout {
        /// The port.
        port: PathBuf,
        /// The protocol command that went unanswered (espflash's name, e.g. `FlashDeflData`).
        command: String,
        /// What the station was doing.
        during: Operation,
    },
    /// The port vanished or hung up mid-session.
    #[error("serial port {port} disappeared while {during}")]
    #[diagnostic(
        code(station::device::unplugged),
        help(
            "The device was unplugged or its USB link reset. Re-seat the cable and provision the unit again; a partly written image is rewritten and verified on the next attempt."
        )
    )]
    Unplugged {
        /// The port.
        port: PathBuf,
        /// What the station was doing.
        during: Operation,
    },
    /// The loader answered a command with an error status.
    #[error("the loader on {port} refused {command} while {during}: {detail}")]
    #[diagnostic(
        code(station::device::rejected),
        help(
            "Provision the unit again; if the same command keeps failing the chip or its flash is likely faulty."
        )
    )]
    Rejected {
        /// The port.
        port: PathBuf,
        /// The refused command (espflash's name).
        command: String,
        /// What the station was doing.
        during: Operation,
        /// The loader's reason.
        detail: String,
    },
    /// The device answered something that is not the protocol.
    #[error("unexpected answer from {port} while {during}: {detail}")]
    #[diagnostic(
        code(station::device::protocol),
        help(
            "Line noise or a device that is not an ESP32 ROM loader. Check the cable, try a lower [serial] baud, and provision the unit again."
        )
    )]
    Protocol {
        /// The port.
        port: PathBuf,
        /// What the station was doing.
        during: Operation,
        /// What was wrong.
        detail: String,
    },
    /// A region to write does not start on a flash sector.
    #[error("region at {offset:#x} does not start on a 4 KiB flash sector")]
    #[diagnostic(
        code(station::device::region_misaligned),
        help(
            "Flash is erased in 4 KiB sectors; place NVS and firmware images at offsets that are multiples of 0x1000, as the partition table does."
        )
    )]
    RegionMisaligned {
        /// The region's offset.
        offset: u32,
    },
    /// A region to write runs past the end of the flash.
    #[error("region at {offset:#x} of {len} bytes does not fit in the {flash_size}-byte flash")]
    #[diagnostic(
        code(station::device::region_out_of_range),
        help(
            "Check the offsets in station.toml against the partition table and the flash size of the module."
        )
    )]
    RegionOutOfRange {
        /// The region's offset.
        offset: u32,
        /// The region's length.
        len: usize,
        /// The flash size found at identify.
        flash_size: u32,
    },
    /// Two regions to write overlap.
    #[error("regions at {first:#x} and {second:#x} overlap")]
    #[diagnostic(
        code(station::device::regions_overlap),
        help("Check the offsets in station.toml: each image needs its own flash range.")
    )]
    RegionsOverlap {
        /// The earlier region's offset.
        first: u32,
        /// The later region's offset.
        second: u32,
    },
    /// The reset after the unit failed.
    #[error("cannot reset the chip on {port}: {detail}")]
    #[diagnostic(
        code(station::device::reset_failed),
        help(
            "Ports without DTR/RTS (pseudo-terminals, bare UARTs) need [serial] after = \"no-reset\"; otherwise press RESET on the unit."
        )
    )]
    ResetFailed {
        /// The port.
        port: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A stage was called before `connect` (or after `reset`).
    #[error("device on {port} is not connected")]
    #[diagnostic(
        code(station::device::not_connected),
        help("This is a bug in the caller: connect before identify, write, md5 or reset.")
    )]
    NotConnected {
        /// The port.
        port: PathBuf,
    },
    /// A stage ran past [`SerialSettings::stage_timeout`].
    #[error("device on {port} stalled: {during} took longer than {limit:?}")]
    #[diagnostic(
        code(station::device::stalled),
        help("The session was abandoned; unplug and re-plug the unit and provision it again.")
    )]
    Stalled {
        /// The port.
        port: PathBuf,
        /// What the station was doing.
        during: Operation,
        /// The limit that was exceeded.
        limit: Duration,
    },
    /// espflash failed in a way not classified above.
    #[error("espflash failed on {port} while {during}: {detail}")]
    #[diagnostic(
        code(station::device::espflash),
        help(
            "Provision the unit again; if it keeps failing, run with STATION_LOG=debug and report the log."
        )
    )]
    Espflash {
        /// The port.
        port: PathBuf,
        /// What the station was doing.
        during: Operation,
        /// espflash's error chain.
        detail: String,
    },
}

/// What the station was doing when a device error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Resetting, syncing, detecting the chip, starting the stub.
    Connecting,
    /// Reading the MAC, revision and flash size.
    Identifying,
    /// Writing flash.
    Writing,
    /// Computing a flash MD5.
    Verifying,
    /// Resetting after the unit.
    Resetting,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Connecting => "connecting",
            Operation::Identifying => "identifying",
            Operation::Writing => "writing flash",
            Operation::Verifying => "verifying flash",
            Operation::Resetting => "resetting",
        })
    }
}

/// How to talk to the device on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The baud rate after connecting (the ROM loader is always reached at 115200).
    pub baud: u32,
    /// How to enter the ROM loader.
    pub before: BeforeReset,
    /// What to do after the unit.
    pub after: AfterReset,
    /// The chip the line expects; any other is refused before anything is written.
    pub chip: Chip,
    /// Whether to upload and use the flasher stub (compressed writes, faster MD5).
    pub stub: bool,
    /// An upper bound on any one stage; `None` relies on espflash's per-command timeouts.
    /// When it fires the session is abandoned ([`DeviceError::Stalled`]).
    pub stage_timeout: Option<Duration>,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 921_600,
            before: BeforeReset::DefaultReset,
            after: AfterReset::HardReset,
            chip: Chip::Esp32,
            stub: true,
            stage_timeout: None,
        }
    }
}

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
    /// The port the device is on.
    fn port(&self) -> &Path;

    /// Opens the port and connects: resets per `before`, syncs with the ROM loader, detects the
    /// chip (refusing a chip other than the expected one before anything is written), loads the
    /// stub if configured, detects the flash and switches to the working baud rate.
    fn connect(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Reads the chip's identity: MAC, model, revision and flash size.
    fn identify(&mut self) -> impl Future<Output = Result<DeviceIdentity, DeviceError>> + Send;

    /// Writes every region in one flashing session (compressed when the stub runs). Regions
    /// start on 4 KiB sectors, do not overlap and are padded with `0xFF` to a multiple of 4
    /// bytes; the sectors they touch are erased.
    fn write(
        &mut self,
        regions: Vec<Region>,
        progress: Option<ProgressSender>,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// The MD5 of `len` bytes of flash at `offset`, computed by the chip.
    fn md5(
        &mut self,
        offset: u32,
        len: u32,
    ) -> impl Future<Output = Result<[u8; 16], DeviceError>> + Send;

    /// Ends the session per `after` and closes the port.
    fn reset(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

/// A [`Device`] driven by the espflash library.
#[derive(Debug)]
pub struct EspflashDevice {
    port: PathBuf,
    settings: SerialSettings,
    flasher: Option<Flasher>,
    flash_size: Option<u32>,
}

impl EspflashDevice {
    /// A device on `port`; nothing is opened until [`Device::connect`].
    pub fn new(port: impl Into<PathBuf>, settings: SerialSettings) -> Self {
        EspflashDevice {
            port: port.into(),
            settings,
            flasher: None,
            flash_size: None,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    /// Runs `f` on the flasher in a blocking task, then puts the flasher back.
    async fn with_flasher<T, F>(&mut self, during: Operation, f: F) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Flasher, &Path) -> Result<T, DeviceError> + Send + 'static,
    {
        let mut flasher = self
            .flasher
            .take()
            .ok_or_else(|| DeviceError::NotConnected {
                port: self.port.clone(),
            })?;
        let port = self.port.clone();
        // The blocking thread logs inside the caller's span (the unit's port, MAC, ...).
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _unit = span.enter();
            let result = f(&mut flasher, &port);
            (flasher, result)
        });
        let (flasher, result) = self.join(during, task).await?;
        self.flasher = Some(flasher);
        result
    }

    /// Awaits a blocking task, bounded by the stage timeout if one is set.
    async fn join<T>(
        &self,
        during: Operation,
        task: tokio::task::JoinHandle<T>,
    ) -> Result<T, DeviceError> {
        let joined = match self.settings.stage_timeout {
            Some(limit) => {
                tokio::time::timeout(limit, task)
                    .await
                    .map_err(|_| DeviceError::Stalled {
                        port: self.port.clone(),
                        during,
                        limit,
                    })?
            }
            None => task.await,
        };
        joined.map_err(|e| DeviceError::Espflash {
            port: self.port.clone(),
            during,
            detail: format!("the blocking task failed: {e}"),
        })
    }
}

impl Device for EspflashDevice {
    fn port(&self) -> &Path {
        &self.port
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        // A second connect starts a fresh session.
        self.flasher = None;
        self.flash_size = None;
        let port = self.port.clone();
        let settings = self.settings.clone();
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _unit = span.enter();
            open_and_connect(&port, &settings)
        });
        let flasher = self.join(Operation::Connecting, task).await??;
        self.flasher = Some(flasher);
        tracing::debug!(port = %self.port.display(), "connected");
        Ok(())
    }

    async fn identify(&mut self) -> Result<DeviceIdentity, DeviceError> {
        let identity = self
            .with_flasher(Operation::Identifying, |flasher, port| {
                let info = flasher
                    .device_info()
                    .map_err(|e| classify(e, port, Operation::Identifying))?;
                let protocol = |detail: String| DeviceError::Protocol {
                    port: port.to_owned(),
                    during: Operation::Identifying,
                    detail,
                };
                let mac_text = info
                    .mac_address
                    .ok_or_else(|| protocol("the chip did not report a MAC".to_owned()))?;
                // Whether the address is usable is the pipeline's question (stage identify).
                let mac = Mac::parse_any(&mac_text)
                    .map_err(|_| protocol(format!("the chip reported MAC `{mac_text}`")))?;
                Ok(DeviceIdentity {
                    mac,
                    chip: info.chip.to_string(),
                    revision: info.revision.map_or_else(
                        || "unknown".to_owned(),
                        |(major, minor)| format!("v{major}.{minor}"),
                    ),
                    flash_size: info.flash_size.size(),
                })
            })
            .await?;
        self.flash_size = Some(identity.flash_size);
        Ok(identity)
    }

    async fn write(
        &mut self,
        regions: Vec<Region>,
        progress: Option<ProgressSender>,
    ) -> Result<(), DeviceError> {
        check_regions(&regions, self.flash_size)?;
        if regions.is_empty() {
            return Ok(());
        }
        let stub = self.settings.stub;
        let chip = self.settings.chip;
        self.with_flasher(Operation::Writing, move |flasher, port| {
            let padded: Vec<Vec<u8>> = regions.iter().map(|r| padded(&r.data)).collect();
            let segments: Vec<Segment<'_>> = regions
                .iter()
                .zip(&padded)
                .map(|(region, data)| Segment::new(region.offset, data))
                .collect();
            let mut progress = Progress::new(progress);
            let written = if stub {
                flasher.write_bins_to_flash(&segments, &mut progress)
            } else {
                write_in_rom(flasher, chip, &segments, &mut progress)
            };
            written.map_err(|e| classify(e, port, Operation::Writing))
        })
        .await
    }

    async fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16], DeviceError> {
        self.with_flasher(Operation::Verifying, move |flasher, port| {
            flasher
                .checksum_md5(offset, len)
                .map(u128::to_be_bytes)
                .map_err(|e| classify(e, port, Operation::Verifying))
        })
        .await
    }

    async fn reset(&mut self) -> Result<(), DeviceError> {
        let after = self.settings.after;
        let stub = self.settings.stub;
        let result = self
            .with_flasher(Operation::Resetting, move |flasher, port| {
                let connection = flasher.connection();
                let reset = match after {
                    AfterReset::HardReset => connection.reset(),
                    AfterReset::NoReset if stub => leave_stub(connection),
                    // The ROM loader is where "no reset" leaves the chip anyway.
                    AfterReset::NoReset => Ok(()),
                };
                reset.map_err(|e| match classify(e, port, Operation::Resetting) {
                    e @ DeviceError::Unplugged { .. } => e,
                    other => DeviceError::ResetFailed {
                        port: port.to_owned(),
                        detail: other.to_string(),
                    },
                })
            })
            .await;
        // The session is over either way: close the port.
        self.flasher = None;
        self.flash_size = None;
        result
    }
}

/// Opens the port and runs espflash's connect sequence.
fn open_and_connect(port: &Path, settings: &SerialSettings) -> Result<Flasher, DeviceError> {
    let mut serial = open_port(port)?;
    if settings.before != BeforeReset::NoReset && serial.read_carrier_detect().is_err() {
        return Err(DeviceError::NoResetLines {
            port: port.to_owned(),
        });
    }
    let before = match settings.before {
        BeforeReset::DefaultReset => ResetBeforeOperation::DefaultReset,
        BeforeReset::UsbReset => ResetBeforeOperation::UsbReset,
        BeforeReset::NoReset => ResetBeforeOperation::NoReset,
    };
    // Stay in the stub after writing: the MD5 comes next, and `reset` applies `after`.
    let connection = Connection::new(
        serial,
        usb_info(port),
        ResetAfterOperation::NoResetNoStub,
        before,
        CONNECT_BAUD,
    );
    Flasher::connect(
        connection,
        settings.stub,
        false,
        false,
        Some(settings.chip),
        Some(settings.baud),
    )
    .map_err(|e| classify(e, port, Operation::Connecting))
}

/// Opens the port at the ROM loader's rate, exclusively.
fn open_port(port: &Path) -> Result<TTYPort, DeviceError> {
    if !port.exists() {
        return Err(DeviceError::PortNotFound {
            port: port.to_owned(),
        });
    }
    serialport::new(port.to_string_lossy(), CONNECT_BAUD)
        .timeout(READ_TIMEOUT)
        .open_native()
        .map_err(|source| match source.kind() {
            // EBUSY from TIOCEXCL and a held flock both come back as NoDevice.
            serialport::ErrorKind::NoDevice => DeviceError::PortBusy {
                port: port.to_owned(),
            },
            serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => DeviceError::PortNotFound {
                port: port.to_owned(),
            },
            _ => DeviceError::PortOpen {
                port: port.to_owned(),
                source,
            },
        })
}

/// The USB identity of the adapter behind `port`, which decides espflash's reset sequence
/// (USB-Serial-JTAG or a USB-UART bridge). Ports the OS does not list (pseudo-terminals) get
/// an all-zero identity.
fn usb_info(port: &Path) -> UsbPortInfo {
    let wanted = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_owned());
    serialport::available_ports()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| std::fs::canonicalize(&p.port_name).is_ok_and(|path| path == wanted))
        .find_map(|p| match p.port_type {
            SerialPortType::UsbPort(info) => Some(info),
            _ => None,
        })
        .unwrap_or(UsbPortInfo {
            vid: 0,
            pid: 0,
            serial_number: None,
            manufacturer: None,
            product: None,
        })
}

/// Checks regions before anything is sent.
fn check_regions(regions: &[Region], flash_size: Option<u32>) -> Result<(), DeviceError> {
    let mut sorted: Vec<&Region> = regions.iter().collect();
    sorted.sort_by_key(|r| r.offset);
    for region in &sorted {
        if !region.offset.is_multiple_of(SECTOR_SIZE) {
            return Err(DeviceError::RegionMisaligned {
                offset: region.offset,
            });
        }
        let end = u64::from(region.offset) + region.data.len() as u64;
        if let Some(size) = flash_size
            && end > u64::from(size)
        {
            return Err(DeviceError::RegionOutOfRange {
                offset: region.offset,
                len: region.data.len(),
                flash_size: size,
            });
        }
    }
    for pair in sorted.windows(2) {
        let end = u64::from(pair[0].offset) + pair[0].data.len() as u64;
        if end > u64::from(pair[1].offset) {
            return Err(DeviceError::RegionsOverlap {
                first: pair[0].offset,
                second: pair[1].offset,
            });
        }
    }
    Ok(())
}

/// The region padded with `0xFF` to a multiple of 4 bytes, as flash writes need.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().next_multiple_of(4), 0xFF);
    out
}

/// Writes the segments through the ROM loader without ending the flash session: espflash's
/// own `write_bins_to_flash` would send FLASH_END with "reboot", and the ROM would leave the
/// loader before the verify step.
fn write_in_rom(
    flasher: &mut Flasher,
    chip: Chip,
    segments: &[Segment<'_>],
    progress: &mut Progress,
) -> Result<(), espflash::Error> {
    let mut target = Esp32Target::new(chip, SpiAttachParams::default(), false, false, false);
    let connection = flasher.connection();
    target.begin(connection)?;
    for segment in segments {
        target.write_segment(connection, segment.borrow(), progress)?;
    }
    Ok(())
}

/// Leaves the stub for the ROM loader without touching DTR/RTS: an empty FLASH_BEGIN, then
/// FLASH_END with "reboot", which the stub answers and follows with a software reset. The
/// download-mode straps stay latched, so the ROM loader comes back up.
fn leave_stub(connection: &mut Connection) -> Result<(), espflash::Error> {
    connection.command(Command::FlashBegin {
        size: 0,
        blocks: 0,
        block_size: 0x400,
        offset: 0,
        supports_encryption: false,
    })?;
    connection.command(Command::FlashEnd { reboot: true })?;
    Ok(())
}

/// Forwards espflash's progress callbacks as [`FlashProgress`] events.
struct Progress {
    sender: Option<ProgressSender>,
    offset: u32,
    blocks: usize,
}

impl Progress {
    fn new(sender: Option<ProgressSender>) -> Self {
        Progress {
            sender,
            offset: 0,
            blocks: 0,
        }
    }

    fn send(&self, event: FlashProgress) {
        if let Some(sender) = &self.sender {
            // A receiver that went away only means nobody watches the progress.
            let _ = sender.send(event);
        }
    }
}

impl ProgressCallbacks for Progress {
    fn init(&mut self, addr: u32, total: usize) {
        self.offset = addr;
        self.blocks = total;
        self.send(FlashProgress::Started {
            offset: addr,
            blocks: total,
        });
    }

    fn update(&mut self, current: usize) {
        self.send(FlashProgress::Block {
            offset: self.offset,
            done: current,
            blocks: self.blocks,
        });
    }

    fn verifying(&mut self) {}

    fn finish(&mut self, _skipped: bool) {
        self.send(FlashProgress::Finished {
            offset: self.offset,
        });
    }
}

/// Maps an espflash error to a stable [`DeviceError`].
///
/// espflash 4.7 keeps its connection and ROM error types private; they reach us boxed inside
/// `Error::Connection`, `Error::Flashing` and `Error::RomError`. The classification therefore
/// walks the source chain for the public `std::io::Error` / `serialport::Error` underneath
/// and, for timeouts and ROM errors, reads the command name from their messages ("Timeout while
/// running FlashDeflData command", "Error while running FlashMd5 command"). espflash is pinned
/// to =4.7.0, and the integration tests against the simulator pin these texts down.
fn classify(error: espflash::Error, port: &Path, during: Operation) -> DeviceError {
    let port = port.to_owned();
    let chain = error_chain(&error);
    if let espflash::Error::ChipMismatch(expected, found) = &error {
        return DeviceError::WrongChip {
            port,
            expected: expected.clone(),
            found: found.clone(),
        };
    }
    if is_disconnect(&error) || !port.exists() {
        return DeviceError::Unplugged { port, during };
    }
    let timed_out = command_in(&chain, "Timeout while running ")
        .or_else(|| is_io_timeout(&error).then_some(None));
    if let Some(command) = timed_out {
        return DeviceError::Timeout {
            port,
            command: command.unwrap_or_else(|| "a command".to_owned()),
            during,
        };
    }
    match &error {
        espflash::Error::RomError(_) => {
            let command = command_in(&chain, "Error while running ")
                .flatten()
                .unwrap_or_else(|| "a command".to_owned());
            DeviceError::Rejected {
                port,
                command,
                during,
                detail: chain.last().cloned().unwrap_or_default(),
            }
        }
        espflash::Error::Connection(_)
            if during == Operation::Connecting
                && chain.iter().any(|m| {
                    m.contains("Failed to connect to the device")
                        || m.contains("getting no sync reply")
                        || m.contains("Wrong boot mode")
                }) =>
        {
            DeviceError::NoSync { port }
        }
        espflash::Error::ChipDetectError(detail) | espflash::Error::InvalidResponse(detail) => {
            DeviceError::Protocol {
                port,
                during,
                detail: detail.clone(),
            }
        }
        espflash::Error::IncorrectResponse
        | espflash::Error::FlashConnect
        | espflash::Error::UnsupportedFlash(_) => DeviceError::Protocol {
            port,
            during,
            detail: chain.join(": "),
        },
        _ if chain.iter().any(|m| {
            m.contains("stub handshake") || m.contains("SLIP framing") || m.contains("too large")
        }) =>
        {
            DeviceError::Protocol {
                port,
                during,
                detail: chain.join(": "),
            }
        }
        _ => DeviceError::Espflash {
            port,
            during,
            detail: chain.join(": "),
        },
    }
}

/// Finds `prefix<Command> command` in the chain: `Some(Some(name))` with a name, `Some(None)`
/// without one, `None` if no message has the prefix.
fn command_in(chain: &[String], prefix: &str) -> Option<Option<String>> {
    chain.iter().find_map(|message| {
        let rest = message.strip_prefix(prefix)?;
        let name = rest.strip_suffix("command")?.trim();
        Some((!name.is_empty()).then(|| name.to_owned()))
    })
}

/// Whether the error chain says the port hung up or vanished.
fn is_disconnect(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io_says_gone(io)
        {
            return true;
        }
        if let Some(serial) = e.downcast_ref::<serialport::Error>() {
            let gone = match serial.kind() {
                serialport::ErrorKind::NoDevice => true,
                serialport::ErrorKind::Io(kind) => io_kind_says_gone(kind),
                _ => serial.description.contains("I/O error"),
            };
            if gone {
                return true;
            }
        }
        // espflash's private `DeviceNotFound`, raised when the port reports "no device".
        if e.to_string() == "Serial port not found" {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a read timeout surfaces as a bare `std::io::Error` in the chain.
fn is_io_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn io_says_gone(io: &std::io::Error) -> bool {
    const EIO: i32 = 5;
    const ENXIO: i32 = 6;
    const ENODEV: i32 = 19;
    io_kind_says_gone(io.kind())
        || matches!(io.raw_os_error(), Some(EIO | ENXIO | ENODEV))
        || io.to_string().contains("I/O error")
}

fn io_kind_says_gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::NotConnected
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
    )
}

// ---- from the configuration -----------------------------------------------------------------

impl From<&crate::config::SerialConfig> for SerialSettings {
    /// The settings for one port of the line, as `[serial]` says (no stage timeout).
    fn from(serial: &crate::config::SerialConfig) -> Self {
        SerialSettings {
            baud: serial.baud,
            before: serial.before,
            after: serial.after,
            chip: serial.chip.into(),
            stub: serial.stub,
            stage_timeout: None,
        }
    }
}

impl From<crate::config::Chip> for Chip {
    fn from(chip: crate::config::Chip) -> Self {
        use crate::config::Chip as Model;
        match chip {
            Model::Esp32 => Chip::Esp32,
            Model::Esp32c2 => Chip::Esp32c2,
            Model::Esp32c3 => Chip::Esp32c3,
            Model::Esp32c5 => Chip::Esp32c5,
            Model::Esp32c6 => Chip::Esp32c6,
            Model::Esp32c61 => Chip::Esp32c61,
            Model::Esp32h2 => Chip::Esp32h2,
            Model::Esp32h4 => Chip::Esp32h4,
            Model::Esp32p4 => Chip::Esp32p4,
            Model::Esp32s2 => Chip::Esp32s2,
            Model::Esp32s3 => Chip::Esp32s3,
            Model::Esp32s31 => Chip::Esp32s31,
        }
    }
}

#[cfg(test)]
mod config_mapping_tests {
    use super::*;

    #[test]
    fn every_chip_the_configuration_names_is_the_espflash_chip_of_that_name() {
        for name in [
            "esp32", "esp32c2", "esp32c3", "esp32c5", "esp32c6", "esp32c61", "esp32h2", "esp32h4",
            "esp32p4", "esp32s2", "esp32s3", "esp32s31",
        ] {
            let model: crate::config::Chip =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(name))
                .unwrap();
            assert_eq!(Chip::from(model).to_string(), name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked_before_writing() {
        let region = |offset: u32, len: usize| Region::new(offset, vec![0u8; len]);
        assert!(
            check_regions(
                &[region(0x9000, 0x6000), region(0x10000, 10)],
                Some(0x40_0000)
            )
            .is_ok()
        );
        assert!(matches!(
            check_regions(&[region(0x9001, 4)], None),
            Err(DeviceError::RegionMisaligned { offset: 0x9001 })
        ));
        assert!(matches!(
            check_regions(&[region(0x10000, 0x1000), region(0x9000, 0x8000)], None),
            Err(DeviceError::RegionsOverlap {
                first: 0x9000,
                second: 0x10000
            })
        ));
        assert!(matches!(
            check_regions(&[region(0x3F_F000, 0x2000)], Some(0x40_0000)),
            Err(DeviceError::RegionOutOfRange { .. })
        ));
    }

    #[test]
    fn padding_rounds_up_to_words_with_erased_bytes() {
        assert_eq!(
            padded(&[1, 2, 3, 4, 5]),
            vec![1, 2, 3, 4, 5, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(padded(&[1, 2, 3, 4]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn errors_are_classified_from_their_chain_not_the_path() {
        // A path that exists, so only the error chain can tell.
        let port = Path::new("/");
        let hung_up = espflash::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(matches!(
            classify(hung_up, port, Operation::Writing),
            DeviceError::Unplugged {
                during: Operation::Writing,
                ..
            }
        ));
        let timed_out = espflash::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            classify(timed_out, port, Operation::Verifying),
            DeviceError::Timeout { command, .. } if command == "a command"
        ));
        let mismatch = espflash::Error::ChipMismatch("esp32".into(), "esp32s3".into());
        assert!(matches!(
            classify(mismatch, port, Operation::Connecting),
            DeviceError::WrongChip { .. }
        ));
    }

    #[test]
    fn command_names_are_read_from_messages() {
        let chain = vec![
            "Communication error while flashing device".to_owned(),
            "Timeout while running FlashDeflData command".to_owned(),
        ];
        assert_eq!(
            command_in(&chain, "Timeout while running "),
            Some(Some("FlashDeflData".to_owned()))
        );
        assert_eq!(
            command_in(
                &["Timeout while running command".to_owned()],
                "Timeout while running "
            ),
            Some(None)
        );
        assert_eq!(command_in(&chain, "Error while running "), None);
    }
}
