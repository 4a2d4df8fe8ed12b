//! Starting espflash's flasher stub without waiting out espflash's connect timeouts.
//!
//! The stub images are private to espflash; the only way to upload one is `Flasher::connect`,
//! which first asks GET_SECURITY_INFO twice. The ESP32 ROM does not implement that command: it
//! re-sends its previous reply with status `01 05`, which espflash skips as the reply to
//! another command, and so waits out its 3-second timeout twice (6 s per unit). To keep
//! espflash unmodified, `Flasher::connect` runs over one end of a pseudo-terminal pair while a
//! relay moves the bytes between the other end and the real port. The relay forwards every
//! request unchanged but one: GET_SECURITY_INFO sent while the ROM is in charge, which the
//! station already knows the ESP32 ROM refuses (it identified the chip by its magic register).
//! The relay answers it the way the ROM means it, "invalid message" (status `01 05`), under the
//! command's own op, and does not forward it, so the ROM never replays anything. Once the
//! ROM's MEM_END has started the stub, everything is forwarded. espflash then identifies the
//! chip by its magic register (forwarded to the chip), uploads the stub, reads its greeting and
//! attaches the flash; the relay stops and the session goes on over the real port.
//!
//! A chip that implements GET_SECURITY_INFO (every ROM after the ESP32's) gets it forwarded.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{DeviceInfo, Flasher};
use espflash::target::Chip;
use serialport::{SerialPort, TTYPort, UsbPortInfo};

/// How often the relay threads look at the stop flag.
const POLL: Duration = Duration::from_millis(5);
/// Request opcodes the relay looks at.
const GET_SECURITY_INFO: u8 = 0x14;
const MEM_END: u8 = 0x06;
/// The ROM's "invalid message" refusal of GET_SECURITY_INFO, as a reply under its own op:
/// direction 1, op 0x14, size 4, value 0, status 1, error 5, two reserved bytes.
const ROM_REFUSES_SECURITY_INFO: [u8; 12] = [1, GET_SECURITY_INFO, 4, 0, 0, 0, 0, 0, 1, 5, 0, 0];

/// Uploads and starts espflash's stub on `chip` over `connection` (the ROM answering at
/// `baud`) and returns a connection to the running stub over the same port, with what
/// espflash learnt on the way (flash size, revision) and the MAC, read while the relay runs.
pub(crate) fn start(
    connection: Connection,
    chip: Chip,
    baud: u32,
    info: UsbPortInfo,
) -> Result<(Connection, Option<DeviceInfo>), espflash::Error> {
    let serial = connection.into_serial();
    let (host_side, relay_side) = TTYPort::pair()?;
    let relay = Relay::start(&serial, relay_side, chip)?;
    // "No reset": espflash syncs once more (through the relay) and goes on to the stub;
    // "no reset, no sync" would make it return before uploading anything.
    let through = Connection::new(
        host_side,
        info.clone(),
        ResetAfterOperation::NoResetNoStub,
        ResetBeforeOperation::NoReset,
        baud,
    );
    let started = Flasher::try_connect(through, true, false, false, Some(chip), None);
    // The pseudo-terminal is done with either way; the real port carries on.
    let device = match started {
        Ok(mut flasher) => {
            // espflash attached and sized the flash and read the revision while connecting:
            // asking it costs a few register reads, not a second flash detection.
            let device = flasher.device_info().ok();
            drop(flasher.into_connection());
            device
        }
        Err(failed) => {
            let (error, through) = *failed;
            drop(through);
            relay.stop();
            return Err(error);
        }
    };
    relay.stop();
    let connection = Connection::new(
        serial,
        info,
        ResetAfterOperation::NoResetNoStub,
        ResetBeforeOperation::NoResetNoSync,
        baud,
    );
    Ok((connection, device))
}

