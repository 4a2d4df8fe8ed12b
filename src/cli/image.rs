//! `station key derive`, `station nvs build` and `station nvs inspect`.

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
    match (&args.mac, &args.out, &args.csv, &args.out_dir) {
        (Some(mac), Some(out), None, None) => build_one(config, &keys, mac, out, json).await,
        (None, None, Some(csv), Some(dir)) => build_csv(config, &keys, csv, dir, json).await,
        _ => unreachable!("clap enforces --mac with --out or --csv with --out-dir"),
    }
}

/// What `nvs build` prints for one image.
fn built_json(image: &DeviceImage, target: &Path) -> serde_json::Value {
    json!({
        "mac": image.mac,
        "registration_id": image.registration_id,
        "file": target.display().to_string(),
        "bytes": image.bytes.len(),
        "image_sha256": image.sha256(),
        "key_id": image.key_id,
    })
}

fn print_built(image: &DeviceImage, target: &Path) {
    println!(
        "{}  {}  {} bytes  sha256 {}  -> {}",
        image.mac,
        image.registration_id,
        image.bytes.len(),
        image.sha256(),
        target.display()
    );
}

/// `nvs build --mac MAC --out FILE`.
async fn build_one(
    config: &Config,
    keys: &GroupKeys,
    mac: &str,
    out: &Path,
    json: bool,
) -> Result<u8> {
    let image = DeviceImage::build(config, keys, mac.parse::<Mac>()?)?;
    write_private(out, &image.bytes)?;
    audit_nvs_build(
        config,
        &image.mac.to_string(),
        json!({ "images": [{ "mac": image.mac, "image_sha256": image.sha256() }], "key_id": keys.primary.id() }),
    )
    .await?;
    if json {
        print_json(&[built_json(&image, out)]);
    } else {
        print_built(&image, out);
    }
    Ok(OK)
}

/// `nvs build --csv FILE --out-dir DIR`: every row is checked first, then one image at a time
/// is built and written, so memory stays that of one image whatever the CSV's length. The
/// audit entry holds the count and a SHA-256 over the list (`<mac> <image sha256>` per line, in
/// CSV order), not the list.
async fn build_csv(
    config: &Config,
    keys: &GroupKeys,
    csv_path: &Path,
    dir: &Path,
    json: bool,
) -> Result<u8> {
    use sha2::{Digest as _, Sha256};
    use std::io::Write as _;
    let csv = MacCsv::open(csv_path)?;
    let count = csv.check(config)?;
    prepare_out_dir(dir)?;
    let mut list = Sha256::new();
    let mut written = 0usize;
    let mut out = std::io::stdout();
    let mut result = Ok(());
    let mut first_last: Option<(Mac, Mac)> = None;
    if json {
        let _ = writeln!(out, "[");
    }
    for mac in csv.macs()? {
        let step = mac.and_then(|mac| {
            let image = DeviceImage::build(config, keys, mac)?;
            let target = dir.join(format!("{}.bin", mac.hex()));
            write_private(&target, &image.bytes)?;
            Ok((image, target))
        });
        let (image, target) = match step {
            Ok(done) => done,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        list.update(format!("{} {}\n", image.mac, image.sha256()));
        first_last = Some((first_last.map_or(image.mac, |(first, _)| first), image.mac));
        if json {
            let separator = if written == 0 { "" } else { ",\n" };
            let _ = write!(out, "{separator}{}", built_json(&image, &target));
        } else {
            print_built(&image, &target);
        }
        written += 1;
    }
    if json {
        let _ = writeln!(out, "\n]");
    }
    let _ = out.flush();
    // Images written are device keys handed out: audited even when a later one failed.
    if written > 0 {
        audit_nvs_build(
            config,
            &csv_path.display().to_string(),
            json!({
                "count": written,
                "rows": count,
                "first_mac": first_last.map(|(first, _)| first),
                "last_mac": first_last.map(|(_, last)| last),
                "images_sha256": hex::encode(list.finalize()),
                "csv_sha256": csv.sha256,
                "key_id": keys.primary.id(),
            }),
        )
        .await?;
    }
    result.map(|()| OK)
}

/// Records that images (which hold device keys) were handed out.
async fn audit_nvs_build(config: &Config, subject: &str, details: serde_json::Value) -> Result<()> {
    let store = open_store(config).await?;
    store
        .append_audit(
            &config.station.id,
            &operator(None),
            "nvs.build",
            subject,
            details,
        )
        .await?;
    store.close().await;
    Ok(())
}

/// Makes sure `--out-dir` exists: an existing directory is used, a missing one is created
/// (mode 0700) only when its parent exists, so a mistyped path does not grow a tree of
/// directories; anything else is refused before a row is read.
fn prepare_out_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::BadInput {
                what: format!("--out-dir {}", dir.display()),
                problem: "it exists and is not a directory".to_owned(),
                fix: "Give a directory for the images (it is created if only its last part is missing).".to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("reading", dir, e)),
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::BadInput {
            what: format!("--out-dir {}", dir.display()),
            problem: format!("its parent {} does not exist", parent.display()),
            fix: "Create the parent directory first, or check the path for a typo; the station creates only the last directory of --out-dir.".to_owned(),
        });
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::io("creating", dir, e))
}

