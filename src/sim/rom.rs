//! The ESP32 ROM serial loader, as Espressif's ROM code behaves in the byte-level recording of
//! `fixtures/rom/esp32-rom-trace.json` (see `fixtures/README.md`; the conformance test replays
//! it against this model). What the recording shows and this model keeps:
//!
//! - **One receive buffer.** Each frame overwrites the start of a buffer that keeps what earlier
//!   frames left behind it. Commands read their arguments from the buffer, not from the frame:
//!   READ_REG and SYNC ignore the length field, a frame shorter than its header runs with stale
//!   bytes, and a data block whose header announces more bytes than were sent takes the rest
//!   from the buffer.
//! - **One response buffer.** A reply is `[1, op, size, value, data[..size]]` where the status
//!   bytes (status, error, two reserved) sit right after the body in a data area shared by all
//!   replies. Only READ_REG and SYNC set the value; the reserved bytes and the body of a failed
//!   MD5 or READ_FLASH_SLOW are whatever the area held. The error byte is a variable: failures
//!   set it, successes of FLASH_* and MEM_* commands leave it, other successes clear it.
//! - **Unsupported commands get no reply of their own:** GET_SECURITY_INFO (the ESP32 ROM lacks
//!   it), unknown ops, stub-only ops and requests whose direction byte is not 0 re-send the
//!   previous reply (same op, value, size and number of packets) with status `01 05`.
//! - **Data blocks** (FLASH_DATA, FLASH_DEFL_DATA, MEM_DATA) need a BEGIN, may not exceed the
//!   announced block size and must carry the expected sequence number (else `01 05`); a bad
//!   checksum gets `01 07` and still uses up its sequence number. Blocks land back to back at a
//!   running offset, their length taken from the block header.
//! - **FLASH_BEGIN / FLASH_DEFL_BEGIN** take the 16-byte form only (`01 05` otherwise), refuse an
//!   offset off a 4 KiB sector or past the end of flash with `01 06` without erasing, and erase
//!   the region before they answer. FLASH_DEFL_END with 1 answers and stays in the loader.
//!
//! Not in the recording, kept as before: FLASH_END (either flag) and FLASH_DEFL_END 0 leave the
//! loader for the firmware; MEM_END 0 jumps to the uploaded stub; CHANGE_BAUDRATE answers at
//! the old rate, then sets the UART's divider from the ROM's own crystal estimate (see
//! [`super::chip::Registers::rom_xtal_estimate`]).

use flate2::{Decompress, FlushDecompress, Status};

use super::SimChip;
use super::flash::FLASH_SIZE;
use super::loader::{Chip, Next, Output, checksum, le_word, op};
use super::timing::SECTOR;

/// Bytes the receive buffer holds; longer frames are cut.
const RX_SIZE: usize = 64 * 1024 + 16;
/// The data area of the response buffer: a 64-byte READ_FLASH_SLOW body and its status.
const DATA_SIZE: usize = 68;
/// SYNC is answered this many times.
const SYNC_REPLIES: usize = 8;
/// Bytes per READ_FLASH_SLOW answer.
const READ_SLOW_MAX: usize = 64;
/// The bytes of a request header before the payload.
const HEADER: usize = 8;
/// A data block's own header (length, sequence, two reserved words).
const BLOCK_HEADER: usize = 16;

/// ROM error codes (the second status byte).
mod error {
    /// Received message is invalid (wrong length, sequence, unsupported).
    pub const INVALID: u8 = 0x05;
    /// Failed to act on the received message.
    pub const FAILED: u8 = 0x06;
    /// Invalid CRC (checksum) in the message.
    pub const BAD_CHECKSUM: u8 = 0x07;
    /// Flash write error.
    pub const FLASH_WRITE: u8 = 0x08;
    /// Flash read error.
    pub const FLASH_READ: u8 = 0x09;
    /// Flash read length error.
    pub const READ_LENGTH: u8 = 0x0A;
    /// Deflate error.
    pub const DEFLATE: u8 = 0x0B;
}

