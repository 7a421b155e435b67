-- The hourly rollup and /metrics read failures, dead jobs and anomalies by time: index them by state and time so
-- their cost follows the window, not the history. Keep in step with ../postgres/0012_activity_indexes.sql.

CREATE INDEX jobs_by_state_and_time ON jobs (state, updated_at);
CREATE INDEX purchases_by_status_and_time ON purchases (status, updated_at);
CREATE INDEX autoreloads_by_state_and_time ON autoreloads (state, updated_at);
CREATE INDEX anomalies_by_detection ON anomalies (detected_at);
