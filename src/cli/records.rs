//! `station batch`, `station audit`, `station export manifest` and `station check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::image::{commit_private, create_private, write_private};
use super::{
    AuditCommand, BatchCommand, ManifestArgs, OK, open_store, open_store_to_read, operator,
    print_json, write_checkpoint_sidecar,
};
use crate::config::{Attestation, Config, CredentialStorage, X509Config};
use crate::error::{Error, Result, exit};
use crate::keys::GroupKeys;
use crate::record::BatchStatus;
use crate::report;
use crate::station::Issuer;
use crate::store::{ChainReport, ManifestFilter, Store};
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
    let rate = |rate: Option<f64>| rate.map_or_else(String::new, |r| format!(", {r:.1} units/min"));
    if status.stations.len() > 1 {
        println!(
            "{:<20} all stations: {} provisioned{}",
            "",
            status.provisioned,
            rate(status.units_per_minute)
        );
    }
    for station in &status.stations {
        println!(
            "{:<20} station {}: {} provisioned, {} attempts ({} failed), {} in progress{}",
            "",
            station.station_id,
            station.provisioned,
            station.attempts,
            station.failed_attempts,
            station.in_progress,
            rate(station.units_per_minute)
        );
    }
}

pub(super) async fn audit(config: &Config, command: AuditCommand, json: bool) -> Result<u8> {
    let code = match command {
        AuditCommand::Show { batch, limit } => {
            let store = open_store_to_read(config).await?;
            let entries = store.audit_entries_of(batch.as_deref(), limit).await?;
            store.close().await;
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
            let store = open_store(config).await?;
            let checkpoint = store.checkpoint("audit.export").await?;
            let entries = store.audit_entries().await?;
            store.close().await;
            let mut buffer = Vec::new();
            report::write_audit(&entries, format, &mut buffer)
                .map_err(|e| Error::io("encoding", "audit export", e))?;
            match out {
                Some(path) => {
                    write_private(&path, &buffer)?;
                    if let Some(checkpoint) = &checkpoint {
                        write_checkpoint_sidecar(
                            &path,
                            checkpoint,
                            serde_json::json!({ "kind": "audit", "entries": entries.len() }),
                        )?;
                    }
                }
                None => std::io::stdout()
                    .write_all(&buffer)
                    .map_err(|e| Error::io("writing", "stdout", e))?,
            }
            OK
        }
        AuditCommand::Verify {
            head,
            station,
            checkpoints,
            public_key,
        } => verify(config, head, station, checkpoints, public_key, json).await?,
    };
    Ok(code)
}

