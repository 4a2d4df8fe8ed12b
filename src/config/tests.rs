use super::*;
use crate::nvs;

const MINIMAL: &str = r#"[station]
id = "line1-st1"

[dps]
id_scope = "0ne00ABCDEF"
group_key_file = "secrets/group.key"
registration_id = "sensor-{mac}"

[nvs]
namespace = "dps"

[nvs.entries]
id_scope = "{id_scope}"
reg_id = "{registration_id}"
device_key = "{device_key}"
dps_host = "{dps_host}"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/station/station.toml"))
}

/// Replaces the first occurrence of `from` in the minimal config.
fn variant(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from}");
    MINIMAL.replacen(from, to, 1)
}

fn code(err: ConfigError) -> String {
    crate::Error::from(err).code()
}

#[track_caller]
fn assert_error(text: &str, expected_code: &str, line: usize, needle: &str) {
    let err = parse(text).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("/etc/station/station.toml:{line}: ")),
        "wrong location: {message}"
    );
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    let err = crate::Error::from(err);
    assert_eq!(err.code(), expected_code, "{message}");
    assert!(
        err.hint().is_some_and(|h| !h.is_empty()),
        "{expected_code} has no hint"
    );
    assert_eq!(err.exit_code(), crate::error::exit::USAGE);
}

#[test]
fn checked_in_example_parses_with_the_documented_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::parse(&text, &path).unwrap();
    assert_eq!(config.station.id, "line1-st1");
    assert_eq!(
        config.station.database,
        Database::Sqlite(path.parent().unwrap().join("station.db"))
    );
    assert_eq!(
        config.dps.verify_url,
        "https://global.azure-devices-provisioning.net"
    );
    assert!(!config.dps.pre_verify);
    assert_eq!(
        config.dps.verify_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(config.dps.payload, None);
    assert_eq!((config.nvs.offset, config.nvs.size), (0x9000, 0x6000));
    let keys: Vec<&str> = config.nvs.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["id_scope", "reg_id", "device_key", "dps_host"]);
    assert_eq!(config.serial.chip, Chip::Esp32);
    assert_eq!(config.serial.baud, 921_600);
    assert!(config.serial.stub);
    assert!(config.firmware.is_empty());
}

#[test]
fn minimal_config_takes_defaults_and_resolves_paths_next_to_the_file() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.station.database,
        Database::Sqlite("/etc/station/station.db".into())
    );
    assert_eq!(
        config
            .dps
            .attestation
            .symmetric_key()
            .unwrap()
            .group_key_file,
        Path::new("/etc/station/secrets/group.key")
    );
    assert_eq!(config.dps.endpoint, DEFAULT_DPS_ENDPOINT);
    assert_eq!(config.dps.api_version, DEFAULT_API_VERSION);
    assert_eq!(config.serial.ports, ["auto"]);
    assert_eq!(config.serial.before, BeforeReset::DefaultReset);
    assert_eq!(config.serial.after, AfterReset::HardReset);
    let absolute = variant("\"secrets/group.key\"", "\"/keys/group.key\"");
    assert_eq!(
        parse(&absolute)
            .unwrap()
            .dps
            .attestation
            .symmetric_key()
            .unwrap()
            .group_key_file,
        Path::new("/keys/group.key")
    );
}

#[test]
fn entry_templates_render_in_file_order() {
    let config = parse(
        &variant(
            "dps_host = \"{dps_host}\"",
            "hub = \"{station_id}/{mac}:{secondary_device_key}\"",
        )
        .replace(
            "registration_id = \"sensor-{mac}\"",
            "registration_id = \"sensor-{mac}\"\nsecondary_group_key_file = \"k2\"",
        ),
    )
    .unwrap();
    let values = TemplateValues {
        id_scope: "scope",
        registration_id: "sensor-1",
        device_key: "K1",
        secondary_device_key: "K2",
        dps_host: "host",
        mac: "240ac4123456",
        station_id: "st",
        ..TemplateValues::default()
    };
    let rendered: Vec<(String, nvs::Value)> = config
        .nvs
        .render(&values)
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        rendered,
        [
            ("id_scope".to_owned(), nvs::Value::Str("scope".into())),
            ("reg_id".to_owned(), nvs::Value::Str("sensor-1".into())),
            ("device_key".to_owned(), nvs::Value::Str("K1".into())),
            (
                "hub".to_owned(),
                nvs::Value::Str("st/240ac4123456:K2".into())
            ),
        ]
    );
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = variant(
        "namespace = \"dps\"",
        "namespace = \"dps\"\nnamepsace = \"x\"",
    );
    assert_error(
        &text,
        "station::config::unknown_key",
        11,
        "unknown field `namepsace`",
    );
    let text = variant("[station]", "[stations]");
    assert_error(&text, "station::config::unknown_key", 1, "stations");
}

