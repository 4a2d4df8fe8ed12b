//! Reading images: pages in sequence order, entries checked against their CRCs, namespaces
//! resolved and multi-page blobs put back together.

use super::format::{
    CHUNK_ANY, ENTRIES_PER_PAGE, ENTRY_SIZE, ENTRY_WRITTEN, FIRST_ENTRY_OFFSET, NAMESPACE_INDEX,
    PAGE_ACTIVE, PAGE_FREEING, PAGE_FULL, PAGE_SIZE, PAGE_UNINITIALIZED, VERSION_1, VERSION_2,
    crc32, data_entries, entry_header_crc, entry_offset, entry_state, item_type, page_header_crc,
    read_u16, read_u32,
};
use super::{Entry, MAX_BLOB_LEN, MIN_PARTITION_SIZE, NvsError, Value};

/// Decodes an NVS image: every written entry, in page sequence order and entry order, with the
/// chunks of each multi-page blob joined into one [`Value::Blob`] at the position of its index
/// entry. Namespace entries are not returned; each entry carries its namespace's name.
///
/// Erased entries are skipped, as ESP-IDF skips them. What the station would not have built is
/// an error: an image under 3 pages (ESP-IDF's minimum), an erased image (all `0xFF`: nothing
/// was written), a key stored twice in a namespace. So is anything damaged, naming the page and
/// entry: a bad page or entry CRC, an unknown page state or item type, a blob with chunks
/// missing, an entry in a namespace that is never defined. See [`NvsError::is_input_error`]:
/// all of these return `false`.
///
/// Time and memory are linear in the image's size whatever its bytes say: no length read from
/// the image is trusted before it is checked against what the image holds.
pub fn parse(image: &[u8]) -> Result<Vec<Entry>, NvsError> {
    if image.is_empty() {
        return Err(NvsError::NotAnImage {
            reason: "the image is empty".to_owned(),
        });
    }
    if !image.len().is_multiple_of(PAGE_SIZE) {
        return Err(NvsError::Truncated { len: image.len() });
    }
    if image.len() < MIN_PARTITION_SIZE {
        return Err(NvsError::TooSmall { len: image.len() });
    }
    let pages: Vec<&[u8]> = image.chunks_exact(PAGE_SIZE).collect();
    if !pages.iter().any(|page| looks_like_a_page(page)) {
        if image.iter().all(|&b| b == 0xFF) {
            return Err(NvsError::Erased { len: image.len() });
        }
        return Err(NvsError::NotAnImage {
            reason: format!(
                "none of its {} pages starts with an NVS page header",
                pages.len()
            ),
        });
    }

    let mut in_use = Vec::new();
    for (number, page) in pages.iter().enumerate() {
        let state = read_u32(page, 0);
        match state {
            PAGE_UNINITIALIZED => {
                if page.iter().any(|&b| b != 0xFF) {
                    return Err(NvsError::bad_page(
                        number,
                        "the page is marked empty but holds data",
                    ));
                }
            }
            PAGE_ACTIVE | PAGE_FULL | PAGE_FREEING => {
                let version = page[8];
                if version != VERSION_2 && version != VERSION_1 {
                    return Err(NvsError::bad_page(
                        number,
                        format!("unknown format version byte {version:#04x}"),
                    ));
                }
                let stored = read_u32(page, 28);
                let computed = page_header_crc(page);
                if stored != computed {
                    return Err(NvsError::BadPageCrc {
                        page: number,
                        offset: number * PAGE_SIZE,
                        stored,
                        computed,
                    });
                }
                in_use.push((read_u32(page, 4), number));
            }
            _ => {
                return Err(NvsError::bad_page(
                    number,
                    format!("page state {state:#010x} is neither empty, active, full nor freeing"),
                ));
            }
        }
    }
    // ESP-IDF orders pages by sequence number, not by position.
    in_use.sort_by_key(|&(sequence, number)| (sequence, number));

    let mut items = Vec::new();
    for &(_, number) in &in_use {
        read_page(pages[number], number, &mut items)?;
    }
    assemble(items)
}

