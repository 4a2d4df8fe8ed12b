//! The line daemon (DESIGN.md section 2, `line`): watches the ports `[serial] ports` names, runs
//! one task per port that provisions every device appearing on it, and keeps the batch's count.
//!
//! A port's task provisions the device it finds, then waits for that device to leave before it
//! starts again, so a unit left plugged in is never flashed twice. "Left" means the port node
//! went away or was replaced (a USB adapter unplugged, a simulator link re-created), or, on a
//! port that never goes away (a test jig), that a probe of the ROM loader finds nothing or a
//! different MAC. Units run in parallel up to `[serial] max_parallel`, and no unit starts once
//! the units provisioned plus those in flight reach the batch's target.
//!
//! The batch may be shared with other stations (a PostgreSQL database): a unit starts only while
//! the units provisioned in the batch (by every station), the slots other stations hold and this
//! daemon's units in flight leave room, and each unit claims its slot in the database once
//! identified ([`crate::store::Store::claim_slot`]).
//!
//! When the database cannot be reached, the daemon starts no new unit and says so (a coded
//! error on every view); a unit that finishes meanwhile is held, neither PASS nor FAIL, until
//! its record is written; the daemon polls the database and resumes when it answers.
//!
//! The daemon stops when the batch is complete or on SIGINT/SIGTERM: it starts nothing new, lets
//! the units in flight finish (within a bounded wait), records everything and returns. Attempts a
//! crashed daemon left open are closed as `interrupted` when the next one starts.
//!
//! Everything it does is reported as [`LineEvent`]s; the operator's terminal view, the plain log
//! and `--json` are renderers of the same events (`crate::cli`).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::SerialConfig;
use crate::device::{Device as _, EspflashDevice, FlashProgress, SerialSettings};
use crate::error::Error;
use crate::identity::Mac;
use crate::provision::{self, Event, Outcome, Request, UnitReport};
use crate::record::Batch;
use crate::record::Stage;
use crate::station::Station;
use crate::store::StoreError;
use crate::support::lock;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct LineOptions {
    /// The batch to provision into.
    pub batch: Batch,
    /// Who answers for the attempts.
    pub operator: String,
    /// How often ports are scanned and watched.
    pub poll: Duration,
    /// How long units in flight may take to finish after a stop was asked for.
    pub drain: Duration,
    /// How often units left `pending` by an unreachable DPS are retried, when
    /// `[dps] pre_verify` is on (store-and-forward for a line that was offline).
    pub dps_retry: Duration,
}

impl LineOptions {
    /// Options with the usual timings: ports scanned every 200 ms, 60 s to drain.
    pub fn new(batch: Batch, operator: String) -> Self {
        LineOptions {
            batch,
            operator,
            poll: Duration::from_millis(200),
            drain: Duration::from_secs(60),
            dps_retry: Duration::from_secs(60),
        }
    }
}

/// The batch's counters as the daemon sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Tally {
    /// The batch's target.
    pub target: i64,
    /// Units of the batch recorded provisioned (by any process).
    pub provisioned: i64,
    /// Units passed by this daemon.
    pub passed: u64,
    /// Units failed on this daemon's ports.
    pub failed: u64,
    /// Units found already provisioned in the batch and left alone.
    pub skipped: u64,
    /// Units in flight now.
    pub in_flight: usize,
    /// Units passed per minute since this daemon's first unit started.
    pub units_per_minute: Option<f64>,
    /// Seconds until the target at that rate.
    pub eta_seconds: Option<f64>,
}

/// Why a port is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The unit is done and still plugged in: unplug it.
    UnitDone,
    /// The unit failed and is still plugged in: take it off (replug it to try again).
    UnitFailed,
    /// The batch's target is covered by units provisioned and in flight.
    BatchFull,
    /// The database cannot be reached: no unit starts until it answers.
    DatabaseOffline,
}

/// Why the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// SIGINT or SIGTERM.
    Signal,
    /// The batch reached its target.
    BatchComplete,
}

