//! Account settings: where to email, when a balance counts as low, autoreload, and the daily spend cap.
//!
//! Validation is pure and names the field at fault; whether the autoreload pack exists is checked against the pack
//! catalogue by [`AccountSettings::validate`].

use crate::money::Millicredits;
use crate::packs::PackCatalog;

/// One account's settings. Everything is optional; an account without settings has none of these behaviours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountSettings {
    /// Where low-balance and autoreload emails go.
    pub email: Option<String>,
    /// Below this balance the customer is emailed once per crossing.
    pub low_balance_threshold: Option<Millicredits>,
    /// Automatic top-ups.
    pub autoreload: Autoreload,
    /// The most usage that may be debited per UTC day.
    pub daily_spend_cap: Option<Millicredits>,
}

/// Automatic top-up settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Autoreload {
    /// Whether it runs.
    pub enabled: bool,
    /// Below this balance a reload is bought.
    pub threshold: Option<Millicredits>,
    /// The pack bought.
    pub pack: Option<String>,
    /// The most spent on reloads per calendar month, in US cents.
    pub monthly_cap_usd_cents: Option<i64>,
}

/// A setting that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// The field, as the API names it (`autoreload.pack`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError { field, message: message.into() }
}

impl AccountSettings {
    /// Checks the settings against each other and the pack catalogue.
    pub fn validate(&self, packs: &PackCatalog) -> Result<(), SettingsError> {
        if let Some(email) = &self.email {
            let (local, domain) = email.split_once('@').unwrap_or(("", ""));
            let plausible = !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && email.len() <= 254
                && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !plausible {
                return Err(error("email", "is not an email address"));
            }
        }
        if self.low_balance_threshold.is_some_and(Millicredits::is_negative) {
            return Err(error("lowBalanceThresholdMillicredits", "must be 0 or more"));
        }
        if self.daily_spend_cap.is_some_and(|cap| !cap.is_positive()) {
            return Err(error("dailySpendCapMillicredits", "must be above 0"));
        }
        let reload = &self.autoreload;
        if reload.threshold.is_some_and(Millicredits::is_negative) {
            return Err(error("autoreload.thresholdMillicredits", "must be 0 or more"));
        }
        if reload.monthly_cap_usd_cents.is_some_and(|cap| cap <= 0) {
            return Err(error("autoreload.monthlyCapUsdCents", "must be above 0"));
        }
        if let Some(pack) = &reload.pack
            && packs.get(pack).is_none()
        {
            let known: Vec<&str> = packs.packs().iter().map(|pack| pack.id.as_str()).collect();
            return Err(error("autoreload.pack", format!("no pack `{pack}`; packs: {}", known.join(", "))));
        }
        if reload.enabled {
            if reload.threshold.is_none() {
                return Err(error("autoreload.thresholdMillicredits", "required when autoreload is enabled"));
            }
            if reload.pack.is_none() {
                return Err(error("autoreload.pack", "required when autoreload is enabled"));
            }
            if self.email.is_none() {
                return Err(error("email", "required when autoreload is enabled: failed reloads are emailed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs() -> PackCatalog {
        PackCatalog::from_toml(
            "[[packs]]\nid = \"starter\"\nname = \"Starter\"\nprice_usd_cents = 500\ncredits = 5000\n",
        )
        .expect("packs")
    }

    fn reloading() -> AccountSettings {
        AccountSettings {
            email: Some("ada@example.com".into()),
            low_balance_threshold: Some(Millicredits::new(1_000)),
            autoreload: Autoreload {
                enabled: true,
                threshold: Some(Millicredits::new(2_000)),
                pack: Some("starter".into()),
                monthly_cap_usd_cents: Some(5_000),
            },
            daily_spend_cap: Some(Millicredits::new(100_000)),
        }
    }

    #[test]
    fn validation_table() {
        let with = |change: &dyn Fn(&mut AccountSettings)| {
            let mut settings = reloading();
            change(&mut settings);
            settings
        };
        // (settings, the field an error must name, or None when valid)
        let rows: Vec<(AccountSettings, Option<&str>)> = vec![
            (reloading(), None),
            (AccountSettings::default(), None),
            (with(&|s| s.email = Some("not-an-email".into())), Some("email")),
            (with(&|s| s.email = Some("a b@example.com".into())), Some("email")),
            (with(&|s| s.low_balance_threshold = Some(Millicredits::new(-1))), Some("lowBalanceThresholdMillicredits")),
            (with(&|s| s.daily_spend_cap = Some(Millicredits::ZERO)), Some("dailySpendCapMillicredits")),
            (with(&|s| s.autoreload.pack = Some("mega".into())), Some("autoreload.pack")),
            (with(&|s| s.autoreload.pack = None), Some("autoreload.pack")),
            (with(&|s| s.autoreload.threshold = None), Some("autoreload.thresholdMillicredits")),
            (with(&|s| s.autoreload.monthly_cap_usd_cents = Some(0)), Some("autoreload.monthlyCapUsdCents")),
            (with(&|s| s.email = None), Some("email")),
            (
                with(&|s| {
                    s.email = None;
                    s.autoreload.enabled = false;
                }),
                None,
            ),
        ];
        for (settings, field) in rows {
            assert_eq!(settings.validate(&packs()).err().map(|e| e.field), field, "{settings:?}");
        }
    }
}
