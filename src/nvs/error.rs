//! Errors building or reading an NVS image.

/// Errors building an NVS image from entries (input errors) or decoding one (corrupt image).
///
/// Every variant carries a stable code (`station::nvs::...`) and an operator hint;
/// [`NvsError::is_input_error`] tells the two families apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum NvsError {
    /// The partition size is not a multiple of 4096 or is below 0x3000.
    #[error("NVS partition size {size:#x} is not a multiple of 0x1000 of at least 0x3000")]
    #[diagnostic(
        code(station::nvs::bad_size),
        help(
            "Set [nvs].size to the nvs partition's size in the partition table: a multiple of 0x1000 (4096), at least 0x3000."
        )
    )]
    BadSize {
        /// The size asked for, in bytes.
        size: usize,
    },

    /// A key is longer than the 15 bytes NVS stores.
    #[error("key `{key}` in namespace `{namespace}` is {len} bytes; NVS keys hold at most 15")]
    #[diagnostic(
        code(station::nvs::key_too_long),
        help(
            "Shorten the key to 15 bytes or fewer, and read it under the same name in the firmware."
        )
    )]
    KeyTooLong {
        /// The namespace the key is in.
        namespace: String,
        /// The key as given.
        key: String,
        /// Its length in bytes.
        len: usize,
    },

    /// A namespace name is longer than the 15 bytes NVS stores.
    #[error("namespace `{namespace}` is {len} bytes; NVS namespace names hold at most 15")]
    #[diagnostic(
        code(station::nvs::namespace_too_long),
        help(
            "Shorten [nvs].namespace to 15 bytes or fewer, and open the same name in the firmware."
        )
    )]
    NamespaceTooLong {
        /// The namespace name as given.
        namespace: String,
        /// Its length in bytes.
        len: usize,
    },

    /// A key or namespace name is empty or contains a NUL byte, which the device cannot look up.
    #[error("{what} {name:?} is empty or contains a NUL byte")]
    #[diagnostic(
        code(station::nvs::bad_name),
        help("Use 1 to 15 bytes of printable text for NVS keys and namespace names.")
    )]
    BadName {
        /// `key` or `namespace`.
        what: &'static str,
        /// The name as given.
        name: String,
    },

    /// A string is longer than the longest string the generator places on a page.
    #[error(
        "string `{namespace}/{key}` is {len} bytes; an NVS string holds at most {max} bytes plus its NUL"
    )]
    #[diagnostic(
        code(station::nvs::string_too_long),
        help(
            "Store a value this long as a blob (binary) entry or in a file (e.g. a FAT or SPIFFS partition) rather than as an NVS string."
        )
    )]
    StringTooLong {
        /// The namespace of the entry.
        namespace: String,
        /// The key of the entry.
        key: String,
        /// The string's length in bytes, without the NUL.
        len: usize,
        /// The longest string accepted, without the NUL.
        max: usize,
    },

    /// A blob is larger than ESP-IDF accepts for one key.
    #[error("blob `{namespace}/{key}` is {len} bytes; an NVS blob holds at most {max}")]
    #[diagnostic(
        code(station::nvs::blob_too_large),
        help(
            "Split the data over several keys, or keep it in a file system partition instead of NVS."
        )
    )]
    BlobTooLarge {
        /// The namespace of the entry.
        namespace: String,
        /// The key of the entry.
        key: String,
        /// The blob's length in bytes.
        len: usize,
        /// The largest blob accepted.
        max: usize,
    },

    /// The entries use more namespaces than one partition can number.
    #[error("the entries use {count} namespaces; an NVS partition holds at most 254")]
    #[diagnostic(
        code(station::nvs::too_many_namespaces),
        help("Group the entries into at most 254 namespaces.")
    )]
    TooManyNamespaces {
        /// How many distinct namespaces the entries name.
        count: usize,
    },

    /// The entries do not fit the partition.
    #[error(
        "entry `{namespace}/{key}` does not fit the {size:#x}-byte NVS partition: {missing} bytes missing (the entries need {required:#x})"
    )]
    #[diagnostic(
        code(station::nvs::does_not_fit),
        help(
            "Raise [nvs].size, and the nvs partition in the partition table with it, to at least the size the entries need, or store fewer or shorter values."
        )
    )]
    DoesNotFit {
        /// The namespace of the first entry that does not fit.
        namespace: String,
        /// The key of the first entry that does not fit.
        key: String,
        /// The partition size asked for.
        size: usize,
        /// The smallest partition size that holds all the entries.
        required: usize,
        /// `required - size`: how much larger the partition must be.
        missing: usize,
    },

    /// The image is not a whole number of pages.
    #[error("the NVS image is {len} bytes, not a whole number of 4096-byte pages: it is truncated")]
    #[diagnostic(
        code(station::nvs::truncated),
        help(
            "Read the whole partition: [nvs].size bytes from [nvs].offset, a multiple of 4096 bytes."
        )
    )]
    Truncated {
        /// The image's length in bytes.
        len: usize,
    },

    /// Nothing in the image looks like an NVS page.
    #[error("not an NVS image: {reason}")]
    #[diagnostic(
        code(station::nvs::not_an_image),
        help(
            "Check that the image was read from the nvs partition's offset and size ([nvs].offset, [nvs].size)."
        )
    )]
    NotAnImage {
        /// What was found instead.
        reason: String,
    },

    /// The image is smaller than the smallest partition ESP-IDF can use.
    #[error(
        "the NVS image is {len:#x} bytes, below ESP-IDF's minimum partition of 3 pages (0x3000)"
    )]
    #[diagnostic(
        code(station::nvs::too_small),
        help(
            "ESP-IDF refuses an NVS partition under 3 pages; read the whole partition ([nvs].size bytes from [nvs].offset), or fix the partition table."
        )
    )]
    TooSmall {
        /// The image's length in bytes.
        len: usize,
    },

    /// Every byte is 0xFF: an erased partition, with nothing in it.
    #[error("the NVS image is erased (all {len:#x} bytes are 0xFF): it holds no entries")]
    #[diagnostic(
        code(station::nvs::erased),
        help(
            "Nothing was written to this partition, or the dump was read from the wrong offset: check [nvs].offset and provision the unit again."
        )
    )]
    Erased {
        /// The image's length in bytes.
        len: usize,
    },

    /// The same key is stored twice in one namespace: the device reads only one of them.
    #[error(
        "key `{key}` is stored twice in namespace `{namespace}` (pages {first_page} and {page})"
    )]
    #[diagnostic(
        code(station::nvs::duplicate_key),
        help(
            "A key must be unique in its namespace; which copy the firmware reads is undefined. Rebuild the image with `station nvs build` and flash it again."
        )
    )]
    DuplicateKey {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// The page holding the first copy.
        first_page: usize,
        /// The page holding the second.
        page: usize,
    },

    /// A page header is malformed: unknown state or version, or data on a page marked empty.
    #[error("NVS page {page} (offset {offset:#x}): {problem}")]
    #[diagnostic(
        code(station::nvs::bad_page),
        help(
            "The partition is damaged or was written by something other than NVS; rebuild the image and flash it again."
        )
    )]
    BadPage {
        /// The page's position in the image, from 0.
        page: usize,
        /// The page's byte offset in the image.
        offset: usize,
        /// What is wrong with it.
        problem: String,
    },

    /// A page header's CRC does not match its contents.
    #[error(
        "NVS page {page} (offset {offset:#x}): header CRC is {stored:#010x}, contents give {computed:#010x}"
    )]
    #[diagnostic(
        code(station::nvs::bad_page_crc),
        help(
            "The page header is corrupt (a bad flash write or a damaged chip); rebuild the image and flash it again."
        )
    )]
    BadPageCrc {
        /// The page's position in the image, from 0.
        page: usize,
        /// The page's byte offset in the image.
        offset: usize,
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC of the header's contents.
        computed: u32,
    },

    /// An entry's header or data CRC does not match its contents.
    #[error(
        "NVS page {page} entry {entry} (offset {offset:#x}, key `{key}`): {part} CRC is {stored:#010x}, contents give {computed:#010x}"
    )]
    #[diagnostic(
        code(station::nvs::bad_entry_crc),
        help(
            "The entry is corrupt (ESP-IDF would skip it and the device would not find the key); rebuild the image and flash it again."
        )
    )]
    BadEntryCrc {
        /// The page's position in the image, from 0.
        page: usize,
        /// The entry's slot in the page, 0 to 125.
        entry: usize,
        /// The entry's byte offset in the image.
        offset: usize,
        /// The key as stored (possibly itself damaged).
        key: String,
        /// `header` or `data`.
        part: &'static str,
        /// The CRC stored in the entry.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },

    /// An entry has a valid CRC but makes no sense: unknown type, impossible span, a blob with
    /// missing chunks, an unknown namespace.
    #[error("NVS page {page} entry {entry} (offset {offset:#x}): {problem}")]
    #[diagnostic(
        code(station::nvs::bad_entry),
        help(
            "The image is damaged or was written by another tool; rebuild it and flash it again."
        )
    )]
    BadEntry {
        /// The page's position in the image, from 0.
        page: usize,
        /// The entry's slot in the page, 0 to 125.
        entry: usize,
        /// The entry's byte offset in the image.
        offset: usize,
        /// What is wrong with it.
        problem: String,
    },
}

