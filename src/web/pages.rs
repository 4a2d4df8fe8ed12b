//! The dashboard's pages, rendered on the server (maud: HTML checked at compile time, every
//! value escaped). The live line view swaps the same fragments these functions render, so the
//! page and its updates cannot drift apart.

use maud::{DOCTYPE, Markup, html};

use super::board::{PortView, StationBoard, Verdict};
use super::{chart, dom_id};
use crate::line::WaitReason;
use crate::record::{
    Attempt, AttemptOutcome, AuditEntry, Batch, BatchStatus, CertificateRow, MinuteCount, Unit,
};
use crate::store::ChainReport;

/// The pages, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The line.
    Line,
    /// A batch.
    Batch,
    /// Unit search.
    Unit,
    /// QA manifests.
    Qa,
    /// The audit chain.
    Audit,
    /// The login form.
    Login,
}

/// What every page shows around its content.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Where the figures come from: `live from the line daemon` or `from the database`.
    pub source: &'a str,
    /// The station serving the page.
    pub station_id: &'a str,
    /// The time of rendering (stored form).
    pub now: &'a str,
}

fn layout(frame: &Frame<'_>, nav: Nav, title: &str, body: Markup) -> Markup {
    let item = |target: Nav, href: &str, name: &str| {
        html! {
            a href=(href) aria-current=[(target == nav).then_some("page")] { (name) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · station" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body {
                header.top {
                    span.brand { "station" }
                    @if nav != Nav::Login {
                        nav {
                            (item(Nav::Line, "/", "Line"))
                            (item(Nav::Batch, "/batch", "Batch"))
                            (item(Nav::Unit, "/unit", "Units"))
                            (item(Nav::Qa, "/qa", "QA"))
                            (item(Nav::Audit, "/audit", "Audit"))
                        }
                    }
                    span.source #live-status { (frame.source) }
                }
                main { (body) }
                footer {
                    "Read-only supervisor dashboard of station " (frame.station_id)
                    " · rendered " (frame.now)
                }
            }
        }
    }
}

/// A time as stored, shown without its date when it is today's (`08:01:02`).
fn clock(at: &str, now: &str) -> String {
    match (at.get(..10), now.get(..10), at.get(11..19)) {
        (Some(day), Some(today), Some(time)) if day == today => time.to_owned(),
        _ => at.replace('T', " ").trim_end_matches('Z').to_owned(),
    }
}

fn minutes(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

/// The line page: one card per station, one row per port.
pub fn line(frame: &Frame<'_>, boards: &[StationBoard], live_url: &str) -> Markup {
    layout(
        frame,
        Nav::Line,
        "Line",
        html! {
            h1 { "Line" }
            div #stations data-live=(live_url) {
                @if boards.is_empty() {
                    p.empty { "No station has an open batch or a recent attempt." }
                }
                @for board in boards { (station(board)) }
            }
        },
    )
}

fn station(board: &StationBoard) -> Markup {
    html! {
        section.station {
            (counters(board))
            table.ports {
                thead { tr { th { "Port" } th { "State" } th { "Unit" } th { "Detail" } th { "Since" } } }
                tbody #(dom_id("ports", &board.station_id, "")) {
                    @if board.ports.is_empty() {
                        tr.none { td colspan="5" { "no port seen yet" } }
                    }
                    @for view in board.ports.values() { (port_row(&board.station_id, view)) }
                }
            }
        }
    }
}

