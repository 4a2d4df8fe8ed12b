//! Loading the signing CA: its certificate, the chain above it, and its private key, with the
//! refusals an operator needs before the first unit is plugged in.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use der::{Decode as _, Encode as _};
use spki::SubjectPublicKeyInfoOwned;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use zeroize::Zeroizing;

use super::file::{self, describe_label};
use super::key::{self, CaKey};
use super::{Thumbprint, X509Error, rfc3339};
use crate::armor::pem_lf;

/// How close to its expiry the signing CA (or a certificate of its chain) draws a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 90;

/// The files that make up the signing CA, as configured in `[dps]`.
#[derive(Debug, Clone, Copy)]
pub struct CaFiles<'a> {
    /// `ca_cert_file`: the signing CA's certificate (PEM). It may be followed by the chain above
    /// it, as in a "full chain" file.
    pub cert: &'a Path,
    /// `ca_chain_file`: the certificates above the signing CA, issuer first, up to the root
    /// registered with DPS (PEM). Optional.
    pub chain: Option<&'a Path>,
    /// `ca_key_file`: the signing CA's private key (PEM: PKCS#8, SEC1 or PKCS#1, or encrypted
    /// PKCS#8 with `key_passphrase`). Owner-only permissions required.
    pub key: &'a Path,
    /// A file holding the passphrase of an encrypted `ca_key_file` (one trailing newline is
    /// ignored). Owner-only permissions required.
    pub key_passphrase: Option<&'a Path>,
}

/// A certificate of the chain, as shown to the operator.
#[derive(Debug, Clone)]
pub struct ChainCertificate {
    /// Its subject (RFC 4514).
    pub subject: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// SHA-256 thumbprint of its DER.
    pub thumbprint: Thumbprint,
}

/// Something about the CA that does not stop the line but needs attention before it does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaWarning {
    /// A certificate of the chain (the signing CA or one above it) expires within
    /// [`EXPIRY_WARNING_DAYS`].
    ExpiresSoon {
        /// Its subject.
        subject: String,
        /// When it expires.
        not_after: OffsetDateTime,
        /// Whole days left.
        days_left: i64,
    },
    /// Device certificates would outlive the signing CA, so they are cut short at its expiry.
    CertificatesCutShort {
        /// The configured validity.
        cert_days: u32,
        /// The CA's expiry, which device certificates end at instead.
        ca_not_after: OffsetDateTime,
    },
    /// The CA certificate has no key-usage extension, so nothing restricts what it signs.
    KeyUsageUnrestricted {
        /// The CA's subject.
        subject: String,
    },
}

impl fmt::Display for CaWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaWarning::ExpiresSoon {
                subject,
                not_after,
                days_left,
            } => write!(
                f,
                "`{subject}` expires on {} (in {days_left} days): renew it and register the new certificate with DPS before then",
                rfc3339(*not_after)
            ),
            CaWarning::CertificatesCutShort {
                cert_days,
                ca_not_after,
            } => write!(
                f,
                "cert_days = {cert_days} outlasts the signing CA: device certificates will expire with it on {}",
                rfc3339(*ca_not_after)
            ),
            CaWarning::KeyUsageUnrestricted { subject } => write!(
                f,
                "`{subject}` has no keyUsage extension; verifiers accept it, but a CA certificate should state keyCertSign"
            ),
        }
    }
}

/// The signing CA, loaded and checked: a CA certificate (`CA:TRUE`, allowed to sign
/// certificates, valid now), the private key that belongs to it, and the chain above it.
///
/// `Debug` shows the subject, thumbprint and key algorithm, never the key.
pub struct SigningCa {
    pub(super) certificate: Certificate,
    pub(super) public_key: SubjectPublicKeyInfoOwned,
    pub(super) key: CaKey,
    pub(super) subject_key_id: Option<Vec<u8>>,
    der: Vec<u8>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    thumbprint: Thumbprint,
    key_usage_stated: bool,
    chain: Vec<ChainCertificate>,
    /// The signing CA and the chain above it, one canonical PEM each.
    pub(super) chain_pems: Arc<[String]>,
    /// `chain_pems` concatenated.
    pub(super) chain_pem: Arc<str>,
    /// The signing CA and the chain above it, DER, in the same order.
    pub(super) chain_ders: Arc<[Vec<u8>]>,
}

impl fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCa")
            .field("subject", &self.subject)
            .field("thumbprint", &self.thumbprint)
            .field("not_after", &rfc3339(self.not_after))
            .field("key", &self.key)
            .field("chain", &self.chain.len())
            .finish()
    }
}