impl NvsError {
    /// True when the error comes from the input (a value that does not fit, a bad key) rather
    /// than from a corrupt image; the CLI maps it to exit code 2.
    pub fn is_input_error(&self) -> bool {
        match self {
            NvsError::BadSize { .. }
            | NvsError::KeyTooLong { .. }
            | NvsError::NamespaceTooLong { .. }
            | NvsError::BadName { .. }
            | NvsError::StringTooLong { .. }
            | NvsError::BlobTooLarge { .. }
            | NvsError::TooManyNamespaces { .. }
            | NvsError::DoesNotFit { .. } => true,
            NvsError::Truncated { .. }
            | NvsError::TooSmall { .. }
            | NvsError::Erased { .. }
            | NvsError::DuplicateKey { .. }
            | NvsError::NotAnImage { .. }
            | NvsError::BadPage { .. }
            | NvsError::BadPageCrc { .. }
            | NvsError::BadEntryCrc { .. }
            | NvsError::BadEntry { .. } => false,
        }
    }

    pub(crate) fn bad_entry(page: usize, entry: usize, problem: impl Into<String>) -> Self {
        NvsError::BadEntry {
            page,
            entry,
            offset: super::format::entry_offset(page, entry),
            problem: problem.into(),
        }
    }

    pub(crate) fn bad_page(page: usize, problem: impl Into<String>) -> Self {
        NvsError::BadPage {
            page,
            offset: page * super::format::PAGE_SIZE,
            problem: problem.into(),
        }
    }
}
