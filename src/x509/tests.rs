//! Unit tests: CAs made here with rcgen (and the RustCrypto crates for the key formats rcgen
//! does not write), loaded from files in a temporary directory as an operator's would be.

use std::path::{Path, PathBuf};

use der::{Decode as _, Encode as _};
use rcgen::{
    BasicConstraints as RcBasic, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage};

use super::*;
use crate::identity::RegistrationId;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A CA certificate and key made by rcgen.
struct Made {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Station Tests");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(RcBasic::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(3650);
    params
}

fn self_signed(params: CertificateParams) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Made { params, key, pem }
}

fn signed_by(params: CertificateParams, issuer: &Made) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let pem = params.signed_by(&key, &issuer).unwrap().pem();
    Made { params, key, pem }
}

/// The files of one test CA.
struct Files {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    chain: Option<PathBuf>,
    passphrase: Option<PathBuf>,
}

impl Files {
    fn new(cert_pem: &str, key_pem: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        std::fs::write(&cert, cert_pem).unwrap();
        write_private(&key, key_pem.as_bytes());
        Files {
            dir,
            cert,
            key,
            chain: None,
            passphrase: None,
        }
    }

    fn of(made: &Made) -> Files {
        Files::new(&made.pem, &made.key.serialize_pem())
    }

    fn with_chain(mut self, chain_pem: &str) -> Files {
        let path = self.dir.path().join("chain.pem");
        std::fs::write(&path, chain_pem).unwrap();
        self.chain = Some(path);
        self
    }

    fn with_passphrase(mut self, passphrase: &str) -> Files {
        let path = self.dir.path().join("ca.pass");
        write_private(&path, passphrase.as_bytes());
        self.passphrase = Some(path);
        self
    }

