//! The I/O shell of a simulated device: a pseudo-terminal pair, a thread that serves its master
//! side through the [`Loader`], the link's clock, fault injection, and the resets that boot the
//! simulated application (whose console output it sends as the chip prints it).
//!
//! The clock: bytes from the host arrive over the wire at the chip's baud rate (10 bits per
//! byte); a request is handled once all of it has arrived and the chip has finished its
//! previous work; the work the loader reports ([`Output::Work`]: erasing, programming,
//! hashing) delays what follows it; a reply leaves the UART after its wire time and reaches the
//! host after the USB-serial bridge's latency. An armed RTC watchdog fires after its own
//! timeout whatever the host does; the boot that follows prints at the times of its
//! transcript (`app`), the ROM's lines at 115200 and the rest at the application's rate. The serving thread never sleeps through
//! anything: it keeps two queues (requests received, packets on their way) and acts on each
//! when its time comes. If the host's port runs at another rate than the chip's UART (read from
//! the terminal's settings), bytes come out as garbage both ways, as on a real UART.
//!
//! The simulator keeps its own handle on the slave side, set to raw mode, so the terminal exists
//! and keeps its settings while no host has it open (reads on a master whose slave is closed
//! fail with EIO on Linux). An unplug closes both ends: the host's open descriptor is hung up and
//! its next read or write fails, as when a USB-serial adapter disappears.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::app::{self, FirmwareFault, ResetCause, SimApp};
use super::chip::WatchdogAction;
use super::loader::{Loader, Mode, Output, is_flash_data};
use super::{Fault, FaultKind, SimState, Trigger, flash};
use crate::slip;
use crate::support::lock;

/// How often the serving thread looks at the stop flag while idle or pacing.
const TICK: Duration = Duration::from_millis(20);
/// UART bits per byte: start, 8 data, stop.
const BITS_PER_BYTE: u64 = 10;

/// Traffic counters of one simulated device since power-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Bytes received from the host (SLIP-encoded, as on the wire).
    pub bytes_received: u64,
    /// Bytes sent to the host (SLIP-encoded, as on the wire).
    pub bytes_sent: u64,
    /// Request frames received.
    pub frames_received: u64,
    /// Frames sent (replies, the stub greeting, flash read data).
    pub frames_sent: u64,
    /// Flash data blocks (FLASH_DATA and FLASH_DEFL_DATA) received.
    pub flash_blocks: u64,
    /// Baud-rate changes the ROM loader carried out (CHANGE_BAUDRATE).
    pub rom_baud_changes: u64,
    /// Baud-rate changes the flasher stub carried out (CHANGE_BAUDRATE).
    pub stub_baud_changes: u64,
    /// The wire time of every byte received and sent, at the rate it went at: the floor the
    /// link's speed sets.
    pub wire_time: Duration,
    /// The chip's own work: erasing, programming, hashing.
    pub work_time: Duration,
    /// Requests the chip answered: each costs the host one wait for the USB bridge.
    pub turnarounds: u64,
    /// Times the application booted (a reset that ran it from flash).
    pub boots: u64,
    /// When the RTC watchdog was last armed over the loader.
    pub watchdog_armed_at: Option<Instant>,
    /// Console bytes (ROM, bootloader, application) that reached the host.
    pub console_bytes: u64,
    /// Console bytes dropped because nobody read the port (a USB bridge's buffer overflows).
    pub console_dropped: u64,
    /// When the last console byte reached the host.
    pub console_last_at: Option<Instant>,
}

/// A pseudo-terminal pair: the master the simulator serves, and its own slave handle.
#[derive(Debug)]
pub(crate) struct Pty {
    master: File,
    /// Keeps the terminal and its settings alive while no host has it open; also where the
    /// host's baud rate is read.
    slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Opens a new pair with the slave in raw mode. Both descriptors are close-on-exec so that
    /// child processes (esptool in tests) do not keep the terminal alive after an unplug.
    pub(crate) fn open(baud: u32) -> std::io::Result<Pty> {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let master = nix::pty::posix_openpt(flags)?;
        nix::pty::grantpt(&master)?;
        nix::pty::unlockpt(&master)?;
        let path = PathBuf::from(nix::pty::ptsname_r(&master)?);
        let slave = nix::fcntl::open(
            &path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // Raw, and at the chip's power-up rate until a host sets its own.
        let mut termios = rustix::termios::tcgetattr(&slave)?;
        termios.make_raw();
        termios.set_speed(baud)?;
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)?;
        Ok(Pty {
            master: File::from(OwnedFd::from(master)),
            slave,
            path,
        })
    }

