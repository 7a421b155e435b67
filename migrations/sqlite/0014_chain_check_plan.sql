-- PostgreSQL's 0014 checks the ledger chain once per statement instead of once per row. SQLite has no statement
-- triggers and plans its row trigger once, so its check from 0001 stays as it is: nothing changes here. The file
-- keeps the two backends' migrations numbered alike.
SELECT 1;
