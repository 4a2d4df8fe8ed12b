//! `station run`: the line daemon and the operator's view of it.
//!
//! Three renderers of the same [`LineEvent`]s: a live view on a terminal (one line per port with
//! a progress bar while flashing, the batch's counters, rate and ETA, the last failures), one
//! plain line per event when stdout is not a terminal, and one JSON object per line with `--json`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::serve::{Server, announce};
use super::unit::{attempt_operator, wait_for_shutdown};
use super::{OK, RunArgs};
use crate::config::Config;
use crate::error::{Result, exit};
use crate::line::{self, LineEvent, LineOptions, StopReason, Tally, WaitReason};
use crate::provision::{Outcome, UnitReport};
use crate::record::DpsStatus;
use crate::record::Stage;
use crate::station::Station;
use crate::store::StoreError;
use crate::web::live::LiveLine;

pub(super) async fn run(config: Config, args: RunArgs, json: bool) -> Result<u8> {
    // Said before the live view takes the terminal; stderr, so --json output stays one stream.
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
        tracing::warn!(warning = warning.as_str(), "configuration warning");
    }
    let station = Arc::new(Station::open(config).await?);
    let batch = station
        .store
        .resolve_batch(args.batch.as_deref(), &station.config.station.id)
        .await?;
    if let Some(closed_at) = batch.closed_at.clone() {
        return Err(StoreError::BatchClosed {
            name: batch.name,
            closed_at,
        }
        .into());
    }
    let mut options = LineOptions::new(batch.clone(), attempt_operator(&batch));
    options.drain = args.drain;
    options.dps_retry = args.dps_retry;
    let (events, mut receiver) = unbounded_channel();
    let server = match args.http {
        Some(addr) => {
            let live = LiveLine::new(&station.config.station.id, &batch);
            let server = Server::start(
                &station.config,
                addr,
                station.store.clone(),
                Some(Arc::clone(&live)),
            )
            .await?;
            announce(&server, json);
            receiver = crate::web::live::tee(live, receiver);
            Some(server)
        }
        None => None,
    };
    let renderer = tokio::spawn(View::choose(json, args.plain).render(receiver));
    let result = line::run(Arc::clone(&station), options, events, wait_for_shutdown()).await;
    let record_failed = renderer.await.unwrap_or(false);
    if let Some(server) = server {
        server.stop().await;
    }
    let tally = result?;
    if let Ok(station) = Arc::try_unwrap(station) {
        station.store.close().await;
    }
    tracing::info!(?tally, "line stopped");
    Ok(if record_failed { exit::FAILED } else { OK })
}

/// How the events are shown.
pub(super) enum View {
    Json,
    Plain,
    Live(Live),
}

impl View {
    /// JSON lines with `--json`; else the live view on a terminal, plain lines elsewhere.
    pub(super) fn choose(json: bool, plain: bool) -> View {
        if json {
            View::Json
        } else if std::io::stdout().is_terminal() && !plain {
            View::Live(Live::new())
        } else {
            View::Plain
        }
    }

    /// Renders every event until the daemon is done; `true` if a unit could not be recorded.
    pub(super) async fn render(mut self, mut receiver: UnboundedReceiver<LineEvent>) -> bool {
        let mut record_failed = false;
        while let Some(event) = receiver.recv().await {
            record_failed |= matches!(event, LineEvent::RecordFailed { .. });
            match &mut self {
                View::Json => {
                    if let Ok(line) = serde_json::to_string(&event) {
                        let mut stdout = std::io::stdout().lock();
                        let _ = writeln!(stdout, "{line}");
                        let _ = stdout.flush();
                    }
                }
                View::Plain => {
                    if let Some(line) = plain(&event) {
                        let mut stdout = std::io::stdout().lock();
                        let _ = writeln!(stdout, "{line}");
                        let _ = stdout.flush();
                    }
                }
                View::Live(live) => live.event(&event),
            }
        }
        if let View::Live(live) = self {
            live.finish();
        }
        record_failed
    }
}

