//! Cron schedules (a cron job's `schedule` and `timeZone`), parsed with `croner`: five
//! fields or a macro, UTC only. Pure: the validation and the cron job controller share it.

use chrono::{DateTime, Utc};
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

/// A parsed cron schedule (UTC).
#[derive(Clone, Debug)]
pub struct Schedule(Cron);

/// Parses a cron job's `schedule` (five fields — minute hour day-of-month month day-of-week
/// — or a macro) and `timeZone` (only UTC: orch carries no time zone database). The error
/// says what is allowed.
pub fn parse_schedule(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    const FORMS: &str = "must be five cron fields (minute hour day-of-month month day-of-week, \
                         e.g. \"*/5 * * * *\") or one of @yearly, @annually, @monthly, @weekly, \
                         @daily, @midnight, @hourly";
    if let Some(tz) = time_zone {
        if !matches!(tz, "UTC" | "Etc/UTC" | "Etc/Zulu" | "Z" | "Zulu") {
            return Err(format!(
                "time zone {tz:?} is not supported: schedules run in UTC only; convert the schedule to UTC and leave timeZone out"
            ));
        }
    }
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
        .map(Schedule)
        .map_err(|e| format!("{FORMS}; {s:?}: {e}"))
}

fn to_utc(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(t.0).ok()?)
}

fn from_utc(t: DateTime<Utc>) -> Timestamp {
    Timestamp(u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

impl Schedule {
    /// The latest time due at or before `t`.
    pub fn previous(&self, t: Timestamp) -> Option<Timestamp> {
        self.0
            .find_previous_occurrence(&to_utc(t)?, true)
            .ok()
            .map(from_utc)
    }
    /// The first time due after `t`.
    pub fn next(&self, t: Timestamp) -> Option<Timestamp> {
        self.0
            .find_next_occurrence(&to_utc(t)?, false)
            .ok()
            .map(from_utc)
    }
}
