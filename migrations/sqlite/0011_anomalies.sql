-- The anomalies the hourly check finds, one per account and hour (the check reads the ledger through the
-- created_at index of 0001).
-- Keep in step with ../postgres/0011_anomalies.sql.

CREATE TABLE anomalies (
    account_id              TEXT NOT NULL REFERENCES accounts (id),
    hour_start              TEXT NOT NULL,
    spent_24h_millicredits  INTEGER NOT NULL,
    daily_average_millicredits INTEGER NOT NULL,
    detected_at             TEXT NOT NULL,
    PRIMARY KEY (account_id, hour_start)
) STRICT;
