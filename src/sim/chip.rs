//! The simulated chip's memory-mapped registers: what espflash and esptool read over READ_REG
//! and poke over WRITE_REG to identify the chip and talk to its SPI flash.
//!
//! Addresses and bit layouts follow the ESP32 Technical Reference Manual
//! (<https://www.espressif.com/sites/default/files/documentation/esp32_technical_reference_manual_en.pdf>):
//! eFuse BLOCK0 read words at `0x3FF5_A000` (MAC, package, revision bits), `APB_CTL_DATE` at
//! `0x3FF6_607C` (revision bit 2), UART0's clock divider at `0x3FF4_0014` (how hosts estimate the
//! crystal), and the SPI1 user-command registers at `0x3FF4_2000` that hosts drive to read the
//! flash JEDEC ID. The chip-detect word at `0x4000_1000` lies in ROM and differs per chip model.
//! The RTC watchdog (`RTC_CNTL_WDTCONFIG0/1`, `RTC_CNTL_WDTWPROTECT` at `0x3FF4_808C`..,
//! ESP-IDF's `soc/esp32/include/soc/rtc_cntl_reg.h`) can be armed, as esptool's and the
//! station's watchdog reset do. Registers the model does not know read as zero; writes are
//! remembered and read back.

use std::collections::HashMap;

use super::SimChip;
use crate::identity::Mac;

/// The ROM word hosts read to tell chip models apart.
pub(crate) const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
/// JEDEC ID of the simulated flash as W0 holds it after RDID: manufacturer 0xEF (Winbond),
/// memory type 0x40, capacity code 0x16 (2^22 bytes = 4 MiB), i.e. a W25Q32.
pub(crate) const FLASH_ID: u32 = 0x0016_40EF;

/// The crystal the simulated board carries; hosts infer it from the UART divider.
const XTAL_HZ: u32 = 40_000_000;

const EFUSE_BLK0_RDATA: u32 = 0x3FF5_A000;
const APB_CTL_DATE: u32 = 0x3FF6_607C;
const UART0_CLKDIV: u32 = 0x3FF4_0014;
const RTC_CALI_CFG1: u32 = 0x3FF5_F06C;
const GPIO_STRAP: u32 = 0x3FF4_4038;

/// EFUSE_BLK0_RDATA3: package version 1 (ESP32-D0WD) in bits 9..12, CHIP_VER_REV1 in bit 15.
const EFUSE_WORD3: u32 = (1 << 9) | (1 << 15);
/// EFUSE_BLK0_RDATA4: CK8M_FREQ in bits 0..8. With the RTC calibration value below, the ROM's
/// estimate of its crystal (`cali * 15625 * ck8m / 40`, as esptool recomputes it) comes to
/// exactly 40 MHz.
const EFUSE_WORD4: u32 = 50;
/// The RTC calibration count (bits 7..32 of RTC_CALI) that gives the 40 MHz estimate.
const RTC_CALI_COUNT: u64 = 2048;
/// EFUSE_BLK0_RDATA5: CHIP_VER_REV2 in bit 20; wafer minor version (bits 24..26) stays 0.
const EFUSE_WORD5: u32 = 1 << 20;
/// APB_CTL_DATE with bit 31 set: together with the two eFuse bits this reads as revision v3.0.
const APB_CTL_DATE_VALUE: u32 = 0x9604_2000;
/// GPIO strapping as latched in UART download mode (`boot:0x3`).
const STRAP_DOWNLOAD_BOOT: u32 = 0x03;

/// The ESP32's RTC watchdog: configuration, stage 0 timeout, write protection.
const RTC_WDT_CONFIG0: u32 = 0x3FF4_808C;
const RTC_WDT_CONFIG1: u32 = 0x3FF4_8090;
const RTC_WDT_FEED: u32 = 0x3FF4_80A0;
const RTC_WDT_WPROTECT: u32 = 0x3FF4_80A4;
/// The value of WDTWPROTECT that lets the watchdog's registers be written (also its value
/// after reset).
const RTC_WDT_WKEY: u32 = 0x50D8_3AA1;
/// WDTCONFIG0: enable bit and stage 0's action (bits 28..31).
const RTC_WDT_EN: u32 = 1 << 31;
const RTC_WDT_STG0_SHIFT: u32 = 28;
/// The RTC slow clock the watchdog counts: the ESP32's internal 150 kHz RC oscillator.
const RTC_SLOW_CLOCK_HZ: u64 = 150_000;

