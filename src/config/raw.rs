//! `station.toml` as written: serde types with `deny_unknown_fields` and [`Spanned`] positions,
//! which [`super::validate`] turns into the validated [`super::Config`].

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::types::{AfterReset, BeforeReset, Chip};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) station: Spanned<RawStation>,
    pub(super) dps: Spanned<RawDps>,
    pub(super) nvs: Spanned<RawNvs>,
    pub(super) serial: Option<Spanned<RawSerial>>,
    pub(super) secure_cert: Option<Spanned<RawSecureCert>>,
    #[serde(default)]
    pub(super) firmware: Vec<Spanned<RawFirmware>>,
    pub(super) hub: Option<Spanned<RawHub>>,
    pub(super) boot: Option<Spanned<RawBoot>>,
    pub(super) audit: Option<Spanned<RawAudit>>,
    pub(super) http: Option<Spanned<RawHttp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) signing_key_file: Option<Spanned<String>>,
    pub(super) checkpoint_file: Option<Spanned<String>>,
    pub(super) checkpoint_every: Option<Spanned<i64>>,
    pub(super) syslog: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStation {
    pub(super) id: Spanned<String>,
    pub(super) database: Option<Spanned<String>>,
    pub(super) database_password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDps {
    pub(super) id_scope: Spanned<String>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) verify_url: Option<Spanned<String>>,
    pub(super) attestation: Option<Spanned<String>>,
    pub(super) group_key_file: Option<Spanned<String>>,
    pub(super) secondary_group_key_file: Option<Spanned<String>>,
    pub(super) ca_cert_file: Option<Spanned<String>>,
    pub(super) ca_chain_file: Option<Spanned<String>>,
    pub(super) ca_key_file: Option<Spanned<String>>,
    pub(super) ca_key_passphrase_file: Option<Spanned<String>>,
    pub(super) cert_days: Option<Spanned<i64>>,
    pub(super) key_type: Option<Spanned<String>>,
    pub(super) registration_id: Spanned<String>,
    #[serde(default)]
    pub(super) pre_verify: bool,
    pub(super) api_version: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) verify_timeout: Option<Spanned<u64>>,
    pub(super) payload: Option<Spanned<toml::Table>>,
    pub(super) transport: Option<Spanned<String>>,
    pub(super) enrollment: Option<Spanned<String>>,
    pub(super) service: Option<Spanned<RawDpsService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDpsService {
    pub(super) endpoint: Spanned<String>,
    pub(super) policy: Option<Spanned<String>>,
    pub(super) policy_key_file: Spanned<String>,
    pub(super) api_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    #[serde(default)]
    pub(super) test_message: bool,
    pub(super) hub_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNvs {
    pub(super) offset: Option<Spanned<u32>>,
    pub(super) size: Option<Spanned<u32>>,
    pub(super) namespace: Spanned<String>,
    pub(super) entries: Spanned<IndexMap<Spanned<String>, Spanned<RawEntryValue>>>,
}

pub(super) enum RawEntryValue {
    Template(String),
    File(String),
}

impl<'de> Deserialize<'de> for RawEntryValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEntryValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string template or { file = "path" }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEntryValue, E> {
                Ok(RawEntryValue::Template(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawEntryValue, A::Error> {
                let mut file = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "file" {
                        return Err(serde::de::Error::unknown_field(&key, &["file"]));
                    }
                    file = Some(map.next_value::<String>()?);
                }
                file.map(RawEntryValue::File)
                    .ok_or_else(|| serde::de::Error::missing_field("file"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSerial {
    pub(super) ports: Option<Spanned<Vec<String>>>,
    pub(super) baud: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) before: BeforeReset,
    #[serde(default)]
    pub(super) after: AfterReset,
    pub(super) chip: Option<Chip>,
    pub(super) stub: Option<bool>,
    pub(super) usb_ids: Option<Spanned<Vec<String>>>,
    pub(super) max_parallel: Option<Spanned<i64>>,
    pub(super) probe_interval: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecureCert {
    pub(super) offset: Spanned<u32>,
    pub(super) size: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirmware {
    pub(super) offset: Spanned<u32>,
    pub(super) file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBoot {
    pub(super) enabled: Option<Spanned<bool>>,
    pub(super) baud: Option<Spanned<u32>>,
    pub(super) timeout: Option<Spanned<f64>>,
    pub(super) expect: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) fail: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) keep_log: Option<Spanned<i64>>,
}
