//! `station batch`, `station unit show`, `station audit`, `station export manifest` and
//! `station check`.

use std::io::Write as _;
use std::path::Path;

use super::image::{commit_private, create_private, write_private};
use super::{AuditCommand, BatchCommand, ManifestArgs, OK, open_store, operator, print_json};
use crate::config::{Attestation, Config, CredentialStorage, X509Config};
use crate::error::{Error, Result, exit};
use crate::keys::GroupKeys;
use crate::record::BatchStatus;
use crate::report;
use crate::station::Issuer;
use crate::store::ManifestFilter;
use crate::x509::CaWarning;

pub(super) async fn batch(config: &Config, command: BatchCommand, json: bool) -> Result<u8> {
    let store = open_store(config).await?;
    let station_id = &config.station.id;
    match command {
        BatchCommand::Open {
            name,
            target,
            operator: who,
        } => {
            let batch = store
                .open_batch(&name, target, &operator(who), station_id)
                .await?;
            if json {
                print_json(&batch);
            } else {
                println!(
                    "opened batch {} on station {}: target {} units, operator {}",
                    batch.name, batch.station_id, batch.target, batch.operator
                );
            }
        }
        BatchCommand::Close { name } => {
            let status = store
                .close_batch(name.as_deref(), &operator(None), station_id)
                .await?;
            if json {
                print_json(&status);
            } else {
                println!("closed batch {}", status.batch.name);
                print_status(&status);
            }
        }
        BatchCommand::Status { name } => {
            let statuses = match name {
                Some(name) => vec![store.batch_status(store.batch(&name).await?).await?],
                None => match store.open_batch_of(station_id).await? {
                    Some(open) => vec![store.batch_status(open).await?],
                    None => store.batches().await?,
                },
            };
            if json {
                if statuses.len() == 1 {
                    print_json(&statuses[0]);
                } else {
                    print_json(&statuses);
                }
            } else if statuses.is_empty() {
                println!("no batches yet: open one with `station batch open NAME --target N`");
            } else {
                for status in &statuses {
                    print_status(status);
                }
            }
        }
    }
    store.close().await;
    Ok(OK)
}

/// `station unit show MAC`: the unit's row, its attempts and its last boot log excerpt.
pub(super) async fn unit_show(config: &Config, mac: &str, json: bool) -> Result<u8> {
    let mac: crate::identity::Mac = mac.parse()?;
    let store = open_store(config).await?;
    let unit = store
        .unit_by_mac(&mac)
        .await?
        .ok_or(crate::store::StoreError::NoSuchUnit { mac })?;
    let attempts = store.attempts_of_mac(&mac).await?;
    let batch = store.batch_by_id(unit.batch_id).await?;
    store.close().await;
    if json {
        print_json(&serde_json::json!({
            "unit": unit,
            "batch": batch.name,
            "attempts": attempts,
        }));
        return Ok(OK);
    }
    println!(
        "{}  {}  {}  batch {}  station {}",
        unit.mac, unit.registration_id, unit.state, batch.name, unit.station_id
    );
    println!(
        "  chip {} {}, {} bytes of flash; key {}; image sha256 {}",
        unit.chip,
        unit.revision,
        unit.flash_size,
        unit.key_id,
        unit.image_sha256.as_deref().unwrap_or("-")
    );
    match (&unit.provisioned_at, unit.failed_stage) {
        (Some(at), _) => println!("  provisioned {at}; DPS {}", unit.dps_status),
        (None, Some(stage)) => println!("  failed at {stage}; DPS {}", unit.dps_status),
        (None, None) => println!("  DPS {}", unit.dps_status),
    }
    println!("attempts ({}):", attempts.len());
    for attempt in &attempts {
        println!(
            "  #{:<6} {}  {:<12} {:<9} {}  {}{}",
            attempt.id,
            attempt.started_at,
            attempt.outcome,
            attempt.stage.map_or("", |s| s.as_str()),
            attempt.port,
            attempt
                .error_code
                .as_ref()
                .map_or_else(String::new, |c| format!("[{c}] ")),
            attempt.message.as_deref().unwrap_or_default()
        );
    }
    match attempts.iter().rev().find(|a| a.boot_log.is_some()) {
        Some(attempt) => {
            let log = attempt.boot_log.as_deref().unwrap_or_default();
            if log.is_empty() {
                println!(
                    "boot log of attempt #{}: the unit printed nothing",
                    attempt.id
                );
            } else {
                println!("boot log of attempt #{} (redacted):", attempt.id);
            }
            for line in log.lines() {
                println!("  | {line}");
            }
        }
        None => println!("no boot log: the boot check did not run on this unit"),
    }
    Ok(OK)
}