/// The response buffer.
#[derive(Debug)]
struct Reply {
    op: u8,
    value: u32,
    /// Bytes of `data` sent (body and status).
    size: usize,
    /// How many times the last reply went out.
    packets: usize,
    data: [u8; DATA_SIZE],
    /// The error byte's variable.
    error: u8,
}

impl Reply {
    fn packet(&self) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER + self.size);
        packet.extend_from_slice(&[1, self.op]);
        packet.extend_from_slice(&(self.size as u16).to_le_bytes());
        packet.extend_from_slice(&self.value.to_le_bytes());
        packet.extend_from_slice(&self.data[..self.size]);
        packet
    }
}

/// A flash write in progress (FLASH_BEGIN or FLASH_DEFL_BEGIN).
#[derive(Debug)]
struct FlashSession {
    /// The zlib stream of a FLASH_DEFL_* write; `None` for plain data.
    inflater: Option<Box<Decompress>>,
    /// Where the next bytes land.
    next: u32,
    seq: u32,
    blocks: u32,
    block_size: u32,
}

/// A RAM upload in progress (MEM_BEGIN).
#[derive(Debug)]
struct MemSession {
    next: u32,
    seq: u32,
    block_size: u32,
}

/// How a command ended.
enum Result {
    /// Success; `clears` says whether it resets the error byte.
    Ok { clears: bool },
    /// Failure with this error code.
    Fail(u8),
}

const OK: Result = Result::Ok { clears: true };
/// FLASH_* and MEM_* successes leave the error byte as it was.
const OK_STICKY: Result = Result::Ok { clears: false };

/// The ROM loader's state.
#[derive(Debug)]
pub(crate) struct RomLoader {
    chip: SimChip,
    rx: Vec<u8>,
    reply: Reply,
    flash: Option<FlashSession>,
    mem: Option<MemSession>,
}

impl RomLoader {
    /// The loader right after reset.
    pub(crate) fn new(chip: SimChip) -> Self {
        RomLoader {
            chip,
            rx: vec![0; RX_SIZE],
            reply: Reply {
                op: 0,
                value: 0,
                size: 4,
                packets: 1,
                data: [0; DATA_SIZE],
                error: 0,
            },
            flash: None,
            mem: None,
        }
    }

    /// The chip model it runs on.
    pub(crate) fn chip(&self) -> SimChip {
        self.chip
    }

    /// Argument word `index` of the request in the receive buffer.
    fn arg(&self, index: usize) -> u32 {
        le_word(&self.rx, HEADER + 4 * index)
    }

    /// The length field of the request header.
    fn size_field(&self) -> usize {
        usize::from(u16::from_le_bytes([self.rx[2], self.rx[3]]))
    }

    /// Handles one frame.
    pub(crate) fn handle(&mut self, chip: &mut Chip, frame: &[u8]) -> (Vec<Output>, Next) {
        let len = frame.len().min(RX_SIZE);
        self.rx[..len].copy_from_slice(&frame[..len]);
        let op = self.rx[1];
        if self.rx[0] != 0 {
            return (self.replay(), Next::Stay);
        }
        let outputs = match op {
            op::SYNC => self.sync(),
            op::READ_REG => {
                let value = chip.regs.read(self.arg(0), chip.baud);
                self.reply.value = value;
                vec![self.finish(op, 0, OK)]
            }
            op::WRITE_REG => {
                for record in 0..self.size_field() / 16 {
                    let at = 4 * record;
                    chip.regs
                        .write(self.arg(at), self.arg(at + 1), self.arg(at + 2));
                }
                vec![self.finish(op, 0, OK)]
            }
            op::SPI_ATTACH | op::SPI_SET_PARAMS => vec![self.finish(op, 0, OK)],
            op::CHANGE_BAUDRATE => self.change_baud(chip),
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => self.flash_begin(chip, op),
            op::FLASH_DATA | op::FLASH_DEFL_DATA => self.flash_data(chip, op),
            op::FLASH_END | op::FLASH_DEFL_END => return self.flash_end(chip, op),
            op::MEM_BEGIN => self.mem_begin(op),
            op::MEM_DATA => self.mem_data(chip, op),
            op::MEM_END => return self.mem_end(op),
            op::SPI_FLASH_MD5 => self.md5(chip),
            op::READ_FLASH_SLOW => self.read_flash_slow(chip),
            op::GET_SECURITY_INFO => match chip.regs.security_info() {
                Some(info) => {
                    self.reply.data[..info.len()].copy_from_slice(&info);
                    vec![self.finish(op, info.len(), OK)]
                }
                None => self.replay(),
            },
            _ => self.replay(),
        };
        (outputs, Next::Stay)
    }

