//! The serial-loader state machine of one simulated chip: one decoded request frame in, the
//! frames and side effects it causes out. No I/O happens here; [`super::port`] moves the bytes.
//!
//! Two personalities share the wire format of
//! <https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html>:
//!
//! - the **ROM loader**, active after reset in download mode: responses carry four status bytes
//!   (status, error, two reserved), SPI_FLASH_MD5 answers 32 hex ASCII digits, FLASH_BEGIN erases
//!   the whole region up front, and FLASH_END (either flag) leaves the loader to run the
//!   firmware, after which the chip no longer answers;
//! - the **flasher stub** (<https://docs.espressif.com/projects/esptool/en/latest/esp32/esptool/flasher-stub.html>),
//!   entered when MEM_END jumps to uploaded code and announced by an `OHAI` frame: responses carry
//!   two status bytes (an error code then a spare byte), MD5 comes as 16 raw bytes, flash is
//!   erased sector by sector as data arrives, and FLASH_END / FLASH_DEFL_END with the reboot
//!   flag resets the chip, which lands back in the ROM loader because the download-mode straps
//!   stay latched across a software reset.
//!
//! Any uploaded stub is accepted (espflash's or esptool's): the code is not run, only its
//! protocol is imitated.

use flate2::{Decompress, FlushDecompress, Status};

use super::SimChip;
use super::chip::Registers;
use super::flash::{Flash, SECTOR_SIZE};
use crate::identity::Mac;

/// Request opcodes (the command byte of a request packet).
mod op {
    pub const FLASH_BEGIN: u8 = 0x02;
    pub const FLASH_DATA: u8 = 0x03;
    pub const FLASH_END: u8 = 0x04;
    pub const MEM_BEGIN: u8 = 0x05;
    pub const MEM_END: u8 = 0x06;
    pub const MEM_DATA: u8 = 0x07;
    pub const SYNC: u8 = 0x08;
    pub const WRITE_REG: u8 = 0x09;
    pub const READ_REG: u8 = 0x0A;
    pub const SPI_SET_PARAMS: u8 = 0x0B;
    pub const SPI_ATTACH: u8 = 0x0D;
    pub const READ_FLASH_SLOW: u8 = 0x0E;
    pub const CHANGE_BAUDRATE: u8 = 0x0F;
    pub const FLASH_DEFL_BEGIN: u8 = 0x10;
    pub const FLASH_DEFL_DATA: u8 = 0x11;
    pub const FLASH_DEFL_END: u8 = 0x12;
    pub const SPI_FLASH_MD5: u8 = 0x13;
    pub const GET_SECURITY_INFO: u8 = 0x14;
    pub const ERASE_FLASH: u8 = 0xD0;
    pub const ERASE_REGION: u8 = 0xD1;
    pub const READ_FLASH: u8 = 0xD2;
    pub const RUN_USER_CODE: u8 = 0xD3;
}

/// Whether a request frame carries flash data (what the `FlashBlocks` fault trigger counts).
pub(crate) fn is_flash_data(frame: &[u8]) -> bool {
    frame.len() >= 8 && frame[0] == 0 && matches!(frame[1], op::FLASH_DATA | op::FLASH_DEFL_DATA)
}

/// The SYNC payload: `07 07 12 20` and 32 × `55`.
const SYNC_PATTERN_HEAD: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
/// The ROM answers SYNC eight times; hosts read all eight.
const SYNC_REPLIES: usize = 8;
/// The value the ROM puts in its SYNC replies. Only "not zero" matters: esptool takes a zero
/// value as the sign that the stub, not the ROM, is answering.
const ROM_SYNC_VALUE: u32 = 0x2012_0707;
/// The stub's greeting after it starts.
const STUB_GREETING: &[u8] = b"OHAI";
/// The stub's largest data block (esptool and espflash send 16 KiB blocks to it).
const STUB_MAX_BLOCK: u32 = 0x4000;
/// Bytes per READ_FLASH_SLOW answer.
const ROM_READ_BLOCK: u32 = 64;

/// Which program answers on the UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The ROM serial loader (download mode).
    Rom,
    /// The flasher stub, uploaded to RAM and running.
    Stub,
    /// The loader has been left; the firmware runs and ignores the protocol.
    Firmware,
}

/// What handling a frame asks the port to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send this packet (not yet SLIP-encoded).
    Send(Vec<u8>),
    /// From now on the UART runs at this baud rate.
    SetBaud(u32),
    /// A flash write completed: persist the flash image before answering.
    Commit,
}

/// Why a request failed; encoded differently by the ROM and the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// Malformed request or unknown command.
    Invalid,
    /// The data length field disagrees with the payload.
    BadLength,
    /// The XOR checksum of a data block is wrong.
    BadChecksum,
    /// A data block arrived out of sequence.
    BadSequence,
    /// The block size exceeds what the loader buffers.
    BadBlockSize,
    /// A data or end command without a preceding begin.
    NotInFlashMode,
    /// A flash access beyond the chip.
    OutOfRange,
    /// The compressed stream is corrupt.
    Inflate,
    /// More data than the begin command announced.
    TooMuchData,
    /// The command exists in the protocol but not in this loader.
    Unsupported,
}