/// The counters in words: `40/100 provisioned, 2 failed, 1 in flight, 12.3 units/min, ETA 4m50s`.
fn counters(tally: &Tally) -> String {
    let mut text = format!(
        "{}/{} provisioned, {} failed, {} in flight",
        tally.provisioned, tally.target, tally.failed, tally.in_flight
    );
    if tally.skipped > 0 {
        text.push_str(&format!(", {} left alone", tally.skipped));
    }
    if let Some(rate) = tally.units_per_minute {
        text.push_str(&format!(", {rate:.1} units/min"));
    }
    if let Some(eta) = tally
        .eta_seconds
        .filter(|_| tally.provisioned < tally.target)
    {
        text.push_str(&format!(", ETA {}", minutes(eta)));
    }
    text
}

fn minutes(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

/// A unit's verdict in one line: `PASS  port  mac  id  0.80 s`.
fn verdict(report: &UnitReport) -> String {
    let (word, rest) = verdict_parts(report);
    format!("{word}  {}  {rest}", report.port)
}

/// `PASS`, `FAIL` or `SKIP`, and what follows the port.
fn verdict_parts(report: &UnitReport) -> (&'static str, String) {
    let mac = report
        .mac
        .map_or_else(|| "(MAC unknown)".to_owned(), |m| m.to_string());
    let id = report.registration_id.as_ref().map_or("", |r| r.as_str());
    match report.outcome {
        Outcome::Provisioned => (
            "PASS",
            format!(
                "{mac}  {id}  {:.2} s{}{}",
                report.seconds,
                dps_words(report),
                report
                    .warning
                    .as_ref()
                    .map_or_else(String::new, |w| format!("  ({w})"))
            ),
        ),
        Outcome::Failed => (
            "FAIL",
            format!(
                "{mac}  {id}  at {}: {} [{}]",
                report.stage.map_or("?", Stage::as_str),
                report.message.as_deref().unwrap_or_default(),
                report.error_code.as_deref().unwrap_or_default()
            ),
        ),
        Outcome::Skipped => (
            "SKIP",
            format!(
                "{mac}  {id}  {}",
                report.message.as_deref().unwrap_or_default()
            ),
        ),
    }
}

/// `  DPS assigned to HUB` or `  DPS pending`; nothing when pre-verification is off.
fn dps_words(report: &UnitReport) -> String {
    let hub = match report.hub_status {
        crate::record::HubStatus::Accepted => "; hub accepted the test message",
        crate::record::HubStatus::Failed => "; hub refused the test message",
        crate::record::HubStatus::NotRequested => "",
    };
    match (report.dps_status, &report.assigned_hub) {
        (DpsStatus::NotRequested, _) => String::new(),
        (DpsStatus::Assigned, Some(hub_name)) => format!("  DPS assigned to {hub_name}{hub}"),
        (status, _) => format!("  DPS {}{hub}", status.as_str()),
    }
}

fn waiting(reason: WaitReason) -> &'static str {
    match reason {
        WaitReason::UnitDone => "done: unplug it and plug in the next unit",
        WaitReason::UnitFailed => "failed: take it off and set it aside (replug to try again)",
        WaitReason::BatchFull => {
            "waiting: the batch's target is covered by units done and in flight"
        }
        WaitReason::DatabaseOffline => "waiting: the database is unreachable",
    }
}

fn stop_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Signal => "stop requested",
        StopReason::BatchComplete => "batch complete",
    }
}

