-- Usage batches: accepted whole, priced and debited by a job, reported by id. And job records: creditflow's own
-- account of every queued job (state, attempts, last error), the same on every queue backend, so operators can list,
-- retry and discard jobs whatever the broker. Keep in step with ../postgres/0007_usage_batches_and_jobs.sql.

CREATE TABLE usage_batches (
    id                   TEXT PRIMARY KEY NOT NULL,
    submitted_by         TEXT NOT NULL,
    idempotency_key      TEXT,
    status               TEXT NOT NULL CHECK (status IN ('accepted', 'processing', 'completed', 'failed')),
    event_count          INTEGER NOT NULL,
    events               TEXT NOT NULL,
    debited_count        INTEGER NOT NULL DEFAULT 0,
    duplicate_count      INTEGER NOT NULL DEFAULT 0,
    rejected_count       INTEGER NOT NULL DEFAULT 0,
    overdraft_count      INTEGER NOT NULL DEFAULT 0,
    debited_millicredits INTEGER NOT NULL DEFAULT 0,
    rejections           TEXT,
    last_error           TEXT,
    created_at           TEXT NOT NULL,
    completed_at         TEXT
) STRICT;
CREATE UNIQUE INDEX usage_batches_submission ON usage_batches (submitted_by, idempotency_key);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY NOT NULL,
    queue        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'retrying', 'dead', 'done', 'discarded')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;
CREATE INDEX jobs_by_state ON jobs (queue, state, updated_at);
