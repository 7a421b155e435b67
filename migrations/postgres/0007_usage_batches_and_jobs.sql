-- Usage batches: accepted whole, priced and debited by a job, reported by id. And job records: creditflow's own
-- account of every queued job (state, attempts, last error), the same on every queue backend, so operators can list,
-- retry and discard jobs whatever the broker. Keep in step with ../sqlite/0007_usage_batches_and_jobs.sql.

CREATE TABLE usage_batches (
    id                   TEXT PRIMARY KEY,
    submitted_by         TEXT NOT NULL,
    idempotency_key      TEXT,
    status               TEXT NOT NULL CHECK (status IN ('accepted', 'processing', 'completed', 'failed')),
    event_count          BIGINT NOT NULL,
    events               TEXT NOT NULL,
    debited_count        BIGINT NOT NULL DEFAULT 0,
    duplicate_count      BIGINT NOT NULL DEFAULT 0,
    rejected_count       BIGINT NOT NULL DEFAULT 0,
    overdraft_count      BIGINT NOT NULL DEFAULT 0,
    debited_millicredits BIGINT NOT NULL DEFAULT 0,
    rejections           TEXT,
    last_error           TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    completed_at         TIMESTAMPTZ
);
CREATE UNIQUE INDEX usage_batches_submission ON usage_batches (submitted_by, idempotency_key);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    queue        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'retrying', 'dead', 'done', 'discarded')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (queue, state, updated_at);
