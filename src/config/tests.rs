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
        path.parent().unwrap().join("station.db")
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
        Path::new("/etc/station/station.db")
    );
    assert_eq!(
        config.dps.group_key_file,
        Path::new("/etc/station/secrets/group.key")
    );
    assert_eq!(config.dps.endpoint, DEFAULT_DPS_ENDPOINT);
    assert_eq!(config.dps.api_version, DEFAULT_API_VERSION);
    assert_eq!(config.serial.ports, ["auto"]);
    assert_eq!(config.serial.before, BeforeReset::DefaultReset);
    assert_eq!(config.serial.after, AfterReset::HardReset);
    let absolute = variant("\"secrets/group.key\"", "\"/keys/group.key\"");
    assert_eq!(
        parse(&absolute).unwrap().dps.group_key_file,
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
    std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
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
