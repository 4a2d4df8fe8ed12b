//! The signing CA's private key: parsing the formats OpenSSL writes, and signing with it.
//!
//! The key is parsed with RustCrypto's format crates (`pkcs8`, `sec1`, including PBES2
//! decryption) and handed to `ring`, which signs: ring is already the station's TLS crypto
//! provider, its signing is constant-time and it refuses weak RSA keys (under 2048 bits).

use std::fmt;
use std::path::Path;

use der::Decode as _;
use der::asn1::{BitString, ObjectIdentifier};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use super::X509Error;
use super::file::{describe_label, is_private_key_label};

/// `id-ecPublicKey`.
pub(super) const ID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `rsaEncryption`.
pub(super) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `prime256v1` / `secp256r1`.
pub(super) const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1`.
pub(super) const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");
const ID_DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// `ecdsa-with-SHA256`.
pub(super) const ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `ecdsa-with-SHA384`.
pub(super) const ECDSA_WITH_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// `ecdsa-with-SHA512`.
pub(super) const ECDSA_WITH_SHA512: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
/// `sha256WithRSAEncryption`.
pub(super) const SHA256_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// `sha384WithRSAEncryption`.
pub(super) const SHA384_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
/// `sha512WithRSAEncryption`.
pub(super) const SHA512_WITH_RSA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

const KEY_FILE: &str = "ca_key_file";

/// The signing CA's private key, ready to sign. Its `Debug` shows the algorithm only; ring
/// holds the key material and never prints it.
pub(super) struct CaKey {
    kind: KeyKind,
    rng: SystemRandom,
}

enum KeyKind {
    Ecdsa {
        pair: EcdsaKeyPair,
        curve: ObjectIdentifier,
    },
    Rsa(RsaKeyPair),
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaKey({}, [redacted])", self.algorithm())
    }
}

impl CaKey {
    /// Parses the key file's text. `passphrase` decrypts an `ENCRYPTED PRIVATE KEY`.
    pub(super) fn parse(
        text: &[u8],
        passphrase: Option<&[u8]>,
        path: &Path,
    ) -> Result<CaKey, X509Error> {
        let blocks = pem::parse_many(text).map_err(|error| X509Error::BadKey {
            path: path.to_owned(),
            problem: format!("malformed PEM ({})", describe_pem_error(&error)),
        })?;
        // `openssl ecparam -genkey` writes the curve's parameters before the key.
        let blocks: Vec<pem::Pem> = blocks
            .into_iter()
            .filter(|block| block.tag() != "EC PARAMETERS")
            .collect();
        let keys: Vec<&pem::Pem> = blocks
            .iter()
            .filter(|block| is_private_key_label(block.tag()))
            .collect();
        let block = match keys.as_slice() {
            [] => {
                return Err(match blocks.first() {
                    Some(other) => X509Error::WrongPemKind {
                        what: KEY_FILE,
                        path: path.to_owned(),
                        found: describe_label(other.tag()),
                        expected: "a private key",
                    },
                    None => X509Error::NotPem {
                        what: KEY_FILE,
                        path: path.to_owned(),
                    },
                });
            }
            [one] => *one,
            several => {
                return Err(X509Error::SeveralKeys {
                    path: path.to_owned(),
                    count: several.len(),
                });
            }
        };
        if block
            .headers()
            .get("Proc-Type")
            .is_some_and(|value| value.contains("ENCRYPTED"))
        {
            return Err(X509Error::LegacyEncryptedKey {
                path: path.to_owned(),
            });
        }
        let contents = Zeroizing::new(block.contents().to_vec());
        for block in blocks {
            // Clear the decoded copies the pem crate made before freeing them.
            drop(Zeroizing::new(block.into_contents()));
        }
        match block_label(&contents, path)? {
            Label::Encrypted => {
                let Some(passphrase) = passphrase else {
                    return Err(X509Error::EncryptedKey {
                        path: path.to_owned(),
                    });
                };
                let decrypted = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&contents)
                    .map_err(|e| bad_key(path, format!("not an encrypted PKCS#8 key ({e})")))?
                    .decrypt(passphrase)
                    .map_err(|e| X509Error::CannotDecrypt {
                        path: path.to_owned(),
                        problem: describe_decrypt_error(&e),
                    })?;
                Self::from_pkcs8(&Zeroizing::new(decrypted.as_bytes().to_vec()), path)
            }
            Label::Pkcs8 => Self::from_pkcs8(&contents, path),
            Label::Sec1 => Self::from_sec1(&contents, None, path),
            Label::Pkcs1 => Self::from_rsa_pkcs1(&contents, path),
        }
    }

    fn from_pkcs8(der: &[u8], path: &Path) -> Result<CaKey, X509Error> {
        let info = pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|e| bad_key(path, format!("not a PKCS#8 private key ({e})")))?;
        let algorithm = info.algorithm.oid;
        if algorithm == RSA_ENCRYPTION {
            let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| rsa_rejected(path, &e))?;
            return Ok(CaKey::new(KeyKind::Rsa(pair)));
        }
        if algorithm == ID_EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters
                .and_then(|any| any.decode_as::<ObjectIdentifier>().ok());
            return Self::from_sec1(info.private_key.as_bytes(), curve, path);
        }
        Err(unsupported(path, algorithm))
    }

    fn from_sec1(
        der: &[u8],
        outer_curve: Option<ObjectIdentifier>,
        path: &Path,
    ) -> Result<CaKey, X509Error> {
        let key = sec1::EcPrivateKey::from_der(der)
            .map_err(|e| bad_key(path, format!("not a SEC1 EC private key ({e})")))?;
        let curve = key
            .parameters
            .and_then(|parameters| parameters.named_curve())
            .or(outer_curve)
            .ok_or_else(|| bad_key(path, "the EC key does not name its curve"))?;
        let algorithm = if curve == SECP256R1 {
            &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING
        } else if curve == SECP384R1 {
            &ring_sig::ECDSA_P384_SHA384_ASN1_SIGNING
        } else {
            return Err(unsupported(path, curve));
        };
        let derived;
        let public_key = match key.public_key {
            Some(point) => point,
            None if curve == SECP256R1 => {
                // Keys written with `-no_public` omit the point; P-256 can recompute it.
                let secret = p256::SecretKey::from_slice(key.private_key)
                    .map_err(|_| bad_key(path, "the P-256 scalar is out of range"))?;
                derived = secret.public_key().to_sec1_bytes();
                &derived[..]
            }
            None => {
                return Err(bad_key(
                    path,
                    "the EC key holds no public key; export it again with `openssl ec -in KEY -out KEY.pem`",
                ));
            }
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            algorithm,
            key.private_key,
            public_key,
            &rng,
        )
        .map_err(|e| bad_key(path, format!("ring rejected the EC key ({e})")))?;
        Ok(CaKey {
            kind: KeyKind::Ecdsa { pair, curve },
            rng,
        })
    }

    fn from_rsa_pkcs1(der: &[u8], path: &Path) -> Result<CaKey, X509Error> {
        let pair = RsaKeyPair::from_der(der).map_err(|e| rsa_rejected(path, &e))?;
        Ok(CaKey::new(KeyKind::Rsa(pair)))
    }

    fn new(kind: KeyKind) -> CaKey {
        CaKey {
            kind,
            rng: SystemRandom::new(),
        }
    }

    /// The key's algorithm in words (`ECDSA P-256`, `RSA 3072`).
    pub(super) fn algorithm(&self) -> String {
        match &self.kind {
            KeyKind::Ecdsa { curve, .. } if *curve == SECP256R1 => "ECDSA P-256".to_owned(),
            KeyKind::Ecdsa { .. } => "ECDSA P-384".to_owned(),
            KeyKind::Rsa(pair) => format!("RSA {}", pair.public().modulus_len() * 8),
        }
    }

    /// The public key as it appears in a certificate's `subjectPublicKey` bit string: the
    /// uncompressed point for ECDSA, the DER `RSAPublicKey` for RSA.
    pub(super) fn public_key_bits(&self) -> &[u8] {
        match &self.kind {
            KeyKind::Ecdsa { pair, .. } => pair.public_key().as_ref(),
            KeyKind::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    /// The `subjectPublicKeyInfo` algorithm the key belongs under.
    pub(super) fn public_key_algorithm(&self) -> (ObjectIdentifier, Option<ObjectIdentifier>) {
        match &self.kind {
            KeyKind::Ecdsa { curve, .. } => (ID_EC_PUBLIC_KEY, Some(*curve)),
            KeyKind::Rsa(_) => (RSA_ENCRYPTION, None),
        }
    }

    /// The signature algorithm this key signs certificates with: ECDSA with the hash matching
    /// the curve, RSA PKCS#1 v1.5 with SHA-256.
    pub(super) fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match &self.kind {
            KeyKind::Ecdsa { curve, .. } => AlgorithmIdentifierOwned {
                oid: if *curve == SECP256R1 {
                    ECDSA_WITH_SHA256
                } else {
                    ECDSA_WITH_SHA384
                },
                parameters: None,
            },
            KeyKind::Rsa(_) => AlgorithmIdentifierOwned {
                oid: SHA256_WITH_RSA,
                parameters: Some(der::asn1::Null.into()),
            },
        }
    }

    /// Signs `message` (a DER `TBSCertificate`), returning the signature as it goes into the
    /// certificate's bit string.
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        match &self.kind {
            KeyKind::Ecdsa { pair, .. } => Ok(pair.sign(&self.rng, message)?.as_ref().to_vec()),
            KeyKind::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring_sig::RSA_PKCS1_SHA256,
                    &self.rng,
                    message,
                    &mut signature,
                )?;
                Ok(signature)
            }
        }
    }
}

/// The certificate-signing side of [`CaKey`], in the shape `x509-cert`'s builder asks for.
pub(super) struct CaSigner<'a> {
    pub(super) key: &'a CaKey,
    /// The CA certificate's public key (checked at load to be this key's).
    pub(super) public_key: &'a SubjectPublicKeyInfoOwned,
}

/// A signature made by [`CaSigner`].
pub(super) struct CaSignature(Vec<u8>);

/// The CA's public key, as the builder's `Keypair` bound wants it.
#[derive(Clone)]
pub(super) struct CaPublicKey(SubjectPublicKeyInfoOwned);

impl spki::EncodePublicKey for CaPublicKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for CaSigner<'_> {
    type VerifyingKey = CaPublicKey;

    fn verifying_key(&self) -> CaPublicKey {
        CaPublicKey(self.public_key.clone())
    }
}

impl spki::DynSignatureAlgorithmIdentifier for CaSigner<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.key.signature_algorithm())
    }
}

impl signature::Signer<CaSignature> for CaSigner<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<CaSignature, signature::Error> {
        self.key
            .sign(message)
            .map(CaSignature)
            .map_err(|_| signature::Error::new())
    }
}

impl spki::SignatureBitStringEncoding for CaSignature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

/// Verifies `signature` over `message` made with `algorithm` by the holder of `public_key`
/// (a certificate's `subjectPublicKeyInfo`). `Ok(false)`: a bad signature; `Err`: an
/// algorithm the station cannot check, named.
pub(super) fn verify(
    public_key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    let curve = public_key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|any| any.decode_as::<ObjectIdentifier>().ok());
    let key_oid = public_key.algorithm.oid;
    let p256 = key_oid == ID_EC_PUBLIC_KEY && curve == Some(SECP256R1);
    let p384 = key_oid == ID_EC_PUBLIC_KEY && curve == Some(SECP384R1);
    let rsa = key_oid == RSA_ENCRYPTION;
    let verifier: &dyn ring_sig::VerificationAlgorithm = match algorithm.oid {
        oid if oid == ECDSA_WITH_SHA256 && p256 => &ring_sig::ECDSA_P256_SHA256_ASN1,
        oid if oid == ECDSA_WITH_SHA384 && p256 => &ring_sig::ECDSA_P256_SHA384_ASN1,
        oid if oid == ECDSA_WITH_SHA256 && p384 => &ring_sig::ECDSA_P384_SHA256_ASN1,
        oid if oid == ECDSA_WITH_SHA384 && p384 => &ring_sig::ECDSA_P384_SHA384_ASN1,
        oid if oid == SHA256_WITH_RSA && rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        oid if oid == SHA384_WITH_RSA && rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        oid if oid == SHA512_WITH_RSA && rsa => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        oid => {
            return Err(format!(
                "is signed with {} by a {} key, which the station cannot check",
                algorithm_name(oid),
                algorithm_name(curve.unwrap_or(key_oid))
            ));
        }
    };
    let key_bits = public_key.subject_public_key.raw_bytes();
    Ok(ring_sig::UnparsedPublicKey::new(verifier, key_bits)
        .verify(message, signature)
        .is_ok())
}

/// A readable name for the algorithm and curve OIDs operators meet.
pub(super) fn algorithm_name(oid: ObjectIdentifier) -> String {
    let name = match oid {
        o if o == RSA_ENCRYPTION => "RSA",
        o if o == SECP256R1 => "ECDSA P-256",
        o if o == SECP384R1 => "ECDSA P-384",
        o if o == SECP521R1 => "ECDSA P-521",
        o if o == ED25519 => "Ed25519",
        o if o == ED448 => "Ed448",
        o if o == ID_DSA => "DSA",
        o if o == RSASSA_PSS => "RSA-PSS",
        o if o == ECDSA_WITH_SHA256 => "ECDSA with SHA-256",
        o if o == ECDSA_WITH_SHA384 => "ECDSA with SHA-384",
        o if o == ECDSA_WITH_SHA512 => "ECDSA with SHA-512",
        o if o == SHA256_WITH_RSA => "RSA with SHA-256",
        o if o == SHA384_WITH_RSA => "RSA with SHA-384",
        o if o == SHA512_WITH_RSA => "RSA with SHA-512",
        o if o == ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5") => "RSA with SHA-1",
        o if o == ObjectIdentifier::new_unwrap("1.2.840.10045.4.1") => "ECDSA with SHA-1",
        _ => return format!("algorithm {oid}"),
    };
    name.to_owned()
}

enum Label {
    Encrypted,
    Pkcs8,
    Sec1,
    Pkcs1,
}

/// Which key format a private-key block holds, told by its DER shape rather than its label,
/// so that a mislabelled block (`PRIVATE KEY` around a SEC1 key) is still read correctly.
fn block_label(contents: &[u8], path: &Path) -> Result<Label, X509Error> {
    if pkcs8::EncryptedPrivateKeyInfoRef::from_der(contents).is_ok() {
        return Ok(Label::Encrypted);
    }
    if pkcs8::PrivateKeyInfoRef::from_der(contents).is_ok() {
        return Ok(Label::Pkcs8);
    }
    if sec1::EcPrivateKey::from_der(contents).is_ok() {
        return Ok(Label::Sec1);
    }
    if pkcs1_shape(contents) {
        return Ok(Label::Pkcs1);
    }
    Err(bad_key(
        path,
        "the PEM block is neither PKCS#8, SEC1 nor PKCS#1",
    ))
}

/// A PKCS#1 `RSAPrivateKey`: a SEQUENCE of nine INTEGERs starting with version 0.
fn pkcs1_shape(contents: &[u8]) -> bool {
    let Ok(sequence) = <&der::asn1::SequenceRef>::from_der(contents) else {
        return false;
    };
    let mut reader = sequence.as_bytes();
    let mut count = 0;
    while !reader.is_empty() {
        let Ok((int, rest)) = der::asn1::IntRef::from_der_partial(reader) else {
            return false;
        };
        if count == 0 && int.as_bytes() != [0] {
            return false;
        }
        count += 1;
        reader = rest;
    }
    count == 9
}

fn bad_key(path: &Path, problem: impl Into<String>) -> X509Error {
    X509Error::BadKey {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn unsupported(path: &Path, oid: ObjectIdentifier) -> X509Error {
    X509Error::UnsupportedKey {
        path: path.to_owned(),
        algorithm: algorithm_name(oid),
    }
}

fn rsa_rejected(path: &Path, error: &ring::error::KeyRejected) -> X509Error {
    // ring names the reason in a fixed word list (`TooSmall`, `InvalidEncoding`, ...).
    match error.to_string().as_str() {
        "TooSmall" => X509Error::UnsupportedKey {
            path: path.to_owned(),
            algorithm: "RSA key under 2048 bits".to_owned(),
        },
        "TooLarge" => X509Error::UnsupportedKey {
            path: path.to_owned(),
            algorithm: "RSA key over 8192 bits".to_owned(),
        },
        reason => bad_key(path, format!("ring rejected the RSA key ({reason})")),
    }
}

fn describe_pem_error(error: &pem::PemError) -> String {
    // PemError's Display can quote the offending text, which may be key material: name the
    // kind of error only.
    match error {
        pem::PemError::MismatchedTags(..) => "BEGIN and END lines name different labels",
        pem::PemError::MalformedFraming => "broken BEGIN/END framing",
        pem::PemError::MissingBeginTag => "no BEGIN line",
        pem::PemError::MissingEndTag => "no END line",
        pem::PemError::MissingData => "no data between BEGIN and END",
        pem::PemError::InvalidData(_) => "the base64 inside is damaged",
        pem::PemError::InvalidHeader(_) => "a malformed header line",
        pem::PemError::NotUtf8(_) => "not UTF-8 text",
    }
    .to_owned()
}

fn describe_decrypt_error(error: &pkcs8::Error) -> String {
    match error {
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::DecryptFailed) => {
            "wrong passphrase (or a damaged key)".to_owned()
        }
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { oid }) => {
            format!("the key is encrypted with {oid}, which the station does not support")
        }
        other => other.to_string(),
    }
}

/// The named curve of an EC `subjectPublicKeyInfo`.
pub(super) fn curve_of(spki: &SubjectPublicKeyInfoOwned) -> Option<ObjectIdentifier> {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|any| any.decode_as::<ObjectIdentifier>().ok())
}
