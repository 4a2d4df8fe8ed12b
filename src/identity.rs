//! Device identity: the chip's MAC and the DPS registration ID formed from it.
//!
//! A registration ID must satisfy DPS's rules for symmetric-key attestation: at most 128
//! characters of lowercase ASCII letters, digits and `-` `.` `_` `:`, ending in a letter, digit or
//! `-` (<https://learn.microsoft.com/azure/iot-dps/concepts-symmetric-key-attestation>). The
//! station forms it from a template in `station.toml` whose only placeholder is `{mac}` (the MAC as
//! 12 lowercase hex digits), and validates the template once at load time, so that every MAC
//! yields a valid ID.

use std::fmt;
use std::str::FromStr;

/// The longest registration ID DPS accepts.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

/// Errors parsing a MAC, a registration ID or a registration-ID template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum IdentityError {
    /// The text is not a MAC address, or the address cannot be a device's own: all zeros,
    /// the broadcast address, or a multicast address. The same code wherever the MAC came
    /// from: an argument, a CSV row, a device.
    #[error("`{input}` is not a usable MAC address: {problem}")]
    #[diagnostic(
        code(station::identity::bad_mac),
        help(
            "Write the device's own MAC as six hex bytes: 24:0A:C4:12:34:56, 24-0a-c4-12-34-56 or 240ac4123456. A device reporting such a MAC has unprogrammed or damaged eFuses: set it aside."
        )
    )]
    BadMac {
        /// What was given.
        input: String,
        /// Why it is refused.
        problem: &'static str,
    },
    /// The registration ID breaks a DPS rule.
    #[error("registration ID `{id}` is invalid: {rule}")]
    #[diagnostic(
        code(station::identity::bad_registration_id),
        help(
            "DPS accepts at most 128 characters of lowercase letters, digits and - . _ :, ending in a letter, digit or -."
        )
    )]
    BadRegistrationId {
        /// The ID as given.
        id: String,
        /// Which rule it breaks.
        rule: String,
    },
    /// The registration-ID template has a placeholder other than `{mac}`, an unclosed brace, or
    /// no `{mac}` at all.
    #[error("registration ID template `{template}`: {problem}")]
    #[diagnostic(
        code(station::identity::bad_template),
        help(
            "Use {{mac}} for the MAC (12 lowercase hex digits) and only lowercase letters, digits and - . _ : around it, e.g. \"sensor-{{mac}}\"."
        )
    )]
    BadTemplate {
        /// The template as written.
        template: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A 48-bit MAC address, as burned into the ESP32's eFuse.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The 12 lowercase hex digits used in registration IDs and file names (`240ac4123456`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The MAC `n` addresses after this one (wrapping within 48 bits); used to number simulated
    /// devices from a base MAC.
    pub fn offset(&self, n: u64) -> Mac {
        let mut value = [0u8; 8];
        value[2..].copy_from_slice(&self.0);
        let next = u64::from_be_bytes(value).wrapping_add(n) & 0xFFFF_FFFF_FFFF;
        let mut out = [0u8; 6];
        out.copy_from_slice(&next.to_be_bytes()[2..]);
        Mac(out)
    }
}

impl FromStr for Mac {
    type Err = IdentityError;

    /// Parses `24:0A:C4:12:34:56`, `24-0a-c4-12-34-56` or `240ac4123456` (any case) and
    /// refuses an address no device can have ([`Mac::usable`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mac::parse_any(s)?.usable()
    }
}

impl Mac {
    /// Whether this address can be a device's own: not all zeros (an eFuse never programmed),
    /// not the broadcast address and not a multicast address (the first byte's low bit set),
    /// none of which a chip from the factory carries.
    pub fn usable(self) -> Result<Mac, IdentityError> {
        let problem = if self.0 == [0; 6] {
            "it is all zeros"
        } else if self.0 == [0xFF; 6] {
            "it is the broadcast address"
        } else if self.0[0] & 1 == 1 {
            "it is a multicast address (the first byte is odd)"
        } else {
            return Ok(self);
        };
        Err(IdentityError::BadMac {
            input: self.to_string(),
            problem,
        })
    }

