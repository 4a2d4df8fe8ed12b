//! Building images: checking the entries, placing them by the generator's rules, and writing
//! the pages.
//!
//! Placement and serialisation are separate so that the same placement code answers "how big a
//! partition do these entries need" without writing anything: [`Layout`] decides where every
//! entry goes and hands each one to a [`Sink`], which either writes it ([`PageWriter`]) or
//! ignores it ([`Discard`]).

use super::format::{
    CHUNK_ANY, ENTRIES_PER_PAGE, ENTRY_SIZE, FIRST_ENTRY_OFFSET, NAMESPACE_INDEX, PAGE_ACTIVE,
    PAGE_FULL, PAGE_SIZE, VERSION_2, crc32, data_entries, entry_header_crc, item_type,
    page_header_crc,
};
use super::{
    Entry, MAX_BLOB_LEN, MAX_KEY_LEN, MAX_NAMESPACES, MAX_STRING_LEN, MIN_PARTITION_SIZE, NvsError,
    Value,
};

/// Builds the partition image of `size` bytes that holds `entries` in order, byte for byte what
/// ESP-IDF's generator makes from the same entries (see the [module docs](super)).
///
/// `size` must be a multiple of 4096 and at least 0x3000. Namespaces are numbered from 1 in
/// order of first appearance. Fails with `station::nvs::does_not_fit` when the entries need a
/// larger partition, naming the first entry that does not fit and how many bytes are missing.
pub fn build(entries: &[Entry], size: usize) -> Result<Vec<u8>, NvsError> {
    let mut image = Vec::new();
    build_into(entries, size, &mut image)?;
    Ok(image)
}

/// Like [`build`], but writes the image into `image`, reusing its allocation: the fast path
/// for building one image per device. `image` is resized to `size`; after an error its
/// contents are meaningless.
pub fn build_into(entries: &[Entry], size: usize, image: &mut Vec<u8>) -> Result<(), NvsError> {
    check_size(size)?;
    check_entries(entries)?;
    image.clear();
    image.resize(size, 0xFF);
    let usable_pages = size / PAGE_SIZE - 1;
    let writer = PageWriter {
        image,
        usable_pages,
    };
    let placed = place(entries, writer, usable_pages);
    fit_result(entries, size, &placed)
}

/// Checks that `entries` can be built into a partition of `size` bytes, without building it:
/// the same errors as [`build`], at a fraction of the cost. The config loader uses it to reject
/// an entry set that cannot fit `[nvs].size`.
pub fn check_fits(entries: &[Entry], size: usize) -> Result<(), NvsError> {
    check_size(size)?;
    check_entries(entries)?;
    let placed = place(entries, Discard, size / PAGE_SIZE - 1);
    fit_result(entries, size, &placed)
}

/// The smallest partition size (a multiple of 4096, at least 0x3000) that holds `entries` as
/// the generator lays them out. Fails only on entries no partition can hold (bad names, an
/// oversized value, too many namespaces).
pub fn required_size(entries: &[Entry]) -> Result<usize, NvsError> {
    check_entries(entries)?;
    let placed = place(entries, Discard, usize::MAX);
    Ok(size_for_pages(placed.pages_used))
}

fn check_size(size: usize) -> Result<(), NvsError> {
    if !size.is_multiple_of(PAGE_SIZE) || size < MIN_PARTITION_SIZE {
        return Err(NvsError::BadSize { size });
    }
    Ok(())
}

