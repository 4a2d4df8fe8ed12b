//! What the process-level benches share: the group key and a `station.toml` for simulated
//! ports, with no reset lines.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The benches' group key (random, no real enrollment group).
pub const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

/// A `station.toml` for the ports `ports` (a TOML array) at `baud`, with or without the stub.
pub fn config(ports: &str, baud: u32, stub: bool) -> String {
    format!(
        r#"
[station]
id = "bench-st1"
database = "station.db"

[dps]
id_scope = "0ne00BENCH0"
group_key_file = "group.key"
registration_id = "sensor-{{mac}}"

[nvs]
offset = 0x9000
size = 0x6000
namespace = "dps"

[nvs.entries]
id_scope = "{{id_scope}}"
reg_id = "{{registration_id}}"
device_key = "{{device_key}}"
dps_host = "{{dps_host}}"

[serial]
ports = {ports}
baud = {baud}
before = "no-reset"
after = "no-reset"
chip = "esp32"
stub = {stub}
max_parallel = 16
"#
    )
}

/// Writes the group key (mode 0600) and `config` into `dir`; returns the configuration's path.
pub fn workspace(dir: &Path, config: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("group.key");
    std::fs::write(&key, GROUP_KEY).expect("the group key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("its mode");
    let path = dir.join("station.toml");
    std::fs::write(&path, config).expect("the configuration");
    path
}

/// `station sim devices`: `count` devices (from `base_mac`, else the simulator's default) taking
/// turns on `ports` simulated ports linked under `dir/ports`, a simulated operator taking each
/// unit off 0.2 s after the station leaves it idle and plugging the next in 0.1 s later.
/// Returns once every port exists.
#[allow(
    dead_code,
    reason = "the benches without a line (esptool, boot) include this module too"
)]
pub fn simulated_line(dir: &Path, count: usize, ports: usize, base_mac: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_station"));
    command
        .args(["sim", "devices", "--count", &count.to_string()])
        .args(["--ports", &ports.to_string()])
        .arg("--link-dir")
        .arg(dir.join("ports"));
    if let Some(mac) = base_mac {
        command.args(["--base-mac", mac]);
    }
    let mut sim = command
        .args(["--leave-after-idle", "0.2", "--swap-gap", "0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim devices");
    // The simulator prints one port per line once they exist.
    let mut lines = BufReader::new(sim.stdout.take().expect("sim stdout")).lines();
    for _ in 0..ports {
        lines.next();
    }
    sim
}
