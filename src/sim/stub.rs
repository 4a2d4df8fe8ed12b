//! The flasher stub (<https://docs.espressif.com/projects/esptool/en/latest/esp32/esptool/flasher-stub.html>):
//! entered when the ROM's MEM_END jumps to uploaded code, announced by an `OHAI` frame.
//! Responses carry two status bytes (an error code, then a spare byte), MD5 comes as 16 raw
//! bytes, and FLASH_END / FLASH_DEFL_END with the reboot flag resets the chip, which lands back
//! in the ROM loader because the download-mode straps stay latched across a software reset.
//!
//! Any uploaded stub is accepted (espflash's or esptool's): the code is not run, only its
//! protocol and its timing are imitated, after esptool's and esp-flasher-stub's sources:
//! - a starting stub raises its clock and re-programs its UART for the link rate the ROM was
//!   asked for last (esp-flasher-stub `main.c`), so it keeps talking at the rate the host set;
//! - a data block is acknowledged before it is processed, so the host sends the next block
//!   while the stub erases and programs; FLASH_BEGIN erases nothing, sectors (or 64 KiB blocks)
//!   are erased just ahead of the data; inflated output is buffered and programmed 32 KiB at a
//!   time or when the stream ends.

use std::time::Duration;

use flate2::{Decompress, FlushDecompress, Status};

use super::loader::{Chip, Next, Output, checksum, le_word, op};
use super::timing::{BLOCK, SECTOR};

/// The SYNC payload: `07 07 12 20` and 32 × `55`.
const SYNC_PATTERN_HEAD: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
/// The stub answers SYNC as often as the ROM; hosts read all eight.
const SYNC_REPLIES: usize = 8;
/// The stub's greeting after it starts.
const GREETING: &[u8] = b"OHAI";
/// The stub's largest data block (esptool and espflash send 16 KiB blocks to it).
const MAX_BLOCK: u32 = 0x4000;
/// Inflated output is programmed in chunks of this size (the stub's output buffer).
const OUT_BUFFER: usize = 32 * 1024;

/// Why a request failed, as the stub's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    BadLength = 0xC0,
    BadChecksum = 0xC1,
    BadBlockSize = 0xC2,
    BadSequence = 0xC3,
    OutOfRange = 0xC4,
    NotInFlashMode = 0xC6,
    Inflate = 0xC7,
    TooMuchData = 0xC9,
    Unsupported = 0xFF,
}

/// A flash write in progress.
#[derive(Debug)]
struct Write {
    inflater: Option<Box<Decompress>>,
    offset: u32,
    /// Bytes to write.
    size: u32,
    written: u32,
    next_seq: u32,
    /// Sectors below this are erased.
    erased_until: u32,
    /// The end of what the write will erase.
    erase_end: u32,
    /// Inflated bytes programmed but not yet charged (the stub's output buffer).
    buffered: usize,
    /// Erase and program time not yet charged.
    owed: Duration,
}

/// A READ_FLASH streaming data to the host, paced by its acknowledgements.
#[derive(Debug)]
struct Read {
    offset: u32,
    len: u32,
    block: u32,
    max_unacked: u32,
    sent: u32,
    acked: u32,
}

/// A request header and its payload.
struct Request<'a> {
    op: u8,
    checksum: u8,
    data: &'a [u8],
}

impl Request<'_> {
    fn word(&self, index: usize) -> u32 {
        le_word(self.data, 4 * index)
    }
}

/// The stub's state.
#[derive(Debug, Default)]
pub(crate) struct Stub {
    upload: Option<u32>,
    write: Option<Write>,
    read: Option<Read>,
}

impl Stub {
    /// Starts: the UART is re-programmed for the ROM's link rate, then the greeting goes out.
    pub(crate) fn start(&mut self, chip: &mut Chip) -> Vec<Output> {
        chip.baud = chip.rom_link_baud;
        vec![
            Output::SetBaud(chip.rom_link_baud),
            Output::Send(GREETING.to_vec()),
        ]
    }

