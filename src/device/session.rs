//! One device session over espflash's `Connection`, blocking: connect, identify, write, MD5,
//! reset. The station drives the connection itself rather than through espflash's `Flasher`,
//! so that no stage of a normal unit waits for a timeout on the ESP32 ROM:
//!
//! - **The chip is detected by its magic register.** espflash's `Flasher::connect` first asks
//!   GET_SECURITY_INFO, twice; the ESP32 ROM does not implement it and answers by re-sending its
//!   previous reply with status `01 05`, which espflash skips as a reply to another command, so
//!   it waits out its 3-second timeout twice. The magic word at `0x4000_1000` names the ESP32
//!   and the other chips with a magic at once; only chips without one (whose ROMs do implement
//!   GET_SECURITY_INFO) are asked. A chip other than `[serial] chip` is refused here, before
//!   anything is written.
//! - **The working baud rate is set in the ROM**, before the stub is uploaded, so the stub goes
//!   over the wire at the line's rate. The ESP32 ROM computes its UART divider from its own
//!   estimate of the crystal (calibrated against its 8 MHz RC oscillator, which drifts);
//!   esptool reads that estimate back (RTC_CALI and eFuse CK8M_FREQ) and asks the ROM for a
//!   correspondingly scaled rate, and so does the station. A stub started after that re-programs
//!   its UART for the rate the ROM was asked for (esp-flasher-stub 1.4.1, `main.c`), which is off
//!   the true rate by the estimate's error; the station therefore loads the stub at line speed
//!   only when that error is within [`STUB_RATE_TOLERANCE`], and then sets the exact rate with
//!   the stub's own CHANGE_BAUDRATE; otherwise it uploads at 115200 and switches afterwards,
//!   as espflash and esptool do.
//! - **Writes are compressed in ROM mode too** (FLASH_DEFL_BEGIN / FLASH_DEFL_DATA; the ESP32
//!   ROM accepts them), FLASH_END is never sent in ROM mode (the ROM would leave the loader
//!   before the verify step), and a region whose block is refused as corrupted is written again
//!   from a new FLASH_DEFL_BEGIN: the ROM has used up the refused block's sequence number, so
//!   sending the same block again could only be refused again.
//! - **Only what is needed goes to flash** (see `plan`): bytes after a region's last data word
//!   are erased, not sent, and not even erased when an MD5 shows they already read `0xFF`; a
//!   region that already holds its image (MD5) is left alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use espflash::command::{Command, CommandType};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{FlashSize, SpiAttachParams, SpiSetParams};
use espflash::target::XtalFrequency;
use md5::{Digest, Md5};
use serialport::{SerialPort, SerialPortType, TTYPort, UsbPortInfo};

use super::classify::classify;
use super::plan::{RegionPlan, erased_md5};
use super::{
    AfterReset, BeforeReset, Chip, DeviceError, DeviceIdentity, FlashProgress, Operation, Region,
    Restart, SerialSettings, WriteReport,
};
use crate::identity::Mac;

