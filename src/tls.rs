//! The station's TLS client configuration, in one place: whom the station trusts when it calls
//! out (DPS today; IoT Hub over MQTT next), and the client certificate it presents for a device
//! with X.509 attestation.
//!
//! [`client_config`] builds a `rustls` configuration with ring as the crypto provider (the
//! station's one provider), the operating system's trust store (through
//! `rustls-platform-verifier`, as reqwest does by default) plus the extra roots of `[dps]
//! ca_file` ([`read_roots`]), and, when given, a [`ClientIdentity`]: a device's certificate
//! chain and private key, for TLS client authentication (RFC 8446 section 4.4.2). DPS
//! authenticates an X.509 device exactly so: in the handshake, not with a token
//! (<https://learn.microsoft.com/azure/iot-dps/concepts-x509-attestation>).
//!
//! The private key stays in a [`ClientIdentity`] (redacted in `Debug`, zeroized on drop) until
//! it is handed to rustls, which holds it in its signing key for the life of the configuration:
//! the station builds one configuration per unit and drops it when the unit's DPS check ends.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

/// The largest trust-root file the station reads (a PEM bundle of a few roots is kilobytes).
pub const ROOTS_FILE_LIMIT: u64 = 1 << 20;

/// Why a TLS configuration could not be built. The message never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The crypto provider every TLS configuration of the station uses: ring's.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The encoding of a private key's DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// SEC1 `ECPrivateKey` (OpenSSL's `EC PRIVATE KEY`).
    Sec1,
    /// PKCS#1 `RSAPrivateKey` (OpenSSL's `RSA PRIVATE KEY`).
    Pkcs1,
    /// PKCS#8 `PrivateKeyInfo` (`PRIVATE KEY`).
    Pkcs8,
}

/// A certificate chain and the private key of its first certificate, presented in a TLS
/// handshake. `Debug` shows the chain's length only.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// The identity of `chain` (the end-entity certificate first, then the certificates above
    /// it, DER) and its private key.
    pub fn new(
        chain: impl IntoIterator<Item = Vec<u8>>,
        key_der: &[u8],
        format: KeyFormat,
    ) -> ClientIdentity {
        let key = key_der.to_vec();
        let key = match format {
            KeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(key)),
            KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(key)),
            KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        };
        ClientIdentity {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key,
        }
    }
}

impl Drop for ClientIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Reads the PEM certificates of a trust-root file (`[dps] ca_file`): a regular file of at
/// most [`ROOTS_FILE_LIMIT`] bytes holding at least one certificate.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = crate::file::read_regular(path, ROOTS_FILE_LIMIT)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{} is not PEM: {e}", path.display())))?;
    if roots.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", path.display())));
    }
    Ok(roots)
}

/// The station's TLS client configuration: ring, TLS 1.2 and 1.3, the platform's trust store
/// plus `extra_roots`, ALPN `alpn`, and `identity` as the client certificate when given.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
    identity: Option<ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            Arc::clone(&provider),
        )
    }
    .map_err(|e| TlsError(format!("the trust store cannot be loaded: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(mut identity) => {
            let chain = std::mem::take(&mut identity.chain);
            let key = identity.key.clone_key();
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError(format!(
                    "the device's certificate and key cannot be used: {e}"
                ))
            })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_identity_never_prints_its_key() {
        let identity = ClientIdentity::new([vec![1, 2, 3]], &[0x5a; 32], KeyFormat::Sec1);
        let shown = format!("{identity:?}");
        assert_eq!(shown, "ClientIdentity { chain: 1, key: \"[redacted]\" }");
    }

    #[test]
    fn roots_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = read_roots(&empty).unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        let missing = read_roots(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["device".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let good = ClientIdentity::new(
            [cert.der().to_vec()],
            key.serialized_der(),
            KeyFormat::Pkcs8,
        );
        client_config(&[], Some(good), &[b"http/1.1"]).unwrap();
        let bad = ClientIdentity::new(
            [cert.der().to_vec()],
            other.serialized_der(),
            KeyFormat::Pkcs8,
        );
        let err = client_config(&[], Some(bad), &[]).unwrap_err();
        assert!(err.to_string().contains("cannot be used"), "{err}");
    }
}