    /// Writes the status after a body of `body` bytes and sends the reply once.
    fn finish(&mut self, op: u8, body: usize, result: Result) -> Output {
        let status = match result {
            Result::Ok { clears } => {
                if clears {
                    self.reply.error = 0;
                }
                0
            }
            Result::Fail(code) => {
                self.reply.error = code;
                1
            }
        };
        self.reply.op = op;
        self.reply.data[body] = status;
        self.reply.data[body + 1] = self.reply.error;
        self.reply.size = body + 4;
        self.reply.packets = 1;
        Output::Send(self.reply.packet())
    }

    /// The answer to a command the ROM does not know: the previous reply again, as many times
    /// as it went out, with status `01 05`.
    fn replay(&mut self) -> Vec<Output> {
        let at = self.reply.size - 4;
        self.reply.error = error::INVALID;
        self.reply.data[at] = 1;
        self.reply.data[at + 1] = error::INVALID;
        let packet = self.reply.packet();
        vec![Output::Send(packet); self.reply.packets]
    }

    fn sync(&mut self) -> Vec<Output> {
        // Answered even to a wrong pattern; the value is the payload's first word.
        self.reply.value = self.arg(0);
        let reply = self.finish(op::SYNC, 0, OK);
        self.reply.packets = SYNC_REPLIES;
        vec![reply; SYNC_REPLIES]
    }

    fn change_baud(&mut self, chip: &mut Chip) -> Vec<Output> {
        let requested = self.arg(0);
        if requested == 0 {
            return vec![self.finish(op::CHANGE_BAUDRATE, 0, Result::Fail(error::INVALID))];
        }
        // The ROM computes the divider from the crystal it believes in; hosts that know the
        // estimate is off ask for a correspondingly different rate (esptool does).
        let estimate = u64::from(chip.regs.rom_xtal_estimate().max(1));
        let actual = u64::from(requested) * u64::from(chip.regs.xtal()) / estimate;
        let actual = u32::try_from(actual).unwrap_or(u32::MAX).max(1);
        let reply = self.finish(op::CHANGE_BAUDRATE, 0, OK);
        chip.baud = actual;
        chip.rom_link_baud = requested;
        vec![reply, Output::SetBaud(actual)]
    }

    fn flash_begin(&mut self, chip: &mut Chip, op: u8) -> Vec<Output> {
        if self.size_field() != 16 {
            return vec![self.finish(op, 0, Result::Fail(error::INVALID))];
        }
        let (size, blocks, block_size, offset) =
            (self.arg(0), self.arg(1), self.arg(2), self.arg(3));
        let fits = offset
            .checked_add(size)
            .is_some_and(|end| end as usize <= FLASH_SIZE);
        if !offset.is_multiple_of(SECTOR) || !fits {
            return vec![self.finish(op, 0, Result::Fail(error::FAILED))];
        }
        let mut outputs = Vec::new();
        if size > 0 && chip.flash.erase(offset, size).is_ok() {
            chip.touched();
            outputs.push(Output::Work(chip.timing.erase(offset, size)));
        }
        let inflater = (op == op::FLASH_DEFL_BEGIN).then(|| Box::new(Decompress::new(true)));
        self.flash = Some(FlashSession {
            inflater,
            next: offset,
            seq: 0,
            blocks,
            block_size,
        });
        if blocks == 0 {
            outputs.extend(chip.commit());
        }
        outputs.push(self.finish(op, 0, OK_STICKY));
        outputs
    }

