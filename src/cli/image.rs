//! `station key derive`, `station nvs build` and `station nvs inspect`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{NvsBuildArgs, OK, open_store, operator, print_json};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::file::PrivateFile;
use crate::identity::{Mac, RegistrationId};
use crate::keys::GroupKeys;
use crate::nvs;
use crate::provision::DeviceImage;

/// The group keys, for the commands that derive device keys; with X.509 attestation there is
/// nothing to derive: every unit gets a fresh key pair when it is provisioned.
fn load_keys(config: &Config, command: &str) -> Result<GroupKeys> {
    let Some(keys) = config.dps.attestation.symmetric_key() else {
        return Err(Error::BadInput {
            what: format!("`station {command}`"),
            problem: format!(
                "{} sets [dps] attestation = \"x509\": each unit gets a fresh key pair and certificate when it is provisioned, so there is no device key to derive and no image to reproduce",
                config.path.display()
            ),
            fix: "Provision the unit (`station provision --port PATH`); its certificate's serial and thumbprint are in the manifest and the audit log, and `station nvs inspect` decodes a flash dump with the key redacted.".to_owned(),
        });
    };
    Ok(GroupKeys::load(
        &keys.group_key_file,
        keys.secondary_group_key_file.as_deref(),
    )?)
}

pub(super) async fn key_derive(config: &Config, registration_id: &str, json: bool) -> Result<u8> {
    let registration_id = RegistrationId::new(registration_id)?;
    let keys = load_keys(config, "key derive")?;
    let primary = keys.primary.derive(&registration_id);
    let secondary = keys
        .secondary
        .as_ref()
        .map(|k| (k.derive(&registration_id), k.id()));
    // Whoever derives a key can register as that device: leave a trace for the auditor.
    let store = open_store(config).await?;
    store
        .append_audit(
            &config.station.id,
            &operator(None),
            "key.derive",
            registration_id.as_str(),
            json!({ "key_id": keys.primary.id(), "secondary_key_id": keys.secondary.as_ref().map(|k| k.id()) }),
        )
        .await?;
    store.close().await;
    if json {
        print_json(&json!({
            "registration_id": registration_id,
            "primary": { "device_key": primary.expose(), "key_id": keys.primary.id() },
            "secondary": secondary.as_ref().map(|(key, id)| json!({ "device_key": key.expose(), "key_id": id })),
        }));
    } else {
        println!("registration id  {registration_id}");
        println!(
            "primary          {}  (group key {})",
            primary.expose(),
            keys.primary.id()
        );
        if let Some((key, id)) = &secondary {
            println!("secondary        {}  (group key {id})", key.expose());
        }
    }
    Ok(OK)
}