impl Fail {
    /// The ROM's error byte (esptool and espflash decode these).
    fn rom_code(self) -> u8 {
        match self {
            Fail::Invalid | Fail::BadLength | Fail::Unsupported => 0x05,
            Fail::BadChecksum => 0x07,
            Fail::OutOfRange => 0x08,
            Fail::Inflate => 0x0B,
            Fail::BadSequence | Fail::BadBlockSize | Fail::NotInFlashMode | Fail::TooMuchData => {
                0x06
            }
        }
    }

    /// The stub's error code.
    fn stub_code(self) -> u8 {
        match self {
            Fail::BadLength | Fail::Invalid => 0xC0,
            Fail::BadChecksum => 0xC1,
            Fail::BadBlockSize => 0xC2,
            Fail::BadSequence => 0xC3,
            Fail::OutOfRange => 0xC4,
            Fail::NotInFlashMode => 0xC6,
            Fail::Inflate => 0xC7,
            Fail::TooMuchData => 0xC9,
            Fail::Unsupported => 0xFF,
        }
    }
}

/// A RAM upload in progress (MEM_BEGIN .. MEM_END).
#[derive(Debug)]
struct MemUpload {
    next_seq: u32,
}

/// A flash write in progress (FLASH_BEGIN / FLASH_DEFL_BEGIN .. END).
#[derive(Debug)]
struct FlashWrite {
    /// The zlib stream state of a FLASH_DEFL_* write; `None` for plain data.
    inflater: Option<Box<Decompress>>,
    offset: u32,
    /// Bytes to write: exact for the stub, the erase size for the ROM.
    size: u32,
    blocks: u32,
    block_size: u32,
    next_seq: u32,
    /// Bytes programmed so far.
    written: u32,
    /// For the stub, which erases as it goes: the end of the region erased so far.
    erased_until: Option<u32>,
    /// Whether anything was programmed since the last snapshot.
    dirty: bool,
    /// The region is complete (all blocks, all bytes, or end of the compressed stream).
    done: bool,
}

impl FlashWrite {
    /// Marks the region complete; `true` the first time, when it needs a snapshot.
    fn finish(&mut self) -> bool {
        let first = !self.done;
        self.done = true;
        self.dirty = false;
        first
    }
}

/// A stub READ_FLASH streaming data to the host, paced by its acknowledgements.
#[derive(Debug)]
struct FlashRead {
    offset: u32,
    len: u32,
    block: u32,
    max_unacked: u32,
    sent: u32,
    acked: u32,
}

/// The loader of one simulated chip.
#[derive(Debug)]
pub(crate) struct Loader {
    mode: Mode,
    baud: u32,
    power_up_baud: u32,
    regs: Registers,
    flash: Flash,
    upload: Option<MemUpload>,
    write: Option<FlashWrite>,
    read: Option<FlashRead>,
}

/// A request header and its payload.
struct Request<'a> {
    op: u8,
    checksum: u8,
    data: &'a [u8],
}

/// Reads the little-endian word `index` of `data`.
fn word(data: &[u8], index: usize) -> u32 {
    let start = index * 4;
    data.get(start..start + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The XOR checksum of data blocks, seeded with 0xEF.
fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0xEF, |acc, b| acc ^ b)
}

impl Loader {
    /// A chip just reset into download mode.
    pub(crate) fn new(chip: SimChip, mac: Mac, baud: u32) -> Self {
        Loader {
            mode: Mode::Rom,
            baud,
            power_up_baud: baud,
            regs: Registers::new(chip, mac),
            flash: Flash::new(),
            upload: None,
            write: None,
            read: None,
        }
    }

    /// Which program answers.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The flash contents.
    pub(crate) fn flash(&self) -> &Flash {
        &self.flash
    }