    /// Parses the three written forms without asking whether the address is usable: for the
    /// database's own rows and for a simulator imitating a damaged chip.
    pub fn parse_any(s: &str) -> Result<Mac, IdentityError> {
        let bad = || IdentityError::BadMac {
            input: s.to_owned(),
            problem: "it is not six hex bytes",
        };
        let text = s.trim().as_bytes();
        // Where each byte's two hex digits start.
        let starts: [usize; 6] = match text.len() {
            12 => [0, 2, 4, 6, 8, 10],
            17 => {
                let separator = text[2];
                let separated = [2, 5, 8, 11, 14].iter().all(|&at| text[at] == separator);
                if !(separated && matches!(separator, b':' | b'-')) {
                    return Err(bad());
                }
                [0, 3, 6, 9, 12, 15]
            }
            _ => return Err(bad()),
        };
        let digit = |c: u8| char::from(c).to_digit(16);
        let mut bytes = [0u8; 6];
        for (byte, at) in bytes.iter_mut().zip(starts) {
            let (high, low) = digit(text[at]).zip(digit(text[at + 1])).ok_or_else(bad)?;
            *byte = (high * 16 + low) as u8;
        }
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    /// Colon-separated lowercase, the way esptool and espflash print it (`24:0a:c4:12:34:56`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl Mac {
    /// The colon-separated form in a stack buffer (manifests write one per row).
    fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, byte) in self.0.iter().enumerate() {
            out[i * 3] = HEX[usize::from(byte >> 4)];
            out[i * 3 + 1] = HEX[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.text();
        // Hex digits and colons only: always UTF-8.
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// A registration ID that satisfies DPS's rules.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Validates `id` against DPS's rules.
    pub fn new(id: impl Into<String>) -> Result<Self, IdentityError> {
        let id = id.into();
        match dps_rule_broken(&id) {
            None => Ok(RegistrationId(id)),
            Some(rule) => Err(IdentityError::BadRegistrationId { id, rule }),
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RegistrationId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegistrationId::new(s)
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistrationId({:?})", self.0)
    }
}

impl serde::Serialize for RegistrationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

fn is_allowed_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | ':')
}

/// The first DPS rule `id` breaks, in words, or `None` when it is valid.
fn dps_rule_broken(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("it is empty".to_owned());
    }
    if id.len() > MAX_REGISTRATION_ID_LEN {
        return Some(format!(
            "it is {} characters long, {} more than the {MAX_REGISTRATION_ID_LEN} allowed",
            id.len(),
            id.len() - MAX_REGISTRATION_ID_LEN
        ));
    }
    if let Some((at, c)) = id.char_indices().find(|&(_, c)| !is_allowed_char(c)) {
        let what = if c.is_ascii_uppercase() {
            "an uppercase letter"
        } else {
            "a character DPS does not allow"
        };
        return Some(format!("{c:?} at position {} is {what}", at + 1));
    }
    let last = id.chars().last()?;
    if !(last.is_ascii_alphanumeric() || last == '-') {
        return Some(format!(
            "it ends in {last:?}; it must end in a letter, digit or -"
        ));
    }
    None
}

/// A piece of a `{placeholder}` template, as split by [`tokenize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// Text taken as written.
    Text(&'a str),
    /// The name between braces.
    Placeholder(&'a str),
}

/// Splits a template into text and `{name}` placeholders; the error says what is malformed and
/// where (1-based character position).
pub(crate) fn tokenize(template: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        let position = template.len() - rest.len() + at + 1;
        if rest.as_bytes()[at] == b'}' {
            return Err(format!("unmatched `}}` at position {position}"));
        }
        if at > 0 {
            tokens.push(Token::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&close| after.as_bytes()[close] == b'}')
            .ok_or_else(|| format!("the `{{` at position {position} is never closed"))?;
        tokens.push(Token::Placeholder(&after[..close]));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest));
    }
    Ok(tokens)
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Mac,
}

