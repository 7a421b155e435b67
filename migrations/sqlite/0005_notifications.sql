-- Notifications already sent, so a job delivered twice does not email twice. Keep in step with ../postgres/.
CREATE TABLE notifications_sent (
    key        TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL,
    sent_at    TEXT NOT NULL
) STRICT;