#[test]
fn missing_key_names_the_key() {
    let text = variant("id_scope = \"0ne00ABCDEF\"\n", "");
    let err = parse(&text).unwrap_err();
    assert_eq!(code(err), "station::config::missing_key");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("missing field `id_scope`"), "{err}");
}

#[test]
fn bad_template_placeholder_is_refused() {
    let text = variant("\"{dps_host}\"", "\"{dps_hostname}\"");
    assert_error(
        &text,
        "station::config::bad_template",
        16,
        "unknown placeholder `{dps_hostname}`",
    );
    let text = variant("\"{dps_host}\"", "\"{dps_host\"");
    assert_error(&text, "station::config::bad_template", 16, "never closed");
    let text = variant("\"{device_key}\"", "\"{secondary_device_key}\"");
    assert_error(
        &text,
        "station::config::bad_template",
        15,
        "secondary_group_key_file",
    );
}

#[test]
fn registration_id_template_that_can_yield_invalid_ids_is_refused() {
    for (template, needle) in [
        ("Sensor-{mac}", "uppercase"),
        ("sensor", "no {mac}"),
        ("sensor-{serial}", "unknown placeholder"),
        ("sensor/{mac}", "does not allow"),
        ("{mac}.", "ends in"),
    ] {
        let text = variant("\"sensor-{mac}\"", &format!("\"{template}\""));
        assert_error(&text, "station::config::bad_registration_id", 7, needle);
    }
    let long = format!("\"{}-{{mac}}\"", "a".repeat(120));
    assert_error(
        &variant("\"sensor-{mac}\"", &long),
        "station::config::bad_registration_id",
        7,
        "128",
    );
}

#[test]
fn nvs_key_and_namespace_longer_than_15_bytes_are_refused() {
    let text = variant("reg_id =", "registration_id_x =");
    assert_error(
        &text,
        "station::config::nvs_key_too_long",
        14,
        "`registration_id_x` is 17 bytes",
    );
    let text = variant("namespace = \"dps\"", "namespace = \"dps_configuration\"");
    assert_error(
        &text,
        "station::config::nvs_key_too_long",
        10,
        "namespace `dps_configuration` is 17 bytes",
    );
    // 15 bytes is the limit, not over it.
    assert!(parse(&variant("reg_id =", "registration_i =")).is_ok());
}

#[test]
fn offsets_and_sizes_must_be_4k_aligned() {
    let text = variant(
        "namespace = \"dps\"",
        "offset = 0x9100\nnamespace = \"dps\"",
    );
    assert_error(
        &text,
        "station::config::misaligned",
        10,
        "[nvs] offset = 0x9100",
    );
    let text = variant("namespace = \"dps\"", "size = 0x5800\nnamespace = \"dps\"");
    assert_error(
        &text,
        "station::config::misaligned",
        10,
        "[nvs] size = 0x5800",
    );
    let text = variant("namespace = \"dps\"", "size = 0x2000\nnamespace = \"dps\"");
    assert_error(&text, "station::config::bad_value", 10, "minimum");
}

#[test]
fn value_that_cannot_fit_the_partition_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    // Three pages hold two usable pages of 126 entries; 3 strings of 3,900 bytes need 3 x 123.
    for name in ["a.pem", "b.pem", "c.pem"] {
        std::fs::write(dir.path().join(name), "x".repeat(3_900)).unwrap();
    }
    let text = variant("namespace = \"dps\"", "size = 0x3000\nnamespace = \"dps\"")
        + "a = { file = \"a.pem\" }\nb = { file = \"b.pem\" }\nc = { file = \"c.pem\" }\n";
    let Err(err) = Config::parse(&text, &dir.path().join("station.toml")) else {
        panic!("three 3,900-byte strings cannot fit 0x3000");
    };
    let message = err.to_string();
    assert_eq!(code(err), "station::config::does_not_fit", "{message}");
    assert!(message.contains(":10: "), "{message}");
    assert!(
        message.contains("does not fit [nvs] size = 0x3000"),
        "{message}"
    );
    // ESP-IDF keeps the last page free for garbage collection: `b` is the first that cannot go.
    assert!(message.contains("entry `dps/b` does not fit"), "{message}");
    assert!(message.contains("8192 bytes missing"), "{message}");
}