fn print_status(status: &BatchStatus) {
    let batch = &status.batch;
    let state = match &batch.closed_at {
        Some(at) => format!("closed {at}"),
        None => "open".to_owned(),
    };
    println!(
        "{:<20} {:>5}/{:<5} provisioned  {:>4} failed  {:>3} in progress  {:>5} attempts ({} failed, {} interrupted)  {}  operator {}  opened {}",
        batch.name,
        status.provisioned,
        batch.target,
        status.failed,
        status.in_progress,
        status.attempts,
        status.failed_attempts,
        status.interrupted,
        state,
        batch.operator,
        batch.opened_at
    );
    for failure in &status.failures {
        println!(
            "{:<20} {:>5} x {} (at {})",
            "", failure.count, failure.error_code, failure.stage
        );
    }
}

pub(super) async fn audit(config: &Config, command: AuditCommand, json: bool) -> Result<u8> {
    let store = open_store(config).await?;
    let code = match command {
        AuditCommand::Show { batch, limit } => {
            let entries = store.audit_entries_of(batch.as_deref(), limit).await?;
            if json {
                print_json(&entries);
            } else {
                let mut out = std::io::BufWriter::new(std::io::stdout());
                report::write_audit_table(&entries, &mut out)
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::io("writing", "stdout", e))?;
            }
            OK
        }
        AuditCommand::Export { format, out } => {
            let entries = store.audit_entries().await?;
            let mut buffer = Vec::new();
            report::write_audit(&entries, format, &mut buffer)
                .map_err(|e| Error::io("encoding", "audit export", e))?;
            match out {
                Some(path) => write_private(&path, &buffer)?,
                None => std::io::stdout()
                    .write_all(&buffer)
                    .map_err(|e| Error::io("writing", "stdout", e))?,
            }
            OK
        }
        AuditCommand::Verify { head } => {
            let report = store.verify_audit().await?;
            let head_found = match &head {
                None => None,
                Some(hash) => Some(
                    store
                        .audit_hash_position(hash)
                        .await?
                        .is_some_and(|seq| seq <= report.entries),
                ),
            };
            let intact = report.first_break.is_none() && head_found != Some(false);
            if json {
                print_json(&serde_json::json!({
                    "intact": intact,
                    "entries": report.entries,
                    "head_hash": report.head_hash,
                    "first_break": report.first_break,
                    "expected_head_found": head_found,
                }));
            } else if let Some(broken) = &report.first_break {
                println!(
                    "audit chain BROKEN at entry {}: {}",
                    broken.seq, broken.problem
                );
                println!(
                    "entries before it verify; the last good hash is {}",
                    report.head_hash
                );
            } else if head_found == Some(false) {
                println!(
                    "audit chain of {} entries is internally consistent, but the expected head {} is NOT in it: the log was rewritten or cut short",
                    report.entries,
                    head.as_deref().unwrap_or_default()
                );
            } else {
                println!(
                    "audit chain intact: {} entries verified, head hash {}",
                    report.entries, report.head_hash
                );
                if head_found == Some(true) {
                    println!("the expected head is in the chain");
                }
            }
            if intact { OK } else { exit::FAILED }
        }
    };
    store.close().await;
    Ok(code)
}

/// Parses a `--since`/`--until` bound ([`crate::clock::parse_time`]).
fn parse_time_bound(flag: &str, text: &str) -> Result<time::OffsetDateTime> {
    crate::clock::parse_time(text).ok_or_else(|| Error::BadInput {
        what: format!("{flag} {:?}", text.trim()),
        problem: "not a time the station understands".to_owned(),
        fix: format!(
            "Give {flag} as RFC 3339 with a zone, e.g. 2026-11-25T08:00:00Z or 2026-11-25T09:00:00+01:00, or as a date, 2026-11-25 (midnight UTC)."
        ),
    })
}

