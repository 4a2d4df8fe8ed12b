//! The pipeline's errors: its own refusals ([`ProvisionError`]) and [`UnitError`], any error a
//! unit's stage can end with. Both keep the code and hint of the part that failed.

use crate::boot::BootError;
use crate::device::DeviceError;
use crate::dps::DpsError;
use crate::hub::HubError;
use crate::identity::{IdentityError, Mac};
use crate::nvs::NvsError;
use crate::secure_cert::SecureCertError;
use crate::store::StoreError;
use crate::x509::X509Error;

/// Errors the pipeline itself raises (the device, store and NVS layers have their own).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The MAC was provisioned in another batch and `--reprovision` was not given.
    #[error("{mac} was already provisioned in batch `{batch}` at {at}; nothing was written")]
    #[diagnostic(
        code(station::provision::already_provisioned),
        help(
            "If this unit really must be provisioned again (a rework, a returned unit), run `station provision --reprovision`; it is audited."
        )
    )]
    AlreadyProvisioned {
        /// The device.
        mac: Mac,
        /// The batch it was provisioned in.
        batch: String,
        /// When.
        at: String,
    },
    /// The chip's flash is too small for the configured regions.
    #[error(
        "{mac} has {flash_size} bytes of flash but the images end at {needed:#x}; nothing was written"
    )]
    #[diagnostic(
        code(station::provision::flash_too_small),
        help(
            "Check that this unit's module matches the batch, and [nvs] offset/size and [[firmware]] against its flash size."
        )
    )]
    FlashTooSmall {
        /// The device.
        mac: Mac,
        /// Its flash size in bytes.
        flash_size: u32,
        /// Where the last region ends.
        needed: u32,
    },
    /// `dps verify` was asked for an X.509 unit, whose private key only the device holds.
    #[error(
        "{registration_id} authenticates with an X.509 certificate whose private key only the device holds; the station cannot register it with DPS after provisioning"
    )]
    #[diagnostic(
        code(station::provision::x509_not_verifiable),
        help(
            "An X.509 unit is pre-verified in line, while its new key is still in memory. To check it again, provision it again (it gets a new certificate, pre-verified with [dps] pre_verify = true), or let the device register itself."
        )
    )]
    X509NotVerifiable {
        /// The unit.
        registration_id: String,
    },
    /// The unit was revoked (`station unit revoke`) and must not be provisioned again.
    #[error("{mac} was revoked at {at} ({reason}); nothing was written")]
    #[diagnostic(
        code(station::provision::revoked),
        help(
            "A revoked unit is shut out of DPS and kept off the line. If it really is to be used again, run `station unit restore {mac}` (audited), then provision it."
        )
    )]
    Revoked {
        /// The device.
        mac: Mac,
        /// When it was revoked.
        at: String,
        /// Why.
        reason: String,
    },
    /// DPS holds a disabled individual enrollment for the unit.
    #[error(
        "DPS holds a disabled individual enrollment for {registration_id}; the station does not re-enable it"
    )]
    #[diagnostic(
        code(station::provision::enrollment_disabled),
        help(
            "Someone denied this device in DPS (a revocation, or the portal). Find out why before it goes back on the line; `station unit restore MAC` re-enables a unit the station revoked."
        )
    )]
    EnrollmentDisabled {
        /// The unit.
        registration_id: String,
    },
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed; no key was made")]
    #[diagnostic(
        code(station::provision::no_randomness),
        help(
            "The station cannot make an individual enrollment's key without the kernel's random generator (getrandom). Check the system's health and restart the station."
        )
    )]
    NoRandomness,
    /// `dps verify` was asked for a unit whose individual enrollment key only the device holds.
    #[error(
        "{registration_id} has an individual enrollment whose key only the device (and DPS) holds; the station cannot register it after provisioning"
    )]
    #[diagnostic(
        code(station::provision::key_not_kept),
        help(
            "The station keeps only the key's fingerprint. To check the unit again, provision it again (it gets a new key and is pre-verified), or let the device register itself."
        )
    )]
    KeyNotKept {
        /// The unit.
        registration_id: String,
    },
    /// The flash read back differs from what was written.
    #[error(
        "verify failed on {mac}: MD5 of {len} bytes at {offset:#x} is {found}, expected {expected}"
    )]
    #[diagnostic(
        code(station::provision::verify_mismatch),
        help(
            "The unit is NOT provisioned. Provision it again; if it fails again, the flash chip or its power may be faulty: set the unit aside."
        )
    )]
    VerifyMismatch {
        /// The device.
        mac: Mac,
        /// The region's offset.
        offset: u32,
        /// The region's length.
        len: usize,
        /// MD5 of the image.
        expected: String,
        /// MD5 the chip computed.
        found: String,
    },
}

/// Any error a unit's stage can end with; recorded with the attempt by its code, message and
/// hint, which are those of the part that failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum UnitError {
    /// The device failed or refused.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Device(#[from] DeviceError),
    /// The image could not be built.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Nvs(#[from] NvsError),
    /// The unit's certificate could not be issued.
    #[error(transparent)]
    #[diagnostic(transparent)]
    X509(#[from] X509Error),
    /// The unit's esp_secure_cert image could not be built.
    #[error(transparent)]
    #[diagnostic(transparent)]
    SecureCert(#[from] SecureCertError),
    /// The database failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    /// DPS refused the unit, or its client cannot be set up.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dps(#[from] DpsError),
    /// The pipeline refused the unit.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Provision(#[from] ProvisionError),
    /// The unit's hub refused its test message, or could not be reached.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Hub(#[from] HubError),
    /// The unit's application did not confirm its configuration.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Boot(#[from] BootError),
    /// The device reported a MAC no device can have.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Identity(#[from] IdentityError),
}

impl ProvisionError {
    /// True for a request the station cannot carry out as asked (exit code 2), rather than a
    /// unit that failed.
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            ProvisionError::X509NotVerifiable { .. } | ProvisionError::KeyNotKept { .. }
        )
    }
}