/// What the RTC watchdog does when stage 0 expires (`RTC_WDT_STG_SEL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchdogAction {
    /// Resets the CPU or the digital system: the strapping pins keep their latched values.
    ResetKeepingStraps,
    /// Resets the RTC domain too: a chip reset, which samples the strapping pins again.
    ResetChip,
}

/// The RTC watchdog, armed: what it does and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watchdog {
    /// How long after it was armed stage 0 expires.
    pub(crate) after: std::time::Duration,
    /// What it does then.
    pub(crate) action: WatchdogAction,
}

/// SPI1 USER2 after the ESP32 ROM's flash set-up (command bit length field 4), as recorded.
const ESP32_ROM_SPI_USER2: u32 = 0x4000_0000;

/// SPI_CMD bit that starts a user-defined transaction and stays set while it runs.
const SPI_CMD_USR: u32 = 1 << 18;
/// SPI_USR bit: the transaction has a MISO (read) phase.
const SPI_USR_MISO: u32 = 1 << 28;

const SPIFLASH_RDID: u8 = 0x9F;
const SPIFLASH_RDSFDP: u8 = 0x5A;
/// "SFDP" as the first 32 bits of the SFDP table.
const SFDP_SIGNATURE: u32 = 0x5044_4653;

/// Where a chip model keeps its SPI1 (flash) controller registers.
#[derive(Debug, Clone, Copy)]
struct SpiLayout {
    base: u32,
    usr: u32,
    usr2: u32,
    miso_dlen: u32,
    w0: u32,
}

impl SpiLayout {
    fn of(chip: SimChip) -> Self {
        match chip {
            SimChip::Esp32 => SpiLayout {
                base: 0x3FF4_2000,
                usr: 0x1C,
                usr2: 0x24,
                miso_dlen: 0x2C,
                w0: 0x80,
            },
            SimChip::Esp32s3 | SimChip::Esp32c3 => SpiLayout {
                base: 0x6000_2000,
                usr: 0x18,
                usr2: 0x20,
                miso_dlen: 0x28,
                w0: 0x58,
            },
        }
    }
}

/// The register file of one simulated chip, and the RAM behind it (what WRITE_REG and MEM_DATA
/// store, READ_REG reads back).
#[derive(Debug)]
pub(crate) struct Registers {
    chip: SimChip,
    mac: Mac,
    /// The RTC calibration value; off the 40 MHz count when the ROM's crystal estimate drifts.
    rtc_cali: u32,
    written: HashMap<u32, u32>,
    spi: SpiLayout,
    /// Reads of SPI_CMD that still report the transaction busy; hosts poll until it clears.
    spi_busy_reads: u8,
    /// The RTC watchdog, once armed and until the loader takes it.
    watchdog: Option<Watchdog>,
}

impl Registers {
    /// The registers of `chip` at power-up, with `mac` burned into eFuse and the ROM's crystal
    /// estimate off the true 40 MHz by `xtal_error_ppm` parts per million (its 8 MHz RC
    /// oscillator, which the estimate is calibrated against, drifts).
    pub(crate) fn new(chip: SimChip, mac: Mac, xtal_error_ppm: i32) -> Self {
        let count = RTC_CALI_COUNT
            * u64::try_from(1_000_000 + i64::from(xtal_error_ppm)).unwrap_or(0)
            / 1_000_000;
        let spi = SpiLayout::of(chip);
        let mut written = HashMap::new();
        if chip == SimChip::Esp32 {
            // SPI1's USER2 as the recorded ROM leaves it after its own flash set-up.
            written.insert(spi.base + spi.usr2, ESP32_ROM_SPI_USER2);
        }
        Registers {
            chip,
            mac,
            rtc_cali: u32::try_from(count << 7).unwrap_or(u32::MAX),
            written,
            spi,
            spi_busy_reads: 0,
            watchdog: None,
        }
    }

    /// The value of the ROM chip-detect word.
    fn magic(&self) -> u32 {
        match self.chip {
            SimChip::Esp32 => 0x00F0_1D83,
            SimChip::Esp32s3 => 0x0000_0009,
            SimChip::Esp32c3 => 0x1B31_506F,
        }
    }