/// The registration-ID template of `station.toml` (`[dps].registration_id`), validated so that
/// every MAC renders to a valid DPS registration ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationIdTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl RegistrationIdTemplate {
    /// Parses and validates a template such as `sensor-{mac}`.
    pub fn parse(template: &str) -> Result<Self, IdentityError> {
        let bad = |problem: String| IdentityError::BadTemplate {
            template: template.to_owned(),
            problem,
        };
        let mut pieces = Vec::new();
        for token in tokenize(template).map_err(bad)? {
            match token {
                Token::Text(text) => pieces.push(Piece::Literal(text.to_owned())),
                Token::Placeholder("mac") => pieces.push(Piece::Mac),
                Token::Placeholder(other) => {
                    return Err(bad(format!(
                        "unknown placeholder `{{{other}}}`; the only placeholder is {{mac}}"
                    )));
                }
            }
        }
        if !pieces.contains(&Piece::Mac) {
            return Err(bad(
                "it has no {mac}, so every device would get the same registration ID".to_owned(),
            ));
        }
        let parsed = RegistrationIdTemplate {
            source: template.to_owned(),
            pieces,
        };
        // {mac} always renders as 12 lowercase hex digits, so one rendering stands for all MACs:
        // the length is fixed and the characters around the MAC are the same for every device.
        let sample = parsed.render_unchecked(&Mac([0; 6]));
        if let Some(rule) = dps_rule_broken(&sample) {
            return Err(bad(format!(
                "it would yield invalid registration IDs such as `{sample}`: {rule}"
            )));
        }
        Ok(parsed)
    }

    /// The template as written in `station.toml`.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The length of every registration ID this template yields.
    pub fn rendered_len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(text) => text.len(),
                Piece::Mac => 12,
            })
            .sum()
    }

    /// The registration ID of the device with this MAC.
    pub fn render(&self, mac: &Mac) -> RegistrationId {
        // Validity was proven for every MAC in `parse`.
        RegistrationId(self.render_unchecked(mac))
    }

    fn render_unchecked(&self, mac: &Mac) -> String {
        let mut out = String::with_capacity(self.rendered_len());
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Mac => out.push_str(&mac.hex()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_the_three_spellings_to_the_same_bytes() {
        let expected = Mac([0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]);
        for text in [
            "24:0A:C4:12:34:56",
            "24-0a-c4-12-34-56",
            "240ac4123456",
            " 240AC4123456\n",
        ] {
            assert_eq!(text.parse::<Mac>().unwrap(), expected, "{text}");
        }
        assert_eq!(expected.hex(), "240ac4123456");
        assert_eq!(expected.to_string(), "24:0a:c4:12:34:56");
        assert_eq!(
            serde_json::to_string(&expected).unwrap(),
            "\"24:0a:c4:12:34:56\""
        );
    }

    #[test]
    fn mac_rejects_malformed_text() {
        for text in [
            "",
            "24:0A:C4:12:34",
            "24:0A:C4:12:34:5G",
            "24:0A-C4:12:34:56x",
            "24.0a.c4.12.34.56",
            "240ac41234567",
            "2:40A:C4:12:34:56",
        ] {
            let err = text.parse::<Mac>().unwrap_err();
            assert!(
                matches!(err, IdentityError::BadMac { .. }),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn mac_offset_counts_and_wraps_within_48_bits() {
        let base: Mac = "24:0a:c4:00:00:ff".parse().unwrap();
        assert_eq!(base.offset(1).to_string(), "24:0a:c4:00:01:00");
        let top = Mac([0xff; 6]);
        assert_eq!(top.offset(1), Mac([0; 6]));
    }

    #[test]
    fn registration_id_rules() {
        assert!(RegistrationId::new("sensor-240ac4123456").is_ok());
        assert!(RegistrationId::new("a.b_c:d-").is_ok());
        assert!(RegistrationId::new("x".repeat(128)).is_ok());
        for (id, needle) in [
            ("", "empty"),
            ("Sensor-1", "uppercase"),
            ("sensor 1", "does not allow"),
            ("sensor.", "ends in"),
            ("sensor_", "ends in"),
        ] {
            match RegistrationId::new(id) {
                Err(IdentityError::BadRegistrationId { rule, .. }) => {
                    assert!(rule.contains(needle), "{id}: {rule}")
                }
                other => panic!("{id}: {other:?}"),
            }
        }
        let long = RegistrationId::new("x".repeat(129)).unwrap_err();
        assert!(
            long.to_string().contains("1 more than the 128 allowed"),
            "{long}"
        );
    }

    #[test]
    fn template_renders_lowercase_hex_mac() {
        let template = RegistrationIdTemplate::parse("sensor-{mac}").unwrap();
        let mac: Mac = "24:0A:C4:12:34:56".parse().unwrap();
        assert_eq!(template.render(&mac).as_str(), "sensor-240ac4123456");
        assert_eq!(template.rendered_len(), 19);
        let twice = RegistrationIdTemplate::parse("{mac}.{mac}").unwrap();
        assert_eq!(twice.render(&mac).as_str(), "240ac4123456.240ac4123456");
    }

    #[test]
    fn template_that_can_yield_an_invalid_id_is_refused() {
        for (template, needle) in [
            ("sensor", "no {mac}"),
            ("sensor-{MAC}", "unknown placeholder `{MAC}`"),
            ("sensor-{serial}", "unknown placeholder"),
            ("sensor-{mac", "never closed"),
            ("sensor}-{mac}", "unmatched `}`"),
            ("Sensor-{mac}", "uppercase"),
            ("{mac}.", "ends in"),
            ("sensor {mac}", "does not allow"),
        ] {
            let err = RegistrationIdTemplate::parse(template).unwrap_err();
            assert!(err.to_string().contains(needle), "{template}: {err}");
        }
        let long = format!("{}-{{mac}}", "a".repeat(116));
        let err = RegistrationIdTemplate::parse(&long).unwrap_err();
        assert!(err.to_string().contains("129 characters"), "{err}");
        assert!(RegistrationIdTemplate::parse(&format!("{}-{{mac}}", "a".repeat(115))).is_ok());
    }
}