/// A station's heading and batch counters (swapped live).
pub fn counters(board: &StationBoard) -> Markup {
    let c = &board.counters;
    html! {
        div.counters #(dom_id("counters", &board.station_id, "")) {
            h2 {
                "Station " (board.station_id)
                @if let Some(batch) = &board.batch {
                    " · batch " a href=(format!("/batch?name={}", urlencode(batch))) { (batch) }
                } @else {
                    " · no open batch"
                }
            }
            @if c.target > 0 {
                progress max=(c.target) value=(c.provisioned.min(c.target)) {}
            }
            dl.figures {
                div { dt { "provisioned" } dd.provisioned { (c.provisioned) " / " (c.target) } }
                div { dt { "failed" } dd.failed { (c.failed) } }
                div { dt { "in flight" } dd.in-flight { (c.in_flight) } }
                div { dt { "units/min" } dd.rate { (c.units_per_minute.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}"))) } }
                div { dt { "ETA" } dd.eta {
                    @match c.eta_seconds.filter(|_| c.provisioned < c.target) {
                        Some(eta) => (minutes(eta)),
                        None => "–",
                    }
                } }
            }
            @if let Some(note) = &board.note { p.note { (note) } }
        }
    }
}

/// One port's row (swapped live).
pub fn port_row(station_id: &str, view: &PortView) -> Markup {
    let state = view.state();
    let class = match view.unit.as_ref().and_then(|u| u.verdict) {
        Some(Verdict::Pass) if view.present => "pass",
        Some(Verdict::Fail) if view.present => "fail",
        Some(Verdict::Skip) if view.present => "skip",
        _ if view.unit.as_ref().is_some_and(|u| u.verdict.is_none()) => "busy",
        _ if !view.present => "empty",
        _ => "idle",
    };
    let name = std::path::Path::new(&view.port)
        .file_name()
        .map_or_else(|| view.port.clone(), |n| n.to_string_lossy().into_owned());
    html! {
        tr #(dom_id("port", station_id, &view.port)) class=(class) data-port=(view.port) data-state=(state) {
            td.port title=(view.port) { (name) }
            td.state { span.badge { (state) } }
            td.unit {
                @if let Some(unit) = &view.unit {
                    @if let Some(mac) = unit.mac {
                        a.mac href=(format!("/unit?q={mac}")) { (mac) }
                    }
                    @if let Some(id) = &unit.registration_id { br; span.regid { (id) } }
                }
            }
            td.detail {
                @if let Some(unit) = &view.unit {
                    @if unit.verdict.is_some() && !view.present {
                        span.last { "last: " (unit.verdict.map_or("", Verdict::word)) " " }
                    }
                    @if let Some((done, blocks)) = unit.progress {
                        progress max=(blocks.max(1)) value=(done) {}
                        " " (done) "/" (blocks) " blocks"
                    }
                    @match unit.verdict {
                        Some(Verdict::Pass) => {
                            @if let Some(seconds) = unit.seconds { (format!("{seconds:.2} s")) }
                            @if let Some(dps) = &unit.dps { " · " (dps) }
                        }
                        Some(Verdict::Fail) => {
                            @if let Some(stage) = unit.stage { "at " (stage.as_str()) ": " }
                            @if let Some(message) = &unit.message { (message) }
                            @if let Some(code) = &unit.error_code { " " code.error { (code) } }
                            @if let Some(hint) = &unit.hint { br; span.hint { (hint) } }
                        }
                        Some(Verdict::Skip) => { @if let Some(message) = &unit.message { (message) } }
                        None => {}
                    }
                }
                @match view.waiting {
                    Some(WaitReason::BatchFull) => span.wait { " the batch's target is covered" },
                    Some(WaitReason::UnitDone) if view.present => span.wait { " unplug it, plug in the next" },
                    Some(WaitReason::UnitFailed) if view.present => span.wait { " take it off (replug to retry)" },
                    _ => {}
                }
            }
            td.since { (view.since.get(11..19).unwrap_or(&view.since)) }
        }
    }
}