/// One certificate as read from a file.
struct Parsed {
    certificate: Certificate,
    der: Vec<u8>,
    subject: String,
}

impl SigningCa {
    /// Loads and checks the signing CA at time `now`.
    ///
    /// Refuses (with a `station::x509::*` code): unreadable or empty files; a key file readable
    /// by group or others; a certificate where the key belongs and the reverse; several keys;
    /// an encrypted key without a passphrase, or one the passphrase does not open; a key that
    /// is not the certificate's; a certificate that is not a CA (`CA:TRUE`) or may not sign
    /// certificates (`keyCertSign`); an expired or not yet valid CA; a chain that does not
    /// lead up from the CA.
    pub fn load(files: &CaFiles<'_>, now: OffsetDateTime) -> Result<SigningCa, X509Error> {
        let key_text = file::read_secret("ca_key_file", files.key)?;
        let passphrase = files
            .key_passphrase
            .map(|path| -> Result<Zeroizing<Vec<u8>>, X509Error> {
                let mut bytes = file::read_secret("ca_key_passphrase_file", path)?;
                trim_line_end(&mut bytes);
                Ok(bytes)
            })
            .transpose()?;
        let cert_text = file::read("ca_cert_file", files.cert)?;
        let chain_text = files
            .chain
            .map(|path| file::read("ca_chain_file", path))
            .transpose()?;

        let mut certificates = parse_certificates("ca_cert_file", files.cert, &cert_text)?;
        let signing = certificates.remove(0);
        let mut chain: Vec<(PathBuf, Parsed)> = certificates
            .into_iter()
            .map(|parsed| (files.cert.to_owned(), parsed))
            .collect();
        if let (Some(path), Some(text)) = (files.chain, &chain_text) {
            for parsed in parse_certificates("ca_chain_file", path, text)? {
                chain.push((path.to_owned(), parsed));
            }
        }

        let key = CaKey::parse(
            &key_text,
            passphrase.as_ref().map(|p| p.as_slice()),
            files.key,
        )?;
        drop(key_text);
        check_key_matches(&key, &signing.certificate, files)?;
        check_may_sign(&signing, files.cert)?;
        let (not_before, not_after) = validity(&signing.certificate);
        check_valid_now(&signing.subject, files.cert, not_before, not_after, now)?;
        let chain_info = check_chain(files.cert, &signing, &chain, now)?;

        let key_usage_stated = signing
            .certificate
            .tbs_certificate()
            .get_extension::<KeyUsage>()
            .ok()
            .flatten()
            .is_some();
        let subject_key_id = signing
            .certificate
            .tbs_certificate()
            .get_extension::<SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .map(|(_, ski)| ski.0.as_bytes().to_vec());
        let chain_pems: Vec<String> = std::iter::once(&signing.der)
            .chain(chain.iter().map(|(_, parsed)| &parsed.der))
            .map(|der| pem_lf("CERTIFICATE", der))
            .collect();
        let chain_pem: String = chain_pems.concat();
        let chain_ders: Vec<Vec<u8>> = std::iter::once(signing.der.clone())
            .chain(chain.iter().map(|(_, parsed)| parsed.der.clone()))
            .collect();
        let public_key = signing
            .certificate
            .tbs_certificate()
            .subject_public_key_info()
            .clone();
        Ok(SigningCa {
            thumbprint: Thumbprint::of(&signing.der),
            public_key,
            key,
            subject_key_id,
            der: signing.der,
            subject: signing.subject,
            certificate: signing.certificate,
            not_before,
            not_after,
            key_usage_stated,
            chain: chain_info,
            chain_pems: chain_pems.into(),
            chain_pem: chain_pem.into(),
            chain_ders: chain_ders.into(),
        })
    }