    /// Word `n` of the ESP32's eFuse BLOCK0 as read through `EFUSE_BLK0_RDATAn_REG`.
    fn esp32_efuse_word(&self, n: u32) -> u32 {
        let m = self.mac.0;
        match n {
            1 => u32::from_be_bytes([m[2], m[3], m[4], m[5]]),
            2 => (u32::from(mac_crc8(&m)) << 16) | u32::from(u16::from_be_bytes([m[0], m[1]])),
            3 => EFUSE_WORD3,
            4 => EFUSE_WORD4,
            5 => EFUSE_WORD5,
            _ => 0,
        }
    }

    /// The crystal frequency the ROM believes in, from its calibration registers (what it
    /// computes UART dividers with). Exactly 40 MHz unless the simulation says it drifts.
    pub(crate) fn rom_xtal_estimate(&self) -> u32 {
        let cali = u64::from((self.rtc_cali >> 7) & 0x01FF_FFFF);
        let ck8m = u64::from(EFUSE_WORD4 & 0xFF);
        u32::try_from(cali * 15_625 * ck8m / 40).unwrap_or(u32::MAX)
    }

    /// The crystal the board really carries.
    pub(crate) fn xtal(&self) -> u32 {
        XTAL_HZ
    }

    /// Reads the 32 bits at `addr`; an unaligned address reads the bytes from there on, across
    /// two words, as the ROM's load does. `baud` is the UART's current rate (the divider
    /// register follows it).
    pub(crate) fn read(&mut self, addr: u32, baud: u32) -> u32 {
        let shift = addr % 4;
        if shift == 0 {
            return self.read_word(addr, baud);
        }
        let low = u64::from(self.read_word(addr - shift, baud));
        let high = u64::from(self.read_word(addr - shift + 4, baud));
        (((high << 32) | low) >> (8 * shift)) as u32
    }

    fn read_word(&mut self, addr: u32, baud: u32) -> u32 {
        if addr == CHIP_DETECT_MAGIC_REG {
            return self.magic();
        }
        if addr == self.spi.base {
            if self.spi_busy_reads > 0 {
                self.spi_busy_reads -= 1;
                return self.written.get(&addr).copied().unwrap_or(0) | SPI_CMD_USR;
            }
            return self.written.get(&addr).copied().unwrap_or(0) & !SPI_CMD_USR;
        }
        if self.chip == SimChip::Esp32 {
            match addr {
                EFUSE_BLK0_RDATA..=0x3FF5_A018 if addr.is_multiple_of(4) => {
                    return self.esp32_efuse_word((addr - EFUSE_BLK0_RDATA) / 4);
                }
                APB_CTL_DATE => return APB_CTL_DATE_VALUE,
                UART0_CLKDIV => return XTAL_HZ / baud.max(1),
                RTC_CALI_CFG1 => return self.rtc_cali,
                GPIO_STRAP => return STRAP_DOWNLOAD_BOOT,
                _ => {}
            }
        }
        self.written.get(&addr).copied().unwrap_or(0)
    }

    /// Writes the bits of `value` selected by `mask`.
    pub(crate) fn write(&mut self, addr: u32, value: u32, mask: u32) {
        let watchdog = self.chip == SimChip::Esp32
            && matches!(addr, RTC_WDT_CONFIG0 | RTC_WDT_CONFIG1 | RTC_WDT_FEED);
        if watchdog && !self.watchdog_unlocked() {
            // Write-protected: the hardware ignores the write.
            return;
        }
        let old = self.written.get(&addr).copied().unwrap_or(0);
        let new = (old & !mask) | (value & mask);
        self.written.insert(addr, new);
        if addr == self.spi.base && new & SPI_CMD_USR != 0 {
            self.run_spi_command();
        }
        if watchdog && addr == RTC_WDT_CONFIG0 {
            self.arm_watchdog(new);
        }
    }

    fn watchdog_unlocked(&self) -> bool {
        self.written
            .get(&RTC_WDT_WPROTECT)
            .is_none_or(|&key| key == RTC_WDT_WKEY)
    }

    /// Stage 0 of an enabled RTC watchdog that resets something: armed to fire after its
    /// timeout (WDTCONFIG1 cycles of the slow clock). An interrupt-only or disabled watchdog
    /// resets nothing.
    fn arm_watchdog(&mut self, config0: u32) {
        let action = match (config0 >> RTC_WDT_STG0_SHIFT) & 0x7 {
            2 | 3 => WatchdogAction::ResetKeepingStraps,
            4 => WatchdogAction::ResetChip,
            _ => {
                self.watchdog = None;
                return;
            }
        };
        if config0 & RTC_WDT_EN == 0 {
            self.watchdog = None;
            return;
        }
        // After reset WDTCONFIG1 holds 128000 cycles (ESP-IDF's register description).
        let cycles = u64::from(
            self.written
                .get(&RTC_WDT_CONFIG1)
                .copied()
                .unwrap_or(128_000),
        );
        self.watchdog = Some(Watchdog {
            after: std::time::Duration::from_nanos(cycles * 1_000_000_000 / RTC_SLOW_CLOCK_HZ),
            action,
        });
    }

