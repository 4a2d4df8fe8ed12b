//! The DPS enrollment-group key and the per-device keys derived from it.
//!
//! An enrollment group with symmetric-key attestation has a primary and a secondary group key.
//! A device never holds a group key: it holds the key derived for its own registration ID,
//! `base64(HMAC-SHA256(key = base64decode(group_key), message = registration_id))`
//! (<https://learn.microsoft.com/azure/iot-dps/how-to-legacy-device-symm-key#derive-a-device-key>).
//!
//! The group key lives only on the station, in a file readable by its owner alone. It is held in
//! [`Secret`], which redacts itself from `Debug` and `Display` and is zeroized on drop; records
//! carry its [`KeyId`] (a short SHA-256 fingerprint) instead. Loading refuses the mix-ups seen on
//! factory floors: a SAS token, an IoT Hub connection string or a PEM block pasted where the key
//! belongs.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::identity::RegistrationId;

/// The largest key file the station reads: a group key is under 100 bytes of base64.
pub const KEY_FILE_LIMIT: u64 = 64 << 10;

/// The shortest group key accepted, in decoded bytes. Azure issues 64-byte keys; anything under
/// 16 bytes is a truncated paste, not a key.
pub const MIN_KEY_BYTES: usize = 16;

/// The longest group key accepted, in decoded bytes: DPS takes symmetric keys of 16 to 64 bytes,
/// so a longer one cannot be the enrollment group's (two keys pasted together, a file of
/// something else).
pub const MAX_KEY_BYTES: usize = 64;

/// Errors loading a group key.
///
/// No variant carries any part of the file's contents: a message may end up in a log, a
/// terminal scroll-back or a ticket, and the key must not.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read group key file {path}: {source}")]
    #[diagnostic(
        code(station::keys::unreadable),
        help(
            "Check `group_key_file` in station.toml; relative paths resolve against the directory holding station.toml."
        )
    )]
    Unreadable {
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The key file may be read by other users.
    #[error("group key file {path} is readable by {who} (mode {mode:04o})")]
    #[diagnostic(
        code(station::keys::world_readable),
        help(
            "The group key can mint a device key for any registration ID. Run `chmod 600 {path}` and make sure the station's user owns it."
        )
    )]
    Exposed {
        /// The key file, as shown to the operator.
        path: String,
        /// `group` or `others` or `group and others`.
        who: &'static str,
        /// The permission bits found.
        mode: u32,
    },
    /// The key file is empty.
    #[error("group key file {path} is empty")]
    #[diagnostic(
        code(station::keys::empty),
        help(
            "Paste the enrollment group's primary key (Azure portal: DPS > Manage enrollments > your group > Primary Key) into the file."
        )
    )]
    Empty {
        /// The key file.
        path: PathBuf,
    },
    /// The file holds a SAS token, which is derived from a key and expires.
    #[error("group key file {path} holds a SAS token (`SharedAccessSignature sr=...`), not a key")]
    #[diagnostic(
        code(station::keys::sas_token),
        help(
            "A SAS token is signed with a key and expires; the station needs the key itself. Copy the enrollment group's Primary Key from the portal."
        )
    )]
    SasToken {
        /// The key file.
        path: PathBuf,
    },
    /// The file holds a connection string.
    #[error(
        "group key file {path} holds a connection string (`HostName=...;SharedAccessKey=...`), not a group key"
    )]
    #[diagnostic(
        code(station::keys::connection_string),
        help(
            "Connection strings belong to IoT Hub devices or policies. The station needs the DPS enrollment group's Primary Key (base64), alone in the file."
        )
    )]
    ConnectionString {
        /// The key file.
        path: PathBuf,
    },
    /// The file holds a PEM block (a certificate or private key).
    #[error("group key file {path} holds a PEM block (`-----BEGIN ...`), not a symmetric key")]
    #[diagnostic(
        code(station::keys::pem_block),
        help(
            "Certificates belong to X.509 enrollment groups. The station provisions symmetric-key groups: put the group's Primary Key (base64) in the file."
        )
    )]
    PemBlock {
        /// The key file.
        path: PathBuf,
    },
    /// The text is not base64.
    #[error("group key file {path} is not base64: {problem}")]
    #[diagnostic(
        code(station::keys::not_base64),
        help(
            "The file must hold the key exactly as the portal shows it: one line of base64 (A-Z a-z 0-9 + /, padded with =)."
        )
    )]
    NotBase64 {
        /// The key file.
        path: PathBuf,
        /// Where decoding failed (a position, never the text).
        problem: String,
    },
    /// The key decodes to too few bytes.
    #[error("group key in {path} decodes to {len} bytes; at least {MIN_KEY_BYTES} are required")]
    #[diagnostic(
        code(station::keys::too_short),
        help(
            "The key looks truncated. Copy the whole Primary Key from the portal (88 characters for a 64-byte key)."
        )
    )]
    TooShort {
        /// The key file.
        path: PathBuf,
        /// The decoded length.
        len: usize,
    },
    /// The key decodes to more bytes than DPS allows.
    #[error("group key in {path} decodes to {len} bytes; DPS keys have at most {MAX_KEY_BYTES}")]
    #[diagnostic(
        code(station::keys::too_long),
        help(
            "The file holds more than one key, or something else: put the enrollment group's Primary Key alone in it (88 characters of base64 for a 64-byte key)."
        )
    )]
    TooLong {
        /// The key file.
        path: PathBuf,
        /// The decoded length.
        len: usize,
    },
    /// The secondary group key file holds the primary key.
    #[error("secondary group key {secondary} is the same key as the primary {primary}")]
    #[diagnostic(
        code(station::keys::same_as_primary),
        help(
            "[dps] secondary_group_key_file must hold the enrollment group's Secondary Key: with both the same, rolling the primary over would break every device. Copy the Secondary Key from the portal, or remove secondary_group_key_file."
        )
    )]
    SameAsPrimary {
        /// The primary key file.
        primary: PathBuf,
        /// The secondary key file.
        secondary: PathBuf,
    },
}

