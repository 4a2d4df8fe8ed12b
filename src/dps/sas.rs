//! Shared access signature (SAS) tokens for DPS symmetric-key registration (pure).
//!
//! A device (or the station on its behalf) proves it holds its derived key by signing
//! `url-encoded resource + "\n" + expiry` with HMAC-SHA256 keyed by the base64-decoded device
//! key, where the resource is `{id_scope}/registrations/{registration_id}`
//! (<https://learn.microsoft.com/azure/iot-dps/concepts-symmetric-key-attestation#detailed-attestation-process>,
//! <https://learn.microsoft.com/azure/iot-hub/authenticate-authorization-sas#sas-tokens>). The
//! token is `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded signature>&se=<expiry>&skn=registration`.
//!
//! URL encoding here is form encoding of every byte except `A-Z a-z 0-9 - _ . ~` (what Python's
//! `urllib.parse.quote_plus` and the Azure SDKs produce), so `/` becomes `%2F` and a signature's
//! `+`, `/` and `=` become `%2B`, `%2F` and `%3D`. The emulator in `sim::dps` checks tokens with
//! [`SasToken::parse`] and [`SasToken::verify`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::identity::RegistrationId;
use crate::keys::DeviceKey;

/// The key name DPS expects in a device's registration token.
pub const KEY_NAME: &str = "registration";

/// Bytes left alone by the encoding (the unreserved characters of RFC 3986).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `text` as DPS expects inside a SAS token.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, ENCODE).to_string()
}

/// The resource a registration token grants: `{id_scope}/registrations/{registration_id}`.
pub fn resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The text that is signed: the URL-encoded resource, a line feed, the expiry in Unix seconds.
pub fn string_to_sign(resource: &str, expiry: u64) -> String {
    format!("{}\n{expiry}", encode(resource))
}

/// `base64(HMAC-SHA256(key, message))`; `None` when `key_base64` is not base64.
fn sign(key_base64: &str, message: &str) -> Option<String> {
    let key = Zeroizing::new(BASE64.decode(key_base64).ok()?);
    Some(sign_bytes(&key, message))
}

/// `base64(HMAC-SHA256(key, message))`.
fn sign_bytes(key: &[u8], message: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// A registration SAS token. It is a credential until it expires, so `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// The resource, decoded (`0ne00ABCDEF/registrations/sensor-240ac4123456`).
    pub resource: String,
    /// The signature, base64, decoded from the token's URL encoding.
    signature: String,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// The key name (`registration` for a device).
    pub key_name: Option<String>,
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("signature", &"[redacted]")
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish()
    }
}

impl SasToken {
    /// Signs a registration token for `registration_id` under `id_scope`, valid until `expiry`.
    pub fn new(
        id_scope: &str,
        registration_id: &RegistrationId,
        device_key: &DeviceKey,
        expiry: u64,
    ) -> SasToken {
        let resource = resource(id_scope, registration_id.as_str());
        // A DeviceKey is always the base64 of a 32-byte HMAC, so signing cannot fail.
        let signature =
            sign(device_key.expose(), &string_to_sign(&resource, expiry)).unwrap_or_default();
        SasToken {
            resource,
            signature,
            expiry,
            key_name: Some(KEY_NAME.to_owned()),
        }
    }

    /// A token for `resource` signed with a device key (base64), with key name `key_name`:
    /// IoT Hub's device tokens (`{hub}/devices/{device_id}`, no key name,
    /// <https://learn.microsoft.com/azure/iot-hub/authenticate-authorization-sas#security-token-structure>).
    pub fn for_device(
        resource: String,
        device_key: &DeviceKey,
        expiry: u64,
        key_name: Option<&str>,
    ) -> SasToken {
        let signature =
            sign(device_key.expose(), &string_to_sign(&resource, expiry)).unwrap_or_default();
        SasToken {
            resource,
            signature,
            expiry,
            key_name: key_name.map(str::to_owned),
        }
    }

    /// A service token for `resource` (the DPS host) signed with a shared access policy's key
    /// (its bytes) and naming the policy, as the DPS service API takes it
    /// (<https://learn.microsoft.com/azure/iot-dps/how-to-control-access#security-tokens>).
    pub fn for_policy(resource: String, policy_key: &[u8], expiry: u64, policy: &str) -> SasToken {
        let signature = sign_bytes(policy_key, &string_to_sign(&resource, expiry));
        SasToken {
            resource,
            signature,
            expiry,
            key_name: Some(policy.to_owned()),
        }
    }

