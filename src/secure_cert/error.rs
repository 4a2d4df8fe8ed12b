//! Errors building or reading an `esp_secure_cert` image.

/// Errors building an `esp_secure_cert` image (input errors) or decoding one (a damaged or
/// foreign image). Every variant carries a stable code (`station::secure_cert::...`) and an
/// operator hint; no variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SecureCertError {
    /// The entries need more than the partition holds.
    #[error("the esp_secure_cert image needs {len} bytes; the partition holds {max}")]
    #[diagnostic(
        code(station::secure_cert::does_not_fit),
        help(
            "Shorten the chain (the signing CA alone is often enough: DPS holds the root), use ecdsa-p256 device keys, or store the credentials in NVS instead."
        )
    )]
    DoesNotFit {
        /// Bytes the entries need.
        len: usize,
        /// Bytes available.
        max: usize,
    },

    /// One entry's data is longer than its 16-bit length field.
    #[error("the {tlv} entry holds {len} bytes; an entry holds at most 65535")]
    #[diagnostic(
        code(station::secure_cert::entry_too_long),
        help("Split the data over several subtypes of the entry.")
    )]
    EntryTooLong {
        /// The entry's type.
        tlv: String,
        /// Its data length.
        len: usize,
    },

    /// A certificate or key given to the writer is not one PEM block of the right kind.
    #[error("{what} for the esp_secure_cert image: {problem}")]
    #[diagnostic(
        code(station::secure_cert::bad_pem),
        help(
            "Give one PEM certificate per CA entry, one for the device, and the device key in OpenSSL's traditional form (`EC PRIVATE KEY` or `RSA PRIVATE KEY`), as Espressif's tool stores it."
        )
    )]
    BadPem {
        /// Which input (`device certificate`, `CA certificate 2`, `private key`).
        what: String,
        /// What is wrong with it (never key material).
        problem: String,
    },

    /// The image does not start with a TLV entry.
    #[error("not an esp_secure_cert TLV image: {reason}")]
    #[diagnostic(
        code(station::secure_cert::not_an_image),
        help(
            "Read the esp_secure_cert partition from its offset in the partition table (often 0xD000), or check that it uses the TLV format (cust_flash_tlv), not the legacy NVS one."
        )
    )]
    NotAnImage {
        /// What was found instead.
        reason: String,
    },

    /// An entry runs past the end of the image.
    #[error("the {tlv} entry at offset {offset:#x} runs past the end of the {len}-byte image")]
    #[diagnostic(
        code(station::secure_cert::truncated),
        help("Read the whole partition (usually 0x2000 bytes).")
    )]
    Truncated {
        /// The entry's type.
        tlv: String,
        /// Its offset.
        offset: usize,
        /// The image's length.
        len: usize,
    },

    /// An entry's CRC does not match its contents.
    #[error(
        "the {tlv} entry at offset {offset:#x} has CRC {stored:#010x}, its contents give {computed:#010x}"
    )]
    #[diagnostic(
        code(station::secure_cert::bad_crc),
        help(
            "The entry is damaged and the device will not read it; build the image again and flash it."
        )
    )]
    BadCrc {
        /// The entry's type.
        tlv: String,
        /// Its offset.
        offset: usize,
        /// The CRC in the footer.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },

    /// The integrity entry's SHA-256 does not match the entries before it.
    #[error(
        "the integrity entry at offset {offset:#x} holds SHA-256 {stored}, the entries before it hash to {computed}"
    )]
    #[diagnostic(
        code(station::secure_cert::bad_integrity),
        help("An entry was changed after the image was made; build the image again and flash it.")
    )]
    BadIntegrity {
        /// The integrity entry's offset.
        offset: usize,
        /// The hash it holds (hex).
        stored: String,
        /// The hash of the bytes before it (hex).
        computed: String,
    },
}

impl SecureCertError {
    /// True when the error comes from the input given to the writer rather than from a
    /// damaged image; the CLI maps it to exit code 2.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            SecureCertError::DoesNotFit { .. }
                | SecureCertError::EntryTooLong { .. }
                | SecureCertError::BadPem { .. }
        )
    }
}
