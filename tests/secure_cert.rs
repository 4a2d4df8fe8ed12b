//! esp_secure_cert images compared byte for byte with Espressif's `esp-secure-cert-tool`:
//! the golden images in `fixtures/secure_cert/`, and (when the tool is installed) the tool run
//! live on credentials the station has just issued.
//!
//! The tool is found through `STATION_SECURE_CERT_TOOL` (a command line), else
//! `configure_esp_secure_cert.py` on the PATH. Without it the live test is skipped, unless
//! `STATION_REQUIRE_TOOLS=1` (as in CI), where it fails.

use std::path::Path;
use std::process::Command;

use station::secure_cert::{self, Integrity, TlvData, TlvType};
use station::x509::KeyType;

use super::x509::{Pki, issue_into, tool_missing};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/secure_cert");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(format!("{name}.bin"))).unwrap()
}

#[test]
fn station_images_equal_the_golden_images() {
    let issuing = fixture("issuing_ca.pem");
    let root = fixture("root_ca.pem");
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("p256_one_ca", vec![&issuing], "device_p256"),
        ("rsa_one_ca", vec![&issuing], "device_rsa"),
        ("p256_no_ca", vec![], "device_p256"),
        ("p256_chain", vec![&issuing, &root], "device_p256"),
    ];
    for (name, chain, device) in cases {
        let image = secure_cert::device_image(
            &chain,
            &fixture(&format!("{device}.pem")),
            &fixture(&format!("{device}.key")),
        )
        .unwrap();
        let expected = golden(name);
        if let Some(at) = image.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!("{name}: first difference at byte {at:#x}");
        }
        assert_eq!(image.len(), expected.len(), "{name}");
    }
}

#[test]
fn golden_images_decode_to_their_inputs() {
    let partition = secure_cert::parse(&golden("p256_chain")).unwrap();
    assert_eq!(partition.integrity, Integrity::Verified);
    let summary: Vec<(TlvType, u8)> = partition
        .entries
        .iter()
        .map(|entry| (entry.tlv_type, entry.subtype))
        .collect();
    assert_eq!(
        summary,
        [
            (TlvType::CA_CERT, 0),
            (TlvType::CA_CERT, 1),
            (TlvType::DEV_CERT, 0),
            (TlvType::PRIV_KEY, 0),
            (TlvType::INTEGRITY, 0)
        ]
    );
    let text = |i: usize| match &partition.entries[i].data {
        TlvData::Text(text) => text.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text(0), fixture("issuing_ca.pem"));
    assert_eq!(text(1), fixture("root_ca.pem"));
    assert_eq!(text(2), fixture("device_p256.pem"));
    assert_eq!(
        partition.entries[3].display_value(true),
        fixture("device_p256.key")
    );
}

/// The reference tool, if installed.
fn reference_tool() -> Option<Vec<String>> {
    let line = std::env::var("STATION_SECURE_CERT_TOOL")
        .unwrap_or_else(|_| "configure_esp_secure_cert.py".to_owned());
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let (program, args) = words.split_first()?;
    let runs = Command::new(program)
        .args(args)
        .arg("--help")
        .output()
        .is_ok_and(|output| output.status.success());
    if runs
        || !tool_missing(
            "esp-secure-cert-tool",
            "pip install esp-secure-cert-tool==2.6.1",
        )
    {
        Some(words)
    } else {
        None
    }
}

/// Runs the tool in `dir` with `args` and returns the image it wrote.
fn run_tool(tool: &[String], dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(&tool[0])
        .args(&tool[1..])
        .args(args)
        .args(["--target_chip", "esp32", "--skip_flash"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "esp-secure-cert-tool failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    std::fs::read(dir.join("esp_secure_cert_data/esp_secure_cert.bin")).unwrap()
}

#[test]
fn esp_secure_cert_tool_agrees_on_freshly_issued_credentials() {
    let Some(tool) = reference_tool() else { return };
    let pki = Pki::new();
    let ca = pki.load();
    let mut compared = 0;
    for (n, key_type) in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::EcdsaP256]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let issued = issue_into(&ca, &format!("line-3-240ac4a1b2c{n}"), key_type, dir.path());
        let ours = issued.esp_secure_cert().unwrap();
        let chain = issued.chain_pems();
        std::fs::write(dir.path().join("ca0.pem"), &chain[0]).unwrap();
        std::fs::write(dir.path().join("ca1.pem"), &chain[1]).unwrap();

        // The signing CA alone, through the command line...
        let theirs = run_tool(
            &tool,
            dir.path(),
            &[
                "--ca-cert",
                "ca0.pem",
                "--device-cert",
                "device.pem",
                "--private-key",
                "device.key",
            ],
        );
        let signing_ca_only = secure_cert::device_image(
            &[&chain[0]],
            issued.certificate_pem(),
            issued.private_key().expose_pem(),
        )
        .unwrap();
        assert!(
            *signing_ca_only == theirs,
            "{key_type}: differs from the tool (one CA)"
        );

        // ...and the whole chain, through a CSV listing the CA certificates as subtypes.
        std::fs::write(
            dir.path().join("chain.csv"),
            "tlv_type,tlv_subtype,data_value,data_type,priv_key_type,algorithm,key_size,efuse_id,efuse_key\n\
             ESP_SECURE_CERT_CA_CERT_TLV,0,ca0.pem,file,,,,,\n\
             ESP_SECURE_CERT_CA_CERT_TLV,1,ca1.pem,file,,,,,\n\
             ESP_SECURE_CERT_DEV_CERT_TLV,0,device.pem,file,,,,,\n\
             ESP_SECURE_CERT_PRIV_KEY_TLV,0,device.key,file,plaintext,,,,\n",
        )
        .unwrap();
        let theirs = run_tool(&tool, dir.path(), &["--esp_secure_cert_csv", "chain.csv"]);
        assert!(*ours == theirs, "{key_type}: differs from the tool (chain)");
        compared += 2;
    }
    eprintln!("esp-secure-cert-tool: {compared} freshly issued images identical");
}
