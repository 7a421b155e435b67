//! Times the nightly report's polars computations on a large ledger extract, for the benchmark in `bench/report`.
//!
//! It reads the extract's `entries.csv` with polars into the frame the report works with (the columns of
//! [`frames::entry_schema`] and `day`, in day order), then runs the report's own functions from
//! [`creditflow_reports::frames`] on it, so what is timed is the code the nightly job runs. Balances per account
//! have no function in `frames` (the job takes them from the store), so that part is written here with polars
//! directly. It prints one JSON object, the same shape `bench/report/reference.py` prints for `pandas` and
//! `DuckDB`: `{"engine", "threads", "rows", "load_seconds", "compute_seconds", "results"}`.
//!
//! Run it with `POLARS_MAX_THREADS` set (the benchmark sets 2):
//! `cargo run --release -p creditflow-reports --example report_bench -- --entries DIR/entries.csv --day YYYY-MM-DD`

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use chrono::{Days, NaiveDate};
use creditflow_reports::{day::parse_date, frames};
use polars::prelude::*;
use serde_json::{Value, json};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The report's series is the 30 days ending with the report day; day indexes run 0..=29.
const SERIES_DAYS: i32 = 30;
const REPORT_DAY: i32 = SERIES_DAYS - 1;
/// The week before the report day, as day indexes.
const PRIOR_WEEK: (i32, i32) = (REPORT_DAY - 7, REPORT_DAY - 1);
const TOP_SPENDERS: u32 = 10;
const LARGEST_BALANCES: u32 = 5;

const USAGE_TEXT: &str = "usage: report_bench --entries PATH/entries.csv --day YYYY-MM-DD";

struct Args {
    entries: PathBuf,
    day: NaiveDate,
}

fn parse_args() -> Result<Args, String> {
    let mut entries = None;
    let mut day = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--entries" => entries = Some(PathBuf::from(value)),
            "--day" => day = Some(parse_date(&value).map_err(|error| error.to_string())?),
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    Ok(Args { entries: entries.ok_or("--entries is required")?, day: day.ok_or("--day is required")? })
}

/// The first microsecond (UTC) of the series that ends with `day`.
fn series_start_us(day: NaiveDate) -> Result<i64, String> {
    let first = day.checked_sub_days(Days::new(u64::from(SERIES_DAYS.unsigned_abs() - 1))).ok_or("day out of range")?;
    Ok(first.and_hms_opt(0, 0, 0).ok_or("day out of range")?.and_utc().timestamp_micros())
}

/// Bytes of the extract parsed at a time. Read in blocks, only one block of CSV text is in memory beside the frame;
/// polars' reader would map the whole file (1.2 GB for 10 million entries), all of it resident by the end.
const BLOCK_BYTES: usize = 64 << 20;

