-- Notifications already sent, so a job delivered twice does not email twice. Keep in step with ../sqlite/.
CREATE TABLE notifications_sent (
    key        TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    sent_at    TIMESTAMPTZ NOT NULL
);
