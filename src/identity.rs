//! placeholder

/// Placeholder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum IdentityError {
    /// Placeholder.
    #[error("placeholder")]
    Placeholder,
}
