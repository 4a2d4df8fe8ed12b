//! The serial-loader side of one simulated chip: one decoded request frame in, the frames, time
//! and side effects it causes out. No I/O happens here; [`super::port`] moves the bytes and
//! keeps the clock.
//!
//! Two programs share the wire format of
//! <https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html>:
//! the ROM loader ([`super::rom`]), active after reset in download mode, and the flasher stub
//! ([`super::stub`]), entered when MEM_END jumps to uploaded code. [`Chip`] is the hardware both
//! drive: registers and RAM, the SPI flash, the UART's rate.

use std::time::Duration;

use super::SimChip;
use super::chip::{Registers, Watchdog, WatchdogAction};
use super::flash::Flash;
use super::rom::RomLoader;
use super::stub::Stub;
use super::timing::SimTiming;
use crate::identity::Mac;

/// Request opcodes (the command byte of a request packet).
pub(crate) mod op {
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

/// Whether a request frame carries flash data (what the `FlashBlock` fault trigger counts).
pub(crate) fn is_flash_data(frame: &[u8]) -> bool {
    frame.len() >= 8 && frame[0] == 0 && matches!(frame[1], op::FLASH_DATA | op::FLASH_DEFL_DATA)
}

/// The XOR checksum of data blocks, seeded with 0xEF.
pub(crate) fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0xEF, |acc, b| acc ^ b)
}

/// Reads the little-endian word at byte `at` of `data` (0 past the end).
pub(crate) fn le_word(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Which program answers on the UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The ROM serial loader (download mode).
    Rom,
    /// The flasher stub, uploaded to RAM and running.
    Stub,
    /// The loader has been left without a reset (FLASH_END, RUN_USER_CODE); nothing answers.
    Firmware,
    /// A chip reset with GPIO0 released booted the application from flash; it prints its log
    /// and ignores the protocol.
    Application,
}

/// What handling a frame asks the port to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send this packet (not yet SLIP-encoded).
    Send(Vec<u8>),
    /// From now on the UART runs at this baud rate.
    SetBaud(u32),
    /// The flash changed: persist the flash image.
    Commit,
    /// The chip is busy this long (erasing, programming, hashing) before it goes on with the
    /// next output, or, after the last one, before it takes the next request.
    Work(Duration),
    /// The RTC watchdog was armed: it resets the chip after its timeout.
    Watchdog(Watchdog),
}

/// The hardware of one simulated chip, driven by whichever program runs.
#[derive(Debug)]
pub(crate) struct Chip {
    pub(crate) regs: Registers,
    pub(crate) flash: Flash,
    pub(crate) timing: SimTiming,
    /// The rate the UART runs at now.
    pub(crate) baud: u32,
    /// The rate at power-up and after a reset.
    pub(crate) power_up_baud: u32,
    /// The rate the ROM was last asked to switch to (the power-up rate before any switch):
    /// the link rate a starting stub re-programs its UART for.
    pub(crate) rom_link_baud: u32,
    /// The flash changed since the last snapshot.
    dirty: bool,
}

impl Chip {
    /// Notes that the flash changed.
    pub(crate) fn touched(&mut self) {
        self.dirty = true;
    }

    /// A snapshot of the flash, if it changed since the last one.
    pub(crate) fn commit(&mut self) -> Option<Output> {
        std::mem::take(&mut self.dirty).then_some(Output::Commit)
    }
}

/// What a program asks for besides its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep answering.
    Stay,
    /// Jump to the uploaded stub.
    RunStub,
    /// Software reset: the download-mode straps are still latched, so the ROM loader returns.
    Reset,
    /// Leave the loader for the firmware.
    RunFirmware,
}

/// The loader of one simulated chip.
#[derive(Debug)]
pub(crate) struct Loader {
    mode: Mode,
    chip: Chip,
    rom: RomLoader,
    stub: Stub,
    mac: Mac,
}

impl Loader {
    /// A chip just reset into download mode. Its ROM believes its crystal runs
    /// `xtal_error_ppm` off the true 40 MHz.
    pub(crate) fn new(
        chip: SimChip,
        mac: Mac,
        baud: u32,
        timing: SimTiming,
        xtal_error_ppm: i32,
    ) -> Self {
        Loader {
            mode: Mode::Rom,
            chip: Chip {
                regs: Registers::new(chip, mac, xtal_error_ppm),
                flash: Flash::new(),
                timing,
                baud,
                power_up_baud: baud,
                rom_link_baud: baud,
                dirty: false,
            },
            rom: RomLoader::new(chip),
            stub: Stub::default(),
            mac,
        }
    }

