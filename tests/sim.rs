//! The device layer against the simulated line: real pseudo-terminals, the real espflash code
//! path of [`EspflashDevice`], and Espressif's esptool.

mod conformance;
mod esptool;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use station::device::{
    AfterReset, BeforeReset, Chip, Device, DeviceError, EspflashDevice, FlashProgress, Region,
    SerialSettings,
};
use station::sim::{Fault, FaultKind, SimChip, SimLine, SimOptions, SimState, Trigger};

/// The longest a failing session may take before the test calls it a hang. Generous for CI:
/// espflash's own per-command timeouts are 3 s.
const HANG: Duration = Duration::from_secs(30);
/// espflash's per-command timeout: a stage that took this long waited for one.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// A simulated line in its own temporary directory, with links and flash images inside it.
struct Line {
    dir: tempfile::TempDir,
    sim: SimLine,
}

impl Line {
    fn start(opts: SimOptions) -> Line {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sim = SimLine::start(SimOptions {
            link_dir: Some(dir.path().join("ports")),
            flash_dir: Some(dir.path().join("flash")),
            ..opts
        })
        .expect("the simulated line starts");
        Line { dir, sim }
    }

    /// One fast device (no wire time) with the given faults.
    fn one(faults: Vec<Fault>) -> Line {
        Line::start(SimOptions {
            wire_time: false,
            faults,
            ..SimOptions::default()
        })
    }

    fn port(&self) -> PathBuf {
        self.sim.devices()[0].port()
    }

    /// Device 0's flash image as kept in the flash directory.
    fn dump(&self) -> Vec<u8> {
        std::fs::read(
            self.sim.devices()[0]
                .flash_file()
                .expect("a flash directory"),
        )
        .expect("the flash image is on disk")
    }

    fn device(&self, settings: SerialSettings) -> EspflashDevice {
        EspflashDevice::new(self.port(), settings)
    }
}

/// The settings a pseudo-terminal needs: no DTR/RTS before or after.
fn settings(stub: bool, baud: u32) -> SerialSettings {
    SerialSettings {
        baud,
        before: BeforeReset::NoReset,
        after: AfterReset::NoReset,
        chip: Chip::Esp32,
        stub,
        stage_timeout: Some(HANG),
    }
}

fn code(error: DeviceError) -> String {
    station::Error::from(error).code()
}