/// The baud rate the ROM loader listens at after reset.
pub(crate) const CONNECT_BAUD: u32 = 115_200;
/// espflash's per-read timeout outside commands that set their own.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The ROM word that tells chip models apart.
const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
/// ESP32: the RTC calibration register the ROM's crystal estimate comes from.
const ESP32_RTC_CALI: u32 = 0x3FF5_F06C;
/// ESP32: eFuse BLOCK0 word 4, whose low byte is CK8M_FREQ.
const ESP32_EFUSE_WORD4: u32 = 0x3FF5_A010;
/// How far the ESP32 ROM's crystal estimate may be off for the stub to be loaded at the line's
/// rate: the stub's first frames then run that far off the host's rate, which a UART reads
/// correctly within a few percent.
pub(crate) const STUB_RATE_TOLERANCE: f64 = 0.02;
/// How long to let both ends settle after a baud-rate change before the next request: the ROM
/// switches once its reply is out; the stub waits 10 ms for its reply to drain before it
/// switches (esptool's stub source), so it gets twice that.
const ROM_BAUD_SETTLE: Duration = Duration::from_millis(10);
const STUB_BAUD_SETTLE: Duration = Duration::from_millis(20);
/// The per-command timeout when releasing a chip that may have stopped answering.
const RELEASE_TIMEOUT: Duration = Duration::from_millis(300);
/// How many times a region is written again from its start after the loader refuses a block.
pub(crate) const MAX_RESTARTS: u32 = 3;
/// Data block sizes: what the ROM buffers, and the stub's.
const ROM_BLOCK: u32 = 0x400;
const STUB_BLOCK: u32 = 0x4000;
/// ESP32: the RTC watchdog's registers (ESP-IDF, `soc/esp32/include/soc/rtc_cntl_reg.h`).
const ESP32_RTC_WDT_CONFIG0: u32 = 0x3FF4_808C;
const ESP32_RTC_WDT_CONFIG1: u32 = 0x3FF4_8090;
const ESP32_RTC_WDT_WPROTECT: u32 = 0x3FF4_80A4;
/// What unlocks the RTC watchdog's registers for writing.
const RTC_WDT_WKEY: u32 = 0x50D8_3AA1;
/// ESP32 WDTCONFIG0: enabled; stage 0 resets the RTC domain as well (`RTC_WDT_STG_SEL_RESET_RTC`,
/// a chip reset that samples the strapping pins again); CPU and system reset signals 3.2 us.
const ESP32_RTC_WDT_RESET_RTC: u32 = (1 << 31) | (4 << 28) | (7 << 14) | (7 << 11);
/// The other chips' WDTCONFIG0 as esptool's and espflash's watchdog reset set it.
const RTC_WDT_RESET_NEWER: u32 = (1 << 31) | (5 << 28) | (1 << 8) | 2;
/// Stage 0's timeout in RTC slow-clock cycles: about 27 ms at the ESP32's 150 kHz RC clock.
/// The reply to the write that arms it must reach the host, and the host switch to the
/// console's rate, before the ROM prints its banner: with an FTDI bridge's 16 ms latency timer
/// esptool's 2000 cycles (13 ms) would lose the banner's first line.
pub(crate) const RTC_WDT_TIMEOUT_CYCLES: u32 = 4000;

/// A connected device.
#[derive(Debug)]
pub(crate) struct Session {
    connection: Connection,
    port: PathBuf,
    chip: Chip,
    stub: bool,
    after: AfterReset,
    flash_size: u32,
    /// The ROM's rate was changed: (what it was asked for) / (the rate that gives).
    rom_scale: Option<f64>,
    /// MAC and revision, when espflash already read them while starting the stub.
    known: Option<(String, Option<(u32, u32)>)>,
}

/// How the ROM's crystal estimate compares with the crystal.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RomClock {
    /// What to ask the ROM for per baud wanted.
    scale: f64,
}

impl RomClock {
    fn request(self, baud: u32) -> u32 {
        (f64::from(baud) * self.scale).round() as u32
    }

    /// Whether a stub started after a ROM switch lands close enough to the wanted rate.
    fn fit_for_stub(self) -> bool {
        (self.scale - 1.0).abs() <= STUB_RATE_TOLERANCE
    }
}

/// What went wrong sending a region: the loader refused a block (worth starting the region
/// again), or anything else.
enum SendError {
    Refused { block: u32, error: espflash::Error },
    Other(espflash::Error),
}

