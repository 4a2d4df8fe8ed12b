//! Building images: entries in order, each padded and CRC'd, closed by the integrity entry.

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{
    FOOTER_LEN, HEADER_LEN, PARTITION_SIZE, SecureCertError, TLV_MAGIC, TlvType, crc, padding,
};
use crate::armor::{pem_lf, pem_lf_secret};

/// One entry to write.
#[derive(Clone, Copy)]
pub struct Tlv<'a> {
    /// Its type.
    pub tlv_type: TlvType,
    /// Its subtype (0 for the first entry of a type).
    pub subtype: u8,
    /// Its flags byte (0 for plaintext data).
    pub flags: u8,
    /// Its data, exactly as stored (PEM text includes its NUL).
    pub data: &'a [u8],
}

impl std::fmt::Debug for Tlv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tlv")
            .field("tlv_type", &self.tlv_type)
            .field("subtype", &self.subtype)
            .field("flags", &self.flags)
            .field("len", &self.data.len())
            .finish()
    }
}

/// The image holding `entries` in order, followed by an integrity entry (type 9, subtype 0)
/// with the SHA-256 of everything before it, as the reference tool closes every image.
/// Entries with empty data are left out, as the tool leaves them out. Fails when an entry is
/// longer than 65535 bytes or the image would exceed [`PARTITION_SIZE`].
///
/// The image holds private keys in clear, so it is zeroized when dropped.
pub fn build(entries: &[Tlv<'_>]) -> Result<Zeroizing<Vec<u8>>, SecureCertError> {
    let needed: usize = entries
        .iter()
        .filter(|entry| !entry.data.is_empty())
        .map(|entry| entry_len(entry.data.len()))
        .sum::<usize>()
        + entry_len(32);
    if needed > PARTITION_SIZE {
        return Err(SecureCertError::DoesNotFit {
            len: needed,
            max: PARTITION_SIZE,
        });
    }
    let mut image = Zeroizing::new(Vec::with_capacity(needed));
    for entry in entries.iter().filter(|entry| !entry.data.is_empty()) {
        append(&mut image, entry)?;
    }
    let digest = Sha256::digest(image.as_slice());
    append(
        &mut image,
        &Tlv {
            tlv_type: TlvType::INTEGRITY,
            subtype: 0,
            flags: 0,
            data: &digest,
        },
    )?;
    debug_assert_eq!(image.len(), needed);
    Ok(image)
}

/// The image for one device, as `esp-secure-cert-tool` writes it for `--ca-cert`,
/// `--device-cert` and `--private-key` (and, for a longer chain, for a CSV listing the CA
/// certificates as subtypes 0, 1, ...): `ca_chain[i]` as CA certificate subtype `i` (the CA
/// that signed the device certificate first), the device certificate, the private key, the
/// integrity entry.
///
/// Certificates are re-armoured the way the tool's `cryptography` library writes them
/// (64-column lines, `\n`), so CRLF or differently wrapped input gives the same image. The key
/// must be in OpenSSL's traditional form (`EC PRIVATE KEY`, `RSA PRIVATE KEY`), the form the
/// tool converts every key to; the station's [`crate::x509::DevicePrivateKey`] is.
pub fn device_image(
    ca_chain: &[&str],
    device_cert: &str,
    private_key: &str,
) -> Result<Zeroizing<Vec<u8>>, SecureCertError> {
    if ca_chain.len() > usize::from(u8::MAX) {
        return Err(SecureCertError::BadPem {
            what: "CA chain".to_owned(),
            problem: format!(
                "{} certificates; at most 255 subtypes exist",
                ca_chain.len()
            ),
        });
    }
    let ca_certs: Vec<Vec<u8>> = ca_chain
        .iter()
        .enumerate()
        .map(|(i, pem)| certificate_data(&format!("CA certificate {}", i + 1), pem))
        .collect::<Result<_, _>>()?;
    let device_cert = certificate_data("device certificate", device_cert)?;
    let private_key = private_key_data(private_key)?;

    let mut entries: Vec<Tlv<'_>> = ca_certs
        .iter()
        .zip(0u8..)
        .map(|(data, subtype)| Tlv {
            tlv_type: TlvType::CA_CERT,
            subtype,
            flags: 0,
            data,
        })
        .collect();
    entries.push(Tlv {
        tlv_type: TlvType::DEV_CERT,
        subtype: 0,
        flags: 0,
        data: &device_cert,
    });
    entries.push(Tlv {
        tlv_type: TlvType::PRIV_KEY,
        subtype: 0,
        flags: 0,
        data: &private_key,
    });
    build(&entries)
}

/// `image` followed by erased flash (`0xFF`) up to `partition_size`: what to flash so that
/// nothing of an earlier image survives past the new one's end (the device reads entries
/// until the magic stops, and would find an old entry of a type the new image lacks).
pub fn padded(image: &[u8], partition_size: usize) -> Result<Zeroizing<Vec<u8>>, SecureCertError> {
    if image.len() > partition_size {
        return Err(SecureCertError::DoesNotFit {
            len: image.len(),
            max: partition_size,
        });
    }
    let mut padded = Zeroizing::new(Vec::with_capacity(partition_size));
    padded.extend_from_slice(image);
    padded.resize(partition_size, 0xFF);
    Ok(padded)
}

/// Bytes an entry with `data_len` bytes of data takes.
fn entry_len(data_len: usize) -> usize {
    HEADER_LEN + data_len + padding(data_len) + FOOTER_LEN
}

fn append(image: &mut Vec<u8>, entry: &Tlv<'_>) -> Result<(), SecureCertError> {
    let len = u16::try_from(entry.data.len()).map_err(|_| SecureCertError::EntryTooLong {
        tlv: entry.tlv_type.to_string(),
        len: entry.data.len(),
    })?;
    let start = image.len();
    image.extend_from_slice(&TLV_MAGIC.to_le_bytes());
    image.extend_from_slice(&[entry.flags, 0, 0, 0, entry.tlv_type.0, entry.subtype]);
    image.extend_from_slice(&len.to_le_bytes());
    image.extend_from_slice(entry.data);
    image.resize(image.len() + padding(entry.data.len()), 0);
    let crc = crc(&image[start..]);
    image.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A certificate's entry data: canonical PEM and a NUL.
fn certificate_data(what: &str, text: &str) -> Result<Vec<u8>, SecureCertError> {
    let der = single_block(what, text, &["CERTIFICATE"])?.into_contents();
    let mut data = pem_lf("CERTIFICATE", &der).into_bytes();
    data.push(0);
    Ok(data)
}

/// The key's entry data: canonical PEM and a NUL, in zeroizing buffers throughout.
fn private_key_data(text: &str) -> Result<Zeroizing<Vec<u8>>, SecureCertError> {
    let block = single_block("private key", text, &["EC PRIVATE KEY", "RSA PRIVATE KEY"])?;
    let label = block.tag().to_owned();
    let der = Zeroizing::new(block.into_contents());
    let pem = pem_lf_secret(&label, &der);
    let mut data = Zeroizing::new(Vec::with_capacity(pem.len() + 1));
    data.extend_from_slice(pem.as_bytes());
    data.push(0);
    Ok(data)
}

fn single_block(what: &str, text: &str, labels: &[&str]) -> Result<pem::Pem, SecureCertError> {
    let bad = |problem: String| SecureCertError::BadPem {
        what: what.to_owned(),
        problem,
    };
    // The pem crate's error text can quote the input, which may be a key: name the kind only.
    let mut blocks = pem::parse_many(text).map_err(|_| bad("malformed PEM".to_owned()))?;
    match blocks.len() {
        0 => Err(bad("no PEM block".to_owned())),
        1 => {
            let block = blocks.remove(0);
            if labels.contains(&block.tag()) {
                Ok(block)
            } else {
                Err(bad(format!(
                    "a `{}` block where {} belongs",
                    block.tag(),
                    labels
                        .iter()
                        .map(|label| format!("`{label}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )))
            }
        }
        n => Err(bad(format!("{n} PEM blocks where one belongs"))),
    }
}
