//! The DPS emulator's TLS server identity, in one place: a CA made for the emulator and a
//! server certificate for `127.0.0.1` and `localhost` signed by it, generated once and kept in
//! a directory (`station sim dps --tls-dir DIR`) so that the station's `[dps] ca_file =
//! "DIR/ca.pem"` stays valid across emulator restarts.
//!
//! The station trusts the emulator only through that CA file (the platform's trust store knows
//! nothing of it), so its TLS path is the one it uses with Azure: certificate verification,
//! host name (here the IP address) and all. The server asks every client for a certificate and
//! accepts any, as DPS does: the handshake proves the client holds the key of the certificate
//! it sent, and whether the certificate is trusted is the emulator's decision at the HTTP layer
//! (HTTP 401 with DPS's error code, not a failed handshake).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use zeroize::Zeroizing;

use super::SimError;

/// The files of a server identity in its directory.
const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server.key";

/// The largest identity file read back.
const FILE_LIMIT: u64 = 64 << 10;

/// A TLS server identity: the server's certificate chain and key, and the CA a client must
/// trust.
pub struct ServerIdentity {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// A new identity: an ECDSA P-256 CA (`CN=station DPS emulator CA`) and a server
    /// certificate for `127.0.0.1` and `localhost` it signed.
    pub fn generate() -> Result<ServerIdentity, SimError> {
        let failed = |e: rcgen::Error| SimError::Tls {
            problem: format!("cannot make the emulator's certificates: {e}"),
        };
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca.distinguished_name
            .push(DnType::CommonName, "station DPS emulator CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

        let key = KeyPair::generate().map_err(failed)?;
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(failed)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "station DPS emulator");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let cert = server
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .map_err(failed)?;
        Ok(ServerIdentity {
            ca_pem: ca_cert.pem(),
            chain: vec![cert.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| SimError::Tls {
                problem: format!("the server key: {e}"),
            })?,
        })
    }

    /// The identity kept in `dir` (`ca.pem`, `server.pem`, `server.key`), made and written
    /// there first if the directory holds none (the key owner-only).
    pub fn load_or_generate(dir: &Path) -> Result<ServerIdentity, SimError> {
        let path = |name: &str| dir.join(name);
        if !path(CA_FILE).exists() {
            let identity = ServerIdentity::generate()?;
            identity.write(dir)?;
            return Ok(identity);
        }
        let read = |name: &str| -> Result<Zeroizing<Vec<u8>>, SimError> {
            crate::file::read_regular(&path(name), FILE_LIMIT)
                .map(Zeroizing::new)
                .map_err(|e| SimError::Tls {
                    problem: format!("cannot read {}: {e}", path(name).display()),
                })
        };
        let bad = |name: &str, e: &dyn std::fmt::Display| SimError::Tls {
            problem: format!(
                "{} is not a PEM the emulator wrote ({e}); remove the directory's files to make new ones",
                path(name).display()
            ),
        };
        let ca_pem = String::from_utf8(read(CA_FILE)?.to_vec()).map_err(|e| bad(CA_FILE, &e))?;
        let chain = CertificateDer::pem_slice_iter(&read(CERT_FILE)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(CERT_FILE, &e))?;
        let key = PrivateKeyDer::from_pem_slice(&read(KEY_FILE)?).map_err(|e| bad(KEY_FILE, &e))?;
        if chain.is_empty() {
            return Err(bad(CERT_FILE, &"no certificate"));
        }
        Ok(ServerIdentity { ca_pem, chain, key })
    }

    /// Writes the identity's files into `dir` (created if missing); the key owner-only.
    fn write(&self, dir: &Path) -> Result<(), SimError> {
        let failed = |path: PathBuf, e: std::io::Error| SimError::Tls {
            problem: format!("cannot write {}: {e}", path.display()),
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(dir.to_owned(), e))?;
        let chain_pem: String = self
            .chain
            .iter()
            .map(|der| crate::armor::pem_lf("CERTIFICATE", der))
            .collect();
        let key_pem = crate::armor::pem_lf_secret("PRIVATE KEY", self.key.secret_der());
        for (name, bytes) in [
            (CA_FILE, self.ca_pem.as_bytes()),
            (CERT_FILE, chain_pem.as_bytes()),
            (KEY_FILE, key_pem.as_bytes()),
        ] {
            crate::file::write_private(&dir.join(name), bytes)
                .map_err(|e| failed(dir.join(name), e))?;
        }
        Ok(())
    }

    /// The CA a client must trust, PEM: the station's `[dps] ca_file`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The path of the CA file in an identity directory.
    pub fn ca_file(dir: &Path) -> PathBuf {
        dir.join(CA_FILE)
    }

    /// A rustls server configuration with this identity (HTTP/1.1), asking every client for
    /// a certificate and accepting any whose handshake signature holds.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SimError> {
        let provider = crate::tls::provider();
        let verifier = Arc::new(AnyClientCertificate {
            provider: Arc::clone(&provider),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(self.chain.clone(), self.key.clone_key())
            })
            .map_err(|e| SimError::Tls {
                problem: format!("the emulator's TLS configuration: {e}"),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl Drop for ServerIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Asks for a client certificate, requires none, and takes any chain offered: trust is decided
/// per request, where a refusal can be DPS's HTTP 401. The handshake signature is still
/// checked, so a client cannot present a certificate whose key it does not hold.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