impl Session {
    /// Opens the port and connects (see the module documentation for the order and why).
    pub(crate) fn connect(port: &Path, settings: &SerialSettings) -> Result<Session, DeviceError> {
        let fail = |e| classify(e, port, Operation::Connecting);
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
        let info = usb_info(port);
        let mut connection = Connection::new(
            serial,
            info.clone(),
            ResetAfterOperation::NoResetNoStub,
            before,
            CONNECT_BAUD,
        );
        connection.begin().map_err(fail)?;
        connection.set_timeout(READ_TIMEOUT).map_err(fail)?;

        let chip = detect_chip(&mut connection).map_err(fail)?;
        if chip != settings.chip {
            return Err(DeviceError::WrongChip {
                port: port.to_owned(),
                expected: settings.chip.to_string(),
                found: chip.to_string(),
            });
        }

        let target = settings.baud;
        let mut host_baud = CONNECT_BAUD;
        let mut rom_scale = None;
        if target != CONNECT_BAUD {
            let clock = rom_clock(&mut connection, chip).map_err(fail)?;
            if !settings.stub || clock.fit_for_stub() {
                change_baud(&mut connection, clock.request(target), 0, target).map_err(fail)?;
                host_baud = target;
                rom_scale = Some(clock.scale);
            }
        }

        let mut session = Session {
            connection,
            port: port.to_owned(),
            chip,
            stub: settings.stub,
            after: settings.after,
            flash_size: 0,
            rom_scale,
            known: None,
        };
        if settings.stub {
            let (connection, found) =
                super::stub::start(session.connection, chip, host_baud, info).map_err(fail)?;
            session.connection = connection;
            if let Some(found) = found {
                session.flash_size = found.flash_size.size();
                session.known = found.mac_address.map(|mac| (mac, found.revision));
            }
            // The stub runs at the rate the ROM was asked for (or 115200): make it exact.
            let stub_rate =
                rom_scale.map_or(CONNECT_BAUD, |scale| RomClock { scale }.request(target));
            if stub_rate != target || host_baud != target {
                change_baud(&mut session.connection, target, host_baud, target).map_err(fail)?;
            }
        }
        if session.flash_size == 0 {
            session.flash_size = session.attach_flash().map_err(fail)?;
        }
        tracing::debug!(port = %port.display(), %chip, stub = settings.stub, baud = target, "connected");
        Ok(session)
    }

    /// The flash size found at connect.
    pub(crate) fn flash_size(&self) -> u32 {
        self.flash_size
    }

    /// Reads the MAC and the revision.
    pub(crate) fn identify(&mut self) -> Result<DeviceIdentity, DeviceError> {
        let port = self.port.clone();
        let fail = |e| classify(e, &port, Operation::Identifying);
        let protocol = |detail: String| DeviceError::Protocol {
            port: port.clone(),
            during: Operation::Identifying,
            detail,
        };
        let (mac_text, revision) = match self.known.take() {
            Some(known) => known,
            None => (
                self.chip.mac_address(&mut self.connection).map_err(fail)?,
                self.chip.revision(&mut self.connection).ok(),
            ),
        };
        // Whether the address is usable is the pipeline's question (stage identify).
        let mac = Mac::parse_any(&mac_text)
            .map_err(|_| protocol(format!("the chip reported MAC `{mac_text}`")))?;
        let revision = revision.map_or_else(
            || "unknown".to_owned(),
            |(major, minor)| format!("v{major}.{minor}"),
        );
        Ok(DeviceIdentity {
            mac,
            chip: self.chip.to_string(),
            revision,
            flash_size: self.flash_size,
        })
    }

    /// Writes every region (see the module documentation), reporting progress.
    pub(crate) fn write(
        &mut self,
        regions: &[Region],
        progress: &mut dyn FnMut(FlashProgress),
    ) -> Result<WriteReport, DeviceError> {
        let mut report = WriteReport::default();
        let mut written = false;
        for region in regions {
            written |= self.write_region(&RegionPlan::new(region), progress, &mut report)?;
        }
        if self.stub && written {
            // The stub acknowledges data before it writes it; this waits for the last writes
            // and stays in the stub for the verify step.
            self.connection
                .with_timeout(CommandType::FlashDeflEnd.timeout(), |c| {
                    c.command(Command::FlashDeflEnd { reboot: false })
                })
                .map_err(|e| classify(e, &self.port, Operation::Writing))?;
        }
        Ok(report)
    }

