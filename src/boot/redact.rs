//! What of a boot log may be kept: every line redacted before it is stored, shown or quoted,
//! and the excerpt bounded.
//!
//! A firmware that prints its credentials (a debug build, a careless log call) must not put
//! them into the station's database, its exports or an operator's screen. Three things are
//! redacted, whatever the firmware prints around them:
//!
//! - the unit's own device keys, wherever they appear;
//! - anything that looks like key material in base64: a run of 43 or more characters of the
//!   base64 alphabet (43 characters carry 32 bytes, the size of a DPS device key or an
//!   AES-256 or P-256 key). This also catches hex dumps of 32 bytes or more, which is intended;
//! - PEM private keys, from their `BEGIN ... PRIVATE KEY` line to their `END` line (a block
//!   cut off by the excerpt's end stays redacted to the end).

use std::collections::VecDeque;

use zeroize::Zeroizing;

/// What replaces a device key.
const DEVICE_KEY: &str = "[redacted: device key]";
/// What replaces key-like base64.
const KEY_LIKE: &str = "[redacted]";
/// What replaces a PEM private key block.
const PRIVATE_KEY: &str = "[redacted: PEM private key]";
/// The shortest base64 run taken for key material: 43 characters hold 32 bytes.
const KEY_LIKE_RUN: usize = 43;

/// Redacts the lines of one unit's boot log, in order (a PEM block spans lines).
pub(super) struct Redactor {
    secrets: Vec<Zeroizing<String>>,
    in_private_key: bool,
}

impl Redactor {
    /// A redactor that also removes `secrets` (the unit's device keys) wherever they appear.
    pub(super) fn new(secrets: Vec<Zeroizing<String>>) -> Self {
        Redactor {
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            in_private_key: false,
        }
    }

    /// The line as it may be kept; `None` for a line inside a PEM private key.
    pub(super) fn line(&mut self, line: &str) -> Option<String> {
        if self.in_private_key {
            if is_pem_end(line) {
                self.in_private_key = false;
            }
            return None;
        }
        if let Some(begin) = pem_begin(line) {
            // A block that ends on the same line is redacted whole; else until its END line.
            self.in_private_key = !is_pem_end(&line[begin..]);
            let before = self.scrub(&line[..begin]);
            return Some(format!("{before}{PRIVATE_KEY}"));
        }
        Some(self.scrub(line))
    }

    /// Removes the unit's keys and key-like base64 from one line.
    fn scrub(&self, line: &str) -> String {
        let mut text = line.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), DEVICE_KEY);
            }
        }
        redact_key_like(&text)
    }
}

/// Where a `-----BEGIN ... PRIVATE KEY-----` header starts in `line`.
fn pem_begin(line: &str) -> Option<usize> {
    let start = line.find("-----BEGIN ")?;
    line[start..].contains("PRIVATE KEY-----").then_some(start)
}

fn is_pem_end(line: &str) -> bool {
    line.find("-----END ")
        .is_some_and(|at| line[at..].contains("PRIVATE KEY-----"))
}

fn is_base64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '+' || c == '/'
}

/// Replaces every run of [`KEY_LIKE_RUN`] or more base64 characters (with its `=` padding).
fn redact_key_like(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(is_base64_char) {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let len = run.find(|c| !is_base64_char(c)).unwrap_or(run.len());
        let padded = len + run[len..].chars().take(2).take_while(|&c| c == '=').count();
        if len >= KEY_LIKE_RUN {
            out.push_str(KEY_LIKE);
        } else {
            out.push_str(&run[..padded]);
        }
        rest = &run[padded..];
    }
    out.push_str(rest);
    out
}

/// The last bytes of the redacted log, whole lines, at most `limit` bytes in all.
pub(super) struct Excerpt {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: usize,
    limit: usize,
}

/// Room kept for the note that says how much was dropped.
const NOTE_ROOM: usize = 64;

impl Excerpt {
    pub(super) fn new(limit: usize) -> Self {
        Excerpt {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            limit: limit.max(NOTE_ROOM * 2),
        }
    }

