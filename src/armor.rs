//! PEM armour for DER: 64-column base64 lines and `\n` line ends, as OpenSSL and Python's
//! `cryptography` write it (RFC 7468 "strict" form), so that PEM text the station puts into a
//! flash image matches what Espressif's tools put there byte for byte.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

/// Characters of base64 per line.
const LINE: usize = 64;

/// `der` armoured under `label` (`CERTIFICATE`, ...).
pub(crate) fn pem_lf(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// [`pem_lf`] for a secret (a private key): every intermediate buffer is zeroized, and the
/// result is sized up front so that no reallocation leaves a copy behind (the `pem` crate's
/// encoder frees its intermediate base64 text without clearing it).
pub(crate) fn pem_lf_secret(label: &str, der: &[u8]) -> Zeroizing<String> {
    let base64 = Zeroizing::new(BASE64.encode(der));
    let capacity = begin_end_len(label) + base64.len() + base64.len().div_ceil(LINE);
    let mut pem = Zeroizing::new(String::with_capacity(capacity));
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    for line in base64.as_bytes().chunks(LINE) {
        // Base64 is ASCII, so every chunk is UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    debug_assert_eq!(pem.len(), capacity);
    pem
}

/// The length of the BEGIN and END lines for `label`, line ends included.
fn begin_end_len(label: &str) -> usize {
    "-----BEGIN -----\n".len() + "-----END -----\n".len() + 2 * label.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_plain_armour_agree() {
        for len in [0, 1, 47, 48, 49, 121, 1190] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let plain = pem_lf("EC PRIVATE KEY", &der);
            assert_eq!(plain, *pem_lf_secret("EC PRIVATE KEY", &der), "{len}");
            assert!(
                plain
                    .lines()
                    .all(|line| line.len() <= LINE || line.starts_with("-----"))
            );
            assert!(!plain.contains('\r'));
        }
    }
}
