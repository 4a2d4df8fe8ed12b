//! placeholder

/// Placeholder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConfigError {
    /// Placeholder.
    #[error("placeholder")]
    Placeholder,
}
