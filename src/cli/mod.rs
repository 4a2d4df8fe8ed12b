//! The command line (DESIGN.md section 3): clap definitions, dispatch and the terminal views.
//!
//! Every command that prints data takes `--json`. Exit codes: 0 success; 1 the operation ran
//! and failed (a unit failed, an audit chain is broken); 2 bad usage, configuration or key.

mod demo;
mod dps;
mod image;
mod line;
mod records;
mod serve;
mod unit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::error::{Error, Result, exit};
use crate::store::Store;
use crate::support::bounded;

/// Provisioning station for ESP32 factory lines: reads each chip's MAC, derives its Azure DPS
/// device key from the enrollment-group key, flashes an ESP-IDF NVS image and records the unit
/// in a tamper-evident log.
#[derive(Debug, Parser)]
#[command(
    name = "station",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The station configuration.
    #[arg(
        long,
        global = true,
        env = "STATION_CONFIG",
        default_value = "station.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The station's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The line daemon: watch the configured ports and provision every device that appears,
    /// until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Provision the device on one port and exit (0 only if it was recorded provisioned).
    Provision(ProvisionArgs),
    /// Work orders: open, close and follow batches.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// One unit: its record (state, every attempt, its boot log), or revoke it (scrapped,
    /// returned) or restore it.
    #[command(subcommand)]
    Unit(UnitCommand),
    /// Device keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// NVS partition images.
    #[command(subcommand)]
    Nvs(NvsCommand),
    /// QA exports.
    #[command(subcommand)]
    Export(ExportCommand),
    /// The auditor's views of the provisioning log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The database's schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Azure DPS pre-verification.
    #[command(subcommand)]
    Dps(DpsCommand),
    /// Simulated hardware for tests and demos.
    #[command(subcommand)]
    Sim(SimCommand),
    /// A whole simulated line: simulated devices provisioned in one batch, no hardware needed.
    Demo(DemoArgs),
    /// Check the configuration, key files, database, ports and DPS, and say what is wrong.
    Check,
    /// The supervisor dashboard from the database: the line, batches, units, QA manifests and
    /// the audit chain, read-only, until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

/// `station serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; anything but loopback requires `[http] token_file`.
    #[arg(long, value_name = "ADDR", default_value = crate::web::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
}

/// `station run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The batch to provision into (default: the open batch).
    #[arg(long)]
    pub batch: Option<String>,
    /// Seconds units in flight may take to finish after SIGINT/SIGTERM before they are
    /// recorded interrupted.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds)]
    pub drain: Duration,
    /// Log one plain line per event even on a terminal (no live view).
    #[arg(long)]
    pub plain: bool,
    /// Seconds between retries of units DPS could not be reached for (`pre_verify` on).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = positive_seconds)]
    pub dps_retry: Duration,
    /// Serve the supervisor dashboard on this address, live from the daemon (e.g.
    /// 127.0.0.1:8080; anything but loopback requires `[http] token_file`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

/// `station provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The serial port of the device (e.g. /dev/ttyUSB0).
    #[arg(long, value_name = "PATH")]
    pub port: PathBuf,
    /// The batch to provision into (default: the open batch).
    #[arg(long)]
    pub batch: Option<String>,
    /// Re-provision a device already provisioned in another batch (audited).
    #[arg(long)]
    pub reprovision: bool,
}

/// `station batch`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Open a work order; a station works one batch at a time.
    Open {
        /// A unique name, e.g. the work-order number (1 to 128 characters, no control
        /// characters).
        #[arg(value_parser = label)]
        name: String,
        /// How many units the batch should provision.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        target: i64,
        /// Who is responsible (default: $STATION_OPERATOR, else the login name).
        #[arg(long, value_name = "ID", value_parser = label)]
        operator: Option<String>,
    },
    /// Close a batch (default: the open one).
    Close {
        /// The batch.
        name: Option<String>,
    },
    /// Counts of a batch (default: the open one, else every batch).
    Status {
        /// The batch.
        name: Option<String>,
    },
}

