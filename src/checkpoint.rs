//! Signed checkpoints of the audit chain, kept outside the database they vouch for.
//!
//! The audit chain is a hash chain inside the database: it catches an edited or removed entry,
//! but whoever can write the database file can also rewrite its tail, recomputing every hash
//! after the change, and the result is consistent again. A checkpoint closes that gap: the
//! station signs, with a key of its own, which entry was the head of its chain at a moment
//! (station ID, seq, head hash, time, why), and writes the signed statement where the
//! database is not: an append-only file in another directory, the system log, every manifest
//! export. A rewritten or shortened chain no longer contains the entry a checkpoint names, and
//! a checkpoint cannot be forged without the station's key.
//!
//! - [`StationKey`]: the station's Ed25519 signing key (RFC 8032, `ed25519-dalek`), generated on
//!   first use into a file readable by its owner only, beside the group key; redacted from
//!   `Debug`, zeroized on drop. Its [`PublicKey`] (`ed25519:` and 32 bytes of base64) is what an
//!   auditor keeps.
//! - [`Checkpoint`]: one signed statement, a JSON object on one line. The signature covers
//!   `station audit checkpoint v1\n` followed by the compact JSON array
//!   `[station_id, seq, head_hash, at, reason]`.
//! - [`CheckpointLog`]: the append-only file (JSON lines; `O_APPEND`, mode 0600, synced).
//! - [`Anchor`]: what a store needs to write checkpoints: the key, the file, the system log, and
//!   how often.

use std::fmt;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, Verifier as _};
use zeroize::Zeroizing;

/// What the signature covers before the fields: a version, so that a signature over one
/// layout is never read as one over another.
const DOMAIN: &[u8] = b"station audit checkpoint v1\n";

/// The largest signing key file read (one line of base64).
const KEY_FILE_LIMIT: u64 = 4 << 10;

/// The largest checkpoint file read: at about 400 bytes a line, a quarter of a million
/// checkpoints.
pub const LOG_LIMIT: u64 = 128 << 20;

/// The longest line of a checkpoint file taken for a checkpoint.
const LINE_LIMIT: usize = 4 << 10;

/// Errors of the station key and the checkpoint file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The signing key file cannot be read or created.
    #[error("cannot {action} station signing key {path}: {source}")]
    #[diagnostic(
        code(station::checkpoint::key_unreadable),
        help(
            "The station signs its audit checkpoints with this key, kept beside the group key ([audit] signing_key_file). Check the directory exists and that the station's user may write there."
        )
    )]
    KeyUnreadable {
        /// `read` or `create`.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The signing key file may be read by other users.
    #[error("station signing key {path} is readable by {who} (mode {mode:04o})")]
    #[diagnostic(
        code(station::checkpoint::key_exposed),
        help(
            "Whoever reads this key can sign checkpoints in the station's name. Run `chmod 600 {path}`; if others may have read it, move it away (a new key is made) and give auditors the new public key."
        )
    )]
    KeyExposed {
        /// The key file.
        path: String,
        /// `group`, `others` or both.
        who: &'static str,
        /// The permission bits found.
        mode: u32,
    },
    /// The signing key file does not hold a key.
    #[error("station signing key {path} is not a key: {problem}")]
    #[diagnostic(
        code(station::checkpoint::key_invalid),
        help(
            "The file must hold the 32-byte Ed25519 seed as one line of base64, as the station wrote it. Restore it from the station's backup; a new key (file moved away) breaks the link with earlier checkpoints."
        )
    )]
    KeyInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the contents).
        problem: String,
    },
    /// A public key given on the command line or in a file is malformed.
    #[error("{given} is not a station public key: {problem}")]
    #[diagnostic(
        code(station::checkpoint::bad_public_key),
        help(
            "Give the key `station check` prints (ed25519: and 44 characters of base64), or a file holding it."
        )
    )]
    BadPublicKey {
        /// What was given (cut when long).
        given: String,
        /// What is wrong.
        problem: String,
    },
    /// The checkpoint file cannot be written.
    #[error("cannot append to checkpoint file {path}: {source}")]
    #[diagnostic(
        code(station::checkpoint::write),
        help(
            "Check [audit] checkpoint_file: its directory must exist and be writable by the station's user, and the file must be a regular file."
        )
    )]
    Write {
        /// The checkpoint file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file cannot be read.
    #[error("cannot read checkpoint file {path}: {source}")]
    #[diagnostic(
        code(station::checkpoint::unreadable),
        help(
            "Give the checkpoint file the station writes ([audit] checkpoint_file) or a copy of it; it must be a regular file."
        )
    )]
    Unreadable {
        /// The checkpoint file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// True for a bad setup or argument rather than a failure while working (exit code 2).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            CheckpointError::KeyExposed { .. }
                | CheckpointError::KeyInvalid { .. }
                | CheckpointError::BadPublicKey { .. }
        )
    }
}

