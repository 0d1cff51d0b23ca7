//! The journal's clock and its calendar: every record is stamped in
//! milliseconds since the Unix epoch, and budgets over time count from the
//! start of the UTC day and month.

use serde_json::Value;

use super::JournalError;

/// Milliseconds since the Unix epoch, from the journal's clock.
pub type Millis = i64;

/// The time every journal record is stamped with. The system clock, except
/// in tests, which fix it (`TOLLGATE_TEST_NOW`) so budgets, the cache's TTL
/// and reports are deterministic.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(Millis),
}

impl Clock {
    /// The system clock, unless `TOLLGATE_TEST_NOW` holds an RFC 3339 time.
    pub fn from_env() -> Result<Clock, JournalError> {
        match std::env::var("TOLLGATE_TEST_NOW") {
            Ok(v) if !v.is_empty() => {
                let t: jiff::Timestamp = v
                    .parse()
                    .map_err(|source| JournalError::TestNow { value: v, source })?;
                Ok(Clock::Fixed(t.as_millisecond()))
            }
            _ => Ok(Clock::System),
        }
    }

    pub fn now(self) -> Millis {
        match self {
            Clock::Fixed(ms) => ms,
            Clock::System => jiff::Timestamp::now().as_millisecond(),
        }
    }
}

/// The start of the UTC day and of the UTC month holding `ms`.
pub fn period_starts(ms: Millis) -> (Millis, Millis) {
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let date = jiff::tz::TimeZone::UTC.to_datetime(t).date();
    (utc_midnight(date), utc_midnight(date.first_of_month()))
}

fn utc_midnight(d: jiff::civil::Date) -> Millis {
    jiff::tz::TimeZone::UTC
        .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
        .map_or(0, |t| t.as_millisecond())
}

/// `2026-11-26 10:45` (UTC).
pub fn format_time(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// `2026-11-26` (UTC).
pub fn format_day(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Parses `--since`: a duration back from now (`7d`, `12h`) or a UTC date
/// (`2026-11-01`) or an RFC 3339 time.
pub fn parse_since(text: &str, now: Millis) -> Result<Millis, JournalError> {
    if let Some(d) = crate::workflow::parse_duration(&Value::String(text.to_owned())) {
        return Ok(now - d.as_millis() as i64);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return Ok(utc_midnight(date));
    }
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    Err(JournalError::Since(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        let t: jiff::Timestamp = "2026-11-26T10:45:12Z".parse().unwrap();
        let (day, month) = period_starts(t.as_millisecond());
        assert_eq!(format_time(day), "2026-11-26 00:00");
        assert_eq!(format_time(month), "2026-11-01 00:00");
        let now = t.as_millisecond();
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(
            format_time(parse_since("2026-11-01", now).unwrap()),
            "2026-11-01 00:00"
        );
        assert!(parse_since("last week", now).is_err());
    }
}
