//! Issuing one device's credentials: a fresh key pair and a certificate for its registration ID,
//! signed by the [`SigningCa`].

use std::fmt;
use std::sync::Arc;

use der::asn1::OctetString;
use der::{Decode as _, Encode as _};
use p256::pkcs8::EncodePublicKey as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use sha2::{Digest as _, Sha256};
use spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use time::OffsetDateTime;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder as _, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension as _};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use zeroize::Zeroizing;

use super::key::{CaSignature, CaSigner};
use super::{KeyType, SigningCa, Thumbprint, X509Error};
use crate::armor::{pem_lf, pem_lf_secret};
use crate::identity::RegistrationId;

/// The longest validity accepted for a device certificate: 100 years.
pub const MAX_CERT_DAYS: u32 = 36_500;

/// How far before the moment of issuing a certificate's validity starts: one hour, so that a
/// station clock running a little fast does not make a certificate DPS sees as not yet valid.
pub const NOT_BEFORE_BACKDATE: time::Duration = time::Duration::hours(1);

/// `id-kp-clientAuth`: the device authenticates to DPS and IoT Hub as a TLS client.
const ID_KP_CLIENT_AUTH: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// What to issue: the device key's type and the certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuePolicy {
    /// The device key's type (`[dps] key_type`).
    pub key_type: KeyType,
    /// Days the certificate stays valid (`[dps] cert_days`), 1 to [`MAX_CERT_DAYS`]; cut
    /// short at the CA's own expiry.
    pub validity_days: u32,
}

/// A device's private key in OpenSSL's traditional PEM (`EC PRIVATE KEY` SEC1 for ECDSA,
/// `RSA PRIVATE KEY` PKCS#1 for RSA): what ESP-IDF's mbedTLS parses, and what Espressif's
/// `esp-secure-cert-tool` stores. Never printed by `Debug` or `Display`; zeroized on drop.
#[derive(Clone)]
pub struct DevicePrivateKey {
    pem: Zeroizing<String>,
    der: Zeroizing<Vec<u8>>,
}

impl DevicePrivateKey {
    /// The PEM text that goes into the flash image. Every caller is a place the key flows
    /// to: keep them few (the image builders and the TLS client of DPS pre-verification).
    pub fn expose_pem(&self) -> &str {
        &self.pem
    }

    /// The DER inside the PEM (SEC1 or PKCS#1), e.g. for a TLS client configuration.
    pub fn expose_der(&self) -> &[u8] {
        &self.der
    }
}

impl fmt::Debug for DevicePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePrivateKey([redacted])")
    }
}

impl fmt::Display for DevicePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything issued for one unit: what goes on the device (certificate, key, chain) and what
/// goes in the records (serial, thumbprint, validity). `Debug` redacts the key.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    registration_id: RegistrationId,
    key_type: KeyType,
    certificate_der: Vec<u8>,
    certificate_pem: String,
    private_key: DevicePrivateKey,
    chain_pems: Arc<[String]>,
    chain_pem: Arc<str>,
    chain_ders: Arc<[Vec<u8>]>,
    serial: String,
    thumbprint: Thumbprint,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The values of the NVS placeholders for X.509 units, all PEM strings.
#[derive(Clone, Copy)]
pub struct NvsValues<'a> {
    /// `{device_cert}`: the device certificate.
    pub device_cert: &'a str,
    /// `{device_private_key}`: the device's private key (a secret).
    pub device_private_key: &'a str,
    /// `{ca_chain}`: the signing CA and the chain above it, issuer first.
    pub ca_chain: &'a str,
}

impl fmt::Debug for NvsValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvsValues")
            .field("device_cert", &self.device_cert.len())
            .field("device_private_key", &"[redacted]")
            .field("ca_chain", &self.ca_chain.len())
            .finish()
    }
}

impl DeviceCredentials {
    /// The registration ID the certificate names as its subject CN.
    pub fn registration_id(&self) -> &RegistrationId {
        &self.registration_id
    }

    /// The device key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The device certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The device certificate, PEM (64-column lines, `\n` line ends).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The device's private key.
    pub fn private_key(&self) -> &DevicePrivateKey {
        &self.private_key
    }

    /// The signing CA and the chain above it, issuer first, one PEM each.
    pub fn chain_pems(&self) -> &[String] {
        &self.chain_pems
    }

