//! Account settings storage: one row per account, replaced as a whole.

use creditflow_domain::{AccountId, AccountSettings, Autoreload, Millicredits};

use crate::{Store, StoreError, Timestamp, on_backend};

#[derive(sqlx::FromRow)]
pub(crate) struct SettingsRow {
    email: Option<String>,
    low_balance_threshold_millicredits: Option<i64>,
    autoreload_enabled: bool,
    autoreload_threshold_millicredits: Option<i64>,
    autoreload_pack: Option<String>,
    autoreload_monthly_cap_usd_cents: Option<i64>,
    daily_spend_cap_millicredits: Option<i64>,
}

/// An account's settings row.
pub(crate) const SELECT_SETTINGS: &str = "SELECT email, low_balance_threshold_millicredits, autoreload_enabled, \
     autoreload_threshold_millicredits, autoreload_pack, autoreload_monthly_cap_usd_cents, \
     daily_spend_cap_millicredits FROM account_settings WHERE account_id = $1";

impl SettingsRow {
    pub(crate) fn into_settings(self) -> AccountSettings {
        AccountSettings {
            email: self.email,
            low_balance_threshold: self.low_balance_threshold_millicredits.map(Millicredits::new),
            autoreload: Autoreload {
                enabled: self.autoreload_enabled,
                threshold: self.autoreload_threshold_millicredits.map(Millicredits::new),
                pack: self.autoreload_pack,
                monthly_cap_usd_cents: self.autoreload_monthly_cap_usd_cents,
            },
            daily_spend_cap: self.daily_spend_cap_millicredits.map(Millicredits::new),
        }
    }
}

impl Store {
    /// The account's settings; defaults (nothing set) when it never saved any.
    pub async fn settings(&self, account_id: &AccountId) -> Result<AccountSettings, StoreError> {
        let row: Option<SettingsRow> = on_backend!(self, |pool, _dialect| sqlx::query_as(SELECT_SETTINGS)
            .bind(account_id.as_str())
            .fetch_optional(pool)
            .await?);
        Ok(row.map_or_else(AccountSettings::default, SettingsRow::into_settings))
    }

    /// Replaces the account's settings (the account must exist; validate them first).
    pub async fn put_settings(&self, account_id: &AccountId, settings: &AccountSettings) -> Result<(), StoreError> {
        let sql = "INSERT INTO account_settings (account_id, email, low_balance_threshold_millicredits, \
                   autoreload_enabled, autoreload_threshold_millicredits, autoreload_pack, \
                   autoreload_monthly_cap_usd_cents, daily_spend_cap_millicredits, updated_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (account_id) DO UPDATE SET \
                   email = excluded.email, \
                   low_balance_threshold_millicredits = excluded.low_balance_threshold_millicredits, \
                   autoreload_enabled = excluded.autoreload_enabled, \
                   autoreload_threshold_millicredits = excluded.autoreload_threshold_millicredits, \
                   autoreload_pack = excluded.autoreload_pack, \
                   autoreload_monthly_cap_usd_cents = excluded.autoreload_monthly_cap_usd_cents, \
                   daily_spend_cap_millicredits = excluded.daily_spend_cap_millicredits, \
                   updated_at = excluded.updated_at";
        let reload = &settings.autoreload;
        on_backend!(self, |pool, _dialect| {
            sqlx::query(sql)
                .bind(account_id.as_str())
                .bind(settings.email.as_deref())
                .bind(settings.low_balance_threshold.map(Millicredits::get))
                .bind(reload.enabled)
                .bind(reload.threshold.map(Millicredits::get))
                .bind(reload.pack.as_deref())
                .bind(reload.monthly_cap_usd_cents)
                .bind(settings.daily_spend_cap.map(Millicredits::get))
                .bind(Timestamp::now())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
