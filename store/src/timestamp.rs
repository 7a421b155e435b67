//! Timestamps that store the same way on both backends.
//!
//! PostgreSQL keeps `timestamptz` (microseconds). SQLite has no time type, so we store fixed-width RFC 3339 text in
//! UTC with exactly six fractional digits: every value has the same length and offset, so text order is time order
//! and `effective_at <= $1` compares correctly. Values are truncated to the microsecond on the way in so a timestamp
//! read back from either backend equals the one written.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const SQLITE_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// A UTC instant with microsecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Now, truncated to the microsecond.
    pub fn now() -> Self {
        Self::from(OffsetDateTime::now_utc())
    }

    /// The instant as an `OffsetDateTime` in UTC.
    pub fn get(self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(value: OffsetDateTime) -> Self {
        let utc = value.to_offset(UtcOffset::UTC);
        let micros = utc.microsecond();
        Self(utc.replace_microsecond(micros).unwrap_or(utc))
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.format(SQLITE_FORMAT)?, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <OffsetDateTime as Decode<Sqlite>>::decode(value).map(Self::from)
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <OffsetDateTime as Decode<Postgres>>::decode(value).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn sqlite_text_is_fixed_width_and_ordered() {
        let earlier = Timestamp::from(datetime!(2026-11-24 12:00:00 UTC));
        let later = Timestamp::from(datetime!(2026-11-24 12:00:00.1 UTC));
        let text = |t: Timestamp| t.0.format(SQLITE_FORMAT).expect("formats");
        assert_eq!(text(earlier), "2026-11-24T12:00:00.000000Z");
        assert_eq!(text(later), "2026-11-24T12:00:00.100000Z");
        assert!(text(earlier) < text(later));
    }

    #[test]
    fn truncates_to_microseconds_in_utc() {
        let t = Timestamp::from(datetime!(2026-11-24 14:00:00.123456789 +02:00));
        assert_eq!(t.get(), datetime!(2026-11-24 12:00:00.123456 UTC));
    }
}
