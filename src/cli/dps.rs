//! `station dps verify` and `station sim dps`.

use std::io::Write as _;
use std::sync::Arc;

use super::{AttestationKind, OK, SimDpsArgs, print_json};
use crate::config::Config;
use crate::error::{Error, Result, exit};
use crate::identity::RegistrationId;
use crate::keys::GroupKey;
use crate::provision::{self, VerifyReport};
use crate::record::DpsStatus;
use crate::sim::dps::{DpsEmulator, EmulatorOptions};
use crate::sim::tls::ServerIdentity;
use crate::station::Station;

/// `station dps verify --registration-id ID`: exit 0 when assigned, 1 otherwise.
pub(super) async fn verify_one(config: Config, registration_id: &str, json: bool) -> Result<u8> {
    let registration_id = RegistrationId::new(registration_id)?;
    let station = Station::open(config).await?;
    let report =
        provision::verify_registration(&station, &registration_id, &super::operator(None)).await?;
    station.store.close().await;
    if json {
        print_json(&report);
    } else {
        print_verify(&report);
    }
    Ok(if report.dps_status == DpsStatus::Assigned {
        OK
    } else {
        exit::FAILED
    })
}

/// `station dps verify --pending`: exit 0 unless a unit failed or stayed pending.
pub(super) async fn verify_pending(config: Config, json: bool) -> Result<u8> {
    let station = Station::open(config).await?;
    let summary = provision::retry_pending(&station, &super::operator(None)).await?;
    station.store.close().await;
    if json {
        print_json(&summary);
    } else {
        for report in &summary.units {
            print_verify(report);
        }
        println!(
            "{} pending: {} assigned, {} failed, {} still pending, {} skipped",
            summary.pending,
            summary.assigned,
            summary.failed,
            summary.still_pending,
            summary.skipped
        );
    }
    Ok(
        if summary.failed == 0 && summary.still_pending == 0 && summary.skipped == 0 {
            OK
        } else {
            exit::FAILED
        },
    )
}

fn print_verify(report: &VerifyReport) {
    let mac = report
        .mac
        .map_or_else(|| "(no unit recorded)".to_owned(), |m| m.to_string());
    println!(
        "{}  {mac}  dps {}",
        report.registration_id, report.dps_status
    );
    if let Some(state) = &report.registration_state {
        let rows = [
            ("assigned hub", state.assigned_hub.as_deref()),
            ("device ID", state.device_id.as_deref()),
            ("status", Some(state.status.as_str())),
            ("substatus", state.substatus.as_deref()),
            ("created", state.created_date_time_utc.as_deref()),
            ("updated", state.last_updated_date_time_utc.as_deref()),
            ("etag", state.etag.as_deref()),
            ("error message", state.error_message.as_deref()),
        ];
        for (name, value) in rows {
            if let Some(value) = value {
                println!("  {name:<14} {value}");
            }
        }
        if let Some(code) = state.error_code {
            println!("  {:<14} {code}", "error code");
        }
        if let Some(payload) = &state.payload {
            println!("  {:<14} {payload}", "payload");
        }
    }
    if let Some(error) = &report.error {
        println!("  error: {error}");
        println!(
            "  code: {}",
            report.error_code.as_ref().map_or("", |c| c.as_str())
        );
        if let Some(hint) = &report.hint {
            println!("  hint: {hint}");
        }
    }
}

/// `station sim dps`: runs the emulator until SIGINT/SIGTERM; prints its URL first.
pub(super) async fn sim_dps(args: SimDpsArgs, json: bool) -> Result<u8> {
    let needs = |flag: &str, problem: &str| Error::BadInput {
        what: format!(
            "`station sim dps --attestation {}`",
            match args.attestation {
                AttestationKind::SymmetricKey => "symmetric-key",
                AttestationKind::X509 => "x509",
            }
        ),
        problem: problem.to_owned(),
        fix: format!("Add {flag}."),
    };
    let tls = args
        .tls_dir
        .as_deref()
        .map(ServerIdentity::load_or_generate)
        .transpose()?
        .map(Arc::new);
    let mut options = match args.attestation {
        AttestationKind::SymmetricKey => {
            let Some(file) = &args.group_key_file else {
                return Err(needs(
                    "--group-key-file FILE",
                    "a symmetric-key group checks SAS tokens against its group key",
                ));
            };
            let mut options = EmulatorOptions::new(args.id_scope, GroupKey::load(file)?);
            options.tls = tls;
            options
        }
        AttestationKind::X509 => {
            let Some(ca_file) = &args.ca_file else {
                return Err(needs(
                    "--ca-file FILE",
                    "an X.509 group trusts the CA certificate registered with it",
                ));
            };
            let Some(tls) = tls else {
                return Err(needs(
                    "--tls-dir DIR",
                    "an X.509 group authenticates devices in the TLS handshake, so the emulator serves HTTPS",
                ));
            };
            let trusted = crate::tls::read_roots(ca_file).map_err(|e| Error::BadInput {
                what: "--ca-file".to_owned(),
                problem: e.to_string(),
                fix: "Give the enrollment group's CA certificate as PEM (the station's [dps] ca_cert_file, or the root above it).".to_owned(),
            })?;
            EmulatorOptions::x509(args.id_scope, trusted, tls)
        }
    };
    options.port = args.port.unwrap_or(0);
    options.throttle = args.throttle;
    options.fail_5xx = args.fail_5xx;
    options.retry_after = args.retry_after;
    options.latency = args.latency;
    options.assign_delay = args.assign_delay;
    options.disabled = args.disabled;
    options.stall = args.stall;
    if let Some(hub) = args.hub {
        options.hub = hub;
    }
    let emulator = DpsEmulator::start(options).await?;
    let ca_file = args.tls_dir.as_deref().map(ServerIdentity::ca_file);
    if json {
        print_json(&serde_json::json!({
            "url": emulator.url(),
            "ca_file": ca_file.as_ref().map(|f| f.display().to_string()),
        }));
    } else {
        println!("{}", emulator.url());
    }
    let _ = std::io::stdout().flush();
    eprintln!(
        "sim: DPS emulator at {}; set [dps] verify_url to it{}",
        emulator.url(),
        ca_file
            .map(|f| format!(" and [dps] ca_file to {}", f.display()))
            .unwrap_or_default()
    );
    super::unit::wait_for_shutdown().await;
    emulator.shutdown().await;
    Ok(OK)
}