/// Secret bytes: never printed, zeroized when dropped.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes that must not be shown.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The secret bytes; every caller is a place the secret flows to, so keep them few.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The short fingerprint stamped on records in place of a key: `sha256:` and the first 8 bytes
/// of the SHA-256 of the decoded key, in hex. Identifies which key made a device key without
/// revealing anything usable about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct KeyId(String);

impl KeyId {
    /// The fingerprint of `bytes`: a key's, or (for X.509 attestation) the signing CA
    /// certificate's DER.
    pub(crate) fn of(key: &[u8]) -> Self {
        let digest = Sha256::digest(key);
        KeyId(format!("sha256:{}", hex::encode(&digest[..8])))
    }

    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for KeyId {
    type Err = BadKeyId;

    /// Parses a fingerprint as recorded: `sha256:` and 16 lowercase hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = s.strip_prefix("sha256:").is_some_and(|digits| {
            digits.len() == 16
                && digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if well_formed {
            Ok(KeyId(s.to_owned()))
        } else {
            Err(BadKeyId(s.to_owned()))
        }
    }
}

/// Text that is not a key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a key id (`sha256:` and 16 lowercase hex digits)")]
pub struct BadKeyId(String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device key derived for one registration ID (base64, as DPS and the device expect it).
///
/// It is a secret too: whoever holds it can register as that device. It is shown only on
/// explicit request (`station key derive`, `station nvs inspect --show-secrets`).
#[derive(Clone)]
pub struct DeviceKey(Zeroizing<String>);

impl DeviceKey {
    /// The base64 text that goes into the NVS image.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey([redacted])")
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The length of every derived device key: base64 of a 32-byte HMAC-SHA256.
pub const DEVICE_KEY_LEN: usize = 44;

/// A DPS enrollment-group key.
#[derive(Clone)]
pub struct GroupKey {
    key: Secret,
    id: KeyId,
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKey")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

impl GroupKey {
    /// Reads and checks a group key file: owner-only permissions, one line of base64 that
    /// decodes to at least [`MIN_KEY_BYTES`], and none of the usual mix-ups.
    ///
    /// The file is opened once and the opened file checked (a regular file of at most
    /// [`KEY_FILE_LIMIT`] bytes, its mode) before its contents are read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let unreadable = |source| KeyError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let opened = crate::file::open_regular(path, KEY_FILE_LIMIT).map_err(unreadable)?;
        check_permissions(&opened.metadata, path)?;
        let raw = Zeroizing::new(opened.read().map_err(unreadable)?);
        Self::from_text(&raw, path)
    }

    /// Checks and decodes key text as read from `path` (named in errors, never the text).
    pub fn from_text(raw: &[u8], path: &Path) -> Result<Self, KeyError> {
        let path = path.to_owned();
        let text = String::from_utf8_lossy(raw);
        let text = Zeroizing::new(text.trim().to_owned());
        if text.is_empty() {
            return Err(KeyError::Empty { path });
        }
        if text.starts_with("SharedAccessSignature")
            || text.contains("sr=") && text.contains("sig=")
        {
            return Err(KeyError::SasToken { path });
        }
        if text.contains("HostName=") || text.contains("SharedAccessKey=") {
            return Err(KeyError::ConnectionString { path });
        }
        if text.contains("-----BEGIN") {
            return Err(KeyError::PemBlock { path });
        }
        if let Some(at) = text.find(|c: char| c.is_whitespace()) {
            let line = text[..at].matches('\n').count() + 1;
            let problem = if text[at..].contains('\n') {
                format!("it spans several lines (a line break after character {at}, line {line})")
            } else {
                format!("it has whitespace at character {}", at + 1)
            };
            return Err(KeyError::NotBase64 { path, problem });
        }
        let decoded = BASE64
            .decode(text.as_bytes())
            .map_err(|e| KeyError::NotBase64 {
                path: path.clone(),
                problem: describe_base64_error(&e),
            })?;
        let key = Secret::new(decoded);
        if key.expose().len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                path,
                len: key.expose().len(),
            });
        }
        if key.expose().len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong {
                path,
                len: key.expose().len(),
            });
        }
        let id = KeyId::of(key.expose());
        Ok(GroupKey { key, id })
    }

    /// The key's fingerprint, stamped on every record made with it.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The device key for `registration_id`:
    /// `base64(HMAC-SHA256(group key, registration_id))`.
    pub fn derive(&self, registration_id: &RegistrationId) -> DeviceKey {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(self.key.expose())
            .expect("HMAC accepts keys of any length");
        mac.update(registration_id.as_str().as_bytes());
        let tag: Zeroizing<[u8; 32]> = Zeroizing::new(mac.finalize().into_bytes().into());
        DeviceKey(Zeroizing::new(BASE64.encode(tag.as_slice())))
    }
}

