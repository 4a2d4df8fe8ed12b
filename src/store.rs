//! placeholder

/// Placeholder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreError {
    /// Placeholder.
    #[error("placeholder")]
    Placeholder,
}
impl StoreError {
    /// Placeholder.
    pub fn is_usage_error(&self) -> bool {
        false
    }
}