    /// Whether the signature was made with the key `key` (its bytes; compared in constant
    /// time).
    pub fn verify_bytes(&self, key: &[u8]) -> bool {
        let Ok(signature) = BASE64.decode(&self.signature) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
            return false;
        };
        mac.update(string_to_sign(&self.resource, self.expiry).as_bytes());
        mac.verify_slice(&signature).is_ok()
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        let mut out = format!(
            "SharedAccessSignature sr={}&sig={}&se={}",
            encode(&self.resource),
            encode(&self.signature),
            self.expiry
        );
        if let Some(name) = &self.key_name {
            out.push_str("&skn=");
            out.push_str(&encode(name));
        }
        out
    }

    /// Parses an `Authorization` header value; the error says what is malformed.
    pub fn parse(header: &str) -> Result<SasToken, String> {
        let fields = header
            .strip_prefix("SharedAccessSignature ")
            .ok_or("not a SharedAccessSignature")?;
        let (mut resource, mut signature, mut expiry, mut key_name) = (None, None, None, None);
        for pair in fields.split('&') {
            let (name, value) = pair.split_once('=').ok_or("a field without `=`")?;
            let value = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("field `{name}` is not UTF-8"))?
                .into_owned();
            match name {
                "sr" => resource = Some(value),
                "sig" => signature = Some(value),
                "se" => {
                    expiry = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| "`se` is not Unix seconds".to_owned())?,
                    );
                }
                "skn" => key_name = Some(value),
                _ => return Err(format!("unknown field `{name}`")),
            }
        }
        Ok(SasToken {
            resource: resource.ok_or("no `sr`")?,
            signature: signature.ok_or("no `sig`")?,
            expiry: expiry.ok_or("no `se`")?,
            key_name,
        })
    }

    /// Whether the signature was made with `device_key_base64` (compared in constant time).
    pub fn verify(&self, device_key_base64: &str) -> bool {
        let Ok(key) = BASE64.decode(device_key_base64).map(Zeroizing::new) else {
            return false;
        };
        self.verify_bytes(&key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::keys::GroupKey;

    const GROUP_KEY: &str =
        "IPqyrydADngU4vWjT+oEIm80S8CoXkpEvDM85GB0fYWGc4H7tGK8KOmswJEwP2ePs+ydTBSkPM4lgZwZKs/YQw==";

    fn device_key(id: &RegistrationId) -> DeviceKey {
        GroupKey::from_text(GROUP_KEY.as_bytes(), Path::new("test.key"))
            .unwrap()
            .derive(id)
    }

    /// Computed independently with Python 3's standard library:
    ///
    /// ```text
    /// import hmac, hashlib, base64, urllib.parse
    /// dev = base64.b64encode(hmac.new(base64.b64decode(GROUP_KEY), b"sensor-240ac4123456",
    ///                                 hashlib.sha256).digest())
    /// res = "0ne00ABCDEF/registrations/sensor-240ac4123456"; se = 1764000000
    /// sts = urllib.parse.quote_plus(res) + "\n" + str(se)
    /// sig = base64.b64encode(hmac.new(base64.b64decode(dev), sts.encode(), hashlib.sha256).digest())
    /// "SharedAccessSignature " + urllib.parse.urlencode(
    ///     {"sr": res, "sig": sig, "se": se, "skn": "registration"})
    /// ```
    const PYTHON_TOKEN: &str = "SharedAccessSignature sr=0ne00ABCDEF%2Fregistrations%2Fsensor-240ac4123456&sig=F11%2FXhEKpJnbmacePi1hkLdjkxMxKRNK42S7%2FSK4tHw%3D&se=1764000000&skn=registration";

    #[test]
    fn token_matches_one_computed_independently() {
        let id = RegistrationId::new("sensor-240ac4123456").unwrap();
        let token = SasToken::new("0ne00ABCDEF", &id, &device_key(&id), 1_764_000_000);
        assert_eq!(token.header(), PYTHON_TOKEN);
    }

    #[test]
    fn string_to_sign_encodes_the_resource() {
        assert_eq!(
            string_to_sign("0ne00ABCDEF/registrations/a:b.c_d-e", 7),
            "0ne00ABCDEF%2Fregistrations%2Fa%3Ab.c_d-e\n7"
        );
    }

    #[test]
    fn parse_round_trips_and_verify_checks_the_key() {
        let id = RegistrationId::new("sensor-240ac4123456").unwrap();
        let parsed = SasToken::parse(PYTHON_TOKEN).unwrap();
        assert_eq!(
            parsed.resource,
            "0ne00ABCDEF/registrations/sensor-240ac4123456"
        );
        assert_eq!(parsed.expiry, 1_764_000_000);
        assert_eq!(parsed.key_name.as_deref(), Some("registration"));
        assert_eq!(parsed.header(), PYTHON_TOKEN);
        assert!(parsed.verify(device_key(&id).expose()));
        let other = RegistrationId::new("sensor-240ac4123457").unwrap();
        assert!(!parsed.verify(device_key(&other).expose()));
        let mut later = parsed.clone();
        later.expiry += 1;
        assert!(!later.verify(device_key(&id).expose()), "expiry is signed");
    }

    #[test]
    fn parse_refuses_malformed_tokens() {
        assert!(SasToken::parse("Bearer abc").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&sig=b").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&sig=b&se=soon").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&sig=b&se=1&x=y").is_err());
    }

    #[test]
    fn debug_redacts_the_signature() {
        let parsed = SasToken::parse(PYTHON_TOKEN).unwrap();
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("F11"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