/// The primary group key and, when configured, the secondary one.
#[derive(Debug, Clone)]
pub struct GroupKeys {
    /// Derives `{device_key}`.
    pub primary: GroupKey,
    /// Derives `{secondary_device_key}`.
    pub secondary: Option<GroupKey>,
}

impl GroupKeys {
    /// Loads the configured key files.
    /// A secondary key equal to the primary is refused.
    pub fn load(primary: &Path, secondary: Option<&Path>) -> Result<Self, KeyError> {
        let keys = GroupKeys {
            primary: GroupKey::load(primary)?,
            secondary: secondary.map(GroupKey::load).transpose()?,
        };
        if let (Some(path), Some(second)) = (secondary, &keys.secondary)
            && second.key.expose() == keys.primary.key.expose()
        {
            return Err(KeyError::SameAsPrimary {
                primary: primary.to_owned(),
                secondary: path.to_owned(),
            });
        }
        Ok(keys)
    }
}

/// Describes a base64 decoding failure by position only: the offending character may be part of
/// the key.
fn describe_base64_error(error: &base64::DecodeError) -> String {
    match error {
        base64::DecodeError::InvalidByte(at, _) => {
            format!("character {} is not a base64 character", at + 1)
        }
        base64::DecodeError::InvalidLength(len) => {
            format!(
                "its length {len} is not a whole number of base64 groups (is a character missing?)"
            )
        }
        base64::DecodeError::InvalidLastSymbol { offset, .. } => {
            format!("the last character (position {}) is invalid", offset + 1)
        }
        base64::DecodeError::InvalidPadding => "the `=` padding is wrong".to_owned(),
    }
}

