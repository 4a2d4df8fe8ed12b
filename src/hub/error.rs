//! Errors of the hub test message (stage `hub`): each names the hub and the device, never a key
//! or a token.

/// Errors of the test message to the assigned hub.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum HubError {
    /// The hub refused the device's credentials (HTTP 401/403, or CONNACK refused).
    #[error("the hub {hub} refused the credentials of device {device_id}: {message}")]
    #[diagnostic(
        code(station::hub::unauthorized),
        help(
            "DPS assigned the device but its hub does not accept it: check that the hub is linked to DPS with its current keys (DPS > Linked IoT hubs), that the device's identity in the hub is enabled, and the station's clock (tokens carry an expiry). The unit is NOT provisioned; provision it again once fixed."
        )
    )]
    Unauthorized {
        /// The hub.
        hub: String,
        /// The device ID.
        device_id: String,
        /// The hub's message.
        message: String,
    },
    /// The hub refused the message for another reason.
    #[error("the hub {hub} refused the message of device {device_id} (status {status}): {message}")]
    #[diagnostic(
        code(station::hub::rejected),
        help(
            "Status 404 means the hub has no such device (DPS assigned it elsewhere?); 400 a message it cannot take. Check the hub's device list in the portal, then provision the unit again."
        )
    )]
    Rejected {
        /// The hub.
        hub: String,
        /// The device ID.
        device_id: String,
        /// The HTTP status (0 over MQTT).
        status: u16,
        /// The hub's message.
        message: String,
    },
    /// The hub kept answering 429 or 5xx until the time allowed ran out.
    #[error("the hub {hub} answered {status} until the time allowed ran out")]
    #[diagnostic(
        code(station::hub::server_error),
        help(
            "The hub is throttling or failing: check its tier and the Azure status page, then provision the unit again."
        )
    )]
    ServerError {
        /// The hub.
        hub: String,
        /// The last status.
        status: u16,
    },
    /// The hub could not be reached.
    #[error("cannot reach the hub at {url}: {detail}")]
    #[diagnostic(
        code(station::hub::unreachable),
        help(
            "The station reached DPS but not the hub: check the firewall for the hub's host (port 443 for HTTPS, 8883 for MQTT) and [hub] hub_url, then provision the unit again."
        )
    )]
    Unreachable {
        /// Where the station called.
        url: String,
        /// What failed.
        detail: String,
    },
    /// No answer within the time allowed.
    #[error("the hub {hub} did not answer within {seconds:.1} s")]
    #[diagnostic(
        code(station::hub::timeout),
        help(
            "Raise [dps] verify_timeout if the hub is merely slow from this site, then provision the unit again."
        )
    )]
    Timeout {
        /// The hub.
        hub: String,
        /// The time allowed.
        seconds: f64,
    },
    /// The client cannot be set up (a bad `[hub] hub_url`, a certificate rustls cannot use).
    #[error("cannot set up the hub client: {problem}")]
    #[diagnostic(
        code(station::hub::client),
        help("Check [hub] hub_url and [dps] ca_file in station.toml.")
    )]
    Client {
        /// What is wrong.
        problem: String,
    },
}
