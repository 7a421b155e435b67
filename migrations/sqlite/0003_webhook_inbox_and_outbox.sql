-- Received Stripe events (stored once each), and the outbox: work recorded in the same transaction as the change
-- that calls for it, relayed to the job queue afterwards. Keep in step with ../postgres/0003_webhook_inbox_and_outbox.sql.

CREATE TABLE stripe_events (
    id          TEXT PRIMARY KEY NOT NULL,
    type        TEXT NOT NULL,
    livemode    INTEGER NOT NULL CHECK (livemode IN (0, 1)),
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL
) STRICT;
CREATE TRIGGER stripe_events_no_update BEFORE UPDATE ON stripe_events
BEGIN SELECT RAISE(ABORT, 'creditflow: stripe_events is append-only; UPDATE is not allowed'); END;
CREATE TRIGGER stripe_events_no_delete BEFORE DELETE ON stripe_events
BEGIN SELECT RAISE(ABORT, 'creditflow: stripe_events is append-only; DELETE is not allowed'); END;

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    relayed_at TEXT
) STRICT;
CREATE INDEX outbox_unrelayed ON outbox (id) WHERE relayed_at IS NULL;