/// `station unit`.
#[derive(Debug, Subcommand)]
pub enum UnitCommand {
    /// Show a unit's record, every attempt on it (any batch) and the boot log its last boot
    /// check kept (redacted).
    Show {
        /// The unit's MAC (24:0A:C4:12:34:56, 24-0a-c4-12-34-56 or 240ac4123456).
        mac: String,
    },
    /// Revoke a provisioned unit (scrapped or returned): recorded and audited, shown in
    /// manifests (`revoked_at`), refused by the line; with [dps.service] DPS is given a disabled
    /// individual enrollment for it, otherwise the portal steps are printed.
    Revoke {
        /// The unit's MAC (aa:bb:cc:dd:ee:ff).
        mac: crate::identity::Mac,
        /// Why (kept in the ledger and the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Undo a revocation: the ledger clears it and, with [dps.service], DPS lets the unit in
    /// again (its disabled individual enrollment is deleted, or its own re-enabled).
    Restore {
        /// The unit's MAC.
        mac: crate::identity::Mac,
    },
}

/// `station key`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the device key(s) derived for a registration ID (audited).
    Derive {
        /// The DPS registration ID.
        #[arg(long, value_name = "ID")]
        registration_id: String,
    },
}

/// `station nvs`.
#[derive(Debug, Subcommand)]
pub enum NvsCommand {
    /// Write the exact NVS image(s) the station would flash (audited; files are mode 0600).
    Build(NvsBuildArgs),
    /// Decode an NVS image (namespaces, keys, types and values) or an esp_secure_cert image
    /// (entries, certificates, the private key); secrets redacted by default.
    Inspect {
        /// The image file: an NVS partition, or an esp_secure_cert partition (recognised by its
        /// TLV magic).
        file: PathBuf,
        /// Show device keys, private keys and other secret-looking values.
        #[arg(long)]
        show_secrets: bool,
    },
}

/// `station nvs build`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["mac", "csv"])))]
pub struct NvsBuildArgs {
    /// The device's MAC (24:0A:C4:12:34:56, 24-0a-c4-12-34-56 or 240ac4123456).
    #[arg(long, requires = "out")]
    pub mac: Option<String>,
    /// Where to write the image.
    #[arg(long, value_name = "FILE", requires = "mac")]
    pub out: Option<PathBuf>,
    /// A CSV with a `mac` column (and optionally `registration_id`, checked against the
    /// template); one image per row, named <12 hex MAC>.bin.
    #[arg(long, value_name = "FILE", requires = "out_dir")]
    pub csv: Option<PathBuf>,
    /// Where to write the images.
    #[arg(long, value_name = "DIR", requires = "csv")]
    pub out_dir: Option<PathBuf>,
}

/// `station export`.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// The QA manifest: one row per provisioned unit (columns in the README); never a key.
    /// Audited as `manifest.exported` with the SHA-256 of what was written.
    Manifest(ManifestArgs),
}

/// `station export manifest`.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Only units last provisioned in this batch (default: every batch).
    #[arg(long)]
    pub batch: Option<String>,
    /// Only units provisioned at or after this time: RFC 3339 (2026-11-25T08:00:00Z) or a
    /// date (2026-11-25, midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only units provisioned before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ManifestFormat,
    /// Where to write it, atomically and with mode 0600 (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub use crate::report::{AuditFormat, ManifestFormat};

/// `station audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the log as a table, oldest first.
    Show {
        /// Only the entries of this batch (its opening and closing, its units, its manifests).
        #[arg(long)]
        batch: Option<String>,
        /// Only the last N entries.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Export the log with its hashes, for an auditor to verify elsewhere.
    Export {
        /// The format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: AuditFormat,
        /// Where to write it, atomically and with mode 0600 (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Re-walk the hash chain (on a shared database: every station's chain) and hold it
    /// against the station's signed checkpoints; exit 0 with the count verified, or exit 1
    /// naming the first entry that does not match, or the checkpoint that shows the log cut
    /// short or rewritten.
    Verify {
        /// A head hash recorded at an earlier review (16 to 64 hex digits, any case): also
        /// check that this entry is still in the chain.
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
        /// Only the chain of this station (on SQLite, whose file keeps one chain for every
        /// station, the whole chain); its checkpoints are the ones checked (default: this
        /// station's).
        #[arg(long, value_name = "ID")]
        station: Option<String>,
        /// Checkpoint files to hold the chain against (repeatable; default: the station's
        /// [audit] checkpoint_file).
        #[arg(long, value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// The station public key to trust (`ed25519:...`, or a file holding it; default: the
        /// station's own signing key).
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
    },
}

/// `station db`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the migrations the database lacks and say what it is: backend, version, schema.
    /// On a shared PostgreSQL database run it once per station update, with the owner's
    /// credentials (station users may not change the schema).
    Migrate,
}

