//! Conformance with the real ESP32 ROM loader (issue 12): every phase of the byte-level
//! recording in `fixtures/rom/esp32-rom-trace.json` is replayed against `station sim devices`
//! (the binary, over its pseudo-terminal), and every reply is compared with the recorded one:
//! number of replies, direction, op, size, value, the four status bytes (status, error and the
//! two reserved bytes) and the body.
//!
//! Known differences, each compared as far as it is silicon truth:
//! - READ_REG of a register whose recorded value came from the emulator, not the silicon
//!   (`EMULATOR_REGISTERS`, from the recording's README): the simulator keeps its own value.
//!   Later replies that carry that value in their stale value field are compared with the
//!   simulator's value in its place.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Registers whose recorded values the emulator made up (the recording's README).
const EMULATOR_REGISTERS: &[(u32, &str)] = &[
    (0x3FF5_A00C, "eFuse word 3"),
    (0x3FF5_A010, "eFuse word 4"),
    (0x3FF4_0014, "UART0_CLKDIV"),
    (0x3FF5_F06C, "RTC_CALI"),
    (0x3FF4_4038, "GPIO_STRAP"),
    (0x3FF4_2080, "SPI W0 (the JEDEC flash id)"),
    (0x3FF4_2000, "SPI_CMD (poll results)"),
];

/// The MAC of the recorded unit.
const RECORDED_MAC: &str = "24:0a:c4:12:34:56";

/// How long to listen for replies beyond the recorded number, and for a step recorded with
/// none. The simulator runs with no time charged, so its replies come at once.
const EXTRA_WAIT: Duration = Duration::from_millis(60);
const SILENT_WAIT: Duration = Duration::from_millis(250);
/// The longest any expected reply may take on a loaded machine.
const REPLY_DEADLINE: Duration = Duration::from_secs(3);

/// A `station sim devices` process with one device, and its port.
struct Simulator {
    child: Child,
    port: serialport::TTYPort,
}

impl Simulator {
    fn start() -> Simulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_station"))
            .args(["sim", "devices", "--count", "1", "--instant"])
            .args(["--base-mac", RECORDED_MAC])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("station sim devices starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("it prints its port");
        let port = serialport::new(line.trim(), 115_200)
            .timeout(Duration::from_millis(5))
            .open_native()
            .expect("the simulated port opens");
        Simulator { child, port }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex in the recording")
}

/// Reads reply frames: until `expected` have come and then `EXTRA_WAIT` of silence, or, when
/// none are expected, `SILENT_WAIT`.
fn replies(port: &mut serialport::TTYPort, expected: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let (mut in_frame, mut escaped) = (false, false);
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        let enough = frames.len() >= expected;
        let window = if expected == 0 {
            SILENT_WAIT
        } else {
            EXTRA_WAIT
        };
        if enough && quiet_since.elapsed() >= window {
            return frames;
        }
        if !enough && started.elapsed() > REPLY_DEADLINE {
            return frames;
        }
        let n = match port.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => 0,
            Err(e) => panic!("reading the simulated port: {e}"),
        };
        if n > 0 {
            quiet_since = Instant::now();
        }
        for &byte in &buf[..n] {
            match (byte, in_frame) {
                (0xC0, false) => in_frame = true,
                (0xC0, true) if frame.is_empty() => {}
                (0xC0, true) => {
                    frames.push(std::mem::take(&mut frame));
                    in_frame = false;
                }
                (_, false) => {}
                (0xDB, true) => escaped = true,
                (b, true) if escaped => {
                    escaped = false;
                    frame.push(match b {
                        0xDC => 0xC0,
                        0xDD => 0xDB,
                        other => other,
                    });
                }
                (b, true) => frame.push(b),
            }
        }
    }
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The READ_REG address of a request, if it is one.
fn read_reg_address(request: &[u8]) -> Option<u32> {
    (request.len() >= 12 && request[0] == 0 && request[1] == 0x0A).then(|| word(request, 8))
}

/// Compares one phase; returns the differences found.
fn replay_phase(phase: &Value) -> Vec<String> {
    let name = phase["name"].as_str().unwrap_or("?");
    let mut sim = Simulator::start();
    let mut differences = Vec::new();
    // The value the last READ_REG or SYNC left in the response buffer: (recorded, simulated).
    let mut stale: Option<(u32, u32)> = None;
    for step in phase["steps"].as_array().expect("steps") {
        let step_name = step["name"].as_str().unwrap_or("?");
        let request = step["request_hex"].as_str().map(hex);
        let wire = match (step["wire_hex"].as_str(), &request) {
            (Some(raw), _) => hex(raw),
            (None, Some(request)) => station::slip::encode(request),
            (None, None) => Vec::new(),
        };
        sim.port
            .write_all(&wire)
            .expect("writing the simulated port");
        let recorded = step["responses"].as_array().expect("responses");
        let got = replies(&mut sim.port, recorded.len());
        let at = format!("{name} / {step_name}");
        if got.len() != recorded.len() {
            differences.push(format!(
                "{at}: {} replies, recorded {}",
                got.len(),
                recorded.len()
            ));
            continue;
        }
        let op = request.as_deref().filter(|r| r.len() >= 2).map(|r| r[1]);
        let emulated = request
            .as_deref()
            .and_then(read_reg_address)
            .and_then(|addr| EMULATOR_REGISTERS.iter().find(|(a, _)| *a == addr));
        for (i, (reply, expected)) in got.iter().zip(recorded).enumerate() {
            let expected_bytes = hex(expected["hex"].as_str().expect("hex"));
            if reply.len() != expected_bytes.len() || reply.len() < 12 {
                differences.push(format!(
                    "{at} #{i}: {} bytes, recorded {} ({} vs {})",
                    reply.len(),
                    expected_bytes.len(),
                    hex::encode(reply),
                    hex::encode(&expected_bytes)
                ));
                continue;
            }
            let (value, recorded_value) = (word(reply, 4), word(&expected_bytes, 4));
            // READ_REG and SYNC set the value; every other reply carries the last one.
            let fresh = matches!(op, Some(0x0A | 0x08))
                && op == Some(expected_bytes[1])
                && expected_bytes[expected_bytes.len() - 4] == 0;
            let value_ok = if fresh && emulated.is_some() {
                true
            } else if !fresh && stale.is_some_and(|(recorded, _)| recorded == recorded_value) {
                stale.is_some_and(|(_, simulated)| simulated == value)
            } else {
                value == recorded_value
            };
            if fresh {
                stale = Some((recorded_value, value));
            }
            let mut same = reply.clone();
            same[4..8].copy_from_slice(&expected_bytes[4..8]);
            if !value_ok || same != expected_bytes {
                differences.push(format!(
                    "{at} #{i}: got {}, recorded {}",
                    hex::encode(reply),
                    hex::encode(&expected_bytes)
                ));
            }
        }
    }
    differences
}

#[test]
fn the_simulator_answers_like_the_recorded_esp32_rom() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rom/esp32-rom-trace.json");
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the recording"))
            .expect("the recording parses");
    let phases = trace["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3, "main, first_unsupported, flash_defl_end");
    let steps: usize = phases
        .iter()
        .map(|p| p["steps"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(steps >= 135, "{steps} steps");
    let differences: Vec<String> = phases.iter().flat_map(replay_phase).collect();
    assert!(
        differences.is_empty(),
        "{} differences from the recorded ROM:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
