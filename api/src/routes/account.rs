//! Reading an account: its balance, its ledger a page at a time, and the whole ledger as a streamed CSV file.

use creditflow_domain::AccountId;
use creditflow_store::Store;
use csv::csv_line;
use futures_util::stream;
use poem::Body;
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, LedgerLine, credits};
use crate::AppState;
use crate::auth::{Principal, Role};
use crate::errors::{ApiError, ErrorBody};
use crate::security::BearerAuth;

pub(crate) struct AccountApi;

const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;
/// Entries read per database round trip while streaming an export.
const EXPORT_CHUNK: i64 = 1_000;

/// An account's balance.
#[allow(clippy::struct_field_names, reason = "the names are the wire format")]
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct Balance {
    /// The account.
    account_id: String,
    /// Balance in millicredits (may be negative after usage that already happened).
    balance_millicredits: i64,
    /// Balance in credits (`"4998.200"`).
    balance_credits: String,
    /// `active` or `frozen`.
    status: String,
}

/// A page of ledger lines, newest first.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct LedgerPage {
    /// Up to `limit` lines.
    entries: Vec<LedgerLine>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, ApiResponse)]
pub(crate) enum CsvExport {
    /// The ledger as CSV, oldest line first, streamed.
    #[oai(status = 200, content_type = "text/csv; charset=utf-8")]
    Ok(Binary<Body>, #[oai(header = "Content-Disposition")] String),
}

/// Resolves the account a read acts on. A customer's own account is created on first use (a zero balance);
/// others must name an existing account.
pub(crate) async fn readable_account(
    store: &Store,
    principal: &Principal,
    requested: Option<&str>,
) -> Result<AccountId, ApiError> {
    let account_id = principal.account(requested, false)?;
    let is_own = principal.has(Role::Customer) && account_id.as_str() == principal.subject;
    if is_own {
        store.create_account(&account_id).await?;
    } else if store.account(&account_id).await?.is_none() {
        return Err(ApiError::NotFound(Json(ErrorBody::new("not_found", format!("no account `{account_id}`")))));
    }
    Ok(account_id)
}

#[OpenApi(tag = "ApiTags::Account")]
impl AccountApi {
    /// The account's balance.
    #[oai(path = "/api/balance", method = "get")]
    async fn balance(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        #[oai(name = "accountId")] account_id: Query<Option<String>>,
    ) -> Result<Json<Balance>, ApiError> {
        let account_id = readable_account(&state.store, &auth.0, account_id.0.as_deref()).await?;
        let account = state.store.account(&account_id).await?.ok_or_else(|| ApiError::internal(&"account vanished"))?;
        Ok(Json(Balance {
            account_id: account_id.to_string(),
            balance_millicredits: account.balance.get(),
            balance_credits: credits(account.balance),
            status: account.status.as_str().to_owned(),
        }))
    }

    /// The account's ledger, newest line first, a page at a time. Pages are stable: lines are only ever appended,
    /// so following `nextCursor` never skips or repeats a line, whatever is written meanwhile.
    #[oai(path = "/api/ledger", method = "get")]
    async fn ledger(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        #[oai(name = "accountId")] account_id: Query<Option<String>>,
        /// `nextCursor` from the previous page.
        cursor: Query<Option<String>>,
        /// Lines per page, 1 to 500 (default 50).
        limit: Query<Option<i64>>,
    ) -> Result<Json<LedgerPage>, ApiError> {
        let account_id = readable_account(&state.store, &auth.0, account_id.0.as_deref()).await?;
        let limit = limit.0.unwrap_or(PAGE_DEFAULT);
        if !(1..=PAGE_MAX).contains(&limit) {
            return Err(ApiError::invalid(format!("limit must be 1 to {PAGE_MAX}")));
        }
        let before = match cursor.0.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::BadRequest(Json(ErrorBody::new("bad_request", "cursor is not one this API returned")))
            })?),
        };
        let entries = state.store.entries_newest_first(&account_id, before, limit).await?;
        let next_cursor = match entries.last() {
            Some(last) if entries.len() == usize::try_from(limit).unwrap_or(usize::MAX) && last.sequence > 1 => {
                Some(last.sequence.to_string())
            }
            _ => None,
        };
        Ok(Json(LedgerPage { entries: entries.into_iter().map(LedgerLine::from).collect(), next_cursor }))
    }

    /// The account's whole ledger as a CSV file (oldest line first), streamed from the database a chunk at a time.
    #[oai(path = "/billing/ledger/export.csv", method = "get")]
    async fn export_csv(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        #[oai(name = "accountId")] account_id: Query<Option<String>>,
    ) -> Result<CsvExport, ApiError> {
        let account_id = readable_account(&state.store, &auth.0, account_id.0.as_deref()).await?;
        let filename = format!("ledger-{account_id}.csv");
        let body = Body::from_bytes_stream(csv_stream(state.store.clone(), account_id));
        Ok(CsvExport::Ok(Binary(body), format!("attachment; filename=\"{filename}\"")))
    }
}

