//! Shared helpers: a temporary station workspace and a runner for the `station` binary, simulated
//! ESP32s, the DPS emulator as a process ([`dps`]), and a real PostgreSQL server ([`postgres`]).

pub mod daemon;
pub mod dps;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A group key used only by tests (64 random bytes, base64).
pub const GROUP_KEY: &str =
    "IPqyrydADngU4vWjT+oEIm80S8CoXkpEvDM85GB0fYWGc4H7tGK8KOmswJEwP2ePs+ydTBSkPM4lgZwZKs/YQw==";

/// A temporary directory holding a station configuration and its group key.
pub struct Workspace {
    /// Kept alive for the test's duration.
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A workspace with the repository's example `station.toml` and an owner-only key file.
    pub fn new() -> Workspace {
        let example =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
                .unwrap();
        Workspace::with_config(&example)
    }

    /// A workspace with the given configuration text.
    pub fn with_config(config: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        let workspace = Workspace { dir };
        workspace.write_key("secrets/group.key", GROUP_KEY);
        std::fs::write(workspace.path("station.toml"), config).unwrap();
        workspace
    }

    /// A path inside the workspace.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a key file with mode 0600.
    pub fn write_key(&self, relative: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.path(relative);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Runs `station` with this workspace's configuration (from another working directory, to
    /// prove paths resolve against the configuration file), tracing everything to stderr.
    pub fn station(&self, args: &[&str]) -> Run {
        self.station_logging("trace", args)
    }

    /// The same with `STATION_LOG` set to `filter` (`off`: stderr holds only what the operator
    /// sees).
    pub fn station_logging(&self, filter: &str, args: &[&str]) -> Run {
        self.station_env(filter, args, &[])
    }

    /// The same with more environment variables (`PGPASSWORD`, `HOME`).
    pub fn station_env(&self, filter: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_station"))
            .arg("--config")
            .arg(self.path("station.toml"))
            .args(args)
            .current_dir(std::env::temp_dir())
            .env_remove("STATION_CONFIG")
            .env_remove("PGPASSWORD")
            .env("STATION_OPERATOR", "tester")
            .env("STATION_LOG", filter)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run::from(output)
    }
}

impl Workspace {
    /// `station --json provision` of the device `device` of `sim`, on its port.
    pub fn provision(&self, sim: &station::sim::SimLine, device: usize) -> Run {
        let port = sim.devices()[device].port().to_str().unwrap().to_owned();
        self.station(&["--json", "provision", "--port", &port])
    }

    /// The unit with this MAC as the workspace's SQLite database records it.
    pub fn unit(&self, mac: &str) -> station::record::Unit {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = station::store::Store::open(&self.path("station.db"))
                .await
                .unwrap();
            let unit = store
                .unit_by_mac(&mac.parse().unwrap())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no unit {mac} recorded"));
            store.close().await;
            unit
        })
    }
}

/// `count` simulated ESP32s on their own pseudo-terminals, without wire time; MACs from
/// `base_mac` when given.
pub fn esp32_line(count: usize, base_mac: Option<station::identity::Mac>) -> station::sim::SimLine {
    station::sim::SimLine::start(station::sim::SimOptions {
        count,
        chip: station::sim::SimChip::Esp32,
        wire_time: false,
        base_mac,
        ..station::sim::SimOptions::default()
    })
    .unwrap()
}

/// A finished `station` process.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// The first 600 characters of some output, for a failure message.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(600) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

/// Every encoding of a secret worth searching for: the text, its decoded bytes as hex (lower
/// and upper case), and a distinctive slice of each.
pub fn secret_forms(base64_text: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(base64_text)
        .unwrap();
    let hex_lower = hex::encode(&raw);
    vec![
        base64_text.as_bytes().to_vec(),
        base64_text.as_bytes()[..16].to_vec(),
        raw[..12].to_vec(),
        hex_lower.as_bytes().to_vec(),
        hex_lower.to_uppercase().into_bytes(),
        hex_lower.as_bytes()[..24].to_vec(),
    ]
}

/// Asserts that none of `needles` occurs in `haystack`, naming where.
#[track_caller]
pub fn assert_absent(haystack: &[u8], needles: &[Vec<u8>], place: &str) {
    for needle in needles {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "a form of the group key appears in {place}"
        );
    }
}

/// The example `station.toml` set up for pseudo-terminals (no DTR/RTS) and the given mode.
pub fn sim_config(stub: bool) -> String {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
            .unwrap();
    let config = example
        .replace("before = \"default-reset\"", "before = \"no-reset\"")
        .replace("after = \"hard-reset\"", "after = \"no-reset\"");
    if stub {
        config
    } else {
        config.replace("stub = true", "stub = false")
    }
}

/// A finished attempt of `batch` on the station `line1-st1`, as the line records one: the unit
/// `mac` (registration ID `sensor-<12 hex>`), failed at `(stage, code)` with its flash touched,
/// or provisioned.
pub fn attempt_record(
    batch: &station::record::Batch,
    mac: &str,
    port: &str,
    operator: &str,
    failure: Option<(&str, &str)>,
) -> station::store::AttemptRecord {
    station::store::AttemptRecord {
        attempt_id: None,
        batch: batch.clone(),
        station_id: "line1-st1".into(),
        operator: operator.into(),
        port: port.into(),
        started_at: station::clock::now(),
        finished_at: station::clock::now(),
        unit: Some(station::store::UnitFacts {
            mac: mac.parse().unwrap(),
            registration_id: format!("sensor-{}", mac.replace(':', "")).parse().unwrap(),
            chip: "esp32".into(),
            revision: "v3.0".into(),
            flash_size: 4 << 20,
            attestation: station::record::Attestation::SymmetricKey,
            key_id: "sha256:0011223344556677".parse().unwrap(),
            secondary_key_id: None,
            image_sha256: Some("ab".repeat(32)),
            certificate: None,
            dps: None,
            enrollment: station::record::EnrollmentKind::Group,
            hub: None,
            seen_provisioning: None,
        }),
        failure: failure.map(|(stage, code)| station::store::Failure {
            stage: stage.parse().unwrap(),
            code: code.parse().unwrap(),
            message: "the device went away".into(),
            wrote: true,
        }),
        reprovision: false,
        timings: serde_json::json!({}),
        boot_log: None,
    }
}
