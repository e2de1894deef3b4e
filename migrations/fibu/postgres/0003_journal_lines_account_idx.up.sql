-- valero:no-transaction
-- Built concurrently so that posting is not blocked on a large journal.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journal_lines_account_idx ON journal_lines (account_no);
