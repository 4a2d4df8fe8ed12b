//! The I/O shell of a simulated device: a pseudo-terminal pair, a thread that serves its master
//! side through the [`Loader`], wire-time pacing and fault injection.
//!
//! The simulator keeps its own handle on the slave side, set to raw mode, so the terminal exists
//! and keeps its settings while no host has it open (reads on a master whose slave is closed
//! fail with EIO on Linux). An unplug closes both ends: the host's open descriptor is hung up and
//! its next read or write fails, as when a USB-serial adapter disappears.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

use super::loader::{Loader, Mode, Output, is_flash_data};
use super::{Fault, FaultKind, SimChip, SimState, Trigger, flash, slip};
use crate::identity::Mac;
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
}

/// A pseudo-terminal pair: the master the simulator serves, and its own slave handle.
#[derive(Debug)]
pub(crate) struct Pty {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Opens a new pair with the slave in raw mode. Both descriptors are close-on-exec so that
    /// child processes (esptool in tests) do not keep the terminal alive after an unplug.
    pub(crate) fn open() -> std::io::Result<Pty> {
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
        let mut termios = tcgetattr(&slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        Ok(Pty {
            master: File::from(OwnedFd::from(master)),
            _slave: slave,
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
    pub(crate) fn new(chip: SimChip, mac: Mac, baud: u32) -> Self {
        Shared {
            loader: Mutex::new(Loader::new(chip, mac, baud)),
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
    pub(crate) wire_time: bool,
    pub(crate) baud: u32,
    pub(crate) flash_file: Option<PathBuf>,
    pub(crate) link: Option<PathBuf>,
    pub(crate) stop: Arc<AtomicBool>,
    /// The simulated operator: once the host has talked to the device and then left it idle
    /// this long, the device is taken off its port.
    pub(crate) leave_after_idle: Option<Duration>,
    /// Set to take the device off its port now (see [`super::SimLine::swap`]).
    pub(crate) pull: Arc<AtomicBool>,
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
}

/// Serving-loop state that is not shared.
#[derive(Debug)]
struct Link {
    /// The baud rate wire time is charged at.
    baud: u32,
    /// When the last byte received so far has finished arriving over the simulated wire.
    rx_done: Instant,
    /// When the last byte sent so far has finished leaving over the simulated wire.
    tx_done: Instant,
    silent: bool,
    corrupt_next_reply: bool,
    fired: Vec<bool>,
}

impl Serve {
    /// Serves the device until the line stops, an unplug fault fires or the operator pulls it.
    pub(crate) fn run(mut self) -> Ended {
        let now = Instant::now();
        let mut link = Link {
            baud: self.baud,
            rx_done: now,
            tx_done: now,
            silent: false,
            corrupt_next_reply: false,
            fired: vec![false; self.faults.len()],
        };
        let mut decoder = slip::Decoder::default();
        let mut buf = vec![0u8; 4096];
        let mut last_traffic: Option<Instant> = None;
        while !self.stopped() {
            if self.pull.swap(false, Ordering::SeqCst) {
                return Ended::Pulled;
            }
            if !self.pty.readable(TICK) {
                if let (Some(idle), Some(last)) = (self.leave_after_idle, last_traffic)
                    && last.elapsed() >= idle
                {
                    return Ended::Pulled;
                }
                continue;
            }
            last_traffic = Some(Instant::now());
            let n = match self.pty.master.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            let received = {
                let mut stats = lock(&self.shared.stats);
                stats.bytes_received += n as u64;
                stats.bytes_received
            };
            let fired = self.check_faults(&mut link, |t| match t {
                Trigger::RxBytes(limit) => received >= limit,
                _ => false,
            });
            if self.apply(&mut link, fired) {
                return Ended::Unplugged;
            }
            if self.wire_time {
                link.rx_done = link.rx_done.max(Instant::now()) + wire(n, link.baud);
            }
            for frame in decoder.feed(&buf[..n]) {
                let (frames, blocks) = {
                    let mut stats = lock(&self.shared.stats);
                    stats.frames_received += 1;
                    if is_flash_data(&frame) {
                        stats.flash_blocks += 1;
                    }
                    (stats.frames_received, stats.flash_blocks)
                };
                let block = is_flash_data(&frame);
                let fired = self.check_faults(&mut link, |t| match t {
                    Trigger::Frame(k) => frames == k,
                    Trigger::FlashBlock(k) => block && blocks == k,
                    Trigger::RxBytes(_) => false,
                });
                if self.apply(&mut link, fired) {
                    return Ended::Unplugged;
                }
                if link.silent {
                    continue;
                }
                if self.wire_time && !self.pace(link.rx_done) {
                    return Ended::Stopped;
                }
                let outputs = lock(&self.shared.loader).handle(&frame);
                for output in outputs {
                    match output {
                        Output::Send(packet) => self.send(&mut link, packet),
                        Output::SetBaud(baud) => link.baud = baud,
                        Output::Commit => self.commit(),
                    }
                }
                last_traffic = Some(Instant::now());
            }
        }
        Ended::Stopped
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
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
            }
        }
        fired
    }

    /// Applies fired faults; `true` when the device was unplugged and the thread must end.
    fn apply(&self, link: &mut Link, fired: Fired) -> bool {
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

    /// Sleeps until `deadline`, waking to check the stop flag; `false` if the line stopped.
    fn pace(&self, deadline: Instant) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep((deadline - now).min(TICK));
        }
    }

    /// SLIP-encodes and sends a packet, after the wire time it takes at the current baud.
    fn send(&mut self, link: &mut Link, mut packet: Vec<u8>) {
        if std::mem::take(&mut link.corrupt_next_reply) {
            // Line noise in the header: the host sees a frame that answers nothing it asked.
            for byte in packet.iter_mut().take(2) {
                *byte ^= 0xFF;
            }
        }
        let bytes = slip::encode(&packet);
        if self.wire_time {
            link.tx_done = link.tx_done.max(Instant::now()) + wire(bytes.len(), link.baud);
            if !self.pace(link.tx_done) {
                return;
            }
        }
        let mut rest = &bytes[..];
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
        let mut stats = lock(&self.shared.stats);
        stats.bytes_sent += bytes.len() as u64;
        stats.frames_sent += 1;
    }

    fn commit(&self) {
        if let Some(path) = &self.flash_file
            && let Err(e) = self.shared.snapshot(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the simulated flash image");
        }
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