    /// Handles one decoded frame from the host.
    pub(crate) fn handle(&mut self, frame: &[u8]) -> Vec<Output> {
        if self.mode == Mode::Firmware {
            return Vec::new();
        }
        if self.read.is_some() {
            return self.read_flash_ack(frame);
        }
        // Shorter than a header, or not a request: line noise, dropped like the ROM does.
        if frame.len() < 8 || frame[0] != 0 {
            return Vec::new();
        }
        let request = Request {
            op: frame[1],
            checksum: frame[4],
            data: &frame[8..],
        };
        let declared = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        if declared != request.data.len() {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let stub = self.mode == Mode::Stub;
        match request.op {
            op::SYNC => self.sync(&request),
            op::READ_REG => self.read_reg(&request),
            op::WRITE_REG => self.write_reg(&request),
            op::SPI_ATTACH | op::SPI_SET_PARAMS => vec![self.ok(request.op, 0, &[])],
            op::CHANGE_BAUDRATE => self.change_baud(&request),
            op::MEM_BEGIN => self.mem_begin(&request),
            op::MEM_DATA => self.mem_data(&request),
            op::MEM_END => self.mem_end(&request),
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => self.flash_begin(&request),
            op::FLASH_DATA | op::FLASH_DEFL_DATA => self.flash_data(&request),
            op::FLASH_END | op::FLASH_DEFL_END => self.flash_end(&request),
            op::SPI_FLASH_MD5 => self.md5(&request),
            op::GET_SECURITY_INFO => match self.regs.security_info() {
                Some(info) => vec![self.ok(request.op, 0, &info)],
                None => vec![self.fail(request.op, Fail::Unsupported)],
            },
            op::READ_FLASH_SLOW if !stub => self.read_flash_slow(&request),
            op::ERASE_FLASH if stub => self.erase(request.op, 0, self.flash.bytes().len() as u32),
            op::ERASE_REGION if stub && request.data.len() == 8 => {
                self.erase(request.op, word(request.data, 0), word(request.data, 1))
            }
            op::READ_FLASH if stub => self.read_flash(&request),
            op::RUN_USER_CODE if stub => {
                // No answer: the stub returns into the ROM's boot path and the firmware starts.
                self.mode = Mode::Firmware;
                Vec::new()
            }
            other => vec![self.fail(other, Fail::Unsupported)],
        }
    }

    /// A response packet: header, body, then the loader's status bytes.
    fn respond(&self, op: u8, value: u32, body: &[u8], fail: Option<Fail>) -> Output {
        let status: &[u8] = match (self.mode, fail) {
            (Mode::Stub, None) => &[0, 0],
            (Mode::Stub, Some(f)) => &[f.stub_code(), 0],
            (_, None) => &[0, 0, 0, 0],
            (_, Some(f)) => &[1, f.rom_code(), 0, 0],
        };
        let body = if fail.is_some() { &[][..] } else { body };
        let len = u16::try_from(body.len() + status.len()).unwrap_or(u16::MAX);
        let mut packet = Vec::with_capacity(8 + usize::from(len));
        packet.extend_from_slice(&[1, op]);
        packet.extend_from_slice(&len.to_le_bytes());
        packet.extend_from_slice(&value.to_le_bytes());
        packet.extend_from_slice(body);
        packet.extend_from_slice(status);
        Output::Send(packet)
    }

    fn ok(&self, op: u8, value: u32, body: &[u8]) -> Output {
        self.respond(op, value, body, None)
    }

    fn fail(&self, op: u8, fail: Fail) -> Output {
        self.respond(op, 0, &[], Some(fail))
    }

    fn sync(&mut self, request: &Request<'_>) -> Vec<Output> {
        let valid = request.data.len() == 36
            && request.data[..4] == SYNC_PATTERN_HEAD
            && request.data[4..].iter().all(|&b| b == 0x55);
        if !valid {
            return vec![self.fail(op::SYNC, Fail::Invalid)];
        }
        let value = if self.mode == Mode::Stub {
            0
        } else {
            ROM_SYNC_VALUE
        };
        vec![self.ok(op::SYNC, value, &[]); SYNC_REPLIES]
    }

    fn read_reg(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() != 4 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let value = self.regs.read(word(request.data, 0), self.baud);
        vec![self.ok(request.op, value, &[])]
    }

    fn write_reg(&mut self, request: &Request<'_>) -> Vec<Output> {
        // One or more (address, value, mask, delay_us) records.
        if request.data.is_empty() || !request.data.len().is_multiple_of(16) {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        for record in request.data.chunks_exact(16) {
            self.regs
                .write(word(record, 0), word(record, 1), word(record, 2));
        }
        vec![self.ok(request.op, 0, &[])]
    }

    fn change_baud(&mut self, request: &Request<'_>) -> Vec<Output> {
        // (new baud, prior baud); the ROM ignores the prior rate, the stub uses it to time
        // the switch. Either way the answer still goes out at the old rate.
        let new = word(request.data, 0);
        if request.data.len() != 8 || new == 0 {
            return vec![self.fail(request.op, Fail::Invalid)];
        }
        let reply = self.ok(request.op, 0, &[]);
        self.baud = new;
        vec![reply, Output::SetBaud(new)]
    }

    fn mem_begin(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() < 16 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        self.upload = Some(MemUpload { next_seq: 0 });
        vec![self.ok(request.op, 0, &[])]
    }

    /// Checks a data block's 16-byte header (length, sequence, two zero words) and checksum,
    /// returning the block's payload.
    fn block<'a>(request: &Request<'a>, expected_seq: u32) -> Result<&'a [u8], Fail> {
        if request.data.len() < 16 {
            return Err(Fail::BadLength);
        }
        let payload = &request.data[16..];
        if word(request.data, 0) as usize != payload.len() {
            return Err(Fail::BadLength);
        }
        if checksum(payload) != request.checksum {
            return Err(Fail::BadChecksum);
        }
        if word(request.data, 1) != expected_seq {
            return Err(Fail::BadSequence);
        }
        Ok(payload)
    }

    fn mem_data(&mut self, request: &Request<'_>) -> Vec<Output> {
        let Some(upload) = &self.upload else {
            return vec![self.fail(request.op, Fail::NotInFlashMode)];
        };
        match Self::block(request, upload.next_seq) {
            Ok(_) => {
                if let Some(upload) = &mut self.upload {
                    upload.next_seq += 1;
                }
                vec![self.ok(request.op, 0, &[])]
            }
            Err(fail) => vec![self.fail(request.op, fail)],
        }
    }