#[test]
fn entry_file_is_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = include_str!("../../fixtures/certs/DigiCertGlobalRootG2.pem");
    std::fs::write(dir.path().join("ca.pem"), root).unwrap();
    let text = MINIMAL.to_owned() + "root_ca = { file = \"ca.pem\" }\n";
    let config = Config::parse(&text, &dir.path().join("station.toml")).unwrap();
    assert!(
        matches!(&config.nvs.entries[4].value, EntryValue::File { contents, .. } if contents.starts_with("-----BEGIN"))
    );
    let missing = MINIMAL.to_owned() + "root_ca = { file = \"nope.pem\" }\n";
    let err = Config::parse(&missing, &dir.path().join("station.toml")).unwrap_err();
    assert_eq!(code(err), "station::config::file_unreadable");
    let wrong = MINIMAL.to_owned() + "root_ca = { path = \"ca.pem\" }\n";
    let err = Config::parse(&wrong, &dir.path().join("station.toml")).unwrap_err();
    assert_eq!(code(err), "station::config::unknown_key");
}

#[test]
fn serial_values_are_checked() {
    let base = MINIMAL.to_owned() + "\n[serial]\n";
    assert_error(
        &(base.clone() + "chip = \"esp8266\"\n"),
        "station::config::syntax",
        19,
        "esp8266",
    );
    assert_error(
        &(base.clone() + "before = \"reset\"\n"),
        "station::config::syntax",
        19,
        "reset",
    );
    assert_error(
        &(base.clone() + "baud = 12\n"),
        "station::config::bad_value",
        19,
        "outside",
    );
    assert_error(
        &(base.clone() + "ports = []\n"),
        "station::config::bad_value",
        19,
        "empty",
    );
    let ports =
        parse(&(base.clone() + "ports = [\"auto\", \"ports/tty*\", \"/dev/ttyUSB0\"]\n")).unwrap();
    assert_eq!(
        ports.serial.ports,
        ["auto", "/etc/station/ports/tty*", "/dev/ttyUSB0"]
    );
    let config = parse(
        &(base + "before = \"no-reset\"\nafter = \"no-reset\"\nchip = \"esp32s3\"\nstub = false\n"),
    )
    .unwrap();
    assert_eq!(config.serial.before, BeforeReset::NoReset);
    assert_eq!(config.serial.after, AfterReset::NoReset);
    assert_eq!(config.serial.chip, Chip::Esp32s3);
    assert!(!config.serial.stub);
}

#[test]
fn firmware_must_not_overlap_nvs_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.bin"), vec![0u8; 0x2000]).unwrap();
    let path = dir.path().join("station.toml");
    let ok = MINIMAL.to_owned() + "\n[[firmware]]\noffset = 0x10000\nfile = \"app.bin\"\n";
    assert_eq!(Config::parse(&ok, &path).unwrap().firmware[0].size, 0x2000);
    let over_nvs = MINIMAL.to_owned() + "\n[[firmware]]\noffset = 0x8000\nfile = \"app.bin\"\n";
    let err = Config::parse(&over_nvs, &path).unwrap_err();
    assert!(
        err.to_string().contains("overlaps the NVS partition"),
        "{err}"
    );
    let twice = ok.clone() + "[[firmware]]\noffset = 0x11000\nfile = \"app.bin\"\n";
    let err = Config::parse(&twice, &path).unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    let misaligned = MINIMAL.to_owned() + "\n[[firmware]]\noffset = 0x10010\nfile = \"app.bin\"\n";
    assert_eq!(
        code(Config::parse(&misaligned, &path).unwrap_err()),
        "station::config::misaligned"
    );
}