    /// The RTC watchdog armed since the last call, if any.
    pub(crate) fn take_watchdog(&mut self) -> Option<Watchdog> {
        self.watchdog.take()
    }

    /// Stores `bytes` at `addr` (RAM written by MEM_DATA).
    pub(crate) fn write_bytes(&mut self, addr: u32, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = addr.wrapping_add(i as u32);
            let word = at & !3;
            let shift = 8 * (at % 4);
            let old = self.written.get(&word).copied().unwrap_or(0);
            self.written
                .insert(word, (old & !(0xFF << shift)) | (u32::from(byte) << shift));
        }
    }

    /// Executes the user command set up in USR/USR2/ADDR/MISO_DLEN against the flash chip and
    /// leaves its answer in W0.
    fn run_spi_command(&mut self) {
        let reg = |r: &Self, offset: u32| r.written.get(&(r.spi.base + offset)).copied();
        let usr = reg(self, self.spi.usr).unwrap_or(0);
        let command = (reg(self, self.spi.usr2).unwrap_or(0) & 0xFF) as u8;
        let address = reg(self, 0x04).unwrap_or(0) >> 8;
        let answer = match command {
            SPIFLASH_RDID => FLASH_ID,
            SPIFLASH_RDSFDP if address == 0 => SFDP_SIGNATURE,
            SPIFLASH_RDSFDP => u32::MAX,
            // Status registers: idle, no write in progress, nothing protected.
            _ => 0,
        };
        let miso_bits = if usr & SPI_USR_MISO != 0 {
            reg(self, self.spi.miso_dlen).unwrap_or(0) + 1
        } else {
            0
        };
        let mask = match miso_bits {
            0 => 0,
            1..=31 => (1u32 << miso_bits) - 1,
            _ => u32::MAX,
        };
        self.written
            .insert(self.spi.base + self.spi.w0, answer & mask);
        // One poll sees the transaction busy, so a host's wait loop is exercised, not skipped.
        self.spi_busy_reads = 1;
    }

    /// The GET_SECURITY_INFO payload (flags, flash_crypt_cnt, key purposes, chip ID, ECO
    /// version), or `None` for a chip whose ROM lacks the command (the ESP32).
    pub(crate) fn security_info(&self) -> Option<Vec<u8>> {
        let chip_id: u32 = match self.chip {
            SimChip::Esp32 => return None,
            SimChip::Esp32s3 => 9,
            SimChip::Esp32c3 => 5,
        };
        let mut info = vec![0u8; 12];
        info.extend_from_slice(&chip_id.to_le_bytes());
        info.extend_from_slice(&0u32.to_le_bytes());
        Some(info)
    }
}