    fn mem_end(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() != 8 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        self.upload = None;
        let reply = self.ok(request.op, 0, &[]);
        // First word 0 means "jump to the entry point" (the second word).
        if word(request.data, 0) != 0 {
            return vec![reply];
        }
        self.mode = Mode::Stub;
        vec![reply, Output::Send(STUB_GREETING.to_vec())]
    }

    fn flash_begin(&mut self, request: &Request<'_>) -> Vec<Output> {
        // (size, blocks, block size, offset[, encrypted]); the ESP32 ROM takes the short form,
        // the stub and newer ROMs the long one. Both are accepted.
        if request.data.len() != 16 && request.data.len() != 20 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let (size, blocks, block_size, offset) = (
            word(request.data, 0),
            word(request.data, 1),
            word(request.data, 2),
            word(request.data, 3),
        );
        let stub = self.mode == Mode::Stub;
        if stub && block_size > STUB_MAX_BLOCK {
            return vec![self.fail(request.op, Fail::BadBlockSize)];
        }
        if offset
            .checked_add(size)
            .is_none_or(|end| end as usize > self.flash.bytes().len())
        {
            return vec![self.fail(request.op, Fail::OutOfRange)];
        }
        let mut outputs = self.commit_pending();
        let erased_until = if stub {
            Some(offset / SECTOR_SIZE * SECTOR_SIZE)
        } else {
            // The ROM erases the whole region before it acknowledges.
            if self.flash.erase(offset, size).is_err() {
                outputs.push(self.fail(request.op, Fail::OutOfRange));
                return outputs;
            }
            None
        };
        let inflater =
            (request.op == op::FLASH_DEFL_BEGIN).then(|| Box::new(Decompress::new(true)));
        self.write = Some(FlashWrite {
            inflater,
            offset,
            size,
            blocks,
            block_size,
            next_seq: 0,
            written: 0,
            erased_until,
            dirty: !stub && size > 0,
            done: false,
        });
        outputs.push(self.ok(request.op, 0, &[]));
        outputs
    }

    /// A snapshot for a write that was abandoned or ended before it completed.
    fn commit_pending(&mut self) -> Vec<Output> {
        match self.write.take() {
            Some(write) if write.dirty => vec![Output::Commit],
            _ => Vec::new(),
        }
    }

    fn flash_data(&mut self, request: &Request<'_>) -> Vec<Output> {
        let deflate = request.op == op::FLASH_DEFL_DATA;
        let matches = self
            .write
            .as_ref()
            .is_some_and(|w| w.inflater.is_some() == deflate);
        if !matches {
            return vec![self.fail(request.op, Fail::NotInFlashMode)];
        }
        let expected_seq = self.write.as_ref().map_or(0, |w| w.next_seq);
        let payload = match Self::block(request, expected_seq) {
            Ok(payload) => payload,
            Err(fail) => return vec![self.fail(request.op, fail)],
        };
        match self.absorb(payload) {
            Ok(completed) => {
                let mut outputs = Vec::new();
                if completed {
                    outputs.push(Output::Commit);
                }
                outputs.push(self.ok(request.op, 0, &[]));
                outputs
            }
            Err(fail) => vec![self.fail(request.op, fail)],
        }
    }

    /// Programs one data block of the current write; `Ok(true)` when it completed the region.
    fn absorb(&mut self, payload: &[u8]) -> Result<bool, Fail> {
        let stub = self.mode == Mode::Stub;
        let Some(mut write) = self.write.take() else {
            return Err(Fail::NotInFlashMode);
        };
        let result = self.absorb_into(&mut write, payload, stub);
        self.write = Some(write);
        result
    }

    fn absorb_into(
        &mut self,
        write: &mut FlashWrite,
        payload: &[u8],
        stub: bool,
    ) -> Result<bool, Fail> {
        let seq = write.next_seq;
        write.next_seq += 1;
        if let Some(mut inflater) = write.inflater.take() {
            let result = self.inflate(write, &mut inflater, payload, stub);
            write.inflater = Some(inflater);
            return result;
        }
        if stub {
            // The stub writes the announced byte count sequentially; block padding past it is
            // dropped.
            let room = write.size.saturating_sub(write.written) as usize;
            self.program(write, &payload[..payload.len().min(room)])?;
        } else {
            // The ROM writes every block, padding included, at its sequence position.
            let at = write.offset + seq * write.block_size;
            let end = self.flash.bytes().len() as u32;
            let len = (payload.len() as u32).min(end.saturating_sub(at));
            self.flash
                .program(at, &payload[..len as usize])
                .map_err(|_| Fail::OutOfRange)?;
            write.written += len;
            write.dirty = true;
        }
        let complete = if stub {
            write.written >= write.size
        } else {
            write.blocks > 0 && write.next_seq >= write.blocks
        };
        Ok(complete && write.finish())
    }

