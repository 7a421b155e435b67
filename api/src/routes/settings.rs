//! `GET/PUT /api/settings`: an account's email, low-balance threshold, autoreload and daily spend cap.

use creditflow_domain::{AccountSettings, Autoreload, Millicredits};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use super::account::readable_account;
use crate::AppState;
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct SettingsApi;

/// Automatic top-ups: when a usage debit takes the balance under the threshold, the saved card is charged off-session
/// for as many packs as close the gap (within the monthly cap).
#[derive(Debug, Default, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct AutoreloadSettings {
    /// Whether autoreload runs (needs `thresholdMillicredits`, `pack` and an `email`).
    #[oai(default)]
    enabled: bool,
    /// Reload when the balance falls under this, in millicredits.
    threshold_millicredits: Option<i64>,
    /// The pack bought, such as `starter`.
    pack: Option<String>,
    /// The most spent on reloads per calendar month, in US cents.
    monthly_cap_usd_cents: Option<i64>,
}

/// An account's settings. Absent fields are off.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct Settings {
    /// Where low-balance and autoreload emails go.
    email: Option<String>,
    /// Email once when the balance falls under this, in millicredits.
    low_balance_threshold_millicredits: Option<i64>,
    /// Automatic top-ups (off when absent).
    autoreload: Option<AutoreloadSettings>,
    /// The most usage debited per UTC day, in millicredits; reconcile answers 403 `daily_spend_cap_exceeded` past it.
    daily_spend_cap_millicredits: Option<i64>,
}

impl From<AccountSettings> for Settings {
    fn from(settings: AccountSettings) -> Self {
        Self {
            email: settings.email,
            low_balance_threshold_millicredits: settings.low_balance_threshold.map(Millicredits::get),
            autoreload: Some(AutoreloadSettings {
                enabled: settings.autoreload.enabled,
                threshold_millicredits: settings.autoreload.threshold.map(Millicredits::get),
                pack: settings.autoreload.pack,
                monthly_cap_usd_cents: settings.autoreload.monthly_cap_usd_cents,
            }),
            daily_spend_cap_millicredits: settings.daily_spend_cap.map(Millicredits::get),
        }
    }
}

impl From<Settings> for AccountSettings {
    fn from(settings: Settings) -> Self {
        let autoreload = settings.autoreload.unwrap_or_default();
        Self {
            email: settings.email.map(|email| email.trim().to_owned()),
            low_balance_threshold: settings.low_balance_threshold_millicredits.map(Millicredits::new),
            autoreload: Autoreload {
                enabled: autoreload.enabled,
                threshold: autoreload.threshold_millicredits.map(Millicredits::new),
                pack: autoreload.pack,
                monthly_cap_usd_cents: autoreload.monthly_cap_usd_cents,
            },
            daily_spend_cap: settings.daily_spend_cap_millicredits.map(Millicredits::new),
        }
    }
}

#[OpenApi(tag = "ApiTags::Account")]
impl SettingsApi {
    /// The account's settings.
    #[oai(path = "/api/settings", method = "get")]
    async fn get_settings(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        #[oai(name = "accountId")] account_id: Query<Option<String>>,
    ) -> Result<Json<Settings>, ApiError> {
        let account_id = readable_account(&state.store, &auth.0, account_id.0.as_deref()).await?;
        Ok(Json(state.store.settings(&account_id).await?.into()))
    }

    /// Replace the account's settings. 422 `invalid_request` names the field at fault.
    #[oai(path = "/api/settings", method = "put")]
    async fn put_settings(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        #[oai(name = "accountId")] account_id: Query<Option<String>>,
        body: Json<Settings>,
    ) -> Result<Json<Settings>, ApiError> {
        let account_id = auth.0.account(account_id.0.as_deref(), true)?;
        let settings = AccountSettings::from(body.0);
        settings
            .validate(&state.packs)
            .map_err(|error| ApiError::Unprocessable(Json(ErrorBody::new("invalid_request", error.to_string()))))?;
        state.store.create_account(&account_id).await?;
        state.store.put_settings(&account_id, &settings).await?;
        Ok(Json(settings.into()))
    }
}