/// What the daemon reports; the terminal view, the plain log and `--json` render these.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LineEvent {
    /// The daemon started.
    Started {
        /// The batch.
        batch: String,
        /// Its counters.
        tally: Tally,
        /// `[serial] ports`.
        ports: Vec<String>,
        /// `[serial] max_parallel`.
        max_parallel: usize,
        /// Attempts an earlier crash left open, now closed as interrupted (attempt ids).
        interrupted: Vec<i64>,
    },
    /// A port appeared.
    PortUp {
        /// The port.
        port: String,
    },
    /// A port went away (its device was unplugged).
    PortGone {
        /// The port.
        port: String,
    },
    /// A unit entered a stage.
    Stage {
        /// The port.
        port: String,
        /// The stage.
        stage: Stage,
    },
    /// A unit was identified.
    Identified {
        /// The port.
        port: String,
        /// Its MAC.
        mac: Mac,
        /// Its registration ID.
        registration_id: crate::identity::RegistrationId,
    },
    /// Flash progress of a unit.
    Flash {
        /// The port.
        port: String,
        /// Blocks acknowledged in the region being written.
        done: usize,
        /// Blocks in that region.
        blocks: usize,
    },
    /// A unit is finished: passed, failed or left alone.
    Unit {
        /// What happened.
        report: Box<UnitReport>,
        /// The counters after it.
        tally: Tally,
    },
    /// Recording a unit failed: nothing about it was stored, and the daemon stops.
    RecordFailed {
        /// The port.
        port: String,
        /// The error.
        message: String,
        /// Its stable code.
        error_code: String,
    },
    /// A port waits for the operator.
    Waiting {
        /// The port.
        port: String,
        /// Why.
        reason: WaitReason,
        /// The unit on it, if known.
        mac: Option<Mac>,
    },
    /// The daemon stops starting units.
    Stopping {
        /// Why.
        reason: StopReason,
        /// Units still in flight, which it lets finish.
        in_flight: usize,
    },
    /// The database cannot be reached: the daemon starts no new unit and holds the records of
    /// units that finish until it answers again.
    DatabaseOffline {
        /// The stable code (`station::store::unreachable`).
        error_code: String,
        /// The error.
        message: String,
    },
    /// The database answers again: units start again.
    DatabaseBack {
        /// How long it was unreachable.
        seconds: f64,
    },
    /// A finished unit's record is held until the database answers (it is not PASS yet).
    RecordHeld {
        /// The port.
        port: String,
        /// The unit, if identified.
        mac: Option<Mac>,
    },
    /// Units left `pending` by an unreachable DPS were retried (only when some changed).
    DpsRetried {
        /// Now assigned.
        assigned: usize,
        /// Now refused by DPS.
        failed: usize,
        /// Still pending.
        still_pending: usize,
    },
    /// The daemon is done.
    Stopped {
        /// The final counters.
        tally: Tally,
        /// Units that did not finish within the drain time, recorded as interrupted.
        abandoned: usize,
    },
}

/// The ports `[serial] ports` names now, sorted and without duplicates: `auto` is every USB
/// serial port whose bridge is in `[serial] usb_ids`; a pattern with `*`, `?` or `[` is a glob;
/// anything else is a path, listed whether or not it exists yet (its device may come later).
pub fn discover(serial: &SerialConfig) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for pattern in &serial.ports {
        if pattern == "auto" {
            if let Ok(ports) = serialport::available_ports() {
                found.extend(
                    ports
                        .into_iter()
                        .filter(|p| is_line_bridge(&p.port_type, &serial.usb_ids))
                        .map(|p| PathBuf::from(p.port_name)),
                );
            }
        } else if pattern.contains(['*', '?', '[']) {
            if let Ok(paths) = glob::glob(pattern) {
                found.extend(paths.filter_map(std::result::Result::ok));
            }
        } else {
            found.push(PathBuf::from(pattern));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Whether `auto` takes a port the OS reports: a USB serial port whose bridge is one of
/// `usb_ids` (a PCI or built-in UART, a Bluetooth port, an unknown USB device are left alone).
fn is_line_bridge(port_type: &serialport::SerialPortType, usb_ids: &[(u16, u16)]) -> bool {
    match port_type {
        serialport::SerialPortType::UsbPort(usb) => usb_ids.contains(&(usb.vid, usb.pid)),
        _ => false,
    }
}

/// What a port path points at now: the link (or device node) itself and the device behind it.
/// A USB adapter replugged, or a simulator link re-created, gives a different node. The change
/// time is part of it because file systems reuse a freed inode number at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortNode {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    rdev: u64,
}

fn port_node(path: &Path) -> Option<PortNode> {
    let link = std::fs::symlink_metadata(path).ok()?;
    let target = std::fs::metadata(path).ok()?;
    Some(PortNode {
        dev: link.dev(),
        ino: link.ino(),
        ctime: (link.ctime(), link.ctime_nsec()),
        rdev: target.rdev(),
    })
}

/// What a port's task knows about the device it handled last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// This unit was handled (passed, failed or skipped) and may still be plugged in.
    Unit(Mac),
    /// A unit failed before its MAC was read; it may still be plugged in.
    Unknown,
    /// A probe found nothing answering: the port is empty.
    Empty,
}

