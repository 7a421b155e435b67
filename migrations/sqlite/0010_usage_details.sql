-- What each usage debit paid for: the model and the quantities per unit kind (JSON), for usage reports and the
-- hourly rollup. Null on other entries. Keep in step with ../postgres/0010_usage_details.sql.

ALTER TABLE ledger_entries ADD COLUMN model TEXT;
ALTER TABLE ledger_entries ADD COLUMN units TEXT;
