//! Reading images: walking the entries as `esp_secure_cert_mgr` does, checking every CRC and the
//! integrity entry.

use std::fmt;

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{FOOTER_LEN, HEADER_LEN, SecureCertError, TLV_MAGIC, TlvType, crc, padding};

/// A decoded image.
#[derive(Debug, Clone)]
pub struct Partition {
    /// The entries, in the order the device walks them (the integrity entry included).
    pub entries: Vec<ParsedTlv>,
    /// Where the entries end: the first offset without the TLV magic.
    pub end: usize,
    /// Whether the image closes with an integrity entry, and whether it matched.
    pub integrity: Integrity,
    /// Bytes after `end` that are not erased flash (`0xFF`): left-overs of an older image. The
    /// device does not read them, but a padded image has none.
    pub stale_bytes: usize,
}

/// The integrity entry's verdict. A mismatch is an error ([`SecureCertError::BadIntegrity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// No integrity entry (images made before esp-secure-cert-tool 2.4 have none).
    Absent,
    /// The SHA-256 it holds matches the entries before it.
    Verified,
}

/// One decoded entry.
#[derive(Debug, Clone)]
pub struct ParsedTlv {
    /// Its offset in the image.
    pub offset: usize,
    /// Its type.
    pub tlv_type: TlvType,
    /// Its subtype.
    pub subtype: u8,
    /// Its flags byte.
    pub flags: u8,
    /// Its data.
    pub data: TlvData,
}

/// An entry's data, by what it holds.
#[derive(Debug, Clone)]
pub enum TlvData {
    /// Text with its NUL removed (certificates: PEM).
    Text(String),
    /// A private key: shown only on request.
    Secret(SecretData),
    /// Anything else.
    Bytes(Vec<u8>),
}

/// Secret bytes from an image: `Debug` and `Display` redact them; zeroized when dropped.
#[derive(Clone)]
pub struct SecretData(Zeroizing<Vec<u8>>);

impl SecretData {
    /// The bytes (for a PEM key: the text, NUL removed). Every caller is a place the secret
    /// flows to: `inspect --show-secrets`, tests.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretData({} bytes, [redacted])", self.0.len())
    }
}

impl fmt::Display for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl ParsedTlv {
    /// The entry's data as an operator reads it: PEM text as is, other bytes in hex, the
    /// private key as `[redacted]` unless `show_secrets`.
    pub fn display_value(&self, show_secrets: bool) -> String {
        match &self.data {
            TlvData::Text(text) => text.clone(),
            TlvData::Secret(secret) if show_secrets => {
                String::from_utf8_lossy(secret.expose()).into_owned()
            }
            TlvData::Secret(secret) => format!("[redacted: {} bytes]", secret.expose().len()),
            TlvData::Bytes(bytes) => hex::encode(bytes),
        }
    }
}

/// Decodes an image (or a whole partition read from flash): the entries from offset 0 until
/// the TLV magic stops, every CRC checked, the integrity entry (if any) checked against the
/// bytes before it. Unlike the device, which checks an entry's CRC only when it looks the entry
/// up, the first damaged entry is an error: an image the station inspects should be exactly
/// what it built.
pub fn parse(image: &[u8]) -> Result<Partition, SecureCertError> {
    if !has_magic(image, 0) {
        return Err(SecureCertError::NotAnImage {
            reason: match image.get(..4) {
                None => format!("{} bytes, shorter than one TLV header", image.len()),
                Some([0xFF, 0xFF, 0xFF, 0xFF]) => "it starts with erased flash (0xFF)".to_owned(),
                Some(bytes) => format!("it starts with {}", hex::encode(bytes)),
            },
        });
    }
    let mut entries = Vec::new();
    let mut integrity = Integrity::Absent;
    let mut offset = 0;
    while has_magic(image, offset) {
        let header = &image[offset..offset + HEADER_LEN];
        let flags = header[4];
        let tlv_type = TlvType(header[8]);
        let subtype = header[9];
        let len = usize::from(u16::from_le_bytes([header[10], header[11]]));
        let crc_end = offset + HEADER_LEN + len + padding(len);
        let end = crc_end + FOOTER_LEN;
        if end > image.len() {
            return Err(SecureCertError::Truncated {
                tlv: tlv_type.to_string(),
                offset,
                len: image.len(),
            });
        }
        let stored = u32::from_le_bytes([
            image[crc_end],
            image[crc_end + 1],
            image[crc_end + 2],
            image[crc_end + 3],
        ]);
        let computed = crc(&image[offset..crc_end]);
        if stored != computed {
            return Err(SecureCertError::BadCrc {
                tlv: tlv_type.to_string(),
                offset,
                stored,
                computed,
            });
        }
        let data = &image[offset + HEADER_LEN..offset + HEADER_LEN + len];
        if tlv_type == TlvType::INTEGRITY {
            let computed = Sha256::digest(&image[..offset]);
            if data != computed.as_slice() {
                return Err(SecureCertError::BadIntegrity {
                    offset,
                    stored: hex::encode(data),
                    computed: hex::encode(computed),
                });
            }
            integrity = Integrity::Verified;
        }
        entries.push(ParsedTlv {
            offset,
            tlv_type,
            subtype,
            flags,
            data: classify(tlv_type, data),
        });
        offset = end;
    }
    let stale_bytes = image[offset..].iter().filter(|&&b| b != 0xFF).count();
    Ok(Partition {
        entries,
        end: offset,
        integrity,
        stale_bytes,
    })
}

fn has_magic(image: &[u8], offset: usize) -> bool {
    image
        .get(offset..offset + HEADER_LEN)
        .is_some_and(|header| header[..4] == TLV_MAGIC.to_le_bytes())
}

fn classify(tlv_type: TlvType, data: &[u8]) -> TlvData {
    let text = data.strip_suffix(&[0]).unwrap_or(data);
    if tlv_type == TlvType::PRIV_KEY {
        return TlvData::Secret(SecretData(Zeroizing::new(text.to_vec())));
    }
    let is_text = matches!(tlv_type, TlvType::CA_CERT | TlvType::DEV_CERT)
        && data.last() == Some(&0)
        && text.starts_with(b"-----BEGIN ");
    match std::str::from_utf8(text) {
        Ok(text) if is_text => TlvData::Text(text.to_owned()),
        _ => TlvData::Bytes(data.to_vec()),
    }
}
