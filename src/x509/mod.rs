//! X.509 attestation: the signing CA the station holds, and the per-unit credentials it issues.
//!
//! With X.509 attestation a DPS enrollment group trusts a CA certificate instead of a group
//! key, and each device proves its identity in the TLS handshake with its own private key and a
//! certificate chained to that CA, whose subject common name is the device's registration ID
//! ([DPS X.509 attestation], [DPS X.509 certificate requirements]). The station plays the
//! factory's issuing CA:
//!
//! - [`SigningCa::load`] reads `ca_cert_file`, the optional `ca_chain_file` and `ca_key_file`,
//!   with the refusals the group key file has (owner-only permissions, empty file, wrong kind of
//!   PEM, several keys, an encrypted key without its passphrase) plus those a CA needs: the key
//!   must be the certificate's, the certificate must be a CA (`CA:TRUE`) allowed to sign
//!   certificates (`keyCertSign`), valid now, and the chain must lead up from it, each link's
//!   signature checked. [`SigningCa::warnings`] tells `station check` what needs attention
//!   soon (an expiry within [`EXPIRY_WARNING_DAYS`]).
//! - [`SigningCa::issue`] makes one unit's [`DeviceCredentials`]: a fresh ECDSA P-256 (default)
//!   or RSA-2048 key pair and an RFC 5280 certificate for it, plus the records' facts (serial,
//!   [`Thumbprint`], validity). The device key exists only in a [`DevicePrivateKey`], which
//!   never prints and zeroizes on drop, until it is written into the flash image
//!   ([`DeviceCredentials::nvs_values`] or [`DeviceCredentials::esp_secure_cert`]).
//!
//! Crypto backends, chosen deliberately: `ring` signs with the CA key and verifies chain
//! signatures (it is already the station's TLS provider, constant-time, and refuses RSA keys
//! under 2048 bits); RustCrypto generates device keys (`p256`; `rsa`, because ring cannot
//! generate RSA keys, and the station never signs or decrypts with it, so the `rsa` crate's
//! timing advisory on private-key operations does not apply) and reads and writes the key
//! formats (`pkcs8` with PBES2 decryption, `sec1`); `x509-cert` builds the certificate. Not
//! `rcgen`: it rebuilds the issuer name from a map keyed by attribute type, so a CA named
//! `DC=corp,DC=example,CN=...` would issue certificates whose issuer is not its subject; here
//! the CA's subject is carried over unchanged. `aws-lc-rs` would add a C/CMake build.
//!
//! [DPS X.509 attestation]: https://learn.microsoft.com/azure/iot-dps/concepts-x509-attestation
//! [DPS X.509 certificate requirements]: https://learn.microsoft.com/azure/iot-dps/concepts-x509-attestation#x509-certificates

mod ca;
mod error;
mod file;
mod issue;
mod key;

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

pub use ca::{CaFiles, CaWarning, ChainCertificate, EXPIRY_WARNING_DAYS, SigningCa};
pub use error::X509Error;
pub use issue::{
    DeviceCredentials, DevicePrivateKey, IssuePolicy, MAX_CERT_DAYS, NOT_BEFORE_BACKDATE, NvsValues,
};

/// The NVS placeholders X.509 attestation adds, filled by [`DeviceCredentials::nvs_values`].
pub const NVS_PLACEHOLDERS: [&str; 3] = ["device_cert", "device_private_key", "ca_chain"];

/// The device key's type (`[dps] key_type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum KeyType {
    /// ECDSA on NIST P-256 (`ecdsa-p256`), the default: small, fast, and accelerated on the
    /// ESP32's mbedTLS.
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// RSA with a 2048-bit modulus (`rsa-2048`), for back ends that require RSA.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    /// The configuration spelling (`ecdsa-p256`, `rsa-2048`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(KeyType::EcdsaP256),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            other => Err(format!(
                "unknown key type `{other}`; use `ecdsa-p256` or `rsa-2048`"
            )),
        }
    }
}

/// A certificate's SHA-256 thumbprint: the SHA-256 of its DER, 64 uppercase hex digits without
/// separators, as the Azure portal and `az iot` show certificate thumbprints (and as
/// `openssl x509 -noout -fingerprint -sha256` prints them, less the colons).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Thumbprint(String);

impl Thumbprint {
    /// The thumbprint of a DER certificate.
    pub fn of(der: &[u8]) -> Thumbprint {
        Thumbprint(hex::encode_upper(Sha256::digest(der)))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The subject common name (CN) of a DER certificate: what DPS takes as the registration ID of
/// a device that authenticates with it. `None` when the certificate does not parse or has no
/// CN.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    use der::Decode as _;
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let name = certificate
        .tbs_certificate()
        .subject()
        .common_name()
        .ok()??;
    Some(name.value().into_owned())
}

/// What an operator reads of a certificate: who it names, who signed it, its serial, its
/// validity and its thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateSummary {
    /// Its subject (RFC 4514).
    pub subject: String,
    /// Its issuer (RFC 4514).
    pub issuer: String,
    /// Its serial number, uppercase hex (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// SHA-256 of its DER, uppercase hex.
    pub thumbprint: Thumbprint,
}

impl CertificateSummary {
    /// The summary of a PEM certificate (the first block of `pem_text`); `None` when it is
    /// not one.
    pub fn of_pem(pem_text: &str) -> Option<CertificateSummary> {
        use der::Decode as _;
        let block = pem::parse(pem_text).ok()?;
        if block.tag() != "CERTIFICATE" {
            return None;
        }
        let certificate = x509_cert::Certificate::from_der(block.contents()).ok()?;
        let tbs = certificate.tbs_certificate();
        let validity = tbs.validity();
        let time = |t: std::time::Duration| rfc3339(time::OffsetDateTime::UNIX_EPOCH + t);
        Some(CertificateSummary {
            subject: tbs.subject().to_string(),
            issuer: tbs.issuer().to_string(),
            serial: hex::encode_upper(tbs.serial_number().as_bytes()),
            not_before: time(validity.not_before.to_unix_duration()),
            not_after: time(validity.not_after.to_unix_duration()),
            thumbprint: Thumbprint::of(block.contents()),
        })
    }
}

/// RFC 3339 for messages.
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests;