/// The plain, line-per-event log of a non-terminal stdout.
fn plain(event: &LineEvent) -> Option<String> {
    Some(match event {
        LineEvent::Started {
            batch,
            tally,
            ports,
            max_parallel,
            interrupted,
        } => {
            let mut line = format!(
                "line: batch {batch}: {}; watching {} (up to {max_parallel} at once)",
                counters(tally),
                ports.join(", ")
            );
            if !interrupted.is_empty() {
                line.push_str(&format!(
                    "; closed {} attempt(s) an earlier run left open as interrupted",
                    interrupted.len()
                ));
            }
            line
        }
        LineEvent::PortUp { port } => format!("{port}  device connected"),
        LineEvent::PortGone { port } => format!("{port}  device unplugged"),
        LineEvent::Stage { port, stage } => format!("{port}  {stage}"),
        LineEvent::Flash { .. } => return None,
        LineEvent::Identified {
            port,
            mac,
            registration_id,
        } => format!("{port}  {mac}  {registration_id}"),
        LineEvent::Unit { report, tally } => {
            let mut line = verdict(report);
            if let (Outcome::Failed, Some(hint)) = (report.outcome, &report.hint) {
                line.push_str(&format!("\n      hint: {hint}"));
            }
            line.push_str(&format!("\nline: {}", counters(tally)));
            line
        }
        LineEvent::RecordFailed {
            port,
            message,
            error_code,
        } => format!(
            "ERROR {port}  the unit could not be recorded: {message} [{error_code}]; the line stops"
        ),
        LineEvent::Waiting { port, reason, .. } => format!("{port}  {}", waiting(*reason)),
        LineEvent::Stopping { reason, in_flight } => format!(
            "line: {}: starting no new units; {in_flight} in flight finishing",
            stop_reason(*reason)
        ),
        LineEvent::DatabaseOffline {
            error_code,
            message,
        } => format!(
            "ERROR line: {message} [{error_code}]: starting no new unit; finished units are recorded when it answers"
        ),
        LineEvent::DatabaseBack { seconds } => {
            format!("line: the database answers again after {seconds:.1} s: resuming")
        }
        LineEvent::RecordHeld { port, mac } => format!(
            "{port}  {}  NOT recorded yet: waiting for the database (not PASS until recorded)",
            mac.map_or_else(|| "(MAC unknown)".to_owned(), |m| m.to_string())
        ),
        LineEvent::DpsRetried {
            assigned,
            failed,
            still_pending,
        } => format!(
            "line: DPS retry of pending units: {assigned} assigned, {failed} refused, {still_pending} still pending"
        ),
        LineEvent::Stopped { tally, abandoned } => {
            let mut line = format!("line: stopped: {}", counters(tally));
            if *abandoned > 0 {
                line.push_str(&format!(
                    "; {abandoned} unit(s) did not finish in time and are recorded interrupted"
                ));
            }
            line
        }
    })
}

