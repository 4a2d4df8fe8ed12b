//! The boot check (issue 14): read the application's console after the reset into it, and pass
//! the unit only when its firmware says it read *this* unit's configuration.
//!
//! The firmware contract (README, "The boot check") is one ESP-IDF log line with the
//! registration ID it read from NVS, e.g. `I (339) dps: registration id sensor-240ac4123456`;
//! `[boot] expect` says what to look for and `[boot] fail` what fails the unit at once
//! (ESP-IDF's panic, abort, brownout, watchdog and PSRAM messages by default). The ROM's reset
//! banner (`rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)`) opens the log; a
//! second one means the unit reset by itself. ESP-IDF's log format is described at
//! <https://docs.espressif.com/projects/esp-idf/en/stable/esp32/api-reference/system/log.html>.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`BootCheck`] (one unit's rendered patterns), [`watch`] (the async read with its deadline), [`BootReport`] |
//! | `judge.rs` | the bytes as lines, and the verdict on them (pure) |
//! | `redact.rs` | the redaction of every line kept or quoted, and the bounded excerpt (pure) |
//! | `error.rs` | [`BootError`] and its stable codes `station::boot::*` |
//!
//! Nothing the firmware prints leaves this module unredacted: the excerpt, the lines quoted
//! in errors and what is traced all come from the redacted lines.

mod error;
mod judge;
mod redact;

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use zeroize::Zeroizing;

pub use error::BootError;

use crate::config::{BootConfig, TemplateValues};
use judge::{Judge, Lines, Verdict};
use redact::{Excerpt, Redactor};

/// After a `fail` line, the console is read on until it is quiet this long (a panic's register
/// dump and backtrace follow its first line within milliseconds)...
const TAIL_QUIET: Duration = Duration::from_millis(150);
/// ...or for this long at most, or until the next reset banner: the excerpt then holds the
/// whole crash report for the firmware team, not just the line that failed the unit.
const TAIL_MAX: Duration = Duration::from_secs(1);

/// One unit's boot check: its patterns rendered, its keys to redact.
pub struct BootCheck {
    expect: Vec<String>,
    fail: Vec<String>,
    timeout: Duration,
    keep_log: usize,
    secrets: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for BootCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootCheck")
            .field("expect", &self.expect)
            .field("fail", &self.fail)
            .field("timeout", &self.timeout)
            .field("keep_log", &self.keep_log)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl BootCheck {
    /// The check of one unit: `[boot]`'s patterns rendered with the unit's values, and the
    /// texts of its secrets (its device keys, its private key's lines), redacted wherever the
    /// firmware prints them.
    pub fn new(config: &BootConfig, values: &TemplateValues<'_>, secrets: &[&str]) -> Self {
        BootCheck {
            expect: config.expect.iter().map(|p| p.render(values)).collect(),
            fail: config.fail.iter().map(|p| p.render(values)).collect(),
            timeout: config.timeout,
            keep_log: config.keep_log,
            secrets: secrets
                .iter()
                .map(|s| Zeroizing::new((*s).to_owned()))
                .collect(),
        }
    }

    /// The text every line of the log is searched for, rendered for this unit.
    pub fn expect(&self) -> &[String] {
        &self.expect
    }
}

/// What the boot check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// Passed, or why not.
    pub verdict: Result<(), BootError>,
    /// The redacted excerpt of the log (its last `[boot] keep_log` bytes), to store and show.
    pub log: String,
    /// From the start of the check (the reset) to the verdict.
    pub elapsed: Duration,
    /// Bytes read from the console.
    pub bytes: u64,
    /// Lines with text in them.
    pub lines: u64,
}

