-- Double-entry journal: an entry has lines whose debits equal their credits.
CREATE TABLE journal_entries (
    entry_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_date date NOT NULL,
    document_no  text NOT NULL UNIQUE,
    description  text NOT NULL DEFAULT '',
    posted_at    timestamptz
);

CREATE TABLE journal_lines (
    entry_id    bigint NOT NULL REFERENCES journal_entries (entry_id) ON DELETE CASCADE,
    line_no     smallint NOT NULL,
    account_no  integer NOT NULL REFERENCES accounts (account_no),
    debit       numeric(15, 2) NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit      numeric(15, 2) NOT NULL DEFAULT 0 CHECK (credit >= 0),
    PRIMARY KEY (entry_id, line_no),
    CHECK ((debit = 0) <> (credit = 0))
);

CREATE VIEW account_balances AS
SELECT a.account_no, a.name, coalesce(sum(l.debit - l.credit), 0) AS balance
FROM accounts a LEFT JOIN journal_lines l USING (account_no)
GROUP BY a.account_no, a.name;
