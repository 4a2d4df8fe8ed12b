//! The pipeline over a scripted in-process device: stage attribution, verification, recording.
//! (The same pipeline against the real espflash code path and the PTY simulator is in
//! `tests/provision.rs`.)

use std::path::{Path, PathBuf};

use md5::{Digest as _, Md5};

use super::*;
use crate::config::Config;
use crate::device::{DeviceError, ProgressSender, Region, WriteReport};

/// What the fake does at each stage.
#[derive(Default)]
struct Script {
    connect: Option<fn(&Path) -> DeviceError>,
    write: Option<fn(&Path) -> DeviceError>,
    corrupt_flash: bool,
    flash_size: u32,
    /// What the application prints after [`Device::boot`].
    boot_log: Vec<u8>,
}

/// A device that keeps its flash in memory and fails where the script says.
struct FakeDevice {
    port: PathBuf,
    mac: Mac,
    script: Script,
    flash: Vec<u8>,
    writes: Vec<(u32, usize)>,
    resets: usize,
    boots: usize,
}

impl FakeDevice {
    fn new(mac: &str, script: Script) -> Self {
        let flash_size = if script.flash_size == 0 {
            4 << 20
        } else {
            script.flash_size
        };
        FakeDevice {
            port: PathBuf::from("/dev/fake0"),
            mac: mac.parse().unwrap(),
            script,
            flash: vec![0xFF; flash_size as usize],
            writes: Vec::new(),
            resets: 0,
            boots: 0,
        }
    }
}

impl Device for FakeDevice {
    type Console = std::io::Cursor<Vec<u8>>;

    fn port(&self) -> &Path {
        &self.port
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.script.connect.map_or(Ok(()), |f| Err(f(&self.port)))
    }

    async fn identify(&mut self) -> Result<DeviceIdentity, DeviceError> {
        Ok(DeviceIdentity {
            mac: self.mac,
            chip: "esp32".into(),
            revision: "v3.0".into(),
            flash_size: self.flash.len() as u32,
        })
    }

    async fn write(
        &mut self,
        regions: Vec<Region>,
        _progress: Option<ProgressSender>,
    ) -> Result<WriteReport, DeviceError> {
        if let Some(f) = self.script.write {
            return Err(f(&self.port));
        }
        for region in regions {
            let start = region.offset as usize;
            self.flash[start..start + region.data.len()].copy_from_slice(&region.data);
            self.writes.push((region.offset, region.data.len()));
        }
        if self.script.corrupt_flash {
            self.flash[0x9000 + 100] ^= 0x01;
        }
        Ok(WriteReport::default())
    }

    async fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16], DeviceError> {
        Ok(Md5::digest(&self.flash[offset as usize..(offset + len) as usize]).into())
    }

    async fn reset(&mut self) -> Result<(), DeviceError> {
        self.resets += 1;
        Ok(())
    }

    async fn boot(&mut self, _baud: u32) -> Result<Self::Console, DeviceError> {
        self.boots += 1;
        Ok(std::io::Cursor::new(self.script.boot_log.clone()))
    }
}

const CONFIG: &str = r#"
[station]
id = "st1"
[dps]
id_scope = "0ne00ABCDEF"
group_key_file = "group.key"
registration_id = "sensor-{mac}"
[nvs]
namespace = "dps"
[nvs.entries]
reg_id = "{registration_id}"
device_key = "{device_key}"
"#;