#[test]
fn dps_values_are_checked() {
    let text = variant(
        "registration_id",
        "endpoint = \"https://global.azure-devices-provisioning.net\"\nregistration_id",
    );
    assert_error(&text, "station::config::bad_value", 7, "not a host name");
    let text = variant("\"0ne00ABCDEF\"", "\"0ne00 ABCDEF\"");
    assert_error(&text, "station::config::bad_value", 5, "not a DPS ID scope");
    let text = variant(
        "registration_id",
        "verify_url = \"127.0.0.1:8443\"\nregistration_id",
    );
    assert_error(&text, "station::config::bad_value", 7, "not an http(s) URL");
    let text = variant(
        "registration_id",
        "verify_url = \"http://127.0.0.1:8443/\"\nregistration_id",
    );
    assert_eq!(
        parse(&text).unwrap().dps.verify_url,
        "http://127.0.0.1:8443"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let text = variant("namespace = \"dps\"", "namespace = dps");
    assert_error(&text, "station::config::syntax", 10, "");
    let text = variant(
        "namespace = \"dps\"",
        "namespace = \"dps\"\noffset = \"0x9000\"",
    );
    assert_error(&text, "station::config::syntax", 11, "");
}

#[test]
fn dps_verify_timeout_defaults_and_is_bounded() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.dps.verify_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(config.dps.payload, None);
    let text = variant("registration_id", "verify_timeout = 5\nregistration_id");
    assert_eq!(
        parse(&text).unwrap().dps.verify_timeout,
        std::time::Duration::from_secs(5)
    );
    for bad in ["0", "601"] {
        let text = variant(
            "registration_id",
            &format!("verify_timeout = {bad}\nregistration_id"),
        );
        assert_error(&text, "station::config::bad_value", 7, "outside 1 to 600");
    }
}

#[test]
fn dps_payload_table_becomes_json() {
    let text = variant(
        "[nvs]",
        "[dps.payload]\nmodel = \"th-1\"\nline = 3\n[dps.payload.site]\ncity = \"Brno\"\n\n[nvs]",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.dps.payload,
        Some(serde_json::json!({ "model": "th-1", "line": 3, "site": { "city": "Brno" } }))
    );
    let text = variant("[nvs]", "[dps.payload]\nmade = 1979-05-27\n\n[nvs]");
    assert_error(&text, "station::config::bad_value", 9, "[dps.payload]");
}

#[test]
fn boot_check_is_off_by_default_with_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    let boot = &config.boot;
    assert!(!boot.enabled);
    assert_eq!(boot.baud, 115_200);
    assert_eq!(boot.timeout, std::time::Duration::from_secs(10));
    assert_eq!(boot.keep_log, 4096);
    let texts = |patterns: &[BootPattern]| -> Vec<String> {
        patterns.iter().map(|p| p.text.clone()).collect()
    };
    assert_eq!(texts(&boot.expect), DEFAULT_BOOT_EXPECT);
    // Every default fail pattern parses (none is lost by `BootConfig::default`).
    assert_eq!(texts(&boot.fail), DEFAULT_BOOT_FAIL);
}

#[test]
fn boot_patterns_render_with_the_units_values() {
    let text = MINIMAL.to_owned()
        + "\n[serial]\nafter = \"watchdog-reset\"\n\n[boot]\nenabled = true\nbaud = 921600\n\
           timeout = 2.5\nexpect = [\"dps: registration id {registration_id}\", \"scope {id_scope} on {mac}\"]\n\
           fail = [\"Guru Meditation\"]\nkeep_log = 1024\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.serial.after, AfterReset::WatchdogReset);
    let boot = &config.boot;
    assert!(boot.enabled);
    assert_eq!(boot.baud, 921_600);
    assert_eq!(boot.timeout, std::time::Duration::from_millis(2500));
    assert_eq!(boot.keep_log, 1024);
    let values = TemplateValues {
        id_scope: "0ne00ABCDEF",
        registration_id: "sensor-240ac4123456",
        device_key: "never",
        secondary_device_key: "never",
        dps_host: "h",
        mac: "240ac4123456",
        station_id: "st",
        device_cert: "never",
        device_private_key: "never",
        ca_chain: "never",
    };
    let rendered: Vec<String> = boot.expect.iter().map(|p| p.render(&values)).collect();
    assert_eq!(
        rendered,
        [
            "dps: registration id sensor-240ac4123456",
            "scope 0ne00ABCDEF on 240ac4123456"
        ]
    );
    assert_eq!(boot.fail.len(), 1);
    // Whole seconds are seconds too.
    let config = parse(&text.replace("timeout = 2.5", "timeout = 3")).unwrap();
    assert_eq!(config.boot.timeout, std::time::Duration::from_secs(3));
}