    fn paths(&self) -> CaFiles<'_> {
        CaFiles {
            cert: &self.cert,
            chain: self.chain.as_deref(),
            key: &self.key,
            key_passphrase: self.passphrase.as_deref(),
        }
    }

    fn load(&self) -> Result<SigningCa, X509Error> {
        SigningCa::load(&self.paths(), now())
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn code(error: X509Error) -> String {
    let error = crate::Error::from(error);
    assert!(error.hint().is_some(), "{} has no hint", error.code());
    error.code()
}

fn registration_id() -> RegistrationId {
    RegistrationId::new("line-1-240ac4a1b2c3").unwrap()
}

const P256_POLICY: IssuePolicy = IssuePolicy {
    key_type: KeyType::EcdsaP256,
    validity_days: 365,
};

#[test]
fn an_issued_p256_certificate_names_the_unit_and_chains_to_the_ca() {
    let root = self_signed(ca_params("Root"));
    let ca = Files::of(&root).load().unwrap();
    let at = now();
    let issued = ca.issue(&registration_id(), &P256_POLICY, at).unwrap();

    let cert = Certificate::from_der(issued.certificate_der()).unwrap();
    let tbs = cert.tbs_certificate();
    assert_eq!(tbs.subject().to_string(), "CN=line-1-240ac4a1b2c3");
    // The issuer is the CA's subject, byte for byte.
    let ca_cert = Certificate::from_der(ca.certificate_der()).unwrap();
    assert_eq!(
        tbs.issuer().to_der().unwrap(),
        ca_cert.tbs_certificate().subject().to_der().unwrap()
    );
    assert_eq!(
        hex::encode_upper(tbs.serial_number().as_bytes()),
        issued.serial()
    );
    assert_eq!(issued.serial().len(), 32);
    assert_eq!(
        issued.thumbprint(),
        &Thumbprint::of(issued.certificate_der())
    );
    assert_eq!(issued.thumbprint().as_str().len(), 64);
    assert!(
        issued
            .thumbprint()
            .as_str()
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    );

    let validity = tbs.validity();
    let not_after = OffsetDateTime::UNIX_EPOCH + validity.not_after.to_unix_duration();
    let not_before = OffsetDateTime::UNIX_EPOCH + validity.not_before.to_unix_duration();
    assert!((not_after - (at + Duration::days(365))).abs() < Duration::seconds(1));
    assert!((not_before - (at - NOT_BEFORE_BACKDATE)).abs() < Duration::seconds(1));
    assert!((issued.not_after() - not_after).abs() < Duration::seconds(1));

    let (critical, basic) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
    assert!(critical && !basic.ca);
    let (_, eku) = tbs.get_extension::<ExtendedKeyUsage>().unwrap().unwrap();
    assert_eq!(
        eku.0,
        [der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2")]
    );

    // Signed by the CA's key.
    let tbs_der = tbs.to_der().unwrap();
    assert_eq!(
        key::verify(
            ca_cert.tbs_certificate().subject_public_key_info(),
            cert.signature_algorithm(),
            &tbs_der,
            cert.signature().raw_bytes(),
        ),
        Ok(true)
    );

    // The private key is the certificate's.
    let key_pem = pem::parse(issued.private_key().expose_pem()).unwrap();
    assert_eq!(key_pem.tag(), "EC PRIVATE KEY");
    let secret = p256::SecretKey::from_sec1_der(key_pem.contents()).unwrap();
    assert_eq!(
        &*secret.public_key().to_sec1_bytes(),
        tbs.subject_public_key_info().subject_public_key.raw_bytes()
    );
    assert_eq!(issued.private_key().expose_der(), key_pem.contents());
}

#[test]
fn every_unit_gets_a_fresh_key_and_serial() {
    let ca = Files::of(&self_signed(ca_params("Root"))).load().unwrap();
    let a = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    let b = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    assert_ne!(a.serial(), b.serial());
    assert_ne!(a.private_key().expose_der(), b.private_key().expose_der());
    assert_ne!(a.thumbprint(), b.thumbprint());
}

#[test]
fn an_rsa_2048_device_key_matches_its_certificate() {
    use ring::signature::KeyPair as _;
    let ca = Files::of(&self_signed(ca_params("Root"))).load().unwrap();
    let policy = IssuePolicy {
        key_type: KeyType::Rsa2048,
        validity_days: 30,
    };
    let issued = ca.issue(&registration_id(), &policy, now()).unwrap();
    let key_pem = pem::parse(issued.private_key().expose_pem()).unwrap();
    assert_eq!(key_pem.tag(), "RSA PRIVATE KEY");
    let key = ring::signature::RsaKeyPair::from_der(key_pem.contents()).unwrap();
    assert_eq!(key.public().modulus_len(), 256);
    let cert = Certificate::from_der(issued.certificate_der()).unwrap();
    assert_eq!(
        key.public_key().as_ref(),
        cert.tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
    );
}

#[test]
fn key_material_never_shows_in_debug_or_display() {
    let root = self_signed(ca_params("Root"));
    let ca_key_pem = root.key.serialize_pem();
    let ca = Files::of(&root).load().unwrap();
    let issued = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    let device_key_line = issued
        .private_key()
        .expose_pem()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let ca_key_line = ca_key_pem.lines().nth(1).unwrap().to_owned();
    let shown = format!(
        "{issued:?} {} {:?} {ca:?} {:?}",
        issued.private_key(),
        issued.private_key(),
        issued.nvs_values()
    );
    for secret in [&device_key_line, &ca_key_line] {
        assert!(!shown.contains(&secret[..20]), "{shown}");
    }
    assert!(shown.contains("redacted"));
    assert!(shown.contains(issued.serial()));
}

#[test]
fn nvs_values_are_the_pem_strings() {
    let root = self_signed(ca_params("Root"));
    let ca = Files::of(&root).load().unwrap();
    let issued = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    let values = issued.nvs_values();
    assert_eq!(values.device_cert, issued.certificate_pem());
    assert_eq!(values.device_private_key, issued.private_key().expose_pem());
    assert_eq!(values.ca_chain, ca.chain_pem());
    assert_eq!(
        pem::parse(values.ca_chain).unwrap().contents(),
        ca.certificate_der()
    );
    assert!(
        values
            .device_cert
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    assert_eq!(
        NVS_PLACEHOLDERS,
        ["device_cert", "device_private_key", "ca_chain"]
    );
}

#[test]
fn an_intermediate_with_its_chain_loads_and_checks_the_link() {
    let root = self_signed(ca_params("Root"));
    let issuing = signed_by(ca_params("Issuing"), &root);
    let ca = Files::of(&issuing).with_chain(&root.pem).load().unwrap();
    assert_eq!(ca.chain().len(), 1);
    assert_eq!(ca.chain()[0].subject, "O=Station Tests,CN=Root");
    assert_eq!(pem::parse_many(ca.chain_pem()).unwrap().len(), 2);

    // The same chain in one "full chain" certificate file.
    let full = Files::new(
        &format!("{}{}", issuing.pem, root.pem),
        &issuing.key.serialize_pem(),
    );
    assert_eq!(full.load().unwrap().chain_pem(), ca.chain_pem());

    // A root that did not issue the CA.
    let stranger = self_signed(ca_params("Stranger"));
    let err = Files::of(&issuing)
        .with_chain(&stranger.pem)
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("did not issue"), "{err}");
    assert_eq!(code(err), "station::x509::broken_chain");

    // A root with the right name but another key.
    let impostor = self_signed(ca_params("Root"));
    let err = Files::of(&issuing)
        .with_chain(&impostor.pem)
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("not the key"), "{err}");
    assert_eq!(code(err), "station::x509::broken_chain");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let root = self_signed(ca_params("Root"));
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let err = Files::new(&root.pem, &other.serialize_pem())
        .load()
        .unwrap_err();
    assert_eq!(code(err), "station::x509::key_mismatch");
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let err = Files::new(&root.pem, &p384.serialize_pem())
        .load()
        .unwrap_err();
    assert_eq!(code(err), "station::x509::key_mismatch");
}

#[test]
fn an_expired_or_future_ca_is_refused() {
    let mut params = ca_params("Old");
    params.not_before = now() - Duration::days(400);
    params.not_after = now() - Duration::days(1);
    let err = Files::of(&self_signed(params)).load().unwrap_err();
    assert!(err.to_string().contains("expired on"), "{err}");
    assert_eq!(code(err), "station::x509::ca_expired");

    let mut params = ca_params("Future");
    params.not_before = now() + Duration::days(2);
    let err = Files::of(&self_signed(params)).load().unwrap_err();
    assert_eq!(code(err), "station::x509::ca_not_yet_valid");
}

#[test]
fn a_certificate_that_may_not_sign_certificates_is_refused() {
    let mut params = ca_params("Leaf");
    params.is_ca = IsCa::NoCa;
    let err = Files::of(&self_signed(params)).load().unwrap_err();
    assert_eq!(code(err), "station::x509::not_a_ca");

    let mut params = ca_params("Explicit leaf");
    params.is_ca = IsCa::ExplicitNoCa;
    let err = Files::of(&self_signed(params)).load().unwrap_err();
    assert!(err.to_string().contains("CA:FALSE"), "{err}");
    assert_eq!(code(err), "station::x509::not_a_ca");

    let mut params = ca_params("No cert sign");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let err = Files::of(&self_signed(params)).load().unwrap_err();
    assert_eq!(code(err), "station::x509::no_cert_sign");

    // No key usage at all: allowed (RFC 5280), with a warning.
    let mut params = ca_params("Unrestricted");
    params.key_usages = vec![];
    let ca = Files::of(&self_signed(params)).load().unwrap();
    assert!(
        ca.warnings(now(), 365)
            .iter()
            .any(|w| matches!(w, CaWarning::KeyUsageUnrestricted { .. }))
    );
}

#[test]
fn swapped_or_wrong_pem_kinds_are_refused() {
    let root = self_signed(ca_params("Root"));
    let key = root.key.serialize_pem();
    let cases = [
        // A certificate where the key belongs.
        (root.pem.clone(), root.pem.clone(), "ca_key_file"),
        // A key where the certificate belongs.
        (key.clone(), key.clone(), "ca_cert_file"),
        // The key next to the certificate in the certificate file.
        (format!("{}{key}", root.pem), key.clone(), "ca_cert_file"),
        // A public key where the private key belongs.
        (root.pem.clone(), root.key.public_key_pem(), "ca_key_file"),
    ];
    for (cert, key, which) in cases {
        let err = Files::new(&cert, &key).load().unwrap_err();
        assert!(err.to_string().starts_with(which), "{err}");
        assert_eq!(code(err), "station::x509::wrong_pem_kind");
    }

    let err = Files::new(&root.pem, "just some text\n")
        .load()
        .unwrap_err();
    assert_eq!(code(err), "station::x509::not_pem");
    let err = Files::new(&root.pem, " \n").load().unwrap_err();
    assert_eq!(code(err), "station::x509::empty");
    let err = Files::new(&root.pem, &format!("{key}{key}"))
        .load()
        .unwrap_err();
    assert_eq!(code(err), "station::x509::several_keys");
    let files = Files::of(&root);
    std::fs::remove_file(&files.key).unwrap();
    assert_eq!(code(files.load().unwrap_err()), "station::x509::unreadable");
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let files = Files::of(&self_signed(ca_params("Root")));
    for (mode, who) in [
        (0o644, "group and others"),
        (0o640, "group"),
        (0o604, "others"),
    ] {
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = files.load().unwrap_err();
        assert!(
            matches!(&err, X509Error::Exposed { who: w, .. } if *w == who),
            "{mode:o}: {err}"
        );
        let err = crate::Error::from(err);
        assert_eq!(err.code(), "station::x509::world_readable");
        assert!(err.hint().unwrap().contains("chmod 600"));
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(files.load().is_ok());
}

/// The CA key as SEC1 (`EC PRIVATE KEY`), preceded by `EC PARAMETERS` as `openssl ecparam
/// -genkey` writes it.
fn sec1_with_parameters(key: &KeyPair) -> String {
    use p256::pkcs8::DecodePrivateKey as _;
    let secret = p256::SecretKey::from_pkcs8_der(key.serialized_der()).unwrap();
    let sec1 = secret.to_sec1_der().unwrap();
    let parameters = key::SECP256R1.to_der().unwrap();
    format!(
        "{}{}",
        crate::armor::pem_lf("EC PARAMETERS", &parameters),
        crate::armor::pem_lf("EC PRIVATE KEY", &sec1)
    )
}

#[test]
fn openssl_key_formats_are_read() {
    let root = self_signed(ca_params("Root"));
    let sec1 = sec1_with_parameters(&root.key);
    let ca = Files::new(&root.pem, &sec1).load().unwrap();
    assert_eq!(ca.key_algorithm(), "ECDSA P-256");
    // CRLF line ends and text around the block.
    let crlf = format!(
        "comment line\r\n{}",
        root.key.serialize_pem().replace('\n', "\r\n")
    );
    assert!(Files::new(&root.pem, &crlf).load().is_ok());
}

#[test]
fn an_rsa_ca_signs_with_sha256() {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::EncodePrivateKey as _;
    let rsa_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let pkcs8 = rsa_key.to_pkcs8_der().unwrap();
    let key = KeyPair::try_from(pkcs8.as_bytes()).unwrap();
    let params = ca_params("RSA Root");
    let pem = params.self_signed(&key).unwrap().pem();
    // PKCS#1, as `openssl genrsa -traditional` writes it.
    let pkcs1 = rsa_key.to_pkcs1_der().unwrap();
    let files = Files::new(
        &pem,
        &crate::armor::pem_lf("RSA PRIVATE KEY", pkcs1.as_bytes()),
    );
    let ca = files.load().unwrap();
    assert_eq!(ca.key_algorithm(), "RSA 2048");
    let issued = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    let cert = Certificate::from_der(issued.certificate_der()).unwrap();
    assert_eq!(cert.signature_algorithm().oid, key::SHA256_WITH_RSA);
}

#[test]
fn an_encrypted_key_needs_its_passphrase() {
    let root = self_signed(ca_params("Root"));
    let info = pkcs8::PrivateKeyInfoRef::from_der(root.key.serialized_der()).unwrap();
    let encrypted = info
        .encrypt_with_rng(&mut getrandom::SysRng, b"correct horse")
        .unwrap();
    let encrypted_pem = crate::armor::pem_lf("ENCRYPTED PRIVATE KEY", encrypted.as_bytes());

    let err = Files::new(&root.pem, &encrypted_pem).load().unwrap_err();
    assert_eq!(code(err), "station::x509::encrypted_key");
    let err = Files::new(&root.pem, &encrypted_pem)
        .with_passphrase("wrong\n")
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert_eq!(code(err), "station::x509::cannot_decrypt");
    let files = Files::new(&root.pem, &encrypted_pem).with_passphrase("correct horse\n");
    assert!(files.load().is_ok());

    // The passphrase file is a secret too.
    use std::os::unix::fs::PermissionsExt as _;
    let passphrase = files.passphrase.as_ref().unwrap();
    std::fs::set_permissions(passphrase, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        code(files.load().unwrap_err()),
        "station::x509::world_readable"
    );

    // OpenSSL's legacy encrypted PEM is named, with the conversion command.
    let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
    let err = Files::new(&root.pem, legacy).load().unwrap_err();
    assert!(
        crate::Error::from(err)
            .hint()
            .unwrap()
            .contains("openssl pkcs8 -topk8")
    );
}

#[test]
fn keys_the_station_cannot_sign_with_are_named() {
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = ca_params("Ed").self_signed(&ed).unwrap().pem();
    let err = Files::new(&pem, &ed.serialize_pem()).load().unwrap_err();
    assert!(err.to_string().contains("Ed25519"), "{err}");
    assert_eq!(code(err), "station::x509::unsupported_key");
}

#[test]
fn warnings_name_what_expires_soon_and_cut_short_certificates() {
    let mut params = ca_params("Short");
    params.not_after = now() + Duration::days(30);
    let ca = Files::of(&self_signed(params)).load().unwrap();
    let warnings = ca.warnings(now(), 365);
    assert!(
        warnings.iter().any(
            |w| matches!(w, CaWarning::ExpiresSoon { days_left, .. } if (29..=30).contains(days_left))
        ),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| matches!(w, CaWarning::CertificatesCutShort { cert_days: 365, .. }))
    );
    assert!(warnings.iter().all(|w| !w.to_string().is_empty()));
    // Certificates end with the CA.
    let issued = ca.issue(&registration_id(), &P256_POLICY, now()).unwrap();
    assert!((issued.not_after() - ca.not_after()).abs() < Duration::seconds(1));

    let ca = Files::of(&self_signed(ca_params("Long"))).load().unwrap();
    assert_eq!(ca.warnings(now(), 365), []);
}

#[test]
fn a_validity_of_zero_days_is_refused() {
    let ca = Files::of(&self_signed(ca_params("Root"))).load().unwrap();
    for days in [0, MAX_CERT_DAYS + 1] {
        let policy = IssuePolicy {
            key_type: KeyType::EcdsaP256,
            validity_days: days,
        };
        let err = ca.issue(&registration_id(), &policy, now()).unwrap_err();
        assert_eq!(code(err), "station::x509::bad_validity");
    }
}

#[test]
fn key_types_parse_from_their_config_spelling() {
    for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        assert_eq!(key_type.as_str().parse::<KeyType>(), Ok(key_type));
    }
    assert_eq!(KeyType::default(), KeyType::EcdsaP256);
    assert!("rsa-4096".parse::<KeyType>().is_err());
}

#[test]
fn a_der_certificate_file_loads() {
    let root = self_signed(ca_params("Root"));
    let files = Files::of(&root);
    let der = pem::parse(&root.pem).unwrap().into_contents();
    std::fs::write(&files.cert, &der).unwrap();
    assert_eq!(files.load().unwrap().certificate_der(), der.as_slice());
    std::fs::write(&files.cert, &der[..der.len() - 10]).unwrap();
    assert_eq!(code(files.load().unwrap_err()), "station::x509::not_pem");
}

#[test]
fn the_ca_and_credentials_can_be_shared_across_line_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<SigningCa>();
    shareable::<DeviceCredentials>();
}