    /// The slave's path, `/dev/pts/N`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the host to have written something.
    fn readable(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
    }

    /// Waits up to `timeout` for room in the terminal's input queue.
    fn writable(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0)
    }
}

/// State shared between a device's serving thread and its [`super::SimDevice`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    loader: Mutex<Loader>,
    stats: Mutex<SimStats>,
    unplugged: AtomicBool,
    /// The port path hosts open and the pseudo-terminal, once the device is plugged in.
    plugged: Mutex<(PathBuf, PathBuf)>,
}

impl Shared {
    pub(crate) fn new(loader: Loader) -> Self {
        Shared {
            loader: Mutex::new(loader),
            stats: Mutex::new(SimStats::default()),
            unplugged: AtomicBool::new(false),
            plugged: Mutex::new((PathBuf::new(), PathBuf::new())),
        }
    }

    /// Notes where the device was plugged in.
    pub(crate) fn plug(&self, port: PathBuf, pts: PathBuf) {
        *lock(&self.plugged) = (port, pts);
    }

    /// The port path and pseudo-terminal it is (or was last) plugged into; empty before.
    pub(crate) fn plugged(&self) -> (PathBuf, PathBuf) {
        lock(&self.plugged).clone()
    }

    /// Marks the device as pulled from its port.
    pub(crate) fn unplug(&self) {
        self.unplugged.store(true, Ordering::SeqCst);
    }

    /// Writes `bytes` into the flash before the device powers up.
    pub(crate) fn preload(&self, offset: u32, bytes: &[u8]) -> Result<(), ()> {
        lock(&self.loader).preload(offset, bytes)
    }

    pub(crate) fn flash(&self) -> Vec<u8> {
        lock(&self.loader).flash().bytes().to_vec()
    }

    pub(crate) fn stats(&self) -> SimStats {
        *lock(&self.stats)
    }

    pub(crate) fn state(&self) -> SimState {
        if self.unplugged.load(Ordering::SeqCst) {
            return SimState::Unplugged;
        }
        match lock(&self.loader).mode() {
            Mode::Rom => SimState::RomLoader,
            Mode::Stub => SimState::Stub,
            Mode::Firmware => SimState::Firmware,
            Mode::Application => SimState::Application,
        }
    }

    /// Writes the flash image to `path` (copied under the lock, written outside it).
    pub(crate) fn snapshot(&self, path: &Path) -> std::io::Result<()> {
        let bytes = self.flash();
        flash::write_snapshot(path, &bytes)
    }
}

/// Everything a device's serving thread owns.
#[derive(Debug)]
pub(crate) struct Serve {
    pub(crate) pty: Pty,
    pub(crate) shared: Arc<Shared>,
    pub(crate) faults: Vec<Fault>,
    /// Whether time is charged at all (wire, USB latency, flash work); off for fast tests.
    pub(crate) wire_time: bool,
    pub(crate) usb_latency: Duration,
    pub(crate) flash_file: Option<PathBuf>,
    pub(crate) link: Option<PathBuf>,
    pub(crate) stop: Arc<AtomicBool>,
    /// The simulated operator: once the host has talked to the device and then left it idle
    /// this long, the device is taken off its port.
    pub(crate) leave_after_idle: Option<Duration>,
    /// Set to take the device off its port now (see [`super::SimLine::replace`]).
    pub(crate) pull: Arc<AtomicBool>,
    /// The application a chip reset boots.
    pub(crate) app: SimApp,
    /// How that application misbehaves.
    pub(crate) firmware_faults: Vec<FirmwareFault>,
}

/// Why a device stopped being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The line stopped.
    Stopped,
    /// An unplug fault fired.
    Unplugged,
    /// The simulated operator took it off the port (done with it, or asked to).
    Pulled,
}

/// What the fault plan says about the frame or chunk just received.
#[derive(Debug, Default)]
struct Fired {
    unplug: bool,
    silent: bool,
    corrupt: bool,
    noise: bool,
}

