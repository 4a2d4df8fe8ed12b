//! Cost of X.509 issuing per unit on one thread: a fresh device key pair, a certificate signed
//! by the CA, and the esp_secure_cert image holding them (what `station` would do per unit
//! with `attestation = "x509"`). Device keys ECDSA P-256 and RSA-2048; CA keys ECDSA P-256
//! (ECDSA SHA-256 signatures) and RSA-2048 (PKCS#1 v1.5 SHA-256). RSA key generation time
//! varies with how soon primes turn up, so RSA rows show the spread as well as the median.
//!
//! Run: `cargo bench --bench x509_issue` (`-- --units N` for the P-256 sample, default 2000;
//! RSA uses N/20, at least 20).

use std::hint::black_box;
use std::time::Instant;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rsa::pkcs8::EncodePrivateKey as _;
use station::identity::RegistrationId;
use station::x509::{CaFiles, IssuePolicy, KeyType, SigningCa};
use time::{Duration, OffsetDateTime};

/// Writes a self-signed CA made with `key` and loads it as the station would.
fn load_ca(dir: &std::path::Path, key: &KeyPair, name: &str) -> SigningCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    let cert = params.self_signed(key).expect("self-signed CA");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    SigningCa::load(
        &CaFiles {
            cert: &cert_path,
            chain: None,
            key: &key_path,
            key_passphrase: None,
        },
        OffsetDateTime::now_utc(),
    )
    .expect("load CA")
}

/// Milliseconds per unit for `units` units: (median, 90th percentile, max, image bytes).
fn measure(ca: &SigningCa, key_type: KeyType, units: usize) -> (f64, f64, f64, usize) {
    let policy = IssuePolicy {
        key_type,
        validity_days: 3650,
    };
    let mut times = Vec::with_capacity(units);
    let mut image_len = 0;
    for unit in 0..units {
        let id = RegistrationId::new(format!("bench-240ac4{unit:06x}")).expect("id");
        let start = Instant::now();
        let issued = ca
            .issue(&id, &policy, OffsetDateTime::now_utc())
            .expect("issue");
        let image = issued.esp_secure_cert().expect("image");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        image_len = image.len();
        black_box((&issued, &image));
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), times[times.len() - 1], image_len)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let units: usize = args
        .iter()
        .position(|a| a == "--units")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let rsa_units = (units / 20).max(20);
    let dir = tempfile::tempdir().expect("temp dir");

    let p256_ca = load_ca(
        dir.path(),
        &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 CA key"),
        "p256-ca",
    );
    let rsa_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA CA key");
    let rsa_ca_key = KeyPair::try_from(rsa_key.to_pkcs8_der().expect("pkcs8").as_bytes())
        .expect("RSA CA key pair");
    let rsa_ca = load_ca(dir.path(), &rsa_ca_key, "rsa-ca");

    println!(
        "x509_issue: per unit = key generation + certificate signing + esp_secure_cert image, one thread"
    );
    for (ca_name, ca, key_type, n) in [
        ("P-256 CA", &p256_ca, KeyType::EcdsaP256, units),
        ("RSA-2048 CA", &rsa_ca, KeyType::EcdsaP256, units),
        ("P-256 CA", &p256_ca, KeyType::Rsa2048, rsa_units),
    ] {
        // One warm-up unit: first-use table setup is not a per-unit cost.
        measure(ca, key_type, 1);
        let (median, p90, max, len) = measure(ca, key_type, n);
        println!(
            "x509_issue: {:>10} device key, {ca_name:<11}: median {median:8.3} ms, p90 {p90:8.3} ms, max {max:8.3} ms over {n} units ({len}-byte image)",
            key_type.as_str()
        );
    }
}