/// The station's signing key: never printed, zeroized when dropped (`ed25519-dalek` clears its
/// secret on drop).
pub struct StationKey {
    signing: ed25519_dalek::SigningKey,
}

impl fmt::Debug for StationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StationKey([redacted], public {})", self.public())
    }
}

impl StationKey {
    /// Loads the key file, or creates it (mode 0600, never replacing a file that appeared
    /// meanwhile) when there is none. The flag says whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(StationKey, bool), CheckpointError> {
        match StationKey::load(path) {
            Err(CheckpointError::KeyUnreadable { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                StationKey::create(path).map(|key| (key, true))
            }
            other => other.map(|key| (key, false)),
        }
    }

    /// Loads an existing key file: owner-only, one line of base64 of the 32-byte seed.
    pub fn load(path: &Path) -> Result<StationKey, CheckpointError> {
        let unreadable = |source| CheckpointError::KeyUnreadable {
            action: "read",
            path: path.to_owned(),
            source,
        };
        let opened = crate::file::open_regular(path, KEY_FILE_LIMIT).map_err(unreadable)?;
        if let Some((who, mode)) = crate::file::readable_by(&opened.metadata) {
            return Err(CheckpointError::KeyExposed {
                path: path.display().to_string(),
                who,
                mode,
            });
        }
        let text = Zeroizing::new(opened.read().map_err(unreadable)?);
        let invalid = |problem: &str| CheckpointError::KeyInvalid {
            path: path.to_owned(),
            problem: problem.to_owned(),
        };
        let trimmed = std::str::from_utf8(&text)
            .map_err(|_| invalid("it is not text"))?
            .trim();
        let seed = Zeroizing::new(
            BASE64
                .decode(trimmed)
                .map_err(|_| invalid("it is not base64"))?,
        );
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| invalid("it does not decode to 32 bytes"))?;
        Ok(StationKey {
            signing: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    fn create(path: &Path) -> Result<StationKey, CheckpointError> {
        let failed = |source| CheckpointError::KeyUnreadable {
            action: "create",
            path: path.to_owned(),
            source,
        };
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| failed(std::io::Error::other(e)))?;
        let text = Zeroizing::new(format!("{}\n", BASE64.encode(seed.as_slice())));
        crate::file::write_private_new(path, text.as_bytes()).map_err(failed)?;
        Ok(StationKey {
            signing: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The public half, which auditors keep.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs a checkpoint of `station_id`'s chain at entry `seq` with hash `head_hash`.
    pub fn sign(
        &self,
        station_id: &str,
        seq: i64,
        head_hash: &str,
        at: &str,
        reason: &str,
    ) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            station_id: station_id.to_owned(),
            seq,
            head_hash: head_hash.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
            public_key: self.public().to_string(),
            signature: String::new(),
        };
        let signature = self.signing.sign(&checkpoint.message());
        checkpoint.signature = BASE64.encode(signature.to_bytes());
        checkpoint
    }
}

/// A station's public key: `ed25519:` and the 32 bytes in base64.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", BASE64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = CheckpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |problem: &str| CheckpointError::BadPublicKey {
            given: crate::support::shown(text).into_owned(),
            problem: problem.to_owned(),
        };
        let encoded = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| bad("it does not start with `ed25519:`"))?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| bad("what follows `ed25519:` is not base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("it does not decode to 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad("it is not a point of the Ed25519 curve"))
    }
}

impl PublicKey {
    /// A public key given on the command line: the text itself, or a file holding it.
    pub fn from_argument(given: &str) -> Result<PublicKey, CheckpointError> {
        if given.trim().starts_with("ed25519:") {
            return given.parse();
        }
        let path = Path::new(given);
        let bytes = crate::file::read_regular(path, KEY_FILE_LIMIT).map_err(|e| {
            CheckpointError::BadPublicKey {
                given: crate::support::shown(given).into_owned(),
                problem: format!("it is neither `ed25519:...` nor a readable key file ({e})"),
            }
        })?;
        String::from_utf8_lossy(&bytes).parse()
    }
}

