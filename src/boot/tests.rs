//! The check over in-process consoles: a scripted log, a stream kept open, one closed early.
//! (The same check over the simulator's pseudo-terminals, through the binary, is in
//! `tests/boot.rs`.)

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::*;
use crate::config::{BootConfig, TemplateValues};

/// A group key of the tests' own.
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// The unit's device key.
fn key() -> crate::keys::DeviceKey {
    crate::keys::GroupKey::from_text(GROUP_KEY.as_bytes(), std::path::Path::new("group.key"))
        .unwrap()
        .derive(&"sensor-240ac4123456".parse().unwrap())
}

fn values() -> TemplateValues<'static> {
    TemplateValues {
        id_scope: "0ne00ABCDEF",
        registration_id: "sensor-240ac4123456",
        device_key: "",
        secondary_device_key: "",
        dps_host: "global.azure-devices-provisioning.net",
        mac: "240ac4123456",
        station_id: "st1",
        device_cert: "",
        device_private_key: "",
        ca_chain: "",
    }
}

fn check(timeout: Duration) -> BootCheck {
    let config = BootConfig {
        enabled: true,
        timeout,
        ..BootConfig::default()
    };
    BootCheck::new(&config, &values(), &[key().expose()])
}

const GOOD: &str = "ets Jul 29 2019 12:21:46\r\n\r\n\
rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
\x1b[0;32mI (31) boot: ESP-IDF v5.1.2 2nd stage bootloader\x1b[0m\r\n\
\x1b[0;32mI (339) dps: ID scope 0ne00ABCDEF\x1b[0m\r\n\
\x1b[0;32mI (339) dps: registration id sensor-240ac4123456\x1b[0m\r\n";

#[tokio::test]
async fn the_expected_line_passes_the_unit_and_is_kept() {
    let report = watch(GOOD.as_bytes(), &check(Duration::from_secs(5))).await;
    assert_eq!(report.verdict, Ok(()));
    assert!(
        report
            .log
            .ends_with("I (339) dps: registration id sensor-240ac4123456\n"),
        "{}",
        report.log
    );
    assert!(!report.log.contains('\x1b'), "colour codes are dropped");
    assert_eq!(report.lines, 5);
}

#[tokio::test]
async fn the_expected_line_of_another_unit_does_not_pass() {
    let other = GOOD.replace("sensor-240ac4123456", "sensor-240ac4999999");
    let report = watch(other.as_bytes(), &check(Duration::from_secs(5))).await;
    let Err(BootError::PortGone { .. }) = report.verdict else {
        panic!("{:?}", report.verdict);
    };
}

#[tokio::test]
async fn a_panic_fails_at_once_quoting_its_first_line() {
    let log = GOOD.replace(
        "\x1b[0;32mI (339) dps: ID scope",
        "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n\
         Core  0 register dump:\r\nI (339) dps: ID scope",
    );
    let report = watch(log.as_bytes(), &check(Duration::from_secs(5))).await;
    let error = report.verdict.unwrap_err();
    assert_eq!(
        miette::Diagnostic::code(&error).unwrap().to_string(),
        "station::boot::panic"
    );
    let hint = miette::Diagnostic::help(&error).unwrap().to_string();
    assert!(
        hint.contains(
            "\"Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\""
        ),
        "{hint}"
    );
}

#[tokio::test]
async fn the_device_key_never_reaches_the_excerpt_or_the_error() {
    let key = key();
    let key_text = key.expose();
    let log = format!(
        "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
         I (339) dps: device key {key_text}\r\n\
         E (340) dps: fatal: key {key_text} refused\r\n"
    );
    let mut config = BootConfig {
        enabled: true,
        timeout: Duration::from_secs(5),
        ..BootConfig::default()
    };
    config
        .fail
        .push(crate::config::BootPattern::parse("fatal:").unwrap());
    let check = BootCheck::new(&config, &values(), &[key_text]);
    let report = watch(log.as_bytes(), &check).await;
    let error = report.verdict.unwrap_err();
    assert!(!report.log.contains(key_text), "{}", report.log);
    assert!(report.log.contains("[redacted: device key]"));
    assert!(!error.to_string().contains(key_text));
    let hint = miette::Diagnostic::help(&error).unwrap().to_string();
    assert!(
        !hint.contains(key_text) && hint.contains("[redacted: device key]"),
        "{hint}"
    );
}

#[tokio::test]
async fn silence_times_out_within_the_timeout() {
    let (_device, console) = tokio::io::duplex(64);
    let started = std::time::Instant::now();
    let report = watch(console, &check(Duration::from_millis(300))).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1300),
        "{waited:?}"
    );
    assert_eq!(
        report.verdict,
        Err(BootError::Timeout {
            after: Duration::from_millis(300),
            garbage: 0
        })
    );
}

#[tokio::test]
async fn a_log_without_the_expected_line_is_a_missing_pattern_naming_the_last_line() {
    let (mut device, console) = tokio::io::duplex(4096);
    device
        .write_all(
            b"rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n\
              E (339) dps: nvs_open(\"azure\") failed: ESP_ERR_NVS_NOT_FOUND\r\n",
        )
        .await
        .unwrap();
    let report = watch(console, &check(Duration::from_millis(300))).await;
    let Err(BootError::PatternMissing { missing, last, .. }) = &report.verdict else {
        panic!("{:?}", report.verdict);
    };
    assert_eq!(missing, &["dps: registration id sensor-240ac4123456"]);
    assert_eq!(
        last.as_deref(),
        Some("E (339) dps: nvs_open(\"azure\") failed: ESP_ERR_NVS_NOT_FOUND")
    );
    drop(device);
}

#[tokio::test]
async fn bytes_at_another_rate_time_out_saying_so() {
    let (mut device, console) = tokio::io::duplex(4096);
    device
        .write_all(&[0xF8, 0x00, 0x80, 0xFE, 0x06, 0x9E])
        .await
        .unwrap();
    let report = watch(console, &check(Duration::from_millis(200))).await;
    let Err(BootError::Timeout { garbage, .. }) = report.verdict else {
        panic!("{:?}", report.verdict);
    };
    assert!(garbage >= 4, "{garbage}");
    drop(device);
}

#[tokio::test]
async fn an_expected_line_without_its_line_end_still_counts_at_the_deadline() {
    let (mut device, console) = tokio::io::duplex(4096);
    device
        .write_all(b"I (339) dps: registration id sensor-240ac4123456")
        .await
        .unwrap();
    let report = watch(console, &check(Duration::from_millis(200))).await;
    assert_eq!(report.verdict, Ok(()));
    drop(device);
}

#[tokio::test]
async fn the_port_going_away_fails_the_check_at_once() {
    let (device, console) = tokio::io::duplex(64);
    drop(device);
    let report = watch(console, &check(Duration::from_secs(5))).await;
    assert!(report.elapsed < Duration::from_secs(1));
    assert!(matches!(report.verdict, Err(BootError::PortGone { .. })));
}

#[tokio::test]
async fn after_a_fail_line_the_crash_report_is_kept_up_to_the_next_reset() {
    let (mut device, console) = tokio::io::duplex(4096);
    let check = check(Duration::from_secs(30));
    let writer = async {
        device
            .write_all(b"rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
            .await
            .unwrap();
        device
            .write_all(b"Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n")
            .await
            .unwrap();
        // The register dump and backtrace follow in later reads.
        tokio::time::sleep(Duration::from_millis(20)).await;
        device
            .write_all(b"\r\nBacktrace: 0x400d5e37:0x3ffb4f30 0x400d6b49:0x3ffb4f60\r\n\r\nRebooting...\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        device
            .write_all(b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\nconfigsip: 0\r\n")
            .await
            .unwrap();
        // The next boot goes on; the check has what it needs and must not wait for it.
        device
    };
    let started = std::time::Instant::now();
    let (report, _device) = tokio::join!(watch(console, &check), writer);
    assert!(matches!(report.verdict, Err(BootError::Panic { .. })));
    assert!(
        report.log.contains("Backtrace: 0x400d5e37:0x3ffb4f30")
            && report.log.contains("Rebooting...")
            && report
                .log
                .ends_with("rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\n"),
        "{}",
        report.log
    );
    assert!(started.elapsed() < TAIL_MAX + Duration::from_millis(500));
}

#[tokio::test]
async fn after_a_fail_line_a_quiet_console_ends_the_read() {
    let (mut device, console) = tokio::io::duplex(4096);
    device
        .write_all(b"rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\nE (300) cpu_start: Failed to init external RAM!\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let report = watch(console, &check(Duration::from_secs(30))).await;
    assert!(matches!(report.verdict, Err(BootError::Psram { .. })));
    let waited = started.elapsed();
    assert!(
        waited >= TAIL_QUIET && waited < TAIL_MAX,
        "the check waited {waited:?}"
    );
    drop(device);
}