    /// The MAC burned into its eFuse.
    pub(crate) fn mac(&self) -> Mac {
        self.mac
    }

    /// Which program answers.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The flash contents.
    pub(crate) fn flash(&self) -> &Flash {
        &self.chip.flash
    }

    /// Writes `bytes` at `offset` as factory or earlier firmware left them.
    pub(crate) fn preload(&mut self, offset: u32, bytes: &[u8]) -> Result<(), ()> {
        self.chip
            .flash
            .erase(offset, bytes.len() as u32)
            .map_err(drop)?;
        self.chip.flash.program(offset, bytes).map_err(drop)
    }

    /// The UART's current rate.
    pub(crate) fn baud(&self) -> u32 {
        self.chip.baud
    }

    /// Handles one decoded frame from the host.
    pub(crate) fn handle(&mut self, frame: &[u8]) -> Vec<Output> {
        let (mut outputs, next) = match self.mode {
            Mode::Firmware | Mode::Application => return Vec::new(),
            Mode::Rom => self.rom.handle(&mut self.chip, frame),
            Mode::Stub => self.stub.handle(&mut self.chip, frame),
        };
        match next {
            Next::Stay => {}
            Next::RunStub => {
                self.mode = Mode::Stub;
                self.stub = Stub::default();
                outputs.extend(self.stub.start(&mut self.chip));
            }
            Next::Reset => outputs.push(self.enter_download_mode()),
            Next::RunFirmware => {
                self.mode = Mode::Firmware;
                outputs.extend(self.chip.commit());
            }
        }
        if let Some(watchdog) = self.chip.regs.take_watchdog() {
            outputs.push(Output::Watchdog(watchdog));
        }
        outputs
    }

    /// A reset with the download-mode straps still latched: the ROM loader starts afresh at
    /// its power-up rate.
    fn enter_download_mode(&mut self) -> Output {
        self.mode = Mode::Rom;
        self.rom = RomLoader::new(self.rom.chip());
        self.stub = Stub::default();
        self.chip.baud = self.chip.power_up_baud;
        self.chip.rom_link_baud = self.chip.power_up_baud;
        Output::SetBaud(self.chip.power_up_baud)
    }

    /// The RTC watchdog fires. A chip reset samples the strapping pins again: GPIO0 was
    /// released after the host's download-mode reset, so the chip boots its application
    /// (`true`). A lesser reset keeps the latched download mode: the ROM loader again.
    pub(crate) fn watchdog_fires(&mut self, action: WatchdogAction) -> (bool, Output) {
        let output = self.enter_download_mode();
        let boots = action == WatchdogAction::ResetChip;
        if boots {
            self.mode = Mode::Application;
        }
        (boots, output)
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
        Loader::new(SimChip::Esp32, MAC, 115_200, SimTiming::default(), 0)
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

    /// Handles a request that must produce exactly one reply: (value, body, status).
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
        let status_len = if stub { 2 } else { 4 };
        let body_end = reply.len() - status_len;
        (
            le_word(reply, 4),
            reply[8..body_end].to_vec(),
            reply[body_end..].to_vec(),
        )
    }

    fn sync_frame() -> Vec<u8> {
        let mut data = vec![0x07, 0x07, 0x12, 0x20];
        data.extend([0x55; 32]);
        request(op::SYNC, &data, 0)
    }