    /// Writes one region; `true` if anything was sent.
    fn write_region(
        &mut self,
        plan: &RegionPlan,
        progress: &mut dyn FnMut(FlashProgress),
        report: &mut WriteReport,
    ) -> Result<bool, DeviceError> {
        let port = self.port.clone();
        let fail = |e| classify(e, &port, Operation::Writing);
        let offset = plan.offset;
        let image_md5: [u8; 16] = Md5::digest(&plan.image).into();
        if self.md5_raw(offset, plan.len()).map_err(fail)? == image_md5 {
            progress(FlashProgress::Started { offset, blocks: 0 });
            progress(FlashProgress::Finished { offset });
            report.unchanged += 1;
            return Ok(false);
        }
        let tail_erased = match plan.blank_tail() {
            Some((start, len)) => self.md5_raw(start, len).map_err(fail)? == erased_md5(len),
            None => false,
        };
        if tail_erased {
            report.already_erased += plan.blank_tail().map_or(0, |(_, len)| len);
        }
        let compressed = plan.compressed();
        let block_size = if self.stub { STUB_BLOCK } else { ROM_BLOCK };
        let blocks = compressed.len().div_ceil(block_size as usize);
        let mut restarts = 0;
        loop {
            progress(FlashProgress::Started { offset, blocks });
            match self.send_region(plan, tail_erased, &compressed, block_size, progress) {
                Ok(()) => break,
                Err(SendError::Refused { block, error }) => {
                    let reason = crate::support::error_chain_text(&error);
                    if restarts == MAX_RESTARTS {
                        return Err(DeviceError::WriteRefused {
                            port: self.port.clone(),
                            offset,
                            restarts,
                            detail: reason,
                        });
                    }
                    restarts += 1;
                    tracing::warn!(port = %self.port.display(), offset, block, reason, "the loader refused a block; writing the region again from its start");
                    report.restarts.push(Restart {
                        offset,
                        block,
                        reason,
                    });
                }
                Err(SendError::Other(error)) => return Err(fail(error)),
            }
        }
        progress(FlashProgress::Finished { offset });
        Ok(true)
    }

    /// One pass over a region: erase what must be erased, then send its compressed data.
    fn send_region(
        &mut self,
        plan: &RegionPlan,
        tail_erased: bool,
        compressed: &[u8],
        block_size: u32,
        progress: &mut dyn FnMut(FlashProgress),
    ) -> Result<(), SendError> {
        let blocks = compressed.len().div_ceil(block_size as usize) as u32;
        let begin = |size: u32| Command::FlashDeflBegin {
            size,
            blocks,
            block_size,
            offset: plan.offset,
            // The 20-byte form for every ROM but the ESP32's, which refuses it.
            supports_encryption: self.chip != Chip::Esp32 && !self.stub,
        };
        if self.stub {
            // The stub erases as it writes the data; a blank tail not yet erased is erased here.
            if let (false, Some((start, len))) = (tail_erased, plan.blank_tail()) {
                let len = len.next_multiple_of(super::plan::SECTOR_SIZE);
                self.connection
                    .with_timeout(CommandType::EraseRegion.timeout_for_size(len), |c| {
                        c.command(Command::EraseRegion {
                            offset: start,
                            size: len,
                        })
                    })
                    .map_err(SendError::Other)?;
            }
            if plan.data_len == 0 {
                return Ok(());
            }
            let command = begin(plan.data_len);
            self.begin(command, plan.data_len)?;
        } else {
            // The ROM erases what FLASH_DEFL_BEGIN announces before it answers.
            let erase = plan.erase_len(tail_erased);
            if erase == 0 {
                return Ok(());
            }
            let command = begin(erase);
            self.begin(command, erase)?;
        }
        for (seq, block) in compressed.chunks(block_size as usize).enumerate() {
            let sequence = seq as u32;
            self.connection
                .with_timeout(
                    CommandType::FlashDeflData.timeout_for_size(plan.data_len),
                    |c| {
                        c.command(Command::FlashDeflData {
                            sequence,
                            pad_to: 0,
                            pad_byte: 0xFF,
                            data: block,
                        })
                    },
                )
                .map_err(|error| refused(error, sequence))?;
            progress(FlashProgress::Block {
                offset: plan.offset,
                done: seq + 1,
                blocks: blocks as usize,
            });
        }
        Ok(())
    }

    fn begin(&mut self, command: Command<'_>, erase: u32) -> Result<(), SendError> {
        self.connection
            .with_timeout(CommandType::FlashDeflBegin.timeout_for_size(erase), |c| {
                c.command(command)
            })
            .map(drop)
            .map_err(|error| refused(error, 0))
    }

