//! The line as the dashboard shows it: each station's batch counters and each port's state.
//! Pure: a board is built from the daemon's [`LineEvent`]s as they come (`station run --http`)
//! or from the database's latest attempts (`station serve`), and the pages render it.

use std::collections::BTreeMap;

use crate::identity::{Mac, RegistrationId};
use crate::line::{LineEvent, StopReason, Tally, WaitReason};
use crate::provision::{Outcome, UnitReport};
use crate::record::{AttemptOutcome, Batch, BatchStatus, DpsStatus, PortActivity, Stage};

/// How a unit's last attempt on a port ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Flashed, verified and recorded provisioned.
    Pass,
    /// Failed (or was interrupted) at a stage.
    Fail,
    /// Already provisioned in this batch and left alone.
    Skip,
}

impl Verdict {
    /// `PASS`, `FAIL`, `SKIP`.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// A unit a port worked on: who it is, and how it ended once it did.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOnPort {
    /// Its MAC, once read.
    pub mac: Option<Mac>,
    /// Its registration ID, once formed.
    pub registration_id: Option<RegistrationId>,
    /// The stage it is in (working) or failed at.
    pub stage: Option<Stage>,
    /// Flash progress: blocks written of blocks, while flashing.
    pub progress: Option<(usize, usize)>,
    /// How it ended; `None` while it runs.
    pub verdict: Option<Verdict>,
    /// The failure's stable code.
    pub error_code: Option<String>,
    /// The failure (or skip) in words.
    pub message: Option<String>,
    /// What the operator should do about a failure.
    pub hint: Option<String>,
    /// Seconds the attempt took.
    pub seconds: Option<f64>,
    /// DPS pre-verification: `assigned to HUB`, `pending`, ...
    pub dps: Option<String>,
}

impl UnitOnPort {
    fn new() -> Self {
        UnitOnPort {
            mac: None,
            registration_id: None,
            stage: Some(Stage::Connect),
            progress: None,
            verdict: None,
            error_code: None,
            message: None,
            hint: None,
            seconds: None,
            dps: None,
        }
    }

    fn finished(report: &UnitReport) -> Self {
        UnitOnPort {
            mac: report.mac,
            registration_id: report.registration_id.clone(),
            stage: report.stage,
            progress: None,
            verdict: Some(match report.outcome {
                Outcome::Provisioned => Verdict::Pass,
                Outcome::Failed => Verdict::Fail,
                Outcome::Skipped => Verdict::Skip,
            }),
            error_code: report.error_code.clone(),
            message: report.message.clone(),
            hint: report.hint.clone(),
            seconds: Some(report.seconds),
            dps: dps_words(report.dps_status, report.assigned_hub.as_deref()),
        }
    }
}

fn dps_words(status: DpsStatus, hub: Option<&str>) -> Option<String> {
    match (status, hub) {
        (DpsStatus::NotRequested, _) => None,
        (DpsStatus::Assigned, Some(hub)) => Some(format!("DPS assigned to {hub}")),
        (status, _) => Some(format!("DPS {}", status.as_str())),
    }
}

/// What the dashboard knows about one port.
#[derive(Debug, Clone, PartialEq)]
pub struct PortView {
    /// The port's path.
    pub port: String,
    /// Whether a device node is there (`false`: unplugged, the port is empty).
    pub present: bool,
    /// The unit being worked on, or the last one.
    pub unit: Option<UnitOnPort>,
    /// Why the port waits, when it does for a reason other than its unit being done.
    pub waiting: Option<WaitReason>,
    /// When this changed last (stored time).
    pub since: String,
}

impl PortView {
    fn new(port: &str, now: &str) -> Self {
        PortView {
            port: port.to_owned(),
            present: true,
            unit: None,
            waiting: None,
            since: now.to_owned(),
        }
    }

    /// The state in one word: `empty`, `ready`, `waiting`, a stage's name, `PASS`, `FAIL` or
    /// `SKIP`.
    pub fn state(&self) -> &'static str {
        match (&self.unit, self.present) {
            (Some(unit), _) if unit.verdict.is_none() => {
                unit.stage.map_or("connect", Stage::as_str)
            }
            (_, false) => "empty",
            (_, true) if self.waiting == Some(WaitReason::BatchFull) => "waiting",
            (Some(unit), true) => unit.verdict.map_or("ready", Verdict::word),
            (None, true) => "ready",
        }
    }
}

/// The counters shown for a station's batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// The batch's target.
    pub target: i64,
    /// Units of the batch provisioned.
    pub provisioned: i64,
    /// Units failed (this daemon's, live; the batch's units whose last write failed, stored).
    pub failed: i64,
    /// Units in flight.
    pub in_flight: i64,
    /// Units per minute.
    pub units_per_minute: Option<f64>,
    /// Seconds until the target at that rate.
    pub eta_seconds: Option<f64>,
}