/// Serving-loop state that is not shared: the link's clock.
#[derive(Debug)]
struct Link {
    /// The rate the chip's UART runs at.
    baud: u32,
    /// When the last byte received so far has finished arriving over the wire.
    rx_done: Instant,
    /// When the last byte sent so far has finished leaving over the wire.
    tx_done: Instant,
    /// When the chip is done with its current work and takes the next request.
    chip_free: Instant,
    /// Frames received, with the time their last byte arrived.
    inbox: VecDeque<(Instant, Vec<u8>)>,
    /// What goes to the host, with the time it reaches it and the rate it was sent at:
    /// SLIP-encoded packets, and console output.
    outbox: VecDeque<Outgoing>,
    silent: bool,
    corrupt_next_reply: bool,
    fired: Vec<bool>,
    /// The next reset and what causes it: an armed watchdog, or the application's own.
    reset_at: Option<(Instant, Reset)>,
    /// When bytes last went either way: the simulated operator waits for a quiet line.
    last_traffic: Option<Instant>,
}

/// Bytes on their way to the host.
#[derive(Debug)]
struct Outgoing {
    due: Instant,
    bytes: Vec<u8>,
    baud: u32,
    /// Console output: nobody may be reading it, and what does not fit is lost.
    console: bool,
}

/// What resets the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// The RTC watchdog armed over the loader.
    Watchdog(WatchdogAction),
    /// The application restarted or was reset by its own watchdog.
    Application(ResetCause),
}

/// How far apart the host's and the chip's baud rates may be before bytes come out wrong:
/// a UART samples each bit mid-way, so over a 10-bit frame a few percent is the limit.
const BAUD_TOLERANCE: f64 = 0.03;