    /// Feeds one compressed block through the zlib stream and programs what comes out;
    /// `Ok(true)` when the stream ended with this block.
    fn inflate(
        &mut self,
        write: &mut FlashWrite,
        inflater: &mut Decompress,
        payload: &[u8],
        stub: bool,
    ) -> Result<bool, Fail> {
        let mut input = payload;
        let mut out = vec![0u8; 64 * 1024];
        loop {
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(|_| Fail::Inflate)?;
            let consumed = (inflater.total_in() - in_before) as usize;
            let produced = (inflater.total_out() - out_before) as usize;
            input = &input[consumed..];
            if stub && write.written as usize + produced > write.size as usize {
                return Err(Fail::TooMuchData);
            }
            self.program_deflated(write, &out[..produced], stub)?;
            if status == Status::StreamEnd {
                return Ok(write.finish());
            }
            if produced == 0 && (input.is_empty() || consumed == 0) {
                return Ok(false);
            }
        }
    }

    fn program_deflated(
        &mut self,
        write: &mut FlashWrite,
        data: &[u8],
        stub: bool,
    ) -> Result<(), Fail> {
        if stub {
            return self.program(write, data);
        }
        let at = write.offset + write.written;
        self.flash.program(at, data).map_err(|_| Fail::OutOfRange)?;
        write.written += data.len() as u32;
        write.dirty = true;
        Ok(())
    }

    /// The stub's sequential write: erase sectors just ahead of the data, then program it.
    fn program(&mut self, write: &mut FlashWrite, data: &[u8]) -> Result<(), Fail> {
        if data.is_empty() {
            return Ok(());
        }
        let at = write.offset + write.written;
        let end = at.checked_add(data.len() as u32).ok_or(Fail::OutOfRange)?;
        if let Some(erased) = &mut write.erased_until {
            while *erased < end {
                self.flash
                    .erase(*erased, SECTOR_SIZE)
                    .map_err(|_| Fail::OutOfRange)?;
                *erased += SECTOR_SIZE;
            }
        }
        self.flash.program(at, data).map_err(|_| Fail::OutOfRange)?;
        write.written += data.len() as u32;
        write.dirty = true;
        Ok(())
    }

    fn flash_end(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() != 4 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let reboot = word(request.data, 0) == 0;
        let was_writing = self.write.is_some();
        let mut outputs = self.commit_pending();
        match self.mode {
            Mode::Stub if !was_writing => outputs.push(self.fail(request.op, Fail::NotInFlashMode)),
            Mode::Stub => {
                outputs.push(self.ok(request.op, 0, &[]));
                if reboot {
                    // Software reset: the straps still say "download", so the ROM loader comes
                    // back, auto-bauding to whatever the host syncs at (its initial rate).
                    self.mode = Mode::Rom;
                    self.baud = self.power_up_baud;
                    self.upload = None;
                    outputs.push(Output::SetBaud(self.power_up_baud));
                }
            }
            _ => {
                // The ROM leaves the loader on either flag: reboot, or run the firmware.
                outputs.push(self.ok(request.op, 0, &[]));
                self.mode = Mode::Firmware;
            }
        }
        outputs
    }

    fn md5(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() != 16 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let digest = match self.flash.md5(word(request.data, 0), word(request.data, 1)) {
            Ok(digest) => digest,
            Err(_) => return vec![self.fail(request.op, Fail::OutOfRange)],
        };
        let body = if self.mode == Mode::Stub {
            digest.to_vec()
        } else {
            hex::encode(digest).into_bytes()
        };
        vec![self.ok(request.op, 0, &body)]
    }

    fn read_flash_slow(&mut self, request: &Request<'_>) -> Vec<Output> {
        // (offset, length[, block size, in flight]); one answer of 64 bytes per request.
        if request.data.len() < 8 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let (offset, len) = (word(request.data, 0), word(request.data, 1));
        if len > ROM_READ_BLOCK {
            return vec![self.fail(request.op, Fail::Invalid)];
        }
        match self.flash.read(offset, len) {
            Ok(data) => {
                let mut body = data.to_vec();
                body.resize(ROM_READ_BLOCK as usize, 0xFF);
                vec![self.ok(request.op, 0, &body)]
            }
            Err(_) => vec![self.fail(request.op, Fail::OutOfRange)],
        }
    }

    fn erase(&mut self, op: u8, offset: u32, size: u32) -> Vec<Output> {
        if !offset.is_multiple_of(SECTOR_SIZE) || !size.is_multiple_of(SECTOR_SIZE) {
            return vec![self.fail(op, Fail::OutOfRange)];
        }
        match self.flash.erase(offset, size) {
            Ok(()) => vec![Output::Commit, self.ok(op, 0, &[])],
            Err(_) => vec![self.fail(op, Fail::OutOfRange)],
        }
    }

