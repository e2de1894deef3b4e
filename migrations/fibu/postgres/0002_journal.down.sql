DROP VIEW account_balances;
DROP TABLE journal_lines;
DROP TABLE journal_entries;
