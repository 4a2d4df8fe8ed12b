//! Simulated ESP32s on pseudo-terminals, for tests and demos of the whole line without hardware.
//!
//! Each [`SimDevice`] is a pseudo-terminal whose far end speaks the ESP32 serial-loader protocol
//! (<https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html>):
//! SLIP framing, the ROM loader's commands (SYNC, READ_REG/WRITE_REG, SPI_ATTACH,
//! SPI_SET_PARAMS, CHANGE_BAUDRATE, MEM_*, FLASH_*, FLASH_DEFL_*, SPI_FLASH_MD5,
//! READ_FLASH_SLOW) and, once a stub has been uploaded and started, the flasher stub's
//! (<https://docs.espressif.com/projects/esptool/en/latest/esp32/esptool/flasher-stub.html>).
//! The ROM side follows a byte-level recording of Espressif's ESP32 ROM loader
//! (`fixtures/rom/esp32-rom-trace.json`), quirks included: unsupported commands re-send the
//! previous reply, bad checksums use up sequence numbers, stale status bytes (see
//! the `rom` module). The real espflash library and Espressif's esptool both work against it: it answers
//! the eFuse, chip-detect, UART-divider and SPI-flash registers they read, with its own MAC per
//! device.
//!
//! Each device has 4 MiB of flash, erased at start, that [`SimDevice::flash`] returns and that
//! with [`SimOptions::flash_dir`] is kept on disk as `<mac>.bin` after every completed write.
//! Time is charged as on real hardware ([`SimTiming`]): wire time at the current baud (10 bits
//! per byte, both ways), the USB-serial bridge's latency on every reply, sector erase and page
//! program times where the ROM and the stub spend them. A host whose port runs at another rate
//! than the chip's UART reads and writes garbage. The link can inject [`Fault`]s: an unplug, a
//! garbled reply, line noise on a request, silence; [`SimChip`] makes a device claim to be
//! another chip model.
//!
//! [`dps::DpsEmulator`] is the other half of a simulated line: a loopback emulator of the Azure
//! DPS device REST API that checks SAS tokens against the group key as DPS does, or, for an
//! X.509 enrollment group, serves TLS ([`tls::ServerIdentity`]) and checks each device's
//! client certificate against the group's CA.
//!
//! A chip reset that samples the strapping pins again (the RTC watchdog's RTC reset, which the
//! station's `after = "watchdog-reset"` arms over the loader) boots the simulated application
//! ([`SimApp`]): it prints the ROM's banner, the second-stage bootloader's and the
//! application's log in ESP-IDF's format at its console rate, reads its own NVS partition from
//! the simulated flash with the station's NVS reader and logs the ID scope and registration ID
//! it found, or why it could not; [`FirmwareFault`]s make it crash, miss its PSRAM, read
//! another namespace, stay silent, loop through resets or print its key.
//!
//! What the serial simulator does not model: DTR/RTS (a pseudo-terminal has no modem lines, so
//! hosts must use "no reset" before, and "no reset" or the watchdog reset after), the ROM's
//! baud-rate detection (it listens at [`SimOptions::baud`] after power-up and reset), secure
//! boot and flash encryption, and the firmware's code (it is taken as present; only its NVS
//! partition is read from flash). Leaving the ROM loader without a reset (FLASH_END in ROM
//! mode, RUN_USER_CODE in the stub) leaves the device silent.

mod app;
mod chip;
pub mod dps;
mod flash;
mod loader;
mod mqtt;
mod port;
mod rom;
mod stub;
mod timing;
pub mod tls;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::identity::Mac;
use crate::support::lock;

pub use app::{FirmwareFault, SimApp};
pub use port::SimStats;
pub use timing::SimTiming;

/// Espressif's OUI, the first half of every default simulated MAC.
const ESPRESSIF_OUI: [u8; 3] = [0x24, 0x0a, 0xc4];

