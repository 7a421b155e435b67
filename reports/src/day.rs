//! Days in the report's time zone, and the cron schedule that says when a day's report is due.
//!
//! A day is the span from one local midnight to the next, so in a zone with daylight saving time it lasts 23 or 25
//! hours twice a year; in a zone whose clocks skip midnight, it starts at the first local time that exists.

use std::str::FromStr;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use time::OffsetDateTime;

/// Why a setting of the report's calendar is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalendarError {
    /// Not a zone of the IANA database.
    #[error("unknown time zone `{0}`: use an IANA name such as UTC or Europe/Paris")]
    Zone(String),
    /// Not a cron expression.
    #[error("bad cron schedule `{0}`: {1}")]
    Schedule(String, String),
    /// Not a `YYYY-MM-DD` date, or out of range.
    #[error("bad date `{0}`: use YYYY-MM-DD")]
    Date(String),
}

/// The time zone reports count days in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportZone(Tz);

/// One day of the report's calendar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Day {
    /// The local date.
    pub date: NaiveDate,
    /// Its first instant.
    pub start: OffsetDateTime,
    /// The first instant of the next day.
    pub end: OffsetDateTime,
}

impl Day {
    /// `YYYY-MM-DD`.
    pub fn label(&self) -> String {
        self.date.format("%Y-%m-%d").to_string()
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<NaiveDate, CalendarError> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| CalendarError::Date(text.to_owned()))?;
    // The ledger's timestamps live in years 1 to 9999 (and chrono's span is wider): refuse what cannot be stored.
    if !(1970..=9998).contains(&chrono::Datelike::year(&date)) {
        return Err(CalendarError::Date(text.to_owned()));
    }
    Ok(date)
}

fn to_time(instant: DateTime<Tz>) -> OffsetDateTime {
    let micros = i128::from(instant.timestamp_micros());
    OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_chrono(instant: OffsetDateTime, zone: Tz) -> DateTime<Tz> {
    let micros = i64::try_from(instant.unix_timestamp_nanos() / 1_000).unwrap_or(0);
    DateTime::from_timestamp_micros(micros).unwrap_or_default().with_timezone(&zone)
}

impl ReportZone {
    /// UTC.
    pub const UTC: Self = Self(Tz::UTC);

    /// The zone of IANA name `name`.
    pub fn parse(name: &str) -> Result<Self, CalendarError> {
        Tz::from_str(name).map(Self).map_err(|_| CalendarError::Zone(name.to_owned()))
    }

    /// Its IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The first instant of `date`: local midnight, or the first local time after it that exists.
    fn start_of(self, date: NaiveDate) -> OffsetDateTime {
        let mut local = date.and_time(NaiveTime::MIN);
        // Clocks never skip more than a few hours; step a quarter of an hour at a time past a gap.
        for _ in 0..16 {
            if let Some(instant) = self.0.from_local_datetime(&local).earliest() {
                return to_time(instant);
            }
            local += chrono::Duration::minutes(15);
        }
        to_time(self.0.from_utc_datetime(&date.and_time(NaiveTime::MIN)))
    }

    /// The day `date`.
    pub fn day(self, date: NaiveDate) -> Day {
        let next = date.checked_add_days(Days::new(1)).unwrap_or(date);
        Day { date, start: self.start_of(date), end: self.start_of(next) }
    }

    /// The day `days` before `date`'s.
    pub fn days_before(self, date: NaiveDate, days: u64) -> Day {
        self.day(date.checked_sub_days(Days::new(days)).unwrap_or(date))
    }

    /// The local date at `instant`.
    pub fn date_at(self, instant: OffsetDateTime) -> NaiveDate {
        to_chrono(instant, self.0).date_naive()
    }
}

/// When reports are due: a cron expression in the report's zone. Each time it fires, the day before is due.
#[derive(Clone, Debug)]
pub struct ReportSchedule {
    schedule: cron::Schedule,
    zone: ReportZone,
}

impl ReportSchedule {
    /// A standard five-field expression (`30 0 * * *`: 00:30 every day), or six or seven fields with seconds
    /// first (and a year last), in `zone`.
    pub fn parse(expression: &str, zone: ReportZone) -> Result<Self, CalendarError> {
        let fields = expression.split_whitespace().count();
        let full = if fields == 5 { format!("0 {expression}") } else { expression.to_owned() };
        let schedule = cron::Schedule::from_str(&full)
            .map_err(|error| CalendarError::Schedule(expression.to_owned(), error.to_string()))?;
        Ok(Self { schedule, zone })
    }

    /// The day whose report the latest firing at or before `now` made due (`None` if it never fired in the last
    /// year).
    pub fn due(&self, now: OffsetDateTime) -> Option<NaiveDate> {
        let now = to_chrono(now, self.zone.0);
        let a_year_ago = now - chrono::Duration::days(366);
        let fired = self.schedule.after(&a_year_ago).take_while(|at| *at <= now).last()?;
        fired.date_naive().checked_sub_days(Days::new(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn date(text: &str) -> NaiveDate {
        parse_date(text).expect("date")
    }

    #[test]
    fn utc_days_are_24_hours_and_local_days_follow_daylight_saving() {
        let day = ReportZone::UTC.day(date("2026-11-23"));
        assert_eq!((day.start, day.end), (datetime!(2026-11-23 0:00 UTC), datetime!(2026-11-24 0:00 UTC)));
        let paris = ReportZone::parse("Europe/Paris").expect("zone");
        let short = paris.day(date("2026-03-29"));
        assert_eq!((short.start, short.end), (datetime!(2026-03-28 23:00 UTC), datetime!(2026-03-29 22:00 UTC)));
        let long = paris.day(date("2026-10-25"));
        assert_eq!(long.end - long.start, time::Duration::hours(25));
        assert_eq!(paris.date_at(datetime!(2026-11-23 23:30 UTC)), date("2026-11-24"));
        // Clocks in Santiago skip from midnight to 01:00 in September: that day starts at 01:00.
        let santiago = ReportZone::parse("America/Santiago").expect("zone");
        let gap = santiago.day(date("2026-09-06"));
        assert_eq!(gap.start, datetime!(2026-09-06 4:00 UTC));
    }

    #[test]
    fn bad_zones_schedules_and_dates_are_refused() {
        assert!(matches!(ReportZone::parse("Mars/Olympus"), Err(CalendarError::Zone(_))));
        assert!(matches!(ReportSchedule::parse("every night", ReportZone::UTC), Err(CalendarError::Schedule(..))));
        for text in ["2026-13-01", "yesterday", "0001-01-01", "2026-11-23T00:00"] {
            assert!(parse_date(text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_day_before_the_latest_firing_is_due() {
        let schedule = ReportSchedule::parse("30 0 * * *", ReportZone::UTC).expect("schedule");
        assert_eq!(schedule.due(datetime!(2026-11-24 0:29 UTC)), Some(date("2026-11-22")));
        assert_eq!(schedule.due(datetime!(2026-11-24 0:30 UTC)), Some(date("2026-11-23")));
        assert_eq!(schedule.due(datetime!(2026-11-24 18:00 UTC)), Some(date("2026-11-23")));
        let tokyo = ReportSchedule::parse("0 30 0 * * *", ReportZone::parse("Asia/Tokyo").expect("zone"));
        // 00:30 in Tokyo is 15:30 UTC the day before.
        assert_eq!(tokyo.expect("schedule").due(datetime!(2026-11-23 15:31 UTC)), Some(date("2026-11-23")));
    }
}
