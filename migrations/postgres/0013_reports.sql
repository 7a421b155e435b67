-- The nightly reconciliation report: one per date, its files, and the daily ledger totals it keeps so that each
-- night reads only that day's entries (the closing liability of a day is the previous day's plus the day's net).
-- Keep in step with ../sqlite/0013_reports.sql.

CREATE TABLE reports (
    report_date  TEXT PRIMARY KEY,
    time_zone    TEXT NOT NULL,
    passed       BOOLEAN NOT NULL,
    summary      TEXT NOT NULL,
    generated_at TIMESTAMPTZ NOT NULL,
    emailed_at   TIMESTAMPTZ
);

CREATE TABLE report_files (
    report_date  TEXT NOT NULL REFERENCES reports (report_date),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body         BYTEA NOT NULL,
    PRIMARY KEY (report_date, name)
);

-- Totals of one settled day of the ledger, in the report's time zone. Rows are written once and never change: a
-- settled day gains no entries (entries are stamped when they are posted).
CREATE TABLE ledger_days (
    time_zone                     TEXT NOT NULL,
    day                           TEXT NOT NULL,
    starts_at                     TIMESTAMPTZ NOT NULL,
    ends_at                       TIMESTAMPTZ NOT NULL,
    entries                       BIGINT NOT NULL,
    purchased_millicredits        BIGINT NOT NULL,
    granted_millicredits          BIGINT NOT NULL,
    debited_millicredits          BIGINT NOT NULL,
    closing_liability_millicredits BIGINT NOT NULL,
    computed_at                   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (time_zone, day)
);
CREATE TRIGGER ledger_days_append_only BEFORE UPDATE OR DELETE ON ledger_days
    FOR EACH ROW EXECUTE FUNCTION creditflow_refuse_change();
