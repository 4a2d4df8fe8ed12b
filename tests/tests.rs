//! Integration tests, compiled as one binary. Each test works in its own temporary directory
//! with its own `station.toml`, group key and SQLite file.

// Test helpers outside #[test] functions panic on purpose: a broken fixture is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anchor;
mod architecture;
mod boot;
mod browser;
mod cli;
mod dashboard;
mod dps;
mod harden;
mod line;
mod mqtt;
mod nvs;
mod postgres;
mod provision;
mod report;
mod secure_cert;
mod sim;
mod snapshot;
mod util;
mod x509;
mod x509_line;