    /// The CA's subject (RFC 4514, e.g. `CN=Factory Issuing CA,O=Example`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The start of the CA's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The end of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// SHA-256 thumbprint of the CA certificate: how the audit log names the CA, and what the
    /// Azure portal shows for it under DPS > Certificates.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.thumbprint
    }

    /// The CA as records name the station secret behind a unit (the `key_id` column, the
    /// manifest's `group_key_id`): `sha256:` and the first 16 hex digits of its thumbprint,
    /// lowercase, in the group key fingerprint's form.
    pub fn key_id(&self) -> crate::keys::KeyId {
        crate::keys::KeyId::of(&self.der)
    }

    /// The CA key's algorithm in words (`ECDSA P-256`, `RSA 3072`); certificates are signed
    /// with ECDSA SHA-256 (P-256), ECDSA SHA-384 (P-384) or RSA PKCS#1 v1.5 SHA-256.
    pub fn key_algorithm(&self) -> String {
        self.key.algorithm()
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }

    /// The certificates above the signing CA, issuer first.
    pub fn chain(&self) -> &[ChainCertificate] {
        &self.chain
    }

    /// The signing CA and the chain above it as PEM, issuer of the device certificate first:
    /// the value of the NVS placeholder `{ca_chain}`.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// What `station check` should print besides the subject and expiry: the CA or a chain
    /// certificate expiring within [`EXPIRY_WARNING_DAYS`], device certificates of `cert_days`
    /// outliving the CA, a CA certificate without key usage.
    pub fn warnings(&self, now: OffsetDateTime, cert_days: u32) -> Vec<CaWarning> {
        let mut warnings = Vec::new();
        let everyone = std::iter::once((self.subject.as_str(), self.not_after)).chain(
            self.chain
                .iter()
                .map(|cert| (cert.subject.as_str(), cert.not_after)),
        );
        for (subject, not_after) in everyone {
            let days_left = (not_after - now).whole_days();
            if days_left < EXPIRY_WARNING_DAYS {
                warnings.push(CaWarning::ExpiresSoon {
                    subject: subject.to_owned(),
                    not_after,
                    days_left,
                });
            }
        }
        if now + time::Duration::days(i64::from(cert_days)) > self.not_after {
            warnings.push(CaWarning::CertificatesCutShort {
                cert_days,
                ca_not_after: self.not_after,
            });
        }
        if !self.key_usage_stated {
            warnings.push(CaWarning::KeyUsageUnrestricted {
                subject: self.subject.clone(),
            });
        }
        warnings
    }
}

/// Reads every certificate in a PEM file (or one DER certificate). Refuses a private key in a
/// certificate file: it belongs in the owner-only key file.
fn parse_certificates(
    what: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<Parsed>, X509Error> {
    let looks_like_pem = text.windows(10).any(|window| window == b"-----BEGIN");
    let ders: Vec<Vec<u8>> = if !looks_like_pem && Certificate::from_der(text).is_ok() {
        // A DER certificate, as Windows exports `.cer` files.
        vec![text.to_vec()]
    } else {
        let blocks = file::pem_blocks(what, path, text)?;
        if let Some(wrong) = blocks.iter().find(|block| block.tag() != "CERTIFICATE") {
            return Err(X509Error::WrongPemKind {
                what,
                path: path.to_owned(),
                found: describe_label(wrong.tag()),
                expected: "a certificate",
            });
        }
        blocks.into_iter().map(pem::Pem::into_contents).collect()
    };
    ders.into_iter()
        .enumerate()
        .map(|(index, der)| {
            let certificate =
                Certificate::from_der(&der).map_err(|error| X509Error::BadCertificate {
                    what,
                    path: path.to_owned(),
                    index: index + 1,
                    problem: error.to_string(),
                })?;
            let subject = certificate.tbs_certificate().subject().to_string();
            Ok(Parsed {
                certificate,
                der,
                subject,
            })
        })
        .collect()
}

fn check_key_matches(
    key: &CaKey,
    certificate: &Certificate,
    files: &CaFiles<'_>,
) -> Result<(), X509Error> {
    let spki = certificate.tbs_certificate().subject_public_key_info();
    let (algorithm, curve) = key.public_key_algorithm();
    let same_algorithm =
        spki.algorithm.oid == algorithm && (curve.is_none() || key::curve_of(spki) == curve);
    if !same_algorithm || spki.subject_public_key.raw_bytes() != key.public_key_bits() {
        return Err(X509Error::KeyMismatch {
            key_path: files.key.to_owned(),
            cert_path: files.cert.to_owned(),
        });
    }
    // Sign and verify once: proves ring's key and the certificate's key are one pair end to
    // end, not only that the public halves compare equal.
    let probe = b"station: signing CA self-test";
    let signature = key.sign(probe).map_err(|_| X509Error::BadKey {
        path: files.key.to_owned(),
        problem: "signing a test message failed".to_owned(),
    })?;
    match key::verify(spki, &key.signature_algorithm(), probe, &signature) {
        Ok(true) => Ok(()),
        _ => Err(X509Error::KeyMismatch {
            key_path: files.key.to_owned(),
            cert_path: files.cert.to_owned(),
        }),
    }
}

fn check_may_sign(signing: &Parsed, path: &Path) -> Result<(), X509Error> {
    let tbs = signing.certificate.tbs_certificate();
    let not_a_ca = |problem: &str| X509Error::NotACa {
        path: path.to_owned(),
        subject: signing.subject.clone(),
        problem: problem.to_owned(),
    };
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, constraints))) if constraints.ca => {}
        Ok(Some(_)) => return Err(not_a_ca("its basicConstraints say CA:FALSE")),
        Ok(None) => return Err(not_a_ca("it has no basicConstraints extension (CA:TRUE)")),
        Err(_) => return Err(not_a_ca("its basicConstraints extension is malformed")),
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, usage))) if !usage.0.contains(KeyUsages::KeyCertSign) => {
            Err(X509Error::NoCertSign {
                path: path.to_owned(),
                subject: signing.subject.clone(),
            })
        }
        Ok(_) => Ok(()),
        Err(_) => Err(not_a_ca("its keyUsage extension is malformed")),
    }
}

