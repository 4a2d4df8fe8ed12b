//! The boot log as lines, and the verdict on them: pure, fed bytes as they come.
//!
//! [`Lines`] cuts the console's bytes into lines (`\r\n`, `\n` or a lone `\r`), drops ESP-IDF's
//! ANSI colour codes, bounds a line's length and counts the bytes that are not text (another
//! baud rate reads as such). [`Judge`] looks at each line in order: a second ROM reset banner
//! (`rst:0x...`) is a reset loop; a `fail` pattern fails the unit at once; the unit passes
//! when every `expect` pattern has been seen, each in some line, in any order. So a `fail`
//! line beats an `expect` line that comes after it.

use super::BootError;

/// The longest line kept; a longer one is cut there and goes on as the next line.
pub(super) const MAX_LINE: usize = 512;

/// Splits console bytes into text lines.
#[derive(Debug, Default)]
pub(super) struct Lines {
    current: Vec<u8>,
    /// Inside an ANSI escape sequence (`ESC [ ... final byte`).
    escape: Escape,
    /// Bytes that were not text.
    pub(super) garbage: u64,
    /// Bytes seen.
    pub(super) bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// After `ESC [`, until a byte in `@`..=`~`.
    Csi,
}

impl Lines {
    /// Feeds bytes; calls `line` with each complete line (without its line end).
    pub(super) fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(String)) {
        for &byte in bytes {
            self.bytes += 1;
            match (self.escape, byte) {
                (Escape::Start, b'[') => {
                    self.escape = Escape::Csi;
                    continue;
                }
                (Escape::Start, _) => self.escape = Escape::None,
                (Escape::Csi, 0x40..=0x7E) => {
                    self.escape = Escape::None;
                    continue;
                }
                (Escape::Csi, _) => continue,
                (Escape::None, _) => {}
            }
            match byte {
                0x1B => self.escape = Escape::Start,
                b'\n' | b'\r' => {
                    if !self.current.is_empty() {
                        line(self.take());
                    }
                }
                b'\t' | 0x20..=0x7E => self.current.push(byte),
                // UTF-8 text beyond ASCII: kept; stray bytes are counted as garbage below.
                0x80..=0xFF => self.current.push(byte),
                _ => self.garbage += 1,
            }
            if self.current.len() >= MAX_LINE {
                line(self.take());
            }
        }
    }

    /// The text of an unfinished last line, if any.
    pub(super) fn finish(&mut self) -> Option<String> {
        (!self.current.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.current);
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let bytes = e.into_bytes();
                let text = String::from_utf8_lossy(&bytes);
                self.garbage += text.matches(char::REPLACEMENT_CHARACTER).count() as u64;
                text.into_owned()
            }
        }
    }
}

/// What the judge says after a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Keep reading.
    Pending,
    /// Every expected pattern was seen.
    Pass,
    /// The unit fails.
    Fail(BootError),
}

/// The verdict on one unit's boot log, line by line.
#[derive(Debug)]
pub(super) struct Judge<'a> {
    expect: &'a [String],
    fail: &'a [String],
    seen: Vec<bool>,
    banners: u32,
    /// Lines with text in them.
    pub(super) lines: u64,
}

impl<'a> Judge<'a> {
    /// A judge for the rendered `expect` and `fail` patterns of one unit.
    pub(super) fn new(expect: &'a [String], fail: &'a [String]) -> Self {
        Judge {
            expect,
            fail,
            seen: vec![false; expect.len()],
            banners: 0,
            lines: 0,
        }
    }

    /// Judges one line. `quoted` is the line as it may be shown (redacted); the patterns are
    /// matched against `line` itself, which never leaves the judge.
    pub(super) fn line(&mut self, line: &str, quoted: impl FnOnce() -> String) -> Verdict {
        let text = line.trim();
        if text.is_empty() {
            return Verdict::Pending;
        }
        if is_text(text) {
            self.lines += 1;
        }
        // The ROM's banner opens every boot: the first is the reset the station asked for.
        if text.starts_with("rst:0x") {
            self.banners += 1;
            if self.banners > 1 {
                return Verdict::Fail(BootError::ResetLoop { line: quoted() });
            }
        }
        if let Some(pattern) = self.fail.iter().find(|p| text.contains(p.as_str())) {
            return Verdict::Fail(super::error::classify(quoted(), pattern.clone()));
        }
        for (pattern, seen) in self.expect.iter().zip(self.seen.iter_mut()) {
            *seen |= text.contains(pattern.as_str());
        }
        if self.seen.iter().all(|&s| s) {
            Verdict::Pass
        } else {
            Verdict::Pending
        }
    }

    /// The expected patterns not seen yet.
    pub(super) fn missing(&self) -> Vec<String> {
        self.expect
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Whether a line reads as text: mostly printable ASCII, as everything ESP-IDF and the ROM
/// print, rather than bytes at another baud rate.
fn is_text(line: &str) -> bool {
    let printable = line
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .count();
    printable * 2 > line.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> (Vec<String>, Lines) {
        let mut splitter = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l| out.push(l));
        }
        if let Some(last) = splitter.finish() {
            out.push(last);
        }
        (out, splitter)
    }

