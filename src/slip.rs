//! SLIP framing (RFC 1055) as the ESP serial loader uses it: every packet starts and ends with
//! `0xC0`; inside a packet `0xC0` travels as `0xDB 0xDC` and `0xDB` as `0xDB 0xDD`. Shared by
//! the device layer (which frames a few packets of its own) and the simulator.
//!
//! See <https://docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html#low-level-protocol>.
//!
//! [`Decoder`] frames the way the ESP32 ROM does (`shared/rom/README.md`, "SLIP framing"): the
//! `0xC0` that closes a frame does not open the next one. Between frames the ROM waits for an
//! opening `0xC0` and drops everything else, so after an unterminated frame the next frame's
//! opening `0xC0` closes the garbage (which is then executed) and that next frame is lost.
//! A `0xC0` right after an opening one is ignored, so `C0 C0` never makes an empty frame.

/// Frame delimiter.
const END: u8 = 0xC0;
/// Escape introducer.
const ESC: u8 = 0xDB;
/// Escaped `END`.
const ESC_END: u8 = 0xDC;
/// Escaped `ESC`.
const ESC_ESC: u8 = 0xDD;

/// The largest frame the decoder keeps. A 16 KiB flash block plus its header is well below;
/// bytes beyond it are dropped rather than buffered without bound.
const MAX_FRAME: usize = 64 * 1024;

/// Wraps `payload` in delimiters, escaping the bytes that need it.
pub fn encode(payload: &[u8]) -> Vec<u8> {
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

/// A streaming decoder with the ESP32 ROM's framing: feed it whatever the port delivered, get
/// back the complete frames.
#[derive(Debug, Default)]
pub struct Decoder {
    frame: Vec<u8>,
    /// An opening delimiter was seen and no closing one yet.
    in_frame: bool,
    escaped: bool,
}

impl Decoder {
    /// Consumes `bytes`, returning every frame completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for &byte in bytes {
            if byte == END {
                if !self.in_frame {
                    self.in_frame = true;
                } else if !self.frame.is_empty() {
                    frames.push(std::mem::take(&mut self.frame));
                    self.in_frame = false;
                }
                self.escaped = false;
                continue;
            }
            if !self.in_frame {
                continue;
            }
            let decoded = if self.escaped {
                self.escaped = false;
                match byte {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    // The ROM keeps the byte after a stray escape as it is.
                    other => other,
                }
            } else if byte == ESC {
                self.escaped = true;
                continue;
            } else {
                byte
            };
            if self.frame.len() < MAX_FRAME {
                self.frame.push(decoded);
            }
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
    fn bytes_between_frames_are_dropped() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(b"boot noise").is_empty());
        assert_eq!(decoder.feed(&encode(b"ok")), vec![b"ok".to_vec()]);
        assert!(decoder.feed(b"between").is_empty());
        assert_eq!(decoder.feed(&encode(b"next")), vec![b"next".to_vec()]);
    }

    #[test]
    fn the_closing_delimiter_does_not_open_the_next_frame() {
        // C0 A C0 B C0: A is a frame, B arrives while waiting and is dropped, the last C0
        // opens a frame that the following one's opening C0 does not close.
        let mut decoder = Decoder::default();
        assert_eq!(decoder.feed(&[END, 0x0A, END, 0x0B, END]), vec![vec![0x0A]]);
        assert_eq!(decoder.feed(&encode(b"sync")), vec![b"sync".to_vec()]);
    }

    #[test]
    fn lone_delimiters_make_no_frame_and_stray_escapes_keep_the_byte() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(&[END, END, END, END]).is_empty());
        assert_eq!(
            decoder.feed(&[END, 0x01, ESC, 0x02, END]),
            vec![vec![0x01, 0x02]]
        );
    }

    // Issue 13: the decoder on arbitrary bytes: never a panic, frames and buffer bounded by
    // MAX_FRAME whatever arrives, and any payload sent cleanly round-trips however the wire
    // is cut.
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
            fn a_runaway_frame_is_cut_not_buffered(fill in any::<u8>().prop_filter("not END", |b| *b != END)) {
                let mut decoder = Decoder::default();
                let mut wire = vec![END];
                wire.extend(std::iter::repeat_n(fill, MAX_FRAME * 2));
                prop_assert!(decoder.feed(&wire).is_empty());
                prop_assert!(decoder.frame.len() <= MAX_FRAME);
                // Its closing delimiter delivers at most MAX_FRAME bytes of it.
                let frames = decoder.feed(&[END]);
                prop_assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
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