/// Reads the extract into the report's entries frame ([`frames::entry_schema`], text columns categorical as they are
/// parsed) with `day`, the index of each entry's UTC day in the series (negative before it), in day order as
/// `frames::entries_frame` makes it for entries from the store. Columns no computation reads are not kept: the rate
/// card version is skipped, the timestamp dropped once `day` is derived from it.
fn load(path: &Path, start_us: i64) -> Result<DataFrame, String> {
    let entry_schema = frames::entry_schema();
    // The file's columns in order, typed as the frame wants them; explicit types mean no inference pass.
    let file_schema: Schema = ["id", "account_id", "kind", "amount", "model", "rate_version", "created_at_us"]
        .into_iter()
        .map(|name| {
            let dtype = match name {
                "created_at_us" => DataType::Int64,
                _ => entry_schema.get(name).cloned().unwrap_or(DataType::String),
            };
            Field::new(name.into(), dtype)
        })
        .collect();
    let kept: Arc<[PlSmallStr]> = entry_schema.iter_names().cloned().chain(["created_at_us".into()]).collect();
    let reader = CsvReadOptions::default().with_schema(Some(Arc::new(file_schema))).with_columns(Some(kept));

    let mut file = File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut block = vec![0u8; BLOCK_BYTES];
    let (mut filled, mut first) = (0, true);
    let mut entries: Option<DataFrame> = None;
    loop {
        let read = file.read(&mut block[filled..]).map_err(|error| format!("{}: {error}", path.display()))?;
        filled += read;
        if read > 0 && filled < block.len() {
            continue;
        }
        // A block ends with its last complete line; what follows starts the next one.
        let end = if read == 0 {
            filled
        } else {
            block.iter().rposition(|byte| *byte == b'\n').ok_or("a line is longer than a block")? + 1
        };
        if end > 0 {
            let part = parse_block(&block[..end], reader.clone().with_has_header(first), start_us)
                .map_err(|error| format!("parsing {}: {error}", path.display()))?;
            if let Some(entries) = &mut entries {
                entries.vstack_mut_owned(part).map_err(|error| error.to_string())?;
            } else {
                entries = Some(part);
            }
            first = false;
        }
        block.copy_within(end..filled, 0);
        filled -= end;
        if read == 0 {
            break;
        }
    }
    let mut entries = entries.ok_or("the extract is empty")?;
    entries.rechunk_mut();
    frames::in_day_order(entries).map_err(|error| error.to_string())
}

/// One block of whole CSV lines as entries with `day`. Floor division in Rust: polars' `floor_div` needs a feature
/// the report itself does not use.
fn parse_block(bytes: &[u8], reader: CsvReadOptions, start_us: i64) -> PolarsResult<DataFrame> {
    let mut part = reader.with_rechunk(false).into_reader_with_file_handle(Cursor::new(bytes)).finish()?;
    let created = part.drop_in_place("created_at_us")?;
    let day: Int32Chunked = created
        .i64()?
        .iter()
        .map(|at| at.and_then(|at| i32::try_from((at - start_us).div_euclid(MICROS_PER_DAY)).ok()))
        .collect();
    part.with_column(day.into_series().with_name("day".into()).into_column())?;
    Ok(part)
}

/// How to print a result column.
#[derive(Clone, Copy)]
enum Cell {
    Text,
    Integer,
}

/// The rows of `frame` as JSON arrays of the named columns, integers exact.
fn rows(frame: &DataFrame, columns: &[(&str, Cell)]) -> PolarsResult<Vec<Value>> {
    let mut values: Vec<Vec<Value>> = vec![Vec::with_capacity(columns.len()); frame.height()];
    for &(name, cell) in columns {
        let column: Vec<Value> = match cell {
            Cell::Text => frames::strings(frame, name)?.into_iter().map(Value::from).collect(),
            Cell::Integer => frames::ints(frame, name)?.into_iter().map(Value::from).collect(),
        };
        for (row, value) in values.iter_mut().zip(column) {
            row.push(value);
        }
    }
    Ok(values.into_iter().map(Value::Array).collect())
}

const SPEND: [(&str, Cell); 3] = [("account_id", Cell::Text), ("debits", Cell::Integer), ("spent", Cell::Integer)];

/// The top spenders of the report day, and what each spent in the week before (zero when nothing), in that order.
fn spenders(entries: &DataFrame) -> PolarsResult<(Vec<Value>, Vec<Value>)> {
    let top = frames::spend_by_account(entries, REPORT_DAY, REPORT_DAY, Some(TOP_SPENDERS))?;
    let accounts: Vec<String> = frames::strings(&top, "account_id")?.into_iter().flatten().collect();
    if accounts.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // Every account's spend over the week (one grouping of a week of rows), then the top ones picked from it: cheaper
    // than filtering ten million rows by ten account ids first.
    let week = frames::spend_by_account(entries, PRIOR_WEEK.0, PRIOR_WEEK.1, None)?;
    let found: Vec<(Option<String>, Value)> =
        frames::strings(&week, "account_id")?.into_iter().zip(rows(&week, &SPEND)?).collect();
    let prior_week = accounts
        .iter()
        .map(|account| {
            found
                .iter()
                .find(|(id, _)| id.as_deref() == Some(account.as_str()))
                .map_or_else(|| json!([account, 0, 0]), |(_, row)| row.clone())
        })
        .collect();
    Ok((rows(&top, &SPEND)?, prior_week))
}

