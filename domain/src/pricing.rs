//! Pricing a usage record against a rate card: quantities per unit kind in, a charge in millicredits out.
//!
//! The sum is computed exactly in picocredits with `i128` and rounded once, at the end, by the card's rounding mode:
//! `ceil` rounds the whole charge up to a whole credit, `precise` rounds it up to the millicredit (a customer is never
//! charged less than the exact price, and never more than one rounding step above it).

use std::collections::BTreeMap;

use crate::money::{MILLICREDITS_PER_CREDIT, Millicredits};
use crate::rate_card::{PICOCREDITS_PER_CREDIT, RateCard, RateVersion, Rounding};

/// Quantities used, per unit kind (for example `input_tokens = 1200`).
pub type Usage = BTreeMap<String, u64>;

/// The price of one usage record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// What to debit, after rounding.
    pub amount: Millicredits,
    /// The exact price before rounding, in picocredits.
    pub exact_picocredits: i128,
    /// The rate card version that priced it.
    pub rate_version: RateVersion,
    /// The rounding mode applied.
    pub rounding: Rounding,
}

/// Why a usage record could not be priced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The rate card has no such model.
    #[error("model `{model}` is not on rate card {version}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The card consulted.
        version: RateVersion,
    },
    /// The model has no price for this unit kind.
    #[error("model `{model}` has no price for unit `{unit}` on rate card {version}")]
    UnknownUnit {
        /// The model asked for.
        model: String,
        /// The unit kind without a price.
        unit: String,
        /// The card consulted.
        version: RateVersion,
    },
    /// The usage record names no units at all.
    #[error("usage names no units")]
    EmptyUsage,
    /// The charge does not fit a millicredit amount.
    #[error("the charge overflows the range of a millicredit amount")]
    Overflow,
}

/// Millicredits per picocredit-denominated credit fraction: 10^12 / 10^3.
const PICOCREDITS_PER_MILLICREDIT: i128 = (PICOCREDITS_PER_CREDIT / 1_000) as i128;

impl RateCard {
    /// Prices one usage record of `model`.
    pub fn charge(&self, model: &str, usage: &Usage) -> Result<Charge, PricingError> {
        if !self.has_model(model) {
            return Err(PricingError::UnknownModel { model: model.to_owned(), version: self.version().clone() });
        }
        if usage.is_empty() {
            return Err(PricingError::EmptyUsage);
        }
        let mut exact_picocredits: i128 = 0;
        for (unit, quantity) in usage {
            let price = self.price(model, unit).ok_or_else(|| PricingError::UnknownUnit {
                model: model.to_owned(),
                unit: unit.clone(),
                version: self.version().clone(),
            })?;
            let line =
                i128::from(*quantity).checked_mul(i128::from(price.picocredits())).ok_or(PricingError::Overflow)?;
            exact_picocredits = exact_picocredits.checked_add(line).ok_or(PricingError::Overflow)?;
        }
        let amount = round(exact_picocredits, self.rounding()).ok_or(PricingError::Overflow)?;
        Ok(Charge { amount, exact_picocredits, rate_version: self.version().clone(), rounding: self.rounding() })
    }
}

/// Rounds a non-negative picocredit amount up to the step of `rounding`, as millicredits.
fn round(picocredits: i128, rounding: Rounding) -> Option<Millicredits> {
    debug_assert!(picocredits >= 0, "prices and quantities are never negative");
    let step_millicredits: i128 = match rounding {
        Rounding::Ceil => i128::from(MILLICREDITS_PER_CREDIT),
        Rounding::Precise => 1,
    };
    let step_picocredits = step_millicredits.checked_mul(PICOCREDITS_PER_MILLICREDIT)?;
    let steps = picocredits.checked_add(step_picocredits.checked_sub(1)?)?.checked_div(step_picocredits)?;
    let millicredits = steps.checked_mul(step_millicredits)?;
    i64::try_from(millicredits).ok().map(Millicredits::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(rounding: &str) -> RateCard {
        RateCard::from_toml(&format!(
            "version = \"v7\"\nrounding = \"{rounding}\"\n[models.m]\n\
             tokens = \"0.0018\"\nimages = \"1.8\"\nseconds = \"0.000000000001\"\nbig = \"1000000\"\nfree = 0\n"
        ))
        .expect("test card")
    }

    fn usage(rows: &[(&str, u64)]) -> Usage {
        rows.iter().map(|(unit, quantity)| ((*unit).to_owned(), *quantity)).collect()
    }

    /// (rounding, usage, expected millicredits)
    type Row<'a> = (&'a str, &'a [(&'a str, u64)], i64);

    #[test]
    fn charge_table() {
        // (rounding, usage, expected millicredits) — one row per rule.
        let rows: [Row<'_>; 12] = [
            ("ceil", &[("images", 1)], 2_000),                     // 1.8 credits -> 2.0
            ("precise", &[("images", 1)], 1_800),                  // 1.8 credits stay 1.800
            ("ceil", &[("tokens", 1_000)], 2_000),                 // 1000 x 0.0018 = 1.8 -> 2.0
            ("ceil", &[("images", 5)], 9_000),                     // exactly 9 credits: no rounding
            ("precise", &[("tokens", 1)], 2),                      // 0.0018 credits = 1.8 mc -> 2 mc
            ("precise", &[("seconds", 1)], 1),                     // one picocredit still costs a millicredit
            ("ceil", &[("seconds", 1)], 1_000),                    // and a whole credit under ceil
            ("precise", &[("free", 1_000_000)], 0),                // a free unit costs nothing
            ("ceil", &[("free", 7)], 0),                           // zero stays zero under ceil
            ("precise", &[("tokens", 500), ("images", 1)], 2_700), // lines are summed before rounding
            ("ceil", &[("tokens", 500), ("images", 1)], 3_000),
            ("precise", &[("tokens", 0)], 0),
        ];
        for (rounding, quantities, expected) in rows {
            let charge = card(rounding).charge("m", &usage(quantities)).expect("priced");
            assert_eq!(charge.amount, Millicredits::new(expected), "{rounding} {quantities:?}");
            assert_eq!(charge.rate_version.as_str(), "v7");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        // 1e6 credits x u64::MAX units fits i128 but not an i64 of millicredits.
        assert_eq!(card("precise").charge("m", &usage(&[("big", u64::MAX)])), Err(PricingError::Overflow));
        assert_eq!(
            card("ceil").charge("m", &usage(&[("big", u64::MAX), ("images", u64::MAX)])),
            Err(PricingError::Overflow)
        );
        // The largest charge that still fits is priced exactly.
        let units = u64::try_from(i64::MAX / 1_000_000_000).expect("fits");
        let charge = card("precise").charge("m", &usage(&[("big", units)])).expect("fits");
        assert_eq!(charge.amount.get(), i64::MAX / 1_000_000_000 * 1_000_000_000);
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let card = card("ceil");
        let error = card.charge("gpt-9", &usage(&[("tokens", 1)])).expect_err("unknown model");
        assert_eq!(error.to_string(), "model `gpt-9` is not on rate card v7");
        let error = card.charge("m", &usage(&[("minutes", 1)])).expect_err("unknown unit");
        assert_eq!(error.to_string(), "model `m` has no price for unit `minutes` on rate card v7");
        assert_eq!(card.charge("m", &Usage::new()), Err(PricingError::EmptyUsage));
    }
}
