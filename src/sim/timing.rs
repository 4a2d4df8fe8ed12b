//! How long the simulated hardware takes: the USB-serial bridge between host and chip, and the
//! SPI NOR flash behind the chip.
//!
//! The flash figures are typical datasheet values for 4 MiB SPI NOR parts (e.g. Winbond W25Q32JV,
//! GigaDevice GD25Q32: sector erase 45 ms typical for 4 KiB, 64 KiB block erase 150 ms, page
//! program 0.7 ms for 256 bytes). The serving thread charges them where the loader spends them:
//! the ROM erases the whole region before it answers FLASH_BEGIN and programs each block before it
//! answers it; the flasher stub answers a data block first and erases and programs while the
//! next one arrives (see [`super::loader`]).

use std::time::Duration;

/// Bytes in an erase sector.
pub(crate) const SECTOR: u32 = 4096;
/// Bytes in an erase block.
pub(crate) const BLOCK: u32 = 64 * 1024;
/// Bytes in a program page.
pub(crate) const PAGE: u32 = 256;

/// Time figures of the simulated hardware. [`SimTiming::default`] is the realistic model;
/// [`SimTiming::instant`] charges nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTiming {
    /// How long what the chip sends takes to reach the host after its last byte left the UART:
    /// the USB-serial bridge's latency timer, once per reply burst. CP210x and CH34x bridges
    /// take about 1 ms; FTDI parts default to 16 ms.
    pub usb_latency: Duration,
    /// Erasing one 4 KiB sector.
    pub sector_erase: Duration,
    /// Erasing one 64 KiB block (used when an erase covers a whole aligned block).
    pub block_erase: Duration,
    /// Programming one 256-byte page (or the part of one that a write touches).
    pub page_program: Duration,
    /// How fast SPI_FLASH_MD5 reads and hashes flash, in bytes per second.
    pub md5_bytes_per_second: u64,
}

impl Default for SimTiming {
    fn default() -> Self {
        SimTiming {
            usb_latency: Duration::from_millis(1),
            sector_erase: Duration::from_millis(45),
            block_erase: Duration::from_millis(150),
            page_program: Duration::from_micros(700),
            md5_bytes_per_second: 4 * 1024 * 1024,
        }
    }
}

impl SimTiming {
    /// Nothing takes any time.
    pub fn instant() -> Self {
        SimTiming {
            usb_latency: Duration::ZERO,
            sector_erase: Duration::ZERO,
            block_erase: Duration::ZERO,
            page_program: Duration::ZERO,
            md5_bytes_per_second: 0,
        }
    }

    /// Erasing every sector that `[offset, offset + len)` touches, as the ROM's erase routine
    /// and the stub do it: sectors up to a 64 KiB boundary, whole blocks while a block or more
    /// remains, then sectors.
    pub(crate) fn erase(&self, offset: u32, len: u32) -> Duration {
        if len == 0 {
            return Duration::ZERO;
        }
        let mut at = offset / SECTOR * SECTOR;
        let end = offset
            .saturating_add(len)
            .div_ceil(SECTOR)
            .saturating_mul(SECTOR);
        let mut total = Duration::ZERO;
        while at < end {
            if at.is_multiple_of(BLOCK) && end - at >= BLOCK {
                total += self.block_erase;
                at += BLOCK;
            } else {
                total += self.sector_erase;
                at += SECTOR;
            }
        }
        total
    }

    /// Programming `len` bytes at `offset`: one page program per page touched.
    pub(crate) fn program(&self, offset: u32, len: usize) -> Duration {
        if len == 0 {
            return Duration::ZERO;
        }
        let first = offset / PAGE;
        let last = (u64::from(offset) + len as u64 - 1) / u64::from(PAGE);
        let pages = u32::try_from(last - u64::from(first) + 1).unwrap_or(u32::MAX);
        self.page_program * pages
    }

    /// Reading and hashing `len` bytes.
    pub(crate) fn md5(&self, len: u32) -> Duration {
        if self.md5_bytes_per_second == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::from(len) * 1_000_000_000 / self.md5_bytes_per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erase_uses_blocks_only_where_a_whole_aligned_block_fits() {
        let t = SimTiming::default();
        // The 24 KiB NVS partition at 0x9000: six sectors.
        assert_eq!(t.erase(0x9000, 0x6000), Duration::from_millis(6 * 45));
        // A partial sector still costs a whole one.
        assert_eq!(t.erase(0xC000, 0x1800), Duration::from_millis(2 * 45));
        // 0xF000..0x21000: one sector, one block, one sector.
        assert_eq!(
            t.erase(0xF000, 0x12000),
            Duration::from_millis(45 + 150 + 45)
        );
        assert_eq!(t.erase(0x9000, 0), Duration::ZERO);
    }

    #[test]
    fn program_counts_the_pages_a_write_touches() {
        let t = SimTiming::default();
        assert_eq!(t.program(0x9000, 0x400), Duration::from_micros(4 * 700));
        assert_eq!(t.program(0x90F0, 0x20), Duration::from_micros(2 * 700));
        assert_eq!(t.program(0x9000, 1), Duration::from_micros(700));
        assert_eq!(t.program(0x9000, 0), Duration::ZERO);
    }

    #[test]
    fn instant_charges_nothing() {
        let t = SimTiming::instant();
        assert_eq!(t.erase(0, 0x40_0000), Duration::ZERO);
        assert_eq!(t.program(0, 0x1000), Duration::ZERO);
        assert_eq!(t.md5(0x6000), Duration::ZERO);
    }
}