    fn read_flash(&mut self, request: &Request<'_>) -> Vec<Output> {
        if request.data.len() != 16 {
            return vec![self.fail(request.op, Fail::BadLength)];
        }
        let (offset, len, block, max_unacked) = (
            word(request.data, 0),
            word(request.data, 1),
            word(request.data, 2),
            word(request.data, 3),
        );
        if block == 0 || self.flash.read(offset, len).is_err() {
            return vec![self.fail(request.op, Fail::OutOfRange)];
        }
        let mut outputs = vec![self.ok(request.op, 0, &[])];
        self.read = Some(FlashRead {
            offset,
            len,
            block,
            max_unacked,
            sent: 0,
            acked: 0,
        });
        outputs.extend(self.read_flash_pump());
        outputs
    }

    /// Sends data packets while fewer than `max_unacked` bytes await acknowledgement (at least
    /// one packet is always in flight), then the raw MD5 of the region once all is acknowledged.
    fn read_flash_pump(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        let Some(read) = &mut self.read else {
            return outputs;
        };
        while read.sent < read.len && read.sent - read.acked < read.max_unacked.max(1) {
            let n = read.block.min(read.len - read.sent);
            if let Ok(data) = self.flash.read(read.offset + read.sent, n) {
                outputs.push(Output::Send(data.to_vec()));
            }
            read.sent += n;
        }
        if read.acked >= read.len {
            if let Ok(digest) = self.flash.md5(read.offset, read.len) {
                outputs.push(Output::Send(digest.to_vec()));
            }
            self.read = None;
        }
        outputs
    }