/// Deterministic bytes that deflate does not shrink.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// An NVS-like image: mostly erased, a few written entries.
fn nvs_like(len: usize) -> Vec<u8> {
    let mut image = vec![0xFF; len];
    for (i, chunk) in image.chunks_mut(32).enumerate().take(200) {
        chunk.copy_from_slice(&noise(32, i as u32 + 1));
    }
    image
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// Asserts that `dump` holds each region at its offset and 0xFF everywhere else.
fn assert_flash_holds(dump: &[u8], regions: &[(u32, &[u8])]) {
    assert_eq!(dump.len(), 4 * 1024 * 1024);
    let mut expected = vec![0xFF; dump.len()];
    for (offset, data) in regions {
        expected[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    if let Some(at) = dump.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "flash differs at {at:#x}: {:#04x} != {:#04x}",
            dump[at], expected[at]
        );
    }
}

/// Connect, identify, write two regions, verify both, reset: the pipeline's device stages.
async fn full_session(line: &Line, settings: SerialSettings) {
    let nvs = nvs_like(0x6000);
    let app = noise(0x9000 + 123, 7);
    let mut device = line.device(settings);
    device.connect().await.expect("connect");
    let identity = device.identify().await.expect("identify");
    assert_eq!(identity.mac, line.sim.devices()[0].mac());
    assert_eq!(identity.chip, "esp32");
    assert_eq!(identity.revision, "v3.0");
    assert_eq!(identity.flash_size, 4 * 1024 * 1024);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    device
        .write(
            vec![
                Region::new(0x9000, nvs.clone()),
                Region::new(0x10000, app.clone()),
            ],
            Some(tx),
        )
        .await
        .expect("write");
    let mut finished = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let FlashProgress::Finished { offset } = event {
            finished.push(offset);
        }
    }
    assert_eq!(finished, vec![0x9000, 0x10000]);

    assert_eq!(
        device.md5(0x9000, nvs.len() as u32).await.expect("md5"),
        md5(&nvs)
    );
    assert_eq!(
        device.md5(0x10000, app.len() as u32).await.expect("md5"),
        md5(&app)
    );
    device.reset().await.expect("reset");

    assert_flash_holds(&line.dump(), &[(0x9000, &nvs), (0x10000, &app)]);
    assert_eq!(line.sim.devices()[0].flash(), line.dump());
    assert_eq!(line.sim.devices()[0].state(), SimState::RomLoader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_session_writes_two_regions_and_verifies() {
    let line = Line::one(Vec::new());
    full_session(&line, settings(true, 115_200)).await;
    // The same unit provisioned again (re-plugged) works from the ROM loader it was left in.
    full_session(&line, settings(true, 115_200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rom_session_writes_and_verifies_without_leaving_the_loader() {
    let line = Line::one(Vec::new());
    full_session(&line, settings(false, 115_200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_at_921600_with_wire_time() {
    let line = Line::start(SimOptions::default());
    let started = Instant::now();
    full_session(&line, settings(true, 921_600)).await;
    let stats = line.sim.devices()[0].stats();
    let bytes = stats.bytes_received + stats.bytes_sent;
    let floor = Duration::from_nanos(bytes * 10 * 1_000_000_000 / 921_600);
    assert!(
        started.elapsed() >= floor,
        "{bytes} bytes took {:?}, less than their wire time",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chip_is_refused_before_anything_is_written() {
    for chip in [SimChip::Esp32s3, SimChip::Esp32c3] {
        let line = Line::start(SimOptions {
            chip,
            wire_time: false,
            ..SimOptions::default()
        });
        let mut device = line.device(settings(true, 921_600));
        let error = device.connect().await.unwrap_err();
        assert!(
            matches!(&error, DeviceError::WrongChip { expected, found, .. }
                if expected == "esp32" && *found == chip.to_string()),
            "{error:?}"
        );
        assert_eq!(code(error), "station::device::wrong_chip");
        let device_state = &line.sim.devices()[0];
        assert_eq!(device_state.stats().flash_blocks, 0);
        assert_eq!(
            device_state.state(),
            SimState::RomLoader,
            "no stub was uploaded"
        );
        assert!(line.dump().iter().all(|&b| b == 0xFF));
    }
}

/// Runs a session that must fail at `write` and returns the error and how long it took.
async fn failing_write(line: &Line, stub: bool) -> (DeviceError, Duration) {
    let mut device = line.device(settings(stub, 115_200));
    device.connect().await.expect("connect");
    device.identify().await.expect("identify");
    let started = Instant::now();
    let error = device
        .write(vec![Region::new(0x10000, noise(0x10000, 3))], None)
        .await
        .expect_err("the write must fail");
    (error, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_mid_write_is_a_clear_error() {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Unplug,
        at: Trigger::FlashBlock(2),
    }]);
    let (error, took) = failing_write(&line, true).await;
    assert!(took < HANG, "took {took:?}");
    assert!(matches!(error, DeviceError::Unplugged { .. }), "{error:?}");
    assert_eq!(code(error), "station::device::unplugged");
    assert_eq!(line.sim.devices()[0].state(), SimState::Unplugged);
    assert!(!line.port().exists(), "the port link vanished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_is_recognised_on_the_bare_pseudo_terminal_too() {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Unplug,
        at: Trigger::FlashBlock(1),
    }]);
    let pts = line.sim.devices()[0].pts().to_owned();
    let mut device = EspflashDevice::new(&pts, settings(true, 115_200));
    device.connect().await.unwrap();
    let error = device
        .write(vec![Region::new(0x10000, noise(0x10000, 5))], None)
        .await
        .unwrap_err();
    assert_eq!(code(error), "station::device::unplugged");
    assert!(
        !pts.exists(),
        "devpts drops the node once the master side closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_after_some_bytes_is_a_clear_error() {
    // Well past connect and the stub upload, inside the 64 KiB write.
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Unplug,
        at: Trigger::RxBytes(40_000),
    }]);
    let (error, took) = failing_write(&line, true).await;
    assert!(took < HANG, "took {took:?}");
    assert_eq!(code(error), "station::device::unplugged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_reply_is_a_clear_error() {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::CorruptReply,
        at: Trigger::FlashBlock(1),
    }]);
    let (error, took) = failing_write(&line, true).await;
    assert!(took < HANG, "took {took:?}");
    assert!(
        matches!(&error, DeviceError::Timeout { command, .. } if command == "FlashDeflData"),
        "{error:?}"
    );
    assert_eq!(code(error), "station::device::timeout");
}

/// A chip that stops answering after the first flash block.
async fn silence_mid_write(stub: bool) {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Silent,
        at: Trigger::FlashBlock(2),
    }]);
    let (error, took) = failing_write(&line, stub).await;
    assert!(took < HANG, "took {took:?}");
    assert!(
        matches!(&error, DeviceError::Timeout { command, .. } if command == "FlashDeflData"),
        "{error:?}"
    );
    assert_eq!(code(error), "station::device::timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_write_is_a_clear_error_with_the_stub() {
    silence_mid_write(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_write_is_a_clear_error_in_rom_mode() {
    silence_mid_write(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_chip_is_no_sync() {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Silent,
        at: Trigger::Frame(1),
    }]);
    let started = Instant::now();
    let error = line
        .device(settings(true, 115_200))
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert_eq!(code(error), "station::device::no_sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_port_is_busy() {
    let line = Line::one(Vec::new());
    let _holder = serialport::new(line.port().to_string_lossy(), 115_200)
        .open_native()
        .unwrap();
    let started = Instant::now();
    let error = line
        .device(settings(true, 115_200))
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(code(error), "station::device::port_busy");
}

// Issue 13: a stage timeout that abandons a blocking call does not leave the port open and
// locked for the next session: that one waits until the abandoned call lets go, then gets the
// chip's own answer (here: silence), never `port_busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_releases_its_port_for_the_next() {
    let line = Line::one(vec![Fault {
        device: None,
        kind: FaultKind::Silent,
        at: Trigger::Frame(1),
    }]);
    let short = SerialSettings {
        stage_timeout: Some(Duration::from_millis(300)),
        ..settings(true, 115_200)
    };
    let error = line.device(short.clone()).connect().await.unwrap_err();
    assert_eq!(code(error), "station::device::stalled");
    // Right after: the abandoned connect is still running and holds the port.
    let started = Instant::now();
    let error = line
        .device(settings(true, 115_200))
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert_eq!(code(error), "station::device::no_sync");
    // And then the port is free for anyone.
    serialport::new(line.port().to_string_lossy(), 115_200)
        .open_native()
        .expect("the port is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_port_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = EspflashDevice::new(dir.path().join("ttyUSB9"), settings(true, 115_200));
    assert_eq!(
        code(device.connect().await.unwrap_err()),
        "station::device::port_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudo_terminals_have_no_reset_lines() {
    let line = Line::one(Vec::new());
    let mut device = line.device(SerialSettings {
        before: BeforeReset::DefaultReset,
        ..settings(true, 115_200)
    });
    assert_eq!(
        code(device.connect().await.unwrap_err()),
        "station::device::no_reset_lines"
    );

    let mut device = line.device(SerialSettings {
        after: AfterReset::HardReset,
        ..settings(true, 115_200)
    });
    device.connect().await.unwrap();
    assert_eq!(
        code(device.reset().await.unwrap_err()),
        "station::device::reset_failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_need_a_connection() {
    let line = Line::one(Vec::new());
    let mut device = line.device(settings(true, 115_200));
    assert_eq!(
        code(device.md5(0, 16).await.unwrap_err()),
        "station::device::not_connected"
    );
}

/// Why the station drives espflash's connection itself (issue 12): against the recorded
/// ESP32 ROM, espflash's own `Flasher::connect` asks GET_SECURITY_INFO twice, the ROM answers
/// each by re-sending its previous reply, and espflash waits out its 3 s timeout both times.
/// Its ROM-mode `write_bins_to_flash` then ends with FLASH_END "reboot": the ROM leaves the
/// loader, and nothing can be verified afterwards.
#[test]
fn espflash_alone_waits_out_two_timeouts_and_its_rom_writes_leave_the_loader() {
    use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
    use espflash::flasher::Flasher;
    use espflash::image_format::Segment;
    use espflash::target::DefaultProgressCallback;

    let line = Line::one(Vec::new());
    let serial = serialport::new(line.port().to_string_lossy(), 115_200)
        .timeout(COMMAND_TIMEOUT)
        .open_native()
        .unwrap();
    let info = serialport::UsbPortInfo {
        vid: 0,
        pid: 0,
        serial_number: None,
        manufacturer: None,
        product: None,
    };
    let connection = Connection::new(
        serial,
        info,
        ResetAfterOperation::NoResetNoStub,
        ResetBeforeOperation::NoReset,
        115_200,
    );
    let started = Instant::now();
    let mut flasher = Flasher::connect(connection, false, false, false, None, None).unwrap();
    assert!(
        started.elapsed() >= 2 * COMMAND_TIMEOUT,
        "espflash connected in {:?}: the ROM answered GET_SECURITY_INFO",
        started.elapsed()
    );
    let data = vec![0x42u8; 4096];
    flasher
        .write_bins_to_flash(&[Segment::new(0x9000, &data)], &mut DefaultProgressCallback)
        .unwrap();
    assert_eq!(line.sim.devices()[0].state(), SimState::Firmware);
    assert!(
        flasher.connection().read_reg(0x4000_1000).is_err(),
        "nobody answers any more"
    );
    assert_flash_holds(&line.dump(), &[(0x9000, &data)]);
}

/// Connect and identify, both modes, wire time and USB latency charged: no stage waits for a
/// timeout (issue 12). Each stage ends well inside espflash's 3 s command timeout, which a
/// stage that waited for one could not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_identify_wait_for_no_timeout() {
    for (stub, baud) in [(false, 115_200), (true, 921_600)] {
        let line = Line::start(SimOptions::default());
        let mut device = line.device(settings(stub, baud));
        let started = Instant::now();
        device.connect().await.expect("connect");
        let identity = device.identify().await.expect("identify");
        let took = started.elapsed();
        assert_eq!(identity.mac, line.sim.devices()[0].mac());
        assert!(took < COMMAND_TIMEOUT, "stub {stub}: {took:?}");
        device.reset().await.expect("reset");
    }
}

/// In stub mode at 921600 the ROM is switched to the line's rate first, so the stub itself
/// goes over the wire at 921600 (issue 12, item 5); the stub needs no switch of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stub_is_uploaded_at_the_line_rate() {
    let line = Line::one(Vec::new());
    let mut device = line.device(settings(true, 921_600));
    device.connect().await.expect("connect");
    assert_eq!(line.sim.devices()[0].state(), SimState::Stub);
    let stats = line.sim.devices()[0].stats();
    assert_eq!((stats.rom_baud_changes, stats.stub_baud_changes), (1, 0));
    device.reset().await.expect("reset");
}

/// A ROM whose crystal estimate is 5% off: ROM mode asks it for a corrected rate (esptool's
/// correction), or the link would run 5% off and come out as garbage; stub mode does not load
/// the stub at that rate but uploads at 115200 and lets the stub switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_rom_clock_is_corrected_and_keeps_the_stub_at_115200() {
    for stub in [false, true] {
        let line = Line::start(SimOptions {
            wire_time: false,
            xtal_error_ppm: 50_000,
            ..SimOptions::default()
        });
        full_session(&line, settings(stub, 921_600)).await;
        let stats = line.sim.devices()[0].stats();
        let expected = if stub { (0, 1) } else { (2, 0) };
        assert_eq!(
            (stats.rom_baud_changes, stats.stub_baud_changes),
            expected,
            "stub {stub}"
        );
    }
}

/// A host at another rate than the chip's UART reads garbage and gets none of its frames
/// through: the simulated link behaves like a real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_at_the_wrong_rate_gets_no_answer() {
    let line = Line::start(SimOptions {
        baud: 57_600,
        wire_time: false,
        ..SimOptions::default()
    });
    let error = line
        .device(settings(false, 115_200))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(code(error), "station::device::no_sync");
}

/// Line noise corrupts a data block: the loader refuses it and has used up its sequence
/// number, so the region is written again from a new FLASH_DEFL_BEGIN, and the restart is
/// reported (issue 12, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_block_restarts_its_region() {
    for stub in [false, true] {
        let line = Line::one(vec!["noise@block=2".parse().unwrap()]);
        let app = noise(0x6000, 9);
        let mut device = line.device(settings(stub, 115_200));
        device.connect().await.unwrap();
        device.identify().await.unwrap();
        let report = device
            .write(vec![Region::new(0x10000, app.clone())], None)
            .await
            .expect("the region is written on the second pass");
        assert_eq!(report.restarts.len(), 1, "stub {stub}: {report:?}");
        let restart = &report.restarts[0];
        assert_eq!(restart.offset, 0x10000);
        assert_eq!(
            restart.block, 1,
            "stub {stub}: the second block was refused"
        );
        assert_eq!(
            device.md5(0x10000, app.len() as u32).await.unwrap(),
            md5(&app)
        );
        device.reset().await.unwrap();
        assert_flash_holds(&line.dump(), &[(0x10000, &app)]);
    }
}