/// The batch page.
pub fn batch(
    frame: &Frame<'_>,
    status: Option<&BatchStatus>,
    minutes_: &[MinuteCount],
    batches: &[Batch],
) -> Markup {
    let body = match status {
        None => html! { h1 { "Batch" } p.empty { "No batch has been opened yet." } },
        Some(status) => {
            let batch = &status.batch;
            let (rate, eta) = rate_and_eta(status);
            html! {
                h1 { "Batch " (batch.name) }
                p.meta {
                    "station " (batch.station_id) " · operator " (batch.operator)
                    " · opened " (clock(&batch.opened_at, frame.now))
                    @if let Some(closed) = &batch.closed_at { " · closed " (clock(closed, frame.now)) } @else { " · open" }
                }
                progress max=(batch.target) value=(status.provisioned.min(batch.target)) {}
                dl.figures #batch-figures {
                    div { dt { "target" } dd { (batch.target) } }
                    div { dt { "provisioned" } dd.provisioned { (status.provisioned) } }
                    div { dt { "failed units" } dd.failed { (status.failed) } }
                    div { dt { "failed attempts" } dd { (status.failed_attempts) } }
                    div { dt { "in flight" } dd.in-flight { (status.in_progress) } }
                    div { dt { "interrupted" } dd { (status.interrupted) } }
                    div { dt { "units/min" } dd.rate { (rate.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}"))) } }
                    div { dt { "ETA" } dd.eta { (eta.map_or_else(|| "–".to_owned(), minutes)) } }
                }
                h2 { "Units per minute" }
                (chart::units_per_minute(minutes_))
                h2 { "Failures by error code" }
                (chart::failures_by_code(&status.failures))
            }
        }
    };
    layout(
        frame,
        Nav::Batch,
        "Batch",
        html! {
            (body)
            @if !batches.is_empty() {
                h2 { "Batches" }
                table.list {
                    thead { tr { th { "Batch" } th { "Station" } th { "Target" } th { "Opened" } th { "Closed" } } }
                    tbody {
                        @for b in batches {
                            tr {
                                td { a href=(format!("/batch?name={}", urlencode(&b.name))) { (b.name) } }
                                td { (b.station_id) } td { (b.target) }
                                td { (clock(&b.opened_at, frame.now)) }
                                td { (b.closed_at.as_deref().map_or_else(|| "open".to_owned(), |c| clock(c, frame.now))) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The batch's rate (units per minute between its first and last unit provisioned, on any
/// station: what `batch status` prints) and, while it is open, the seconds left to its target.
pub fn rate_and_eta(status: &BatchStatus) -> (Option<f64>, Option<f64>) {
    let Some(rate) = status.units_per_minute.filter(|r| *r > 0.0) else {
        return (None, None);
    };
    let left = (status.batch.target - status.provisioned).max(0) as f64;
    let eta = (status.batch.closed_at.is_none() && left > 0.0).then(|| left / rate * 60.0);
    (Some(rate), eta)
}

/// What the unit page found.
#[derive(Debug, Default)]
pub struct UnitFound {
    /// The unit.
    pub unit: Option<Unit>,
    /// Its batch's name.
    pub batch: Option<String>,
    /// Its attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// Its certificates (X.509).
    pub certificates: Vec<CertificateRow>,
    /// Audit entries about it.
    pub audit: Vec<AuditEntry>,
}

/// The unit page: a search form and, for a query, what was found.
pub fn unit(
    frame: &Frame<'_>,
    query: Option<&str>,
    problem: Option<&str>,
    found: &UnitFound,
) -> Markup {
    layout(
        frame,
        Nav::Unit,
        "Units",
        html! {
            h1 { "Units" }
            form.search method="get" action="/unit" {
                label for="q" { "MAC or registration ID" }
                input #q type="search" name="q" value=[query] placeholder="24:0a:c4:12:34:56 or sensor-240ac4123456" autofocus;
                button type="submit" { "Search" }
            }
            @if let Some(problem) = problem { p.problem { (problem) } }
            @if let Some(unit) = &found.unit { (unit_facts(frame, unit, found)) }
            @else if query.is_some() && problem.is_none() && found.attempts.is_empty() {
                p.empty { "No unit with that MAC or registration ID is recorded." }
            }
            @if !found.attempts.is_empty() {
                h2 { "Attempts" }
                table.list #attempts {
                    thead { tr { th { "#" } th { "Started" } th { "Station · port" } th { "Operator" } th { "Outcome" } th { "Stage" } th { "Error" } th { "Seconds per stage" } } }
                    tbody {
                        @for a in &found.attempts {
                            tr class=(outcome_class(a.outcome)) {
                                td { (a.id) }
                                td { (clock(&a.started_at, frame.now)) }
                                td { (a.station_id) " · " (a.port) }
                                td { (a.operator) }
                                td { (a.outcome.as_str()) @if a.reprovision { " (re-provision)" } }
                                td { (a.stage.map_or("", |s| s.as_str())) }
                                td {
                                    @if let Some(code) = &a.error_code { code.error { (code) } br; }
                                    @if let Some(message) = &a.message { (message) }
                                }
                                td.timings { (timings(&a.timings)) }
                            }
                        }
                    }
                }
            }
            @if !found.certificates.is_empty() {
                h2 { "Certificates" }
                table.list {
                    thead { tr { th { "Issued" } th { "Serial" } th { "SHA-256 thumbprint" } th { "Not after" } th { "Key" } } }
                    tbody {
                        @for c in &found.certificates {
                            tr { td { (clock(&c.issued_at, frame.now)) } td.mono { (c.serial) } td.mono { (c.thumbprint) } td { (c.not_after) } td { (c.key_type) } }
                        }
                    }
                }
            }
            @if !found.audit.is_empty() {
                h2 { "Audit entries" }
                (audit_table(frame, &found.audit))
            }
        },
    )
}

fn unit_facts(frame: &Frame<'_>, unit: &Unit, found: &UnitFound) -> Markup {
    html! {
        h2 { (unit.mac) " · " (unit.registration_id) }
        dl.facts #unit-facts {
            dt { "state" } dd class=(unit.state.as_str()) { (unit.state.as_str()) @if let Some(stage) = unit.failed_stage { " at " (stage.as_str()) } }
            dt { "batch" } dd { @if let Some(batch) = &found.batch { a href=(format!("/batch?name={}", urlencode(batch))) { (batch) } } }
            dt { "station" } dd { (unit.station_id) }
            dt { "provisioned" } dd { (unit.provisioned_at.as_deref().map_or_else(String::new, |at| clock(at, frame.now))) }
            dt { "chip" } dd { (unit.chip) " " (unit.revision) ", " (unit.flash_size / (1 << 20)) " MiB flash" }
            dt { "attestation" } dd { (unit.attestation.as_str()) }
            dt { "key id" } dd.mono { (unit.key_id.as_str()) }
            @if let Some(serial) = &unit.cert_serial { dt { "certificate" } dd.mono { (serial) } }
            dt { "DPS" } dd #dps-status { (unit.dps_status.as_str())
                @if let Some(sub) = &unit.dps_substatus { " (" (sub) ")" }
                @if let Some(error) = &unit.dps_error { " · " (error) } }
            dt { "hub" } dd { (unit.assigned_hub.as_deref().unwrap_or("")) }
            dt { "device ID" } dd { (unit.device_id.as_deref().unwrap_or("")) }
        }
    }
}

fn outcome_class(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Provisioned => "pass",
        AttemptOutcome::Failed | AttemptOutcome::Interrupted => "fail",
        AttemptOutcome::InProgress => "busy",
    }
}

/// An attempt's `timings` JSON as `connect 0.20 · flash 0.07 · ...`.
fn timings(json: &str) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(json) else {
        return String::new();
    };
    map.iter()
        .filter_map(|(stage, v)| v.as_f64().map(|s| format!("{stage} {s:.2}")))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn audit_table(frame: &Frame<'_>, entries: &[AuditEntry]) -> Markup {
    html! {
        table.list.audit {
            thead { tr { th { "Seq" } th { "At" } th { "Station" } th { "Operator" } th { "Action" } th { "Subject" } th { "Details" } th { "Hash" } } }
            tbody {
                @for e in entries {
                    tr {
                        td { (e.seq) } td { (clock(&e.at, frame.now)) } td { (e.station_id) } td { (e.operator) }
                        td { (e.action) } td { (e.subject) } td.details { (e.details) } td.mono title=(e.hash) { (e.hash.get(..16).unwrap_or(&e.hash)) }
                    }
                }
            }
        }
    }
}

/// The QA page: each batch's manifest, CSV or JSON.
pub fn qa(frame: &Frame<'_>, batches: &[Batch]) -> Markup {
    let link = |batch: Option<&str>, format: &str| {
        let mut href = format!("/qa/manifest?format={format}");
        if let Some(batch) = batch {
            href.push_str(&format!("&batch={}", urlencode(batch)));
        }
        href
    };
    layout(
        frame,
        Nav::Qa,
        "QA",
        html! {
            h1 { "QA manifests" }
            p {
                "The same bytes as " code { "station export manifest" } ", and audited the same way: each download appends a "
                code { "manifest.exported" } " entry with the SHA-256 of what was sent. One row per provisioned unit; never a key."
            }
            table.list #manifests {
                thead { tr { th { "Batch" } th { "Station" } th { "Target" } th { "Opened" } th { "Closed" } th { "Manifest" } } }
                tbody {
                    tr.all {
                        td { "all batches" } td {} td {} td {} td {}
                        td { a.csv href=(link(None, "csv")) download { "CSV" } " · " a.json href=(link(None, "json")) download { "JSON" } }
                    }
                    @for b in batches {
                        tr data-batch=(b.name) {
                            td { (b.name) } td { (b.station_id) } td { (b.target) }
                            td { (clock(&b.opened_at, frame.now)) }
                            td { (b.closed_at.as_deref().map_or_else(|| "open".to_owned(), |c| clock(c, frame.now))) }
                            td { a.csv href=(link(Some(&b.name), "csv")) download { "CSV" } " · " a.json href=(link(Some(&b.name), "json")) download { "JSON" } }
                        }
                    }
                }
            }
        },
    )
}

/// The audit page: the chain's status and its latest entries.
pub fn audit(frame: &Frame<'_>, chain: &ChainReport, latest: &[AuditEntry]) -> Markup {
    layout(
        frame,
        Nav::Audit,
        "Audit",
        html! {
            h1 { "Audit chain" }
            @match &chain.first_break {
                None => p.chain.intact #chain-status {
                    "intact: " (chain.entries) " entries verified, head " code { (chain.head_hash.get(..16).unwrap_or(&chain.head_hash)) }
                },
                Some(broken) => p.chain.broken #chain-status {
                    "BROKEN at entry " (broken.seq) ": " (broken.problem) " (" (chain.entries) " entries read)"
                },
            }
            p.meta { "Head hash " code.mono { (chain.head_hash) } }
            h2 { "Latest entries" }
            (audit_table(frame, latest))
        },
    )
}

/// The login form (a 401 page when `failed`).
pub fn login(frame: &Frame<'_>, failed: bool) -> Markup {
    layout(
        frame,
        Nav::Login,
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "This dashboard needs its access token (" code { "[http] token_file" } " on the station)." }
            @if failed { p.problem { "That is not the token." } }
            form.login method="post" action="/login" {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A page for a request that found nothing (404) or failed (500).
pub fn problem(frame: &Frame<'_>, title: &str, text: &str) -> Markup {
    layout(
        frame,
        Nav::Line,
        title,
        html! { h1 { (title) } p.problem { (text) } },
    )
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