impl Serve {
    /// Serves the device until the line stops, an unplug fault fires or the operator pulls it.
    pub(crate) fn run(mut self) -> Ended {
        let now = Instant::now();
        let mut link = Link {
            baud: lock(&self.shared.loader).baud(),
            rx_done: now,
            tx_done: now,
            chip_free: now,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            silent: false,
            corrupt_next_reply: false,
            fired: vec![false; self.faults.len()],
            reset_at: None,
            last_traffic: None,
        };
        let mut decoder = slip::Decoder::default();
        let mut buf = vec![0u8; 4096];
        while !self.stopped() {
            if self.pull.swap(false, Ordering::SeqCst) {
                return Ended::Pulled;
            }
            self.deliver(&mut link);
            self.process_ready(&mut link);
            if let Some((at, reset)) = link.reset_at.filter(|(at, _)| *at <= Instant::now()) {
                link.reset_at = None;
                self.reset(&mut link, at, reset);
            }
            let now = Instant::now();
            let next_event = [
                link.outbox.front().map(|o| o.due),
                link.inbox
                    .front()
                    .map(|(ready, _)| (*ready).max(link.chip_free)),
                link.reset_at.map(|(at, _)| at),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next_event.map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
            if !self.pty.readable(wait) {
                let busy =
                    !link.inbox.is_empty() || !link.outbox.is_empty() || link.reset_at.is_some();
                if let (Some(idle), Some(last), false) =
                    (self.leave_after_idle, link.last_traffic, busy)
                    && last.elapsed() >= idle
                {
                    return Ended::Pulled;
                }
                continue;
            }
            link.last_traffic = Some(Instant::now());
            let n = match self.pty.master.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            let received = {
                let mut stats = lock(&self.shared.stats);
                stats.bytes_received += n as u64;
                stats.wire_time += wire(n, link.baud);
                stats.bytes_received
            };
            let fired = self.check_faults(&mut link, |t| match t {
                Trigger::RxBytes(limit) => received >= limit,
                _ => false,
            });
            if self.apply(&mut link, &fired) {
                return Ended::Unplugged;
            }
            let arrived = Instant::now();
            link.rx_done = if self.wire_time {
                link.rx_done.max(arrived) + wire(n, link.baud)
            } else {
                arrived
            };
            for mut frame in decoder.feed(&buf[..n]) {
                let block = is_flash_data(&frame);
                let (frames, blocks) = {
                    let mut stats = lock(&self.shared.stats);
                    stats.frames_received += 1;
                    if block {
                        stats.flash_blocks += 1;
                    }
                    (stats.frames_received, stats.flash_blocks)
                };
                let fired = self.check_faults(&mut link, |t| match t {
                    Trigger::Frame(k) => frames == k,
                    Trigger::FlashBlock(k) => block && blocks == k,
                    Trigger::RxBytes(_) => false,
                });
                if self.apply(&mut link, &fired) {
                    return Ended::Unplugged;
                }
                if fired.noise {
                    garble(&mut frame);
                }
                if link.silent || !self.rates_agree(link.baud) {
                    // Nothing answers, or the chip's UART, at another rate than the host's,
                    // reads garbage.
                    continue;
                }
                link.inbox.push_back((link.rx_done, frame));
            }
        }
        Ended::Stopped
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether the host's port runs at (nearly) the chip's rate. The host's setting is read
    /// from the terminal both sides share.
    fn rates_agree(&self, chip_baud: u32) -> bool {
        match rustix::termios::tcgetattr(&self.pty.slave) {
            Ok(termios) => {
                let host = f64::from(termios.output_speed().max(1));
                (host / f64::from(chip_baud.max(1)) - 1.0).abs() <= BAUD_TOLERANCE
            }
            Err(_) => true,
        }
    }

    /// Hands the chip every request whose bytes have all arrived, once it is free.
    fn process_ready(&mut self, link: &mut Link) {
        loop {
            let now = Instant::now();
            let Some((ready, _)) = link.inbox.front() else {
                return;
            };
            let start = (*ready).max(link.chip_free);
            if start > now {
                return;
            }
            let Some((_, frame)) = link.inbox.pop_front() else {
                return;
            };
            let (mode, outputs) = {
                let mut loader = lock(&self.shared.loader);
                (loader.mode(), loader.handle(&frame))
            };
            let baud_change = frame.get(1) == Some(&super::loader::op::CHANGE_BAUDRATE);
            if outputs.iter().any(|o| matches!(o, Output::Send(_))) {
                lock(&self.shared.stats).turnarounds += 1;
            }
            // The chip's own clock: work and replies follow one another from `start`.
            let mut at = start;
            for output in outputs {
                match output {
                    Output::Work(time) => {
                        lock(&self.shared.stats).work_time += time;
                        if self.wire_time {
                            at += time;
                        }
                    }
                    Output::Send(packet) => self.queue(link, at, packet),
                    Output::SetBaud(baud) => {
                        link.baud = baud;
                        if baud_change {
                            let mut stats = lock(&self.shared.stats);
                            match mode {
                                Mode::Stub => stats.stub_baud_changes += 1,
                                _ => stats.rom_baud_changes += 1,
                            }
                        }
                    }
                    Output::Commit => self.commit(),
                    Output::Watchdog(watchdog) => {
                        // The watchdog runs on its own clock, charged even without wire time:
                        // the host must be listening at the console's rate before it fires.
                        lock(&self.shared.stats).watchdog_armed_at = Some(at);
                        link.reset_at =
                            Some((at + watchdog.after, Reset::Watchdog(watchdog.action)));
                    }
                }
            }
            link.chip_free = at;
        }
    }

    /// The chip resets at `at`: requests on their way are lost; a reset that samples the
    /// strapping pins (GPIO0 released) boots the application, whose log is queued at the
    /// times it prints it; a reset that keeps download mode brings the ROM loader back, which
    /// announces itself.
    fn reset(&mut self, link: &mut Link, at: Instant, reset: Reset) {
        link.inbox.clear();
        link.chip_free = at;
        let transcript = {
            let mut loader = lock(&self.shared.loader);
            let cause = match reset {
                Reset::Watchdog(action) => {
                    let (boots, baud) = loader.watchdog_fires(action);
                    if let Output::SetBaud(baud) = baud {
                        link.baud = baud;
                    }
                    if !boots {
                        drop(loader);
                        let banner = "ets Jul 29 2019 12:21:46\r\n\r\nrst:0x9 (RTCWDT_SYS_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n";
                        self.queue_console(link, at, banner.as_bytes().to_vec(), link.baud);
                        return;
                    }
                    ResetCause::RtcWatchdog
                }
                Reset::Application(cause) => cause,
            };
            let mac = loader.mac().0;
            app::boot(
                &self.app,
                &self.firmware_faults,
                cause,
                loader.flash().bytes(),
                mac,
            )
        };
        lock(&self.shared.stats).boots += 1;
        for line in transcript.lines {
            self.queue_console(link, at + line.at, line.text.into_bytes(), line.baud);
        }
        link.reset_at = transcript
            .then
            .map(|(after, cause)| (at + after, Reset::Application(cause)));
    }

    /// Queues a packet the chip starts sending at `at`: it leaves the UART after its wire time
    /// at the current rate and reaches the host after the bridge's latency.
    fn queue(&self, link: &mut Link, at: Instant, mut packet: Vec<u8>) {
        if std::mem::take(&mut link.corrupt_next_reply) {
            // Line noise in the header: the host sees a frame that answers nothing it asked.
            for byte in packet.iter_mut().take(2) {
                *byte ^= 0xFF;
            }
        }
        let bytes = slip::encode(&packet);
        self.send(link, at, bytes, link.baud, false);
    }

    /// Queues console output the chip starts printing at `at` at `baud` (the ROM's rate may
    /// differ from the application's).
    fn queue_console(&self, link: &mut Link, at: Instant, bytes: Vec<u8>, baud: u32) {
        self.send(link, at, bytes, baud, true);
    }

    fn send(&self, link: &mut Link, at: Instant, bytes: Vec<u8>, baud: u32, console: bool) {
        lock(&self.shared.stats).wire_time += wire(bytes.len(), baud);
        let due = if self.wire_time {
            link.tx_done = link.tx_done.max(at) + wire(bytes.len(), baud);
            link.tx_done + self.usb_latency
        } else {
            at
        };
        link.outbox.push_back(Outgoing {
            due,
            bytes,
            baud,
            console,
        });
    }

    /// Writes to the terminal what has reached the host by now.
    fn deliver(&mut self, link: &mut Link) {
        while link.outbox.front().is_some_and(|o| o.due <= Instant::now()) {
            let Some(mut out) = link.outbox.pop_front() else {
                return;
            };
            if !self.rates_agree(out.baud) {
                // The host's UART, at another rate, reads garbage: never a frame delimiter.
                out.bytes.fill(0xFF);
            }
            if out.console {
                let written = self.write_some(&out.bytes);
                let now = Instant::now();
                link.last_traffic = Some(now);
                let mut stats = lock(&self.shared.stats);
                stats.console_bytes += written as u64;
                stats.console_dropped += (out.bytes.len() - written) as u64;
                stats.console_last_at = Some(now);
                continue;
            }
            self.write_all(&out.bytes);
            let mut stats = lock(&self.shared.stats);
            stats.bytes_sent += out.bytes.len() as u64;
            stats.frames_sent += 1;
        }
    }

    /// Writes what the terminal takes now and drops the rest, as a USB bridge drops what
    /// nobody reads; how much was written.
    fn write_some(&mut self, bytes: &[u8]) -> usize {
        let mut written = 0;
        while written < bytes.len() {
            match self.pty.master.write(&bytes[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        written
    }

    fn write_all(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() && !self.stopped() {
            match self.pty.master.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.pty.writable(TICK);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(port = %self.pty.path.display(), error = %e, "simulated device cannot send");
                    return;
                }
            }
        }
    }

    /// Fires the faults whose trigger `hit` matches, once each.
    fn check_faults(&self, link: &mut Link, hit: impl Fn(Trigger) -> bool) -> Fired {
        let mut fired = Fired::default();
        for (fault, done) in self.faults.iter().zip(link.fired.iter_mut()) {
            if *done || !hit(fault.at) {
                continue;
            }
            *done = true;
            tracing::info!(kind = ?fault.kind, at = ?fault.at, "simulated fault fires");
            match fault.kind {
                FaultKind::Unplug => fired.unplug = true,
                FaultKind::Silent => fired.silent = true,
                FaultKind::CorruptReply => fired.corrupt = true,
                FaultKind::Noise => fired.noise = true,
            }
        }
        fired
    }

    /// Applies fired faults; `true` when the device was unplugged and the thread must end.
    fn apply(&self, link: &mut Link, fired: &Fired) -> bool {
        if fired.unplug {
            self.shared.unplug();
            if let Some(link) = &self.link {
                let _ = std::fs::remove_file(link);
            }
            return true;
        }
        link.silent |= fired.silent;
        link.corrupt_next_reply |= fired.corrupt;
        false
    }

    fn commit(&self) {
        if let Some(path) = &self.flash_file
            && let Err(e) = self.shared.snapshot(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "simulated device cannot write its flash image");
        }
    }
}

/// Flips one byte of a request as line noise would: the first byte of a data block's payload,
/// else the last byte.
fn garble(frame: &mut [u8]) {
    const PAYLOAD: usize = 8 + 16;
    let at = if frame.len() > PAYLOAD {
        PAYLOAD
    } else {
        frame.len().saturating_sub(1)
    };
    if let Some(byte) = frame.get_mut(at) {
        *byte ^= 0x5A;
    }
}

/// How long `bytes` take on a UART at `baud`.
fn wire(bytes: usize, baud: u32) -> Duration {
    Duration::from_nanos(bytes as u64 * BITS_PER_BYTE * 1_000_000_000 / u64::from(baud.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_time_is_ten_bits_per_byte() {
        assert_eq!(wire(11_520, 115_200), Duration::from_secs(1));
        assert_eq!(wire(92_160, 921_600), Duration::from_secs(1));
    }
}
