-- Receipts of the point of sale, numbered per register without gaps.
CREATE TABLE registers (
    register_id  text PRIMARY KEY,
    location     text NOT NULL
);

CREATE TABLE receipts (
    receipt_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    register_id  text NOT NULL REFERENCES registers,
    receipt_no   integer NOT NULL,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    total_gross  numeric(12, 2) NOT NULL,
    vat          numeric(12, 2) NOT NULL,
    payment      text NOT NULL CHECK (payment IN ('cash', 'card', 'voucher')),
    lines        jsonb NOT NULL DEFAULT '[]',
    UNIQUE (register_id, receipt_no)
);

CREATE INDEX receipts_issued_at_idx ON receipts (issued_at);