/// Rejects what no partition can hold. Run before placing anything, so that a bad name or an
/// oversized value is reported as such rather than as "does not fit".
fn check_entries(entries: &[Entry]) -> Result<(), NvsError> {
    let mut namespaces: Vec<&str> = Vec::new();
    for entry in entries {
        check_name("namespace", &entry.namespace)?;
        if entry.namespace.len() > MAX_KEY_LEN {
            return Err(NvsError::NamespaceTooLong {
                namespace: entry.namespace.clone(),
                len: entry.namespace.len(),
            });
        }
        check_name("key", &entry.key)?;
        if entry.key.len() > MAX_KEY_LEN {
            return Err(NvsError::KeyTooLong {
                namespace: entry.namespace.clone(),
                key: entry.key.clone(),
                len: entry.key.len(),
            });
        }
        match &entry.value {
            Value::Str(text) if text.len() > MAX_STRING_LEN => {
                return Err(NvsError::StringTooLong {
                    namespace: entry.namespace.clone(),
                    key: entry.key.clone(),
                    len: text.len(),
                    max: MAX_STRING_LEN,
                });
            }
            Value::Blob(data) if data.len() > MAX_BLOB_LEN => {
                return Err(NvsError::BlobTooLarge {
                    namespace: entry.namespace.clone(),
                    key: entry.key.clone(),
                    len: data.len(),
                    max: MAX_BLOB_LEN,
                });
            }
            _ => {}
        }
        if namespaces.last() != Some(&entry.namespace.as_str())
            && !namespaces.contains(&entry.namespace.as_str())
        {
            namespaces.push(&entry.namespace);
        }
    }
    if namespaces.len() > MAX_NAMESPACES {
        return Err(NvsError::TooManyNamespaces {
            count: namespaces.len(),
        });
    }
    Ok(())
}