/// One signed statement: at `at`, entry `seq` of `station_id`'s audit chain had hash
/// `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The station whose chain it anchors.
    pub station_id: String,
    /// The head entry's seq.
    pub seq: i64,
    /// The head entry's hash.
    pub head_hash: String,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Why: `batch.close`, `manifest.export`, `audit.export`, `interval`.
    pub reason: String,
    /// The key that signed it (as [`PublicKey`] prints).
    pub public_key: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    /// Signed by another key than the one trusted.
    #[error("it was signed by {0}, not by the station key trusted here")]
    OtherKey(String),
    /// The signature does not match the contents: forged or altered.
    #[error("its signature does not match its contents (forged or altered)")]
    Mismatch,
}

impl Checkpoint {
    /// The bytes the signature covers.
    fn message(&self) -> Vec<u8> {
        let mut message = DOMAIN.to_vec();
        let fields = (
            &self.station_id,
            self.seq,
            &self.head_hash,
            &self.at,
            &self.reason,
        );
        // Strings and integers always serialize.
        let _ = serde_json::to_writer(&mut message, &fields);
        message
    }

    /// Checks the signature against the trusted key.
    pub fn verify(&self, key: &PublicKey) -> Result<(), BadSignature> {
        if self.public_key != key.to_string() {
            return Err(BadSignature::OtherKey(
                crate::support::shown(&self.public_key).into_owned(),
            ));
        }
        let bytes: [u8; 64] = BASE64
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(BadSignature::Mismatch)?;
        key.0
            .verify(
                &self.message(),
                &ed25519_dalek::Signature::from_bytes(&bytes),
            )
            .map_err(|_| BadSignature::Mismatch)
    }

    /// One line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A checkpoint file: one JSON object per line, only ever appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointLog {
    path: PathBuf,
}

/// A line of a checkpoint file that is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl CheckpointLog {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> CheckpointLog {
        CheckpointLog { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one checkpoint and syncs it to disk. The file is created with mode 0600 if
    /// missing; a symlink or anything but a regular file is refused.
    pub fn append(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let failed = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = crate::file::open_append(&self.path).map_err(failed)?;
        let mut line = checkpoint.to_line();
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(failed)?;
        file.sync_data().map_err(failed)
    }

    /// Every line: a checkpoint, or why it is not one. A missing file is `Ok(None)`.
    #[allow(clippy::type_complexity)]
    pub fn read(&self) -> Result<Option<Vec<Result<Checkpoint, BadLine>>>, CheckpointError> {
        let opened = match crate::file::open_regular(&self.path, LOG_LIMIT) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Unreadable {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let reader = std::io::BufReader::new(std::io::Read::take(opened.into_file(), LOG_LIMIT));
        let mut lines = Vec::new();
        for (index, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|source| CheckpointError::Unreadable {
                path: self.path.clone(),
                source,
            })?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad = |problem: String| BadLine {
                line: index + 1,
                problem,
            };
            lines.push(if line.len() > LINE_LIMIT {
                Err(bad(format!("it is {} bytes long", line.len())))
            } else {
                serde_json::from_slice::<Checkpoint>(&line)
                    .map_err(|e| bad(format!("it is not a checkpoint: {e}")))
            });
        }
        Ok(Some(lines))
    }

    /// The last checkpoint of `station_id` in the file, if any (damaged lines are skipped).
    pub fn last_of(&self, station_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self
            .read()?
            .unwrap_or_default()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|c| c.station_id == station_id)
            .max_by_key(|c| c.seq))
    }
}

/// What a store needs to anchor its chain: the station's key and ID, the checkpoint file, the
/// system log, and how many entries may pass between two checkpoints.
#[derive(Debug)]
pub struct Anchor {
    /// The signing key.
    pub key: StationKey,
    /// The station whose chain is anchored.
    pub station_id: String,
    /// The checkpoint file.
    pub log: CheckpointLog,
    /// The system log socket (`/dev/log`), when checkpoints also go there.
    pub syslog: Option<PathBuf>,
    /// At least one checkpoint every this many entries.
    pub every: i64,
    /// Whether the key was made by this process.
    pub key_created: bool,
    /// The seq of the last checkpoint written (or found in the file).
    last_seq: Mutex<i64>,
}

impl Anchor {
    /// Loads (or creates) the key and reads the last checkpoint of the station from the file.
    pub fn open(
        key_file: &Path,
        station_id: &str,
        log: CheckpointLog,
        syslog: Option<PathBuf>,
        every: i64,
    ) -> Result<Anchor, CheckpointError> {
        let (key, key_created) = StationKey::load_or_create(key_file)?;
        let last_seq = log.last_of(station_id)?.map_or(0, |c| c.seq);
        Ok(Anchor {
            key,
            station_id: station_id.to_owned(),
            log,
            syslog,
            every: every.max(1),
            key_created,
            last_seq: Mutex::new(last_seq),
        })
    }