    /// Handles one frame.
    pub(crate) fn handle(&mut self, chip: &mut Chip, frame: &[u8]) -> (Vec<Output>, Next) {
        if self.read.is_some() {
            return (self.read_ack(chip, frame), Next::Stay);
        }
        // Shorter than a header, or not a request: line noise, dropped.
        if frame.len() < 8 || frame[0] != 0 {
            return (Vec::new(), Next::Stay);
        }
        let request = Request {
            op: frame[1],
            checksum: frame[4],
            data: &frame[8..],
        };
        let declared = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        if declared != request.data.len() {
            return (vec![fail(request.op, Fail::BadLength)], Next::Stay);
        }
        let outputs = match request.op {
            op::SYNC => sync(&request),
            op::READ_REG if request.data.len() == 4 => {
                let value = chip.regs.read(request.word(0), chip.baud);
                vec![respond(request.op, value, &[], None)]
            }
            op::WRITE_REG if !request.data.is_empty() && request.data.len().is_multiple_of(16) => {
                for record in request.data.chunks_exact(16) {
                    chip.regs
                        .write(le_word(record, 0), le_word(record, 4), le_word(record, 8));
                }
                vec![ok(request.op)]
            }
            op::SPI_ATTACH | op::SPI_SET_PARAMS => vec![ok(request.op)],
            op::CHANGE_BAUDRATE => change_baud(chip, &request),
            op::MEM_BEGIN if request.data.len() == 16 => {
                self.upload = Some(0);
                vec![ok(request.op)]
            }
            op::MEM_DATA => self.mem_data(&request),
            op::MEM_END => {
                self.upload = None;
                vec![ok(request.op)]
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => self.flash_begin(&request),
            op::FLASH_DATA | op::FLASH_DEFL_DATA => self.flash_data(chip, &request),
            op::FLASH_END | op::FLASH_DEFL_END => return self.flash_end(chip, &request),
            op::SPI_FLASH_MD5 if request.data.len() == 16 => md5(chip, &request),
            op::GET_SECURITY_INFO => match chip.regs.security_info() {
                Some(info) => vec![respond(request.op, 0, &info, None)],
                None => vec![fail(request.op, Fail::Unsupported)],
            },
            op::ERASE_FLASH => erase(chip, request.op, 0, chip.flash.bytes().len() as u32),
            op::ERASE_REGION if request.data.len() == 8 => {
                erase(chip, request.op, request.word(0), request.word(1))
            }
            op::READ_FLASH if request.data.len() == 16 => self.read_flash(chip, &request),
            op::RUN_USER_CODE => {
                // No answer: the stub returns into the ROM's boot path and the firmware starts.
                return (Vec::new(), Next::RunFirmware);
            }
            other => vec![fail(other, Fail::Unsupported)],
        };
        (outputs, Next::Stay)
    }

    fn mem_data(&mut self, request: &Request<'_>) -> Vec<Output> {
        let Some(seq) = self.upload else {
            return vec![fail(request.op, Fail::NotInFlashMode)];
        };
        match block(request, seq) {
            Ok(_) => {
                self.upload = Some(seq + 1);
                vec![ok(request.op)]
            }
            Err(f) => vec![fail(request.op, f)],
        }
    }

    fn flash_begin(&mut self, request: &Request<'_>) -> Vec<Output> {
        // (size, blocks, block size, offset[, encrypted]): both forms are accepted.
        if request.data.len() != 16 && request.data.len() != 20 {
            return vec![fail(request.op, Fail::BadLength)];
        }
        let (size, block_size, offset) = (request.word(0), request.word(2), request.word(3));
        if block_size > MAX_BLOCK {
            return vec![fail(request.op, Fail::BadBlockSize)];
        }
        let Some(end) = offset
            .checked_add(size)
            .filter(|&end| end as usize <= super::flash::FLASH_SIZE)
        else {
            return vec![fail(request.op, Fail::OutOfRange)];
        };
        let inflater =
            (request.op == op::FLASH_DEFL_BEGIN).then(|| Box::new(Decompress::new(true)));
        self.write = Some(Write {
            inflater,
            offset,
            size,
            written: 0,
            next_seq: 0,
            erased_until: offset / SECTOR * SECTOR,
            erase_end: end.div_ceil(SECTOR) * SECTOR,
            buffered: 0,
            owed: Duration::ZERO,
        });
        vec![ok(request.op)]
    }

    fn flash_data(&mut self, chip: &mut Chip, request: &Request<'_>) -> Vec<Output> {
        let deflate = request.op == op::FLASH_DEFL_DATA;
        let Some(mut write) = self.write.take_if(|w| w.inflater.is_some() == deflate) else {
            return vec![fail(request.op, Fail::NotInFlashMode)];
        };
        let result = block(request, write.next_seq).and_then(|payload| {
            write.next_seq += 1;
            match write.inflater.take() {
                Some(mut inflater) => {
                    let result = inflate(chip, &mut write, &mut inflater, payload);
                    write.inflater = Some(inflater);
                    result
                }
                None => {
                    // Block padding past the announced size is dropped.
                    let room = write.size.saturating_sub(write.written) as usize;
                    program(chip, &mut write, &payload[..payload.len().min(room)])?;
                    Ok(true)
                }
            }
        });
        let outputs = match result {
            // Acknowledged first; the erasing and programming follow while the host sends on.
            Ok(flush) => {
                let mut outputs = vec![ok(request.op)];
                if flush {
                    outputs.push(Output::Work(std::mem::take(&mut write.owed)));
                    write.buffered = 0;
                    if write.written >= write.size {
                        outputs.extend(chip.commit());
                    }
                }
                outputs
            }
            Err(f) => vec![fail(request.op, f)],
        };
        self.write = Some(write);
        outputs
    }

    fn flash_end(&mut self, chip: &mut Chip, request: &Request<'_>) -> (Vec<Output>, Next) {
        if request.data.len() != 4 {
            return (vec![fail(request.op, Fail::BadLength)], Next::Stay);
        }
        let Some(write) = self.write.take() else {
            return (vec![fail(request.op, Fail::NotInFlashMode)], Next::Stay);
        };
        let mut outputs = vec![Output::Work(write.owed)];
        outputs.extend(chip.commit());
        outputs.push(ok(request.op));
        let reboot = request.word(0) == 0;
        (outputs, if reboot { Next::Reset } else { Next::Stay })
    }

    fn read_flash(&mut self, chip: &mut Chip, request: &Request<'_>) -> Vec<Output> {
        let (offset, len, block, max_unacked) = (
            request.word(0),
            request.word(1),
            request.word(2),
            request.word(3),
        );
        if block == 0 || chip.flash.read(offset, len).is_err() {
            return vec![fail(request.op, Fail::OutOfRange)];
        }
        let mut outputs = vec![ok(request.op)];
        self.read = Some(Read {
            offset,
            len,
            block,
            max_unacked,
            sent: 0,
            acked: 0,
        });
        outputs.extend(self.read_pump(chip));
        outputs
    }

    /// Sends data packets while fewer than `max_unacked` bytes await acknowledgement (at least
    /// one packet is always in flight), then the raw MD5 of the region once all is acknowledged.
    fn read_pump(&mut self, chip: &Chip) -> Vec<Output> {
        let mut outputs = Vec::new();
        let Some(read) = &mut self.read else {
            return outputs;
        };
        while read.sent < read.len && read.sent - read.acked < read.max_unacked.max(1) {
            let n = read.block.min(read.len - read.sent);
            if let Ok(data) = chip.flash.read(read.offset + read.sent, n) {
                outputs.push(Output::Send(data.to_vec()));
            }
            read.sent += n;
        }
        if read.acked >= read.len {
            if let Ok(digest) = chip.flash.md5(read.offset, read.len) {
                outputs.push(Output::Send(digest.to_vec()));
            }
            self.read = None;
        }
        outputs
    }

    fn read_ack(&mut self, chip: &Chip, frame: &[u8]) -> Vec<Output> {
        if frame.len() != 4 {
            return Vec::new();
        }
        if let Some(read) = &mut self.read {
            read.acked = le_word(frame, 0).min(read.sent);
        }
        self.read_pump(chip)
    }
}

/// A response packet: header, body, then the stub's two status bytes.
fn respond(op: u8, value: u32, body: &[u8], fail: Option<Fail>) -> Output {
    let status = [fail.map_or(0, |f| f as u8), 0];
    let body = if fail.is_some() { &[][..] } else { body };
    let len = u16::try_from(body.len() + status.len()).unwrap_or(u16::MAX);
    let mut packet = Vec::with_capacity(8 + usize::from(len));
    packet.extend_from_slice(&[1, op]);
    packet.extend_from_slice(&len.to_le_bytes());
    packet.extend_from_slice(&value.to_le_bytes());
    packet.extend_from_slice(body);
    packet.extend_from_slice(&status);
    Output::Send(packet)
}

fn ok(op: u8) -> Output {
    respond(op, 0, &[], None)
}

fn fail(op: u8, fail: Fail) -> Output {
    respond(op, 0, &[], Some(fail))
}

fn sync(request: &Request<'_>) -> Vec<Output> {
    let valid = request.data.len() == 36
        && request.data[..4] == SYNC_PATTERN_HEAD
        && request.data[4..].iter().all(|&b| b == 0x55);
    if !valid {
        return vec![fail(op::SYNC, Fail::BadLength)];
    }
    // Value 0: esptool takes it as the sign that the stub, not the ROM, is answering.
    vec![respond(op::SYNC, 0, &[], None); SYNC_REPLIES]
}

fn change_baud(chip: &mut Chip, request: &Request<'_>) -> Vec<Output> {
    // (new baud, prior baud). The stub's UART runs from its PLL clock, so the new rate is
    // exact; the answer still goes out at the old one.
    let new = request.word(0);
    if request.data.len() != 8 || new == 0 {
        return vec![fail(request.op, Fail::BadLength)];
    }
    chip.baud = new;
    vec![ok(request.op), Output::SetBaud(new)]
}

fn md5(chip: &mut Chip, request: &Request<'_>) -> Vec<Output> {
    let (offset, len) = (request.word(0), request.word(1));
    let mut outputs: Vec<Output> = chip.commit().into_iter().collect();
    match chip.flash.md5(offset, len) {
        Ok(digest) => {
            outputs.push(Output::Work(chip.timing.md5(len)));
            outputs.push(respond(request.op, 0, &digest, None));
        }
        Err(_) => outputs.push(fail(request.op, Fail::OutOfRange)),
    }
    outputs
}

fn erase(chip: &mut Chip, op: u8, offset: u32, size: u32) -> Vec<Output> {
    if !offset.is_multiple_of(SECTOR) || !size.is_multiple_of(SECTOR) {
        return vec![fail(op, Fail::OutOfRange)];
    }
    match chip.flash.erase(offset, size) {
        Ok(()) => {
            chip.touched();
            let mut outputs = vec![Output::Work(chip.timing.erase(offset, size))];
            outputs.extend(chip.commit());
            outputs.push(ok(op));
            outputs
        }
        Err(_) => vec![fail(op, Fail::OutOfRange)],
    }
}

/// Checks a data block's 16-byte header (length, sequence) and checksum, returning its payload.
fn block<'a>(request: &Request<'a>, expected_seq: u32) -> Result<&'a [u8], Fail> {
    if request.data.len() < 16 {
        return Err(Fail::BadLength);
    }
    let payload = &request.data[16..];
    if request.word(0) as usize != payload.len() {
        return Err(Fail::BadLength);
    }
    if checksum(payload) != request.checksum {
        return Err(Fail::BadChecksum);
    }
    if request.word(1) != expected_seq {
        return Err(Fail::BadSequence);
    }
    Ok(payload)
}

