//! Flash geometry every layer agrees on: `station.toml` validation, the NVS image (one page per
//! sector), the device layer's region checks and the simulated chip's flash.
//!
//! SPI NOR flash on ESP32 modules is erased in 4 KiB sectors, so every region the station writes
//! starts on a sector boundary (ESP-IDF partition tables place partitions the same way).

/// The flash erase unit, in bytes.
pub const SECTOR_SIZE: u32 = 0x1000;

/// The largest flash an ESP32-family module carries (16 MiB): no region the station writes may
/// end beyond it, and no image it reads may be larger.
pub const MAX_FLASH_SIZE: u32 = 16 << 20;

/// Where a region of `len` bytes at `offset` ends, or `None` when it would end beyond
/// [`MAX_FLASH_SIZE`] (including past 4 GiB, which 32-bit arithmetic would wrap).
pub fn region_end(offset: u32, len: u64) -> Option<u32> {
    u64::from(offset)
        .checked_add(len)
        .filter(|end| *end <= u64::from(MAX_FLASH_SIZE))
        .and_then(|end| u32::try_from(end).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_ends_are_checked_not_wrapped() {
        assert_eq!(region_end(0x9000, 0x6000), Some(0xF000));
        assert_eq!(
            region_end(0, u64::from(MAX_FLASH_SIZE)),
            Some(MAX_FLASH_SIZE)
        );
        assert_eq!(region_end(0x1000, u64::from(MAX_FLASH_SIZE)), None);
        assert_eq!(region_end(0xFFFF_F000, 0x6000), None);
        assert_eq!(region_end(0x9000, u64::MAX), None);
    }
}
