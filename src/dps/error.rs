//! Errors of DPS pre-verification: each names the unit and carries DPS's own error code and
//! text, never a key or a token.

/// Errors of DPS pre-verification. Messages carry DPS's own error code and text, never a key or
/// a token.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DpsError {
    /// DPS refused the registration's SAS token (HTTP 401).
    #[error("DPS refused the credentials of {registration_id} (HTTP 401{}): {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::unauthorized),
        help(
            "The group key or ID scope in station.toml does not match the enrollment group: compare [dps] id_scope with the DPS overview page and group_key_file with the group's Primary Key (DPS > Manage enrollments), and check the station's clock (tokens carry an expiry)."
        )
    )]
    Unauthorized {
        /// The unit.
        registration_id: String,
        /// DPS's numeric error code (401002: unauthorized).
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS refused the device's X.509 certificate (HTTP 401).
    #[error("DPS refused the certificate of {registration_id} (HTTP 401{}): {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::certificate_refused),
        help(
            "DPS does not trust the device's certificate: the enrollment group's CA (DPS > Certificates, verified) must be the station's signing CA ([dps] ca_cert_file) or a CA above it in [dps] ca_chain_file, and the group must be an X.509 enrollment group. Compare the thumbprint `station check` shows with the portal's, and check the station's clock (certificates start an hour before issuing)."
        )
    )]
    CertificateRefused {
        /// The unit.
        registration_id: String,
        /// DPS's numeric error code (401002: unauthorized).
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// The enrollment (group) is disabled.
    #[error("DPS reports the enrollment of {registration_id} as disabled{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::disabled),
        help(
            "The enrollment group (or this device's registration) is disabled in DPS. Ask whoever owns the DPS instance to enable it (DPS > Manage enrollments), then run `station dps verify --registration-id ID` for the unit."
        )
    )]
    Disabled {
        /// The unit.
        registration_id: String,
        /// DPS's error code, if any.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS accepted the credentials but could not assign the device.
    #[error("DPS could not assign {registration_id}{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::registration_failed),
        help(
            "The credentials are good but DPS found no hub for the device: check the enrollment group's allocation policy and linked hubs, and [dps.payload] if a custom allocation function reads it."
        )
    )]
    RegistrationFailed {
        /// The unit.
        registration_id: String,
        /// DPS's error code.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS rejected the request for another reason (HTTP 400, 404, ...).
    #[error("DPS rejected the registration of {registration_id} with HTTP {status}{}: {message}", code_suffix(*error_code))]
    #[diagnostic(
        code(station::dps::rejected),
        help(
            "Check [dps] verify_url, id_scope and api_version in station.toml; `station check` contacts DPS and shows its answer."
        )
    )]
    Rejected {
        /// The unit.
        registration_id: String,
        /// The HTTP status.
        status: u16,
        /// DPS's error code.
        error_code: Option<i64>,
        /// DPS's message.
        message: String,
    },
    /// DPS kept throttling (HTTP 429) until the time allowed ran out.
    #[error("DPS throttled the registration of {registration_id} for {seconds:.1} s (HTTP 429)")]
    #[diagnostic(
        code(station::dps::throttled),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. If this persists, the DPS instance is over its registration rate: spread the line's load or raise the DPS tier."
        )
    )]
    Throttled {
        /// The unit.
        registration_id: String,
        /// How long the station tried.
        seconds: f64,
    },
    /// DPS kept failing with 5xx until the time allowed ran out.
    #[error("DPS answered HTTP {status} for {registration_id} until the time allowed ran out")]
    #[diagnostic(
        code(station::dps::server_error),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. Check the Azure status page if it persists."
        )
    )]
    ServerError {
        /// The unit.
        registration_id: String,
        /// The last HTTP status.
        status: u16,
    },
    /// DPS could not be reached.
    #[error("cannot reach DPS at {url}: {detail}")]
    #[diagnostic(
        code(station::dps::unreachable),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it once the network is back. Check the station's network, proxy and [dps] verify_url."
        )
    )]
    Unreachable {
        /// The base URL.
        url: String,
        /// What failed (DNS, connection refused, TLS).
        detail: String,
    },
    /// The TLS handshake with DPS failed: the server's certificate is not trusted or not valid
    /// for the host, or the server speaks no TLS the station accepts. A configuration or
    /// security fault, not an outage: the unit fails, it is not left pending.
    #[error("TLS with {url} failed: {detail}")]
    #[diagnostic(
        code(station::dps::tls),
        help(
            "The station does not trust the server at [dps] verify_url, so it sent no device credentials. If that is Azure DPS, something between the station and Azure intercepts TLS (a proxy or firewall): have it let the DPS host through untouched. For a local emulator over TLS, name its CA in [dps] ca_file. Check the station's clock too: a certificate is valid only between its dates."
        )
    )]
    Tls {
        /// The base URL.
        url: String,
        /// What the TLS library reported (`invalid peer certificate: UnknownIssuer`, ...).
        detail: String,
    },
    /// No final answer within `[dps] verify_timeout`.
    #[error("DPS gave no final answer for {registration_id} within {seconds:.1} s")]
    #[diagnostic(
        code(station::dps::timeout),
        help(
            "The unit is recorded pending; `station dps verify --pending` retries it later. Raise [dps] verify_timeout if DPS is merely slow from this site."
        )
    )]
    Timeout {
        /// The unit.
        registration_id: String,
        /// The time allowed.
        seconds: f64,
    },
    /// DPS answered something that is not the device REST API.
    #[error("unexpected answer from DPS at {url}: {problem}")]
    #[diagnostic(
        code(station::dps::protocol),
        help(
            "[dps] verify_url must point at DPS (or `station sim dps`), not a proxy page or another service; `station check` shows what answers there."
        )
    )]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong.
        problem: String,
    },
    /// The HTTP client cannot be set up (a bad `[dps] ca_file`).
    #[error("cannot set up the DPS client: {problem}")]
    #[diagnostic(
        code(station::dps::client),
        help(
            "[dps] ca_file must name a readable PEM certificate (relative paths resolve next to station.toml); leave it out for Azure's public endpoint."
        )
    )]
    Client {
        /// What is wrong.
        problem: String,
    },
}