/// Feeds one compressed block through the zlib stream and programs what comes out; `Ok(true)`
/// when the output buffer was flushed (it filled up, or the stream ended).
fn inflate(
    chip: &mut Chip,
    write: &mut Write,
    inflater: &mut Decompress,
    payload: &[u8],
) -> Result<bool, Fail> {
    let mut input = payload;
    let mut out = vec![0u8; 64 * 1024];
    let mut flush = false;
    loop {
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress(input, &mut out, FlushDecompress::None)
            .map_err(|_| Fail::Inflate)?;
        let consumed = (inflater.total_in() - in_before) as usize;
        let produced = (inflater.total_out() - out_before) as usize;
        input = &input[consumed..];
        if write.written as usize + produced > write.size as usize {
            return Err(Fail::TooMuchData);
        }
        program(chip, write, &out[..produced])?;
        write.buffered += produced;
        if write.buffered >= OUT_BUFFER {
            flush = true;
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        if produced == 0 && (input.is_empty() || consumed == 0) {
            return Ok(flush);
        }
    }
}

/// The stub's sequential write: erase sectors (or whole blocks) just ahead of the data, then
/// program it. The time is owed until the write is charged.
fn program(chip: &mut Chip, write: &mut Write, data: &[u8]) -> Result<(), Fail> {
    if data.is_empty() {
        return Ok(());
    }
    let at = write.offset + write.written;
    let end = at.checked_add(data.len() as u32).ok_or(Fail::OutOfRange)?;
    while write.erased_until < end {
        let start = write.erased_until;
        let span = if start.is_multiple_of(BLOCK) && write.erase_end.saturating_sub(start) >= BLOCK
        {
            BLOCK
        } else {
            SECTOR
        };
        chip.flash
            .erase(start, span)
            .map_err(|_| Fail::OutOfRange)?;
        write.owed += chip.timing.erase(start, span);
        write.erased_until += span;
    }
    chip.flash.program(at, data).map_err(|_| Fail::OutOfRange)?;
    chip.touched();
    write.owed += chip.timing.program(at, data.len());
    write.written += data.len() as u32;
    Ok(())
}
