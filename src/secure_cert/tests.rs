use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/secure_cert");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn p256_image() -> zeroize::Zeroizing<Vec<u8>> {
    device_image(
        &[&fixture("issuing_ca.pem")],
        &fixture("device_p256.pem"),
        &fixture("device_p256.key"),
    )
    .unwrap()
}

#[test]
fn an_image_reads_back_entry_by_entry() {
    let image = p256_image();
    let partition = parse(&image).unwrap();
    let kinds: Vec<(TlvType, u8)> = partition
        .entries
        .iter()
        .map(|entry| (entry.tlv_type, entry.subtype))
        .collect();
    assert_eq!(
        kinds,
        [
            (TlvType::CA_CERT, 0),
            (TlvType::DEV_CERT, 0),
            (TlvType::PRIV_KEY, 0),
            (TlvType::INTEGRITY, 0)
        ]
    );
    assert_eq!(partition.integrity, Integrity::Verified);
    assert_eq!(partition.end, image.len());
    assert_eq!(partition.stale_bytes, 0);
    for entry in &partition.entries {
        assert_eq!(entry.offset % ALIGNMENT, 0, "{entry:?}");
    }
    match &partition.entries[1].data {
        TlvData::Text(pem) => assert_eq!(*pem, fixture("device_p256.pem")),
        other => panic!("{other:?}"),
    }
    match &partition.entries[2].data {
        TlvData::Secret(key) => assert_eq!(key.expose(), fixture("device_p256.key").as_bytes()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_private_key_is_redacted_unless_asked_for() {
    let image = p256_image();
    let partition = parse(&image).unwrap();
    let key_body: String = fixture("device_p256.key")
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let shown = format!("{partition:?}");
    assert!(!shown.contains(&key_body[..16]), "{shown}");
    let entry = &partition.entries[2];
    assert!(!entry.display_value(false).contains(&key_body[..16]));
    assert!(entry.display_value(false).contains("redacted"));
    assert!(entry.display_value(true).contains(&key_body));
    if let TlvData::Secret(secret) = &entry.data {
        assert_eq!(secret.to_string(), "[redacted]");
    }
}

#[test]
fn certificates_are_re_armoured_as_the_tool_writes_them() {
    let crlf = fixture("issuing_ca.pem").replace('\n', "\r\n");
    let rewrapped = {
        let block = pem::parse(fixture("device_p256.pem")).unwrap();
        pem::encode_config(
            &block,
            pem::EncodeConfig::new()
                .set_line_ending(pem::LineEnding::LF)
                .set_line_wrap(76),
        )
    };
    let image = device_image(&[&crlf], &rewrapped, &fixture("device_p256.key")).unwrap();
    assert_eq!(*image, *p256_image());
}

#[test]
fn a_padded_image_is_the_image_then_erased_flash() {
    let image = p256_image();
    let flash = padded(&image, PARTITION_SIZE).unwrap();
    assert_eq!(flash.len(), PARTITION_SIZE);
    assert_eq!(&flash[..image.len()], image.as_slice());
    assert!(flash[image.len()..].iter().all(|&b| b == 0xFF));
    let partition = parse(&flash).unwrap();
    assert_eq!(partition.end, image.len());
    assert_eq!(partition.stale_bytes, 0);
    assert_eq!(
        padded(&[0; 10], 8).unwrap_err(),
        SecureCertError::DoesNotFit { len: 10, max: 8 }
    );
}

#[test]
fn damage_is_reported_with_its_offset() {
    let image = p256_image();
    let partition = parse(&image).unwrap();
    let key_offset = partition.entries[2].offset;

    let mut flipped = image.to_vec();
    flipped[key_offset + HEADER_LEN + 40] ^= 0x01;
    match parse(&flipped).unwrap_err() {
        SecureCertError::BadCrc { offset, tlv, .. } => {
            assert_eq!(offset, key_offset);
            assert_eq!(tlv, "PRIV_KEY (2)");
        }
        other => panic!("{other:?}"),
    }

    // Change an entry and fix its CRC: only the integrity entry notices.
    let mut forged = image.to_vec();
    let dev = &partition.entries[1];
    let len = usize::from(u16::from_le_bytes([
        forged[dev.offset + 10],
        forged[dev.offset + 11],
    ]));
    forged[dev.offset + HEADER_LEN + 100] ^= 0x01;
    let crc_at = dev.offset + HEADER_LEN + len + padding(len);
    let fixed = crc(&forged[dev.offset..crc_at]);
    forged[crc_at..crc_at + 4].copy_from_slice(&fixed.to_le_bytes());
    let err = parse(&forged).unwrap_err();
    assert!(
        matches!(err, SecureCertError::BadIntegrity { .. }),
        "{err:?}"
    );
    assert_eq!(
        crate::Error::from(err).code(),
        "station::secure_cert::bad_integrity"
    );

    let err = parse(&image[..image.len() - 10]).unwrap_err();
    assert!(matches!(err, SecureCertError::Truncated { .. }), "{err:?}");
    let err = parse(&[0xFF; 64]).unwrap_err();
    assert!(matches!(err, SecureCertError::NotAnImage { .. }), "{err:?}");
}

#[test]
fn left_overs_of_an_older_image_are_counted() {
    let image = p256_image();
    let mut flash = padded(&image, PARTITION_SIZE).unwrap().to_vec();
    flash[image.len() + 100] = 0x42;
    assert_eq!(parse(&flash).unwrap().stale_bytes, 1);
}

#[test]
fn inputs_of_the_wrong_kind_are_refused() {
    let cert = fixture("device_p256.pem");
    let key = fixture("device_p256.key");
    let pkcs8 = {
        let block = pem::parse(&key).unwrap();
        let secret = p256::SecretKey::from_sec1_der(block.contents()).unwrap();
        let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret).unwrap();
        crate::armor::pem_lf("PRIVATE KEY", der.as_bytes())
    };
    let cases: [(&[&str], &str, &str, &str); 5] = [
        (&[], &key, &key, "device certificate"),
        (&[], &cert, &cert, "private key"),
        (&[], &cert, &pkcs8, "private key"),
        (&[&key], &cert, &key, "CA certificate 1"),
        (&[], &format!("{cert}{cert}"), &key, "device certificate"),
    ];
    for (chain, cert, key, what) in cases {
        let err = device_image(chain, cert, key).unwrap_err();
        match &err {
            SecureCertError::BadPem { what: w, .. } => assert_eq!(w, what),
            other => panic!("{other:?}"),
        }
        assert!(err.is_input_error());
        let shown = err.to_string();
        assert!(
            !shown.contains(&fixture("device_p256.key")[40..60]),
            "{shown}"
        );
        let err = crate::Error::from(err);
        assert_eq!(err.code(), "station::secure_cert::bad_pem");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }
}

#[test]
fn an_image_larger_than_the_partition_is_refused() {
    let ca = fixture("issuing_ca.pem");
    let chain: Vec<&str> = std::iter::repeat_n(ca.as_str(), 12).collect();
    let err = device_image(
        &chain,
        &fixture("device_p256.pem"),
        &fixture("device_p256.key"),
    )
    .unwrap_err();
    match err {
        SecureCertError::DoesNotFit { len, max } => {
            assert_eq!(max, PARTITION_SIZE);
            assert!(len > PARTITION_SIZE);
        }
        other => panic!("{other:?}"),
    }
    let big = vec![1u8; 70_000];
    let err = build(&[Tlv {
        tlv_type: TlvType(51),
        subtype: 0,
        flags: 0,
        data: &big,
    }])
    .unwrap_err();
    assert!(matches!(err, SecureCertError::DoesNotFit { .. }), "{err:?}");
}

#[test]
fn crc_is_zlib_crc32_seeded_with_all_ones() {
    // zlib.crc32(b"123456789", 0xffffffff) in Python.
    assert_eq!(crc(b"123456789"), 0xD202_D277);
}
