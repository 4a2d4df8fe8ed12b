//! placeholder

/// Placeholder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum KeyError {
    /// Placeholder.
    #[error("placeholder")]
    Placeholder,
}
