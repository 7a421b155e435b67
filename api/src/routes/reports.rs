//! The nightly reconciliation reports for finance: a stored report's verdict, summary and files (the HTML page, its
//! chart, the CSV tables). Reports are computed by the `reports` job or `creditflow report`; this only reads them.

use creditflow_store::ReportFile;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::macros::format_description;

use super::admin::{not_found, reader};
use super::{ApiTags, rfc3339};
use crate::AppState;
use crate::errors::ApiError;
use crate::security::BearerAuth;

pub(crate) struct ReportsApi;

/// One file of a report.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct ReportFileInfo {
    /// `report.html`, `chart.png`, `summary.json`, `top_spenders.csv`...
    name: String,
    /// Its media type.
    content_type: String,
    /// Its size in bytes.
    bytes: i64,
    /// Where to download it.
    href: String,
}

/// A stored report.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub(crate) struct ReportView {
    /// The day reported, `YYYY-MM-DD`.
    date: String,
    /// The time zone the day is counted in.
    time_zone: String,
    /// True when every check passed.
    passed: bool,
    /// The summary: `checks` (name, status pass/fail/skipped, detail) and every figure of the report.
    summary: serde_json::Value,
    /// When it was computed (RFC 3339).
    generated_at: String,
    /// When it was emailed to finance, if it was.
    emailed_at: Option<String>,
    /// Its files.
    files: Vec<ReportFileInfo>,
}

/// A report file, with the media type it was stored with.
#[derive(Debug, ApiResponse)]
pub(crate) enum ReportFileBody {
    /// The HTML report.
    #[oai(status = 200, content_type = "text/html; charset=utf-8")]
    Html(Binary<Vec<u8>>),
    /// The chart.
    #[oai(status = 200, content_type = "image/png")]
    Png(Binary<Vec<u8>>),
    /// A table.
    #[oai(status = 200, content_type = "text/csv")]
    Csv(Binary<Vec<u8>>, #[oai(header = "Content-Disposition")] String),
    /// The summary.
    #[oai(status = 200, content_type = "application/json")]
    Json(Binary<Vec<u8>>),
}

/// `YYYY-MM-DD`, or a 422 naming the format.
fn report_date(text: &str) -> Result<String, ApiError> {
    let format = format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format)
        .ok()
        .and_then(|date| date.format(format).ok())
        .filter(|normalised| normalised == text)
        .ok_or_else(|| ApiError::invalid(format!("`{text}` is not a date like 2026-11-23")))
}

#[OpenApi(tag = "ApiTags::Admin")]
impl ReportsApi {
    /// The nightly reconciliation report of a day (admin or finance): pass/fail per check, the summary's figures,
    /// and links to its files. 404 `not_found` when no report was made for that day.
    #[oai(path = "/api/admin/reports/:date", method = "get")]
    async fn report(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        date: Path<String>,
    ) -> Result<Json<ReportView>, ApiError> {
        reader(&auth.0)?;
        let date = report_date(&date.0)?;
        let Some(report) = state.store.report(&date).await? else {
            return Err(not_found(format!("no report for {date}; reports are made the night after the day")));
        };
        let summary = serde_json::from_str(&report.summary)
            .map_err(|error| ApiError::internal(&format!("stored summary of {date}: {error}")))?;
        let files = report
            .files
            .into_iter()
            .map(|(name, content_type, bytes)| ReportFileInfo {
                href: format!("/api/admin/reports/{date}/files/{name}"),
                name,
                content_type,
                bytes,
            })
            .collect();
        Ok(Json(ReportView {
            time_zone: report.time_zone,
            passed: report.passed,
            summary,
            generated_at: rfc3339(report.generated_at),
            emailed_at: report.emailed_at.map(rfc3339),
            files,
            date,
        }))
    }

    /// One file of a day's report (admin or finance): `report.html`, `chart.png`, `summary.json` or a CSV table.
    #[oai(path = "/api/admin/reports/:date/files/:name", method = "get")]
    async fn file(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        date: Path<String>,
        name: Path<String>,
    ) -> Result<ReportFileBody, ApiError> {
        reader(&auth.0)?;
        let date = report_date(&date.0)?;
        let Some(file) = state.store.report_file(&date, &name.0).await? else {
            return Err(not_found(format!("the report of {date} has no file `{}`", name.0)));
        };
        let ReportFile { name, content_type, body } = file;
        Ok(match content_type.split(';').next().unwrap_or_default() {
            "text/html" => ReportFileBody::Html(Binary(body)),
            "image/png" => ReportFileBody::Png(Binary(body)),
            "application/json" => ReportFileBody::Json(Binary(body)),
            _ => ReportFileBody::Csv(Binary(body), format!("attachment; filename=\"{date}-{name}\"")),
        })
    }
}
