//! Credit packs: what a customer can buy, loaded from configuration.
//!
//! A pack has an id, a display name, a price in US cents and the credits it grants; the Stripe price id is optional
//! (creditflow creates `PaymentIntents` for the amount when there is none). 1 credit = $0.001, so the $5 Starter pack
//! grants 5,000 credits; packs may grant more than their price (bonus packs), never zero.

use serde::Deserialize;

use crate::money::Millicredits;

/// One purchasable credit pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditPack {
    /// Stable identifier used by the API (`starter`).
    pub id: String,
    /// Name shown to customers.
    pub name: String,
    /// Price in US cents.
    pub price_usd_cents: i64,
    /// Credits granted, as millicredits.
    pub grant: Millicredits,
    /// Stripe Price id, when the pack is sold through one.
    pub stripe_price_id: Option<String>,
}

/// The list of packs on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackCatalog {
    packs: Vec<CreditPack>,
}

/// A pack list that cannot be used, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackCatalogError {
    /// Malformed TOML, or a missing, unknown or mistyped field.
    #[error("pack list is not valid TOML for a pack list: {0}")]
    Syntax(String),
    /// A field has a value that breaks a rule.
    #[error("pack list field `{field}`: {message}")]
    Field {
        /// Path of the field, such as `packs[0].credits`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackDocument {
    packs: Vec<PackEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackEntry {
    id: String,
    name: String,
    price_usd_cents: i64,
    credits: i64,
    stripe_price_id: Option<String>,
}

impl PackCatalog {
    /// Parses and validates a pack list.
    pub fn from_toml(document: &str) -> Result<Self, PackCatalogError> {
        let raw: PackDocument = toml::from_str(document).map_err(|e| PackCatalogError::Syntax(e.to_string()))?;
        let error = |index: usize, field: &str, message: &str| PackCatalogError::Field {
            field: format!("packs[{index}].{field}"),
            message: message.to_owned(),
        };
        if raw.packs.is_empty() {
            return Err(PackCatalogError::Field { field: "packs".into(), message: "list at least one pack".into() });
        }
        let mut packs: Vec<CreditPack> = Vec::with_capacity(raw.packs.len());
        for (index, entry) in raw.packs.into_iter().enumerate() {
            let id_ok = !entry.id.is_empty()
                && entry.id.len() <= 64
                && entry.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(error(index, "id", "use 1 to 64 of a-z 0-9 _ -"));
            }
            if packs.iter().any(|pack| pack.id == entry.id) {
                return Err(error(index, "id", &format!("`{}` is listed twice", entry.id)));
            }
            if entry.name.trim().is_empty() {
                return Err(error(index, "name", "must not be empty"));
            }
            if entry.price_usd_cents <= 0 {
                return Err(error(index, "price_usd_cents", "must be above zero"));
            }
            if entry.credits <= 0 {
                return Err(error(index, "credits", "must be above zero"));
            }
            let grant =
                Millicredits::from_credits(entry.credits).map_err(|_| error(index, "credits", "is too large"))?;
            if entry.stripe_price_id.as_deref().is_some_and(|id| !id.starts_with("price_")) {
                return Err(error(index, "stripe_price_id", "a Stripe price id starts with `price_`"));
            }
            packs.push(CreditPack {
                id: entry.id,
                name: entry.name,
                price_usd_cents: entry.price_usd_cents,
                grant,
                stripe_price_id: entry.stripe_price_id,
            });
        }
        Ok(Self { packs })
    }

    /// The pack with this id.
    pub fn get(&self, id: &str) -> Option<&CreditPack> {
        self.packs.iter().find(|pack| pack.id == id)
    }

    /// All packs, in the order configured.
    pub fn packs(&self) -> &[CreditPack] {
        &self.packs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_starter_pack_grants_five_thousand_credits_for_five_dollars() {
        let catalog = PackCatalog::from_toml(include_str!("../../config/packs.toml")).expect("shipped packs");
        let starter = catalog.get("starter").expect("starter pack");
        assert_eq!(starter.price_usd_cents, 500);
        assert_eq!(starter.grant, Millicredits::new(5_000_000));
    }

    #[test]
    fn errors_name_the_bad_field() {
        let pack = |fields: &str| format!("[[packs]]\n{fields}\n");
        let good = "id = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000";
        let rows = [
            (pack("id = \"Starter!\"\nname = \"S\"\nprice_usd_cents = 500\ncredits = 5000"), "packs[0].id"),
            (pack("id = \"s\"\nname = \" \"\nprice_usd_cents = 500\ncredits = 5000"), "packs[0].name"),
            (pack("id = \"s\"\nname = \"S\"\nprice_usd_cents = 0\ncredits = 5000"), "packs[0].price_usd_cents"),
            (pack("id = \"s\"\nname = \"S\"\nprice_usd_cents = 500\ncredits = -1"), "packs[0].credits"),
            (
                pack("id = \"s\"\nname = \"S\"\nprice_usd_cents = 500\ncredits = 9223372036854775807"),
                "packs[0].credits",
            ),
            (pack(&format!("{good}\nstripe_price_id = \"prod_1\"")), "packs[0].stripe_price_id"),
            (format!("{}{}", pack(good), pack(good)), "packs[1].id"),
            (pack("id = \"s\"\nname = \"S\"\nprice_usd_cents = 500"), "missing field `credits`"),
            ("packs = []".to_owned(), "field `packs`"),
        ];
        for (document, expected) in rows {
            let error = PackCatalog::from_toml(&document).expect_err(&document).to_string();
            assert!(error.contains(expected), "{document:?}: `{error}` lacks `{expected}`");
        }
    }
}
