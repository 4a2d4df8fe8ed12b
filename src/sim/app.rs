//! The simulated application: what a simulated ESP32 prints on its console when a reset boots
//! it from flash, and its "firmware", which reads its own NVS partition from the simulated
//! flash with the station's NVS reader and logs what it found.
//!
//! A boot is a [`Transcript`]: the ROM's banner and loader lines at the ROM's console rate
//! (115200 with a 40 MHz crystal), then the second-stage bootloader's and the application's
//! log in ESP-IDF's format (`I (339) dps: ...`, ANSI colours as `CONFIG_LOG_COLORS` prints
//! them) at the application's console rate, each line timestamped when it is printed. Logging
//! blocks on the UART in the ROM, the bootloader and at start-up, so each line starts after
//! the previous one has left the wire plus the work between them; the work figures follow
//! ESP-IDF v5.1 boot logs of an ESP32 with a 40 MHz DIO flash (bootloader at 31 ms, image
//! segments loaded at about 2 MB/s, `app_main` about 330 ms after the reset at 115200).
//!
//! The firmware's code is not in the simulated flash: the partition table, bootloader and
//! application are taken as present (as on a module programmed before provisioning), and only
//! its NVS partition, which the station writes, is read from flash. [`FirmwareFault`]s turn it
//! into the failures a line meets: a crash, PSRAM the board lacks, another NVS namespace, a
//! console that stays silent, a watchdog reset loop, a debug build printing its key.

use base64::Engine as _;
use std::str::FromStr;
use std::time::Duration;

use crate::nvs;

/// UART bits per byte: start, 8 data, stop.
const BITS_PER_BYTE: u64 = 10;
/// The ROM's console rate with a 40 MHz crystal.
pub(crate) const ROM_CONSOLE_BAUD: u32 = 115_200;
/// How long the interrupt watchdog lets a hung start-up run before it resets the chip.
const HANG_BEFORE_RESET: Duration = Duration::from_millis(300);
/// How long a panicking application takes from "Rebooting..." to the reset.
const REBOOT_DELAY: Duration = Duration::from_millis(50);

/// What the simulated application was built with: its console rate and what it reads from NVS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimApp {
    /// Its console rate (`CONFIG_ESP_CONSOLE_UART_BAUDRATE`); the ROM's lines stay at 115200.
    pub baud: u32,
    /// Its NVS partition, as its partition table says.
    pub nvs_offset: u32,
    /// The NVS partition's size.
    pub nvs_size: u32,
    /// The namespace it opens.
    pub namespace: String,
    /// The key holding the DPS ID scope.
    pub id_scope_key: String,
    /// The key holding the registration ID.
    pub registration_id_key: String,
    /// The key holding the device key.
    pub device_key_key: String,
}

impl Default for SimApp {
    /// The station's example configuration: `dps` with `id_scope`, `reg_id` and `device_key`
    /// in a 24 KiB partition at 0x9000, console at 115200.
    fn default() -> Self {
        SimApp {
            baud: ROM_CONSOLE_BAUD,
            nvs_offset: 0x9000,
            nvs_size: 0x6000,
            namespace: "dps".to_owned(),
            id_scope_key: "id_scope".to_owned(),
            registration_id_key: "reg_id".to_owned(),
            device_key_key: "device_key".to_owned(),
        }
    }
}

/// How a simulated application misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirmwareFault {
    /// `boot-panic`: a Guru Meditation (LoadProhibited) in `app_main`, register dump and
    /// backtrace, then a reboot, again and again.
    Panic,
    /// `psram`: built with PSRAM for a board without it: the PSRAM probe fails and start-up
    /// aborts, then reboots, again and again.
    Psram,
    /// `no-config`: reads another namespace than the one provisioned and logs the error.
    NoConfig,
    /// `silent`: never prints anything (not even the ROM).
    Silent,
    /// `bootloop`: hangs in start-up; the interrupt watchdog resets the chip, again and again.
    Bootloop,
    /// `print-key`: a debug build that logs its device key and a PEM private key before its
    /// registration ID.
    PrintKey,
}

