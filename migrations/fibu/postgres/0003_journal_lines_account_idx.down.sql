-- valero:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS journal_lines_account_idx;
