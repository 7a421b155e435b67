//! `creditflow report`: runs the nightly reconciliation report of a day now, with a line per stage, or shows a stored
//! one (the same data as `GET /api/admin/reports/{date}`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use creditflow_reports::{Emailed, RunOptions, Stage, parse_date, run_report};
use creditflow_store::{Store, StoredReport};
use time::OffsetDateTime;

use crate::cli::{ReportArgs, ReportCommand};
use crate::config::Loaded;

/// Runs `creditflow report`, printing to stdout (progress goes to stderr).
pub(crate) async fn run(loaded: &Loaded, args: &ReportArgs) -> anyhow::Result<()> {
    let store = crate::serve::open_store(loaded).await?;
    if loaded.config.auto_migrate {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let output = match &args.command {
        Some(ReportCommand::Show { date, json, out }) => show(&store, date, *json, out.as_deref()).await?,
        None => build(&store, loaded, args).await?,
    };
    print!("{output}");
    store.close().await;
    Ok(())
}

async fn build(store: &Store, loaded: &Loaded, args: &ReportArgs) -> anyhow::Result<String> {
    let zone = loaded.report.zone;
    let date = match &args.date {
        Some(text) => parse_date(text)?,
        None => zone.date_at(OffsetDateTime::now_utc()).pred_opt().context("the calendar has no day before today")?,
    };
    let (mailer, from) = crate::serve::mailer(loaded)?;
    let deps = crate::serve::report_deps(store, loaded, crate::serve::payments(loaded)?, mailer, from);
    // A forced run is a run of its own: announced and emailed under its own id.
    let request = args.force.then(|| format!("cli{}", OffsetDateTime::now_utc().unix_timestamp()));
    let options = RunOptions { force: args.force, request };
    let started = Instant::now();
    let progress = |stage: Stage| {
        let step = Stage::ALL.iter().position(|each| *each == stage).map_or(0, |index| index + 1);
        eprintln!(
            "[{step}/{total}] {:>6.1}s  {}",
            started.elapsed().as_secs_f64(),
            stage.describe(),
            total = Stage::ALL.len()
        );
    };
    eprintln!("report of {date} in {}", zone.name());
    let built = run_report(date, &options, &deps, &progress).await.with_context(|| format!("the report of {date}"))?;
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    if args.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&built.summary)?));
    }
    let mut out = checks_table(&built.date, zone.name(), built.passed, &built.summary);
    let names: Vec<&str> = built.files.iter().map(|file| file.name.as_str()).collect();
    let _ = writeln!(out, "\nstored: {}", names.join(", "));
    let _ = writeln!(out, "files:  creditflow report show --date {} --out DIR", built.date);
    let email = match built.emailed {
        Emailed::Sent => format!("sent to {}", recipients(loaded)),
        Emailed::AlreadySent => "sent earlier for this date; not sent again (--force sends it again)".to_owned(),
        Emailed::NoRecipients => "not sent: report.recipients is empty".to_owned(),
    };
    let _ = writeln!(out, "email:  {email}");
    Ok(out)
}

fn recipients(loaded: &Loaded) -> String {
    let addresses: Vec<String> = loaded.report.recipients.iter().map(ToString::to_string).collect();
    addresses.join(", ")
}

async fn show(store: &Store, date: &str, json: bool, out_dir: Option<&Path>) -> anyhow::Result<String> {
    let date = parse_date(date)?.format("%Y-%m-%d").to_string();
    let report = store
        .report(&date)
        .await?
        .with_context(|| format!("no report is stored for {date}; run `creditflow report --date {date}`"))?;
    let summary: serde_json::Value = serde_json::from_str(&report.summary).context("the stored summary")?;
    if let Some(dir) = out_dir {
        return write_files(store, &report, dir).await;
    }
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&summary)?));
    }
    let mut out = checks_table(&report.date, &report.time_zone, report.passed, &summary);
    let stamp = |at: OffsetDateTime| at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let _ = writeln!(out, "\ngenerated: {}", stamp(report.generated_at));
    let _ = writeln!(out, "emailed:   {}", report.emailed_at.map_or_else(|| "no".to_owned(), stamp));
    let _ = writeln!(out, "{:<28}{:<28}{:>10}", "FILE", "TYPE", "BYTES");
    for (name, content_type, bytes) in &report.files {
        let _ = writeln!(out, "{name:<28}{content_type:<28}{bytes:>10}");
    }
    Ok(out)
}

async fn write_files(store: &Store, report: &StoredReport, dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = String::new();
    for (name, _, _) in &report.files {
        let file = store
            .report_file(&report.date, name)
            .await?
            .with_context(|| format!("the report's file {name} is gone"))?;
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.body).with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(out, "{}", path.display());
    }
    Ok(out)
}

/// The report's verdict and a table of its checks.
fn checks_table(date: &str, zone: &str, passed: bool, summary: &serde_json::Value) -> String {
    let checks = summary["checks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let failed = checks.iter().filter(|check| check["status"] == "fail").count();
    let mut out = String::new();
    let verdict = if passed { "PASSED".to_owned() } else { format!("FAILED ({failed} of {} checks)", checks.len()) };
    let _ = writeln!(out, "report {date} ({zone}): {verdict}");
    let _ = writeln!(out, "{:<22}{:<9}DETAIL", "CHECK", "STATUS");
    for check in checks {
        let text = |key: &str| check[key].as_str().unwrap_or_default().to_owned();
        let _ = writeln!(out, "{:<22}{:<9}{}", text("name"), text("status"), text("detail"));
    }
    out
}