/// The two threads moving bytes between the pseudo-terminal and the real port.
struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(serial: &TTYPort, mut relay_side: TTYPort, chip: Chip) -> std::io::Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut from_chip = serial.try_clone_native()?;
        let mut to_chip = serial.try_clone_native()?;
        from_chip.set_timeout(POLL)?;
        relay_side.set_timeout(POLL)?;
        let to_host = Arc::new(Mutex::new(relay_side.try_clone_native()?));
        let threads = vec![
            {
                let (stop, to_host) = (Arc::clone(&stop), Arc::clone(&to_host));
                std::thread::Builder::new()
                    .name("stub-relay-rx".to_owned())
                    .spawn(move || {
                        let mut buf = [0u8; 4096];
                        while !stop.load(Ordering::SeqCst) {
                            match from_chip.read(&mut buf) {
                                Ok(n) if n > 0 => {
                                    if write_to(&to_host, &buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => {
                                    // The port is gone: stopping both threads closes the
                                    // pseudo-terminal, so espflash fails at once instead of
                                    // waiting for a reply.
                                    stop.store(true, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                    })?
            },
            {
                let stop = Arc::clone(&stop);
                // Only the ESP32's ROM lacks GET_SECURITY_INFO.
                let mut rom_in_charge = chip == Chip::Esp32;
                std::thread::Builder::new()
                    .name("stub-relay-tx".to_owned())
                    .spawn(move || {
                        let mut buf = [0u8; 4096];
                        let mut frames = Frames::default();
                        while !stop.load(Ordering::SeqCst) {
                            let n = match relay_side.read(&mut buf) {
                                Ok(n) => n,
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                                Err(_) => return,
                            };
                            for (raw, frame) in frames.feed(&buf[..n]) {
                                let op = (frame.len() >= 8 && frame[0] == 0).then(|| frame[1]);
                                if rom_in_charge && op == Some(GET_SECURITY_INFO) {
                                    if write_to(
                                        &to_host,
                                        &crate::slip::encode(&ROM_REFUSES_SECURITY_INFO),
                                    )
                                    .is_err()
                                    {
                                        return;
                                    }
                                    continue;
                                }
                                // MEM_END with "jump" (first word 0) starts the stub.
                                if op == Some(MEM_END)
                                    && frame.get(8..12) == Some(&[0, 0, 0, 0][..])
                                {
                                    rom_in_charge = false;
                                }
                                if to_chip
                                    .write_all(&raw)
                                    .and_then(|()| to_chip.flush())
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    })?
            },
        ];
        Ok(Relay { stop, threads })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn write_to(port: &Mutex<TTYPort>, bytes: &[u8]) -> std::io::Result<()> {
    // A relay thread that panicked leaves the port usable for the other.
    let mut port = port
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    port.write_all(bytes)?;
    port.flush()
}

/// Splits what the host writes into SLIP frames, keeping each frame's raw bytes to forward.
#[derive(Debug, Default)]
struct Frames {
    raw: Vec<u8>,
    decoded: Vec<u8>,
    escaped: bool,
}

impl Frames {
    /// The frames completed by `bytes`: (raw bytes with delimiters, decoded payload). Bytes
    /// outside frames are forwarded as raw frames of their own with an empty payload.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut done = Vec::new();
        for &byte in bytes {
            self.raw.push(byte);
            if byte == 0xC0 {
                if self.raw.len() > 1 && !self.decoded.is_empty() {
                    done.push((
                        std::mem::take(&mut self.raw),
                        std::mem::take(&mut self.decoded),
                    ));
                } else if self.raw.len() > 1 {
                    // Empty frame or noise before a delimiter: pass it on, start afresh.
                    let mut raw = std::mem::take(&mut self.raw);
                    raw.pop();
                    done.push((raw, Vec::new()));
                    self.raw.push(0xC0);
                }
                self.escaped = false;
                continue;
            }
            let decoded = if self.escaped {
                self.escaped = false;
                match byte {
                    0xDC => 0xC0,
                    0xDD => 0xDB,
                    other => other,
                }
            } else if byte == 0xDB {
                self.escaped = true;
                continue;
            } else {
                byte
            };
            self.decoded.push(decoded);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_with_their_raw_bytes() {
        let mut frames = Frames::default();
        let request = [0x00, 0x14, 0x00, 0x00, 0, 0, 0, 0];
        let mut wire = crate::slip::encode(&request);
        wire.extend(crate::slip::encode(&[
            0x00, 0x0A, 0x04, 0x00, 0, 0, 0, 0, 0xC0, 0xDB, 0, 0,
        ]));
        let (first, second) = wire.split_at(5);
        let mut got = frames.feed(first);
        got.extend(frames.feed(second));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, request);
        assert_eq!(got[0].0, crate::slip::encode(&request));
        assert_eq!(
            got[1].1,
            [0x00, 0x0A, 0x04, 0x00, 0, 0, 0, 0, 0xC0, 0xDB, 0, 0]
        );
        let forwarded: Vec<u8> = got.iter().flat_map(|(raw, _)| raw.clone()).collect();
        assert_eq!(forwarded, wire, "what is forwarded is what was written");
    }

    #[test]
    fn the_refusal_reads_as_a_failed_reply_to_get_security_info() {
        let reply = ROM_REFUSES_SECURITY_INFO;
        assert_eq!(reply[0], 1, "a response");
        assert_eq!(reply[1], GET_SECURITY_INFO);
        assert_eq!(u16::from_le_bytes([reply[2], reply[3]]), 4);
        assert_eq!(&reply[8..10], &[1, 5], "status 1, invalid message");
    }
}