pub(super) async fn nvs_build(config: &Config, args: NvsBuildArgs, json: bool) -> Result<u8> {
    let keys = load_keys(config, "nvs build")?;
    let (macs, targets): (Vec<Mac>, Vec<PathBuf>) =
        match (&args.mac, &args.out, &args.csv, &args.out_dir) {
            (Some(mac), Some(out), None, None) => (vec![mac.parse::<Mac>()?], vec![out.clone()]),
            (None, None, Some(csv), Some(dir)) => {
                let macs = read_mac_csv(csv, config)?;
                let targets = macs
                    .iter()
                    .map(|m| dir.join(format!("{}.bin", m.hex())))
                    .collect();
                std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
                (macs, targets)
            }
            _ => unreachable!("clap enforces --mac with --out or --csv with --out-dir"),
        };
    // Build everything before writing anything: a bad row leaves no half-written directory.
    let images = macs
        .iter()
        .map(|mac| DeviceImage::build(config, &keys, *mac))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (image, target) in images.iter().zip(&targets) {
        write_private(target, &image.bytes)?;
    }
    let built: Vec<serde_json::Value> = images
        .iter()
        .zip(&targets)
        .map(|(image, target)| {
            json!({
                "mac": image.mac,
                "registration_id": image.registration_id,
                "file": target.display().to_string(),
                "bytes": image.bytes.len(),
                "image_sha256": image.sha256(),
                "key_id": image.key_id,
            })
        })
        .collect();
    let store = open_store(config).await?;
    store
        .append_audit(
            &config.station.id,
            &operator(None),
            "nvs.build",
            &args.csv.as_ref().map_or_else(|| macs[0].to_string(), |csv| csv.display().to_string()),
            json!({ "images": built.iter().map(|b| json!({ "mac": b["mac"], "image_sha256": b["image_sha256"] })).collect::<Vec<_>>(), "key_id": keys.primary.id() }),
        )
        .await?;
    store.close().await;
    if json {
        print_json(&built);
    } else {
        for b in &built {
            println!(
                "{}  {}  {} bytes  sha256 {}  -> {}",
                b["mac"].as_str().unwrap_or_default(),
                b["registration_id"].as_str().unwrap_or_default(),
                b["bytes"],
                b["image_sha256"].as_str().unwrap_or_default(),
                b["file"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(OK)
}

/// Errors in a MAC CSV, naming the line.
fn csv_error(path: &Path, line: u64, problem: impl std::fmt::Display) -> Error {
    Error::BadInput {
        what: format!("{}:{line}", path.display()),
        problem: problem.to_string(),
        fix: "The CSV needs a header row with a `mac` column (and optionally `registration_id`), one device per row."
            .to_owned(),
    }
}

/// Reads the `mac` column (and checks an optional `registration_id` column against the
/// template) of every row; refuses duplicates.
fn read_mac_csv(path: &Path, config: &Config) -> Result<Vec<Mac>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, 1, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, 1, e))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let mac_col = column("mac").ok_or_else(|| csv_error(path, 1, "there is no `mac` column"))?;
    let id_col = column("registration_id");
    let ignored: Vec<&str> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != mac_col && Some(*i) != id_col)
        .map(|(_, h)| h)
        .collect();
    if !ignored.is_empty() {
        eprintln!(
            "note: {} columns ignored: {}",
            path.display(),
            ignored.join(", ")
        );
    }
    let mut macs = Vec::new();
    let mut seen = BTreeSet::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| csv_error(path, e.position().map_or(0, |p| p.line()), e))?;
        let line = record.position().map_or(0, |p| p.line());
        let text = record.get(mac_col).unwrap_or_default();
        let mac: Mac = text.parse().map_err(|e| csv_error(path, line, e))?;
        if !seen.insert(mac) {
            return Err(csv_error(path, line, format!("MAC {mac} appears twice")));
        }
        if let Some(given) = id_col.and_then(|i| record.get(i)).filter(|s| !s.is_empty()) {
            let expected = config.dps.registration_id.render(&mac);
            if given != expected.as_str() {
                return Err(csv_error(
                    path,
                    line,
                    format!(
                        "registration_id `{given}` differs from `{expected}`, which [dps] registration_id = \"{}\" gives for {mac}",
                        config.dps.registration_id.as_str()
                    ),
                ));
            }
        }
        macs.push(mac);
    }
    if macs.is_empty() {
        return Err(csv_error(path, 2, "there are no rows"));
    }
    Ok(macs)
}

/// Writes a file readable by its owner only, atomically (a reader never sees half an image).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::file::write_private(path, bytes).map_err(|e| Error::io("writing", path, e))
}

/// Creates a [`PrivateFile`] for `path`.
pub(super) fn create_private(path: &Path) -> Result<PrivateFile> {
    PrivateFile::create(path).map_err(|e| Error::io("writing", path, e))
}

/// Puts a [`PrivateFile`] in place.
pub(super) fn commit_private(file: PrivateFile) -> Result<()> {
    let path = file.path().to_owned();
    file.commit().map_err(|e| Error::io("writing", path, e))
}

/// Whether an entry should be hidden unless `--show-secrets`: a key-like name, or a value
/// shaped like a derived device key (base64 of 32 bytes).
fn looks_secret(key: &str, value: &nvs::Value) -> bool {
    let name = key.to_ascii_lowercase();
    let by_name = ["key", "secret", "pass", "pwd", "token", "sas", "sig"]
        .iter()
        .any(|w| name.contains(w));
    let by_shape = matches!(value, nvs::Value::Str(s) if s.len() == 44 && s.ends_with('=')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='));
    by_name || by_shape
}

/// The largest image `nvs inspect` reads: the largest flash an ESP32 module has.
const INSPECT_LIMIT: u64 = 16 << 20;

pub(super) fn nvs_inspect(file: &Path, show_secrets: bool, json: bool) -> Result<u8> {
    let bytes = crate::file::read_regular(file, INSPECT_LIMIT)
        .map_err(|e| Error::io("reading", file, e))?;
    if bytes.starts_with(&crate::secure_cert::TLV_MAGIC.to_le_bytes()) {
        return secure_cert_inspect(file, &bytes, show_secrets, json);
    }
    let entries = nvs::parse(&bytes)?;
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let secret = !show_secrets && looks_secret(&entry.key, &entry.value);
            let (kind, value) = describe(&entry.value);
            let shown = if secret {
                json!(format!("[redacted: {} bytes; --show-secrets to show]", value_len(&entry.value)))
            } else {
                value
            };
            json!({ "namespace": entry.namespace, "key": entry.key, "type": kind, "value": shown, "redacted": secret })
        })
        .collect();
    if json {
        print_json(
            &json!({ "file": file.display().to_string(), "bytes": bytes.len(), "entries": rows }),
        );
    } else {
        println!(
            "{}: {} bytes, {} entries",
            file.display(),
            bytes.len(),
            rows.len()
        );
        for row in &rows {
            let value = match &row["value"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "  {:<15} {:<15} {:<6} {}",
                row["namespace"].as_str().unwrap_or_default(),
                row["key"].as_str().unwrap_or_default(),
                row["type"].as_str().unwrap_or_default(),
                value.replace('\n', "\\n")
            );
        }
    }
    Ok(OK)
}

