-- Chart of accounts (SKR03-style numbering).
CREATE TYPE account_type AS ENUM ('asset', 'liability', 'equity', 'revenue', 'expense');

CREATE TABLE accounts (
    account_no  integer PRIMARY KEY CHECK (account_no BETWEEN 0 AND 99999),
    name        text NOT NULL,
    type        account_type NOT NULL,
    parent_no   integer REFERENCES accounts (account_no),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE accounts IS 'Chart of accounts of the company';

INSERT INTO accounts (account_no, name, type) VALUES
    (1000, 'Kasse', 'asset'),
    (1200, 'Bank', 'asset'),
    (1400, 'Forderungen aus Lieferungen und Leistungen', 'asset'),
    (1600, 'Verbindlichkeiten aus Lieferungen und Leistungen', 'liability'),
    (1776, 'Umsatzsteuer 19 %', 'liability'),
    (8400, 'Erlöse 19 % USt', 'revenue'),
    (4400, 'Wareneingang', 'expense');
