-- Received Stripe events (stored once each), and the outbox: work recorded in the same transaction as the change
-- that calls for it, relayed to the job queue afterwards. Keep in step with ../sqlite/0003_webhook_inbox_and_outbox.sql.

CREATE TABLE stripe_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    livemode    BOOLEAN NOT NULL,
    payload     TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE TRIGGER stripe_events_append_only BEFORE UPDATE OR DELETE ON stripe_events
    FOR EACH ROW EXECUTE FUNCTION creditflow_refuse_change();

CREATE TABLE outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    relayed_at TIMESTAMPTZ
);
CREATE INDEX outbox_unrelayed ON outbox (id) WHERE relayed_at IS NULL;