/// A page in use with a known format version (its CRC is checked later, so that a damaged
/// header is reported as such rather than as "not an NVS image").
fn looks_like_a_page(page: &[u8]) -> bool {
    matches!(read_u32(page, 0), PAGE_ACTIVE | PAGE_FULL | PAGE_FREEING)
        && matches!(page[8], VERSION_2 | VERSION_1)
}

/// An entry as found on a page, before namespaces are resolved and blobs joined.
struct Found<'a> {
    page: usize,
    slot: usize,
    ns: u8,
    key: String,
    kind: Kind<'a>,
}

enum Kind<'a> {
    /// A namespace entry: its name is the key.
    Namespace(u8),
    Value(Value),
    Chunk {
        index: u8,
        data: &'a [u8],
    },
    BlobIndex {
        size: u32,
        count: u8,
        start: u8,
    },
}

fn read_page<'a>(
    page: &'a [u8],
    number: usize,
    items: &mut Vec<Found<'a>>,
) -> Result<(), NvsError> {
    let mut slot = 0;
    while slot < ENTRIES_PER_PAGE {
        let state = entry_state(page, slot);
        if state != ENTRY_WRITTEN {
            // Empty (0b11) or erased (0b00, and the unused 0b01): nothing to read.
            slot += 1;
            continue;
        }
        let at = FIRST_ENTRY_OFFSET + slot * ENTRY_SIZE;
        let entry = &page[at..at + ENTRY_SIZE];
        let stored = read_u32(entry, 4);
        let computed = entry_header_crc(entry);
        if stored != computed {
            return Err(NvsError::BadEntryCrc {
                page: number,
                entry: slot,
                offset: entry_offset(number, slot),
                key: String::from_utf8_lossy(key_bytes(entry)).into_owned(),
                part: "header",
                stored,
                computed,
            });
        }
        let bad = |problem: String| NvsError::bad_entry(number, slot, problem);
        let key = std::str::from_utf8(key_bytes(entry))
            .map_err(|_| bad("the key is not UTF-8".to_owned()))?
            .to_owned();
        if !entry[8..24].contains(&0) {
            return Err(bad(format!("key `{key}` has no NUL within its 16 bytes")));
        }
        let (ns, item, span, chunk_index) = (entry[0], entry[1], usize::from(entry[2]), entry[3]);

        let fixed = &entry[24..32];
        let integer = |len: usize| -> Result<[u8; 8], NvsError> {
            if span != 1 {
                return Err(bad(format!(
                    "`{key}` is an integer but spans {span} entries"
                )));
            }
            let mut bytes = [0u8; 8];
            bytes[..len].copy_from_slice(&fixed[..len]);
            Ok(bytes)
        };
        let kind = match item {
            item_type::U8 if ns == NAMESPACE_INDEX => {
                integer(1)?;
                let index = fixed[0];
                if index == NAMESPACE_INDEX || index == CHUNK_ANY {
                    return Err(bad(format!("namespace `{key}` has index {index}")));
                }
                Kind::Namespace(index)
            }
            _ if ns == NAMESPACE_INDEX => {
                return Err(bad(format!(
                    "`{key}` of type {item:#04x} is in namespace 0, which holds only namespace names"
                )));
            }
            item_type::U8 => Kind::Value(Value::U8(integer(1)?[0])),
            item_type::I8 => Kind::Value(Value::I8(i8::from_le_bytes([integer(1)?[0]]))),
            item_type::U16 => {
                let b = integer(2)?;
                Kind::Value(Value::U16(u16::from_le_bytes([b[0], b[1]])))
            }
            item_type::I16 => {
                let b = integer(2)?;
                Kind::Value(Value::I16(i16::from_le_bytes([b[0], b[1]])))
            }
            item_type::U32 => {
                let b = integer(4)?;
                Kind::Value(Value::U32(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            item_type::I32 => {
                let b = integer(4)?;
                Kind::Value(Value::I32(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            item_type::U64 => Kind::Value(Value::U64(u64::from_le_bytes(integer(8)?))),
            item_type::I64 => Kind::Value(Value::I64(i64::from_le_bytes(integer(8)?))),
            item_type::STR | item_type::BLOB | item_type::BLOB_DATA => {
                let size = usize::from(read_u16(entry, 24));
                if span != 1 + data_entries(size) || slot + span > ENTRIES_PER_PAGE {
                    return Err(bad(format!(
                        "`{key}` spans {span} entries from entry {slot}, which does not match its {size} bytes of data"
                    )));
                }
                let data = &page[at + ENTRY_SIZE..at + ENTRY_SIZE + size];
                let stored = read_u32(entry, 28);
                let computed = crc32(&[data]);
                if stored != computed {
                    return Err(NvsError::BadEntryCrc {
                        page: number,
                        entry: slot,
                        offset: entry_offset(number, slot),
                        key,
                        part: "data",
                        stored,
                        computed,
                    });
                }
                match item {
                    item_type::STR => {
                        let Some((&0, text)) = data.split_last() else {
                            return Err(bad(format!("string `{key}` does not end in a NUL")));
                        };
                        let text = std::str::from_utf8(text)
                            .map_err(|_| bad(format!("string `{key}` is not UTF-8")))?;
                        Kind::Value(Value::Str(text.to_owned()))
                    }
                    item_type::BLOB => Kind::Value(Value::Blob(data.to_vec())),
                    _ => Kind::Chunk {
                        index: chunk_index,
                        data,
                    },
                }
            }
            item_type::BLOB_IDX => {
                if span != 1 {
                    return Err(bad(format!("blob index `{key}` spans {span} entries")));
                }
                Kind::BlobIndex {
                    size: read_u32(entry, 24),
                    count: fixed[4],
                    start: fixed[5],
                }
            }
            other => return Err(bad(format!("`{key}` has unknown item type {other:#04x}"))),
        };
        items.push(Found {
            page: number,
            slot,
            ns,
            key,
            kind,
        });
        slot += span;
    }
    Ok(())
}

/// The key field up to its NUL (or all 16 bytes if there is none).
fn key_bytes(entry: &[u8]) -> &[u8] {
    let field = &entry[8..24];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Resolves namespace indexes to names (namespace entries may sit on any page), joins each
/// blob index with its chunks, and refuses a key stored twice in a namespace.
fn assemble(items: Vec<Found<'_>>) -> Result<Vec<Entry>, NvsError> {
    use std::collections::HashMap;
    let mut names: Vec<Option<&str>> = vec![None; 256];
    for item in &items {
        if let Kind::Namespace(index) = item.kind {
            names[usize::from(index)] = Some(&item.key);
        }
    }
    let namespace_of = |item: &Found<'_>| {
        names[usize::from(item.ns)]
            .map(str::to_owned)
            .ok_or_else(|| {
                NvsError::bad_entry(
                    item.page,
                    item.slot,
                    format!(
                        "`{}` is in namespace index {}, which no namespace entry defines",
                        item.key, item.ns
                    ),
                )
            })
    };
    // Every chunk by (namespace, key, chunk index): a blob finds each of its chunks at once, so
    // the time stays linear however many blobs and chunks an image claims.
    let mut chunks: HashMap<(u8, &str, u8), usize> = HashMap::new();
    for (position, item) in items.iter().enumerate() {
        if let Kind::Chunk { index, .. } = item.kind {
            chunks
                .entry((item.ns, &item.key, index))
                .or_insert(position);
        }
    }

    let mut used = vec![false; items.len()];
    let mut seen: HashMap<(u8, &str), usize> = HashMap::new();
    let mut entries = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let value = match &item.kind {
            Kind::Namespace(_) | Kind::Chunk { .. } => continue,
            Kind::Value(value) => value.clone(),
            &Kind::BlobIndex { size, count, start } => {
                let size = size as usize;
                if size > MAX_BLOB_LEN {
                    return Err(NvsError::bad_entry(
                        item.page,
                        item.slot,
                        format!(
                            "blob `{}` claims {size} bytes; NVS blobs hold at most {MAX_BLOB_LEN}",
                            item.key
                        ),
                    ));
                }
                let mut data = Vec::with_capacity(size);
                for index in u16::from(start)..u16::from(start) + u16::from(count) {
                    let chunk = u8::try_from(index)
                        .ok()
                        .and_then(|index| chunks.get(&(item.ns, item.key.as_str(), index)))
                        .copied()
                        .filter(|&chunk| !used[chunk]);
                    let Some(chunk) = chunk else {
                        return Err(NvsError::bad_entry(
                            item.page,
                            item.slot,
                            format!("blob `{}` lacks its chunk {index}", item.key),
                        ));
                    };
                    used[chunk] = true;
                    if let Kind::Chunk { data: bytes, .. } = items[chunk].kind {
                        if data.len() + bytes.len() > size {
                            return Err(NvsError::bad_entry(
                                item.page,
                                item.slot,
                                format!(
                                    "blob `{}` has more bytes in its chunks than its index says ({size})",
                                    item.key
                                ),
                            ));
                        }
                        data.extend_from_slice(bytes);
                    }
                }
                if data.len() != size {
                    return Err(NvsError::bad_entry(
                        item.page,
                        item.slot,
                        format!(
                            "blob `{}` has {} bytes in its chunks but its index says {size}",
                            item.key,
                            data.len()
                        ),
                    ));
                }
                Value::Blob(data)
            }
        };
        used[position] = true;
        let namespace = namespace_of(item)?;
        if let Some(&first) = seen.get(&(item.ns, item.key.as_str())) {
            return Err(NvsError::DuplicateKey {
                namespace,
                key: item.key.clone(),
                first_page: items[first].page,
                page: item.page,
            });
        }
        seen.insert((item.ns, &item.key), position);
        entries.push(Entry {
            namespace,
            key: item.key.clone(),
            value,
        });
    }
    if let Some(orphan) = items
        .iter()
        .zip(&used)
        .find(|(item, used)| matches!(item.kind, Kind::Chunk { .. }) && !**used)
        .map(|(item, _)| item)
    {
        return Err(NvsError::bad_entry(
            orphan.page,
            orphan.slot,
            format!("blob chunk of `{}` belongs to no blob index", orphan.key),
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::{MIN_PARTITION_SIZE, build};
    use super::*;

    fn code(error: &NvsError) -> String {
        miette::Diagnostic::code(error).map_or_else(String::new, |code| code.to_string())
    }

    fn sample() -> Vec<Entry> {
        vec![
            Entry::new("dps", "id_scope", Value::Str("0ne00ABCDEF".to_owned())),
            Entry::new("dps", "count", Value::I64(-5)),
            Entry::new(
                "app",
                "blob",
                Value::Blob((0..6000).map(|i| i as u8).collect()),
            ),
            Entry::new("app", "flag", Value::U8(1)),
        ]
    }

    /// Rewrites the header CRC of the entry at `offset` after a test changed its fields.
    fn reseal(image: &mut [u8], offset: usize) {
        let crc = entry_header_crc(&image[offset..offset + ENTRY_SIZE]);
        image[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn reads_back_what_build_wrote() {
        let entries = sample();
        let image = build(&entries, 0x5000).expect("builds");
        assert_eq!(parse(&image).expect("parses"), entries);
    }

    #[test]
    fn erased_small_and_duplicate_images_are_problems() {
        let erased = parse(&[0xFF; 0x3000]).expect_err("erased");
        assert_eq!(code(&erased), "station::nvs::erased");
        let image = build(&sample(), 0x5000).expect("builds");
        let small = parse(&image[..2 * PAGE_SIZE]).expect_err("two pages");
        assert_eq!(code(&small), "station::nvs::too_small");
        // The same key twice: page 0's `count` entry copied over page 0's free entries.
        let entries = vec![
            Entry::new("dps", "k", Value::U8(1)),
            Entry::new("dps", "other", Value::U8(2)),
        ];
        let mut image = build(&entries, 0x3000).expect("builds");
        // Rename `other` to `k` and reseal its CRC.
        let at = entry_offset(0, 2);
        image[at + 8..at + 24].fill(0);
        image[at + 8] = b'k';
        reseal(&mut image, at);
        let duplicate = parse(&image).expect_err("duplicate");
        assert_eq!(
            code(&duplicate),
            "station::nvs::duplicate_key",
            "{duplicate}"
        );
        assert!(duplicate.to_string().contains("`k`"), "{duplicate}");
    }

    #[test]
    fn pages_are_read_in_sequence_order() {
        let text = "x".repeat(3900);
        let entries: Vec<Entry> = (0..2)
            .map(|i| Entry::new("ns", format!("k{i}"), Value::Str(text.clone())))
            .collect();
        let image = build(&entries, MIN_PARTITION_SIZE).expect("builds");
        // Swap the two pages: order follows the sequence numbers, not the positions.
        let mut swapped = image[PAGE_SIZE..2 * PAGE_SIZE].to_vec();
        swapped.extend_from_slice(&image[..PAGE_SIZE]);
        swapped.extend_from_slice(&image[2 * PAGE_SIZE..]);
        assert_eq!(parse(&swapped).expect("parses"), entries);
    }

    #[test]
    fn erased_entries_are_skipped() {
        let entries = sample();
        let mut image = build(&entries, 0x5000).expect("builds");
        // Entry 3 of page 0 is dps/count: mark it erased (0b00).
        image[32] &= !0b1100_0000;
        let mut expected = entries;
        expected.remove(1);
        assert_eq!(parse(&image).expect("parses"), expected);
    }

    #[test]
    fn every_reader_error_has_its_code() {
        let good = build(&sample(), 0x5000).expect("builds");
        let damaged = |change: &dyn Fn(&mut Vec<u8>)| {
            let mut image = good.clone();
            change(&mut image);
            parse(&image).expect_err("damaged image")
        };
        let cases: Vec<(NvsError, &str)> = vec![
            (parse(&[]).expect_err("empty"), "station::nvs::not_an_image"),
            (
                parse(&good[..0x4800]).expect_err("short"),
                "station::nvs::truncated",
            ),
            (
                parse(&[0u8; 0x3000]).expect_err("zeros"),
                "station::nvs::not_an_image",
            ),
            (
                parse(&[0xFF; 0x3000]).expect_err("erased"),
                "station::nvs::erased",
            ),
            (
                parse(&[0xFF; 0x2000]).expect_err("small"),
                "station::nvs::too_small",
            ),
            // Page header CRC.
            (
                damaged(&|image| image[12] = 0),
                "station::nvs::bad_page_crc",
            ),
            // Unknown page state on page 1 (page 0 is still valid).
            (
                damaged(&|image| image[PAGE_SIZE..PAGE_SIZE + 4].fill(0)),
                "station::nvs::bad_page",
            ),
            // Data on a page marked empty.
            (
                damaged(&|image| image[4 * PAGE_SIZE + 100] = 0),
                "station::nvs::bad_page",
            ),
            // A key byte of entry 1 (dps/id_scope): header CRC.
            (
                damaged(&|image| image[entry_offset(0, 1) + 9] ^= 0x20),
                "station::nvs::bad_entry_crc",
            ),
            // A byte of id_scope's string: data CRC.
            (
                damaged(&|image| image[entry_offset(0, 2)] ^= 0x01),
                "station::nvs::bad_entry_crc",
            ),
            // An unknown type with a valid CRC.
            (
                damaged(&|image| {
                    image[entry_offset(0, 3) + 1] = 0x77;
                    reseal(image, entry_offset(0, 3));
                }),
                "station::nvs::bad_entry",
            ),
            // An entry in a namespace nobody defined.
            (
                damaged(&|image| {
                    image[entry_offset(0, 3)] = 9;
                    reseal(image, entry_offset(0, 3));
                }),
                "station::nvs::bad_entry",
            ),
            // The blob's index (page 1, entry 69) claims a third chunk.
            (
                damaged(&|image| {
                    image[entry_offset(1, 69) + 28] = 3;
                    reseal(image, entry_offset(1, 69));
                }),
                "station::nvs::bad_entry",
            ),
            // The blob's index erased: its chunks belong to nothing.
            (
                damaged(&|image| image[PAGE_SIZE + 32 + 69 / 4] &= !0b0000_1100),
                "station::nvs::bad_entry",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(code(&error), expected, "{error}");
            assert!(!error.is_input_error(), "{error}");
            assert!(miette::Diagnostic::help(&error).is_some(), "{error}");
        }
    }

    #[test]
    fn entry_crc_error_names_page_entry_and_key() {
        let mut image = build(&sample(), 0x5000).expect("builds");
        image[entry_offset(0, 2) + 3] ^= 0xFF;
        let error = parse(&image).expect_err("damaged");
        let NvsError::BadEntryCrc {
            page,
            entry,
            offset,
            ref key,
            part,
            ..
        } = error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(
            (page, entry, offset, key.as_str(), part),
            (0, 1, 0x60, "id_scope", "data")
        );
        assert!(
            error
                .to_string()
                .starts_with("NVS page 0 entry 1 (offset 0x60, key `id_scope`): data CRC is 0x"),
            "{error}"
        );
    }

    // Issue 13: the reader on arbitrary bytes: never a panic, and never more out than in (so
    // memory stays bounded by the image, whatever lengths its entries claim).
    mod properties {
        use proptest::prelude::*;

        use super::super::super::format::{
            ENTRY_SIZE, ENTRY_WRITTEN, entry_header_crc, entry_offset,
        };
        use super::super::super::{Entry, PAGE_SIZE, Value, build};
        use super::super::parse;

        fn decoded_bytes(entries: &[Entry]) -> usize {
            entries
                .iter()
                .map(|e| {
                    e.key.len()
                        + e.namespace.len()
                        + match &e.value {
                            Value::Str(s) => s.len(),
                            Value::Blob(b) => b.len(),
                            _ => 8,
                        }
                })
                .sum()
        }

        fn image() -> Vec<u8> {
            build(
                &[
                    Entry::new("dps", "reg_id", Value::Str("sensor-240ac4000001".into())),
                    Entry::new(
                        "dps",
                        "blob",
                        Value::Blob((0..5000).map(|i| i as u8).collect()),
                    ),
                    Entry::new("app", "n", Value::U32(7)),
                ],
                0x5000,
            )
            .expect("builds")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3 * PAGE_SIZE + 7)) {
                if let Ok(entries) = parse(&bytes) {
                    prop_assert!(decoded_bytes(&entries) <= bytes.len());
                }
            }

            #[test]
            fn arbitrary_pages_never_panic(pages in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), PAGE_SIZE..=PAGE_SIZE), 3..5)) {
                let bytes: Vec<u8> = pages.concat();
                if let Ok(entries) = parse(&bytes) {
                    prop_assert!(decoded_bytes(&entries) <= bytes.len());
                }
            }

            // Entries overwritten with arbitrary bytes under a valid header CRC reach past the
            // CRC checks into spans, sizes, chunk counts and namespaces.
            #[test]
            fn resealed_arbitrary_entries_never_panic(
                edits in proptest::collection::vec(
                    (0usize..4, 0usize..16, proptest::collection::vec(any::<u8>(), ENTRY_SIZE..=ENTRY_SIZE)),
                    1..6,
                )
            ) {
                let mut bytes = image();
                for (page, slot, entry) in edits {
                    // Marked written in the page's bitmap, so the reader takes it.
                    let bit = page * PAGE_SIZE + 32 + slot / 4;
                    let shift = (slot % 4) * 2;
                    bytes[bit] = (bytes[bit] & !(0b11 << shift)) | (ENTRY_WRITTEN << shift);
                    let at = entry_offset(page, slot);
                    bytes[at..at + ENTRY_SIZE].copy_from_slice(&entry);
                    let crc = entry_header_crc(&bytes[at..at + ENTRY_SIZE]);
                    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                }
                if let Ok(entries) = parse(&bytes) {
                    prop_assert!(decoded_bytes(&entries) <= bytes.len());
                }
            }
        }
    }
}