    /// The MD5 of `len` bytes of flash at `offset`.
    pub(crate) fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16], DeviceError> {
        self.md5_raw(offset, len)
            .map_err(|e| classify(e, &self.port, Operation::Verifying))
    }

    fn md5_raw(&mut self, offset: u32, len: u32) -> Result<[u8; 16], espflash::Error> {
        let value: u128 =
            self.connection
                .with_timeout(CommandType::FlashMd5.timeout_for_size(len), |c| {
                    c.command(Command::FlashMd5 { offset, size: len })?
                        .try_into()
                })?;
        Ok(value.to_be_bytes())
    }

    /// Ends the session as `[serial] after` says, and closes the port.
    pub(crate) fn reset(mut self) -> Result<(), DeviceError> {
        let result = match (self.after, self.stub, self.rom_scale) {
            (AfterReset::HardReset, _, _) => self.connection.reset(),
            (AfterReset::WatchdogReset, _, _) => self.arm_watchdog(),
            (AfterReset::NoReset, true, _) => leave_stub(&mut self.connection),
            // Leave the ROM at the rate it listens at after reset, so that the next session
            // (which syncs at 115200, with no reset to bring the ROM back) finds it.
            (AfterReset::NoReset, false, Some(scale)) => change_baud(
                &mut self.connection,
                RomClock { scale }.request(CONNECT_BAUD),
                0,
                CONNECT_BAUD,
            ),
            (AfterReset::NoReset, false, None) => Ok(()),
        };
        let port = self.port.clone();
        result.map_err(|e| match classify(e, &port, Operation::Resetting) {
            e @ DeviceError::Unplugged { .. } => e,
            other => DeviceError::ResetFailed {
                port,
                detail: other.to_string(),
            },
        })
    }

    /// Resets the chip into its application as `[serial] after` says and hands over the port,
    /// still open, at `baud`: the host's UART is moved to the application's console rate before
    /// the reset takes effect, so the boot log is read from its first byte. Ends the session.
    pub(crate) fn boot(mut self, baud: u32) -> Result<TTYPort, DeviceError> {
        let result = match self.after {
            // RTS pulls EN low; DTR (GPIO0) stays released, so the chip boots from flash.
            AfterReset::HardReset => self
                .connection
                .set_baud(baud)
                .and_then(|()| self.connection.reset()),
            // The watchdog fires about 27 ms after it is armed: time enough for the arming
            // write to be answered at the old rate and for the host to switch.
            AfterReset::WatchdogReset => self
                .arm_watchdog()
                .and_then(|()| self.connection.set_baud(baud)),
            AfterReset::NoReset => {
                return Err(DeviceError::ResetFailed {
                    port: self.port,
                    detail: "[serial] after = \"no-reset\" leaves the chip in the loader, so its application never starts".to_owned(),
                });
            }
        };
        let port = self.port.clone();
        result.map_err(|e| match classify(e, &port, Operation::Resetting) {
            e @ DeviceError::Unplugged { .. } => e,
            other => DeviceError::ResetFailed {
                port,
                detail: other.to_string(),
            },
        })?;
        tracing::debug!(port = %self.port.display(), baud, after = ?self.after, "reset into the application");
        Ok(self.connection.into_serial())
    }

    /// Arms the chip's RTC watchdog to reset the whole chip (esptool's `watchdog-reset`): the
    /// strapping pins are sampled again, so a chip whose GPIO0 is released boots its
    /// application, with no DTR/RTS involved. Works from the ROM loader and from the stub.
    fn arm_watchdog(&mut self) -> Result<(), espflash::Error> {
        let (wprotect, config0, config1, value) = match self.chip {
            Chip::Esp32 => (
                ESP32_RTC_WDT_WPROTECT,
                ESP32_RTC_WDT_CONFIG0,
                ESP32_RTC_WDT_CONFIG1,
                ESP32_RTC_WDT_RESET_RTC,
            ),
            chip => match (chip.wdt_wprotect(), chip.wdt_config0(), chip.wdt_config1()) {
                (Some(wprotect), Some(config0), Some(config1)) => {
                    (wprotect, config0, config1, RTC_WDT_RESET_NEWER)
                }
                _ => {
                    return Err(espflash::Error::UnsupportedFeature {
                        chip,
                        feature: "the RTC watchdog reset".into(),
                    });
                }
            },
        };
        // No write-protect again afterwards: the reset it causes restores the lock, and a
        // write the chip could not answer before resetting would only wait for a timeout.
        let c = &mut self.connection;
        c.write_reg(wprotect, RTC_WDT_WKEY, None)?;
        c.write_reg(config1, RTC_WDT_TIMEOUT_CYCLES, None)?;
        c.write_reg(config0, value, None)
    }

    /// Leaves the chip in the ROM loader at 115200 without touching DTR/RTS, as far as it
    /// still answers (each command gets a short timeout: the session may have failed because
    /// the chip went silent), and closes the port.
    pub(crate) fn release(mut self) {
        let _ = self.connection.set_timeout(RELEASE_TIMEOUT);
        let _ = match (self.stub, self.rom_scale) {
            (true, _) => leave_stub(&mut self.connection),
            (false, Some(scale)) => change_baud(
                &mut self.connection,
                RomClock { scale }.request(CONNECT_BAUD),
                0,
                CONNECT_BAUD,
            ),
            (false, None) => Ok(()),
        };
    }

    /// Attaches the SPI flash and reads its size from its JEDEC ID. In ROM mode the flash is
    /// attached here (trying the ESP32-PICO-D4's pins if the default ones find nothing) and
    /// its size set; the stub was already attached when it started.
    fn attach_flash(&mut self) -> Result<u32, espflash::Error> {
        if self.stub {
            return self
                .flash_detect()?
                .map(FlashSize::size)
                .ok_or(espflash::Error::FlashConnect);
        }
        for spi_params in [SpiAttachParams::default(), SpiAttachParams::esp32_pico_d4()] {
            self.connection
                .with_timeout(CommandType::SpiAttach.timeout(), |c| {
                    c.command(Command::SpiAttach { spi_params })
                })?;
            if let Some(size) = self.flash_detect()? {
                self.connection
                    .with_timeout(CommandType::SpiSetParams.timeout(), |c| {
                        c.command(Command::SpiSetParams {
                            spi_params: SpiSetParams::default(size.size()),
                        })
                    })?;
                return Ok(size.size());
            }
        }
        Err(espflash::Error::FlashConnect)
    }

    /// Runs RDID through SPI1's user-command registers; `None` if the flash does not answer
    /// (all ones), the size otherwise (4 MiB when the capacity code is unknown, as espflash).
    fn flash_detect(&mut self) -> Result<Option<FlashSize>, espflash::Error> {
        const RDID: u32 = 0x9F;
        const SPI_CMD_USR: u32 = 1 << 18;
        const USR_COMMAND: u32 = 1 << 31;
        const USR_MISO: u32 = 1 << 28;
        const READ_BITS: u32 = 24;
        let regs = self.chip.spi_registers();
        let c = &mut self.connection;
        let old_usr = c.read_reg(regs.usr())?;
        let old_usr2 = c.read_reg(regs.usr2())?;
        c.write_reg(regs.usr(), USR_COMMAND | USR_MISO, None)?;
        c.write_reg(regs.usr2(), (7 << 28) | RDID, None)?;
        match regs.miso_length() {
            Some(miso) => c.write_reg(miso, READ_BITS - 1, None)?,
            None => c.write_reg(regs.usr1(), (READ_BITS - 1) << 8, None)?,
        }
        c.write_reg(regs.w0(), 0, None)?;
        c.write_reg(regs.cmd(), SPI_CMD_USR, None)?;
        let mut polls = 0;
        while c.read_reg(regs.cmd())? & SPI_CMD_USR != 0 {
            polls += 1;
            if polls > 10 {
                return Err(espflash::Error::FlashConnect);
            }
        }
        let id = c.read_reg(regs.w0())?;
        c.write_reg(regs.usr(), old_usr, None)?;
        c.write_reg(regs.usr2(), old_usr2, None)?;
        let size_id = (id >> 16) as u8;
        if size_id == 0xFF {
            return Ok(None);
        }
        Ok(Some(
            FlashSize::from_detected(size_id).unwrap_or(FlashSize::_4Mb),
        ))
    }
}

