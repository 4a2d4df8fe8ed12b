//! The on-flash layout shared by the writer and the reader: page and entry geometry, state and
//! type codes, and the CRC-32 that guards page headers, entry headers and entry data.

/// Bytes in a page: one flash sector.
pub const PAGE_SIZE: usize = crate::flash::SECTOR_SIZE as usize;
/// Entries (32-byte slots) in a page after its 32-byte header and 32-byte state bitmap.
pub const ENTRIES_PER_PAGE: usize = 126;
/// Bytes in an entry.
pub const ENTRY_SIZE: usize = 32;
/// Where the entry state bitmap starts in a page.
pub const BITMAP_OFFSET: usize = 32;
/// Where entry 0 starts in a page.
pub const FIRST_ENTRY_OFFSET: usize = 64;

/// Page state of an erased page (no header yet).
pub const PAGE_UNINITIALIZED: u32 = 0xFFFF_FFFF;
/// Page state of the page currently written to.
pub const PAGE_ACTIVE: u32 = 0xFFFF_FFFE;
/// Page state of a page that takes no more entries.
pub const PAGE_FULL: u32 = 0xFFFF_FFFC;
/// Page state of a page whose entries are being moved elsewhere before it is erased.
pub const PAGE_FREEING: u32 = 0xFFFF_FFF8;

/// Header version byte of format version 2 (multi-page blobs), what the generator writes.
pub const VERSION_2: u8 = 0xFE;
/// Header version byte of format version 1 (single-page blobs), still readable.
pub const VERSION_1: u8 = 0xFF;

/// The chunk index of every entry that is not a blob data chunk.
pub const CHUNK_ANY: u8 = 0xFF;
/// Namespace index 0 holds the namespace names themselves.
pub const NAMESPACE_INDEX: u8 = 0;

/// The two-bit bitmap state of an entry that holds (part of) an item. An empty entry is 0b11,
/// an erased one 0b00.
pub const ENTRY_WRITTEN: u8 = 0b10;

/// Item type codes (byte 1 of an entry header).
pub mod item_type {
    /// `u8`, also the type of namespace entries.
    pub const U8: u8 = 0x01;
    /// `i8`.
    pub const I8: u8 = 0x11;
    /// `u16`.
    pub const U16: u8 = 0x02;
    /// `i16`.
    pub const I16: u8 = 0x12;
    /// `u32`.
    pub const U32: u8 = 0x04;
    /// `i32`.
    pub const I32: u8 = 0x14;
    /// `u64`.
    pub const U64: u8 = 0x08;
    /// `i64`.
    pub const I64: u8 = 0x18;
    /// NUL-terminated string, kept on one page.
    pub const STR: u8 = 0x21;
    /// Format version 1 blob, kept on one page.
    pub const BLOB: u8 = 0x41;
    /// One chunk of a format version 2 blob.
    pub const BLOB_DATA: u8 = 0x42;
    /// The index entry that ties the chunks of a version 2 blob together.
    pub const BLOB_IDX: u8 = 0x48;
}

/// Byte offset of entry `slot` of page `page` in the image.
pub fn entry_offset(page: usize, slot: usize) -> usize {
    page * PAGE_SIZE + FIRST_ENTRY_OFFSET + slot * ENTRY_SIZE
}

/// Entries needed to hold `len` bytes of variable-length data.
pub fn data_entries(len: usize) -> usize {
    len.div_ceil(ENTRY_SIZE)
}

/// ESP-IDF's CRC-32 over `parts` concatenated.
///
/// ESP-IDF calls `esp_rom_crc32_le(0xffffffff, data, len)`: the reflected IEEE polynomial with
/// the *running* value seeded with `0xFFFF_FFFF`. Since the running value is inverted on the way
/// in and out, that is a CRC register starting at 0 with a final XOR of `0xFFFF_FFFF`, which
/// differs from the usual CRC-32 of the same bytes (register starting at `0xFFFF_FFFF`).
/// `crc32fast` takes the running value the same way, so seeding it with `0xFFFF_FFFF` matches.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// The CRC of an entry header: every byte but the CRC field itself (bytes 4..8).
pub fn entry_header_crc(entry: &[u8]) -> u32 {
    crc32(&[&entry[0..4], &entry[8..32]])
}

/// The CRC of a page header: sequence number, version and the unused bytes (4..28), so that
/// changing the state (bytes 0..4) leaves it valid.
pub fn page_header_crc(page: &[u8]) -> u32 {
    crc32(&[&page[4..28]])
}

/// Reads a little-endian `u32` at `at`.
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Reads a little-endian `u16` at `at`.
pub fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The two-bit state of entry `slot` in a page's bitmap.
pub fn entry_state(page: &[u8], slot: usize) -> u8 {
    (page[BITMAP_OFFSET + slot / 4] >> ((slot % 4) * 2)) & 0b11
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_esp_idf_not_plain_crc32() {
        // Bytes 4..28 of a generator page header: sequence number 0, version 2, 19 x 0xFF. The
        // generator stores 0xB9BA2D84 for them (fixtures/nvs/dps.bin, offset 0x1C).
        let mut header = vec![0u8, 0, 0, 0, VERSION_2];
        header.extend([0xFF; 19]);
        assert_eq!(crc32(&[&header]), 0xB9BA_2D84);
        assert_ne!(crc32fast::hash(&header), 0xB9BA_2D84);
        // The empty input leaves the seed unchanged, as zlib.crc32(b"", 0xFFFFFFFF) does.
        assert_eq!(crc32(&[]), 0xFFFF_FFFF);
        // Splitting the input does not change the result.
        assert_eq!(crc32(&[&header[..3], &header[3..]]), 0xB9BA_2D84);
        // The usual check string: 0xCBF43926 as plain CRC-32, 0xD202D277 as ESP-IDF computes it
        // (Python: zlib.crc32(b"123456789", 0xFFFFFFFF)).
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(&[b"123456789"]), 0xD202_D277);
    }

    #[test]
    fn data_entries_round_up_to_whole_entries() {
        assert_eq!(data_entries(0), 0);
        assert_eq!(data_entries(1), 1);
        assert_eq!(data_entries(32), 1);
        assert_eq!(data_entries(33), 2);
        assert_eq!(data_entries(4000), 125);
    }

    #[test]
    fn entry_offsets_skip_header_and_bitmap() {
        assert_eq!(entry_offset(0, 0), 0x40);
        assert_eq!(entry_offset(0, 125), 0xFE0);
        assert_eq!(entry_offset(2, 1), 0x2060);
    }
}
