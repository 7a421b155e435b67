//! Money: the millicredit, creditflow's one unit of account.
//!
//! 1 credit = $0.001 and 1 credit = 1,000 millicredits, so every amount the ledger holds is an integer. The newtype
//! keeps its `i64` private and offers only checked arithmetic: an overflow is a value the caller must handle, never a
//! silent wrap or a panic in release builds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Millicredits in one credit.
pub const MILLICREDITS_PER_CREDIT: i64 = 1_000;

/// An amount of money in millicredits (1/1000 of a credit). Signed: ledger debits are negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millicredits(i64);

/// Arithmetic on money left the range of an `i64` of millicredits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("amount overflows the range of a millicredit balance")]
pub struct Overflow;

impl Millicredits {
    /// Zero millicredits.
    pub const ZERO: Self = Self(0);
    /// The largest representable amount.
    pub const MAX: Self = Self(i64::MAX);

    /// Wraps a raw millicredit count.
    pub const fn new(millicredits: i64) -> Self {
        Self(millicredits)
    }

    /// Whole credits as millicredits, failing when the product does not fit.
    pub const fn from_credits(credits: i64) -> Result<Self, Overflow> {
        match credits.checked_mul(MILLICREDITS_PER_CREDIT) {
            Some(value) => Ok(Self(value)),
            None => Err(Overflow),
        }
    }

    /// The raw millicredit count.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// `self + other`, or `Overflow`.
    pub const fn checked_add(self, other: Self) -> Result<Self, Overflow> {
        match self.0.checked_add(other.0) {
            Some(value) => Ok(Self(value)),
            None => Err(Overflow),
        }
    }

    /// `self - other`, or `Overflow`.
    pub const fn checked_sub(self, other: Self) -> Result<Self, Overflow> {
        match self.0.checked_sub(other.0) {
            Some(value) => Ok(Self(value)),
            None => Err(Overflow),
        }
    }

    /// `-self`, or `Overflow` for `i64::MIN`.
    pub const fn checked_neg(self) -> Result<Self, Overflow> {
        match self.0.checked_neg() {
            Some(value) => Ok(Self(value)),
            None => Err(Overflow),
        }
    }

    /// True for amounts above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// True for amounts below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Sums amounts, failing on the first overflow.
    pub fn checked_sum<I: IntoIterator<Item = Self>>(amounts: I) -> Result<Self, Overflow> {
        amounts.into_iter().try_fold(Self::ZERO, Self::checked_add)
    }
}

/// Shows the amount in credits with three decimals, the way customers read it: `-1.800`.
impl fmt::Display for Millicredits {
    #[expect(clippy::arithmetic_side_effects, reason = "division and remainder by a non-zero constant cannot fail")]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per_credit = MILLICREDITS_PER_CREDIT.unsigned_abs();
        write!(f, "{sign}{}.{:03}", magnitude / per_credit, magnitude % per_credit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_table() {
        let m = Millicredits::new;
        // (left, right, add, sub) — None means the operation must report overflow.
        let rows: [(i64, i64, Option<i64>, Option<i64>); 6] = [
            (1_500, 300, Some(1_800), Some(1_200)),
            (0, 0, Some(0), Some(0)),
            (-5, 5, Some(0), Some(-10)),
            (i64::MAX, 1, None, Some(i64::MAX - 1)),
            (i64::MIN, 1, Some(i64::MIN + 1), None),
            (i64::MIN, -1, None, Some(i64::MIN + 1)),
        ];
        for (left, right, add, sub) in rows {
            assert_eq!(m(left).checked_add(m(right)).ok(), add.map(m), "{left} + {right}");
            assert_eq!(m(left).checked_sub(m(right)).ok(), sub.map(m), "{left} - {right}");
        }
    }

    #[test]
    fn credits_convert_with_overflow_check() {
        assert_eq!(Millicredits::from_credits(5_000), Ok(Millicredits::new(5_000_000)));
        assert_eq!(Millicredits::from_credits(i64::MAX / 1_000 + 1), Err(Overflow));
        assert_eq!(Millicredits::new(i64::MIN).checked_neg(), Err(Overflow));
    }

    #[test]
    fn sums_fail_on_overflow() {
        let amounts = [Millicredits::MAX, Millicredits::new(1)];
        assert_eq!(Millicredits::checked_sum(amounts), Err(Overflow));
        let amounts = [Millicredits::new(2), Millicredits::new(-3)];
        assert_eq!(Millicredits::checked_sum(amounts), Ok(Millicredits::new(-1)));
    }

    #[test]
    fn displays_as_credits() {
        let rows =
            [(1_800, "1.800"), (-1_800, "-1.800"), (5, "0.005"), (0, "0.000"), (i64::MIN, "-9223372036854775.808")];
        for (raw, shown) in rows {
            assert_eq!(Millicredits::new(raw).to_string(), shown);
        }
    }
}
