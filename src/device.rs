//! The hardware seam (placeholder: being written).

/// Errors talking to a device.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DeviceError {
    /// Placeholder.
    #[error("device: not yet implemented")]
    #[diagnostic(code(station::device::unimplemented))]
    Unimplemented,
}