/// Classifies a failed data command: a refusal the loader answered (worth restarting the
/// region), or anything else (a timeout, the port gone).
fn refused(error: espflash::Error, block: u32) -> SendError {
    match error {
        espflash::Error::RomError(_) => SendError::Refused { block, error },
        other => SendError::Other(other),
    }
}

/// Detects the chip by its magic register; only chips without a unique magic are asked
/// GET_SECURITY_INFO (their ROMs implement it; the ESP32's does not).
fn detect_chip(connection: &mut Connection) -> Result<Chip, espflash::Error> {
    let by_magic = connection
        .read_reg(CHIP_DETECT_MAGIC_REG)
        .and_then(Chip::from_magic);
    match by_magic {
        Ok(chip) => Ok(chip),
        Err(_) => connection.detect_chip(false),
    }
}

/// How the ROM's UART clock compares with the true one, for the rates to ask it for.
fn rom_clock(connection: &mut Connection, chip: Chip) -> Result<RomClock, espflash::Error> {
    let scale = match chip {
        Chip::Esp32 => {
            let cali = (connection.read_reg(ESP32_RTC_CALI)? >> 7) & 0x01FF_FFFF;
            let ck8m = connection.read_reg(ESP32_EFUSE_WORD4)? & 0xFF;
            let estimate = f64::from(cali) * 15_625.0 * f64::from(ck8m) / 40.0;
            if estimate == 0.0 {
                1.0
            } else {
                let crystal = if estimate > 33e6 { 40e6 } else { 26e6 };
                estimate / crystal
            }
        }
        // The ESP32-C2 ROM assumes a 40 MHz crystal (espflash's correction for 26 MHz boards).
        Chip::Esp32c2 if chip.xtal_frequency(connection)? == XtalFrequency::_26Mhz => 40.0 / 26.0,
        _ => 1.0,
    };
    Ok(RomClock { scale })
}

