-- Accounts are never removed or renamed, on both backends. PostgreSQL's 0015 replaces the ledger's row-by-row foreign
-- key with a check in its statement trigger, which relies on this rule; SQLite keeps its foreign key (checked where
-- the row is written, with no separate trigger call) and gains the same rule, so the two refuse the same statements.
CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts
BEGIN SELECT RAISE(ABORT, 'creditflow: accounts are never removed or renamed; DELETE on accounts is not allowed'); END;
CREATE TRIGGER accounts_never_renamed BEFORE UPDATE OF id ON accounts WHEN OLD.id IS NOT NEW.id
BEGIN SELECT RAISE(ABORT, 'creditflow: accounts are never removed or renamed; UPDATE on accounts is not allowed'); END;
