use super::*;

fn row(mac: &str) -> ManifestRow {
    ManifestRow {
        batch: "WO-1".into(),
        mac: mac.parse().unwrap(),
        registration_id: format!("sensor-{}", mac.replace(':', "")).parse().unwrap(),
        chip: "esp32".into(),
        chip_revision: "v3.0".into(),
        flash_size: 4_194_304,
        nvs_sha256: Some("ab".repeat(32)),
        group_key_id: "sha256:0011223344556677".parse().unwrap(),
        provisioned_at: Some("2026-11-25T10:00:01.000Z".into()),
        operator: Some("ana".into()),
        station_id: "line1-st1".into(),
        port: Some("/dev/ttyUSB0".into()),
        attempts: 2,
        dps_status: crate::record::DpsStatus::NotRequested,
        assigned_hub: None,
        device_id: None,
        attestation: crate::record::Attestation::SymmetricKey,
        cert_serial: None,
        cert_thumbprint: None,
        cert_not_after: None,
    }
}

fn entry(seq: i64, action: &str, subject: &str, details: &str) -> AuditEntry {
    AuditEntry {
        seq,
        at: format!("2026-11-25T10:00:0{seq}.000Z"),
        station_id: "line1-st1".into(),
        operator: "ana".into(),
        action: action.into(),
        subject: subject.into(),
        details: details.into(),
        prev_hash: "0".repeat(64),
        hash: "1".repeat(64),
    }
}

/// A unit provisioned with X.509 attestation.
fn x509_row(mac: &str) -> ManifestRow {
    ManifestRow {
        attestation: crate::record::Attestation::X509,
        group_key_id: "sha256:8899aabbccddeeff".parse().unwrap(),
        cert_serial: Some("4F3A9C0D2E1B7A6C5D4E3F2A1B0C9D8E".into()),
        cert_thumbprint: Some("0F".repeat(32)),
        cert_not_after: Some("2036-11-22T10:00:01.000Z".into()),
        ..row(mac)
    }
}

fn render(rows: &[ManifestRow], format: ManifestFormat) -> String {
    let mut out = Vec::new();
    write_manifest(rows, format, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn manifest_columns_are_the_row_fields_in_order() {
    let value = serde_json::to_value(row("24:0a:c4:00:00:01")).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // serde_json's map is sorted; compare as sets here and check the order through the CSV.
    let mut columns = MANIFEST_COLUMNS.to_vec();
    columns.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, columns);
    let csv = render(&[row("24:0a:c4:00:00:01")], ManifestFormat::Csv);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let record: std::collections::HashMap<String, String> =
        reader.deserialize().next().unwrap().unwrap();
    assert_eq!(record["chip_revision"], "v3.0");
    assert_eq!(record["attempts"], "2");
    assert_eq!(record["assigned_hub"], "");
}

#[test]
fn manifest_csv_text_is_stable() {
    insta::assert_snapshot!(render(
        &[row("24:0a:c4:00:00:01"), x509_row("24:0a:c4:00:00:02")],
        ManifestFormat::Csv
    ));
}

#[test]
fn manifest_json_text_is_stable_and_parses() {
    let text = render(
        &[row("24:0a:c4:00:00:01"), x509_row("24:0a:c4:00:00:02")],
        ManifestFormat::Json,
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1]["mac"], "24:0a:c4:00:00:02");
    assert_eq!(parsed[0]["device_id"], serde_json::Value::Null);
    insta::assert_snapshot!(text);
}

#[test]
fn empty_manifest_is_a_header_or_an_empty_array() {
    assert_eq!(
        render(&[], ManifestFormat::Csv),
        format!("{}\n", MANIFEST_COLUMNS.join(","))
    );
    assert_eq!(render(&[], ManifestFormat::Json), "[]\n");
}

#[test]
fn audit_csv_has_its_header_even_when_empty_and_quotes_details() {
    let mut out = Vec::new();
    write_audit(&[], AuditFormat::Csv, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{}\n", AUDIT_COLUMNS.join(","))
    );
    let mut out = Vec::new();
    let e = entry(1, "batch.open", "WO-1", r#"{"target":3}"#);
    write_audit(std::slice::from_ref(&e), AuditFormat::Csv, &mut out).unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let back: AuditEntry = reader.deserialize().next().unwrap().unwrap();
    assert_eq!(back, e);
    let mut out = Vec::new();
    write_audit(std::slice::from_ref(&e), AuditFormat::Jsonl, &mut out).unwrap();
    let back: AuditEntry = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, e);
}

#[test]
fn audit_table_is_aligned_and_readable() {
    let entries = [
        entry(1, "batch.open", "WO-1", r#"{"target":3}"#),
        entry(
            2,
            "unit.provisioned",
            "24:0a:c4:00:00:01",
            r#"{"batch":"WO-1","error_code":null,"port":"/dev/ttyUSB0","reprovision":false}"#,
        ),
        entry(3, "key.loaded", "sha256:0011223344556677", "not json"),
    ];
    let mut out = Vec::new();
    write_audit_table(&entries, &mut out).unwrap();
    insta::assert_snapshot!(String::from_utf8(out).unwrap());
}

#[test]
fn hashing_writer_digests_exactly_what_passed() {
    let mut sink = Vec::new();
    let mut writer = HashingWriter::new(&mut sink);
    writer.write_all(b"hello ").unwrap();
    writer.write_all(b"world").unwrap();
    let (bytes, sha256) = writer.finish();
    assert_eq!(bytes, 11);
    assert_eq!(sha256, hex::encode(Sha256::digest(b"hello world")));
    assert_eq!(sink, b"hello world");
}
