//! ESP-IDF NVS partition images (placeholder: being written).

/// Errors building or reading an NVS image.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum NvsError {
    /// Placeholder.
    #[error("nvs: not yet implemented")]
    #[diagnostic(code(station::nvs::unimplemented))]
    Unimplemented,
}

impl NvsError {
    /// True when the error comes from the input (a value that does not fit, a bad key) rather
    /// than from a corrupt image; the CLI maps it to exit code 2.
    pub fn is_input_error(&self) -> bool {
        true
    }
}

/// Placeholder value type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(String),
}

/// Placeholder entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: Value,
}

/// Placeholder build.
pub fn build(_entries: &[Entry], _size: usize) -> Result<Vec<u8>, NvsError> {
    Ok(Vec::new())
}
