//! The rows the supervisor dashboard reads: what each port did last, and a batch's output over
//! time. Like every row, they cross the store boundary typed.

use crate::identity::{Mac, RegistrationId};

use super::{AttemptOutcome, ErrorCode, Stage};

/// The latest attempt on a port (or one still running), with its unit's registration ID.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct PortActivity {
    /// The attempt's row id.
    pub id: i64,
    /// The station that ran it.
    pub station_id: String,
    /// Its batch.
    pub batch_id: i64,
    /// The serial port.
    pub port: String,
    /// The unit's MAC, once read.
    pub mac: Option<Mac>,
    /// The unit's registration ID, once recorded.
    pub registration_id: Option<RegistrationId>,
    /// Start.
    pub started_at: String,
    /// End; `None` while in progress.
    pub finished_at: Option<String>,
    /// How it ended, or in progress.
    pub outcome: AttemptOutcome,
    /// The failed stage; while in progress, the stage reached.
    pub stage: Option<Stage>,
    /// The stable error code of a failure.
    pub error_code: Option<ErrorCode>,
    /// The failure's message.
    pub message: Option<String>,
}

/// How many attempts of a batch ended one way in one minute (UTC).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct MinuteCount {
    /// The minute, `2026-11-25T08:01` (stored time cut to the minute).
    pub minute: String,
    /// Attempts that provisioned their unit in it.
    pub provisioned: i64,
    /// Attempts that failed or were interrupted in it.
    pub failed: i64,
}
