//! Issue 13: the bad-input table, through the binary. Every case runs `station` against a fresh
//! workspace with one thing wrong and checks what an operator and an auditor would: the exit
//! code, the stable error code, that the process ended by itself (no hang on a FIFO, no panic),
//! that nothing was written (no database, no image, no temporary file), that output stays
//! readable (a 100 kB value is not echoed whole) and that no form of the group key appears.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{GROUP_KEY, Run, Workspace, assert_absent, secret_forms};

/// Longer than any refusal may take; a FIFO that hung the station would hit it.
const PROMPT: Duration = Duration::from_secs(20);

/// Runs `station --json ARGS` in `ws`, killing it if it outlives [`PROMPT`].
fn run(ws: &Workspace, args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_station"))
        .arg("--config")
        .arg(ws.path("station.toml"))
        .arg("--json")
        .args(args)
        .current_dir(ws.path(""))
        .env_remove("STATION_CONFIG")
        .env("STATION_OPERATOR", "tester")
        .env("STATION_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The output is collected on another thread, so a long output never blocks the child.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(PROMPT) {
        Ok(output) => Run::from(output.unwrap()),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("station {} hung", crate::util::cut(&args.join(" ")));
        }
    }
}

/// One row of the table.
struct Case {
    /// What is wrong.
    name: &'static str,
    /// Puts the mistake in place; returns the arguments to run.
    setup: fn(&Workspace) -> Vec<String>,
    /// The exit code.
    exit: i32,
    /// The stable error code (`--json`'s error object).
    code: &'static str,
    /// Paths (relative to the workspace) that must not exist afterwards.
    absent: &'static [&'static str],
}

