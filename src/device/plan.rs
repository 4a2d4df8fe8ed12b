//! What each region needs on the wire, decided before anything is sent: the checks every
//! region must pass, its image padded to whole words, where its data ends, and which of its
//! sectors only have to read `0xFF`.
//!
//! An NVS partition is mostly erased bytes: the station's image holds a page of entries and
//! then erased pages. Programming `0xFF` changes nothing on NOR flash, so only the bytes up to
//! the last word that is not `0xFFFF_FFFF` are sent; the sectors after them only have to be
//! erased, and not even that when they already read `0xFF` (a factory-fresh module). The MD5 of
//! the whole region at the verify step is what proves the result either way.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::{DeviceError, Region};

pub(crate) use crate::flash::SECTOR_SIZE;

/// Checks regions before anything is sent: sector-aligned, inside the flash, not overlapping.
pub(crate) fn check_regions(
    regions: &[Region],
    flash_size: Option<u32>,
) -> Result<(), DeviceError> {
    let mut sorted: Vec<&Region> = regions.iter().collect();
    sorted.sort_by_key(|r| r.offset);
    for region in &sorted {
        if !region.offset.is_multiple_of(SECTOR_SIZE) {
            return Err(DeviceError::RegionMisaligned {
                offset: region.offset,
            });
        }
        let end = u64::from(region.offset) + region.data.len() as u64;
        if let Some(size) = flash_size
            && end > u64::from(size)
        {
            return Err(DeviceError::RegionOutOfRange {
                offset: region.offset,
                len: region.data.len(),
                flash_size: size,
            });
        }
    }
    for pair in sorted.windows(2) {
        let end = u64::from(pair[0].offset) + pair[0].data.len() as u64;
        if end > u64::from(pair[1].offset) {
            return Err(DeviceError::RegionsOverlap {
                first: pair[0].offset,
                second: pair[1].offset,
            });
        }
    }
    Ok(())
}

/// The region padded with `0xFF` to a multiple of 4 bytes, as flash writes need.
pub(crate) fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().next_multiple_of(4), 0xFF);
    out
}

/// One region, ready to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegionPlan {
    /// Where it starts (a sector boundary).
    pub(crate) offset: u32,
    /// The image, padded to whole words.
    pub(crate) image: Vec<u8>,
    /// How many bytes from the start to send: up to the last word that is not all `0xFF`.
    pub(crate) data_len: u32,
}

impl RegionPlan {
    /// Plans `region`.
    pub(crate) fn new(region: &Region) -> Self {
        let image = padded(&region.data);
        let data_len = image
            .chunks_exact(4)
            .rposition(|word| word != [0xFF; 4])
            .map_or(0, |last| 4 * (last + 1));
        RegionPlan {
            offset: region.offset,
            image,
            data_len: data_len as u32,
        }
    }

    /// The image's length.
    pub(crate) fn len(&self) -> u32 {
        self.image.len() as u32
    }

    /// The bytes to send.
    pub(crate) fn data(&self) -> &[u8] {
        &self.image[..self.data_len as usize]
    }

    /// The sectors the data lies in, as a length from the region's start.
    pub(crate) fn data_sectors(&self) -> u32 {
        self.data_len.next_multiple_of(SECTOR_SIZE)
    }

    /// The part of the image past the data's sectors, which only has to read `0xFF`: its start
    /// and length (within the image), if there is one.
    pub(crate) fn blank_tail(&self) -> Option<(u32, u32)> {
        let start = self.offset + self.data_sectors();
        let end = self.offset + self.len();
        (end > start).then(|| (start, end - start))
    }

    /// How much to erase from the region's start: the data's sectors, and the blank tail's too
    /// unless it already reads `0xFF`. Whole sectors.
    pub(crate) fn erase_len(&self, tail_erased: bool) -> u32 {
        if tail_erased {
            self.data_sectors()
        } else {
            self.len().next_multiple_of(SECTOR_SIZE)
        }
    }

    /// The data compressed with zlib, as FLASH_DEFL_DATA carries it.
    pub(crate) fn compressed(&self) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        // Writing to a Vec cannot fail.
        let _ = encoder.write_all(self.data());
        encoder.finish().unwrap_or_default()
    }
}

/// The MD5 of `len` erased bytes.
pub(crate) fn erased_md5(len: u32) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    let chunk = [0xFFu8; 4096];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        hasher.update(&chunk[..n]);
        left -= n;
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use md5::{Digest, Md5};

    use super::*;

    #[test]
    fn regions_are_checked_before_writing() {
        let region = |offset: u32, len: usize| Region::new(offset, vec![0u8; len]);
        assert!(
            check_regions(
                &[region(0x9000, 0x6000), region(0x10000, 10)],
                Some(0x40_0000)
            )
            .is_ok()
        );
        assert!(matches!(
            check_regions(&[region(0x9001, 4)], None),
            Err(DeviceError::RegionMisaligned { offset: 0x9001 })
        ));
        assert!(matches!(
            check_regions(&[region(0x10000, 0x1000), region(0x9000, 0x8000)], None),
            Err(DeviceError::RegionsOverlap {
                first: 0x9000,
                second: 0x10000
            })
        ));
        assert!(matches!(
            check_regions(&[region(0x3F_F000, 0x2000)], Some(0x40_0000)),
            Err(DeviceError::RegionOutOfRange { .. })
        ));
    }

    #[test]
    fn padding_rounds_up_to_words_with_erased_bytes() {
        assert_eq!(
            padded(&[1, 2, 3, 4, 5]),
            vec![1, 2, 3, 4, 5, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(padded(&[1, 2, 3, 4]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn an_nvs_like_image_sends_its_first_page_and_only_erases_the_rest() {
        let mut image = vec![0xFF; 0x6000];
        image[..0x123].fill(0x42);
        let plan = RegionPlan::new(&Region::new(0x9000, image));
        assert_eq!(plan.data_len, 0x124, "up to the last word with data");
        assert_eq!(plan.data_sectors(), 0x1000);
        assert_eq!(plan.blank_tail(), Some((0xA000, 0x5000)));
        assert_eq!(plan.erase_len(true), 0x1000);
        assert_eq!(plan.erase_len(false), 0x6000);
    }

    #[test]
    fn a_full_image_has_no_blank_tail_and_an_erased_one_sends_nothing() {
        let plan = RegionPlan::new(&Region::new(0x10000, vec![0x11; 5000]));
        assert_eq!(plan.data_len, 5000);
        assert_eq!(plan.blank_tail(), None);
        assert_eq!(plan.erase_len(true), 0x2000);
        let erased = RegionPlan::new(&Region::new(0x9000, vec![0xFF; 0x3000]));
        assert_eq!(erased.data_len, 0);
        assert!(erased.data().is_empty());
        assert_eq!(erased.blank_tail(), Some((0x9000, 0x3000)));
        assert_eq!(erased.erase_len(false), 0x3000);
    }

    #[test]
    fn compressed_data_inflates_back_and_erased_md5_is_the_md5_of_0xff() {
        let plan = RegionPlan::new(&Region::new(
            0,
            (0..3000u32).map(|i| i as u8).collect::<Vec<_>>(),
        ));
        let mut decoder = flate2::write::ZlibDecoder::new(Vec::new());
        decoder.write_all(&plan.compressed()).unwrap();
        assert_eq!(decoder.finish().unwrap(), plan.data());
        let expected: [u8; 16] = Md5::digest(vec![0xFF; 0x5000]).into();
        assert_eq!(erased_md5(0x5000), expected);
    }
}
