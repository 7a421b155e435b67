//! creditflow's nightly reconciliation report: for one day (in a configurable time zone), our purchases against
//! Stripe's charges, credits granted and debited with the outstanding liability checked against the sum of
//! balances, a 30-day series, the usage mix per model against the expected one, the top spenders, and a sample of
//! usage debits re-priced from the rate card version each recorded. Computed with polars, rendered as a summary
//! (JSON), CSV tables and an HTML page with a chart, stored, announced as `report.ready`, and emailed to finance
//! once per date.
//!
//! [`frames`] holds the polars computations, [`nightly`] the run of one report, [`job`] the worker's job.

pub mod chart;
pub mod day;
pub mod frames;
pub mod job;
pub mod nightly;
pub mod render;

pub use day::{CalendarError, Day, ReportSchedule, ReportZone, parse_date};
pub use nightly::{Built, Emailed, ReportDeps, ReportError, ReportSettings, RunOptions, Stage, run_report};