/// The example configuration with `from` replaced by `to`.
fn configure(ws: &Workspace, from: &str, to: &str) {
    let path = ws.path("station.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Appends to `[nvs.entries]` (the example's last entry is `dps_host`).
fn add_entry(ws: &Workspace, line: &str) {
    configure(
        ws,
        "dps_host = \"{dps_host}\"\n",
        &format!("dps_host = \"{{dps_host}}\"\n{line}\n"),
    );
}

/// Appends text at the end of the configuration.
fn append(ws: &Workspace, text: &str) {
    let path = ws.path("station.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(text);
    std::fs::write(path, config).unwrap();
}

fn fifo(ws: &Workspace, relative: &str) -> String {
    let path = ws.path(relative);
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.display().to_string()
}

/// A character device like /dev/zero, mode 0600, where a file was expected (the test runs as
/// root; elsewhere a symlink to /dev/zero stands in).
fn zero_device(ws: &Workspace, relative: &str) -> String {
    let path = ws.path(relative);
    let _ = std::fs::remove_file(&path);
    let made = nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 5),
    );
    if made.is_err() {
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    }
    path.display().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn path(ws: &Workspace, relative: &str) -> String {
    ws.path(relative).display().to_string()
}

/// A self-signed CA certificate valid from `days_from` to `days_to` days from now.
fn certificate(days_from: i64, days_to: i64) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days_from);
    params.not_after = now + time::Duration::days(days_to);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// A duplicate key in an otherwise valid image (two `u8` entries renamed alike).
fn duplicate_key_image() -> Vec<u8> {
    use station::nvs::{Entry, Value, build};
    let entries = vec![
        Entry::new("dps", "k", Value::U8(1)),
        Entry::new("dps", "other", Value::U8(2)),
    ];
    let mut image = build(&entries, 0x3000).unwrap();
    // Entry 2 of page 0 (after the namespace entry and `k`): rename it `k`, reseal its CRC
    // (CRC-32 over the entry without its CRC field, as the format defines).
    let at = 64 + 2 * 32;
    image[at + 8..at + 24].fill(0);
    image[at + 8] = b'k';
    let mut hasher = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    hasher.update(&image[at..at + 4]);
    hasher.update(&image[at + 8..at + 32]);
    let crc = hasher.finalize();
    image[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    image
}

fn table() -> Vec<Case> {
    vec![
        // ---- station.toml: values a real ESP32 line cannot use ----------------------------
        Case {
            name: "[nvs] size of 4 GiB",
            setup: |ws| {
                configure(ws, "size = 0x6000", "size = 0xFFFFF000");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "[nvs] offset that wraps past 4 GiB",
            setup: |ws| {
                configure(ws, "offset = 0x9000", "offset = 0xFFFFF000");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "[nvs] partition ending past 16 MiB",
            setup: |ws| {
                configure(ws, "offset = 0x9000", "offset = 0xFFD000");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "[nvs] size below 3 pages",
            setup: |ws| {
                configure(ws, "size = 0x6000", "size = 0x2000");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "[nvs] size not a multiple of 4 KiB",
            setup: |ws| {
                configure(ws, "size = 0x6000", "size = 0x6001");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::misaligned",
            absent: &["station.db"],
        },
        Case {
            name: "a 100 kB station id",
            setup: |ws| {
                configure(
                    ws,
                    "id = \"line1-st1\"",
                    &format!("id = \"{}\"", "s".repeat(100_000)),
                );
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "a 309-digit number",
            setup: |ws| {
                configure(
                    ws,
                    "max_parallel = 16",
                    &format!("max_parallel = {}", "9".repeat(309)),
                );
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::syntax",
            absent: &["station.db"],
        },
        Case {
            name: "a 100 kB API version",
            setup: |ws| {
                configure(
                    ws,
                    "api_version = \"2021-10-01\"",
                    &format!("api_version = \"{}\"", "1".repeat(100_000)),
                );
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "an ID scope of 100 characters",
            setup: |ws| {
                configure(
                    ws,
                    "id_scope = \"0ne00ABCDEF\"",
                    &format!("id_scope = \"{}\"", "A".repeat(100)),
                );
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "a probe interval of a billion seconds",
            setup: |ws| {
                configure(ws, "probe_interval = 2.0", "probe_interval = 1e9");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "checkpoint_every of 0",
            setup: |ws| {
                append(ws, "\n[audit]\ncheckpoint_every = 0\n");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        // ---- files named by the configuration: bounded, regular ----------------------------
        Case {
            name: "station.toml is a FIFO",
            setup: |ws| {
                fifo(ws, "station.toml");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "station.toml is a device node",
            setup: |ws| {
                zero_device(ws, "station.toml");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "station.toml of 2 MB",
            setup: |ws| {
                append(ws, &format!("# {}\n", "x".repeat(2 << 20)));
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "group key file is a FIFO",
            setup: |ws| {
                fifo(ws, "secrets/group.key");
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "group key file is a 0600 copy of /dev/zero",
            setup: |ws| {
                zero_device(ws, "secrets/group.key");
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "group key file of 1 MB",
            setup: |ws| {
                ws.write_key("secrets/group.key", &"A".repeat(1 << 20));
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "group key longer than DPS allows",
            setup: |ws| {
                use base64::Engine as _;
                let long = base64::engine::general_purpose::STANDARD.encode([7u8; 65]);
                ws.write_key("secrets/group.key", &long);
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::too_long",
            absent: &["station.db"],
        },
        Case {
            name: "group key readable by others",
            setup: |ws| {
                std::fs::set_permissions(
                    ws.path("secrets/group.key"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .unwrap();
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::world_readable",
            absent: &["station.db"],
        },
        Case {
            name: "secondary group key equal to the primary",
            setup: |ws| {
                ws.write_key("secrets/group2.key", GROUP_KEY);
                configure(
                    ws,
                    "# secondary_group_key_file = \"secrets/group2.key\"",
                    "secondary_group_key_file = \"secrets/group2.key\"",
                );
                args(&["key", "derive", "--registration-id", "sensor-240ac4000001"])
            },
            exit: 2,
            code: "station::keys::same_as_primary",
            absent: &["station.db"],
        },
        Case {
            name: "firmware file is a FIFO",
            setup: |ws| {
                fifo(ws, "app.bin");
                append(ws, "\n[[firmware]]\noffset = 0x10000\nfile = \"app.bin\"\n");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::file_unreadable",
            absent: &["station.db"],
        },
        Case {
            name: "firmware file is empty",
            setup: |ws| {
                std::fs::write(ws.path("app.bin"), b"").unwrap();
                append(ws, "\n[[firmware]]\noffset = 0x10000\nfile = \"app.bin\"\n");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        Case {
            name: "firmware image ending past 16 MiB",
            setup: |ws| {
                std::fs::write(ws.path("app.bin"), [0u8; 0x2000]).unwrap();
                append(
                    ws,
                    "\n[[firmware]]\noffset = 0xFFF000\nfile = \"app.bin\"\n",
                );
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_value",
            absent: &["station.db"],
        },
        // ---- root CA entries ------------------------------------------------------------------
        Case {
            name: "root_ca file is empty",
            setup: |ws| {
                std::fs::write(ws.path("ca.pem"), b"").unwrap();
                add_entry(ws, "root_ca = { file = \"ca.pem\" }");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_certificate",
            absent: &["station.db"],
        },
        Case {
            name: "root_ca file is not a PEM certificate",
            setup: |ws| {
                std::fs::write(ws.path("ca.pem"), b"this is the root CA\n").unwrap();
                add_entry(ws, "root_ca = { file = \"ca.pem\" }");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_certificate",
            absent: &["station.db"],
        },
        Case {
            name: "root_ca is the retired Baltimore CyberTrust Root",
            setup: |ws| {
                std::fs::copy(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures/certs/BaltimoreCyberTrustRoot.pem"),
                    ws.path("ca.pem"),
                )
                .unwrap();
                add_entry(ws, "root_ca = { file = \"ca.pem\" }");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_certificate",
            absent: &["station.db"],
        },
        Case {
            name: "root_ca expired",
            setup: |ws| {
                std::fs::write(ws.path("ca.pem"), certificate(-400, -1)).unwrap();
                add_entry(ws, "root_ca = { file = \"ca.pem\" }");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::bad_certificate",
            absent: &["station.db"],
        },
        Case {
            name: "root_ca is a FIFO",
            setup: |ws| {
                fifo(ws, "ca.pem");
                add_entry(ws, "root_ca = { file = \"ca.pem\" }");
                args(&["batch", "status"])
            },
            exit: 2,
            code: "station::config::file_unreadable",
            absent: &["station.db"],
        },
        // ---- MACs: one code wherever they come from -------------------------------------------
        Case {
            name: "--mac all zeros",
            setup: |ws| {
                let out = path(ws, "unit.bin");
                args(&["nvs", "build", "--mac", "00:00:00:00:00:00", "--out", &out])
            },
            exit: 2,
            code: "station::identity::bad_mac",
            absent: &["unit.bin", "station.db"],
        },
        Case {
            name: "--mac broadcast",
            setup: |ws| {
                let out = path(ws, "unit.bin");
                args(&["nvs", "build", "--mac", "ff:ff:ff:ff:ff:ff", "--out", &out])
            },
            exit: 2,
            code: "station::identity::bad_mac",
            absent: &["unit.bin", "station.db"],
        },
        Case {
            name: "--mac multicast",
            setup: |ws| {
                let out = path(ws, "unit.bin");
                args(&["nvs", "build", "--mac", "01:00:5e:00:00:01", "--out", &out])
            },
            exit: 2,
            code: "station::identity::bad_mac",
            absent: &["unit.bin", "station.db"],
        },
        Case {
            name: "--mac of 100 kB",
            setup: |ws| {
                let out = path(ws, "unit.bin");
                let mac = "24:".repeat(33_000);
                args(&["nvs", "build", "--mac", &mac, "--out", &out])
            },
            exit: 2,
            code: "station::identity::bad_mac",
            absent: &["unit.bin", "station.db"],
        },
        Case {
            name: "a CSV row with a multicast MAC",
            setup: |ws| {
                std::fs::write(
                    ws.path("macs.csv"),
                    "mac\n24:0a:c4:00:00:01\n03:0a:c4:00:00:02\n",
                )
                .unwrap();
                let (csv, dir) = (path(ws, "macs.csv"), path(ws, "images"));
                args(&["nvs", "build", "--csv", &csv, "--out-dir", &dir])
            },
            exit: 2,
            code: "station::identity::bad_mac",
            absent: &["images", "station.db"],
        },
        Case {
            name: "a CSV with two mac columns",
            setup: |ws| {
                std::fs::write(
                    ws.path("macs.csv"),
                    "mac,MAC\n24:0a:c4:00:00:01,24:0a:c4:00:00:02\n",
                )
                .unwrap();
                let (csv, dir) = (path(ws, "macs.csv"), path(ws, "images"));
                args(&["nvs", "build", "--csv", &csv, "--out-dir", &dir])
            },
            exit: 2,
            code: "station::input::invalid",
            absent: &["images", "station.db"],
        },
        Case {
            name: "a CSV that is a FIFO",
            setup: |ws| {
                let csv = fifo(ws, "macs.csv");
                let dir = path(ws, "images");
                args(&["nvs", "build", "--csv", &csv, "--out-dir", &dir])
            },
            exit: 1,
            code: "station::io",
            absent: &["images", "station.db"],
        },
        Case {
            name: "--out-dir whose parent is missing",
            setup: |ws| {
                std::fs::write(ws.path("macs.csv"), "mac\n24:0a:c4:00:00:01\n").unwrap();
                let (csv, dir) = (path(ws, "macs.csv"), path(ws, "missing/images"));
                args(&["nvs", "build", "--csv", &csv, "--out-dir", &dir])
            },
            exit: 2,
            code: "station::input::invalid",
            absent: &["missing", "station.db"],
        },
        // ---- output files: never through a planted link, never over a non-regular file ---------
        Case {
            name: "nvs build --out a directory",
            setup: |ws| {
                std::fs::create_dir(ws.path("out")).unwrap();
                let out = path(ws, "out");
                args(&["nvs", "build", "--mac", "24:0a:c4:00:00:01", "--out", &out])
            },
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        Case {
            name: "nvs build --out a device node",
            setup: |ws| {
                let out = zero_device(ws, "null");
                args(&["nvs", "build", "--mac", "24:0a:c4:00:00:01", "--out", &out])
            },
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        Case {
            name: "nvs build --out a planted symlink",
            setup: |ws| {
                std::fs::write(ws.path("victim"), b"keep").unwrap();
                std::os::unix::fs::symlink(ws.path("victim"), ws.path("unit.bin")).unwrap();
                let out = path(ws, "unit.bin");
                args(&["nvs", "build", "--mac", "24:0a:c4:00:00:01", "--out", &out])
            },
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        Case {
            name: "nvs build --out a FIFO",
            setup: |ws| {
                let out = fifo(ws, "unit.bin");
                args(&["nvs", "build", "--mac", "24:0a:c4:00:00:01", "--out", &out])
            },
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        Case {
            name: "export manifest --out a directory",
            setup: |ws| {
                std::fs::create_dir(ws.path("out")).unwrap();
                let out = path(ws, "out");
                args(&["export", "manifest", "--out", &out])
            },
            exit: 1,
            code: "station::io",
            absent: &[],
        },
        // ---- nvs inspect: what the station would not have built is a problem ---------------------
        Case {
            name: "nvs inspect of a two-page image",
            setup: |ws| {
                std::fs::write(ws.path("image.bin"), vec![0xFF; 0x2000]).unwrap();
                args(&["nvs", "inspect", &path(ws, "image.bin")])
            },
            exit: 1,
            code: "station::nvs::too_small",
            absent: &["station.db"],
        },
        Case {
            name: "nvs inspect of an erased image",
            setup: |ws| {
                std::fs::write(ws.path("image.bin"), vec![0xFF; 0x6000]).unwrap();
                args(&["nvs", "inspect", &path(ws, "image.bin")])
            },
            exit: 1,
            code: "station::nvs::erased",
            absent: &["station.db"],
        },
        Case {
            name: "nvs inspect of an image with a key twice",
            setup: |ws| {
                std::fs::write(ws.path("image.bin"), duplicate_key_image()).unwrap();
                args(&["nvs", "inspect", &path(ws, "image.bin")])
            },
            exit: 1,
            code: "station::nvs::duplicate_key",
            absent: &["station.db"],
        },
        Case {
            name: "nvs inspect of a FIFO",
            setup: |ws| {
                let image = fifo(ws, "image.bin");
                args(&["nvs", "inspect", &image])
            },
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        Case {
            name: "nvs inspect of /dev/zero",
            setup: |_| args(&["nvs", "inspect", "/dev/zero"]),
            exit: 1,
            code: "station::io",
            absent: &["station.db"],
        },
        // ---- the audit commands ---------------------------------------------------------------
        Case {
            name: "audit verify --head that is not hex",
            setup: |_| args(&["audit", "verify", "--head", "not-a-hash-at-all"]),
            exit: 2,
            code: "station::input::invalid",
            absent: &[],
        },
        Case {
            name: "audit verify --head shorter than 16 digits",
            setup: |_| args(&["audit", "verify", "--head", "5a6d216cf8"]),
            exit: 2,
            code: "station::input::invalid",
            absent: &[],
        },
        Case {
            name: "audit verify --public-key that is no key",
            setup: |_| args(&["audit", "verify", "--public-key", "ed25519:AAAA"]),
            exit: 2,
            code: "station::checkpoint::bad_public_key",
            absent: &[],
        },
        Case {
            name: "audit verify --checkpoints of a missing file",
            setup: |ws| args(&["audit", "verify", "--checkpoints", &path(ws, "nope.jsonl")]),
            exit: 2,
            code: "station::input::invalid",
            absent: &[],
        },
        Case {
            name: "export manifest --since that is no time",
            setup: |_| args(&["export", "manifest", "--since", "yesterday"]),
            exit: 2,
            code: "station::input::invalid",
            absent: &["station.db"],
        },
        // ---- the argument parser -------------------------------------------------------------
        Case {
            name: "an unknown flag",
            setup: |_| args(&["batch", "status", "--bogus"]),
            exit: 2,
            code: "station::cli::usage",
            absent: &["station.db"],
        },
        Case {
            name: "a 309-digit batch target",
            setup: |_| {
                let target = "9".repeat(309);
                args(&["batch", "open", "WO-1", "--target", &target])
            },
            exit: 2,
            code: "station::cli::usage",
            absent: &["station.db"],
        },
        Case {
            name: "a negative drain",
            setup: |_| args(&["run", "--drain=-5"]),
            exit: 2,
            code: "station::cli::usage",
            absent: &["station.db"],
        },
        Case {
            name: "a 100 kB batch name",
            setup: |_| {
                let name = "b".repeat(100_000);
                args(&["batch", "open", &name, "--target", "5"])
            },
            exit: 2,
            code: "station::cli::usage",
            absent: &["station.db"],
        },
        Case {
            name: "a batch name with a line break",
            setup: |_| args(&["batch", "open", "WO\n1", "--target", "5"]),
            exit: 2,
            code: "station::cli::usage",
            absent: &["station.db"],
        },
        Case {
            name: "a 100 kB registration ID",
            setup: |_| {
                let id = "r".repeat(100_000);
                args(&["key", "derive", "--registration-id", &id])
            },
            exit: 2,
            code: "station::identity::bad_registration_id",
            absent: &["station.db"],
        },
        Case {
            name: "a billion simulated devices",
            setup: |_| args(&["sim", "devices", "--count", "1000000000"]),
            exit: 2,
            code: "station::sim::bad_options",
            absent: &[],
        },
        Case {
            name: "a demo of no devices",
            setup: |_| args(&["demo", "--count", "0"]),
            exit: 2,
            code: "station::input::invalid",
            absent: &[],
        },
    ]
}

/// Files the station may have left behind half-written.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| n.ends_with(".tmp")) {
            found.push(entry.display().to_string());
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn every_bad_input_is_refused_with_its_code_and_leaves_nothing_behind() {
    let key_forms = secret_forms(GROUP_KEY);
    let mut failures = Vec::new();
    for case in table() {
        let ws = Workspace::new();
        let args = (case.setup)(&ws);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run(&ws, &args);
        let mut problems = Vec::new();
        if run.code != case.exit {
            problems.push(format!("exit {} instead of {}", run.code, case.exit));
        }
        let code =
            serde_json::from_str::<serde_json::Value>(run.stdout.lines().last().unwrap_or(""))
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        if code.as_deref() != Some(case.code) {
            problems.push(format!("code {code:?} instead of {}", case.code));
        }
        if !run.stderr.contains(&format!("code: {}", case.code)) {
            problems.push("stderr lacks the `code:` line".to_owned());
        }
        if run.stderr.contains("panicked") || run.code == 101 {
            problems.push("it panicked".to_owned());
        }
        // Output stays readable however long the input: a 100 kB value is not echoed whole.
        if run.stdout.len() + run.stderr.len() > 16 << 10 {
            problems.push(format!(
                "{} bytes of output",
                run.stdout.len() + run.stderr.len()
            ));
        }
        for absent in case.absent {
            if ws.path(absent).exists() {
                problems.push(format!("{absent} was written"));
            }
        }
        let left = temporaries(ws.dir.path());
        if !left.is_empty() {
            problems.push(format!("temporary files left: {left:?}"));
        }
        let transcript = format!("{}{}", run.stdout, run.stderr);
        assert_absent(transcript.as_bytes(), &key_forms, case.name);
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stdout: {}\n  stderr: {}",
                case.name,
                problems.join("; "),
                crate::util::cut(&run.stdout),
                crate::util::cut(&run.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refused_outputs_leave_their_targets_as_they_were() {
    let ws = Workspace::new();
    // A planted symlink: the file it points to keeps its contents.
    std::fs::write(ws.path("victim"), b"keep").unwrap();
    std::os::unix::fs::symlink(ws.path("victim"), ws.path("unit.bin")).unwrap();
    run(
        &ws,
        &[
            "nvs",
            "build",
            "--mac",
            "24:0a:c4:00:00:01",
            "--out",
            &path(&ws, "unit.bin"),
        ],
    )
    .expect(1);
    assert_eq!(std::fs::read(ws.path("victim")).unwrap(), b"keep");
    assert!(ws.path("unit.bin").is_symlink());
    // A device node stays a device node (as root the station could otherwise replace it).
    let node = zero_device(&ws, "null");
    run(
        &ws,
        &["nvs", "build", "--mac", "24:0a:c4:00:00:01", "--out", &node],
    )
    .expect(1);
    let kind = std::fs::symlink_metadata(&node).unwrap().file_type();
    assert!(!kind.is_file(), "the node was replaced by a file");
    // A directory is left alone, with no temporary file beside it.
    std::fs::create_dir(ws.path("out")).unwrap();
    run(
        &ws,
        &[
            "nvs",
            "build",
            "--mac",
            "24:0a:c4:00:00:01",
            "--out",
            &path(&ws, "out"),
        ],
    )
    .expect(1);
    assert!(std::fs::read_dir(ws.path("out")).unwrap().next().is_none());
    assert!(temporaries(ws.dir.path()).is_empty());
}

#[test]
fn check_warns_of_a_root_ca_near_its_expiry_and_run_says_so_at_start() {
    let ws = Workspace::new();
    std::fs::write(ws.path("ca.pem"), certificate(-10, 30)).unwrap();
    add_entry(&ws, "root_ca = { file = \"ca.pem\" }");
    let checked = run(&ws, &["check"]).expect(0).json();
    let warnings: Vec<&serde_json::Value> = checked["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["warnings"].as_array())
        .flatten()
        .collect();
    assert_eq!(warnings.len(), 1, "{checked}");
    let detail = warnings[0].as_str().unwrap();
    assert!(
        detail.contains("CN=Test Root") && detail.contains("within 90 days"),
        "{detail}"
    );
    // `run` says it before anything else (here it then stops: no batch is open).
    let started = run(&ws, &["run"]);
    assert!(
        started.stderr.contains("warning: [nvs.entries] root_ca"),
        "{}",
        started.stderr
    );
    // The root Azure uses now passes without a warning.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/certs/DigiCertGlobalRootG2.pem"),
        ws.path("ca.pem"),
    )
    .unwrap();
    let checked = run(&ws, &["check"]).expect(0).json();
    assert!(
        checked["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["warnings"].is_null()),
        "{checked}"
    );
}

#[test]
fn usage_errors_print_the_code_and_json_like_every_other_error() {
    let ws = Workspace::new();
    let refused = run(&ws, &["batch", "open"]).expect(2);
    assert!(
        refused.stderr.contains("error: ") && refused.stderr.contains("hint: "),
        "{}",
        refused.stderr
    );
    let json = refused.json();
    assert_eq!(json["error"]["code"], "station::cli::usage");
    assert_eq!(json["error"]["exit_code"], 2);
    // --help and --version are not errors.
    run(&ws, &["--help"]).expect(0);
    run(&ws, &["--version"]).expect(0);
}

#[test]
fn logs_to_a_pipe_have_no_colour_and_fields_print_as_values() {
    let ws = Workspace::new();
    let run = ws.station_logging("debug", &["batch", "open", "WO-1", "--target", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "colour codes in a piped log: {:?}",
        run.stderr
    );
    assert!(!run.stderr.contains("Some("), "{}", run.stderr);
}

#[test]
fn a_device_reporting_a_blank_mac_fails_at_identify_with_bad_mac() {
    use station::sim::{SimChip, SimLine, SimOptions};
    let ws = Workspace::with_config(&crate::util::sim_config(true));
    ws.station(&["batch", "open", "WO-1", "--target", "1"])
        .expect(0);
    let sim = SimLine::start(SimOptions {
        count: 1,
        chip: SimChip::Esp32,
        base_mac: Some(station::identity::Mac([0; 6])),
        wire_time: false,
        ..SimOptions::default()
    })
    .unwrap();
    let port = sim.devices()[0].port().to_str().unwrap().to_owned();
    let failed = ws
        .station(&["--json", "provision", "--port", &port])
        .expect(1)
        .json();
    assert_eq!(
        failed["error_code"], "station::identity::bad_mac",
        "{failed}"
    );
    assert_eq!(failed["stage"], "identify");
    // Nothing was written and no unit recorded for the bogus MAC.
    let status = ws.station(&["--json", "batch", "status"]).expect(0).json();
    assert_eq!(status["provisioned"], 0);
    assert_eq!(
        status["failures"][0]["error_code"],
        "station::identity::bad_mac"
    );
}

#[test]
fn check_creates_no_database() {
    let ws = Workspace::new();
    run(&ws, &["check"]).expect(0);
    assert!(!ws.path("station.db").exists());
    assert!(!ws.path("secrets/station-signing.key").exists());
}

#[test]
fn nvs_build_from_csv_audits_a_count_and_a_list_hash_not_the_list() {
    use sha2::Digest as _;
    let ws = Workspace::new();
    let mut csv = String::from("mac\n");
    for i in 0..300u32 {
        csv.push_str(&format!("24:0a:c4:00:{:02x}:{:02x}\n", i >> 8, i & 0xff));
    }
    std::fs::write(ws.path("macs.csv"), &csv).unwrap();
    let built = run(
        &ws,
        &[
            "nvs",
            "build",
            "--csv",
            &path(&ws, "macs.csv"),
            "--out-dir",
            &path(&ws, "images"),
        ],
    )
    .expect(0)
    .json();
    assert_eq!(built.as_array().unwrap().len(), 300);
    let entries = run(&ws, &["audit", "show", "--limit", "1"])
        .expect(0)
        .json();
    let details: serde_json::Value =
        serde_json::from_str(entries[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["count"], 300);
    // The list hash is recomputable from the images written.
    let mut list = sha2::Sha256::new();
    for image in built.as_array().unwrap() {
        let bytes = std::fs::read(image["file"].as_str().unwrap()).unwrap();
        list.update(format!(
            "{} {}\n",
            image["mac"].as_str().unwrap(),
            hex::encode(sha2::Sha256::digest(&bytes))
        ));
    }
    assert_eq!(details["images_sha256"], hex::encode(list.finalize()));
    assert!(entries[0]["details"].as_str().unwrap().len() < 1000);
    {
        let mode = std::fs::metadata(ws.path("images"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
