//! The report's HTML: tables with inline styles only (mail clients drop style sheets), the chart as an image the
//! caller names (an inline attachment in the email, a file beside it when served), and every figure also in the
//! attached CSVs.

use std::fmt::Write as _;

use crate::chart::{DEBITED_RGB, PURCHASED_RGB};

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Millicredits as credits with three decimals (`-1,234.500`).
pub fn credits(millicredits: i64) -> String {
    let sign = if millicredits < 0 { "-" } else { "" };
    let magnitude = millicredits.unsigned_abs();
    format!("{sign}{}.{:03}", group_thousands(magnitude / 1_000), magnitude % 1_000)
}

/// Millicredits as US dollars, exactly (1 credit = $0.001, so 1 millicredit = $0.000001): `12.345678`.
pub fn usd_from_millicredits(millicredits: i64) -> String {
    let sign = if millicredits < 0 { "-" } else { "" };
    let magnitude = millicredits.unsigned_abs();
    format!("{sign}{}.{:06}", magnitude / 1_000_000, magnitude % 1_000_000)
}

/// USD cents as dollars: `1,234.56`.
pub fn usd_from_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let magnitude = cents.unsigned_abs();
    format!("{sign}${}.{:02}", group_thousands(magnitude / 100), magnitude % 100)
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A check's line in the report.
#[derive(Clone, Debug)]
pub struct CheckLine {
    /// Its name.
    pub name: String,
    /// `pass`, `fail` or `skipped`.
    pub status: String,
    /// What it found.
    pub detail: String,
}

/// A table of the report: a title and rows of cells (the first row is the header).
#[derive(Clone, Debug)]
pub struct Table {
    /// Its title.
    pub title: String,
    /// A sentence under the title.
    pub note: String,
    /// Header, then rows.
    pub rows: Vec<Vec<String>>,
}

/// What the HTML shows.
#[derive(Clone, Debug)]
pub struct Page<'a> {
    /// `Reconciliation report 2026-11-23 (UTC)`.
    pub title: &'a str,
    /// True when every check passed.
    pub passed: bool,
    /// The checks.
    pub checks: &'a [CheckLine],
    /// Key figures: label and value.
    pub figures: &'a [(String, String)],
    /// The chart's image source (`cid:...` in email, a file name when served).
    pub chart_src: &'a str,
    /// The chart's top gridline, in credits.
    pub chart_top: &'a str,
    /// The first and last day of the chart.
    pub chart_span: (&'a str, &'a str),
    /// The tables.
    pub tables: &'a [Table],
}

const CELL: &str = "padding:4px 8px;border-bottom:1px solid #e5e7eb;text-align:left;font-size:13px";

fn swatch(rgb: [u8; 3]) -> String {
    format!(
        "<span style=\"display:inline-block;width:10px;height:10px;background:#{:02x}{:02x}{:02x}\"></span>",
        rgb[0], rgb[1], rgb[2]
    )
}

/// Renders the page.
pub fn html(page: &Page<'_>) -> String {
    let mut out = String::new();
    let verdict = if page.passed {
        "<p style=\"color:#166534;font-weight:bold\">Every check passed.</p>"
    } else {
        "<p style=\"color:#b91c1c;font-weight:bold\">Some checks failed: see below.</p>"
    };
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:Arial,Helvetica,sans-serif;color:#111827;max-width:760px\">\
         <h1 style=\"font-size:20px\">{title}</h1>{verdict}",
        title = escape(page.title)
    );
    out.push_str("<table cellspacing=\"0\" style=\"border-collapse:collapse\">");
    let _ = write!(
        out,
        "<tr><th style=\"{CELL}\">Check</th><th style=\"{CELL}\">Result</th><th style=\"{CELL}\">Detail</th></tr>"
    );
    for check in page.checks {
        let colour = match check.status.as_str() {
            "pass" => "#166534",
            "fail" => "#b91c1c",
            _ => "#6b7280",
        };
        let _ = write!(
            out,
            "<tr><td style=\"{CELL}\">{}</td><td style=\"{CELL};color:{colour};font-weight:bold\">{}</td>\
             <td style=\"{CELL}\">{}</td></tr>",
            escape(&check.name),
            escape(&check.status),
            escape(&check.detail)
        );
    }
    out.push_str("</table><h2 style=\"font-size:16px\">Key figures</h2><table cellspacing=\"0\" style=\"border-collapse:collapse\">");
    for (label, value) in page.figures {
        let _ = write!(
            out,
            "<tr><td style=\"{CELL}\">{}</td><td style=\"{CELL};text-align:right\">{}</td></tr>",
            escape(label),
            escape(value)
        );
    }
    let _ = write!(
        out,
        "</table><h2 style=\"font-size:16px\">Credits purchased and debited, last 30 days</h2>\
         <p style=\"font-size:13px\">{} purchased &nbsp; {} debited &nbsp; one pair of bars per day, {} to {}; \
         gridlines every quarter of {} credits.</p>\
         <img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"Credits purchased and debited per day over 30 days\">",
        swatch(PURCHASED_RGB),
        swatch(DEBITED_RGB),
        escape(page.chart_span.0),
        escape(page.chart_span.1),
        escape(page.chart_top),
        escape(page.chart_src),
        crate::chart::WIDTH,
        crate::chart::HEIGHT
    );
    for table in page.tables {
        let _ = write!(
            out,
            "<h2 style=\"font-size:16px\">{}</h2><p style=\"font-size:13px\">{}</p>",
            escape(&table.title),
            escape(&table.note)
        );
        if table.rows.len() <= 1 {
            out.push_str("<p style=\"font-size:13px\">Nothing to list.</p>");
            continue;
        }
        out.push_str("<table cellspacing=\"0\" style=\"border-collapse:collapse\">");
        for (index, row) in table.rows.iter().enumerate() {
            out.push_str("<tr>");
            let tag = if index == 0 { "th" } else { "td" };
            for cell in row {
                let _ = write!(out, "<{tag} style=\"{CELL}\">{}</{tag}>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
    out.push_str("<p style=\"font-size:12px;color:#6b7280\">Every table is attached as CSV; amounts in the CSVs are integer millicredits (1 credit = 1,000 millicredits = $0.001) and USD cents.</p></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_shown_exactly() {
        assert_eq!(credits(1_234_500), "1,234.500");
        assert_eq!(credits(-7), "-0.007");
        assert_eq!(usd_from_millicredits(12_345_678), "12.345678");
        assert_eq!(usd_from_millicredits(-1), "-0.000001");
        assert_eq!(usd_from_cents(123_456), "$1,234.56");
        assert_eq!(usd_from_cents(-5), "-$0.05");
    }

    #[test]
    fn text_is_escaped() {
        let checks = [CheckLine { name: "<script>".into(), status: "fail".into(), detail: "a & b".into() }];
        let page = Page {
            title: "R",
            passed: false,
            checks: &checks,
            figures: &[],
            chart_src: "cid:chart",
            chart_top: "10",
            chart_span: ("a", "b"),
            tables: &[],
        };
        let html = html(&page);
        assert!(html.contains("&lt;script&gt;") && html.contains("a &amp; b") && !html.contains("<script>"));
        assert!(html.contains("src=\"cid:chart\""));
    }
}