#[test]
fn boot_values_are_checked() {
    let serial = MINIMAL.to_owned() + "\n[serial]\nafter = \"hard-reset\"\n\n[boot]\n";
    // Line 22 is the first line of [boot].
    assert_error(
        &(MINIMAL.to_owned() + "\n[serial]\nafter = \"no-reset\"\n\n[boot]\nenabled = true\n"),
        "station::config::bad_value",
        22,
        "after = \"no-reset\"",
    );
    assert_error(
        &(serial.clone() + "enabled = true\nexpect = [\"device key {device_key}\"]\n"),
        "station::config::bad_template",
        23,
        "may not name a device key",
    );
    assert_error(
        &(serial.clone() + "fail = [\"{serial}\"]\n"),
        "station::config::bad_template",
        22,
        "unknown placeholder",
    );
    assert_error(
        &(serial.clone() + "enabled = true\nexpect = []\n"),
        "station::config::bad_value",
        21,
        "no pattern to wait for",
    );
    assert_error(
        &(serial.clone() + "expect = [\"\"]\n"),
        "station::config::bad_value",
        22,
        "0 characters",
    );
    for (line, needle) in [
        ("timeout = 0", "outside"),
        ("timeout = 301", "outside"),
        ("baud = 300", "outside"),
        ("keep_log = 10", "outside"),
        ("keep_log = 2000000", "outside"),
    ] {
        assert_error(
            &(serial.clone() + line + "\n"),
            "station::config::bad_value",
            22,
            needle,
        );
    }
    assert_error(
        &(serial + "expected = [\"x\"]\n"),
        "station::config::unknown_key",
        22,
        "expected",
    );
}

// Issue 15: `[station] database` is a SQLite file or a PostgreSQL URL, whose password never
// sits in station.toml.
#[test]
fn database_is_a_sqlite_file_or_a_postgres_url_without_a_password() {
    let url = "postgres://line1_st1@db.factory.local:5432/station?sslmode=verify-full";
    let config = parse(&variant(
        "id = \"line1-st1\"",
        &format!(
            "id = \"line1-st1\"\ndatabase = \"{url}\"\ndatabase_password_file = \"secrets/db.password\""
        ),
    ))
    .unwrap();
    assert_eq!(
        config.station.database,
        Database::Postgres {
            url: url.to_owned(),
            password_file: Some("/etc/station/secrets/db.password".into()),
        }
    );
    assert_eq!(config.station.database.to_string(), url);
    let config = parse(&variant(
        "id = \"line1-st1\"",
        "id = \"line1-st1\"\ndatabase = \"postgresql://st@db/station\"",
    ))
    .unwrap();
    assert!(matches!(
        config.station.database,
        Database::Postgres {
            password_file: None,
            ..
        }
    ));
    let config = parse(&variant(
        "id = \"line1-st1\"",
        "id = \"line1-st1\"\ndatabase = \"/var/lib/station/line1.db\"",
    ))
    .unwrap();
    assert_eq!(
        config.station.database,
        Database::Sqlite("/var/lib/station/line1.db".into())
    );

    for (database, shown) in [
        (
            "postgres://st:s3cr3t-Pw@db/station",
            "postgres://st:***@db/station",
        ),
        (
            "postgres://st@db/station?sslmode=require&password=s3cr3t-Pw",
            "postgres://st@db/station?sslmode=require&password=***",
        ),
    ] {
        let text = variant(
            "id = \"line1-st1\"",
            &format!("id = \"line1-st1\"\ndatabase = \"{database}\""),
        );
        assert_error(
            &text,
            "station::config::bad_value",
            3,
            &format!("the URL {shown} holds a password"),
        );
        let error = crate::Error::from(parse(&text).unwrap_err());
        let all = format!("{error} {error:?} {}", error.hint().unwrap());
        assert!(!all.contains("s3cr3t"), "{all}");
    }
    assert_error(
        &variant(
            "id = \"line1-st1\"",
            "id = \"line1-st1\"\ndatabase = \"mysql://st@db/station\"",
        ),
        "station::config::bad_value",
        3,
        "neither a file nor a postgres:// URL",
    );
    assert_error(
        &variant(
            "id = \"line1-st1\"",
            "id = \"line1-st1\"\ndatabase_password_file = \"secrets/db.password\"",
        ),
        "station::config::bad_value",
        3,
        "database_password_file",
    );
}

