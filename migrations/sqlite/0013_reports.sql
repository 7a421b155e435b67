-- The nightly reconciliation report: one per date, its files, and the daily ledger totals it keeps so that each
-- night reads only that day's entries (the closing liability of a day is the previous day's plus the day's net).
-- Keep in step with ../postgres/0013_reports.sql.

CREATE TABLE reports (
    report_date  TEXT PRIMARY KEY,
    time_zone    TEXT NOT NULL,
    passed       INTEGER NOT NULL,
    summary      TEXT NOT NULL,
    generated_at TEXT NOT NULL,
    emailed_at   TEXT
) STRICT;

CREATE TABLE report_files (
    report_date  TEXT NOT NULL REFERENCES reports (report_date),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (report_date, name)
) STRICT;

-- Totals of one settled day of the ledger, in the report's time zone. Rows are written once and never change: a
-- settled day gains no entries (entries are stamped when they are posted).
CREATE TABLE ledger_days (
    time_zone                     TEXT NOT NULL,
    day                           TEXT NOT NULL,
    starts_at                     TEXT NOT NULL,
    ends_at                       TEXT NOT NULL,
    entries                       INTEGER NOT NULL,
    purchased_millicredits        INTEGER NOT NULL,
    granted_millicredits          INTEGER NOT NULL,
    debited_millicredits          INTEGER NOT NULL,
    closing_liability_millicredits INTEGER NOT NULL,
    computed_at                   TEXT NOT NULL,
    PRIMARY KEY (time_zone, day)
) STRICT;
CREATE TRIGGER ledger_days_no_update BEFORE UPDATE ON ledger_days
BEGIN SELECT RAISE(ABORT, 'creditflow: ledger_days is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER ledger_days_no_delete BEFORE DELETE ON ledger_days
BEGIN SELECT RAISE(ABORT, 'creditflow: ledger_days is append-only; DELETE is not allowed'); END;