/// Asks the loader for `request` baud (`prior`: the stub's second argument, 0 for the ROM),
/// then moves the host's port to `host`.
fn change_baud(
    connection: &mut Connection,
    request: u32,
    prior: u32,
    host: u32,
) -> Result<(), espflash::Error> {
    connection.with_timeout(CommandType::ChangeBaudrate.timeout(), |c| {
        c.command(Command::ChangeBaudrate {
            new_baud: request,
            prior_baud: prior,
        })
    })?;
    connection.set_baud(host)?;
    // The ROM takes no prior rate (0); the stub does.
    std::thread::sleep(if prior == 0 {
        ROM_BAUD_SETTLE
    } else {
        STUB_BAUD_SETTLE
    });
    Ok(())
}

/// Leaves the stub for the ROM loader without touching DTR/RTS: an empty FLASH_BEGIN, then
/// FLASH_END with "reboot", which the stub answers and follows with a software reset. The
/// download-mode straps stay latched, so the ROM loader comes back up.
fn leave_stub(connection: &mut Connection) -> Result<(), espflash::Error> {
    connection.command(Command::FlashBegin {
        size: 0,
        blocks: 0,
        block_size: ROM_BLOCK,
        offset: 0,
        supports_encryption: false,
    })?;
    connection.command(Command::FlashEnd { reboot: true })?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rom_is_asked_for_a_rate_scaled_by_its_crystal_estimate() {
        // esptool's correction: an estimate 3% high means asking 3% more.
        let drifted = RomClock { scale: 1.03 };
        assert_eq!(drifted.request(921_600), 949_248);
        assert!(!drifted.fit_for_stub());
        let exact = RomClock { scale: 1.0 };
        assert_eq!(exact.request(921_600), 921_600);
        assert!(exact.fit_for_stub());
        assert!(RomClock { scale: 0.985 }.fit_for_stub());
    }
}