/// The TLS library's error in an error's chain. An `io::Error` wrapping one hides it from
/// `source()` (which skips to the wrapped error's own source), and connectors nest `io::Error`s,
/// so each link is also unwrapped.
fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut link = Some(error);
    while let Some(current) = link {
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(current);
        while let Some(candidate) = inner {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            inner = candidate
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        link = current.source();
    }
    None
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(", DPS error {c}")).unwrap_or_default()
}

impl DpsError {
    /// True when the outcome is unknown rather than negative (unreachable, timed out,
    /// throttled, server errors): the unit is recorded `pending` and retried later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DpsError::Throttled { .. }
                | DpsError::ServerError { .. }
                | DpsError::Unreachable { .. }
                | DpsError::Timeout { .. }
        )
    }

    /// True for a bad configuration rather than a DPS answer (exit code 2): a client that
    /// cannot be set up, a server the station does not trust.
    pub fn is_usage_error(&self) -> bool {
        matches!(self, DpsError::Client { .. } | DpsError::Tls { .. })
    }

    /// What a request that got no HTTP answer means: [`DpsError::Tls`] when the TLS handshake
    /// failed (a rustls error anywhere in the chain), else [`DpsError::Unreachable`].
    pub(crate) fn no_answer(url: &str, error: &(dyn std::error::Error + 'static)) -> DpsError {
        let detail = crate::support::error_chain_text(error);
        match tls_failure(error) {
            Some(tls) => DpsError::Tls {
                url: url.to_owned(),
                detail: tls.to_string(),
            },
            None => DpsError::Unreachable {
                url: url.to_owned(),
                detail,
            },
        }
    }

    /// DPS's own numeric error code, when it gave one.
    pub fn dps_error_code(&self) -> Option<i64> {
        match self {
            DpsError::Unauthorized { error_code, .. }
            | DpsError::CertificateRefused { error_code, .. }
            | DpsError::Disabled { error_code, .. }
            | DpsError::RegistrationFailed { error_code, .. }
            | DpsError::Rejected { error_code, .. } => *error_code,
            _ => None,
        }
    }
}