/// `station audit verify`: every chain (or one station's), the `--head` of an earlier review,
/// and the checkpoints of one station (`--station`, else this one) against its chain.
async fn verify(
    config: &Config,
    head: Option<String>,
    station: Option<String>,
    checkpoint_files: Vec<PathBuf>,
    public_key: Option<String>,
    json: bool,
) -> Result<u8> {
    use crate::store::{CheckpointFinding, CheckpointReport, HeadCheck};
    // Arguments first: a malformed one is a usage error, whatever the log holds.
    let head = head
        .map(|text| {
            crate::store::head_prefix(&text).map_err(|problem| Error::BadInput {
                what: "--head".to_owned(),
                problem,
                fix: "Give the head hash `station audit verify` printed at the earlier review (all 64 hex digits, or at least the first 16).".to_owned(),
            })
        })
        .transpose()?;
    let trusted = match &public_key {
        Some(given) => Some(
            crate::checkpoint::PublicKey::from_argument(given)
                .map_err(crate::store::StoreError::from)?,
        ),
        None => match crate::checkpoint::StationKey::load(&config.audit.signing_key_file) {
            Ok(key) => Some(key.public()),
            Err(crate::checkpoint::CheckpointError::KeyUnreadable { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(crate::store::StoreError::from(e).into()),
        },
    };
    let explicit = !checkpoint_files.is_empty();
    let sources = if explicit {
        checkpoint_files
    } else {
        vec![config.audit.checkpoint_file.clone()]
    };

    let store = open_store_to_read(config).await?;
    let reports = store.verify_audit_chains(station.as_deref()).await?;
    let chain = ChainReport::combined(&reports);
    let head_check = match &head {
        None => None,
        Some(prefix) => Some(store.find_head(prefix, &reports).await?),
    };
    // Checkpoints are signed by one station: they are held against the chain holding its
    // entries (SQLite: the file's one chain; PostgreSQL: its own, empty if it wrote none).
    let signer = station.as_deref().unwrap_or(&config.station.id);
    let signer_chain = reports
        .iter()
        .find(|r| r.station_id.as_deref().is_none_or(|s| s == signer))
        .cloned()
        .unwrap_or_else(|| ChainReport::combined(&[]));
    if head_check == Some(HeadCheck::Ambiguous) {
        store.close().await;
        return Err(Error::BadInput {
            what: "--head".to_owned(),
            problem: format!(
                "{} matches more than one entry",
                head.as_deref().unwrap_or_default()
            ),
            fix: "Give more digits of the head hash, up to all 64.".to_owned(),
        });
    }
    let mut report = CheckpointReport::default();
    let mut notes = Vec::new();
    for source in &sources {
        let log = crate::checkpoint::CheckpointLog::new(source);
        let lines = match log.read().map_err(crate::store::StoreError::from)? {
            Some(lines) => lines,
            None if explicit => {
                store.close().await;
                return Err(Error::BadInput {
                    what: format!("--checkpoints {}", source.display()),
                    problem: "there is no such file".to_owned(),
                    fix: "Give a checkpoint file the station wrote ([audit] checkpoint_file) or a copy of it.".to_owned(),
                });
            }
            None => {
                notes.push(format!(
                    "no checkpoint file at {}: the chain was held against nothing outside the database",
                    source.display()
                ));
                continue;
            }
        };
        match &trusted {
            Some(key) => {
                store
                    .verify_checkpoints(
                        signer,
                        &signer_chain,
                        &source.display().to_string(),
                        &lines,
                        key,
                        &mut report,
                    )
                    .await?;
            }
            None if !lines.is_empty() => report.problems.push(CheckpointFinding {
                source: source.display().to_string(),
                seq: None,
                problem: format!(
                    "{} checkpoint(s) cannot be checked: the station signing key {} is missing (give the station's public key with --public-key)",
                    lines.len(),
                    config.audit.signing_key_file.display()
                ),
            }),
            None => {}
        }
    }
    store.close().await;

    let intact = chain.first_break.is_none()
        && head_check != Some(HeadCheck::Missing)
        && report.problems.is_empty();
    if json {
        print_json(&serde_json::json!({
            "intact": intact,
            "entries": chain.entries,
            "head_hash": chain.head_hash,
            "first_break": chain.first_break,
            "expected_head_found": head_check.map(|h| matches!(h, HeadCheck::Found(_))),
            "chains": reports,
            "checkpoints": report,
            "public_key": trusted.map(|k| k.to_string()),
            "notes": notes,
        }));
    } else {
        for one in &reports {
            let name = one
                .station_id
                .as_ref()
                .map_or_else(String::new, |s| format!("station {s}: "));
            match &one.first_break {
                Some(broken) => {
                    println!(
                        "{name}audit chain BROKEN at entry {}: {}",
                        broken.seq, broken.problem
                    );
                    println!(
                        "{name}entries before it verify; the last good hash is {}",
                        one.head_hash
                    );
                }
                None => println!(
                    "{name}audit chain intact: {} entries verified, head hash {}",
                    one.entries, one.head_hash
                ),
            }
        }
        if reports.len() != 1 || reports[0].station_id.is_some() {
            let broken = reports.iter().filter(|r| r.first_break.is_some()).count();
            println!(
                "audit chains of {} station(s): {} entries; {}",
                reports.len(),
                chain.entries,
                if broken == 0 {
                    "all intact".to_owned()
                } else {
                    format!("{broken} BROKEN")
                }
            );
        }
        match head_check {
            Some(HeadCheck::Missing) => println!(
                "the audit log of {} entries{}, but the expected head {} is NOT in it: the log was rewritten or cut short",
                chain.entries,
                if chain.first_break.is_none() {
                    " is internally consistent"
                } else {
                    ""
                },
                head.as_deref().unwrap_or_default()
            ),
            Some(HeadCheck::Found(_)) => println!("the expected head is in the chain"),
            _ => {}
        }
        for finding in &report.problems {
            println!(
                "checkpoint FAILED ({}): {}",
                finding.source, finding.problem
            );
        }
        if report.checked > 0 || report.other_stations > 0 {
            println!(
                "checkpoints: {} of {} agree with the chain{}{}",
                report.matched,
                report.checked,
                report.latest.as_ref().map_or_else(String::new, |c| format!(
                    "; the latest vouches for entry {} at {}",
                    c.seq, c.at
                )),
                if report.other_stations > 0 {
                    format!("; {} of other stations not checked", report.other_stations)
                } else {
                    String::new()
                }
            );
        }
        for note in &notes {
            println!("note: {note}");
        }
    }
    Ok(if intact { OK } else { exit::FAILED })
}

/// `station db migrate`.
pub(super) async fn db_migrate(config: &Config, json: bool) -> Result<u8> {
    let info = Store::migrate(&config.station.database).await?;
    if json {
        print_json(&serde_json::json!({
            "database": config.station.database.to_string(),
            "backend": info.backend,
            "version": info.version,
            "migrations": info.migrations,
        }));
    } else {
        println!(
            "database {}: {}, {}",
            config.station.database, info.version, info.migrations
        );
    }
    Ok(OK)
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
            if let Some(checkpoint) = &export.checkpoint {
                write_checkpoint_sidecar(path, checkpoint, manifest_summary(path, &export))?;
            }
            export
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let export = store
                .export_manifest(&filter, args.format, station_id, &who, &mut out)
                .await?;
            out.flush().map_err(|e| Error::io("writing", "stdout", e))?;
            // stdout is the manifest: the checkpoint it embeds goes to stderr.
            if let Some(checkpoint) = &export.checkpoint {
                eprintln!("checkpoint: {}", checkpoint.to_line());
            }
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
                "checkpoint": export.checkpoint,
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

/// What a manifest's checkpoint file says of the manifest beside it.
pub(super) fn manifest_summary(
    path: &Path,
    export: &crate::store::ManifestExport,
) -> serde_json::Value {
    serde_json::json!({
        "kind": "manifest",
        "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "rows": export.rows,
        "bytes": export.bytes,
        "sha256": export.sha256,
        "audit_seq": export.audit_seq,
    })
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
            checks.push(Check {
                warnings: config.warnings.clone(),
                ..Check::new(
                    "config",
                    true,
                    format!("{} is valid", config_path.display()),
                )
            });
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
        checks.push(check_database(config).await);
        checks.push(check_anchor(config));
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

/// The database: backend, version, migrations; the audit chains; the station's open batch.
/// Nothing is created or migrated (a SQLite file is opened read-only).
async fn check_database(config: &Config) -> Check {
    let database = &config.station.database;
    let store = match Store::inspect(database).await {
        Ok(Some(store)) => store,
        Ok(None) => {
            return Check::new(
                "database",
                true,
                format!(
                    "{database} does not exist yet: the first command that records (batch open, provision, run) creates it"
                ),
            );
        }
        Err(e) if e.is_usage_error() => return Check::misconfigured("database", e.into()),
        Err(e) => return Check::failed("database", e.into()),
    };
    let checked = async {
        let info = store.describe().await?;
        let schema = format!("{}, {}", info.version, info.migrations);
        let migrations = &info.migrations;
        if !migrations.current() {
            // A SQLite file is migrated by the next command that opens it; a shared server
            // only by its owner.
            let next = migrations.unknown.is_empty()
                && migrations.damaged.is_empty()
                && info.backend == "sqlite";
            let fix = if next {
                "applied on the next start"
            } else {
                "run `station db migrate` as the database owner"
            };
            return Ok::<_, Error>((next, format!("{database}: {schema} ({fix})")));
        }
        let reports = store.verify_audit_chains(None).await?;
        let report = ChainReport::combined(&reports);
        let chains = match reports.as_slice() {
            [one] if one.station_id.is_none() => "audit chain".to_owned(),
            _ => format!("audit chains of {} station(s)", reports.len()),
        };
        let open = store.open_batch_of(&config.station.id).await?;
        Ok((
            report.first_break.is_none(),
            format!(
                "{database}: {schema}; {chains} {} ({} entries); {}",
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
        ))
    }
    .await;
    store.close().await;
    match checked {
        Ok((ok, detail)) => Check::new("database", ok, detail),
        Err(e) => Check::failed("database", e),
    }
}

/// The station's signing key (its public key is what auditors keep) and its checkpoint file.
/// Nothing is made here: a missing key is made by the first command that records.
fn check_anchor(config: &Config) -> Check {
    use crate::checkpoint::{CheckpointError, CheckpointLog, StationKey};
    let audit = &config.audit;
    let key = match StationKey::load(&audit.signing_key_file) {
        Ok(key) => key,
        Err(CheckpointError::KeyUnreadable { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Check::new(
                "audit",
                true,
                format!(
                    "no station signing key yet: the first command that records makes {} and writes checkpoints to {}",
                    audit.signing_key_file.display(),
                    audit.checkpoint_file.display()
                ),
            );
        }
        Err(e) => return Check::misconfigured("audit", crate::store::StoreError::from(e).into()),
    };
    let last = match CheckpointLog::new(&audit.checkpoint_file).last_of(&config.station.id) {
        Ok(Some(c)) => format!("last checkpoint: entry {} at {}", c.seq, c.at),
        Ok(None) => "no checkpoint yet".to_owned(),
        Err(e) => return Check::failed("audit", crate::store::StoreError::from(e).into()),
    };
    Check::new(
        "audit",
        true,
        format!(
            "station public key {} ({}); checkpoints in {}, {last}",
            key.public(),
            audit.signing_key_file.display(),
            audit.checkpoint_file.display()
        ),
    )
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
        // An untrusted server is the station's setup (trust, a proxy), not an outage.
        Err(e) if e.is_usage_error() => Check::misconfigured("dps", e.into()),
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