impl FirmwareFault {
    /// The names `--fault` takes.
    pub const NAMES: &'static str = "boot-panic, psram, no-config, silent, bootloop or print-key";
}

impl FromStr for FirmwareFault {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "boot-panic" => FirmwareFault::Panic,
            "psram" => FirmwareFault::Psram,
            "no-config" => FirmwareFault::NoConfig,
            "silent" => FirmwareFault::Silent,
            "bootloop" => FirmwareFault::Bootloop,
            "print-key" => FirmwareFault::PrintKey,
            _ => return Err(()),
        })
    }
}

/// Why the chip (re)started, as the ESP32 ROM's banner names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetCause {
    /// `rst:0x10 (RTCWDT_RTC_RESET)`: the RTC watchdog reset the whole chip.
    RtcWatchdog,
    /// `rst:0xc (SW_CPU_RESET)`: `esp_restart()` after a panic.
    SoftwareCpu,
    /// `rst:0x8 (TG1WDT_SYS_RESET)`: the interrupt watchdog (timer group 1) fired.
    InterruptWatchdog,
}

impl ResetCause {
    fn banner(self) -> &'static str {
        match self {
            ResetCause::RtcWatchdog => "rst:0x10 (RTCWDT_RTC_RESET)",
            ResetCause::SoftwareCpu => "rst:0xc (SW_CPU_RESET)",
            ResetCause::InterruptWatchdog => "rst:0x8 (TG1WDT_SYS_RESET)",
        }
    }
}

/// One piece of console output: when it starts after the reset, its bytes, its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsoleLine {
    /// When its first byte leaves the UART, after the reset.
    pub(crate) at: Duration,
    /// The bytes, line end included.
    pub(crate) text: String,
    /// The UART's rate.
    pub(crate) baud: u32,
}

/// Everything one boot prints, and the reset it ends in, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transcript {
    /// In order.
    pub(crate) lines: Vec<ConsoleLine>,
    /// The chip resets again this long after the reset that started this boot.
    pub(crate) then: Option<(Duration, ResetCause)>,
}

/// The clock of one boot: printing blocks on the UART.
struct Timeline {
    now: Duration,
    lines: Vec<ConsoleLine>,
}

impl Timeline {
    /// Milliseconds since the reset, as ESP-IDF's log timestamps count them.
    fn ms(&self) -> u128 {
        self.now.as_millis()
    }

    /// Works for `work`, then prints `text` at `baud`.
    fn print(&mut self, work: Duration, text: String, baud: u32) {
        self.now += work;
        let wire = Duration::from_nanos(
            text.len() as u64 * BITS_PER_BYTE * 1_000_000_000 / u64::from(baud.max(1)),
        );
        self.lines.push(ConsoleLine {
            at: self.now,
            text,
            baud,
        });
        self.now += wire;
    }