/// Errors in a MAC CSV, naming the line.
fn csv_error(path: &Path, line: u64, problem: impl std::fmt::Display) -> Error {
    Error::BadInput {
        what: format!("{}:{line}", path.display()),
        problem: problem.to_string(),
        fix: "The CSV needs a header row with one `mac` column (and optionally one `registration_id`), one device per row."
            .to_owned(),
    }
}

/// The largest MAC CSV read: a million rows of MAC and registration ID are about 50 MB.
const CSV_LIMIT: u64 = 64 << 20;

/// A MAC CSV opened once (a regular file of bounded size) and read twice: once to check every
/// row, once to build.
struct MacCsv {
    path: PathBuf,
    file: std::fs::File,
    mac_col: usize,
    id_col: Option<usize>,
    sha256: String,
}

impl MacCsv {
    fn open(path: &Path) -> Result<MacCsv> {
        use sha2::{Digest as _, Sha256};
        use std::io::Read as _;
        let opened = crate::file::open_regular(path, CSV_LIMIT)
            .map_err(|e| Error::io("reading", path, e))?;
        let file = opened.into_file();
        let mut digest = Sha256::new();
        let mut buffer = [0u8; 64 << 10];
        let mut reader = (&file).take(CSV_LIMIT);
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(|e| Error::io("reading", path, e))?;
            if n == 0 {
                break;
            }
            digest.update(&buffer[..n]);
        }
        let mut csv = MacCsv {
            path: path.to_owned(),
            file,
            mac_col: 0,
            id_col: None,
            sha256: hex::encode(digest.finalize()),
        };
        let headers = csv
            .reader()?
            .headers()
            .map_err(|e| csv_error(path, 1, e))?
            .clone();
        let columns = |name: &str| -> Vec<usize> {
            headers
                .iter()
                .enumerate()
                .filter(|(_, h)| h.eq_ignore_ascii_case(name))
                .map(|(i, _)| i)
                .collect()
        };
        let macs = columns("mac");
        let ids = columns("registration_id");
        for (name, found) in [("mac", &macs), ("registration_id", &ids)] {
            if found.len() > 1 {
                return Err(csv_error(
                    path,
                    1,
                    format!(
                        "there are {} `{name}` columns (columns {}); which one is meant is unclear",
                        found.len(),
                        found
                            .iter()
                            .map(|i| (i + 1).to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ));
            }
        }
        csv.mac_col = *macs
            .first()
            .ok_or_else(|| csv_error(path, 1, "there is no `mac` column"))?;
        csv.id_col = ids.first().copied();
        let ignored: Vec<&str> = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != csv.mac_col && Some(*i) != csv.id_col)
            .map(|(_, h)| h)
            .collect();
        if !ignored.is_empty() {
            eprintln!(
                "note: {} columns ignored: {}",
                path.display(),
                crate::support::shown(&ignored.join(", "))
            );
        }
        Ok(csv)
    }

    /// A reader from the file's start.
    fn reader(&self) -> Result<csv::Reader<std::io::Take<&std::fs::File>>> {
        use std::io::{Read as _, Seek as _};
        (&self.file)
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| Error::io("reading", &self.path, e))?;
        Ok(csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader((&self.file).take(CSV_LIMIT)))
    }

    /// Checks every row (a usable MAC, no MAC twice, a `registration_id` that matches the
    /// template) and returns how many there are.
    fn check(&self, config: &Config) -> Result<usize> {
        let mut seen = std::collections::HashSet::new();
        let mut rows = 0;
        for row in self.rows()? {
            let (line, mac, given) = row?;
            if !seen.insert(mac) {
                return Err(csv_error(
                    &self.path,
                    line,
                    format!("MAC {mac} appears twice"),
                ));
            }
            if let Some(given) = given.filter(|s| !s.is_empty()) {
                let expected = config.dps.registration_id.render(&mac);
                if given != expected.as_str() {
                    return Err(csv_error(
                        &self.path,
                        line,
                        format!(
                            "registration_id `{}` differs from `{expected}`, which [dps] registration_id = \"{}\" gives for {mac}",
                            crate::support::shown(&given),
                            config.dps.registration_id.as_str()
                        ),
                    ));
                }
            }
            rows += 1;
        }
        if rows == 0 {
            return Err(csv_error(&self.path, 2, "there are no rows"));
        }
        Ok(rows)
    }

    /// The MACs, in order (already checked by [`MacCsv::check`]).
    fn macs(&self) -> Result<impl Iterator<Item = Result<Mac>> + '_> {
        Ok(self.rows()?.map(|row| row.map(|(_, mac, _)| mac)))
    }

    /// Each row's line, MAC and `registration_id` cell.
    fn rows(&self) -> Result<impl Iterator<Item = Result<(u64, Mac, Option<String>)>> + '_> {
        let reader = self.reader()?;
        Ok(reader.into_records().map(move |record| {
            let record = record
                .map_err(|e| csv_error(&self.path, e.position().map_or(0, |p| p.line()), e))?;
            let line = record.position().map_or(0, |p| p.line());
            let text = record.get(self.mac_col).unwrap_or_default();
            let mac: Mac = text.parse().map_err(|source| Error::BadMacAt {
                at: format!("{}:{line}", self.path.display()),
                source,
            })?;
            let given = self.id_col.and_then(|i| record.get(i)).map(str::to_owned);
            Ok((line, mac, given))
        }))
    }
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