/// `station export manifest`.
pub(super) async fn export_manifest(config: &Config, args: ManifestArgs, json: bool) -> Result<u8> {
    let filter = ManifestFilter {
        batch: args.batch,
        since: args
            .since
            .as_deref()
            .map(|t| parse_time_bound("--since", t))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time_bound("--until", t))
            .transpose()?,
    };
    let store = open_store(config).await?;
    let station_id = &config.station.id;
    let who = operator(None);
    let export = match &args.out {
        Some(path) => {
            let mut file = create_private(path)?;
            let export = store
                .export_manifest(&filter, args.format, station_id, &who, &mut file)
                .await?;
            commit_private(file)?;
            export
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let export = store
                .export_manifest(&filter, args.format, station_id, &who, &mut out)
                .await?;
            out.flush().map_err(|e| Error::io("writing", "stdout", e))?;
            export
        }
    };
    store.close().await;
    // With --out, stdout is free for a summary; without, the manifest is the output.
    if let Some(path) = &args.out {
        if json {
            print_json(&serde_json::json!({
                "out": path.display().to_string(),
                "rows": export.rows,
                "bytes": export.bytes,
                "sha256": export.sha256,
                "audit_seq": export.audit_seq,
            }));
        } else {
            println!(
                "wrote {} unit(s) to {} (sha256 {}; audit entry {})",
                export.rows,
                path.display(),
                export.sha256,
                export.audit_seq
            );
        }
    }
    Ok(OK)
}

/// One line of `station check`.
#[derive(serde::Serialize)]
struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
    /// What does not fail the check but needs attention soon (a CA expiring within 90 days).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// A failure of the station's own setup (configuration, key file): exit code 2.
    #[serde(skip)]
    usage: bool,
}

impl Check {
    /// A check that passed, or failed without being a setup error.
    fn new(what: &'static str, ok: bool, detail: String) -> Check {
        Check {
            what,
            ok,
            detail,
            warnings: Vec::new(),
            usage: false,
        }
    }

    /// A failed check: the error as the operator reads it.
    fn failed(what: &'static str, error: Error) -> Check {
        Check::new(what, false, super::render_error(&error))
    }

    /// A failed check of the station's own setup (exit code 2).
    fn misconfigured(what: &'static str, error: Error) -> Check {
        Check {
            usage: true,
            ..Check::failed(what, error)
        }
    }
}

pub(super) async fn check(config_path: &Path, json: bool) -> Result<u8> {
    let mut checks = Vec::new();
    let config = match Config::load(config_path) {
        Ok(config) => {
            checks.push(Check::new(
                "config",
                true,
                format!("{} is valid", config_path.display()),
            ));
            Some(config)
        }
        Err(e) => {
            checks.push(Check::misconfigured("config", e.into()));
            None
        }
    };
    if let Some(config) = &config {
        checks.push(match &config.dps.attestation {
            Attestation::SymmetricKey(files) => match GroupKeys::load(
                &files.group_key_file,
                files.secondary_group_key_file.as_deref(),
            ) {
                Ok(keys) => Check::new(
                    "group key",
                    true,
                    format!(
                        "{} loaded (key id {}{})",
                        files.group_key_file.display(),
                        keys.primary.id(),
                        keys.secondary
                            .as_ref()
                            .map(|k| format!(", secondary {}", k.id()))
                            .unwrap_or_default()
                    ),
                ),
                Err(e) => Check::misconfigured("group key", e.into()),
            },
            Attestation::X509(x509) => check_signing_ca(config, x509),
        });
        match crate::store::Store::open(&config.station.database).await {
            Ok(store) => {
                let report = store.verify_audit().await?;
                let open = store.open_batch_of(&config.station.id).await?;
                checks.push(Check::new(
                    "database",
                    report.first_break.is_none(),
                    format!(
                        "{}: audit chain {} ({} entries); {}",
                        config.station.database.display(),
                        if report.first_break.is_none() {
                            "intact"
                        } else {
                            "BROKEN (run `station audit verify`)"
                        },
                        report.entries,
                        open.map_or_else(
                            || "no open batch".to_owned(),
                            |b| format!("open batch {}", b.name)
                        )
                    ),
                ));
                store.close().await;
            }
            Err(e) => checks.push(Check::failed("database", e.into())),
        }
        let found: Vec<String> = crate::line::discover(&config.serial)
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        // No device plugged in is not a fault of the station: say so without failing.
        checks.push(Check::new(
            "ports",
            true,
            if found.is_empty() {
                format!(
                    "none matches {:?} right now: plug a device in, or check [serial] ports",
                    config.serial.ports
                )
            } else {
                format!("{} port(s): {}", found.len(), found.join(", "))
            },
        ));
        checks.push(check_dps(config).await);
    }
    let all_ok = checks.iter().all(|c| c.ok);
    if json {
        print_json(&serde_json::json!({ "ok": all_ok, "checks": checks }));
    } else {
        for c in &checks {
            println!(
                "{} {:<10} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.what,
                c.detail
            );
            for warning in &c.warnings {
                println!("warn {:<10} {warning}", c.what);
            }
        }
    }
    Ok(if all_ok {
        OK
    } else if checks.iter().any(|c| c.usage) {
        exit::USAGE
    } else {
        exit::FAILED
    })
}

