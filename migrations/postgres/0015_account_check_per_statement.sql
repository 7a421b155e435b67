-- Entries name an existing account, checked once per statement instead of by a foreign key row by row.
--
-- The foreign key of 0001 ran PostgreSQL's referential check for every new entry: a trigger call, a probe of the
-- accounts key and a share lock on the account's row, per entry. Measured on COPY of 200,000 entries over 2,000
-- accounts, it was about a quarter of the insert's cost. Here the ledger's statement trigger of 0014 also checks
-- accounts, and only for the entries that open an account's chain (sequence 1). Every later entry must continue an
-- entry of the same account (the chain rule), and entries are never changed or removed, so by induction the whole
-- chain hangs from an entry whose account was checked.
--
-- That argument and the rest of the schema need accounts never to disappear. The foreign key's RESTRICT used to stop
-- a delete of an account that had entries; the triggers below refuse any delete, any change of an account's id and
-- TRUNCATE. creditflow never removes an account (a closed one is frozen), so the store loses nothing by this.
--
-- A missing account is refused with SQLSTATE 23503 (foreign_key_violation), as the foreign key did. The chain's
-- rules, error codes and messages are those of 0014. SQLite keeps its foreign key and gains the same account rules
-- (../sqlite/0015_account_check_per_statement.sql).

CREATE OR REPLACE FUNCTION creditflow_check_ledger_chain_per_statement() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_sort = off AS $$
DECLARE
    broken RECORD;
BEGIN
    SELECT checked.account_id, checked.sequence, checked.problem
      INTO broken
      FROM (
          SELECT n.account_id, n.sequence,
                 CASE WHEN n.sequence = 1 AND NOT EXISTS (SELECT FROM accounts a WHERE a.id = n.account_id)
                      THEN 'no account'
                      WHEN n.sequence = 1 AND n.balance_after_millicredits <> n.amount_millicredits THEN 'breaks'
                      WHEN n.sequence = 1 THEN NULL
                      WHEN found.sequence IS DISTINCT FROM n.sequence - 1 THEN 'skips'
                      WHEN n.balance_after_millicredits <> found.balance_after_millicredits + n.amount_millicredits
                      THEN 'breaks' END AS problem
            FROM new_entries n
            LEFT JOIN LATERAL (
                SELECT e.account_id, e.sequence, e.balance_after_millicredits
                  FROM ledger_entries e
                 WHERE (e.account_id, e.sequence) >= (n.account_id, n.sequence - 1)
                 ORDER BY e.account_id, e.sequence
                 LIMIT 1
            ) AS found ON n.sequence > 1 AND found.account_id = n.account_id
      ) AS checked
     WHERE checked.problem IS NOT NULL
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF broken.problem = 'no account' THEN
        RAISE EXCEPTION 'creditflow: ledger entry % names account %, which does not exist', broken.sequence,
            broken.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF broken.problem = 'skips' THEN
        RAISE EXCEPTION 'creditflow: ledger entry % for % skips a sequence', broken.sequence, broken.account_id
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'creditflow: ledger entry % for % breaks the balance chain', broken.sequence, broken.account_id
        USING ERRCODE = 'check_violation';
END;
$$;

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_id_fkey;

CREATE FUNCTION creditflow_keep_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'creditflow: accounts are never removed or renamed; % on accounts is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION creditflow_keep_accounts();
CREATE TRIGGER accounts_never_renamed BEFORE UPDATE OF id ON accounts
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION creditflow_keep_accounts();
CREATE TRIGGER accounts_never_truncated BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION creditflow_keep_accounts();