/// The report day's usage debits, from which the nightly job draws its re-pricing sample (outside polars): how many,
/// and the smallest and largest id, so that the engines' results can be compared without listing every id.
fn usage_ids(entries: &DataFrame) -> PolarsResult<Value> {
    let ids = frames::usage_ids(entries, REPORT_DAY)?;
    let ids = ids.column("id")?.str()?;
    Ok(json!({"count": ids.len(), "smallest": ids.iter().flatten().min(), "largest": ids.iter().flatten().max()}))
}

/// Balances from entries: the signed sum per account over all entries, summarised as the number of accounts, their
/// total and the largest few. Not in `frames`, so written here with polars, run as `frames` runs its group-bys.
fn balances(entries: &DataFrame) -> PolarsResult<Value> {
    let per_account = frames::collect(
        entries
            .clone()
            .lazy()
            .group_by([col("account_id")])
            .agg([col("amount").sum().alias("balance")])
            .with_column(col("account_id").cast(DataType::String)),
    )?;
    let total = frames::total(per_account.clone().lazy().select([col("balance").alias("amount")]))?;
    let largest = per_account
        .clone()
        .lazy()
        .sort(["balance", "account_id"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .limit(LARGEST_BALANCES)
        .collect()?;
    Ok(json!({
        "accounts": per_account.height(),
        "total": total,
        "largest": rows(&largest, &[("account_id", Cell::Text), ("balance", Cell::Integer)])?,
    }))
}

/// Every computation of the report, on the loaded entries.
fn compute(entries: &DataFrame) -> PolarsResult<Value> {
    let per_day = frames::day_totals(entries, 0, REPORT_DAY)?;
    let opening = frames::total(frames::days(entries, i32::MIN, -1)?.lazy())?;
    let kinds = frames::kind_totals(entries, REPORT_DAY)?;
    let models = frames::usage_by_model(entries, REPORT_DAY)?;
    let usage_ids = usage_ids(entries)?;
    let (top, prior_week) = spenders(entries)?;
    let day_columns = ["day", "entries", "purchased", "granted", "debited", "net"].map(|name| (name, Cell::Integer));
    Ok(json!({
        "day_totals": rows(&per_day, &day_columns)?,
        "opening_liability": opening,
        "kind_totals": rows(&kinds, &[("kind", Cell::Text), ("entries", Cell::Integer), ("amount", Cell::Integer)])?,
        "usage_by_model":
            rows(&models, &[("model", Cell::Text), ("debits", Cell::Integer), ("credits", Cell::Integer)])?,
        "usage_ids": usage_ids,
        "top_spenders": top,
        "top_spenders_prior_week": prior_week,
        "balances": balances(entries)?,
    }))
}

fn run(args: &Args) -> Result<Value, String> {
    let threads = std::env::var("POLARS_MAX_THREADS").ok().and_then(|value| value.parse::<usize>().ok());
    if threads.is_none() {
        eprintln!("POLARS_MAX_THREADS is not set: polars uses every core");
    }
    let start_us = series_start_us(args.day)?;
    let started = Instant::now();
    let entries = load(&args.entries, start_us).map_err(|error| format!("loading the entries: {error}"))?;
    let loaded = Instant::now();
    let results = compute(&entries).map_err(|error| format!("computing the report: {error}"))?;
    let computed = Instant::now();
    Ok(json!({
        "engine": "polars",
        "threads": threads,
        "rows": entries.height(),
        "load_seconds": (loaded - started).as_secs_f64(),
        "compute_seconds": (computed - loaded).as_secs_f64(),
        "results": results,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}\n{USAGE_TEXT}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("report_bench: {error}");
            ExitCode::FAILURE
        }
    }
}