    fn read_flash_ack(&mut self, frame: &[u8]) -> Vec<Output> {
        if frame.len() != 4 {
            return Vec::new();
        }
        if let Some(read) = &mut self.read {
            read.acked = word(frame, 0).min(read.sent);
        }
        self.read_flash_pump()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    use md5::{Digest, Md5};

    use super::*;

    const MAC: Mac = Mac([0x24, 0x0a, 0xc4, 0x00, 0x00, 0x01]);

    fn loader() -> Loader {
        Loader::new(SimChip::Esp32, MAC, 115_200)
    }

    fn request(op: u8, data: &[u8], checksum: u8) -> Vec<u8> {
        let mut frame = vec![0, op];
        frame.extend_from_slice(&(data.len() as u16).to_le_bytes());
        frame.extend_from_slice(&u32::from(checksum).to_le_bytes());
        frame.extend_from_slice(data);
        frame
    }

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn block(op: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut data = words(&[payload.len() as u32, seq, 0, 0]);
        data.extend_from_slice(payload);
        request(op, &data, checksum(payload))
    }

    fn sent(outputs: &[Output]) -> Vec<&[u8]> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send(p) => Some(p.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Handles a request that must produce exactly one reply, returning (value, body, status).
    fn call(loader: &mut Loader, frame: &[u8]) -> (u32, Vec<u8>, Vec<u8>) {
        let outputs = loader.handle(frame);
        let replies = sent(&outputs);
        assert_eq!(replies.len(), 1, "{outputs:?}");
        split(replies[0], loader.mode() == Mode::Stub)
    }

    fn split(reply: &[u8], stub: bool) -> (u32, Vec<u8>, Vec<u8>) {
        assert_eq!(reply[0], 1, "direction");
        let len = usize::from(u16::from_le_bytes([reply[2], reply[3]]));
        assert_eq!(len, reply.len() - 8, "size field covers body and status");
        let value = word(reply, 1);
        let status_len = if stub { 2 } else { 4 };
        let body_end = reply.len() - status_len;
        (
            value,
            reply[8..body_end].to_vec(),
            reply[body_end..].to_vec(),
        )
    }

    fn ok_status(stub: bool) -> Vec<u8> {
        if stub { vec![0, 0] } else { vec![0, 0, 0, 0] }
    }

    fn sync_frame() -> Vec<u8> {
        let mut data = vec![0x07, 0x07, 0x12, 0x20];
        data.extend([0x55; 32]);
        request(op::SYNC, &data, 0)
    }

    fn read_reg(loader: &mut Loader, addr: u32) -> u32 {
        call(loader, &request(op::READ_REG, &words(&[addr]), 0)).0
    }

    fn upload_stub(loader: &mut Loader) -> Vec<Output> {
        let text = vec![0xA5u8; 0x1800 + 100];
        let (_, _, status) = call(
            loader,
            &request(
                op::MEM_BEGIN,
                &words(&[text.len() as u32, 2, 0x1800, 0x4008_0000]),
                0,
            ),
        );
        assert_eq!(status, ok_status(false));
        for (seq, chunk) in text.chunks(0x1800).enumerate() {
            let (_, _, status) = call(loader, &block(op::MEM_DATA, seq as u32, chunk));
            assert_eq!(status, ok_status(false), "block {seq}");
        }
        loader.handle(&request(op::MEM_END, &words(&[0, 0x4008_0400]), 0))
    }

    #[test]
    fn rom_answers_sync_eight_times_with_a_nonzero_value() {
        let mut loader = loader();
        let outputs = loader.handle(&sync_frame());
        let replies = sent(&outputs);
        assert_eq!(replies.len(), 8);
        for reply in replies {
            let (value, body, status) = split(reply, false);
            assert_ne!(value, 0);
            assert!(body.is_empty());
            assert_eq!(status, ok_status(false));
        }
    }

    #[test]
    fn registers_identify_an_esp32_with_its_mac() {
        let mut loader = loader();
        assert_eq!(read_reg(&mut loader, 0x4000_1000), 0x00F0_1D83);
        let mac0 = read_reg(&mut loader, 0x3FF5_A004);
        let mac1 = read_reg(&mut loader, 0x3FF5_A008) & 0xFFFF;
        let mac = ((u64::from(mac1) << 32) | u64::from(mac0)).to_be_bytes();
        assert_eq!(mac[2..], MAC.0);
    }

    #[test]
    fn rom_rejects_security_info_like_the_esp32_rom() {
        let mut loader = loader();
        let (_, body, status) = call(&mut loader, &request(op::GET_SECURITY_INFO, &[], 0));
        assert!(body.is_empty());
        assert_eq!(status, vec![1, 0x05, 0, 0]);
    }

    #[test]
    fn other_chips_report_their_chip_id() {
        let mut loader = Loader::new(SimChip::Esp32s3, MAC, 115_200);
        let (_, body, status) = call(&mut loader, &request(op::GET_SECURITY_INFO, &[], 0));
        assert_eq!(status, ok_status(false));
        assert_eq!(body.len(), 20);
        assert_eq!(word(&body, 3), 9);
        assert_eq!(read_reg(&mut loader, 0x4000_1000), 9);
    }

    #[test]
    fn stub_upload_greets_and_switches_to_two_status_bytes() {
        let mut loader = loader();
        let outputs = upload_stub(&mut loader);
        let frames = sent(&outputs);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            split(frames[0], false).2,
            ok_status(false),
            "MEM_END answered by the ROM"
        );
        assert_eq!(frames[1], b"OHAI");
        assert_eq!(loader.mode(), Mode::Stub);
        let (value, _, status) = call(
            &mut loader,
            &request(op::READ_REG, &words(&[0x4000_1000]), 0),
        );
        assert_eq!(value, 0x00F0_1D83);
        assert_eq!(status, ok_status(true));
        let replies = loader.handle(&sync_frame());
        assert!(
            sent(&replies).iter().all(|r| split(r, true).0 == 0),
            "stub syncs with value 0"
        );
    }

    #[test]
    fn mem_end_without_entry_stays_in_the_rom() {
        let mut loader = loader();
        let outputs = loader.handle(&request(op::MEM_END, &words(&[1, 0]), 0));
        assert_eq!(sent(&outputs).len(), 1);
        assert_eq!(loader.mode(), Mode::Rom);
    }

    #[test]
    fn bad_checksum_and_sequence_are_refused() {
        let mut loader = loader();
        call(
            &mut loader,
            &request(op::FLASH_BEGIN, &words(&[0x1000, 4, 0x400, 0x9000]), 0),
        );
        let mut frame = block(op::FLASH_DATA, 0, &[0u8; 0x400]);
        frame[4] ^= 1;
        assert_eq!(call(&mut loader, &frame).2, vec![1, 0x07, 0, 0]);
        let frame = block(op::FLASH_DATA, 1, &[0u8; 0x400]);
        assert_eq!(call(&mut loader, &frame).2, vec![1, 0x06, 0, 0]);
    }

    #[test]
    fn rom_flash_write_erases_programs_and_answers_md5_in_hex() {
        let mut loader = loader();
        let image: Vec<u8> = (0..0x900u32).map(|i| (i % 251) as u8).collect();
        let erase = 0x1000;
        let blocks = image.len().div_ceil(0x400) as u32;
        let (_, _, status) = call(
            &mut loader,
            &request(op::FLASH_BEGIN, &words(&[erase, blocks, 0x400, 0x9000]), 0),
        );
        assert_eq!(status, ok_status(false));
        let mut commits = 0;
        for (seq, chunk) in image.chunks(0x400).enumerate() {
            let mut padded = chunk.to_vec();
            padded.resize(0x400, 0xFF);
            let outputs = loader.handle(&block(op::FLASH_DATA, seq as u32, &padded));
            commits += outputs.iter().filter(|o| **o == Output::Commit).count();
            assert_eq!(split(sent(&outputs)[0], false).2, ok_status(false));
        }
        assert_eq!(commits, 1, "one snapshot when the last block lands");
        assert_eq!(&loader.flash().bytes()[0x9000..0x9900], &image[..]);
        assert!(
            loader.flash().bytes()[0x9900..0xA000]
                .iter()
                .all(|&b| b == 0xFF)
        );

        let (_, body, status) = call(
            &mut loader,
            &request(
                op::SPI_FLASH_MD5,
                &words(&[0x9000, image.len() as u32, 0, 0]),
                0,
            ),
        );
        assert_eq!(status, ok_status(false));
        assert_eq!(body, hex::encode(Md5::digest(&image)).into_bytes());

        let outputs = loader.handle(&request(op::FLASH_END, &words(&[0]), 0));
        assert_eq!(sent(&outputs).len(), 1, "FLASH_END is answered");
        assert_eq!(
            loader.mode(),
            Mode::Firmware,
            "then the ROM runs the firmware"
        );
        assert!(
            loader.handle(&sync_frame()).is_empty(),
            "and answers nothing more"
        );
    }

    #[test]
    fn stub_deflate_write_inflates_streaming_and_answers_raw_md5() {
        let mut loader = loader();
        upload_stub(&mut loader);
        let image: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&image).unwrap();
        let compressed = encoder.finish().unwrap();
        // Small blocks so the stream spans several FLASH_DEFL_DATA commands.
        let block_size = 64;
        let blocks = compressed.len().div_ceil(block_size) as u32;
        let (_, _, status) = call(
            &mut loader,
            &request(
                op::FLASH_DEFL_BEGIN,
                &words(&[image.len() as u32, blocks, block_size as u32, 0x10000, 0]),
                0,
            ),
        );
        assert_eq!(status, ok_status(true));
        let mut commits = 0;
        for (seq, chunk) in compressed.chunks(block_size).enumerate() {
            let outputs = loader.handle(&block(op::FLASH_DEFL_DATA, seq as u32, chunk));
            commits += outputs.iter().filter(|o| **o == Output::Commit).count();
            assert_eq!(
                split(sent(&outputs)[0], true).2,
                ok_status(true),
                "block {seq}"
            );
        }
        assert_eq!(commits, 1);
        let outputs = loader.handle(&request(op::FLASH_DEFL_END, &words(&[1]), 0));
        assert_eq!(split(sent(&outputs)[0], true).2, ok_status(true));
        assert_eq!(loader.mode(), Mode::Stub, "flag 1 stays in the stub");
        assert_eq!(
            &loader.flash().bytes()[0x10000..0x10000 + image.len()],
            &image[..]
        );

        let (_, body, status) = call(
            &mut loader,
            &request(
                op::SPI_FLASH_MD5,
                &words(&[0x10000, image.len() as u32, 0, 0]),
                0,
            ),
        );
        assert_eq!(status, ok_status(true));
        assert_eq!(body, Md5::digest(&image).to_vec());
    }