/// A block corrupted on every pass: after the allowed restarts the write fails with its own
/// code, and nothing pretends the region was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_refused_on_every_pass_fails_as_write_refused() {
    let faults = (1..=4)
        .map(|n| format!("noise@block={n}").parse().unwrap())
        .collect();
    let line = Line::one(faults);
    let mut device = line.device(settings(false, 115_200));
    device.connect().await.unwrap();
    device.identify().await.unwrap();
    let error = device
        .write(vec![Region::new(0x10000, noise(0x400, 4))], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            DeviceError::WriteRefused {
                restarts: 3,
                offset: 0x10000,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(code(error), "station::device::write_refused");
}

/// An NVS-like image (data on its first page, erased pages after it): only the first page's
/// data is sent; the rest is erased only if it does not already read 0xFF; a region that
/// already holds its image is not written at all. The flash ends up right in every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_differs_is_erased_and_sent() {
    for stub in [false, true] {
        let line = Line::one(Vec::new());
        let nvs = nvs_like(0x6000);
        let mut device = line.device(settings(stub, 115_200));
        device.connect().await.unwrap();
        device.identify().await.unwrap();
        // A fresh chip: the erased pages after the data's two sectors already read 0xFF.
        let fresh = device
            .write(vec![Region::new(0x9000, nvs.clone())], None)
            .await
            .unwrap();
        assert_eq!(fresh.already_erased, 0x4000, "stub {stub}");
        assert_eq!(device.md5(0x9000, 0x6000).await.unwrap(), md5(&nvs));
        // The same image again: nothing to do.
        let again = device
            .write(vec![Region::new(0x9000, nvs.clone())], None)
            .await
            .unwrap();
        assert_eq!((again.unchanged, again.already_erased), (1, 0));
        // Old data all over the partition: everything is erased.
        device
            .write(vec![Region::new(0x9000, noise(0x6000, 77))], None)
            .await
            .unwrap();
        let dirty = device
            .write(vec![Region::new(0x9000, nvs.clone())], None)
            .await
            .unwrap();
        assert_eq!(dirty.already_erased, 0);
        assert_eq!(device.md5(0x9000, 0x6000).await.unwrap(), md5(&nvs));
        device.reset().await.unwrap();
        assert_flash_holds(&line.dump(), &[(0x9000, &nvs)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_devices_has_distinct_macs_ports_and_faults() {
    let line = Line::start(SimOptions {
        count: 3,
        wire_time: false,
        faults: vec!["1:silent@frame=1".parse().unwrap()],
        ..SimOptions::default()
    });
    let devices = line.sim.devices();
    assert_eq!(line.sim.ports().len(), 3);
    for (i, device) in devices.iter().enumerate() {
        assert_eq!(device.mac(), devices[0].mac().offset(i as u64));
        assert_eq!(
            device.port(),
            line.dir.path().join("ports").join(format!("ttySIM{i}"))
        );
        let file = device.flash_file().unwrap();
        assert_eq!(
            file.file_name().unwrap().to_string_lossy(),
            format!("{}.bin", device.mac().hex())
        );
        assert!(std::fs::read(file).unwrap().iter().all(|&b| b == 0xFF));
    }
    let mut healthy = EspflashDevice::new(devices[2].port(), settings(true, 115_200));
    healthy.connect().await.unwrap();
    assert_eq!(healthy.identify().await.unwrap().mac, devices[2].mac());
    let mut silent = EspflashDevice::new(devices[1].port(), settings(true, 115_200));
    assert_eq!(
        code(silent.connect().await.unwrap_err()),
        "station::device::no_sync"
    );

    let ports = line.sim.ports();
    drop(line.sim);
    assert!(
        ports.iter().all(|p| !p.exists()),
        "links are removed on drop"
    );
}

/// Issue 14: a chip reset by its RTC watchdog, armed over the loader, samples its strapping
/// pins again and boots its application, which reads the NVS partition the session wrote and
/// logs it; the host is already at the console's rate, so it reads the log from the ROM's
/// banner on, through tokio-serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_reset_boots_the_application_which_reads_its_nvs() {
    use tokio::io::AsyncReadExt as _;
    for stub in [true, false] {
        let line = Line::start(SimOptions::default());
        let image = station::nvs::build(
            &[
                station::nvs::Entry::new(
                    "dps",
                    "id_scope",
                    station::nvs::Value::Str("0ne00ABCDEF".into()),
                ),
                station::nvs::Entry::new(
                    "dps",
                    "reg_id",
                    station::nvs::Value::Str("sensor-from-nvs".into()),
                ),
            ],
            0x6000,
        )
        .unwrap();
        let mut device = line.device(SerialSettings {
            after: AfterReset::WatchdogReset,
            ..settings(stub, 921_600)
        });
        device.connect().await.unwrap();
        device
            .write(vec![Region::new(0x9000, image.clone())], None)
            .await
            .unwrap();
        assert_eq!(device.md5(0x9000, 0x6000).await.unwrap(), md5(&image));
        let started = Instant::now();
        let mut console = device.boot(115_200).await.unwrap();
        let mut log = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&log).contains("registration id sensor-from-nvs") {
            let n = tokio::time::timeout(Duration::from_secs(5), console.read(&mut buf))
                .await
                .expect("the application prints its log")
                .unwrap();
            assert!(n > 0, "the port stays open");
            log.extend_from_slice(&buf[..n]);
        }
        let log = String::from_utf8_lossy(&log);
        assert!(
            log.starts_with(
                "ets Jul 29 2019 12:21:46\r\n\r\nrst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
            ),
            "stub {stub}: {log}"
        );
        assert!(log.contains("dps: ID scope 0ne00ABCDEF"));
        // The realistic model: the log takes its time at 115200.
        assert!(started.elapsed() > Duration::from_millis(300));
        let device = &line.sim.devices()[0];
        assert_eq!(device.state(), SimState::Application);
        assert_eq!(device.stats().boots, 1);
    }
}

/// A hard reset needs RTS: on a pseudo-terminal it fails, and nothing boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_reset_on_a_pseudo_terminal_cannot_boot_the_application() {
    let line = Line::one(Vec::new());
    let mut device = line.device(SerialSettings {
        after: AfterReset::HardReset,
        ..settings(true, 115_200)
    });
    device.connect().await.unwrap();
    let error = device.boot(115_200).await.unwrap_err();
    assert_eq!(code(error), "station::device::reset_failed");
    assert_ne!(line.sim.devices()[0].state(), SimState::Application);
}