    /// Appends one redacted line, dropping the oldest ones beyond the limit.
    pub(super) fn push(&mut self, line: String) {
        let room = self.limit - NOTE_ROOM;
        let line = if line.len() + 1 > room {
            let mut cut = room.saturating_sub(4);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}...", &line[..cut])
        } else {
            line
        };
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > room {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len() + 1;
            self.dropped += old.len() + 1;
        }
    }

    /// The excerpt as text: a note of what was dropped, then the lines kept.
    pub(super) fn text(&self) -> String {
        let mut text = String::with_capacity(self.bytes + NOTE_ROOM);
        if self.dropped > 0 {
            text.push_str(&format!(
                "[{} earlier bytes of the boot log not kept]\n",
                self.dropped
            ));
        }
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Zm9vYmFyYmF6cXV4cXV1eHF1dXpxdXV6cXV1enF1dXo=";

    fn redactor() -> Redactor {
        Redactor::new(vec![Zeroizing::new(KEY.to_owned())])
    }

    #[test]
    fn the_units_key_is_redacted_wherever_it_appears() {
        let mut r = redactor();
        let line = r
            .line(&format!("I (339) dps: key={KEY}; again {KEY}"))
            .unwrap();
        assert!(!line.contains(KEY), "{line}");
        assert_eq!(
            line,
            "I (339) dps: key=[redacted: device key]; again [redacted: device key]"
        );
    }

    #[test]
    fn base64_of_32_bytes_or_more_is_redacted_and_shorter_text_is_not() {
        let mut r = Redactor::new(Vec::new());
        // Another key of 32 bytes (not the unit's): 44 characters with its padding.
        let other = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        assert_eq!(
            r.line(&format!("secret {other} end")).unwrap(),
            "secret [redacted] end"
        );
        // A 64-digit hex dump of 32 bytes.
        let hex = "a3".repeat(32);
        assert_eq!(r.line(&format!("sha {hex}")).unwrap(), "sha [redacted]");
        // What a boot log holds stays: registration IDs, addresses, short hashes, paths.
        for kept in [
            "I (339) dps: registration id sensor-240ac4123456",
            "I (241) cpu_start: ELF file SHA256:  6f1ab0c3e2d4b5a6...",
            "load:0x3fff0030,len:7104",
            "Backtrace: 0x400d5e37:0x3ffb4f30 0x400d6b49:0x3ffb4f60",
            "/home/build/esp-idf/components/esp_system/port/cpu_start.c",
        ] {
            assert_eq!(r.line(kept).unwrap(), kept);
        }
    }

    #[test]
    fn pem_private_keys_are_redacted_across_lines_and_certificates_are_not() {
        let mut r = redactor();
        let log = [
            "I (400) tls: client key:",
            "-----BEGIN EC PRIVATE KEY-----",
            "MHcCAQEEIBkg4LVWM9nuwNSk3yBTk8PJ7rZ",
            "AwEHoUQDQgAE",
            "-----END EC PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "MIIB",
            "I (401) tls: ready",
        ];
        let kept: Vec<String> = log.iter().filter_map(|l| r.line(l)).collect();
        assert_eq!(
            kept,
            [
                "I (400) tls: client key:",
                "[redacted: PEM private key]",
                "-----BEGIN CERTIFICATE-----",
                "MIIB",
                "I (401) tls: ready",
            ]
        );
        // On one line, and a block never closed.
        let mut r = redactor();
        assert_eq!(
            r.line("key -----BEGIN PRIVATE KEY----- MII -----END PRIVATE KEY-----")
                .unwrap(),
            "key [redacted: PEM private key]"
        );
        assert_eq!(r.line("after").unwrap(), "after");
        assert_eq!(
            r.line("-----BEGIN RSA PRIVATE KEY-----").unwrap(),
            "[redacted: PEM private key]"
        );
        assert_eq!(r.line("I (5) app: anything"), None);
    }

    #[test]
    fn the_excerpt_keeps_the_last_whole_lines_within_its_limit() {
        let mut excerpt = Excerpt::new(256);
        for i in 0..100 {
            excerpt.push(format!("I ({i:03}) boot: line number {i:03}"));
        }
        let text = excerpt.text();
        assert!(text.len() <= 256, "{} bytes", text.len());
        assert!(text.starts_with('['), "{text}");
        assert!(text.ends_with("I (099) boot: line number 099\n"), "{text}");
        let dropped: usize = text[1..].split(' ').next().unwrap().parse().unwrap();
        let kept = text.lines().skip(1).map(|l| l.len() + 1).sum::<usize>();
        let written = "I (000) boot: line number 000\n".len();
        assert_eq!(dropped + kept, 100 * written);
        // One line longer than the whole excerpt is cut, not lost.
        let mut excerpt = Excerpt::new(256);
        excerpt.push("é".repeat(400));
        let text = excerpt.text();
        assert!(text.len() <= 256 && text.ends_with("...\n"), "{text}");
    }
}
