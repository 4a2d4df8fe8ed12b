//! Throughput of the station's pure core: for 10,000 MACs, form the registration ID, derive the
//! device key and build the 24 KiB NVS image (DPS namespace, default `station.toml` entries), on
//! one thread. Prints images per second, and, when ESP-IDF's generator is installed
//! (`pip install esp-idf-nvs-partition-gen`), the seconds it takes per image for comparison.
//!
//! Run: `cargo bench --bench nvs_build` (add `-- --with-root-ca` for a 1.3 KB PEM entry).

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use station::config::Config;
use station::identity::Mac;
use station::keys::{GroupKey, GroupKeys};
use station::provision::DeviceImage;

const UNITS: u64 = 10_000;
const ROUNDS: usize = 5;

fn main() {
    let with_root_ca = std::env::args().any(|a| a == "--with-root-ca");
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut config_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("station.toml"))
            .expect("station.toml");
    if with_root_ca {
        let pem = fixtures.join("nvs/DigiCertGlobalRootG2.pem");
        config_text = config_text.replace(
            "# root_ca = { file = \"certs/DigiCertGlobalRootG2.pem\" }",
            &format!("root_ca = {{ file = \"{}\" }}", pem.display()),
        );
    }
    let config = Config::parse(&config_text, &dir.path().join("station.toml")).expect("config");
    let group = GroupKey::from_text(
        b"8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        Path::new("bench.key"),
    )
    .expect("key");
    let keys = GroupKeys {
        primary: group,
        secondary: None,
    };
    let base: Mac = "24:0a:c4:00:00:00".parse().expect("mac");

    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..UNITS {
            let image = DeviceImage::build(&config, &keys, base.offset(i)).expect("image");
            black_box(&image.bytes);
        }
        rates.push(UNITS as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[ROUNDS / 2];
    println!(
        "nvs_build: {UNITS} images of {} bytes ({} entries{}), {ROUNDS} rounds on one thread",
        config.nvs.size,
        config.nvs.entries.len(),
        if with_root_ca { ", with a root CA" } else { "" }
    );
    println!(
        "nvs_build: median {median:.0} images/s ({:.1} us/image); min {:.0}, max {:.0}",
        1e6 / median,
        rates[0],
        rates[ROUNDS - 1]
    );

    match reference_seconds_per_image(dir.path()) {
        Some(seconds) => println!(
            "reference: esp_idf_nvs_partition_gen takes {seconds:.3} s per image (one process per device); station is {:.0}x faster",
            median * seconds
        ),
        None => {
            println!("reference: esp_idf_nvs_partition_gen not installed; skipped the comparison")
        }
    }
}

/// Median wall time of the reference generator building the DPS namespace, once per call.
fn reference_seconds_per_image(dir: &Path) -> Option<f64> {
    let csv = dir.join("dps.csv");
    std::fs::write(
        &csv,
        "key,type,encoding,value\ndps,namespace,,\nid_scope,data,string,0ne00ABCDEF\n\
         reg_id,data,string,sensor-240ac4000000\ndevice_key,data,string,Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=\n\
         dps_host,data,string,global.azure-devices-provisioning.net\n",
    )
    .ok()?;
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let status = Command::new("python3")
            .args(["-m", "esp_idf_nvs_partition_gen", "generate"])
            .arg(&csv)
            .arg(dir.join("dps.bin"))
            .arg("0x6000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        times.push(start.elapsed());
    }
    times.sort();
    Some(times[2].as_secs_f64())
}