#[derive(Debug)]
struct Last {
    node: PortNode,
    seen: Seen,
    probed: Instant,
}

/// The counters' state behind [`Tally`].
#[derive(Debug)]
struct Counts {
    tally: Tally,
    first_start: Option<Instant>,
}

impl Counts {
    fn snapshot(&self) -> Tally {
        let mut tally = self.tally;
        if let Some(first) = self.first_start {
            let minutes = first.elapsed().as_secs_f64() / 60.0;
            if tally.passed > 0 && minutes > 0.0 {
                let rate = tally.passed as f64 / minutes;
                tally.units_per_minute = Some(rate);
                let remaining = (tally.target - tally.provisioned).max(0) as f64;
                tally.eta_seconds = Some(remaining / rate * 60.0);
            }
        }
        tally
    }
}

/// What every port's task shares.
struct Context {
    station: Arc<Station>,
    /// Since when the database has been unreachable, if it is.
    offline: Mutex<Option<Instant>>,
    request: Request,
    events: UnboundedSender<LineEvent>,
    permits: Semaphore,
    counts: Mutex<Counts>,
    stop: watch::Receiver<bool>,
    complete: watch::Sender<bool>,
    record_failed: watch::Sender<bool>,
    poll: Duration,
}

impl Context {
    fn emit(&self, event: LineEvent) {
        let _ = self.events.send(event);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps one poll period, or less if a stop is asked for.
    async fn pause(&self) {
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(self.poll, stop.wait_for(|s| *s)).await;
    }

    /// Takes a place in the batch for one more unit, unless the units provisioned (by every
    /// station), the slots other stations hold and this daemon's units in flight already cover
    /// the target.
    async fn reserve(&self) -> bool {
        if !self.has_room(0) {
            return false;
        }
        let station_id = &self.station.config.station.id;
        let room = match self
            .station
            .store
            .batch_room(self.request.batch.id, station_id)
            .await
        {
            Ok(room) => room,
            Err(error) => {
                if error.is_unreachable() {
                    self.go_offline(&crate::record::ErrorCode::of(&error), &error.to_string());
                } else {
                    tracing::warn!(error = %error, "cannot read the batch's count");
                }
                return false;
            }
        };
        let mut counts = lock(&self.counts);
        let tally = &mut counts.tally;
        tally.provisioned = room.provisioned;
        if room.provisioned >= tally.target || room.closed {
            self.complete.send_replace(true);
            return false;
        }
        if room.provisioned + room.claimed_elsewhere + tally.in_flight as i64 >= tally.target {
            return false;
        }
        tally.in_flight += 1;
        counts.first_start.get_or_insert_with(Instant::now);
        true
    }

    /// Whether, by this daemon's own counters, `more` units besides those in flight leave room.
    fn has_room(&self, more: i64) -> bool {
        let counts = lock(&self.counts);
        let tally = &counts.tally;
        tally.provisioned + tally.in_flight as i64 + more < tally.target
    }

    /// Notes that the database cannot be reached (once, until it is back).
    fn go_offline(&self, error_code: &crate::record::ErrorCode, message: &str) {
        let mut offline = lock(&self.offline);
        if offline.is_none() {
            *offline = Some(Instant::now());
            tracing::warn!(error.code = %error_code, error = message, "database unreachable: starting no new unit");
            self.emit(LineEvent::DatabaseOffline {
                error_code: error_code.to_string(),
                message: message.to_owned(),
            });
        }
    }

    fn is_offline(&self) -> bool {
        lock(&self.offline).is_some()
    }

    /// Notes that the database answers again.
    fn back_online(&self) {
        if let Some(since) = lock(&self.offline).take() {
            let seconds = since.elapsed().as_secs_f64();
            tracing::info!(seconds, "database reachable again");
            self.emit(LineEvent::DatabaseBack { seconds });
        }
    }

    fn release(&self) {
        let mut counts = lock(&self.counts);
        counts.tally.in_flight = counts.tally.in_flight.saturating_sub(1);
    }

    /// Counts a finished unit and returns the counters after it.
    async fn finish(&self, report: &UnitReport) -> Tally {
        let provisioned = self
            .station
            .store
            .batch_room(self.request.batch.id, &self.station.config.station.id)
            .await
            .map(|room| room.provisioned)
            .ok();
        let tally = {
            let mut counts = lock(&self.counts);
            let tally = &mut counts.tally;
            tally.in_flight = tally.in_flight.saturating_sub(1);
            match report.outcome {
                Outcome::Provisioned => tally.passed += 1,
                Outcome::Failed => tally.failed += 1,
                Outcome::Skipped => tally.skipped += 1,
            }
            tally.provisioned = provisioned.unwrap_or(tally.provisioned);
            counts.snapshot()
        };
        if tally.provisioned >= tally.target {
            self.complete.send_replace(true);
        }
        tally
    }

    fn tally(&self) -> Tally {
        lock(&self.counts).snapshot()
    }
}

/// Runs the line until the batch is complete or `shutdown` resolves; returns the final counters.
///
/// Errors only when the daemon cannot start (the database, the batch); a unit's failure is an
/// event, not an error.
pub async fn run(
    station: Arc<Station>,
    options: LineOptions,
    events: UnboundedSender<LineEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<Tally, Error> {
    let station_id = station.config.station.id.clone();
    let interrupted = station
        .store
        .recover_interrupted(&station_id, &options.operator)
        .await?;
    for attempt in &interrupted {
        tracing::warn!(attempt = attempt.id, port = %attempt.port, stage = attempt.stage.map(Stage::as_str), "closed an attempt an earlier run left open");
    }
    let status = station.store.batch_status(options.batch.clone()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (complete_tx, mut complete_rx) = watch::channel(false);
    let (record_failed_tx, mut record_failed_rx) = watch::channel(false);
    let serial = station.config.serial.clone();
    let context = Arc::new(Context {
        request: Request {
            batch: options.batch.clone(),
            operator: options.operator.clone(),
            reprovision: false,
            skip_provisioned: true,
            claim_at_start: true,
            hold_records: true,
        },
        events: events.clone(),
        permits: Semaphore::new(serial.max_parallel),
        counts: Mutex::new(Counts {
            tally: Tally {
                target: status.batch.target,
                provisioned: status.provisioned,
                ..Tally::default()
            },
            first_start: None,
        }),
        stop: stop_rx,
        complete: complete_tx,
        record_failed: record_failed_tx,
        poll: options.poll,
        station: Arc::clone(&station),
        offline: Mutex::new(None),
    });
    context.emit(LineEvent::Started {
        batch: options.batch.name.clone(),
        tally: context.tally(),
        ports: serial.ports.clone(),
        max_parallel: serial.max_parallel,
        interrupted: interrupted.iter().map(|a| a.id).collect(),
    });

    let mut tasks = JoinSet::new();
    let mut known = HashSet::new();
    let mut scan = tokio::time::interval(options.poll);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dps_retry = tokio::time::interval(options.dps_retry);
    dps_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retrying: Option<tokio::task::JoinHandle<()>> = None;
    let mut pinging: Option<tokio::task::JoinHandle<()>> = None;
    // Other stations may complete or close a shared batch: its count is read every second.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshing: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    let reason = if status.provisioned >= status.batch.target {
        StopReason::BatchComplete
    } else {
        loop {
            tokio::select! {
                () = &mut shutdown => break StopReason::Signal,
                _ = complete_rx.wait_for(|c| *c) => break StopReason::BatchComplete,
                _ = record_failed_rx.wait_for(|c| *c) => break StopReason::Signal,
                _ = scan.tick() => {
                    for port in discover(&serial) {
                        if known.insert(port.clone()) {
                            tasks.spawn(serve_port(Arc::clone(&context), port));
                        }
                    }
                    if context.is_offline()
                        && pinging.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
                    {
                        pinging = Some(tokio::spawn(ping(Arc::clone(&context))));
                    }
                }
                _ = refresh.tick() => {
                    if !context.is_offline()
                        && refreshing.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
                    {
                        refreshing = Some(tokio::spawn(refresh_count(Arc::clone(&context))));
                    }
                }
                _ = dps_retry.tick(), if station.dps.is_some() => {
                    if retrying.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        retrying = Some(tokio::spawn(retry_pending(Arc::clone(&context))));
                    }
                }
            }
        }
    };
    if let Some(retrying) = retrying {
        retrying.abort();
    }
    for task in [pinging, refreshing].into_iter().flatten() {
        task.abort();
    }
    stop_tx.send_replace(true);
    context.emit(LineEvent::Stopping {
        reason,
        in_flight: context.tally().in_flight,
    });
    let drained = tokio::time::timeout(options.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let mut abandoned = 0;
    if !drained {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // What did not finish in time is recorded as interrupted now rather than at next start.
        abandoned = station
            .store
            .recover_interrupted(&station_id, &options.operator)
            .await?
            .len();
    }
    let tally = context.tally();
    context.emit(LineEvent::Stopped { tally, abandoned });
    Ok(tally)
}

/// Reads the batch's count: complete (or closed) by whichever station, the daemon stops.
async fn refresh_count(context: Arc<Context>) {
    let station_id = &context.station.config.station.id;
    if let Ok(room) = context
        .station
        .store
        .batch_room(context.request.batch.id, station_id)
        .await
    {
        lock(&context.counts).tally.provisioned = room.provisioned;
        if room.provisioned >= room.target || room.closed {
            context.complete.send_replace(true);
        }
    }
}

/// Asks the database whether it answers again.
async fn ping(context: Arc<Context>) {
    if context.station.store.ping().await.is_ok() {
        context.back_online();
    }
}

/// Retries the units DPS could not be asked about yet, in the background of the line.
#[tracing::instrument(name = "line_dps_retry", skip_all)]
async fn retry_pending(context: Arc<Context>) {
    match crate::provision::retry_pending(&context.station, &context.request.operator).await {
        Ok(summary) if summary.assigned + summary.failed > 0 => {
            context.emit(LineEvent::DpsRetried {
                assigned: summary.assigned,
                failed: summary.failed,
                still_pending: summary.still_pending,
            });
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retrying units pending DPS failed"),
    }
}

/// One port's task: provision each device that appears on it, once. Everything it logs (probes
/// included) carries the port; each unit's span adds its MAC and registration ID.
#[tracing::instrument(name = "line_port", skip_all, fields(port = %port.display()))]
async fn serve_port(context: Arc<Context>, port: PathBuf) {
    let name = port.display().to_string();
    let mut present = false;
    let mut last: Option<Last> = None;
    let mut announced = Announced::default();
    let progress = forward_progress(Arc::clone(&context));
    while !context.stopping() {
        let node = port_node(&port);
        match (node, present) {
            (None, true) => {
                present = false;
                last = None;
                context.emit(LineEvent::PortGone { port: name.clone() });
            }
            (Some(_), false) => {
                present = true;
                context.emit(LineEvent::PortUp { port: name.clone() });
            }
            _ => {}
        }
        let Some(node) = node else {
            context.pause().await;
            continue;
        };
        if let Some(previous) = last.as_mut().filter(|l| l.node == node)
            && !new_device_on_same_node(&context, &port, previous).await
        {
            context.pause().await;
            continue;
        }
        if context.is_offline() {
            announced
                .wait(&context, &name, WaitReason::DatabaseOffline)
                .await;
            continue;
        }
        if !context.reserve().await {
            if context.is_offline() {
                context.pause().await;
            } else {
                announced.wait(&context, &name, WaitReason::BatchFull).await;
            }
            continue;
        }
        announced = Announced::default();
        let Ok(_permit) = context.permits.acquire().await else {
            context.release();
            return;
        };
        if context.stopping() {
            context.release();
            return;
        }
        let mut device =
            EspflashDevice::new(&port, SerialSettings::from(&context.station.config.serial));
        let result = provision::provision(
            &mut device,
            &context.station,
            &context.request,
            Some(&progress),
        )
        .await;
        drop(device);
        let report = match result {
            Ok(report) => report,
            Err(StoreError::BatchFull { .. }) => {
                // Other stations took the last slots between the count and the claim: nothing
                // touched the device; it waits like any port of a full batch.
                context.release();
                announced.wait(&context, &name, WaitReason::BatchFull).await;
                continue;
            }
            Err(StoreError::BatchClosed { .. }) => {
                context.release();
                context.complete.send_replace(true);
                return;
            }
            Err(error) if error.is_unreachable() => {
                // Nothing of the unit was recorded (its attempt could not even be opened, or
                // a stage could not be noted and the record was not held): the device is left
                // as it is, to be provisioned once the database answers.
                context.release();
                context.go_offline(&crate::record::ErrorCode::of(&error), &error.to_string());
                continue;
            }
            Err(error) => {
                context.release();
                context.emit(LineEvent::RecordFailed {
                    port: name.clone(),
                    message: error.to_string(),
                    error_code: crate::record::ErrorCode::of(&error).to_string(),
                });
                context.record_failed.send_replace(true);
                return;
            }
        };
        let tally = context.finish(&report).await;
        let seen = report.mac.map_or(Seen::Unknown, Seen::Unit);
        let reason = match report.outcome {
            Outcome::Failed => WaitReason::UnitFailed,
            Outcome::Provisioned | Outcome::Skipped => WaitReason::UnitDone,
        };
        let mac = report.mac;
        context.emit(LineEvent::Unit {
            report: Box::new(report),
            tally,
        });
        context.emit(LineEvent::Waiting {
            port: name.clone(),
            reason,
            mac,
        });
        // The node the unit was found on: if the operator swapped the device while the unit
        // finished (during DPS, say), the port already shows another node, a new device.
        last = Some(Last {
            node,
            seen,
            probed: Instant::now(),
        });
    }
}

/// The wait a port last announced, so that each is said once.
#[derive(Debug, Default)]
struct Announced(Option<WaitReason>);

impl Announced {
    /// Announces (once) that the port waits, and why; then pauses one poll period.
    async fn wait(&mut self, context: &Context, port: &str, reason: WaitReason) {
        if self.0 != Some(reason) {
            self.0 = Some(reason);
            context.emit(LineEvent::Waiting {
                port: port.to_owned(),
                reason,
                mac: None,
            });
        }
        context.pause().await;
    }
}

/// On a port whose node did not change since the last unit: whether a different device is
/// there now. Probes the ROM loader every `[serial] probe_interval`: a different MAC, or any MAC
/// after the port was found empty, is a new device; a unit that failed before its MAC was read
/// is only retried once it has been taken off (found empty) or the port node changed.
async fn new_device_on_same_node(context: &Context, port: &Path, last: &mut Last) -> bool {
    let Some(every) = context.station.config.serial.probe_interval else {
        return false;
    };
    if last.probed.elapsed() < every {
        return false;
    }
    let found = probe(context, port).await;
    last.probed = Instant::now();
    match (last.seen, found) {
        (_, None) => {
            last.seen = Seen::Empty;
            false
        }
        (Seen::Unit(before), Some(mac)) => before != mac,
        (Seen::Unknown, Some(_)) => false,
        (Seen::Empty, Some(_)) => true,
    }
}

/// Reads the MAC of whatever answers on `port` through the ROM loader alone (no stub, a few
/// seconds at most), then lets it go as `[serial] after` says.
async fn probe(context: &Context, port: &Path) -> Option<Mac> {
    let mut settings = SerialSettings::from(&context.station.config.serial);
    settings.stub = false;
    settings.stage_timeout = Some(Duration::from_secs(3));
    let mut device = EspflashDevice::new(port, settings);
    let mac = match device.connect().await {
        Ok(()) => device.identify().await.ok().map(|identity| identity.mac),
        Err(_) => None,
    };
    let _ = device.reset().await;
    mac
}

/// A channel whose pipeline events are relayed as line events.
fn forward_progress(context: Arc<Context>) -> UnboundedSender<Event> {
    let (sender, mut receiver) = unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = receiver.recv().await {
            let event = match event {
                Event::Stage { port, stage } => LineEvent::Stage { port, stage },
                Event::Flash {
                    port,
                    progress: FlashProgress::Block { done, blocks, .. },
                } => LineEvent::Flash { port, done, blocks },
                Event::Flash { .. } => continue,
                Event::Identified {
                    port,
                    mac,
                    registration_id,
                } => LineEvent::Identified {
                    port,
                    mac,
                    registration_id,
                },
                Event::RecordHeld {
                    port,
                    mac,
                    error_code,
                    message,
                } => {
                    if let Ok(code) = error_code.parse() {
                        context.go_offline(&code, &message);
                    }
                    LineEvent::RecordHeld { port, mac }
                }
            };
            context.emit(event);
        }
    });
    sender
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(ports: &[&str]) -> SerialConfig {
        SerialConfig {
            ports: ports.iter().map(|p| (*p).to_owned()).collect(),
            baud: 921_600,
            before: crate::config::BeforeReset::NoReset,
            after: crate::config::AfterReset::NoReset,
            chip: crate::config::Chip::Esp32,
            stub: true,
            usb_ids: crate::config::DEFAULT_USB_IDS.to_vec(),
            max_parallel: 4,
            probe_interval: None,
        }
    }

    #[test]
    fn globs_and_paths_are_discovered_sorted_once() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ttySIM1", "ttySIM0", "other"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let glob = format!("{}/ttySIM*", dir.path().display());
        let fixed = format!("{}/ttySIM0", dir.path().display());
        let later = format!("{}/ttyUSB9", dir.path().display());
        let found = discover(&serial(&[&glob, &fixed, &later]));
        assert_eq!(
            found,
            vec![
                dir.path().join("ttySIM0"),
                dir.path().join("ttySIM1"),
                dir.path().join("ttyUSB9"),
            ]
        );
    }