fn check_valid_now(
    subject: &str,
    path: &Path,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), X509Error> {
    if now > not_after {
        return Err(X509Error::CaExpired {
            path: path.to_owned(),
            subject: subject.to_owned(),
            not_after: rfc3339(not_after),
        });
    }
    if now < not_before {
        return Err(X509Error::CaNotYetValid {
            path: path.to_owned(),
            subject: subject.to_owned(),
            not_before: rfc3339(not_before),
        });
    }
    Ok(())
}

/// Checks that each certificate of the chain issued the one below it (names and signature),
/// is a CA and is valid now.
fn check_chain(
    cert_path: &Path,
    signing: &Parsed,
    chain: &[(PathBuf, Parsed)],
    now: OffsetDateTime,
) -> Result<Vec<ChainCertificate>, X509Error> {
    let mut below = signing;
    let mut below_path = cert_path;
    let mut info = Vec::with_capacity(chain.len());
    for (position, (path, issuer)) in chain.iter().enumerate() {
        let index = position + 2;
        let broken = |problem: String| X509Error::BrokenChain {
            path: path.clone(),
            index,
            subject: issuer.subject.clone(),
            problem,
        };
        let issued = below.certificate.tbs_certificate();
        if issued.issuer() != issuer.certificate.tbs_certificate().subject() {
            return Err(broken(format!(
                "did not issue certificate {} (`{}`, from {}), whose issuer is `{}`",
                index - 1,
                below.subject,
                below_path.display(),
                issued.issuer()
            )));
        }
        let tbs_der = issued
            .to_der()
            .map_err(|e| broken(format!("cannot re-encode the certificate below it: {e}")))?;
        let verified = key::verify(
            issuer
                .certificate
                .tbs_certificate()
                .subject_public_key_info(),
            below.certificate.signature_algorithm(),
            &tbs_der,
            below.certificate.signature().raw_bytes(),
        )
        .map_err(|problem| {
            broken(format!(
                "is named as issuer of certificate {}, but that certificate {problem}",
                index - 1
            ))
        })?;
        if !verified {
            return Err(broken(format!(
                "has the right name but not the key that signed certificate {} (`{}`)",
                index - 1,
                below.subject
            )));
        }
        let tbs = issuer.certificate.tbs_certificate();
        if !matches!(tbs.get_extension::<BasicConstraints>(), Ok(Some((_, c))) if c.ca) {
            return Err(broken("is not a CA certificate (no CA:TRUE)".to_owned()));
        }
        let (not_before, not_after) = validity(&issuer.certificate);
        if now > not_after {
            return Err(broken(format!("expired on {}", rfc3339(not_after))));
        }
        if now < not_before {
            return Err(broken(format!(
                "is not valid before {}",
                rfc3339(not_before)
            )));
        }
        info.push(ChainCertificate {
            subject: issuer.subject.clone(),
            not_after,
            thumbprint: Thumbprint::of(&issuer.der),
        });
        below = issuer;
        below_path = path;
    }
    Ok(info)
}

fn validity(certificate: &Certificate) -> (OffsetDateTime, OffsetDateTime) {
    let validity = certificate.tbs_certificate().validity();
    (
        to_offset(validity.not_before.to_unix_duration()),
        to_offset(validity.not_after.to_unix_duration()),
    )
}

fn to_offset(since_epoch: std::time::Duration) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + since_epoch
}

fn trim_line_end(bytes: &mut Zeroizing<Vec<u8>>) {
    let len = bytes.len();
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(len - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(len - 1);
    }
}
