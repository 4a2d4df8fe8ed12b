//! What a station records when it starts work: the configuration it runs with (by SHA-256) and
//! the group keys it loaded (by key id) or, with X.509 attestation, the signing CA (by key id
//! and SHA-256 thumbprint), each only when it differs from what that station last
//! recorded, so that a station started a thousand times with the same setup adds nothing.

use serde_json::json;

use super::audit::NewEntry;
use crate::keys::KeyId;

/// A station starting work, as [`super::Store::record_station_open`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationOpen {
    /// The station.
    pub station_id: String,
    /// Who started it.
    pub operator: String,
    /// The configuration file (as shown) and the SHA-256 of its bytes; `None` for a
    /// configuration that was not read from a file (tests build one from text).
    pub config: Option<(String, String)>,
    /// The primary group key's fingerprint.
    pub key_id: KeyId,
    /// The secondary group key's fingerprint, if one is configured.
    pub secondary_key_id: Option<KeyId>,
    /// X.509 attestation: the signing CA (`key_id` is then its short fingerprint).
    pub ca: Option<CaOpen>,
}

/// The signing CA a station opened with, as `key.loaded` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOpen {
    /// Its SHA-256 thumbprint (uppercase hex, as the Azure portal shows it).
    pub thumbprint: String,
    /// Its subject (RFC 4514).
    pub subject: String,
    /// Its expiry (RFC 3339).
    pub not_after: String,
}

/// The actions whose last entry for the station decides what is recorded.
pub(crate) const CONFIG_CHANGED: &str = "config.changed";
/// See [`CONFIG_CHANGED`].
pub(crate) const KEY_LOADED: &str = "key.loaded";

impl StationOpen {
    /// The entries to append at `at`, given the details of the station's last `config.changed`
    /// and `key.loaded` entries: `config.changed` when the file's SHA-256 differs from the last
    /// one recorded, `key.loaded` when the key ids differ from the last ones recorded.
    pub(crate) fn entries(
        &self,
        at: &str,
        last_config: Option<&str>,
        last_keys: Option<&str>,
    ) -> Vec<NewEntry> {
        let parse = |details: Option<&str>| {
            details.and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        };
        let mut entries = Vec::new();
        if let Some((path, sha256)) = &self.config {
            let last = parse(last_config);
            if last.as_ref().and_then(|d| d["sha256"].as_str()) != Some(sha256.as_str()) {
                entries.push(self.entry(at, CONFIG_CHANGED, path, json!({ "sha256": sha256 })));
            }
        }
        let mut key_details = json!({
            "key_id": self.key_id,
            "secondary_key_id": self.secondary_key_id,
        });
        if let Some(ca) = &self.ca {
            key_details["attestation"] = json!("x509");
            key_details["ca_thumbprint"] = json!(ca.thumbprint);
            key_details["ca_subject"] = json!(ca.subject);
            key_details["ca_not_after"] = json!(ca.not_after);
        }
        if parse(last_keys).as_ref() != Some(&key_details) {
            entries.push(self.entry(at, KEY_LOADED, self.key_id.as_str(), key_details));
        }
        entries
    }

    fn entry(&self, at: &str, action: &str, subject: &str, details: serde_json::Value) -> NewEntry {
        NewEntry::at(
            at,
            &self.station_id,
            &self.operator,
            action,
            subject,
            details,
        )
    }
}
