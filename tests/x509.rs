//! X.509 attestation checked by an independent implementation: certificates the station issues
//! are verified by the `openssl` command against their CA chain, and CAs made the way
//! factories make them with `openssl` load (or are refused with the right code).
//!
//! `openssl` is found through `STATION_OPENSSL` (default `openssl` on the PATH). Without it the
//! tests are skipped, unless `STATION_REQUIRE_TOOLS=1` (as in CI), where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use station::identity::RegistrationId;
use station::x509::{CaFiles, DeviceCredentials, IssuePolicy, KeyType, SigningCa, X509Error};
use time::{Duration, OffsetDateTime};

/// Skips the test (or fails it under `STATION_REQUIRE_TOOLS=1`) when `what` is missing.
pub fn tool_missing(what: &str, install: &str) -> bool {
    if std::env::var("STATION_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{what} not found but STATION_REQUIRE_TOOLS=1 ({install})");
    }
    eprintln!("skipped: {what} not installed ({install})");
    true
}

/// The `openssl` command, if it runs.
pub fn openssl() -> Option<String> {
    let program = std::env::var("STATION_OPENSSL").unwrap_or_else(|_| "openssl".to_owned());
    let runs = Command::new(&program)
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if runs || !tool_missing("openssl", "apt-get install openssl") {
        Some(program)
    } else {
        None
    }
}

/// Runs openssl, returning stdout; panics with stderr on failure.
pub fn run(openssl: &str, dir: &Path, args: &[&str]) -> String {
    let output = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    owner_only(path);
}

fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A two-level test PKI made with rcgen: a root, and an issuing CA below it whose files the
/// station loads (root as the chain).
pub struct Pki {
    /// Kept alive for the test's duration.
    _dir: tempfile::TempDir,
    /// The root certificate (PEM file).
    pub root: PathBuf,
    /// The issuing CA's certificate.
    pub cert: PathBuf,
    /// The issuing CA's key (mode 0600).
    pub key: PathBuf,
}

impl Pki {
    /// A fresh PKI in a temporary directory.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("Line Test Root CA");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut issuing_params = ca_params("Line Test Issuing CA");
        issuing_params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&root_params, &root_key);
        let issuing = issuing_params.signed_by(&issuing_key, &issuer).unwrap();
        let pki = Pki {
            root: dir.path().join("root.pem"),
            cert: dir.path().join("issuing.pem"),
            key: dir.path().join("issuing.key"),
            _dir: dir,
        };
        std::fs::write(&pki.root, root.pem()).unwrap();
        std::fs::write(&pki.cert, issuing.pem()).unwrap();
        write_private(&pki.key, &issuing_key.serialize_pem());
        pki
    }

    /// The station's view of it.
    pub fn load(&self) -> SigningCa {
        SigningCa::load(
            &CaFiles {
                cert: &self.cert,
                chain: Some(&self.root),
                key: &self.key,
                key_passphrase: None,
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }
}

pub fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Station Tests");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    params
}