impl From<&Tally> for Counters {
    fn from(tally: &Tally) -> Self {
        Counters {
            target: tally.target,
            provisioned: tally.provisioned,
            failed: i64::try_from(tally.failed).unwrap_or(i64::MAX),
            in_flight: i64::try_from(tally.in_flight).unwrap_or(i64::MAX),
            units_per_minute: tally.units_per_minute,
            eta_seconds: tally.eta_seconds,
        }
    }
}

impl From<&BatchStatus> for Counters {
    fn from(status: &BatchStatus) -> Self {
        Counters {
            target: status.batch.target,
            provisioned: status.provisioned,
            failed: status.failed,
            in_flight: status.in_progress,
            units_per_minute: None,
            eta_seconds: None,
        }
    }
}

/// One station of the line: its batch, counters and ports.
#[derive(Debug, Clone, PartialEq)]
pub struct StationBoard {
    /// `[station] id`.
    pub station_id: String,
    /// The batch it provisions, if any is open.
    pub batch: Option<String>,
    /// The batch's counters.
    pub counters: Counters,
    /// Its ports, by path.
    pub ports: BTreeMap<String, PortView>,
    /// What the daemon said last about stopping (`stopping: batch complete`), live only.
    pub note: Option<String>,
}

/// What one event changed on a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The counters or the note.
    Counters,
    /// One port's row.
    Port(String),
}

impl StationBoard {
    /// An empty board for a station and its batch.
    pub fn new(station_id: &str, batch: Option<&Batch>) -> Self {
        StationBoard {
            station_id: station_id.to_owned(),
            batch: batch.map(|b| b.name.clone()),
            counters: Counters {
                target: batch.map_or(0, |b| b.target),
                ..Counters::default()
            },
            ports: BTreeMap::new(),
            note: None,
        }
    }

    fn port(&mut self, port: &str, now: &str) -> &mut PortView {
        let view = self
            .ports
            .entry(port.to_owned())
            .or_insert_with(|| PortView::new(port, now));
        view.since = now.to_owned();
        view
    }

    /// Applies one of the daemon's events at time `now`; says what changed.
    pub fn apply(&mut self, event: &LineEvent, now: &str) -> Vec<Change> {
        let port_changed = |port: &str| vec![Change::Port(port.to_owned())];
        match event {
            LineEvent::Started { batch, tally, .. } => {
                self.batch = Some(batch.clone());
                self.counters = Counters::from(tally);
                self.note = None;
                vec![Change::Counters]
            }
            LineEvent::PortUp { port } => {
                let view = self.port(port, now);
                view.present = true;
                port_changed(port)
            }
            LineEvent::PortGone { port } => {
                let view = self.port(port, now);
                view.present = false;
                view.waiting = None;
                if let Some(unit) = &mut view.unit
                    && unit.verdict.is_none()
                {
                    // Unplugged mid-unit: its verdict comes with the unit event.
                    unit.progress = None;
                }
                port_changed(port)
            }
            LineEvent::Stage { port, stage } => {
                let view = self.port(port, now);
                view.present = true;
                view.waiting = None;
                if *stage == Stage::Connect
                    || view.unit.as_ref().is_none_or(|u| u.verdict.is_some())
                {
                    view.unit = Some(UnitOnPort::new());
                }
                if let Some(unit) = &mut view.unit {
                    unit.stage = Some(*stage);
                    unit.progress = (*stage == Stage::Flash).then_some((0, 0));
                }
                port_changed(port)
            }
            LineEvent::Identified {
                port,
                mac,
                registration_id,
            } => {
                let view = self.port(port, now);
                let unit = view.unit.get_or_insert_with(UnitOnPort::new);
                unit.mac = Some(*mac);
                unit.registration_id = Some(registration_id.clone());
                port_changed(port)
            }
            LineEvent::Flash { port, done, blocks } => {
                let view = self.port(port, now);
                let unit = view.unit.get_or_insert_with(UnitOnPort::new);
                unit.stage = Some(Stage::Flash);
                unit.progress = Some((*done, *blocks));
                port_changed(port)
            }
            LineEvent::Unit { report, tally } => {
                self.counters = Counters::from(tally);
                let view = self.port(&report.port, now);
                view.unit = Some(UnitOnPort::finished(report));
                vec![Change::Counters, Change::Port(report.port.clone())]
            }
            LineEvent::RecordFailed {
                port,
                message,
                error_code,
            } => {
                let view = self.port(port, now);
                let unit = view.unit.get_or_insert_with(UnitOnPort::new);
                unit.verdict = Some(Verdict::Fail);
                unit.stage = Some(Stage::Record);
                unit.progress = None;
                unit.error_code = Some(error_code.clone());
                unit.message = Some(format!("not recorded: {message}; the line stops"));
                port_changed(port)
            }
            LineEvent::Waiting { port, reason, .. } => {
                let view = self.port(port, now);
                view.waiting = Some(*reason);
                port_changed(port)
            }
            LineEvent::Stopping { reason, .. } => {
                self.note = Some(
                    match reason {
                        StopReason::Signal => "stopping: stop requested",
                        StopReason::BatchComplete => "stopping: batch complete",
                    }
                    .to_owned(),
                );
                vec![Change::Counters]
            }
            LineEvent::DpsRetried { .. } => Vec::new(),
            LineEvent::DatabaseOffline {
                error_code,
                message,
            } => {
                self.note = Some(format!(
                    "database unreachable: {message} [{error_code}]: starting no new unit; \
                     finished units are recorded when it answers"
                ));
                vec![Change::Counters]
            }
            LineEvent::DatabaseBack { .. } => {
                self.note = None;
                vec![Change::Counters]
            }
            LineEvent::RecordHeld { port, mac } => {
                let view = self.port(port, now);
                let unit = view.unit.get_or_insert_with(UnitOnPort::new);
                if let Some(mac) = mac {
                    unit.mac = Some(*mac);
                }
                unit.stage = Some(Stage::Record);
                unit.progress = None;
                unit.message = Some(
                    "not recorded yet: waiting for the database (not PASS until recorded)".into(),
                );
                port_changed(port)
            }
            LineEvent::Stopped { tally, .. } => {
                self.counters = Counters::from(tally);
                self.note = Some("stopped".to_owned());
                vec![Change::Counters]
            }
        }
    }