/// Errors from the simulator.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SimError {
    /// No pseudo-terminal could be created.
    #[error("cannot create a pseudo-terminal: {source}")]
    #[diagnostic(
        code(station::sim::pty),
        help(
            "Check that /dev/ptmx and /dev/pts are available (in a container, mount devpts) and that the process may open more files."
        )
    )]
    Pty {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A port link or the flash directory could not be set up.
    #[error("cannot {action} {path}: {source}")]
    #[diagnostic(
        code(station::sim::file),
        help("Check that the directory exists or can be created and is writable by this user.")
    )]
    File {
        /// What the simulator was doing (`create directory`, `link`, ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A device thread could not be started.
    #[error("cannot start the thread of simulated device {index}: {source}")]
    #[diagnostic(
        code(station::sim::thread),
        help("The system is out of threads or memory; simulate fewer devices.")
    )]
    Thread {
        /// The device's index.
        index: usize,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A fault specification could not be parsed.
    #[error("bad fault `{input}`: {reason}")]
    #[diagnostic(
        code(station::sim::bad_fault),
        help(
            "Write [DEVICE:]KIND@TRIGGER=N with KIND unplug, corrupt, noise or silent and TRIGGER bytes, frame or block, e.g. `unplug@bytes=40000`, `noise@block=2` or `1:silent@block=2`; or a firmware fault [DEVICE:]KIND with KIND boot-panic, psram, no-config, silent, bootloop or print-key, e.g. `3:psram`."
        )
    )]
    BadFault {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A chip name is not one the simulator can imitate.
    #[error("the simulator cannot imitate chip `{input}`")]
    #[diagnostic(
        code(station::sim::bad_chip),
        help("Use esp32 (the default), esp32s3 or esp32c3.")
    )]
    BadChip {
        /// What was given.
        input: String,
    },
    /// The options ask for nothing or for too much.
    #[error("invalid simulator options: {reason}")]
    #[diagnostic(
        code(station::sim::bad_options),
        help(
            "Use at least one device, a positive baud rate and fault device indexes below the device count."
        )
    )]
    BadOptions {
        /// What is wrong.
        reason: String,
    },
    /// The DPS emulator's TLS identity or trust cannot be set up.
    #[error("the DPS emulator's TLS: {problem}")]
    #[diagnostic(
        code(station::sim::tls),
        help(
            "--tls-dir must be a directory the emulator may write (it keeps ca.pem, server.pem and server.key there), and --ca-file a PEM file holding the CA certificate(s) the enrollment group trusts."
        )
    )]
    Tls {
        /// What is wrong.
        problem: String,
    },
    /// The DPS emulator cannot listen on its address.
    #[error("the DPS emulator cannot listen on {addr}: {source}")]
    #[diagnostic(
        code(station::sim::dps_bind),
        help(
            "Another process holds that port: pass another --port, or leave it out to take any free one."
        )
    )]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The chip model a simulated device claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SimChip {
    /// ESP32-D0WD-V3, revision v3.0: the fully simulated chip.
    #[default]
    Esp32,
    /// ESP32-S3, only as far as chip detection goes (security info and chip-detect word).
    Esp32s3,
    /// ESP32-C3, only as far as chip detection goes (security info and chip-detect word).
    Esp32c3,
}

impl FromStr for SimChip {
    type Err = SimError;

    /// Parses `esp32`, `esp32s3` or `esp32c3` (any case, `-` ignored: `ESP32-S3` works).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "esp32" => Ok(SimChip::Esp32),
            "esp32s3" => Ok(SimChip::Esp32s3),
            "esp32c3" => Ok(SimChip::Esp32c3),
            _ => Err(SimError::BadChip {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for SimChip {
    /// The name espflash uses: `esp32`, `esp32s3`, `esp32c3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SimChip::Esp32 => "esp32",
            SimChip::Esp32s3 => "esp32s3",
            SimChip::Esp32c3 => "esp32c3",
        })
    }
}

/// What goes wrong when a [`Fault`] fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The device disappears like a pulled USB cable: the pseudo-terminal is hung up, its link
    /// removed, and the host's next read or write fails.
    Unplug,
    /// The first reply to the triggering frame is garbled on the wire (header bytes flipped), so
    /// the host sees no valid answer to its command. Fires once.
    CorruptReply,
    /// The device stops answering from the triggering frame on, but stays connected.
    Silent,
    /// Line noise flips a byte of the triggering request on its way to the chip (the first
    /// payload byte of a data block), so its checksum no longer matches. Fires once.
    Noise,
}

/// When a [`Fault`] fires; counts start at power-up and include every host session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Once this many bytes have been received from the host (mid-frame if it falls there).
    RxBytes(u64),
    /// At the nth request frame received (1-based), before it is answered.
    Frame(u64),
    /// At the nth flash data block (FLASH_DATA or FLASH_DEFL_DATA, 1-based) received.
    FlashBlock(u64),
}

