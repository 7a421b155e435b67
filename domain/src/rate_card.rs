//! The rate card: a versioned document of per-model prices per unit kind, and the rounding mode.
//!
//! Rate cards are written by people in TOML, so parsing is strict (unknown keys are errors) and every error names
//! the field it is about. Prices are decimal credits per unit (`"0.0025"` or `0.0025`) and are held exactly as an
//! integer count of picocredits (10^-12 credits) per unit: no floating point reaches a charge.
//!
//! ```toml
//! version = "v1"
//! rounding = "ceil"          # or "precise"
//!
//! [models."gpt-4o"]
//! input_tokens = "0.0025"    # credits per input token
//! output_tokens = "0.01"
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Picocredits (10^-12 credits) in one credit: the resolution of a unit price.
pub const PICOCREDITS_PER_CREDIT: u64 = 1_000_000_000_000;
/// Decimal places a price may have (the picocredit).
const PRICE_SCALE_MAX: usize = 12;
/// The highest price of one unit, in credits; keeps `quantity x price` inside `i128`.
const PRICE_CREDITS_MAX: u64 = 1_000_000;
const NAME_LENGTH_MAX: usize = 128;

/// The name of a rate card version, such as `v1`: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RateVersion(String);

impl RateVersion {
    /// Validates a version name.
    pub fn new(version: impl Into<String>) -> Result<Self, String> {
        let version = version.into();
        let valid_chars = version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if version.is_empty() || version.len() > 64 || !valid_chars {
            return Err(format!("`{version}` is not a valid rate version: use 1 to 64 of A-Z a-z 0-9 . _ -"));
        }
        Ok(Self(version))
    }

    /// The version name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RateVersion {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RateVersion> for String {
    fn from(value: RateVersion) -> Self {
        value.0
    }
}

impl fmt::Display for RateVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a priced charge becomes an amount of millicredits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Every charge rounds up to whole credits: 1.8 credits are charged as 2.000.
    Ceil,
    /// Charges keep their precision to the millicredit (a fraction of a millicredit rounds up).
    Precise,
}

impl Rounding {
    /// The name used in documents and the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ceil => "ceil",
            Self::Precise => "precise",
        }
    }
}

/// A price of one unit, held exactly in picocredits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnitPrice {
    picocredits: u64,
}

impl UnitPrice {
    /// Parses a non-negative decimal number of credits, such as `0.0025`.
    pub fn parse_credits(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits_only(whole)
            || !digits_only(fraction)
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(format!(
                "`{text}` is not a price: write a non-negative decimal number of credits like \"0.0025\""
            ));
        }
        if fraction.len() > PRICE_SCALE_MAX {
            return Err(format!("`{text}` has more than {PRICE_SCALE_MAX} decimal places"));
        }
        let too_high = || format!("`{text}` is above the highest unit price of {PRICE_CREDITS_MAX} credits");
        let whole: u64 = whole.parse().map_err(|_| too_high())?;
        if whole > PRICE_CREDITS_MAX {
            return Err(too_high());
        }
        let fraction_picocredits = format!("{fraction:0<PRICE_SCALE_MAX$}").parse::<u64>().unwrap_or(0);
        let picocredits = whole
            .checked_mul(PICOCREDITS_PER_CREDIT)
            .and_then(|w| w.checked_add(fraction_picocredits))
            .ok_or_else(too_high)?;
        if picocredits > PRICE_CREDITS_MAX * PICOCREDITS_PER_CREDIT {
            return Err(too_high());
        }
        Ok(Self { picocredits })
    }

    /// The exact price in picocredits per unit.
    pub const fn picocredits(self) -> u64 {
        self.picocredits
    }
}

/// Shows the price as decimal credits without trailing zeros: `0.0025`.
impl fmt::Display for UnitPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.picocredits / PICOCREDITS_PER_CREDIT;
        let fraction = self.picocredits % PICOCREDITS_PER_CREDIT;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let fraction = format!("{fraction:012}");
        write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// A validated rate card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCard {
    version: RateVersion,
    rounding: Rounding,
    models: BTreeMap<String, BTreeMap<String, UnitPrice>>,
}

/// A rate card document that cannot be used, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateCardError {
    /// The TOML itself is malformed, or a field is missing, unknown or of the wrong type.
    #[error("rate card is not valid TOML for a rate card: {0}")]
    Syntax(String),
    /// A field has a value that breaks a rule.
    #[error("rate card field `{field}`: {message}")]
    Field {
        /// Dotted path of the field, such as `models.gpt-4o.input_tokens`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateCardDocument {
    version: String,
    rounding: Rounding,
    models: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> RateCardError {
    RateCardError::Field { field: field.into(), message: message.into() }
}

impl RateCard {
    /// Parses and validates a rate card document.
    pub fn from_toml(document: &str) -> Result<Self, RateCardError> {
        let raw: RateCardDocument = toml::from_str(document).map_err(|e| RateCardError::Syntax(e.to_string()))?;
        let version = RateVersion::new(raw.version).map_err(|m| field_error("version", m))?;
        if raw.models.is_empty() {
            return Err(field_error("models", "a rate card needs at least one model"));
        }
        let mut models = BTreeMap::new();
        for (model, units) in raw.models {
            check_name(&model, false).map_err(|m| field_error(format!("models.{model}"), m))?;
            if units.is_empty() {
                return Err(field_error(format!("models.{model}"), "a model needs at least one priced unit kind"));
            }
            let mut prices = BTreeMap::new();
            for (unit, value) in units {
                let field = format!("models.{model}.{unit}");
                check_name(&unit, true).map_err(|m| field_error(&field, m))?;
                let price = match value {
                    toml::Value::String(text) => UnitPrice::parse_credits(&text),
                    toml::Value::Integer(whole) => UnitPrice::parse_credits(&whole.to_string()),
                    // Rust prints the shortest decimal that reads back as the same float, which is the literal the
                    // author typed for any price with up to 15 significant digits.
                    toml::Value::Float(float) if float.is_finite() => UnitPrice::parse_credits(&float.to_string()),
                    other => Err(format!("expected a price in credits, found {}", other.type_str())),
                }
                .map_err(|m| field_error(&field, m))?;
                prices.insert(unit, price);
            }
            models.insert(model, prices);
        }
        Ok(Self { version, rounding: raw.rounding, models })
    }

    /// The version this card is.
    pub fn version(&self) -> &RateVersion {
        &self.version
    }

    /// The rounding mode of its charges.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// The price of one `unit` of `model`, if the card has it.
    pub fn price(&self, model: &str, unit: &str) -> Option<UnitPrice> {
        self.models.get(model)?.get(unit).copied()
    }

    /// True when the card prices `model`.
    pub fn has_model(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Model names, sorted.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// Model names are free text without control characters; unit kinds are `snake_case` identifiers.
fn check_name(name: &str, unit_kind: bool) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_LENGTH_MAX {
        return Err(format!("names must be 1 to {NAME_LENGTH_MAX} characters"));
    }
    if unit_kind && !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(format!("unit kind `{name}` must use only a-z, 0-9 and _"));
    }
    if name.chars().any(char::is_control) {
        return Err("names must not contain control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
