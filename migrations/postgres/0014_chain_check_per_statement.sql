-- The ledger chain (each entry continues its account's sequence and balance) checked once per statement instead of
-- once per row. The row trigger of 0001 ran a PL/pgSQL function and planned its lookup afresh for every entry
-- (plan_cache_mode = force_custom_plan); a usage batch inserts thousands of entries in one statement, and a bulk
-- COPY more. This trigger reads the statement's new rows from its transition table and looks each one's
-- predecessor up by the (account_id, sequence) unique index, in one query with a plan kept across calls.
-- enable_seqscan = off keeps that plan on the index whatever size the table had when it was first planned (a plan
-- made while the table was nearly empty would otherwise scan it, and be kept as it grows).
-- Same rule, same error code and messages as 0001. Keep in step with ../sqlite/0014_chain_check_per_statement.sql.

CREATE FUNCTION creditflow_check_ledger_chain_per_statement() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off AS $$
DECLARE
    broken RECORD;
BEGIN
    SELECT n.account_id, n.sequence, p.previous_balance IS NULL AS skips INTO broken
      FROM new_entries n
      LEFT JOIN LATERAL (
          SELECT CASE WHEN n.sequence = 1 THEN 0 ELSE
                     (SELECT e.balance_after_millicredits FROM ledger_entries e
                       WHERE e.account_id = n.account_id AND e.sequence = n.sequence - 1) END AS previous_balance
      ) p ON true
     WHERE p.previous_balance IS NULL
        OR n.balance_after_millicredits <> p.previous_balance + n.amount_millicredits
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF broken.skips THEN
        RAISE EXCEPTION 'creditflow: ledger entry % for % skips a sequence', broken.sequence, broken.account_id
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'creditflow: ledger entry % for % breaks the balance chain', broken.sequence, broken.account_id
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER ledger_entries_chain_per_statement AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION creditflow_check_ledger_chain_per_statement();

DROP TRIGGER ledger_entries_chain ON ledger_entries;
DROP FUNCTION creditflow_check_ledger_chain();
