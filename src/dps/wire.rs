//! The client's view of DPS's JSON (the device REST API's `RegistrationOperationStatus`,
//! `DeviceRegistrationResult` and `ProvisioningServiceErrorDetails`). Fields DPS always sends are
//! required, so a renamed field is a parse error rather than a silent empty value; the
//! responses recorded from Azure's documentation in `fixtures/dps/` pin the names down.

use serde::{Deserialize, Serialize};

/// DPS's `DeviceRegistrationResult` (the `registrationState` of an operation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    /// The registration ID.
    pub registration_id: String,
    /// When the registration was first created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The IoT hub the device is assigned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device ID in that hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `unassigned`, `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset` or
    /// `reprovisionedToInitialAssignment`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// When the registration last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The registration's entity tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// DPS's error code, when the registration failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// DPS's error message, when the registration failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// What a custom allocation policy returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// DPS's `RegistrationOperationStatus`: the answer to register and to an operation lookup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// The operation to poll.
    pub operation_id: String,
    /// `unassigned`, `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// The registration, once DPS has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<RegistrationState>,
}

/// DPS's `ProvisioningServiceErrorDetails`: the body of an error answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceError {
    /// DPS's numeric error code (e.g. 401002).
    pub error_code: Option<i64>,
    /// A correlation ID for Azure support.
    pub tracking_id: Option<String>,
    /// What went wrong.
    pub message: String,
    /// When.
    pub timestamp_utc: Option<String>,
}