    #[test]
    fn lines_are_cut_at_any_line_end_across_reads_without_colour_codes() {
        let (out, splitter) = lines(&[
            b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x10 (RTC",
            b"WDT_RTC_RESET)\n\x1b[0;32mI (31) boot: ESP-IDF v5.1.2\x1b[0m\r",
            b"\nno end",
        ]);
        assert_eq!(
            out,
            [
                "ets Jul 29 2019 12:21:46",
                "rst:0x10 (RTCWDT_RTC_RESET)",
                "I (31) boot: ESP-IDF v5.1.2",
                "no end",
            ]
        );
        assert_eq!(splitter.garbage, 0);
    }

    #[test]
    fn bytes_at_another_baud_rate_count_as_garbage_and_long_lines_are_cut() {
        let (out, splitter) = lines(&[&[0x00, 0xF8, 0x80, 0x07, b'a', 0xFE]]);
        assert_eq!(out.len(), 1);
        assert_eq!(splitter.garbage, 5, "{out:?}");
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let (out, _) = lines(&[&long]);
        assert_eq!(
            out.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 3]
        );
    }

    fn judge_all(expect: &[&str], fail: &[&str], log: &[&str]) -> (Verdict, Vec<String>) {
        let expect: Vec<String> = expect.iter().map(|s| (*s).to_owned()).collect();
        let fail: Vec<String> = fail.iter().map(|s| (*s).to_owned()).collect();
        let mut judge = Judge::new(&expect, &fail);
        for line in log {
            match judge.line(line, || (*line).to_owned()) {
                Verdict::Pending => {}
                verdict => return (verdict, judge.missing()),
            }
        }
        (Verdict::Pending, judge.missing())
    }

    #[test]
    fn every_expected_pattern_must_appear_in_any_order() {
        let expect = ["dps: registration id sensor-1", "dps: ID scope 0ne"];
        let (verdict, missing) = judge_all(&expect, &[], &["I (1) dps: registration id sensor-1"]);
        assert_eq!(verdict, Verdict::Pending);
        assert_eq!(missing, ["dps: ID scope 0ne"]);
        let (verdict, _) = judge_all(
            &expect,
            &[],
            &[
                "I (1) dps: registration id sensor-1",
                "I (2) dps: ID scope 0ne00ABC",
            ],
        );
        assert_eq!(verdict, Verdict::Pass);
    }

    #[test]
    fn a_fail_line_beats_an_expected_line_after_it_and_is_classified() {
        let (verdict, _) = judge_all(
            &["registration id sensor-1"],
            &["Guru Meditation Error", "PSRAM ID read error"],
            &[
                "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.",
                "I (1) dps: registration id sensor-1",
            ],
        );
        assert!(
            matches!(&verdict, Verdict::Fail(BootError::Panic { line, .. }) if line.starts_with("Guru")),
            "{verdict:?}"
        );
        let (verdict, _) = judge_all(
            &["x"],
            &["PSRAM ID read error"],
            &["E (214) quad_psram: PSRAM ID read error: 0xffffffff"],
        );
        assert!(matches!(verdict, Verdict::Fail(BootError::Psram { .. })));
    }

    #[test]
    fn a_second_rom_banner_is_a_reset_loop() {
        let (verdict, _) = judge_all(
            &["registration id"],
            &["TG1WDT_SYS_RESET"],
            &[
                "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                "I (329) main_task: Calling app_main()",
                "rst:0x8 (TG1WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
            ],
        );
        assert_eq!(
            verdict,
            Verdict::Fail(BootError::ResetLoop {
                line: "rst:0x8 (TG1WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)".to_owned()
            })
        );
    }

    #[test]
    fn fail_lines_are_classified_by_what_the_firmware_said() {
        use super::super::error::classify;
        let code = |line: &str| {
            let error = classify(line.to_owned(), "p".to_owned());
            miette::Diagnostic::code(&error).unwrap().to_string()
        };
        assert_eq!(
            code("abort() was called at PC 0x40081f2b on core 0"),
            "station::boot::panic"
        );
        assert_eq!(
            code("E (224) cpu_start: Failed to init external RAM!"),
            "station::boot::psram"
        );
        assert_eq!(
            code("E BOD: Brownout detector was triggered"),
            "station::boot::brownout"
        );
        assert_eq!(
            code("Guru Meditation Error: Core  0 panic'ed (Interrupt wdt timeout on CPU0)."),
            "station::boot::panic"
        );
        assert_eq!(
            code("E (5012) task_wdt: Task watchdog got triggered."),
            "station::boot::watchdog"
        );
        assert_eq!(code("invalid header: 0xffffffff"), "station::boot::no_app");
        assert_eq!(
            code("E (400) sensor: self-test failed"),
            "station::boot::fail_pattern"
        );
    }
}