/// `station nvs inspect` of an `esp_secure_cert` partition image (it starts with the TLV
/// magic): every entry with its type, subtype, flags and size; certificates with their subject,
/// issuer, serial, validity and thumbprint; the private key redacted unless `show_secrets`.
fn secure_cert_inspect(file: &Path, bytes: &[u8], show_secrets: bool, json: bool) -> Result<u8> {
    use crate::secure_cert::{Integrity, TlvData};
    use crate::x509::CertificateSummary;
    let partition = crate::secure_cert::parse(bytes)?;
    let rows: Vec<serde_json::Value> = partition
        .entries
        .iter()
        .map(|entry| {
            let (len, redacted) = match &entry.data {
                TlvData::Text(text) => (text.len(), false),
                TlvData::Secret(secret) => (secret.expose().len(), !show_secrets),
                TlvData::Bytes(bytes) => (bytes.len(), false),
            };
            let certificate = match &entry.data {
                TlvData::Text(text) => CertificateSummary::of_pem(text),
                _ => None,
            };
            json!({
                "type": entry.tlv_type.name(),
                "type_id": entry.tlv_type.0,
                "subtype": entry.subtype,
                "flags": entry.flags,
                "offset": entry.offset,
                "bytes": len,
                "value": entry.display_value(show_secrets),
                "redacted": redacted,
                "certificate": certificate,
            })
        })
        .collect();
    let integrity = match partition.integrity {
        Integrity::Verified => "verified",
        Integrity::Absent => "absent",
    };
    if json {
        print_json(&json!({
            "file": file.display().to_string(),
            "format": "esp_secure_cert",
            "bytes": bytes.len(),
            "end": partition.end,
            "integrity": integrity,
            "stale_bytes": partition.stale_bytes,
            "entries": rows,
        }));
        return Ok(OK);
    }
    println!(
        "{}: esp_secure_cert image, {} bytes, {} entries ending at {:#x}, integrity {integrity}{}",
        file.display(),
        bytes.len(),
        rows.len(),
        partition.end,
        if partition.stale_bytes > 0 {
            format!(", {} stale bytes after the entries", partition.stale_bytes)
        } else {
            String::new()
        }
    );
    for (entry, row) in partition.entries.iter().zip(&rows) {
        let value = match (&entry.data, row["certificate"].is_null()) {
            (TlvData::Text(_), false) => {
                let c = &row["certificate"];
                format!(
                    "subject {}  issuer {}  serial {}  valid {} to {}  sha256 {}",
                    c["subject"].as_str().unwrap_or_default(),
                    c["issuer"].as_str().unwrap_or_default(),
                    c["serial"].as_str().unwrap_or_default(),
                    c["not_before"].as_str().unwrap_or_default(),
                    c["not_after"].as_str().unwrap_or_default(),
                    c["thumbprint"].as_str().unwrap_or_default()
                )
            }
            (TlvData::Secret(_), _) if !show_secrets => {
                format!("[redacted: {} bytes; --show-secrets to show]", row["bytes"])
            }
            _ => entry.display_value(show_secrets).replace('\n', "\\n"),
        };
        println!(
            "  {:<12} subtype {}  flags {:#04x}  {:>5} bytes  {value}",
            entry.tlv_type.name(),
            entry.subtype,
            entry.flags,
            row["bytes"]
        );
    }
    Ok(OK)
}

fn value_len(value: &nvs::Value) -> usize {
    match value {
        nvs::Value::Str(s) => s.len(),
        nvs::Value::Blob(b) => b.len(),
        _ => 8,
    }
}

fn describe(value: &nvs::Value) -> (&'static str, serde_json::Value) {
    match value {
        nvs::Value::U8(v) => ("u8", json!(v)),
        nvs::Value::I8(v) => ("i8", json!(v)),
        nvs::Value::U16(v) => ("u16", json!(v)),
        nvs::Value::I16(v) => ("i16", json!(v)),
        nvs::Value::U32(v) => ("u32", json!(v)),
        nvs::Value::I32(v) => ("i32", json!(v)),
        nvs::Value::U64(v) => ("u64", json!(v)),
        nvs::Value::I64(v) => ("i64", json!(v)),
        nvs::Value::Str(v) => ("string", json!(v)),
        nvs::Value::Blob(v) => ("blob", json!(hex::encode(v))),
    }
}
