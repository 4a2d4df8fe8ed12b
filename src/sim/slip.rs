//! SLIP framing (RFC 1055) as the ESP serial loader uses it: every packet starts and ends with
//! `0xC0`; inside a packet `0xC0` travels as `0xDB 0xDC` and `0xDB` as `0xDB 0xDD`.
//!
//! See <https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html#low-level-protocol>.

/// Frame delimiter.
const END: u8 = 0xC0;
/// Escape introducer.
const ESC: u8 = 0xDB;
/// Escaped `END`.
const ESC_END: u8 = 0xDC;
/// Escaped `ESC`.
const ESC_ESC: u8 = 0xDD;

/// The largest frame the decoder keeps. A 16 KiB flash block plus its header is well below;
/// anything larger is line noise and is dropped rather than buffered without bound.
const MAX_FRAME: usize = 64 * 1024;

/// Wraps `payload` in delimiters, escaping the bytes that need it.
pub(crate) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 32 + 2);
    out.push(END);
    for &byte in payload {
        match byte {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            other => out.push(other),
        }
    }
    out.push(END);
    out
}

/// A streaming decoder: feed it whatever the port delivered, get back the complete frames.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    frame: Vec<u8>,
    in_frame: bool,
    escaped: bool,
    /// The current frame broke a rule (bad escape, too long) and is skipped up to the next `END`.
    poisoned: bool,
}

impl Decoder {
    /// Consumes `bytes`, returning every frame completed by them. Bytes outside a frame (before
    /// the first delimiter) are ignored, as are empty frames.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for &byte in bytes {
            if byte == END {
                if self.in_frame && !self.frame.is_empty() && !self.poisoned && !self.escaped {
                    frames.push(std::mem::take(&mut self.frame));
                }
                self.frame.clear();
                self.in_frame = true;
                self.escaped = false;
                self.poisoned = false;
                continue;
            }
            if !self.in_frame || self.poisoned {
                continue;
            }
            let decoded = if self.escaped {
                self.escaped = false;
                match byte {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    _ => {
                        self.poisoned = true;
                        continue;
                    }
                }
            } else if byte == ESC {
                self.escaped = true;
                continue;
            } else {
                byte
            };
            if self.frame.len() == MAX_FRAME {
                self.poisoned = true;
                continue;
            }
            self.frame.push(decoded);
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let payload = [0x01, END, 0x02, ESC, ESC_END, END, ESC];
        let wire = encode(&payload);
        assert_eq!(wire.first(), Some(&END));
        assert_eq!(wire.last(), Some(&END));
        assert_eq!(wire.iter().filter(|&&b| b == END).count(), 2);
        let frames = Decoder::default().feed(&wire);
        assert_eq!(frames, vec![payload.to_vec()]);
    }

    #[test]
    fn frames_split_across_reads_and_back_to_back() {
        let mut wire = encode(b"first");
        wire.extend(encode(b"second"));
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for chunk in wire.chunks(3) {
            frames.extend(decoder.feed(chunk));
        }
        assert_eq!(frames, vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn noise_before_a_frame_and_bad_escapes_are_dropped() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(b"boot noise").is_empty());
        assert!(decoder.feed(&[END, 0x01, ESC, 0x00, 0x02, END]).is_empty());
        assert_eq!(decoder.feed(&encode(b"ok")), vec![b"ok".to_vec()]);
    }

    // Issue 13: the decoder on arbitrary bytes: never a panic, frames and buffer bounded by
    // MAX_FRAME whatever arrives, and any payload round-trips however the wire is cut.
    mod properties {
        use proptest::prelude::*;

        use super::super::{Decoder, END, MAX_FRAME, encode};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic_and_stay_bounded(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..32)
            ) {
                let mut decoder = Decoder::default();
                let mut delivered = 0usize;
                for chunk in &chunks {
                    for frame in decoder.feed(chunk) {
                        prop_assert!(!frame.is_empty() && frame.len() <= MAX_FRAME);
                        delivered += frame.len();
                    }
                    prop_assert!(decoder.frame.len() <= MAX_FRAME);
                }
                prop_assert!(delivered <= chunks.iter().map(Vec::len).sum::<usize>());
            }

            #[test]
            fn a_runaway_frame_is_dropped_not_buffered(fill in any::<u8>().prop_filter("not END", |b| *b != END)) {
                let mut decoder = Decoder::default();
                let mut wire = vec![END];
                wire.extend(std::iter::repeat_n(fill, MAX_FRAME * 2));
                prop_assert!(decoder.feed(&wire).is_empty());
                prop_assert!(decoder.frame.len() <= MAX_FRAME);
                // The next good frame after the delimiter comes through.
                prop_assert_eq!(decoder.feed(&encode(b"ok")), vec![b"ok".to_vec()]);
            }

            #[test]
            fn payloads_round_trip_however_the_wire_is_cut(
                payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..8),
                cut in 1usize..64,
            ) {
                let wire: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
                let mut decoder = Decoder::default();
                let frames: Vec<Vec<u8>> = wire.chunks(cut).flat_map(|c| decoder.feed(c)).collect();
                prop_assert_eq!(frames, payloads);
            }
        }
    }
}
