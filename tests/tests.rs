//! Integration tests, compiled as one binary. Each test works in its own temporary directory
//! with its own `station.toml`, group key and SQLite file.

mod cli;
mod util;
