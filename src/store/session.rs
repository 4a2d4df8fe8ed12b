//! What a station records when it starts work: the configuration it runs with (by SHA-256) and
//! the group keys it loaded (by key id), each only when it differs from what that station last
//! recorded, so that a station started a thousand times with the same setup adds nothing.

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{Store, StoreError, append_audit_tx};
use crate::clock::now;
use crate::config::Config;
use crate::keys::GroupKeys;

impl Store {
    /// Records that a station opened with this configuration and these keys: `config.changed`
    /// (subject: the file, details: its SHA-256) when the file's SHA-256 differs from the last one
    /// recorded for the station, and `key.loaded` (subject: the primary key id) when the key ids
    /// differ from the last ones recorded. Returns how many entries it appended.
    ///
    /// A configuration that was not read from a file (tests build one from text) records no
    /// `config.changed`.
    pub async fn record_station_open(
        &self,
        config: &Config,
        keys: &GroupKeys,
    ) -> Result<usize, StoreError> {
        let station_id = &config.station.id;
        let config_sha256 = std::fs::read(&config.path)
            .ok()
            .map(|bytes| hex::encode(Sha256::digest(bytes)));
        let key_details = json!({
            "key_id": keys.primary.id().to_string(),
            "secondary_key_id": keys.secondary.as_ref().map(|k| k.id().to_string()),
        });
        let operator = crate::operator::resolve(None, None);
        let mut tx = self.begin_write().await?;
        let at = now();
        let mut appended = 0;
        if let Some(sha256) = config_sha256 {
            let last: Option<Option<String>> = sqlx::query_scalar(
                "SELECT json_extract(details, '$.sha256') FROM audit_log \
                 WHERE action = 'config.changed' AND station_id = ? ORDER BY seq DESC LIMIT 1",
            )
            .bind(station_id)
            .fetch_optional(&mut *tx)
            .await?;
            if last.flatten().as_deref() != Some(sha256.as_str()) {
                let path = config.path.display().to_string();
                append_audit_tx(
                    &mut tx,
                    &at,
                    station_id,
                    &operator,
                    "config.changed",
                    &path,
                    json!({ "sha256": sha256 }),
                )
                .await?;
                appended += 1;
            }
        }
        let last_keys: Option<String> = sqlx::query_scalar(
            "SELECT details FROM audit_log \
             WHERE action = 'key.loaded' AND station_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(station_id)
        .fetch_optional(&mut *tx)
        .await?;
        let last_keys = last_keys.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok());
        if last_keys.as_ref() != Some(&key_details) {
            let subject = keys.primary.id().to_string();
            append_audit_tx(
                &mut tx,
                &at,
                station_id,
                &operator,
                "key.loaded",
                &subject,
                key_details,
            )
            .await?;
            appended += 1;
        }
        tx.commit().await?;
        Ok(appended)
    }
}
