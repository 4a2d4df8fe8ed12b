//! Times one unit's device stages against a simulated ESP32 with realistic time on: connect,
//! identify, write, MD5, reset, with the bytes each stage moved over the link.
//!
//! `cargo run --release --example unit_timing -- [BAUD] [IMAGE_BYTES] [rom]`
//! (defaults: 921600, 24576, stub). The image is an NVS-like mix of written entries and erased
//! space, so it compresses as a real NVS partition does.

use std::time::Instant;

use station::device::{AfterReset, BeforeReset, Device, EspflashDevice, Region, SerialSettings};
use station::sim::{SimLine, SimOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> miette::Result<()> {
    let mut args = std::env::args().skip(1);
    let baud: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(921_600);
    let len: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(24 * 1024);
    let stub = args.next().as_deref() != Some("rom");

    let line = SimLine::start(SimOptions::default()).map_err(station::Error::from)?;
    let sim = &line.devices()[0];
    let mut device = EspflashDevice::new(
        sim.port(),
        SerialSettings {
            baud,
            before: BeforeReset::NoReset,
            after: AfterReset::NoReset,
            stub,
            ..SerialSettings::default()
        },
    );
    let image = nvs_like(len);
    println!(
        "one unit, {} mode, {baud} baud, {len}-byte image, realistic time (wire, USB latency, flash)",
        if stub { "stub" } else { "ROM" }
    );
    println!(
        "{:<10} {:>9} {:>11} {:>11}",
        "stage", "seconds", "host→chip", "chip→host"
    );
    let mut last = sim.stats();
    let mut total = 0.0;
    let mut stage = |name: &str, started: Instant| {
        let seconds = started.elapsed().as_secs_f64();
        total += seconds;
        let now = sim.stats();
        println!(
            "{name:<10} {seconds:>9.3} {:>11} {:>11}",
            now.bytes_received - last.bytes_received,
            now.bytes_sent - last.bytes_sent
        );
        last = now;
    };

    let started = Instant::now();
    device.connect().await.map_err(station::Error::from)?;
    stage("connect", started);
    let started = Instant::now();
    let identity = device.identify().await.map_err(station::Error::from)?;
    stage("identify", started);
    let started = Instant::now();
    device
        .write(vec![Region::new(0x9000, image.clone())], None)
        .await
        .map_err(station::Error::from)?;
    stage("write", started);
    let started = Instant::now();
    let digest = device
        .md5(0x9000, len as u32)
        .await
        .map_err(station::Error::from)?;
    stage("md5", started);
    let started = Instant::now();
    device.reset().await.map_err(station::Error::from)?;
    stage("reset", started);
    println!("{:<10} {total:>9.3}", "total");
    println!("MAC {} MD5 {}", identity.mac, hex::encode(digest));
    Ok(())
}

/// Mostly erased, with 200 written 32-byte entries, like a provisioned NVS partition.
fn nvs_like(len: usize) -> Vec<u8> {
    let mut image = vec![0xFF; len];
    let mut state = 0x2545_F491u32;
    for chunk in image.chunks_mut(32).take(200) {
        for byte in chunk {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = (state >> 24) as u8;
        }
    }
    image
}