/// `station dps`.
#[derive(Debug, Subcommand)]
pub enum DpsCommand {
    /// Pre-verify one registration ID now, or retry every unit still pending.
    Verify {
        /// The registration ID.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "pending",
            conflicts_with = "pending"
        )]
        registration_id: Option<String>,
        /// Retry every unit whose DPS status is pending.
        #[arg(long)]
        pending: bool,
    },
}

/// `station sim`.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Simulated ESP32s on pseudo-terminals; prints one port path per line; runs until killed.
    Devices(SimDevicesArgs),
    /// A local DPS emulator on loopback; prints its URL; runs until killed.
    Dps(SimDpsArgs),
}

/// `station sim dps`.
#[derive(Debug, Args)]
pub struct SimDpsArgs {
    /// The ID scope to accept.
    #[arg(long)]
    pub id_scope: String,
    /// The enrollment group's attestation: symmetric-key (check SAS tokens against
    /// --group-key-file) or x509 (check client certificates against --ca-file, over HTTPS).
    #[arg(long, value_enum, default_value = "symmetric-key")]
    pub attestation: AttestationKind,
    /// symmetric-key: the enrollment group key (base64, mode 0600) to check SAS tokens against.
    #[arg(long, value_name = "FILE")]
    pub group_key_file: Option<PathBuf>,
    /// x509: the CA certificate(s) the enrollment group trusts (PEM), as registered and
    /// verified in DPS; device certificates must chain to one of them.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Serve HTTPS with a server certificate kept in DIR (made there on first use: ca.pem,
    /// server.pem, server.key); point [dps] ca_file at DIR/ca.pem. Required with x509.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The TCP port on 127.0.0.1 (default: any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Answer the first N requests with HTTP 429 (throttled).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub throttle: u32,
    /// Then answer N requests with HTTP 503.
    #[arg(long = "fail-5xx", value_name = "N", default_value_t = 0)]
    pub fail_5xx: u32,
    /// Delay every answer by this many seconds (e.g. 0.3).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = seconds)]
    pub latency: Duration,
    /// Seconds a registration stays `assigning`.
    #[arg(long, value_name = "SECONDS", default_value = "0.2", value_parser = seconds)]
    pub assign_delay: Duration,
    /// The Retry-After seconds sent with a 429.
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub retry_after: u64,
    /// The IoT hub devices are assigned to.
    #[arg(long)]
    pub hub: Option<String>,
    /// Act as a disabled enrollment group: every registration ends `disabled`.
    #[arg(long)]
    pub disabled: bool,
    /// Never finish assigning (the station's verification times out).
    #[arg(long)]
    pub stall: bool,
    /// Serve the service API (individual enrollments) to tokens signed with this shared access
    /// policy key (base64, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub service_key_file: Option<PathBuf>,
    /// The shared access policy's name the service API accepts.
    #[arg(long, value_name = "NAME", default_value = crate::config::DEFAULT_SERVICE_POLICY)]
    pub service_policy: String,
}

/// An enrollment group's attestation kind, on the command line (`station sim dps`, `station
/// demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttestationKind {
    /// Devices present SAS tokens made from keys derived from the group key.
    SymmetricKey,
    /// Devices present client certificates chained to the group's CA.
    X509,
}

impl AttestationKind {
    /// The spelling on the command line and in `[dps] attestation`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationKind::SymmetricKey => "symmetric-key",
            AttestationKind::X509 => "x509",
        }
    }
}

