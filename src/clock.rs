//! Time as the station records it: RFC 3339, UTC, milliseconds (`2026-11-25T10:00:01.000Z`).
//!
//! Every stored time (attempts, units, batches, audit entries) and every time the DPS emulator
//! answers with goes through [`format_time`], so that the text sorts in time order and compares
//! equal across processes and backends.

/// The current time as stored.
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// Formats a time as stored: converted to UTC, with exactly three fraction digits.
pub fn format_time(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Parses a time as an operator writes one: RFC 3339 with a zone (`2026-11-25T08:00:00Z`,
/// `2026-11-25T09:00:00+01:00`) or a date (`2026-11-25`, midnight UTC); `None` otherwise.
pub fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    let text = text.trim();
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Some(at);
    }
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
    .map(|date| date.midnight().assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = format_time(time::macros::datetime!(2026-11-25 10:20:30.123456 +02:00));
        assert_eq!(at, "2026-11-25T08:20:30.123Z");
        assert_eq!(now().len(), at.len());
    }
}