async fn station(dir: &Path, extra: &str) -> Station {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("group.key");
    std::fs::write(
        &key,
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = Config::parse(&format!("{CONFIG}{extra}"), &dir.join("station.toml")).unwrap();
    Station::open(config).await.unwrap()
}

async fn request(station: &Station) -> Request {
    let batch = match station.store.open_batch_of("st1").await.unwrap() {
        Some(batch) => batch,
        None => station
            .store
            .open_batch("WO-1", 10, "ana", "st1")
            .await
            .unwrap(),
    };
    Request::one_unit(batch, "ana".into(), false)
}

#[tokio::test]
async fn a_good_unit_is_written_verified_recorded_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), "").await;
    let mut device = FakeDevice::new("24:0a:c4:00:00:01", Script::default());
    let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let report = provision(
        &mut device,
        &station,
        &request(&station).await,
        Some(&events),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Provisioned);
    assert_eq!(
        report.registration_id.as_ref().unwrap().as_str(),
        "sensor-240ac4000001"
    );
    assert_eq!(device.writes, [(0x9000, 0x6000)]);
    assert_eq!(device.resets, 1);
    let image = DeviceImage::build(&station.config, keys(&station), device.mac).unwrap();
    assert_eq!(&device.flash[0x9000..0xF000], image.bytes.as_slice());
    assert_eq!(
        report.image_sha256.as_deref(),
        Some(image.sha256().as_str())
    );
    drop(events);
    let mut stages = Vec::new();
    while let Some(event) = receiver.recv().await {
        if let Event::Stage { stage, .. } = event {
            stages.push(stage);
        }
    }
    assert_eq!(
        stages,
        [
            Stage::Connect,
            Stage::Identify,
            Stage::Build,
            Stage::Flash,
            Stage::Verify,
            Stage::Record
        ]
    );
    let unit = station
        .store
        .unit_by_mac(&"24:0a:c4:00:00:01".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unit.state, crate::record::UnitState::Provisioned);
    assert_eq!(unit.image_sha256, report.image_sha256);
}

#[tokio::test]
async fn a_verify_mismatch_is_not_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), "").await;
    let mut device = FakeDevice::new(
        "24:0a:c4:00:00:02",
        Script {
            corrupt_flash: true,
            ..Script::default()
        },
    );
    let report = provision(&mut device, &station, &request(&station).await, None)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.stage, Some(Stage::Verify));
    assert_eq!(
        report.error_code.as_deref(),
        Some("station::provision::verify_mismatch")
    );
    assert_eq!(
        device.resets, 0,
        "a failed unit is left in the loader for a retry"
    );
    let unit = station
        .store
        .unit_by_mac(&"24:0a:c4:00:00:02".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("failed", Some("verify"))
    );
}

#[tokio::test]
async fn failures_are_attributed_to_their_stage() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), "").await;
    let cases: [(Script, Stage, &str); 3] = [
        (
            Script {
                connect: Some(|p| DeviceError::NoSync { port: p.to_owned() }),
                ..Script::default()
            },
            Stage::Connect,
            "station::device::no_sync",
        ),
        (
            Script {
                connect: Some(|p| DeviceError::WrongChip {
                    port: p.to_owned(),
                    expected: "esp32".into(),
                    found: "esp32s3".into(),
                }),
                ..Script::default()
            },
            Stage::Identify,
            "station::device::wrong_chip",
        ),
        (
            Script {
                write: Some(|p| DeviceError::Unplugged {
                    port: p.to_owned(),
                    during: crate::device::Operation::Writing,
                }),
                ..Script::default()
            },
            Stage::Flash,
            "station::device::unplugged",
        ),
    ];
    for (i, (script, stage, code)) in cases.into_iter().enumerate() {
        let mut device = FakeDevice::new(&format!("24:0a:c4:00:01:{i:02x}"), script);
        let report = provision(&mut device, &station, &request(&station).await, None)
            .await
            .unwrap();
        assert_eq!(
            (report.stage, report.error_code.as_deref()),
            (Some(stage), Some(code))
        );
        assert!(report.hint.is_some());
    }
    // Connect failures know no MAC: the attempts are recorded without a unit.
    let batch = request(&station).await.batch;
    let attempts = station.store.attempts_of(batch.id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0].mac, None);
    assert_eq!(
        attempts[2].mac.map(|m| m.to_string()).as_deref(),
        Some("24:0a:c4:00:01:02")
    );
}

#[tokio::test]
async fn firmware_is_written_before_nvs_in_one_session_and_every_region_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.bin"), vec![0x5A; 5000]).unwrap();
    let station = station(
        dir.path(),
        "[[firmware]]\noffset = 0x10000\nfile = \"app.bin\"\n",
    )
    .await;
    let mut device = FakeDevice::new("24:0a:c4:00:00:03", Script::default());
    let report = provision(&mut device, &station, &request(&station).await, None)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Provisioned);
    assert_eq!(device.writes, [(0x10000, 5000), (0x9000, 0x6000)]);
    assert!(
        device.flash[0x10000..0x10000 + 5000]
            .iter()
            .all(|&b| b == 0x5A)
    );
}