    #[test]
    fn stub_rejects_a_corrupt_stream() {
        let mut loader = loader();
        upload_stub(&mut loader);
        call(
            &mut loader,
            &request(op::FLASH_DEFL_BEGIN, &words(&[100, 1, 0x4000, 0]), 0),
        );
        let (_, _, status) = call(
            &mut loader,
            &block(op::FLASH_DEFL_DATA, 0, b"not zlib at all"),
        );
        assert_eq!(status, vec![0xC7, 0]);
    }

    #[test]
    fn stub_reboot_returns_to_the_rom_loader_at_the_power_up_baud() {
        let mut loader = loader();
        upload_stub(&mut loader);
        let outputs = loader.handle(&request(
            op::CHANGE_BAUDRATE,
            &words(&[921_600, 115_200]),
            0,
        ));
        assert!(matches!(
            outputs.as_slice(),
            [Output::Send(_), Output::SetBaud(921_600)]
        ));
        call(
            &mut loader,
            &request(op::FLASH_BEGIN, &words(&[0, 0, 0x400, 0]), 0),
        );
        let outputs = loader.handle(&request(op::FLASH_END, &words(&[0]), 0));
        assert!(matches!(
            outputs.as_slice(),
            [Output::Send(_), Output::SetBaud(115_200)]
        ));
        assert_eq!(loader.mode(), Mode::Rom);
    }

    #[test]
    fn stub_read_flash_streams_blocks_paced_by_acks_then_the_digest() {
        let mut loader = loader();
        upload_stub(&mut loader);
        let outputs = loader.handle(&request(
            op::READ_FLASH,
            &words(&[0, 0x2000, 0x1000, 64]),
            0,
        ));
        let frames = sent(&outputs);
        assert_eq!(frames.len(), 2, "the answer and one block in flight");
        assert_eq!(frames[1].len(), 0x1000);
        let outputs = loader.handle(&words(&[0x1000]));
        assert_eq!(sent(&outputs).len(), 1);
        let outputs = loader.handle(&words(&[0x2000]));
        let frames = sent(&outputs);
        assert_eq!(frames, vec![Md5::digest(vec![0xFF; 0x2000]).as_slice()]);
    }

    #[test]
    fn writes_and_unknown_commands_fail_cleanly() {
        let mut loader = loader();
        assert_eq!(
            call(
                &mut loader,
                &request(op::ERASE_REGION, &words(&[0, 0x1000]), 0)
            )
            .2,
            vec![1, 0x05, 0, 0]
        );
        let beyond = request(op::FLASH_BEGIN, &words(&[0x2000, 8, 0x400, 0x3F_F000]), 0);
        assert_eq!(call(&mut loader, &beyond).2, vec![1, 0x08, 0, 0]);
        assert_eq!(
            call(&mut loader, &block(op::FLASH_DATA, 0, &[0; 4])).2,
            vec![1, 0x06, 0, 0]
        );
        let mut short = request(op::READ_REG, &words(&[0]), 0);
        short[2] = 9;
        assert_eq!(call(&mut loader, &short).2, vec![1, 0x05, 0, 0]);
        assert!(loader.handle(&[0xFF; 3]).is_empty());
    }
}
