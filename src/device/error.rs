//! What can go wrong talking to a device, each with a stable code and a hint for the operator.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The loader kept refusing the data blocks of a region (corrupted on the wire), after the
    /// region was written again from its start the allowed number of times.
    #[error(
        "the loader on {port} kept refusing the data of the region at {offset:#x}: {detail} ({restarts} restarts)"
    )]
    #[diagnostic(
        code(station::device::write_refused),
        help(
            "The data is corrupted on its way to the chip: check the cable and any USB hub, try a lower [serial] baud, and provision the unit again."
        )
    )]
    WriteRefused {
        /// The port.
        port: PathBuf,
        /// The region's offset.
        offset: u32,
        /// How many times the region was started again.
        restarts: u32,
        /// The loader's last refusal.
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
            "Ports without DTR/RTS (pseudo-terminals, bare UARTs) need [serial] after = \"watchdog-reset\" (or \"no-reset\" without the boot check); otherwise press RESET on the unit."
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
