//! Why a unit fails its boot check: [`BootError`] and its stable codes.
//!
//! Every line a variant quotes was redacted before it got here (see `redact`), so the message
//! and hint can be stored with the attempt and shown to the operator as they are.

use std::time::Duration;

/// Why a unit failed its boot check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum BootError {
    /// The application crashed: an ESP-IDF panic or abort.
    #[error("the firmware crashed at start-up: {line}")]
    #[diagnostic(
        code(station::boot::panic),
        help(
            "The application does not run on this unit (it printed \"{line}\"). Set the unit aside and give the firmware team its boot log: `station unit show MAC`."
        )
    )]
    Panic {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// The firmware wants PSRAM the board does not have.
    #[error("the firmware cannot start its PSRAM: {line}")]
    #[diagnostic(
        code(station::boot::psram),
        help(
            "The firmware was built for a module with PSRAM (CONFIG_SPIRAM) and this board has none, or another kind (it printed \"{line}\"). Check the module variant against the firmware build, and set the unit aside."
        )
    )]
    Psram {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// The supply voltage dropped below the brownout threshold.
    #[error("the unit browned out: {line}")]
    #[diagnostic(
        code(station::boot::brownout),
        help(
            "The supply sagged while the unit started (it printed \"{line}\"): check the port's or jig's power (USB hub, cable) and the board's regulator, then try the unit again."
        )
    )]
    Brownout {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// A watchdog fired: the application hangs on this unit.
    #[error("a watchdog fired while the unit started: {line}")]
    #[diagnostic(
        code(station::boot::watchdog),
        help(
            "The application hangs on this unit (it printed \"{line}\"). Set the unit aside and give the firmware team its boot log: `station unit show MAC`."
        )
    )]
    Watchdog {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// The ROM found no bootable image in flash.
    #[error("the chip found no application to boot: {line}")]
    #[diagnostic(
        code(station::boot::no_app),
        help(
            "The ROM printed \"{line}\": the bootloader or application is missing from this unit's flash, or not where its partition table says. Flash the firmware (station.toml [[firmware]]) and try again."
        )
    )]
    NoApp {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// A line matched a `[boot] fail` pattern of the station's own.
    #[error("the firmware reported a failure: {line}")]
    #[diagnostic(
        code(station::boot::fail_pattern),
        help(
            "The line \"{line}\" matches [boot] fail pattern \"{pattern}\". Set the unit aside and give the firmware team its boot log: `station unit show MAC`."
        )
    )]
    FailPattern {
        /// The line that showed it.
        line: String,
        /// The `[boot] fail` pattern it matched.
        pattern: String,
    },
    /// The unit reset by itself during the check.
    #[error("the unit reset by itself while it started: {line}")]
    #[diagnostic(
        code(station::boot::reset_loop),
        help(
            "The ROM announced a second reset (\"{line}\"): the unit is in a reset loop. Set it aside and give the firmware team its boot log: `station unit show MAC`."
        )
    )]
    ResetLoop {
        /// The second reset's ROM banner.
        line: String,
    },
    /// The unit printed, but not every expected line, before the timeout.
    #[error(
        "the firmware did not confirm its configuration within {:.1} s: {} never appeared{}",
        after.as_secs_f64(),
        quote_all(missing),
        last.as_ref().map_or_else(String::new, |l| format!("; its last line was \"{l}\""))
    )]
    #[diagnostic(
        code(station::boot::pattern_missing),
        help(
            "The unit booted but did not print what [boot] expect asks for. A firmware that reads another NVS namespace or key says so in its last lines (`station unit show MAC`): check [nvs] namespace and entries against the firmware, and [boot] expect against what it prints."
        )
    )]
    PatternMissing {
        /// The expected text not seen.
        missing: Vec<String>,
        /// The last line the unit printed.
        last: Option<String>,
        /// How long the check waited.
        after: Duration,
    },
    /// Nothing readable arrived before the timeout.
    #[error(
        "no boot log within {:.1} s{}",
        after.as_secs_f64(),
        if *garbage > 0 {
            format!(": {garbage} bytes arrived that are not text")
        } else {
            String::new()
        }
    )]
    #[diagnostic(
        code(station::boot::timeout),
        help(
            "The unit did not print its boot log. Bytes that are not text mean another rate: set [boot] baud to the firmware's CONFIG_ESP_CONSOLE_UART_BAUDRATE. Nothing at all means it did not start: check that it is powered, that its reset reached it, and that its console is UART0."
        )
    )]
    Timeout {
        /// How long the check waited.
        after: Duration,
        /// Bytes that were not text (another baud rate, noise).
        garbage: u64,
    },
    /// The port went away.
    #[error("the port went away during the boot check after {:.1} s: {detail}", after.as_secs_f64())]
    #[diagnostic(
        code(station::boot::port_gone),
        help(
            "The unit was unplugged (or its USB adapter reset) while it started. Plug it in again to retry."
        )
    )]
    PortGone {
        /// What the operating system said.
        detail: String,
        /// When, after the reset.
        after: Duration,
    },
}

/// `"a", "b"`.
fn quote_all(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a `[boot] fail` hit means, judged by the line the firmware printed: ESP-IDF's and the
/// ROM's own words tell a crash, missing PSRAM, a brownout, a watchdog and a missing image
/// apart, so a batch's failures group by cause.
pub(super) fn classify(line: String, pattern: String) -> BootError {
    let lower = line.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if has(&["psram", "external ram"]) {
        BootError::Psram { line, pattern }
    } else if has(&["brownout", "brown_out"]) {
        BootError::Brownout { line, pattern }
    } else if has(&["guru meditation", "abort() was called", "panic"]) {
        BootError::Panic { line, pattern }
    } else if has(&["watchdog", "wdt"]) {
        BootError::Watchdog { line, pattern }
    } else if has(&["invalid header", "flash read err"]) {
        BootError::NoApp { line, pattern }
    } else {
        BootError::FailPattern { line, pattern }
    }
}
