//! ESP-IDF NVS partition images: the writer that makes the image the station flashes, and the
//! reader behind `station nvs inspect`.
//!
//! An NVS partition is a run of 4096-byte pages. Each page holds a 32-byte header (state,
//! sequence number, format version, CRC), a bitmap of two bits per entry, and 126 entries of
//! 32 bytes. An entry names its namespace by index, its type, how many entries it spans, a blob
//! chunk index, a CRC, a 16-byte key and 8 bytes of data; strings and blob chunks continue in
//! the entries that follow. The format is specified in ESP-IDF's [NVS library documentation]
//! ("Internals"); images for a factory line are normally made with Espressif's
//! [NVS partition generator] (`esp-idf-nvs-partition-gen` on PyPI).
//!
//! [`build`] produces exactly the bytes that generator (version 0.3.0, `generate`, format
//! version 2, no encryption) writes for the same entries; the golden images in `fixtures/nvs/`
//! prove it. That means following the generator's own placement rules, which are stricter
//! than what ESP-IDF itself needs:
//!
//! - entries are written in order from page 0, and a new page starts only when an entry does
//!   not fit the current one. A string must fit on one page *and leave at least one entry
//!   free*: a string that would end on the page's last entry goes to the next page.
//! - a blob is cut into `BLOB_DATA` chunks: each fills what is left of the current page (even
//!   when that is a zero-length chunk in the last free entry), the next starts a new page, and
//!   a `BLOB_IDX` entry follows the last chunk, opening a new page if the chunk left no entry.
//! - a namespace gets an entry in namespace 0 (its name as key, its index as `u8` value) just
//!   before its first entry; indexes count from 1 in order of first appearance.
//! - the last page written is `ACTIVE`, the ones before it `FULL`, the rest erased (`0xFF`);
//!   the last page of the partition is kept free for ESP-IDF's page rotation, so a partition of
//!   `n` pages holds `n - 1` pages of entries.
//!
//! Where the generator misbehaves, this module does the sensible thing instead, and its images
//! differ: entries after a namespace that is named again are filed under that namespace (the
//! generator files them under the newest one); and the generator's Wi-Fi shortcuts (rows named
//! `sta.ssid`, `ap.ssid` and similar make it add hidden entries) are not imitated.
//!
//! The reader, [`parse`], decodes any version 1 or 2 image, in page sequence order, with
//! multi-page blobs put back together. Unlike ESP-IDF, which silently skips an entry with a bad
//! CRC, it reports the first damaged page or entry: an image the station inspects should be
//! exactly what it built.
//!
//! The module is pure: it works on byte slices and never touches a file, port or database.
//!
//! [NVS library documentation]: https://docs.espressif.com/projects/esp-idf/en/stable/esp32/api-reference/storage/nvs_flash.html
//! [NVS partition generator]: https://docs.espressif.com/projects/esp-idf/en/stable/esp32/api-reference/storage/nvs_partition_gen.html

mod error;
mod format;
mod reader;
mod writer;

pub use error::NvsError;
pub use format::PAGE_SIZE;
pub use reader::parse;
pub use writer::{build, build_into, check_fits, required_size};

/// The longest key or namespace name, in bytes (the 16-byte field keeps a NUL).
pub const MAX_KEY_LEN: usize = 15;

/// The longest string, in bytes, not counting the NUL the image adds.
///
/// ESP-IDF allows 4000 bytes including the NUL, but the generator only places a string that
/// leaves one entry of its page free, so 3967 bytes + NUL (124 data entries) is the longest it
/// writes; it fails on anything between that and 4000. Longer strings belong in a blob.
pub const MAX_STRING_LEN: usize = 3967;

/// The largest blob, in bytes: ESP-IDF's limit of 127 chunks of 4000 bytes for one key.
pub const MAX_BLOB_LEN: usize = 508_000;

/// The most namespaces a partition can number (indexes 1 to 254).
pub const MAX_NAMESPACES: usize = 254;

/// The smallest partition ESP-IDF can use for reading and writing: three pages.
pub const MIN_PARTITION_SIZE: usize = 0x3000;

/// A value stored under an NVS key.
///
/// Values are held in clear, secrets included (the device key is one): never log an [`Entry`]
/// or a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `uint8_t`.
    U8(u8),
    /// `int8_t`.
    I8(i8),
    /// `uint16_t`.
    U16(u16),
    /// `int16_t`.
    I16(i16),
    /// `uint32_t`.
    U32(u32),
    /// `int32_t`.
    I32(i32),
    /// `uint64_t`.
    U64(u64),
    /// `int64_t`.
    I64(i64),
    /// A string, stored NUL-terminated on a single page; at most [`MAX_STRING_LEN`] bytes.
    Str(String),
    /// Binary data, split over pages as needed; at most [`MAX_BLOB_LEN`] bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The type's name as the generator's CSV `encoding` column spells it (`u8` ... `i64`,
    /// `string`), with `binary` for blobs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::Str(_) => "string",
            Value::Blob(_) => "binary",
        }
    }
}

/// One key-value pair and the namespace it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The namespace name, 1 to [`MAX_KEY_LEN`] bytes (the station's is `[nvs].namespace`).
    pub namespace: String,
    /// The key, 1 to [`MAX_KEY_LEN`] bytes.
    pub key: String,
    /// The value.
    pub value: Value,
}

impl Entry {
    /// An entry of `value` under `key` in `namespace`.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>, value: Value) -> Self {
        Entry {
            namespace: namespace.into(),
            key: key.into(),
            value,
        }
    }
}