fn check_name(what: &'static str, name: &str) -> Result<(), NvsError> {
    if name.is_empty() || name.contains('\0') {
        return Err(NvsError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Where the entries went: how many pages they use, and the first entry that ended on a page
/// past the usable ones.
struct Placed {
    pages_used: usize,
    first_past_end: Option<usize>,
}

/// A partition of `n` pages keeps its last page free, so entries on `pages` pages need one
/// more; and ESP-IDF wants at least three.
fn size_for_pages(pages: usize) -> usize {
    ((pages + 1) * PAGE_SIZE).max(MIN_PARTITION_SIZE)
}

fn fit_result(entries: &[Entry], size: usize, placed: &Placed) -> Result<(), NvsError> {
    let Some(index) = placed.first_past_end else {
        return Ok(());
    };
    let entry = &entries[index];
    let required = size_for_pages(placed.pages_used);
    Err(NvsError::DoesNotFit {
        namespace: entry.namespace.clone(),
        key: entry.key.clone(),
        size,
        required,
        missing: required - size,
    })
}

/// Places every entry (after its namespace's entry, the first time the namespace appears) and
/// keeps going past `usable_pages`, so that the caller learns both which entry first did not
/// fit and how many pages all of them need.
fn place<S: Sink>(entries: &[Entry], sink: S, usable_pages: usize) -> Placed {
    let mut layout = Layout::new(sink);
    let mut namespaces: Vec<&str> = Vec::new();
    let mut current: Option<(&str, u8)> = None;
    let mut first_past_end = None;
    for (position, entry) in entries.iter().enumerate() {
        let namespace = entry.namespace.as_str();
        let ns = match current {
            Some((name, index)) if name == namespace => index,
            _ => {
                let index = match namespaces.iter().position(|known| *known == namespace) {
                    // An index in 1..=254: check_entries refused more namespaces.
                    Some(found) => (found + 1) as u8,
                    None => {
                        namespaces.push(namespace);
                        let index = namespaces.len() as u8;
                        layout.primitive(
                            NAMESPACE_INDEX,
                            item_type::U8,
                            namespace.as_bytes(),
                            &[index],
                        );
                        index
                    }
                };
                current = Some((namespace, index));
                index
            }
        };
        layout.value(ns, entry.key.as_bytes(), &entry.value);
        if first_past_end.is_none() && layout.page >= usable_pages {
            first_past_end = Some(position);
        }
    }
    Placed {
        pages_used: layout.page + 1,
        first_past_end,
    }
}

/// One item handed to a [`Sink`]: its header fields and its data.
struct Item<'a> {
    ns: u8,
    item_type: u8,
    span: usize,
    chunk_index: u8,
    key: &'a [u8],
    data: ItemData<'a>,
}

enum ItemData<'a> {
    /// The 8-byte data field itself: an integer, or a blob index.
    Inline([u8; 8]),
    /// Data in the entries that follow (a string, with `nul`, or a blob chunk); the data field
    /// holds its size and CRC.
    Following { bytes: &'a [u8], nul: bool },
}

/// Receives pages and items from a [`Layout`].
trait Sink {
    /// Page `page` starts; the page before it, if any, is full.
    fn open_page(&mut self, page: usize);
    /// `item` goes into entry `slot` of page `page` and the `item.span - 1` entries after it.
    fn item(&mut self, page: usize, slot: usize, item: &Item<'_>);
}

/// A sink that keeps nothing: placement only.
struct Discard;

impl Sink for Discard {
    fn open_page(&mut self, _page: usize) {}
    fn item(&mut self, _page: usize, _slot: usize, _item: &Item<'_>) {}
}

/// The generator's placement rules.
struct Layout<S> {
    sink: S,
    /// The page being filled.
    page: usize,
    /// The next free entry on it.
    slot: usize,
}

impl<S: Sink> Layout<S> {
    fn new(mut sink: S) -> Self {
        sink.open_page(0);
        Layout {
            sink,
            page: 0,
            slot: 0,
        }
    }

    fn next_page(&mut self) {
        self.page += 1;
        self.slot = 0;
        self.sink.open_page(self.page);
    }

    fn put(&mut self, item: Item<'_>) {
        self.sink.item(self.page, self.slot, &item);
        self.slot += item.span;
    }

    fn value(&mut self, ns: u8, key: &[u8], value: &Value) {
        match value {
            Value::U8(v) => self.primitive(ns, item_type::U8, key, &v.to_le_bytes()),
            Value::I8(v) => self.primitive(ns, item_type::I8, key, &v.to_le_bytes()),
            Value::U16(v) => self.primitive(ns, item_type::U16, key, &v.to_le_bytes()),
            Value::I16(v) => self.primitive(ns, item_type::I16, key, &v.to_le_bytes()),
            Value::U32(v) => self.primitive(ns, item_type::U32, key, &v.to_le_bytes()),
            Value::I32(v) => self.primitive(ns, item_type::I32, key, &v.to_le_bytes()),
            Value::U64(v) => self.primitive(ns, item_type::U64, key, &v.to_le_bytes()),
            Value::I64(v) => self.primitive(ns, item_type::I64, key, &v.to_le_bytes()),
            Value::Str(text) => self.string(ns, key, text.as_bytes()),
            Value::Blob(data) => self.blob(ns, key, data),
        }
    }

    /// An integer: one entry, little-endian, padded with `0xFF`.
    fn primitive(&mut self, ns: u8, item_type: u8, key: &[u8], bytes: &[u8]) {
        if self.slot >= ENTRIES_PER_PAGE {
            self.next_page();
        }
        let mut data = [0xFF; 8];
        data[..bytes.len()].copy_from_slice(bytes);
        self.put(Item {
            ns,
            item_type,
            span: 1,
            chunk_index: CHUNK_ANY,
            key,
            data: ItemData::Inline(data),
        });
    }

    /// A string: header plus data entries, all on one page.
    fn string(&mut self, ns: u8, key: &[u8], text: &[u8]) {
        let span = 1 + data_entries(text.len() + 1);
        // The generator starts a new page unless the string leaves at least one entry free
        // (its test is `>=`), so a string never ends on a page's last entry.
        if self.slot + span >= ENTRIES_PER_PAGE {
            self.next_page();
        }
        self.put(Item {
            ns,
            item_type: item_type::STR,
            span,
            chunk_index: CHUNK_ANY,
            key,
            data: ItemData::Following {
                bytes: text,
                nul: true,
            },
        });
    }

    /// A blob: chunks that each fill the rest of a page, then the index entry.
    fn blob(&mut self, ns: u8, key: &[u8], data: &[u8]) {
        if self.slot >= ENTRIES_PER_PAGE {
            self.next_page();
        }
        let mut offset = 0;
        let mut chunk_count: u8 = 0;
        loop {
            // Room for data after this chunk's header entry. With only the last entry free it
            // is zero, and the generator still writes an empty chunk there.
            let room = (ENTRIES_PER_PAGE - self.slot - 1) * ENTRY_SIZE;
            let len = room.min(data.len() - offset);
            self.put(Item {
                ns,
                item_type: item_type::BLOB_DATA,
                span: 1 + data_entries(len),
                chunk_index: chunk_count,
                key,
                data: ItemData::Following {
                    bytes: &data[offset..offset + len],
                    nul: false,
                },
            });
            // At most 128 chunks: a partial one, then 127 of 4000 bytes (MAX_BLOB_LEN).
            chunk_count += 1;
            offset += len;
            if offset < data.len() || room - len < ENTRY_SIZE {
                self.next_page();
            }
            if offset == data.len() {
                break;
            }
        }
        let mut index = [0xFF; 8];
        // MAX_BLOB_LEN keeps the size well within u32.
        index[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        index[4] = chunk_count;
        // Chunk indexes start at 0 (format version 2's first range; 0x80 is the second).
        index[5] = 0;
        self.put(Item {
            ns,
            item_type: item_type::BLOB_IDX,
            span: 1,
            chunk_index: CHUNK_ANY,
            key,
            data: ItemData::Inline(index),
        });
    }
}

/// Writes pages and items into an image pre-filled with `0xFF`, ignoring anything placed past
/// the usable pages (the build then fails with `does_not_fit`).
struct PageWriter<'a> {
    image: &'a mut [u8],
    usable_pages: usize,
}

impl Sink for PageWriter<'_> {
    fn open_page(&mut self, page: usize) {
        if page >= self.usable_pages {
            return;
        }
        if page > 0 {
            let previous = (page - 1) * PAGE_SIZE;
            self.image[previous..previous + 4].copy_from_slice(&PAGE_FULL.to_le_bytes());
        }
        let start = page * PAGE_SIZE;
        let header = &mut self.image[start..start + 32];
        header[0..4].copy_from_slice(&PAGE_ACTIVE.to_le_bytes());
        // Sequence numbers count pages from 0; a partition never has 2^32 pages.
        header[4..8].copy_from_slice(&(page as u32).to_le_bytes());
        header[8] = VERSION_2;
        let crc = page_header_crc(header);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    fn item(&mut self, page: usize, slot: usize, item: &Item<'_>) {
        if page >= self.usable_pages {
            return;
        }
        let page_start = page * PAGE_SIZE;
        let at = page_start + FIRST_ENTRY_OFFSET + slot * ENTRY_SIZE;

        let mut header = [0xFF; ENTRY_SIZE];
        header[0] = item.ns;
        header[1] = item.item_type;
        // Spans are at most 126: one page of entries.
        header[2] = item.span as u8;
        header[3] = item.chunk_index;
        header[8..24].fill(0);
        header[8..8 + item.key.len()].copy_from_slice(item.key);
        match item.data {
            ItemData::Inline(data) => header[24..32].copy_from_slice(&data),
            ItemData::Following { bytes, nul } => {
                let data = &mut self.image[at + ENTRY_SIZE..];
                data[..bytes.len()].copy_from_slice(bytes);
                let (size, crc) = if nul {
                    data[bytes.len()] = 0;
                    (bytes.len() + 1, crc32(&[bytes, &[0]]))
                } else {
                    (bytes.len(), crc32(&[bytes]))
                };
                // A page holds at most 4000 bytes of data, so the size fits in 16 bits.
                header[24..26].copy_from_slice(&(size as u16).to_le_bytes());
                header[28..32].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = entry_header_crc(&header);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        self.image[at..at + ENTRY_SIZE].copy_from_slice(&header);

        // Mark the entries written: state 0b10, i.e. clear the low bit of each pair.
        let bitmap = page_start + super::format::BITMAP_OFFSET;
        for entry in slot..slot + item.span {
            self.image[bitmap + entry / 4] &= !(1 << ((entry % 4) * 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{entry_offset, entry_state, read_u16, read_u32};
    use super::*;

    fn string(namespace: &str, key: &str, text: &str) -> Entry {
        Entry::new(namespace, key, Value::Str(text.to_owned()))
    }

    fn code(error: &NvsError) -> String {
        miette::Diagnostic::code(error).map_or_else(String::new, |code| code.to_string())
    }

    /// Where each entry's header ended up: (page, slot, type, span, chunk index, key).
    fn headers(image: &[u8]) -> Vec<(usize, usize, u8, u8, u8, String)> {
        let mut found = Vec::new();
        for page in 0..image.len() / PAGE_SIZE {
            let bytes = &image[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
            let mut slot = 0;
            while slot < ENTRIES_PER_PAGE {
                if entry_state(bytes, slot) != 0b10 {
                    slot += 1;
                    continue;
                }
                let entry = &image[entry_offset(page, slot)..entry_offset(page, slot) + 32];
                let key_end = entry[8..24].iter().position(|&b| b == 0).unwrap_or(16);
                let key = String::from_utf8_lossy(&entry[8..8 + key_end]).into_owned();
                found.push((page, slot, entry[1], entry[2], entry[3], key));
                slot += usize::from(entry[2]).max(1);
            }
        }
        found
    }

    #[test]
    fn integer_entry_layout() {
        let image = build(
            &[Entry::new("ns", "answer", Value::I16(-2))],
            MIN_PARTITION_SIZE,
        )
        .expect("builds");
        let ns = &image[0x40..0x60];
        assert_eq!(&ns[..4], &[0, item_type::U8, 1, 0xFF]);
        assert_eq!(&ns[8..24], b"ns\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&ns[24..32], &[1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        let entry = &image[0x60..0x80];
        assert_eq!(&entry[..4], &[1, item_type::I16, 1, 0xFF]);
        assert_eq!(read_u32(entry, 4), entry_header_crc(entry));
        assert_eq!(&entry[8..15], b"answer\0");
        assert_eq!(
            &entry[24..32],
            &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        // Two entries written (0b10 0b10), the rest empty.
        assert_eq!(image[32], 0b1111_1010);
        assert!(image[33..64].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn string_entry_layout_and_span() {
        // 31 bytes + NUL fill exactly one data entry; 32 bytes + NUL need two.
        let text31 = "a".repeat(31);
        let text32 = "b".repeat(32);
        let image = build(
            &[string("ns", "s31", &text31), string("ns", "s32", &text32)],
            MIN_PARTITION_SIZE,
        )
        .expect("builds");
        let s31 = &image[entry_offset(0, 1)..entry_offset(0, 2)];
        assert_eq!(&s31[..4], &[1, item_type::STR, 2, 0xFF]);
        assert_eq!(read_u16(s31, 24), 32);
        assert_eq!(&s31[26..28], &[0xFF, 0xFF]);
        let mut data = text31.clone().into_bytes();
        data.push(0);
        assert_eq!(read_u32(s31, 28), crc32(&[&data]));
        assert_eq!(&image[entry_offset(0, 2)..entry_offset(0, 3)], &data[..]);
        let s32 = &image[entry_offset(0, 3)..entry_offset(0, 4)];
        assert_eq!(s32[2], 3);
        assert_eq!(read_u16(s32, 24), 33);
        // The NUL opens the second data entry; the rest of it stays 0xFF.
        let second = &image[entry_offset(0, 5)..entry_offset(0, 6)];
        assert_eq!(second[0], 0);
        assert!(second[1..].iter().all(|&b| b == 0xFF));
        // Namespace + 2 + 3 entries written.
        assert_eq!(image[32], 0b1010_1010);
        assert_eq!(image[33], 0b1111_1010);
        assert_eq!(image[34], 0xFF);
    }

    #[test]
    fn page_states_and_sequence_numbers() {
        // A 3900-byte string (123 entries with its header) takes a page to itself, the first
        // one sharing page 0 with the namespace entry: three of them use three pages.
        let text = "x".repeat(3900);
        let entries: Vec<Entry> = (0..3)
            .map(|i| string("ns", &format!("k{i}"), &text))
            .collect();
        let image = build(&entries, 0x5000).expect("builds");
        for page in 0..3 {
            let header = &image[page * PAGE_SIZE..page * PAGE_SIZE + 32];
            let state = read_u32(header, 0);
            assert_eq!(state, if page == 2 { PAGE_ACTIVE } else { PAGE_FULL });
            assert_eq!(read_u32(header, 4), page as u32);
            assert_eq!(header[8], VERSION_2);
            assert!(header[9..28].iter().all(|&b| b == 0xFF));
            assert_eq!(read_u32(header, 28), page_header_crc(header));
        }
        // Page 3 is free, page 4 is the reserved one: both erased.
        assert!(image[3 * PAGE_SIZE..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn string_that_would_fill_the_page_moves_to_the_next() {
        // After the namespace entry, 123 u8 entries leave slots 124 and 125: a one-entry string
        // (span 2) would end on the last slot, so it goes to the next page; a u8 does not.
        let mut entries: Vec<Entry> = (0..123)
            .map(|i| Entry::new("ns", format!("u{i}"), Value::U8(1)))
            .collect();
        entries.push(string("ns", "s", "short"));
        entries.push(Entry::new("ns", "after", Value::U8(2)));
        let image = build(&entries, MIN_PARTITION_SIZE).expect("builds");
        let found = headers(&image);
        let s = found.iter().find(|h| h.5 == "s").expect("string written");
        assert_eq!((s.0, s.1), (1, 0));
        let after = found.iter().find(|h| h.5 == "after").expect("u8 written");
        assert_eq!((after.0, after.1), (1, 2));
        // Slots 124 and 125 of page 0 stay empty.
        assert_eq!(entry_state(&image, 124), 0b11);
        assert_eq!(entry_state(&image, 125), 0b11);
    }

    #[test]
    fn blob_chunks_fill_pages_and_index_follows() {
        // Namespace entry, then a blob of 3968 (the rest of page 0) + 4000 + 36 bytes.
        let data: Vec<u8> = (0..8004u32).map(|i| (i % 251) as u8).collect();
        let image = build(
            &[Entry::new("ns", "blob", Value::Blob(data.clone()))],
            0x5000,
        )
        .expect("builds");
        let found = headers(&image);
        let expected = vec![
            (0, 0, item_type::U8, 1, 0xFF, "ns".to_owned()),
            (0, 1, item_type::BLOB_DATA, 125, 0, "blob".to_owned()),
            (1, 0, item_type::BLOB_DATA, 126, 1, "blob".to_owned()),
            (2, 0, item_type::BLOB_DATA, 3, 2, "blob".to_owned()),
            (2, 3, item_type::BLOB_IDX, 1, 0xFF, "blob".to_owned()),
        ];
        assert_eq!(found, expected);
        let first = &image[entry_offset(0, 1)..entry_offset(0, 2)];
        assert_eq!(read_u16(first, 24), 3968);
        assert_eq!(read_u32(first, 28), crc32(&[&data[..3968]]));
        let index = &image[entry_offset(2, 3)..entry_offset(2, 4)];
        assert_eq!(read_u32(index, 24), 8004);
        assert_eq!(&index[28..32], &[3, 0, 0xFF, 0xFF]);
    }

    #[test]
    fn blob_on_the_last_free_entry_starts_with_an_empty_chunk() {
        let mut entries: Vec<Entry> = (0..124)
            .map(|i| Entry::new("ns", format!("u{i}"), Value::U8(1)))
            .collect();
        entries.push(Entry::new("ns", "blob", Value::Blob(vec![7; 40])));
        let image = build(&entries, MIN_PARTITION_SIZE).expect("builds");
        let found = headers(&image);
        let chunks: Vec<_> = found.iter().filter(|h| h.5 == "blob").collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            (chunks[0].0, chunks[0].1, chunks[0].3, chunks[0].4),
            (0, 125, 1, 0)
        );
        let empty = &image[entry_offset(0, 125)..entry_offset(0, 126)];
        assert_eq!(read_u16(empty, 24), 0);
        assert_eq!(read_u32(empty, 28), 0xFFFF_FFFF);
        assert_eq!(
            (chunks[1].0, chunks[1].1, chunks[1].3, chunks[1].4),
            (1, 0, 3, 1)
        );
        assert_eq!(chunks[2].2, item_type::BLOB_IDX);
    }

    #[test]
    fn blob_ending_on_the_last_entry_puts_its_index_on_the_next_page() {
        // Namespace entry, then 124 entries of data: the chunk's header and data take slots
        // 1..=125, leaving no room for the index.
        let image = build(
            &[Entry::new("ns", "blob", Value::Blob(vec![1; 124 * 32]))],
            MIN_PARTITION_SIZE,
        )
        .expect("builds");
        let found = headers(&image);
        assert_eq!(
            found[1],
            (0, 1, item_type::BLOB_DATA, 125, 0, "blob".to_owned())
        );
        assert_eq!(
            (found[2].0, found[2].1, found[2].2),
            (1, 0, item_type::BLOB_IDX)
        );
    }

    #[test]
    fn empty_string_and_empty_blob() {
        let image = build(
            &[
                string("ns", "empty", ""),
                Entry::new("ns", "none", Value::Blob(Vec::new())),
            ],
            MIN_PARTITION_SIZE,
        )
        .expect("builds");
        let found = headers(&image);
        assert_eq!(
            found[1],
            (0, 1, item_type::STR, 2, 0xFF, "empty".to_owned())
        );
        assert_eq!(
            found[2],
            (0, 3, item_type::BLOB_DATA, 1, 0, "none".to_owned())
        );
        assert_eq!(
            found[3],
            (0, 4, item_type::BLOB_IDX, 1, 0xFF, "none".to_owned())
        );
    }

    #[test]
    fn namespaces_are_numbered_in_order_of_first_appearance() {
        let entries = [
            Entry::new("b", "k", Value::U8(1)),
            Entry::new("a", "k", Value::U8(2)),
            Entry::new("b", "k2", Value::U8(3)),
        ];
        let image = build(&entries, MIN_PARTITION_SIZE).expect("builds");
        let namespace_of = |slot: usize| image[entry_offset(0, slot)];
        // ns "b" (index 1), b/k, ns "a" (index 2), a/k, b/k2 without a second namespace entry.
        assert_eq!(image[entry_offset(0, 0) + 24], 1);
        assert_eq!(namespace_of(1), 1);
        assert_eq!(image[entry_offset(0, 2) + 24], 2);
        assert_eq!(namespace_of(3), 2);
        assert_eq!(namespace_of(4), 1);
        assert_eq!(entry_state(&image, 5), 0b11);
    }

    #[test]
    fn required_size_counts_pages_plus_the_reserved_one() {
        let small = [string("dps", "id_scope", "0ne00ABCDEF")];
        assert_eq!(required_size(&small).expect("valid"), MIN_PARTITION_SIZE);
        // One page per 3900-byte string: five pages, plus the reserved one.
        let text = "x".repeat(3900);
        let five: Vec<Entry> = (0..5)
            .map(|i| string("ns", &format!("k{i}"), &text))
            .collect();
        assert_eq!(required_size(&five).expect("valid"), 0x6000);
        assert!(check_fits(&five, 0x6000).is_ok());
        let error = check_fits(&five, 0x5000).expect_err("too small");
        assert_eq!(
            error,
            NvsError::DoesNotFit {
                namespace: "ns".to_owned(),
                key: "k4".to_owned(),
                size: 0x5000,
                required: 0x6000,
                missing: 0x1000,
            }
        );
        assert_eq!(build(&five, 0x5000).expect_err("too small"), error);
    }

    #[test]
    fn does_not_fit_names_the_first_entry_and_the_whole_shortfall() {
        // One page per 3900-byte string: k2 is the first on a third page, and all six need
        // six pages plus the reserved one.
        let text = "x".repeat(3900);
        let entries: Vec<Entry> = (0..6)
            .map(|i| string("ns", &format!("k{i}"), &text))
            .collect();
        let error = build(&entries, 0x3000).expect_err("too small");
        assert_eq!(code(&error), "station::nvs::does_not_fit");
        assert_eq!(
            error.to_string(),
            "entry `ns/k2` does not fit the 0x3000-byte NVS partition: 16384 bytes missing (the entries need 0x7000)"
        );
        assert!(error.is_input_error());
        // The size it asks for is enough.
        assert!(build(&entries, 0x7000).is_ok());
        assert!(build(&entries, 0x6000).is_err());
    }

    #[test]
    fn a_partition_filled_to_the_last_entry_fits() {
        // 2 usable pages of 126 entries: the namespace entry and 251 u8 values fill them.
        let entries: Vec<Entry> = (0..251)
            .map(|i| Entry::new("ns", format!("u{i}"), Value::U8(1)))
            .collect();
        let image = build(&entries, MIN_PARTITION_SIZE).expect("fits exactly");
        assert_eq!(entry_state(&image[PAGE_SIZE..], 125), 0b10);
        let mut more = entries.clone();
        more.push(Entry::new("ns", "one_more", Value::U8(1)));
        let error = build(&more, MIN_PARTITION_SIZE).expect_err("one too many");
        assert!(
            matches!(error, NvsError::DoesNotFit { ref key, missing: 0x1000, .. } if key == "one_more")
        );
    }

    #[test]
    fn build_into_reuses_the_buffer_and_matches_build() {
        let entries = [string("dps", "reg_id", "sensor-240ac4123456")];
        let mut image = vec![0u8; 3];
        build_into(&entries, 0x4000, &mut image).expect("builds");
        assert_eq!(image, build(&entries, 0x4000).expect("builds"));
        build_into(&entries, 0x3000, &mut image).expect("builds");
        assert_eq!(image.len(), 0x3000);
    }

    #[test]
    fn every_input_error_has_its_code() {
        let cases: Vec<(Vec<Entry>, usize, &str)> = vec![
            (vec![], 0x3100, "station::nvs::bad_size"),
            (vec![], 0x2000, "station::nvs::bad_size"),
            (vec![], 0, "station::nvs::bad_size"),
            (
                vec![Entry::new("ns", "sixteen_bytes_k", Value::U8(1))],
                0x3000,
                "",
            ),
            (
                vec![Entry::new("ns", "sixteen_bytes_ke", Value::U8(1))],
                0x3000,
                "station::nvs::key_too_long",
            ),
            (
                vec![Entry::new("namespace_16byte", "k", Value::U8(1))],
                0x3000,
                "station::nvs::namespace_too_long",
            ),
            (
                vec![Entry::new("ns", "", Value::U8(1))],
                0x3000,
                "station::nvs::bad_name",
            ),
            (
                vec![Entry::new("n\0s", "k", Value::U8(1))],
                0x3000,
                "station::nvs::bad_name",
            ),
            (
                vec![string("ns", "k", &"x".repeat(MAX_STRING_LEN))],
                0x3000,
                "",
            ),
            (
                vec![string("ns", "k", &"x".repeat(MAX_STRING_LEN + 1))],
                0x3000,
                "station::nvs::string_too_long",
            ),
            (
                vec![Entry::new(
                    "ns",
                    "k",
                    Value::Blob(vec![0; MAX_BLOB_LEN + 1]),
                )],
                0x3000,
                "station::nvs::blob_too_large",
            ),
            (
                (0..=MAX_NAMESPACES)
                    .map(|i| Entry::new(format!("ns{i}"), "k", Value::U8(1)))
                    .collect(),
                0x10_0000,
                "station::nvs::too_many_namespaces",
            ),
            (
                (0..MAX_NAMESPACES)
                    .map(|i| Entry::new(format!("ns{i}"), "k", Value::U8(1)))
                    .collect(),
                0x10_0000,
                "",
            ),
            (
                vec![Entry::new("ns", "k", Value::Blob(vec![0; 9000]))],
                0x3000,
                "station::nvs::does_not_fit",
            ),
        ];
        for (entries, size, expected) in cases {
            let result = build(&entries, size);
            match result {
                Ok(_) => assert_eq!(expected, "", "size {size:#x} built"),
                Err(error) => {
                    assert_eq!(code(&error), expected, "{error}");
                    assert!(error.is_input_error(), "{error}");
                    assert!(miette::Diagnostic::help(&error).is_some(), "{error}");
                }
            }
        }
    }

    #[test]
    fn input_errors_say_what_and_where() {
        let error = build(
            &[Entry::new("dps", "device_key_primary", Value::U8(1))],
            0x3000,
        )
        .expect_err("long key");
        assert_eq!(
            error.to_string(),
            "key `device_key_primary` in namespace `dps` is 18 bytes; NVS keys hold at most 15"
        );
        let error =
            build(&[string("dps", "root_ca", &"x".repeat(5000))], 0x6000).expect_err("long string");
        assert_eq!(
            error.to_string(),
            "string `dps/root_ca` is 5000 bytes; an NVS string holds at most 3967 bytes plus its NUL"
        );
        let error = build(&[], 0x6800).expect_err("bad size");
        assert_eq!(
            error.to_string(),
            "NVS partition size 0x6800 is not a multiple of 0x1000 of at least 0x3000"
        );
    }
}