/// A fault to inject into one simulated device, or into all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The device index it applies to; `None` for every device.
    pub device: Option<usize>,
    /// What happens.
    pub kind: FaultKind,
    /// When it happens.
    pub at: Trigger,
}

impl FromStr for Fault {
    type Err = SimError;

    /// Parses `[DEVICE:]KIND@TRIGGER=N`, e.g. `unplug@bytes=40000`, `1:silent@block=2`,
    /// `corrupt@frame=30`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| SimError::BadFault {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (device, rest) = match s.split_once(':') {
            Some((index, rest)) => (
                Some(
                    index
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| bad("the device index is not a number"))?,
                ),
                rest,
            ),
            None => (None, s),
        };
        let (kind, trigger) = rest
            .split_once('@')
            .ok_or_else(|| bad("missing `@` between kind and trigger"))?;
        let kind = match kind.trim() {
            "unplug" => FaultKind::Unplug,
            "corrupt" => FaultKind::CorruptReply,
            "silent" => FaultKind::Silent,
            "noise" => FaultKind::Noise,
            _ => return Err(bad("the kind must be unplug, corrupt, noise or silent")),
        };
        let (counter, n) = trigger
            .split_once('=')
            .ok_or_else(|| bad("missing `=N` after the trigger"))?;
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        if n == 0 {
            return Err(bad("counts start at 1"));
        }
        let at = match counter.trim() {
            "bytes" => Trigger::RxBytes(n),
            "frame" => Trigger::Frame(n),
            "block" => Trigger::FlashBlock(n),
            _ => return Err(bad("the trigger must be bytes, frame or block")),
        };
        Ok(Fault { device, kind, at })
    }
}

/// A firmware fault for one device, or for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppFault {
    /// The device index it applies to; `None` for every device.
    pub device: Option<usize>,
    /// How its application misbehaves.
    pub kind: FirmwareFault,
}

/// What `--fault` takes: a fault of the link (`[DEVICE:]KIND@TRIGGER=N`) or of the
/// application (`[DEVICE:]KIND`, no trigger: it acts when the application boots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultSpec {
    /// A fault of the serial link or the loader.
    Link(Fault),
    /// A fault of the application.
    App(AppFault),
}

impl FromStr for FaultSpec {
    type Err = SimError;

    /// Parses `unplug@bytes=40000`, `1:silent@block=2`, or `3:psram`, `bootloop`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('@') {
            return s.parse().map(FaultSpec::Link);
        }
        let (device, kind) = match s.split_once(':') {
            Some((index, kind)) => (
                Some(
                    index
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| SimError::BadFault {
                            input: s.to_owned(),
                            reason: "the device index is not a number".to_owned(),
                        })?,
                ),
                kind,
            ),
            None => (None, s),
        };
        let kind = kind.trim().parse().map_err(|()| SimError::BadFault {
            input: s.to_owned(),
            reason: format!(
                "a fault without @TRIGGER is a firmware fault: {}",
                FirmwareFault::NAMES
            ),
        })?;
        Ok(FaultSpec::App(AppFault { device, kind }))
    }
}

impl FaultSpec {
    /// The link faults and the firmware faults of a list.
    pub fn split(specs: impl IntoIterator<Item = FaultSpec>) -> (Vec<Fault>, Vec<AppFault>) {
        let mut link = Vec::new();
        let mut app = Vec::new();
        for spec in specs {
            match spec {
                FaultSpec::Link(fault) => link.push(fault),
                FaultSpec::App(fault) => app.push(fault),
            }
        }
        (link, app)
    }
}

impl SimError {
    /// True for a bad option, fault spec or chip name (the CLI maps it to exit code 2).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            SimError::BadFault { .. }
                | SimError::BadChip { .. }
                | SimError::BadOptions { .. }
                | SimError::Tls { .. }
        )
    }
}