#[tokio::test]
async fn a_chip_with_too_little_flash_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), "").await;
    let mut device = FakeDevice::new(
        "24:0a:c4:00:00:04",
        Script {
            flash_size: 0xC000,
            ..Script::default()
        },
    );
    let report = provision(&mut device, &station, &request(&station).await, None)
        .await
        .unwrap();
    assert_eq!(
        (report.stage, report.error_code.as_deref()),
        (
            Some(Stage::Identify),
            Some("station::provision::flash_too_small")
        )
    );
    assert!(device.writes.is_empty());
}

#[test]
fn device_images_are_deterministic_per_mac() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let station = rt.block_on(station(dir.path(), ""));
    let mac: Mac = "24:0a:c4:12:34:56".parse().unwrap();
    let a = DeviceImage::build(&station.config, keys(&station), mac).unwrap();
    let b = DeviceImage::build(&station.config, keys(&station), mac).unwrap();
    let other = DeviceImage::build(&station.config, keys(&station), mac.offset(1)).unwrap();
    assert_eq!(a.bytes, b.bytes);
    assert_ne!(a.bytes, other.bytes);
    let entries = crate::nvs::parse(&a.bytes).unwrap();
    assert_eq!(
        entries[1].value,
        crate::nvs::Value::Str(a.device_key().unwrap().expose().to_owned())
    );
}

/// The station's group keys (these tests run symmetric-key stations).
fn keys(station: &Station) -> &crate::keys::GroupKeys {
    station
        .attestor
        .group_keys()
        .expect("a symmetric-key station")
}

const BOOT_ON: &str = "[boot]\nenabled = true\ntimeout = 1\n";

fn boot_log(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn with_the_boot_check_a_unit_passes_once_its_firmware_names_its_registration_id() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), BOOT_ON).await;
    let mut device = FakeDevice::new(
        "24:0a:c4:00:00:05",
        Script {
            boot_log: boot_log(&[
                "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                "I (339) dps: registration id sensor-240ac4000005",
            ]),
            ..Script::default()
        },
    );
    let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let report = provision(
        &mut device,
        &station,
        &request(&station).await,
        Some(&events),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Provisioned, "{report:?}");
    assert_eq!(
        (device.boots, device.resets),
        (1, 0),
        "booted, not reset again"
    );
    assert!(
        report
            .boot_log
            .as_deref()
            .is_some_and(|log| log.contains("dps: registration id sensor-240ac4000005")),
        "{report:?}"
    );
    assert!(report.timings.boot > 0.0);
    drop(events);
    let mut stages = Vec::new();
    while let Some(event) = receiver.recv().await {
        if let Event::Stage { stage, .. } = event {
            stages.push(stage);
        }
    }
    assert_eq!(
        stages[3..],
        [Stage::Flash, Stage::Verify, Stage::Boot, Stage::Record]
    );
}

#[tokio::test]
async fn a_unit_whose_firmware_panics_fails_at_boot_and_is_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let station = station(dir.path(), BOOT_ON).await;
    let mut device = FakeDevice::new(
        "24:0a:c4:00:00:06",
        Script {
            boot_log: boot_log(&[
                "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
                "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.",
                "I (339) dps: registration id sensor-240ac4000006",
            ]),
            ..Script::default()
        },
    );
    let report = provision(&mut device, &station, &request(&station).await, None)
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, report.stage, report.error_code.as_deref()),
        (
            Outcome::Failed,
            Some(Stage::Boot),
            Some("station::boot::panic")
        )
    );
    assert!(
        report
            .hint
            .as_deref()
            .unwrap()
            .contains("Guru Meditation Error")
    );
    let unit = station
        .store
        .unit_by_mac(&"24:0a:c4:00:00:06".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (unit.state.as_str(), unit.failed_stage.map(Stage::as_str)),
        ("failed", Some("boot"))
    );
}