    /// Boards of every station with an open batch or recent activity, from the database: the
    /// newest attempt on each port says what it does or did last (`activity` newest first, as
    /// [`crate::store::Store::port_activity`] gives it).
    pub fn from_records(
        open: &[BatchStatus],
        activity: &[PortActivity],
        batch_names: &BTreeMap<i64, String>,
    ) -> Vec<StationBoard> {
        let mut boards: BTreeMap<String, StationBoard> = BTreeMap::new();
        for status in open {
            let mut board = StationBoard::new(&status.batch.station_id, Some(&status.batch));
            board.counters = Counters::from(status);
            boards.insert(status.batch.station_id.clone(), board);
        }
        for attempt in activity {
            let board = boards
                .entry(attempt.station_id.clone())
                .or_insert_with(|| StationBoard {
                    batch: batch_names.get(&attempt.batch_id).cloned(),
                    ..StationBoard::new(&attempt.station_id, None)
                });
            if board.ports.contains_key(&attempt.port) {
                continue;
            }
            let finished = attempt.outcome != AttemptOutcome::InProgress;
            let unit = UnitOnPort {
                mac: attempt.mac,
                registration_id: attempt.registration_id.clone(),
                stage: attempt.stage,
                progress: None,
                verdict: match attempt.outcome {
                    AttemptOutcome::InProgress => None,
                    AttemptOutcome::Provisioned => Some(Verdict::Pass),
                    AttemptOutcome::Failed | AttemptOutcome::Interrupted => Some(Verdict::Fail),
                },
                error_code: attempt.error_code.as_ref().map(ToString::to_string),
                message: attempt.message.clone(),
                hint: None,
                seconds: None,
                dps: None,
            };
            board.ports.insert(
                attempt.port.clone(),
                PortView {
                    port: attempt.port.clone(),
                    present: true,
                    unit: Some(unit),
                    waiting: None,
                    since: if finished {
                        attempt.finished_at.clone().unwrap_or_default()
                    } else {
                        attempt.started_at.clone()
                    },
                },
            );
        }
        boards.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::Timings;

    const NOW: &str = "2026-12-01T08:00:00.000Z";

    fn mac() -> Mac {
        "24:0a:c4:00:00:01".parse().unwrap()
    }

    fn report(outcome: Outcome) -> UnitReport {
        UnitReport {
            port: "/dev/ttyUSB0".to_owned(),
            batch: "WO-1".to_owned(),
            mac: Some(mac()),
            registration_id: Some(RegistrationId::new("sensor-240ac4000001").unwrap()),
            outcome,
            stage: (outcome == Outcome::Failed).then_some(Stage::Flash),
            error_code: (outcome == Outcome::Failed)
                .then(|| "station::device::unplugged".to_owned()),
            message: (outcome == Outcome::Failed).then(|| "the device went away".to_owned()),
            hint: (outcome == Outcome::Failed).then(|| "Check the cable.".to_owned()),
            seconds: 0.5,
            timings: Timings::default(),
            chip: None,
            image_sha256: None,
            key_id: None,
            certificate: None,
            reprovision: false,
            attempt_id: 1,
            dps_status: DpsStatus::Assigned,
            assigned_hub: Some("hub.azure-devices.net".to_owned()),
            device_id: None,
            dps_substatus: None,
            dps_error: None,
            enrollment: crate::record::EnrollmentKind::Group,
            hub_status: crate::record::HubStatus::NotRequested,
            hub_error: None,
            warning: None,
            boot_log: None,
        }
    }

    #[test]
    fn a_port_goes_through_its_stages_to_a_verdict_that_outlives_the_unplug() {
        let mut board = StationBoard::new("st1", None);
        let port = "/dev/ttyUSB0".to_owned();
        board.apply(&LineEvent::PortUp { port: port.clone() }, NOW);
        assert_eq!(board.ports[&port].state(), "ready");
        board.apply(
            &LineEvent::Stage {
                port: port.clone(),
                stage: Stage::Connect,
            },
            NOW,
        );
        assert_eq!(board.ports[&port].state(), "connect");
        board.apply(
            &LineEvent::Identified {
                port: port.clone(),
                mac: mac(),
                registration_id: RegistrationId::new("sensor-240ac4000001").unwrap(),
            },
            NOW,
        );
        let changes = board.apply(
            &LineEvent::Flash {
                port: port.clone(),
                done: 2,
                blocks: 5,
            },
            NOW,
        );
        assert_eq!(changes, vec![Change::Port(port.clone())]);
        let view = &board.ports[&port];
        assert_eq!(view.state(), "flash");
        assert_eq!(view.unit.as_ref().unwrap().progress, Some((2, 5)));
        assert_eq!(view.unit.as_ref().unwrap().mac, Some(mac()));
        let tally = Tally {
            target: 10,
            provisioned: 1,
            passed: 1,
            ..Tally::default()
        };
        let changes = board.apply(
            &LineEvent::Unit {
                report: Box::new(report(Outcome::Provisioned)),
                tally,
            },
            NOW,
        );
        assert_eq!(changes, vec![Change::Counters, Change::Port(port.clone())]);
        assert_eq!(board.ports[&port].state(), "PASS");
        assert_eq!(board.counters.provisioned, 1);
        board.apply(&LineEvent::PortGone { port: port.clone() }, NOW);
        let view = &board.ports[&port];
        assert_eq!(view.state(), "empty");
        assert_eq!(
            view.unit.as_ref().unwrap().verdict,
            Some(Verdict::Pass),
            "the last verdict stays shown"
        );
        board.apply(
            &LineEvent::Stage {
                port: port.clone(),
                stage: Stage::Connect,
            },
            NOW,
        );
        let unit = board.ports[&port].unit.clone().unwrap();
        assert_eq!((unit.verdict, unit.mac), (None, None), "a new unit");
    }

    #[test]
    fn a_failure_keeps_its_code_message_and_hint() {
        let mut board = StationBoard::new("st1", None);
        board.apply(
            &LineEvent::Unit {
                report: Box::new(report(Outcome::Failed)),
                tally: Tally::default(),
            },
            NOW,
        );
        let view = &board.ports["/dev/ttyUSB0"];
        assert_eq!(view.state(), "FAIL");
        let unit = view.unit.as_ref().unwrap();
        assert_eq!(
            unit.error_code.as_deref(),
            Some("station::device::unplugged")
        );
        assert_eq!(unit.hint.as_deref(), Some("Check the cable."));
        assert_eq!(unit.stage, Some(Stage::Flash));
    }

    #[test]
    fn records_give_each_port_its_newest_attempt() {
        let attempt = |id, port: &str, outcome, stage| PortActivity {
            id,
            station_id: "st1".to_owned(),
            batch_id: 1,
            port: port.to_owned(),
            mac: Some(mac()),
            registration_id: None,
            started_at: NOW.to_owned(),
            finished_at: (outcome != AttemptOutcome::InProgress).then(|| NOW.to_owned()),
            outcome,
            stage,
            error_code: None,
            message: None,
        };
        let activity = vec![
            attempt(3, "a", AttemptOutcome::InProgress, Some(Stage::Flash)),
            attempt(2, "b", AttemptOutcome::Failed, Some(Stage::Connect)),
            attempt(1, "a", AttemptOutcome::Provisioned, None),
        ];
        let names = BTreeMap::from([(1, "WO-1".to_owned())]);
        let boards = StationBoard::from_records(&[], &activity, &names);
        assert_eq!(boards.len(), 1);
        assert_eq!(boards[0].batch.as_deref(), Some("WO-1"));
        assert_eq!(boards[0].ports["a"].state(), "flash");
        assert_eq!(boards[0].ports["b"].state(), "FAIL");
    }
}
