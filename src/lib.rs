//! `station`: a provisioning station for factory lines that build ESP32 devices for Azure IoT Hub
//! through the Azure Device Provisioning Service (DPS).
//!
//! For every ESP32 plugged into a line port the station reads the chip's identity over the ROM
//! serial loader, forms the DPS registration ID from its MAC, derives the per-device key from the
//! enrollment-group key (which never leaves the station), builds an ESP-IDF NVS partition image,
//! flashes and verifies it, and records the unit in SQLite and a tamper-evident audit log.
//!
//! The pure cores ([`keys`], [`identity`], [`nvs`], [`report`]) never touch a port, the network
//! or the database; [`device`], [`sim`] and [`store`] are the I/O shells around them, and
//! [`provision`] orchestrates one unit through the pipeline of `DESIGN.md` section 1; with
//! `[boot]` on, [`boot`] then reads the application's console and passes the unit only when
//! its firmware confirms its own configuration.

mod armor;
pub mod boot;
pub mod certificate;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod device;
pub mod dps;
pub mod error;
pub mod file;
pub mod flash;
pub mod http;
pub mod hub;
pub mod identity;
pub mod keys;
pub mod line;
pub mod mqtt;
pub mod nvs;
pub mod operator;
pub mod process;
pub mod provision;
pub mod record;
pub mod report;
pub mod secure_cert;
pub mod sim;
pub mod slip;
pub mod station;
pub mod store;
pub mod support;
pub mod tls;
pub mod web;
pub mod x509;

pub use error::{Error, Result};
