//! Cron schedules (a cron job's `schedule` and `timeZone`), parsed with `croner`: five
//! fields or a macro, in UTC or an IANA time zone (`chrono-tz`'s built-in database, so a
//! Kubernetes CronJob's `timeZone` keeps its meaning). Pure: the validation and the cron job
//! controller share it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::model::quantity::Timestamp;

/// The macros a schedule may be instead of five fields.
const MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// A parsed cron schedule in its time zone.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Parses a cron job's `timeZone`: an IANA name (`Europe/Berlin`); default UTC.
pub fn parse_time_zone(time_zone: Option<&str>) -> Result<Tz, String> {
    match time_zone {
        None => Ok(Tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            format!(
                "unknown time zone {name:?}: must be an IANA time zone name such as UTC, Europe/Berlin or America/New_York"
            )
        }),
    }
}

/// Parses a cron job's `schedule` (five fields — minute hour day-of-month month day-of-week
/// — or a macro) in `timeZone` ([`parse_time_zone`]). The error says what is allowed.
pub fn parse_schedule(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    const FORMS: &str = "must be five cron fields (minute hour day-of-month month day-of-week, \
                         e.g. \"*/5 * * * *\") or one of @yearly, @annually, @monthly, @weekly, \
                         @daily, @midnight, @hourly";
    let tz = parse_time_zone(time_zone)?;
    let s = schedule.trim();
    let pattern = if s.starts_with('@') {
        if !MACROS.contains(&s.to_ascii_lowercase().as_str()) {
            return Err(format!("{FORMS}; {s:?} is not one of them"));
        }
        if s.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            s
        }
    } else {
        let fields = s.split_whitespace().count();
        if fields != 5 {
            return Err(format!("{FORMS}; {s:?} has {fields} field(s)"));
        }
        s
    };
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map(|cron| Schedule { cron, tz })
        .map_err(|e| format!("{FORMS}; {s:?}: {e}"))
}

fn to_utc(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(t.0).ok()?)
}

fn from_utc(t: DateTime<Utc>) -> Timestamp {
    Timestamp(u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Schedule({:?} in {})",
            self.cron.pattern.to_string(),
            self.tz
        )
    }
}

impl Schedule {
    /// The latest time due at or before `t`.
    pub fn previous(&self, t: Timestamp) -> Option<Timestamp> {
        self.occurrence(t, false)
    }
    /// The first time due after `t`.
    pub fn next(&self, t: Timestamp) -> Option<Timestamp> {
        self.occurrence(t, true)
    }
    /// The first due time after `t` (`forward`), or the last at or before it, in the
    /// schedule's time zone.
    fn occurrence(&self, t: Timestamp, forward: bool) -> Option<Timestamp> {
        let local = to_utc(t)?.with_timezone(&self.tz);
        let found = if forward {
            self.cron.find_next_occurrence(&local, false)
        } else {
            self.cron.find_previous_occurrence(&local, true)
        };
        found.ok().map(|d| from_utc(d.with_timezone(&Utc)))
    }
}
