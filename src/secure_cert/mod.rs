//! Espressif's `esp_secure_cert` partition in its TLV format: the writer that makes the image
//! the station flashes for an X.509 unit, and the reader behind inspecting one.
//!
//! `esp_secure_cert_mgr`, the ESP-IDF component firmware uses to read its PKI credentials,
//! looks for a partition named `esp_secure_cert` (type `0x3F`, usually 8 KiB) holding a run of
//! TLV entries from offset 0 ([format description], [reader]). Each entry is:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `0xBA5EBA11`, little-endian |
//! | 1 | flags (bit 7: data encrypted with the HMAC peripheral; bit 6: ECDSA key derived by HMAC; bit 3: key in the ECDSA peripheral) |
//! | 3 | reserved, zero |
//! | 1 | type (0 CA certificate, 1 device certificate, 2 private key, ..., 9 integrity) |
//! | 1 | subtype (several entries of one type: 0, 1, ...) |
//! | 2 | data length, little-endian |
//! | n | data |
//! | 0-15 | zero padding to a multiple of 16 |
//! | 4 | CRC-32 (zlib polynomial, seeded with `0xFFFFFFFF`) of header, data and padding |
//!
//! The device walks entries until a header without the magic (erased flash reads `0xFF`).
//! Certificates and keys are stored as PEM text with a terminating NUL.
//!
//! [`device_image`] writes exactly what Espressif's `esp-secure-cert-tool` (PyPI, version
//! 2.6.1, `configure_esp_secure_cert.py --secure_cert_type cust_flash_tlv`, no DS peripheral,
//! no encryption) writes for the same certificate, key and chain; the golden images in
//! `fixtures/secure_cert/` prove it. Following the tool, entries come in this order: the CA
//! certificates (subtype 0 the CA that signed the device certificate, 1, 2, ... the chain
//! above it), the device certificate, the private key (flags 0: plaintext), and finally an
//! integrity entry (type 9) holding the SHA-256 of everything before it. The image is only as
//! long as its entries; [`padded`] fills it to the partition's size with `0xFF`, which the
//! station flashes so that no entry of an earlier, longer image survives behind the new one.
//!
//! [`parse`] reads an image back, checking every CRC and the integrity entry; private-key
//! entries come back as [`SecretData`], which prints redacted.
//!
//! The module is pure: it works on byte slices and never touches a file, port or database.
//!
//! [format description]: https://github.com/espressif/esp_secure_cert_mgr/blob/main/docs/format.md
//! [reader]: https://github.com/espressif/esp_secure_cert_mgr/blob/main/srcs/esp_secure_cert_tlv_read.c

mod error;
mod reader;
mod writer;

pub use error::SecureCertError;
pub use reader::{Integrity, ParsedTlv, Partition, SecretData, TlvData, parse};
pub use writer::{Tlv, build, device_image, padded};

/// The magic that opens every TLV header.
pub const TLV_MAGIC: u32 = 0xBA5E_BA11;

/// The usual size of the `esp_secure_cert` partition, and the largest image the reference tool
/// writes (it refuses more).
pub const PARTITION_SIZE: usize = 0x2000;

/// Header bytes before an entry's data.
pub const HEADER_LEN: usize = 12;

/// CRC bytes after an entry's padded data.
pub const FOOTER_LEN: usize = 4;

/// Entries' data is padded to a multiple of this (the flash-encryption write alignment).
pub const ALIGNMENT: usize = 16;

/// A TLV entry's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TlvType(pub u8);

impl TlvType {
    /// A CA certificate (PEM + NUL); subtype 0 is the one `esp_secure_cert_get_ca_cert` returns.
    pub const CA_CERT: TlvType = TlvType(0);
    /// The device certificate (PEM + NUL).
    pub const DEV_CERT: TlvType = TlvType(1);
    /// The device's private key (PEM + NUL, or empty when a peripheral holds it).
    pub const PRIV_KEY: TlvType = TlvType(2);
    /// The SHA-256 of all entries before it.
    pub const INTEGRITY: TlvType = TlvType(9);

    /// The name `esp_secure_cert_mgr` gives the type.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "CA_CERT",
            1 => "DEV_CERT",
            2 => "PRIV_KEY",
            3 => "DS_DATA",
            4 => "DS_CONTEXT",
            5 => "ECDSA_KEY_SALT",
            6 => "SEC_CFG",
            7 => "TEE_SEC_STORAGE_KEY",
            8 => "SIGNATURE_BLOCK",
            9 => "INTEGRITY",
            51 => "USER_DATA_1",
            52 => "USER_DATA_2",
            53 => "USER_DATA_3",
            54 => "USER_DATA_4",
            55 => "USER_DATA_5",
            _ => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for TlvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// The zero padding after `data_len` bytes of data.
pub(crate) fn padding(data_len: usize) -> usize {
    (ALIGNMENT - data_len % ALIGNMENT) % ALIGNMENT
}

/// The CRC the footer holds: CRC-32 continued from `0xFFFFFFFF` (zlib's `crc32(data,
/// 0xffffffff)`, ESP-IDF's `esp_crc32_le(UINT32_MAX, ...)`).
pub(crate) fn crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    hasher.update(bytes);
    hasher.finalize()
}

#[cfg(test)]
mod tests;
