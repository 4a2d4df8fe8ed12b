//! The batch page's charts as server-rendered SVG (no script, no external asset): units per
//! minute over time, stacked with failures, and failures by error code. Colours come from the
//! stylesheet through classes, so the strict Content-Security-Policy needs no inline style.

use maud::{Markup, html};

use crate::record::{FailureCount, MinuteCount};

/// The drawing's size in SVG units; the stylesheet scales it to the page.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
/// Room for the axis labels.
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;

/// The most minutes drawn: a longer batch shows its last six hours.
const MAX_MINUTES: usize = 360;

/// Minutes between the first and last of `minutes` (`2026-11-25T08:01`), gaps filled with zero
/// counts, the last [`MAX_MINUTES`] of them.
fn timeline(minutes: &[MinuteCount]) -> Vec<MinuteCount> {
    let parse = |m: &str| {
        time::PrimitiveDateTime::parse(
            &format!("{m}:00"),
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .ok()
    };
    let (Some(first), Some(last)) = (
        minutes.first().and_then(|m| parse(&m.minute)),
        minutes.last().and_then(|m| parse(&m.minute)),
    ) else {
        return minutes.to_vec();
    };
    let span = usize::try_from((last - first).whole_minutes()).unwrap_or(0) + 1;
    let start = first + time::Duration::minutes(span.saturating_sub(MAX_MINUTES) as i64);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let mut out = Vec::with_capacity(span.min(MAX_MINUTES));
    let mut given = minutes.iter().peekable();
    let mut at = start;
    while at <= last {
        let name = at.format(&format).unwrap_or_default();
        while given.next_if(|m| m.minute < name).is_some() {}
        let count = given.next_if(|m| m.minute == name);
        out.push(MinuteCount {
            minute: name,
            provisioned: count.map_or(0, |c| c.provisioned),
            failed: count.map_or(0, |c| c.failed),
        });
        at += time::Duration::minutes(1);
    }
    out
}

/// Units provisioned (and attempts failed, stacked above them) per minute, one bar a minute.
pub fn units_per_minute(minutes: &[MinuteCount]) -> Markup {
    let minutes = timeline(minutes);
    let peak = minutes
        .iter()
        .map(|m| m.provisioned + m.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - LEFT) / minutes.len().max(1) as f64;
    let bar = (slot * 0.8).max(0.5);
    let scale = |n: i64| n as f64 / peak as f64 * plot_height;
    let label = |m: &MinuteCount| m.minute.get(11..16).unwrap_or(&m.minute).to_owned();
    html! {
        svg.chart #rate-chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-label="units per minute" {
            title { "Units per minute (failed attempts stacked in red)" }
            line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
            text.tick x=(LEFT - 4.0) y=(TOP + 8.0) text-anchor="end" { (peak) }
            text.tick x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
            @if minutes.is_empty() {
                text.empty x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { "no attempt has ended yet" }
            }
            @for (i, m) in minutes.iter().enumerate() {
                @let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
                @let pass = scale(m.provisioned);
                @let fail = scale(m.failed);
                g {
                    title { (label(m)) " UTC: " (m.provisioned) " provisioned, " (m.failed) " failed" }
                    rect.pass x=(fmt(x)) y=(fmt(HEIGHT - BOTTOM - pass)) width=(fmt(bar)) height=(fmt(pass)) {}
                    @if m.failed > 0 {
                        rect.fail x=(fmt(x)) y=(fmt(HEIGHT - BOTTOM - pass - fail)) width=(fmt(bar)) height=(fmt(fail)) {}
                    }
                }
            }
            @if let (Some(first), Some(last)) = (minutes.first(), minutes.last()) {
                text.tick x=(LEFT) y=(HEIGHT - 6.0) { (label(first)) " UTC" }
                text.tick x=(WIDTH) y=(HEIGHT - 6.0) text-anchor="end" { (label(last)) }
            }
        }
    }
}

/// Failed attempts by error code, one horizontal bar per code with its stage and count.
pub fn failures_by_code(failures: &[FailureCount]) -> Markup {
    const ROW: f64 = 26.0;
    const LABEL: f64 = 330.0;
    let peak = failures.iter().map(|f| f.count).max().unwrap_or(0).max(1);
    let height = (failures.len().max(1) as f64) * ROW + 8.0;
    let room = WIDTH - LABEL - 60.0;
    html! {
        svg.chart #failures-chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            role="img" aria-label="failures by error code" {
            title { "Failed attempts by error code" }
            @if failures.is_empty() {
                text.empty x=(WIDTH / 2.0) y=(ROW * 0.7) text-anchor="middle" { "no failures" }
            }
            @for (i, failure) in failures.iter().enumerate() {
                @let y = i as f64 * ROW + 4.0;
                @let length = (failure.count as f64 / peak as f64 * room).max(2.0);
                g.failure data-code=(failure.error_code.as_str()) {
                    title { (failure.error_code.as_str()) " at " (failure.stage.as_str()) ": " (failure.count) }
                    text.code x=(LABEL - 8.0) y=(fmt(y + ROW * 0.62)) text-anchor="end" { (failure.error_code.as_str()) }
                    rect.fail x=(LABEL) y=(fmt(y + 3.0)) width=(fmt(length)) height=(fmt(ROW - 8.0)) {}
                    text.count x=(fmt(LABEL + length + 6.0)) y=(fmt(y + ROW * 0.62)) { (failure.count) " (" (failure.stage.as_str()) ")" }
                }
            }
        }
    }
}

/// A coordinate with one decimal: small pages, stable output.
fn fmt(value: f64) -> String {
    format!("{value:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ErrorCode, Stage};

    fn minute(minute: &str, provisioned: i64, failed: i64) -> MinuteCount {
        MinuteCount {
            minute: minute.to_owned(),
            provisioned,
            failed,
        }
    }

    #[test]
    fn gaps_between_minutes_are_drawn_as_empty_minutes() {
        let line = timeline(&[
            minute("2026-12-01T08:58", 3, 0),
            minute("2026-12-01T09:01", 5, 1),
        ]);
        let names: Vec<&str> = line.iter().map(|m| m.minute.as_str()).collect();
        assert_eq!(
            names,
            [
                "2026-12-01T08:58",
                "2026-12-01T08:59",
                "2026-12-01T09:00",
                "2026-12-01T09:01"
            ]
        );
        assert_eq!((line[1].provisioned, line[3].failed), (0, 1));
    }

    #[test]
    fn a_long_batch_shows_its_last_hours() {
        let line = timeline(&[
            minute("2026-12-01T00:00", 1, 0),
            minute("2026-12-01T23:59", 1, 0),
        ]);
        assert_eq!(line.len(), MAX_MINUTES);
        assert_eq!(line.last().unwrap().minute, "2026-12-01T23:59");
        assert_eq!(line.last().unwrap().provisioned, 1);
    }

    #[test]
    fn the_charts_name_what_they_draw() {
        let svg = units_per_minute(&[minute("2026-12-01T08:58", 3, 2)]).into_string();
        assert!(svg.contains("08:58 UTC: 3 provisioned, 2 failed"), "{svg}");
        assert!(svg.contains(r#"class="fail""#));
        let svg = failures_by_code(&[FailureCount {
            error_code: "station::device::unplugged".parse::<ErrorCode>().unwrap(),
            stage: Stage::Flash,
            count: 4,
        }])
        .into_string();
        assert!(svg.contains(">station::device::unplugged</text>"), "{svg}");
        assert!(svg.contains("4 (flash)"));
        assert!(failures_by_code(&[]).into_string().contains("no failures"));
    }
}