/// `station sim devices`.
#[derive(Debug, Args)]
pub struct SimDevicesArgs {
    /// How many devices.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Make a symlink per device here (ttySIM0, ttySIM1, ...).
    #[arg(long, value_name = "DIR")]
    pub link_dir: Option<PathBuf>,
    /// Keep each device's 4 MiB flash here as <12 hex MAC>.bin.
    #[arg(long, value_name = "DIR")]
    pub flash_dir: Option<PathBuf>,
    /// The chip to imitate: esp32, or esp32s3/esp32c3 to test a line's refusal of another chip.
    #[arg(long, default_value = "esp32")]
    pub chip: crate::sim::SimChip,
    /// The link's baud rate at power-up (wire time is charged at the current rate).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// The first device's MAC; the others count up from it (default: distinct per run). Any
    /// address is taken, so that a chip with blank eFuses (00:00:00:00:00:00) can be imitated.
    #[arg(long, value_parser = crate::identity::Mac::parse_any)]
    pub base_mac: Option<crate::identity::Mac>,
    /// Inject a fault (repeatable): into the link, [DEVICE:]unplug|corrupt|noise|silent
    /// @bytes|frame|block=N; or into the application a reset boots, [DEVICE:]boot-panic|psram|
    /// no-config|silent|bootloop|print-key.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<crate::sim::FaultSpec>,
    /// The application's console rate (the ROM's banner stays at 115200).
    #[arg(long, value_name = "BAUD", default_value_t = 115_200)]
    pub app_baud: u32,
    /// The NVS namespace the application reads its DPS settings from.
    #[arg(long, value_name = "NAME", default_value = "dps")]
    pub app_namespace: String,
    /// The offset of the application's NVS partition (its partition table's).
    #[arg(long, value_name = "OFFSET", default_value = "0x9000", value_parser = parse_number)]
    pub app_nvs_offset: u32,
    /// The size of the application's NVS partition.
    #[arg(long, value_name = "SIZE", default_value = "0x6000", value_parser = parse_number)]
    pub app_nvs_size: u32,
    /// How many ports (default: one per device); the other devices wait for a free port.
    #[arg(long)]
    pub ports: Option<usize>,
    /// Act as the line operator: take a device off its port once the host has talked to it and
    /// left it idle this many seconds, then plug in the next waiting device.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub leave_after_idle: Option<Duration>,
    /// Seconds a port stays empty between two devices.
    #[arg(long, value_name = "SECONDS", default_value = "0.3", value_parser = seconds)]
    pub swap_gap: Duration,
    /// Milliseconds each reply takes to reach the host after it left the chip: the USB-serial
    /// bridge's latency timer (CP210x, CH34x about 1; FTDI parts default to 16).
    #[arg(long, value_name = "MS", default_value = "1.0", value_parser = milliseconds)]
    pub usb_latency_ms: Duration,
    /// Milliseconds to erase one 4 KiB flash sector.
    #[arg(long, value_name = "MS", default_value = "45.0", value_parser = milliseconds)]
    pub sector_erase_ms: Duration,
    /// Milliseconds to erase one 64 KiB flash block.
    #[arg(long, value_name = "MS", default_value = "150.0", value_parser = milliseconds)]
    pub block_erase_ms: Duration,
    /// Milliseconds to program one 256-byte flash page.
    #[arg(long, value_name = "MS", default_value = "0.7", value_parser = milliseconds)]
    pub page_program_ms: Duration,
    /// Charge no time at all: no wire time, USB latency or flash work (for fast tests).
    #[arg(long)]
    pub instant: bool,
    /// How far the ROM's estimate of its 40 MHz crystal is off, in parts per million (hosts
    /// must correct the baud rates they ask the ROM for).
    #[arg(
        long,
        value_name = "PPM",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub xtal_error_ppm: i32,
}

/// A number written in decimal or, with `0x`, in hex.
fn parse_number(text: &str) -> std::result::Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number (write 36864 or 0x9000)"))
}

