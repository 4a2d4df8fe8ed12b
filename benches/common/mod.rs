//! What the process-level benches share: the group key and a `station.toml` for simulated
//! ports, with no reset lines.

use std::path::Path;

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