    /// Checks a data block's header and checksum against a session expecting `seq` blocks of
    /// at most `block_size`, returning its payload's range in the receive buffer.
    fn block(&self, seq: u32, block_size: u32) -> std::result::Result<std::ops::Range<usize>, u8> {
        let len = self.arg(0);
        if len > block_size {
            return Err(error::INVALID);
        }
        if self.arg(1) != seq {
            return Err(error::INVALID);
        }
        let start = HEADER + BLOCK_HEADER;
        let end = (start + len as usize).min(RX_SIZE);
        Ok(start..end)
    }

    fn flash_data(&mut self, chip: &mut Chip, op: u8) -> Vec<Output> {
        let deflate = op == op::FLASH_DEFL_DATA;
        let Some(session) = self
            .flash
            .as_ref()
            .filter(|s| s.inflater.is_some() == deflate)
        else {
            return vec![self.finish(op, 0, Result::Fail(error::INVALID))];
        };
        let range = match self.block(session.seq, session.block_size) {
            Ok(range) => range,
            Err(code) => return vec![self.finish(op, 0, Result::Fail(code))],
        };
        // The sequence number is used up whatever the checksum says.
        let Some(mut session) = self.flash.take() else {
            return Vec::new();
        };
        session.seq += 1;
        let checksum_ok = checksum(&self.rx[range.clone()]) == self.rx[4];
        let written = if checksum_ok {
            Self::absorb(chip, &mut session, &self.rx[range])
        } else {
            Err(error::BAD_CHECKSUM)
        };
        let last = session.blocks > 0 && session.seq >= session.blocks;
        let stream_end = matches!(written, Ok((_, true)));
        self.flash = Some(session);
        let mut outputs = Vec::new();
        match written {
            Ok((programmed, _)) => {
                outputs.push(Output::Work(programmed));
                if last || stream_end {
                    outputs.extend(chip.commit());
                }
                outputs.push(self.finish(op, 0, OK_STICKY));
            }
            Err(code) => outputs.push(self.finish(op, 0, Result::Fail(code))),
        }
        outputs
    }

    /// Programs one block's payload at the session's running offset (inflated first for a
    /// FLASH_DEFL write). Returns the programming time and whether a zlib stream ended.
    fn absorb(
        chip: &mut Chip,
        session: &mut FlashSession,
        payload: &[u8],
    ) -> std::result::Result<(std::time::Duration, bool), u8> {
        let Some(inflater) = session.inflater.as_mut() else {
            let at = session.next;
            chip.flash
                .program(at, payload)
                .map_err(|_| error::FLASH_WRITE)?;
            chip.touched();
            session.next += payload.len() as u32;
            return Ok((chip.timing.program(at, payload.len()), false));
        };
        let mut input = payload;
        let mut out = vec![0u8; 32 * 1024];
        let mut time = std::time::Duration::ZERO;
        loop {
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(|_| error::DEFLATE)?;
            let consumed = (inflater.total_in() - in_before) as usize;
            let produced = (inflater.total_out() - out_before) as usize;
            input = &input[consumed..];
            if produced > 0 {
                let at = session.next;
                chip.flash
                    .program(at, &out[..produced])
                    .map_err(|_| error::FLASH_WRITE)?;
                chip.touched();
                session.next += produced as u32;
                time += chip.timing.program(at, produced);
            }
            if status == Status::StreamEnd {
                return Ok((time, true));
            }
            if produced == 0 && (input.is_empty() || consumed == 0) {
                return Ok((time, false));
            }
        }
    }