    /// Whether a chain whose head is `seq` is due a checkpoint.
    pub fn due(&self, seq: i64) -> bool {
        seq - *crate::support::lock(&self.last_seq) >= self.every
    }

    /// Signs and writes a checkpoint of the head `(seq, head_hash)`: to the file (an error
    /// if that fails) and to the system log (best effort).
    pub fn write(
        &self,
        seq: i64,
        head_hash: &str,
        reason: &str,
    ) -> Result<Checkpoint, CheckpointError> {
        let checkpoint = self.key.sign(
            &self.station_id,
            seq,
            head_hash,
            &crate::clock::now(),
            reason,
        );
        self.log.append(&checkpoint)?;
        if let Some(socket) = &self.syslog {
            send_to_syslog(socket, &checkpoint);
        }
        let mut last = crate::support::lock(&self.last_seq);
        *last = (*last).max(seq);
        Ok(checkpoint)
    }
}

/// Sends a checkpoint to the system log (journald and syslog daemons listen on `/dev/log`),
/// as `station[pid]: audit checkpoint {json}` at notice level. Best effort: a missing or
/// refusing socket is traced, never an error, the file being the record.
fn send_to_syslog(socket: &Path, checkpoint: &Checkpoint) {
    if !socket.exists() {
        return;
    }
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTH,
        hostname: None,
        process: "station".to_owned(),
        pid: std::process::id(),
    };
    let sent = syslog::unix_custom(formatter, socket)
        .and_then(|mut logger| logger.notice(format!("audit checkpoint {}", checkpoint.to_line())));
    if let Err(e) = sent {
        tracing::warn!(socket = %socket.display(), error = %e, "checkpoint not sent to the system log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_under_its_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station-signing.key");
        let (key, created) = StationKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = StationKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.public(), again.public());
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let checkpoint = key.sign(
            "st1",
            42,
            &"ab".repeat(32),
            "2026-11-30T00:00:00.000Z",
            "interval",
        );
        assert_eq!(checkpoint.verify(&key.public()), Ok(()));
        let public: PublicKey = key.public().to_string().parse().unwrap();
        assert_eq!(checkpoint.verify(&public), Ok(()));

        for edit in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.head_hash.replace_range(0..1, "c"),
            |c: &mut Checkpoint| c.station_id.push('x'),
            |c: &mut Checkpoint| c.at.push('1'),
            |c: &mut Checkpoint| c.reason.push('x'),
        ] {
            let mut altered = checkpoint.clone();
            edit(&mut altered);
            assert_eq!(altered.verify(&public), Err(BadSignature::Mismatch));
        }
        let other = StationKey::load_or_create(&dir.path().join("other.key"))
            .unwrap()
            .0;
        assert!(matches!(
            checkpoint.verify(&other.public()),
            Err(BadSignature::OtherKey(_))
        ));
        // Relabelled with the trusted key, the signature still gives it away.
        let forged = Checkpoint {
            public_key: other.public().to_string(),
            ..other.sign(
                "st1",
                42,
                &"cd".repeat(32),
                "2026-11-30T00:00:00.000Z",
                "interval",
            )
        };
        let relabelled = Checkpoint {
            public_key: key.public().to_string(),
            ..forged
        };
        assert_eq!(relabelled.verify(&public), Err(BadSignature::Mismatch));
        // The key never shows.
        let seed = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{key:?}").contains(seed.trim()));
    }

    #[test]
    fn the_log_appends_lines_and_reads_them_back_with_damage_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = CheckpointLog::new(dir.path().join("checkpoints.jsonl"));
        assert_eq!(log.read().unwrap(), None);
        let key = StationKey::load_or_create(&dir.path().join("k")).unwrap().0;
        for seq in [3, 7] {
            log.append(&key.sign("st1", seq, &"00".repeat(32), "t", "interval"))
                .unwrap();
        }
        log.append(&key.sign("st2", 9, &"00".repeat(32), "t", "interval"))
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        let lines = log.read().unwrap().unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3].as_ref().unwrap_err().line, 4);
        assert_eq!(log.last_of("st1").unwrap().unwrap().seq, 7);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // A symlink planted in its place is not followed.
        let planted = CheckpointLog::new(dir.path().join("planted.jsonl"));
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), planted.path()).unwrap();
        assert!(planted.append(&key.sign("st1", 1, "h", "t", "r")).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn public_keys_parse_strictly() {
        for bad in ["", "ed25519:", "ed25519:AAAA", "rsa:AAAA", "ed25519:!!!"] {
            let error = bad.parse::<PublicKey>().unwrap_err();
            assert!(error.is_usage_error(), "{bad}");
        }
    }
}
