//! Simulated ESP32 ROM loader on pseudo-terminals (placeholder: being written).

/// Errors from the simulator.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SimError {
    /// Placeholder.
    #[error("sim: not yet implemented")]
    #[diagnostic(code(station::sim::unimplemented))]
    Unimplemented,
}