/// How to run a simulated line.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How many devices to simulate.
    pub count: usize,
    /// Where to put a `ttySIM<i>` symlink to each device's pseudo-terminal; created if missing.
    pub link_dir: Option<PathBuf>,
    /// Where to keep each device's flash image as `<12 hex digit MAC>.bin` (the whole 4 MiB);
    /// created if missing. The image is written at start (all erased) and replaced atomically
    /// after every completed write: when a FLASH_*BEGIN region has been fully written, at
    /// FLASH_END / FLASH_DEFL_END, and after an erase command.
    pub flash_dir: Option<PathBuf>,
    /// The link's baud rate at power-up (the rate wire time is charged at until a
    /// CHANGE_BAUDRATE).
    pub baud: u32,
    /// The chip model every device claims to be.
    pub chip: SimChip,
    /// The MAC of device 0; device `i` gets `base_mac.offset(i)`. By default Espressif's OUI
    /// followed by three bytes drawn from the process ID and the clock, so MACs differ per
    /// device and per run.
    pub base_mac: Option<Mac>,
    /// Faults to inject into the link.
    pub faults: Vec<Fault>,
    /// Faults of the application a chip reset boots.
    pub app_faults: Vec<AppFault>,
    /// The application every device runs once a chip reset boots it.
    pub app: SimApp,
    /// Whether to charge time at all: wire time (10 bits per byte at the current baud), the USB
    /// latency and the flash work of [`SimOptions::timing`]. Off makes unit tests fast; on
    /// makes a session take as long as it would on real hardware.
    pub wire_time: bool,
    /// The hardware's time figures, charged when [`SimOptions::wire_time`] is on.
    pub timing: SimTiming,
    /// How far, in parts per million, the ROM's estimate of its crystal is off the true
    /// 40 MHz (its calibration registers say so; a host must correct the baud rates it asks the
    /// ROM for). 0 by default.
    pub xtal_error_ppm: i32,
    /// Bytes every device's flash holds at power-up, at their offsets (a unit that already ran
    /// firmware); the rest is erased.
    pub preload: Vec<(u32, Arc<[u8]>)>,
    /// How many ports (`ttySIM0` ...); `None`: one per device. With fewer ports than devices
    /// the rest wait their turn, and a device is plugged into a port when the one before it
    /// is taken off (by [`SimOptions::leave_after_idle`] or [`SimLine::replace`]).
    pub ports: Option<usize>,
    /// The simulated operator: a device the host has talked to and then left idle this long is
    /// taken off its port, as a line operator unplugs a finished unit. `None`: devices stay.
    pub leave_after_idle: Option<Duration>,
    /// How long a port stays empty between taking one device off and plugging in the next.
    pub swap_gap: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            count: 1,
            link_dir: None,
            flash_dir: None,
            baud: 115_200,
            chip: SimChip::Esp32,
            base_mac: None,
            faults: Vec::new(),
            app_faults: Vec::new(),
            app: SimApp::default(),
            wire_time: true,
            timing: SimTiming::default(),
            xtal_error_ppm: 0,
            preload: Vec::new(),
            ports: None,
            leave_after_idle: None,
            swap_gap: Duration::from_millis(300),
        }
    }
}

/// What a simulated device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SimState {
    /// The ROM loader answers (download mode).
    RomLoader,
    /// The flasher stub answers.
    Stub,
    /// The loader was left without a reset; the device no longer answers.
    Firmware,
    /// A chip reset booted the application, which prints its log and ignores the protocol.
    Application,
    /// An unplug fault fired; the pseudo-terminal is gone.
    Unplugged,
}

/// One simulated ESP32 of a [`SimLine`].
#[derive(Debug)]
pub struct SimDevice {
    index: usize,
    mac: Mac,
    flash_file: Option<PathBuf>,
    shared: Arc<port::Shared>,
}

impl SimDevice {
    /// Its position in the line (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The MAC burned into its eFuse.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The path hosts open: its port's link if the line has a link directory, else the
    /// pseudo-terminal. Empty while it waits for a free port.
    pub fn port(&self) -> PathBuf {
        self.shared.plugged().0
    }

    /// The pseudo-terminal itself (`/dev/pts/N`); empty while it waits for a free port.
    pub fn pts(&self) -> PathBuf {
        self.shared.plugged().1
    }

    /// Where its flash image is kept, if the line has a flash directory.
    pub fn flash_file(&self) -> Option<&Path> {
        self.flash_file.as_deref()
    }

    /// A copy of its whole flash (4 MiB).
    pub fn flash(&self) -> Vec<u8> {
        self.shared.flash()
    }

    /// What it is doing now.
    pub fn state(&self) -> SimState {
        self.shared.state()
    }

    /// Traffic counters since power-up.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }
}

