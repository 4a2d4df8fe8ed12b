//! Errors loading the signing CA and issuing device certificates.

use std::path::PathBuf;

/// Errors loading the signing CA (its certificate, chain and key files) or issuing a device
/// certificate with it.
///
/// Every variant carries a stable code (`station::x509::...`) and an operator hint. No variant
/// carries any part of a key file's contents: a message may end up in a log, a terminal
/// scroll-back or a ticket, and the CA key must not. [`X509Error::is_usage_error`] tells the
/// configuration mistakes (exit code 2) from failures while issuing.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum X509Error {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    #[diagnostic(
        code(station::x509::unreadable),
        help(
            "Check the path in station.toml ([dps] ca_cert_file, ca_chain_file, ca_key_file); relative paths resolve against the directory holding station.toml."
        )
    )]
    Unreadable {
        /// Which file (`ca_cert_file`, `ca_chain_file`, `ca_key_file`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The CA key file (or its passphrase file) may be read by other users.
    #[error("{what} {path} is readable by {who} (mode {mode:04o})")]
    #[diagnostic(
        code(station::x509::world_readable),
        help(
            "The CA key can sign a certificate for any device. Run `chmod 600 {path}` and make sure the station's user owns it."
        )
    )]
    Exposed {
        /// Which file.
        what: &'static str,
        /// The file, as shown to the operator.
        path: String,
        /// `group` or `others` or `group and others`.
        who: &'static str,
        /// The permission bits found.
        mode: u32,
    },

    /// A file is empty.
    #[error("{what} {path} is empty")]
    #[diagnostic(
        code(station::x509::empty),
        help(
            "Put the PEM text in the file: the signing CA's certificate in ca_cert_file, its private key in ca_key_file."
        )
    )]
    Empty {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },

    /// The file is neither PEM nor a DER certificate.
    #[error("{what} {path} holds no PEM block (`-----BEGIN ...-----`)")]
    #[diagnostic(
        code(station::x509::not_pem),
        help(
            "The station reads PEM files as OpenSSL writes them. Convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem` (certificates) or `openssl pkey -inform der -in FILE -out FILE.pem` (keys)."
        )
    )]
    NotPem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },

    /// A PEM block of the wrong kind, e.g. a certificate where the key belongs.
    #[error("{what} {path} holds a {found} where {expected} belongs")]
    #[diagnostic(
        code(station::x509::wrong_pem_kind),
        help(
            "Check that ca_cert_file and ca_key_file are not swapped: ca_cert_file holds `-----BEGIN CERTIFICATE-----`, ca_key_file holds `-----BEGIN PRIVATE KEY-----` (or `EC PRIVATE KEY`, `RSA PRIVATE KEY`)."
        )
    )]
    WrongPemKind {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was found (`certificate`, `public key`, ...).
        found: String,
        /// What belongs there (`a private key`, `a certificate`).
        expected: &'static str,
    },

    /// The key file holds more than one private key.
    #[error("ca_key_file {path} holds {count} private keys; it must hold exactly one")]
    #[diagnostic(
        code(station::x509::several_keys),
        help("Keep only the signing CA's private key in ca_key_file; store other keys elsewhere.")
    )]
    SeveralKeys {
        /// The file.
        path: PathBuf,
        /// How many private-key blocks it holds.
        count: usize,
    },

    /// The key is encrypted and no passphrase was given.
    #[error("ca_key_file {path} is encrypted and no passphrase is configured")]
    #[diagnostic(
        code(station::x509::encrypted_key),
        help(
            "Give the passphrase in a file readable by the station's user alone (see README, \"X.509 attestation\"), or store the key decrypted with `openssl pkey -in KEY -out KEY.plain` and `chmod 600` it."
        )
    )]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },

    /// The key is encrypted in OpenSSL's legacy PEM format (`Proc-Type: 4,ENCRYPTED`).
    #[error(
        "ca_key_file {path} is encrypted in OpenSSL's legacy PEM format (`Proc-Type: 4,ENCRYPTED`)"
    )]
    #[diagnostic(
        code(station::x509::legacy_encrypted_key),
        help(
            "Convert it to an encrypted PKCS#8 key the station can read: `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8`."
        )
    )]
    LegacyEncryptedKey {
        /// The file.
        path: PathBuf,
    },

    /// The passphrase does not decrypt the key, or the encryption scheme is unsupported.
    #[error("cannot decrypt ca_key_file {path}: {problem}")]
    #[diagnostic(
        code(station::x509::cannot_decrypt),
        help(
            "Check the passphrase file (no trailing spaces; one trailing newline is ignored). The station reads PBES2 keys (PBKDF2 or scrypt with AES-CBC), as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes them."
        )
    )]
    CannotDecrypt {
        /// The file.
        path: PathBuf,
        /// What went wrong (never the passphrase).
        problem: String,
    },

    /// The key is malformed.
    #[error("ca_key_file {path} does not hold a valid private key: {problem}")]
    #[diagnostic(
        code(station::x509::bad_key),
        help(
            "Export the CA key again with `openssl pkey -in KEY -out KEY.pem`; the file may be truncated or damaged."
        )
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        problem: String,
    },

    /// The key's algorithm cannot sign device certificates here.
    #[error("ca_key_file {path} holds a {algorithm} key, which the station cannot sign with")]
    #[diagnostic(
        code(station::x509::unsupported_key),
        help(
            "Use a CA whose key is ECDSA P-256, ECDSA P-384 or RSA (2048 to 8192 bits): the kinds Azure DPS and ESP-IDF's mbedTLS accept."
        )
    )]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// The key's algorithm, as far as it could be told.
        algorithm: String,
    },

    /// A certificate is malformed.
    #[error("{what} {path}: certificate {index} is not a valid X.509 certificate: {problem}")]
    #[diagnostic(
        code(station::x509::bad_certificate),
        help(
            "Export the certificate again as PEM (`openssl x509 -in CERT -out CERT.pem`); the file may be truncated or damaged."
        )
    )]
    BadCertificate {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What is wrong.
        problem: String,
    },

    /// The key does not belong to the certificate.
    #[error("ca_key_file {key_path} is not the private key of the certificate in {cert_path}")]
    #[diagnostic(
        code(station::x509::key_mismatch),
        help(
            "The key and the certificate must be a pair: compare `openssl pkey -in KEY -pubout` with `openssl x509 -in CERT -noout -pubkey`, and configure the matching files."
        )
    )]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },

    /// The CA certificate has expired.
    #[error("the signing CA `{subject}` ({path}) expired on {not_after}")]
    #[diagnostic(
        code(station::x509::ca_expired),
        help(
            "Devices would get certificates that no verifier accepts. Renew the CA certificate (same key or a new one), register it with DPS, and point ca_cert_file at it."
        )
    )]
    CaExpired {
        /// The certificate file.
        path: PathBuf,
        /// The CA's subject.
        subject: String,
        /// When it expired (RFC 3339).
        not_after: String,
    },

    /// The CA certificate is not valid yet.
    #[error("the signing CA `{subject}` ({path}) is not valid before {not_before}")]
    #[diagnostic(
        code(station::x509::ca_not_yet_valid),
        help(
            "Check the station's clock (`timedatectl`); if it is right, wait until the CA is valid or use the current CA certificate."
        )
    )]
    CaNotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// The CA's subject.
        subject: String,
        /// When it becomes valid (RFC 3339).
        not_before: String,
    },

    /// The certificate is not a CA certificate (no `CA:TRUE` basic constraint).
    #[error("the certificate `{subject}` in {path} is not a CA certificate: {problem}")]
    #[diagnostic(
        code(station::x509::not_a_ca),
        help(
            "Configure the certificate of the CA that signs device certificates (basicConstraints CA:TRUE), usually the intermediate registered with the DPS enrollment group, not a device or server certificate."
        )
    )]
    NotACa {
        /// The certificate file.
        path: PathBuf,
        /// Its subject.
        subject: String,
        /// What is missing.
        problem: String,
    },

    /// The CA certificate's key usage does not allow signing certificates.
    #[error(
        "the signing CA `{subject}` ({path}) may not sign certificates: its key usage lacks keyCertSign"
    )]
    #[diagnostic(
        code(station::x509::no_cert_sign),
        help(
            "Issue the CA certificate with `keyUsage = critical, keyCertSign, cRLSign, digitalSignature`; verifiers reject device certificates signed by a CA without keyCertSign."
        )
    )]
    NoCertSign {
        /// The certificate file.
        path: PathBuf,
        /// The CA's subject.
        subject: String,
    },

    /// The chain does not link up from the signing CA.
    #[error("{path}: certificate {index} (`{subject}`) {problem}")]
    #[diagnostic(
        code(station::x509::broken_chain),
        help(
            "List the chain in order: the CA that issued the signing CA first, then its issuer, up to the root registered with DPS."
        )
    )]
    BrokenChain {
        /// The chain file (or the certificate file, when it holds the chain too).
        path: PathBuf,
        /// The certificate's position in the chain, from 1 for the signing CA.
        index: usize,
        /// Its subject.
        subject: String,
        /// How the link is broken.
        problem: String,
    },

    /// The configured certificate validity is not usable.
    #[error("certificate validity of {days} days is out of range (1 to {max} days)")]
    #[diagnostic(
        code(station::x509::bad_validity),
        help("Set [dps] cert_days to the number of days a device certificate stays valid.")
    )]
    BadValidity {
        /// The days asked for.
        days: u32,
        /// The largest accepted.
        max: u32,
    },

    /// Issuing a certificate failed (key generation, encoding or signing).
    #[error("cannot issue a certificate for {registration_id}: {problem}")]
    #[diagnostic(
        code(station::x509::issue_failed),
        help(
            "This is a fault of the station or its random number source, not of the device; retry the unit and report it if it persists."
        )
    )]
    IssueFailed {
        /// The registration ID the certificate was for.
        registration_id: String,
        /// What failed (never key material).
        problem: String,
    },
}

impl X509Error {
    /// True when the error comes from the configuration (files, CA, validity), which the CLI
    /// maps to exit code 2; false for a failure while issuing.
    pub fn is_usage_error(&self) -> bool {
        !matches!(self, X509Error::IssueFailed { .. })
    }
}
