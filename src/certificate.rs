//! PEM certificates the station hands to devices (a root CA stored by `[nvs.entries]`), checked
//! before any device gets one: a device with a root it cannot use fails in the field, where
//! nobody can reflash it.
//!
//! [`check_bundle`] parses every `CERTIFICATE` block of a PEM text as X.509 (RFC 5280) and
//! refuses an empty file, text that is not PEM certificates, a certificate already expired, and
//! the Baltimore CyberTrust Root, which Azure IoT Hub and DPS stopped using in 2023 (their TLS
//! certificates now chain to DigiCert Global Root G2). [`Bundle::expiring_within`] names the
//! certificates that expire soon, for a warning.

use sha2::{Digest as _, Sha256};

/// SHA-256 of the Baltimore CyberTrust Root's DER encoding (expired 2025-05-12).
const BALTIMORE_SHA256: [u8; 32] = [
    0x16, 0xAF, 0x57, 0xA9, 0xF6, 0x76, 0xB0, 0xAB, 0x12, 0x60, 0x95, 0xAA, 0x5E, 0xBA, 0xDE, 0xF2,
    0x2A, 0xB3, 0x11, 0x19, 0xD6, 0x44, 0xAC, 0x95, 0xCD, 0x4B, 0x93, 0xDB, 0xF3, 0xF2, 0x6A, 0xEB,
];

/// One certificate of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The subject, as RFC 4514 text.
    pub subject: String,
    /// The end of its validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl Certificate {
    /// The end of validity as a date (`2038-01-15`).
    pub fn expiry_date(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .map_or_else(|_| self.not_after.to_string(), |at| at.date().to_string())
    }
}

/// The certificates of one PEM text, all usable at the time of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// In file order.
    pub certificates: Vec<Certificate>,
}

impl Bundle {
    /// The certificates that expire within `seconds` of `now` (Unix seconds).
    pub fn expiring_within(&self, now: i64, seconds: i64) -> Vec<&Certificate> {
        self.certificates
            .iter()
            .filter(|c| c.not_after <= now.saturating_add(seconds))
            .collect()
    }
}

/// Why a PEM text cannot be given to a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// The file holds nothing (or only whitespace).
    #[error("the file is empty")]
    Empty,
    /// Not PEM, a PEM block of another kind, or a block that is not an X.509 certificate.
    #[error("{0}")]
    NotCertificate(String),
    /// A certificate's validity ended.
    #[error("the certificate {subject} expired on {date}")]
    Expired {
        /// Its subject.
        subject: String,
        /// Its expiry date.
        date: String,
    },
    /// The Baltimore CyberTrust Root, which Azure retired.
    #[error(
        "it is the Baltimore CyberTrust Root, which Azure IoT Hub and DPS no longer use: their TLS certificates chain to DigiCert Global Root G2 since 2023, so a device trusting only Baltimore cannot connect"
    )]
    RetiredAzureRoot,
}

/// Parses and checks a PEM bundle at `now` (Unix seconds).
pub fn check_bundle(text: &str, now: i64) -> Result<Bundle, CertificateProblem> {
    if text.trim().is_empty() {
        return Err(CertificateProblem::Empty);
    }
    let blocks = pem::parse_many(text.as_bytes())
        .map_err(|e| CertificateProblem::NotCertificate(format!("it is not PEM text: {e}")))?;
    if blocks.is_empty() {
        return Err(CertificateProblem::NotCertificate(
            "it holds no PEM block (`-----BEGIN CERTIFICATE-----`)".to_owned(),
        ));
    }
    let mut certificates = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        let ordinal = index + 1;
        if block.tag() != "CERTIFICATE" {
            return Err(CertificateProblem::NotCertificate(format!(
                "PEM block {ordinal} is a {}, not a CERTIFICATE",
                crate::support::shown(block.tag())
            )));
        }
        if Sha256::digest(block.contents()).as_slice() == BALTIMORE_SHA256 {
            return Err(CertificateProblem::RetiredAzureRoot);
        }
        let parsed =
            <x509_cert::Certificate as der::Decode>::from_der(block.contents()).map_err(|e| {
                CertificateProblem::NotCertificate(format!(
                    "PEM block {ordinal} is not an X.509 certificate: {e}"
                ))
            })?;
        let tbs = parsed.tbs_certificate();
        let subject = tbs.subject().to_string();
        if subject.contains("CN=Baltimore CyberTrust Root") {
            return Err(CertificateProblem::RetiredAzureRoot);
        }
        let not_after = i64::try_from(tbs.validity().not_after.to_unix_duration().as_secs())
            .unwrap_or(i64::MAX);
        let certificate = Certificate { subject, not_after };
        if not_after < now {
            return Err(CertificateProblem::Expired {
                date: certificate.expiry_date(),
                subject: certificate.subject,
            });
        }
        certificates.push(certificate);
    }
    Ok(Bundle { certificates })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGICERT_G2: &str = include_str!("../fixtures/certs/DigiCertGlobalRootG2.pem");
    const BALTIMORE: &str = include_str!("../fixtures/certs/BaltimoreCyberTrustRoot.pem");
    /// 2026-11-30T00:00:00Z.
    const NOW: i64 = 1_795_996_800;

    #[test]
    fn the_root_dps_uses_passes_and_reports_its_expiry() {
        let bundle = check_bundle(DIGICERT_G2, NOW).unwrap();
        assert_eq!(bundle.certificates.len(), 1);
        let root = &bundle.certificates[0];
        assert!(
            root.subject.contains("CN=DigiCert Global Root G2"),
            "{}",
            root.subject
        );
        assert_eq!(root.expiry_date(), "2038-01-15");
        assert!(bundle.expiring_within(NOW, 90 * 86_400).is_empty());
        // Eleven years on, it is about to expire.
        let later = root.not_after - 30 * 86_400;
        assert_eq!(bundle.expiring_within(later, 90 * 86_400).len(), 1);
        assert!(matches!(
            check_bundle(DIGICERT_G2, root.not_after + 1),
            Err(CertificateProblem::Expired { .. })
        ));
    }

    #[test]
    fn mistakes_are_refused() {
        assert_eq!(check_bundle("", NOW), Err(CertificateProblem::Empty));
        assert_eq!(check_bundle(" \n", NOW), Err(CertificateProblem::Empty));
        assert_eq!(
            check_bundle(BALTIMORE, NOW),
            Err(CertificateProblem::RetiredAzureRoot)
        );
        let both = format!("{DIGICERT_G2}{BALTIMORE}");
        assert_eq!(
            check_bundle(&both, NOW),
            Err(CertificateProblem::RetiredAzureRoot)
        );
        for text in [
            "just text",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(
                matches!(
                    check_bundle(text, NOW),
                    Err(CertificateProblem::NotCertificate(_))
                ),
                "{text}"
            );
        }
    }
}