/// Reads the console until every expected pattern was seen (pass), a fail pattern or a second
/// reset banner appeared, `timeout` passed since the call, or the port went away.
///
/// Call it right after the reset: the deadline counts from here.
pub async fn watch<R: AsyncRead + Unpin>(mut console: R, check: &BootCheck) -> BootReport {
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + check.timeout);
    let mut lines = Lines::default();
    let mut log = Log {
        judge: Judge::new(&check.expect, &check.fail),
        redactor: Redactor::new(check.secrets.clone()),
        excerpt: Excerpt::new(check.keep_log),
        last: None,
        verdict: Verdict::Pending,
    };
    let mut buf = vec![0u8; 1024];
    let failure = loop {
        match tokio::time::timeout_at(deadline, console.read(&mut buf)).await {
            Ok(Ok(0)) => break Some(port_gone("the port closed".to_owned(), start)),
            Ok(Ok(n)) => {
                lines.feed(&buf[..n], |line| log.line(line));
                match log.take_verdict() {
                    Verdict::Pending => {}
                    Verdict::Pass => break None,
                    Verdict::Fail(error) => {
                        if !matches!(error, BootError::ResetLoop { .. }) {
                            read_tail(&mut console, &mut lines, &mut log, &mut buf, deadline).await;
                        }
                        break Some(error);
                    }
                }
            }
            Ok(Err(e)) => break Some(port_gone(e.to_string(), start)),
            Err(_) => {
                // What arrived without a line end still counts.
                if let Some(line) = lines.finish() {
                    log.line(line);
                }
                break match log.take_verdict() {
                    Verdict::Pass => None,
                    Verdict::Fail(error) => Some(error),
                    Verdict::Pending if log.judge.lines == 0 => Some(BootError::Timeout {
                        after: check.timeout,
                        garbage: lines.garbage,
                    }),
                    Verdict::Pending => Some(BootError::PatternMissing {
                        missing: log.judge.missing(),
                        last: log.last.clone(),
                        after: check.timeout,
                    }),
                };
            }
        }
    };
    // An unfinished last line is part of the excerpt too.
    if let Some(line) = lines.finish() {
        log.line(line);
    }
    let report = BootReport {
        verdict: failure.map_or(Ok(()), Err),
        log: log.excerpt.text(),
        elapsed: start.elapsed(),
        bytes: lines.bytes,
        lines: log.judge.lines,
    };
    tracing::debug!(
        passed = report.verdict.is_ok(),
        seconds = report.elapsed.as_secs_f64(),
        bytes = report.bytes,
        lines = report.lines,
        "boot check finished"
    );
    report
}

/// Reads what the unit prints after the line that failed it, to keep it (not to judge it):
/// until the console is quiet for [`TAIL_QUIET`], the next ROM reset banner, [`TAIL_MAX`] or
/// the check's deadline, whichever comes first.
async fn read_tail<R: AsyncRead + Unpin>(
    console: &mut R,
    lines: &mut Lines,
    log: &mut Log<'_>,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
) {
    let end = deadline.min(tokio::time::Instant::now() + TAIL_MAX);
    let mut reset = false;
    while !reset {
        let quiet = end.min(tokio::time::Instant::now() + TAIL_QUIET);
        match tokio::time::timeout_at(quiet, console.read(buf)).await {
            Ok(Ok(n)) if n > 0 => lines.feed(&buf[..n], |line| {
                if !reset {
                    reset = line.starts_with("rst:0x");
                    log.keep(&line);
                }
            }),
            _ => return,
        }
    }
}

/// The log as it is read: judged, redacted, kept.
struct Log<'a> {
    judge: Judge<'a>,
    redactor: Redactor,
    excerpt: Excerpt,
    /// The last line with text, redacted.
    last: Option<String>,
    verdict: Verdict,
}

impl Log<'_> {
    fn line(&mut self, line: String) {
        let kept = self.keep(&line);
        if self.verdict == Verdict::Pending {
            // A line inside a PEM block is never quoted: only its redaction could be.
            let quoted = || kept.map_or_else(|| "[redacted]".to_owned(), |k| k.trim().to_owned());
            self.verdict = self.judge.line(&line, quoted);
        }
    }

    /// Redacts the line and keeps it in the excerpt; returns what was kept (`None` inside a
    /// PEM private key).
    fn keep(&mut self, line: &str) -> Option<String> {
        let kept = self.redactor.line(line);
        if let Some(kept) = &kept {
            tracing::trace!(line = %kept, "boot log");
            self.excerpt.push(kept.clone());
            if !kept.trim().is_empty() {
                self.last = Some(kept.trim().to_owned());
            }
        }
        kept
    }

    fn take_verdict(&mut self) -> Verdict {
        std::mem::replace(&mut self.verdict, Verdict::Pending)
    }
}

fn port_gone(detail: String, start: Instant) -> BootError {
    BootError::PortGone {
        detail,
        after: start.elapsed(),
    }
}

#[cfg(test)]
mod tests;