/// A line of simulated devices. Dropping it stops them and removes their links.
#[derive(Debug)]
pub struct SimLine {
    devices: Vec<SimDevice>,
    slots: Vec<Slot>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// One port of the line.
#[derive(Debug)]
struct Slot {
    port: PathBuf,
    link: Option<PathBuf>,
    pull: Arc<AtomicBool>,
}

/// A device not yet served: what its serving thread needs.
#[derive(Debug)]
struct Plan {
    shared: Arc<port::Shared>,
    faults: Vec<Fault>,
    firmware_faults: Vec<FirmwareFault>,
    flash_file: Option<PathBuf>,
}

/// What every port's thread shares.
#[derive(Debug, Clone)]
struct SlotContext {
    queue: Arc<Mutex<VecDeque<Plan>>>,
    stop: Arc<AtomicBool>,
    wire_time: bool,
    usb_latency: Duration,
    baud: u32,
    leave_after_idle: Option<Duration>,
    swap_gap: Duration,
    app: SimApp,
}

/// The most devices one simulated line holds (each has its own flash).
pub const MAX_DEVICES: usize = 100_000;
/// The most pseudo-terminal ports one simulated line opens.
pub const MAX_PORTS: usize = 512;

impl SimLine {
    /// Creates the devices, plugs the first ones into the ports and starts serving them.
    pub fn start(opts: SimOptions) -> Result<SimLine, SimError> {
        let port_count = opts.ports.unwrap_or(opts.count);
        if opts.count == 0 || opts.baud == 0 || port_count == 0 || opts.app.baud == 0 {
            return Err(SimError::BadOptions {
                reason: "the device count, port count and baud rates must be positive".to_owned(),
            });
        }
        if opts.count > MAX_DEVICES || port_count > MAX_PORTS {
            return Err(SimError::BadOptions {
                reason: format!(
                    "{} devices on {port_count} ports: the simulator makes at most {MAX_DEVICES} devices on {MAX_PORTS} ports",
                    opts.count
                ),
            });
        }
        if port_count > opts.count {
            return Err(SimError::BadOptions {
                reason: format!(
                    "{port_count} ports for {} devices: use at most one port per device",
                    opts.count
                ),
            });
        }
        if port_count < opts.count && opts.link_dir.is_none() {
            return Err(SimError::BadOptions {
                reason:
                    "devices can only take turns on a port that has a link: give a link directory"
                        .to_owned(),
            });
        }
        let beyond = |device: Option<usize>| device.is_some_and(|d| d >= opts.count);
        let stray = opts
            .faults
            .iter()
            .filter(|f| beyond(f.device))
            .map(|f| format!("{f:?}"))
            .chain(
                opts.app_faults
                    .iter()
                    .filter(|f| beyond(f.device))
                    .map(|f| format!("{f:?}")),
            )
            .next();
        if let Some(fault) = stray {
            return Err(SimError::BadOptions {
                reason: format!("{fault} names a device beyond the {} simulated", opts.count),
            });
        }
        for dir in [&opts.link_dir, &opts.flash_dir].into_iter().flatten() {
            std::fs::create_dir_all(dir).map_err(|source| SimError::File {
                action: "create directory",
                path: dir.clone(),
                source,
            })?;
        }
        let base = opts
            .base_mac
            .unwrap_or_else(|| default_base_mac(opts.count));
        let mut devices = Vec::with_capacity(opts.count);
        let mut plans = VecDeque::with_capacity(opts.count);
        for index in 0..opts.count {
            let mac = base.offset(index as u64);
            let flash_file = opts
                .flash_dir
                .as_ref()
                .map(|dir| dir.join(format!("{}.bin", mac.hex())));
            let faults = opts
                .faults
                .iter()
                .filter(|f| f.device.is_none_or(|d| d == index))
                .copied()
                .collect();
            let firmware_faults = opts
                .app_faults
                .iter()
                .filter(|f| f.device.is_none_or(|d| d == index))
                .map(|f| f.kind)
                .collect();
            let shared = Arc::new(port::Shared::new(loader::Loader::new(
                opts.chip,
                mac,
                opts.baud,
                opts.timing,
                opts.xtal_error_ppm,
            )));
            for (offset, bytes) in &opts.preload {
                shared
                    .preload(*offset, bytes)
                    .map_err(|()| SimError::BadOptions {
                        reason: format!(
                            "{} preloaded bytes at {offset:#x} do not fit in the 4 MiB flash",
                            bytes.len()
                        ),
                    })?;
            }
            if let Some(file) = &flash_file {
                shared.snapshot(file).map_err(|source| SimError::File {
                    action: "write",
                    path: file.clone(),
                    source,
                })?;
            }
            plans.push_back(Plan {
                shared: Arc::clone(&shared),
                faults,
                firmware_faults,
                flash_file: flash_file.clone(),
            });
            devices.push(SimDevice {
                index,
                mac,
                flash_file,
                shared,
            });
        }
        let context = SlotContext {
            queue: Arc::new(Mutex::new(VecDeque::new())),
            stop: Arc::new(AtomicBool::new(false)),
            wire_time: opts.wire_time,
            usb_latency: opts.timing.usb_latency,
            baud: opts.baud,
            leave_after_idle: opts.leave_after_idle,
            swap_gap: opts.swap_gap,
            app: opts.app.clone(),
        };
        let mut line = SimLine {
            devices,
            slots: Vec::with_capacity(port_count),
            stop: Arc::clone(&context.stop),
            threads: Vec::with_capacity(port_count),
        };
        // The first device of every port is plugged in before `start` returns, so the ports
        // exist for whoever started the line.
        let mut first = Vec::with_capacity(port_count);
        for index in 0..port_count {
            let link = opts
                .link_dir
                .as_ref()
                .map(|dir| dir.join(format!("ttySIM{index}")));
            let plan = plans.pop_front().ok_or_else(|| SimError::BadOptions {
                reason: "more ports than devices".to_owned(),
            })?;
            let pty = plug(&plan, link.as_deref(), opts.baud)?;
            line.slots.push(Slot {
                port: link.clone().unwrap_or_else(|| pty.path().to_owned()),
                link,
                pull: Arc::new(AtomicBool::new(false)),
            });
            first.push((plan, pty));
        }
        *lock(&context.queue) = plans;
        for (index, (plan, pty)) in first.into_iter().enumerate() {
            let slot = &line.slots[index];
            let (link, pull, context) =
                (slot.link.clone(), Arc::clone(&slot.pull), context.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sim-port-{index}"))
                .spawn(move || serve_port(plan, pty, link, pull, context))
                .map_err(|source| SimError::Thread { index, source })?;
            line.threads.push(thread);
        }
        tracing::info!(count = opts.count, ports = port_count, chip = %opts.chip, "simulated line started");
        Ok(line)
    }

    /// The path of each port, in port order.
    pub fn ports(&self) -> Vec<PathBuf> {
        self.slots.iter().map(|s| s.port.clone()).collect()
    }

    /// The devices, in order.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }

    /// Takes the device on `port` (an index into [`SimLine::ports`]) off it, as an operator
    /// unplugging a unit; after [`SimOptions::swap_gap`] the next waiting device, if any, is
    /// plugged in. Returns `false` for a port index beyond the line.
    pub fn replace(&self, port: usize) -> bool {
        match self.slots.get(port) {
            Some(slot) => {
                slot.pull.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

impl Drop for SimLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for link in self.slots.iter().filter_map(|s| s.link.as_ref()) {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// Opens a pseudo-terminal for a device and points the port's link at it.
fn plug(plan: &Plan, link: Option<&Path>, baud: u32) -> Result<port::Pty, SimError> {
    let pty = port::Pty::open(baud).map_err(|source| SimError::Pty { source })?;
    let pts = pty.path().to_owned();
    if let Some(link) = link {
        replace_symlink(&pts, link)?;
    }
    plan.shared
        .plug(link.map_or_else(|| pts.clone(), Path::to_owned), pts);
    Ok(pty)
}

/// Serves one port: its device until it is taken off, then the next waiting device, and so on.
fn serve_port(
    mut plan: Plan,
    mut pty: port::Pty,
    link: Option<PathBuf>,
    pull: Arc<AtomicBool>,
    context: SlotContext,
) {
    loop {
        let shared = Arc::clone(&plan.shared);
        let serve = port::Serve {
            pty,
            shared: Arc::clone(&shared),
            faults: plan.faults,
            wire_time: context.wire_time,
            usb_latency: context.usb_latency,
            flash_file: plan.flash_file,
            link: link.clone(),
            stop: Arc::clone(&context.stop),
            leave_after_idle: context.leave_after_idle,
            pull: Arc::clone(&pull),
            app: context.app.clone(),
            firmware_faults: plan.firmware_faults,
        };
        let ended = serve.run();
        if ended == port::Ended::Stopped {
            return;
        }
        // Off the port: its terminal is hung up (the serve loop dropped it) and the link goes.
        shared.unplug();
        if let Some(link) = &link {
            let _ = std::fs::remove_file(link);
        }
        // Without an operator, a fault's unplug leaves the port empty for good.
        if ended == port::Ended::Unplugged && context.leave_after_idle.is_none() {
            return;
        }
        let gap_end = Instant::now() + context.swap_gap;
        while Instant::now() < gap_end {
            if context.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(next) = lock(&context.queue).pop_front() else {
            return;
        };
        pty = match plug(&next, link.as_deref(), context.baud) {
            Ok(pty) => pty,
            Err(e) => {
                tracing::warn!(error = %e, "cannot plug the next simulated device");
                return;
            }
        };
        plan = next;
    }
}

/// Points `link` at `target`, replacing a stale link from an earlier run.
fn replace_symlink(target: &Path, link: &Path) -> Result<(), SimError> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).map_err(|source| SimError::File {
            action: "replace",
            path: link.to_owned(),
            source,
        })?;
    }
    std::os::unix::fs::symlink(target, link).map_err(|source| SimError::File {
        action: "link",
        path: link.to_owned(),
        source,
    })
}

/// Espressif's OUI and three bytes from the process ID and the clock, kept low enough that the
/// `count` devices numbered from it stay inside the OUI.
fn default_base_mac(count: usize) -> Mac {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    let space = 1u64 << 24;
    let count = (count as u64).min(space);
    let low = hasher.finish() % (space - count + 1);
    let [_, _, _, _, _, a, b, c] = low.to_be_bytes();
    Mac([
        ESPRESSIF_OUI[0],
        ESPRESSIF_OUI[1],
        ESPRESSIF_OUI[2],
        a,
        b,
        c,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            "unplug@bytes=40000".parse::<Fault>().unwrap(),
            Fault {
                device: None,
                kind: FaultKind::Unplug,
                at: Trigger::RxBytes(40_000)
            }
        );
        assert_eq!(
            "1:silent@block=2".parse::<Fault>().unwrap(),
            Fault {
                device: Some(1),
                kind: FaultKind::Silent,
                at: Trigger::FlashBlock(2)
            }
        );
        assert_eq!(
            "noise@block=3".parse::<Fault>().unwrap().kind,
            FaultKind::Noise
        );
        for bad in [
            "unplug",
            "melt@frame=1",
            "silent@frame=0",
            "x:corrupt@frame=3",
            "corrupt@hour=1",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn firmware_faults_parse_without_a_trigger() {
        assert_eq!(
            "3:psram".parse::<FaultSpec>().unwrap(),
            FaultSpec::App(AppFault {
                device: Some(3),
                kind: FirmwareFault::Psram
            })
        );
        // `silent` with a trigger silences the loader; without one, the application.
        assert!(matches!(
            "silent@frame=2".parse::<FaultSpec>().unwrap(),
            FaultSpec::Link(Fault {
                kind: FaultKind::Silent,
                ..
            })
        ));
        assert_eq!(
            "silent".parse::<FaultSpec>().unwrap(),
            FaultSpec::App(AppFault {
                device: None,
                kind: FirmwareFault::Silent
            })
        );
        for name in ["boot-panic", "no-config", "bootloop", "print-key"] {
            assert!(matches!(
                name.parse::<FaultSpec>().unwrap(),
                FaultSpec::App(_)
            ));
        }
        for bad in ["melt", "x:psram", "psram@"] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad}");
        }
        let (link, app) = FaultSpec::split([
            "unplug@bytes=9".parse().unwrap(),
            "1:bootloop".parse().unwrap(),
        ]);
        assert_eq!((link.len(), app.len()), (1, 1));
    }

    #[test]
    fn chips_parse() {
        assert_eq!("ESP32-S3".parse::<SimChip>().unwrap(), SimChip::Esp32s3);
        assert_eq!(SimChip::Esp32c3.to_string(), "esp32c3");
        assert!("esp8266".parse::<SimChip>().is_err());
    }

    #[test]
    fn default_macs_stay_in_the_espressif_oui() {
        let base = default_base_mac(1000);
        assert_eq!(base.0[..3], ESPRESSIF_OUI);
        assert_eq!(base.offset(999).0[..3], ESPRESSIF_OUI);
    }
}