    fn work(outputs: &[Output]) -> Duration {
        outputs
            .iter()
            .map(|o| match o {
                Output::Work(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
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
        assert_eq!(status, [0, 0, 0, 0]);
        for (seq, chunk) in text.chunks(0x1800).enumerate() {
            let (_, _, status) = call(loader, &block(op::MEM_DATA, seq as u32, chunk));
            assert_eq!(status[..2], [0, 0], "block {seq}");
        }
        loader.handle(&request(op::MEM_END, &words(&[0, 0x4008_0400]), 0))
    }

    #[test]
    fn rom_answers_sync_eight_times_and_replays_them_for_an_unsupported_command() {
        let mut loader = loader();
        let replies = loader.handle(&sync_frame());
        assert_eq!(sent(&replies).len(), 8);
        for reply in sent(&replies) {
            let (value, body, status) = split(reply, false);
            assert_eq!(value, 0x2012_0707);
            assert!(body.is_empty());
            assert_eq!(status, [0, 0, 0, 0]);
        }
        // GET_SECURITY_INFO: the ESP32 ROM lacks it and re-sends the SYNC replies, failed.
        let outputs = loader.handle(&request(op::GET_SECURITY_INFO, &[], 0));
        let replies = sent(&outputs);
        assert_eq!(replies.len(), 8);
        assert!(replies.iter().all(|r| r[1] == op::SYNC));
        assert!(replies.iter().all(|r| split(r, false).2 == [1, 5, 0, 0]));
    }

    #[test]
    fn registers_identify_an_esp32_with_its_mac() {
        let mut loader = loader();
        let read = |loader: &mut Loader, addr: u32| {
            call(loader, &request(op::READ_REG, &words(&[addr]), 0)).0
        };
        assert_eq!(read(&mut loader, 0x4000_1000), 0x00F0_1D83);
        let mac0 = read(&mut loader, 0x3FF5_A004);
        let mac1 = read(&mut loader, 0x3FF5_A008) & 0xFFFF;
        let mac = ((u64::from(mac1) << 32) | u64::from(mac0)).to_be_bytes();
        assert_eq!(mac[2..], MAC.0);
    }

    #[test]
    fn other_chips_report_their_chip_id() {
        let mut loader = Loader::new(SimChip::Esp32s3, MAC, 115_200, SimTiming::instant(), 0);
        let (_, body, status) = call(&mut loader, &request(op::GET_SECURITY_INFO, &[], 0));
        assert_eq!(status, [0, 0, 0, 0]);
        assert_eq!(body.len(), 20);
        assert_eq!(le_word(&body, 12), 9);
    }

    #[test]
    fn stub_upload_greets_at_the_rom_link_rate_and_answers_with_two_status_bytes() {
        let mut loader = loader();
        // The host moved the ROM to 921600 before uploading.
        let outputs = loader.handle(&request(op::CHANGE_BAUDRATE, &words(&[921_600, 0]), 0));
        assert!(matches!(
            outputs.as_slice(),
            [Output::Send(_), Output::SetBaud(921_600)]
        ));
        let outputs = upload_stub(&mut loader);
        assert_eq!(
            outputs[1..],
            [Output::SetBaud(921_600), Output::Send(b"OHAI".to_vec())]
        );
        assert_eq!(loader.mode(), Mode::Stub);
        let (value, _, status) = call(
            &mut loader,
            &request(op::READ_REG, &words(&[0x4000_1000]), 0),
        );
        assert_eq!(value, 0x00F0_1D83);
        assert_eq!(status, [0, 0]);
    }

    #[test]
    fn a_drifted_rom_sets_the_rate_its_crystal_estimate_gives() {
        // The ROM believes in 41.2 MHz: asked for 921600 it ends up 3% slow; asked for
        // 921600 × 41.2 / 40 (esptool's correction) it is exact.
        let mut loader = Loader::new(SimChip::Esp32, MAC, 115_200, SimTiming::instant(), 30_000);
        loader.handle(&request(op::CHANGE_BAUDRATE, &words(&[921_600, 0]), 0));
        let slow = f64::from(loader.baud()) / 921_600.0;
        assert!((slow - 1.0 / 1.03).abs() < 1e-3, "{slow}");
        let mut loader = Loader::new(SimChip::Esp32, MAC, 115_200, SimTiming::instant(), 30_000);
        loader.handle(&request(op::CHANGE_BAUDRATE, &words(&[949_248, 0]), 0));
        assert!(loader.baud().abs_diff(921_600) < 1000, "{}", loader.baud());
    }

    #[test]
    fn rom_checksum_failures_use_up_the_sequence_number() {
        let mut loader = loader();
        call(
            &mut loader,
            &request(op::FLASH_BEGIN, &words(&[0x1000, 4, 0x400, 0x9000]), 0),
        );
        let mut frame = block(op::FLASH_DATA, 0, &[0x11; 0x400]);
        frame[4] ^= 1;
        assert_eq!(call(&mut loader, &frame).2, [1, 7, 0, 0]);
        let frame = block(op::FLASH_DATA, 0, &[0x11; 0x400]);
        assert_eq!(call(&mut loader, &frame).2, [1, 5, 0, 0], "seq 0 is gone");
        let frame = block(op::FLASH_DATA, 1, &[0x22; 0x400]);
        assert_eq!(
            call(&mut loader, &frame).2,
            [0, 5, 0, 0],
            "error byte sticks"
        );
        // Blocks land back to back: the refused one left no gap.
        assert_eq!(&loader.flash().bytes()[0x9000..0x9004], &[0x22; 4]);
    }

    #[test]
    fn rom_erases_before_answering_begin_and_programs_before_answering_data() {
        let mut loader = loader();
        let outputs = loader.handle(&request(
            op::FLASH_DEFL_BEGIN,
            &words(&[0x6000, 1, 0x400, 0x9000]),
            0,
        ));
        assert!(matches!(outputs.first(), Some(Output::Work(_))));
        assert_eq!(work(&outputs), Duration::from_millis(6 * 45));
        let image: Vec<u8> = (0..0x900u32).map(|i| (i % 251) as u8).collect();
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&image).unwrap();
        let compressed = encoder.finish().unwrap();
        let outputs = loader.handle(&block(op::FLASH_DEFL_DATA, 0, &compressed));
        assert_eq!(work(&outputs), Duration::from_micros(9 * 700));
        assert!(matches!(outputs.last(), Some(Output::Send(_))));
        assert!(outputs.contains(&Output::Commit), "the stream ended");
        assert_eq!(&loader.flash().bytes()[0x9000..0x9900], &image[..]);
        let (_, body, status) = call(
            &mut loader,
            &request(
                op::SPI_FLASH_MD5,
                &words(&[0x9000, image.len() as u32, 0, 0]),
                0,
            ),
        );
        assert_eq!(status, [0, 0, 0, 0]);
        assert_eq!(body, hex::encode(Md5::digest(&image)).into_bytes());
        // FLASH_DEFL_END 1 stays in the loader; FLASH_END leaves it.
        call(&mut loader, &request(op::FLASH_DEFL_END, &words(&[1]), 0));
        assert_eq!(loader.mode(), Mode::Rom);
        call(&mut loader, &request(op::FLASH_END, &words(&[0]), 0));
        assert_eq!(loader.mode(), Mode::Firmware);
        assert!(loader.handle(&sync_frame()).is_empty());
    }

    #[test]
    fn stub_acknowledges_data_before_it_erases_and_programs() {
        let mut loader = loader();
        upload_stub(&mut loader);
        let image: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&image).unwrap();
        let compressed = encoder.finish().unwrap();
        let block_size = 64;
        let blocks = compressed.len().div_ceil(block_size) as u32;
        let begin = loader.handle(&request(
            op::FLASH_DEFL_BEGIN,
            &words(&[image.len() as u32, blocks, block_size as u32, 0x10000, 0]),
            0,
        ));
        assert_eq!(
            work(&begin),
            Duration::ZERO,
            "the stub erases nothing up front"
        );
        let mut total = Duration::ZERO;
        for (seq, chunk) in compressed.chunks(block_size).enumerate() {
            let outputs = loader.handle(&block(op::FLASH_DEFL_DATA, seq as u32, chunk));
            assert!(
                matches!(outputs.first(), Some(Output::Send(_))),
                "ack first"
            );
            assert_eq!(split(sent(&outputs)[0], true).2, [0, 0], "block {seq}");
            total += work(&outputs);
        }
        // 40,000 bytes from 0x10000, less than a 64 KiB block: ten sectors erased, and 157
        // pages programmed (one more where the 32 KiB output buffer splits a page).
        let erase = Duration::from_millis(10 * 45);
        assert!(
            total >= erase + Duration::from_micros(157 * 700)
                && total <= erase + Duration::from_micros(158 * 700),
            "{total:?}"
        );
        let outputs = loader.handle(&request(op::FLASH_DEFL_END, &words(&[1]), 0));
        assert_eq!(split(sent(&outputs)[0], true).2, [0, 0]);
        assert_eq!(loader.mode(), Mode::Stub, "flag 1 stays in the stub");
        assert_eq!(
            &loader.flash().bytes()[0x10000..0x10000 + image.len()],
            &image[..]
        );
        let (_, body, _) = call(
            &mut loader,
            &request(
                op::SPI_FLASH_MD5,
                &words(&[0x10000, image.len() as u32, 0, 0]),
                0,
            ),
        );
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
        assert_eq!(status, [0xC7, 0]);
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
            [.., Output::Send(_), Output::SetBaud(115_200)]
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
}
