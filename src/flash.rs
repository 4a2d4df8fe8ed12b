//! Flash geometry every layer agrees on: `station.toml` validation, the NVS image (one page per
//! sector), the device layer's region checks and the simulated chip's flash.
//!
//! SPI NOR flash on ESP32 modules is erased in 4 KiB sectors, so every region the station writes
//! starts on a sector boundary (ESP-IDF partition tables place partitions the same way).

/// The flash erase unit, in bytes.
pub const SECTOR_SIZE: u32 = 0x1000;