/// X.509 attestation's signing CA: loaded and checked as the line would (valid now, CA:TRUE,
/// allowed to sign certificates, the key its certificate's, the chain sound), a certificate it
/// issues proven to fit the configured storage, and what needs attention soon as warnings (an
/// expiry within 90 days, device certificates the CA would cut short).
fn check_signing_ca(config: &Config, x509: &X509Config) -> Check {
    let now = time::OffsetDateTime::now_utc();
    let issuer = match Issuer::load(x509, now) {
        Ok(issuer) => issuer,
        Err(e) => return Check::misconfigured("signing CA", e.into()),
    };
    let fits = issuer
        .lengths(config, now)
        .map_err(Error::from)
        .and_then(|lengths| Ok(config.check_x509_fit(&lengths)?));
    if let Err(e) = fits {
        return Check::misconfigured("signing CA", e);
    }
    let ca = &issuer.ca;
    let warnings: Vec<CaWarning> = ca.warnings(now, x509.cert_days);
    let key_usage = if warnings
        .iter()
        .any(|w| matches!(w, CaWarning::KeyUsageUnrestricted { .. }))
    {
        "CA:TRUE, no key-usage restriction"
    } else {
        "CA:TRUE, keyCertSign"
    };
    let chain = match ca.chain() {
        [] => "no chain above it".to_owned(),
        chain => format!(
            "chain of {} up to `{}`",
            chain.len(),
            chain.last().map_or("", |c| c.subject.as_str())
        ),
    };
    let storage = match x509.storage {
        CredentialStorage::Nvs => "in NVS".to_owned(),
        CredentialStorage::SecureCert(partition) => format!(
            "in esp_secure_cert at {:#x} ({:#x} bytes)",
            partition.offset, partition.size
        ),
    };
    let days_left = (ca.not_after() - now).whole_days();
    Check {
        warnings: warnings.iter().map(ToString::to_string).collect(),
        ..Check::new(
            "signing CA",
            true,
            format!(
                "`{}` may sign certificates ({key_usage}, {} key); thumbprint {} (key id {}); valid until {} ({days_left} days); {chain}; issues {} certificates for {} days, stored {storage}",
                ca.subject(),
                ca.key_algorithm(),
                ca.thumbprint(),
                issuer.key_id(),
                crate::clock::format_time(ca.not_after()),
                issuer.policy.key_type,
                x509.cert_days,
            ),
        )
    }
}

/// DPS reachability, when pre-verification is on (a station that does not pre-verify does not
/// need the network).
async fn check_dps(config: &Config) -> Check {
    let url = &config.dps.verify_url;
    if !config.dps.pre_verify {
        return Check::new(
            "dps",
            true,
            format!("not contacted: pre_verify is off (`station dps verify` calls {url})"),
        );
    }
    let reached = match crate::dps::DpsClient::new(&config.dps) {
        Ok(client) => client.reachable().await,
        Err(e) => Err(e),
    };
    match reached {
        Ok(status) => Check::new(
            "dps",
            true,
            format!("{url} answers (HTTP {status}); pre_verify is on"),
        ),
        Err(e) => Check::failed("dps", e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_accept_rfc3339_and_dates_and_explain_otherwise() {
        let at = parse_time_bound("--since", "2026-11-25T09:00:00+01:00").unwrap();
        assert_eq!(crate::clock::format_time(at), "2026-11-25T08:00:00.000Z");
        let day = parse_time_bound("--until", "2026-11-25").unwrap();
        assert_eq!(crate::clock::format_time(day), "2026-11-25T00:00:00.000Z");
        for bad in ["yesterday", "2026-11-25T08:00:00", "25/11/2026", ""] {
            let error = parse_time_bound("--since", bad).unwrap_err();
            assert_eq!(error.code(), "station::input::invalid", "{bad}");
            assert_eq!(error.exit_code(), crate::error::exit::USAGE);
            assert!(
                error.hint().unwrap().contains("2026-11-25T08:00:00Z"),
                "{error}"
            );
        }
    }
}