    /// The signing CA and the chain above it, DER, issuer first: what the device presents
    /// after its own certificate in a TLS handshake.
    pub fn chain_ders(&self) -> &[Vec<u8>] {
        &self.chain_ders
    }

    /// [`chain_pems`](Self::chain_pems) concatenated.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The certificate's serial number: uppercase hex, as `openssl x509 -serial` prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The certificate's SHA-256 thumbprint, as the Azure portal shows it.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.thumbprint
    }

    /// The start of the certificate's validity (an hour before issuing).
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The end of the certificate's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The values of the NVS placeholders `{device_cert}`, `{device_private_key}` and
    /// `{ca_chain}`.
    pub fn nvs_values(&self) -> NvsValues<'_> {
        NvsValues {
            device_cert: &self.certificate_pem,
            device_private_key: self.private_key.expose_pem(),
            ca_chain: &self.chain_pem,
        }
    }

    /// The TLS client identity these credentials make: the certificate, the CA chain above it
    /// and the private key, as the device presents them to DPS (and IoT Hub).
    pub fn tls_identity(&self) -> crate::tls::ClientIdentity {
        let chain =
            std::iter::once(self.certificate_der.clone()).chain(self.chain_ders.iter().cloned());
        let format = match self.key_type {
            KeyType::EcdsaP256 => crate::tls::KeyFormat::Sec1,
            KeyType::Rsa2048 => crate::tls::KeyFormat::Pkcs1,
        };
        crate::tls::ClientIdentity::new(chain, self.private_key.expose_der(), format)
    }

    /// The `esp_secure_cert` partition image (TLV format) holding these credentials, byte for
    /// byte what `esp-secure-cert-tool` writes for them (see [`crate::secure_cert`]).
    pub fn esp_secure_cert(
        &self,
    ) -> Result<Zeroizing<Vec<u8>>, crate::secure_cert::SecureCertError> {
        let chain: Vec<&str> = self.chain_pems.iter().map(String::as_str).collect();
        crate::secure_cert::device_image(
            &chain,
            &self.certificate_pem,
            self.private_key.expose_pem(),
        )
    }
}

impl SigningCa {
    /// Issues credentials for `registration_id` at time `now`: a fresh key pair of
    /// `policy.key_type`, and a certificate with subject `CN=<registration ID>`, a random
    /// 128-bit serial, validity from an hour before `now` for `policy.validity_days` (but not
    /// past the CA's expiry), `CA:FALSE`, key usage `digitalSignature`, extended key usage
    /// `clientAuth`, a subject key identifier and, when the CA has one, an authority key
    /// identifier; signed by this CA.
    pub fn issue(
        &self,
        registration_id: &RegistrationId,
        policy: &IssuePolicy,
        now: OffsetDateTime,
    ) -> Result<DeviceCredentials, X509Error> {
        if policy.validity_days == 0 || policy.validity_days > MAX_CERT_DAYS {
            return Err(X509Error::BadValidity {
                days: policy.validity_days,
                max: MAX_CERT_DAYS,
            });
        }
        let failed = |problem: String| X509Error::IssueFailed {
            registration_id: registration_id.as_str().to_owned(),
            problem,
        };
        let (private_key, public_key) = generate(policy.key_type).map_err(&failed)?;

        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| failed("the system random number generator failed".to_owned()))?;
        // A positive INTEGER of exactly 16 bytes (126 random bits): no sign byte, no
        // leading zero dropped, so the hex form is always 32 digits.
        serial[0] = (serial[0] & 0x3F) | 0x40;
        let serial_number =
            SerialNumber::new(&serial).map_err(|e| failed(format!("serial number: {e}")))?;

        let not_before = now - NOT_BEFORE_BACKDATE;
        let not_after =
            (now + time::Duration::days(i64::from(policy.validity_days))).min(self.not_after());
        let validity = Validity::new(to_time(not_before)?, to_time(not_after)?);
        let subject = subject_for(registration_id).map_err(&failed)?;