    fn flash_end(&mut self, chip: &mut Chip, op: u8) -> (Vec<Output>, Next) {
        let stay = op == op::FLASH_DEFL_END && self.arg(0) == 1;
        self.flash = None;
        let mut outputs: Vec<Output> = chip.commit().into_iter().collect();
        outputs.push(self.finish(op, 0, OK_STICKY));
        (outputs, if stay { Next::Stay } else { Next::RunFirmware })
    }

    fn mem_begin(&mut self, op: u8) -> Vec<Output> {
        if self.size_field() != 16 {
            return vec![self.finish(op, 0, Result::Fail(error::INVALID))];
        }
        self.mem = Some(MemSession {
            next: self.arg(3),
            seq: 0,
            block_size: self.arg(2),
        });
        vec![self.finish(op, 0, OK_STICKY)]
    }

    fn mem_data(&mut self, chip: &mut Chip, op: u8) -> Vec<Output> {
        let Some(session) = self.mem.as_ref() else {
            return vec![self.finish(op, 0, Result::Fail(error::INVALID))];
        };
        let range = match self.block(session.seq, session.block_size) {
            Ok(range) => range,
            Err(code) => return vec![self.finish(op, 0, Result::Fail(code))],
        };
        let Some(session) = self.mem.as_mut() else {
            return Vec::new();
        };
        session.seq += 1;
        if checksum(&self.rx[range.clone()]) != self.rx[4] {
            return vec![self.finish(op, 0, Result::Fail(error::BAD_CHECKSUM))];
        }
        chip.regs.write_bytes(session.next, &self.rx[range.clone()]);
        session.next += range.len() as u32;
        vec![self.finish(op, 0, OK_STICKY)]
    }

    fn mem_end(&mut self, op: u8) -> (Vec<Output>, Next) {
        if self.size_field() != 8 {
            return (
                vec![self.finish(op, 0, Result::Fail(error::INVALID))],
                Next::Stay,
            );
        }
        self.mem = None;
        let reply = self.finish(op, 0, OK_STICKY);
        // First word 0 means "jump to the entry point" (the second word).
        let next = if self.arg(0) == 0 {
            Next::RunStub
        } else {
            Next::Stay
        };
        (vec![reply], next)
    }

    fn md5(&mut self, chip: &mut Chip) -> Vec<Output> {
        const BODY: usize = 32;
        let (offset, len) = (self.arg(0), self.arg(1));
        let mut outputs: Vec<Output> = chip.commit().into_iter().collect();
        match chip.flash.md5(offset, len) {
            Ok(digest) => {
                outputs.push(Output::Work(chip.timing.md5(len)));
                self.reply.data[..BODY].copy_from_slice(hex::encode(digest).as_bytes());
                outputs.push(self.finish(op::SPI_FLASH_MD5, BODY, OK));
            }
            Err(_) => {
                outputs.push(self.finish(op::SPI_FLASH_MD5, BODY, Result::Fail(error::FLASH_READ)))
            }
        }
        outputs
    }

    fn read_flash_slow(&mut self, chip: &mut Chip) -> Vec<Output> {
        let (offset, len) = (self.arg(0), self.arg(1) as usize);
        let mut outputs: Vec<Output> = chip.commit().into_iter().collect();
        let result = if len > READ_SLOW_MAX {
            Result::Fail(error::READ_LENGTH)
        } else {
            match chip.flash.read(offset, len as u32) {
                Ok(data) => {
                    self.reply.data[..len].copy_from_slice(data);
                    OK
                }
                Err(_) => Result::Fail(error::FLASH_READ),
            }
        };
        outputs.push(self.finish(op::READ_FLASH_SLOW, READ_SLOW_MAX, result));
        outputs
    }
}
