-- PostgreSQL's 0014 checks the ledger chain once per statement instead of once per row. SQLite has no statement
-- triggers, and its row trigger from 0001 is compiled once per statement rather than planned per row, so it stays
-- as it is. This file keeps the two backends' migrations numbered alike.
SELECT 1;