        let profile = DeviceProfile {
            issuer: self.certificate.tbs_certificate().subject().clone(),
            subject,
            authority_key_id: self.subject_key_id.clone(),
        };
        let builder = CertificateBuilder::new(profile, serial_number, validity, public_key)
            .map_err(|e| failed(format!("certificate builder: {e}")))?;
        let signer = CaSigner {
            key: &self.key,
            public_key: &self.public_key,
        };
        let certificate = builder
            .build::<_, CaSignature>(&signer)
            .map_err(|e| failed(format!("signing: {e}")))?;
        let certificate_der = certificate
            .to_der()
            .map_err(|e| failed(format!("encoding the certificate: {e}")))?;
        Ok(DeviceCredentials {
            registration_id: registration_id.clone(),
            key_type: policy.key_type,
            certificate_pem: pem_lf("CERTIFICATE", &certificate_der),
            thumbprint: Thumbprint::of(&certificate_der),
            certificate_der,
            private_key,
            chain_pems: Arc::clone(&self.chain_pems),
            chain_pem: Arc::clone(&self.chain_pem),
            chain_ders: Arc::clone(&self.chain_ders),
            serial: hex::encode_upper(serial),
            not_before,
            not_after,
        })
    }
}

/// A fresh key pair: the private key in traditional PEM and the public key's SPKI.
fn generate(key_type: KeyType) -> Result<(DevicePrivateKey, SubjectPublicKeyInfoOwned), String> {
    let (label, der, spki) = match key_type {
        KeyType::EcdsaP256 => {
            let secret: p256::SecretKey =
                p256::elliptic_curve::Generate::try_generate_from_rng(&mut getrandom::SysRng)
                    .map_err(|e| format!("the system random number generator failed: {e}"))?;
            let der = secret
                .to_sec1_der()
                .map_err(|e| format!("encoding the P-256 key: {e}"))?;
            let spki = secret
                .public_key()
                .to_public_key_der()
                .map_err(|e| format!("encoding the P-256 public key: {e}"))?;
            ("EC PRIVATE KEY", der, spki)
        }
        KeyType::Rsa2048 => {
            let secret = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                .map_err(|e| format!("generating the RSA key: {e}"))?;
            let der = Zeroizing::new(
                secret
                    .to_pkcs1_der()
                    .map_err(|e| format!("encoding the RSA key: {e}"))?
                    .as_bytes()
                    .to_vec(),
            );
            let spki = secret
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| format!("encoding the RSA public key: {e}"))?;
            ("RSA PRIVATE KEY", der, spki)
        }
    };
    let spki = SubjectPublicKeyInfoOwned::from_der(spki.as_bytes())
        .map_err(|e| format!("decoding the public key: {e}"))?;
    let pem = pem_lf_secret(label, &der);
    Ok((DevicePrivateKey { pem, der }, spki))
}

fn to_time(at: OffsetDateTime) -> Result<Time, X509Error> {
    let system: std::time::SystemTime = at.into();
    Time::try_from(system).map_err(|e| X509Error::IssueFailed {
        registration_id: String::new(),
        problem: format!("time {at} cannot be encoded: {e}"),
    })
}

/// The extensions of a device certificate, as `x509-cert`'s builder asks for them.
struct DeviceProfile {
    issuer: Name,
    subject: Name,
    authority_key_id: Option<Vec<u8>>,
}

impl BuilderProfile for DeviceProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        // The CA certificate's subject, decoded and re-encoded unchanged: verifiers match
        // issuer and subject names, and rebuilding the name from its parts could alter it.
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut extensions = Vec::with_capacity(5);
        let basic = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        };
        let mut basic = basic.to_extension(subject, &extensions)?;
        basic.critical = true;
        extensions.push(basic);
        extensions
            .push(KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(subject, &extensions)?);
        extensions
            .push(ExtendedKeyUsage(vec![ID_KP_CLIENT_AUTH]).to_extension(subject, &extensions)?);
        // RFC 7093 section 2, method 1: the leftmost 160 bits of the SHA-256 of the key.
        let digest = Sha256::digest(spk.subject_public_key.raw_bytes());
        let key_id = OctetString::new(&digest[..20])?;
        extensions.push(SubjectKeyIdentifier(key_id).to_extension(subject, &extensions)?);
        if let Some(authority_key_id) = &self.authority_key_id {
            let aki = AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(authority_key_id.as_slice())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            };
            extensions.push(aki.to_extension(subject, &extensions)?);
        }
        Ok(extensions)
    }
}

/// `CN=<registration ID>`, the subject DPS requires (encoded as a UTF8String).
fn subject_for(registration_id: &RegistrationId) -> Result<Name, String> {
    use std::str::FromStr as _;
    // Registration IDs hold lowercase alphanumerics and `-._:` only (identity::RegistrationId),
    // none of which RFC 4514 escapes, so the string form names exactly that CN.
    Name::from_str(&format!("CN={}", registration_id.as_str()))
        .map_err(|e| format!("subject name: {e}"))
}
