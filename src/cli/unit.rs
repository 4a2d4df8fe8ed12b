//! `station provision` and `station sim devices`, and the operator's view of a unit.

use std::io::Write as _;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{OK, ProvisionArgs, SimDevicesArgs, print_json};
use crate::config::Config;
use crate::device::{EspflashDevice, FlashProgress, SerialSettings};
use crate::error::{Result, exit};
use crate::provision::{self, Event, Outcome, Request, UnitReport};
use crate::sim::{SimLine, SimOptions};
use crate::station::Station;

pub(super) async fn provision(config: Config, args: ProvisionArgs, json: bool) -> Result<u8> {
    let station = Station::open(config).await?;
    let batch = station
        .store
        .resolve_batch(args.batch.as_deref(), &station.config.station.id)
        .await?;
    if let Some(closed_at) = batch.closed_at.clone() {
        return Err(crate::store::StoreError::BatchClosed {
            name: batch.name,
            closed_at,
        }
        .into());
    }
    let request = Request {
        operator: attempt_operator(&batch),
        batch,
        reprovision: args.reprovision,
        skip_provisioned: false,
        claim_at_start: false,
        hold_records: false,
    };
    let mut device = EspflashDevice::new(&args.port, SerialSettings::from(&station.config.serial));
    let (events, receiver) = unbounded_channel();
    let view = (!json).then(|| tokio::spawn(render_events(receiver)));
    let report = provision::provision(&mut device, &station, &request, Some(&events)).await;
    drop(events);
    if let Some(view) = view {
        let _ = view.await;
    }
    let report = report?;
    station.store.close().await;
    if json {
        print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.outcome == Outcome::Provisioned {
        OK
    } else {
        exit::FAILED
    })
}

/// Who answers for a unit's attempts in `batch` ([`crate::operator::resolve`]).
pub(super) fn attempt_operator(batch: &crate::record::Batch) -> String {
    crate::operator::resolve(None, Some(&batch.operator))
}

/// Renders pipeline events as they come, one line per stage, on stderr.
pub(super) async fn render_events(mut receiver: UnboundedReceiver<Event>) {
    let mut stderr = std::io::stderr();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Stage { port, stage } => {
                let _ = writeln!(stderr, "{port}  {stage}");
            }
            Event::Flash {
                port,
                progress: FlashProgress::Finished { offset },
            } => {
                let _ = writeln!(stderr, "{port}  flash  region {offset:#x} written");
            }
            Event::Identified {
                port,
                mac,
                registration_id,
            } => {
                let _ = writeln!(stderr, "{port}  {mac}  {registration_id}");
            }
            Event::RecordHeld {
                port,
                error_code,
                message,
                ..
            } => {
                let _ = writeln!(
                    stderr,
                    "{port}  record held: {message} [{error_code}]; retrying"
                );
            }
            Event::Flash { .. } => {}
        }
    }
}

/// The operator's verdict on one unit: PASS or FAIL, what and why, what to do.
pub(super) fn print_report(report: &UnitReport) {
    let mac = report
        .mac
        .map_or_else(|| "(MAC unknown)".to_owned(), |m| m.to_string());
    let id = report.registration_id.as_ref().map_or("", |r| r.as_str());
    match report.outcome {
        Outcome::Provisioned => {
            println!(
                "PASS  {}  {mac}  {id}  {:.2} s (connect {:.2}, flash {:.2}, verify {:.2}){}",
                report.port,
                report.seconds,
                report.timings.connect,
                report.timings.flash,
                report.timings.verify,
                if report.reprovision {
                    "  re-provisioned"
                } else {
                    ""
                }
            );
        }
        Outcome::Skipped => {
            println!(
                "SKIP  {}  {mac}  {id}  {}",
                report.port,
                report.message.as_deref().unwrap_or_default()
            );
        }
        Outcome::Failed => {
            println!(
                "FAIL  {}  {mac}  {id}  at {}: {}",
                report.port,
                report.stage.map_or("?", |s| s.as_str()),
                report.message.as_deref().unwrap_or_default()
            );
            println!(
                "      code: {}",
                report.error_code.as_deref().unwrap_or_default()
            );
            if let Some(hint) = &report.hint {
                println!("      hint: {hint}");
            }
        }
    }
    match report.dps_status {
        crate::record::DpsStatus::NotRequested => {}
        status => println!(
            "      dps: {status}{}{}",
            report
                .assigned_hub
                .as_ref()
                .map(|hub| format!(" to {hub}"))
                .unwrap_or_default(),
            report
                .dps_error
                .as_ref()
                .filter(|_| status == crate::record::DpsStatus::Pending)
                .map(|e| if report.certificate.is_some() {
                    // Only the device holds an X.509 unit's key now: the station cannot retry.
                    format!(" ({e}); the device registers itself when it first connects, or provision it again to check it here")
                } else {
                    format!(" ({e}); `station dps verify --pending` retries")
                })
                .unwrap_or_default()
        ),
    }
    if let Some(warning) = &report.warning {
        println!("      warning: {warning}");
    }
}

pub(super) async fn sim_devices(args: SimDevicesArgs) -> Result<u8> {
    let line = SimLine::start(SimOptions {
        count: args.count,
        link_dir: args.link_dir,
        flash_dir: args.flash_dir,
        baud: args.baud,
        chip: args.chip,
        base_mac: args.base_mac,
        faults: args.faults,
        wire_time: !args.instant,
        timing: crate::sim::SimTiming {
            usb_latency: args.usb_latency_ms,
            sector_erase: args.sector_erase_ms,
            block_erase: args.block_erase_ms,
            page_program: args.page_program_ms,
            ..crate::sim::SimTiming::default()
        },
        xtal_error_ppm: args.xtal_error_ppm,
        preload: Vec::new(),
        ports: args.ports,
        leave_after_idle: args.leave_after_idle,
        swap_gap: args.swap_gap,
    })?;
    let mut stdout = std::io::stdout();
    for port in line.ports() {
        let _ = writeln!(stdout, "{}", port.display());
    }
    let _ = stdout.flush();
    for device in line.devices() {
        match device.port() {
            port if port.as_os_str().is_empty() => {
                eprintln!("sim: {} waits for a free port", device.mac());
            }
            port => eprintln!(
                "sim: {} is {} ({})",
                port.display(),
                device.mac(),
                device.pts().display()
            ),
        }
    }
    let line = std::sync::Arc::new(line);
    // `replace N` on stdin takes the device off port N, as an operator swapping units.
    let control = std::sync::Arc::clone(&line);
    std::thread::spawn(move || {
        for command in std::io::stdin().lines().map_while(std::result::Result::ok) {
            match command
                .trim()
                .strip_prefix("replace ")
                .map(str::parse::<usize>)
            {
                Some(Ok(port)) if control.replace(port) => {}
                _ => eprintln!("sim: unknown command `{command}`; use `replace PORT_INDEX`"),
            }
        }
    });
    wait_for_shutdown().await;
    drop(line);
    Ok(OK)
}

/// Waits for SIGINT or SIGTERM.
pub(super) async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