/// `MINIMAL` switched to X.509 attestation with the credentials in NVS.
fn x509_nvs() -> String {
    MINIMAL
        .replace(
            "group_key_file = \"secrets/group.key\"",
            "attestation = \"x509\"\nca_cert_file = \"ca/issuing.pem\"\nca_key_file = \"ca/issuing.key\"",
        )
        .replace(
            "device_key = \"{device_key}\"",
            "cert = \"{device_cert}\"\npriv_key = \"{device_private_key}\"\nca_chain = \"{ca_chain}\"",
        )
}

/// `MINIMAL` switched to X.509 attestation with an esp_secure_cert partition.
fn x509_secure_cert() -> String {
    MINIMAL.replace(
        "group_key_file = \"secrets/group.key\"",
        "attestation = \"x509\"\nca_cert_file = \"ca/issuing.pem\"\nca_key_file = \"ca/issuing.key\"",
    )
    .replace("device_key = \"{device_key}\"\n", "")
        + "\n[secure_cert]\noffset = 0xF000\n"
}

#[test]
fn x509_attestation_takes_its_defaults_and_resolves_the_ca_files() {
    let config = parse(&x509_nvs()).unwrap();
    assert_eq!(config.dps.attestation.as_str(), "x509");
    let x509 = config.dps.attestation.x509().unwrap();
    assert_eq!(x509.ca_cert_file, Path::new("/etc/station/ca/issuing.pem"));
    assert_eq!(x509.ca_key_file, Path::new("/etc/station/ca/issuing.key"));
    assert_eq!(x509.ca_chain_file, None);
    assert_eq!(x509.ca_key_passphrase_file, None);
    assert_eq!(x509.cert_days, DEFAULT_CERT_DAYS);
    assert_eq!(x509.key_type, DeviceKeyType::EcdsaP256);
    assert_eq!(x509.storage, CredentialStorage::Nvs);
    assert!(config.dps.attestation.symmetric_key().is_none());
    assert!(config.nvs.uses(Field::DevicePrivateKey));

    let text = x509_nvs().replace(
        "ca_key_file = \"ca/issuing.key\"",
        "ca_key_file = \"ca/issuing.key\"\nca_chain_file = \"/pki/root.pem\"\n\
         ca_key_passphrase_file = \"ca/pass\"\ncert_days = 730\nkey_type = \"rsa-2048\"",
    );
    let x509 = parse(&text)
        .unwrap()
        .dps
        .attestation
        .x509()
        .unwrap()
        .clone();
    assert_eq!(
        x509.ca_chain_file.as_deref(),
        Some(Path::new("/pki/root.pem"))
    );
    assert_eq!(
        x509.ca_key_passphrase_file.as_deref(),
        Some(Path::new("/etc/station/ca/pass"))
    );
    assert_eq!(
        (x509.cert_days, x509.key_type),
        (730, DeviceKeyType::Rsa2048)
    );

    let config = parse(&x509_secure_cert()).unwrap();
    assert_eq!(
        config.dps.attestation.x509().unwrap().storage,
        CredentialStorage::SecureCert(SecureCertConfig {
            offset: 0xF000,
            size: DEFAULT_SECURE_CERT_SIZE
        })
    );
    // The symmetric-key default is unchanged.
    assert_eq!(
        parse(MINIMAL).unwrap().dps.attestation.as_str(),
        "symmetric-key"
    );
}