/// `station demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated devices (the batch's target).
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// How many ports they take turns on.
    #[arg(long, default_value_t = 4)]
    pub ports: usize,
    /// Where to keep the demo's configuration, key, database, flash dumps and manifest
    /// (default: a new directory under the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The attestation the demo's line and DPS emulator use: symmetric-key (a group key), or
    /// x509 (a demo CA issues each unit a certificate, flashed in an esp_secure_cert
    /// partition and pre-verified over TLS client authentication).
    #[arg(long, value_enum, default_value = "symmetric-key")]
    pub attestation: AttestationKind,
    /// Where the supervisor dashboard listens while the demo line runs (default: a free port
    /// on 127.0.0.1).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub http: std::net::SocketAddr,
    /// Keep serving the dashboard this many seconds after the batch completes.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = seconds)]
    pub linger: Duration,
}

/// The longest name or label taken from the command line (a batch, an operator).
const MAX_LABEL: usize = 128;

/// A name from the command line that goes into records: 1 to 128 characters, no control
/// characters (a pasted file or a terminal escape is no batch name).
fn label(text: &str) -> std::result::Result<String, String> {
    let count = text.chars().count();
    if count == 0 || count > MAX_LABEL {
        return Err(format!(
            "it is {count} characters long; give 1 to {MAX_LABEL}"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("it holds control characters (a line break, a tab, an escape)".to_owned());
    }
    Ok(text.to_owned())
}

/// The longest time a command-line flag takes, in seconds (a day).
const MAX_SECONDS: f64 = 86_400.0;

/// Seconds from the command line: a number from 0 to a day (`0.5`, `60`).
fn seconds(text: &str) -> std::result::Result<Duration, String> {
    let value: f64 = text.trim().parse().map_err(|_| {
        format!(
            "`{}` is not a number of seconds",
            crate::support::shown(text)
        )
    })?;
    if !(value.is_finite() && (0.0..=MAX_SECONDS).contains(&value)) {
        return Err(format!(
            "{} is not between 0 and {MAX_SECONDS} seconds",
            crate::support::shown(text.trim())
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Milliseconds from the command line: a number from 0 to a minute (`0.7`, `45`).
fn milliseconds(text: &str) -> std::result::Result<Duration, String> {
    let value: f64 = text.trim().parse().map_err(|_| {
        format!(
            "`{}` is not a number of milliseconds",
            crate::support::shown(text)
        )
    })?;
    if !(value.is_finite() && (0.0..=60_000.0).contains(&value)) {
        return Err(format!(
            "{} is not between 0 and 60000 milliseconds",
            crate::support::shown(text.trim())
        ));
    }
    Ok(Duration::from_secs_f64(value / 1000.0))
}

/// Seconds from the command line, more than 0.
fn positive_seconds(text: &str) -> std::result::Result<Duration, String> {
    let duration = seconds(text)?;
    if duration.is_zero() {
        return Err("it must be more than 0 seconds".to_owned());
    }
    Ok(duration)
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let json = cli.json;
    match cli.command {
        Command::Batch(command) => records::batch(&load_config(&cli.config)?, command, json).await,
        Command::Audit(command) => records::audit(&load_config(&cli.config)?, command, json).await,
        Command::Db(DbCommand::Migrate) => {
            records::db_migrate(&load_config(&cli.config)?, json).await
        }
        Command::Key(KeyCommand::Derive { registration_id }) => {
            image::key_derive(&load_config(&cli.config)?, &registration_id, json).await
        }
        Command::Nvs(NvsCommand::Build(args)) => {
            image::nvs_build(&load_config(&cli.config)?, args, json).await
        }
        Command::Nvs(NvsCommand::Inspect { file, show_secrets }) => {
            image::nvs_inspect(&file, show_secrets, json)
        }
        Command::Check => records::check(&cli.config, json).await,
        Command::Run(args) => line::run(load_config(&cli.config)?, args, json).await,
        Command::Provision(args) => unit::provision(load_config(&cli.config)?, args, json).await,
        Command::Sim(SimCommand::Devices(args)) => unit::sim_devices(args).await,
        Command::Demo(args) => demo::run(args, json).await,
        Command::Export(ExportCommand::Manifest(args)) => {
            records::export_manifest(&load_config(&cli.config)?, args, json).await
        }
        Command::Dps(DpsCommand::Verify {
            registration_id,
            pending,
        }) => {
            let config = load_config(&cli.config)?;
            match registration_id {
                Some(id) if !pending => dps::verify_one(config, &id, json).await,
                _ => dps::verify_pending(config, json).await,
            }
        }
        Command::Sim(SimCommand::Dps(args)) => dps::sim_dps(args, json).await,
        Command::Unit(command) => {
            unit::unit_command(load_config(&cli.config)?, command, json).await
        }
        Command::Serve(args) => serve::serve(load_config(&cli.config)?, args, json).await,
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// Opens the database for a command that records: its chain is anchored by the station's
/// signed checkpoints ([`crate::station::anchor_for`]).
async fn open_store(config: &Config) -> Result<Store> {
    let anchor = crate::station::anchor_for(config).map_err(crate::store::StoreError::from)?;
    Ok(Store::connect(&config.station.database)
        .await?
        .with_anchor(std::sync::Arc::new(anchor)))
}

/// Opens the database for a command that only reads (no key is made, no checkpoint written).
async fn open_store_to_read(config: &Config) -> Result<Store> {
    Ok(Store::connect(&config.station.database).await?)
}

/// Writes the checkpoint an export embedded beside the file it went to: `FILE.checkpoint.json`
/// (mode 0600, atomically). CSV and JSON manifests keep their exact shape (QA tools parse
/// them), so the checkpoint travels beside them.
fn write_checkpoint_sidecar(
    out: &Path,
    checkpoint: &crate::checkpoint::Checkpoint,
    export: serde_json::Value,
) -> Result<PathBuf> {
    let mut name = out.as_os_str().to_owned();
    name.push(".checkpoint.json");
    let path = PathBuf::from(name);
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "export": export,
        "checkpoint": checkpoint,
    }))
    .unwrap_or_default();
    crate::file::write_private(&path, format!("{text}\n").as_bytes())
        .map_err(|e| Error::io("writing", &path, e))?;
    Ok(path)
}

/// Who is responsible for an act outside a unit's attempt ([`crate::operator::resolve`]).
fn operator(flag: Option<String>) -> String {
    crate::operator::resolve(flag.as_deref(), None)
}

/// Prints a value as one JSON document on stdout.
fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode output as JSON: {e}"),
    }
}

/// The code of every command-line usage error (an unknown flag, a missing or malformed value).
pub const USAGE_CODE: &str = "station::cli::usage";

/// Reports an argument the parser refused as every other error is reported (`error:`,
/// `code: station::cli::usage`, `hint:`; with `--json` also the JSON error object on stdout)
/// and returns the exit code: 2, or 0 for `--help` and `--version`, which are printed as they
/// are.
pub fn usage_error(error: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return OK;
    }
    let text = error.render().to_string();
    let (message, rest) = if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `station nvs`: the parser shows the group's help; say what is missing above it.
        eprint!("{text}");
        ("a command is missing".to_owned(), "")
    } else {
        let (first, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
        (
            bounded(first.trim().trim_start_matches("error:").trim()),
            rest,
        )
    };
    // The parser's usage line and tip, as one sentence-like hint.
    let detail: Vec<&str> = rest
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect();
    let mut hint = bounded(&detail.join(" "));
    if !hint.is_empty() {
        hint.push_str(". ");
    }
    hint.push_str(
        "Run `station --help` (or `station COMMAND --help`) for the commands and their flags.",
    );
    eprintln!("error: {message}\n  code: {USAGE_CODE}\n  hint: {hint}");
    let json = std::env::args_os().skip(1).any(|arg| arg == "--json");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "error": { "code": USAGE_CODE, "message": message, "hint": hint, "exit_code": exit::USAGE }
            })
        );
    }
    exit::USAGE
}

/// Renders an error for the terminal: message, code and hint.
pub fn render_error(error: &Error) -> String {
    let mut out = format!(
        "error: {}\n  code: {}",
        bounded(&error.to_string()),
        error.code()
    );
    if let Some(hint) = error.hint() {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// The error as a JSON object, for `--json` callers.
pub fn error_json(error: &Error) -> serde_json::Value {
    serde_json::json!({
        "error": { "code": error.code(), "message": bounded(&error.to_string()), "hint": error.hint(), "exit_code": error.exit_code() }
    })
}

/// Exit code for a successful command.
const OK: u8 = exit::SUCCESS;