    /// An ESP-IDF log line, `I (ms) tag: message`, in the level's colour.
    fn log(&mut self, work: Duration, level: char, tag: &str, message: &str, baud: u32) {
        self.now += work;
        let colour = match level {
            'E' => "\x1b[0;31m",
            'W' => "\x1b[0;33m",
            _ => "\x1b[0;32m",
        };
        let text = format!(
            "{colour}{level} ({}) {tag}: {message}\x1b[0m\r\n",
            self.ms()
        );
        self.print(Duration::ZERO, text, baud);
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The ROM reading `bytes` of the bootloader from flash (40 MHz DIO: about 10 MB/s).
fn rom_load_time(bytes: u64) -> Duration {
    Duration::from_nanos(bytes * 100)
}

/// The bootloader loading (or, for a mapped segment, hashing) `bytes` of the application:
/// about 2 MB/s, as ESP-IDF's segment log lines are spaced.
fn segment_time(bytes: u64) -> Duration {
    Duration::from_nanos(bytes * 500)
}

/// What one boot of the application prints, read from `flash` (the whole simulated flash).
/// `mac` seeds the made-up key material of [`FirmwareFault::PrintKey`].
pub(crate) fn boot(
    app: &SimApp,
    faults: &[FirmwareFault],
    cause: ResetCause,
    flash: &[u8],
    mac: [u8; 6],
) -> Transcript {
    if faults.contains(&FirmwareFault::Silent) {
        return Transcript {
            lines: Vec::new(),
            then: None,
        };
    }
    let mut t = Timeline {
        now: Duration::ZERO,
        lines: Vec::new(),
    };
    rom(&mut t, cause);
    bootloader(&mut t, app);
    let app_baud = app.baud;
    let log = |t: &mut Timeline, work: u64, level: char, tag: &str, message: &str| {
        t.log(ms(work), level, tag, message, app_baud);
    };
    log(&mut t, 10, 'I', "cpu_start", "Multicore app");
    if faults.contains(&FirmwareFault::Psram) {
        log(
            &mut t,
            6,
            'E',
            "quad_psram",
            "PSRAM ID read error: 0xffffffff, PSRAM chip not found or not supported, or wrong PSRAM line mode",
        );
        log(&mut t, 1, 'E', "cpu_start", "Failed to init external RAM!");
        t.print(
            ms(1),
            "abort() was called at PC 0x40081f2b on core 0\r\n\r\n\r\n".to_owned(),
            app_baud,
        );
        return crash(
            t,
            "Backtrace: 0x40081b3e:0x3ffe3b40 0x40087c3d:0x3ffe3b60 0x4008c8b5:0x3ffe3b80 0x40081f2b:0x3ffe3bf0 0x400810e4:0x3ffe3c20 0x400795f9:0x3ffe3c50 |<-CORRUPTED",
            app_baud,
        );
    }
    for (work, message) in [
        (0, "Pro cpu up."),
        (0, "Starting app cpu, entry point is 0x400811e8"),
    ] {
        log(&mut t, work, 'I', "cpu_start", message);
    }
    t.print(
        Duration::ZERO,
        "\x1b[0;32mI (0) cpu_start: App cpu up.\x1b[0m\r\n".to_owned(),
        app_baud,
    );
    for (work, tag, message) in [
        (8, "cpu_start", "Pro cpu start user code"),
        (0, "cpu_start", "cpu freq: 160000000 Hz"),
        (0, "cpu_start", "Application information:"),
        (1, "cpu_start", "Project name:     sensor-fw"),
        (0, "cpu_start", "App version:      1.4.2"),
        (0, "cpu_start", "Compile time:     Nov 20 2026 14:02:05"),
        (0, "cpu_start", "ELF file SHA256:  6f1ab0c3e2d4b5a6..."),
        (0, "cpu_start", "ESP-IDF:          v5.1.2"),
        (0, "cpu_start", "Min chip rev:     v0.0"),
        (0, "cpu_start", "Max chip rev:     v3.99 "),
        (0, "cpu_start", "Chip rev:         v3.0"),
        (
            1,
            "heap_init",
            "Initializing. RAM available for dynamic allocation:",
        ),
        (0, "heap_init", "At 3FFAE6E0 len 00001920 (6 KiB): DRAM"),
        (0, "heap_init", "At 3FFB2B98 len 0002D468 (181 KiB): DRAM"),
        (0, "heap_init", "At 3FFE0440 len 00003AE0 (14 KiB): D/IRAM"),
        (0, "heap_init", "At 3FFE4350 len 0001BCB0 (111 KiB): D/IRAM"),
        (0, "heap_init", "At 4008CCD4 len 0001332C (76 KiB): IRAM"),
        (2, "spi_flash", "detected chip: winbond"),
        (0, "spi_flash", "flash io: dio"),
        (1, "app_start", "Starting scheduler on CPU0"),
        (0, "app_start", "Starting scheduler on CPU1"),
        (0, "main_task", "Started on CPU0"),
        (8, "main_task", "Calling app_main()"),
    ] {
        log(&mut t, work, 'I', tag, message);
    }
    if faults.contains(&FirmwareFault::Bootloop) {
        // Start-up hangs with interrupts off; the interrupt watchdog's reset stage fires.
        let at = t.now + HANG_BEFORE_RESET;
        return Transcript {
            lines: t.lines,
            then: Some((at, ResetCause::InterruptWatchdog)),
        };
    }
    if faults.contains(&FirmwareFault::Panic) {
        t.print(
            ms(4),
            "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n\r\nCore  0 register dump:\r\n".to_owned(),
            app_baud,
        );
        for registers in [
            "PC      : 0x400d5e3a  PS      : 0x00060030  A0      : 0x800d6b4c  A1      : 0x3ffb4f30  ",
            "A2      : 0x00000000  A3      : 0x3ffb4f6c  A4      : 0x00000000  A5      : 0x3ffb4f70  ",
            "A6      : 0x3ffb4f50  A7      : 0x0000000c  A8      : 0x800d5e37  A9      : 0x3ffb4f10  ",
            "A10     : 0x00000000  A11     : 0x3f403a1c  A12     : 0x3ffb4f6c  A13     : 0x00000000  ",
            "A14     : 0x00000000  A15     : 0x00000001  SAR     : 0x00000004  EXCCAUSE: 0x0000001c  ",
            "EXCVADDR: 0x00000000  LBEG    : 0x400014fd  LEND    : 0x4000150d  LCOUNT  : 0xfffffff5  ",
        ] {
            t.print(Duration::ZERO, format!("{registers}\r\n"), app_baud);
        }
        t.print(Duration::ZERO, "\r\n\r\n".to_owned(), app_baud);
        return crash(
            t,
            "Backtrace: 0x400d5e37:0x3ffb4f30 0x400d6b49:0x3ffb4f60 0x400e3a1c:0x3ffb4f90 0x4008a6f1:0x3ffb4fc0",
            app_baud,
        );
    }
    firmware(&mut t, app, faults, flash, mac);
    Transcript {
        lines: t.lines,
        then: None,
    }
}

/// The ROM: its banner, and the second-stage bootloader loaded from flash.
fn rom(t: &mut Timeline, cause: ResetCause) {
    let baud = ROM_CONSOLE_BAUD;
    t.print(
        ms(1),
        format!(
            "ets Jul 29 2019 12:21:46\r\n\r\n{},boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
            cause.banner()
        ),
        baud,
    );
    t.print(
        Duration::ZERO,
        "configsip: 0, SPIWP:0xee\r\nclk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\nmode:DIO, clock div:2\r\n".to_owned(),
        baud,
    );
    for (address, len) in [
        (0x3fff_0030u32, 7104u64),
        (0x4007_8000, 15576),
        (0x4008_0400, 4),
    ] {
        t.print(
            rom_load_time(len),
            format!("load:{address:#010x},len:{len}\r\n"),
            baud,
        );
    }
    t.print(Duration::ZERO, "ho 8 tail 4 room 4\r\n".to_owned(), baud);
    t.print(
        rom_load_time(3876),
        "load:0x40080404,len:3876\r\n".to_owned(),
        baud,
    );
    t.print(Duration::ZERO, "entry 0x4008064c\r\n".to_owned(), baud);
}

/// The second-stage bootloader: chip, flash, partition table, the application's segments.
fn bootloader(t: &mut Timeline, app: &SimApp) {
    let baud = app.baud;
    let log = |t: &mut Timeline, work: u64, tag: &str, message: &str| {
        t.log(ms(work), 'I', tag, message, baud);
    };
    for (work, tag, message) in [
        (1, "boot", "ESP-IDF v5.1.2 2nd stage bootloader"),
        (0, "boot", "compile time Nov 20 2026 14:02:11"),
        (0, "boot", "Multicore bootloader"),
        (1, "boot", "chip revision: v3.0"),
        (1, "boot.esp32", "SPI Speed      : 40MHz"),
        (0, "boot.esp32", "SPI Mode       : DIO"),
        (0, "boot.esp32", "SPI Flash Size : 4MB"),
        (1, "boot", "Enabling RNG early entropy source..."),
        (1, "boot", "Partition Table:"),
        (
            0,
            "boot",
            "## Label            Usage          Type ST Offset   Length",
        ),
    ] {
        log(t, work, tag, message);
    }
    let nvs = format!(
        " 0 nvs              WiFi data        01 02 {:08x} {:08x}",
        app.nvs_offset, app.nvs_size
    );
    log(t, 1, "boot", &nvs);
    log(
        t,
        0,
        "boot",
        " 1 phy_init         RF data          01 01 0000f000 00001000",
    );
    log(
        t,
        0,
        "boot",
        " 2 factory          factory app      00 00 00010000 00100000",
    );
    log(t, 0, "boot", "End of partition table");
    for (index, (paddr, vaddr, size, kind)) in [
        (0x0001_0020u32, 0x3f40_0020u32, 42_180u64, "map"),
        (0x0001_a4ec, 0x3ffb_0000, 8_908, "load"),
        (0x0001_c7c0, 0x4008_0000, 14_424, "load"),
        (0x0002_0020, 0x400d_0020, 97_940, "map"),
        (0x0003_7ebc, 0x4008_3858, 38_012, "load"),
    ]
    .into_iter()
    .enumerate()
    {
        let message = format!(
            "segment {index}: paddr={paddr:08x} vaddr={vaddr:08x} size={size:05x}h ({size:>6}) {kind}"
        );
        t.log(ms(1), 'I', "esp_image", &message, baud);
        t.now += segment_time(size);
    }
    log(t, 0, "boot", "Loaded app from partition at offset 0x10000");
    log(t, 0, "boot", "Disabling RNG early entropy source...");
}

/// The end of a crash: the backtrace, the ELF hash, "Rebooting...", and the software reset.
fn crash(mut t: Timeline, backtrace: &str, baud: u32) -> Transcript {
    t.print(
        Duration::ZERO,
        format!("{backtrace}\r\n\r\n\r\n\r\n\r\nELF file SHA256: 6f1ab0c3e2d4b5a6\r\n\r\nRebooting...\r\n"),
        baud,
    );
    let at = t.now + REBOOT_DELAY;
    Transcript {
        lines: t.lines,
        then: Some((at, ResetCause::SoftwareCpu)),
    }
}

/// `app_main`: reads the DPS settings from NVS and logs them, or why it cannot.
fn firmware(t: &mut Timeline, app: &SimApp, faults: &[FirmwareFault], flash: &[u8], mac: [u8; 6]) {
    let baud = app.baud;
    let start = app.nvs_offset as usize;
    let end = start.saturating_add(app.nvs_size as usize).min(flash.len());
    let namespace = if faults.contains(&FirmwareFault::NoConfig) {
        "azure"
    } else {
        app.namespace.as_str()
    };
    // nvs_flash_init() and reading three strings: a few milliseconds.
    let work = ms(9);
    let entries = match nvs::parse(flash.get(start..end).unwrap_or_default()) {
        Ok(entries) => entries,
        // nvs_flash_init() formats an erased partition and succeeds: the namespace is then
        // simply not there.
        Err(nvs::NvsError::Erased { .. }) => Vec::new(),
        Err(_) => {
            t.log(
                work,
                'E',
                "dps",
                "nvs_flash_init failed: ESP_ERR_NVS_NO_FREE_PAGES",
                baud,
            );
            return;
        }
    };
    if !entries.iter().any(|e| e.namespace == namespace) {
        let message = format!("nvs_open(\"{namespace}\") failed: ESP_ERR_NVS_NOT_FOUND");
        t.log(work, 'E', "dps", &message, baud);
        return;
    }
    let read = |key: &str| {
        entries
            .iter()
            .find(|e| e.namespace == namespace && e.key == key)
            .and_then(|e| match &e.value {
                nvs::Value::Str(text) => Some(text.clone()),
                _ => None,
            })
    };
    let mut work = Some(work);
    let mut values = Vec::new();
    for key in [&app.id_scope_key, &app.registration_id_key] {
        match read(key) {
            Some(value) => values.push(value),
            None => {
                let message = format!("nvs_get_str(\"{key}\") failed: ESP_ERR_NVS_NOT_FOUND");
                t.log(work.take().unwrap_or_default(), 'E', "dps", &message, baud);
                return;
            }
        }
    }
    let mut work = work.take().unwrap_or_default();
    if faults.contains(&FirmwareFault::PrintKey) {
        // A debug build dumps its credentials as it reads them, before the rest.
        let key = read(&app.device_key_key).unwrap_or_default();
        t.log(work, 'I', "dps", &format!("device key {key}"), baud);
        // Made-up key material of a P-256 key's size, the same for the same unit.
        let material: Vec<u8> = (0..72u8)
            .map(|i| mac[usize::from(i % 6)] ^ i.wrapping_mul(37))
            .collect();
        let body = base64::engine::general_purpose::STANDARD.encode(material);
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\r\n{}\r\n{}\r\n-----END EC PRIVATE KEY-----\r\n",
            &body[..64],
            &body[64..]
        );
        t.print(Duration::ZERO, pem, baud);
        work = Duration::ZERO;
    }
    t.log(work, 'I', "dps", &format!("ID scope {}", values[0]), baud);
    t.log(
        Duration::ZERO,
        'I',
        "dps",
        &format!("registration id {}", values[1]),
        baud,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56];

    fn flash_with(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let mut flash = vec![0xFF; 0x10000];
        let entries: Vec<nvs::Entry> = entries
            .iter()
            .map(|(ns, k, v)| nvs::Entry::new(*ns, *k, nvs::Value::Str((*v).to_owned())))
            .collect();
        let image = nvs::build(&entries, 0x6000).unwrap();
        flash[0x9000..0xF000].copy_from_slice(&image);
        flash
    }

    fn provisioned() -> Vec<u8> {
        flash_with(&[
            ("dps", "id_scope", "0ne00ABCDEF"),
            ("dps", "reg_id", "sensor-240ac4123456"),
            (
                "dps",
                "device_key",
                "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=",
            ),
        ])
    }

    fn text(transcript: &Transcript) -> String {
        transcript.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn a_provisioned_unit_boots_and_logs_its_registration_id() {
        let boot = boot(
            &SimApp::default(),
            &[],
            ResetCause::RtcWatchdog,
            &provisioned(),
            MAC,
        );
        let log = text(&boot);
        assert!(log.starts_with("ets Jul 29 2019 12:21:46\r\n\r\nrst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"));
        let first = log
            .find("boot: ESP-IDF v5.1.2 2nd stage bootloader")
            .unwrap();
        let stamp: u64 = log[..first].rsplit('(').next().unwrap()[..2]
            .parse()
            .unwrap();
        assert!(
            (25..45).contains(&stamp),
            "the bootloader starts at {stamp} ms: {log}"
        );
        assert!(log.contains(" 0 nvs              WiFi data        01 02 00009000 00006000"));
        assert!(log.contains("dps: ID scope 0ne00ABCDEF"));
        assert!(
            log.ends_with("dps: registration id sensor-240ac4123456\x1b[0m\r\n"),
            "{log}"
        );
        assert_eq!(boot.then, None);
        // Lines follow one another on the wire; the ROM's at 115200.
        for pair in boot.lines.windows(2) {
            assert!(pair[0].at < pair[1].at);
        }
        assert!(
            boot.lines
                .iter()
                .take(8)
                .all(|l| l.baud == ROM_CONSOLE_BAUD)
        );
        let last = boot.lines.last().unwrap().at;
        assert!(
            (Duration::from_millis(300)..Duration::from_millis(600)).contains(&last),
            "app_main's line at {last:?}"
        );
    }

    #[test]
    fn the_application_reads_what_it_was_built_for() {
        let log = text(&boot(
            &SimApp::default(),
            &[FirmwareFault::NoConfig],
            ResetCause::RtcWatchdog,
            &provisioned(),
            MAC,
        ));
        assert!(
            log.contains("dps: nvs_open(\"azure\") failed: ESP_ERR_NVS_NOT_FOUND"),
            "{log}"
        );
        assert!(!log.contains("registration id"));
        let erased = vec![0xFF; 0x10000];
        let log = text(&boot(
            &SimApp::default(),
            &[],
            ResetCause::RtcWatchdog,
            &erased,
            MAC,
        ));
        assert!(
            log.contains("nvs_open(\"dps\") failed: ESP_ERR_NVS_NOT_FOUND"),
            "{log}"
        );
        let no_id = flash_with(&[("dps", "id_scope", "0ne00ABCDEF")]);
        let log = text(&boot(
            &SimApp::default(),
            &[],
            ResetCause::RtcWatchdog,
            &no_id,
            MAC,
        ));
        assert!(
            log.contains("nvs_get_str(\"reg_id\") failed: ESP_ERR_NVS_NOT_FOUND"),
            "{log}"
        );
    }

    #[test]
    fn crashes_reboot_and_hangs_are_reset_by_the_watchdog() {
        let flash = provisioned();
        let panic = boot(
            &SimApp::default(),
            &[FirmwareFault::Panic],
            ResetCause::RtcWatchdog,
            &flash,
            MAC,
        );
        let log = text(&panic);
        assert!(log.contains(
            "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\r\n"
        ));
        assert!(log.contains("\r\nBacktrace: 0x400d5e37:0x3ffb4f30"));
        assert!(log.ends_with("Rebooting...\r\n"));
        assert!(matches!(panic.then, Some((_, ResetCause::SoftwareCpu))));
        let psram = boot(
            &SimApp::default(),
            &[FirmwareFault::Psram],
            ResetCause::SoftwareCpu,
            &flash,
            MAC,
        );
        let log = text(&psram);
        assert!(log.contains("rst:0xc (SW_CPU_RESET),boot:0x13"));
        assert!(log.contains("E (") && log.contains("quad_psram: PSRAM ID read error: 0xffffffff"));
        assert!(log.contains("abort() was called at PC"));
        let hang = boot(
            &SimApp::default(),
            &[FirmwareFault::Bootloop],
            ResetCause::RtcWatchdog,
            &flash,
            MAC,
        );
        assert!(text(&hang).ends_with("Calling app_main()\x1b[0m\r\n"));
        let (at, cause) = hang.then.unwrap();
        assert_eq!(cause, ResetCause::InterruptWatchdog);
        assert!(at > hang.lines.last().unwrap().at + HANG_BEFORE_RESET / 2);
        let silent = boot(
            &SimApp::default(),
            &[FirmwareFault::Silent],
            ResetCause::RtcWatchdog,
            &flash,
            MAC,
        );
        assert!(silent.lines.is_empty() && silent.then.is_none());
    }

    #[test]
    fn a_debug_build_prints_its_key() {
        let log = text(&boot(
            &SimApp::default(),
            &[FirmwareFault::PrintKey],
            ResetCause::RtcWatchdog,
            &provisioned(),
            MAC,
        ));
        let key = log
            .find("dps: device key a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=")
            .unwrap();
        let pem = log.find("-----BEGIN EC PRIVATE KEY-----\r\n").unwrap();
        let id = log
            .find("dps: registration id sensor-240ac4123456")
            .unwrap();
        assert!(
            key < pem && pem < id,
            "the key comes before the registration ID"
        );
    }

    #[test]
    fn a_faster_console_prints_the_log_sooner() {
        let slow = boot(
            &SimApp::default(),
            &[],
            ResetCause::RtcWatchdog,
            &provisioned(),
            MAC,
        );
        let fast_app = SimApp {
            baud: 921_600,
            ..SimApp::default()
        };
        let fast = boot(&fast_app, &[], ResetCause::RtcWatchdog, &provisioned(), MAC);
        assert!(fast.lines.last().unwrap().at < slow.lines.last().unwrap().at);
        assert!(fast.lines.iter().skip(8).all(|l| l.baud == 921_600));
    }
}
