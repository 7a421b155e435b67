-- The anomalies the hourly check finds, one per account and hour (the check reads the ledger through the
-- created_at index of 0001).
-- Keep in step with ../sqlite/0011_anomalies.sql.

CREATE TABLE anomalies (
    account_id              TEXT NOT NULL REFERENCES accounts (id),
    hour_start              TIMESTAMPTZ NOT NULL,
    spent_24h_millicredits  BIGINT NOT NULL,
    daily_average_millicredits BIGINT NOT NULL,
    detected_at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, hour_start)
);