/// Refuses a secret file that group or others may read (`KeyError::Exposed`); also used for the
/// X.509 CA key file.
pub(crate) fn check_permissions(metadata: &std::fs::Metadata, path: &Path) -> Result<(), KeyError> {
    match crate::file::readable_by(metadata) {
        None => Ok(()),
        Some((who, mode)) => Err(KeyError::Exposed {
            path: path.display().to_string(),
            who,
            mode,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azure's documented example of group-key derivation (DPS docs, "Derive a device key").
    const AZURE_GROUP_KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    const AZURE_REGISTRATION_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
    const AZURE_DEVICE_KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";

    fn key(text: &str) -> Result<GroupKey, KeyError> {
        GroupKey::from_text(text.as_bytes(), Path::new("group.key"))
    }

    #[test]
    fn derivation_matches_azure_documented_example() {
        let group = key(AZURE_GROUP_KEY).unwrap();
        let id = RegistrationId::new(AZURE_REGISTRATION_ID).unwrap();
        let device_key = group.derive(&id);
        assert_eq!(device_key.expose(), AZURE_DEVICE_KEY);
        assert_eq!(device_key.expose().len(), DEVICE_KEY_LEN);
    }

    #[test]
    fn trailing_newline_and_spaces_around_the_key_are_accepted() {
        let group = key(&format!("  {AZURE_GROUP_KEY}\r\n")).unwrap();
        assert_eq!(group.id(), key(AZURE_GROUP_KEY).unwrap().id());
    }

    #[test]
    fn key_id_is_a_short_fingerprint_not_the_key() {
        let group = key(AZURE_GROUP_KEY).unwrap();
        let id = group.id().as_str();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 16, "{id}");
        assert!(!AZURE_GROUP_KEY.contains(&id[7..]));
        let other = key(&BASE64.encode([7u8; 32])).unwrap();
        assert_ne!(other.id(), group.id());
        assert_eq!(id.parse::<KeyId>().as_ref(), Ok(group.id()));
        assert!("sha256:0011".parse::<KeyId>().is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let group = key(AZURE_GROUP_KEY).unwrap();
        let shown = format!("{group:?} {:?} {}", group.key, group.key);
        assert!(!shown.contains(&AZURE_GROUP_KEY[..12]), "{shown}");
        assert!(shown.contains("redacted"));
        let device_key = group.derive(&RegistrationId::new(AZURE_REGISTRATION_ID).unwrap());
        let shown = format!("{device_key:?} {device_key}");
        assert!(!shown.contains(&AZURE_DEVICE_KEY[..12]), "{shown}");
    }

    #[test]
    fn mix_ups_are_recognised() {
        let cases: [(&str, &str); 8] = [
            ("", "station::keys::empty"),
            ("\n  \n", "station::keys::empty"),
            (
                "SharedAccessSignature sr=0ne00055505%2Fregistrations%2Fdev01&skn=registration&sig=gMpl%3D&se=1579698526",
                "station::keys::sas_token",
            ),
            (
                "HostName=hub.azure-devices.net;DeviceId=dev01;SharedAccessKey=Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=",
                "station::keys::connection_string",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----\n",
                "station::keys::pem_block",
            ),
            ("not base64 at all!", "station::keys::not_base64"),
            ("AAAAAAAAAAAAAAAAAAAA", "station::keys::too_short"),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=",
                "station::keys::too_long",
            ),
        ];
        for (text, code) in cases {
            let err = crate::Error::from(key(text).unwrap_err());
            assert_eq!(err.code(), code, "{text:?}");
            assert_eq!(err.exit_code(), crate::error::exit::USAGE);
            assert!(err.hint().is_some(), "{code} has no hint");
        }
    }

    #[test]
    fn base64_errors_name_positions_not_characters() {
        let mut bad = AZURE_GROUP_KEY.to_owned();
        bad.replace_range(10..11, "*");
        let err = key(&bad).unwrap_err().to_string();
        assert!(err.contains("character 11"), "{err}");
        assert!(!err.contains(&AZURE_GROUP_KEY[..10]), "{err}");
        let split = format!("{}\n{}", &AZURE_GROUP_KEY[..40], &AZURE_GROUP_KEY[40..]);
        let err = key(&split).unwrap_err().to_string();
        assert!(err.contains("several lines"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn files_readable_by_group_or_others_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.key");
        std::fs::write(&path, AZURE_GROUP_KEY).unwrap();
        for (mode, who) in [
            (0o644, "group and others"),
            (0o640, "group"),
            (0o604, "others"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = GroupKey::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Exposed { who: w, .. } if w == who),
                "{mode:o}: {err}"
            );
            let err = crate::Error::from(err);
            assert_eq!(err.code(), "station::keys::world_readable");
            assert!(err.hint().unwrap().contains("chmod 600"));
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(GroupKey::load(&path).is_ok(), "{mode:o}");
        }
        let missing = GroupKey::load(&dir.path().join("nope.key")).unwrap_err();
        assert!(matches!(missing, KeyError::Unreadable { .. }));
    }
}
