//! `station provision` and `station sim devices`, and the operator's view of a unit.

use std::io::Write as _;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{OK, ProvisionArgs, SimDevicesArgs, UnitCommand, print_json};
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
    let operator = attempt_operator(&batch);
    let request = Request::one_unit(batch, operator, args.reprovision);
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

/// `station unit show`, `revoke` and `restore`. Revoke and restore exit 0 when the ledger and
/// DPS are as asked (or the portal steps were printed), 1 when DPS could not be changed (the
/// decision is recorded; running the command again retries DPS).
pub(super) async fn unit_command(config: Config, command: UnitCommand, json: bool) -> Result<u8> {
    let (mac, reason) = match command {
        UnitCommand::Show { mac } => return super::records::unit_show(&config, &mac, json).await,
        UnitCommand::Revoke { mac, reason } => (mac, Some(reason)),
        UnitCommand::Restore { mac } => (mac, None),
    };
    let station = Station::open(config).await?;
    let operator = super::operator(None);
    let report = match &reason {
        Some(reason) => provision::revoke(&station, &mac, reason, &operator).await,
        None => provision::restore(&station, &mac, &operator).await,
    };
    station.store.close().await;
    let report = report?;
    if json {
        print_json(&report);
    } else {
        print_revocation(&report);
    }
    Ok(if report.dps.settled() {
        OK
    } else {
        exit::FAILED
    })
}

fn print_revocation(report: &provision::RevocationReport) {
    use provision::DpsAction;
    if report.revoked {
        println!(
            "REVOKED  {}  {}  at {} ({})",
            report.mac,
            report.registration_id,
            report.revoked_at.as_deref().unwrap_or_default(),
            report.reason.as_deref().unwrap_or_default()
        );
    } else {
        println!("RESTORED  {}  {}", report.mac, report.registration_id);
    }
    match &report.dps {
        DpsAction::DenialCreated { .. } => {
            println!("  DPS: a disabled individual enrollment now refuses the device")
        }
        DpsAction::EnrollmentSet {
            provisioning_status,
            ..
        } => println!("  DPS: its individual enrollment is now {provisioning_status}"),
        DpsAction::DenialDeleted => {
            println!(
                "  DPS: the disabled individual enrollment was deleted; the group applies again"
            )
        }
        DpsAction::Nothing => println!("  DPS: nothing to undo"),
        DpsAction::NotConfigured { instructions } | DpsAction::NotPossible { instructions } => {
            println!("  DPS: not changed by the station. {instructions}")
        }
        DpsAction::Failed {
            code,
            message,
            hint,
        } => {
            println!("  DPS: NOT changed: {message}");
            println!("  code: {code}");
            if let Some(hint) = hint {
                println!("  hint: {hint}");
            }
        }
    }
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
                .map(|e| if report.certificate.is_some() || report.enrollment == crate::record::EnrollmentKind::Individual {
                    // Only the device holds its key now: the station cannot retry.
                    format!(" ({e}); the device registers itself when it first connects, or provision it again to check it here")
                } else {
                    format!(" ({e}); `station dps verify --pending` retries")
                })
                .unwrap_or_default()
        ),
    }
    match report.hub_status {
        crate::record::HubStatus::NotRequested => {}
        status => println!(
            "      hub test message: {status}{}",
            report
                .hub_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    }
    if let Some(warning) = &report.warning {
        println!("      warning: {warning}");
    }
}

pub(super) async fn sim_devices(args: SimDevicesArgs) -> Result<u8> {
    let (faults, app_faults) = crate::sim::FaultSpec::split(args.faults);
    let line = SimLine::start(SimOptions {
        count: args.count,
        link_dir: args.link_dir,
        flash_dir: args.flash_dir,
        baud: args.baud,
        chip: args.chip,
        base_mac: args.base_mac,
        faults,
        app_faults,
        app: crate::sim::SimApp {
            baud: args.app_baud,
            nvs_offset: args.app_nvs_offset,
            nvs_size: args.app_nvs_size,
            namespace: args.app_namespace,
            ..crate::sim::SimApp::default()
        },
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