/// The live terminal view.
pub(super) struct Live {
    multi: MultiProgress,
    header: ProgressBar,
    ports: BTreeMap<String, ProgressBar>,
    /// The unit on each port while it runs: `MAC  registration ID`.
    units: BTreeMap<String, String>,
    failures: VecDeque<String>,
    footer: ProgressBar,
    /// The header's name for the batch.
    batch: String,
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

impl Live {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10));
        let header = multi.add(ProgressBar::new(1));
        header.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30.green/white}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let footer = multi.add(ProgressBar::new_spinner());
        footer.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Live {
            multi,
            header,
            ports: BTreeMap::new(),
            units: BTreeMap::new(),
            failures: VecDeque::new(),
            footer,
            batch: String::new(),
        }
    }

    fn port(&mut self, port: &str) -> &ProgressBar {
        if !self.ports.contains_key(port) {
            let bar = self.multi.insert_before(&self.footer, ProgressBar::new(1));
            bar.set_style(idle_style());
            // The port's name (ttyUSB0) keeps the view narrow; logs and JSON keep the path.
            let name = std::path::Path::new(port)
                .file_name()
                .map_or_else(|| port.to_owned(), |n| n.to_string_lossy().into_owned());
            bar.set_prefix(name);
            bar.set_message("waiting for a device");
            self.ports.insert(port.to_owned(), bar);
        }
        &self.ports[port]
    }

    fn tally(&self, tally: &Tally) {
        self.header.set_length(tally.target.max(1) as u64);
        self.header.set_position(tally.provisioned.max(0) as u64);
        self.header.set_message(counters(tally));
    }

    fn event(&mut self, event: &LineEvent) {
        match event {
            LineEvent::Started { batch, tally, .. } => {
                self.batch = format!("batch {batch}");
                self.header.set_prefix(self.batch.clone());
                self.tally(tally);
            }
            LineEvent::PortUp { port } => self.port(port).set_message("device connected"),
            LineEvent::PortGone { port } => {
                let bar = self.port(port);
                bar.set_style(idle_style());
                bar.set_message("empty: plug in the next unit");
            }
            LineEvent::Stage { port, stage } => {
                if *stage == Stage::Connect {
                    self.units.remove(port);
                }
                let unit = self.units.get(port).cloned().unwrap_or_default();
                let bar = self.port(port).clone();
                if *stage == Stage::Flash {
                    bar.set_style(flash_style());
                    bar.set_position(0);
                } else {
                    bar.set_style(idle_style());
                }
                bar.set_message(format!("{stage}…  {unit}"));
            }
            LineEvent::Identified {
                port,
                mac,
                registration_id,
            } => {
                let unit = format!("{mac}  {registration_id}");
                self.port(port).set_message(format!("identify…  {unit}"));
                self.units.insert(port.clone(), unit);
            }
            LineEvent::Flash { port, done, blocks } => {
                let bar = self.port(port);
                bar.set_length(*blocks as u64);
                bar.set_position(*done as u64);
            }
            LineEvent::Unit { report, tally } => {
                let bar = self.port(&report.port).clone();
                bar.set_style(idle_style());
                let (word, rest) = verdict_parts(report);
                let colour = match report.outcome {
                    Outcome::Provisioned => GREEN,
                    Outcome::Failed => RED,
                    Outcome::Skipped => YELLOW,
                };
                bar.set_message(format!("{colour}{word}{RESET}  {rest}"));
                if report.outcome == Outcome::Failed {
                    self.failures.push_front(verdict(report));
                    self.failures.truncate(3);
                    let text: Vec<String> = self
                        .failures
                        .iter()
                        .map(|f| format!("{RED}last failures:{RESET} {f}"))
                        .collect();
                    self.footer.set_message(text.join("\n"));
                }
                self.tally(tally);
            }
            LineEvent::RecordFailed {
                port,
                message,
                error_code,
            } => {
                self.port(port).set_message(format!(
                    "{RED}ERROR{RESET} not recorded: {message} [{error_code}]"
                ));
            }
            LineEvent::Waiting { port, reason, .. } => {
                if matches!(reason, WaitReason::BatchFull | WaitReason::DatabaseOffline) {
                    self.port(port).set_message(waiting(*reason));
                }
            }
            LineEvent::DatabaseOffline { .. } => {
                if let Some(line) = plain(event) {
                    self.header.set_prefix("DATABASE UNREACHABLE");
                    self.footer.set_message(format!("{RED}{line}{RESET}"));
                }
            }
            LineEvent::DatabaseBack { .. } => {
                if let Some(line) = plain(event) {
                    self.header.set_prefix(self.batch.clone());
                    self.footer.set_message(line);
                }
            }
            LineEvent::RecordHeld { port, mac } => {
                let mac = mac.map_or_else(String::new, |m| m.to_string());
                self.port(port).set_message(format!(
                    "{YELLOW}HOLD{RESET}  {mac}  not recorded yet: waiting for the database"
                ));
            }
            LineEvent::Stopping { reason, in_flight } => {
                self.header
                    .set_prefix(format!("{} ({in_flight} finishing)", stop_reason(*reason)));
            }
            LineEvent::DpsRetried { .. } => {
                if let Some(line) = plain(event) {
                    self.footer.set_message(line);
                }
            }
            LineEvent::Stopped { tally, .. } => self.tally(tally),
        }
    }

    fn finish(self) {
        for bar in self.ports.values() {
            bar.abandon();
        }
        self.footer.abandon();
        self.header.abandon();
    }
}

fn idle_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:<10} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn flash_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:<10} [{bar:20.cyan/blue}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_as_words() {
        let tally = Tally {
            target: 100,
            provisioned: 40,
            passed: 40,
            failed: 2,
            in_flight: 3,
            units_per_minute: Some(12.34),
            eta_seconds: Some(290.0),
            ..Tally::default()
        };
        assert_eq!(
            counters(&tally),
            "40/100 provisioned, 2 failed, 3 in flight, 12.3 units/min, ETA 4m50s"
        );
    }

    #[test]
    fn progress_blocks_are_not_logged_line_by_line() {
        let event = LineEvent::Flash {
            port: "p".to_owned(),
            done: 1,
            blocks: 2,
        };
        assert_eq!(plain(&event), None);
        let event = LineEvent::Waiting {
            port: "/dev/ttyUSB0".to_owned(),
            reason: WaitReason::UnitDone,
            mac: None,
        };
        assert_eq!(
            plain(&event).unwrap(),
            "/dev/ttyUSB0  done: unplug it and plug in the next unit"
        );
    }
}