#[test]
fn urls_are_shown_without_their_password() {
    for (url, shown) in [
        ("postgres://u:p@h:5432/d", "postgres://u:***@h:5432/d"),
        ("postgres://u@h/d", "postgres://u@h/d"),
        ("postgres://u:p%40x@h/d?a=1", "postgres://u:***@h/d?a=1"),
        (
            "postgres://h/d?password=p&user=u",
            "postgres://h/d?password=***&user=u",
        ),
        ("postgres://u:p@h/d#frag@x", "postgres://u:***@h/d#frag@x"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
}

#[test]
fn x509_keys_and_placeholders_are_refused_with_the_other_kind() {
    // A group key with X.509, a CA with symmetric keys: refused, not ignored.
    let text = x509_nvs().replace(
        "attestation = \"x509\"",
        "attestation = \"x509\"\ngroup_key_file = \"secrets/group.key\"",
    );
    assert_error(&text, "station::config::bad_value", 7, "group_key_file");
    let text = variant(
        "group_key_file",
        "ca_cert_file = \"ca.pem\"\ngroup_key_file",
    );
    assert_error(&text, "station::config::bad_value", 6, "[dps] ca_cert_file");
    let text = variant("group_key_file", "cert_days = 30\ngroup_key_file");
    assert_error(&text, "station::config::bad_value", 6, "[dps] cert_days");
    let text = MINIMAL.to_owned() + "\n[secure_cert]\noffset = 0xF000\n";
    assert_error(&text, "station::config::bad_value", 18, "[secure_cert]");
    let text = variant("\"{dps_host}\"", "\"{ca_chain}\"");
    assert_error(&text, "station::config::bad_template", 16, "{ca_chain}");
    let text = x509_nvs().replace("\"{dps_host}\"", "\"{device_key}\"");
    assert_error(&text, "station::config::bad_template", 20, "{device_key}");

    // Where the credentials go: exactly once.
    let text = x509_nvs().replace("priv_key = \"{device_private_key}\"\n", "");
    assert_error(
        &text,
        "station::config::bad_value",
        6,
        "{device_private_key}",
    );
    let text = x509_secure_cert().replace(
        "[nvs.entries]\n",
        "[nvs.entries]\ncert = \"{device_cert}\"\n",
    );
    assert_error(&text, "station::config::bad_template", 15, "stored twice");
}

#[test]
fn x509_values_are_checked() {
    let text = x509_nvs().replace("attestation = \"x509\"", "attestation = \"X.509\"");
    assert_error(
        &text,
        "station::config::bad_value",
        6,
        "not an attestation kind",
    );
    let text = x509_nvs().replace("ca_key_file = \"ca/issuing.key\"\n", "");
    let err = parse(&text).unwrap_err();
    let message = err.to_string();
    assert_eq!(code(err), "station::config::missing_key");
    assert!(message.contains("`ca_key_file`"), "{message}");
    assert!(message.contains(":6: "), "{message}");
    let text = MINIMAL.replace("group_key_file = \"secrets/group.key\"\n", "");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("missing field `group_key_file`"), "{err}");
    for bad in ["0", "36501", "-1"] {
        let text = x509_nvs().replace(
            "attestation = \"x509\"",
            &format!("attestation = \"x509\"\ncert_days = {bad}"),
        );
        assert_error(&text, "station::config::bad_value", 7, "[dps] cert_days");
    }
    let text = x509_nvs().replace(
        "attestation = \"x509\"",
        "attestation = \"x509\"\nkey_type = \"ed25519\"",
    );
    assert_error(
        &text,
        "station::config::bad_value",
        7,
        "not a device key type",
    );

    // DPS takes the CN as registration ID; X.509 caps a CN at 64 characters.
    let long = format!("{}-{{mac}}", "a".repeat(52));
    let text = x509_nvs().replace("sensor-{mac}", &long);
    assert_error(&text, "station::config::bad_value", 9, "limits to 64");
    let fits = format!("{}-{{mac}}", "a".repeat(51));
    assert!(parse(&x509_nvs().replace("sensor-{mac}", &fits)).is_ok());
    assert!(parse(&MINIMAL.replace("sensor-{mac}", &long)).is_ok());

    // The certificate authenticates in the TLS handshake: no plain http.
    let text = x509_nvs().replace(
        "attestation = \"x509\"",
        "attestation = \"x509\"\npre_verify = true\nverify_url = \"http://127.0.0.1:8443\"",
    );
    assert_error(&text, "station::config::bad_value", 8, "TLS handshake");
    // Over MQTT (issue 18) the session is TLS: the certificate goes in its handshake.
    let text = x509_nvs().replace(
        "attestation = \"x509\"",
        "attestation = \"x509\"\npre_verify = true\ntransport = \"mqtt\"\nverify_url = \"mqtts://127.0.0.1:8883\"",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.dps.transport, DpsTransport::Mqtt);
    assert_eq!(config.dps.verify_url, "mqtts://127.0.0.1:8883");

    let text = x509_secure_cert().replace("offset = 0xF000", "offset = 0xF100");
    assert_error(
        &text,
        "station::config::misaligned",
        20,
        "[secure_cert] offset",
    );
    let text = x509_secure_cert().replace("offset = 0xF000", "offset = 0xA000");
    assert_error(
        &text,
        "station::config::bad_value",
        19,
        "overlaps the NVS partition",
    );
    let text = x509_secure_cert().replace("offset = 0xF000", "offset = 0xF000\nsize = 0");
    assert_error(&text, "station::config::bad_value", 21, "empty");
}

#[test]
fn x509_credentials_must_fit_their_storage() {
    let config = parse(&x509_nvs()).unwrap();
    let typical = X509Lengths {
        device_cert: 700,
        device_private_key: 250,
        ca_chain: 1_400,
        secure_cert_image: 2_500,
    };
    config.check_x509_fit(&typical).unwrap();
    // A chain of several RSA certificates outgrows one NVS string (3,967 bytes).
    let long_chain = X509Lengths {
        ca_chain: 4_000,
        ..typical
    };
    let err = config.check_x509_fit(&long_chain).unwrap_err();
    let message = err.to_string();
    assert_eq!(
        code(err),
        "station::config::credentials_do_not_fit",
        "{message}"
    );
    assert!(message.contains("ca_chain"), "{message}");
    assert!(message.contains("NVS partition"), "{message}");

    let config = parse(&x509_secure_cert()).unwrap();
    config.check_x509_fit(&long_chain).unwrap();
    let huge = X509Lengths {
        secure_cert_image: 0x2001,
        ..typical
    };
    let err = config.check_x509_fit(&huge).unwrap_err();
    assert!(
        err.to_string().contains("[secure_cert] size = 0x2000"),
        "{err}"
    );
    // A symmetric-key station has nothing to check.
    parse(MINIMAL).unwrap().check_x509_fit(&huge).unwrap();
    assert_eq!(MAX_CERT_DAYS, crate::x509::MAX_CERT_DAYS);
}

#[test]
fn checked_in_example_switched_to_x509_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut switched = String::new();
    let mut in_secure_cert = false;
    for line in text.lines() {
        let uncommented = line.strip_prefix("# ").unwrap_or(line);
        let line = if line.starts_with("# [secure_cert]") {
            in_secure_cert = true;
            uncommented.to_owned()
        } else if in_secure_cert && line.starts_with("# ") && uncommented.contains(" = ") {
            uncommented.to_owned()
        } else if [
            "attestation",
            "ca_cert_file",
            "ca_chain_file",
            "ca_key_file",
            "ca_key_passphrase_file",
            "cert_days",
            "key_type",
        ]
        .iter()
        .any(|key| uncommented.starts_with(&format!("{key} = ")))
        {
            uncommented.replace("\"symmetric-key\"", "\"x509\"")
        } else if line.starts_with("group_key_file") || line.starts_with("device_key = ") {
            format!("# {line}")
        } else if line == "offset = 0x9000" {
            "offset = 0x10000".to_owned()
        } else {
            if line.is_empty() {
                in_secure_cert = false;
            }
            line.to_owned()
        };
        switched.push_str(&line);
        switched.push('\n');
    }
    let config = Config::parse(&switched, &path).unwrap_or_else(|e| panic!("{e}\n{switched}"));
    let x509 = config.dps.attestation.x509().unwrap();
    assert_eq!(x509.cert_days, 3650);
    assert_eq!(x509.key_type, DeviceKeyType::EcdsaP256);
    assert!(x509.ca_chain_file.is_some() && x509.ca_key_passphrase_file.is_some());
    assert_eq!(
        x509.storage,
        CredentialStorage::SecureCert(SecureCertConfig {
            offset: 0xD000,
            size: 0x2000
        })
    );
}