/// The export's header row. A UTF-8 byte order mark goes first so spreadsheet programs read the file as UTF-8.
const CSV_HEADER: &str = "\u{feff}id,sequence,created_at,kind,amount_credits,balance_after_credits,\
amount_millicredits,balance_after_millicredits,correlation_id,rate_version,source_ref,reason\r\n";

/// Streams the ledger: the header, then one chunk of rows per database page. Memory stays flat however long the
/// ledger is.
fn csv_stream(store: Store, account_id: AccountId) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    // State: the last sequence written, or None before the header.
    stream::try_unfold(None::<i64>, move |after| {
        let (store, account_id) = (store.clone(), account_id.clone());
        async move {
            let Some(after) = after else { return Ok(Some((CSV_HEADER.as_bytes().to_vec(), Some(0)))) };
            let entries = store.entries(&account_id, after, EXPORT_CHUNK).await.map_err(|error| {
                tracing::error!(%error, "ledger export failed part way");
                std::io::Error::other("ledger export failed")
            })?;
            let Some(last) = entries.last().map(|entry| entry.sequence) else { return Ok(None) };
            let mut chunk = Vec::with_capacity(entries.len() * 160);
            for entry in &entries {
                csv_line(&mut chunk, entry);
            }
            Ok(Some((chunk, Some(last))))
        }
    })
}

mod csv {
    //! CSV formatting of a ledger line (RFC 4180: comma separated, CRLF, quotes doubled inside quoted fields).

    use creditflow_domain::Entry;

    /// Appends one CSV row for `entry`.
    pub(super) fn csv_line(out: &mut Vec<u8>, entry: &Entry) {
        let created_at = super::super::rfc3339(entry.created_at);
        let fields: [&str; 12] = [
            &entry.id,
            &entry.sequence.to_string(),
            &created_at,
            entry.kind.as_str(),
            &super::credits(entry.amount),
            &super::credits(entry.balance_after),
            &entry.amount.get().to_string(),
            &entry.balance_after.get().to_string(),
            entry.correlation_id.as_deref().unwrap_or(""),
            entry.rate_version.as_ref().map_or("", |version| version.as_str()),
            entry.source_ref.as_deref().unwrap_or(""),
            entry.reason.as_deref().unwrap_or(""),
        ];
        for (index, field) in fields.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            // Free-text fields (index 8 on) are caller-supplied: quote them, and defuse spreadsheet formulas.
            write_field(out, field, index >= 8);
        }
        out.extend_from_slice(b"\r\n");
    }

    fn write_field(out: &mut Vec<u8>, field: &str, caller_text: bool) {
        let formula = caller_text && field.starts_with(['=', '+', '-', '@', '\t', '\r']);
        let needs_quotes = formula || field.contains([',', '"', '\r', '\n']);
        if !needs_quotes {
            out.extend_from_slice(field.as_bytes());
            return;
        }
        out.push(b'"');
        if formula {
            out.push(b'\'');
        }
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }

    #[cfg(test)]
    mod tests {
        use super::write_field;

        #[test]
        fn fields_are_quoted_and_formulas_defused() {
            let rows = [
                ("plain", false, "plain"),
                ("a,b", true, "\"a,b\""),
                ("say \"hi\"", true, "\"say \"\"hi\"\"\""),
                ("=HYPERLINK(\"x\")", true, "\"'=HYPERLINK(\"\"x\"\")\""),
                ("-2.000", false, "-2.000"),
                ("line\nbreak", true, "\"line\nbreak\""),
            ];
            for (field, caller_text, expected) in rows {
                let mut out = Vec::new();
                write_field(&mut out, field, caller_text);
                assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{field:?}");
            }
        }
    }
}