/// CRC-8 of the factory MAC as stored beside it in eFuse (reflected polynomial 0x8C).
fn mac_crc8(mac: &[u8; 6]) -> u8 {
    let mut crc = 0u8;
    for &byte in mac {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8C
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp32() -> Registers {
        Registers::new(SimChip::Esp32, Mac([0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]), 0)
    }

    #[test]
    fn mac_words_decode_the_way_hosts_decode_them() {
        let mut regs = esp32();
        let word1 = regs.read(EFUSE_BLK0_RDATA + 4, 115_200);
        let word2 = regs.read(EFUSE_BLK0_RDATA + 8, 115_200);
        let joined = (u64::from(word2 & 0xFFFF) << 32) | u64::from(word1);
        assert_eq!(
            &joined.to_be_bytes()[2..],
            &[0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]
        );
    }

    #[test]
    fn uart_divider_implies_a_40_mhz_crystal_at_any_baud() {
        let mut regs = esp32();
        for baud in [115_200u32, 460_800, 921_600] {
            let estimate = baud * (regs.read(UART0_CLKDIV, baud) & 0xFFFFF) / 1_000_000;
            assert!(estimate > 33, "{baud}: {estimate}");
        }
    }

    #[test]
    fn rdid_through_the_user_command_registers() {
        let mut regs = esp32();
        let base = 0x3FF4_2000;
        regs.write(base + 0x1C, (1 << 31) | SPI_USR_MISO, u32::MAX);
        regs.write(base + 0x24, (7 << 28) | u32::from(SPIFLASH_RDID), u32::MAX);
        regs.write(base + 0x2C, 23, u32::MAX);
        regs.write(base + 0x80, 0, u32::MAX);
        regs.write(base, SPI_CMD_USR, u32::MAX);
        assert_ne!(
            regs.read(base, 115_200) & SPI_CMD_USR,
            0,
            "busy on the first poll"
        );
        assert_eq!(regs.read(base, 115_200) & SPI_CMD_USR, 0);
        assert_eq!(regs.read(base + 0x80, 115_200), FLASH_ID);
        assert_eq!((FLASH_ID >> 16) as u8, 0x16, "capacity code of 4 MiB");
    }

    #[test]
    fn unaligned_reads_take_bytes_from_two_words() {
        let mut regs = esp32();
        // The recorded ROM: 0x3FF5A003 reads 0x12345600 on the unit 24:0a:c4:12:34:56.
        assert_eq!(regs.read(EFUSE_BLK0_RDATA + 3, 115_200), 0x1234_5600);
        regs.write_bytes(0x3FFB_0001, &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(regs.read(0x3FFB_0000, 115_200), 0x3322_1100);
        assert_eq!(regs.read(0x3FFB_0001, 115_200), 0x4433_2211);
    }

    #[test]
    fn the_rom_crystal_estimate_follows_the_calibration_registers() {
        let mut exact = esp32();
        assert_eq!(exact.rom_xtal_estimate(), 40_000_000);
        let cali = (exact.read(RTC_CALI_CFG1, 115_200) >> 7) & 0x01FF_FFFF;
        let ck8m = exact.read(EFUSE_BLK0_RDATA + 16, 115_200) & 0xFF;
        assert_eq!(u64::from(cali) * 15_625 * u64::from(ck8m) / 40, 40_000_000);
        let drifted = Registers::new(SimChip::Esp32, Mac([0; 6]), 30_000);
        let ratio = f64::from(drifted.rom_xtal_estimate()) / 41_200_000.0;
        assert!((ratio - 1.0).abs() < 1e-3, "{ratio}");
    }

    #[test]
    fn the_rtc_watchdog_arms_only_when_unlocked_enabled_and_resetting() {
        let mut regs = esp32();
        // esptool's and the station's sequence: unlock, timeout, enable, lock.
        regs.write(RTC_WDT_WPROTECT, RTC_WDT_WKEY, u32::MAX);
        regs.write(RTC_WDT_CONFIG1, 2000, u32::MAX);
        regs.write(
            RTC_WDT_CONFIG0,
            RTC_WDT_EN | (4 << 28) | (7 << 14) | (7 << 11),
            u32::MAX,
        );
        regs.write(RTC_WDT_WPROTECT, 0, u32::MAX);
        let armed = regs.take_watchdog().unwrap();
        assert_eq!(armed.action, WatchdogAction::ResetChip);
        assert_eq!(armed.after.as_micros(), 13_333, "2000 cycles at 150 kHz");
        assert_eq!(regs.take_watchdog(), None, "taken once");
        // Locked: ignored.
        regs.write(RTC_WDT_CONFIG0, RTC_WDT_EN | (4 << 28), u32::MAX);
        assert_eq!(regs.take_watchdog(), None);
        // Unlocked, but an interrupt-only stage resets nothing.
        regs.write(RTC_WDT_WPROTECT, RTC_WDT_WKEY, u32::MAX);
        regs.write(RTC_WDT_CONFIG0, RTC_WDT_EN | (1 << 28), u32::MAX);
        assert_eq!(regs.take_watchdog(), None);
        regs.write(RTC_WDT_CONFIG0, RTC_WDT_EN | (3 << 28), u32::MAX);
        assert_eq!(
            regs.take_watchdog().map(|w| w.action),
            Some(WatchdogAction::ResetKeepingStraps)
        );
    }

    #[test]
    fn unknown_registers_read_zero_and_remember_writes() {
        let mut regs = esp32();
        assert_eq!(regs.read(0x6000_0000, 115_200), 0);
        regs.write(0x6000_0000, 0xABCD, 0xFF);
        assert_eq!(regs.read(0x6000_0000, 115_200), 0xCD);
    }
}
