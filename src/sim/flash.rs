//! The simulated SPI NOR flash: 4 MiB, erased to `0xFF` in 4 KiB sectors, programmed by clearing
//! bits (writing `1` over `0` does nothing, as on the real part), and its snapshot on disk.

use std::io::Write;
use std::path::Path;

use md5::{Digest, Md5};

/// The simulated flash size: 4 MiB, what the JEDEC ID in [`super::chip::FLASH_ID`] announces.
pub(crate) const FLASH_SIZE: usize = 4 * 1024 * 1024;
/// The erase unit.
pub(crate) use crate::flash::SECTOR_SIZE;

/// A flash access outside the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfRange;

/// The contents of the flash chip.
#[derive(Debug, Clone)]
pub(crate) struct Flash {
    bytes: Vec<u8>,
}

impl Flash {
    /// A fully erased chip.
    pub(crate) fn new() -> Self {
        Flash {
            bytes: vec![0xFF; FLASH_SIZE],
        }
    }

    /// Every byte of the chip.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, offset: u32, len: u32) -> Result<std::ops::Range<usize>, OutOfRange> {
        let start = offset as usize;
        let end = start.checked_add(len as usize).ok_or(OutOfRange)?;
        if end > self.bytes.len() {
            return Err(OutOfRange);
        }
        Ok(start..end)
    }

    /// Erases every sector that `[offset, offset + len)` touches.
    pub(crate) fn erase(&mut self, offset: u32, len: u32) -> Result<(), OutOfRange> {
        if len == 0 {
            return Ok(());
        }
        let range = self.range(offset, len)?;
        let sector = SECTOR_SIZE as usize;
        let start = range.start / sector * sector;
        let end = range.end.div_ceil(sector) * sector;
        self.bytes[start..end.min(FLASH_SIZE)].fill(0xFF);
        Ok(())
    }

    /// Programs `data` at `offset`: NOR flash can only clear bits, so the result is the AND of
    /// the old and new contents. A writer that forgets to erase gets what the hardware gives.
    pub(crate) fn program(&mut self, offset: u32, data: &[u8]) -> Result<(), OutOfRange> {
        let len = u32::try_from(data.len()).map_err(|_| OutOfRange)?;
        let range = self.range(offset, len)?;
        for (cell, byte) in self.bytes[range].iter_mut().zip(data) {
            *cell &= byte;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub(crate) fn read(&self, offset: u32, len: u32) -> Result<&[u8], OutOfRange> {
        let range = self.range(offset, len)?;
        Ok(&self.bytes[range])
    }

    /// The MD5 digest of `len` bytes at `offset`, as SPI_FLASH_MD5 computes it.
    pub(crate) fn md5(&self, offset: u32, len: u32) -> Result<[u8; 16], OutOfRange> {
        let data = self.read(offset, len)?;
        Ok(Md5::digest(data).into())
    }
}

/// Writes a flash image to `path` atomically (a reader sees the old or the new image, never
/// half) and readable by its owner only: it holds the device's key. No fsync: the image is a
/// view for tests and operators, not data that must survive a crash.
pub(crate) fn write_snapshot(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = crate::file::PrivateFile::create(path)?;
    file.write_all(bytes)?;
    file.commit_unsynced()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_clears_bits_and_erase_restores_whole_sectors() {
        let mut flash = Flash::new();
        flash.program(0x9000, &[0x0F, 0xF0]).unwrap();
        flash.program(0x9000, &[0xF3, 0xFF]).unwrap();
        assert_eq!(flash.read(0x9000, 2).unwrap(), &[0x03, 0xF0]);
        flash.erase(0x9001, 1).unwrap();
        assert!(
            flash
                .read(0x9000, SECTOR_SIZE)
                .unwrap()
                .iter()
                .all(|&b| b == 0xFF)
        );
    }

    #[test]
    fn accesses_beyond_the_chip_fail() {
        let mut flash = Flash::new();
        let end = FLASH_SIZE as u32;
        assert_eq!(flash.program(end - 1, &[0, 0]), Err(OutOfRange));
        assert_eq!(flash.erase(end, 1), Err(OutOfRange));
        assert!(flash.md5(end - 16, 16).is_ok());
    }

    #[test]
    fn snapshot_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        write_snapshot(&path, b"old").unwrap();
        write_snapshot(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