/// Issues for `registration_id` and writes `device.pem` and `device.key` into `dir`.
pub fn issue_into(
    ca: &SigningCa,
    registration_id: &str,
    key_type: KeyType,
    dir: &Path,
) -> DeviceCredentials {
    let issued = ca
        .issue(
            &RegistrationId::new(registration_id).unwrap(),
            &IssuePolicy {
                key_type,
                validity_days: 730,
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    std::fs::write(dir.join("device.pem"), issued.certificate_pem()).unwrap();
    write_private(&dir.join("device.key"), issued.private_key().expose_pem());
    issued
}

/// Checks with openssl that `device.pem` in `dir` verifies against the chain, is a TLS client
/// certificate, belongs to `device.key`, and carries the serial, thumbprint and subject the
/// station reports.
pub fn assert_openssl_accepts(openssl: &str, dir: &Path, root: &Path, untrusted: &[&Path]) {
    let mut args = vec![
        "verify".to_owned(),
        "-x509_strict".to_owned(),
        "-purpose".to_owned(),
        "sslclient".to_owned(),
        "-CAfile".to_owned(),
        root.display().to_string(),
    ];
    for path in untrusted {
        args.push("-untrusted".to_owned());
        args.push(path.display().to_string());
    }
    args.push("device.pem".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(run(openssl, dir, &args).trim(), "device.pem: OK");

    let from_key = run(openssl, dir, &["pkey", "-in", "device.key", "-pubout"]);
    let from_cert = run(
        openssl,
        dir,
        &["x509", "-in", "device.pem", "-noout", "-pubkey"],
    );
    assert_eq!(
        from_key, from_cert,
        "the private key is not the certificate's"
    );
}

#[test]
fn issued_certificates_verify_with_openssl_against_the_chain() {
    let Some(openssl) = openssl() else { return };
    let pki = Pki::new();
    let ca = pki.load();
    for (key_type, registration_id) in [
        (KeyType::EcdsaP256, "line-1-240ac4a1b2c3"),
        (KeyType::Rsa2048, "line-1-240ac4a1b2c4"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let issued = issue_into(&ca, registration_id, key_type, dir.path());
        assert_openssl_accepts(&openssl, dir.path(), &pki.root, &[&pki.cert]);

        let serial = run(
            &openssl,
            dir.path(),
            &["x509", "-in", "device.pem", "-noout", "-serial"],
        );
        assert_eq!(serial.trim(), format!("serial={}", issued.serial()));
        let fingerprint = run(
            &openssl,
            dir.path(),
            &[
                "x509",
                "-in",
                "device.pem",
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let fingerprint = fingerprint
            .trim()
            .split('=')
            .nth(1)
            .unwrap()
            .replace(':', "");
        assert_eq!(fingerprint, issued.thumbprint().as_str());
        let subject = run(
            &openssl,
            dir.path(),
            &["x509", "-in", "device.pem", "-noout", "-subject"],
        );
        assert_eq!(subject.trim(), format!("subject=CN = {registration_id}"));

        // The chain the station hands the device verifies the same way.
        std::fs::write(dir.path().join("chain.pem"), issued.chain_pem()).unwrap();
        assert_openssl_accepts(
            &openssl,
            dir.path(),
            &pki.root,
            &[&dir.path().join("chain.pem")],
        );
    }

    // Negative control: another PKI's root does not verify it.
    let other = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    issue_into(&ca, "line-1-240ac4a1b2c5", KeyType::EcdsaP256, dir.path());
    let output = Command::new(&openssl)
        .args(["verify", "-CAfile"])
        .arg(&other.root)
        .arg("-untrusted")
        .arg(&other.cert)
        .arg("device.pem")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a foreign root verified the certificate"
    );
}

/// Makes a CA with openssl in `dir`: `ca.key` (PKCS#8) and `ca.pem` with `subject`.
fn openssl_ca(openssl: &str, dir: &Path, subject: &str, extensions: &str) {
    run(
        openssl,
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca.key",
        ],
    );
    std::fs::write(dir.join("ca.ext"), extensions).unwrap();
    run(
        openssl,
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "30",
            "-subj",
            subject,
            "-config",
            "ca.ext",
            "-extensions",
            "v3_ca",
            "-out",
            "ca.pem",
        ],
    );
    owner_only(&dir.join("ca.key"));
}

const CA_EXTENSIONS: &str = "[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n";

fn load_openssl_ca(dir: &Path, passphrase: Option<&Path>) -> Result<SigningCa, X509Error> {
    SigningCa::load(
        &CaFiles {
            cert: &dir.join("ca.pem"),
            chain: None,
            key: &dir.join("ca.key"),
            key_passphrase: passphrase,
        },
        OffsetDateTime::now_utc(),
    )
}

/// Regression for issue 17: an Active Directory style CA name repeats attribute types
/// (`DC=example, DC=com`, two `OU`s); the issuer of every device certificate must be that name
/// unchanged, or no verifier links the device to its CA.
#[test]
fn a_ca_named_with_repeated_attributes_issues_certificates_openssl_links_to_it() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    openssl_ca(
        &openssl,
        dir.path(),
        "/DC=com/DC=example/OU=Factory/OU=Line 1/CN=Example Issuing CA",
        CA_EXTENSIONS,
    );
    let ca = load_openssl_ca(dir.path(), None).unwrap();
    assert_eq!(
        ca.subject(),
        // RFC 4514 writes the most specific name first.
        "CN=Example Issuing CA,OU=Line 1,OU=Factory,DC=example,DC=com"
    );
    issue_into(&ca, "line-2-240ac4a1b2c3", KeyType::EcdsaP256, dir.path());
    assert_openssl_accepts(&openssl, dir.path(), &dir.path().join("ca.pem"), &[]);
    let issuer = run(
        &openssl,
        dir.path(),
        &["x509", "-in", "device.pem", "-noout", "-issuer"],
    );
    let subject = run(
        &openssl,
        dir.path(),
        &["x509", "-in", "ca.pem", "-noout", "-subject"],
    );
    assert_eq!(
        issuer.trim_start_matches("issuer="),
        subject.trim_start_matches("subject=")
    );
}

#[test]
fn openssl_encrypted_ca_keys_load_with_their_passphrase() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    openssl_ca(&openssl, dir.path(), "/CN=Encrypted CA", CA_EXTENSIONS);
    let pass = dir.path().join("ca.pass");
    write_private(&pass, "factory secret\n");
    let plain = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();

    // PKCS#8 PBES2 (PBKDF2 + AES-256-CBC, OpenSSL 3's default) and scrypt.
    for extra in [&[][..], &["-scrypt"][..]] {
        let mut args = vec![
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "plain.key",
            "-out",
            "ca.key",
            "-passout",
            "pass:factory secret",
        ];
        args.extend_from_slice(extra);
        write_private(&dir.path().join("plain.key"), &plain);
        run(&openssl, dir.path(), &args);
        owner_only(&dir.path().join("ca.key"));
        let err = load_openssl_ca(dir.path(), None).unwrap_err();
        assert_eq!(
            station::Error::from(err).code(),
            "station::x509::encrypted_key"
        );
        load_openssl_ca(dir.path(), Some(&pass)).unwrap();
    }

    // OpenSSL's legacy encrypted PEM.
    run(
        &openssl,
        dir.path(),
        &[
            "ec",
            "-in",
            "plain.key",
            "-aes256",
            "-passout",
            "pass:factory secret",
            "-out",
            "ca.key",
        ],
    );
    owner_only(&dir.path().join("ca.key"));
    let err = load_openssl_ca(dir.path(), Some(&pass)).unwrap_err();
    assert_eq!(
        station::Error::from(err).code(),
        "station::x509::legacy_encrypted_key"
    );
}

#[test]
fn an_openssl_leaf_certificate_is_not_a_signing_ca() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    openssl_ca(
        &openssl,
        dir.path(),
        "/CN=Server",
        "[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n",
    );
    let err = load_openssl_ca(dir.path(), None).unwrap_err();
    assert_eq!(station::Error::from(err).code(), "station::x509::not_a_ca");
}