    #[test]
    fn auto_takes_only_the_configured_usb_bridges() {
        let usb = |vid, pid| {
            serialport::SerialPortType::UsbPort(serialport::UsbPortInfo {
                vid,
                pid,
                serial_number: None,
                manufacturer: None,
                product: None,
            })
        };
        let ids = crate::config::DEFAULT_USB_IDS;
        assert!(is_line_bridge(&usb(0x10c4, 0xea60), &ids), "CP2102");
        assert!(
            is_line_bridge(&usb(0x303a, 0x1001), &ids),
            "USB-Serial/JTAG"
        );
        assert!(!is_line_bridge(&usb(0x046d, 0xc52b), &ids), "a receiver");
        assert!(!is_line_bridge(&serialport::SerialPortType::PciPort, &ids));
        assert!(!is_line_bridge(&usb(0x10c4, 0xea60), &[(0x1a86, 0x7523)]));
    }

    #[test]
    fn a_recreated_link_is_a_new_node() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let link = dir.path().join("tty");
        assert_eq!(port_node(&link), None, "absent port");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = port_node(&link).unwrap();
        assert_eq!(port_node(&link), Some(first), "stable while untouched");
        std::fs::remove_file(&link).unwrap();
        // File systems reuse the inode at once; the change time (coarse clock) tells them apart.
        std::thread::sleep(Duration::from_millis(20));
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_ne!(port_node(&link), Some(first), "replugged");
        std::fs::remove_file(&b).unwrap();
        assert_eq!(port_node(&link), None, "a dangling link is no port");
    }

    #[test]
    fn the_rate_and_eta_follow_the_units_passed() {
        let counts = Counts {
            tally: Tally {
                target: 100,
                provisioned: 40,
                passed: 10,
                ..Tally::default()
            },
            first_start: Some(Instant::now() - Duration::from_secs(60)),
        };
        let tally = counts.snapshot();
        let rate = tally.units_per_minute.unwrap();
        assert!((9.9..10.1).contains(&rate), "{rate}");
        let eta = tally.eta_seconds.unwrap();
        assert!((355.0..365.0).contains(&eta), "60 left at 10/min: {eta}");
    }
}
