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
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// A string.
    Str(String),
    /// blob
    Blob(Vec<u8>),
}

/// Placeholder parse.
pub fn parse(_image: &[u8]) -> Result<Vec<Entry>, NvsError> {
    Err(NvsError::Unimplemented)
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
